//! `discover_users`: page the application-wide connections and register users not seen before.

use std::collections::BTreeSet;

use chrono::Utc;

use super::{Done, JobContext, JobError};
use crate::ids::{self, Escaped};
use crate::store::Job;

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    // Page by page: each page's new users are registered (and their syncs enqueued) at once, so
    // their syncs run while later pages are fetched. Only the ids are kept, for the count: an
    // application with 100,000 connections must not hold them all in memory.
    let mut pager = ctx.client.connections(None);
    let mut users = BTreeSet::new();
    let mut new = 0;
    while let Some(page) = pager.next_page().await {
        let listed: BTreeSet<String> = page?
            .connections
            .into_iter()
            .filter_map(|c| c.user_id)
            .filter(|u| {
                let ok = ids::is_valid(u);
                if !ok {
                    tracing::warn!(user_id = %Escaped(u), "user skipped: the API answered an invalid id");
                }
                ok
            })
            .filter(|u| !users.contains(u))
            .collect();
        if listed.is_empty() {
            continue;
        }
        let listed: Vec<String> = listed.into_iter().collect();
        new += ctx
            .store
            .discovered_page(job, &listed, Utc::now())
            .await?
            .len();
        users.extend(listed);
    }
    // Every page is registered: completing the job adds no user.
    new += ctx
        .store
        .finish_discovery(job, &[], Utc::now())
        .await?
        .len();
    Ok(Done::Discovered {
        users: users.len(),
        new,
    })
}

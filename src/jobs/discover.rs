//! `discover_users`: page the application-wide connections and register users not seen before.

use std::collections::BTreeSet;

use chrono::Utc;

use super::{Done, JobContext, JobError};
use crate::ids::{self, Escaped};
use crate::store::Job;

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    // Page by page, keeping only the user ids: an application with 100,000 connections must
    // not hold them all in memory.
    let mut pager = ctx.client.connections(None);
    let mut users = BTreeSet::new();
    while let Some(page) = pager.next_page().await {
        users.extend(
            page?
                .connections
                .into_iter()
                .filter_map(|c| c.user_id)
                .filter(|u| {
                    let ok = ids::is_valid(u);
                    if !ok {
                        tracing::warn!(user_id = %Escaped(u), "user skipped: the API answered an invalid id");
                    }
                    ok
                }),
        );
    }
    let users: Vec<String> = users.into_iter().collect();
    let new = ctx.store.finish_discovery(job, &users, Utc::now()).await?;
    Ok(Done::Discovered {
        users: users.len(),
        new: new.len(),
    })
}

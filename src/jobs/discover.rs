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
    // A retry resumes at the page the last attempt failed on: with 100 pages and 2 % of calls
    // failing, starting over would fail most attempts. Users of the pages before are registered.
    let resume = ctx.store.job_progress(job).await?.unwrap_or(1);
    if resume > 1 {
        tracing::info!(
            page = resume,
            "discovery resumes where its last attempt stopped"
        );
    }
    let mut pager = ctx.client.connections_from(None, resume);
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
        let listed: Vec<String> = listed.into_iter().collect();
        let registered = ctx
            .store
            .discovered_page(job, &listed, pager.next_page_number(), Utc::now())
            .await?
            .len();
        ctx.wake_for(registered);
        new += registered;
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

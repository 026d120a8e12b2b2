//! `discover_users`: page the application-wide connections and register users not seen before.

use std::collections::BTreeSet;

use chrono::Utc;

use super::{Done, JobContext, JobError};
use crate::store::Job;

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    let connections = ctx.client.connections(None).collect_all().await?;
    let users: Vec<String> = connections
        .into_iter()
        .filter_map(|c| c.user_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let new = ctx.store.finish_discovery(job, &users, Utc::now()).await?;
    Ok(Done::Discovered {
        users: users.len(),
        new: new.len(),
    })
}

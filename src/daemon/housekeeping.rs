//! The daemon's background chores: saving the per-token audit, and hourly maintenance
//! (pruning finished jobs and expired Connect states, partitions ahead, compaction of samples
//! older than `[storage] hot_window` on PostgreSQL, retention).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::smartcar::auth::TokenAudit;
use crate::store::{Store, TokenAuditRow};

/// Writes the token audit's changed records; on failure they are kept for the next try.
pub async fn save_token_audit(store: &Store, audit: &TokenAudit) {
    let changed = audit.take_changed();
    if changed.is_empty() {
        return;
    }
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let now = Utc::now();
    let rows: Vec<TokenAuditRow> = changed
        .iter()
        .map(|t| TokenAuditRow {
            fingerprint: t.fingerprint.clone(),
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            calls_ok: count(t.ok),
            calls_client_error: count(t.client_error),
            calls_server_error: count(t.server_error),
            calls_unauthorized: count(t.unauthorized),
            calls_rate_limited: count(t.rate_limited),
            updated_at: now,
        })
        .collect();
    if let Err(e) = store.record_token_audit(&rows).await {
        tracing::warn!(error = %e, "cannot write the token audit; keeping it for the next try");
        let fingerprints: Vec<String> = changed.into_iter().map(|t| t.fingerprint).collect();
        audit.unsaved(&fingerprints);
    }
}

/// Saves the token audit every 5 s until `shutdown` (the final save follows the workers).
pub(super) async fn save_token_audit_every(
    store: Store,
    audit: Arc<TokenAudit>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => save_token_audit(&store, &audit).await,
        }
    }
}

/// Hourly housekeeping: prune finished jobs, keep PostgreSQL partitions ahead, compact old
/// samples, apply retention.
pub(super) async fn maintenance(store: Store, config: Config, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Utc::now();
        let keep =
            chrono::Duration::from_std(config.queue.keep_done).unwrap_or(chrono::Duration::days(7));
        match store.prune_finished_jobs(now - keep).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned finished jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune finished jobs"),
        }
        if let Err(e) = store.prune_connect_states(now).await {
            tracing::warn!(error = %e, "cannot prune expired Connect states");
        }
        if let Err(e) = store.ensure_partitions(now, 3).await {
            tracing::warn!(error = %e, "cannot create sample partitions ahead");
        }
        let window = chrono::Duration::from_std(config.storage.hot_window)
            .unwrap_or(chrono::Duration::days(2));
        match store.compact_samples(now - window).await {
            Ok(n) if n > 0 => {
                tracing::info!(moved = n, "compacted samples older than the hot window")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot compact samples"),
        }
        if let Some(retention) = config.sample_retention() {
            let cutoff =
                now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            match store.drop_partitions_before(cutoff).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, cutoff = %cutoff, "retention: dropped old samples")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}

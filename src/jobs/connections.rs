//! `sync_connections(user)`: page the user's connections; upsert what is there, mark what is
//! gone `disconnected`, and enqueue a first poll for new vehicles (one transaction).
//!
//! With webhook subscriptions configured, the sync then keeps the user's vehicles subscribed
//! (contract §8): every connected vehicle this database has not recorded as subscribed gets a
//! `POST /subscriptions` (202 or 409 both mean "subscribed" and are recorded), every vanished
//! one recorded as subscribed is unsubscribed (a 404 means it already was). A failed call is
//! logged and counted, and retried by the next sync: the sync itself has already committed.

use chrono::Utc;

use super::{Done, JobContext, JobError};
use crate::ids::{self, Escaped};
use crate::store::{Job, VehicleUpsert};

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    let user_id = job.subject.as_str();
    let connections = ctx.client.connections(Some(user_id)).collect_all().await?;
    let vehicles: Vec<VehicleUpsert> = connections
        .into_iter()
        // The filter is the server's; a connection that names another user is not this user's.
        .filter(|c| c.user_id.as_deref().is_none_or(|u| u == user_id))
        // An id that could not be stored, logged or sent back safely is not taken in.
        .filter(|c| {
            let ok = ids::is_valid(&c.vehicle_id) && ids::is_valid(&c.connection_id);
            if !ok {
                tracing::warn!(
                    user_id,
                    vehicle_id = %Escaped(&c.vehicle_id),
                    connection_id = %Escaped(&c.connection_id),
                    "connection skipped: the API answered an invalid id"
                );
            }
            ok
        })
        .map(|c| VehicleUpsert {
            vehicle_id: c.vehicle_id,
            connection_id: Some(c.connection_id),
            make: c.make,
            model: c.model,
            year: c.year,
            powertrain_type: c.powertrain_type,
            mode: c.mode,
            permissions: c.permissions,
        })
        .collect();
    let outcome = ctx
        .store
        .finish_sync(job, user_id, &vehicles, Utc::now())
        .await?;
    ctx.wake_for(outcome.new_vehicles.len());
    if let Some(subs) = &ctx.subscriptions {
        reconcile(ctx, subs, user_id).await;
    }
    Ok(Done::Synced {
        vehicles: vehicles.len(),
        new: outcome.new_vehicles.len(),
        vanished: outcome.vanished.len(),
    })
}

/// Keeps the user's vehicles subscribed to the webhook, and vanished ones unsubscribed.
async fn reconcile(ctx: &JobContext, subs: &super::Subscriptions, user_id: &str) {
    use crate::events::{SubscriptionOutcome, subscription};
    let (present, gone) = match ctx.store.user_vehicles_by_presence(user_id).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the user's vehicles; subscriptions kept next sync");
            return;
        }
    };
    let recorded = match ctx.store.subscribed_vehicles(&subs.webhook_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the subscriptions; kept next sync");
            return;
        }
    };
    for vehicle_id in present.iter().filter(|v| !recorded.contains(v)) {
        let result = ctx
            .client
            .subscribe(&subs.management_url, &subs.webhook_id, user_id, vehicle_id)
            .await;
        let outcome = match result {
            Ok(true) => SubscriptionOutcome::Subscribed,
            Ok(false) => SubscriptionOutcome::AlreadySubscribed,
            Err(e) => {
                tracing::warn!(vehicle_id, error = %e, request_id = e.request_id.as_deref(),
                    "cannot subscribe the vehicle; retried at the next sync");
                subscription(SubscriptionOutcome::Failed, vehicle_id);
                continue;
            }
        };
        subscription(outcome, vehicle_id);
        if let Err(e) = ctx
            .store
            .record_subscription(vehicle_id, &subs.webhook_id, user_id, Utc::now())
            .await
        {
            tracing::warn!(vehicle_id, error = %e, "cannot record the subscription");
        }
    }
    for vehicle_id in gone.iter().filter(|v| recorded.contains(v)) {
        match ctx
            .client
            .unsubscribe(&subs.management_url, &subs.webhook_id, vehicle_id)
            .await
        {
            Ok(_) => {
                subscription(SubscriptionOutcome::Unsubscribed, vehicle_id);
                if let Err(e) = ctx
                    .store
                    .forget_subscription(vehicle_id, &subs.webhook_id)
                    .await
                {
                    tracing::warn!(vehicle_id, error = %e, "cannot forget the subscription");
                }
            }
            Err(e) => {
                tracing::warn!(vehicle_id, error = %e, request_id = e.request_id.as_deref(),
                    "cannot unsubscribe the vanished vehicle; retried at the next sync");
                subscription(SubscriptionOutcome::Failed, vehicle_id);
            }
        }
    }
}

//! `sync_connections(user)`: page the user's connections; upsert what is there, mark what is
//! gone `disconnected`, and enqueue a first poll for new vehicles (one transaction).

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
    Ok(Done::Synced {
        vehicles: vehicles.len(),
        new: outcome.new_vehicles.len(),
        vanished: outcome.vanished.len(),
    })
}

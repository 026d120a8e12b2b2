//! What the HTTP surface writes: a webhook delivery with everything it implies in one
//! transaction (so a 2xx means all of it is durable, and a crash before the commit leaves
//! Smartcar to redeliver), and the readiness probe.

use chrono::{DateTime, Utc};

use super::db::{Tx, args};
use super::{JobKind, NewSample, SignalState, Store, StoreError, UserSource, VehicleStatus};

/// The envelope of one webhook delivery.
#[derive(Debug, Clone, Copy)]
pub struct WebhookDelivery<'a> {
    /// Stable across redeliveries: the deduplication key.
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub vehicle_id: Option<&'a str>,
    /// `data.user.id`: registers the user if unknown.
    pub user_id: Option<&'a str>,
}

/// A `VEHICLE_ERROR` entry's effect on its vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VehicleErrorUpdate {
    /// The error is active. `status: None` (a transient error such as an asleep car) only notes
    /// the reason on a connected vehicle; polling goes on.
    Raised {
        status: Option<VehicleStatus>,
        /// Starts with the error's marker (see [`VehicleErrorUpdate::Resolved`]).
        reason: String,
        blocked_until: Option<DateTime<Utc>>,
    },
    /// The error is over: a vehicle whose status reason starts with `marker` (set by the same
    /// error) goes back to `connected`. A status set by anything else is left alone.
    Resolved { marker: String },
}

/// What a new (not redelivered) webhook changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookOutcome {
    pub samples_inserted: u64,
    /// The user was not known before.
    pub user_added: bool,
    /// A connections sync of the user is open (new user or vehicle not yet known).
    pub sync_enqueued: bool,
    /// Vehicle rows whose status changed.
    pub vehicles_updated: u64,
}

impl Tx {
    /// Registers the user if unknown and opens a connections sync when the user or the vehicle
    /// is new (the sync upserts the vehicle with its connection and permissions).
    async fn register_from_webhook(
        &mut self,
        user_id: Option<&str>,
        vehicle_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(bool, bool), StoreError> {
        let Some(user_id) = user_id.filter(|u| !u.is_empty()) else {
            return Ok((false, false));
        };
        let added = !self
            .insert_users(&[user_id.to_owned()], UserSource::Webhook, now)
            .await?
            .is_empty();
        let vehicle_unknown = match vehicle_id {
            Some(v) => self
                .all(
                    "SELECT vehicle_id FROM vehicles WHERE vehicle_id = $1",
                    args![v],
                )
                .await?
                .is_empty(),
            None => false,
        };
        if !(added || vehicle_unknown) {
            return Ok((added, false));
        }
        self.enqueue_many(JobKind::SyncConnections, &[user_id.to_owned()], now)
            .await?;
        Ok((added, true))
    }
}

impl Store {
    /// One webhook delivery in one transaction: records its event id and, if it is new, stores
    /// its samples and statuses, applies its vehicle errors, and registers an unknown user or
    /// vehicle (user `source = webhook`, connections sync enqueued). `None` for a redelivery:
    /// nothing is written. Acknowledge the delivery only after this returns.
    pub async fn ingest_webhook_delivery(
        &self,
        delivery: &WebhookDelivery<'_>,
        samples: &[NewSample],
        statuses: &[SignalState],
        vehicle_errors: &[VehicleErrorUpdate],
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookOutcome>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let fresh = tx
            .exec(
                "INSERT INTO webhook_events (event_id, event_type, vehicle_id, received_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
                args![
                    delivery.event_id,
                    delivery.event_type,
                    delivery.vehicle_id,
                    now
                ],
            )
            .await?;
        if fresh == 0 {
            return Ok(None);
        }
        let samples_inserted = tx.ingest(samples, statuses, now).await?;
        let mut vehicles_updated = 0;
        if let Some(vehicle_id) = delivery.vehicle_id {
            for update in vehicle_errors {
                vehicles_updated += tx.apply_vehicle_error(vehicle_id, update, now).await?;
            }
        }
        let (user_added, sync_enqueued) = tx
            .register_from_webhook(delivery.user_id, delivery.vehicle_id, now)
            .await?;
        tx.commit().await?;
        Ok(Some(WebhookOutcome {
            samples_inserted,
            user_added,
            sync_enqueued,
            vehicles_updated,
        }))
    }

    /// Whether the database answers a trivial query (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool.opt("SELECT 1 AS n", args![]).await.map(|_| ())
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Store {
    /// Webhook event ids recorded so far.
    pub async fn webhook_event_count(&self) -> Result<i64, StoreError> {
        self.pool
            .opt("SELECT COUNT(*) AS n FROM webhook_events", args![])
            .await?
            .map_or(Ok(0), |r| r.int("n"))
    }
}

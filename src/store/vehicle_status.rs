//! The vehicle-status rules, as SQL: which vehicles are polled, and every statement that
//! changes a vehicle's `status`, `blocked_until` or `throttle_streak`.
//!
//! What a problem *means* (a 403 is `permission_denied`, a 430 blocks until the period ends)
//! is decided outside the store, in [`crate::vehicle_status`]; this file is how those
//! decisions are written, so that a reader finds every status transition in one place:
//!
//! | transition | by |
//! |---|---|
//! | any → `connected`, streak 0 | a successful poll ([`Tx::mark_polled`]) |
//! | any → the decided status | a poll's permanent error ([`Tx::set_vehicle_status`]), a `VEHICLE_ERROR` webhook ([`Tx::apply_vehicle_error`]) |
//! | not `connected` → `connected` | listed again by its connections ([`reconnect_set!`]), unless billing-limited or blocked for a reconnect |
//! | → `disconnected` | absent from its user's connections ([`Tx::disconnect_vanished`]) |
//! | `[webhook …]` status → `connected` | the webhook error resolved |
//! | streak + 1 | a 429 `RATE_LIMIT`/`VEHICLE` ([`Tx::bump_throttle_streak`]) |

use chrono::{DateTime, Utc};

#[cfg(any(test, feature = "test-support"))]
use super::Store;
use super::db::{Tx, args};
use super::{PollResult, StoreError, VehicleErrorUpdate, VehicleStatusUpdate};

/// SQL condition: a vehicle that should be polled at `$now`.
macro_rules! pollable {
    ($now:literal) => {
        concat!(
            "status IN ('connected', 'needs_reconnect', 'billing_limited') \
             AND (blocked_until IS NULL OR blocked_until <= ",
            $now,
            ")"
        )
    };
}

/// SQL condition: a vehicle listed again by its connections goes back to `connected`, unless
/// it is billing-limited or waiting for a reconnect until after `$now`.
macro_rules! back_to_connected {
    ($now:literal) => {
        concat!(
            "(status NOT IN ('connected', 'billing_limited') AND NOT (status = 'needs_reconnect' \
             AND blocked_until IS NOT NULL AND blocked_until > ",
            $now,
            "))"
        )
    };
}

/// SET clauses applying [`back_to_connected!`]: a changed status clears its reason and block.
macro_rules! reconnect_set {
    ($now:literal) => {
        concat!(
            "status_changed_at = CASE WHEN ",
            back_to_connected!($now),
            " THEN ",
            $now,
            " ELSE status_changed_at END, \
             status_reason = CASE WHEN ",
            back_to_connected!($now),
            " THEN NULL ELSE status_reason END, \
             status_request_id = CASE WHEN ",
            back_to_connected!($now),
            " THEN NULL ELSE status_request_id END, \
             blocked_until = CASE WHEN ",
            back_to_connected!($now),
            " THEN NULL ELSE blocked_until END, \
             status = CASE WHEN ",
            back_to_connected!($now),
            " THEN 'connected' ELSE status END"
        )
    };
}

impl Tx {
    /// A successful poll: the vehicle is polled at `polled_at` (never moved back), connected,
    /// unblocked, and its throttle streak ends.
    pub(crate) async fn mark_polled(
        &mut self,
        vehicle_id: &str,
        polled_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE vehicles SET \
               last_polled_at = CASE WHEN last_polled_at IS NULL OR last_polled_at < $1 \
                                THEN $1 ELSE last_polled_at END, \
               status_changed_at = CASE WHEN status <> 'connected' THEN $1 \
                                   ELSE status_changed_at END, \
               status = 'connected', status_reason = NULL, status_request_id = NULL, \
               blocked_until = NULL, throttle_streak = 0 \
             WHERE vehicle_id = $2",
            args![polled_at, vehicle_id],
        )
        .await?;
        Ok(())
    }

    /// Marks vehicles polled (at each poll's time) and connected: the vehicle side of
    /// [`Tx::mark_polled`] for several polls, in one statement.
    pub(crate) async fn mark_polled_many(
        &mut self,
        polls: &[&PollResult],
    ) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(..) => {
                // [[vehicle_id, polled_at], …] in one UPDATE … FROM json_each.
                let rows: Vec<(&str, String)> = polls
                    .iter()
                    .map(|p| (p.vehicle_id.as_str(), super::time::to_text(p.polled_at)))
                    .collect();
                let json = serde_json::to_string(&rows)
                    .map_err(|e| StoreError::Corrupt(format!("polls as JSON: {e}")))?;
                self.exec(
                    "UPDATE vehicles SET \
                       last_polled_at = CASE WHEN last_polled_at IS NULL OR last_polled_at < p.at \
                                        THEN p.at ELSE last_polled_at END, \
                       status_changed_at = CASE WHEN status <> 'connected' THEN p.at \
                                           ELSE status_changed_at END, \
                       status = 'connected', status_reason = NULL, status_request_id = NULL, \
                       blocked_until = NULL, throttle_streak = 0 \
                     FROM (SELECT json_extract(value, '$[0]') AS v, \
                                  json_extract(value, '$[1]') AS at FROM json_each($1)) AS p \
                     WHERE vehicles.vehicle_id = p.v",
                    args![json.as_str()],
                )
                .await?;
            }
            Tx::Postgres(t) => {
                let ids: Vec<&str> = polls.iter().map(|p| p.vehicle_id.as_str()).collect();
                let at: Vec<DateTime<Utc>> = polls.iter().map(|p| p.polled_at).collect();
                sqlx::query(
                    "UPDATE vehicles v SET \
                       last_polled_at = CASE WHEN v.last_polled_at IS NULL \
                                        OR v.last_polled_at < f.ats[array_position($1, v.vehicle_id)] \
                                        THEN f.ats[array_position($1, v.vehicle_id)] \
                                        ELSE v.last_polled_at END, \
                       status_changed_at = CASE WHEN v.status <> 'connected' \
                                           THEN f.ats[array_position($1, v.vehicle_id)] \
                                           ELSE v.status_changed_at END, \
                       status = 'connected', status_reason = NULL, status_request_id = NULL, \
                       blocked_until = NULL, throttle_streak = 0 \
                     FROM (SELECT $2::timestamptz[] AS ats) f \
                     WHERE v.vehicle_id = ANY($1::text[])",
                )
                .bind(ids)
                .bind(at)
                .execute(&mut **t)
                .await?;
            }
        }
        Ok(())
    }

    /// A status decided by a job (`status_changed_at` moves only when the status changes).
    pub(crate) async fn set_vehicle_status(
        &mut self,
        vehicle_id: &str,
        update: &VehicleStatusUpdate,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE vehicles SET \
               status_changed_at = CASE WHEN status <> $2 THEN $3 ELSE status_changed_at END, \
               status = $2, status_reason = $4, status_request_id = $5, blocked_until = $6 \
             WHERE vehicle_id = $1",
            args![
                vehicle_id,
                update.status.as_str(),
                update.at,
                update.reason.as_str(),
                update.request_id.as_deref(),
                update.blocked_until,
            ],
        )
        .await?;
        Ok(())
    }

    /// The user's vehicles not in `listed` become `disconnected`; returns them (unsorted).
    pub(crate) async fn disconnect_vanished(
        &mut self,
        user_id: &str,
        listed: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "UPDATE vehicles SET status = 'disconnected', \
             status_reason = 'absent from connections', status_request_id = NULL, \
             status_changed_at = $2 \
             WHERE user_id = $1 AND status <> 'disconnected' AND {} \
             RETURNING vehicle_id",
            self.backend().not_in_list("vehicle_id", "$3")
        );
        self.all(&sql, args![user_id, now, listed])
            .await?
            .iter()
            .map(|r| r.text("vehicle_id"))
            .collect()
    }

    /// One more 429 `RATE_LIMIT`/`VEHICLE` since the last successful poll; returns the new
    /// streak (1 for a vehicle not stored).
    pub(crate) async fn bump_throttle_streak(
        &mut self,
        vehicle_id: &str,
    ) -> Result<i64, StoreError> {
        let rows = self
            .all(
                "UPDATE vehicles SET throttle_streak = throttle_streak + 1 \
                 WHERE vehicle_id = $1 RETURNING throttle_streak",
                args![vehicle_id],
            )
            .await?;
        match rows.first() {
            Some(r) => r.int("throttle_streak"),
            None => Ok(1),
        }
    }

    /// A `VEHICLE_ERROR` entry: a permanent problem sets its status; another (an asleep car)
    /// only notes the reason on a connected vehicle; a resolved error reconnects the vehicle
    /// if its status came from that very error (its marker starts the reason).
    pub(crate) async fn apply_vehicle_error(
        &mut self,
        vehicle_id: &str,
        update: &VehicleErrorUpdate,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match update {
            VehicleErrorUpdate::Raised {
                status: Some(status),
                reason,
                blocked_until,
            } => {
                self.exec(
                    "UPDATE vehicles SET \
                       status_changed_at = CASE WHEN status <> $2 THEN $3 \
                         ELSE status_changed_at END, \
                       status = $2, status_reason = $4, status_request_id = NULL, \
                       blocked_until = $5 \
                     WHERE vehicle_id = $1",
                    args![
                        vehicle_id,
                        status.as_str(),
                        now,
                        reason.as_str(),
                        *blocked_until
                    ],
                )
                .await
            }
            VehicleErrorUpdate::Raised {
                status: None,
                reason,
                ..
            } => {
                self.exec(
                    "UPDATE vehicles SET status_reason = $2, status_request_id = NULL \
                     WHERE vehicle_id = $1 AND status = 'connected'",
                    args![vehicle_id, reason.as_str()],
                )
                .await
            }
            VehicleErrorUpdate::Resolved { marker } => {
                self.exec(
                    "UPDATE vehicles SET \
                       status_changed_at = CASE WHEN status <> 'connected' THEN $3 \
                         ELSE status_changed_at END, \
                       status = 'connected', status_reason = NULL, status_request_id = NULL, \
                       blocked_until = NULL \
                     WHERE vehicle_id = $1 AND substr(status_reason, 1, length($2)) = $2",
                    args![vehicle_id, marker.as_str(), now],
                )
                .await
            }
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Store {
    /// A vehicle's consecutive 429 `RATE_LIMIT`/`VEHICLE` count (0 if unknown).
    pub async fn throttle_streak(&self, vehicle_id: &str) -> Result<i64, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT throttle_streak FROM vehicles WHERE vehicle_id = $1",
                args![vehicle_id],
            )
            .await?;
        row.map(|r| r.int("throttle_streak"))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

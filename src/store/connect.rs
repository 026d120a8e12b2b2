//! Connect states: issued by the daemon, redeemed once by the Connect callback.
//!
//! Redeeming a state, checking the registration bound, adding the user and enqueueing its
//! connections sync are one transaction: a state is spent only by a registration that happened,
//! and two callbacks racing with one state register at most one user.

use chrono::{DateTime, Utc};

use super::db::args;
use super::{JobKind, Store, StoreError, UserSource};

/// How the callback's `state` proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProof<'a> {
    /// The daemon issued it ([`Store::issue_connect_state`]); it must be stored, unexpired and
    /// unused.
    Issued { state_hash: &'a str },
    /// An application holding `http.connect_state_secret` signed it, valid until `expires_at`;
    /// it must not have been used before.
    Signed {
        state_hash: &'a str,
        expires_at: DateTime<Utc>,
    },
}

/// What redeeming a state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRedemption {
    /// The user was recorded (`new`: not known before) and its connections sync enqueued.
    Registered { new: bool },
    /// Unknown, expired or already used: nothing was written.
    StateRejected,
    /// The bound on new Connect users per hour is reached: nothing was written, and the state
    /// stays usable once the hour has moved on.
    TooManyRegistrations,
}

impl Store {
    /// Records an issued state (by its hash) valid until `expires_at`.
    pub async fn issue_connect_state(
        &self,
        state_hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool
            .exec(
                "INSERT INTO connect_states (state_hash, issued_at, expires_at) VALUES ($1, $2, $3)",
                args![state_hash, now, expires_at],
            )
            .await?;
        Ok(())
    }

    /// Spends `proof` on registering `user_id`, unless more than `max_new_per_hour` users came
    /// through Connect in the last hour (a user already known does not count against it).
    pub async fn redeem_connect_state(
        &self,
        proof: StateProof<'_>,
        user_id: &str,
        max_new_per_hour: u32,
        now: DateTime<Utc>,
    ) -> Result<ConnectRedemption, StoreError> {
        let mut tx = self.pool.begin().await?;
        let spent = match proof {
            StateProof::Issued { state_hash } => {
                tx.exec(
                    "UPDATE connect_states SET used_at = $2, user_id = $3 \
                     WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2",
                    args![state_hash, now, user_id],
                )
                .await?
            }
            StateProof::Signed {
                state_hash,
                expires_at,
            } => {
                tx.exec(
                    "INSERT INTO connect_states (state_hash, issued_at, expires_at, used_at, user_id) \
                     VALUES ($1, $2, $3, $2, $4) ON CONFLICT (state_hash) DO NOTHING",
                    args![state_hash, now, expires_at, user_id],
                )
                .await?
            }
        };
        if spent != 1 {
            return Ok(ConnectRedemption::StateRejected);
        }
        let known = !tx
            .all(
                "SELECT 1 AS n FROM users WHERE user_id = $1",
                args![user_id],
            )
            .await?
            .is_empty();
        if !known {
            let hour_ago = now - chrono::Duration::hours(1);
            let recent = tx
                .all(
                    "SELECT COUNT(*) AS n FROM users WHERE source = $1 AND created_at > $2",
                    args![UserSource::Connect.as_str(), hour_ago],
                )
                .await?
                .first()
                .map_or(Ok(0), |r| r.int("n"))?;
            if recent >= i64::from(max_new_per_hour) {
                return Ok(ConnectRedemption::TooManyRegistrations);
            }
            tx.insert_users(&[user_id.to_owned()], UserSource::Connect, now)
                .await?;
        }
        // Even a known user: the vehicle just connected is new.
        tx.enqueue_many(JobKind::SyncConnections, &[user_id.to_owned()], now)
            .await?;
        tx.commit().await?;
        Ok(ConnectRedemption::Registered { new: !known })
    }

    /// Deletes states that expired more than a day ago (used ones included).
    pub async fn prune_connect_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.pool
            .exec(
                "DELETE FROM connect_states WHERE expires_at < $1",
                args![now - chrono::Duration::days(1)],
            )
            .await
    }
}

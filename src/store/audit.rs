//! The audit log of application tokens: one row per token, named by its fingerprint (never the
//! token), with its issue and expiry times and how its API calls ended.

use chrono::{DateTime, Utc};

use super::db::args;
use super::{Store, StoreError};

/// One token's row of `token_audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuditRow {
    /// First 8 hex digits of the token's SHA-256.
    pub fingerprint: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub calls_ok: i64,
    pub calls_client_error: i64,
    pub calls_server_error: i64,
    pub calls_unauthorized: i64,
    pub calls_rate_limited: i64,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// Upserts token rows with their totals so far. A token belongs to the one process that
    /// fetched it, so writing absolute totals is idempotent: a failed write is simply retried.
    pub async fn record_token_audit(&self, rows: &[TokenAuditRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for r in rows {
            tx.exec(
                "INSERT INTO token_audit (fingerprint, issued_at, expires_at, calls_ok, \
                   calls_client_error, calls_server_error, calls_unauthorized, \
                   calls_rate_limited, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (fingerprint) DO UPDATE SET expires_at = excluded.expires_at, \
                   calls_ok = excluded.calls_ok, \
                   calls_client_error = excluded.calls_client_error, \
                   calls_server_error = excluded.calls_server_error, \
                   calls_unauthorized = excluded.calls_unauthorized, \
                   calls_rate_limited = excluded.calls_rate_limited, \
                   updated_at = excluded.updated_at",
                args![
                    r.fingerprint.as_str(),
                    r.issued_at,
                    r.expires_at,
                    r.calls_ok,
                    r.calls_client_error,
                    r.calls_server_error,
                    r.calls_unauthorized,
                    r.calls_rate_limited,
                    r.updated_at
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Every audited token, oldest issue first.
    pub async fn token_audit(&self) -> Result<Vec<TokenAuditRow>, StoreError> {
        self.pool
            .all(
                "SELECT fingerprint, issued_at, expires_at, calls_ok, calls_client_error, \
                   calls_server_error, calls_unauthorized, calls_rate_limited, updated_at \
                 FROM token_audit ORDER BY issued_at, fingerprint",
                args![],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(TokenAuditRow {
                    fingerprint: r.text("fingerprint")?,
                    issued_at: r.time("issued_at")?,
                    expires_at: r.time("expires_at")?,
                    calls_ok: r.int("calls_ok")?,
                    calls_client_error: r.int("calls_client_error")?,
                    calls_server_error: r.int("calls_server_error")?,
                    calls_unauthorized: r.int("calls_unauthorized")?,
                    calls_rate_limited: r.int("calls_rate_limited")?,
                    updated_at: r.time("updated_at")?,
                })
            })
            .collect()
    }
}

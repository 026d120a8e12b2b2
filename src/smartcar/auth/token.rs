//! The application token as callers hold it, and why there may be none.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// An access token and the generation it belongs to. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub(super) secret: SecretString,
    /// Increases with every issued token; `invalidate` names the generation it saw fail.
    pub generation: u64,
    pub expires_at: Instant,
    /// `expires_in` as issued; sets the safety margin.
    pub lifetime: Duration,
    /// Wall-clock expiry, for the audit log.
    pub expires_at_utc: DateTime<Utc>,
    /// First 8 hex digits of the token's SHA-256: names the token in logs without revealing it.
    pub fingerprint: String,
}

impl AccessToken {
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("generation", &self.generation)
            .field("fingerprint", &self.fingerprint)
            .field("expires_at_utc", &self.expires_at_utc)
            .finish_non_exhaustive()
    }
}

/// The first 8 hex digits of SHA-256: enough to tell tokens apart, useless to an attacker.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    hex::encode(&digest[..4])
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// 401 `invalid_client`: the client id or secret is wrong. Retrying will not help until an
    /// operator fixes the credentials.
    #[error("credentials rejected by the token endpoint ({error}); next attempt at {retry_at}")]
    Rejected {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// 5xx, timeout, refused, or an answer without a token: it will pass.
    #[error("token endpoint unavailable ({reason}); next attempt at {retry_at}")]
    Unavailable {
        reason: String,
        retry_at: DateTime<Utc>,
    },
    /// The daemon is shutting down.
    #[error("token provider stopped")]
    Stopped,
}

impl TokenError {
    /// When the refresher will try again.
    pub fn retry_at(&self) -> DateTime<Utc> {
        match self {
            TokenError::Rejected { retry_at, .. } | TokenError::Unavailable { retry_at, .. } => {
                *retry_at
            }
            TokenError::Stopped => Utc::now() + chrono::Duration::seconds(5),
        }
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self, TokenError::Rejected { .. })
    }
}

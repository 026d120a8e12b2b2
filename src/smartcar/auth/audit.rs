//! What each issued token was used for: calls by outcome, written to `token_audit` under the
//! token's fingerprint, never the token.

use chrono::{DateTime, Utc};

use super::AccessToken;
use crate::events::CallClass;

/// One issued token's audit record: its fingerprint, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    pub fingerprint: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ok: u64,
    pub client_error: u64,
    pub server_error: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
}

/// Counts, per issued token, the calls made with it. Kept in memory (a call costs a mutex, not
/// a write) and saved by the daemon every few seconds as absolute totals.
#[derive(Debug, Default)]
pub struct TokenAudit {
    /// (record, changed since last saved), oldest first; a handful per hour.
    tokens: std::sync::Mutex<Vec<(TokenUse, bool)>>,
}

impl TokenAudit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TokenUse, bool)>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn issued(&self, token: &AccessToken) {
        let mut tokens = self.lock();
        if let Some((prev, _)) = tokens.last() {
            tracing::info!(
                fingerprint = %prev.fingerprint,
                calls_ok = prev.ok,
                calls_client_error = prev.client_error,
                calls_server_error = prev.server_error,
                calls_unauthorized = prev.unauthorized,
                calls_rate_limited = prev.rate_limited,
                "access token replaced; its calls"
            );
        }
        tokens.push((
            TokenUse {
                fingerprint: token.fingerprint.clone(),
                issued_at: Utc::now(),
                expires_at: token.expires_at_utc,
                ok: 0,
                client_error: 0,
                server_error: 0,
                unauthorized: 0,
                rate_limited: 0,
            },
            true,
        ));
    }

    /// A call made with the token `fingerprint` was answered with `class`: the same value the
    /// client emits as its `api_call` event, so the audit and the metrics never disagree on
    /// what a call was. A call with no answer is not counted against its token.
    pub fn call(&self, fingerprint: &str, class: CallClass) {
        let mut tokens = self.lock();
        if let Some((t, changed)) = tokens
            .iter_mut()
            .rev()
            .find(|(t, _)| t.fingerprint == fingerprint)
        {
            let n = match class {
                CallClass::Success => &mut t.ok,
                CallClass::ClientError => &mut t.client_error,
                CallClass::ServerError => &mut t.server_error,
                CallClass::Unauthorized => &mut t.unauthorized,
                CallClass::RateLimited => &mut t.rate_limited,
                CallClass::NoAnswer => return,
            };
            *n += 1;
            *changed = true;
        }
    }

    /// The records changed since the last call (now marked saved), and forgets tokens that
    /// expired over an hour ago and are saved. Hand them back with [`TokenAudit::unsaved`] if
    /// the write fails.
    pub fn take_changed(&self) -> Vec<TokenUse> {
        let mut tokens = self.lock();
        let out = tokens
            .iter_mut()
            .filter(|(_, changed)| *changed)
            .map(|(t, changed)| {
                *changed = false;
                t.clone()
            })
            .collect();
        let horizon = Utc::now() - chrono::Duration::hours(1);
        let last = tokens.len().saturating_sub(1);
        let mut i = 0;
        tokens.retain(|(t, changed)| {
            let keep = i == last || *changed || t.expires_at > horizon;
            i += 1;
            keep
        });
        out
    }

    /// Marks records as not saved (their write failed): the next save retries them.
    pub fn unsaved(&self, fingerprints: &[String]) {
        for (t, changed) in self.lock().iter_mut() {
            if fingerprints.contains(&t.fingerprint) {
                *changed = true;
            }
        }
    }
}

//! The single-flight state every caller shares: a `watch` channel the refresher publishes to.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::exchange::Refresher;
use super::*;

/// How the token provider talks to the token endpoint and paces itself.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub auth_url: String,
    pub client_id: String,
    pub client_secret: SecretSource,
    pub request_timeout: Duration,
    /// Backoff after a transient failure (5xx, timeout, refused).
    pub transient_backoff: (Duration, Duration),
    /// Backoff after the credentials were rejected: minutes, not seconds.
    pub rejected_backoff: (Duration, Duration),
}

impl TokenConfig {
    pub fn new(auth_url: String, client_id: String, client_secret: SecretSource) -> Self {
        TokenConfig {
            auth_url,
            client_id,
            client_secret,
            request_timeout: Duration::from_secs(30),
            transient_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            rejected_backoff: (Duration::from_secs(60), Duration::from_secs(900)),
        }
    }
}

/// What callers see.
#[derive(Clone, Debug)]
pub(super) enum State {
    /// Nothing fetched yet.
    Empty,
    Ready {
        token: AccessToken,
        invalidated: bool,
    },
    /// The last attempt failed; `token` is the previous one, served while still valid.
    Failed {
        token: Option<AccessToken>,
        error: TokenError,
        retry_at: Instant,
    },
    Stopped,
}

/// One application token, shared by every worker. Cheap to clone.
#[derive(Clone)]
pub struct TokenProvider {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) state: watch::Sender<State>,
    /// Wakes the refresher: a caller found no usable token, or a reload asks for a fresh one.
    pub(super) nudge: Notify,
    /// Whether the next nudge should override the backoff (a reload after rotating a secret).
    pub(super) force: std::sync::atomic::AtomicBool,
    /// Issued tokens and their calls, for the audit log.
    pub(super) audit: Arc<TokenAudit>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider").finish_non_exhaustive()
    }
}

/// How long before expiry a token stops being handed out: covers request latency and clock
/// drift. 5 % of the lifetime, at most 30 s.
pub(super) fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 20).min(Duration::from_secs(30))
}

/// Whether a token may still be sent: it must outlive the request by the safety margin.
pub(super) fn usable(token: &AccessToken, now: Instant) -> bool {
    now + safety_margin(token.lifetime) < token.expires_at
}

impl TokenProvider {
    /// Starts the refresher task. It stops when `shutdown` is cancelled. The first token is
    /// fetched on first demand.
    pub fn start(
        config: TokenConfig,
        http: reqwest::Client,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, _rx) = watch::channel(State::Empty);
        let shared = Arc::new(Shared {
            state: tx,
            nudge: Notify::new(),
            force: std::sync::atomic::AtomicBool::new(false),
            audit: Arc::new(TokenAudit::default()),
        });
        let refresher = Refresher {
            config,
            http,
            shared: shared.clone(),
            generation: 0,
        };
        // In the caller's tracker: the daemon waits for it on the way out like every task.
        tracker.spawn(refresher.run(shutdown));
        TokenProvider { shared }
    }

    /// The audit of the tokens this provider issued (the daemon writes it to `token_audit`).
    pub fn audit(&self) -> &Arc<TokenAudit> {
        &self.shared.audit
    }

    /// A token that is valid now (and for a safety margin). Waits for the refresher when there
    /// is none; fails at once while the refresher is backing off after a failure.
    pub async fn get(&self) -> Result<AccessToken, TokenError> {
        let mut rx = self.shared.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            let now = Instant::now();
            match state {
                State::Ready {
                    token,
                    invalidated: false,
                } if usable(&token, now) => return Ok(token),
                State::Failed {
                    token: Some(token), ..
                } if usable(&token, now) => return Ok(token),
                State::Failed {
                    error, retry_at, ..
                } if retry_at > now => return Err(error),
                State::Stopped => return Err(TokenError::Stopped),
                _ => {}
            }
            self.shared.nudge.notify_one();
            if rx.changed().await.is_err() {
                return Err(TokenError::Stopped);
            }
        }
    }

    /// A request made with `generation` was answered 401: drop that token (once, however many
    /// requests report it) and have the refresher fetch a new one.
    pub fn invalidate(&self, generation: u64) {
        let mut changed = false;
        self.shared.state.send_if_modified(|state| {
            match state {
                State::Ready { token, invalidated }
                    if token.generation == generation && !*invalidated =>
                {
                    *invalidated = true;
                    changed = true;
                }
                State::Failed { token, .. }
                    if token.as_ref().is_some_and(|t| t.generation == generation) =>
                {
                    *token = None;
                    changed = true;
                }
                _ => {}
            }
            changed
        });
        if changed {
            tracing::info!(generation, "access token rejected by the API; refreshing");
            self.shared.nudge.notify_one();
        }
    }

    /// Fetch a new token now, even while backing off (after an operator rotated the secret).
    pub fn refresh_now(&self) {
        self.shared.force.store(true, Ordering::SeqCst);
        self.shared.nudge.notify_one();
    }

    /// The current credential problem, if the last attempt was rejected (for `/readyz`).
    pub fn credential_problem(&self) -> Option<TokenError> {
        match &*self.shared.state.borrow() {
            State::Failed { error, .. } if error.is_rejected() => Some(error.clone()),
            _ => None,
        }
    }

    /// Whether a usable token is held right now (for `/readyz`).
    pub fn has_valid_token(&self) -> bool {
        let now = Instant::now();
        match &*self.shared.state.borrow() {
            State::Ready {
                token,
                invalidated: false,
            } => now < token.expires_at,
            State::Failed { token: Some(t), .. } => now < t.expires_at,
            _ => false,
        }
    }
}

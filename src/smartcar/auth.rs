//! The application token (contract §1): OAuth 2.0 client credentials, one token for the whole
//! application, valid about an hour, no refresh token.
//!
//! One background task, the *refresher*, is the only code that ever calls the token endpoint.
//! Callers read the current token from a `watch` channel; when there is none (or it was
//! invalidated) they nudge the refresher and wait for the next published state. However many
//! tasks ask at once, one request goes out: single flight by construction.
//!
//! The refresher renews ahead of expiry (75–90 % of `expires_in`, jittered so a fleet of daemons
//! does not renew in lockstep). On a transient failure it keeps the current token published until
//! it really expires and retries with backoff. A rejected credential (`invalid_client`) is logged
//! once per attempt, retried on a long backoff, and the secret is re-read every attempt so an
//! operator can rotate it without a restart.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the client secret comes from. Read on every token request, so a rotated secret is
/// picked up by the next attempt.
#[derive(Clone)]
pub enum SecretSource {
    /// In memory (config file or environment); replaced on reload.
    Value(Arc<RwLock<SecretString>>),
    /// A file (e.g. systemd's `$CREDENTIALS_DIRECTORY/client_secret`), trailing newline ignored.
    File(PathBuf),
}

impl SecretSource {
    pub fn value(secret: SecretString) -> Self {
        SecretSource::Value(Arc::new(RwLock::new(secret)))
    }

    /// The current secret.
    pub fn read(&self) -> Result<SecretString, String> {
        match self {
            SecretSource::Value(v) => Ok(v.read().unwrap_or_else(|e| e.into_inner()).clone()),
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                // An empty file (`printf '%s' "$UNSET" > file`) is no secret: refusing it keeps
                // an empty key from ever signing or verifying anything.
                Ok(s) if s.trim().is_empty() => Err(format!("{} is empty", path.display())),
                Ok(s) => Ok(SecretString::from(
                    s.trim_end_matches(['\r', '\n']).to_owned(),
                )),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }

    /// Replaces an in-memory secret (a reload); a file source re-reads by itself.
    pub fn replace(&self, secret: SecretString) {
        if let SecretSource::Value(v) = self {
            *v.write().unwrap_or_else(|e| e.into_inner()) = secret;
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("SecretSource::Value([REDACTED])"),
            SecretSource::File(p) => write!(f, "SecretSource::File({})", p.display()),
        }
    }
}

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

/// An access token and the generation it belongs to. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
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

/// What callers see.
#[derive(Clone, Debug)]
enum State {
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

/// Counters a test or `/metrics` can read.
#[derive(Debug, Default)]
pub struct TokenStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub rejected: AtomicU64,
}

/// One application token, shared by every worker. Cheap to clone.
#[derive(Clone)]
pub struct TokenProvider {
    shared: Arc<Shared>,
}

struct Shared {
    state: watch::Sender<State>,
    /// Wakes the refresher: a caller found no usable token, or a reload asks for a fresh one.
    nudge: Notify,
    stats: TokenStats,
    /// Whether the next nudge should override the backoff (a reload after rotating a secret).
    force: std::sync::atomic::AtomicBool,
    /// Issued tokens and their calls, for the audit log.
    audit: Arc<TokenAudit>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider").finish_non_exhaustive()
    }
}

/// How long before expiry a token stops being handed out: covers request latency and clock
/// drift. 5 % of the lifetime, at most 30 s.
fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 20).min(Duration::from_secs(30))
}

/// Whether a token may still be sent: it must outlive the request by the safety margin.
fn usable(token: &AccessToken, now: Instant) -> bool {
    now + safety_margin(token.lifetime) < token.expires_at
}

impl TokenProvider {
    /// Starts the refresher task. It stops when `shutdown` is cancelled. The first token is
    /// fetched on first demand.
    pub fn start(config: TokenConfig, http: reqwest::Client, shutdown: CancellationToken) -> Self {
        let (tx, _rx) = watch::channel(State::Empty);
        let shared = Arc::new(Shared {
            state: tx,
            nudge: Notify::new(),
            stats: TokenStats::default(),
            force: std::sync::atomic::AtomicBool::new(false),
            audit: Arc::new(TokenAudit::default()),
        });
        let refresher = Refresher {
            config,
            http,
            shared: shared.clone(),
            generation: 0,
        };
        tokio::spawn(refresher.run(shutdown));
        TokenProvider { shared }
    }

    pub fn stats(&self) -> &TokenStats {
        &self.shared.stats
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

/// The task that owns the token endpoint.
struct Refresher {
    config: TokenConfig,
    http: reqwest::Client,
    shared: Arc<Shared>,
    generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: serde_json::Value,
}

enum FetchError {
    Rejected(String),
    Transient(String),
}

impl Refresher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut transient = backoff(self.config.transient_backoff);
        let mut rejected = backoff(self.config.rejected_backoff);
        loop {
            // When must we act next? `None`: only when a caller asks.
            let due = self.next_due();
            let woke_by_nudge = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.nudge.notified() => true,
                _ = sleep_until_opt(due) => false,
            };
            let now = Instant::now();
            let forced = self.shared.force.swap(false, Ordering::SeqCst);
            if !forced && !self.must_fetch(now, woke_by_nudge) {
                continue;
            }
            match self.fetch().await {
                Ok(token) => {
                    crate::events::token_request("ok");
                    transient = backoff(self.config.transient_backoff);
                    rejected = backoff(self.config.rejected_backoff);
                    self.shared.audit.issued(&token);
                    self.shared.state.send_replace(State::Ready {
                        token,
                        invalidated: false,
                    });
                }
                Err(e) => {
                    self.shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let (delay, error) = match e {
                        FetchError::Rejected(msg) => {
                            crate::events::token_request("rejected");
                            self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            let delay = rejected.next().unwrap_or(self.config.rejected_backoff.1);
                            let retry_at = Utc::now() + to_chrono(delay);
                            // Once per attempt, never per job: this is the operator's problem.
                            tracing::error!(
                                error = %msg,
                                retry_in_s = delay.as_secs(),
                                "Smartcar rejected the client credentials (invalid_client): \
                                 check client_id and client_secret; retrying with the secret re-read"
                            );
                            (
                                delay,
                                TokenError::Rejected {
                                    error: msg,
                                    retry_at,
                                },
                            )
                        }
                        FetchError::Transient(msg) => {
                            crate::events::token_request("failed");
                            let delay = transient.next().unwrap_or(self.config.transient_backoff.1);
                            let retry_at = Utc::now() + to_chrono(delay);
                            tracing::warn!(error = %msg, retry_in_ms = delay.as_millis() as u64,
                                "token request failed; keeping the current token while it lasts");
                            (
                                delay,
                                TokenError::Unavailable {
                                    reason: msg,
                                    retry_at,
                                },
                            )
                        }
                    };
                    let previous = self.current_token();
                    self.shared.state.send_replace(State::Failed {
                        token: previous,
                        error,
                        retry_at: Instant::now() + delay,
                    });
                }
            }
        }
        self.shared.state.send_replace(State::Stopped);
    }

    fn current_token(&self) -> Option<AccessToken> {
        match &*self.shared.state.borrow() {
            State::Ready { token, .. } => Some(token.clone()),
            State::Failed { token, .. } => token.clone(),
            _ => None,
        }
    }

    /// The next moment the refresher has work without being asked.
    fn next_due(&self) -> Option<Instant> {
        match &*self.shared.state.borrow() {
            State::Empty | State::Stopped => None,
            State::Ready {
                invalidated: true, ..
            } => Some(Instant::now()),
            State::Ready { token, .. } => Some(self.refresh_point(token)),
            State::Failed { retry_at, .. } => Some(*retry_at),
        }
    }

    /// 75–90 % of the way through the token's life, jittered so that several daemons (or a
    /// restart) do not renew in lockstep.
    fn refresh_point(&self, token: &AccessToken) -> Instant {
        let fraction = 0.75 + 0.15 * fastrand::f64();
        let before_expiry = token.lifetime.mul_f64(1.0 - fraction);
        token
            .expires_at
            .checked_sub(before_expiry.max(safety_margin(token.lifetime)))
            .unwrap_or(token.expires_at)
    }

    fn must_fetch(&self, now: Instant, asked: bool) -> bool {
        match &*self.shared.state.borrow() {
            State::Empty => asked,
            State::Stopped => false,
            State::Ready {
                invalidated: true, ..
            } => true,
            // The refresh point is re-drawn on every wake-up, so accept any moment inside the
            // last quarter of the lifetime.
            State::Ready { token, .. } => {
                let window = token.lifetime.mul_f64(0.25);
                token
                    .expires_at
                    .checked_sub(window)
                    .is_none_or(|start| now >= start)
            }
            State::Failed { retry_at, .. } => now >= *retry_at,
        }
    }

    async fn fetch(&mut self) -> Result<AccessToken, FetchError> {
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let secret = self
            .config
            .client_secret
            .read()
            .map_err(FetchError::Rejected)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
        ];
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.config.auth_url)
            .form(&form)
            .timeout(self.config.request_timeout)
            .send()
            .await
            .map_err(|e| FetchError::Transient(describe_transport(&e)))?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("sc-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| FetchError::Transient(describe_transport(&e)))?;
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(&body)
                .map_err(|e| FetchError::Transient(format!("token answer without a token: {e}")))?;
            let expires_in = match &parsed.expires_in {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            }
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(3600.0);
            let lifetime = Duration::from_secs_f64(expires_in);
            self.generation += 1;
            let fingerprint = fingerprint(&parsed.access_token);
            let token = AccessToken {
                secret: SecretString::from(parsed.access_token),
                generation: self.generation,
                // Counted from when the request was sent: the server's clock started no earlier.
                expires_at: started + lifetime,
                lifetime,
                expires_at_utc: Utc::now() + to_chrono(lifetime),
                fingerprint,
            };
            tracing::info!(
                fingerprint = %token.fingerprint,
                generation = token.generation,
                expires_in_s = expires_in,
                expires_at = %token.expires_at_utc,
                "access token issued"
            );
            return Ok(token);
        }
        let oauth_error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
        let msg = format!(
            "HTTP {}{}{}",
            status.as_u16(),
            oauth_error
                .as_deref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
            request_id
                .map(|r| format!(" (request id {r})"))
                .unwrap_or_default()
        );
        match status.as_u16() {
            // Wrong credentials or a malformed request: the same request will fail again.
            400 | 401 | 403 => Err(FetchError::Rejected(msg)),
            _ => Err(FetchError::Transient(msg)),
        }
    }
}

/// A reqwest error described without its URL's query or anything secret (the form body is never
/// part of a reqwest error).
pub(crate) fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        msg
    }
}

fn backoff((min, max): (Duration, Duration)) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How an API call made with a token ended (the columns of the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    ClientError,
    ServerError,
    Unauthorized,
    RateLimited,
}

impl CallOutcome {
    /// The outcome of an answered call by its HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => CallOutcome::Ok,
            401 => CallOutcome::Unauthorized,
            429 => CallOutcome::RateLimited,
            500..=599 => CallOutcome::ServerError,
            _ => CallOutcome::ClientError,
        }
    }
}

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

    fn issued(&self, token: &AccessToken) {
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

    /// A call made with the token `fingerprint` ended with `outcome`.
    pub fn call(&self, fingerprint: &str, outcome: CallOutcome) {
        let mut tokens = self.lock();
        if let Some((t, changed)) = tokens
            .iter_mut()
            .rev()
            .find(|(t, _)| t.fingerprint == fingerprint)
        {
            let n = match outcome {
                CallOutcome::Ok => &mut t.ok,
                CallOutcome::ClientError => &mut t.client_error,
                CallOutcome::ServerError => &mut t.server_error,
                CallOutcome::Unauthorized => &mut t.unauthorized,
                CallOutcome::RateLimited => &mut t.rate_limited,
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

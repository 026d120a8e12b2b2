//! The refresher: the only caller of the token endpoint (the OAuth client-credentials request),
//! renewing ahead of expiry and backing off on failure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::provider::{Shared, State, safety_margin};
use super::*;

/// The task that owns the token endpoint.
pub(super) struct Refresher {
    pub(super) config: TokenConfig,
    pub(super) http: reqwest::Client,
    pub(super) shared: Arc<Shared>,
    pub(super) generation: u64,
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
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
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
                    crate::events::token_request(crate::events::TokenOutcome::Issued);
                    transient = backoff(self.config.transient_backoff);
                    rejected = backoff(self.config.rejected_backoff);
                    self.shared.audit.issued(&token);
                    self.shared.state.send_replace(State::Ready {
                        token,
                        invalidated: false,
                    });
                }
                Err(e) => {
                    let (delay, error) = match e {
                        FetchError::Rejected(msg) => {
                            crate::events::token_request(crate::events::TokenOutcome::Rejected);
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
                            crate::events::token_request(crate::events::TokenOutcome::Failed);
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

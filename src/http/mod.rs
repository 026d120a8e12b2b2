//! The HTTP surface, on two listeners.
//!
//! - The **public** one (`[http] listen`, published through a TLS proxy): Smartcar's webhooks,
//!   the Connect redirect and `/healthz`. Everything arriving here is untrusted until a
//!   signature or a daemon-issued `state` proves it.
//! - The **admin** one (`[http] admin_listen`, loopback by default): `/metrics`, `/readyz`,
//!   `/healthz`, and issuing Connect URLs. What it tells (queue depth, readiness reasons) and
//!   what it does (mint a registration) is for operators and the operator's own application.
//!
//! Handlers only parse, verify and call one store operation; the queue does the rest (a new user
//! becomes a connections-sync job). Nothing here ever logs a secret, a token or a signature.
//! [`server`] bounds what a client can hold: connections, header and body time, body bytes.

mod body;
mod connect;
mod health;
pub mod server;
mod webhooks;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::schedule::Schedule;
use crate::smartcar::{SecretSource, TokenProvider};
use crate::store::Store;

pub use connect::{ConnectSettings, IssuedConnectUrl, issue_connect_url, signed_connect_state};
pub use server::ServerLimits;
pub use webhooks::{MAX_CHALLENGE_LEN, challenge_is_acceptable};

/// Largest webhook body accepted (413 above): Smartcar's payloads are a few KiB.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A handler's database work must end well inside Smartcar's 15 s delivery deadline; past this
/// it answers 503 and the delivery is retried.
const STORE_DEADLINE: Duration = Duration::from_secs(10);

/// The secrets the HTTP surface needs, replaceable at runtime (SIGHUP).
#[derive(Debug, Default)]
pub struct HttpSecrets {
    /// Keys webhook signatures and the VERIFY answer.
    management_token: RwLock<Option<SecretSource>>,
    /// If set, an application may sign Connect states itself.
    connect_state_secret: RwLock<Option<SecretString>>,
    /// VERIFY is answered until then (`None`: not at all).
    verify_open_until: RwLock<Option<Instant>>,
}

impl HttpSecrets {
    pub fn from_config(config: &Config) -> Self {
        let s = HttpSecrets::default();
        s.reload(config);
        s
    }

    /// Takes the secrets of a freshly read configuration (a file source is re-read per request
    /// anyway).
    pub fn reload(&self, config: &Config) {
        *self
            .management_token
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config.management_token_source();
        *self
            .connect_state_secret
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config.http.connect_state_secret.clone();
        // Start and every reload open the window in which VERIFY is answered.
        let window = config.http.verify_window;
        *self
            .verify_open_until
            .write()
            .unwrap_or_else(|e| e.into_inner()) =
            (!window.is_zero()).then(|| Instant::now() + window);
    }

    /// Whether a VERIFY challenge may be answered now.
    pub fn verify_is_open(&self) -> bool {
        self.verify_open_until
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// The management token: `None` when not configured, `Err` when its file cannot be read.
    fn management_token(&self) -> Option<Result<SecretString, String>> {
        let source = self
            .management_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(source.read())
    }

    /// Whether webhooks can be verified at all.
    pub fn has_management_token(&self) -> bool {
        self.management_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn connect_state_secret(&self) -> Option<SecretString> {
        self.connect_state_secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub tokens: TokenProvider,
    /// `None` when no schedule runs (readiness then ignores it).
    pub schedule: Option<Schedule>,
    /// Wakes the worker pool when a handler enqueued work.
    pub wake: Arc<Notify>,
    pub secrets: Arc<HttpSecrets>,
    /// Connection, time and body bounds.
    pub limits: Arc<ServerLimits>,
    /// How Connect URLs are issued and callbacks bounded.
    pub connect: Arc<ConnectSettings>,
    /// `[budget]`: a `VEHICLE_ERROR` 430 blocks the vehicle until its period ends.
    pub allowance: Option<crate::plan::Allowance>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("store", &self.store.backend_name())
            .finish_non_exhaustive()
    }
}

/// The public routes: what Smartcar and the users' browsers reach.
fn public_routes() -> Router<HttpState> {
    Router::new()
        .route("/webhooks/smartcar", post(webhooks::receive))
        .route("/connect/callback", get(connect::callback))
}

/// The admin routes: monitoring, and issuing Connect URLs.
fn admin_routes() -> Router<HttpState> {
    Router::new()
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/connect/url", post(connect::issue))
}

/// `routes` plus `/healthz` (on every listener), with the body limit and the state.
fn finish(routes: Router<HttpState>, state: HttpState) -> Router {
    routes
        .route("/healthz", get(health::healthz))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The public listener's router.
pub fn public_router(state: HttpState) -> Router {
    finish(public_routes(), state)
}

/// The admin listener's router.
pub fn admin_router(state: HttpState) -> Router {
    finish(admin_routes(), state)
}

/// Every route on one listener (`admin_listen` empty).
pub fn router(state: HttpState) -> Router {
    finish(public_routes().merge(admin_routes()), state)
}

/// Serves every route on `listener` until `shutdown` (see [`server::serve`]).
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    server::serve(listener, router(state), &limits, shutdown).await
}

/// Hex HMAC-SHA256 of `msg` keyed with `key`.
fn hmac_hex(key: &SecretString, msg: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()) {
        Ok(mut mac) => {
            mac.update(msg);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

/// Whether `signature_hex` is the HMAC-SHA256 of `msg` under `key`, compared in constant time.
fn hmac_verify(key: &SecretString, msg: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()) else {
        return false;
    };
    mac.update(msg);
    mac.verify_slice(&signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_verification_accepts_the_right_signature_only() {
        let key = SecretString::from("k".to_owned());
        let sig = hmac_hex(&key, b"body");
        assert!(hmac_verify(&key, b"body", &sig));
        assert!(hmac_verify(&key, b"body", &sig.to_uppercase()));
        assert!(!hmac_verify(&key, b"body!", &sig));
        assert!(!hmac_verify(&key, b"body", &sig[..10]));
        assert!(!hmac_verify(&key, b"body", "not hex"));
        let other = SecretString::from("other".to_owned());
        assert!(!hmac_verify(&other, b"body", &sig));
    }
}

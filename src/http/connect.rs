//! `GET /connect/callback`: where Smartcar Connect sends the user back
//! (`?code=…&state=…&user_id=…`, or `?error=…&error_description=…`). The user becomes known
//! (`source = connect`) and their connections are synced at once, so the new vehicle is polled
//! minutes after it was connected instead of at the next hourly tick.
//!
//! The callback is public, so it trusts nothing it is given. A `user_id` alone proves nothing
//! (anyone can type one into the URL), and every registration costs API calls from the one
//! application budget. A registration therefore needs a `state` the daemon issued itself
//! ([`issue_connect_url`], from `smartcar-sync connect-url` or `POST /connect/url` on the admin
//! listener): 256 random bits, stored only as a SHA-256, valid for `[connect] state_ttl`, spent
//! by the first callback that uses it. An application that builds its own Connect URLs may sign
//! states with `[http] connect_state_secret` instead (`NONCE.EXPIRES.HMAC`, see
//! [`signed_connect_state`]); those expire and are single-use too. On top, at most
//! `[connect] max_new_users_per_hour` new users come through Connect per hour.
//!
//! The authorization `code` is not needed (the daemon uses the application token) and is never
//! logged.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{HttpState, STORE_DEADLINE, hmac_hex, hmac_verify};
use crate::config::Config;
use crate::ids::{self, Escaped};
use crate::store::{ConnectRedemption, StateProof, Store, StoreError};

/// Longest `state` looked at.
const MAX_STATE_LEN: usize = 256;

/// A signed state may not claim to be valid further ahead than this.
const MAX_SIGNED_TTL: chrono::Duration = chrono::Duration::days(1);

/// How Connect URLs are built and callbacks bounded (`[connect]` plus the client id).
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub authorize_url: String,
    pub redirect_uri: String,
    pub scope: String,
    pub client_id: String,
    /// `live` or `simulated` (Connect's `mode`).
    pub mode: String,
    pub state_ttl: std::time::Duration,
    pub max_new_users_per_hour: u32,
}

impl ConnectSettings {
    pub fn from_config(config: &Config) -> Self {
        let c = &config.connect;
        ConnectSettings {
            authorize_url: c.authorize_url.clone(),
            redirect_uri: c.redirect_uri.clone(),
            scope: c.scope.clone(),
            client_id: config.smartcar.client_id.clone(),
            mode: config.smartcar.vehicle_mode.clone(),
            state_ttl: c.state_ttl,
            max_new_users_per_hour: c.max_new_users_per_hour,
        }
    }
}

/// A Connect URL ready to hand to one user.
#[derive(Debug, Clone)]
pub struct IssuedConnectUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Why no Connect URL could be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0} is not set: it is needed to build Connect URLs")]
    NotConfigured(&'static str),
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Issues a Connect URL with a fresh single-use `state`, recorded (as its hash) in `store`.
pub async fn issue_connect_url(
    store: &Store,
    settings: &ConnectSettings,
    now: DateTime<Utc>,
) -> Result<IssuedConnectUrl, IssueError> {
    if settings.redirect_uri.is_empty() {
        return Err(IssueError::NotConfigured("connect.redirect_uri"));
    }
    if settings.client_id.is_empty() {
        return Err(IssueError::NotConfigured("smartcar.client_id"));
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| IssueError::Random(e.to_string()))?;
    let state = hex::encode(nonce);
    let ttl = chrono::Duration::from_std(settings.state_ttl).unwrap_or(chrono::Duration::hours(1));
    let expires_at = now + ttl;
    store
        .issue_connect_state(&sha256_hex(&state), now, expires_at)
        .await?;
    let mut url = reqwest::Url::parse(&settings.authorize_url)
        .map_err(|_| IssueError::NotConfigured("connect.authorize_url"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &settings.client_id)
        .append_pair("redirect_uri", &settings.redirect_uri)
        .append_pair("scope", &settings.scope)
        .append_pair("mode", &settings.mode)
        .append_pair("state", &state);
    Ok(IssuedConnectUrl {
        url: url.into(),
        expires_at,
    })
}

/// A state an application signs itself with `[http] connect_state_secret`:
/// `NONCE.EXPIRES.HMAC`, EXPIRES in Unix seconds (at most a day ahead), HMAC the hex
/// HMAC-SHA256 of `NONCE.EXPIRES`. NONCE must be unique (16+ random bytes, hex): each is
/// accepted once.
pub fn signed_connect_state(
    secret: &SecretString,
    nonce: &str,
    expires_at: DateTime<Utc>,
) -> String {
    let signed = format!("{nonce}.{}", expires_at.timestamp());
    let mac = hmac_hex(secret, signed.as_bytes());
    format!("{signed}.{mac}")
}

/// What the `state` proves, or `None` if it cannot be valid. Only a signature check happens
/// here; whether it was issued, is unexpired and unused is the store's to say.
fn state_proof<'a>(
    secret: Option<&SecretString>,
    state: &str,
    hash: &'a str,
    now: DateTime<Utc>,
) -> Option<StateProof<'a>> {
    if state.is_empty()
        || state.len() > MAX_STATE_LEN
        || !state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return None;
    }
    let mut parts = state.rsplitn(3, '.');
    if let (Some(mac), Some(expires), Some(nonce)) = (parts.next(), parts.next(), parts.next()) {
        // Three parts: a signed state, valid only with the secret.
        let secret = secret?;
        let signed = &state[..state.len() - mac.len() - 1];
        if nonce.is_empty() || !hmac_verify(secret, signed.as_bytes(), mac) {
            return None;
        }
        let expires_at = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        if expires_at <= now || expires_at > now + MAX_SIGNED_TTL {
            return None;
        }
        return Some(StateProof::Signed {
            state_hash: hash,
            expires_at,
        });
    }
    Some(StateProof::Issued { state_hash: hash })
}

#[derive(Debug, Deserialize)]
pub(super) struct CallbackQuery {
    state: Option<String>,
    user_id: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(300) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title></head>\n<body><h1>{t}</h1>\n<p>{m}</p></body></html>\n",
        t = escape(title),
        m = escape(message)
    );
    (status, Html(html)).into_response()
}

fn retry_page() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "The connection could not be recorded right now. Please reload this page.",
    )
}

pub(super) async fn callback(
    State(state): State<HttpState>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    if let Some(error) = q.error.as_deref() {
        // Nothing is registered on this path; what Connect said is shown escaped.
        let description = q.error_description.as_deref().unwrap_or_default();
        tracing::info!(
            error = %Escaped(error),
            description = %Escaped(description),
            "connect callback: Connect reported an error"
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Vehicle not connected",
            &format!("Smartcar Connect reported: {error}. {description}"),
        );
    }
    let Some(user_id) = q.user_id.as_deref().filter(|u| ids::is_valid(u)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Vehicle not connected",
            "The link carries no valid user id.",
        );
    };
    let now = Utc::now();
    let raw_state = q.state.as_deref().unwrap_or_default();
    let hash = sha256_hex(raw_state);
    let secret = state.secrets.connect_state_secret();
    let Some(proof) = state_proof(secret.as_ref(), raw_state, &hash, now) else {
        tracing::warn!("connect callback refused: state missing or not valid");
        return invalid_link();
    };
    let settings = &state.connect;
    let redeemed = tokio::time::timeout(
        STORE_DEADLINE,
        state
            .store
            .redeem_connect_state(proof, user_id, settings.max_new_users_per_hour, now),
    )
    .await;
    match redeemed {
        Ok(Ok(ConnectRedemption::Registered { new })) => {
            state.wake.notify_one();
            tracing::info!(user_id, new, "connect callback: connections sync enqueued");
            page(
                StatusCode::OK,
                "Vehicle connected",
                "Your vehicle is connected. You can close this page.",
            )
        }
        Ok(Ok(ConnectRedemption::StateRejected)) => {
            tracing::warn!("connect callback refused: state unknown, expired or already used");
            invalid_link()
        }
        Ok(Ok(ConnectRedemption::TooManyRegistrations)) => {
            tracing::warn!(
                limit = settings.max_new_users_per_hour,
                "connect callback refused: connect.max_new_users_per_hour reached"
            );
            page(
                StatusCode::TOO_MANY_REQUESTS,
                "Please try again later",
                "Too many vehicles were connected in the last hour. Please try again later.",
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(user_id, error = %e, "connect callback: cannot record the user");
            retry_page()
        }
        Err(_) => {
            tracing::warn!(
                user_id,
                "connect callback: the database did not answer in time"
            );
            retry_page()
        }
    }
}

fn invalid_link() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Not connected",
        "This link is not valid or was already used. Please start connecting your vehicle again.",
    )
}

/// `POST /connect/url` (admin listener): a fresh Connect URL as JSON `{url, expires_at}`.
pub(super) async fn issue(State(state): State<HttpState>) -> Response {
    match issue_connect_url(&state.store, &state.connect, Utc::now()).await {
        Ok(issued) => (
            StatusCode::OK,
            Json(json!({ "url": issued.url, "expires_at": issued.expires_at.to_rfc3339() })),
        )
            .into_response(),
        Err(e @ IssueError::NotConfigured(_)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot issue a Connect URL");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "cannot issue a Connect URL right now" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_state_verifies_against_its_secret_only_and_expires() {
        let secret = SecretString::from("state-secret".to_owned());
        let now = Utc::now();
        let s = signed_connect_state(&secret, "n0nce", now + chrono::Duration::minutes(10));
        let h = sha256_hex(&s);
        assert!(matches!(
            state_proof(Some(&secret), &s, &h, now),
            Some(StateProof::Signed { .. })
        ));
        // Without the secret, or under another one, it proves nothing.
        assert_eq!(state_proof(None, &s, &h, now), None);
        let other = SecretString::from("x".to_owned());
        assert_eq!(state_proof(Some(&other), &s, &h, now), None);
        // Expired, or claiming more than a day.
        let old = signed_connect_state(&secret, "n", now - chrono::Duration::seconds(1));
        assert_eq!(state_proof(Some(&secret), &old, &h, now), None);
        let far = signed_connect_state(&secret, "n", now + chrono::Duration::days(2));
        assert_eq!(state_proof(Some(&secret), &far, &h, now), None);
        // The pre-expiry NONCE.HMAC form is no longer a signed state: it would have to be an
        // issued one (and the store knows no such state).
        assert!(matches!(
            state_proof(Some(&secret), "nonce.00ff", &h, now),
            Some(StateProof::Issued { .. })
        ));
        assert_eq!(state_proof(Some(&secret), "", &h, now), None);
        assert_eq!(state_proof(Some(&secret), "a\nb", &h, now), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}

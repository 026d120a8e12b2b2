//! `GET /connect/callback`: where Smartcar Connect sends the user back
//! (`?code=…&state=…&user_id=…`, or `?error=…&error_description=…`). The user becomes known
//! (`source = connect`) and their connections are synced at once, so the new vehicle is polled
//! minutes after it was connected instead of at the next hourly tick.
//!
//! The authorization `code` is not needed (the daemon uses the application token) and is never
//! logged.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use secrecy::SecretString;
use serde::Deserialize;

use super::{HttpState, STORE_DEADLINE, hmac_hex, hmac_verify};
use crate::store::{JobKind, UserSource};

#[derive(Debug, Deserialize)]
pub(super) struct CallbackQuery {
    state: Option<String>,
    user_id: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The `state` to hand Connect when `[http] connect_state_secret` is set: `NONCE.HMAC`, where
/// HMAC is the hex HMAC-SHA256 of the nonce under the secret. The application that builds the
/// Connect URL computes the same.
pub fn connect_state(secret: &SecretString, nonce: &str) -> String {
    format!("{nonce}.{}", hmac_hex(secret, nonce.as_bytes()))
}

fn state_is_valid(secret: &SecretString, state: &str) -> bool {
    match state.rsplit_once('.') {
        Some((nonce, mac)) if !nonce.is_empty() => hmac_verify(secret, nonce.as_bytes(), mac),
        _ => false,
    }
}

/// Smartcar user ids are UUIDs; anything outside this alphabet is not one.
fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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

pub(super) async fn callback(
    State(state): State<HttpState>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    if let Some(secret) = state.secrets.connect_state_secret()
        && !q
            .state
            .as_deref()
            .is_some_and(|s| state_is_valid(&secret, s))
    {
        tracing::warn!("connect callback refused: state does not verify");
        return page(
            StatusCode::FORBIDDEN,
            "Not connected",
            "This link is not valid. Please start connecting your vehicle again.",
        );
    }
    if let Some(error) = q.error.as_deref() {
        let description = q.error_description.as_deref().unwrap_or_default();
        tracing::info!(
            error,
            description,
            "connect callback: Connect reported an error"
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Vehicle not connected",
            &format!("Smartcar Connect reported: {error}. {description}"),
        );
    }
    let Some(user_id) = q.user_id.as_deref().filter(|u| valid_user_id(u)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Vehicle not connected",
            "The link carries no valid user id.",
        );
    };
    let registered = tokio::time::timeout(STORE_DEADLINE, async {
        let new = state.store.add_user(user_id, UserSource::Connect).await?;
        // Even a known user: the vehicle just connected is new.
        state
            .store
            .enqueue(JobKind::SyncConnections, user_id, Utc::now())
            .await?;
        Ok::<bool, crate::store::StoreError>(new)
    })
    .await;
    match registered {
        Ok(Ok(new)) => {
            state.wake.notify_one();
            tracing::info!(user_id, new, "connect callback: connections sync enqueued");
            page(
                StatusCode::OK,
                "Vehicle connected",
                "Your vehicle is connected. You can close this page.",
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(user_id, error = %e, "connect callback: cannot record the user");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "The connection could not be recorded right now. Please reload this page.",
            )
        }
        Err(_) => {
            tracing::warn!(
                user_id,
                "connect callback: the database did not answer in time"
            );
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "The connection could not be recorded right now. Please reload this page.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_verifies_against_its_secret_only() {
        let secret = SecretString::from("state-secret".to_owned());
        let s = connect_state(&secret, "nonce-1");
        assert!(state_is_valid(&secret, &s));
        assert!(!state_is_valid(&secret, "nonce-1.00"));
        assert!(!state_is_valid(&secret, "nonce-1"));
        assert!(!state_is_valid(&SecretString::from("x".to_owned()), &s));
    }

    #[test]
    fn user_ids_are_checked_and_html_is_escaped() {
        assert!(valid_user_id("3f1c7a2e-0b9d-4e8a-9c51-2d7f6b3a1e90"));
        assert!(!valid_user_id("<script>"));
        assert!(!valid_user_id(""));
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}

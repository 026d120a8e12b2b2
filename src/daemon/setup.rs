//! Building the parts from the configuration: the store, the API client (with its token
//! provider), the queue's settings; and the one way a database URL is shown.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::queue::{QueueSettings, RetryPolicy};
use crate::smartcar::{Client, ClientConfig, SecretSource, TokenConfig, TokenProvider};
use crate::store::{Store, StoreOptions};

/// Opens the database named by the config (it is not migrated here).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let opts = StoreOptions {
        max_connections: config.database.max_connections,
        statement_timeout: config.database.statement_timeout,
        ..StoreOptions::default()
    };
    Store::connect(&config.database.url, &opts)
        .await
        .with_context(|| {
            format!(
                "cannot open the database ({})",
                redact_url(&config.database.url)
            )
        })
}

/// A database URL without its password, for messages: the userinfo password and any
/// `password`/`sslpassword` query parameter become `***`. A URL that does not parse is shown as
/// its scheme alone, since where its password starts cannot be known.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret_param = |k: &str| {
                k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
            };
            if u.query_pairs().any(|(k, _)| secret_param(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret_param(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => {
            let scheme = url.split(':').next().unwrap_or_default();
            if scheme.len() < 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
                format!("{scheme}://***")
            } else {
                "***".to_owned()
            }
        }
    }
}

/// The token provider and the API client, as the config says. The provider's refresher stops
/// with `shutdown`.
pub fn build_client(
    config: &Config,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Client> {
    build_client_with_secret(config, config.client_secret_source(), shutdown, tracker)
}

/// [`build_client`] with a given secret source: the daemon keeps a handle on it so a reload
/// can replace the secret the provider reads.
pub fn build_client_with_secret(
    config: &Config,
    client_secret: SecretSource,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Client> {
    let s = &config.smartcar;
    let http = crate::smartcar::client::http_client(s.request_timeout)
        .context("cannot build the HTTP client")?;
    let mut token_config = TokenConfig::new(s.auth_url.clone(), s.client_id.clone(), client_secret);
    token_config.request_timeout = s.request_timeout;
    let tokens = TokenProvider::start(token_config, http.clone(), shutdown, tracker);
    let client = Client::new(
        ClientConfig {
            api_url: s.api_url.clone(),
            request_timeout: s.request_timeout,
            vehicle_mode: s.vehicle_mode.clone(),
            max_retry_after: config.queue.max_retry_after,
            max_in_flight: config.queue.concurrency,
        },
        http,
        tokens,
        config.rate_limit(),
    )
    .context("smartcar.api_url")?;
    Ok(client)
}

pub fn queue_settings(config: &Config) -> QueueSettings {
    let q = &config.queue;
    QueueSettings {
        workers: q
            .concurrency
            .saturating_mul(crate::queue::WORKERS_PER_REQUEST),
        lease: q.lease,
        shutdown_grace: q.shutdown_grace,
        retry: RetryPolicy {
            min: q.backoff_min,
            max: q.backoff_max,
            max_attempts: q.max_attempts,
        },
        idle_poll: Duration::from_secs(2),
        max_retry_after: q.max_retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_show_no_password_in_any_form() {
        let cases = [
            (
                "postgres://u:S3cretPw@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u@h/db?sslmode=require&password=S3cretPw",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            ("postgres://u:S3cretPw#x@h/db", "postgres://***"),
            ("sqlite://fleet.db", "sqlite://fleet.db"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
    }
}

//! Assembles the parts and runs them: `run` (the service) and `sync-once` (one full cycle).
//!
//! - `setup.rs`: the store, the client and the queue settings, built from the config;
//! - `sync_once.rs`: one full cycle, phase after phase, with a deadline;
//! - `housekeeping.rs`: the token audit saver and hourly maintenance.
//!
//! Signals, reload and systemd notify are `crate::lifecycle`.

mod housekeeping;
mod setup;
mod sync_once;

pub use housekeeping::save_token_audit;
use housekeeping::{maintenance, save_token_audit_every};
pub use setup::{build_client, build_client_with_secret, open_store, queue_settings, redact_url};
pub use sync_once::CycleReport;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::Identity;
use crate::config::Config;
use crate::http::{ConnectSettings, HttpSecrets, HttpState, ServerLimits};
use crate::jobs::JobContext;
use crate::queue::Runner;
use crate::schedule::Schedule;
use crate::smartcar::{Client, SecretSource, TokenProvider};
use crate::store::Store;

/// Everything a running daemon is made of.
pub struct Daemon {
    config: Config,
    store: Store,
    client: Client,
    /// Wakes the workers when something enqueued work in this process.
    wake: Arc<Notify>,
    /// Every background task (heartbeat, HTTP, schedule, maintenance): closed and awaited on
    /// the way out.
    tracker: TaskTracker,
    /// The source the token provider reads the client secret from (replaced on reload).
    client_secret: SecretSource,
    /// The HTTP surface's secrets (replaced on reload).
    http_secrets: Arc<HttpSecrets>,
    /// The HTTP surface's bounds (one body budget for both listeners).
    http_limits: Arc<ServerLimits>,
    /// This process in the `daemons` table: its leases carry this id.
    identity: Identity,
}

/// A listener that could not be bound: the key that names it, the address, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key}): {source}")]
pub struct ListenError {
    pub key: &'static str,
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// The bound listeners: public (`http.listen`) and admin (`http.admin_listen`).
struct Listeners {
    public: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Each listener with the routes it serves: with no admin listener, the public one serves
    /// every route.
    fn into_routers(self, state: &HttpState) -> Vec<(tokio::net::TcpListener, axum::Router)> {
        let mut out = Vec::new();
        match (self.public, self.admin) {
            (Some(public), Some(admin)) => {
                out.push((public, crate::http::public_router(state.clone())));
                out.push((admin, crate::http::admin_router(state.clone())));
            }
            (Some(public), None) => out.push((public, crate::http::router(state.clone()))),
            (None, Some(admin)) => out.push((admin, crate::http::admin_router(state.clone()))),
            (None, None) => {}
        }
        out
    }
}

impl Daemon {
    /// Opens and migrates the database, starts the token provider, and restores a stored app
    /// pause so a restart honours it. The process registers as a `run` daemon.
    pub async fn start(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Daemon> {
        Self::start_as("run", config, shutdown).await
    }

    /// [`Daemon::start`], registering in the `daemons` table as `kind` (`run`, `sync-once`):
    /// it heartbeats until `shutdown`, takes its share of the rate budget, and its jobs are
    /// retaken within seconds if it dies.
    pub async fn start_as(
        kind: &'static str,
        config: Config,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Daemon> {
        let store = open_store(&config).await?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let client_secret = config.client_secret_source();
        let tracker = TaskTracker::new();
        let client =
            build_client_with_secret(&config, client_secret.clone(), shutdown.clone(), &tracker)?;
        if let Some(until) = store.app_paused_until(Utc::now()).await? {
            tracing::info!(until = %until, "the application is paused by a stored 429");
            client.pause_until(until);
        }
        let http_secrets = Arc::new(HttpSecrets::from_config(&config));
        let http_limits = Arc::new(ServerLimits::from_config(&config.http));
        let identity = Identity::new(kind);
        if let Some(budget) = client.budget() {
            crate::budget::join(&store, &identity, budget).await;
        }
        let wake = Arc::new(Notify::new());
        tracker.spawn(crate::budget::heartbeat_loop(
            store.clone(),
            identity.clone(),
            client.budget().cloned(),
            wake.clone(),
            shutdown.clone(),
        ));
        Ok(Daemon {
            config,
            store,
            client,
            wake,
            tracker,
            client_secret,
            http_secrets,
            http_limits,
            identity,
        })
    }

    /// The database this daemon works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The API client (and through it the token provider and the rate budget).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This process in the `daemons` table.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Stops the background tasks started so far (the heartbeat deregisters, so the others take
    /// this process's share back at once), then closes the pool. `shutdown` must be cancelled
    /// first.
    pub async fn close(&self) {
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 5 s");
        }
        self.store.close().await;
    }

    fn runner(&self) -> Runner {
        Runner::new(
            JobContext {
                store: self.store.clone(),
                client: self.client.clone(),
                allowance: self.config.allowance(),
                subscriptions: self.config.subscriptions(),
                wake: self.wake.clone(),
            },
            queue_settings(&self.config),
            self.wake.clone(),
        )
        .owned_by(&self.identity.daemon_id)
    }

    pub fn schedule(&self) -> anyhow::Result<Schedule> {
        let s = &self.config.schedule;
        Schedule::new(
            &s.connections,
            &s.signals,
            s.discover_users,
            self.store.clone(),
            self.wake.clone(),
        )
        .map(|s| s.with_allowance(self.config.allowance()))
        .map_err(anyhow::Error::msg)
    }

    /// The service: schedule, maintenance and workers until `shutdown`; then a clean stop.
    /// `ready` is called once everything is up (systemd's READY=1).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
    ) -> anyhow::Result<()> {
        let schedule = self.schedule()?;
        // Bound first: a port in use fails the start (systemd restarts), not the first webhook.
        let listeners = self.bind_http().await?;
        schedule.catch_up(Utc::now()).await?;
        schedule.start(shutdown.clone(), &self.tracker).await?;
        let state = self.http_state(Some(schedule.clone()));
        for (listener, router) in listeners.into_routers(&state) {
            let stop = shutdown.clone();
            let limits = state.limits.clone();
            self.tracker.spawn(async move {
                if let Err(e) = crate::http::server::serve(listener, router, &limits, stop).await {
                    tracing::error!(error = %e, "the HTTP server stopped");
                }
            });
        }
        // The provider fetches lazily; fetch now so /readyz is ready without waiting for a job.
        let tokens = self.client.tokens().clone();
        self.tracker.spawn(async move {
            if let Err(e) = tokens.get().await {
                tracing::warn!(error = %e, "no access token at start");
            }
        });
        self.tracker.spawn(save_token_audit_every(
            self.store.clone(),
            self.client.tokens().audit().clone(),
            shutdown.clone(),
        ));
        self.tracker
            .spawn(crate::lifecycle::systemd_notify(shutdown.clone()));
        self.tracker.spawn(maintenance(
            self.store.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        let runner = self.runner();
        tracing::info!(
            database = self.store.backend_name(),
            concurrency = self.config.queue.concurrency,
            "smartcar-sync running"
        );
        ready();
        crate::lifecycle::notify(&[sd_notify::NotifyState::Ready]);
        runner.run(shutdown).await;
        // After the workers stopped: the last calls are in it.
        save_token_audit(&self.store, self.client.tokens().audit()).await;
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 10 s");
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// The listeners `[http]` asks for, bound (a port in use is an error now, not later).
    async fn bind_http(&self) -> anyhow::Result<Listeners> {
        let h = &self.config.http;
        let bind = |key: &'static str, addr: String| async move {
            if addr.is_empty() {
                return Ok(None);
            }
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| ListenError {
                    key,
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(listen = %addr, key, "HTTP server listening");
            anyhow::Ok(Some(listener))
        };
        let public = bind("http.listen", h.listen.clone()).await?;
        let admin = bind("http.admin_listen", h.admin_listen.clone()).await?;
        if public.is_some() && !self.http_secrets.has_management_token() {
            tracing::warn!(
                "no management token (SMARTCAR_MANAGEMENT_TOKEN or smartcar.management_token_file): \
                 webhooks will be answered 503"
            );
        }
        if public.is_some() && admin.is_none() {
            tracing::warn!(
                "http.admin_listen is empty: /metrics, /readyz and POST /connect/url are served \
                 on http.listen; do not publish it beyond a trusted network"
            );
        }
        Ok(Listeners { public, admin })
    }

    /// What the HTTP handlers share; `schedule` is the running one (for `/readyz`).
    pub fn http_state(&self, schedule: Option<Schedule>) -> HttpState {
        HttpState {
            store: self.store.clone(),
            tokens: self.client.tokens().clone(),
            schedule,
            wake: self.wake.clone(),
            secrets: self.http_secrets.clone(),
            limits: self.http_limits.clone(),
            connect: Arc::new(ConnectSettings::from_config(&self.config)),
            allowance: self.config.allowance(),
        }
    }

    /// A handle that applies a re-read configuration to this daemon (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            client_secret: self.client_secret.clone(),
            tokens: self.client.tokens().clone(),
            http_secrets: self.http_secrets.clone(),
        }
    }
}

/// Applies the reloadable parts of a configuration to a running daemon: the client secret, the
/// management token and the Connect state secret. Work in progress is not disturbed; other keys
/// take effect at the next restart.
#[derive(Clone, Debug)]
pub struct Reloader {
    client_secret: SecretSource,
    tokens: TokenProvider,
    http_secrets: Arc<HttpSecrets>,
}

impl Reloader {
    pub fn apply(&self, config: &Config) {
        match (&self.client_secret, config.client_secret_source()) {
            (SecretSource::Value(_), new @ SecretSource::Value(_)) => match new.read() {
                Ok(secret) => self.client_secret.replace(secret),
                Err(e) => tracing::warn!(error = %e, "reload: cannot read the client secret"),
            },
            // A file is re-read on every token request.
            (SecretSource::File(old), SecretSource::File(new)) if *old == new => {}
            _ => tracing::warn!(
                "reload: the client secret moved between a value and a file (or to another \
                 file); that takes effect at the next restart"
            ),
        }
        self.http_secrets.reload(config);
        // A rotated secret is used at once, not at the next renewal; on failure the current
        // token stays in use while it is valid.
        self.tokens.refresh_now();
        tracing::info!("reloaded: secrets re-read, fetching a new access token");
    }
}

//! Assembles the parts and runs them: `run` (the service) and `sync-once` (one full cycle).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::jobs::JobContext;
use crate::queue::{QueueSettings, RetryPolicy, RunStats, Runner};
use crate::schedule::Schedule;
use crate::smartcar::{Client, ClientConfig, TokenConfig, TokenProvider};
use crate::store::{JobKind, Store, StoreOptions};

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

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The token provider and the API client, as the config says. The provider's refresher stops
/// with `shutdown`.
pub fn build_client(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Client> {
    let s = &config.smartcar;
    let http = crate::smartcar::client::http_client(s.request_timeout)
        .context("cannot build the HTTP client")?;
    let mut token_config = TokenConfig::new(
        s.auth_url.clone(),
        s.client_id.clone(),
        config.client_secret_source(),
    );
    token_config.request_timeout = s.request_timeout;
    let tokens = TokenProvider::start(token_config, http.clone(), shutdown);
    let client = Client::new(
        ClientConfig {
            api_url: s.api_url.clone(),
            request_timeout: s.request_timeout,
            vehicle_mode: s.vehicle_mode.clone(),
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
        concurrency: q.concurrency,
        lease: q.lease,
        shutdown_grace: q.shutdown_grace,
        retry: RetryPolicy {
            min: q.backoff_min,
            max: q.backoff_max,
            max_attempts: q.max_attempts,
        },
        idle_poll: Duration::from_secs(2),
    }
}

/// Everything a running daemon is made of.
pub struct Daemon {
    pub config: Config,
    pub store: Store,
    pub client: Client,
    pub wake: Arc<Notify>,
    pub tracker: TaskTracker,
}

impl Daemon {
    /// Opens and migrates the database, starts the token provider, and restores a stored app
    /// pause so a restart honours it.
    pub async fn start(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Daemon> {
        let store = open_store(&config).await?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let client = build_client(&config, shutdown.clone())?;
        if let Some(until) = store.app_paused_until(Utc::now()).await? {
            tracing::info!(until = %until, "the application is paused by a stored 429");
            client.pause_until(until);
        }
        Ok(Daemon {
            config,
            store,
            client,
            wake: Arc::new(Notify::new()),
            tracker: TaskTracker::new(),
        })
    }

    fn runner(&self) -> Runner {
        Runner::new(
            JobContext {
                store: self.store.clone(),
                client: self.client.clone(),
            },
            queue_settings(&self.config),
            self.wake.clone(),
        )
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
        schedule.catch_up(Utc::now()).await?;
        schedule.start(shutdown.clone(), &self.tracker).await?;
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
        runner.run(shutdown).await;
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

    /// One full cycle, in order: discovery (if on), every known user's connections, then every
    /// connected vehicle's signals. Returns when its jobs are done.
    pub async fn sync_once(
        &self,
        shutdown: &CancellationToken,
        progress: impl Fn(&str),
    ) -> anyhow::Result<CycleReport> {
        let started = Utc::now();
        let stop_workers = CancellationToken::new();
        let runner = self.runner();
        let stats = runner.stats();
        let workers = tokio::spawn(runner.run(stop_workers.clone()));
        let result = async {
            if self.config.schedule.discover_users {
                self.store
                    .enqueue(JobKind::DiscoverUsers, "", Utc::now())
                    .await?;
                self.wait_for(
                    JobKind::DiscoverUsers,
                    shutdown,
                    &progress,
                    "discovering users",
                )
                .await?;
            }
            // Users synced earlier in this cycle (just discovered) are not synced twice.
            self.store
                .enqueue_syncs_for_all_users(Utc::now(), Some(started))
                .await?;
            self.wake.notify_one();
            self.wait_for(
                JobKind::SyncConnections,
                shutdown,
                &progress,
                "syncing connections",
            )
            .await?;
            // Vehicles first polled by their sync in this cycle are not polled twice.
            self.store
                .enqueue_polls_for_pollable(Utc::now(), Some(started))
                .await?;
            self.wake.notify_one();
            self.wait_for(JobKind::PollSignals, shutdown, &progress, "polling signals")
                .await?;
            anyhow::Ok(())
        }
        .await;
        stop_workers.cancel();
        let _ = workers.await;
        result?;
        Ok(CycleReport {
            started,
            finished: Utc::now(),
            dead: self.store.dead_since(started).await?,
            stats,
        })
    }

    async fn wait_for(
        &self,
        kind: JobKind,
        shutdown: &CancellationToken,
        progress: &impl Fn(&str),
        phase: &str,
    ) -> anyhow::Result<()> {
        self.wake.notify_one();
        loop {
            let open = self.store.open_jobs(Some(kind)).await?;
            progress(&format!("{phase}: {open} jobs open"));
            if open == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// What `sync-once` did.
#[derive(Debug)]
pub struct CycleReport {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Jobs that ended dead during the cycle.
    pub dead: i64,
    pub stats: Arc<RunStats>,
}

/// Hourly housekeeping: prune finished jobs, keep PostgreSQL partitions ahead, apply retention.
async fn maintenance(store: Store, config: Config, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Utc::now();
        let keep =
            chrono::Duration::from_std(config.queue.keep_done).unwrap_or(chrono::Duration::days(7));
        match store.prune_finished_jobs(now - keep).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned finished jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune finished jobs"),
        }
        if let Err(e) = store.ensure_partitions(now, 3).await {
            tracing::warn!(error = %e, "cannot create sample partitions ahead");
        }
        if let Some(retention) = config.sample_retention() {
            let cutoff =
                now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            match store.drop_partitions_before(cutoff).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, cutoff = %cutoff, "retention: dropped old samples")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}

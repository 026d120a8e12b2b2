//! Assembles the parts and runs them: `run` (the service) and `sync-once` (one full cycle).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::Identity;
use crate::config::Config;
use crate::http::{ConnectSettings, HttpSecrets, HttpState, ServerLimits};
use crate::jobs::JobContext;
use crate::queue::{QueueSettings, RetryPolicy, RunStats, Runner};
use crate::schedule::Schedule;
use crate::smartcar::auth::TokenAudit;
use crate::smartcar::{Client, ClientConfig, SecretSource, TokenConfig, TokenProvider};
use crate::store::{JobKind, OpenJob, Store, StoreOptions, TokenAuditRow};

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
        max_retry_after: q.max_retry_after,
    }
}

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

    /// One full cycle, in order: discovery (if on), every known user's connections, then every
    /// connected vehicle's signals. Returns when its jobs are done.
    pub async fn sync_once(
        &self,
        shutdown: &CancellationToken,
        progress: impl Fn(&str),
    ) -> anyhow::Result<CycleReport> {
        self.sync_once_until(shutdown, None, progress).await
    }

    /// [`Daemon::sync_once`] that always ends: once `deadline` has passed since the start, or
    /// as soon as every open job waits beyond it (a throttled vehicle deferred for minutes, an
    /// app pause), it stops claiming and reports the jobs left open
    /// ([`CycleReport::out_of_time`], [`CycleReport::deferred`]). Jobs running at that moment
    /// get `queue.shutdown_grace` to finish, as on SIGTERM. Nothing is lost: the open jobs stay
    /// in the queue, due when their wait ends.
    pub async fn sync_once_until(
        &self,
        shutdown: &CancellationToken,
        deadline: Option<Duration>,
        progress: impl Fn(&str),
    ) -> anyhow::Result<CycleReport> {
        let started = Utc::now();
        // Any duration is accepted; one beyond the clocks' range means "no deadline in practice".
        let deadline = deadline.map(|d| {
            let far = Duration::from_secs(100 * 365 * 86_400);
            let now = tokio::time::Instant::now();
            (
                now.checked_add(d)
                    .or_else(|| now.checked_add(far))
                    .unwrap_or(now),
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| started.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            )
        });
        let stop_workers = CancellationToken::new();
        let runner = self.runner();
        let stats = runner.stats();
        let workers = tokio::spawn(runner.run(stop_workers.clone()));
        let result = async {
            use Phase::OutOfTime;
            if self.config.schedule.discover_users {
                self.store
                    .enqueue(JobKind::DiscoverUsers, "", Utc::now())
                    .await?;
                let p = "discovering users";
                if self
                    .wait_for(JobKind::DiscoverUsers, shutdown, deadline, &progress, p)
                    .await?
                    == OutOfTime
                {
                    return Ok(OutOfTime);
                }
            }
            // Users synced earlier in this cycle (just discovered) are not synced twice. Their
            // syncs must have finished first: on PostgreSQL an INSERT … SELECT racing a commit
            // reads the old `last_synced_at` and then finds no open job to conflict with.
            let p = "syncing new users";
            if self
                .wait_for(JobKind::SyncConnections, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            self.store
                .enqueue_syncs_for_all_users(Utc::now(), Some(started))
                .await?;
            self.wake.notify_one();
            let p = "syncing connections";
            if self
                .wait_for(JobKind::SyncConnections, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            // Vehicles first polled by their sync in this cycle are not polled twice (once
            // those polls are over, for the same reason as above).
            let p = "polling new vehicles";
            if self
                .wait_for(JobKind::PollSignals, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            self.store
                .enqueue_polls_for_pollable(Utc::now(), Some(started))
                .await?;
            self.wake.notify_one();
            let p = "polling signals";
            self.wait_for(JobKind::PollSignals, shutdown, deadline, &progress, p)
                .await
        }
        .await;
        stop_workers.cancel();
        let _ = workers.await;
        save_token_audit(&self.store, self.client.tokens().audit()).await;
        let out_of_time = result? == Phase::OutOfTime;
        let (deferred, open_jobs) = if out_of_time {
            (
                self.store.open_job_list(DEFERRED_LISTED).await?,
                self.store.open_jobs(None).await?,
            )
        } else {
            (Vec::new(), 0)
        };
        Ok(CycleReport {
            started,
            finished: Utc::now(),
            dead: self.store.dead_since(started).await?,
            stats,
            out_of_time,
            open_jobs,
            deferred,
        })
    }

    async fn wait_for(
        &self,
        kind: JobKind,
        shutdown: &CancellationToken,
        deadline: Option<(tokio::time::Instant, DateTime<Utc>)>,
        progress: &impl Fn(&str),
        phase: &str,
    ) -> anyhow::Result<Phase> {
        self.wake.notify_one();
        // Poll often (a COUNT on the open-jobs index is cheap) so a phase ends promptly; report
        // progress at a human pace.
        let mut reported: Option<tokio::time::Instant> = None;
        loop {
            // A database restart mid-cycle is waited out (the pool reconnects), not fatal.
            let open = match self.store.open_jobs(Some(kind)).await {
                Ok(n) => n,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot count open jobs; retrying");
                    -1
                }
                Err(e) => return Err(e.into()),
            };
            let due = reported.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
            if open == 0 || (open > 0 && due) {
                progress(&format!("{phase}: {open} jobs open"));
                reported = Some(tokio::time::Instant::now());
            }
            if open == 0 {
                return Ok(Phase::Done);
            }
            if let Some((at, at_utc)) = deadline {
                if tokio::time::Instant::now() >= at {
                    tracing::warn!(phase, open, "sync-once deadline reached: no more claims");
                    return Ok(Phase::OutOfTime);
                }
                // Every open job waits beyond the deadline (a running job's run_at is in the
                // past): waiting longer cannot finish anything.
                if due
                    && let Ok(first) = self.store.open_job_list(1).await
                    && first.first().is_some_and(|j| j.run_at > at_utc)
                {
                    tracing::warn!(
                        phase,
                        open,
                        "every open job waits beyond the sync-once deadline"
                    );
                    return Ok(Phase::OutOfTime);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
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

/// Writes the token audit's changed records; on failure they are kept for the next try.
pub async fn save_token_audit(store: &Store, audit: &TokenAudit) {
    let changed = audit.take_changed();
    if changed.is_empty() {
        return;
    }
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let now = Utc::now();
    let rows: Vec<TokenAuditRow> = changed
        .iter()
        .map(|t| TokenAuditRow {
            fingerprint: t.fingerprint.clone(),
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            calls_ok: count(t.ok),
            calls_client_error: count(t.client_error),
            calls_server_error: count(t.server_error),
            calls_unauthorized: count(t.unauthorized),
            calls_rate_limited: count(t.rate_limited),
            updated_at: now,
        })
        .collect();
    if let Err(e) = store.record_token_audit(&rows).await {
        tracing::warn!(error = %e, "cannot write the token audit; keeping it for the next try");
        let fingerprints: Vec<String> = changed.into_iter().map(|t| t.fingerprint).collect();
        audit.unsaved(&fingerprints);
    }
}

/// Saves the token audit every 5 s until `shutdown` (the final save follows the workers).
async fn save_token_audit_every(store: Store, audit: Arc<TokenAudit>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => save_token_audit(&store, &audit).await,
        }
    }
}

/// How a phase of `sync-once` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Done,
    OutOfTime,
}

/// How many of the jobs left open a [`CycleReport`] lists.
const DEFERRED_LISTED: i64 = 50;

/// What `sync-once` did.
#[derive(Debug)]
pub struct CycleReport {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Jobs that ended dead during the cycle.
    pub dead: i64,
    pub stats: Arc<RunStats>,
    /// The deadline ended the cycle before every job was done.
    pub out_of_time: bool,
    /// Jobs still open when the cycle ended (0 unless `out_of_time`).
    pub open_jobs: i64,
    /// The first of them, soonest first, with why and until when they wait.
    pub deferred: Vec<OpenJob>,
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
        if let Err(e) = store.prune_connect_states(now).await {
            tracing::warn!(error = %e, "cannot prune expired Connect states");
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

//! Test support: a simulator on port 0, a fresh database per test on every backend available,
//! a configuration that points one at the other, and the daemon as a child process.

pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use secrecy::SecretString;
use smartcar_sim::{SimConfig, Simulator};
use smartcar_sync::config::Config;
use smartcar_sync::store::{Store, StoreOptions};

/// An update period long enough that no reading changes during a test. Each signal has its own
/// phase, so with an hour some of a few hundred readings would change mid-test, and a reading
/// served to a poll whose commit failed (a killed process, a database restart) would be
/// superseded before the retry could store it.
pub const READINGS_HOLD_STILL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The secret every test simulator accepts.
pub const SECRET: &str = "it-client-secret-0123456789";

/// Starts a simulator on a free loopback port, accepting [`SECRET`].
pub async fn simulator(mut config: SimConfig) -> Simulator {
    if config.client_secrets == SimConfig::default().client_secrets {
        config.client_secrets = vec![SECRET.to_owned()];
    }
    Simulator::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .expect("start the simulator")
}

/// A database for one test: a SQLite file in a temp dir, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
    pub dir: tempfile::TempDir,
    pg: Option<postgres::PgDatabase>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        TestDb {
            url,
            backend: "sqlite",
            dir,
            pg: None,
        }
    }

    pub async fn postgres() -> Option<TestDb> {
        let pg = postgres::fresh_database().await?;
        Some(TestDb {
            url: pg.url.clone(),
            backend: "postgres",
            dir: tempfile::tempdir().expect("temp dir"),
            pg: Some(pg),
        })
    }

    /// Opens (and migrates) the store.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, &StoreOptions::default())
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate");
        store
    }

    pub async fn cleanup(self) {
        if let Some(pg) = self.pg {
            pg.drop_database().await;
        }
    }
}

/// One fresh database per available backend: SQLite always, PostgreSQL when a server can be
/// had (otherwise a loud SKIPPED line).
pub async fn databases() -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite().await];
    if let Some(pg) = TestDb::postgres().await {
        dbs.push(pg);
    }
    dbs
}

/// A configuration for tests: the simulator's URLs and credentials, the given database, fast
/// backoff and short leases, no rate limit, no HTTP server.
pub fn config(sim: &Simulator, db_url: &str) -> Config {
    let mut c = Config::default();
    c.smartcar.auth_url = sim.auth_url();
    c.smartcar.api_url = sim.api_url();
    c.smartcar.client_id = sim.client_id();
    c.smartcar.client_secret = Some(SecretString::from(SECRET.to_owned()));
    c.smartcar.request_timeout = Duration::from_secs(2);
    c.database.url = db_url.to_owned();
    c.rate_limit.requests_per_minute = 0;
    c.queue.concurrency = 8;
    c.queue.max_attempts = 10;
    c.queue.lease = Duration::from_secs(3);
    c.queue.backoff_min = Duration::from_millis(50);
    c.queue.backoff_max = Duration::from_millis(500);
    c.queue.shutdown_grace = Duration::from_secs(5);
    c.http.listen = String::new();
    c.http.admin_listen = String::new();
    // Unlimited: the tests of other capabilities poll on every tick (tests/it/allowance.rs
    // sets an allowance).
    c.budget.calls_per_vehicle = 0;
    c
}

/// The same configuration as a TOML file, for the daemon as a child process. The secret goes
/// through the environment ([`child`]), as an operator would do it.
pub fn write_config(dir: &Path, c: &Config, extra: &str) -> PathBuf {
    let text = format!(
        r#"[smartcar]
auth_url = "{auth}"
api_url = "{api}"
client_id = "{id}"
request_timeout = "{timeout}ms"

[database]
url = "{db}"

[schedule]
connections = "{conn}"
signals = "{sig}"
discover_users = {disc}

[rate_limit]
requests_per_minute = {rpm}
burst = {burst}

[queue]
concurrency = {conc}
max_attempts = {max}
lease = "{lease}ms"
backoff_min = "{bmin}ms"
backoff_max = "{bmax}ms"
shutdown_grace = "{grace}ms"

[http]
listen = "{listen}"
admin_listen = "{admin}"

[budget]
calls_per_vehicle = {calls}
period = "{period}"
min_interval = "{min_interval}ms"
reserve = {reserve}
{extra}
"#,
        auth = c.smartcar.auth_url,
        api = c.smartcar.api_url,
        id = c.smartcar.client_id,
        timeout = c.smartcar.request_timeout.as_millis(),
        db = c.database.url,
        conn = c.schedule.connections,
        sig = c.schedule.signals,
        disc = c.schedule.discover_users,
        rpm = c.rate_limit.requests_per_minute,
        burst = c.rate_limit.burst,
        conc = c.queue.concurrency,
        max = c.queue.max_attempts,
        lease = c.queue.lease.as_millis(),
        bmin = c.queue.backoff_min.as_millis(),
        bmax = c.queue.backoff_max.as_millis(),
        grace = c.queue.shutdown_grace.as_millis(),
        listen = c.http.listen,
        admin = c.http.admin_listen,
        calls = c.budget.calls_per_vehicle,
        period = c.budget.period,
        min_interval = c.budget.min_interval.as_millis(),
        reserve = c.budget.reserve.0,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The daemon binary as a child process with `args`, the client secret in its environment,
/// stdout and stderr piped.
pub fn child(config: &Path, args: &[&str], log_level: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartcar-sync"));
    cmd.arg("--config").arg(config).args(args);
    daemon_env(&mut cmd, log_level);
    cmd
}

/// The environment and pipes of a daemon child: the secret as an operator passes it, no
/// overrides leaking in from the test runner's environment.
pub fn daemon_env(cmd: &mut tokio::process::Command, log_level: &str) {
    cmd.env("SMARTCAR_CLIENT_SECRET", SECRET)
        .env("SMARTCAR_SYNC_LOG", log_level)
        .env_remove("DATABASE_URL")
        .env_remove("SMARTCAR_CLIENT_ID")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Shared by the `cycle` and `reliability` benches: the simulator in this process, the daemon
//! (the release binary) as a child process whose CPU time and peak memory are its own, a
//! configuration file, a throwaway PostgreSQL, and the tables they print.
//!
//! The daemon's CPU seconds are read from `/proc/<pid>/stat` once it is a zombie (exited, not
//! yet reaped: the kernel has summed every thread's time by then); its peak resident memory is
//! the last `VmHWM` of `/proc/<pid>/status` sampled every 10 ms before it exited.

#![allow(dead_code)] // each bench uses its own part of this module

#[path = "../../tests/it/support/postgres.rs"]
pub mod postgres;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use smartcar_sim::{SimConfig, Simulator};
use smartcar_sync::store::{Store, StoreOptions};

/// The secret the simulator accepts and the daemon gets through its environment.
pub const SECRET: &str = "bench-client-secret-0123456789";

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Starts the simulator on a free loopback port.
pub async fn simulator(mut config: SimConfig) -> Res<Simulator> {
    config.client_secrets = vec![SECRET.to_owned()];
    Ok(Simulator::start(config, ([127, 0, 0, 1], 0).into()).await?)
}

/// The knobs of the daemon's configuration file the benches turn.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub db_url: String,
    pub requests_per_minute: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
    pub connections_cron: String,
    pub signals_cron: String,
    pub max_connections: u32,
    /// Appended to the file: by default `[budget] calls_per_vehicle = 0` (no allowance, every
    /// signals tick polls every vehicle), which the throughput benches measure.
    pub extra: String,
}

impl DaemonConfig {
    pub fn new(db_url: &str) -> DaemonConfig {
        DaemonConfig {
            db_url: db_url.to_owned(),
            requests_per_minute: 0,
            burst: 20,
            concurrency: 16,
            request_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            connections_cron: "0 0 * * * *".to_owned(),
            signals_cron: "0 */30 * * * *".to_owned(),
            // The daemon's default; BENCH_DB_CONNECTIONS to try another pool size.
            max_connections: std::env::var("BENCH_DB_CONNECTIONS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(8),
            extra: "[budget]\ncalls_per_vehicle = 0\n".to_owned(),
        }
    }

    /// Writes `config.toml` in `dir`, pointing at `sim`; the HTTP surface is off.
    pub fn write(&self, dir: &Path, sim: &Simulator) -> Res<PathBuf> {
        let ms = |d: Duration| d.as_millis();
        let text = format!(
            r#"[smartcar]
auth_url = "{auth}"
api_url = "{api}"
client_id = "{id}"
request_timeout = "{timeout}ms"

[database]
url = "{db}"
max_connections = {maxconn}

[schedule]
connections = "{conn}"
signals = "{sig}"
discover_users = true

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
listen = ""
admin_listen = ""

{extra}
"#,
            auth = sim.auth_url(),
            api = sim.api_url(),
            id = sim.client_id(),
            timeout = ms(self.request_timeout),
            db = self.db_url,
            maxconn = self.max_connections,
            conn = self.connections_cron,
            sig = self.signals_cron,
            rpm = self.requests_per_minute,
            burst = self.burst,
            conc = self.concurrency,
            max = self.max_attempts,
            lease = ms(self.lease),
            bmin = ms(self.backoff_min),
            bmax = ms(self.backoff_max),
            grace = ms(self.shutdown_grace),
            extra = self.extra,
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// What the kernel says about a finished daemon process.
#[derive(Clone, Debug)]
pub struct ProcStats {
    pub status: Option<ExitStatus>,
    /// user + system CPU seconds, all threads.
    pub cpu_s: f64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    pub wall: Duration,
}

/// A running daemon child, watched by a thread.
pub struct Daemon {
    pub pid: u32,
    pub started: Instant,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    watcher: std::thread::JoinHandle<ProcStats>,
}

/// The daemon binary: the one `cargo bench` builds (bench profile = release), or
/// `SMARTCAR_SYNC_BIN` to compare another build.
pub fn binary() -> String {
    std::env::var("SMARTCAR_SYNC_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_smartcar-sync").to_owned())
}

/// Starts `smartcar-sync --config CONFIG ARGS…` with its output in files next to the config.
pub fn spawn_daemon(config: &Path, args: &[&str], log_level: &str, tag: &str) -> Res<Daemon> {
    let dir = config.parent().unwrap_or(Path::new("."));
    let mut cmd = Command::new(binary());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("SMARTCAR_CLIENT_SECRET", SECRET)
        .env("SMARTCAR_SYNC_LOG", log_level)
        .env_remove("DATABASE_URL")
        .env_remove("SMARTCAR_CLIENT_ID")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("SMARTCAR_SYNC_CONFIG");
    spawn_watched(cmd, dir, tag)
}

/// Starts `cmd` with its output in `dir/TAG.stdout` and `dir/TAG.stderr`, watching its CPU
/// time and peak memory until it exits.
pub fn spawn_watched(mut cmd: Command, dir: &Path, tag: &str) -> Res<Daemon> {
    let stdout = dir.join(format!("{tag}.stdout"));
    let stderr = dir.join(format!("{tag}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()?;
    let started = Instant::now();
    let pid = child.id();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        let mut cpu_s = 0.0;
        let ticks = clock_ticks();
        loop {
            if let Some(hwm) = status_kib(pid, "VmHWM:") {
                peak = peak.max(hwm);
            }
            match proc_stat(pid) {
                Some((state, utime, stime)) => {
                    cpu_s = (utime + stime) as f64 / ticks;
                    if state == 'Z' || state == 'X' {
                        break;
                    }
                }
                None => break,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = child.wait().ok();
        ProcStats {
            status,
            cpu_s,
            peak_rss_kib: peak,
            wall: started.elapsed(),
        }
    });
    Ok(Daemon {
        pid,
        started,
        stdout,
        stderr,
        watcher,
    })
}

impl Daemon {
    /// Sends a signal (`KILL`, `TERM`) to this child only, by its pid.
    pub fn signal(&self, sig: &str) -> Res<()> {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!("kill -{sig} {} failed", self.pid).into())
        }
    }

    pub fn is_running(&self) -> bool {
        !self.watcher.is_finished()
    }

    /// Waits for the exit (on a blocking thread, so the simulator keeps serving).
    pub async fn wait(self) -> Res<(ProcStats, String, String)> {
        let Daemon {
            watcher,
            stdout,
            stderr,
            ..
        } = self;
        let stats = tokio::task::spawn_blocking(move || watcher.join())
            .await?
            .map_err(|_| "the watcher thread panicked")?;
        let out = std::fs::read_to_string(stdout).unwrap_or_default();
        let err = std::fs::read_to_string(stderr).unwrap_or_default();
        Ok((stats, out, err))
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (state, utime, stime) of `/proc/<pid>/stat`, in clock ticks.
fn proc_stat(pid: u32) -> Option<(char, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    Some((state, f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// CPU seconds this process (the simulator and the bench) has used so far.
pub fn own_cpu_s() -> f64 {
    proc_stat(std::process::id())
        .map(|(_, u, s)| (u + s) as f64 / clock_ticks())
        .unwrap_or(0.0)
}

/// `sync-once`'s summary line, e.g. `sync-once: 12100 jobs done, … ; 3.2s`, as numbers by name.
pub fn parse_summary(stdout: &str) -> HashMap<&'static str, f64> {
    let mut out = HashMap::new();
    let Some(line) = stdout.lines().find(|l| l.starts_with("sync-once:")) else {
        return out;
    };
    for (name, after) in [
        ("done", "jobs done"),
        ("retries", "retries"),
        ("deferred", "deferred"),
        ("flagged", "vehicles flagged"),
        ("dead", "dead"),
        ("samples", "samples stored"),
    ] {
        if let Some(v) = number_before(line, after) {
            out.insert(name, v);
        }
    }
    if let Some(secs) = line
        .rsplit(';')
        .next()
        .and_then(|s| s.trim().strip_suffix('s'))
        .and_then(|s| s.parse().ok())
    {
        out.insert("cycle_s", secs);
    }
    out
}

fn number_before(line: &str, word: &str) -> Option<f64> {
    let i = line.find(&format!(" {word}"))?;
    line[..i]
        .split([' ', ',', ';', ':'])
        .next_back()?
        .parse()
        .ok()
}

/// A database for one run: a SQLite file in `dir`, or a fresh database on the throwaway
/// PostgreSQL cluster (started on first use; None without PostgreSQL binaries).
pub struct BenchDb {
    pub url: String,
    pub backend: &'static str,
    pg: Option<postgres::PgDatabase>,
}

impl BenchDb {
    pub fn sqlite(dir: &Path) -> BenchDb {
        BenchDb {
            url: format!("sqlite://{}", dir.join("bench.db").display()),
            backend: "sqlite",
            pg: None,
        }
    }

    pub async fn postgres() -> Option<BenchDb> {
        let pg = postgres::fresh_database().await?;
        Some(BenchDb {
            url: pg.url.clone(),
            backend: "postgres",
            pg: Some(pg),
        })
    }

    pub async fn store(&self) -> Res<Store> {
        let store = Store::connect(&self.url, &StoreOptions::default()).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn cleanup(self) {
        if let Some(pg) = self.pg {
            pg.drop_database().await;
        }
    }
}

/// How the stored samples compare with the readings the simulator served.
#[derive(Debug, Default)]
pub struct Comparison {
    pub served: usize,
    pub stored: usize,
    pub matched: usize,
    pub missing: usize,
    pub wrong_value: usize,
    pub unexpected: usize,
    pub duplicates: usize,
}

impl Comparison {
    pub fn exact(&self) -> bool {
        self.served == self.matched
            && self.missing == 0
            && self.wrong_value == 0
            && self.unexpected == 0
            && self.duplicates == 0
    }
}

/// Every reading served stored exactly once with its value and body, nothing else stored.
pub async fn compare(store: &Store, sim: &Simulator) -> Res<Comparison> {
    let served = sim.served_readings();
    let stored = store.list_samples().await?;
    let mut c = Comparison {
        served: served.len(),
        stored: stored.len(),
        ..Comparison::default()
    };
    let mut by_key = HashMap::with_capacity(stored.len());
    for s in &stored {
        if by_key
            .insert((s.vehicle_id.as_str(), s.code.as_str(), s.recorded_at), s)
            .is_some()
        {
            c.duplicates += 1;
        }
    }
    for r in &served {
        match by_key.remove(&(r.vehicle_id.as_str(), r.code.as_str(), r.oem_updated_at)) {
            None => c.missing += 1,
            Some(s) => {
                let body: serde_json::Value =
                    serde_json::from_str(&s.body).unwrap_or(serde_json::Value::Null);
                if s.value_num == r.value_num && body == r.body {
                    c.matched += 1;
                } else {
                    c.wrong_value += 1;
                }
            }
        }
    }
    c.unexpected = by_key.len();
    Ok(c)
}

/// The machine and the moment, printed above every table.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.1} GiB; {}; load average {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        load()
    )
}

/// The 1-minute load average.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// The machine's CPU time so far (`/proc/stat`, all cores): what [`MachineCpu::since`] turns
/// into shares of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        MachineCpu {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// "busy X %, idle Y %, stolen Z %" of the machine's CPU time since `self`. Stolen time is
    /// what the hypervisor gave other guests while this one had work: a VM whose cores are
    /// shared runs the same work slower, whatever the code does.
    pub fn since(&self) -> String {
        let now = MachineCpu::now();
        let busy = now.busy.saturating_sub(self.busy) as f64;
        let idle = now.idle.saturating_sub(self.idle) as f64;
        let steal = now.steal.saturating_sub(self.steal) as f64;
        let all = (busy + idle + steal).max(1.0);
        format!(
            "busy {:.0} %, idle {:.0} %, stolen {:.0} %",
            100.0 * busy / all,
            100.0 * idle / all,
            100.0 * steal / all
        )
    }
}

/// A table of figures: name, value, target (empty when none), verdict.
#[derive(Default)]
pub struct Table {
    title: String,
    rows: Vec<[String; 4]>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// A figure with no target.
    pub fn info(&mut self, name: &str, value: impl ToString) {
        self.rows.push([
            name.to_owned(),
            value.to_string(),
            String::new(),
            String::new(),
        ]);
    }

    /// A figure with a target and whether it is met.
    pub fn check(&mut self, name: &str, value: impl ToString, target: &str, met: bool) {
        self.rows.push([
            name.to_owned(),
            value.to_string(),
            target.to_owned(),
            if met { "met" } else { "MISSED" }.to_owned(),
        ]);
    }

    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|r| r[3] != "MISSED")
    }

    pub fn render(&self) -> String {
        let header = ["figure", "value", "target", ""];
        let mut w = header.map(str::len);
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = format!("\n## {}\n", self.title);
        let line = |cells: [&str; 4]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i].saturating_sub(c.chars().count());
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s
        };
        let _ = writeln!(out, "{}", line(header));
        let _ = writeln!(
            out,
            "|{}",
            w.iter()
                .map(|n| format!("{}|", "-".repeat(n + 2)))
                .collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{}",
                line([r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()])
            );
        }
        out
    }
}

/// The benches' command-line words: cargo passes `--bench`, which is ignored.
pub fn words() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

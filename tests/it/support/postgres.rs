//! A throwaway PostgreSQL for tests: one cluster per test process, one fresh database per test.
//!
//! `TEST_DATABASE_URL` (a server URL whose user may CREATE DATABASE) takes precedence.
//! Otherwise, when PostgreSQL binaries exist under `/usr/lib/postgresql/*/bin`, a cluster is
//! initialised in a temp dir (as user `postgres` when running as root: initdb refuses root),
//! listening on a free loopback port with trust auth. A detached watchdog shell waits for this
//! process to exit, then stops the cluster and deletes its directory: statics are never
//! dropped, so an in-process guard would leak the server. With neither, the PostgreSQL variants
//! are skipped and say so on stderr.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Executor, PgConnection};

/// A database created for one test; [`PgDatabase::drop_database`] removes it.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Drops the database (any connection left open is terminated).
    pub async fn drop_database(self) {
        if let Ok(mut conn) = PgConnection::connect(&self.admin_url).await {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
            let _ = conn.close().await;
        }
    }
}

/// Writes straight to the process's stderr: libtest captures `eprintln!`, and a skip must be
/// seen.
fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The admin URL of the server, started on first use; None when there is none.
fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let from_env = std::env::var("TEST_DATABASE_URL").ok();
            if let Some(url) = from_env.filter(|u| !u.trim().is_empty()) {
                return Some(url);
            }
            match start_cluster() {
                Ok(url) => Some(url),
                Err(why) => {
                    loud(&format!("SKIPPED: PostgreSQL tests (no server): {why}"));
                    None
                }
            }
        })
        .as_deref()
}

/// A fresh, empty database, or None (after a loud SKIPPED line) when no server is available.
pub async fn fresh_database() -> Option<PgDatabase> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let Some(admin_url) = server() else {
        loud("SKIPPED: PostgreSQL tests (no server)");
        return None;
    };
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL server: {e}"));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    Some(PgDatabase {
        url: with_database(admin_url, &name),
        admin_url: admin_url.to_owned(),
        name,
    })
}

/// `url` with its database name replaced by `db` (query parameters kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as `postgres` when we are root.
fn pg_command(root: bool, program: &Path) -> Command {
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn start_cluster() -> Result<String, String> {
    let bin = bin_dir().ok_or("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("smartcar-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let dir_s = dir.to_string_lossy().into_owned();
    let data = dir.join("data");
    if root {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:", &dir_s]);
        run(chown, "chown")?;
    }
    // Stop and delete the cluster once this process is gone, however it ends (exit, panic
    // abort, SIGKILL). setsid keeps a Ctrl-C to the test's process group from killing it first.
    let watchdog = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        if [ "$4" = 1 ]; then
            runuser -u postgres -- "$3/pg_ctl" -D "$2/data" stop -m immediate -w >/dev/null 2>&1
        else
            "$3/pg_ctl" -D "$2/data" stop -m immediate -w >/dev/null 2>&1
        fi
        rm -rf "$2"
    "#;
    let mut wd = if Path::new("/usr/bin/setsid").exists() {
        let mut c = Command::new("/usr/bin/setsid");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    };
    wd.args(["-c", watchdog, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(&dir_s)
        .arg(&bin)
        .arg(if root { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    wd.spawn().map_err(|e| format!("watchdog: {e}"))?;

    let mut initdb = pg_command(root, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb")?;

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("free port: {e}"))?
        .port();
    let mut pg_ctl = pg_command(root, &bin.join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "60", "-o"])
        .arg(format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {dir_s} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        ))
        .arg("start");
    run(pg_ctl, "pg_ctl start").map_err(|e| {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        format!("{e}\n{log}")
    })?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t_1"),
        "postgres://u:p@h:5432/t_1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t_2"), "postgres://h/t_2");
}

/// A cluster of its own (own data dir and port) that one test may restart or stop without
/// disturbing the shared server. Stopped and deleted on drop.
pub struct PrivateCluster {
    pub url: String,
    bin: PathBuf,
    dir: PathBuf,
    root: bool,
}

impl PrivateCluster {
    /// Starts one, or None (after a loud SKIPPED line) when no PostgreSQL binaries exist or
    /// `TEST_DATABASE_URL` points at an external server (which a test must not restart).
    pub fn start() -> Option<PrivateCluster> {
        if std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
            loud("SKIPPED: PostgreSQL restart test (TEST_DATABASE_URL is an external server)");
            return None;
        }
        match Self::try_start() {
            Ok(c) => Some(c),
            Err(why) => {
                loud(&format!(
                    "SKIPPED: PostgreSQL restart test (no cluster): {why}"
                ));
                None
            }
        }
    }

    fn try_start() -> Result<PrivateCluster, String> {
        let bin = bin_dir().ok_or("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("smartcar-pg-private-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        if root {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:"]).arg(&dir);
            run(chown, "chown")?;
        }
        let mut initdb = pg_command(root, &bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        // The options go into the config file so a plain `pg_ctl start` after a stop reuses them.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n",
            dir.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("data/postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        let cluster = PrivateCluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            dir,
            root,
        };
        cluster.start_server()?;
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = pg_command(self.root, &self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data")).args(args);
        c
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let mut c = self.pg_ctl(&["-w", "-t", "60", "-l"]);
        c.arg(&log).arg("start");
        run(c, "pg_ctl start")
    }

    /// Stops the server at once, cutting every connection (as a crash or a failover would).
    pub fn stop_server(&self) -> Result<(), String> {
        run(
            self.pg_ctl(&["-w", "-m", "immediate", "stop"]),
            "pg_ctl stop",
        )
    }

    /// A fresh database on this cluster; returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to the private cluster: {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        with_database(&self.url, name)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

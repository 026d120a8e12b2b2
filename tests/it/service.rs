//! The daemon as systemd runs it, as a child process: READY/WATCHDOG/STOPPING on the notify
//! socket, SIGHUP picking up a rotated secret, SIGTERM stopping cleanly, and no secret or token
//! in the logs, the token audit or the database.

use std::path::Path;
use std::time::Duration;

use smartcar_sim::{Faults, SimConfig, Simulator};
use smartcar_sync::config::Config;
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use crate::support::{self, TestDb};

const MANAGEMENT_TOKEN: &str = "it-management-token-9f8e7d6c5b4a";
const ROTATED: &str = "it-rotated-secret-abcdef012345";

fn fleet() -> SimConfig {
    SimConfig {
        users: 3,
        vehicles_per_user: 2,
        update_period: support::READINGS_HOLD_STILL,
        management_token: MANAGEMENT_TOKEN.to_owned(),
        ..SimConfig::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test config with the HTTP server on a free port; `smartcar_extra` lands in `[smartcar]`.
fn service_config(
    sim: &Simulator,
    db: &TestDb,
    smartcar_extra: &str,
) -> (std::path::PathBuf, String) {
    let mut config: Config = support::config(sim, &db.url);
    let port = free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    let path = support::write_config(
        db.dir.path(),
        &config,
        "\n[connect]\nredirect_uri = \"https://fleet.example/connect/callback\"\n",
    );
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[smartcar]\n",
        &format!("[smartcar]\n{smartcar_extra}\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    (path, format!("http://127.0.0.1:{port}"))
}

fn signal(run: &Running, sig: &str) {
    let pid = run.child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

async fn ready(http: &reqwest::Client, base: &str) -> bool {
    support::eventually(Duration::from_secs(30), || async {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.status().as_u16() == 200,
            Err(_) => false,
        }
    })
    .await
}

/// A running child whose output is drained as it comes: a full pipe would stall its logging.
struct Running {
    child: Child,
    out: tokio::task::JoinHandle<Vec<u8>>,
    err: tokio::task::JoinHandle<Vec<u8>>,
}

fn drain(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf).await;
        buf
    })
}

fn start(mut cmd: tokio::process::Command) -> Running {
    let mut child = cmd.spawn().unwrap();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    Running { child, out, err }
}

/// Waits for the child to exit (within `within`) and returns its status and everything it
/// wrote.
async fn finish(mut run: Running, within: Duration) -> (std::process::ExitStatus, String) {
    let status = tokio::time::timeout(within, run.child.wait())
        .await
        .expect("the daemon exits in time")
        .unwrap();
    let out = run.out.await.unwrap();
    let err = run.err.await.unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    (status, logs)
}

#[tokio::test]
async fn sighup_picks_up_a_rotated_client_secret_without_a_restart() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet()).await;
    let secret_file = db.dir.path().join("client_secret");
    std::fs::write(&secret_file, format!("{}\n", support::SECRET)).unwrap();
    let (path, base) = service_config(
        &sim,
        &db,
        &format!("client_secret_file = \"{}\"", secret_file.display()),
    );
    let child = start(support::child(&path, &["run"], "info"));
    let http = reqwest::Client::new();
    assert!(ready(&http, &base).await, "the daemon became ready");
    let before = sim.counters();
    let tokens_before = sim.issued_tokens().len();

    // The operator rotates: Smartcar accepts only the new secret, the file holds it.
    sim.set_client_secrets(vec![ROTATED.to_owned()]);
    std::fs::write(&secret_file, ROTATED).unwrap();
    let old = http
        .post(sim.auth_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sim.client_id().as_str()),
            ("client_secret", support::SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(old.status().as_u16(), 401, "the old secret is rejected now");
    let rejected_before = sim.counters().token_rejected;

    signal(&child, "HUP");
    let renewed = support::eventually(Duration::from_secs(10), || async {
        sim.issued_tokens().len() > tokens_before
    })
    .await;
    assert!(
        renewed,
        "SIGHUP fetched a new token with the rotated secret"
    );
    let after = sim.counters();
    assert_eq!(
        after.token_rejected, rejected_before,
        "the daemon never sent the old secret after the rotation"
    );
    assert!(after.token_requests > before.token_requests);
    assert!(ready(&http, &base).await, "still ready after the reload");

    signal(&child, "TERM");
    let (status, logs) = finish(child, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("SIGHUP: reloading"), "{logs}");
    assert!(!logs.contains(ROTATED) && !logs.contains(support::SECRET));
    sim.shutdown().await;
}

/// Reads notify datagrams until one carries the line `want`.
async fn recv(socket: &tokio::net::UnixDatagram, want: &str, messages: &mut Vec<String>) {
    let mut buf = vec![0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = socket.recv(&mut buf).await.unwrap();
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = m.lines().any(|l| l == want);
            messages.push(m);
            if hit {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {want}: {messages:?}");
}

/// The child under a fake systemd: `$NOTIFY_SOCKET` a datagram socket we read, `WATCHDOG_PID`
/// set to the child's own pid through `exec`.
#[tokio::test]
async fn under_systemd_it_notifies_ready_watchdog_and_stopping_and_sigterm_exits_0() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet()).await;
    let (path, base) = service_config(&sim, &db, "");
    let socket_path = db.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_smartcar-sync"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    support::daemon_env(&mut cmd, "info");
    let child = start(cmd);

    let mut messages: Vec<String> = Vec::new();
    recv(&socket, "READY=1", &mut messages).await;
    // READY means serving: the HTTP surface answers at once.
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    recv(&socket, "WATCHDOG=1", &mut messages).await;
    recv(&socket, "WATCHDOG=1", &mut messages).await;

    signal(&child, "TERM");
    recv(&socket, "STOPPING=1", &mut messages).await;
    let (status, logs) = finish(child, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("stopped"), "{logs}");
    sim.shutdown().await;
}

fn assert_clean(text: &str, secrets: &[String], what: &str) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret or token leaked into {what}"
        );
    }
}

/// Every service path at debug level, with tokens renewed by faults: the logs, the token audit
/// and the database hold no secret and no token, and the audit counts the calls.
#[tokio::test]
async fn secrets_never_reach_logs_audit_or_database_on_the_service_paths() {
    for db in support::databases().await {
        let b = db.backend;
        let mut sim_config = fleet();
        sim_config.users = 5;
        sim_config.vehicles_per_user = 3;
        sim_config.faults = Faults {
            expired_token_rate: 0.3,
            ..Faults::default()
        };
        let sim = support::simulator(sim_config).await;
        let (path, base) = service_config(&sim, &db, "");
        let mut cmd = support::child(&path, &["run"], "debug");
        cmd.env("SMARTCAR_MANAGEMENT_TOKEN", MANAGEMENT_TOKEN);
        let child = start(cmd);
        let http = reqwest::Client::new();
        // Ready means migrated: opening the store now does not race the daemon's migration.
        assert!(ready(&http, &base).await, "{b}: the daemon became ready");
        let store = db.store().await;
        let polled = support::eventually(Duration::from_secs(60), || {
            let store = store.clone();
            async move { store.sample_count().await.unwrap_or(0) > 0 }
        })
        .await;
        assert!(polled, "{b}: the daemon polled");

        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
        let body = sim.vehicle_state_webhook(&vehicle).unwrap();
        let url = format!("{base}/webhooks/smartcar");
        for sig in [sim.sign(&body), "ab".repeat(32)] {
            let r = http
                .post(&url)
                .header("SC-Signature", sig)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(matches!(r.status().as_u16(), 200 | 401), "{b}");
        }
        let verify = http
            .post(&url)
            .body(sim.verify_webhook("c"))
            .send()
            .await
            .unwrap();
        assert_eq!(verify.status().as_u16(), 200, "{b}");
        // A Connect URL issued by the daemon (admin routes share the listener here); its
        // single-use state must not reach the logs either.
        let issued: serde_json::Value = http
            .post(format!("{base}/connect/url"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issued_url = reqwest::Url::parse(issued["url"].as_str().unwrap()).unwrap();
        let connect_state = issued_url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let connect = http
            .get(format!(
                "{base}/connect/callback?code=it-auth-code-4242&state={connect_state}&user_id=u-1"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(connect.status().as_u16(), 200, "{b}");
        // The cycle is done and a token was renewed (21 calls at a 30 % fault rate).
        let settled = support::eventually(Duration::from_secs(60), || {
            let store = store.clone();
            let sim = &sim;
            async move {
                store.open_jobs(None).await.unwrap_or(1) == 0 && sim.issued_tokens().len() >= 2
            }
        })
        .await;
        assert!(settled, "{b}: the cycle finished with a renewal");
        // The audit is written every 5 s and at the stop.
        signal(&child, "TERM");
        let (status, logs) = finish(child, Duration::from_secs(20)).await;
        assert!(status.success(), "{b}: {status:?}");
        assert!(logs.contains("DEBUG"), "debug logging was on");

        let tokens = sim.issued_tokens();
        assert!(
            tokens.len() >= 2,
            "{b}: expired-token faults forced renewals"
        );
        let mut secrets: Vec<String> = tokens.clone();
        secrets.push(support::SECRET.to_owned());
        secrets.push(MANAGEMENT_TOKEN.to_owned());
        secrets.push("it-auth-code-4242".to_owned());
        secrets.push(connect_state.clone());
        assert_clean(&logs, &secrets, "the logs");

        let audit = store.token_audit().await.unwrap();
        assert!(!audit.is_empty(), "{b}: tokens are audited");
        let fingerprints: Vec<String> = tokens
            .iter()
            .map(|t| smartcar_sync::smartcar::auth::fingerprint(t))
            .collect();
        for row in &audit {
            assert_eq!(row.fingerprint.len(), 8);
            assert!(fingerprints.contains(&row.fingerprint), "{b}: {row:?}");
            assert!(row.expires_at > row.issued_at);
            assert_clean(&format!("{row:?}"), &secrets, "the token audit");
        }
        let ok: i64 = audit.iter().map(|r| r.calls_ok).sum();
        let unauthorized: i64 = audit.iter().map(|r| r.calls_unauthorized).sum();
        assert!(ok > 0, "{b}: {audit:?}");
        assert!(
            unauthorized > 0,
            "{b}: the expired-token 401s are counted: {audit:?}"
        );
        assert!(logs.contains("access token issued"));
        if b == "sqlite" {
            let file = std::fs::read(Path::new(db.dir.path()).join("test.db")).unwrap();
            let wal = std::fs::read(db.dir.path().join("test.db-wal")).unwrap_or_default();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&file),
                String::from_utf8_lossy(&wal)
            );
            assert_clean(&text, &secrets, "the database file");
        }
        store.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

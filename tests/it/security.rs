//! Each hole an attacker was seen to use, performed again and shown to fail: the VERIFY signing
//! oracle, /metrics injection, Connect spam, an empty signing key, held connections, a printed
//! password, hostile ids, world-readable files, one listener for everything, and exit statuses
//! that said nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smartcar_sync::store::{Store, StoreOptions, VehicleStatus};

use crate::http::{Surface, fleet, parse_metrics};
use crate::support::{self, TestDb};

/// A state issued by the daemon for `s` (its admin route, served on the test listener).
pub(crate) async fn issue_state(s: &Surface) -> String {
    let resp = s
        .http
        .post(format!("{}/connect/url", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    let url = reqwest::Url::parse(v["url"].as_str().unwrap()).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1;
    state.into_owned()
}

fn verify_body(challenge: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventId": "3b8a1c2d-0000-4000-8000-000000000001",
        "eventType": "VERIFY",
        "data": {"challenge": challenge},
        "meta": {"version": "4.0", "deliveredAt": 1761896351529u64}
    }))
    .unwrap()
}

// 1. VERIFY is not a signing oracle.
#[tokio::test]
async fn a_verify_challenge_cannot_sign_a_delivery() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
        // The attack: ask VERIFY to "answer" a VEHICLE_ERROR body, then deliver that body with
        // the answer as its signature.
        let forged = String::from_utf8(
            sim.vehicle_error_webhook(&vehicle, "PERMISSION", "NO_PERMISSION", false)
                .unwrap(),
        )
        .unwrap();
        let (status, text) = s.post(verify_body(&forged), None).await;
        assert_eq!(status, 400, "{b}: {text}");
        let refused: Value = serde_json::from_str(&text).unwrap();
        assert!(
            refused.get("challenge").is_none(),
            "{b}: no answer given: {text}"
        );
        // Whatever an acceptable challenge signs is not a delivery: it is not even JSON.
        let (status, text) = s.post(verify_body("abc-123"), None).await;
        assert_eq!(status, 200, "{b}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["challenge"], sim.verify_answer("abc-123"));
        let (status, _) = s
            .post(b"abc-123".to_vec(), answer["challenge"].as_str())
            .await;
        assert_eq!(status, 400, "{b}");
        // Nothing was stored or changed.
        assert_eq!(s.daemon.store().webhook_event_count().await.unwrap(), 0);
        assert!(
            s.daemon.store().list_users().await.unwrap().is_empty(),
            "{b}"
        );
        assert!(
            s.daemon
                .store()
                .list_vehicles()
                .await
                .unwrap()
                .iter()
                .all(|v| v.status != VehicleStatus::PermissionDenied)
        );
        // Over-long and JSON-shaped challenges are refused too.
        for bad in ["x".repeat(129), "{}".to_owned(), "a b".to_owned()] {
            assert_eq!(s.post(verify_body(&bad), None).await.0, 400, "{bad}");
        }
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn verify_is_answered_only_while_the_window_is_open() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let s = Surface::start(&sim, &db, |c| {
        c.http.verify_window = Duration::from_millis(400)
    })
    .await;
    assert_eq!(s.post(verify_body("c1"), None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, text) = s.post(verify_body("c1"), None).await;
    assert_eq!(status, 403, "{text}");
    // A reload (SIGHUP) opens it again.
    let mut config = support::config(&sim, &db.url);
    config.http.verify_window = Duration::from_secs(60);
    config.smartcar.management_token = Some(crate::http::management_token().into());
    s.daemon.reloader().apply(&config);
    assert_eq!(s.post(verify_body("c1"), None).await.0, 200);
    // `0s` never answers.
    config.http.verify_window = Duration::ZERO;
    s.daemon.reloader().apply(&config);
    assert_eq!(s.post(verify_body("c1"), None).await.0, 403);
    s.stop().await;
    sim.shutdown().await;
}

// 2. /metrics stays parseable and small whatever clients send.
#[tokio::test]
async fn hostile_event_types_neither_break_nor_grow_the_metrics() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let s = Surface::start(&sim, &db, |_| {}).await;
    let hostile = "X\"} 1\nsmartcar_sync_pwned_total 9\n# EOF\n{";
    let body = serde_json::to_vec(&json!({"eventType": hostile, "eventId": "e"})).unwrap();
    // Unsigned, and signed (a signed delivery of an unknown type is acknowledged).
    assert_eq!(s.post(body.clone(), None).await.0, 401);
    assert_eq!(s.post_signed(&sim, body).await.0, 202);
    for i in 0..2000 {
        let body =
            serde_json::to_vec(&json!({"eventType": format!("T{i}"), "eventId": "e"})).unwrap();
        let sig = if i % 2 == 0 {
            Some(sim.sign(&body))
        } else {
            None
        };
        s.post(body, sig.as_deref()).await;
    }
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("pwned") && !text.contains("T1999"), "{text}");
    parse_metrics(&text);
    // An independent parser reads it whole (it takes the classic text format: drop `# EOF`).
    let lines: Vec<std::io::Result<String>> = text
        .lines()
        .filter(|l| *l != "# EOF")
        .map(|l| Ok(l.to_owned()))
        .collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("parses");
    let webhook_series: Vec<_> = scrape
        .samples
        .iter()
        .filter(|x| x.metric == "smartcar_sync_webhook_events_total")
        .collect();
    assert!(!webhook_series.is_empty());
    for x in &webhook_series {
        let t = x.labels.get("event_type").unwrap_or_default();
        assert!(
            [
                "VERIFY",
                "VEHICLE_STATE",
                "VEHICLE_ERROR",
                "other",
                "unknown"
            ]
            .contains(&t),
            "{t}"
        );
    }
    assert!(webhook_series.len() < 40, "{}", webhook_series.len());
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    s.stop().await;
    sim.shutdown().await;
}

// 3. The Connect callback registers only with a daemon-issued, single-use state, and a bounded
//    number of new users per hour.
#[tokio::test]
async fn connect_spam_registers_nobody_and_states_are_single_use_and_bounded() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |c| {
            c.connect.redirect_uri = "https://fleet.example/connect/callback".into();
            c.connect.max_new_users_per_hour = 3;
        })
        .await;
        let b = db.backend;
        // No secret configured, no state or a made-up one: 200 attempts, nobody registered.
        for i in 0..200 {
            let state = if i % 2 == 0 { "" } else { "deadbeef" };
            let (status, _) = s
                .get(&format!("/connect/callback?state={state}&user_id=spam-{i}"))
                .await;
            assert_eq!(status, 403, "{b}");
        }
        assert!(
            s.daemon.store().list_users().await.unwrap().is_empty(),
            "{b}"
        );
        assert_eq!(s.daemon.store().open_jobs(None).await.unwrap(), 0, "{b}");

        // An issued state registers one user, once.
        let state = issue_state(&s).await;
        assert_eq!(state.len(), 64, "256 random bits, hex");
        let cb =
            |state: &str, user: &str| format!("/connect/callback?state={state}&user_id={user}");
        assert_eq!(s.get(&cb(&state, "user-1")).await.0, 200, "{b}");
        assert_eq!(s.get(&cb(&state, "user-2")).await.0, 403, "{b}: replayed");
        // The state is stored only as a hash.
        let users = s.daemon.store().list_users().await.unwrap();
        assert_eq!(users.len(), 1);

        // The bound: 3 new users an hour; a known user does not count against it.
        assert_eq!(s.get(&cb(&issue_state(&s).await, "user-2")).await.0, 200);
        assert_eq!(s.get(&cb(&issue_state(&s).await, "user-3")).await.0, 200);
        let (status, html) = s.get(&cb(&issue_state(&s).await, "user-4")).await;
        assert_eq!(status, 429, "{b}: {html}");
        assert_eq!(s.get(&cb(&issue_state(&s).await, "user-1")).await.0, 200);
        assert_eq!(s.daemon.store().list_users().await.unwrap().len(), 3, "{b}");

        // An expired state is refused.
        let now = chrono::Utc::now();
        let expired = "ab".repeat(32);
        let hash = hex_sha256(&expired);
        s.daemon
            .store()
            .issue_connect_state(
                &hash,
                now - chrono::Duration::hours(2),
                now - chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        assert_eq!(s.get(&cb(&expired, "user-1")).await.0, 403, "{b}");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn connect_url_prints_a_one_time_url_and_the_database_holds_only_its_hash() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let config = support::config(&sim, &db.url);
    let path = support::write_config(
        db.dir.path(),
        &config,
        "\n[connect]\nredirect_uri = \"https://fleet.example/cb\"\n",
    );
    let out = support::child(&path, &["connect-url"], "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout).unwrap();
    let url = reqwest::Url::parse(url.trim()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], sim.client_id());
    assert_eq!(q["redirect_uri"], "https://fleet.example/cb");
    assert_eq!(q["response_type"], "code");
    let state = &q["state"];
    let file = std::fs::read(db.dir.path().join("test.db")).unwrap();
    let wal = std::fs::read(db.dir.path().join("test.db-wal")).unwrap_or_default();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&file),
        String::from_utf8_lossy(&wal)
    );
    assert!(
        !text.contains(state.as_str()),
        "the raw state is not stored"
    );
    assert!(text.contains(&hex_sha256(state)), "its hash is");
    // Without a redirect URI there is nothing to issue: a clear error.
    let path = support::write_config(db.dir.path(), &config, "");
    let out = support::child(&path, &["connect-url"], "warn")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect.redirect_uri"));
    sim.shutdown().await;
}

// 4. An empty signing key is a configuration error, from every source.
#[tokio::test]
async fn an_empty_management_token_is_a_configuration_error_naming_its_key() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let config = support::config(&sim, &db.url);
    let empty = db.dir.path().join("management_token");
    std::fs::write(&empty, "\n").unwrap();
    // (a line for [smartcar], the environment, the key the error must name)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            format!("management_token_file = \"{}\"", empty.display()),
            vec![],
            "smartcar.management_token_file",
        ),
        (
            "management_token = \"  \"".to_owned(),
            vec![],
            "smartcar.management_token",
        ),
        (
            String::new(),
            vec![("SMARTCAR_MANAGEMENT_TOKEN", "")],
            "smartcar.management_token",
        ),
        (
            String::new(),
            vec![("SMARTCAR_CLIENT_SECRET", " ")],
            "smartcar.client_secret",
        ),
    ];
    for (line, env, key) in cases {
        let path = support::write_config(db.dir.path(), &config, "");
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "[smartcar]\n",
            &format!("[smartcar]\n{line}\n"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        for command in ["check-config", "run"] {
            let mut cmd = support::child(&path, &[command], "warn");
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let out = cmd.output().await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{command} {key}: {stderr}");
            assert!(stderr.contains(key), "{command}: {stderr}");
        }
    }
    sim.shutdown().await;
}

// 5. Connections, headers and bodies are bounded in time and number.
#[tokio::test]
async fn held_connections_are_cut_and_capped_and_webhooks_still_get_through() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let s = Surface::start(&sim, &db, |c| {
        c.http.header_timeout = Duration::from_millis(500);
        c.http.body_timeout = Duration::from_millis(500);
        c.http.max_connections = 8;
        // Three quarters of it (for large bodies) hold exactly one full-size body.
        c.http.max_body_bytes_in_flight = smartcar_sync::http::BODY_LIMIT / 3 * 4 + 4;
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let closed_within = |mut c: TcpStream, within: Duration| {
        c.set_read_timeout(Some(within)).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        (
            started.elapsed() < within,
            String::from_utf8_lossy(&buf).into_owned(),
        )
    };
    // Idle after connecting, and half-sent headers: closed at the header timeout.
    let idle = TcpStream::connect(&addr).unwrap();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (t1, t2) = tokio::task::spawn_blocking(move || {
        (
            closed_within(idle, Duration::from_secs(3)).0,
            closed_within(half, Duration::from_secs(3)).0,
        )
    })
    .await
    .unwrap();
    assert!(t1 && t2, "idle {t1}, half-sent headers {t2}");
    // Idle after a response (keep-alive): closed too.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (closed, text) =
        tokio::task::spawn_blocking(move || closed_within(kept, Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(closed && text.contains("200 OK"), "{text}");
    // A half-sent body: 408 at the body timeout.
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(
        b"POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"eventType\"",
    )
    .unwrap();
    let (closed, text) =
        tokio::task::spawn_blocking(move || closed_within(body, Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(closed && text.contains("408"), "{text}");
    // The body budget: one body's worth in flight; a second large one is refused at once.
    let mut first = TcpStream::connect(&addr).unwrap();
    let big = smartcar_sync::http::BODY_LIMIT - 1;
    first
        .write_all(
            format!("POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    first.write_all(&vec![b' '; big - 10]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(&addr).unwrap();
    second
        .write_all(b"POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        .unwrap();
    second.write_all(&vec![b' '; 200_000]).unwrap();
    let (closed, text) =
        tokio::task::spawn_blocking(move || closed_within(second, Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(closed && text.contains("503"), "{text}");
    // Small bodies (every webhook) have their own share: the large one does not starve them.
    let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
    let body = sim.vehicle_state_webhook(&vehicle).unwrap();
    assert_eq!(s.post_signed(&sim, body).await.0, 200);
    drop(first);
    // The connection cap: 8 held, the 9th is closed at once; a webhook goes through as soon as
    // the held ones time out.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = TcpStream::connect(&addr).unwrap();
    let (closed, _) =
        tokio::task::spawn_blocking(move || closed_within(extra, Duration::from_millis(400)))
            .await
            .unwrap();
    assert!(closed, "a connection past the cap is closed at once");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let body = sim.vehicle_state_webhook(&vehicle).unwrap();
    let started = Instant::now();
    assert_eq!(s.post_signed(&sim, body).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(held);
    s.stop().await;
    sim.shutdown().await;
}

// 6 and 11. No password in any message; each failure its own exit status.
#[tokio::test]
async fn bad_database_urls_exit_with_their_own_status_and_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Does not parse (an unencoded `#`): a configuration error.
        ("postgres://dbuser:S3cretPw#x@h/db", 78),
        // Parses; nothing listens there: unavailable.
        (
            "postgres://dbuser:S3cretPw@127.0.0.1:1/db?connect_timeout=2",
            69,
        ),
        (
            "postgres://dbuser@127.0.0.1:1/db?password=S3cretPw&connect_timeout=2",
            69,
        ),
        // A directory that does not exist: cannot create.
        ("sqlite:///nonexistent-dir-for-smartcar-sync/x.db", 73),
    ];
    for (url, expected) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[database]\nurl = \"{url}\"\n")).unwrap();
        for command in ["migrate", "status"] {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartcar-sync"));
            cmd.arg("--config").arg(&path).arg(command);
            support::daemon_env(&mut cmd, "debug");
            let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
                .await
                .unwrap()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(expected), "{url} {command}: {all}");
            assert!(!all.contains("S3cretPw"), "{url}: {all}");
        }
    }
}

#[tokio::test]
async fn a_listen_address_in_use_exits_71() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = support::config(&sim, &db.url);
    config.http.listen = taken.local_addr().unwrap().to_string();
    let path = support::write_config(db.dir.path(), &config, "");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        support::child(&path, &["run"], "warn").output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{stderr}");
    assert!(stderr.contains("http.listen"), "{stderr}");
    sim.shutdown().await;
}

// 7. Ids are validated where they enter, and never forge a log line.
#[tokio::test]
async fn hostile_ids_are_refused_everywhere_they_enter() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
        let good = sim.vehicle_state_webhook(&vehicle).unwrap();
        let mut envelope: Value = serde_json::from_slice(&good).unwrap();
        for (pointer, bad) in [
            ("/data/user/id", "u\r\nlevel=ERROR forged"),
            ("/data/user/id", "nul\u{0}"),
            ("/vehicleId", "v\nx"),
            ("/eventId", "e\u{7f}"),
        ] {
            let mut e = envelope.clone();
            *e.pointer_mut(pointer).unwrap() = Value::String(bad.to_owned());
            let body = serde_json::to_vec(&e).unwrap();
            let (status, text) = s.post_signed(&sim, body).await;
            assert_eq!(status, 400, "{b} {pointer}: {text}");
        }
        assert_eq!(
            s.daemon.store().webhook_event_count().await.unwrap(),
            0,
            "{b}"
        );
        assert_eq!(s.daemon.store().sample_count().await.unwrap(), 0, "{b}");
        assert!(
            s.daemon.store().list_users().await.unwrap().is_empty(),
            "{b}"
        );
        // The untouched delivery is fine.
        *envelope.pointer_mut("/eventId").unwrap() = Value::String("fresh-event-1".into());
        let (status, _) = s
            .post_signed(&sim, serde_json::to_vec(&envelope).unwrap())
            .await;
        assert_eq!(status, 200, "{b}");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
    // The command line refuses them before adding anything.
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let path = support::write_config(db.dir.path(), &support::config(&sim, &db.url), "");
    let out = support::child(&path, &["users", "add", "good-id", "bad\nid"], "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("user id \"bad\\nid\" is not valid"),
        "{stderr}"
    );
    assert!(db.store().await.list_users().await.unwrap().is_empty());
    sim.shutdown().await;
}

// 9. Files holding locations or secrets are not left readable by everyone.
#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_files_are_owner_only_and_readable_secrets_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("fleet.db");
    let store = Store::connect(
        &format!("sqlite://{}", db_path.display()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
        .add_user("u-1", smartcar_sync::store::UserSource::Cli)
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let f = dir.path().join(format!("fleet.db{suffix}"));
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", f.display());
    }
    store.close().await;

    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "s3cr3t-in-a-file").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[smartcar]\nclient_secret_file = \"{}\"\nmanagement_token = \"mgmt-in-the-file\"\n\
             [database]\nurl = \"sqlite://{}\"\n",
            secret_file.display(),
            db_path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |config: std::path::PathBuf| async move {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartcar-sync"));
        cmd.arg("--config").arg(&config).arg("migrate");
        support::daemon_env(&mut cmd, "warn");
        let out = cmd.output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let logs = run(config.clone()).await;
    assert!(logs.contains("smartcar.client_secret_file"), "{logs}");
    assert!(logs.contains("--config"), "{logs}");
    assert!(!logs.contains("s3cr3t-in-a-file") && !logs.contains("mgmt-in-the-file"));
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let logs = run(config).await;
    assert!(!logs.contains("readable by every user"), "{logs}");
}

// 10. Monitoring lives on its own (loopback) listener.
#[tokio::test]
async fn metrics_and_readiness_are_served_only_on_the_admin_listener() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let (public, admin) = (
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
    );
    let mut config = support::config(&sim, &db.url);
    config.http.listen = format!("127.0.0.1:{public}");
    config.http.admin_listen = format!("127.0.0.1:{admin}");
    let path = support::write_config(
        db.dir.path(),
        &config,
        "\n[connect]\nredirect_uri = \"https://fleet.example/cb\"\n",
    );
    let mut child = support::child(&path, &["run"], "warn").spawn().unwrap();
    let http = reqwest::Client::new();
    let get = |port: u16, path: &str| {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{port}{path}");
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).ok() }
    };
    let up = support::eventually(Duration::from_secs(30), || async {
        get(admin, "/healthz").await == Some(200)
    })
    .await;
    assert!(up, "the admin listener answers");
    assert_eq!(get(admin, "/metrics").await, Some(200));
    assert!(matches!(get(admin, "/readyz").await, Some(200 | 503)));
    assert_eq!(get(public, "/healthz").await, Some(200));
    assert_eq!(get(public, "/metrics").await, Some(404));
    assert_eq!(get(public, "/readyz").await, Some(404));
    let minted = http
        .post(format!("http://127.0.0.1:{public}/connect/url"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        minted.status().as_u16(),
        404,
        "no Connect URLs from the public side"
    );
    let minted = http
        .post(format!("http://127.0.0.1:{admin}/connect/url"))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status().as_u16(), 200);
    let _ = child.start_kill();
    let _ = child.wait().await;
    sim.shutdown().await;
}

// 7, continued: ids in API answers are checked before they are stored or sent back.
#[tokio::test]
async fn invalid_ids_in_api_answers_are_skipped_not_stored() {
    use axum::Router;
    use axum::routing::{get, post};
    let connections = json!({"data": [
        {"id": "c-good", "type": "connection",
         "attributes": {"permissions": [], "vehicle": {"make": "X", "model": "Y", "year": 2020}},
         "relationships": {"vehicle": {"data": {"id": "v-good"}}, "user": {"data": {"id": "u-good"}}}},
        {"id": "c-bad", "type": "connection",
         "attributes": {"permissions": [], "vehicle": {"make": "X", "model": "Y", "year": 2020}},
         "relationships": {"vehicle": {"data": {"id": "v\r\nbad"}}, "user": {"data": {"id": "u-good"}}}},
        {"id": "c-bad-user", "type": "connection",
         "attributes": {"permissions": [], "vehicle": {"make": "X", "model": "Y", "year": 2020}},
         "relationships": {"vehicle": {"data": {"id": "v-other"}}, "user": {"data": {"id": "u\u{0}bad"}}}}
    ], "meta": {"pageNumber": 1, "pageSize": 100, "totalCount": 3}, "links": {"next": null}});
    let app = Router::new()
        .route(
            "/oauth2/token",
            post(|| async {
                axum::Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/v3/connections",
            get(move || {
                let c = connections.clone();
                async move { axum::Json(c) }
            }),
        )
        .route(
            "/v3/vehicles/{id}/signals",
            get(|| async { axum::Json(json!({"data": [], "meta": {}, "links": {}})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let mut config = support::config(&sim, &db.url);
        config.smartcar.auth_url = format!("{base}/oauth2/token");
        config.smartcar.api_url = format!("{base}/v3");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let daemon = smartcar_sync::daemon::Daemon::start(config, &shutdown)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), daemon.sync_once(&shutdown, |_| {}))
            .await
            .unwrap()
            .unwrap();
        let users: Vec<String> = daemon
            .store()
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(users, ["u-good"], "{}", db.backend);
        let vehicles: Vec<String> = daemon
            .store()
            .list_vehicles()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.vehicle_id)
            .collect();
        assert_eq!(vehicles, ["v-good"], "{}", db.backend);
        shutdown.cancel();
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
    server.abort();
}

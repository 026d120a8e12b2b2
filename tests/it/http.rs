//! The HTTP surface in-process, once per database backend: every webhook path, the Connect
//! callback, `/readyz` and `/metrics`.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use smartcar_sim::{SimConfig, Simulator};
use smartcar_sync::config::Config;
use smartcar_sync::daemon::Daemon;
use smartcar_sync::store::{JobKind, SampleSource, UserSource, VehicleStatus};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

/// The management token the test simulator signs with.
pub(crate) fn management_token() -> String {
    SimConfig::default().management_token
}

pub(crate) fn fleet(users: usize, vehicles_per_user: usize) -> SimConfig {
    SimConfig {
        users,
        vehicles_per_user,
        // Readings hold still: a poll and a webhook see the same readings.
        update_period: support::READINGS_HOLD_STILL,
        ..SimConfig::default()
    }
}

/// A started daemon (no workers, no schedule running) with its HTTP surface on a free port.
pub(crate) struct Surface {
    pub(crate) daemon: Daemon,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) shutdown: CancellationToken,
}

impl Surface {
    pub(crate) async fn start(
        sim: &Simulator,
        db: &TestDb,
        tweak: impl FnOnce(&mut Config),
    ) -> Surface {
        let mut config = support::config(sim, &db.url);
        config.smartcar.management_token = Some(SecretString::from(management_token()));
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(config, &shutdown)
            .await
            .expect("daemon starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = daemon.http_state(Some(daemon.schedule().unwrap()));
        tokio::spawn(smartcar_sync::http::serve(
            listener,
            state,
            shutdown.clone(),
        ));
        Surface {
            daemon,
            base,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    pub(crate) async fn post(&self, body: Vec<u8>, signature: Option<&str>) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/smartcar", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("SC-Signature", sig);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub(crate) async fn post_signed(&self, sim: &Simulator, body: Vec<u8>) -> (u16, String) {
        let sig = sim.sign(&body);
        self.post(body, Some(&sig)).await
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.daemon.store().close().await;
    }
}

async fn open_syncs(s: &Surface) -> i64 {
    s.daemon
        .store()
        .open_jobs(Some(JobKind::SyncConnections))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_vehicle_state_is_stored_once_and_registers_its_user() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(2, 2)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let user = sim.user_ids()[0].clone();
        let vehicle = sim.vehicles_of(&user)[0].clone();

        let body = sim.vehicle_state_webhook(&vehicle).unwrap();
        let sig = sim.sign(&body);
        let (status, text) = s.post(body.clone(), Some(&sig)).await;
        assert_eq!(status, 200, "{b}: {text}");
        assert!(text.contains("stored"), "{b}: {text}");
        let samples = s.daemon.store().list_samples().await.unwrap();
        let served = sim.served_readings();
        assert!(!served.is_empty());
        assert_eq!(samples.len(), served.len(), "{b}: every pushed reading");
        assert!(samples.iter().all(|x| x.source == SampleSource::Webhook));
        assert!(samples.iter().all(|x| x.vehicle_id == vehicle));
        // The unknown user is registered and its connections sync is waiting.
        let users = s.daemon.store().list_users().await.unwrap();
        assert_eq!(users.len(), 1, "{b}");
        assert_eq!(users[0].user_id, user);
        assert_eq!(users[0].source, UserSource::Webhook);
        assert_eq!(open_syncs(&s).await, 1, "{b}");

        // Smartcar redelivers: same eventId, nothing new.
        let (status, text) = s.post(body, Some(&sig)).await;
        assert_eq!(status, 200, "{b}: {text}");
        assert!(text.contains("duplicate"), "{b}: {text}");
        assert_eq!(
            s.daemon.store().sample_count().await.unwrap(),
            samples.len() as i64
        );
        assert_eq!(s.daemon.store().webhook_event_count().await.unwrap(), 1);

        // `triggers` at the top level parses too; the readings are the same, nothing new.
        let body = sim
            .vehicle_state_webhook_top_level_triggers(&vehicle)
            .unwrap();
        let (status, text) = s.post(body.clone(), Some(&sim.sign(&body))).await;
        assert_eq!(
            (status, text.contains("stored")),
            (200, true),
            "{b}: {text}"
        );
        assert_eq!(
            s.daemon.store().sample_count().await.unwrap(),
            samples.len() as i64,
            "{b}: a reading is stored once"
        );
        assert_eq!(s.daemon.store().webhook_event_count().await.unwrap(), 2);
        assert_eq!(open_syncs(&s).await, 1, "{b}: one open sync per user");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_401_and_stores_nothing_and_verify_is_answered() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
        let body = sim.vehicle_state_webhook(&vehicle).unwrap();
        let mut tampered = body.clone();
        let last = tampered.len() - 2;
        tampered[last] = b' ';
        for (payload, sig) in [
            (body.clone(), Some("00".repeat(32))),
            (body.clone(), Some("not hex".to_owned())),
            (body.clone(), None),
            (tampered, Some(sim.sign(&body))),
        ] {
            let (status, text) = s.post(payload, sig.as_deref()).await;
            assert_eq!(status, 401, "{b}: {text}");
        }
        assert_eq!(s.daemon.store().sample_count().await.unwrap(), 0, "{b}");
        assert_eq!(s.daemon.store().webhook_event_count().await.unwrap(), 0);
        assert!(s.daemon.store().list_users().await.unwrap().is_empty());
        assert_eq!(open_syncs(&s).await, 0);

        let (status, text) = s.post(sim.verify_webhook("chal-123"), None).await;
        assert_eq!(status, 200, "{b}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["challenge"], sim.verify_answer("chal-123"));
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn oversize_malformed_and_unknown_deliveries_are_answered_and_store_nothing() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let big = format!(
            r#"{{"eventType":"VEHICLE_STATE","eventId":"e1","pad":"{}"}}"#,
            "x".repeat(smartcar_sync::http::BODY_LIMIT)
        )
        .into_bytes();
        let sig = sim.sign(&big);
        let (status, _) = s.post(big, Some(&sig)).await;
        assert_eq!(status, 413, "{b}");

        let junk = b"{not json".to_vec();
        let (status, _) = s.post(junk.clone(), Some(&sim.sign(&junk))).await;
        assert_eq!(status, 400, "{b}");
        let no_id = br#"{"eventType":"VEHICLE_STATE","data":{}}"#.to_vec();
        let (status, _) = s.post(no_id.clone(), Some(&sim.sign(&no_id))).await;
        assert_eq!(status, 400, "{b}: a delivery without eventId");

        let other = br#"{"eventType":"VEHICLE_SOMETHING_NEW","eventId":"e2","data":{}}"#.to_vec();
        let (status, _) = s.post(other.clone(), Some(&sim.sign(&other))).await;
        assert_eq!(status, 202, "{b}");
        assert_eq!(s.daemon.store().webhook_event_count().await.unwrap(), 0);
        assert_eq!(s.daemon.store().sample_count().await.unwrap(), 0);
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_reading_polled_and_pushed_is_stored_once_and_vehicle_errors_set_and_clear_status() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(2, 2)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            s.daemon.sync_once(&CancellationToken::new(), |_| {}),
        )
        .await
        .expect("the cycle finishes")
        .expect("the cycle runs");
        assert_eq!(report.dead, 0, "{b}");
        let polled = s.daemon.store().sample_count().await.unwrap();
        assert!(polled > 0);
        let user = sim.user_ids()[0].clone();
        let vehicle = sim.vehicles_of(&user)[0].clone();

        let body = sim.vehicle_state_webhook(&vehicle).unwrap();
        let (status, text) = s.post(body.clone(), Some(&sim.sign(&body))).await;
        assert_eq!(status, 200, "{b}: {text}");
        assert_eq!(
            s.daemon.store().sample_count().await.unwrap(),
            polled,
            "{b}: the pushed readings were already polled"
        );
        assert_eq!(polled as usize, sim.served_readings().len());
        assert_eq!(
            open_syncs(&s).await,
            0,
            "{b}: a known user and vehicle need no sync"
        );

        let status_of = |v: String| {
            let store = s.daemon.store().clone();
            async move { store.vehicle(&v).await.unwrap().unwrap() }
        };
        let post_error = |kind: &'static str, code: &'static str, resolved: bool| {
            let body = sim
                .vehicle_error_webhook(&vehicle, kind, code, resolved)
                .unwrap();
            s.post_signed(&sim, body)
        };
        let (status, _) = post_error("BILLING", "VEHICLE_LIMIT", false).await;
        assert_eq!(status, 200, "{b}");
        let v = status_of(vehicle.clone()).await;
        assert_eq!(v.status, VehicleStatus::BillingLimited, "{b}");
        assert!(v.blocked_until.is_some());
        let (status, _) = post_error("BILLING", "VEHICLE_LIMIT", true).await;
        assert_eq!(status, 200, "{b}");
        let v = status_of(vehicle.clone()).await;
        assert_eq!(v.status, VehicleStatus::Connected, "{b}");
        assert_eq!((v.blocked_until, v.status_reason), (None, None));

        // A transient error only notes its reason; its RESOLVED clears it, and not another's.
        post_error("VEHICLE_STATE", "ASLEEP", false).await;
        let v = status_of(vehicle.clone()).await;
        assert_eq!(v.status, VehicleStatus::Connected);
        assert!(v.status_reason.unwrap().contains("ASLEEP"), "{b}");
        post_error("VEHICLE_STATE", "OTHER", true).await;
        assert!(status_of(vehicle.clone()).await.status_reason.is_some());
        post_error("VEHICLE_STATE", "ASLEEP", true).await;
        assert_eq!(status_of(vehicle.clone()).await.status_reason, None, "{b}");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_connect_callback_registers_the_user_and_enqueues_its_sync() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let secret = SecretString::from("connect-state-secret".to_owned());
        let s = Surface::start(&sim, &db, |c| {
            c.http.connect_state_secret = Some(secret.clone());
            c.connect.redirect_uri = "https://fleet.example/connect/callback".into();
        })
        .await;
        let b = db.backend;
        let user = "5b1c6a0e-3d7f-4c2b-9e8a-1f0d2c3b4a59";
        // A state the daemon issued, and one an application signed with the shared secret.
        let issued = crate::security::issue_state(&s).await;
        let signed = smartcar_sync::http::signed_connect_state(
            &secret,
            "9f86d081884c7d65",
            chrono::Utc::now() + chrono::Duration::minutes(5),
        );

        let (status, html) = s
            .get(&format!(
                "/connect/callback?code=abc&state={issued}&user_id={user}"
            ))
            .await;
        assert_eq!(status, 200, "{b}: {html}");
        assert!(html.contains("Vehicle connected"), "{html}");
        let users = s.daemon.store().list_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(
            (users[0].user_id.as_str(), users[0].source),
            (user, UserSource::Connect)
        );
        assert_eq!(open_syncs(&s).await, 1, "{b}");
        let (status, _) = s
            .get(&format!(
                "/connect/callback?state={signed}&user_id=second-user"
            ))
            .await;
        assert_eq!(status, 200, "{b}: a signed state");

        let (status, html) = s
            .get(&format!(
                "/connect/callback?code=abc&state=n0nce.{}&user_id=other",
                "0".repeat(64)
            ))
            .await;
        assert_eq!(status, 403, "{b}: a forged state");
        assert!(!html.contains("Vehicle connected"));
        let (status, html) = s
            .get("/connect/callback?error=access_denied&error_description=User+denied")
            .await;
        assert_eq!(status, 400);
        assert!(
            html.contains("access_denied") && html.contains("User denied"),
            "{html}"
        );
        let fresh = crate::security::issue_state(&s).await;
        let (status, _) = s
            .get(&format!(
                "/connect/callback?state={fresh}&user_id=%3Cscript%3E"
            ))
            .await;
        assert_eq!(status, 400);
        assert_eq!(s.daemon.store().list_users().await.unwrap().len(), 2, "{b}");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn readyz_is_200_when_ready_and_503_when_the_database_goes_away() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 1)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        assert_eq!(s.get("/healthz").await.0, 200);
        // No token fetched yet: not ready, and it says why.
        let (status, text) = s.get("/readyz").await;
        assert_eq!(status, 503, "{b}: {text}");
        assert!(text.contains("no valid access token"), "{text}");
        s.daemon.client().tokens().get().await.unwrap();
        let (status, text) = s.get("/readyz").await;
        assert_eq!(status, 200, "{b}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ready"], true);

        s.daemon.store().close().await;
        let (status, text) = s.get("/readyz").await;
        assert_eq!(status, 503, "{b}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["database"], "unreachable", "{text}");
        assert!(v["reason"].as_str().unwrap().contains("database"));
        assert_eq!(s.get("/healthz").await.0, 200, "the process still answers");
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn readyz_names_rejected_credentials() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(1, 1)).await;
    let s = Surface::start(&sim, &db, |c| {
        c.smartcar.client_secret = Some(SecretString::from("wrong".to_owned()))
    })
    .await;
    assert!(s.daemon.client().tokens().get().await.is_err());
    let (status, text) = s.get("/readyz").await;
    assert_eq!(status, 503, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["credentials"], "rejected", "{text}");
    assert!(!text.contains("wrong"), "{text}");
    s.stop().await;
    sim.shutdown().await;
}

/// Checks the OpenMetrics text line by line: comments are HELP/TYPE/UNIT/EOF, every sample is
/// `name{labels} value` with a float value, and the exposition ends with `# EOF`.
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split(' ').next().unwrap();
            assert!(
                matches!(word, "HELP" | "TYPE" | "UNIT" | "EOF"),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_every_family() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 2)).await;
        let s = Surface::start(&sim, &db, |_| {}).await;
        let b = db.backend;
        tokio::time::timeout(
            Duration::from_secs(60),
            s.daemon.sync_once(&CancellationToken::new(), |_| {}),
        )
        .await
        .unwrap()
        .unwrap();
        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[1].clone();
        let body = sim.vehicle_state_webhook(&vehicle).unwrap();
        assert_eq!(s.post(body.clone(), Some(&sim.sign(&body))).await.0, 200);
        s.daemon
            .store()
            .enqueue(JobKind::PollSignals, "someone", chrono::Utc::now())
            .await
            .unwrap();

        let resp = s
            .http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/openmetrics-text"));
        let text = resp.text().await.unwrap();
        let samples = parse_metrics(&text);
        let value = |series: &str| {
            samples
                .iter()
                .find(|(s, _)| s == series)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{b}: no {series} in\n{text}"))
        };
        assert!(value(r#"smartcar_sync_queue_depth{state="pending"}"#) >= 1.0);
        value(r#"smartcar_sync_queue_depth{state="dead"}"#);
        let since = value("smartcar_sync_seconds_since_last_cycle");
        assert!((0.0..60.0).contains(&since), "{b}: {since}");
        assert!(
            value(
                r#"smartcar_sync_webhook_events_total{event_type="VEHICLE_STATE",outcome="stored"}"#
            ) >= 1.0
        );
        assert!(value(r#"smartcar_sync_api_calls_total{endpoint="signals",class="2xx"}"#) >= 2.0);
        assert!(value(r#"smartcar_sync_token_requests_total{outcome="ok"}"#) >= 1.0);
        assert!(value(r#"smartcar_sync_samples_stored_total{source="poll"}"#) >= 1.0);
        assert!(
            samples
                .iter()
                .any(|(s, _)| s.starts_with("smartcar_sync_job_duration_seconds_bucket{")),
            "{text}"
        );
        // Every poll is committed by a group commit; the histogram has a bucket at its 50 ms
        // bound.
        assert!(value("smartcar_sync_group_commit_polls_total") >= 2.0);
        assert!(value("smartcar_sync_group_commit_duration_seconds_count") >= 1.0);
        value(r#"smartcar_sync_group_commit_duration_seconds_bucket{le="0.05"}"#);
        // And each poll's commit delay, with the same bucket.
        assert!(value("smartcar_sync_group_commit_delay_seconds_count") >= 2.0);
        value(r#"smartcar_sync_group_commit_delay_seconds_bucket{le="0.05"}"#);
        if b == "sqlite" {
            // Every write went through the write gate, and said how long it held it.
            assert!(value(r#"smartcar_sync_sqlite_writer_seconds_total{phase="holding"}"#) > 0.0);
            value(r#"smartcar_sync_sqlite_writer_seconds_total{phase="waiting"}"#);
        }
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

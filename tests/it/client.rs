//! The Smartcar client against the simulator: single-flight tokens, 401 handling, credentials,
//! paging and every response variant the simulator can produce.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use secrecy::SecretString;
use serde_json::json;
use smartcar_sim::{
    ErrorBodyVariant, Faults, ForcedError, PagingVariant, SimConfig, Simulator, TimestampFormat,
    UserIdLocation, Variants,
};
use smartcar_sync::smartcar::client::http_client;
use smartcar_sync::smartcar::{
    Action, Client, ClientConfig, ErrorKind, SecretSource, SignalStatus, TokenConfig, TokenError,
    TokenProvider, VehicleProblem,
};
use tokio_util::sync::CancellationToken;

use crate::support::{self, SECRET};

fn tokens_for(auth_url: String, client_id: String, secret: SecretSource) -> TokenProvider {
    let mut cfg = TokenConfig::new(auth_url, client_id, secret);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.transient_backoff = (Duration::from_millis(100), Duration::from_secs(1));
    TokenProvider::start(
        cfg,
        http(),
        CancellationToken::new(),
        &tokio_util::task::TaskTracker::new(),
    )
}

fn http() -> reqwest::Client {
    http_client(Duration::from_secs(2)).unwrap()
}

fn client_for(sim: &Simulator) -> Client {
    let tokens = tokens_for(
        sim.auth_url(),
        sim.client_id(),
        SecretSource::value(SecretString::from(SECRET.to_owned())),
    );
    Client::new(
        ClientConfig {
            api_url: sim.api_url(),
            request_timeout: Duration::from_secs(2),
            vehicle_mode: "live".into(),
            max_retry_after: Duration::from_secs(3600),
            max_in_flight: 0,
        },
        http(),
        tokens,
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn sixty_four_concurrent_token_requests_cause_one_endpoint_call() {
    let sim = support::simulator(SimConfig::default()).await;
    let client = client_for(&sim);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let tokens = client.tokens().clone();
        tasks.push(tokio::spawn(async move { tokens.get().await }));
    }
    let mut generations = std::collections::HashSet::new();
    for t in tasks {
        generations.insert(t.await.unwrap().unwrap().generation);
    }
    let c = sim.counters();
    assert_eq!(c.token_requests, 1, "{c:?}");
    assert_eq!(c.token_concurrent_peak, 1);
    assert_eq!(generations.len(), 1, "every caller got the same token");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_one_second_token_is_refreshed_ahead_and_never_sent_expired() {
    let sim = support::simulator(SimConfig {
        token_lifetime: Duration::from_secs(1),
        users: 2,
        vehicles_per_user: 2,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let users = sim.user_ids();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let user = users[w % users.len()].clone();
        let vehicles = sim.vehicles_of(&user);
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u32;
            while tokio::time::Instant::now() < deadline {
                client.signals(&vehicles[0], &user).await.unwrap();
                calls += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let c = sim.counters();
    assert!(calls > 200, "the run made {calls} calls");
    assert_eq!(c.expired_token_calls, 0, "{c:?}");
    assert_eq!(c.unknown_token_calls, 0, "{c:?}");
    // Refreshed ahead: roughly one token per 0.75-0.9 s, never a flood.
    assert!(
        (9..=16).contains(&c.token_requests),
        "{} token requests in 10 s",
        c.token_requests
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_401s_causes_one_refresh_and_each_request_is_retried_once() {
    let sim = support::simulator(SimConfig {
        users: 1,
        vehicles_per_user: 16,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    client.tokens().get().await.unwrap();
    // Every call from now on is answered 401 as if its token had expired.
    sim.set_faults(Faults {
        expired_token_rate: 1.0,
        ..Faults::default()
    });
    let user = sim.user_ids()[0].clone();
    let mut tasks = Vec::new();
    for v in sim.vehicles_of(&user) {
        let (client, user) = (client.clone(), user.clone());
        tasks.push(tokio::spawn(async move { client.signals(&v, &user).await }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.action(chrono::Utc::now()), Action::Reauthenticate);
    }
    let c = sim.counters();
    assert_eq!(
        c.token_requests, 2,
        "the first token and one refresh: {c:?}"
    );
    assert_eq!(
        c.signals_calls, 32,
        "16 requests, each retried exactly once"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_client_is_a_typed_error_without_a_hot_loop_and_a_rotated_secret_is_picked_up() {
    let sim = support::simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "wrong-secret\n").unwrap();
    let tokens = tokens_for(
        sim.auth_url(),
        sim.client_id(),
        SecretSource::File(secret_file.clone()),
    );
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move { tokens.get().await }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, TokenError::Rejected { .. }), "{e:?}");
        assert!(e.retry_at() > chrono::Utc::now() + chrono::Duration::seconds(30));
    }
    // Callers keep asking; the refresher keeps its long backoff.
    for _ in 0..50 {
        assert!(tokens.get().await.is_err());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.counters().token_requests, 1, "no hot loop");
    assert!(tokens.credential_problem().is_some());
    assert!(!format!("{:?}", tokens.credential_problem()).contains("wrong-secret"));

    // The operator rotates the secret; a reload nudges the provider, which re-reads it.
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    tokens.refresh_now();
    let ok = support::eventually(Duration::from_secs(5), || {
        let tokens = tokens.clone();
        async move { tokens.get().await.is_ok() }
    })
    .await;
    assert!(ok, "the rotated secret was not picked up");
    assert!(tokens.credential_problem().is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_token_endpoint_keeps_the_current_token_until_it_expires() {
    // 20 s: the refresh comes at 75-90 % (15-18 s) and the token stops being handed out at
    // 95 % (19 s), so the check right after the failed refresh has a second to spare even on
    // a loaded machine.
    let lifetime = Duration::from_secs(20);
    let sim = support::simulator(SimConfig {
        token_lifetime: lifetime,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let issued = tokio::time::Instant::now();
    let first = client.tokens().get().await.unwrap();
    // From now on the endpoint refuses: the refresh fails.
    sim.set_client_secrets(vec!["rotated-away".into()]);
    let refreshed = support::eventually(Duration::from_secs(19), || {
        let sim = &sim;
        async move { sim.counters().token_requests >= 2 }
    })
    .await;
    assert!(refreshed, "the refresh was attempted");
    let still = client.tokens().get().await.unwrap();
    assert_eq!(
        still.generation, first.generation,
        "the current token is still served"
    );
    tokio::time::sleep_until(issued + lifetime + Duration::from_millis(500)).await;
    let err = client.tokens().get().await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    sim.shutdown().await;
}

async fn collect_with(variants: Variants, users: usize, per_user: usize) -> (Simulator, usize) {
    let sim = support::simulator(SimConfig {
        users,
        vehicles_per_user: per_user,
        variants,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let all = client.connections(None).collect_all().await.unwrap();
    (sim, all.len())
}

#[tokio::test]
async fn paging_250_connections_takes_3_calls_in_every_paging_variant() {
    for paging in [
        PagingVariant::Standard,
        PagingVariant::Alternate,
        PagingVariant::TotalsOnly,
        PagingVariant::LinksOnly,
    ] {
        let variants = Variants {
            paging,
            ..Variants::default()
        };
        // One user with 250 vehicles, and the same through the app-wide listing.
        let (sim, n) = collect_with(variants, 1, 250).await;
        assert_eq!(n, 250, "{paging:?}");
        assert_eq!(sim.counters().connections_calls, 3, "{paging:?}");
        let client = client_for(&sim);
        let user = sim.user_ids()[0].clone();
        let mine = client.connections(Some(&user)).collect_all().await.unwrap();
        assert_eq!(mine.len(), 250);
        assert!(
            mine.iter()
                .all(|c| c.user_id.as_deref() == Some(user.as_str()))
        );
        assert_eq!(sim.counters().connections_calls, 6, "{paging:?}");
        sim.shutdown().await;
    }
}

/// A misbehaving server (not the contract) for the routes in `api`, plus a token endpoint;
/// returns a client pointed at it and the server's task.
async fn stub(api: Router) -> (Client, tokio::task::JoinHandle<()>) {
    let app = api.route(
        "/oauth2/token",
        post(|| async {
            axum::Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let tokens = tokens_for(
        format!("{base}/oauth2/token"),
        "id".into(),
        SecretSource::value(SecretString::from("s".to_owned())),
    );
    let client = Client::new(
        ClientConfig {
            api_url: format!("{base}/v3"),
            request_timeout: Duration::from_secs(2),
            vehicle_mode: "live".into(),
            max_retry_after: Duration::from_secs(3600),
            max_in_flight: 0,
        },
        http(),
        tokens,
        None,
    )
    .unwrap();
    (client, server)
}

#[tokio::test]
async fn a_server_repeating_page_1_forever_ends_with_an_error() {
    // Page 1 whatever page is asked, always with a `next` link.
    let page = json!({"data": [{"id": "c1", "type": "connection",
        "attributes": {"permissions": [], "vehicle": {"make": "X", "model": "Y", "year": 2020}},
        "relationships": {"vehicle": {"data": {"id": "v1"}}, "user": {"data": {"id": "u1"}}}}],
        "meta": {"pageNumber": 1, "pageSize": 1},
        "links": {"next": "/connections?page[number]=2"}});
    let (client, server) = stub(Router::new().route(
        "/v3/connections",
        get(move || async move { axum::Json(page.clone()) }),
    ))
    .await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client.connections(Some("u1")).collect_all(),
    )
    .await
    .expect("the pager must not loop forever");
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Runaway, "{err}");
    server.abort();
}

#[tokio::test]
async fn a_malformed_answer_is_a_retryable_error_carrying_its_request_id() {
    let (client, server) = stub(Router::new().route(
        "/v3/vehicles/{id}/signals",
        get(|| async {
            (
                [("sc-request-id", "req-malformed")],
                axum::Json(json!({"data": "not a list"})),
            )
        }),
    ))
    .await;
    let err = client.signals("v1", "u1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed, "{err}");
    assert_eq!(err.request_id.as_deref(), Some("req-malformed"));
    assert_eq!(err.action(chrono::Utc::now()), Action::Retry);
    assert!(err.to_string().contains("req-malformed"), "{err}");
    server.abort();
}

#[tokio::test]
async fn the_client_reads_every_variant_the_simulator_can_produce() {
    let mut cases = Vec::new();
    for timestamps in [
        TimestampFormat::EpochMillis,
        TimestampFormat::EpochSeconds,
        TimestampFormat::Iso8601,
    ] {
        cases.push(Variants {
            timestamps,
            ..Variants::default()
        });
    }
    cases.push(Variants {
        year_as_string: true,
        user_id_location: UserIdLocation::Attributes,
        wrapped_resources: false,
        signals_page_size: Some(3),
        ..Variants::default()
    });
    cases.push(Variants {
        user_id_location: UserIdLocation::Both,
        error_body: ErrorBodyVariant::V2,
        retry_after_http_date: true,
        ..Variants::default()
    });
    cases.push(Variants {
        precise_values: true,
        camel_case_codes: true,
        unit_aliases: true,
        legacy_soc_body: true,
        overlong_code: true,
        error_body: ErrorBodyVariant::V3Minimal,
        ..Variants::default()
    });
    cases.push(Variants {
        error_body: ErrorBodyVariant::V1,
        signals_page_size: Some(5),
        signals_link: smartcar_sim::LinkStyle::Absolute,
        ..Variants::default()
    });
    for error_body in [
        ErrorBodyVariant::V2ResolutionTypeNull,
        ErrorBodyVariant::V2ResolutionString,
        ErrorBodyVariant::V2ResolutionNull,
    ] {
        cases.push(Variants {
            error_body,
            ..Variants::default()
        });
    }
    for variants in cases {
        let sim = support::simulator(SimConfig {
            users: 2,
            vehicles_per_user: 2,
            variants,
            ..SimConfig::default()
        })
        .await;
        let client = client_for(&sim);
        let conns = client.connections(None).collect_all().await.unwrap();
        assert_eq!(conns.len(), 4, "{variants:?}");
        assert!(
            conns
                .iter()
                .all(|c| c.year.is_some() && c.user_id.is_some())
        );
        let mut readings = HashMap::new();
        for c in &conns {
            let user = c.user_id.clone().unwrap();
            let info = client.vehicle(&c.vehicle_id, &user).await.unwrap();
            assert_eq!(info.vehicle_id, c.vehicle_id);
            assert!(info.year.is_some(), "{variants:?}");
            for s in client.signals(&c.vehicle_id, &user).await.unwrap() {
                if s.status == SignalStatus::Success {
                    readings.insert((c.vehicle_id.clone(), s.code.clone()), s);
                }
            }
        }
        // What the client read is exactly what the simulator served.
        let served = sim.served_readings();
        assert_eq!(served.len(), readings.len(), "{variants:?}");
        for r in served {
            let got = &readings[&(r.vehicle_id.clone(), r.code.clone())];
            assert_eq!(
                got.recorded_at(),
                Some(r.oem_updated_at),
                "{variants:?} {}",
                r.code
            );
            assert_eq!(got.value_num, r.value_num, "{} {}", r.vehicle_id, r.code);
            assert_eq!(got.body.as_ref(), Some(&r.body));
        }
        // Error bodies in this variant classify the same way.
        let v = &conns[0];
        sim.force_vehicle_error(&v.vehicle_id, Some(ForcedError::Billing));
        let err = client
            .signals(&v.vehicle_id, v.user_id.as_deref().unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err.action(chrono::Utc::now()),
            Action::Permanent(VehicleProblem::BillingLimited),
            "{variants:?}"
        );
        assert!(
            err.request_id.is_some(),
            "every failure carries a request id"
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_429_pauses_the_app_and_nothing_is_sent_before_retry_after() {
    for http_date in [false, true] {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 4,
            app_bucket: Some(smartcar_sim::Bucket {
                capacity: 2.0,
                refill_per_second: 0.5,
            }),
            variants: Variants {
                retry_after_http_date: http_date,
                ..Variants::default()
            },
            ..SimConfig::default()
        })
        .await;
        let client = client_for(&sim);
        let user = sim.user_ids()[0].clone();
        let vehicles = sim.vehicles_of(&user);
        let mut paused = None;
        for v in vehicles.iter().cycle().take(6) {
            match client.signals(v, &user).await {
                Ok(_) => {}
                Err(e) => match e.action(chrono::Utc::now()) {
                    Action::PauseApp(until) => {
                        paused.get_or_insert(until);
                    }
                    other => panic!("{other:?}"),
                },
            }
        }
        let until = paused.expect("the bucket ran dry");
        assert!(client.paused_until().is_some());
        assert_eq!(
            sim.counters().responses_429_app,
            1,
            "later calls were held locally"
        );
        assert_eq!(sim.counters().calls_before_retry_after, 0);
        let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        client.signals(&vehicles[0], &user).await.unwrap();
        assert_eq!(sim.counters().calls_before_retry_after, 0);
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn secrets_and_tokens_never_show_in_debug_output() {
    let sim = support::simulator(SimConfig::default()).await;
    let client = client_for(&sim);
    let token = client.tokens().get().await.unwrap();
    let issued = sim.issued_tokens();
    assert_eq!(issued.len(), 1);
    let shown = format!(
        "{token:?} {client:?} {:?} {:?}",
        client.tokens(),
        SecretSource::value(SecretString::from(SECRET.to_owned()))
    );
    assert!(!shown.contains(&issued[0]), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains(&token.fingerprint));
    sim.shutdown().await;
}

#[tokio::test]
async fn links_next_is_followed_only_within_the_vehicles_own_signals() {
    use smartcar_sim::LinkStyle;
    for (style, followed) in [
        (LinkStyle::RootRelative, true),
        (LinkStyle::ApiPrefixed, true),
        (LinkStyle::Absolute, true),
        (LinkStyle::ForeignOrigin, false),
        (LinkStyle::OtherVehicle, false),
    ] {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 1,
            variants: Variants {
                signals_page_size: Some(4),
                signals_link: style,
                ..Variants::default()
            },
            ..SimConfig::default()
        })
        .await;
        let client = client_for(&sim);
        let user = sim.user_ids()[0].clone();
        let v = sim.vehicles_of(&user)[0].clone();
        let result = client.signals_keeping_partial(&v, &user).await;
        if followed {
            let signals = result.unwrap_or_else(|p| panic!("{style:?}: {}", p.error));
            assert!(signals.len() > 4, "{style:?}: every page read");
            assert!(sim.counters().signals_calls > 1);
        } else {
            let partial = result.expect_err("a link off the vehicle's signals is refused");
            assert_eq!(partial.received.len(), 4, "{style:?}: page 1 handed back");
            assert!(partial.error.continuation, "{style:?}");
            assert_eq!(partial.error.action(chrono::Utc::now()), Action::Retry);
            assert_eq!(
                sim.counters().signals_calls,
                1,
                "{style:?}: the link was not followed"
            );
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_404_on_a_continuation_page_is_transient_and_hands_back_the_first_page() {
    let sim = support::simulator(SimConfig {
        users: 1,
        vehicles_per_user: 1,
        variants: Variants {
            signals_page_size: Some(4),
            ..Variants::default()
        },
        ..SimConfig::default()
    })
    .await;
    sim.fail_next_signal_pages(1);
    let client = client_for(&sim);
    let user = sim.user_ids()[0].clone();
    let v = sim.vehicles_of(&user)[0].clone();
    let partial = client
        .signals_keeping_partial(&v, &user)
        .await
        .expect_err("page 2 fails");
    assert_eq!(partial.error.status(), Some(404));
    assert_eq!(partial.received.len(), 4);
    // A 404 on page 1 means the vehicle is gone; on page 2 it is the pager's problem.
    assert_eq!(partial.error.action(chrono::Utc::now()), Action::Retry);
    assert!(partial.error.to_string().contains("continuation"));
    // The next try reads everything.
    assert!(client.signals(&v, &user).await.unwrap().len() > 4);
    sim.shutdown().await;
}

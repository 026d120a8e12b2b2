//! The simulator follows the Smartcar v3 contract: shapes, every variant, errors, limits, faults.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use smartcar_sim::{
    Bucket, ErrorBodyVariant, Faults, ForcedError, PagingVariant, SimConfig, Simulator,
    TimestampFormat, UserIdLocation, Variants, VehicleMode,
};

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn with_variants(variants: Variants) -> SimConfig {
    SimConfig {
        variants,
        ..SimConfig::default()
    }
}

async fn fetch_token(c: &Client, sim: &Simulator) -> String {
    fetch_token_at(c, &sim.auth_url()).await
}

async fn fetch_token_at(c: &Client, url: &str) -> String {
    let r = c
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client-id"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A minimal API client: bearer token, optional sc-user-id, JSON (or raw text) bodies.
struct Api {
    c: Client,
    base: String,
    token: String,
}

impl Api {
    async fn new(sim: &Simulator) -> Api {
        let c = Client::new();
        let token = fetch_token(&c, sim).await;
        Api {
            c,
            base: sim.api_url(),
            token,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, user: Option<&str>) -> Resp {
        let mut req = self
            .c
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(u) = user {
            req = req.header("sc-user-id", u);
        }
        self.send(req).await
    }

    async fn delete(&self, path: &str) -> Resp {
        let req = self
            .c
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        self.send(req).await
    }

    async fn signals(&self, sim: &Simulator, vehicle: &str) -> Resp {
        self.get(
            &format!("/vehicles/{vehicle}/signals"),
            owner(sim, vehicle).as_deref(),
        )
        .await
    }
}

fn owner(sim: &Simulator, vehicle: &str) -> Option<String> {
    sim.user_ids()
        .into_iter()
        .find(|u| sim.vehicles_of(u).iter().any(|v| v == vehicle))
}

fn first_vehicle(sim: &Simulator) -> (String, String) {
    let user = sim.user_ids()[0].clone();
    let vehicle = sim.vehicles_of(&user)[0].clone();
    (user, vehicle)
}

fn v3_error(r: &Resp) -> &Value {
    &r.body["errors"][0]
}

fn assert_v3_error(r: &Resp, status: u16, kind: &str, code: Option<&str>) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    let e = v3_error(r);
    assert_eq!(e["status"], json!(status.to_string()), "{}", r.body);
    assert_eq!(e["type"], kind, "{}", r.body);
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{}", r.body);
    }
    let header_id = r.headers["sc-request-id"].to_str().unwrap();
    assert_eq!(e["meta"]["debug"]["requestId"], header_id);
}

fn signal<'a>(body: &'a Value, code: &str) -> &'a Value {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == code)
        .unwrap_or_else(|| panic!("no {code} in {body}"))
}

// ---------------------------------------------------------------- token endpoint

#[tokio::test]
async fn token_endpoint_accepts_form_and_json_bodies() {
    let sim = start(SimConfig::default()).await;
    let c = Client::new();
    let form = c
        .post(sim.auth_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client-id"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let form: Value = form.json().await.unwrap();
    assert_eq!(form["token_type"], "Bearer");
    assert_eq!(form["expires_in"], 3600);
    assert_eq!(form["access_token"].as_str().unwrap().len(), 40);
    assert!(form.get("refresh_token").is_none());

    let js = c
        .post(sim.auth_url())
        .json(
            &json!({"grant_type": "client_credentials", "client_id": "sim-client-id",
                      "client_secret": "sim-client-secret"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    let js: Value = js.json().await.unwrap();
    assert_ne!(js["access_token"], form["access_token"]);
    assert_eq!(sim.counters().token_requests, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_rejects_wrong_credentials_as_invalid_client_and_bad_requests_as_invalid_request()
 {
    let sim = start(SimConfig::default()).await;
    let c = Client::new();
    let post = |body: &'static [(&'static str, &'static str)]| {
        let c = c.clone();
        let url = sim.auth_url();
        async move {
            let r = c.post(url).form(body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = post(&[
        ("grant_type", "client_credentials"),
        ("client_id", "sim-client-id"),
        ("client_secret", "wrong"),
    ])
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["error"], "invalid_client");
    assert!(b["error_description"].is_string());

    let (s, b) = post(&[
        ("grant_type", "client_credentials"),
        ("client_id", "sim-client-id"),
    ])
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "invalid_request");

    let (s, b) = post(&[
        ("grant_type", "authorization_code"),
        ("client_id", "sim-client-id"),
        ("client_secret", "sim-client-secret"),
    ])
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "invalid_request");

    let n = sim.counters();
    assert_eq!((n.token_requests, n.token_rejected), (3, 3));
    assert_eq!(n.by_status.get(&401), Some(&1));
    assert_eq!(n.by_status.get(&400), Some(&2));
    sim.shutdown().await;
}

#[tokio::test]
async fn secret_rotation_at_runtime_accepts_new_secret_and_keeps_up_to_three() {
    let sim = start(SimConfig::default()).await;
    let c = Client::new();
    let status = |secret: &'static str| {
        let c = c.clone();
        let url = sim.auth_url();
        async move {
            c.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "sim-client-id"),
                    ("client_secret", secret),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("new").await, StatusCode::UNAUTHORIZED);
    sim.set_client_secrets(vec![
        "sim-client-secret".into(),
        "new".into(),
        "third".into(),
        "fourth".into(),
    ]);
    assert_eq!(status("new").await, StatusCode::OK);
    assert_eq!(status("sim-client-secret").await, StatusCode::OK);
    assert_eq!(status("fourth").await, StatusCode::UNAUTHORIZED);
    sim.set_client_secrets(vec!["new".into()]);
    assert_eq!(status("sim-client-secret").await, StatusCode::UNAUTHORIZED);
    sim.shutdown().await;
}

#[tokio::test]
async fn concurrent_token_requests_show_in_the_peak() {
    let sim = start(SimConfig::default()).await;
    let c = Client::new();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), sim.auth_url());
        calls.spawn(async move { fetch_token_at(&c, &url).await });
    }
    let tokens: HashSet<String> = calls.join_all().await.into_iter().collect();
    assert_eq!(tokens.len(), 8);
    let n = sim.counters();
    assert_eq!(n.token_requests, 8);
    assert!(n.token_concurrent_peak >= 2, "{n:?}");
    sim.reset_counters();
    fetch_token(&c, &sim).await;
    assert_eq!(sim.counters().token_concurrent_peak, 1);
    sim.shutdown().await;
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn api_call_without_a_known_token_is_401_authentication_with_request_id() {
    let sim = start(SimConfig::default()).await;
    let c = Client::new();
    let r = c
        .get(format!("{}/connections", sim.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let mut api = Api::new(&sim).await;
    api.token = "not-a-token".into();
    let r = api.get("/connections", None).await;
    assert_v3_error(&r, 401, "AUTHENTICATION", None);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let n = sim.counters();
    assert_eq!(n.unknown_token_calls, 2);
    assert_eq!(n.api_calls, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_401_and_counted() {
    let sim = start(SimConfig {
        token_lifetime: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = api.get("/connections", None).await;
    assert_v3_error(&r, 401, "AUTHENTICATION", None);
    assert_eq!(sim.counters().expired_token_calls, 1);
    sim.shutdown().await;
}

// ---------------------------------------------------------------- connections

#[tokio::test]
async fn connections_have_the_contract_shape() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let r = api.get("/connections", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.contains_key("sc-request-id"));
    let b = &r.body;
    let data = b["data"].as_array().unwrap();
    assert_eq!(data.len(), 6);
    let users = sim.user_ids();
    let c0 = &data[0];
    assert_eq!(c0["type"], "connection");
    assert!(c0["id"].is_string());
    assert!(c0["attributes"]["permissions"].as_array().unwrap().len() >= 4);
    let v = &c0["attributes"]["vehicle"];
    assert!(v["make"].is_string() && v["model"].is_string());
    assert!(v["year"].is_u64());
    assert_eq!(v["mode"], "live");
    assert!(["BEV", "PHEV", "ICE"].contains(&v["powertrainType"].as_str().unwrap()));
    assert_eq!(c0["relationships"]["vehicle"]["data"]["type"], "vehicle");
    assert_eq!(
        c0["relationships"]["vehicle"]["data"]["id"],
        json!(sim.vehicles_of(&users[0])[0])
    );
    assert_eq!(
        c0["relationships"]["user"]["data"],
        json!({"id": users[0], "type": "user"})
    );
    assert!(c0["attributes"].get("user").is_none());
    assert!(c0["meta"]["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(c0["meta"]["updatedAt"].is_string());
    assert_eq!(
        b["meta"],
        json!({"pageNumber": 1, "pageSize": 10, "totalCount": 6})
    );
    assert!(b["links"]["prev"].is_null());
    assert!(b["links"]["next"].is_null());
    assert!(b["links"]["first"].is_string() && b["links"]["last"].is_string());
    // Stable order: same answer twice.
    assert_eq!(api.get("/connections", None).await.body["data"], b["data"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn connections_page_size_100_over_250_connections_takes_3_pages() {
    let sim = start(SimConfig {
        users: 125,
        vehicles_per_user: 2,
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let mut seen = HashSet::new();
    let mut path = "/connections?page[size]=100".to_owned();
    let mut pages = 0;
    loop {
        let r = api.get(&path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        pages += 1;
        for c in r.body["data"].as_array().unwrap() {
            assert!(seen.insert(c["id"].as_str().unwrap().to_owned()));
        }
        assert_eq!(r.body["meta"]["totalCount"], 250);
        assert_eq!(r.body["meta"]["pageNumber"], pages);
        match r.body["links"]["next"].as_str() {
            Some(next) => path = next.to_owned(),
            None => break,
        }
        assert!(pages < 10, "runaway paging");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    let last = api
        .get("/connections?page[size]=100&page[number]=3", None)
        .await;
    assert_eq!(last.body["data"].as_array().unwrap().len(), 50);
    assert_eq!(
        last.body["links"]["prev"],
        json!("/connections?page[number]=2&page[size]=100")
    );
    let beyond = api
        .get("/connections?page[size]=100&page[number]=4", None)
        .await;
    assert_eq!(beyond.body["data"], json!([]));
    sim.shutdown().await;
}

#[tokio::test]
async fn connections_page_size_over_100_is_400_validation() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let r = api.get("/connections?page[size]=101", None).await;
    assert_v3_error(&r, 400, "VALIDATION", None);
    let r = api.get("/connections?page[number]=0", None).await;
    assert_v3_error(&r, 400, "VALIDATION", None);
    let r = api
        .get("/connections?filter[vehicle.mode]=bogus", None)
        .await;
    assert_v3_error(&r, 400, "VALIDATION", None);
    sim.shutdown().await;
}

async fn two_pages(paging: PagingVariant) -> (Simulator, Resp, Resp) {
    let sim = start(SimConfig {
        users: 3,
        vehicles_per_user: 1,
        variants: Variants {
            paging,
            ..Variants::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let p1 = api.get("/connections?page[size]=2", None).await;
    let p2 = api
        .get("/connections?page[size]=2&page[number]=2", None)
        .await;
    (sim, p1, p2)
}

#[tokio::test]
async fn alternate_paging_uses_meta_page_and_links_previous() {
    let (sim, p1, p2) = two_pages(PagingVariant::Alternate).await;
    assert_eq!(
        p1.body["meta"],
        json!({"page": 1, "pageSize": 2, "totalCount": 3})
    );
    assert!(p1.body["links"]["previous"].is_null());
    assert!(p1.body["links"].get("prev").is_none());
    assert!(p1.body["links"]["next"].is_string());
    assert_eq!(p2.body["meta"]["page"], 2);
    assert!(p2.body["links"]["previous"].is_string());
    assert!(p2.body["links"]["next"].is_null());
    sim.shutdown().await;
}

#[tokio::test]
async fn totals_only_paging_has_totals_but_no_links() {
    let (sim, p1, p2) = two_pages(PagingVariant::TotalsOnly).await;
    for p in [&p1, &p2] {
        assert!(p.body.get("links").is_none(), "{}", p.body);
        assert_eq!(p.body["meta"]["totalCount"], 3);
        assert_eq!(p.body["meta"]["pageSize"], 2);
    }
    assert_eq!(p2.body["meta"]["pageNumber"], 2);
    assert_eq!(p2.body["data"].as_array().unwrap().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn links_only_paging_has_no_total_count_and_no_next_on_the_last_page() {
    let (sim, p1, p2) = two_pages(PagingVariant::LinksOnly).await;
    assert!(p1.body["meta"].get("totalCount").is_none());
    assert_eq!(
        p1.body["links"]["next"],
        json!("/connections?page[number]=2&page[size]=2")
    );
    assert!(p2.body["links"].get("next").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn user_id_can_sit_in_attributes_only_or_both_and_year_can_be_a_string() {
    for (loc, in_attr, in_rel) in [
        (UserIdLocation::Attributes, true, false),
        (UserIdLocation::Both, true, true),
    ] {
        let sim = start(with_variants(Variants {
            user_id_location: loc,
            year_as_string: true,
            ..Variants::default()
        }))
        .await;
        let api = Api::new(&sim).await;
        let r = api.get("/connections", None).await;
        let c0 = &r.body["data"][0];
        let user = &sim.user_ids()[0];
        assert_eq!(c0["attributes"].get("user").is_some(), in_attr);
        assert_eq!(c0["relationships"].get("user").is_some(), in_rel);
        if in_attr {
            assert_eq!(c0["attributes"]["user"]["id"], json!(user));
        }
        assert!(c0["relationships"]["vehicle"]["data"]["id"].is_string());
        assert!(c0["attributes"]["vehicle"]["year"].is_string());
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn connections_filter_by_user_vehicle_and_mode() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let users = sim.user_ids();
    let u1 = &users[1];
    let r = api
        .get(&format!("/connections?filter[userId]={u1}"), None)
        .await;
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["relationships"]["vehicle"]["data"]["id"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, sim.vehicles_of(u1));
    assert_eq!(r.body["meta"]["totalCount"], 2);
    // sc-user-id scopes the list too
    let r = api.get("/connections", Some(u1)).await;
    assert_eq!(r.body["meta"]["totalCount"], 2);

    let v = &sim.vehicles_of(&users[2])[1];
    let r = api
        .get(&format!("/connections?filter[vehicleId]={v}"), None)
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        r.body["data"][0]["relationships"]["vehicle"]["data"]["id"],
        json!(v)
    );
    let r = api
        .get(
            &format!("/connections?filter[vehicleId]={v}&filter[userId]={u1}"),
            None,
        )
        .await;
    assert_eq!(r.body["data"], json!([]));
    let r = api.get("/connections?filter[userId]=nobody", None).await;
    assert_eq!(r.body["data"], json!([]));

    let sim_v = sim.connect_vehicle_with_mode(u1, VehicleMode::Simulated);
    let live = api.get("/connections", None).await;
    assert_eq!(live.body["meta"]["totalCount"], 6);
    let simulated = api
        .get("/connections?filter[vehicle.mode]=simulated", None)
        .await;
    assert_eq!(simulated.body["meta"]["totalCount"], 1);
    let c = &simulated.body["data"][0];
    assert_eq!(c["attributes"]["vehicle"]["mode"], "simulated");
    assert_eq!(c["relationships"]["vehicle"]["data"]["id"], json!(sim_v));
    sim.shutdown().await;
}

#[tokio::test]
async fn connected_vehicle_appears_and_disconnected_one_vanishes_and_404s() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let new_user = "user-from-connect-redirect";
    let v = sim.connect_vehicle(new_user);
    assert_eq!(sim.vehicles_of(new_user), vec![v.clone()]);
    let r = api
        .get(&format!("/connections?filter[userId]={new_user}"), None)
        .await;
    assert_eq!(
        r.body["data"][0]["relationships"]["vehicle"]["data"]["id"],
        json!(v)
    );
    assert_eq!(api.signals(&sim, &v).await.status, StatusCode::OK);

    assert!(sim.disconnect_vehicle(&v));
    assert!(!sim.disconnect_vehicle(&v));
    let r = api
        .get(&format!("/connections?filter[userId]={new_user}"), None)
        .await;
    assert_eq!(r.body["data"], json!([]));
    let r = api
        .get(&format!("/vehicles/{v}/signals"), Some(new_user))
        .await;
    assert_v3_error(&r, 404, "RESOURCE_NOT_FOUND", None);
    sim.shutdown().await;
}

#[tokio::test]
async fn delete_connection_and_delete_user_answer_204_and_disconnect() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (user, vehicle) = first_vehicle(&sim);
    let conn = sim.connection_of(&vehicle).unwrap();
    let r = api.delete(&format!("/connections/{conn}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(sim.vehicles_of(&user).len(), 1);
    let r = api.delete(&format!("/connections/{conn}")).await;
    assert_v3_error(&r, 404, "RESOURCE_NOT_FOUND", None);
    let r = api.delete(&format!("/users/{user}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(sim.vehicles_of(&user).is_empty());
    assert_eq!(
        api.get("/connections", None).await.body["meta"]["totalCount"],
        4
    );
    sim.shutdown().await;
}

// ---------------------------------------------------------------- signals

#[tokio::test]
async fn signals_without_sc_user_id_are_400_missing_parameter() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let r = api.get(&format!("/vehicles/{v}/signals"), None).await;
    assert_v3_error(&r, 400, "VALIDATION", Some("MISSING_PARAMETER"));
    let r = api
        .get(
            &format!("/vehicles/{v}/signals/odometer-traveleddistance"),
            None,
        )
        .await;
    assert_v3_error(&r, 400, "VALIDATION", Some("MISSING_PARAMETER"));
    sim.shutdown().await;
}

#[tokio::test]
async fn signals_of_another_users_vehicle_are_403_and_of_an_unknown_vehicle_404() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let users = sim.user_ids();
    let v = &sim.vehicles_of(&users[0])[0];
    let r = api
        .get(&format!("/vehicles/{v}/signals"), Some(&users[1]))
        .await;
    assert_v3_error(&r, 403, "PERMISSION", None);
    let r = api
        .get(
            "/vehicles/00000000-0000-4000-8000-000000000000/signals",
            Some(&users[0]),
        )
        .await;
    assert_v3_error(&r, 404, "RESOURCE_NOT_FOUND", None);
    sim.shutdown().await;
}

#[tokio::test]
async fn signals_have_the_contract_shape_with_every_body_kind_and_status() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    // Every third vehicle (the first one included) has an ERROR and an UNAVAILABLE signal.
    let (_, v) = first_vehicle(&sim);
    let before = chrono::Utc::now().timestamp_millis();
    let r = api.signals(&sim, &v).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = &r.body;
    let data = b["data"].as_array().unwrap();
    assert!((8..=14).contains(&data.len()), "{}", data.len());
    assert_eq!(
        b["meta"],
        json!({"page": 1, "pageSize": data.len(), "totalCount": data.len()})
    );
    assert_eq!(
        b["links"],
        json!({"self": format!("/vehicles/{v}/signals")})
    );
    let inc = &b["included"]["vehicle"];
    assert_eq!(inc["id"], json!(v));
    assert_eq!(inc["type"], "vehicle");
    let make = inc["attributes"]["make"].as_str().unwrap();
    assert_eq!(make, make.to_uppercase());
    assert!(inc["attributes"]["year"].is_string());

    let odo = signal(b, "odometer-traveleddistance");
    assert_eq!(odo["type"], "signal");
    let a = &odo["attributes"];
    assert_eq!(a["code"], "odometer-traveleddistance");
    assert_eq!(a["name"], "TraveledDistance");
    assert_eq!(a["group"], "Odometer");
    assert_eq!(a["status"], json!({"value": "SUCCESS"}));
    assert_eq!(a["body"]["unit"], "kilometers");
    assert!(a["body"]["value"].as_f64().unwrap() > 1000.0);
    let retrieved = odo["meta"]["retrievedAt"].as_i64().unwrap();
    let oem = odo["meta"]["oemUpdatedAt"].as_i64().unwrap();
    assert!(retrieved >= before && oem <= retrieved && oem > before - 3_600_000);

    let loc = &signal(b, "location-preciselocation")["attributes"]["body"];
    for k in ["latitude", "longitude", "heading"] {
        assert!(loc[k].is_f64() || loc[k].is_i64(), "{loc}");
    }
    assert!(loc["direction"].is_string());
    assert!(["CURRENT", "LAST_PARKED"].contains(&loc["locationType"].as_str().unwrap()));
    let doors = &signal(b, "closure-doors")["attributes"]["body"];
    assert_eq!(doors["values"].as_array().unwrap().len(), 4);
    assert_eq!(
        (doors["rowCount"].clone(), doors["columnCount"].clone()),
        (json!(2), json!(2))
    );
    assert!(doors["values"][0]["isLocked"].is_boolean());
    assert!(signal(b, "closure-islocked")["attributes"]["body"]["value"].is_boolean());

    let err = &signal(b, "closure-sunroof")["attributes"];
    assert_eq!(
        err["status"],
        json!({"value": "ERROR", "error": {"type": "COMPATIBILITY", "code": "VEHICLE_NOT_CAPABLE"}})
    );
    assert!(err.get("body").is_none());
    let un = &signal(b, "closure-reartrunk")["attributes"];
    assert_eq!(un["status"], json!({"value": "UNAVAILABLE"}));
    assert!(un.get("body").is_none());

    let served = data.len() as u64 - 2;
    let n = sim.counters();
    assert_eq!((n.signals_calls, n.signals_served), (1, served));
    sim.shutdown().await;
}

#[tokio::test]
async fn electric_vehicles_report_battery_and_charging_that_agree() {
    let sim = start(SimConfig {
        users: 10,
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let mut checked = 0;
    for u in sim.user_ids() {
        for v in sim.vehicles_of(&u) {
            let r = api.get(&format!("/vehicles/{v}/signals"), Some(&u)).await;
            let data = r.body["data"].as_array().unwrap();
            let get = |code: &str| data.iter().find(|s| s["id"] == code).cloned();
            let (Some(soc), Some(charging), Some(detail)) = (
                get("tractionbattery-stateofcharge"),
                get("charge-ischarging"),
                get("charge-detailedchargingstatus"),
            ) else {
                continue;
            };
            let soc = soc["attributes"]["body"]["value"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&soc));
            let charging = charging["attributes"]["body"]["value"].as_bool().unwrap();
            let detail = detail["attributes"]["body"]["value"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(charging, detail == "CHARGING");
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");
    sim.shutdown().await;
}

#[tokio::test]
async fn readings_are_identical_within_a_period_and_change_after_it() {
    let sim = start(SimConfig::default()).await; // 60 s period
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let strip = |b: &Value| -> Vec<Value> {
        b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!([s["attributes"], s["meta"]["oemUpdatedAt"]]))
            .collect()
    };
    let a = api.signals(&sim, &v).await;
    let b = api.signals(&sim, &v).await;
    assert_eq!(strip(&a.body), strip(&b.body));
    sim.shutdown().await;

    let sim = start(SimConfig {
        update_period: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    let path = format!("/vehicles/{v}/signals/odometer-traveleddistance");
    let mut last_oem = 0;
    let mut last_value = 0.0;
    for _ in 0..5 {
        let r = api.get(&path, Some(&user)).await;
        let s = &r.body["data"];
        let oem = s["meta"]["oemUpdatedAt"].as_i64().unwrap();
        let value = s["attributes"]["body"]["value"].as_f64().unwrap();
        assert!(oem > last_oem, "oemUpdatedAt must advance each period");
        assert!(value >= last_value, "odometer went back");
        (last_oem, last_value) = (oem, value);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn timestamps_can_be_epoch_seconds_or_iso8601() {
    let now_s = chrono::Utc::now().timestamp();
    let sim = start(with_variants(Variants {
        timestamps: TimestampFormat::EpochSeconds,
        ..Variants::default()
    }))
    .await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let r = api.signals(&sim, &v).await;
    let meta = &signal(&r.body, "odometer-traveleddistance")["meta"];
    let retrieved = meta["retrievedAt"].as_i64().unwrap();
    assert!((now_s - 5..now_s + 5).contains(&retrieved), "{meta}");
    assert!(meta["oemUpdatedAt"].as_i64().unwrap() < 10_000_000_000);
    let served = sim.served_readings();
    assert!(
        served
            .iter()
            .all(|s| s.oem_updated_at.timestamp_subsec_millis() == 0)
    );
    sim.shutdown().await;

    let sim = start(with_variants(Variants {
        timestamps: TimestampFormat::Iso8601,
        ..Variants::default()
    }))
    .await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let r = api.signals(&sim, &v).await;
    let meta = &signal(&r.body, "odometer-traveleddistance")["meta"];
    for k in ["retrievedAt", "oemUpdatedAt"] {
        let s = meta[k].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(s).is_ok(), "{s}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn paged_signals_follow_links_next_to_the_full_list() {
    let sim = start(with_variants(Variants {
        signals_page_size: Some(5),
        ..Variants::default()
    }))
    .await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    let mut codes = Vec::new();
    let mut path = format!("/vehicles/{v}/signals");
    let mut pages = 0;
    loop {
        let r = api.get(&path, Some(&user)).await;
        assert_eq!(r.status, StatusCode::OK);
        pages += 1;
        assert_eq!(r.body["meta"]["pageSize"], 5);
        for s in r.body["data"].as_array().unwrap() {
            codes.push(s["id"].as_str().unwrap().to_owned());
        }
        match r.body["links"]["next"].as_str() {
            // Links are relative to the API base.
            Some(next) => path = next.to_owned(),
            None => break,
        }
        assert!(pages < 10);
    }
    let total = codes.len();
    assert_eq!(pages, total.div_ceil(5));
    assert_eq!(codes.iter().collect::<HashSet<_>>().len(), total);
    sim.shutdown().await;
}

#[tokio::test]
async fn unsubscribed_vehicle_answers_200_with_empty_data() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    sim.set_no_signals(&v, true);
    let r = api.signals(&sim, &v).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["data"], json!([]));
    assert_eq!(r.body["meta"]["totalCount"], 0);
    sim.set_no_signals(&v, false);
    assert!(
        !api.signals(&sim, &v).await.body["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn imperial_unit_system_reports_miles() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    let path = format!(
        "{}/vehicles/{v}/signals/odometer-traveleddistance",
        sim.api_url()
    );
    let km = api
        .get(
            &format!("/vehicles/{v}/signals/odometer-traveleddistance"),
            Some(&user),
        )
        .await;
    let mi = api
        .send(
            api.c
                .get(path)
                .bearer_auth(&api.token)
                .header("sc-user-id", &user)
                .header("SC-Unit-System", "imperial"),
        )
        .await;
    assert_eq!(mi.body["data"]["attributes"]["body"]["unit"], "miles");
    let km = km.body["data"]["attributes"]["body"]["value"]
        .as_f64()
        .unwrap();
    let mi = mi.body["data"]["attributes"]["body"]["value"]
        .as_f64()
        .unwrap();
    assert!((mi - km * 0.621371).abs() < 1.0, "{km} km vs {mi} mi");
    sim.shutdown().await;
}

#[tokio::test]
async fn single_signal_and_vehicle_come_wrapped_or_unwrapped() {
    for wrapped in [true, false] {
        let sim = start(with_variants(Variants {
            wrapped_resources: wrapped,
            ..Variants::default()
        }))
        .await;
        let api = Api::new(&sim).await;
        let (user, v) = first_vehicle(&sim);
        let r = api
            .get(
                &format!("/vehicles/{v}/signals/tractionbattery-stateofcharge"),
                Some(&user),
            )
            .await;
        let r2 = api
            .get(
                &format!("/vehicles/{v}/signals/odometer-traveleddistance"),
                Some(&user),
            )
            .await;
        let s = if wrapped { &r2.body["data"] } else { &r2.body };
        assert_eq!(s["id"], "odometer-traveleddistance", "{}", r2.body);
        assert_eq!(s["attributes"]["status"]["value"], "SUCCESS");
        assert!(s["meta"]["oemUpdatedAt"].is_i64());
        assert!(r.status == StatusCode::OK || r.status == StatusCode::NOT_FOUND);

        let veh = api.get(&format!("/vehicles/{v}"), None).await;
        let res = if wrapped {
            &veh.body["data"]
        } else {
            &veh.body
        };
        assert_eq!(res["id"], json!(v));
        assert_eq!(res["type"], "vehicle");
        assert!(res["attributes"]["make"].is_string());
        assert!(res["attributes"]["powertrainType"].is_string());

        let unknown = api
            .get(
                &format!("/vehicles/{v}/signals/no-such-signal"),
                Some(&user),
            )
            .await;
        assert_v3_error(&unknown, 404, "RESOURCE_NOT_FOUND", None);
        let n = sim.counters();
        assert_eq!((n.signal_calls, n.vehicle_calls), (3, 1));
        sim.shutdown().await;
    }
}

// ---------------------------------------------------------------- errors and limits

#[tokio::test]
async fn forced_vehicle_errors_answer_the_contract_status_and_type() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let cases = [
        (ForcedError::Permission, 403, "PERMISSION", None),
        (ForcedError::NotFound, 404, "RESOURCE_NOT_FOUND", None),
        (
            ForcedError::Billing,
            430,
            "BILLING",
            Some("VEHICLE_REQUEST_LIMIT"),
        ),
        (ForcedError::Incompatible, 501, "COMPATIBILITY", None),
        (
            ForcedError::ConnectedServicesAccount,
            400,
            "CONNECTED_SERVICES_ACCOUNT",
            None,
        ),
        (ForcedError::Asleep, 409, "VEHICLE_STATE", Some("ASLEEP")),
        (
            ForcedError::Unreachable,
            409,
            "VEHICLE_STATE",
            Some("UNREACHABLE"),
        ),
        (ForcedError::Validation, 400, "VALIDATION", None),
        (ForcedError::Server, 500, "SERVER", None),
        (
            ForcedError::UpstreamRateLimit,
            503,
            "UPSTREAM",
            Some("RATE_LIMIT"),
        ),
        (ForcedError::GatewayTimeout, 504, "UPSTREAM", None),
    ];
    for (e, status, kind, code) in cases {
        sim.force_vehicle_error(&v, Some(e));
        let r = api.signals(&sim, &v).await;
        assert_v3_error(&r, status, kind, code);
    }
    sim.force_vehicle_error(&v, None);
    assert_eq!(api.signals(&sim, &v).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn v2_error_body_is_flat_with_request_id() {
    let sim = start(with_variants(Variants {
        error_body: ErrorBodyVariant::V2,
        ..Variants::default()
    }))
    .await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    sim.force_vehicle_error(&v, Some(ForcedError::Asleep));
    let r = api.signals(&sim, &v).await;
    assert_eq!(r.status.as_u16(), 409);
    let b = &r.body;
    assert!(b.get("errors").is_none());
    assert_eq!(b["type"], "VEHICLE_STATE");
    assert_eq!(b["code"], "ASLEEP");
    assert_eq!(b["statusCode"], 409);
    assert!(b["description"].is_string());
    assert_eq!(b["resolution"]["type"], "RETRY_LATER");
    assert_eq!(b["requestId"], r.headers["sc-request-id"].to_str().unwrap());
    sim.shutdown().await;
}

#[tokio::test]
async fn app_bucket_answers_429_with_retry_after_and_counts_calls_that_ignore_it() {
    let sim = start(SimConfig {
        app_bucket: Some(Bucket {
            capacity: 3.0,
            refill_per_second: 0.5,
        }),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    for _ in 0..3 {
        assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    }
    let r = api.get("/connections", None).await;
    assert_v3_error(&r, 429, "RATE_LIMIT", Some("SMARTCAR_API"));
    assert_eq!(v3_error(&r)["resolution"]["type"], "RETRY_LATER");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(secs, 2);
    // Ignoring Retry-After (past the in-flight grace): refused again and counted.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let again = api.get("/connections", None).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    let n = sim.counters();
    assert_eq!((n.responses_429_app, n.calls_before_retry_after), (2, 1));
    // Token endpoint is never limited.
    fetch_token(&Client::new(), &sim).await;
    // Obeying it works.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    sim.set_app_bucket(None);
    for _ in 0..5 {
        assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    }
    assert_eq!(sim.counters().calls_before_retry_after, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_can_be_an_http_date() {
    let sim = start(SimConfig {
        app_bucket: Some(Bucket {
            capacity: 1.0,
            refill_per_second: 0.5,
        }),
        variants: Variants {
            retry_after_http_date: true,
            ..Variants::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    api.get("/connections", None).await;
    let r = api.get("/connections", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let date = r.headers["retry-after"].to_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc2822(&date.replace("GMT", "+0000")).unwrap();
    let ahead = parsed.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    assert!((500..=3_000).contains(&ahead), "{date} is {ahead} ms ahead");
    sim.shutdown().await;
}

#[tokio::test]
async fn vehicle_throttle_answers_429_vehicle_for_that_vehicle_only() {
    let sim = start(SimConfig {
        vehicle_min_interval: Some(Duration::from_millis(600)),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    let other = sim.vehicles_of(&user)[1].clone();
    assert_eq!(api.signals(&sim, &v).await.status, StatusCode::OK);
    let r = api.signals(&sim, &v).await;
    assert_v3_error(&r, 429, "RATE_LIMIT", Some("VEHICLE"));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(api.signals(&sim, &other).await.status, StatusCode::OK);
    let early = api.signals(&sim, &v).await;
    assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
    let n = sim.counters();
    assert_eq!(
        (n.responses_429_vehicle, n.calls_before_retry_after),
        (2, 1)
    );
    assert_eq!(n.responses_429_app, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.signals(&sim, &v).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_errors_are_500_502_html_or_503() {
    let sim = start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let mut seen = HashSet::new();
    for _ in 0..60 {
        let r = api.get("/connections", None).await;
        let status = r.status.as_u16();
        seen.insert(status);
        assert!(r.headers.contains_key("sc-request-id"));
        match status {
            502 => {
                assert!(
                    r.headers["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("text/html")
                );
                assert!(r.body.as_str().unwrap().contains("<html>"));
            }
            500 => assert_v3_error(&r, 500, "SERVER", None),
            503 => assert_v3_error(&r, 503, "UPSTREAM", None),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(seen, HashSet::from([500, 502, 503]));
    assert_eq!(sim.counters().injected_errors, 60);
    sim.set_faults(Faults::default());
    assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_fault_answers_401_and_the_token_stays_expired() {
    let sim = start(SimConfig {
        faults: Faults {
            expired_token_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let r = api.get("/connections", None).await;
    assert_v3_error(&r, 401, "AUTHENTICATION", None);
    sim.set_faults(Faults::default());
    let r = api.get("/connections", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let n = sim.counters();
    assert_eq!((n.injected_errors, n.expired_token_calls), (1, 1));
    let fresh = Api::new(&sim).await;
    assert_eq!(fresh.get("/connections", None).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_fault_and_latency_delay_responses() {
    let sim = start(SimConfig {
        latency: Duration::from_millis(100),
        faults: Faults {
            slow_rate: 1.0,
            slow_delay: Duration::from_millis(200),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let t = Instant::now();
    assert_eq!(api.get("/connections", None).await.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    fetch_token(&Client::new(), &sim).await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "token endpoint has no latency"
    );
    assert_eq!(sim.counters().slow_responses, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn counters_count_calls_by_route_and_status_and_reset() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    api.get("/connections", None).await;
    api.get(&format!("/vehicles/{v}"), None).await;
    api.signals(&sim, &v).await;
    api.get(&format!("/vehicles/{v}/signals"), None).await;
    api.get(
        &format!("/vehicles/{v}/signals/odometer-traveleddistance"),
        Some(&user),
    )
    .await;
    api.get("/no-such-path", None).await;
    let n = sim.counters();
    assert_eq!(n.token_requests, 1);
    assert_eq!(n.api_calls, 6);
    assert_eq!(
        (
            n.connections_calls,
            n.vehicle_calls,
            n.signals_calls,
            n.signal_calls
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(n.by_status.get(&200), Some(&5)); // token + 4
    assert_eq!(n.by_status.get(&400), Some(&1));
    assert_eq!(n.by_status.get(&404), Some(&1));
    let js = serde_json::to_value(&n).unwrap();
    assert_eq!(js["by_status"]["200"], 5);
    sim.reset_counters();
    assert_eq!(sim.counters(), Default::default());
    sim.shutdown().await;
}

// ---------------------------------------------------------------- webhooks and records

#[tokio::test]
async fn vehicle_state_webhook_is_a_signed_envelope_recorded_as_served() {
    let sim = start(SimConfig::default()).await;
    let (user, v) = first_vehicle(&sim);
    let body = sim.vehicle_state_webhook(&v).unwrap();
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["eventType"], "VEHICLE_STATE");
    assert_eq!(e["vehicleId"], json!(v));
    assert_eq!(e["data"]["user"]["id"], json!(user));
    assert_eq!(e["data"]["vehicle"]["id"], json!(v));
    assert!(e["data"]["vehicle"]["powertrainType"].is_string());
    assert!(e["data"]["triggers"].is_array());
    assert_eq!(e["meta"]["version"], "4.0");
    assert_eq!(e["meta"]["mode"], "LIVE");
    assert!(e["meta"]["deliveredAt"].is_i64());
    let signals = e["data"]["signals"].as_array().unwrap();
    let odo = signals
        .iter()
        .find(|s| s["code"] == "odometer-traveleddistance")
        .unwrap();
    assert_eq!(odo["group"], "Odometer");
    assert!(odo["body"]["value"].is_number());
    assert!(odo["meta"]["oemUpdatedAt"].as_i64().unwrap() > 1_000_000_000_000);

    // Known HMAC-SHA256 vector (computed independently).
    assert_eq!(
        sim.sign(br#"{"hello":"world"}"#),
        "6a9045af472cb74038433761b6e1ea1fe511f13110af831e1c89e170cb1522dd"
    );
    assert_eq!(sim.sign(&body).len(), 64);

    let again: Value = serde_json::from_slice(&sim.vehicle_state_webhook(&v).unwrap()).unwrap();
    assert_ne!(again["eventId"], e["eventId"]);
    let top: Value =
        serde_json::from_slice(&sim.vehicle_state_webhook_top_level_triggers(&v).unwrap()).unwrap();
    assert!(top["triggers"].is_array() && top["data"].get("triggers").is_none());

    let successes = signals
        .iter()
        .filter(|s| s["status"]["value"] == "SUCCESS")
        .count();
    let served = sim.served_readings();
    assert_eq!(served.len(), successes, "distinct readings recorded once");
    let rec = served
        .iter()
        .find(|s| s.code == "odometer-traveleddistance")
        .unwrap();
    assert_eq!(rec.vehicle_id, v);
    assert_eq!(rec.value_num, odo["body"]["value"].as_f64());
    assert_eq!(
        rec.oem_updated_at.timestamp_millis(),
        odo["meta"]["oemUpdatedAt"].as_i64().unwrap()
    );
    assert!(sim.vehicle_state_webhook("unknown").is_none());

    let verify: Value = serde_json::from_slice(&sim.verify_webhook("abc")).unwrap();
    assert_eq!(verify["eventType"], "VERIFY");
    assert_eq!(verify["data"]["challenge"], "abc");
    assert_eq!(sim.verify_answer("abc"), sim.sign(b"abc"));
    let err: Value = serde_json::from_slice(
        &sim.vehicle_error_webhook(&v, "VEHICLE_STATE", "ASLEEP", false)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(err["data"]["errors"][0]["state"], "ERROR");
    sim.shutdown().await;
}

#[tokio::test]
async fn served_readings_are_distinct_match_responses_and_can_be_disabled() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    let r = api.signals(&sim, &v).await;
    api.signals(&sim, &v).await;
    let served = sim.served_readings();
    let successes: Vec<&Value> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["attributes"]["status"]["value"] == "SUCCESS")
        .collect();
    assert_eq!(served.len(), successes.len());
    for s in successes {
        let rec = served.iter().find(|x| x.code == s["id"]).unwrap();
        assert_eq!(rec.body, s["attributes"]["body"]);
        assert_eq!(
            rec.oem_updated_at.timestamp_millis(),
            s["meta"]["oemUpdatedAt"].as_i64().unwrap()
        );
    }
    let soc = served
        .iter()
        .find(|x| x.code == "closure-islocked")
        .unwrap();
    assert!(matches!(soc.value_num, Some(x) if x == 0.0 || x == 1.0));
    assert!(
        served
            .iter()
            .find(|x| x.code == "location-preciselocation")
            .unwrap()
            .value_num
            .is_none()
    );
    sim.shutdown().await;

    let sim = start(SimConfig {
        record_served: false,
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let (_, v) = first_vehicle(&sim);
    api.signals(&sim, &v).await;
    assert!(sim.served_readings().is_empty());
    assert!(sim.counters().signals_served > 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn fleet_is_deterministic_from_the_seed() {
    let a = start(SimConfig::default()).await;
    let b = start(SimConfig::default()).await;
    let c = start(SimConfig {
        seed: 99,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(a.user_ids(), b.user_ids());
    assert_ne!(a.user_ids(), c.user_ids());
    let u = &a.user_ids()[0];
    assert_eq!(a.vehicles_of(u), b.vehicles_of(u));
    assert_eq!(a.user_ids().len(), 3);
    assert_eq!(a.vehicles_of(u).len(), 2);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_fleet_of_100k_vehicles_starts_fast_and_pages() {
    let t = Instant::now();
    let sim = start(SimConfig {
        users: 50_000,
        vehicles_per_user: 2,
        record_served: false,
        ..SimConfig::default()
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let api = Api::new(&sim).await;
    let r = api
        .get("/connections?page[size]=100&page[number]=1000", None)
        .await;
    assert_eq!(r.body["meta"]["totalCount"], 100_000);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 100);
    assert!(r.body["links"]["next"].is_null());
    let user = sim.user_ids()[49_999].clone();
    let v = sim.vehicles_of(&user)[1].clone();
    let s = api
        .get(&format!("/vehicles/{v}/signals"), Some(&user))
        .await;
    assert_eq!(s.status, StatusCode::OK);
    sim.shutdown().await;
}

fn signal_list(r: &Resp) -> Vec<Value> {
    r.body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn payload_variants_shape_the_signals_as_flagged() {
    let sim = start(SimConfig {
        users: 1,
        vehicles_per_user: 3,
        variants: Variants {
            precise_values: true,
            camel_case_codes: true,
            unit_aliases: true,
            legacy_soc_body: true,
            empty_meta: true,
            out_of_range_times: true,
            overlong_code: true,
            ..Variants::default()
        },
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let user = sim.user_ids()[0].clone();
    let mut codes = HashSet::new();
    for v in sim.vehicles_of(&user) {
        let r = api.signals(&sim, &v).await;
        assert_eq!(r.status, StatusCode::OK);
        for s in signal_list(&r) {
            let a = &s["attributes"];
            let code = a["code"].as_str().unwrap().to_owned();
            assert_eq!(s["id"], a["code"]);
            match code.as_str() {
                "odometerTraveledDistance" => {
                    assert_eq!(a["body"]["unit"], "km");
                    let x = a["body"]["value"].as_f64().unwrap();
                    let e = format!("{x:e}");
                    let digits = e.split('e').next().unwrap().replace(['.', '-'], "");
                    assert_eq!(digits.len(), 17, "{x}");
                }
                "tractionBatteryStateOfCharge" => {
                    assert!(a["body"]["percentage"].is_number(), "{a}");
                    assert!(a["body"].get("value").is_none());
                }
                "closureIsLocked" => assert_eq!(s["meta"], json!({})),
                "lowVoltageBatteryStateOfCharge" => {
                    let t = &s["meta"]["oemUpdatedAt"];
                    assert!(
                        t.is_string()
                            || t.as_i64().is_some_and(|n| n > 1_000_000_000_000_000 / 1000),
                        "{t}"
                    );
                }
                _ => {}
            }
            codes.insert(code);
        }
    }
    assert!(codes.contains("odometerTraveledDistance"), "{codes:?}");
    assert!(codes.iter().any(|c| c.len() > 64), "the overlong code");
    assert!(codes.iter().all(|c| !c.contains('-') || c.len() > 64));
    // Readings with an odd meta are not recorded as served; the others are, in kebab-case.
    let served = sim.served_readings();
    assert!(!served.is_empty());
    assert!(served.iter().all(|r| r.code != "closure-islocked"
        && r.code != "lowvoltagebattery-stateofcharge"
        && r.code.contains('-')));
    sim.shutdown().await;
}

#[tokio::test]
async fn error_body_variants_render_as_flagged() {
    for (variant, check) in [
        (ErrorBodyVariant::V3Minimal, "v3-minimal"),
        (ErrorBodyVariant::V2ResolutionTypeNull, "type-null"),
        (ErrorBodyVariant::V2ResolutionString, "string"),
        (ErrorBodyVariant::V2ResolutionNull, "null"),
        (ErrorBodyVariant::V1, "v1"),
    ] {
        let sim = start(with_variants(Variants {
            error_body: variant,
            ..Variants::default()
        }))
        .await;
        let api = Api::new(&sim).await;
        let (_, v) = first_vehicle(&sim);
        sim.force_vehicle_error(&v, Some(ForcedError::Asleep));
        let r = api.signals(&sim, &v).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        let b = &r.body;
        match check {
            "v3-minimal" => {
                let e = &b["errors"][0];
                assert_eq!(e["status"], "409");
                assert_eq!(e["code"], "asleep");
                assert!(e.get("type").is_none() && e.get("resolution").is_none());
                assert!(e.get("meta").is_none());
            }
            "type-null" => assert_eq!(b["resolution"], json!({"type": null})),
            "string" => assert_eq!(b["resolution"], "RETRY_LATER"),
            "null" => assert!(b["resolution"].is_null() && b.get("resolution").is_some()),
            _ => {
                assert_eq!(b["error"], "vehicle_state");
                assert_eq!(b["code"], "ASLEEP");
                assert!(b["message"].is_string());
            }
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_forced_vehicle_rate_limit_answers_429_with_retry_after_in_each_form() {
    use smartcar_sim::RetryAfterForm;
    for form in [
        RetryAfterForm::Seconds,
        RetryAfterForm::HttpDate,
        RetryAfterForm::EpochMillis,
        RetryAfterForm::EpochSeconds,
    ] {
        let sim = start(with_variants(Variants {
            retry_after_form: form,
            ..Variants::default()
        }))
        .await;
        let api = Api::new(&sim).await;
        let (_, v) = first_vehicle(&sim);
        sim.force_vehicle_error(&v, Some(ForcedError::VehicleRateLimit));
        let now_ms = chrono::Utc::now().timestamp_millis();
        for _ in 0..2 {
            let r = api.signals(&sim, &v).await;
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.body["errors"][0]["code"], "VEHICLE");
            let ra = r.headers["retry-after"].to_str().unwrap().to_owned();
            match form {
                RetryAfterForm::Seconds => assert_eq!(ra, "2"),
                RetryAfterForm::HttpDate => assert!(ra.ends_with(" GMT"), "{ra}"),
                RetryAfterForm::EpochMillis => {
                    let at: i64 = ra.parse().unwrap();
                    assert!((now_ms + 1_500..now_ms + 3_000).contains(&at), "{ra}");
                }
                RetryAfterForm::EpochSeconds => {
                    let at: i64 = ra.parse().unwrap();
                    assert!((now_ms / 1000 + 1..now_ms / 1000 + 4).contains(&at), "{ra}");
                }
            }
        }
        assert_eq!(sim.counters().responses_429_vehicle, 2);
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn continuation_pages_can_be_failed_and_links_styled() {
    use smartcar_sim::LinkStyle;
    let sim = start(with_variants(Variants {
        signals_page_size: Some(4),
        signals_link: LinkStyle::OtherVehicle,
        ..Variants::default()
    }))
    .await;
    let api = Api::new(&sim).await;
    let (user, v) = first_vehicle(&sim);
    let r = api.signals(&sim, &v).await;
    let next = r.body["links"]["next"].as_str().unwrap().to_owned();
    assert!(
        next.starts_with(&format!("/vehicles/not-{v}/signals?")),
        "{next}"
    );
    sim.fail_next_signal_pages(1);
    let page2 = format!("/vehicles/{v}/signals?page[number]=2&page[size]=4");
    let r = api.get(&page2, Some(&user)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.get(&page2, Some(&user)).await;
    assert_eq!(r.status, StatusCode::OK, "only the next one fails");
    sim.shutdown().await;
}

#[tokio::test]
async fn webhook_variants_carry_fetched_at_and_delivered_at_as_flagged() {
    for (fmt, check) in [
        (TimestampFormat::EpochMillis, 0),
        (TimestampFormat::EpochSeconds, 1),
        (TimestampFormat::Iso8601, 2),
    ] {
        let sim = start(with_variants(Variants {
            webhook_fetched_at: true,
            webhook_delivered_at: fmt,
            ..Variants::default()
        }))
        .await;
        let (_, v) = first_vehicle(&sim);
        let body: Value = serde_json::from_slice(&sim.vehicle_state_webhook(&v).unwrap()).unwrap();
        let delivered = &body["meta"]["deliveredAt"];
        match check {
            0 => assert!(delivered.as_i64().unwrap() > 100_000_000_000),
            1 => assert!(delivered.as_i64().unwrap() < 100_000_000_000),
            _ => assert!(delivered.as_str().unwrap().ends_with('Z')),
        }
        for s in body["data"]["signals"].as_array().unwrap() {
            assert!(s["meta"].get("retrievedAt").is_none(), "{s}");
            assert!(s["meta"]["fetchedAt"].is_i64(), "{s}");
        }
        sim.shutdown().await;
    }
}

// ---------------------------------------------------------------- allowance, behaviours, §8

/// Sleeps until `ms` after the start of the next `period_ms` period (epoch-aligned).
async fn until_next_period(period_ms: i64, ms: i64) {
    let now = chrono::Utc::now().timestamp_millis();
    let next = (now.div_euclid(period_ms) + 1) * period_ms + ms;
    tokio::time::sleep(Duration::from_millis((next - now).max(0) as u64)).await;
}

#[tokio::test]
async fn past_its_allowance_a_vehicle_answers_430_billing_until_the_period_ends() {
    let sim = start(SimConfig {
        allowance: Some(smartcar_sim::VehicleAllowance {
            calls: 3,
            period: Duration::from_secs(2),
        }),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let (_, vehicle) = first_vehicle(&sim);
    let other = sim.vehicles_of(&sim.user_ids()[1])[0].clone();
    until_next_period(2000, 50).await;
    for _ in 0..3 {
        assert_eq!(api.signals(&sim, &vehicle).await.status, StatusCode::OK);
    }
    let r = api.signals(&sim, &vehicle).await;
    assert_v3_error(&r, 430, "BILLING", Some("VEHICLE_REQUEST_LIMIT"));
    // Per vehicle: another one is untouched.
    assert_eq!(api.signals(&sim, &other).await.status, StatusCode::OK);
    // The next period starts afresh.
    until_next_period(2000, 50).await;
    assert_eq!(api.signals(&sim, &vehicle).await.status, StatusCode::OK);
    let calls: Vec<_> = sim
        .allowance_calls()
        .into_iter()
        .filter(|c| c.vehicle_id == vehicle)
        .collect();
    assert_eq!(calls.len(), 5);
    assert_eq!(
        calls.iter().map(|c| c.admitted).collect::<Vec<_>>(),
        [true, true, true, false, true]
    );
    assert_eq!(calls[0].period, calls[3].period);
    assert_eq!(calls[4].period, calls[0].period + 1);
    assert_eq!(sim.counters().by_status.get(&430), Some(&1));
}

fn reading<'a>(r: &'a Resp, code: &str) -> &'a Value {
    &signal(&r.body, code)["attributes"]["body"]
}

#[tokio::test]
async fn behaviours_change_the_readings_as_their_class_says() {
    let sim = start(SimConfig {
        users: 1,
        vehicles_per_user: 3,
        update_period: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let api = Api::new(&sim).await;
    let vehicles = sim.vehicles_of(&sim.user_ids()[0]);
    let classes = [
        smartcar_sim::Behaviour::Parked,
        smartcar_sim::Behaviour::Charging,
        smartcar_sim::Behaviour::Driving,
    ];
    for (v, b) in vehicles.iter().zip(classes) {
        sim.set_behaviour(v, Some(b));
    }
    let mut first = Vec::new();
    for v in &vehicles {
        first.push(api.signals(&sim, v).await);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut second = Vec::new();
    for v in &vehicles {
        second.push(api.signals(&sim, v).await);
    }
    let (odo, loc, charging) = (
        "odometer-traveleddistance",
        "location-preciselocation",
        "charge-ischarging",
    );
    // Parked: nothing that shows motion changes, and it does not charge.
    assert_eq!(reading(&first[0], odo), reading(&second[0], odo));
    assert_eq!(reading(&first[0], loc), reading(&second[0], loc));
    let not_charging = |r: &Resp| {
        // An ICE car has no charging signal at all.
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == charging)
            .is_none_or(|s| s["attributes"]["body"]["value"] == json!(false))
    };
    assert!(not_charging(&second[0]));
    // Charging: charging, not moving.
    assert_eq!(reading(&second[1], charging)["value"], json!(true));
    assert_eq!(reading(&first[1], loc), reading(&second[1], loc));
    // Driving: it moves.
    assert_ne!(reading(&first[2], loc), reading(&second[2], loc));
    assert!(not_charging(&second[2]));
}

#[tokio::test]
async fn subscriptions_answer_202_then_409_list_and_unsubscribe() {
    let sim = start(SimConfig::default()).await;
    let api = Api::new(&sim).await;
    let (user, vehicle) = first_vehicle(&sim);
    let webhook = sim.webhook_id();
    let base = sim.management_url();
    let post = |body: Value| {
        let req = api
            .c
            .post(format!("{base}/subscriptions"))
            .bearer_auth(&api.token)
            .json(&body);
        api.send(req)
    };
    let body = |u: &str, v: &str| json!({"data": {"attributes": {"webhookId": webhook, "userId": u, "vehicleId": v}}});
    let r = post(body(&user, &vehicle)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(
        r.body["meta"]["message"],
        "subscription creation in progress"
    );
    let r = post(body(&user, &vehicle)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = post(body("someone-else", &vehicle)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(body(&user, "00000000-0000-0000-0000-000000000000")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(json!({"data": {}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.subscriptions(),
        vec![(vehicle.clone(), webhook.clone())]
    );

    let list = api
        .send(
            api.c
                .get(format!(
                    "{base}/subscriptions?filter[webhookId]={webhook}&filter[vehicleId]={vehicle}&page[size]=100"
                ))
                .bearer_auth(&api.token),
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["meta"]["totalCount"], 1);
    assert_eq!(list.body["data"][0]["attributes"]["vehicleId"], vehicle);

    let delete = || {
        api.send(
            api.c
                .delete(format!("{base}/subscriptions/{webhook}/vehicles/{vehicle}"))
                .bearer_auth(&api.token),
        )
    };
    assert_eq!(delete().await.status, StatusCode::NO_CONTENT);
    assert_eq!(delete().await.status, StatusCode::NOT_FOUND);
    assert!(sim.subscriptions().is_empty());
    // The same bearer token as the vehicle API, and only that.
    let r = api
        .send(
            api.c
                .post(format!("{base}/subscriptions"))
                .json(&body(&user, &vehicle)),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn subscribed_vehicles_readings_are_pushed_signed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read until the declared body has arrived.
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len = text[..i]
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
            });
        }
    });
    let sim = start(SimConfig {
        webhook_url: Some(format!("http://{addr}/webhooks/smartcar")),
        webhook_every: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let (_, vehicle) = first_vehicle(&sim);
    // Nothing is pushed for a vehicle without a subscription.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_err()
    );
    assert!(sim.subscribe(&vehicle, &sim.webhook_id()));
    let req = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a push")
        .unwrap();
    assert!(req.starts_with("POST /webhooks/smartcar HTTP/1.1"), "{req}");
    let (head, body) = req.split_once("\r\n\r\n").unwrap();
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("SC-Signature: "))
        .unwrap();
    assert_eq!(sig, sim.sign(body.as_bytes()));
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["eventType"], "VEHICLE_STATE");
    assert_eq!(v["vehicleId"], vehicle);
    sim.shutdown().await;
}

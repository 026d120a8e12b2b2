//! The dashboard views and the Grafana dashboard's queries, once per backend, against a database
//! filled by simulated cycles: every answer is recomputed from what the simulator served.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use smartcar_sim::{ServedReading, SimConfig, Simulator};
use smartcar_sync::daemon::Daemon;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

const VIEWS: &[&str] = &[
    "dash_vehicles",
    "dash_latest_reading",
    "dash_fleet_freshness",
    "dash_soc_range",
    "dash_distance_daily",
    "dash_charging_sessions",
    "dash_last_location",
];

const KM_PER_MILE: f64 = 1.609344;

/// One decoded cell, whatever the backend.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Time(DateTime<Utc>),
}

impl Val {
    fn f(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Null => None,
            v => panic!("not a number: {v:?}"),
        }
    }
    fn i(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            v => panic!("not an integer: {v:?}"),
        }
    }
    fn t(&self) -> Option<DateTime<Utc>> {
        match self {
            Val::Time(t) => Some(*t),
            Val::Null => None,
            v => panic!("not a time: {v:?}"),
        }
    }
    fn s(&self) -> &str {
        match self {
            Val::Text(s) => s,
            v => panic!("not text: {v:?}"),
        }
    }
}

type Rows = Vec<BTreeMap<String, Val>>;

/// A read-only connection to the test database that runs any SQL and decodes any column.
enum Conn {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Conn {
    async fn open(url: &str) -> Conn {
        if url.starts_with("sqlite:") {
            Conn::Sqlite(SqlitePoolOptions::new().connect(url).await.unwrap())
        } else {
            Conn::Pg(
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await
                    .unwrap(),
            )
        }
    }

    async fn query(&self, sql: &str) -> Rows {
        match self {
            Conn::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap_or_else(|e| panic!("sqlite: {e}\n{sql}"))
                .iter()
                .map(|r| {
                    r.columns()
                        .iter()
                        .map(|c| {
                            let i = c.ordinal();
                            let raw = r.try_get_raw(i).unwrap();
                            let v = if raw.is_null() {
                                Val::Null
                            } else {
                                match raw.type_info().name() {
                                    "INTEGER" => Val::Int(r.get(i)),
                                    "REAL" => Val::Float(r.get(i)),
                                    "TEXT" => {
                                        let s: String = r.get(i);
                                        NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.6fZ")
                                            .map(|t| Val::Time(t.and_utc()))
                                            .unwrap_or(Val::Text(s))
                                    }
                                    other => panic!("{}: unexpected type {other}", c.name()),
                                }
                            };
                            (c.name().to_owned(), v)
                        })
                        .collect()
                })
                .collect(),
            Conn::Pg(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap_or_else(|e| panic!("postgres: {e}\n{sql}"))
                .iter()
                .map(|r| {
                    r.columns()
                        .iter()
                        .map(|c| {
                            let i = c.ordinal();
                            let ty = c.type_info().name();
                            let v = match ty {
                                "INT8" => r.get::<Option<i64>, _>(i).map(Val::Int),
                                "INT4" => r.get::<Option<i32>, _>(i).map(|x| Val::Int(x.into())),
                                "FLOAT8" => r.get::<Option<f64>, _>(i).map(Val::Float),
                                "TEXT" => r.get::<Option<String>, _>(i).map(Val::Text),
                                "TIMESTAMPTZ" => {
                                    r.get::<Option<DateTime<Utc>>, _>(i).map(Val::Time)
                                }
                                // NUMERIC or a local TIMESTAMP would reach Grafana badly typed.
                                other => panic!("{}: unexpected type {other}", c.name()),
                            };
                            (c.name().to_owned(), v.unwrap_or(Val::Null))
                        })
                        .collect()
                })
                .collect(),
        }
    }

    async fn close(self) {
        match self {
            Conn::Sqlite(p) => p.close().await,
            Conn::Pg(p) => p.close().await,
        }
    }
}

/// Fills the database with several short cycles of a fleet whose readings change every 100 ms,
/// so each vehicle has a history: odometer steps, state of charge, charging sessions.
async fn fill(db: &TestDb) -> Simulator {
    let sim = support::simulator(SimConfig {
        users: 4,
        vehicles_per_user: 3,
        update_period: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(support::config(&sim, &db.url), &shutdown)
        .await
        .expect("daemon starts");
    let started = Instant::now();
    let mut cycles = 0;
    // At least 7 s and 3 cycles, and on until some vehicle has driven (its odometer readings
    // differ), so the distance checks are never vacuous on a slow, loaded machine.
    while started.elapsed() < Duration::from_secs(7) || cycles < 3 || !someone_drove(&sim) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no vehicle drove in 60 s"
        );
        let report =
            tokio::time::timeout(Duration::from_secs(60), daemon.sync_once(&shutdown, |_| {}))
                .await
                .expect("the cycle finishes")
                .expect("the cycle runs");
        assert_eq!(report.dead, 0, "{}", db.backend);
        cycles += 1;
    }
    daemon.store().close().await;
    sim
}

/// Whether the simulator served two different odometer readings for one vehicle.
fn someone_drove(sim: &Simulator) -> bool {
    let mut seen: HashMap<String, f64> = HashMap::new();
    sim.served_readings()
        .iter()
        .filter(|r| r.code == "odometer-traveleddistance")
        .any(|r| {
            let v = r.value_num.unwrap_or_default();
            seen.insert(r.vehicle_id.clone(), v)
                .is_some_and(|prev| (prev - v).abs() > 1e-9)
        })
}

fn km(r: &ServedReading) -> Option<f64> {
    let miles = r.body.get("unit").and_then(|u| u.as_str()) == Some("miles");
    r.value_num.map(|v| if miles { v * KM_PER_MILE } else { v })
}

fn close(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!((x - y).abs() < 1e-6, "{what}: {x} != {y}"),
        _ => panic!("{what}: {a:?} != {b:?}"),
    }
}

/// Served readings of one code, per vehicle, in time order.
fn series<'a>(
    served: &'a [ServedReading],
    code: &str,
) -> BTreeMap<&'a str, Vec<&'a ServedReading>> {
    let mut out: BTreeMap<&str, Vec<&ServedReading>> = BTreeMap::new();
    for r in served.iter().filter(|r| r.code == code) {
        out.entry(r.vehicle_id.as_str()).or_default().push(r);
    }
    for v in out.values_mut() {
        v.sort_by_key(|r| r.oem_updated_at);
    }
    out
}

async fn check_views(conn: &Conn, sim: &Simulator, backend: &str) {
    let served = sim.served_readings();
    assert!(!served.is_empty());

    // Vehicles: one row each, with a label.
    let vehicles = conn.query("SELECT * FROM dash_vehicles").await;
    assert_eq!(vehicles.len(), 12, "{backend}");
    assert!(vehicles.iter().all(|v| v["label"].s().contains('[')));

    // Latest reading per vehicle and signal = the last one the simulator served.
    let mut last: HashMap<(&str, &str), &ServedReading> = HashMap::new();
    for r in &served {
        let e = last.entry((&r.vehicle_id, &r.code)).or_insert(r);
        if r.oem_updated_at > e.oem_updated_at {
            *e = r;
        }
    }
    let latest = conn.query("SELECT * FROM dash_latest_reading").await;
    assert_eq!(
        latest.len(),
        last.len(),
        "{backend}: one row per (vehicle, signal)"
    );
    for row in &latest {
        let key = (row["vehicle_id"].s(), row["code"].s());
        let want = last[&key];
        assert_eq!(
            row["time"].t(),
            Some(want.oem_updated_at),
            "{backend}: {key:?}"
        );
        close(
            row["value"].f(),
            want.value_num,
            &format!("{backend}: {key:?}"),
        );
        let body: serde_json::Value = serde_json::from_str(row["body"].s()).unwrap();
        assert_eq!(body, want.body, "{backend}: {key:?}");
        assert_eq!(row["status"].s(), "SUCCESS");
    }

    // Freshness: newest reading per vehicle, all fresh.
    let mut newest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for r in &served {
        let e = newest.entry(&r.vehicle_id).or_insert(r.oem_updated_at);
        *e = (*e).max(r.oem_updated_at);
    }
    let fresh = conn.query("SELECT * FROM dash_fleet_freshness").await;
    assert_eq!(fresh.len(), 12, "{backend}");
    for row in &fresh {
        let id = row["vehicle_id"].s();
        assert_eq!(row["time"].t(), newest.get(id).copied(), "{backend}: {id}");
        let age = row["age_seconds"].f().unwrap();
        assert!((-5.0..600.0).contains(&age), "{backend}: age {age}");
        assert_eq!(row["freshness"].s(), "fresh", "{backend}: {id}");
        assert_eq!(row["vehicle_status"].s(), "connected");
    }

    // State of charge and range over time: one row per (vehicle, time), km.
    let mut energy: BTreeMap<(&str, DateTime<Utc>), [Option<f64>; 4]> = BTreeMap::new();
    let codes = [
        "tractionbattery-stateofcharge",
        "tractionbattery-range",
        "internalcombustionengine-fuellevel",
        "internalcombustionengine-range",
    ];
    for r in &served {
        if let Some(k) = codes.iter().position(|c| *c == r.code) {
            let v = if k % 2 == 1 { km(r) } else { r.value_num };
            energy.entry((&r.vehicle_id, r.oem_updated_at)).or_default()[k] = v;
        }
    }
    let rows = conn.query("SELECT * FROM dash_soc_range").await;
    assert_eq!(rows.len(), energy.len(), "{backend}: energy rows");
    assert!(rows.len() > 12, "{backend}: a history, not one point");
    for row in &rows {
        let key = (row["vehicle_id"].s(), row["time"].t().unwrap());
        let want = energy[&key];
        let cols = ["state_of_charge", "range_km", "fuel_level", "fuel_range_km"];
        for (c, w) in cols.iter().zip(want) {
            close(row[*c].f(), w, &format!("{backend}: {c} {key:?}"));
        }
    }

    // Distance per day: increases between consecutive odometer readings, booked on the day of
    // the later one; their sum is the odometer's total increase.
    /// (distance, odometer min, odometer max, readings) per (vehicle, day).
    type Day = (f64, f64, f64, i64);
    let mut daily: BTreeMap<(&str, DateTime<Utc>), Day> = BTreeMap::new();
    let odometers = series(&served, "odometer-traveleddistance");
    for (vid, readings) in &odometers {
        let mut prev: Option<f64> = None;
        for r in readings {
            let k = km(r).unwrap();
            let day = r
                .oem_updated_at
                .date_naive()
                .and_time(Default::default())
                .and_utc();
            let e = daily
                .entry((vid, day))
                .or_insert((0.0, f64::MAX, f64::MIN, 0));
            e.0 += prev.map_or(0.0, |p| (k - p).max(0.0));
            e.1 = e.1.min(k);
            e.2 = e.2.max(k);
            e.3 += 1;
            prev = Some(k);
        }
    }
    let rows = conn.query("SELECT * FROM dash_distance_daily").await;
    assert_eq!(rows.len(), daily.len(), "{backend}: distance rows");
    let mut total_by_vehicle: HashMap<String, f64> = HashMap::new();
    for row in &rows {
        let key = (row["vehicle_id"].s(), row["time"].t().unwrap());
        let (dist, lo, hi, n) = daily[&key];
        close(
            row["distance_km"].f(),
            Some(dist),
            &format!("{backend}: {key:?}"),
        );
        close(row["odometer_min_km"].f(), Some(lo), "min");
        close(row["odometer_max_km"].f(), Some(hi), "max");
        assert_eq!(row["readings"].i(), n);
        *total_by_vehicle.entry(key.0.to_owned()).or_default() += dist;
    }
    for (vid, readings) in &odometers {
        let span = km(readings[readings.len() - 1]).unwrap() - km(readings[0]).unwrap();
        close(
            total_by_vehicle.get(*vid).copied(),
            Some(span),
            "total distance",
        );
    }
    assert!(
        total_by_vehicle.values().any(|d| *d > 0.0),
        "{backend}: the fleet drove"
    );

    // Charging sessions: runs of consecutive charging readings.
    let soc = series(&served, "tractionbattery-stateofcharge");
    let soc_at = |vid: &str, t: DateTime<Utc>| {
        soc.get(vid).and_then(|s| {
            s.iter()
                .rev()
                .find(|r| r.oem_updated_at <= t)
                .and_then(|r| r.value_num)
        })
    };
    type Session = (
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        i64,
        Option<f64>,
        Option<f64>,
    );
    let mut sessions: BTreeMap<(String, DateTime<Utc>), Session> = BTreeMap::new();
    for (vid, readings) in series(&served, "charge-ischarging") {
        let mut i = 0;
        while i < readings.len() {
            if readings[i].value_num != Some(1.0) {
                i += 1;
                continue;
            }
            let start = i;
            while i < readings.len() && readings[i].value_num == Some(1.0) {
                i += 1;
            }
            let first = readings[start].oem_updated_at;
            let last_charging = readings[i - 1].oem_updated_at;
            let end = readings.get(i).map(|r| r.oem_updated_at);
            sessions.insert(
                (vid.to_owned(), first),
                (
                    last_charging,
                    end,
                    (i - start) as i64,
                    soc_at(vid, first),
                    soc_at(vid, end.unwrap_or(last_charging)),
                ),
            );
        }
    }
    assert!(!sessions.is_empty(), "{backend}: the fleet charged");
    let rows = conn.query("SELECT * FROM dash_charging_sessions").await;
    assert_eq!(rows.len(), sessions.len(), "{backend}: sessions");
    for row in &rows {
        let key = (row["vehicle_id"].s().to_owned(), row["time"].t().unwrap());
        let (last_charging, end, n, soc_start, soc_end) = sessions[&key];
        assert_eq!(row["time_end"].t(), end, "{backend}: {key:?}");
        assert_eq!(row["last_charging_time"].t(), Some(last_charging));
        assert_eq!(row["ongoing"].i(), i64::from(end.is_none()));
        assert_eq!(row["readings"].i(), n);
        let dur = (end.unwrap_or(last_charging) - key.1).as_seconds_f64();
        let got = row["duration_seconds"].f().unwrap();
        assert!(
            (got - dur).abs() < 2e-3,
            "{backend}: duration {got} != {dur}"
        );
        close(row["soc_start"].f(), soc_start, "soc_start");
        close(row["soc_end"].f(), soc_end, "soc_end");
    }

    // Last known location = the newest location reading.
    let rows = conn.query("SELECT * FROM dash_last_location").await;
    let located: Vec<_> = last
        .iter()
        .filter(|((_, code), _)| *code == "location-preciselocation")
        .collect();
    assert_eq!(rows.len(), located.len(), "{backend}");
    for row in &rows {
        let want = last[&(row["vehicle_id"].s(), "location-preciselocation")];
        assert_eq!(row["time"].t(), Some(want.oem_updated_at));
        for (col, key) in [
            ("latitude", "latitude"),
            ("longitude", "longitude"),
            ("heading", "heading"),
        ] {
            close(row[col].f(), want.body[key].as_f64(), col);
        }
        assert_eq!(
            row["location_type"].s(),
            want.body["locationType"].as_str().unwrap()
        );
    }
}

/// Every panel query and variable query of the Grafana dashboard, with Grafana's macros
/// expanded as its PostgreSQL data source does (a wide time range, every vehicle selected).
async fn check_dashboard_queries(conn: &Conn, backend: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/smartcar-fleet.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let vehicle_var = vars.iter().find(|v| v["name"] == "vehicle").unwrap();
    let ids = conn
        .query(vehicle_var["query"].as_str().unwrap())
        .await
        .into_iter()
        .map(|r| format!("'{}'", r["__value"].s()))
        .collect::<Vec<_>>();
    assert_eq!(ids.len(), 12, "{backend}: the vehicle variable");
    let (from, to) = match backend {
        "sqlite" => ("2000-01-01T00:00:00.000000Z", "2100-01-01T00:00:00.000000Z"),
        _ => ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"),
    };
    let mut used = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let raw = target["rawSql"].as_str().unwrap();
            for view in VIEWS.iter().filter(|v| raw.contains(*v)) {
                used.insert(*view);
            }
            let sql = raw
                .replace(
                    "$__timeFilter(time)",
                    &format!("time BETWEEN '{from}' AND '{to}'"),
                )
                .replace("$vehicle", &ids.join(","));
            assert!(!sql.contains('$'), "an unexpanded macro in {sql}");
            let rows = conn.query(&sql).await;
            assert!(
                !rows.is_empty(),
                "{backend}: panel {:?} is empty",
                panel["title"]
            );
        }
    }
    let unused: Vec<_> = VIEWS.iter().filter(|v| !used.contains(*v)).collect();
    assert!(unused.is_empty(), "views no panel uses: {unused:?}");
}

/// The reader role of scripts/create-reader-role.sql: reads the views and the public tables,
/// and nothing else; writes nothing.
async fn check_reader_role(db_url: &str) {
    let admin = sqlx::PgPool::connect(db_url).await.unwrap();
    let script = include_str!("../../scripts/create-reader-role.sql");
    sqlx::raw_sql(script)
        .execute(&admin)
        .await
        .expect("the script runs");
    // Twice: it is idempotent.
    sqlx::raw_sql(script)
        .execute(&admin)
        .await
        .expect("the script runs again");
    // The operator's step: a password (so this also works on a server that wants one).
    sqlx::query("ALTER ROLE smartcar_reader PASSWORD 'reader-test-password'")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let mut url = url::Url::parse(db_url).unwrap();
    url.set_username("smartcar_reader").unwrap();
    url.set_password(Some("reader-test-password")).unwrap();
    let reader = Conn::open(url.as_str()).await;
    for view in VIEWS {
        assert!(
            !reader
                .query(&format!("SELECT * FROM {view}"))
                .await
                .is_empty(),
            "{view}"
        );
    }
    for table in ["users", "vehicles", "signal_samples", "signal_status"] {
        reader.query(&format!("SELECT count(*) FROM {table}")).await;
    }
    let Conn::Pg(pool) = &reader else {
        unreachable!()
    };
    let denied = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            // Even with the read-only default lifted, the grants allow no write.
            sqlx::query("SET default_transaction_read_only = off")
                .execute(&mut *conn)
                .await
                .unwrap();
            let err = sqlx::query(sql)
                .execute(&mut *conn)
                .await
                .expect_err(sql)
                .into_database_error()
                .unwrap();
            assert_eq!(err.code().as_deref(), Some("42501"), "{sql}: {err}");
        }
    };
    denied("SELECT * FROM jobs").await;
    denied("SELECT * FROM token_audit").await;
    denied("INSERT INTO users VALUES ('x', 'cli', now(), NULL)").await;
    denied("DELETE FROM samples").await;
    denied("UPDATE vehicles SET status = 'disconnected'").await;
    denied("CREATE TABLE evil (x int)").await;
    // And by default every transaction is read-only.
    let err = sqlx::query("INSERT INTO users VALUES ('x', 'cli', now(), NULL)")
        .execute(pool)
        .await
        .unwrap_err()
        .into_database_error()
        .unwrap();
    assert!(
        matches!(err.code().as_deref(), Some("25006" | "42501")),
        "{err}"
    );
    reader.close().await;
}

#[tokio::test]
async fn every_dashboard_view_and_panel_query_answers_what_the_simulator_served() {
    for db in support::databases().await {
        let sim = fill(&db).await;
        let conn = Conn::open(&db.url).await;
        check_views(&conn, &sim, db.backend).await;
        check_dashboard_queries(&conn, db.backend).await;
        // Every reading compacted into PostgreSQL's cold table (migration 0012): the same answers.
        let store = db.store().await;
        let moved = store
            .compact_samples(Utc::now() + chrono::Duration::days(2))
            .await
            .unwrap();
        assert_eq!(moved > 0, db.backend == "postgres");
        check_views(&conn, &sim, db.backend).await;
        check_dashboard_queries(&conn, db.backend).await;
        store.close().await;
        conn.close().await;
        if db.backend == "postgres" {
            check_reader_role(&db.url).await;
        }
        sim.shutdown().await;
        db.cleanup().await;
    }
}

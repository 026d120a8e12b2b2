//! Upgrading in place to the compact sample layout (migration 0008), and the layout's exactness,
//! on both backends: a database as release 0006 left it, filled with varied samples (odd bodies
//! included), migrated; every row reads back identical through `signal_samples` and every
//! dashboard view; then new readings (plain and odd) read back as sent, and the old readings
//! sent again are recognised as already stored. On PostgreSQL the same holds after every reading
//! moved to the cold table (migration 0012, compaction), and for new readings stored there.

use chrono::{DateTime, TimeZone, Utc};
use smartcar_sync::store::{NewSample, SampleSource, Store, StoreOptions};
use sqlx::{Connection, Executor, Row};

/// (vehicle, code, recorded_at, value_num, unit, body, source, ingested_at)
type OldRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<f64>,
    Option<&'static str>,
    &'static str,
    &'static str,
    &'static str,
);

const V1: &str = "0000aaaa-0000-4000-8000-00000000aaaa";
const V2: &str = "0000bbbb-0000-4000-8000-00000000bbbb";

/// Rows as the 0006 schema stores them (times in SQLite's TEXT format, which PostgreSQL reads).
const OLD_ROWS: &[OldRow] = &[
    (
        V1,
        "odometer-traveleddistance",
        "2030-01-15T10:00:00.123000Z",
        Some(12345.6),
        Some("kilometers"),
        r#"{"unit":"kilometers","value":12345.6}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "odometer-traveleddistance",
        "2030-01-15T11:00:00.000000Z",
        Some(12350.0),
        Some("kilometers"),
        r#"{"unit":"kilometers","value":12350.00}"#,
        "webhook",
        "2030-01-15T11:00:02.654321Z",
    ),
    (
        V1,
        "odometer-traveleddistance",
        "2030-01-15T12:00:00.000001Z",
        Some(1e21),
        Some("kilometers"),
        r#"{"unit":"kilometers","value":1e21}"#,
        "poll",
        "2030-01-15T12:00:00.000001Z",
    ),
    (
        V1,
        "odometer-traveleddistance",
        "1999-12-31T23:59:59.999999Z",
        Some(7.0),
        Some("km"),
        r#"{"value": 7, "unit": "km"}"#,
        "poll",
        "2030-01-15T12:00:00.000000Z",
    ),
    (
        V1,
        "tractionbattery-stateofcharge",
        "2030-01-15T10:00:00.123000Z",
        Some(80.0),
        Some("percent"),
        r#"{"unit":"percent","value":80}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "tractionbattery-stateofcharge",
        "2030-01-15T11:00:00.000000Z",
        Some(0.1),
        Some("percent"),
        r#"{"unit":"percent","value":0.10000000000000001}"#,
        "poll",
        "2030-01-15T11:00:01.000001Z",
    ),
    (
        V1,
        "tractionbattery-stateofcharge",
        "2030-01-15T12:00:00.000000Z",
        Some(75.0),
        None,
        r#"{"percentage":75}"#,
        "poll",
        "2030-01-15T12:00:01.000001Z",
    ),
    (
        V1,
        "tractionbattery-range",
        "2030-01-15T10:00:00.123000Z",
        Some(-0.5),
        Some("miles"),
        r#"{"unit":"miles","value":-0.5}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "tractionbattery-range",
        "2030-01-15T11:00:00.000000Z",
        Some(250.25),
        Some("kilomètres"),
        r#"{"unit":"kilomètres","value":250.25}"#,
        "poll",
        "2030-01-15T11:00:01.000001Z",
    ),
    (
        V1,
        "charge-ischarging",
        "2030-01-15T10:00:00.123000Z",
        Some(1.0),
        None,
        r#"{"value":true}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "charge-ischarging",
        "2030-01-15T11:00:00.000000Z",
        Some(0.0),
        None,
        r#"{"value":false}"#,
        "webhook",
        "2030-01-15T11:00:01.000001Z",
    ),
    (
        V1,
        "charge-ischarging",
        "2030-01-15T12:00:00.000000Z",
        Some(1.0),
        None,
        r#"{"value":true}"#,
        "poll",
        "2030-01-15T12:00:01.000001Z",
    ),
    (
        V1,
        "charge-detailedchargingstatus",
        "2030-01-15T10:00:00.123000Z",
        None,
        None,
        r#"{"value":"NOT_CHARGING"}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "location-preciselocation",
        "2030-01-15T10:00:00.123000Z",
        None,
        None,
        r#"{"latitude":37.774900,"longitude":-122.419400,"heading":90,"direction":"E","locationType":"CURRENT"}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V1,
        "location-preciselocation",
        "2030-01-15T11:00:00.000000Z",
        None,
        None,
        r#"{"latitude":37.774900,"longitude":-122.419400,"heading":90,"direction":"E","locationType":"CURRENT"}"#,
        "poll",
        "2030-01-15T11:00:01.000001Z",
    ),
    (
        V2,
        "closure-doors",
        "2030-01-15T10:00:00.123000Z",
        None,
        None,
        r#"{"values":[{"row":0,"column":0,"isOpen":false}],"rowCount":1,"columnCount":1}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V2,
        "charge-voltage",
        "2030-01-15T10:00:00.123000Z",
        Some(-0.0),
        Some("volts"),
        r#"{"unit":"volts","value":-0}"#,
        "poll",
        "2030-01-15T10:00:01.000001Z",
    ),
    (
        V2,
        "charge-voltage",
        "2030-01-15T11:00:00.000000Z",
        Some(230.4),
        Some("\"v\\olts\""),
        r#"{"unit":"\"v\\olts\"","value":230.4}"#,
        "poll",
        "2030-01-15T11:00:01.000001Z",
    ),
    (
        V2,
        "charge-voltage",
        "2030-01-15T12:00:00.000000Z",
        Some(123456789012.345),
        Some("volts"),
        r#"{"unit":"volts","value":123456789012.345}"#,
        "poll",
        "2030-01-15T12:00:01.000001Z",
    ),
    (
        V2,
        "odometer-traveleddistance",
        "2030-01-16T10:00:00.000000Z",
        Some(100.5),
        Some("miles"),
        r#"{"unit":"miles","value":100.5}"#,
        "poll",
        "2030-01-16T10:00:01.000001Z",
    ),
    (
        V2,
        "odometer-traveleddistance",
        "2030-01-16T11:00:00.000000Z",
        Some(130.0),
        Some("miles"),
        r#"{"unit":"miles","value":130}"#,
        "poll",
        "2030-01-16T11:00:01.000001Z",
    ),
    (
        V2,
        "tractionbattery-stateofcharge",
        "2030-01-16T10:00:00.000000Z",
        Some(40.0),
        Some("percent"),
        r#"{"unit":"percent","value":40}"#,
        "poll",
        "2030-01-16T10:00:01.000001Z",
    ),
    (
        V2,
        "charge-ischarging",
        "2030-01-16T10:30:00.000000Z",
        Some(1.0),
        None,
        r#"{"value":true}"#,
        "poll",
        "2030-01-16T10:30:01.000001Z",
    ),
    (
        V2,
        "charge-ischarging",
        "2030-01-16T11:30:00.000000Z",
        Some(0.0),
        None,
        r#"{"value":false}"#,
        "poll",
        "2030-01-16T11:30:01.000001Z",
    ),
];

/// The views read before and after, with the columns compared (`dash_fleet_freshness` without
/// its clock-dependent age).
const VIEWS: &[(&str, &[&str])] = &[
    (
        "signal_samples",
        &[
            "vehicle_id",
            "code",
            "recorded_at",
            "value_num",
            "unit",
            "body",
            "source",
            "ingested_at",
        ],
    ),
    (
        "dash_latest_reading",
        &[
            "vehicle_id",
            "code",
            "time",
            "value",
            "unit",
            "body",
            "source",
            "status",
            "status_observed_at",
            "unit_sent",
        ],
    ),
    (
        "dash_fleet_freshness",
        &["vehicle_id", "label", "vehicle_status", "time"],
    ),
    (
        "dash_soc_range",
        &[
            "time",
            "vehicle_id",
            "state_of_charge",
            "range_km",
            "fuel_level",
            "fuel_range_km",
        ],
    ),
    (
        "dash_distance_daily",
        &[
            "time",
            "vehicle_id",
            "distance_km",
            "odometer_min_km",
            "odometer_max_km",
            "readings",
        ],
    ),
    (
        "dash_charging_sessions",
        &[
            "vehicle_id",
            "time",
            "time_end",
            "last_charging_time",
            "ongoing",
            "duration_seconds",
            "readings",
            "soc_start",
            "soc_end",
        ],
    ),
    (
        "dash_last_location",
        &[
            "vehicle_id",
            "time",
            "latitude",
            "longitude",
            "heading",
            "location_type",
        ],
    ),
];

enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Conn {
    async fn open(url: &str) -> Conn {
        if url.starts_with("sqlite:") {
            Conn::Sqlite(sqlx::SqliteConnection::connect(url).await.expect("sqlite"))
        } else {
            Conn::Pg(sqlx::PgConnection::connect(url).await.expect("postgres"))
        }
    }

    async fn exec(&mut self, sql: &str) {
        match self {
            Conn::Sqlite(c) => c.execute(sql).await.map(|_| ()),
            Conn::Pg(c) => c.execute(sql).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of `view` as one text per row (each value as the database writes it, floats
    /// to the last bit), sorted.
    async fn snapshot(&mut self, view: &str, columns: &[&str]) -> Vec<String> {
        let mut rows: Vec<String> = match self {
            Conn::Sqlite(c) => {
                let cols: Vec<String> = columns
                    .iter()
                    .map(|k| {
                        format!(
                            "coalesce(typeof({k}) || ':' || CASE typeof({k}) \
                             WHEN 'real' THEN printf('%!.17g', {k}) ELSE CAST({k} AS TEXT) END, 'NULL')"
                        )
                    })
                    .collect();
                let sql = format!("SELECT {} AS r FROM {view}", cols.join(" || ' | ' || "));
                sqlx::query(&sql)
                    .fetch_all(c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .iter()
                    .map(|r| r.get::<String, _>("r"))
                    .collect()
            }
            Conn::Pg(c) => {
                let cols: Vec<String> = columns
                    .iter()
                    .map(|k| format!("coalesce(pg_typeof({k})::text || ':' || {k}::text, 'NULL')"))
                    .collect();
                let sql = format!(
                    "SELECT concat_ws(' | ', {}) AS r FROM {view}",
                    cols.join(", ")
                );
                sqlx::query(&sql)
                    .fetch_all(c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .iter()
                    .map(|r| r.get::<String, _>("r"))
                    .collect()
            }
        };
        rows.sort();
        rows
    }

    async fn snapshot_all(&mut self) -> Vec<(String, Vec<String>)> {
        let mut all = Vec::new();
        for (view, columns) in VIEWS {
            all.push(((*view).to_owned(), self.snapshot(view, columns).await));
        }
        all
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn opt(v: Option<&str>) -> String {
    v.map_or("NULL".to_owned(), quote)
}

/// Fills a database at migration 0006 with [`OLD_ROWS`], statuses and vehicles.
async fn fill_old(conn: &mut Conn, pg: bool) {
    if pg {
        // One month in its own partition, the rest in the default one.
        conn.exec(
            "CREATE TABLE signal_samples_203001 PARTITION OF signal_samples \
             FOR VALUES FROM ('2030-01-01 00:00:00+00') TO ('2030-02-01 00:00:00+00')",
        )
        .await;
    }
    for (v, code, at, value, unit, body, source, ingested) in OLD_ROWS {
        let value = value.map_or("NULL".to_owned(), |x| format!("{x:?}"));
        conn.exec(&format!(
            "INSERT INTO signal_samples VALUES ({}, {}, {}, {value}, {}, {}, {}, {})",
            quote(v),
            quote(code),
            quote(at),
            opt(*unit),
            quote(body),
            quote(source),
            quote(ingested)
        ))
        .await;
        conn.exec(&format!(
            "INSERT INTO signal_status (vehicle_id, code, status, observed_at) \
             VALUES ({}, {}, 'SUCCESS', '2030-01-15T09:00:00.000000Z') ON CONFLICT DO NOTHING",
            quote(v),
            quote(code)
        ))
        .await;
    }
    for (v, make) in [(V1, "Tesla"), (V2, "Ford")] {
        conn.exec(&format!(
            "INSERT INTO vehicles (vehicle_id, user_id, make, status_changed_at, first_seen_at, \
             last_seen_at) VALUES ({}, 'u1', '{make}', '2030-01-15T09:00:00.000000Z', \
             '2030-01-15T09:00:00.000000Z', '2030-01-15T09:00:00.000000Z')",
            quote(v)
        ))
        .await;
    }
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0008_keeps_every_row_and_every_view_identical() {
    for db in crate::support::databases().await {
        let store = Store::connect(&db.url, &StoreOptions::default())
            .await
            .expect("connect");
        store.migrate_until(6).await.expect("migrate to 0006");
        let mut conn = Conn::open(&db.url).await;
        fill_old(&mut conn, db.backend == "postgres").await;
        let before = conn.snapshot_all().await;
        assert_eq!(before[0].1.len(), OLD_ROWS.len());
        assert!(before.iter().all(|(_, rows)| !rows.is_empty()));

        store.migrate().await.expect("migrate to the latest");
        let after = conn.snapshot_all().await;
        for ((view, b), (_, a)) in before.iter().zip(&after) {
            assert_eq!(a, b, "{} {view} differs after the upgrade", db.backend);
        }

        // The old readings sent again are the same readings: nothing new is stored.
        let again: Vec<NewSample> = OLD_ROWS
            .iter()
            .map(|(v, code, at, value, unit, body, _, _)| NewSample {
                vehicle_id: (*v).to_owned(),
                code: (*code).to_owned(),
                recorded_at: time(at),
                value_num: *value,
                unit: unit.map(str::to_owned),
                body: (*body).to_owned(),
                source: SampleSource::Webhook,
            })
            .collect();
        assert_eq!(store.ingest_samples(&again, &[]).await.expect("ingest"), 0);
        assert_eq!(conn.snapshot_all().await, after, "{}", db.backend);

        // PostgreSQL: everything moves to the cold table (migration 0012) in one-hour slices from
        // the oldest partition on; every view answers the same, and the old readings sent again
        // are still recognised (now by the cold table's check).
        let compacted = store
            .compact_samples(time("2030-02-01T00:00:00Z"))
            .await
            .expect("compact");
        if db.backend == "postgres" {
            assert_eq!(compacted as usize, OLD_ROWS.len());
        }
        assert_eq!(conn.snapshot_all().await, after, "{} compacted", db.backend);
        assert_eq!(store.ingest_samples(&again, &[]).await.expect("ingest"), 0);
        assert_eq!(conn.snapshot_all().await, after, "{}", db.backend);

        // New readings, each shifted a day: stored, and read back as sent.
        let new: Vec<NewSample> = again
            .iter()
            .map(|s| NewSample {
                recorded_at: s.recorded_at + chrono::Duration::days(1),
                source: SampleSource::Poll,
                ..s.clone()
            })
            .collect();
        assert_eq!(
            store.ingest_samples(&new, &[]).await.expect("ingest") as usize,
            new.len()
        );
        check_read_back(&store, &mut conn, &new, db.backend).await;

        if let Conn::Sqlite(c) = conn {
            c.close().await.expect("close");
        } else if let Conn::Pg(c) = conn {
            c.close().await.expect("close");
        }
        store.close().await;
        db.cleanup().await;
    }
}

/// Every sample of `sent` reads back through `signal_samples` with the value to the bit and the
/// body as sent: byte for byte on SQLite, as the JSONB of the text sent on PostgreSQL.
async fn check_read_back(store: &Store, conn: &mut Conn, sent: &[NewSample], backend: &str) {
    let stored = store.list_samples().await.expect("list");
    for s in sent {
        let row = stored
            .iter()
            .find(|r| {
                r.vehicle_id == s.vehicle_id && r.code == s.code && r.recorded_at == s.recorded_at
            })
            .unwrap_or_else(|| panic!("{backend}: {} {} not stored", s.code, s.recorded_at));
        assert_eq!(
            row.value_num.map(f64::to_bits),
            s.value_num.map(|v| if v == 0.0 && backend == "sqlite" {
                0.0f64
            } else {
                v
            }
            .to_bits()),
            "{backend}: value of {}",
            s.body
        );
        assert_eq!(row.unit, s.unit, "{backend}");
        let expected = match conn {
            Conn::Sqlite(_) => s.body.clone(),
            Conn::Pg(c) => sqlx::query_scalar::<_, String>("SELECT ($1::jsonb)::text")
                .bind(&s.body)
                .fetch_one(c)
                .await
                .expect("jsonb"),
        };
        assert_eq!(row.body, expected, "{backend}: body of {}", s.code);
        assert_eq!(row.source, s.source, "{backend}");
    }
}

/// Random numbers with 0 to 15 decimals and up to 17 significant digits, in every body shape,
/// read back exactly (the rebuilt ones included) on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_bodies_read_back_byte_for_byte() {
    let mut rng = fastrand::Rng::with_seed(13);
    let base = Utc.with_ymd_and_hms(2030, 3, 1, 0, 0, 0).unwrap();
    let mut sent = Vec::new();
    for i in 0..3000 {
        let digits = rng.usize(1..=17);
        let decimals = rng.usize(0..=digits.min(15));
        let mantissa: u64 = rng.u64(0..10u64.pow(digits as u32));
        let mut text = format!("{mantissa:0width$}", width = decimals + 1);
        if decimals > 0 {
            text.insert(text.len() - decimals, '.');
        }
        if rng.bool() {
            text.insert(0, '-');
        }
        let value: f64 = text.parse().expect("number");
        let (unit, body) = match i % 4 {
            0 => (
                Some("kilometers"),
                format!(r#"{{"unit":"kilometers","value":{text}}}"#),
            ),
            1 => (None, format!(r#"{{"value":{text}}}"#)),
            2 => (
                Some("percent"),
                format!(r#"{{"unit":"percent","value":{value}}}"#),
            ),
            _ => (None, format!(r#"{{"value":{value:e}}}"#)),
        };
        sent.push(NewSample {
            vehicle_id: format!("v{}", i % 7),
            code: "odometer-traveleddistance".into(),
            recorded_at: base + chrono::Duration::milliseconds(i),
            value_num: Some(value),
            unit: unit.map(str::to_owned),
            body,
            source: if i % 3 == 0 {
                SampleSource::Webhook
            } else {
                SampleSource::Poll
            },
        });
    }
    for db in crate::support::databases().await {
        let store: Store = db.store().await;
        assert_eq!(
            store.ingest_samples(&sent, &[]).await.expect("ingest") as usize,
            sent.len()
        );
        let mut conn = Conn::open(&db.url).await;
        check_read_back(&store, &mut conn, &sent, db.backend).await;
        store.close().await;
        db.cleanup().await;
    }
}

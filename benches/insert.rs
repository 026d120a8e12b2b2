//! Insert throughput and size on disk, printed (not asserted): `cargo bench --bench insert`.
//!
//! For each backend, on one fresh database in one run:
//! - the store's batch insert (`Store::ingest_samples`, the same statement a poll commits) with
//!   one poll's worth of samples per transaction, then with 1000 per transaction;
//! - bytes per sample on disk (table + indexes) after a million samples;
//! - PostgreSQL: then `Store::compact_samples` moving every sample to the cold table (its rate),
//!   VACUUM, and bytes per sample again, every relation counted, and the cold part alone;
//! - a raw baseline into the same table: `COPY … FROM STDIN` on PostgreSQL, prepared multi-row
//!   `INSERT`s in one transaction on SQLite.
//!
//! PostgreSQL: `BENCH_DATABASE_URL` (a server URL whose user may CREATE DATABASE), else a
//! throwaway cluster started from `/usr/lib/postgresql/*/bin` with its default durability
//! (fsync on), else skipped. `BENCH_SAMPLES` changes the million.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use smartcar_sync::store::{NewSample, SampleSource, Store, StoreOptions, compact};
use sqlx::postgres::PgPoolCopyExt;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor};

const CODES: &[(&str, Option<&str>)] = &[
    ("odometer-traveleddistance", Some("kilometers")),
    ("tractionbattery-stateofcharge", Some("percent")),
    ("tractionbattery-range", Some("kilometers")),
    ("charge-ischarging", None),
    ("charge-ischargingcableconnected", None),
    ("charge-detailedchargingstatus", None),
    ("charge-voltage", Some("volts")),
    ("location-preciselocation", None),
    ("location-isathome", None),
    ("closure-doors", None),
    ("closure-islocked", None),
    ("lowvoltagebattery-stateofcharge", Some("percent")),
];
/// Samples per poll: one vehicle's signals at one moment.
const POLL: usize = 12;
const VEHICLES: usize = 1000;

/// Sample `i` of a deterministic fleet history: polls of 12 signals, vehicles round-robin, a
/// minute apart per vehicle.
fn sample(i: usize, base: DateTime<Utc>) -> NewSample {
    let poll = i / POLL;
    let (code, unit) = CODES[i % POLL];
    let vehicle = poll % VEHICLES;
    let recorded_at = base + Duration::seconds(60 * (poll / VEHICLES) as i64);
    let x = (i % 997) as f64 / 10.0;
    let (value_num, body) = match code {
        "location-preciselocation" => (
            None,
            format!(
                r#"{{"latitude":{:.6},"longitude":{:.6},"heading":{x},"direction":"N","locationType":"CURRENT"}}"#,
                37.0 + x / 1000.0,
                -122.0 - x / 1000.0
            ),
        ),
        "closure-doors" => (
            None,
            r#"{"values":[{"row":0,"column":0,"isOpen":false,"isLocked":true},{"row":0,"column":1,"isOpen":false,"isLocked":true},{"row":1,"column":0,"isOpen":false,"isLocked":true},{"row":1,"column":1,"isOpen":false,"isLocked":true}],"rowCount":2,"columnCount":2}"#.to_owned(),
        ),
        "charge-detailedchargingstatus" => (None, r#"{"value":"NOT_CHARGING"}"#.to_owned()),
        _ => match unit {
            Some(u) => (Some(x), format!(r#"{{"unit":"{u}","value":{x}}}"#)),
            None => (Some(1.0), r#"{"value":true}"#.to_owned()),
        },
    };
    NewSample {
        vehicle_id: format!("{vehicle:08x}-0000-4000-8000-{vehicle:012x}"),
        code: code.to_owned(),
        recorded_at,
        value_num,
        unit: unit.map(str::to_owned),
        body,
        source: SampleSource::Poll,
    }
}

fn samples(range: std::ops::Range<usize>, base: DateTime<Utc>) -> Vec<NewSample> {
    range.map(|i| sample(i, base)).collect()
}

/// Inserts `n` samples through the store, `batch` per transaction; returns samples per second.
async fn through_store(
    store: &Store,
    n: usize,
    batch: usize,
    base: DateTime<Utc>,
) -> anyhow::Result<f64> {
    let mut done = 0;
    let mut elapsed = std::time::Duration::ZERO;
    while done < n {
        let chunk = samples(done..(done + batch).min(n), base);
        let t = Instant::now();
        let inserted = store.ingest_samples(&chunk, &[]).await?;
        elapsed += t.elapsed();
        if inserted as usize != chunk.len() {
            bail!("inserted {inserted} of {}", chunk.len());
        }
        done += chunk.len();
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

struct Figures {
    per_poll: f64,
    per_1000: f64,
    raw: f64,
    raw_how: &'static str,
    bytes_per_sample: f64,
    /// PostgreSQL, after compacting every sample into the cold table.
    cold: Option<Cold>,
}

/// Sizes and rate of the PostgreSQL compaction phase, per sample.
struct Cold {
    /// Samples moved per second by `Store::compact_samples` (one-hour transactions).
    rate: f64,
    /// Every relation after VACUUM: both tables' partitions and indexes (what is left of the
    /// hot ones included), dictionaries, watermark.
    total: f64,
    /// The cold table's partitions with their indexes, dictionaries and watermark only.
    cold_only: f64,
    /// Of `cold_only`: the cold heap, its series btree and its BRIN.
    heap: f64,
    btree: f64,
    brin: f64,
}

fn print(backend: &str, n: usize, f: &Figures) {
    println!("{backend}:");
    println!(
        "  store, one poll ({POLL} samples) per transaction : {:>10.0} samples/s",
        f.per_poll
    );
    println!(
        "  store, 1000 samples per transaction          : {:>10.0} samples/s",
        f.per_1000
    );
    println!(
        "  raw baseline ({:<30}): {:>10.0} samples/s",
        f.raw_how, f.raw
    );
    println!(
        "  on disk after {n} samples (table + indexes)  : {:>10.1} bytes/sample",
        f.bytes_per_sample
    );
    if let Some(c) = &f.cold {
        println!(
            "  compaction, everything to cold               : {:>10.0} samples/s",
            c.rate
        );
        println!(
            "  after compaction + VACUUM, every relation    : {:>10.1} bytes/sample",
            c.total
        );
        println!(
            "    cold table + indexes + dictionaries        : {:>10.1} bytes/sample",
            c.cold_only
        );
        println!(
            "    of which cold heap / series btree / BRIN   : {:>5.1} / {:.1} / {:.2}",
            c.heap, c.btree, c.brin
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

async fn sqlite(n: usize, per_poll_n: usize, base: DateTime<Utc>) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url, &StoreOptions::default()).await?;
    store.migrate().await?;
    let mut admin = sqlx::SqliteConnection::connect_with(
        &SqliteConnectOptions::from_str(&url)?.busy_timeout(std::time::Duration::from_secs(30)),
    )
    .await?;
    let per_poll = through_store(&store, per_poll_n, POLL, base).await?;
    admin.execute("DELETE FROM samples").await?;
    let empty = sqlite_size(&mut admin, &path).await?;
    let per_1000 = through_store(&store, n, 1000, base).await?;
    let full = sqlite_size(&mut admin, &path).await?;
    admin.execute("DELETE FROM samples").await?;

    // Raw: the same rows straight into `samples`, one transaction, 100-row prepared INSERTs,
    // with the dictionary ids (already there from the store's run) and forms worked out first.
    let rows = samples(0..n, base);
    let ids = Ids::load_sqlite(&mut admin).await?;
    let ingested = Utc::now().timestamp_micros();
    let prepared: Vec<RawRow> = rows
        .iter()
        .map(|s| ids.row(s))
        .collect::<anyhow::Result<_>>()?;
    const ROWS: usize = 100;
    let one = "(?, ?, ?, ?, ?, ?, ?)";
    let insert = "INSERT INTO samples \
         (series_id, recorded_at, value_num, unit_id, body_id, form, ingest_delay_us) VALUES ";
    let sql = format!("{insert}{}", vec![one; ROWS].join(", "));
    let t = Instant::now();
    let mut tx = admin.begin().await?;
    for chunk in prepared.chunks(ROWS) {
        let chunk_sql;
        let mut q = if chunk.len() == ROWS {
            sqlx::query(&sql)
        } else {
            chunk_sql = format!("{insert}{}", vec![one; chunk.len()].join(", "));
            sqlx::query(&chunk_sql)
        };
        for r in chunk {
            let at = r.recorded_at.timestamp_micros();
            q = q
                .bind(r.series_id)
                .bind(at)
                .bind(r.value_num)
                .bind(r.unit_id)
                .bind(r.body_id)
                .bind(r.form)
                .bind(ingested - at);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let raw = n as f64 / t.elapsed().as_secs_f64();
    store.close().await;
    Ok(Figures {
        per_poll,
        per_1000,
        raw,
        raw_how: "multi-row INSERT, 1 tx",
        bytes_per_sample: (full - empty) as f64 / n as f64,
        cold: None,
    })
}

/// The bytes of the database's pages in use (free pages, which a DELETE leaves, not counted)
/// once the WAL is folded in.
async fn sqlite_size(conn: &mut sqlx::SqliteConnection, _path: &Path) -> anyhow::Result<u64> {
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut *conn)
        .await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    Ok(((pages - free) * size) as u64)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

async fn postgres(
    admin_url: &str,
    n: usize,
    per_poll_n: usize,
    base: DateTime<Utc>,
) -> anyhow::Result<Figures> {
    let name = format!("bench_insert_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let url = with_database(admin_url, &name);
    let result = postgres_in(&url, n, per_poll_n, base).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    result
}

async fn postgres_in(
    url: &str,
    n: usize,
    per_poll_n: usize,
    base: DateTime<Utc>,
) -> anyhow::Result<Figures> {
    let store = Store::connect(url, &StoreOptions::default()).await?;
    store.migrate().await?;
    let pool = sqlx::PgPool::connect(url).await?;
    let per_poll = through_store(&store, per_poll_n, POLL, base).await?;
    pool.execute("TRUNCATE samples").await?;
    let per_1000 = through_store(&store, n, 1000, base).await?;
    // Every relation a sample lives in: the partitions of `samples` with their indexes, and
    // the dictionaries (series, units, bodies) with theirs.
    let size: i64 = sqlx::query_scalar(
        "SELECT ((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples')) \
               + pg_total_relation_size('sample_series') + pg_total_relation_size('sample_units') \
               + pg_total_relation_size('sample_bodies'))::bigint",
    )
    .fetch_one(&pool)
    .await?;
    let cold = compact_all(&store, &pool, n, base).await?;
    pool.execute("TRUNCATE samples, samples_cold").await?;

    // Raw: COPY in text format straight into `samples`, 100k rows per COPY, with the
    // dictionary ids (already there from the store's run) and forms worked out first.
    let now = Utc::now().to_rfc3339();
    let rows = samples(0..n, base);
    let ids = Ids::load_postgres(&pool).await?;
    let prepared: Vec<RawRow> = rows
        .iter()
        .map(|s| ids.row(s))
        .collect::<anyhow::Result<_>>()?;
    let null = |v: Option<String>| v.unwrap_or_else(|| "\\N".to_owned());
    let t = Instant::now();
    for chunk in prepared.chunks(100_000) {
        let mut data = String::with_capacity(chunk.len() * 80);
        for r in chunk {
            data.push_str(&format!(
                "{}\t{}\t{now}\t{}\t{}\t{}\t{}\n",
                r.recorded_at.to_rfc3339(),
                null(r.value_num.map(|v| v.to_string())),
                r.series_id,
                null(r.body_id.map(|v| v.to_string())),
                null(r.unit_id.map(|v| v.to_string())),
                r.form,
            ));
        }
        let mut copy = pool
            .copy_in_raw(
                "COPY samples (recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form) \
                 FROM STDIN",
            )
            .await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
    }
    let raw = n as f64 / t.elapsed().as_secs_f64();
    store.close().await;
    pool.close().await;
    Ok(Figures {
        per_poll,
        per_1000,
        raw,
        raw_how: "COPY FROM STDIN, 100k rows",
        bytes_per_sample: size as f64 / n as f64,
        cold: Some(cold),
    })
}

/// Moves every sample to the cold table (`before` just after the newest), VACUUMs, measures.
async fn compact_all(
    store: &Store,
    pool: &sqlx::PgPool,
    n: usize,
    base: DateTime<Utc>,
) -> anyhow::Result<Cold> {
    let newest = sample(n - 1, base).recorded_at;
    let t = Instant::now();
    let moved = store.compact_samples(newest + Duration::seconds(1)).await?;
    let rate = moved as f64 / t.elapsed().as_secs_f64();
    if moved as usize != n {
        bail!("compaction moved {moved} of {n}");
    }
    pool.execute("VACUUM ANALYZE samples, samples_cold").await?;
    let dictionaries = "pg_total_relation_size('sample_series') \
        + pg_total_relation_size('sample_units') + pg_total_relation_size('sample_bodies') \
        + pg_total_relation_size('sample_watermark')";
    let sizes: (i64, i64, i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT ((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples')) \
                + (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples_cold')) \
                + {dictionaries})::int8, \
                ((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples_cold')) \
                + {dictionaries})::int8, \
                (SELECT sum(pg_table_size(relid)) FROM pg_partition_tree('samples_cold'))::int8, \
                (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('samples_cold_series'))::int8, \
                (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('samples_cold_recorded_brin'))::int8"
    ))
    .fetch_one(pool)
    .await?;
    let per = |b: i64| b as f64 / n as f64;
    Ok(Cold {
        rate,
        total: per(sizes.0),
        cold_only: per(sizes.1),
        heap: per(sizes.2),
        btree: per(sizes.3),
        brin: per(sizes.4),
    })
}

/// A sample as the raw baselines write it: dictionary ids resolved, form worked out.
struct RawRow {
    series_id: i64,
    recorded_at: DateTime<Utc>,
    value_num: Option<f64>,
    unit_id: Option<i64>,
    body_id: Option<i64>,
    form: i16,
}

/// The dictionaries (series, units, bodies) as the store left them.
struct Ids {
    series: HashMap<(String, String), i64>,
    units: HashMap<String, i64>,
    /// By the hash of the text sent (the store's lookup key).
    bodies: HashMap<i64, i64>,
}

impl Ids {
    async fn load_sqlite(conn: &mut sqlx::SqliteConnection) -> anyhow::Result<Ids> {
        let series: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT vehicle_id, code, series_id FROM sample_series")
                .fetch_all(&mut *conn)
                .await?;
        let units: Vec<(String, i64)> = sqlx::query_as("SELECT unit, unit_id FROM sample_units")
            .fetch_all(&mut *conn)
            .await?;
        let bodies: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT hash, min(body_id) FROM sample_bodies WHERE hash IS NOT NULL GROUP BY hash",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(Ids::from(series, units, bodies))
    }

    async fn load_postgres(pool: &sqlx::PgPool) -> anyhow::Result<Ids> {
        let series: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT vehicle_id, code, series_id FROM sample_series")
                .fetch_all(pool)
                .await?;
        let units: Vec<(String, i16)> = sqlx::query_as("SELECT unit, unit_id FROM sample_units")
            .fetch_all(pool)
            .await?;
        let bodies: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT hash, min(body_id) FROM sample_bodies WHERE hash IS NOT NULL GROUP BY hash",
        )
        .fetch_all(pool)
        .await?;
        Ok(Ids::from(
            series
                .into_iter()
                .map(|(v, c, i)| (v, c, i64::from(i)))
                .collect(),
            units.into_iter().map(|(u, i)| (u, i64::from(i))).collect(),
            bodies.into_iter().map(|(h, i)| (h, i64::from(i))).collect(),
        ))
    }

    fn from(
        series: Vec<(String, String, i64)>,
        units: Vec<(String, i64)>,
        bodies: Vec<(i64, i64)>,
    ) -> Ids {
        Ids {
            series: series.into_iter().map(|(v, c, i)| ((v, c), i)).collect(),
            units: units.into_iter().collect(),
            bodies: bodies.into_iter().collect(),
        }
    }

    fn row(&self, s: &NewSample) -> anyhow::Result<RawRow> {
        let form = compact::form(s);
        let series_id = *self
            .series
            .get(&(s.vehicle_id.clone(), s.code.clone()))
            .context("series not stored")?;
        let unit_id = match &s.unit {
            Some(u) => Some(*self.units.get(u).context("unit not stored")?),
            None => None,
        };
        let body_id = if compact::body_stored(form) {
            let hash = compact::body_hash(&s.body);
            Some(*self.bodies.get(&hash).context("body not stored")?)
        } else {
            None
        };
        Ok(RawRow {
            series_id,
            recorded_at: s.recorded_at,
            value_num: s.value_num,
            unit_id,
            body_id,
            form,
        })
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let after = base.find("://").map_or(0, |i| i + 3);
    let end = base[after..].find('/').map_or(base.len(), |i| after + i);
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{q}", &base[..end])
}

/// A throwaway cluster with PostgreSQL's default durability; stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    root: bool,
    url: String,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .context("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::Builder::new().prefix("bench-pg-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let c = Cluster {
            bin,
            dir,
            root,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        if root {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(c.dir.path()))?;
        }
        let data = c.dir.path().join("data");
        run(c
            .cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"]))?;
        run(c
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(c.dir.path().join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {}",
                c.dir.path().display()
            ))
            .arg("start"))?;
        Ok(c)
    }

    fn cmd(&self, program: &str) -> Command {
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-m", "fast", "stop"]));
    }
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c.output()?;
    if !out.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // The per-poll figure needs fewer samples to be stable (and takes a commit each).
    let per_poll_n = (n / 10).max(POLL * 100);
    // Inside the partitions the store creates (previous month to three ahead).
    let base = Utc::now() - Duration::days(1);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        println!("insert benchmark: {n} samples, {VEHICLES} vehicles, {POLL} signals per poll");
        let f = sqlite(n, per_poll_n, base).await?;
        print("SQLite (WAL, synchronous=NORMAL)", n, &f);
        let cluster;
        let url = match std::env::var("BENCH_DATABASE_URL") {
            Ok(u) if !u.trim().is_empty() => u,
            _ => match Cluster::start() {
                Ok(c) => {
                    cluster = c;
                    cluster.url.clone()
                }
                Err(e) => {
                    println!("PostgreSQL: SKIPPED (no BENCH_DATABASE_URL, no cluster: {e:#})");
                    return Ok(());
                }
            },
        };
        let f = postgres(&url, n, per_poll_n, base).await?;
        print("PostgreSQL (default durability)", n, &f);
        anyhow::Ok(())
    })
}

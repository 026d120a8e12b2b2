//! PostgreSQL-only statements: array (UNNEST) inserts and monthly partition management.
//!
//! The partitions of `samples` (migration 0008) keep the names they had as partitions of the
//! old `signal_samples` table: `signal_samples_YYYYMM` and `signal_samples_default`; those of
//! `samples_cold` (0012) are `samples_cold_YYYYMM` and `samples_cold_default`. Both tables get
//! the same months and lose them together to retention. Which readings are hot and which cold,
//! and how they move, is `cold.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{NewSample, SignalState, StoreError, cold, compact};

/// Serialises partition DDL between daemons sharing the database.
const PARTITION_LOCK: i64 = 0x5343_5359_4e43_0001;

/// Inserts samples into the compact tables of migration 0008: the dictionary ids are resolved
/// first (missing series, units and bodies added), one statement per dictionary whatever the
/// count, then the samples go in as ONE array (UNNEST) statement carrying those ids. Readings at
/// or after the watermark go to the hot table, older ones to the cold one (migration 0012,
/// `cold.rs`). Rows already stored are left as they are (first writer wins). Returns the rows
/// inserted per vehicle, both tables counted.
///
/// The ids travel through the daemon rather than being looked up by the insert itself: a sample
/// insert with a scalar subquery per dictionary (and one more to count the inserted rows per
/// vehicle) made four index probes a row and was PostgreSQL's costliest statement in the cycle
/// bench. Each dictionary is now probed once per distinct key of the batch, and the samples
/// statement is a plain UNNEST.
///
/// Dictionary lookups are scalar subqueries, i.e. one index probe per key: as a join, the
/// planner (which guesses 100 rows for an UNNEST) hashes the whole dictionary instead. Only
/// missing keys are proposed for insertion: an identity value is drawn for every proposed row,
/// conflict or not, so proposing every poll's series would burn through the sequence. Two
/// transactions adding the same series or unit at once meet on its unique key (the second waits,
/// then skips, and reads the winner's id in a second statement); the same body may be added
/// twice, which is harmless (the lowest id is used).
pub(crate) async fn insert_samples(
    tx: &mut Transaction<'static, Postgres>,
    samples: &[NewSample],
    ingested_at: DateTime<Utc>,
) -> Result<HashMap<String, u64>, StoreError> {
    if samples.is_empty() {
        return Ok(HashMap::new());
    }
    // First, before any other lock: the watermark, held until commit so that no compaction
    // moves the slice these readings belong to under them (see `cold.rs`).
    let watermark = cold::watermark_for_share(tx).await?;
    let all = Columns::new(samples.iter());
    let ids = Ids::resolve(tx, &all).await?;
    let (hot, below): (Vec<&NewSample>, Vec<&NewSample>) = samples
        .iter()
        .partition(|s| watermark.is_none_or(|w| s.recorded_at >= w));
    if below.is_empty() {
        return insert_hot(tx, &all, &ids, ingested_at).await;
    }
    // Readings older than the watermark (a late webhook, a restored backlog): the cold path
    // looks its ids up itself; the dictionaries hold every key by now.
    let mut inserted = if hot.is_empty() {
        HashMap::new()
    } else {
        insert_hot(tx, &Columns::new(hot.into_iter()), &ids, ingested_at).await?
    };
    let cold = cold::insert_cold(tx, &Columns::new(below.into_iter()), ingested_at).await?;
    for (vehicle, n) in cold {
        *inserted.entry(vehicle).or_insert(0) += n;
    }
    Ok(inserted)
}

/// The dictionary ids of a batch's series, units and stored bodies (missing ones added).
struct Ids<'a> {
    series: HashMap<(&'a str, &'a str), i32>,
    units: HashMap<&'a str, i16>,
    bodies: HashMap<(i64, &'a str), i32>,
}

impl<'a> Ids<'a> {
    async fn resolve(
        tx: &mut Transaction<'static, Postgres>,
        c: &Columns<'a>,
    ) -> Result<Ids<'a>, StoreError> {
        Ok(Ids {
            series: series_ids(tx, c).await?,
            units: unit_ids(tx, c).await?,
            bodies: body_ids(tx, c).await?,
        })
    }
}

/// Readings at or after the watermark: into the hot table, whose primary key makes a repeat a
/// no-op (first writer wins).
async fn insert_hot(
    tx: &mut Transaction<'static, Postgres>,
    c: &Columns<'_>,
    ids: &Ids<'_>,
    ingested_at: DateTime<Utc>,
) -> Result<HashMap<String, u64>, StoreError> {
    let n = c.vid.len();
    let mut sid = Vec::with_capacity(n);
    let mut uid = Vec::with_capacity(n);
    let mut bid = Vec::with_capacity(n);
    for i in 0..n {
        sid.push(lookup(&ids.series, &(c.vid[i], c.code[i]))?);
        uid.push(c.unit[i].map(|u| lookup(&ids.units, &u)).transpose()?);
        bid.push(match (c.hash[i], c.body[i]) {
            (Some(h), Some(b)) => Some(lookup(&ids.bodies, &(h, b))?),
            _ => None,
        });
    }
    let rows: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO samples (recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form) \
         SELECT t.r, t.n, $7, t.s, t.b, t.u, t.f \
         FROM UNNEST($1::int4[], $2::timestamptz[], $3::float8[], $4::int4[], $5::int2[], \
                     $6::int2[]) AS t(s, r, n, b, u, f) \
         ON CONFLICT DO NOTHING \
         RETURNING series_id",
    )
    .bind(&sid)
    .bind(&c.rec)
    .bind(&c.val)
    .bind(&bid)
    .bind(&uid)
    .bind(&c.form)
    .bind(ingested_at)
    .fetch_all(&mut **tx)
    .await?;
    let vehicle_of: HashMap<i32, &str> = ids.series.iter().map(|(k, id)| (*id, k.0)).collect();
    let mut inserted: HashMap<String, u64> = HashMap::new();
    for id in rows {
        let vehicle = vehicle_of.get(&id).ok_or_else(|| {
            StoreError::Corrupt(format!("series {id} inserted but not asked for"))
        })?;
        *inserted.entry((*vehicle).to_owned()).or_insert(0) += 1;
    }
    Ok(inserted)
}

fn lookup<K: std::hash::Hash + Eq + std::fmt::Debug, V: Copy>(
    ids: &HashMap<K, V>,
    key: &K,
) -> Result<V, StoreError> {
    ids.get(key)
        .copied()
        .ok_or_else(|| StoreError::Corrupt(format!("no dictionary id for {key:?}")))
}

/// The distinct keys of a batch, in first-seen order.
fn distinct<K: std::hash::Hash + Eq + Copy>(keys: impl Iterator<Item = K>) -> Vec<K> {
    let mut seen = std::collections::HashSet::new();
    keys.filter(|k| seen.insert(*k)).collect()
}

/// A row of the series statement: (ordinal of a key found, id) or (id, vehicle, code) of a key
/// added.
type SeriesRow = (Option<i64>, i32, Option<String>, Option<String>);

/// Batches with at least this many distinct series try a plain insert first (see
/// [`series_ids`]); smaller ones go straight to the speculative insert.
const PLAIN_SERIES_INSERT_FROM: usize = 32;

/// The series id of every (vehicle, code) of the batch, adding the missing series.
async fn series_ids<'a>(
    tx: &mut Transaction<'static, Postgres>,
    c: &Columns<'a>,
) -> Result<HashMap<(&'a str, &'a str), i32>, StoreError> {
    let keys = distinct(c.vid.iter().copied().zip(c.code.iter().copied()));
    let (vid, code): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    // `t` is read twice, so PostgreSQL computes it once; `ins` returns what it added (by key:
    // a join of `ins` back to `t` is a nested loop over both), the rest of `t` what was there.
    //
    // The insert is tried first without ON CONFLICT, inside a savepoint: a speculative insert
    // (ON CONFLICT) costs 1.3 to 2 times a plain one, and a first cycle adds every series. Only
    // when another transaction added one of the same series meanwhile (a unique violation: a
    // poll and a webhook of a new vehicle at once) does it run again with ON CONFLICT DO
    // NOTHING, which waits for the other and skips its keys; a key in neither part of that
    // answer is read by the statement after it, which sees the other's commit.
    const SQL: &str = "WITH t AS (SELECT t.i, t.v, t.c, \
                    (SELECT s.series_id FROM sample_series s \
                     WHERE s.vehicle_id = t.v AND s.code = t.c) AS id \
                    FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(v, c, i)), \
              ins AS (INSERT INTO sample_series (vehicle_id, code) \
                    SELECT v, c FROM t WHERE id IS NULL ORDER BY i \
                    {conflict} RETURNING series_id, vehicle_id, code) \
         SELECT i, id, NULL::text, NULL::text FROM t WHERE id IS NOT NULL \
         UNION ALL \
         SELECT NULL, series_id, vehicle_id, code FROM ins";
    let speculative_sql = SQL.replace("{conflict}", "ON CONFLICT DO NOTHING");
    let speculative = || sqlx::query_as(&speculative_sql).bind(&vid).bind(&code);
    if keys.len() < PLAIN_SERIES_INSERT_FROM {
        // A poll or a webhook alone: the savepoint's two round trips (about 0.1 ms) cost as
        // much as a speculative insert saves on a dozen rows (≈ 6 µs a row), so there is no
        // second attempt to risk.
        let rows: Vec<SeriesRow> = speculative().fetch_all(&mut **tx).await?;
        return series_by_key(&keys, rows, tx).await;
    }
    let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
    let first: Result<Vec<SeriesRow>, sqlx::Error> = sqlx::query_as(&SQL.replace("{conflict}", ""))
        .bind(&vid)
        .bind(&code)
        .fetch_all(&mut *savepoint)
        .await;
    let rows: Vec<SeriesRow> = match first {
        Ok(rows) => {
            savepoint.commit().await?;
            rows
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            tracing::debug!("a new series was added by another transaction; adding the rest");
            speculative().fetch_all(&mut **tx).await?
        }
        Err(e) => return Err(e.into()),
    };
    series_by_key(&keys, rows, tx).await
}

/// [`series_ids`]' answer as a map, with the keys it lacks (lost to a concurrent insert) read.
async fn series_by_key<'a>(
    keys: &[(&'a str, &'a str)],
    rows: Vec<SeriesRow>,
    tx: &mut Transaction<'static, Postgres>,
) -> Result<HashMap<(&'a str, &'a str), i32>, StoreError> {
    let position: HashMap<(&str, &str), usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut ids = HashMap::with_capacity(keys.len());
    for (i, id, v, c) in rows {
        let at = match (i, v, c) {
            (Some(i), _, _) => usize::try_from(i - 1).ok(),
            (None, Some(v), Some(c)) => position.get(&(v.as_str(), c.as_str())).copied(),
            _ => None,
        };
        let key = at
            .and_then(|at| keys.get(at))
            .ok_or_else(|| StoreError::Corrupt("a series row not asked for".into()))?;
        ids.insert(*key, id);
    }
    let missing: Vec<(&str, &str)> = keys
        .iter()
        .copied()
        .filter(|k| !ids.contains_key(k))
        .collect();
    if !missing.is_empty() {
        let (vid, code): (Vec<&str>, Vec<&str>) = missing.iter().copied().unzip();
        let rows: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT t.i, s.series_id FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(v, c, i) \
             JOIN sample_series s ON s.vehicle_id = t.v AND s.code = t.c",
        )
        .bind(&vid)
        .bind(&code)
        .fetch_all(&mut **tx)
        .await?;
        ids.extend(by_ordinal(&missing, rows)?);
    }
    Ok(ids)
}

/// The unit id of every unit of the batch, adding the missing units.
async fn unit_ids<'a>(
    tx: &mut Transaction<'static, Postgres>,
    c: &Columns<'a>,
) -> Result<HashMap<&'a str, i16>, StoreError> {
    let keys = distinct(c.unit.iter().flatten().copied());
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, i16)> = sqlx::query_as(
        "WITH t AS (SELECT t.i, t.u, \
                    (SELECT x.unit_id FROM sample_units x WHERE x.unit = t.u) AS id \
                    FROM UNNEST($1::text[]) WITH ORDINALITY AS t(u, i)), \
              ins AS (INSERT INTO sample_units (unit) SELECT u FROM t WHERE id IS NULL ORDER BY i \
                    ON CONFLICT DO NOTHING RETURNING unit_id, unit) \
         SELECT i, id FROM t WHERE id IS NOT NULL \
         UNION ALL \
         SELECT t.i, ins.unit_id FROM t JOIN ins ON ins.unit = t.u WHERE t.id IS NULL",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let mut ids = by_ordinal(&keys, rows)?;
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !ids.contains_key(k))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(i64, i16)> = sqlx::query_as(
            "SELECT t.i, x.unit_id FROM UNNEST($1::text[]) WITH ORDINALITY AS t(u, i) \
             JOIN sample_units x ON x.unit = t.u",
        )
        .bind(&missing)
        .fetch_all(&mut **tx)
        .await?;
        ids.extend(by_ordinal(&missing, rows)?);
    }
    Ok(ids)
}

/// The body id of every stored body of the batch (by hash and text), adding the missing
/// bodies. A body matches a stored one with the same hash and the same JSONB text.
async fn body_ids<'a>(
    tx: &mut Transaction<'static, Postgres>,
    c: &Columns<'a>,
) -> Result<HashMap<(i64, &'a str), i32>, StoreError> {
    let keys = distinct(
        c.hash
            .iter()
            .zip(&c.body)
            .filter_map(|(h, b)| Some(((*h)?, (*b)?))),
    );
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (hash, body): (Vec<i64>, Vec<&str>) = keys.iter().copied().unzip();
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "WITH t AS (SELECT t.i, t.h, t.b, \
                    (SELECT min(x.body_id) FROM sample_bodies x \
                     WHERE x.hash = t.h AND x.body::text = (t.b::jsonb)::text) AS id \
                    FROM UNNEST($1::int8[], $2::text[]) WITH ORDINALITY AS t(h, b, i)), \
              ins AS (INSERT INTO sample_bodies (hash, body) \
                    SELECT h, b::jsonb FROM t WHERE id IS NULL ORDER BY i \
                    RETURNING body_id, hash, body) \
         SELECT i, id FROM t WHERE id IS NOT NULL \
         UNION ALL \
         SELECT t.i, min(ins.body_id) FROM t \
         JOIN ins ON ins.hash = t.h AND ins.body::text = (t.b::jsonb)::text \
         WHERE t.id IS NULL GROUP BY t.i",
    )
    .bind(&hash)
    .bind(&body)
    .fetch_all(&mut **tx)
    .await?;
    by_ordinal(&keys, rows)
}

/// Rows of (1-based ordinal into `keys`, id) as a map from key to id.
fn by_ordinal<K: std::hash::Hash + Eq + Copy, V>(
    keys: &[K],
    rows: Vec<(i64, V)>,
) -> Result<HashMap<K, V>, StoreError> {
    rows.into_iter()
        .map(|(i, id)| {
            let key = usize::try_from(i - 1)
                .ok()
                .and_then(|i| keys.get(i))
                .ok_or_else(|| StoreError::Corrupt(format!("dictionary row {i} out of range")))?;
            Ok((*key, id))
        })
        .collect()
}

/// The samples of one statement as parallel arrays (one UNNEST argument each).
pub(crate) struct Columns<'a> {
    pub vid: Vec<&'a str>,
    pub code: Vec<&'a str>,
    pub rec: Vec<DateTime<Utc>>,
    pub val: Vec<Option<f64>>,
    pub unit: Vec<Option<&'a str>>,
    pub hash: Vec<Option<i64>>,
    pub body: Vec<Option<&'a str>>,
    pub form: Vec<i16>,
}

/// A statement taking a sample batch as `$1`…`$9` (see [`Columns::bind`]).
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl<'a> Columns<'a> {
    /// Binds the columns as `$1`…`$8` (vehicle, code, recorded_at, value, unit, body hash, body,
    /// form) and `ingested_at` as `$9`: the parameters of every sample insert.
    pub fn bind<'q>(&'q self, q: PgQuery<'q>, ingested_at: DateTime<Utc>) -> PgQuery<'q> {
        q.bind(&self.vid)
            .bind(&self.code)
            .bind(&self.rec)
            .bind(&self.val)
            .bind(&self.unit)
            .bind(&self.hash)
            .bind(&self.body)
            .bind(&self.form)
            .bind(ingested_at)
    }

    pub fn new(samples: impl ExactSizeIterator<Item = &'a NewSample>) -> Columns<'a> {
        let n = samples.len();
        let mut c = Columns {
            vid: Vec::with_capacity(n),
            code: Vec::with_capacity(n),
            rec: Vec::with_capacity(n),
            val: Vec::with_capacity(n),
            unit: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            form: Vec::with_capacity(n),
        };
        for s in samples {
            let f = compact::form(s);
            let stored = compact::body_stored(f);
            c.vid.push(s.vehicle_id.as_str());
            c.code.push(s.code.as_str());
            c.rec.push(s.recorded_at);
            c.val.push(s.value_num);
            c.unit.push(s.unit.as_deref());
            c.hash.push(stored.then(|| compact::body_hash(&s.body)));
            c.body.push(stored.then_some(s.body.as_str()));
            c.form.push(f);
        }
        c
    }
}

/// `(vehicle_id, n)` rows as a map.
pub(crate) fn counts_by_vehicle(
    rows: &[sqlx::postgres::PgRow],
) -> Result<HashMap<String, u64>, StoreError> {
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            Ok((r.try_get("vehicle_id")?, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
}

/// Upserts signal statuses (already deduplicated: ON CONFLICT DO UPDATE may not touch a row
/// twice) in one statement; an older observation never overwrites a newer.
pub(crate) async fn upsert_statuses(
    tx: &mut Transaction<'static, Postgres>,
    statuses: &[SignalState],
) -> Result<(), StoreError> {
    if statuses.is_empty() {
        return Ok(());
    }
    let vid: Vec<&str> = statuses.iter().map(|s| s.vehicle_id.as_str()).collect();
    let code: Vec<&str> = statuses.iter().map(|s| s.code.as_str()).collect();
    let status: Vec<&str> = statuses.iter().map(|s| s.status.as_str()).collect();
    let etype: Vec<Option<&str>> = statuses.iter().map(|s| s.error_type.as_deref()).collect();
    let ecode: Vec<Option<&str>> = statuses.iter().map(|s| s.error_code.as_deref()).collect();
    let at: Vec<DateTime<Utc>> = statuses.iter().map(|s| s.observed_at).collect();
    sqlx::query(
        "INSERT INTO signal_status \
         (vehicle_id, code, status, error_type, error_code, observed_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::timestamptz[]) \
         ON CONFLICT (vehicle_id, code) DO UPDATE SET status = excluded.status, \
         error_type = excluded.error_type, error_code = excluded.error_code, \
         observed_at = excluded.observed_at \
         WHERE signal_status.observed_at <= excluded.observed_at",
    )
    .bind(vid)
    .bind(code)
    .bind(status)
    .bind(etype)
    .bind(ecode)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// (year, month) shifted by `delta` months.
pub(crate) fn shift_month(year: i32, month: u32, delta: i32) -> (i32, u32) {
    let index = year * 12 + (month as i32 - 1) + delta;
    (index.div_euclid(12), index.rem_euclid(12) as u32 + 1)
}

pub(crate) fn month_start(year: i32, month: u32) -> Result<DateTime<Utc>, StoreError> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("no such month {year}-{month}")))
}

/// The two partitioned tables (name, partition prefix, default partition): hot `samples` keeps
/// the names of 0008, cold `samples_cold` (0012) has its own.
const PARTITIONED: [(&str, &str, &str); 2] = [
    ("samples", "signal_samples_", "signal_samples_default"),
    ("samples_cold", "samples_cold_", "samples_cold_default"),
];

fn partition_name(prefix: &str, year: i32, month: u32) -> String {
    format!("{prefix}{year:04}{month:02}")
}

/// Parses `signal_samples_YYYYMM` (or `samples_cold_YYYYMM` with that prefix) into (year, month).
pub(crate) fn parse_partition_name(prefix: &str, name: &str) -> Option<(i32, u32)> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year = digits[..4].parse().ok()?;
    let month = digits[4..].parse().ok()?;
    (1..=12).contains(&month).then_some((year, month))
}

/// PostgreSQL literal for a partition bound; built from integers, so safe to inline in DDL
/// (bounds cannot be bind parameters).
fn bound(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// True when migrations 0002/0008 made `samples` a TimescaleDB hypertable (the extension was
/// installed), i.e. it is not a natively partitioned table. Untested here: no TimescaleDB.
pub(crate) async fn is_hypertable(pool: &PgPool) -> Result<bool, StoreError> {
    let native: bool =
        sqlx::query_scalar("SELECT relkind = 'p' FROM pg_class WHERE oid = 'samples'::regclass")
            .fetch_one(pool)
            .await?;
    Ok(!native)
}

pub(crate) async fn ensure_partitions(
    pool: &PgPool,
    now: DateTime<Utc>,
    months_ahead: u32,
) -> Result<Vec<String>, StoreError> {
    if is_hypertable(pool).await? {
        // TimescaleDB creates its chunks on insert.
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let ahead = i32::try_from(months_ahead).unwrap_or(i32::MAX).min(1200);
    let mut created = Vec::new();
    for delta in -1..=ahead {
        let (y, m) = shift_month(now.year(), now.month(), delta);
        let (ny, nm) = shift_month(y, m, 1);
        let (from, to) = (month_start(y, m)?, month_start(ny, nm)?);
        for (table, prefix, default) in PARTITIONED {
            let name = partition_name(prefix, y, m);
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(name.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if exists {
                continue;
            }
            // Attaching a range whose rows already sit in the default partition would fail;
            // leave that month in the default partition rather than fail the daemon.
            let in_default: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {default} \
                 WHERE recorded_at >= $1 AND recorded_at < $2)"
            ))
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
            if in_default {
                tracing::warn!(partition = %name, "rows for this month are in the default partition; not creating it");
                continue;
            }
            let ddl = format!(
                "CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{}') TO ('{}')",
                bound(from),
                bound(to)
            );
            // `query`, not `raw_sql`: raw_sql's future is not provably Send inside tokio::spawn.
            sqlx::query(&ddl).execute(&mut *tx).await?;
            created.push(name);
        }
    }
    tx.commit().await?;
    if !created.is_empty() {
        tracing::info!(?created, "created sample partitions");
    }
    Ok(created)
}

pub(crate) async fn drop_partitions_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    if is_hypertable(pool).await? {
        let mut dropped: Vec<String> = sqlx::query_scalar(
            "SELECT drop_chunks('samples', older_than => $1)::text \
             UNION ALL SELECT drop_chunks('samples_cold', older_than => $1)::text",
        )
        .bind(cutoff)
        .fetch_all(pool)
        .await?;
        dropped.sort();
        tracing::info!(?dropped, "applied sample retention (TimescaleDB chunks)");
        return Ok(dropped);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut dropped = Vec::new();
    let mut stragglers = 0;
    for (table, prefix, default) in PARTITIONED {
        let rows = sqlx::query(
            "SELECT c.relname::text AS name FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::regclass",
        )
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let name: String = row.try_get("name")?;
            let Some((y, m)) = parse_partition_name(prefix, &name) else {
                continue;
            };
            let (ny, nm) = shift_month(y, m, 1);
            if month_start(ny, nm)? <= cutoff {
                sqlx::query(&format!("DROP TABLE {name}"))
                    .execute(&mut *tx)
                    .await?;
                dropped.push(name);
            }
        }
        stragglers += sqlx::query(&format!("DELETE FROM {default} WHERE recorded_at < $1"))
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    dropped.sort();
    tracing::info!(?dropped, stragglers, "applied sample retention");
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_shift_across_years() {
        assert_eq!(shift_month(2024, 1, -1), (2023, 12));
        assert_eq!(shift_month(2024, 12, 1), (2025, 1));
        assert_eq!(shift_month(2024, 5, 20), (2026, 1));
        assert_eq!(
            parse_partition_name("signal_samples_", "signal_samples_202402"),
            Some((2024, 2))
        );
        assert_eq!(
            parse_partition_name("signal_samples_", "signal_samples_default"),
            None
        );
        assert_eq!(
            parse_partition_name("signal_samples_", "signal_samples_202413"),
            None
        );
        assert_eq!(
            parse_partition_name("samples_cold_", "samples_cold_203001"),
            Some((2030, 1))
        );
        assert_eq!(
            parse_partition_name("samples_cold_", "signal_samples_203001"),
            None
        );
    }
}

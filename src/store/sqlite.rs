//! SQLite-only statements: batched sample inserts and retention by DELETE.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::{NewSample, SignalState, StoreError, compact, time};

/// Rows per multi-row INSERT: 8 parameters a row stays far below SQLite's parameter limit.
const CHUNK: usize = 256;

/// Inserts samples in multi-row chunks into the compact tables of migration 0008: the
/// dictionaries first (for all samples at once), then the series ids of the batch in one
/// lookup per chunk of series, then `samples` in chunks of up to [`CHUNK`] rows whatever their
/// vehicles. Rows already stored are left as they are (first writer wins). Returns the rows
/// inserted per vehicle (every vehicle of the batch, 0 included), counted from the series ids
/// the inserts return.
///
/// Every statement inside a write transaction is a round trip to the connection's thread while
/// SQLite's one writer lock is held, so the statement count is what matters: a group commit of
/// 32 polls (about 370 readings) is about ten statements, not one per vehicle.
pub(crate) async fn insert_samples(
    tx: &mut Transaction<'static, Sqlite>,
    samples: &[NewSample],
    ingested_at: DateTime<Utc>,
) -> Result<HashMap<String, u64>, StoreError> {
    let ingested_us = ingested_at.timestamp_micros();
    let forms: Vec<i16> = samples.iter().map(compact::form).collect();
    for (chunk, forms) in samples.chunks(CHUNK).zip(forms.chunks(CHUNK)) {
        insert_dictionaries(tx, chunk, forms).await?;
    }
    let series = series_ids(tx, samples).await?;
    let vehicle_of: HashMap<i64, &str> = series.iter().map(|(k, id)| (*id, k.0)).collect();
    let mut inserted: HashMap<String, u64> =
        samples.iter().map(|s| (s.vehicle_id.clone(), 0)).collect();
    let rows: Vec<(&NewSample, i16, i64)> = samples
        .iter()
        .zip(&forms)
        .map(|(s, f)| {
            let id = series
                .get(&(s.vehicle_id.as_str(), s.code.as_str()))
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("no series id for {}", s.code)))?;
            Ok((s, *f, id))
        })
        .collect::<Result<_, StoreError>>()?;
    for chunk in rows.chunks(CHUNK) {
        for id in insert_rows(tx, chunk, ingested_us).await? {
            let vehicle = vehicle_of.get(&id).ok_or_else(|| {
                StoreError::Corrupt(format!("series {id} inserted but not asked for"))
            })?;
            if let Some(n) = inserted.get_mut(*vehicle) {
                *n += 1;
            }
        }
    }
    Ok(inserted)
}

/// The series id of every (vehicle, code) of the batch; the series are stored by now
/// ([`insert_dictionaries`] ran first, in this transaction). One statement per [`CHUNK`]
/// distinct keys, which travel as one JSON list; each answer row is a key's position in its
/// list and its id.
async fn series_ids<'a>(
    tx: &mut Transaction<'static, Sqlite>,
    samples: &'a [NewSample],
) -> Result<HashMap<(&'a str, &'a str), i64>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<(&str, &str)> = samples
        .iter()
        .map(|s| (s.vehicle_id.as_str(), s.code.as_str()))
        .filter(|k| seen.insert(*k))
        .collect();
    let mut ids = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT j.key, s.series_id FROM json_each($1) j \
             JOIN sample_series s ON s.vehicle_id = json_extract(j.value, '$[0]') \
                                 AND s.code = json_extract(j.value, '$[1]')",
        )
        .bind(as_json(&chunk)?)
        .fetch_all(&mut **tx)
        .await?;
        for (at, id) in rows {
            let key = usize::try_from(at)
                .ok()
                .and_then(|at| chunk.get(at))
                .ok_or_else(|| StoreError::Corrupt(format!("series row {at} out of range")))?;
            ids.insert(*key, id);
        }
    }
    Ok(ids)
}

/// The series, units and bodies of `chunk` that are not stored yet. Each list travels as one
/// JSON array read with `json_each`, so each statement is one text whatever the count, prepared
/// once per connection (a multi-row VALUES is a new statement for every row count). Only text
/// and integers travel as JSON: a reading's value, a float, is always bound as itself.
async fn insert_dictionaries(
    tx: &mut Transaction<'static, Sqlite>,
    chunk: &[NewSample],
    forms: &[i16],
) -> Result<(), StoreError> {
    let series: Vec<(&str, &str)> = chunk
        .iter()
        .map(|s| (s.vehicle_id.as_str(), s.code.as_str()))
        .collect();
    sqlx::query(
        "INSERT INTO sample_series (vehicle_id, code) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1) \
         WHERE true ON CONFLICT DO NOTHING",
    )
    .bind(as_json(&series)?)
    .execute(&mut **tx)
    .await?;
    let units: Vec<&str> = chunk.iter().filter_map(|s| s.unit.as_deref()).collect();
    if !units.is_empty() {
        sqlx::query(
            "INSERT INTO sample_units (unit) SELECT value FROM json_each($1) \
             WHERE true ON CONFLICT DO NOTHING",
        )
        .bind(as_json(&units)?)
        .execute(&mut **tx)
        .await?;
    }
    let bodies: Vec<(i64, &str)> = chunk
        .iter()
        .zip(forms)
        .filter(|(_, f)| compact::body_stored(**f))
        .map(|(s, _)| (compact::body_hash(&s.body), s.body.as_str()))
        .collect();
    if !bodies.is_empty() {
        sqlx::query(
            "WITH t(h, b) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') \
                              FROM json_each($1)) \
             INSERT INTO sample_bodies (hash, body) SELECT DISTINCT h, b FROM t \
             WHERE NOT EXISTS (SELECT 1 FROM sample_bodies x WHERE x.hash = t.h AND x.body = t.b)",
        )
        .bind(as_json(&bodies)?)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn as_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("list as JSON: {e}")))
}

/// One multi-row INSERT into `samples` (dictionaries and series ids known); returns the series
/// id of each row inserted (a row already stored is not returned).
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[(&NewSample, i16, i64)],
    ingested_us: i64,
) -> Result<Vec<i64>, StoreError> {
    let mut qb = QueryBuilder::<Sqlite>::new("WITH t(s, r, n, u, h, b, f) AS (");
    qb.push_values(padded(rows), |mut b, row| {
        let Some((s, f, id)) = row else {
            b.push_bind(None::<i64>)
                .push_bind(None::<i64>)
                .push_bind(None::<f64>)
                .push_bind(None::<&str>)
                .push_bind(None::<i64>)
                .push_bind(None::<&str>)
                .push_bind(None::<i16>);
            return;
        };
        let stored = compact::body_stored(*f);
        b.push_bind(*id)
            .push_bind(s.recorded_at.timestamp_micros())
            .push_bind(s.value_num)
            .push_bind(s.unit.as_deref())
            .push_bind(stored.then(|| compact::body_hash(&s.body)))
            .push_bind(stored.then_some(s.body.as_str()))
            .push_bind(*f);
    });
    qb.push(
        ") INSERT INTO samples \
         (series_id, recorded_at, value_num, unit_id, body_id, form, ingest_delay_us) \
         SELECT t.s, t.r, t.n, un.unit_id, \
                (SELECT min(x.body_id) FROM sample_bodies x WHERE x.hash = t.h AND x.body = t.b), \
                t.f, ",
    );
    qb.push_bind(ingested_us);
    qb.push(
        " - t.r FROM t LEFT JOIN sample_units un ON un.unit = t.u \
         WHERE t.s IS NOT NULL ON CONFLICT DO NOTHING RETURNING series_id",
    );
    Ok(qb.build_query_scalar().fetch_all(&mut **tx).await?)
}

/// Upserts signal statuses (already deduplicated); an older observation never overwrites a newer.
/// One multi-row statement per chunk: SQLite has one writer, and every statement inside a write
/// transaction is a round trip to the connection's thread that holds everyone else up.
pub(crate) async fn upsert_statuses(
    tx: &mut Transaction<'static, Sqlite>,
    statuses: &[SignalState],
) -> Result<(), StoreError> {
    for chunk in statuses.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("WITH t(v, c, s, et, ec, at) AS (");
        qb.push_values(padded(chunk), |mut b, s| {
            let Some(s) = s else {
                for _ in 0..6 {
                    b.push_bind(None::<&str>);
                }
                return;
            };
            b.push_bind(s.vehicle_id.as_str())
                .push_bind(s.code.as_str())
                .push_bind(s.status.as_str())
                .push_bind(s.error_type.as_deref())
                .push_bind(s.error_code.as_deref())
                .push_bind(time::to_text(s.observed_at));
        });
        qb.push(
            ") INSERT INTO signal_status \
             (vehicle_id, code, status, error_type, error_code, observed_at) \
             SELECT * FROM t WHERE v IS NOT NULL \
             ON CONFLICT (vehicle_id, code) DO UPDATE SET status = excluded.status, \
             error_type = excluded.error_type, error_code = excluded.error_code, \
             observed_at = excluded.observed_at \
             WHERE signal_status.observed_at <= excluded.observed_at",
        );
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// `rows` followed by `None`s up to the next power of two (at least 8): the multi-row
/// statements take a handful of shapes, whose text is prepared once and found in the
/// connection's statement cache, instead of one text per row count (a new statement to compile
/// for nearly every batch, while SQLite's one writer lock is held). The statements skip the
/// padding rows (`WHERE … IS NOT NULL`).
fn padded<T>(rows: &[T]) -> impl Iterator<Item = Option<&T>> {
    let shape = rows.len().next_power_of_two().max(8);
    rows.iter()
        .map(Some)
        .chain(std::iter::repeat_n(None, shape - rows.len()))
}

/// Retention without partitions: delete the rows recorded before `cutoff`, series by series
/// through the primary key (there is no index on time alone: it would cost as much as the
/// table's own key for a daily delete).
pub(crate) async fn delete_samples_before(
    pool: &SqlitePool,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query(
        "DELETE FROM samples WHERE series_id IN (SELECT series_id FROM sample_series) \
         AND recorded_at < $1",
    )
    .bind(cutoff.timestamp_micros())
    .execute(pool)
    .await?
    .rows_affected();
    tracing::info!(deleted, "deleted samples older than the retention cutoff");
    Ok(deleted)
}

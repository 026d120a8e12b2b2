//! SQLite-only statements: batched sample inserts and retention by DELETE.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::{NewSample, SignalState, StoreError, compact, time};

/// Rows per multi-row INSERT: 8 parameters a row stays far below SQLite's parameter limit.
const CHUNK: usize = 200;

/// Inserts samples in multi-row chunks into the compact tables of migration 0008: the
/// dictionaries first (for all samples at once), then `samples`, vehicle by vehicle so the
/// rows each vehicle gained are counted. Rows already stored are left as they are (first writer
/// wins). Returns the rows inserted per vehicle.
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
    // Vehicle by vehicle, in the order given.
    let mut order: Vec<&str> = Vec::new();
    let mut by_vehicle: HashMap<&str, Vec<(&NewSample, i16)>> = HashMap::new();
    for (s, f) in samples.iter().zip(&forms) {
        let rows = by_vehicle.entry(s.vehicle_id.as_str()).or_insert_with(|| {
            order.push(s.vehicle_id.as_str());
            Vec::new()
        });
        rows.push((s, *f));
    }
    let mut inserted = HashMap::new();
    for vehicle in order {
        let rows = by_vehicle
            .get(vehicle)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut n = 0;
        for chunk in rows.chunks(CHUNK) {
            n += insert_rows(tx, chunk, ingested_us).await?;
        }
        inserted.insert(vehicle.to_owned(), n);
    }
    Ok(inserted)
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

/// One multi-row INSERT into `samples` (dictionaries already there).
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[(&NewSample, i16)],
    ingested_us: i64,
) -> Result<u64, StoreError> {
    let mut qb = QueryBuilder::<Sqlite>::new("WITH t(v, c, r, n, u, h, b, f) AS (");
    qb.push_values(rows, |mut b, (s, f)| {
        let stored = compact::body_stored(*f);
        b.push_bind(s.vehicle_id.as_str())
            .push_bind(s.code.as_str())
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
         SELECT s.series_id, t.r, t.n, un.unit_id, \
                (SELECT min(x.body_id) FROM sample_bodies x WHERE x.hash = t.h AND x.body = t.b), \
                t.f, ",
    );
    qb.push_bind(ingested_us);
    qb.push(
        " - t.r FROM t JOIN sample_series s ON s.vehicle_id = t.v AND s.code = t.c \
         LEFT JOIN sample_units un ON un.unit = t.u \
         WHERE true ON CONFLICT DO NOTHING",
    );
    Ok(qb.build().execute(&mut **tx).await?.rows_affected())
}

/// Upserts signal statuses (already deduplicated); an older observation never overwrites a newer.
/// One multi-row statement per chunk: SQLite has one writer, and every statement inside a write
/// transaction is a round trip to the connection's thread that holds everyone else up.
pub(crate) async fn upsert_statuses(
    tx: &mut Transaction<'static, Sqlite>,
    statuses: &[SignalState],
) -> Result<(), StoreError> {
    for chunk in statuses.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO signal_status \
             (vehicle_id, code, status, error_type, error_code, observed_at) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.vehicle_id.as_str())
                .push_bind(s.code.as_str())
                .push_bind(s.status.as_str())
                .push_bind(s.error_type.as_deref())
                .push_bind(s.error_code.as_deref())
                .push_bind(time::to_text(s.observed_at));
        });
        qb.push(
            " ON CONFLICT (vehicle_id, code) DO UPDATE SET status = excluded.status, \
             error_type = excluded.error_type, error_code = excluded.error_code, \
             observed_at = excluded.observed_at \
             WHERE signal_status.observed_at <= excluded.observed_at",
        );
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
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

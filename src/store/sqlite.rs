//! SQLite-only statements: batched sample inserts and retention by DELETE.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::{NewSample, SignalState, StoreError, time};

/// Rows per multi-row INSERT: 8 parameters a row stays far below SQLite's parameter limit.
const CHUNK: usize = 200;

/// Inserts samples in multi-row chunks; rows already stored are left as they are (first writer
/// wins). Returns the rows inserted.
pub(crate) async fn insert_samples(
    tx: &mut Transaction<'static, Sqlite>,
    samples: &[NewSample],
    ingested_at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let ingested_at = time::to_text(ingested_at);
    let mut inserted = 0;
    for chunk in samples.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO signal_samples \
             (vehicle_id, code, recorded_at, value_num, unit, body, source, ingested_at) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.vehicle_id.as_str())
                .push_bind(s.code.as_str())
                .push_bind(time::to_text(s.recorded_at))
                .push_bind(s.value_num)
                .push_bind(s.unit.as_deref())
                .push_bind(s.body.as_str())
                .push_bind(s.source.as_str())
                .push_bind(ingested_at.clone());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        inserted += qb.build().execute(&mut **tx).await?.rows_affected();
    }
    Ok(inserted)
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

/// Retention without partitions: delete the rows recorded before `cutoff`.
pub(crate) async fn delete_samples_before(
    pool: &SqlitePool,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query("DELETE FROM signal_samples WHERE recorded_at < $1")
        .bind(time::to_text(cutoff))
        .execute(pool)
        .await?
        .rows_affected();
    tracing::info!(deleted, "deleted samples older than the retention cutoff");
    Ok(deleted)
}

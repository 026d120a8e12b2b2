//! Hot and cold samples on PostgreSQL (migration 0012): where a reading goes, and how old
//! readings move so that they cost fewer bytes.
//!
//! Why: one row per sample with a unique btree costs ≈ 52 bytes of heap and ≈ 31 of index, above
//! the 80 bytes a sample issue 13 allows. The unique index is there only to drop a reading sent
//! twice (a retried poll, a webhook repeating a poll, a parked car repeating its last reading),
//! and repeats concern recent readings almost always. So recent readings live in the HOT table
//! `samples` (primary key, `ON CONFLICT DO NOTHING`), and older ones in the COLD table
//! `samples_cold`, indexed by a non-unique btree on `series_id` (deduplicated by PostgreSQL into
//! posting lists, ≈ 6 bytes a row) and a BRIN on `recorded_at`.
//!
//! The line between them is one timestamp, the watermark (`sample_watermark.compacted_before`):
//! every hot row is recorded at or after it, every cold row before it, so a reading has exactly
//! one place and the two tables never hold the same reading twice.
//! - Ingest reads the watermark `FOR SHARE` first thing in its transaction and holds it until
//!   commit. A reading at or after it goes to hot as before; one before it goes to cold unless an
//!   identical `(series_id, recorded_at)` is already there. With no unique index in cold, two
//!   transactions storing the same old reading at once would both find it missing, so a cold
//!   insert first takes a transaction advisory lock per series (in ascending order), then checks.
//! - Compaction ([`compact`]) moves one time slice per transaction: it takes the watermark
//!   `FOR UPDATE` (waiting for every ingest that read the old value to commit, and making new ones
//!   wait), moves the hot rows below the slice's end into cold sorted by (series, time), and sets
//!   the watermark to that end. The move and the new watermark commit together; the watermark
//!   never goes back (a slice ending at or below it does nothing). A backlog (the first
//!   compaction after the upgrade) goes one hour per transaction through months that hold rows,
//!   and a BRIN on hot's `recorded_at` finds each hour without scanning the month.
//!
//! SQLite keeps one table (its layout is already under the goal): nothing here applies.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::StoreError;
use super::postgres::{
    Columns, counts_by_vehicle, is_hypertable, month_start, parse_partition_name, shift_month,
};

/// First key of the per-series advisory locks of cold inserts (the second is the series id).
const COLD_LOCK: i32 = 0x5343_4f4c;

/// The most one compaction transaction moves: one hour of readings (fleet scale, 1.9 M samples
/// a day: ≈ 80 k rows, well under a second, so ingest waits that long at most and a statement
/// stays far from `statement_timeout`; a backlog of a year is ≈ 8,800 such transactions).
const SLICE: chrono::Duration = chrono::Duration::hours(1);

/// The watermark as `Option` (`None`: `-infinity`, nothing compacted yet).
const WATERMARK: &str =
    "SELECT CASE WHEN isfinite(compacted_before) THEN compacted_before END FROM sample_watermark";

/// The watermark, locked `FOR SHARE` until this transaction ends: a compaction waits for it.
pub(crate) async fn watermark_for_share(
    tx: &mut Transaction<'static, Postgres>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(&format!("{WATERMARK} FOR SHARE"))
        .fetch_one(&mut **tx)
        .await?)
}

/// The watermark, unlocked (`None` before the first compaction).
pub(crate) async fn watermark(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(WATERMARK).fetch_one(pool).await?)
}

/// Stores readings recorded before the watermark (which the caller holds `FOR SHARE`) in cold,
/// each unless the same (series, time) is there already or earlier in `c` (first one wins).
/// The dictionaries must already hold their series, units and bodies. Returns the rows inserted
/// per vehicle.
pub(crate) async fn insert_cold(
    tx: &mut Transaction<'static, Postgres>,
    c: &Columns<'_>,
    ingested_at: DateTime<Utc>,
) -> Result<HashMap<String, u64>, StoreError> {
    // Ascending series order: two transactions locking overlapping series cannot deadlock here.
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock($1, q.s)) FROM ( \
           SELECT DISTINCT (SELECT s.series_id FROM sample_series s \
                            WHERE s.vehicle_id = t.v AND s.code = t.c) AS s \
           FROM UNNEST($2::text[], $3::text[]) AS t(v, c) ORDER BY 1) q",
    )
    .bind(COLD_LOCK)
    .bind(&c.vid)
    .bind(&c.code)
    .execute(&mut **tx)
    .await?;
    // A new statement, so a new snapshot: it sees what the lock holders before us committed.
    let rows = c
        .bind(
            sqlx::query(
                "WITH t AS ( \
           SELECT DISTINCT ON (u.sid, u.r) u.* FROM ( \
             SELECT (SELECT s.series_id FROM sample_series s \
                     WHERE s.vehicle_id = t.v AND s.code = t.c) AS sid, \
                    t.r, t.n, \
                    (SELECT min(x.body_id) FROM sample_bodies x \
                     WHERE x.hash = t.h AND x.body::text = (t.b::jsonb)::text) AS bid, \
                    (SELECT un.unit_id FROM sample_units un WHERE un.unit = t.u) AS uid, \
                    t.f, t.i \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[], $5::text[], \
                         $6::int8[], $7::text[], $8::int2[]) \
                  WITH ORDINALITY AS t(v, c, r, n, u, h, b, f, i)) u \
           ORDER BY u.sid, u.r, u.i), \
         ins AS (INSERT INTO samples_cold \
           (recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form) \
           SELECT t.r, t.n, $9, t.sid, t.bid, t.uid, t.f FROM t \
           WHERE NOT EXISTS (SELECT 1 FROM samples_cold k \
                             WHERE k.series_id = t.sid AND k.recorded_at = t.r) \
           RETURNING series_id) \
         SELECT (SELECT s.vehicle_id FROM sample_series s WHERE s.series_id = ins.series_id) \
                  AS vehicle_id, count(*)::int8 AS n \
         FROM ins GROUP BY 1",
            ),
            ingested_at,
        )
        .fetch_all(&mut **tx)
        .await?;
    counts_by_vehicle(&rows)
}

/// Moves every hot reading recorded before `before` to cold and advances the watermark to
/// `before`, one slice per transaction (see [`slice_ends`]). Returns the readings moved.
/// Idempotent: a `before` at or below the watermark moves nothing and leaves the watermark.
pub(crate) async fn compact(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let current = watermark(pool).await?;
    if current.is_some_and(|w| w >= before) {
        return Ok(0);
    }
    let partitions = hot_partitions(pool).await?;
    let mut moved = 0;
    for end in slice_ends(current, before, &partitions) {
        moved += compact_slice(pool, end).await?;
    }
    Ok(moved)
}

/// Where compaction's transactions end, from the watermark (`None`: not compacted yet) to
/// `before`, given hot's monthly partitions (start, end, holds rows) sorted by start: one
/// [`SLICE`] at a time through a partition that holds rows; one step over an empty partition or a gap
/// between partitions (rows there are in the default partition, which is small); everything
/// before the first partition in one step.
fn slice_ends(
    from: Option<DateTime<Utc>>,
    before: DateTime<Utc>,
    partitions: &[(DateTime<Utc>, DateTime<Utc>, bool)],
) -> Vec<DateTime<Utc>> {
    let mut ends = Vec::new();
    let mut at = from;
    for &(start, end, full) in partitions {
        if at.is_some_and(|x| end <= x) {
            continue;
        }
        if start >= before {
            break;
        }
        if at.is_none_or(|x| start > x) {
            ends.push(start);
            at = Some(start);
        }
        let stop = end.min(before);
        let mut x = at.unwrap_or(start);
        if full {
            while x < stop {
                x = x.checked_add_signed(SLICE).unwrap_or(stop).min(stop);
                ends.push(x);
            }
        } else {
            x = stop;
            ends.push(x);
        }
        at = Some(x);
    }
    if at.is_none_or(|x| x < before) {
        ends.push(before);
    }
    ends
}

/// One transaction: hot rows recorded before `end` move to cold, the watermark becomes `end`.
async fn compact_slice(pool: &PgPool, end: DateTime<Utc>) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let from: Option<DateTime<Utc>> = sqlx::query_scalar(&format!("{WATERMARK} FOR UPDATE"))
        .fetch_one(&mut *tx)
        .await?;
    if from.is_some_and(|w| w >= end) {
        tx.commit().await?;
        return Ok(0);
    }
    // By the invariant nothing in hot is older than `from`: the bound only prunes partitions.
    let moved = sqlx::query(
        "WITH moved AS (DELETE FROM samples \
           WHERE recorded_at < $1 AND recorded_at >= coalesce($2, '-infinity'::timestamptz) \
           RETURNING recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form) \
         INSERT INTO samples_cold \
           (recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form) \
         SELECT recorded_at, value_num, ingested_at, series_id, body_id, unit_id, form \
         FROM moved ORDER BY series_id, recorded_at",
    )
    .bind(end)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE sample_watermark SET compacted_before = $1")
        .bind(end)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if moved > 0 {
        tracing::debug!(moved, before = %end, "compacted samples");
    }
    Ok(moved)
}

/// Hot's monthly partitions as (start, end, holds rows), sorted (none on TimescaleDB).
async fn hot_partitions(
    pool: &PgPool,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>, bool)>, StoreError> {
    if is_hypertable(pool).await? {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT c.relname::text AS name FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'samples'::regclass",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        let Some((y, m)) = parse_partition_name("signal_samples_", &name) else {
            continue;
        };
        let (ny, nm) = shift_month(y, m, 1);
        // The name was parsed as signal_samples_ + six digits: safe to inline.
        let full: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {name})"))
            .fetch_one(pool)
            .await?;
        out.push((month_start(y, m)?, month_start(ny, nm)?, full));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn d(m: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, m, day, 0, 0, 0).unwrap()
    }

    #[test]
    fn slices_walk_full_partitions_by_the_hour_and_skip_empty_ones() {
        let parts = [
            (d(1, 1), d(2, 1), true),
            (d(2, 1), d(3, 1), false),
            (d(4, 1), d(5, 1), true),
        ];
        // First compaction: what precedes January, then January hour by hour, February in one
        // step, the gap of March in one, April up to `before`.
        let ends = slice_ends(None, d(4, 3), &parts);
        let mut expected = vec![d(1, 1)];
        expected.extend((1..=31 * 24).map(|h| d(1, 1) + chrono::Duration::hours(h)));
        expected.extend([d(3, 1), d(4, 1)]);
        expected.extend((1..=48).map(|h| d(4, 1) + chrono::Duration::hours(h)));
        assert_eq!(ends, expected);
        // From a watermark inside a partition, to a time inside the same day.
        let w = d(1, 10) + chrono::Duration::hours(5);
        assert_eq!(
            slice_ends(Some(w), w + chrono::Duration::hours(1), &parts),
            [w + chrono::Duration::hours(1)]
        );
        // Past every partition.
        let hour = |h| d(4, 20) + chrono::Duration::hours(h);
        assert_eq!(
            slice_ends(Some(d(4, 20)), d(6, 1), &parts)[..2],
            [hour(1), hour(2)]
        );
        assert_eq!(
            slice_ends(Some(d(4, 20)), d(6, 1), &parts).last(),
            Some(&d(6, 1))
        );
        // No partitions (TimescaleDB): one step.
        assert_eq!(slice_ends(None, d(6, 1), &[]), [d(6, 1)]);
    }
}

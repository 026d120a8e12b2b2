//! Samples and signal statuses: the time-series table a poll or a webhook writes, and how it
//! is read back.
//!
//! A reading's identity is (vehicle, code, recorded_at) and the first writer wins, so a poll
//! retried after a crash, or a webhook repeating a polled reading, stores nothing twice.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

#[cfg(any(test, feature = "test-support"))]
use super::SampleRow;
use super::db::{Backend, Pool, Tx, args};
use super::{NewSample, SampleSource, SignalState, Store, StoreError, cold, postgres, sqlite};

/// Keeps the newest observation per (vehicle, code): one statement may touch a row only once.
fn dedup_statuses(statuses: &[SignalState]) -> Vec<SignalState> {
    let mut latest: HashMap<(&str, &str), &SignalState> = HashMap::new();
    for s in statuses {
        let key = (s.vehicle_id.as_str(), s.code.as_str());
        match latest.get(&key) {
            Some(prev) if prev.observed_at > s.observed_at => {}
            _ => {
                latest.insert(key, s);
            }
        }
    }
    latest.into_values().cloned().collect()
}

impl Tx {
    /// Inserts samples idempotently (first writer wins) and upserts signal statuses, inside
    /// this transaction. Shared by polls and webhooks. Returns the sample rows inserted.
    pub(crate) async fn ingest(
        &mut self,
        samples: &[NewSample],
        statuses: &[SignalState],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(self
            .ingest_by_vehicle(samples, statuses, now)
            .await?
            .values()
            .sum())
    }

    /// [`Tx::ingest`], counting the rows inserted per vehicle (several polls in one batch).
    pub(crate) async fn ingest_by_vehicle(
        &mut self,
        samples: &[NewSample],
        statuses: &[SignalState],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let statuses = dedup_statuses(statuses);
        let inserted = match self {
            Tx::Sqlite(t, _) => {
                let n = sqlite::insert_samples(t, samples, now).await?;
                sqlite::upsert_statuses(t, &statuses).await?;
                n
            }
            Tx::Postgres(t) => {
                let n = postgres::insert_samples(t, samples, now).await?;
                postgres::upsert_statuses(t, &statuses).await?;
                n
            }
        };
        self.mark_pushed(samples, &inserted, now).await?;
        Ok(inserted)
    }

    /// Records when a webhook last brought a new reading of each vehicle
    /// (`vehicles.last_pushed_at`), in the same transaction as the readings: the allowance
    /// planner skips a poll whose readings were pushed within its interval.
    async fn mark_pushed(
        &mut self,
        samples: &[NewSample],
        inserted: &HashMap<String, u64>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut pushed: Vec<String> = samples
            .iter()
            .filter(|s| s.source == SampleSource::Webhook)
            .filter(|s| inserted.get(&s.vehicle_id).is_some_and(|n| *n > 0))
            .map(|s| s.vehicle_id.clone())
            .collect();
        if pushed.is_empty() {
            return Ok(());
        }
        pushed.sort();
        pushed.dedup();
        let sql = format!(
            "UPDATE vehicles SET last_pushed_at = $2 WHERE {} \
             AND (last_pushed_at IS NULL OR last_pushed_at < $2)",
            self.backend().in_list("vehicle_id", "$1")
        );
        self.exec(&sql, args![pushed.as_slice(), now]).await?;
        Ok(())
    }
}

impl Store {
    /// Stores samples and statuses outside a job's completion (the readings of a poll's pages
    /// received before a later page failed, kept while the poll retries): one transaction,
    /// idempotent. Returns the sample rows inserted.
    pub async fn ingest_samples(
        &self,
        samples: &[NewSample],
        statuses: &[SignalState],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = tx.ingest(samples, statuses, Utc::now()).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Every stored sample (PostgreSQL: hot and cold).
    pub async fn sample_count(&self) -> Result<i64, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT COUNT(*) AS n FROM samples",
            Backend::Postgres => {
                "SELECT (SELECT COUNT(*) FROM samples) + (SELECT COUNT(*) FROM samples_cold) AS n"
            }
        };
        self.pool
            .opt(sql, args![])
            .await?
            .map_or(Ok(0), |r| r.int("n"))
    }

    /// Compaction (PostgreSQL): moves the readings recorded before `before` from the hot table
    /// to the cold one and advances the watermark to `before` (never back), one hour per
    /// transaction; see `cold.rs`. Returns the readings moved. SQLite: nothing to do, 0.
    pub async fn compact_samples(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        match &self.pool {
            Pool::Sqlite(..) => Ok(0),
            Pool::Postgres(p) => cold::compact(p, before).await,
        }
    }

    /// The compaction watermark: readings recorded before it are cold. None on SQLite and
    /// before the first compaction.
    pub async fn compacted_before(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match &self.pool {
            Pool::Sqlite(..) => Ok(None),
            Pool::Postgres(p) => cold::watermark(p).await,
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Store {
    /// Every stored sample, ordered by vehicle, code and time: for checks and small exports
    /// (dashboards read the table directly).
    pub async fn list_samples(&self) -> Result<Vec<SampleRow>, StoreError> {
        let sql = format!(
            "SELECT vehicle_id, code, recorded_at, value_num, unit, {}, source, ingested_at \
             FROM signal_samples ORDER BY vehicle_id, code, recorded_at",
            self.backend().json_text("body")
        );
        self.pool
            .all(&sql, args![])
            .await?
            .iter()
            .map(|r| {
                Ok(SampleRow {
                    vehicle_id: r.text("vehicle_id")?,
                    code: r.text("code")?,
                    recorded_at: r.time("recorded_at")?,
                    value_num: r.opt_float("value_num")?,
                    unit: r.opt_text("unit")?,
                    body: r.text("body")?,
                    source: r.text("source")?.parse()?,
                    ingested_at: r.time("ingested_at")?,
                })
            })
            .collect()
    }

    /// Every signal's latest status, by vehicle and code (for `status` views and tests).
    pub async fn list_signal_statuses(&self) -> Result<Vec<SignalState>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT vehicle_id, code, status, error_type, error_code, observed_at \
                 FROM signal_status ORDER BY vehicle_id, code",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SignalState {
                    vehicle_id: r.text("vehicle_id")?,
                    code: r.text("code")?,
                    status: r.text("status")?,
                    error_type: r.opt_text("error_type")?,
                    error_code: r.opt_text("error_code")?,
                    observed_at: r.time("observed_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use crate::store::{NewSample, SampleSource, SignalState, Store, StoreOptions};

    fn sample(vehicle: usize, code: usize, at: i64, value: f64) -> NewSample {
        NewSample {
            vehicle_id: format!("v{vehicle:02}"),
            code: format!("c{code}"),
            recorded_at: Utc.timestamp_opt(1_700_000_000 + at, 0).unwrap(),
            value_num: Some(value),
            unit: (code % 2 == 0).then(|| "km".to_owned()),
            body: if code % 2 == 0 {
                format!(r#"{{"unit":"km","value":{value}}}"#)
            } else {
                format!(r#"{{"value":{value},"extra":[{code}]}}"#)
            },
            source: SampleSource::Poll,
        }
    }

    /// A batch wider than one statement (SQLite: 256 rows), its vehicles' rows interleaved,
    /// some already stored and some twice in the batch: each vehicle is told exactly the rows it
    /// gained, and every row is stored once with its value. Statuses in a batch whose size is
    /// not a statement shape (padding rows) are all stored, the padding is not.
    #[tokio::test]
    async fn a_wide_batch_counts_each_vehicles_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wide.db").display());
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();

        // Vehicles 0..40, signals 0..8: 320 rows, round-robin over the vehicles.
        let batch: Vec<NewSample> = (0..8)
            .flat_map(|c| (0..40).map(move |v| sample(v, c, 10, (v * 100 + c) as f64 + 0.25)))
            .collect();
        // Already stored: vehicle 3's eight rows and vehicle 7's first signal.
        let earlier: Vec<NewSample> = batch
            .iter()
            .filter(|s| s.vehicle_id == "v03" || (s.vehicle_id == "v07" && s.code == "c0"))
            .cloned()
            .collect();
        assert_eq!(store.ingest_samples(&earlier, &[]).await.unwrap(), 9);

        let mut twice = batch.clone();
        twice.push(batch[5].clone());
        let statuses: Vec<SignalState> = (0..37)
            .map(|v| SignalState {
                vehicle_id: format!("v{v:02}"),
                code: "c9".into(),
                status: "ERROR".into(),
                error_type: Some("VEHICLE".into()),
                error_code: None,
                observed_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            })
            .collect();
        let mut tx = store.pool.begin().await.unwrap();
        let counts = tx
            .ingest_by_vehicle(&twice, &statuses, Utc::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();

        assert_eq!(counts.len(), 40, "every vehicle of the batch is answered");
        for v in 0..40 {
            let expected = match v {
                3 => 0,
                7 => 7,
                _ => 8,
            };
            assert_eq!(counts[&format!("v{v:02}")], expected, "vehicle {v}");
        }
        let stored = store.list_samples().await.unwrap();
        assert_eq!(stored.len(), 320);
        for s in &batch {
            let row = stored
                .iter()
                .find(|r| r.vehicle_id == s.vehicle_id && r.code == s.code)
                .expect("stored");
            assert_eq!(row.value_num, s.value_num);
            assert_eq!(row.body, s.body);
        }
        let listed = store.list_signal_statuses().await.unwrap();
        assert_eq!(listed.len(), 37);
        store.close().await;
    }
}

//! Migrations embedded at compile time.
//!
//! `sqlx::migrate!` needs sqlx's macros feature, which this crate does not enable; instead the
//! SQL files are `include_str!`-ed and handed to sqlx's ordinary [`Migrator`] through a
//! [`MigrationSource`], so the binary is self-contained and sqlx still records versions and
//! checksums in `_sqlx_migrations` (and takes its advisory lock on PostgreSQL, so several
//! daemons starting at once migrate once).

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// (version, description, SQL). The two lists are kept version for version.
type Embedded = &'static [(i64, &'static str, &'static str)];

const SQLITE: Embedded = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "dashboards",
        include_str!("../../migrations/sqlite/0002_dashboards.sql"),
    ),
    (
        3,
        "throttle streak",
        include_str!("../../migrations/sqlite/0003_throttle_streak.sql"),
    ),
    (
        4,
        "dashboard units",
        include_str!("../../migrations/sqlite/0004_dashboard_units.sql"),
    ),
    (
        5,
        "connect_states",
        include_str!("../../migrations/sqlite/0005_connect_states.sql"),
    ),
    (
        6,
        "rate_budget",
        include_str!("../../migrations/sqlite/0006_rate_budget.sql"),
    ),
    (
        7,
        "allowance",
        include_str!("../../migrations/sqlite/0007_allowance.sql"),
    ),
    (
        8,
        "compact samples",
        include_str!("../../migrations/sqlite/0008_compact_samples.sql"),
    ),
    (
        9,
        "last pushed",
        include_str!("../../migrations/sqlite/0009_last_pushed.sql"),
    ),
    (
        10,
        "job progress",
        include_str!("../../migrations/sqlite/0010_job_progress.sql"),
    ),
    (
        11,
        "claim order",
        include_str!("../../migrations/sqlite/0011_claim_order.sql"),
    ),
    (
        12,
        "cold samples",
        include_str!("../../migrations/sqlite/0012_cold_samples.sql"),
    ),
    (
        13,
        "partial job indexes",
        include_str!("../../migrations/sqlite/0013_partial_job_indexes.sql"),
    ),
];

const POSTGRES: Embedded = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "dashboards",
        include_str!("../../migrations/postgres/0002_dashboards.sql"),
    ),
    (
        3,
        "throttle streak",
        include_str!("../../migrations/postgres/0003_throttle_streak.sql"),
    ),
    (
        4,
        "dashboard units",
        include_str!("../../migrations/postgres/0004_dashboard_units.sql"),
    ),
    (
        5,
        "connect_states",
        include_str!("../../migrations/postgres/0005_connect_states.sql"),
    ),
    (
        6,
        "rate_budget",
        include_str!("../../migrations/postgres/0006_rate_budget.sql"),
    ),
    (
        7,
        "allowance",
        include_str!("../../migrations/postgres/0007_allowance.sql"),
    ),
    (
        8,
        "compact samples",
        include_str!("../../migrations/postgres/0008_compact_samples.sql"),
    ),
    (
        9,
        "last pushed",
        include_str!("../../migrations/postgres/0009_last_pushed.sql"),
    ),
    (
        10,
        "job progress",
        include_str!("../../migrations/postgres/0010_job_progress.sql"),
    ),
    (
        11,
        "claim order",
        include_str!("../../migrations/postgres/0011_claim_order.sql"),
    ),
    (
        12,
        "cold samples",
        include_str!("../../migrations/postgres/0012_cold_samples.sql"),
    ),
    (
        13,
        "partial job indexes",
        include_str!("../../migrations/postgres/0013_partial_job_indexes.sql"),
    ),
];

#[derive(Debug)]
struct Source(Embedded, i64);

impl MigrationSource<'static> for Source {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .filter(|m| m.0 <= self.1)
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The SQLite migrations up to `version` (`i64::MAX`: all).
pub(crate) async fn sqlite(version: i64) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(SQLITE, version)).await
}

/// The PostgreSQL migrations up to `version` (`i64::MAX`: all).
pub(crate) async fn postgres(version: i64) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(POSTGRES, version)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_versions() {
        let s: Vec<_> = SQLITE.iter().map(|m| (m.0, m.1)).collect();
        let p: Vec<_> = POSTGRES.iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(s, p);
    }
}

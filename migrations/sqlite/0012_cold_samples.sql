-- Hot and cold samples: PostgreSQL only (migrations/postgres/0012_cold_samples.sql). SQLite
-- already stores a sample in about 35 bytes with its primary key, under the issue's 50, so its
-- layout stays as 0008 made it and `Store::compact_samples` does nothing there. This file exists
-- because both backends keep the same migration versions (src/store/migrate.rs).
SELECT 1;

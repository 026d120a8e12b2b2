-- Nothing to do on SQLite (migrations/postgres/0011_claim_order.sql adds the job id to the
-- claim's indexes; a SQLite index already ends with the rowid, which is the job id). Kept so
-- that both backends number their migrations alike.
SELECT 1;

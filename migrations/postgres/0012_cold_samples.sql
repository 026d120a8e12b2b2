-- Hot and cold samples (issue 13), PostgreSQL only; migrations/sqlite/0012_cold_samples.sql is a
-- no-op (the version lists are kept equal). One row per sample with a unique btree costs about
-- 52 bytes of heap and 31 of index: above the issue's 80 whatever the columns. So old readings
-- move to a table without a unique index:
-- - `samples` stays the HOT table: readings recorded at or after the watermark, primary key
--   (series_id, recorded_at), deduplicated by ON CONFLICT DO NOTHING. It gains a BRIN on
--   recorded_at (a few pages) so that compaction finds a time slice without a scan.
-- - `samples_cold`: the same columns, partitioned by month the same way (samples_cold_YYYYMM and
--   samples_cold_default), readings recorded before the watermark, written sorted by
--   (series_id, recorded_at). Its indexes are a NON-unique btree on series_id, which btree
--   deduplication (PostgreSQL 13+) stores as posting lists of 6-byte heap pointers, and a BRIN on
--   recorded_at. Heap fillfactor is the default, 100 (a partitioned table takes no storage
--   parameters; its partitions inherit none): cold rows are never updated.
-- - `sample_watermark`: one row, `compacted_before`. Every hot row is recorded at or after it,
--   every cold row before it. Ingest reads it FOR SHARE and sends each reading to the table its
--   time belongs to (a cold reading only if the same (series_id, recorded_at) is not there yet);
--   compaction holds it FOR UPDATE while it moves a time slice and advances it, so the move and
--   the new watermark commit together and no ingest sees one without the other.
-- `signal_samples` becomes hot UNION ALL cold (same columns, types and text; CREATE OR REPLACE
-- keeps its grants and the views over it). `dash_latest_reading` looks for a series' newest
-- reading in hot first and only in cold when hot has none (correct by the invariant), so it
-- does not read a series' whole cold history.

CREATE TABLE sample_watermark (
    only_row         BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    compacted_before TIMESTAMPTZ NOT NULL
);
INSERT INTO sample_watermark (only_row, compacted_before) VALUES (true, '-infinity');

CREATE INDEX samples_recorded_brin ON samples USING brin (recorded_at);

CREATE TABLE samples_cold (
    recorded_at TIMESTAMPTZ NOT NULL,
    value_num   DOUBLE PRECISION,
    ingested_at TIMESTAMPTZ NOT NULL,
    series_id   INTEGER NOT NULL,
    body_id     INTEGER,
    unit_id     SMALLINT,
    form        SMALLINT NOT NULL,
    CHECK (form >> 1 <> 0 OR body_id IS NOT NULL)
) PARTITION BY RANGE (recorded_at);

-- The same months as `samples`, and a default partition (TimescaleDB: a hypertable, like
-- `samples`; untested).
DO $$
DECLARE r record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'samples'::regclass) <> 'p' THEN
        ALTER TABLE samples_cold RENAME TO samples_cold_partitioned;
        CREATE TABLE samples_cold (LIKE samples_cold_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        DROP TABLE samples_cold_partitioned;
        EXECUTE 'SELECT create_hypertable(''samples_cold'', ''recorded_at'', chunk_time_interval => INTERVAL ''7 days'')';
    ELSE
        FOR r IN SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'samples'::regclass
        LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF samples_cold %s',
                           replace(r.name, 'signal_samples_', 'samples_cold_'), r.bound);
        END LOOP;
        IF to_regclass('samples_cold_default') IS NULL THEN
            CREATE TABLE samples_cold_default PARTITION OF samples_cold DEFAULT;
        END IF;
    END IF;
END
$$;

CREATE INDEX samples_cold_series ON samples_cold (series_id) WITH (deduplicate_items = on);
CREATE INDEX samples_cold_recorded_brin ON samples_cold USING brin (recorded_at);

CREATE OR REPLACE VIEW signal_samples AS
SELECT s.vehicle_id, s.code, m.recorded_at, m.value_num, u.unit,
       CASE WHEN m.form >> 1 = 0 THEN b.body
            WHEN m.form >> 1 = 1 THEN
                CASE WHEN u.unit IS NULL THEN jsonb_build_object('value', m.value_num <> 0)
                     ELSE jsonb_build_object('unit', u.unit, 'value', m.value_num <> 0) END
            WHEN u.unit IS NULL THEN
                jsonb_build_object('value', round(m.value_num::numeric, (m.form >> 1) - 2))
            ELSE jsonb_build_object('unit', u.unit,
                                    'value', round(m.value_num::numeric, (m.form >> 1) - 2)) END
           AS body,
       CASE WHEN m.form & 1 = 0 THEN 'poll' ELSE 'webhook' END AS source,
       m.ingested_at
FROM (SELECT h.recorded_at, h.value_num, h.ingested_at, h.series_id, h.body_id, h.unit_id, h.form
      FROM samples h
      UNION ALL
      SELECT c.recorded_at, c.value_num, c.ingested_at, c.series_id, c.body_id, c.unit_id, c.form
      FROM samples_cold c) m
JOIN sample_series s ON s.series_id = m.series_id
LEFT JOIN sample_units u ON u.unit_id = m.unit_id
LEFT JOIN sample_bodies b ON b.body_id = m.body_id;

-- The newest reading of a series: hot's newest (a backward primary-key probe) when hot has one,
-- else cold's newest (only then is cold read), its body written as `signal_samples` writes it
-- (the same CASE). Going through `signal_samples` instead lets the planner read every reading
-- of the series from both tables and filter on the time. Same columns and answers as 0008's.
CREATE OR REPLACE VIEW dash_latest_reading AS
SELECT st.vehicle_id, st.code, s.recorded_at AS time, s.value_num AS value,
       CASE
             WHEN s.unit IS NULL THEN CASE WHEN (s.body -> 'percentage') IS NOT NULL THEN 'percent' END
             WHEN lower(trim(s.unit)) IN ('km', 'kilometer', 'kilometers', 'kilometre', 'kilometres')
                 THEN 'kilometers'
             WHEN lower(trim(s.unit)) IN ('mi', 'mile', 'miles') THEN 'miles'
             WHEN lower(trim(s.unit)) IN ('percent', 'percentage', '%') THEN 'percent'
             WHEN lower(trim(s.unit)) IN ('kwh', 'kwhr', 'kw-hr', 'kilowatt-hours', 'kilowatthours')
                 THEN 'kWh'
             WHEN lower(trim(s.unit)) IN ('v', 'volt', 'volts') THEN 'volts'
             WHEN lower(trim(s.unit)) IN ('l', 'liter', 'liters', 'litre', 'litres') THEN 'liters'
             ELSE s.unit END AS unit,
       s.body::text AS body, s.source, st.status, st.observed_at AS status_observed_at,
       s.unit AS unit_sent
FROM signal_status st
CROSS JOIN LATERAL (
    SELECT m.recorded_at, m.value_num, u.unit,
           CASE WHEN m.form >> 1 = 0 THEN b.body
                WHEN m.form >> 1 = 1 THEN
                    CASE WHEN u.unit IS NULL THEN jsonb_build_object('value', m.value_num <> 0)
                         ELSE jsonb_build_object('unit', u.unit, 'value', m.value_num <> 0) END
                WHEN u.unit IS NULL THEN
                    jsonb_build_object('value', round(m.value_num::numeric, (m.form >> 1) - 2))
                ELSE jsonb_build_object('unit', u.unit,
                                        'value', round(m.value_num::numeric, (m.form >> 1) - 2)) END
               AS body,
           CASE WHEN m.form & 1 = 0 THEN 'poll' ELSE 'webhook' END AS source
    FROM sample_series ser
    CROSS JOIN LATERAL (
        (SELECT h.recorded_at, h.value_num, h.unit_id, h.body_id, h.form
         FROM samples h WHERE h.series_id = ser.series_id
         ORDER BY h.recorded_at DESC LIMIT 1)
        UNION ALL
        (SELECT c.recorded_at, c.value_num, c.unit_id, c.body_id, c.form
         FROM samples_cold c WHERE c.series_id = ser.series_id
         ORDER BY c.recorded_at DESC LIMIT 1)
        LIMIT 1
    ) m
    LEFT JOIN sample_units u ON u.unit_id = m.unit_id
    LEFT JOIN sample_bodies b ON b.body_id = m.body_id
    WHERE ser.vehicle_id = st.vehicle_id AND ser.code = st.code
) s;

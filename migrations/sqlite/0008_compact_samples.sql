-- Compact samples (issue 13). A sample used to carry its vehicle id and signal code as text,
-- its times as 27-character text, its unit as text and its whole JSON body, plus a second index
-- on recorded_at: about 290 bytes a sample. Now:
-- - `sample_series`: one row per (vehicle, signal code); a sample carries its integer id.
-- - `sample_units`: one row per unit spelling; a sample carries its integer id.
-- - `sample_bodies`: bodies that say more than (value, unit) - a location, the doors, a string
--   value - stored once per distinct text (looked up by a 64-bit FNV-1a hash of the text computed
--   by the daemon, then compared in full; bodies carried over by this migration have no hash).
--   A body that is exactly `{"unit":U,"value":N}`, `{"value":N}` or `{"value":true|false}` is not
--   stored: `form` says how to rebuild it byte for byte (see `src/store/compact.rs`).
-- - `samples`: the readings, keyed (series_id, recorded_at) WITHOUT ROWID; times are integer
--   microseconds since the Unix epoch (the precision of the TEXT format), ingested_at as the
--   microseconds after recorded_at (a smaller integer). No recorded_at index: retention deletes
--   series by series through the primary key.
-- `form` = shape * 2 + source: source 0 poll, 1 webhook; shape 0 = body in sample_bodies,
-- 1 = boolean value, 2 + d = number written with d decimals.
-- `signal_samples` is now a view with the same columns, types and text as the old table;
-- inserts go to the tables above (the daemon's insert path), not to the view.

DROP VIEW dash_last_location;
DROP VIEW dash_fleet_freshness;
DROP VIEW dash_latest_reading;
DROP VIEW dash_soc_range;
DROP VIEW dash_distance_daily;
DROP VIEW dash_charging_sessions;

ALTER TABLE signal_samples RENAME TO signal_samples_0006;

CREATE TABLE sample_series (
    series_id  INTEGER PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    code       TEXT NOT NULL,
    UNIQUE (vehicle_id, code)
);

CREATE TABLE sample_units (
    unit_id INTEGER PRIMARY KEY,
    unit    TEXT NOT NULL UNIQUE
);

CREATE TABLE sample_bodies (
    body_id INTEGER PRIMARY KEY,
    hash    INTEGER,
    body    TEXT NOT NULL CHECK (json_valid(body))
);
CREATE INDEX sample_bodies_hash ON sample_bodies (hash);

CREATE TABLE samples (
    series_id       INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    value_num       REAL,
    unit_id         INTEGER,
    body_id         INTEGER,
    form            INTEGER NOT NULL,
    ingest_delay_us INTEGER NOT NULL,
    PRIMARY KEY (series_id, recorded_at),
    CHECK (form / 2 <> 0 OR body_id IS NOT NULL)
) WITHOUT ROWID;

-- Every column of the old table, decoded, plus the keys (series_id, t) for joins on the
-- primary key. Times: integer microseconds back to the fixed-width TEXT format.
CREATE VIEW sample_rows AS
SELECT m.series_id, m.recorded_at AS t, s.vehicle_id, s.code,
       strftime('%Y-%m-%dT%H:%M:%S',
                (m.recorded_at - ((m.recorded_at % 1000000) + 1000000) % 1000000) / 1000000,
                'unixepoch')
           || '.' || printf('%06d', ((m.recorded_at % 1000000) + 1000000) % 1000000) || 'Z'
           AS recorded_at,
       m.value_num, u.unit,
       CASE WHEN m.form / 2 = 0 THEN b.body
            ELSE '{' || CASE WHEN u.unit IS NULL THEN '' ELSE '"unit":' || json_quote(u.unit) || ',' END
                 || '"value":'
                 || CASE WHEN m.form / 2 = 1 THEN CASE WHEN m.value_num <> 0 THEN 'true' ELSE 'false' END
                         ELSE printf('%.' || (m.form / 2 - 2) || 'f', m.value_num) END
                 || '}' END AS body,
       CASE WHEN m.form % 2 = 0 THEN 'poll' ELSE 'webhook' END AS source,
       strftime('%Y-%m-%dT%H:%M:%S',
                (m.recorded_at + m.ingest_delay_us
                 - (((m.recorded_at + m.ingest_delay_us) % 1000000) + 1000000) % 1000000) / 1000000,
                'unixepoch')
           || '.' || printf('%06d', (((m.recorded_at + m.ingest_delay_us) % 1000000) + 1000000) % 1000000)
           || 'Z' AS ingested_at
FROM samples m
JOIN sample_series s ON s.series_id = m.series_id
LEFT JOIN sample_units u ON u.unit_id = m.unit_id
LEFT JOIN sample_bodies b ON b.body_id = m.body_id;

CREATE VIEW signal_samples AS
SELECT vehicle_id, code, recorded_at, value_num, unit, body, source, ingested_at
FROM sample_rows;

-- Every old row, kept. Times and shapes are worked out once in a temporary table; a body is
-- left out (rebuilt) only where the rebuild is the stored text byte for byte, with the same rules
-- as the daemon's (src/store/compact.rs): at most 15 significant digits, a plain ASCII unit.
CREATE TEMP TABLE m0008 AS
SELECT o.*,
       CAST(strftime('%s', substr(o.recorded_at, 1, 19)) AS INTEGER) * 1000000
           + CAST(substr(o.recorded_at, 21, 6) AS INTEGER) AS t,
       CAST(strftime('%s', substr(o.ingested_at, 1, 19)) AS INTEGER) * 1000000
           + CAST(substr(o.ingested_at, 21, 6) AS INTEGER) AS ing,
       CASE WHEN o.unit IS NULL THEN '{"value":'
            WHEN o.unit NOT GLOB '*[^ -~]*' AND instr(o.unit, '"') = 0 AND instr(o.unit, '\') = 0
                THEN '{"unit":' || json_quote(o.unit) || ',"value":' END AS prefix
FROM signal_samples_0006 o;
ALTER TABLE m0008 ADD COLUMN vt TEXT;
UPDATE m0008 SET vt = substr(body, length(prefix) + 1, length(body) - length(prefix) - 1)
WHERE prefix IS NOT NULL AND value_num IS NOT NULL AND substr(body, 1, length(prefix)) = prefix
  AND substr(body, -1) = '}';
ALTER TABLE m0008 ADD COLUMN shape INTEGER NOT NULL DEFAULT 0;
UPDATE m0008 SET shape = 1
WHERE vt IS NOT NULL AND ((vt = 'true' AND value_num = 1) OR (vt = 'false' AND value_num = 0));
UPDATE m0008 SET shape = 2 + CASE WHEN instr(vt, '.') > 0 THEN length(vt) - instr(vt, '.') ELSE 0 END
WHERE vt IS NOT NULL AND shape = 0 AND vt GLOB '[0-9-]*' AND vt NOT GLOB '*[^0-9.-]*'
  AND length(replace(ltrim(vt, '-0.'), '.', '')) <= 15
  AND (CASE WHEN instr(vt, '.') > 0 THEN length(vt) - instr(vt, '.') ELSE 0 END) <= 15
  AND vt = printf('%.' || (CASE WHEN instr(vt, '.') > 0 THEN length(vt) - instr(vt, '.') ELSE 0 END) || 'f',
                  value_num);

INSERT INTO sample_series (vehicle_id, code)
SELECT DISTINCT vehicle_id, code FROM m0008 ORDER BY vehicle_id, code;
INSERT INTO sample_units (unit)
SELECT DISTINCT unit FROM m0008 WHERE unit IS NOT NULL ORDER BY unit;
INSERT INTO sample_bodies (body)
SELECT DISTINCT body FROM m0008 WHERE shape = 0 ORDER BY body;
INSERT INTO samples (series_id, recorded_at, value_num, unit_id, body_id, form, ingest_delay_us)
SELECT s.series_id, o.t, o.value_num, u.unit_id, b.body_id,
       o.shape * 2 + CASE WHEN o.source = 'webhook' THEN 1 ELSE 0 END, o.ing - o.t
FROM m0008 o
JOIN sample_series s ON s.vehicle_id = o.vehicle_id AND s.code = o.code
LEFT JOIN sample_units u ON u.unit = o.unit
LEFT JOIN sample_bodies b ON o.shape = 0 AND b.body = o.body;
DROP TABLE m0008;
DROP TABLE signal_samples_0006;

-- The dashboard views, as before (0002, 0004) over the signal_samples view, except
-- dash_latest_reading, which joins the newest sample by its primary key (series_id, t) rather
-- than comparing decoded text.
CREATE VIEW dash_latest_reading AS
SELECT st.vehicle_id, st.code, s.recorded_at AS time, s.value_num AS value,
       CASE
             WHEN s.unit IS NULL THEN CASE WHEN json_extract(s.body, '$.percentage') IS NOT NULL THEN 'percent' END
             WHEN lower(trim(s.unit)) IN ('km', 'kilometer', 'kilometers', 'kilometre', 'kilometres')
                 THEN 'kilometers'
             WHEN lower(trim(s.unit)) IN ('mi', 'mile', 'miles') THEN 'miles'
             WHEN lower(trim(s.unit)) IN ('percent', 'percentage', '%') THEN 'percent'
             WHEN lower(trim(s.unit)) IN ('kwh', 'kwhr', 'kw-hr', 'kilowatt-hours', 'kilowatthours')
                 THEN 'kWh'
             WHEN lower(trim(s.unit)) IN ('v', 'volt', 'volts') THEN 'volts'
             WHEN lower(trim(s.unit)) IN ('l', 'liter', 'liters', 'litre', 'litres') THEN 'liters'
             ELSE s.unit END AS unit,
       s.body AS body, s.source, st.status, st.observed_at AS status_observed_at,
       s.unit AS unit_sent
FROM signal_status st
JOIN sample_series ss ON ss.vehicle_id = st.vehicle_id AND ss.code = st.code
JOIN sample_rows s
  ON s.series_id = ss.series_id
 AND s.t = (SELECT max(m.recorded_at) FROM samples m WHERE m.series_id = ss.series_id);

-- Age of each vehicle's newest reading: fresh (<= 1 h), stale (<= 24 h), lost, or no data.
CREATE VIEW dash_fleet_freshness AS
SELECT v.vehicle_id, v.label, v.status AS vehicle_status, l.time,
       (julianday('now') - julianday(l.time)) * 86400.0 AS age_seconds,
       CASE WHEN l.time IS NULL THEN 'no data'
            WHEN (julianday('now') - julianday(l.time)) * 86400.0 <= 3600 THEN 'fresh'
            WHEN (julianday('now') - julianday(l.time)) * 86400.0 <= 86400 THEN 'stale'
            ELSE 'lost' END AS freshness
FROM dash_vehicles v
LEFT JOIN (SELECT vehicle_id, max(time) AS time FROM dash_latest_reading GROUP BY vehicle_id) l
  ON l.vehicle_id = v.vehicle_id;


CREATE VIEW dash_soc_range AS
SELECT recorded_at AS time, vehicle_id,
       max(CASE WHEN code = 'tractionbattery-stateofcharge' THEN value_num END) AS state_of_charge,
       max(CASE WHEN code = 'tractionbattery-range'
                THEN value_num * (CASE WHEN lower(trim(unit)) IN ('mi', 'mile', 'miles') THEN 1.609344 ELSE 1.0 END) END) AS range_km,
       max(CASE WHEN code = 'internalcombustionengine-fuellevel' THEN value_num END) AS fuel_level,
       max(CASE WHEN code = 'internalcombustionengine-range'
                THEN value_num * (CASE WHEN lower(trim(unit)) IN ('mi', 'mile', 'miles') THEN 1.609344 ELSE 1.0 END) END) AS fuel_range_km
FROM signal_samples
WHERE code IN ('tractionbattery-stateofcharge', 'tractionbattery-range',
               'internalcombustionengine-fuellevel', 'internalcombustionengine-range')
GROUP BY vehicle_id, recorded_at;

CREATE VIEW dash_distance_daily AS
WITH odo AS (
    SELECT vehicle_id, recorded_at, value_num * (CASE WHEN lower(trim(unit)) IN ('mi', 'mile', 'miles') THEN 1.609344 ELSE 1.0 END) AS km
    FROM signal_samples
    WHERE code = 'odometer-traveleddistance' AND value_num IS NOT NULL
), steps AS (
    SELECT vehicle_id, recorded_at, km,
           km - lag(km) OVER (PARTITION BY vehicle_id ORDER BY recorded_at) AS delta
    FROM odo
)
SELECT substr(recorded_at, 1, 10) || 'T00:00:00.000000Z' AS time, vehicle_id,
       sum(CASE WHEN delta > 0 THEN delta ELSE 0.0 END) AS distance_km,
       min(km) AS odometer_min_km, max(km) AS odometer_max_km, count(*) AS readings
FROM steps
GROUP BY vehicle_id, substr(recorded_at, 1, 10);

-- Charging sessions from charge-ischarging: a session is a run of consecutive "true" readings.
-- `time` is its first charging reading, `time_end` the first reading after it that is not
-- charging (NULL while it is ongoing); state of charge is the newest at or before each end.
CREATE VIEW dash_charging_sessions AS
WITH c AS (
    SELECT vehicle_id, recorded_at, CASE WHEN value_num > 0 THEN 1 ELSE 0 END AS charging,
           lag(CASE WHEN value_num > 0 THEN 1 ELSE 0 END) OVER w AS prev_charging,
           lead(recorded_at) OVER w AS next_time
    FROM signal_samples
    WHERE code = 'charge-ischarging' AND value_num IS NOT NULL
    WINDOW w AS (PARTITION BY vehicle_id ORDER BY recorded_at)
), runs AS (
    SELECT *, sum(CASE WHEN prev_charging IS NULL OR prev_charging <> charging THEN 1 ELSE 0 END)
                  OVER (PARTITION BY vehicle_id ORDER BY recorded_at) AS run
    FROM c
), sessions AS (
    SELECT vehicle_id, min(recorded_at) AS time, max(recorded_at) AS last_charging_time,
           CASE WHEN count(next_time) < count(*) THEN NULL ELSE max(next_time) END AS time_end,
           count(*) AS readings
    FROM runs WHERE charging = 1
    GROUP BY vehicle_id, run
)
SELECT vehicle_id, time, time_end, last_charging_time,
       CASE WHEN time_end IS NULL THEN 1 ELSE 0 END AS ongoing,
       -- julianday() is a double of days: exact to about a millisecond, so round to that.
       round((julianday(coalesce(time_end, last_charging_time)) - julianday(time)) * 86400.0, 3)
           AS duration_seconds,
       readings,
       (SELECT s.value_num FROM signal_samples s
        WHERE s.vehicle_id = sessions.vehicle_id AND s.code = 'tractionbattery-stateofcharge'
          AND s.recorded_at <= sessions.time
        ORDER BY s.recorded_at DESC LIMIT 1) AS soc_start,
       (SELECT s.value_num FROM signal_samples s
        WHERE s.vehicle_id = sessions.vehicle_id AND s.code = 'tractionbattery-stateofcharge'
          AND s.recorded_at <= coalesce(sessions.time_end, sessions.last_charging_time)
        ORDER BY s.recorded_at DESC LIMIT 1) AS soc_end
FROM sessions;

-- Last known position of each vehicle (from location-preciselocation).
CREATE VIEW dash_last_location AS
SELECT vehicle_id, time,
       CAST(json_extract(body, '$.latitude') AS REAL) AS latitude,
       CAST(json_extract(body, '$.longitude') AS REAL) AS longitude,
       CAST(json_extract(body, '$.heading') AS REAL) AS heading,
       json_extract(body, '$.locationType') AS location_type
FROM dash_latest_reading
WHERE code = 'location-preciselocation';

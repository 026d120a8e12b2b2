-- Dashboard views, PostgreSQL flavour. migrations/sqlite/0002_dashboards.sql defines the same
-- views with the same names and columns. `time` is the panel's time column (TIMESTAMPTZ, UTC);
-- distances are kilometres whatever unit the car reported (miles are converted).

-- TimescaleDB: when the extension is installed in this database before this migration runs,
-- signal_samples becomes a hypertable (7-day chunks) instead of the native monthly partitions;
-- the daemon then skips partition creation and applies retention with drop_chunks. The rows
-- already stored are moved over. Not tested here (no TimescaleDB on the build machine).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        ALTER TABLE signal_samples RENAME TO signal_samples_native;
        CREATE TABLE signal_samples
            (LIKE signal_samples_native INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        ALTER TABLE signal_samples ADD PRIMARY KEY (vehicle_id, code, recorded_at);
        PERFORM create_hypertable('signal_samples', 'recorded_at',
                                  chunk_time_interval => INTERVAL '7 days');
        INSERT INTO signal_samples SELECT * FROM signal_samples_native;
        DROP TABLE signal_samples_native;
    END IF;
END
$$;

-- One row per known vehicle, with a label for a dashboard's vehicle picker.
CREATE VIEW dash_vehicles AS
SELECT vehicle_id,
       trim(coalesce(make, '') || ' ' || coalesce(model, '') || ' ' || coalesce(CAST(year AS TEXT), ''))
           || ' [' || substr(vehicle_id, 1, 8) || ']' AS label,
       make, model, year, powertrain_type, status
FROM vehicles;

-- The newest stored reading of each (vehicle, signal), with the signal's latest status. Driven
-- by signal_status (one row per vehicle and signal, written with every poll and webhook), so
-- each row costs one primary-key probe per partition instead of a scan of all samples.
CREATE VIEW dash_latest_reading AS
SELECT st.vehicle_id, st.code, s.recorded_at AS time, s.value_num AS value, s.unit,
       s.body::text AS body, s.source, st.status, st.observed_at AS status_observed_at
FROM signal_status st
CROSS JOIN LATERAL (
    SELECT m.recorded_at, m.value_num, m.unit, m.body, m.source
    FROM signal_samples m
    WHERE m.vehicle_id = st.vehicle_id AND m.code = st.code
    ORDER BY m.recorded_at DESC
    LIMIT 1
) s;

-- Age of each vehicle's newest reading: fresh (<= 1 h), stale (<= 24 h), lost, or no data.
CREATE VIEW dash_fleet_freshness AS
SELECT v.vehicle_id, v.label, v.status AS vehicle_status, l.time,
       EXTRACT(EPOCH FROM (now() - l.time))::float8 AS age_seconds,
       CASE WHEN l.time IS NULL THEN 'no data'
            WHEN now() - l.time <= INTERVAL '1 hour' THEN 'fresh'
            WHEN now() - l.time <= INTERVAL '24 hours' THEN 'stale'
            ELSE 'lost' END AS freshness
FROM dash_vehicles v
LEFT JOIN (SELECT vehicle_id, max(time) AS time FROM dash_latest_reading GROUP BY vehicle_id) l
  ON l.vehicle_id = v.vehicle_id;

-- Energy over time: one row per (vehicle, reading time) with whichever of state of charge,
-- EV range, fuel level and fuel range were read at that time (NULL for the others).
CREATE VIEW dash_soc_range AS
SELECT recorded_at AS time, vehicle_id,
       max(CASE WHEN code = 'tractionbattery-stateofcharge' THEN value_num END) AS state_of_charge,
       max(CASE WHEN code = 'tractionbattery-range'
                THEN value_num * (CASE WHEN unit = 'miles' THEN 1.609344 ELSE 1.0 END) END) AS range_km,
       max(CASE WHEN code = 'internalcombustionengine-fuellevel' THEN value_num END) AS fuel_level,
       max(CASE WHEN code = 'internalcombustionengine-range'
                THEN value_num * (CASE WHEN unit = 'miles' THEN 1.609344 ELSE 1.0 END) END) AS fuel_range_km
FROM signal_samples
WHERE code IN ('tractionbattery-stateofcharge', 'tractionbattery-range',
               'internalcombustionengine-fuellevel', 'internalcombustionengine-range')
GROUP BY vehicle_id, recorded_at;

-- Distance per vehicle and UTC day from the odometer: the increase between consecutive readings
-- is booked on the day of the later one (a decrease, e.g. a reset, counts as zero).
CREATE VIEW dash_distance_daily AS
WITH odo AS (
    SELECT vehicle_id, recorded_at,
           value_num * (CASE WHEN unit = 'miles' THEN 1.609344 ELSE 1.0 END) AS km
    FROM signal_samples
    WHERE code = 'odometer-traveleddistance' AND value_num IS NOT NULL
), steps AS (
    SELECT vehicle_id, recorded_at, km,
           km - lag(km) OVER (PARTITION BY vehicle_id ORDER BY recorded_at) AS delta
    FROM odo
)
SELECT date_trunc('day', recorded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS time, vehicle_id,
       sum(CASE WHEN delta > 0 THEN delta ELSE 0.0 END) AS distance_km,
       min(km) AS odometer_min_km, max(km) AS odometer_max_km, count(*) AS readings
FROM steps
GROUP BY vehicle_id, date_trunc('day', recorded_at AT TIME ZONE 'UTC');

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
       CASE WHEN time_end IS NULL THEN 1 ELSE 0 END::bigint AS ongoing,
       EXTRACT(EPOCH FROM (coalesce(time_end, last_charging_time) - time))::float8 AS duration_seconds,
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
       (body::jsonb ->> 'latitude')::float8 AS latitude,
       (body::jsonb ->> 'longitude')::float8 AS longitude,
       (body::jsonb ->> 'heading')::float8 AS heading,
       body::jsonb ->> 'locationType' AS location_type
FROM dash_latest_reading
WHERE code = 'location-preciselocation';

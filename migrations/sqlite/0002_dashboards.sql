-- Dashboard views, SQLite flavour. migrations/postgres/0002_dashboards.sql defines the same
-- views with the same names and columns; dashboards/README in the top-level README explains them.
-- `time` is the panel's time column: TEXT in the stored UTC format (YYYY-MM-DDTHH:MM:SS.ffffffZ).
-- Distances are kilometres whatever unit the car reported (miles are converted).

-- One row per known vehicle, with a label for a dashboard's vehicle picker.
CREATE VIEW dash_vehicles AS
SELECT vehicle_id,
       trim(coalesce(make, '') || ' ' || coalesce(model, '') || ' ' || coalesce(CAST(year AS TEXT), ''))
           || ' [' || substr(vehicle_id, 1, 8) || ']' AS label,
       make, model, year, powertrain_type, status
FROM vehicles;

-- The newest stored reading of each (vehicle, signal), with the signal's latest status. Driven
-- by signal_status (one row per vehicle and signal, written with every poll and webhook), so
-- each row costs one primary-key seek instead of a scan of all samples.
CREATE VIEW dash_latest_reading AS
SELECT st.vehicle_id, st.code, s.recorded_at AS time, s.value_num AS value, s.unit,
       s.body AS body, s.source, st.status, st.observed_at AS status_observed_at
FROM signal_status st
JOIN signal_samples s
  ON s.vehicle_id = st.vehicle_id AND s.code = st.code
 AND s.recorded_at = (SELECT max(m.recorded_at) FROM signal_samples m
                      WHERE m.vehicle_id = st.vehicle_id AND m.code = st.code);

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

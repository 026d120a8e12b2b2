-- Units as the dashboards show them. Samples keep the unit exactly as Smartcar sent it
-- (`percent` or `percentage`, `kilometers` or `km`, `miles` or `mi`, `kWh` or `kWhr`, none for
-- the legacy state-of-charge body `{"percentage": 75}`); these views read every spelling as one:
-- dash_latest_reading.unit is the normalised unit (kilometers, miles, percent, kWh, volts,
-- liters, else as sent) and the new last column unit_sent the unit as stored; the kilometre
-- columns of dash_soc_range and dash_distance_daily convert every spelling of miles.
-- Column names, types and order are unchanged apart from the added unit_sent, so panels keep
-- working. Migration 0002 stays as applied; this one redefines the three views.

DROP VIEW dash_latest_reading;
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
JOIN signal_samples s
  ON s.vehicle_id = st.vehicle_id AND s.code = st.code
 AND s.recorded_at = (SELECT max(m.recorded_at) FROM signal_samples m
                      WHERE m.vehicle_id = st.vehicle_id AND m.code = st.code);

DROP VIEW dash_soc_range;
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

DROP VIEW dash_distance_daily;
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

-- Read-only role for dashboards (Grafana) on the PostgreSQL backend.
--
--   psql "$DATABASE_URL" -f scripts/create-reader-role.sql
--   psql "$DATABASE_URL" -c "ALTER ROLE smartcar_reader PASSWORD '…'"   -- or \password smartcar_reader
--
-- Run it as the owner of the smartcar-sync schema, after the daemon has migrated the database
-- (the views must exist), and again after an upgrade that adds views. Idempotent. The role can
-- log in but gets no password here: choose one yourself (above), or use peer/cert auth.
-- It may SELECT the dashboard views and the public tables (users, vehicles, signal_samples,
-- signal_status) and nothing else: not the queue, the token audit or the webhook log, and it
-- can write nothing (no INSERT/UPDATE/DELETE grants, no CREATE, read-only transactions).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'smartcar_reader') THEN
        CREATE ROLE smartcar_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO smartcar_reader', current_database());
END
$$;

-- Belt and braces: every transaction of this role is read-only unless it explicitly asks
-- otherwise, and even then the grants below allow no writes.
ALTER ROLE smartcar_reader SET default_transaction_read_only = on;
ALTER ROLE smartcar_reader SET statement_timeout = '60s';

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM smartcar_reader;
REVOKE CREATE ON SCHEMA public FROM smartcar_reader;
GRANT USAGE ON SCHEMA public TO smartcar_reader;

GRANT SELECT ON users, vehicles, signal_samples, signal_status TO smartcar_reader;
GRANT SELECT ON dash_vehicles, dash_latest_reading, dash_fleet_freshness, dash_soc_range,
                dash_distance_daily, dash_charging_sessions, dash_last_location
    TO smartcar_reader;

-- smartcar-sync schema, PostgreSQL flavour. Kept version for version with migrations/sqlite.
-- Integers are BIGINT throughout so both backends decode them as i64.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    source         TEXT NOT NULL CHECK (source IN ('cli', 'connect', 'webhook', 'discovery')),
    created_at     TIMESTAMPTZ NOT NULL,
    last_synced_at TIMESTAMPTZ
);

CREATE TABLE vehicles (
    vehicle_id        TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    connection_id     TEXT,
    make              TEXT,
    model             TEXT,
    year              BIGINT,
    powertrain_type   TEXT,
    mode              TEXT,
    permissions       JSONB NOT NULL DEFAULT '[]'::jsonb,
    status            TEXT NOT NULL DEFAULT 'connected' CHECK (status IN
                        ('connected', 'disconnected', 'needs_reconnect', 'permission_denied',
                         'billing_limited', 'incompatible')),
    status_reason     TEXT,
    status_request_id TEXT,
    status_changed_at TIMESTAMPTZ NOT NULL,
    blocked_until     TIMESTAMPTZ,
    first_seen_at     TIMESTAMPTZ NOT NULL,
    last_seen_at      TIMESTAMPTZ NOT NULL,
    last_polled_at    TIMESTAMPTZ
);
CREATE INDEX vehicles_user_id ON vehicles (user_id);
CREATE INDEX vehicles_status ON vehicles (status);

-- Partitioned by month on recorded_at: retention drops whole partitions. Monthly partitions
-- (signal_samples_YYYYMM) are created by the daemon ahead of time; the DEFAULT partition
-- catches anything outside them so an insert never fails for want of a partition.
-- First writer wins: inserts use ON CONFLICT DO NOTHING on the primary key.
CREATE TABLE signal_samples (
    vehicle_id  TEXT NOT NULL,
    code        TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    value_num   DOUBLE PRECISION,
    unit        TEXT,
    body        JSONB NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('poll', 'webhook')),
    ingested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (vehicle_id, code, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE TABLE signal_samples_default PARTITION OF signal_samples DEFAULT;
CREATE INDEX signal_samples_recorded_at ON signal_samples (recorded_at);

CREATE TABLE signal_status (
    vehicle_id  TEXT NOT NULL,
    code        TEXT NOT NULL,
    status      TEXT NOT NULL,
    error_type  TEXT,
    error_code  TEXT,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (vehicle_id, code)
);

CREATE TABLE jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT NOT NULL,
    subject         TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'done', 'dead')),
    run_at          TIMESTAMPTZ NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    last_request_id TEXT,
    note            TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ
);
-- At most one open job per kind and subject: enqueueing a duplicate is a no-op.
CREATE UNIQUE INDEX jobs_one_open ON jobs (kind, subject) WHERE state IN ('pending', 'running');
CREATE INDEX jobs_state_run_at ON jobs (state, run_at);
CREATE INDEX jobs_state_lease_until ON jobs (state, lease_until);
CREATE INDEX jobs_state_finished_at ON jobs (state, finished_at);

-- Last tick per cron schedule; advanced by compare-and-set so one daemon wins each tick.
CREATE TABLE schedule_ticks (
    schedule   TEXT PRIMARY KEY,
    tick_at    TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- App-wide pause (e.g. an app-level rate limit): a single row.
CREATE TABLE app_pause (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    paused_until TIMESTAMPTZ NOT NULL,
    reason       TEXT NOT NULL,
    request_id   TEXT,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- Per application token: fingerprint is the first 8 hex of SHA-256 of the token, never the token.
CREATE TABLE token_audit (
    fingerprint        TEXT PRIMARY KEY,
    issued_at          TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL,
    calls_ok           BIGINT NOT NULL DEFAULT 0,
    calls_client_error BIGINT NOT NULL DEFAULT 0,
    calls_server_error BIGINT NOT NULL DEFAULT 0,
    calls_unauthorized BIGINT NOT NULL DEFAULT 0,
    calls_rate_limited BIGINT NOT NULL DEFAULT 0,
    updated_at         TIMESTAMPTZ NOT NULL
);

-- Webhook deliveries already handled (deduplication by event id).
CREATE TABLE webhook_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    vehicle_id  TEXT,
    received_at TIMESTAMPTZ NOT NULL
);

-- smartcar-sync schema, SQLite flavour. Kept version for version with migrations/postgres.
-- Timestamps are TEXT in one fixed sortable UTC format: YYYY-MM-DDTHH:MM:SS.ffffffZ.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('cli', 'connect', 'webhook', 'discovery')),
    created_at     TEXT NOT NULL,
    last_synced_at TEXT
);

CREATE TABLE vehicles (
    vehicle_id        TEXT PRIMARY KEY NOT NULL,
    user_id           TEXT NOT NULL,
    connection_id     TEXT,
    make              TEXT,
    model             TEXT,
    year              INTEGER,
    powertrain_type   TEXT,
    mode              TEXT,
    permissions       TEXT NOT NULL DEFAULT '[]',
    status            TEXT NOT NULL DEFAULT 'connected' CHECK (status IN
                        ('connected', 'disconnected', 'needs_reconnect', 'permission_denied',
                         'billing_limited', 'incompatible')),
    status_reason     TEXT,
    status_request_id TEXT,
    status_changed_at TEXT NOT NULL,
    blocked_until     TEXT,
    first_seen_at     TEXT NOT NULL,
    last_seen_at      TEXT NOT NULL,
    last_polled_at    TEXT
);
CREATE INDEX vehicles_user_id ON vehicles (user_id);
CREATE INDEX vehicles_status ON vehicles (status);

-- First writer wins: inserts use ON CONFLICT DO NOTHING on the primary key.
CREATE TABLE signal_samples (
    vehicle_id  TEXT NOT NULL,
    code        TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    value_num   REAL,
    unit        TEXT,
    body        TEXT NOT NULL CHECK (json_valid(body)),
    source      TEXT NOT NULL CHECK (source IN ('poll', 'webhook')),
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (vehicle_id, code, recorded_at)
) WITHOUT ROWID;
-- Retention deletes by time.
CREATE INDEX signal_samples_recorded_at ON signal_samples (recorded_at);

CREATE TABLE signal_status (
    vehicle_id  TEXT NOT NULL,
    code        TEXT NOT NULL,
    status      TEXT NOT NULL,
    error_type  TEXT,
    error_code  TEXT,
    observed_at TEXT NOT NULL,
    PRIMARY KEY (vehicle_id, code)
) WITHOUT ROWID;

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    subject         TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'done', 'dead')),
    run_at          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TEXT,
    last_error      TEXT,
    last_request_id TEXT,
    note            TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    finished_at     TEXT
);
-- At most one open job per kind and subject: enqueueing a duplicate is a no-op.
CREATE UNIQUE INDEX jobs_one_open ON jobs (kind, subject) WHERE state IN ('pending', 'running');
CREATE INDEX jobs_state_run_at ON jobs (state, run_at);
CREATE INDEX jobs_state_lease_until ON jobs (state, lease_until);
CREATE INDEX jobs_state_finished_at ON jobs (state, finished_at);

-- Last tick per cron schedule; advanced by compare-and-set so one daemon wins each tick.
CREATE TABLE schedule_ticks (
    schedule   TEXT PRIMARY KEY NOT NULL,
    tick_at    TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- App-wide pause (e.g. an app-level rate limit): a single row.
CREATE TABLE app_pause (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    paused_until TEXT NOT NULL,
    reason       TEXT NOT NULL,
    request_id   TEXT,
    updated_at   TEXT NOT NULL
);

-- Per application token: fingerprint is the first 8 hex of SHA-256 of the token, never the token.
CREATE TABLE token_audit (
    fingerprint        TEXT PRIMARY KEY NOT NULL,
    issued_at          TEXT NOT NULL,
    expires_at         TEXT NOT NULL,
    calls_ok           INTEGER NOT NULL DEFAULT 0,
    calls_client_error INTEGER NOT NULL DEFAULT 0,
    calls_server_error INTEGER NOT NULL DEFAULT 0,
    calls_unauthorized INTEGER NOT NULL DEFAULT 0,
    calls_rate_limited INTEGER NOT NULL DEFAULT 0,
    updated_at         TEXT NOT NULL
);

-- Webhook deliveries already handled (deduplication by event id).
CREATE TABLE webhook_events (
    event_id    TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    vehicle_id  TEXT,
    received_at TEXT NOT NULL
);

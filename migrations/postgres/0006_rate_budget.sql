-- One rate budget for the whole application, shared by every process on this database.
-- `daemons`: each process that calls the API (`run`, `sync-once`) heartbeats its row every
-- second; the live ones split the application's rate, and a process whose heartbeat is stale
-- has its running jobs handed back at once instead of after their lease.
CREATE TABLE daemons (
    daemon_id         TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    host              TEXT NOT NULL,
    pid               BIGINT NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    heartbeat_at      TIMESTAMPTZ NOT NULL,
    calls             BIGINT NOT NULL DEFAULT 0,
    throttled_app     BIGINT NOT NULL DEFAULT 0,
    throttled_vehicle BIGINT NOT NULL DEFAULT 0
);
-- The adaptive part: when the application was last throttled (429 SMARTCAR_API) and at what
-- fraction of the configured rate. Every process derives the same current rate from it.
CREATE TABLE rate_budget (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    throttled_at       TIMESTAMPTZ,
    factor_at_throttle DOUBLE PRECISION
);
INSERT INTO rate_budget (id) VALUES (1);

-- One rate budget for the whole application, shared by every process on this database.
-- `daemons`: each process that calls the API (`run`, `sync-once`) heartbeats its row every
-- second; the live ones split the application's rate, and a process whose heartbeat is stale
-- has its running jobs handed back at once instead of after their lease.
CREATE TABLE daemons (
    daemon_id         TEXT PRIMARY KEY NOT NULL,
    kind              TEXT NOT NULL,
    host              TEXT NOT NULL,
    pid               INTEGER NOT NULL,
    started_at        TEXT NOT NULL,
    heartbeat_at      TEXT NOT NULL,
    calls             INTEGER NOT NULL DEFAULT 0,
    throttled_app     INTEGER NOT NULL DEFAULT 0,
    throttled_vehicle INTEGER NOT NULL DEFAULT 0
);
-- The adaptive part: when the application was last throttled (429 SMARTCAR_API) and at what
-- fraction of the configured rate. Every process derives the same current rate from it.
CREATE TABLE rate_budget (
    id                 INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    throttled_at       TEXT,
    factor_at_throttle REAL
);
INSERT INTO rate_budget (id) VALUES (1);

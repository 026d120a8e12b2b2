-- The per-vehicle allowance (issue 11): every API call made for a vehicle is counted here,
-- per billing period, by every daemon on this database, before it is sent. `period_start` is
-- the start of the period (calendar month or epoch-aligned duration, `[budget] period`).
CREATE TABLE vehicle_calls (
    vehicle_id   TEXT NOT NULL,
    period_start TEXT NOT NULL,
    calls        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, period_start)
) WITHOUT ROWID;
-- What the planner knows of each vehicle: the state its last poll showed, the odometer and
-- location it compares the next poll with, and what it planned.
CREATE TABLE vehicle_plan (
    vehicle_id   TEXT PRIMARY KEY NOT NULL,
    state        TEXT NOT NULL DEFAULT 'unknown',
    fingerprint  TEXT,
    interval_ms  INTEGER,
    next_poll_at TEXT,
    updated_at   TEXT NOT NULL
);
-- The subscriptions the connections sync keeps (contract §8), so vanished vehicles can be
-- unsubscribed.
CREATE TABLE webhook_subscriptions (
    vehicle_id    TEXT NOT NULL,
    webhook_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    subscribed_at TEXT NOT NULL,
    PRIMARY KEY (vehicle_id, webhook_id)
);
-- The newest pushed reading of a vehicle, for the planner.
CREATE INDEX signal_samples_webhook ON signal_samples (vehicle_id, ingested_at)
    WHERE source = 'webhook';

-- Consecutive 429 RATE_LIMIT/VEHICLE answers per vehicle. Each one defers the vehicle's poll for
-- longer (Retry-After is the floor, the wait doubles per answer up to queue.max_retry_after);
-- a successful poll sets it back to 0. Kept in the database, like every other wait, so a
-- restart or another daemon continues the backoff instead of starting it over.
ALTER TABLE vehicles ADD COLUMN throttle_streak INTEGER NOT NULL DEFAULT 0;

-- When a webhook last brought a new reading of the vehicle: the allowance planner skips a
-- poll whose readings were pushed within its interval. Migration 0007 found it with an index on
-- the old signal_samples table, which 0008 replaced by a view over the compact layout; a
-- column written in the webhook delivery's own transaction answers it without reading samples.
ALTER TABLE vehicles ADD COLUMN last_pushed_at TIMESTAMPTZ;
UPDATE vehicles SET last_pushed_at = (
    SELECT MAX(s.ingested_at) FROM signal_samples s
    WHERE s.vehicle_id = vehicles.vehicle_id AND s.source = 'webhook'
);

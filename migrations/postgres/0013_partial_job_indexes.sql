-- The queue's indexes cover only the jobs each one serves. The claim reads pending jobs by
-- (run_at, id) and running ones by (lease_until, id); the purge and the dead-job reports read
-- finished ones by finished_at. Each index used to hold every job, so every state change (a
-- claim, a completion: neither is a HOT update) added an entry to all five of the table's
-- indexes, and the claim's scan stepped over the entries of jobs no longer pending until vacuum
-- removed them. A partial index gets an entry only while its state holds: a claim now writes
-- three entries, a completion two, and the pending index holds pending jobs (and the dead
-- entries of those just claimed) rather than the whole history.
CREATE INDEX jobs_pending_run_at ON jobs (run_at, id) WHERE state = 'pending';
CREATE INDEX jobs_running_lease_until ON jobs (lease_until, id) WHERE state = 'running';
CREATE INDEX jobs_finished_at ON jobs (state, finished_at) WHERE state IN ('done', 'dead');
DROP INDEX jobs_state_run_at_id;
DROP INDEX jobs_state_lease_until_id;
DROP INDEX jobs_state_finished_at;

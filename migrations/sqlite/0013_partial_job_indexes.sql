-- The queue's indexes cover only the jobs each one serves (see
-- migrations/postgres/0013_partial_job_indexes.sql): a state change writes fewer index entries,
-- and the claim's index holds only what it may claim. SQLite's indexes end with the rowid,
-- which is the job id, so (run_at) orders as (run_at, id).
CREATE INDEX jobs_pending_run_at ON jobs (run_at) WHERE state = 'pending';
CREATE INDEX jobs_running_lease_until ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished_at ON jobs (state, finished_at) WHERE state IN ('done', 'dead');
DROP INDEX jobs_state_run_at;
DROP INDEX jobs_state_lease_until;
DROP INDEX jobs_state_finished_at;

-- The claim takes due jobs in (run_at, id) order (and expired leases in (lease_until, id)
-- order). With (state, run_at) alone, PostgreSQL had to fetch and sort every job sharing the
-- first run_at to find the lowest id - a cycle enqueues thousands at the same instant - so one
-- claim cost ~2 ms and claims were most of the database's time in the no-limit cycle bench.
-- With the id in the index the order is the index's, and the claim stops at its first
-- unlocked row. SQLite needs nothing: its indexes end with the rowid, which is the id.
CREATE INDEX jobs_state_run_at_id ON jobs (state, run_at, id);
CREATE INDEX jobs_state_lease_until_id ON jobs (state, lease_until, id);
DROP INDEX jobs_state_run_at;
DROP INDEX jobs_state_lease_until;

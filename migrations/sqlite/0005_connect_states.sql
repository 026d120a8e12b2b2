-- Connect states: the daemon issues each Connect URL with a random, expiring, single-use
-- `state`; the callback redeems it. Only the SHA-256 of the state is stored, so read access to
-- the database gives no usable state. Externally signed states (http.connect_state_secret)
-- are recorded on first use, which makes them single-use too.
CREATE TABLE connect_states (
    state_hash TEXT PRIMARY KEY NOT NULL,
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    user_id    TEXT
);
CREATE INDEX connect_states_expires_at ON connect_states (expires_at);
-- The registration bound counts users Connect added in the last hour.
CREATE INDEX users_source_created_at ON users (source, created_at);

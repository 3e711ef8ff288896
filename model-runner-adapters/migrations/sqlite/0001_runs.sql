-- Run state for the embedded SQLite store. The whole run is kept as JSON in `doc` (written only
-- through ModelRun::apply); the columns beside it exist for filtering, ordering and the
-- compare-and-set guard, and are rewritten with every change.
CREATE TABLE runs (
    id TEXT PRIMARY KEY NOT NULL,           -- UUID v7, lowercase hyphenated: sorts by creation
    model TEXT NOT NULL,
    chain TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,            -- microseconds since the Unix epoch
    lease_expires_at INTEGER,
    next_attempt_at INTEGER,
    idempotency_key TEXT,
    doc TEXT NOT NULL
) STRICT;

CREATE INDEX runs_state_id ON runs (state, id);
CREATE INDEX runs_model_chain_id ON runs (model, chain, id);
CREATE INDEX runs_lease ON runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX runs_retry ON runs (next_attempt_at) WHERE state IN ('failed', 'expired');
CREATE INDEX runs_idempotency ON runs (idempotency_key, id) WHERE idempotency_key IS NOT NULL;

CREATE TABLE realtime_cursors (
    model TEXT NOT NULL,
    chain TEXT NOT NULL,
    block INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (model, chain)
) STRICT;

CREATE TABLE locks (
    name TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    until INTEGER NOT NULL
) STRICT;

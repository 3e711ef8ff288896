-- The PostgreSQL run store: runs (with their result summaries), idempotency keys, realtime
-- cursors and named leases. Every object is created unqualified so it lands in the first
-- schema of the connection's search_path (tests give each case its own schema).

CREATE TABLE runs (
    id               uuid        PRIMARY KEY,
    model            text        NOT NULL,
    model_version    text        NOT NULL,
    chain            text        NOT NULL,
    range_start      bigint      NOT NULL CHECK (range_start >= 0),
    range_end        bigint      NOT NULL CHECK (range_end >= range_start),
    mode             text        NOT NULL CHECK (mode IN ('realtime', 'backfill', 'adhoc')),
    kind             text        NOT NULL CHECK (kind IN ('reads', 'nonreads')),
    queue            text        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'queued', 'running',
                                     'succeeded', 'failed', 'expired', 'cancelled')),
    attempt          bigint      NOT NULL CHECK (attempt >= 1),
    max_attempts     bigint      NOT NULL CHECK (max_attempts >= 1),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    next_attempt_at  timestamptz,
    -- The per-run result summary: blocks processed, records written to the sink and the last
    -- error. The records themselves live in the sink.
    blocks_done      bigint      NOT NULL DEFAULT 0 CHECK (blocks_done >= 0),
    records_written  bigint      NOT NULL DEFAULT 0 CHECK (records_written >= 0),
    last_error       text,
    idempotency_key  text,
    -- Bumped by a trigger on every update, whoever writes: the adapter's compare-and-set also
    -- checks it, so a write computed from a stale copy of the row can never land.
    version          bigint      NOT NULL DEFAULT 1
);

CREATE FUNCTION runs_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_bump_version BEFORE UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_bump_version();

-- list by model (and chain/state), keyset on id.
CREATE INDEX runs_model_id ON runs (model, id);
-- list by state, keyset on id.
CREATE INDEX runs_state_id ON runs (state, id);
-- count_by_state of a model: an index-only scan.
CREATE INDEX runs_model_counts ON runs (model, chain, state) INCLUDE (mode, created_at);
-- The outbox: pending runs oldest first, then due retries.
CREATE INDEX runs_outbox_pending ON runs (id) WHERE state = 'pending';
CREATE INDEX runs_outbox_retries ON runs (next_attempt_at, id)
    WHERE state IN ('failed', 'expired') AND next_attempt_at IS NOT NULL;
-- Lease-expiry scans.
CREATE INDEX runs_leases ON runs (lease_expires_at, id) WHERE state = 'running';
-- claim_next: the oldest queued run of a queue.
CREATE INDEX runs_queued ON runs (queue, id) WHERE state = 'queued';
-- Runs of an idempotency key, in batch order.
CREATE INDEX runs_idempotency ON runs (idempotency_key, id) WHERE idempotency_key IS NOT NULL;

-- One row per idempotency key ever used; its primary key serialises racing resubmissions.
CREATE TABLE run_batches (
    idempotency_key text        PRIMARY KEY,
    created_at      timestamptz NOT NULL
);

CREATE TABLE realtime_cursors (
    model      text        NOT NULL,
    chain      text        NOT NULL,
    block      bigint      NOT NULL CHECK (block >= 0),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (model, chain)
);

CREATE TABLE named_locks (
    name       text        PRIMARY KEY,
    owner      text        NOT NULL,
    held_until timestamptz NOT NULL
);

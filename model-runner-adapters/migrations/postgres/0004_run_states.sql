-- Moves the mutable part of each run into its own narrow table, `run_states`.
--
-- A transition rewrote the whole `runs` row (about 300 bytes) and, since `state` is indexed, added
-- an entry to every one of its ten indexes, including those on columns that never change after
-- creation (model, chain, created_at). Measured with pgbench on the same server, two such
-- updates cost as much as three and a half plain single-row updates. Now a transition rewrites a
-- row of about half the size with the indexes the state-driven queries need, and `runs` (the
-- immutable description of a run, with its list indexes) is written once, at creation.
--
-- `run_states` repeats the few immutable columns its indexes and filters need (model, chain,
-- mode, created_at, queue) so that lists filtered by state, counts, outbox polling, lease-expiry
-- scans and claims are answered from it alone, index-only where they were before.
--
-- Existing runs are copied over with their state, so upgrading loses nothing. The copy and the
-- new indexes take a few minutes per 10 million runs with the tables locked: upgrade a large
-- store with `model-runner migrate` while the services are stopped. The row version is
-- now bumped by the compare-and-set statement itself (`version = version + 1`) rather than by a
-- trigger: every writer of `run_states` is the store, which always bumps it.

CREATE TABLE run_states (
    id               uuid        PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    model            text        NOT NULL,
    chain            text        NOT NULL,
    mode             text        NOT NULL,
    queue            text        NOT NULL,
    created_at       timestamptz NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'queued', 'running',
                                     'succeeded', 'failed', 'expired', 'cancelled')),
    attempt          bigint      NOT NULL CHECK (attempt >= 1),
    max_attempts     bigint      NOT NULL CHECK (max_attempts >= 1),
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
    -- Bumped by every compare-and-set, which also checks it, so a write computed from a stale
    -- copy of the row can never land.
    version          bigint      NOT NULL DEFAULT 1
) WITH (fillfactor = 80);

INSERT INTO run_states (id, model, chain, mode, queue, created_at, state, attempt, max_attempts,
                        updated_at, queued_at, started_at, finished_at, lease_owner,
                        lease_expires_at, next_attempt_at, blocks_done, records_written,
                        last_error, version)
SELECT id, model, chain, mode, queue, created_at, state, attempt, max_attempts, updated_at,
       queued_at, started_at, finished_at, lease_owner, lease_expires_at, next_attempt_at,
       blocks_done, records_written, last_error, version
FROM runs;

-- list by state, keyset on id.
CREATE INDEX run_states_state_id ON run_states (state, id);
-- list one state of a model; count a model's runs per state with an index-only scan.
CREATE INDEX run_states_model_state_id ON run_states (model, state, id)
    INCLUDE (chain, mode, created_at);
-- The outbox: pending runs oldest first, then due retries.
CREATE INDEX run_states_outbox_pending ON run_states (id) WHERE state = 'pending';
CREATE INDEX run_states_outbox_retries ON run_states (next_attempt_at, id)
    WHERE state IN ('failed', 'expired') AND next_attempt_at IS NOT NULL;
-- Lease-expiry scans.
CREATE INDEX run_states_leases ON run_states (lease_expires_at, id) WHERE state = 'running';
-- claim_next: the oldest queued run of a queue.
CREATE INDEX run_states_queued ON run_states (queue, id) WHERE state = 'queued';

-- `runs` keeps what never changes, with the indexes of lists not filtered by state:
-- runs_pkey, runs_model_id, runs_model_chain_id, runs_created_at and runs_idempotency.
DROP TRIGGER runs_bump_version ON runs;
DROP FUNCTION runs_bump_version();
DROP INDEX runs_state_id;
DROP INDEX runs_model_state_id;
DROP INDEX runs_outbox_pending;
DROP INDEX runs_outbox_retries;
DROP INDEX runs_leases;
DROP INDEX runs_queued;
ALTER TABLE runs
    DROP COLUMN state,
    DROP COLUMN attempt,
    DROP COLUMN max_attempts,
    DROP COLUMN updated_at,
    DROP COLUMN queued_at,
    DROP COLUMN started_at,
    DROP COLUMN finished_at,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_expires_at,
    DROP COLUMN next_attempt_at,
    DROP COLUMN blocks_done,
    DROP COLUMN records_written,
    DROP COLUMN last_error,
    DROP COLUMN version;

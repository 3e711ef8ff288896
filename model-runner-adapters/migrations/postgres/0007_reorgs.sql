-- Chain reorganisations in realtime.
--
-- `superseded` joins the run states: a realtime run whose blocks a reorganisation replaced,
-- replaced in turn by a run over the new branch.
--
-- `scheduled_blocks` keeps where the last block of each recent realtime run sat when the
-- scheduler created the run (number, hash, parent hash, as 0x-hex), so that it sees a
-- reorganisation replace it and walks back to the newest one the node still holds. Only the
-- reorganisation limit's depth below the cursor is kept.
ALTER TABLE run_states DROP CONSTRAINT run_states_state_check;
ALTER TABLE run_states ADD CONSTRAINT run_states_state_check CHECK (state IN ('pending', 'queued',
    'running', 'succeeded', 'failed', 'expired', 'cancelled', 'superseded'));

CREATE TABLE scheduled_blocks (
    model       text   NOT NULL,
    chain       text   NOT NULL,
    number      bigint NOT NULL CHECK (number >= 0),
    hash        text   NOT NULL,
    parent_hash text   NOT NULL,
    PRIMARY KEY (model, chain, number)
);

-- The realtime runs a reorganisation down to a block supersedes: the newest runs of one
-- (model, chain), found by their last block.
CREATE INDEX runs_realtime_end ON runs (model, chain, range_end) WHERE mode = 'realtime';

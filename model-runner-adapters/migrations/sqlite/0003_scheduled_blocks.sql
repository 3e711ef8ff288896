-- Where the last block of each recent realtime run sat when the scheduler created the run
-- (number, hash, parent hash, as 0x-hex), so that it sees a chain reorganisation replace it and
-- walks back to the newest one the node still holds. Only the reorganisation limit's depth
-- below the cursor is kept.
CREATE TABLE scheduled_blocks (
    model TEXT NOT NULL,
    chain TEXT NOT NULL,
    number INTEGER NOT NULL,
    hash TEXT NOT NULL,
    parent_hash TEXT NOT NULL,
    PRIMARY KEY (model, chain, number)
) STRICT;

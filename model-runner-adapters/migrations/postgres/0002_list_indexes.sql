-- Indexes found missing by the plan check at scale (`src/postgres/plans.rs`):
-- list by model and chain walked the model's runs of every chain;
CREATE INDEX runs_model_chain_id ON runs (model, chain, id);
-- list with `since` walked the primary key from the oldest run.
CREATE INDEX runs_created_at ON runs (created_at);

-- Found by the plan check at 10 million runs (`src/postgres/plans.rs`): listing one state of a
-- model (say its failed runs) walked every run of the model through `runs_model_counts`, whose
-- chain column sits between model and state. One index ordered (model, state, id) serves that
-- list exactly and still counts a model's runs per state with an index-only scan.
DROP INDEX runs_model_counts;
CREATE INDEX runs_model_state_id ON runs (model, state, id) INCLUDE (chain, mode, created_at);

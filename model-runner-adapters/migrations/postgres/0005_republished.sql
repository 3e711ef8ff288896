-- How many times the scheduler's reconciler published a run's message again because the run
-- stayed `queued` longer than the reconcile age (its message presumably lost). A constant
-- default: no table rewrite.
ALTER TABLE run_states ADD COLUMN republished integer NOT NULL DEFAULT 0;

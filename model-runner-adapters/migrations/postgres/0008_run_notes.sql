-- What a model counted during the attempt that succeeded (`ModelRun::notes`), as a JSON object
-- of counts by name, e.g. {"abi_mismatched_logs": 3}. A constant default: no table rewrite.
ALTER TABLE run_states ADD COLUMN notes text NOT NULL DEFAULT '{}';

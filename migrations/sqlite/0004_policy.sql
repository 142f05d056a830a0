-- OPA policy results of a run's plan (JSON list), and who overrode a soft-mandatory failure.
ALTER TABLE runs ADD COLUMN policy_results TEXT;
ALTER TABLE runs ADD COLUMN policy_override TEXT;

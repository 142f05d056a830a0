-- The cost estimate of a run's plan (JSON: prior/proposed/delta monthly cost, resources, unpriced).
ALTER TABLE runs ADD COLUMN cost_estimate TEXT;

-- The sha256 of the saved plan file, recorded when the plan is made and checked
-- before any apply: what was reviewed is what is applied.
ALTER TABLE runs ADD COLUMN plan_sha256 TEXT;

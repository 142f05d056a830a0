-- A claimed report carries a random lease token, like events and runs: a
-- sender finishes, retries, renews or releases only the claims it holds, so
-- two processes sharing an explicit node_id never touch each other's reports.
ALTER TABLE outbox ADD COLUMN lease_token TEXT;

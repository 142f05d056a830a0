-- gantry serves Terraform's `http` backend for the state it keeps.

-- Who wrote a state version: `run N` or `api` (a CLI user with the API token).
-- Versions written from a laptop have no run.
ALTER TABLE state_versions ADD COLUMN written_by TEXT;

-- Terraform's own state lock (LOCK/UNLOCK), one per workspace. `info` is the
-- lock info JSON terraform sent, returned as is to the next locker.
CREATE TABLE state_locks (
    workspace  TEXT   NOT NULL PRIMARY KEY,
    lock_id    TEXT   NOT NULL,
    info       TEXT   NOT NULL,
    locked_by  TEXT   NOT NULL,
    run_id     BIGINT,
    locked_at  BIGINT NOT NULL
);

-- Backend credentials of runs: the sha256 of a random token, good for one
-- workspace while its run is active. Only an apply's token may write state;
-- a plan's may read and lock.
CREATE TABLE state_tokens (
    token_sha256 TEXT   NOT NULL PRIMARY KEY,
    run_id       BIGINT NOT NULL,
    workspace    TEXT   NOT NULL,
    can_write    BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);
CREATE INDEX state_tokens_run ON state_tokens (run_id);

-- State an apply produced but could not store (terraform's errored.tfstate),
-- kept for an operator to recover.
CREATE TABLE state_spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace   TEXT   NOT NULL,
    run_id      BIGINT,
    reason      TEXT   NOT NULL,
    state       TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX state_spool_workspace ON state_spool (workspace, id);

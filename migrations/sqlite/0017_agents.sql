-- Self-hosted agent pools. A replica that runs a workspace of a pool turns
-- each terraform step into an agent job; an agent of that pool claims it
-- (lease, heartbeats, fencing like runs), downloads the source archive,
-- streams the log, uploads the plan and completes it. No secret is stored
-- here: a job's variables and backend token are made when it is claimed.

-- Which runner executed a run: `local` or `agent:POOL/NAME`.
ALTER TABLE runs ADD COLUMN runner TEXT;
-- What a running run waits for (`agent pool NAME` while no agent of its
-- pool is live), shown in the API and in its reports.
ALTER TABLE runs ADD COLUMN waiting_for TEXT;

CREATE TABLE agent_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           BIGINT  NOT NULL REFERENCES runs (id),
    pool             TEXT    NOT NULL,
    -- protocol::JobKind as JSON.
    job              TEXT    NOT NULL,
    workspace        TEXT    NOT NULL,
    commit_sha       TEXT    NOT NULL,
    dir              TEXT    NOT NULL,
    -- Whether gantry keeps the state: the grant then carries a backend token.
    gantry_state     BIGINT  NOT NULL,
    timeout_ms       BIGINT  NOT NULL,
    -- Apply jobs: the sha256 the plan file must hash to.
    plan_sha256      TEXT,
    -- The checkout as a tar.gz.
    source           BLOB    NOT NULL,
    -- queued, running, done, canceled, lost.
    state            TEXT    NOT NULL DEFAULT 'queued',
    attempt          BIGINT  NOT NULL DEFAULT 1,
    agent            TEXT,
    lease_token      TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT  NOT NULL DEFAULT 0,
    -- The highest log chunk seq stored for the current claim (-1: none).
    log_seq          BIGINT  NOT NULL DEFAULT -1,
    -- protocol::JobResult as JSON, once done.
    result           TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);
CREATE INDEX agent_jobs_queue ON agent_jobs (pool, state, id);
CREATE INDEX agent_jobs_run ON agent_jobs (run_id);

-- What a plan or drift job uploaded (its hash checked on the way in).
CREATE TABLE agent_job_artifacts (
    job_id     BIGINT  NOT NULL REFERENCES agent_jobs (id),
    kind       TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    sha256     TEXT    NOT NULL,
    PRIMARY KEY (job_id, kind)
);

-- Agents as they were last seen (claims and heartbeats).
CREATE TABLE agents (
    pool       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    first_seen BIGINT  NOT NULL,
    last_seen  BIGINT  NOT NULL,
    PRIMARY KEY (pool, name)
);

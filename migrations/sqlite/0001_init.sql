-- Webhook deliveries. The row is written before the webhook is answered and is
-- itself the durable dispatch job; (provider_id, delivery_id) dedupes redeliveries.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_id   TEXT    NOT NULL,
    delivery_id   TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,
    action        TEXT,
    repo          TEXT,
    body          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    detail        TEXT,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    lease_until   BIGINT,
    not_before    BIGINT  NOT NULL DEFAULT 0,
    received_at   BIGINT  NOT NULL,
    dispatched_at BIGINT,
    UNIQUE (provider_id, delivery_id)
);
CREATE INDEX events_queue ON events (state, id);
-- Events of one repository are dispatched one at a time, in arrival order.
CREATE UNIQUE INDEX events_one_dispatching ON events (provider_id, repo) WHERE state = 'dispatching';

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace      TEXT    NOT NULL,
    event_id       BIGINT  REFERENCES events (id),
    kind           TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    state_reason   TEXT,
    provider_id    TEXT    NOT NULL,
    repo           TEXT    NOT NULL,
    branch         TEXT    NOT NULL,
    pr_number      BIGINT,
    head_sha       TEXT    NOT NULL,
    git_ref        TEXT    NOT NULL,
    attempt        BIGINT  NOT NULL DEFAULT 1,
    retry_of       BIGINT,
    enqueued_at    BIGINT  NOT NULL,
    claimed_by     TEXT,
    lease_until    BIGINT,
    started_at     BIGINT,
    finished_at    BIGINT,
    updated_at     BIGINT  NOT NULL,
    plan_add       BIGINT,
    plan_change    BIGINT,
    plan_destroy   BIGINT
);
CREATE INDEX runs_queue ON runs (state, enqueued_at, id);
CREATE INDEX runs_workspace ON runs (workspace, id);
CREATE INDEX runs_pull_request ON runs (provider_id, repo, pr_number, id);
-- At most one active run per workspace, across every replica.
CREATE UNIQUE INDEX runs_one_active ON runs (workspace) WHERE state IN ('fetching', 'planning');

CREATE TABLE run_transitions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  BIGINT NOT NULL REFERENCES runs (id),
    state   TEXT   NOT NULL,
    reason  TEXT,
    at      BIGINT NOT NULL
);
CREATE INDEX run_transitions_run ON run_transitions (run_id, id);

-- The one gantry comment per pull request, found again after a restart.
CREATE TABLE pr_comments (
    provider_id TEXT   NOT NULL,
    repo        TEXT   NOT NULL,
    pr_number   BIGINT NOT NULL,
    comment_id  TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (provider_id, repo, pr_number)
);

-- What a run produced that reports need: the human-readable plan (redacted).
-- Kept in the database so any replica can render the PR comment.
CREATE TABLE run_outputs (
    run_id     BIGINT NOT NULL PRIMARY KEY REFERENCES runs (id),
    plan_text  TEXT   NOT NULL
);

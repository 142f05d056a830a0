-- Applies: what a run's plan was made against, who confirmed it, when it applied.
ALTER TABLE runs ADD COLUMN apply_requested BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN planned_at BIGINT;
ALTER TABLE runs ADD COLUMN state_version_at_plan BIGINT;
ALTER TABLE runs ADD COLUMN requested_by TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;

-- The one active-run rule now covers applies too.
DROP INDEX runs_one_active;
CREATE UNIQUE INDEX runs_one_active ON runs (workspace) WHERE state IN ('fetching', 'planning', 'applying');

-- A locked workspace still plans but refuses applies.
CREATE TABLE workspace_locks (
    workspace  TEXT   NOT NULL PRIMARY KEY,
    reason     TEXT   NOT NULL,
    locked_by  TEXT   NOT NULL,
    run_id     BIGINT,
    locked_at  BIGINT NOT NULL
);

-- Who did what, when, to which run and commit.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    workspace   TEXT,
    run_id      BIGINT,
    commit_sha  TEXT,
    detail      TEXT
);
CREATE INDEX audit_log_workspace ON audit_log (workspace, id);

-- Terraform state of workspaces without a backend of their own.
CREATE TABLE state_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace   TEXT   NOT NULL,
    serial      BIGINT NOT NULL,
    lineage     TEXT   NOT NULL,
    run_id      BIGINT,
    created_at  BIGINT NOT NULL,
    state       TEXT   NOT NULL
);
CREATE INDEX state_versions_workspace ON state_versions (workspace, id);

-- Comments are keyed by kind: the PR's plan comment, and one apply comment per merge commit.
CREATE TABLE vcs_comments (
    provider_id TEXT   NOT NULL,
    repo        TEXT   NOT NULL,
    pr_number   BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    comment_id  TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (provider_id, repo, pr_number, kind)
);
INSERT INTO vcs_comments (provider_id, repo, pr_number, kind, comment_id, updated_at)
    SELECT provider_id, repo, pr_number, 'plan', comment_id, updated_at FROM pr_comments;
DROP TABLE pr_comments;

-- The output of an apply, for the comment.
ALTER TABLE run_outputs ADD COLUMN apply_text TEXT;

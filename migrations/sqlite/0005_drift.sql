-- Drift reports: what a drift check found, per workspace.
CREATE TABLE drift_reports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace   TEXT   NOT NULL,
    run_id      BIGINT NOT NULL,
    commit_sha  TEXT   NOT NULL,
    drifted     BIGINT NOT NULL,
    report      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX drift_reports_workspace ON drift_reports (workspace, id);

-- The open drift issue of a workspace, updated on later detections, closed when drift is gone.
CREATE TABLE drift_issues (
    workspace  TEXT   NOT NULL PRIMARY KEY,
    repo       TEXT   NOT NULL,
    number     BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Each scheduled drift tick of a workspace is handled once across every replica.
CREATE TABLE drift_ticks (
    workspace   TEXT   NOT NULL,
    tick_at     BIGINT NOT NULL,
    outcome     TEXT   NOT NULL,
    run_id      BIGINT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (workspace, tick_at)
);

-- A run's artifacts live in the database, so any replica can apply a plan made
-- by another, show its log, or read its plan JSON. `data` is gzip of the
-- artifact; `sha256` and `size` are of the uncompressed bytes.
CREATE TABLE run_artifacts (
    run_id     BIGINT  NOT NULL REFERENCES runs (id),
    kind       TEXT    NOT NULL,
    encoding   TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    sha256     TEXT    NOT NULL,
    size       BIGINT  NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (run_id, kind)
);

-- The log while the run goes: redacted chunks appended as terraform prints
-- them, so a killed run keeps what it printed. Folded into the `log` artifact
-- when a phase ends.
CREATE TABLE run_log_chunks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     BIGINT  NOT NULL REFERENCES runs (id),
    text       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX run_log_chunks_run ON run_log_chunks (run_id, id);

-- Background maintenance one replica at a time (retention): the holder and
-- until when it holds the job.
CREATE TABLE maintenance_leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    lease_until BIGINT  NOT NULL
);

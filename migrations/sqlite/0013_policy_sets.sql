-- Each policy group's active set: the commit it was loaded at and the files
-- of its folder, so every replica compiles and evaluates the same policies.
-- A set that fails to load never replaces the row. `version` grows with every
-- write, so replicas notice a change by comparing it.
CREATE TABLE policy_sets (
    group_name TEXT PRIMARY KEY,
    sha TEXT NOT NULL,
    digest TEXT NOT NULL,
    files TEXT NOT NULL,
    version BIGINT NOT NULL,
    loaded_by TEXT NOT NULL,
    loaded_at BIGINT NOT NULL
);

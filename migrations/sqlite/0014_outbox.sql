-- Reports to send to the VCS (commit statuses, comment refreshes, drift issues,
-- drift webhooks). A run only writes a row here; the outbox sender of any
-- replica delivers it, so terraform never waits on the VCS API and a report
-- survives a restart or an outage.
--
-- Rows of one order_key (a commit status context, a pull request's comment, a
-- workspace's drift issue) are delivered one at a time in id order. A new row
-- supersedes the pending rows of its coalesce_key: an older status is never
-- sent after a newer one.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    order_key    TEXT    NOT NULL,
    coalesce_key TEXT,
    provider_id  TEXT    NOT NULL,
    repo         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending',
    attempts     BIGINT  NOT NULL DEFAULT 0,
    not_before   BIGINT  NOT NULL DEFAULT 0,
    claimed_by   TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT  NOT NULL,
    done_at      BIGINT
);
CREATE INDEX outbox_queue ON outbox (state, id);
CREATE INDEX outbox_order ON outbox (order_key, id);
CREATE INDEX outbox_coalesce ON outbox (coalesce_key, id);
-- One delivery at a time per order key, across every replica.
CREATE UNIQUE INDEX outbox_one_sending ON outbox (order_key) WHERE state = 'sending';

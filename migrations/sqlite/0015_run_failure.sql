-- How a run failed, as a stable kind (`canceled`, `terraform`, `apply`,
-- `refused`, `tampered`, `interrupted`, `interrupted_apply`, `internal`), next
-- to the reason text people read. Reports, the outbox and the reaper decide on
-- the kind, never on the text. Rows written before this column get the kind
-- their reason text meant.
ALTER TABLE runs ADD COLUMN failure TEXT;

UPDATE runs SET failure = CASE
        WHEN state = 'canceled' THEN 'canceled'
        WHEN state_reason LIKE 'terraform apply %' THEN 'apply'
        WHEN state_reason LIKE 'terraform %' THEN 'terraform'
        WHEN state_reason LIKE 'apply refused: plan file of run %' THEN 'tampered'
        WHEN state_reason LIKE 'apply refused%' THEN 'refused'
        WHEN state_reason LIKE 'interrupted during apply%' THEN 'interrupted_apply'
        WHEN state_reason = 'interrupted' THEN 'interrupted'
        ELSE 'internal'
    END
WHERE state IN ('errored', 'canceled');

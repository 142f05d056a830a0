-- A claim on an event or a run gets a random token, new for every claim.
-- Heartbeats, transitions and completions name it (`WHERE id = ? AND
-- lease_token = ?`), so a holder whose lease expired and was taken over
-- writes nothing.
ALTER TABLE events ADD COLUMN lease_token TEXT;
ALTER TABLE runs ADD COLUMN lease_token TEXT;

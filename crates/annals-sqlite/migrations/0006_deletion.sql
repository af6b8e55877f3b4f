-- Annals SQLite schema, version 6: stream deletion and truncation.

-- Reads show a stream's events from `start` on (truncation, soft deletion). A tombstoned
-- stream (hard deletion) can never be written or read again: its version is frozen here,
-- and the append path reports the refusal as a deleted stream.
ALTER TABLE annals_streams ADD COLUMN start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE annals_streams ADD COLUMN tombstone INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER annals_streams_tombstone BEFORE UPDATE OF version ON annals_streams
WHEN OLD.tombstone = 1
BEGIN
    SELECT RAISE(ABORT, 'annals: stream deleted');
END;

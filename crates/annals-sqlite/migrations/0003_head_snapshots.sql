-- Annals SQLite schema, version 3: a state snapshot beside each stream's head, written in
-- the same transaction as the append that reached `snapshot_version`, so a load reads the
-- snapshot and the events after it together.
ALTER TABLE annals_streams ADD COLUMN snapshot BLOB;
ALTER TABLE annals_streams ADD COLUMN snapshot_version INTEGER;

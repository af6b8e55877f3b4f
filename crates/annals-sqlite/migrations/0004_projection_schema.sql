-- Annals SQLite schema, version 4: the schema version of the projection code that built
-- each per-stream read-model row, so rows built by older code can be found and rebuilt.
ALTER TABLE annals_projection_streams ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 0;

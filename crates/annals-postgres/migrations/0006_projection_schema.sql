-- Annals PostgreSQL schema, version 6: the schema version of the projection code that
-- built each per-stream read-model row, so rows built by older code can be found and
-- rebuilt.
ALTER TABLE {schema}.projection_streams ADD COLUMN schema_version integer NOT NULL DEFAULT 0;

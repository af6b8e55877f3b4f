-- Annals SQLite schema, version 9: each read model's per-stream progress in a table keyed
-- by (projection, stream) alone (`WITHOUT ROWID`): an apply's progress is one B-tree page
-- to write back at commit, not a row page and a page of its key's index.
CREATE TABLE annals_projection_streams_new (
    projection     TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    next_version   INTEGER NOT NULL,
    schema_version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, stream)
) STRICT, WITHOUT ROWID;
INSERT INTO annals_projection_streams_new (projection, stream, next_version, schema_version)
    SELECT projection, stream, next_version, schema_version FROM annals_projection_streams;
DROP TABLE annals_projection_streams;
ALTER TABLE annals_projection_streams_new RENAME TO annals_projection_streams;

-- Annals SQLite schema, version 2: per-stream progress of projections.

-- For each projection and stream, the next version the projection needs. Written in the
-- same transaction as the projection's read-model changes, so an event delivered again
-- (after a crash, before the pipeline's checkpoint moved) is recognised and skipped:
-- read models see every event exactly once even though streams are handled in parallel.
CREATE TABLE annals_projection_streams (
    projection   TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    next_version INTEGER NOT NULL,
    PRIMARY KEY (projection, stream)
) STRICT;

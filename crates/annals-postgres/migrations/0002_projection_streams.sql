-- Annals PostgreSQL schema, version 2: per-stream progress of projections.

-- For each projection and stream, the next version the projection needs, written in the
-- same transaction as the read-model changes (see `Projection::stream_progress`), so an
-- event delivered again is recognised and skipped.
CREATE TABLE {schema}.projection_streams (
    projection   text   NOT NULL,
    stream       text   NOT NULL,
    next_version bigint NOT NULL,
    PRIMARY KEY (projection, stream)
);

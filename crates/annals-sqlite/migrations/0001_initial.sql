-- Annals SQLite schema, version 1.

-- One row per stream: its name, category and current version (event count).
CREATE TABLE annals_streams (
    stream_id INTEGER PRIMARY KEY,
    name      TEXT    NOT NULL UNIQUE,
    category  TEXT    NOT NULL,
    version   INTEGER NOT NULL
) STRICT;

CREATE INDEX annals_streams_category ON annals_streams (category);

-- Every event. The AUTOINCREMENT position is dense and commit-ordered: one writer commits
-- at a time, so a reader resuming after position p can never miss a later commit below p.
CREATE TABLE annals_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id      INTEGER NOT NULL REFERENCES annals_streams (stream_id),
    stream_version INTEGER NOT NULL,
    -- The stream version at which this event's append began: tells an exact retry of an
    -- earlier append from a batch that only overlaps it.
    batch_start    INTEGER NOT NULL,
    event_id       BLOB    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    data           BLOB    NOT NULL,
    metadata       BLOB,
    correlation_id BLOB,
    causation_id   BLOB,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version)
) STRICT;

CREATE TRIGGER annals_events_immutable_update BEFORE UPDATE ON annals_events
BEGIN
    SELECT RAISE(ABORT, 'annals: events are immutable (UPDATE refused)');
END;

CREATE TRIGGER annals_events_immutable_delete BEFORE DELETE ON annals_events
BEGIN
    SELECT RAISE(ABORT, 'annals: events are immutable (DELETE refused)');
END;

-- The position each consumer group has handled, per source.
CREATE TABLE annals_checkpoints (
    group_name TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    position   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (group_name, source)
) STRICT;

-- Annals SQLite schema, version 8: retention.

-- The policies as set, per category (kind 0) or stream (kind 1); ages in microseconds.
CREATE TABLE annals_retention (
    kind      INTEGER NOT NULL,
    name      TEXT    NOT NULL,
    max_age   INTEGER,
    max_count INTEGER,
    PRIMARY KEY (kind, name)
) STRICT;

-- Each stream's policy in effect (its own, else its category's), beside the columns reads
-- already join, so a read checks it without a lookup. Set for existing streams when a
-- policy changes, and for new streams by the trigger below.
ALTER TABLE annals_streams ADD COLUMN max_age INTEGER;
ALTER TABLE annals_streams ADD COLUMN max_count INTEGER;

CREATE TRIGGER annals_streams_retention AFTER INSERT ON annals_streams
WHEN EXISTS (SELECT 1 FROM annals_retention)
BEGIN
    UPDATE annals_streams SET (max_age, max_count) = (
        SELECT r.max_age, r.max_count FROM annals_retention r
        WHERE (r.kind = 1 AND r.name = NEW.name) OR (r.kind = 0 AND r.name = NEW.category)
        ORDER BY r.kind DESC LIMIT 1)
    WHERE stream_id = NEW.stream_id;
END;

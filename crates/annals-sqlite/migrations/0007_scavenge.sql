-- Annals SQLite schema, version 7: scavenging, the one path that removes event rows.

-- A row here exists only inside a scavenging transaction (inserted and deleted in it, so
-- no other connection ever sees one): the delete trigger lets that transaction remove the
-- events reads no longer show, and refuses every other DELETE as before.
CREATE TABLE annals_scavenging (token INTEGER NOT NULL) STRICT;

DROP TRIGGER annals_events_immutable_delete;

CREATE TRIGGER annals_events_immutable_delete BEFORE DELETE ON annals_events
WHEN NOT EXISTS (SELECT 1 FROM annals_scavenging)
BEGIN
    SELECT RAISE(ABORT, 'annals: events are immutable (DELETE refused; annals scavenge removes events reads no longer show)');
END;

-- Annals SQLite schema, version 5: streams a consumer group parked after its handler kept
-- failing. A bounded record (versions and errors, never the events): `annals parked list`
-- shows them, `replay` and `skip` remove them.
CREATE TABLE annals_parked (
    group_name   TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    from_version INTEGER NOT NULL,
    to_version   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    first_error  TEXT    NOT NULL,
    last_error   TEXT    NOT NULL,
    parked_at    INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (group_name, stream)
) STRICT;

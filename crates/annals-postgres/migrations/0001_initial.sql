-- Annals PostgreSQL schema, version 1. `{schema}` is replaced by the store's schema.

-- One row per stream. The row is both the lock and the optimistic-concurrency check of an
-- append: writers to different streams never wait for each other. `last_tx` is the
-- transaction id of the stream's last writer: a writer whose own id is older (it took its id
-- before, but the row lock after, the previous writer) must retry in a new transaction, or
-- ordering read-all by transaction id would put its events before earlier versions.
CREATE TABLE {schema}.streams (
    stream_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text   NOT NULL UNIQUE,
    category  text   NOT NULL,
    version   bigint NOT NULL,
    last_tx   xid8   NOT NULL DEFAULT pg_current_xact_id()
) WITH (fillfactor = 50); -- room on each page for HOT updates of version and last_tx
CREATE INDEX streams_category ON {schema}.streams (category);

-- Every event. Read-all orders by (tx_id, position) and only reads rows whose transaction is
-- below pg_snapshot_xmin(pg_current_snapshot()): such rows can never change, so a reader
-- resuming after (tx_id, position) cannot miss a late commit, and rolled-back inserts leave
-- harmless gaps.
CREATE TABLE {schema}.events (
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position       bigint      GENERATED ALWAYS AS IDENTITY,
    stream_id      bigint      NOT NULL REFERENCES {schema}.streams (stream_id),
    stream_version bigint      NOT NULL,
    batch_start    bigint      NOT NULL,
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    data           bytea       NOT NULL,
    metadata       bytea,
    correlation_id uuid,
    causation_id   uuid,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, position),
    UNIQUE (stream_id, stream_version)
);

CREATE FUNCTION {schema}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'annals: events are immutable (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();

-- The position each consumer group has handled, per source.
CREATE TABLE {schema}.checkpoints (
    group_name text        NOT NULL,
    source     text        NOT NULL,
    position   text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, source)
);

-- One append in one round trip. Expected kinds: 0 any, 1 no stream, 2 stream exists,
-- 3 exact (p_expected). Status: 0 written (version, positions, tx), 1 wrong expected
-- version (version = actual). An event id already recorded fails the insert with a
-- unique violation, which rolls the whole call back; the caller then classifies.
CREATE FUNCTION {schema}.append(
    p_stream text, p_category text, p_kind smallint, p_expected bigint,
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[])
RETURNS TABLE (status smallint, version bigint, first_position bigint, last_position bigint, tx text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n     bigint := cardinality(p_ids);
    sid   bigint;
    start bigint;
    last  xid8;
BEGIN
    IF p_kind = 1 OR (p_kind = 3 AND p_expected = 0) THEN
        INSERT INTO {schema}.streams (name, category, version) VALUES (p_stream, p_category, n)
            ON CONFLICT (name) DO NOTHING RETURNING stream_id INTO sid;
        start := 0;
    ELSIF p_kind = 3 THEN
        UPDATE {schema}.streams s SET version = s.version + n,
                last_tx = greatest(s.last_tx, pg_current_xact_id())
            WHERE s.name = p_stream AND s.version = p_expected
            RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, start, last;
    ELSE
        UPDATE {schema}.streams s SET version = s.version + n,
                last_tx = greatest(s.last_tx, pg_current_xact_id())
            WHERE s.name = p_stream
            RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, start, last;
        IF sid IS NULL AND p_kind = 0 THEN
            INSERT INTO {schema}.streams (name, category, version) VALUES (p_stream, p_category, n)
                ON CONFLICT (name) DO NOTHING RETURNING stream_id INTO sid;
            start := 0;
            IF sid IS NULL THEN
                UPDATE {schema}.streams s SET version = s.version + n,
                        last_tx = greatest(s.last_tx, pg_current_xact_id())
                    WHERE s.name = p_stream
                    RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, start, last;
            END IF;
        END IF;
    END IF;
    IF last IS NOT NULL AND last <> pg_current_xact_id() THEN
        RAISE EXCEPTION 'annals: this transaction is older than the last writer of stream %; retry it', p_stream
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF sid IS NULL THEN
        RETURN QUERY SELECT 1::smallint,
            coalesce((SELECT s.version FROM {schema}.streams s WHERE s.name = p_stream), 0),
            NULL::bigint, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY
    WITH ins AS (
        INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id, event_type,
                                     data, metadata, correlation_id, causation_id)
        SELECT sid, start + u.ord - 1, start, u.id, u.t, u.d, u.m, u.c, u.k
        FROM unnest(p_ids, p_types, p_data, p_metadata, p_correlation, p_causation)
             WITH ORDINALITY AS u (id, t, d, m, c, k, ord)
        RETURNING events.position
    )
    SELECT 0::smallint, start + n, min(ins.position), max(ins.position), pg_current_xact_id()::text
    FROM ins;
END $$;

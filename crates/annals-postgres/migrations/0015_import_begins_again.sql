-- Annals PostgreSQL schema, version 15: an import may also begin again, at a later
-- version, a stream this store has with every event hidden (deleted or truncated here, as
-- where it was recorded: `annals sync` of a stream written to, then deleted, between two
-- runs); the versions up to its first event read as truncated.
--
-- Otherwise as version 14: each event must be the next of its stream, or already recorded
-- there with the same id (skipped). Status 0: imported (n written); 1: refused at an event
-- (stream, its version, the stream's actual version), nothing written by the caller's
-- transaction.
CREATE OR REPLACE FUNCTION {schema}.import_events(
    p_streams text[], p_categories text[], p_versions bigint[], p_ids uuid[], p_types text[],
    p_data bytea[], p_metadata bytea[], p_correlation uuid[], p_causation uuid[],
    p_recorded_micros bigint[])
RETURNS TABLE (status smallint, written bigint, refused_stream text, refused_version bigint,
               actual bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i     int;
    sid   bigint;
    cur   bigint;
    shown bigint;
    tombed boolean;
    last  xid8;
    found uuid;
    n     bigint := 0;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        SELECT s.stream_id, s.version, s.start, s.tombstone INTO sid, cur, shown, tombed
            FROM {schema}.streams s WHERE s.name = p_streams[i] FOR UPDATE;
        cur := coalesce(cur, 0);  -- no row: a new stream
        IF p_versions[i] > cur AND p_versions[i] < 9223372036854775807
           AND (sid IS NULL OR (NOT tombed AND shown >= cur)) THEN
            -- A stream this store does not have, or whose events are all hidden here, begins
            -- (again) at this event's version: the versions below read as truncated (hidden
            -- where it was recorded).
            IF sid IS NULL THEN
                INSERT INTO {schema}.streams (name, category, version, start)
                    VALUES (p_streams[i], p_categories[i], p_versions[i], p_versions[i])
                    RETURNING stream_id INTO sid;
            ELSE
                UPDATE {schema}.streams s SET version = p_versions[i], start = p_versions[i]
                    WHERE s.stream_id = sid;
            END IF;
            cur := p_versions[i];
        END IF;
        IF p_versions[i] < cur THEN
            SELECT e.event_id INTO found FROM {schema}.events e
                WHERE e.stream_id = sid AND e.stream_version = p_versions[i];
            IF found = p_ids[i] THEN
                CONTINUE;
            END IF;
        END IF;
        IF p_versions[i] <> cur THEN
            RETURN QUERY SELECT 1::smallint, n, p_streams[i], p_versions[i], cur;
            RETURN;
        END IF;
        IF sid IS NULL THEN
            INSERT INTO {schema}.streams (name, category, version)
                VALUES (p_streams[i], p_categories[i], 1) RETURNING stream_id INTO sid;
        ELSE
            UPDATE {schema}.streams s SET version = s.version + 1,
                    last_tx = greatest(s.last_tx, pg_current_xact_id())
                WHERE s.stream_id = sid RETURNING s.last_tx INTO last;
            IF last <> pg_current_xact_id() THEN
                RAISE EXCEPTION 'annals: this transaction is older than the last writer of stream %; retry it', p_streams[i]
                    USING ERRCODE = 'serialization_failure';
            END IF;
        END IF;
        INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id, event_type,
                                     data, metadata, correlation_id, causation_id, recorded_at)
            VALUES (sid, p_versions[i], p_versions[i], p_ids[i], p_types[i], p_data[i],
                    p_metadata[i], p_correlation[i], p_causation[i],
                    timestamptz 'epoch' + p_recorded_micros[i] * interval '1 microsecond');
        n := n + 1;
    END LOOP;
    RETURN QUERY SELECT 0::smallint, n, NULL::text, NULL::bigint, NULL::bigint;
END $$;

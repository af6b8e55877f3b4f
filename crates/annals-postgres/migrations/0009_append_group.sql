-- Group commit: several appends to distinct streams in one statement, so one transaction
-- and one commit. Per append (`idx`, from 1, in the order given) a status row: 0 written
-- (version, positions, tx as `append`), 1 refused (version = actual), 3 an id already
-- recorded, 4 retry in a new transaction (the stream's last writer is newer, a concurrent
-- creation of the stream, or a deadlock was broken). A refused append with `p_tails[idx]`
-- is followed by the stream's events from its expected version on (status 2, at most
-- p_limit), so a refused decision catches up without a read of its own. `p_counts[idx]`
-- events of the flattened event arrays belong to append idx, in order.
--
-- `append_group` does it set-wise: the group's stream rows are locked in name order, the
-- expectations checked, new streams created, versions moved and every event inserted by
-- one statement each. When an event id is already recorded, that is undone and the group
-- goes through `append_group_each`: each append in its own subtransaction through
-- `append`, so only the appends whose ids are recorded fail.

CREATE FUNCTION {schema}.append_group_each(
    p_streams text[], p_categories text[], p_kinds smallint[], p_expected bigint[],
    p_tails boolean[], p_counts int[],
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_limit bigint)
RETURNS TABLE (idx int, status smallint, version bigint, first_position bigint,
               last_position bigint, tx text, e_tx text, e_position bigint, e_stream text,
               e_version bigint, e_recorded bigint, e_type text, e_data bytea,
               e_metadata bytea, e_id uuid, e_correlation uuid, e_causation uuid,
               e_batch_start bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i        int;
    lo       int := 1;
    hi       int;
    v_status smallint;
    v_version bigint;
    v_first  bigint;
    v_last   bigint;
    v_tx     text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_streams), 0) LOOP
        hi := lo + p_counts[i] - 1;
        BEGIN
            SELECT a.status, a.version, a.first_position, a.last_position, a.tx
                INTO v_status, v_version, v_first, v_last, v_tx
                FROM {schema}.append(p_streams[i], p_categories[i], p_kinds[i], p_expected[i],
                                     p_ids[lo:hi], p_types[lo:hi], p_data[lo:hi],
                                     p_metadata[lo:hi], p_correlation[lo:hi],
                                     p_causation[lo:hi]) a;
        EXCEPTION
            WHEN unique_violation THEN
                v_status := 3; v_version := NULL; v_first := NULL; v_last := NULL; v_tx := NULL;
            WHEN serialization_failure OR deadlock_detected THEN
                v_status := 4; v_version := NULL; v_first := NULL; v_last := NULL; v_tx := NULL;
        END;
        RETURN QUERY SELECT i, v_status, v_version, v_first, v_last, v_tx,
            NULL::text, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
            NULL::bytea, NULL::bytea, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint;
        IF v_status = 1 AND p_tails[i] THEN
            RETURN QUERY SELECT i, 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::text, e.tx_id::text, e.position, s.name, e.stream_version,
                (extract(epoch FROM e.recorded_at) * 1000000)::bigint, e.event_type, e.data,
                e.metadata, e.event_id, e.correlation_id, e.causation_id, e.batch_start
                FROM {schema}.streams s JOIN {schema}.events e ON e.stream_id = s.stream_id
                WHERE s.name = p_streams[i] AND e.stream_version >= p_expected[i]
                ORDER BY e.stream_version LIMIT p_limit;
        END IF;
        lo := hi + 1;
    END LOOP;
END $$;

CREATE FUNCTION {schema}.append_group(
    p_streams text[], p_categories text[], p_kinds smallint[], p_expected bigint[],
    p_tails boolean[], p_counts int[],
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_limit bigint)
RETURNS TABLE (idx int, status smallint, version bigint, first_position bigint,
               last_position bigint, tx text, e_tx text, e_position bigint, e_stream text,
               e_version bigint, e_recorded bigint, e_type text, e_data bytea,
               e_metadata bytea, e_id uuid, e_correlation uuid, e_causation uuid,
               e_batch_start bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k       int := coalesce(cardinality(p_streams), 0);
    me      xid8 := pg_current_xact_id();
    st      smallint[] := array_fill(0::smallint, ARRAY[k]);
    ver     bigint[] := array_fill(NULL::bigint, ARRAY[k]);
    sid     bigint[] := array_fill(NULL::bigint, ARRAY[k]);
    start   bigint[] := array_fill(NULL::bigint, ARRAY[k]);
    firstp  bigint[] := array_fill(NULL::bigint, ARRAY[k]);
    lastp   bigint[] := array_fill(NULL::bigint, ARRAY[k]);
    created int[] := '{}';
    r       record;
    i       int;
BEGIN
    IF k = 0 THEN
        RETURN;
    END IF;
    -- The existing streams, locked in name order (so groups never wait in a cycle).
    FOR r IN SELECT s.name, s.stream_id, s.version, s.last_tx FROM {schema}.streams s
             WHERE s.name = ANY (p_streams) ORDER BY s.name FOR UPDATE LOOP
        i := array_position(p_streams, r.name);
        sid[i] := r.stream_id;
        IF r.last_tx > me THEN
            st[i] := 4;
        ELSIF p_kinds[i] = 1 OR (p_kinds[i] = 3 AND p_expected[i] <> r.version) THEN
            st[i] := 1;
            ver[i] := r.version;
        ELSE
            start[i] := r.version;
            ver[i] := r.version + p_counts[i];
        END IF;
    END LOOP;
    FOR i IN 1 .. k LOOP
        IF sid[i] IS NULL THEN
            IF p_kinds[i] = 2 OR (p_kinds[i] = 3 AND p_expected[i] > 0) THEN
                st[i] := 1;
                ver[i] := 0;
            ELSE
                created := created || i;
            END IF;
        END IF;
    END LOOP;
    BEGIN
        IF cardinality(created) > 0 THEN
            FOR r IN INSERT INTO {schema}.streams (name, category, version)
                     SELECT p_streams[c], p_categories[c], p_counts[c]
                     FROM unnest(created) c ORDER BY p_streams[c]
                     ON CONFLICT (name) DO NOTHING RETURNING name, stream_id LOOP
                i := array_position(p_streams, r.name);
                sid[i] := r.stream_id;
                start[i] := 0;
                ver[i] := p_counts[i];
            END LOOP;
            -- Created meanwhile by another transaction: a new one will see it.
            FOREACH i IN ARRAY created LOOP
                IF sid[i] IS NULL THEN
                    st[i] := 4;
                END IF;
            END LOOP;
        END IF;
        UPDATE {schema}.streams s SET version = u.v, last_tx = greatest(s.last_tx, me)
            FROM unnest(sid, ver, start, st) u (id, v, b, status)
            WHERE s.stream_id = u.id AND u.status = 0 AND u.b > 0;
        FOR r IN
            WITH a AS (
                SELECT c.i, sum(p_counts[c.i]) OVER (ORDER BY c.i) - p_counts[c.i] + 1 AS lo
                FROM generate_subscripts(p_streams, 1) c (i)
            ), ins AS (
                INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id,
                                             event_type, data, metadata, correlation_id,
                                             causation_id)
                SELECT sid[a.i], start[a.i] + j - a.lo, start[a.i], p_ids[j], p_types[j],
                       p_data[j], p_metadata[j], p_correlation[j], p_causation[j]
                FROM a, generate_series(a.lo, a.lo + p_counts[a.i] - 1) j
                WHERE st[a.i] = 0 AND sid[a.i] IS NOT NULL
                ORDER BY a.i, j
                RETURNING events.stream_id, events.position
            )
            SELECT ins.stream_id, min(ins.position) AS f, max(ins.position) AS l
            FROM ins GROUP BY ins.stream_id
        LOOP
            i := array_position(sid, r.stream_id);
            firstp[i] := r.f;
            lastp[i] := r.l;
        END LOOP;
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT * FROM {schema}.append_group_each(p_streams, p_categories, p_kinds,
            p_expected, p_tails, p_counts, p_ids, p_types, p_data, p_metadata, p_correlation,
            p_causation, p_limit);
        RETURN;
    END;
    FOR i IN 1 .. k LOOP
        RETURN QUERY SELECT i, st[i], ver[i],
            CASE WHEN st[i] = 0 THEN firstp[i] END, CASE WHEN st[i] = 0 THEN lastp[i] END,
            CASE WHEN st[i] = 0 THEN me::text END,
            NULL::text, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
            NULL::bytea, NULL::bytea, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint;
        IF st[i] = 1 AND p_tails[i] THEN
            RETURN QUERY SELECT i, 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::text, e.tx_id::text, e.position, s.name, e.stream_version,
                (extract(epoch FROM e.recorded_at) * 1000000)::bigint, e.event_type, e.data,
                e.metadata, e.event_id, e.correlation_id, e.causation_id, e.batch_start
                FROM {schema}.streams s JOIN {schema}.events e ON e.stream_id = s.stream_id
                WHERE s.name = p_streams[i] AND e.stream_version >= p_expected[i]
                ORDER BY e.stream_version LIMIT p_limit;
        END IF;
    END LOOP;
END $$;

-- Group commit: several appends to distinct streams in one statement, so one transaction
-- and one commit. Each append runs in its own subtransaction: a refusal, an id already
-- recorded or a lost transaction-id race fails only that append. Per append (`idx`, from 1,
-- in the order given) a status row: 0 written (version, positions, tx as `append`), 1
-- refused (version = actual), 3 an id already recorded, 4 retry in a new transaction (the
-- stream's last writer is newer, or a deadlock was broken). A refused append with
-- `p_tails[idx]` is followed by the stream's events from its expected version on (status 2,
-- at most p_limit), so a refused decision catches up without a read of its own. `p_counts[idx]` events of the flattened
-- event arrays belong to append idx, in order.
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

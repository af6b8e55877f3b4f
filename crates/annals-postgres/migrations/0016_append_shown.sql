-- Annals PostgreSQL schema, version 16: appends for a state that holds a stream's events
-- from a given version on (`EventStore::append_at_shown`) are refused, at their version and
-- with no events, once a deletion or truncation has moved the stream's start past it. The
-- group statement checks it in its own `UPDATE`; these two wrap the functions that take
-- over for it: each locks the streams' rows first (in name order, as every group does),
-- so no deletion or truncation moves them until the append commits, then refuses the moved
-- ones and runs the function for the rest.

-- `append_group` (see migration 11), for `p_shown[i]` (the version expected, or below).
CREATE FUNCTION {schema}.append_group_shown(
    p_streams text[], p_categories text[], p_kinds smallint[], p_expected bigint[],
    p_tails boolean[], p_counts int[],
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_limit bigint, p_shown bigint[])
RETURNS TABLE (idx int, status smallint, version bigint, first_position bigint,
               last_position bigint, tx text, e_tx text, e_position bigint, e_stream text,
               e_version bigint, e_recorded bigint, e_type text, e_data bytea,
               e_metadata bytea, e_id uuid, e_correlation uuid, e_causation uuid,
               e_batch_start bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    moved    int[] := '{}';
    expected bigint[] := p_expected;
    r        record;
    i        int;
BEGIN
    FOR r IN SELECT s.name, s.version, s.start, s.tombstone FROM {schema}.streams s
             WHERE s.name = ANY (p_streams) ORDER BY s.name FOR UPDATE LOOP
        i := array_position(p_streams, r.name);
        IF p_kinds[i] = 3 AND p_expected[i] = r.version AND r.start > p_shown[i]
           AND NOT r.tombstone THEN
            moved := moved || i;
            -- Refused by `append_group` (no stream is at version -1), its tail left out.
            expected[i] := -1;
        END IF;
    END LOOP;
    RETURN QUERY SELECT g.* FROM {schema}.append_group(p_streams, p_categories, p_kinds,
            expected, p_tails, p_counts, p_ids, p_types, p_data, p_metadata, p_correlation,
            p_causation, p_limit) g
        WHERE NOT (g.idx = ANY (moved) AND g.status = 2);
END $$;

-- `append_with_snapshot` (see migration 5), for `p_shown`.
CREATE FUNCTION {schema}.append_with_snapshot_shown(
    p_stream text, p_category text, p_kind smallint, p_expected bigint,
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_snapshot bytea, p_shown bigint)
RETURNS TABLE (status smallint, version bigint, first_position bigint, last_position bigint, tx text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT s.version, s.start, s.tombstone INTO r FROM {schema}.streams s
        WHERE s.name = p_stream FOR UPDATE;
    IF FOUND AND p_kind = 3 AND p_expected = r.version AND r.start > p_shown
       AND NOT r.tombstone THEN
        RETURN QUERY SELECT 1::smallint, r.version, NULL::bigint, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM {schema}.append_with_snapshot(p_stream, p_category, p_kind,
        p_expected, p_ids, p_types, p_data, p_metadata, p_correlation, p_causation, p_snapshot);
END $$;

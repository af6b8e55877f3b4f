-- Annals PostgreSQL schema, version 17: `append_group_shown` (migration 16) locks its
-- streams' rows in the names' byte order (`COLLATE "C"`), the order the group statement,
-- `append_many` and its row locks take them in (Rust's order of the names), whatever the
-- database's collation: under one that does not follow byte order (en_US.UTF-8, say), two
-- streams whose names differ in case were locked in opposite orders by a group's fallback
-- and by a multi-stream transaction, which could then wait for each other.

CREATE OR REPLACE FUNCTION {schema}.append_group_shown(
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
             WHERE s.name = ANY (p_streams) ORDER BY s.name COLLATE "C" FOR UPDATE LOOP
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

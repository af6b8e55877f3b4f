-- Annals PostgreSQL schema, version 5: a state snapshot beside each stream's head, written
-- in the same transaction as the append that reached `snapshot_version`, so a load reads
-- the snapshot and the events after it in one statement.
ALTER TABLE {schema}.streams ADD COLUMN snapshot bytea, ADD COLUMN snapshot_version bigint;

-- `append`, and when it writes, `p_snapshot` becomes the stream's head snapshot.
CREATE FUNCTION {schema}.append_with_snapshot(
    p_stream text, p_category text, p_kind smallint, p_expected bigint,
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_snapshot bytea)
RETURNS TABLE (status smallint, version bigint, first_position bigint, last_position bigint, tx text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM {schema}.append(p_stream, p_category, p_kind, p_expected, p_ids,
        p_types, p_data, p_metadata, p_correlation, p_causation);
    IF r.status = 0 THEN
        UPDATE {schema}.streams s SET snapshot = p_snapshot, snapshot_version = r.version
            WHERE s.name = p_stream;
    END IF;
    RETURN QUERY SELECT r.status, r.version, r.first_position, r.last_position, r.tx;
END $$;

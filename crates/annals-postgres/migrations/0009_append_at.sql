-- The decider's append in one round trip: at an exact version; when refused, the answer
-- also carries the stream's events from the expected version on (at most p_limit), read
-- after the refusal, so the caller catches up without a read of its own. The first row is
-- the status (0 written, 1 refused; version, positions and tx as `append` returns them);
-- event rows follow a refusal (status 2), with the columns of a read and `batch_start`.
-- An id already recorded fails as in `append` (a unique violation the caller classifies).
CREATE FUNCTION {schema}.append_at(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[], p_limit bigint)
RETURNS TABLE (status smallint, version bigint, first_position bigint, last_position bigint,
               tx text, e_tx text, e_position bigint, e_stream text, e_version bigint,
               e_recorded bigint, e_type text, e_data bytea, e_metadata bytea, e_id uuid,
               e_correlation uuid, e_causation uuid, e_batch_start bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT a.status, a.version, a.first_position, a.last_position, a.tx INTO r
        FROM {schema}.append(p_stream, p_category, 3::smallint, p_expected, p_ids, p_types,
                             p_data, p_metadata, p_correlation, p_causation) a;
    RETURN QUERY SELECT r.status, r.version, r.first_position, r.last_position, r.tx,
        NULL::text, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
        NULL::bytea, NULL::bytea, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint;
    IF r.status = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text,
        e.tx_id::text, e.position, s.name, e.stream_version,
        (extract(epoch FROM e.recorded_at) * 1000000)::bigint, e.event_type, e.data,
        e.metadata, e.event_id, e.correlation_id, e.causation_id, e.batch_start
        FROM {schema}.streams s JOIN {schema}.events e ON e.stream_id = s.stream_id
        WHERE s.name = p_stream AND e.stream_version >= p_expected
        ORDER BY e.stream_version LIMIT p_limit;
END $$;

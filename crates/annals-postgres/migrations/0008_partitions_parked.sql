-- Annals PostgreSQL schema, version 8: partitions filtered in SQL, and parked streams.

-- FNV-1a 64 of a stream name's UTF-8 bytes, as annals::Partition::hash computes it. The
-- unsigned 64-bit product is computed in two 32-bit halves (bigint arithmetic checks
-- overflow; shifts do not), and the result is stored as its bit pattern.
CREATE FUNCTION {schema}.fnv1a64(p_name text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    b  bytea  := convert_to(p_name, 'UTF8');
    hi bigint := 3421674724; -- 0xcbf29ce4
    lo bigint := 2216829733; -- 0x84222325
    t  bigint;
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        lo := lo # get_byte(b, i);
        -- h * (2^40 + 435) mod 2^64, with h = hi * 2^32 + lo
        t  := lo * 435;
        hi := (hi * 435 + (t >> 32) + (lo << 8)) & 4294967295;
        lo := t & 4294967295;
    END LOOP;
    RETURN (hi << 32) | lo;
END $$;

-- The hash is computed once per stream, when its row is created.
ALTER TABLE {schema}.streams ADD COLUMN partition_hash bigint;
UPDATE {schema}.streams SET partition_hash = {schema}.fnv1a64(name);
ALTER TABLE {schema}.streams ALTER COLUMN partition_hash SET NOT NULL;

CREATE FUNCTION {schema}.set_partition_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.partition_hash := {schema}.fnv1a64(NEW.name);
    RETURN NEW;
END $$;

CREATE TRIGGER streams_partition_hash BEFORE INSERT ON {schema}.streams
    FOR EACH ROW EXECUTE FUNCTION {schema}.set_partition_hash();

DROP FUNCTION {schema}.read_all_page(xid8, bigint, text[], text[], bigint, bigint);

-- One page, as in version 4, also filtered to one partition of the streams when
-- p_part_count > 0.
CREATE FUNCTION {schema}.read_all_page(
    p_tx xid8, p_position bigint, p_categories text[], p_types text[],
    p_limit bigint, p_window bigint, p_part_index bigint, p_part_count bigint
) RETURNS TABLE (
    horizon text, tx_id text, event_position bigint, name text, stream_version bigint,
    recorded_at bigint, event_type text, data bytea, metadata bytea, event_id uuid,
    correlation_id uuid, causation_id uuid
) LANGUAGE sql
SET enable_sort = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_material = off
SET jit = off
AS $$
    WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT h.xmin::text, p.* FROM h LEFT JOIN LATERAL (
        SELECT e.tx_id::text, e.position, s.name, e.stream_version,
               (extract(epoch FROM e.recorded_at) * 1000000)::bigint, e.event_type, e.data,
               e.metadata, e.event_id, e.correlation_id, e.causation_id
        FROM (
            SELECT w.tx_id, w.position FROM {schema}.events w
            WHERE (w.tx_id, w.position) > (p_tx, p_position) AND w.tx_id < h.xmin
            ORDER BY w.tx_id, w.position LIMIT p_window
        ) win
        JOIN {schema}.events e ON e.tx_id = win.tx_id AND e.position = win.position
        JOIN {schema}.streams s ON s.stream_id = e.stream_id
        WHERE (cardinality(p_categories) = 0 OR s.category = ANY (p_categories))
          AND (cardinality(p_types) = 0 OR e.event_type = ANY (p_types))
          AND (p_part_count = 0 OR
               ((((s.partition_hash >> 32) & 4294967295) % p_part_count)
                 * (4294967296 % p_part_count)
                 + (s.partition_hash & 4294967295)) % p_part_count = p_part_index)
        ORDER BY win.tx_id, win.position
        LIMIT p_limit
    ) p ON true
$$;

-- Streams a consumer group parked after its handler kept failing: a bounded record
-- (versions and errors, never the events).
CREATE TABLE {schema}.parked (
    group_name   text   NOT NULL,
    stream       text   NOT NULL,
    from_version bigint NOT NULL,
    to_version   bigint NOT NULL,
    attempts     integer NOT NULL,
    first_error  text   NOT NULL,
    last_error   text   NOT NULL,
    parked_at    bigint NOT NULL,
    updated_at   bigint NOT NULL,
    PRIMARY KEY (group_name, stream)
);

-- A read-model apply records its progress optimistically: it read the progress without a
-- lock, applied the events after it, and now moves the progress from what it read. If
-- another applier moved it meanwhile, this fails with a serialization failure, which rolls
-- the whole apply back (its caller applies again from the new progress).
CREATE FUNCTION {schema}.advance_progress(
    p_projection text, p_stream text, p_exists boolean, p_from bigint, p_to bigint,
    p_schema integer
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_exists THEN
        -- A row built from the stream's first event is of the current schema; a row that
        -- had progress keeps the schema it was built with (only a rebuild changes it).
        UPDATE {schema}.projection_streams
            SET next_version = p_to,
                schema_version = CASE WHEN next_version = 0 THEN p_schema ELSE schema_version END
            WHERE projection = p_projection AND stream = p_stream AND next_version = p_from;
    ELSE
        INSERT INTO {schema}.projection_streams (projection, stream, next_version, schema_version)
            VALUES (p_projection, p_stream, p_to, p_schema)
            ON CONFLICT (projection, stream) DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'annals: the progress of % in % moved during the apply; apply again',
            p_projection, p_stream
            USING ERRCODE = 'serialization_failure';
    END IF;
END $$;

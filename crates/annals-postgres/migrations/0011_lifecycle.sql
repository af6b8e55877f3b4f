-- Annals PostgreSQL schema, version 11: stream deletion, truncation, retention and
-- scavenging.

-- Reads show a stream's events from `start` on (truncation, soft deletion) that retention
-- has not expired. A tombstoned stream (hard deletion) can never be written or read again:
-- its version is frozen, and the append functions answer status 5 (deleted) for it, each
-- append of a group on its own. `max_age` (microseconds) and `max_count` are the stream's
-- retention in effect (its own, else its category's), kept on the row reads already join.
ALTER TABLE {schema}.streams
    ADD COLUMN start bigint NOT NULL DEFAULT 0,
    ADD COLUMN tombstone boolean NOT NULL DEFAULT false,
    ADD COLUMN max_age bigint,
    ADD COLUMN max_count bigint;

-- Streams a scavenge looks at.
CREATE INDEX streams_hidden ON {schema}.streams (stream_id)
    WHERE start > 0 OR tombstone OR max_age IS NOT NULL OR max_count IS NOT NULL;

CREATE FUNCTION {schema}.refuse_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'annals: stream % was deleted for good', OLD.name
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

-- The functions below never write a tombstone's version; this refuses anything else that
-- tries.
CREATE TRIGGER streams_tombstone BEFORE UPDATE OF version ON {schema}.streams
    FOR EACH ROW WHEN (OLD.tombstone AND NEW.version <> OLD.version)
    EXECUTE FUNCTION {schema}.refuse_tombstone();

-- The retention policies as set, per category (kind 0) or stream (kind 1).
CREATE TABLE {schema}.retention (
    kind      smallint NOT NULL,
    name      text     NOT NULL,
    max_age   bigint,
    max_count bigint,
    PRIMARY KEY (kind, name)
);

-- New streams get their policy in effect when their row is created.
CREATE OR REPLACE FUNCTION {schema}.set_partition_hash() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    NEW.partition_hash := {schema}.fnv1a64(NEW.name);
    SELECT p.max_age, p.max_count INTO r FROM {schema}.retention p
        WHERE (p.kind = 1 AND p.name = NEW.name) OR (p.kind = 0 AND p.name = NEW.category)
        ORDER BY p.kind DESC LIMIT 1;
    IF FOUND THEN
        NEW.max_age := r.max_age;
        NEW.max_count := r.max_count;
    END IF;
    RETURN NEW;
END $$;

-- A row here exists only inside a scavenging transaction (inserted and deleted in it, so
-- no other transaction ever sees one): events may be deleted by that transaction alone;
-- every other UPDATE, DELETE or TRUNCATE of events is refused as before.
CREATE TABLE {schema}.scavenging (tx xid8 NOT NULL);

CREATE OR REPLACE FUNCTION {schema}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM {schema}.scavenging
                                    WHERE tx = pg_current_xact_id()) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'annals: events are immutable (% refused; annals scavenge removes events reads no longer show)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

-- `append`, as in version 1, answering status 5 for a tombstone.
CREATE OR REPLACE FUNCTION {schema}.append(
    p_stream text, p_category text, p_kind smallint, p_expected bigint,
    p_ids uuid[], p_types text[], p_data bytea[], p_metadata bytea[],
    p_correlation uuid[], p_causation uuid[])
RETURNS TABLE (status smallint, version bigint, first_position bigint, last_position bigint, tx text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n     bigint := cardinality(p_ids);
    sid   bigint;
    v_start bigint;
    last  xid8;
BEGIN
    IF p_kind = 1 OR (p_kind = 3 AND p_expected = 0) THEN
        INSERT INTO {schema}.streams (name, category, version) VALUES (p_stream, p_category, n)
            ON CONFLICT (name) DO NOTHING RETURNING stream_id INTO sid;
        v_start := 0;
    ELSIF p_kind = 3 THEN
        UPDATE {schema}.streams s SET version = s.version + n,
                last_tx = greatest(s.last_tx, pg_current_xact_id())
            WHERE s.name = p_stream AND s.version = p_expected AND NOT s.tombstone
            RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, v_start, last;
    ELSE
        UPDATE {schema}.streams s SET version = s.version + n,
                last_tx = greatest(s.last_tx, pg_current_xact_id())
            WHERE s.name = p_stream AND NOT s.tombstone
            RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, v_start, last;
        IF sid IS NULL AND p_kind = 0 THEN
            INSERT INTO {schema}.streams (name, category, version) VALUES (p_stream, p_category, n)
                ON CONFLICT (name) DO NOTHING RETURNING stream_id INTO sid;
            v_start := 0;
            IF sid IS NULL THEN
                UPDATE {schema}.streams s SET version = s.version + n,
                        last_tx = greatest(s.last_tx, pg_current_xact_id())
                    WHERE s.name = p_stream AND NOT s.tombstone
                    RETURNING s.stream_id, s.version - n, s.last_tx INTO sid, v_start, last;
            END IF;
        END IF;
    END IF;
    IF last IS NOT NULL AND last <> pg_current_xact_id() THEN
        RAISE EXCEPTION 'annals: this transaction is older than the last writer of stream %; retry it', p_stream
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF sid IS NULL THEN
        RETURN QUERY SELECT CASE WHEN s.tombstone THEN 5::smallint ELSE 1::smallint END,
                s.version, NULL::bigint, NULL::bigint, NULL::text
            FROM {schema}.streams s WHERE s.name = p_stream
            UNION ALL SELECT 1::smallint, 0::bigint, NULL::bigint, NULL::bigint, NULL::text
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.streams s WHERE s.name = p_stream);
        RETURN;
    END IF;
    RETURN QUERY
    WITH ins AS (
        INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id, event_type,
                                     data, metadata, correlation_id, causation_id)
        SELECT sid, v_start + u.ord - 1, v_start, u.id, u.t, u.d, u.m, u.c, u.k
        FROM unnest(p_ids, p_types, p_data, p_metadata, p_correlation, p_causation)
             WITH ORDINALITY AS u (id, t, d, m, c, k, ord)
        RETURNING events.position
    )
    SELECT 0::smallint, v_start + n, min(ins.position), max(ins.position), pg_current_xact_id()::text
    FROM ins;
END $$;

-- The rows of a refused append `p_idx` (status 2): the events of `p_stream` from
-- `p_expected` on that reads show, at most `p_limit`, so a refused decision catches up
-- without a read of its own.
CREATE FUNCTION {schema}.refusal_tail(p_idx int, p_stream text, p_expected bigint, p_limit bigint)
RETURNS TABLE (idx int, status smallint, version bigint, first_position bigint,
               last_position bigint, tx text, e_tx text, e_position bigint, e_stream text,
               e_version bigint, e_recorded bigint, e_type text, e_data bytea,
               e_metadata bytea, e_id uuid, e_correlation uuid, e_causation uuid,
               e_batch_start bigint)
LANGUAGE sql STABLE AS $$
    SELECT p_idx, 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
        NULL::text, e.tx_id::text, e.position, s.name, e.stream_version,
        (extract(epoch FROM e.recorded_at) * 1000000)::bigint, e.event_type, e.data,
        e.metadata, e.event_id, e.correlation_id, e.causation_id, e.batch_start
    FROM {schema}.streams s JOIN {schema}.events e ON e.stream_id = s.stream_id
    WHERE s.name = p_stream AND e.stream_version >= p_expected
      AND NOT s.tombstone AND e.stream_version >= s.start
      AND (s.max_count IS NULL OR e.stream_version >= s.version - s.max_count)
      AND (s.max_age IS NULL OR e.recorded_at >= now() - s.max_age * interval '1 microsecond')
    ORDER BY e.stream_version LIMIT p_limit
$$;

-- The group functions, as in version 9, with status 5 for a tombstone; a refusal's
-- events (`refusal_tail`) are those reads show.
CREATE OR REPLACE FUNCTION {schema}.append_group_each(
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
            RETURN QUERY SELECT * FROM {schema}.refusal_tail(i, p_streams[i], p_expected[i], p_limit);
        END IF;
        lo := hi + 1;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION {schema}.append_group(
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
    starts   bigint[] := array_fill(NULL::bigint, ARRAY[k]);
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
    FOR r IN SELECT s.name, s.stream_id, s.version, s.last_tx, s.tombstone FROM {schema}.streams s
             WHERE s.name = ANY (p_streams) ORDER BY s.name FOR UPDATE LOOP
        i := array_position(p_streams, r.name);
        sid[i] := r.stream_id;
        IF r.tombstone THEN
            st[i] := 5;
            ver[i] := r.version;
        ELSIF r.last_tx > me THEN
            st[i] := 4;
        ELSIF p_kinds[i] = 1 OR (p_kinds[i] = 3 AND p_expected[i] <> r.version) THEN
            st[i] := 1;
            ver[i] := r.version;
        ELSE
            starts[i] := r.version;
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
                starts[i] := 0;
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
            FROM unnest(sid, ver, starts, st) u (id, v, b, status)
            WHERE s.stream_id = u.id AND u.status = 0 AND u.b > 0;
        FOR r IN
            WITH a AS (
                SELECT c.i, sum(p_counts[c.i]) OVER (ORDER BY c.i) - p_counts[c.i] + 1 AS lo
                FROM generate_subscripts(p_streams, 1) c (i)
            ), ins AS (
                INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id,
                                             event_type, data, metadata, correlation_id,
                                             causation_id)
                SELECT sid[a.i], starts[a.i] + j - a.lo, starts[a.i], p_ids[j], p_types[j],
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
            RETURN QUERY SELECT * FROM {schema}.refusal_tail(i, p_streams[i], p_expected[i], p_limit);
        END IF;
    END LOOP;
END $$;

-- One page, as in version 8, of the events reads show; with, when the page is short, the
-- last row of a full window (`window_tx`, `window_position`: the page may resume after
-- it), found in the same statement, so in the same snapshot (a scavenge deleting rows
-- between two statements would stretch a window counted again, past events never shown).
DROP FUNCTION {schema}.read_all_page(xid8, bigint, text[], text[], bigint, bigint, bigint, bigint);
DROP FUNCTION {schema}.read_all_window(xid8, bigint, xid8, bigint);

CREATE FUNCTION {schema}.read_all_page(
    p_tx xid8, p_position bigint, p_categories text[], p_types text[],
    p_limit bigint, p_window bigint, p_part_index bigint, p_part_count bigint
) RETURNS TABLE (
    horizon text, window_tx text, window_position bigint,
    tx_id text, event_position bigint, name text, stream_version bigint,
    recorded_at bigint, event_type text, data bytea, metadata bytea, event_id uuid,
    correlation_id uuid, causation_id uuid
) LANGUAGE sql
SET enable_sort = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_material = off
SET jit = off SET max_parallel_workers_per_gather = 0
AS $$
    WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
    p AS MATERIALIZED (SELECT l.* FROM h CROSS JOIN LATERAL (
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
        WHERE NOT s.tombstone AND e.stream_version >= s.start
          AND (s.max_count IS NULL OR e.stream_version >= s.version - s.max_count)
          AND (s.max_age IS NULL OR e.recorded_at >= now() - s.max_age * interval '1 microsecond')
          AND (cardinality(p_categories) = 0 OR s.category = ANY (p_categories))
          AND (cardinality(p_types) = 0 OR e.event_type = ANY (p_types))
          AND (p_part_count = 0 OR
               ((((s.partition_hash >> 32) & 4294967295) % p_part_count)
                 * (4294967296 % p_part_count)
                 + (s.partition_hash & 4294967295)) % p_part_count = p_part_index)
        ORDER BY win.tx_id, win.position
        LIMIT p_limit
    ) l),
    w AS MATERIALIZED (
        SELECT x.tx_id, x.position FROM h, {schema}.events x
        WHERE (SELECT count(*) FROM p) < p_limit
          AND (x.tx_id, x.position) > (p_tx, p_position) AND x.tx_id < h.xmin
        ORDER BY x.tx_id, x.position OFFSET p_window - 1 LIMIT 1
    )
    SELECT h.xmin::text, w.tx_id::text, w.position, p.* FROM h LEFT JOIN w ON true
        LEFT JOIN p ON true
$$;

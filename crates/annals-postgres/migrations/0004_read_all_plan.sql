-- Annals PostgreSQL schema, version 4: read-all pages through functions whose plans do not
-- depend on table statistics.
--
-- A page must walk events in feed order from the resume point and stop at its limit. Left
-- to itself, the planner sometimes chose otherwise (with stale statistics after a bulk
-- load, or told that a category is small): start from the category's streams, or scan and
-- sort every event after the resume point, on every page: quadratic over a catch-up. These
-- functions turn off the plans that read more than the page (sorts, hash and merge joins,
-- bitmap and sequential scans), which leaves the ordered walk of the primary key with
-- index lookups per row. JIT is off too: the penalties those settings add to a plan's
-- cost would otherwise cross the JIT threshold and compile every call (~150 ms).

-- One page: events after (p_tx, p_position) below the visibility horizon, looking at most
-- at p_window events and returning at most p_limit of those matching the filters. The
-- horizon is returned on every row (one row with NULL event columns when none matched).
CREATE FUNCTION {schema}.read_all_page(
    p_tx xid8, p_position bigint, p_categories text[], p_types text[],
    p_limit bigint, p_window bigint
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
        ORDER BY win.tx_id, win.position
        LIMIT p_limit
    ) p ON true
$$;

-- The last event of the same window (below the given horizon) and how many the window
-- held: where a page that found fewer matches than its limit resumes.
CREATE FUNCTION {schema}.read_all_window(
    p_tx xid8, p_position bigint, p_horizon xid8, p_window bigint
) RETURNS TABLE (tx_id text, event_position bigint, n bigint) LANGUAGE sql
SET enable_sort = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_bitmapscan = off SET enable_seqscan = off SET jit = off
AS $$
    SELECT x.tx_id::text, x.position, x.n FROM (
        SELECT w.tx_id, w.position, row_number() OVER (ORDER BY w.tx_id, w.position) AS n
        FROM (
            SELECT tx_id, position FROM {schema}.events
            WHERE (tx_id, position) > (p_tx, p_position) AND tx_id < p_horizon
            ORDER BY tx_id, position LIMIT p_window
        ) w
    ) x
    ORDER BY x.n DESC LIMIT 1
$$;

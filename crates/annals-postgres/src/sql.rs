//! The store's SQL, with its schema quoted in, built once per store.

/// The statements of one schema.
pub(crate) struct Sql {
    pub(crate) append: String,
    pub(crate) version: String,
    pub(crate) lock_shown: String,
    pub(crate) read_forward: String,
    pub(crate) read_backward: String,
    pub(crate) read_after: String,
    pub(crate) read_set: String,
    pub(crate) read_before: String,
    pub(crate) read_set_before: String,
    pub(crate) read_all: String,
    pub(crate) head_position: String,
    pub(crate) classify: String,
    pub(crate) batch_start: String,
    pub(crate) checkpoint_load: String,
    pub(crate) checkpoint_commit: String,
    pub(crate) checkpoint_list: String,
    pub(crate) held_back: String,
    pub(crate) progress_lock: String,
    pub(crate) leases_acquire: String,
    pub(crate) leases_release: String,
    pub(crate) leases_leave: String,
    pub(crate) leases_members: String,
    pub(crate) append_with_snapshot: String,
    pub(crate) append_group: String,
    /// The group statement, by whether an append may create its stream (`[1]`: the
    /// statement that creates streams) and by how the events are read from their arrays
    /// (`[_][1]`: one `unnest`, for groups with many events; see [`append_set`]).
    pub(crate) append_set: [[String; 2]; 2],
    pub(crate) read_head: String,
    pub(crate) progress_rebuilt: String,
    pub(crate) progress_skip: String,
    pub(crate) progress_get: String,
    pub(crate) progress_advance: String,
    pub(crate) projection_rows: String,
    pub(crate) parked_upsert: String,
    pub(crate) parked_list: String,
    pub(crate) parked_delete: String,
    pub(crate) import: String,
}

/// An event's columns, as `event` reads them (the transaction id and the time in binary).
const EVENT_COLUMNS: &str = "e.tx_id, e.position, s.name, e.stream_version, e.recorded_at, \
     e.event_type, e.data, e.metadata, e.event_id, e.correlation_id, e.causation_id";

/// The events reads show of stream `s` (`e` its event): not truncated or deleted, not
/// expired by retention (migration 11). [`stream_page`] applies the same rule to the pages
/// of one stream: change both together.
const SHOWN: &str = "NOT s.tombstone AND e.stream_version >= s.start \
     AND (s.max_count IS NULL OR e.stream_version >= s.version - s.max_count) \
     AND (s.max_age IS NULL OR e.recorded_at >= now() - s.max_age * interval '1 microsecond')";

/// The range, order and limit of a forward page.
const FORWARD: &str =
    "e.stream_version >= $2 AND e.stream_version < $3 ORDER BY e.stream_version LIMIT $4";

/// How many columns [`STREAM_EVENT_COLUMNS`] has: `read_after`'s tombstone and start come
/// next.
pub(crate) const STREAM_EVENT_WIDTH: usize = 11;

/// A row of [`STREAM_EVENT_COLUMNS`] with no event.
const NO_EVENT: &str = "NULL::xid8, NULL::bigint, NULL::text, NULL::bigint, \
     NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea, NULL::uuid, NULL::uuid, NULL::uuid";

/// The same for reads of one stream, whose name the reader knows (`event_in`).
const STREAM_EVENT_COLUMNS: &str = "e.tx_id, e.position, NULL::text, e.stream_version, \
     e.recorded_at, e.event_type, e.data, e.metadata, e.event_id, e.correlation_id, \
     e.causation_id";

/// A page of the stream named `$1`: [`STREAM_EVENT_COLUMNS`] of the events [`SHOWN`] within
/// `range_order` (the version range, order and limit). The stream row is read once, and
/// what the rule takes from it (the stream's id unless it is a tombstone, the first version
/// shown, the oldest time shown) become constants of the plan (init plans), so the events'
/// own index finds the page in its order and stops at the limit. (Joined to the stream row,
/// the planner could take the row first and then sort: a tail of 10 read and sorted the
/// whole stream.) No row (a missing or deleted stream): no events. With `tombstone`, one
/// more row follows the page, with no event and the stream row's tombstone and start
/// (none: no stream), from the same read of the row.
fn stream_page(schema: &str, range_order: &str, tombstone: bool) -> String {
    let page = format!(
        "SELECT {STREAM_EVENT_COLUMNS}{} FROM {schema}.events e \
         WHERE e.stream_id = (SELECT stream_id FROM s WHERE NOT tombstone) \
         AND e.stream_version >= (SELECT greatest(start, version - max_count) FROM s) \
         AND e.recorded_at >= coalesce((SELECT now() - max_age * interval '1 microsecond' FROM s), \
         '-infinity') AND {range_order}",
        if tombstone {
            ", false, NULL::bigint"
        } else {
            ""
        }
    );
    let row = format!(
        "WITH s AS MATERIALIZED (SELECT stream_id, tombstone, start, version, max_count, max_age \
         FROM {schema}.streams WHERE name = $1)"
    );
    match tombstone {
        false => format!("{row} {page}"),
        true => {
            format!(
                "{row} SELECT * FROM ({page}) p UNION ALL SELECT {NO_EVENT}, tombstone, start FROM s"
            )
        }
    }
}

/// The range, order and limit of a backward page.
const BACKWARD: &str =
    "e.stream_version < $2 AND e.stream_version >= $3 ORDER BY e.stream_version DESC LIMIT $4";

/// The first pages of several streams (`read_group`): `$1` names, `$2` versions (the first
/// read forward; the one read below backward), `$3` rows asked for. Each stream row is
/// found by name (an index probe per read) and what [`SHOWN`] takes from it computed once;
/// each stream's events, then a row with its tombstone and start, tagged with the read's
/// number.
fn read_set(schema: &str, backward: bool) -> String {
    let (low, range, order) = match backward {
        false => ("greatest(a.v, s.start, s.version - s.max_count)", "", ""),
        true => (
            "greatest(s.start, s.version - s.max_count)",
            "AND e.stream_version < s.v ",
            " DESC",
        ),
    };
    format!(
        "WITH a AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
           WITH ORDINALITY AS a (name, v, n, i)), \
         s AS MATERIALIZED (\
           SELECT a.i, a.n, a.v, s.stream_id, s.tombstone, s.start, {low} AS low, \
                  coalesce(now() - s.max_age * interval '1 microsecond', '-infinity') AS after \
           FROM a CROSS JOIN LATERAL (\
             SELECT * FROM {schema}.streams s WHERE s.name = a.name OFFSET 0) s) \
         SELECT s.i, e.*, NULL::bool, NULL::bigint FROM s CROSS JOIN LATERAL (\
           SELECT {STREAM_EVENT_COLUMNS} FROM {schema}.events e \
           WHERE e.stream_id = s.stream_id AND NOT s.tombstone \
             AND e.stream_version >= s.low {range}AND e.recorded_at >= s.after \
           ORDER BY e.stream_version{order} LIMIT s.n) e \
         UNION ALL SELECT s.i, {NO_EVENT}, s.tombstone, s.start FROM s"
    )
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let from =
            format!("FROM {schema}.events e JOIN {schema}.streams s ON s.stream_id = e.stream_id");
        Self {
            append: format!("SELECT status, version, first_position, last_position, tx FROM {schema}.append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            append_with_snapshot: format!("SELECT status, version, first_position, last_position, tx FROM {schema}.append_with_snapshot_shown($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            append_group: format!("SELECT * FROM {schema}.append_group_shown($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"),
            append_set: [false, true]
                .map(|create| [false, true].map(|unnested| append_set(schema, create, unnested))),
            // One statement: the head row, then the events from the snapshot on (the
            // snapshot itself only on the first row).
            // A snapshot holds the state of every event before it, so none is used for a
            // stream under retention; the events are those reads show. A tombstone answers
            // `tombstone` true.
            read_head: format!(
                "SELECT s.version, h.version, \
                 CASE WHEN e.stream_version IS NULL OR e.stream_version = coalesce(h.version, 0) THEN h.data END, \
                 {EVENT_COLUMNS}, s.tombstone, s.start FROM {schema}.streams s \
                 CROSS JOIN LATERAL (SELECT CASE WHEN s.max_age IS NULL AND s.max_count IS NULL THEN s.snapshot_version END AS version, \
                                            CASE WHEN s.max_age IS NULL AND s.max_count IS NULL THEN s.snapshot END AS data) h \
                 LEFT JOIN LATERAL \
                 (SELECT * FROM {schema}.events e WHERE e.stream_id = s.stream_id \
                  AND e.stream_version >= coalesce(h.version, 0) AND {SHOWN} ORDER BY e.stream_version LIMIT $2) e ON true \
                 WHERE s.name = $1 ORDER BY e.stream_version"
            ),
            import: format!("SELECT status, written, refused_stream, refused_version, actual FROM {schema}.import_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            version: format!("SELECT version, tombstone FROM {schema}.streams WHERE name = $1"),
            // The rows of a multi-stream append's streams (`$1` names, `$2` the first
            // version each caller's state holds), every one locked, in the order the append
            // then updates them and groups lock theirs (the names' bytes: `COLLATE "C"`, as
            // Rust orders them), with their versions and whether they start past it. (No
            // condition on that: the planner would push it below the lock, and the rows
            // not moved would stay free for a deletion before the append.)
            lock_shown: format!(
                "SELECT s.name, s.version, s.start > a.f \
                 FROM {schema}.streams s JOIN unnest($1::text[], $2::bigint[]) AS a (name, f) \
                 ON s.name = a.name ORDER BY s.name COLLATE \"C\" FOR UPDATE OF s"
            ),
            // A page of one stream: see `stream_page`.
            read_forward: stream_page(schema, FORWARD, false),
            read_backward: stream_page(schema, BACKWARD, false),
            // The first page of a forward read (what a decider loads, or catches up on
            // from its cached state): `read_forward` and the stream row's tombstone, so an
            // empty answer (a new stream, nothing new) tells an ended stream from a deleted
            // one in the same statement.
            read_after: stream_page(schema, FORWARD, true),
            // The first pages of several streams' forward reads (`read_group`): see
            // `read_set`.
            read_set: read_set(schema, false),
            // A stream's tail (the last events below `$2`, newest first) with the stream
            // row's tombstone, as `read_after` (a group of one tail read).
            read_before: stream_page(schema, BACKWARD, true),
            // The tails of several streams (`read_group`): `read_set` backward, `$2` the
            // versions each read stays below.
            read_set_before: read_set(schema, true),
            // A page of the feed: see `read_all_page`.
            read_all: read_all_page(schema),
            // The last event below the visibility horizon, as read-all sees it (the primary
            // key, read backwards). Ordered by the table's columns: named bare, `tx_id` would
            // be the output column, its text, and "999" sorts after "1002".
            head_position: format!("SELECT e.tx_id::text, e.position FROM {schema}.events e WHERE e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"),
            classify: format!("SELECT e.event_id, s.name, e.stream_version, e.batch_start, e.tx_id::text, e.position {from} WHERE e.event_id = ANY ($1)"),
            batch_start: format!("SELECT e.batch_start {from} WHERE s.name = $1 AND e.stream_version = $2"),
            checkpoint_load: format!("SELECT position FROM {schema}.checkpoints WHERE group_name = $1 AND source = $2"),
            checkpoint_commit: format!(
                "INSERT INTO {schema}.checkpoints (group_name, source, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_name, source) DO UPDATE SET position = excluded.position, updated_at = now()"
            ),
            checkpoint_list: format!("SELECT group_name, source, position FROM {schema}.checkpoints ORDER BY group_name, source"),
            // Creates the row or locks it, and returns its latest committed progress (an
            // upsert sees the row another transaction committed while it waited, which a
            // SELECT of the same statement would not).
            progress_lock: format!(
                "INSERT INTO {schema}.projection_streams AS p (projection, stream, next_version) \
                 VALUES ($1, $2, 0) ON CONFLICT (projection, stream) \
                 DO UPDATE SET next_version = p.next_version RETURNING p.next_version"
            ),
            progress_rebuilt: format!(
                "INSERT INTO {schema}.projection_streams (projection, stream, next_version, schema_version) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (projection, stream) DO UPDATE \
                 SET next_version = excluded.next_version, schema_version = excluded.schema_version"
            ),
            // A row with nothing applied yet takes the current schema, as an apply's does.
            progress_skip: format!(
                "INSERT INTO {schema}.projection_streams AS p (projection, stream, next_version, schema_version) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (projection, stream) DO UPDATE \
                 SET next_version = greatest(p.next_version, excluded.next_version), \
                     schema_version = CASE WHEN p.next_version = 0 THEN excluded.schema_version \
                                           ELSE p.schema_version END \
                 RETURNING p.next_version"
            ),
            progress_advance: format!(
                "SELECT {schema}.advance_progress($1, $2, $3, $4, $5, $6)"
            ),
            progress_get: format!(
                "SELECT next_version, schema_version FROM {schema}.projection_streams \
                 WHERE projection = $1 AND stream = $2"
            ),
            projection_rows: format!(
                "SELECT stream, next_version, schema_version FROM {schema}.projection_streams \
                 WHERE projection = $1 ORDER BY stream"
            ),
            parked_upsert: format!(
                "INSERT INTO {schema}.parked (group_name, stream, from_version, to_version, attempts, \
                 first_error, last_error, parked_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (group_name, stream) DO UPDATE SET \
                 from_version = least(parked.from_version, excluded.from_version), \
                 to_version = greatest(parked.to_version, excluded.to_version), \
                 attempts = excluded.attempts, last_error = excluded.last_error, \
                 updated_at = excluded.updated_at"
            ),
            parked_list: format!(
                "SELECT group_name, stream, from_version, to_version, attempts, first_error, \
                 last_error, parked_at, updated_at FROM {schema}.parked \
                 WHERE $1::text IS NULL OR group_name = $1 ORDER BY group_name, stream"
            ),
            parked_delete: format!(
                "DELETE FROM {schema}.parked WHERE group_name = $1 AND stream = $2"
            ),
            leases_acquire: format!("SELECT held, fair_share, live_members FROM {schema}.acquire_leases($1, $2, $3, make_interval(secs => $4))"),
            leases_leave: format!("WITH gone AS (DELETE FROM {schema}.group_members WHERE group_name = $1 AND member = $2) DELETE FROM {schema}.leases WHERE group_name = $1 AND owner = $2"),
            leases_members: format!(
                "SELECT m.member, coalesce(array_agg(l.partition ORDER BY l.partition) FILTER (WHERE l.partition IS NOT NULL), '{{}}') \
                 FROM {schema}.group_members m LEFT JOIN {schema}.leases l \
                 ON l.group_name = m.group_name AND l.owner = m.member AND l.expires_at > now() \
                 WHERE m.group_name = $1 AND m.expires_at > now() GROUP BY m.member ORDER BY m.member"
            ),
            leases_release: format!("DELETE FROM {schema}.leases WHERE group_name = $1 AND owner = $2 AND partition = ANY ($3)"),
            held_back: format!(
                "SELECT (SELECT count(*) FROM {schema}.events WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())), \
                        (SELECT extract(epoch FROM now() - min(xact_start))::float8 FROM pg_stat_activity \
                          WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid())"
            ),
        }
    }
}

/// A page of the feed, with parameters (after tx as text, after position, categories, event
/// types, limit, window, partition index, partition count): the events after the position
/// below the visibility horizon, in feed order, looking at the `window` events that follow it
/// at most and returning the first `limit` of those the filters and the streams' lifecycle
/// show. Rows, in this order: the page's events (`NULL, event columns...`); the horizon
/// (`horizon, NULL...`); and, only when the page is short, the window's last event if the
/// window was full (`NULL, tx_id, position, NULL...`), so a short page tells where to
/// resume. The outer `LIMIT` stops before that last part when the page is full: its scan of
/// the window's keys never runs then.
///
/// The plan must walk the primary key from the position and stop at the page: the feed's
/// connections turn off every other kind of plan (see `FEED_OPTIONS`), and the stream row is
/// a lateral lookup by id alone, with what depends on the stream alone computed there
/// (tombstone, category, partition, the lowest version shown), so PostgreSQL memoizes it
/// across a stream's run of events; what depends on the event is checked above it. No
/// function and no materialized page: the rows stream out as they are found.
fn read_all_page(schema: &str) -> String {
    format!(
        "SELECT * FROM (\
         WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
         SELECT NULL::xid8, l.* FROM h CROSS JOIN LATERAL (\
           SELECT j.tx_id, j.position, j.name, j.stream_version, j.recorded_at, j.event_type, \
                  j.data, j.metadata, j.event_id, j.correlation_id, j.causation_id \
           FROM (\
             SELECT e.*, s.name, coalesce(s.shown AND e.stream_version >= s.low \
                    AND (s.max_age IS NULL \
                         OR e.recorded_at >= now() - s.max_age * interval '1 microsecond') \
                    AND (cardinality($4::text[]) = 0 OR e.event_type = ANY ($4)), \
                    false) AS shown \
             FROM (\
               SELECT w.* FROM {schema}.events w \
               WHERE (w.tx_id, w.position) > ($1::text::xid8, $2::bigint) AND w.tx_id < h.xmin \
               ORDER BY w.tx_id, w.position LIMIT $6::bigint) e \
             LEFT JOIN LATERAL (\
               SELECT s.name, s.max_age, \
                      NOT s.tombstone \
                      AND (cardinality($3::text[]) = 0 OR s.category = ANY ($3)) \
                      AND ($8::bigint = 0 OR \
                           ((((s.partition_hash >> 32) & 4294967295) % $8) \
                             * (4294967296 % $8) \
                             + (s.partition_hash & 4294967295)) % $8 = $7::bigint) AS shown, \
                      CASE WHEN s.max_count IS NULL THEN s.start \
                           ELSE greatest(s.start, s.version - s.max_count) END AS low \
               FROM {schema}.streams s WHERE s.stream_id = e.stream_id OFFSET 0) s ON true \
             ORDER BY e.tx_id, e.position OFFSET 0) j \
           WHERE j.shown \
           ORDER BY j.tx_id, j.position LIMIT $5::bigint) l \
         UNION ALL \
         SELECT h.xmin, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM h \
         UNION ALL \
         SELECT NULL, x.tx_id, x.position, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
         FROM (SELECT x.tx_id, x.position FROM h, {schema}.events x \
               WHERE (x.tx_id, x.position) > ($1::text::xid8, $2::bigint) AND x.tx_id < h.xmin \
               ORDER BY x.tx_id, x.position OFFSET $6::bigint - 1 LIMIT 1) x\
         ) page LIMIT $5::bigint + 1"
    )
}

/// The settings of the feed's connections: only the ordered walk of the primary key with
/// index lookups per row is left to `read_all_page`'s planner. Left to itself, the planner
/// sometimes chose otherwise (with stale statistics after a bulk load, or told that a
/// category is small): start from the category's streams, or scan and sort every event after
/// the resume point, on every page, quadratic over a catch-up. JIT is off: the penalties these
/// settings add to a plan's cost would otherwise cross the JIT threshold and compile every
/// call (~150 ms). The plan is generic, made once per connection.
pub(crate) const FEED_OPTIONS: &str = "-c enable_sort=off -c enable_hashjoin=off \
     -c enable_mergejoin=off -c enable_bitmapscan=off -c enable_seqscan=off \
     -c enable_material=off -c jit=off -c max_parallel_workers_per_gather=0 \
     -c plan_cache_mode=force_generic_plan";

/// The settings of the grouped catch-ups' connections (`read_set`, and `read_after` for a
/// group of one): the feed's. Left to choose, PostgreSQL planned `read_set` anew at every
/// execution once the events table had grown (its generic plan's cost, made for ten streams,
/// always lost to a custom plan for the few of a group): 0.19 ms of planning for a 0.07 ms
/// read, on the path of every cached query. The plan is the same nested loop over index
/// probes either way; these settings keep it that whatever the statistics say.
pub(crate) const READ_OPTIONS: &str = FEED_OPTIONS;

/// The settings of the group commit's connections: the group statement's generic plan
/// always, and only nested loops over index probes, so each group's `UPDATE` walks its
/// appends in the group's order (by name) and locks their stream rows in that order.
pub(crate) const GROUP_OPTIONS: &str = "-c enable_hashjoin=off -c enable_mergejoin=off \
     -c enable_seqscan=off -c enable_material=off -c jit=off -c plan_cache_mode=force_generic_plan";

/// A group of appends as one statement: `append_group`'s parameters with each append's first
/// event index (`lo`, from 1) after the counts, and last (`$15`) the version each exact
/// append's state holds events from (refused, as a conflict at its version, when the
/// stream now starts past it; `i64::MAX` asks nothing); no PL/pgSQL, and a plan kept small (the
/// server's work per group is mostly fixed: each node costs at every execution). Each
/// append's stream row is found by name (an index probe per append, whatever the table's
/// size) and updated, in the group's order, which is by name (the group connections allow
/// only nested loops and index scans, so the rows are locked in that order and groups never
/// wait in a cycle; a deadlock PostgreSQL breaks would be answered as a retry). Admitted
/// appends move their streams on, new streams are created, and all the events are inserted
/// in the group's order.
///
/// With `unnested`, the events are read from their arrays by one `unnest`, joined to their
/// appends (a nested loop: events times appends); without, each append takes its events by
/// index (an element of an array of texts or byteas is found by walking the array from its
/// start: quadratic in the group's events, but cheaper for groups of a few events each).
///
/// Rows: status 7 per written append (its version, its stream's id, the transaction), status
/// 6 with the positions of its events (its stream's id, the lowest and the highest: one row
/// per append when `unnested`, else one per event); an append not written is answered from
/// the statement's snapshot: refused with the version and (when asked) the events after the
/// expected one that snapshot holds (the two always agree), deleted, or to be tried again (it
/// lost a race the snapshot does not show). An event id already recorded fails the whole
/// statement (unique violation): the caller then runs `append_group_shown`, which classifies each
/// append on its own.
fn append_set(schema: &str, create: bool, unnested: bool) -> String {
    // How the events are read, and the positions of each append's events: one row per
    // append when they are many, else one per event (no aggregation for single events).
    let (events, lowest, highest, by_stream) = match unnested {
        true => (
            "SELECT w.stream_id, w.start + (ev.j - w.lo), w.start, ev.id, ev.type, ev.data, \
               ev.meta, ev.corr, ev.caus \
             FROM w JOIN unnest($8::uuid[], $9::text[], $10::bytea[], $11::bytea[], $12::uuid[], \
                                $13::uuid[]) WITH ORDINALITY AS ev (id, type, data, meta, corr, caus, j) \
               ON ev.j >= w.lo AND ev.j < w.lo + w.n \
             ORDER BY w.i, ev.j",
            "min(ins.position)",
            "max(ins.position)",
            "GROUP BY ins.stream_id ",
        ),
        false => (
            "SELECT w.stream_id, w.start + (j - w.lo), w.start, ($8::uuid[])[j], ($9::text[])[j], \
               ($10::bytea[])[j], ($11::bytea[])[j], ($12::uuid[])[j], ($13::uuid[])[j] \
             FROM w, generate_series(w.lo, w.lo + w.n - 1) j \
             ORDER BY w.i, j",
            "ins.position",
            "ins.position",
            "",
        ),
    };
    // New streams are created only in groups with an append that may create its stream (the
    // statement without them does less at every execution).
    let creates = if create {
        format!(
            "c AS (\
           INSERT INTO {schema}.streams (name, category, version) \
           SELECT a.name, a.category, a.n FROM a \
           WHERE (a.kind IN (0, 1) OR (a.kind = 3 AND a.expected = 0)) \
             AND NOT EXISTS (SELECT 1 FROM {schema}.streams x WHERE x.name = a.name) \
           ORDER BY a.i \
           ON CONFLICT (name) DO NOTHING RETURNING stream_id, name), \
         w AS (\
           SELECT u.i, u.lo, u.n, u.stream_id, u.start FROM u \
           UNION ALL SELECT a.i, a.lo, a.n, c.stream_id, 0::bigint FROM c JOIN a ON a.name = c.name), "
        )
    } else {
        "w AS (SELECT u.i, u.lo, u.n, u.stream_id, u.start FROM u), ".to_owned()
    };
    format!(
        "WITH a AS (\
           SELECT a.i::int AS i, a.name, a.category, a.kind, a.expected, a.tail, a.n, a.lo, \
                  a.shown \
           FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[], $5::bool[], $6::int[], \
                       $7::int[], $15::bigint[]) \
                WITH ORDINALITY AS a (name, category, kind, expected, tail, n, lo, shown, i)), \
         u AS (\
           UPDATE {schema}.streams s SET version = s.version + a.n, last_tx = pg_current_xact_id() \
           FROM a \
           WHERE s.name = a.name AND NOT s.tombstone AND s.last_tx <= pg_current_xact_id() \
             AND (a.kind = 0 OR a.kind = 2 \
                  OR (a.kind = 3 AND s.version = a.expected AND s.start <= a.shown)) \
           RETURNING a.i, a.lo, a.n, s.stream_id, s.version - a.n AS start), \
         {creates}ins AS (\
           INSERT INTO {schema}.events (stream_id, stream_version, batch_start, event_id, \
                                        event_type, data, metadata, correlation_id, causation_id) \
           {events} \
           RETURNING stream_id, position), \
         r AS (\
           SELECT a.i, a.expected, a.tail, s.stream_id, s.name, s.start, s.max_count, s.max_age, \
                  coalesce(s.version, 0) AS version, \
                  CASE WHEN s.stream_id IS NULL THEN \
                         CASE WHEN a.kind = 2 OR (a.kind = 3 AND a.expected > 0) THEN 1 ELSE 4 END \
                       WHEN s.tombstone THEN 5 \
                       WHEN a.kind = 1 \
                         OR (a.kind = 3 AND (a.expected <> s.version OR s.start > a.shown)) THEN 1 \
                       ELSE 4 END::smallint AS status \
           FROM a LEFT JOIN LATERAL (\
             SELECT * FROM {schema}.streams s WHERE s.name = a.name OFFSET 0) s ON true \
           WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.i = a.i)) \
         SELECT w.i, 7::smallint, w.start + w.n, w.stream_id, NULL::bigint, pg_current_xact_id()::text, \
                NULL::xid8, NULL::bigint, NULL::text, NULL::bigint, NULL::timestamptz, NULL::text, \
                NULL::bytea, NULL::bytea, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint \
         FROM w \
         UNION ALL \
         SELECT NULL, 6::smallint, NULL, ins.stream_id, {lowest}, NULL, \
                NULL, {highest}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
         FROM ins {by_stream}\
         UNION ALL \
         SELECT r.i, r.status, r.version, NULL, NULL, NULL, \
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
         FROM r \
         UNION ALL \
         SELECT r.i, 2::smallint, NULL, NULL, NULL, NULL, e.tx_id, e.position, r.name, \
                e.stream_version, e.recorded_at, e.event_type, e.data, e.metadata, e.event_id, \
                e.correlation_id, e.causation_id, e.batch_start \
         FROM r CROSS JOIN LATERAL (\
           SELECT * FROM {schema}.events e \
           WHERE e.stream_id = r.stream_id AND e.stream_version >= r.expected \
             AND e.stream_version >= r.start \
             AND (r.max_count IS NULL OR e.stream_version >= r.version - r.max_count) \
             AND (r.max_age IS NULL OR e.recorded_at >= now() - r.max_age * interval '1 microsecond') \
           ORDER BY e.stream_version LIMIT $14) e \
         WHERE r.status = 1 AND r.tail"
    )
}

//! The store's SQL, with its schema quoted in, built once per store.

/// The statements of one schema.
pub(crate) struct Sql {
    pub(crate) append: String,
    pub(crate) version: String,
    pub(crate) read_forward: String,
    pub(crate) read_backward: String,
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
    pub(crate) read_head: String,
    pub(crate) progress_rebuilt: String,
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
/// expired by retention (migration 11).
const SHOWN: &str = "NOT s.tombstone AND e.stream_version >= s.start \
     AND (s.max_count IS NULL OR e.stream_version >= s.version - s.max_count) \
     AND (s.max_age IS NULL OR e.recorded_at >= now() - s.max_age * interval '1 microsecond')";

/// The same for reads of one stream, whose name the reader knows (`event_in`).
const STREAM_EVENT_COLUMNS: &str = "e.tx_id, e.position, NULL::text, e.stream_version, \
     e.recorded_at, e.event_type, e.data, e.metadata, e.event_id, e.correlation_id, \
     e.causation_id";

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let from =
            format!("FROM {schema}.events e JOIN {schema}.streams s ON s.stream_id = e.stream_id");
        Self {
            append: format!("SELECT status, version, first_position, last_position, tx FROM {schema}.append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            append_with_snapshot: format!("SELECT status, version, first_position, last_position, tx FROM {schema}.append_with_snapshot($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
            append_group: format!("SELECT * FROM {schema}.append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"),
            // One statement: the head row, then the events from the snapshot on (the
            // snapshot itself only on the first row).
            // A snapshot holds the state of every event before it, so none is used for a
            // stream under retention; the events are those reads show. A tombstone answers
            // `tombstone` true.
            read_head: format!(
                "SELECT s.version, h.version, \
                 CASE WHEN e.stream_version IS NULL OR e.stream_version = coalesce(h.version, 0) THEN h.data END, \
                 {EVENT_COLUMNS}, s.tombstone FROM {schema}.streams s \
                 CROSS JOIN LATERAL (SELECT CASE WHEN s.max_age IS NULL AND s.max_count IS NULL THEN s.snapshot_version END AS version, \
                                            CASE WHEN s.max_age IS NULL AND s.max_count IS NULL THEN s.snapshot END AS data) h \
                 LEFT JOIN LATERAL \
                 (SELECT * FROM {schema}.events e WHERE e.stream_id = s.stream_id \
                  AND e.stream_version >= coalesce(h.version, 0) AND {SHOWN} ORDER BY e.stream_version LIMIT $2) e ON true \
                 WHERE s.name = $1 ORDER BY e.stream_version"
            ),
            import: format!("SELECT status, written, refused_stream, refused_version, actual FROM {schema}.import_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            version: format!("SELECT version, tombstone FROM {schema}.streams WHERE name = $1"),
            read_forward: format!("SELECT {STREAM_EVENT_COLUMNS} {from} WHERE s.name = $1 AND {SHOWN} AND e.stream_version >= $2 AND e.stream_version < $3 ORDER BY e.stream_version LIMIT $4"),
            read_backward: format!("SELECT {STREAM_EVENT_COLUMNS} {from} WHERE s.name = $1 AND {SHOWN} AND e.stream_version < $2 AND e.stream_version >= $3 ORDER BY e.stream_version DESC LIMIT $4"),
            // Plans fixed by the functions of migration 0004 (see there why).
            read_all: format!(
                "SELECT * FROM {schema}.read_all_page($1::text::xid8, $2, $3, $4, $5, $6, $7, $8)"
            ),
            // The last event below the visibility horizon, as read-all sees it (the primary
            // key, read backwards).
            head_position: format!("SELECT tx_id::text, position FROM {schema}.events WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx_id DESC, position DESC LIMIT 1"),
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

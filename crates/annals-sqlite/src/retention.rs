//! Retention (migration 8): the policies as set in `annals_retention`, and each stream's
//! policy in effect on its row, which reads check.

use annals::{Result, Retention, RetentionScope, StreamName};
use rusqlite::{params, Connection};

use crate::error::backend;

/// The condition under which a read shows event `e` of stream `s`: not truncated or
/// deleted, not expired. `now` is the clock events are recorded with, in microseconds.
/// [`first_shown!`] as plain comparisons: this is checked for every event a feed page
/// scans, where calling `max` for each made SQLite's work per page about a fifth longer
/// (BENCHMARKS.md).
macro_rules! shown {
    () => {
        concat!(
            crate::retention::alive!(),
            " AND e.stream_version >= s.start \
             AND (s.max_count IS NULL OR e.stream_version >= s.version - s.max_count)"
        )
    };
}
pub(crate) use shown;

/// The first version of stream `s` a read shows, by its row alone (truncation, soft
/// deletion, `max_count`): a stream page starts its index range there, so those events
/// cost no check per row. [`shown!`] states the same rule per event: change both together
/// (the conformance suite's retention and truncation tests read through each).
macro_rules! first_shown {
    () => {
        "max(s.start, ifnull(s.version - s.max_count, 0))"
    };
}
pub(crate) use first_shown;

/// The rest of [`shown!`]: the stream is no tombstone and event `e` has not outlived
/// `max_age`.
macro_rules! alive {
    () => {
        "s.tombstone = 0 AND (s.max_age IS NULL OR e.recorded_at >= \
         CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER) - s.max_age)"
    };
}
pub(crate) use alive;

fn kind(scope: &RetentionScope) -> i64 {
    match scope {
        RetentionScope::Category(_) => 0,
        RetentionScope::Stream(_) => 1,
    }
}

/// Records `retention` for `scope` (removing it when it keeps all) and puts the policies
/// in effect on the streams it covers.
pub(crate) fn set(conn: &Connection, scope: &RetentionScope, retention: Retention) -> Result<()> {
    let run = || -> rusqlite::Result<()> {
        if retention.keeps_all() {
            conn.prepare_cached("DELETE FROM annals_retention WHERE kind = ?1 AND name = ?2")?
                .execute(params![kind(scope), scope.name()])?;
        } else {
            conn.prepare_cached(
                "INSERT INTO annals_retention (kind, name, max_age, max_count) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (kind, name) DO UPDATE \
                 SET max_age = excluded.max_age, max_count = excluded.max_count",
            )?
            .execute(params![
                kind(scope),
                scope.name(),
                retention.max_age_micros(),
                retention.max_count.map(|n| n as i64)
            ])?;
        }
        let covered = match scope {
            RetentionScope::Category(_) => "s.category = ?1",
            RetentionScope::Stream(_) => "s.name = ?1",
        };
        conn.prepare_cached(&format!(
            "UPDATE annals_streams AS s SET (max_age, max_count) = (\
                 SELECT r.max_age, r.max_count FROM annals_retention r \
                 WHERE (r.kind = 1 AND r.name = s.name) OR (r.kind = 0 AND r.name = s.category) \
                 ORDER BY r.kind DESC LIMIT 1) \
             WHERE {covered}"
        ))?
        .execute([scope.name()])?;
        Ok(())
    };
    run().map_err(backend)
}

/// Every policy set.
pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<(RetentionScope, Retention)>> {
    let mut statement = conn.prepare_cached(
        "SELECT kind, name, max_age, max_count FROM annals_retention ORDER BY kind, name",
    )?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            Retention::from_micros(r.get(2)?, r.get(3)?),
        ))
    })?;
    let mut policies = Vec::new();
    for row in rows {
        let (kind, name, retention) = row?;
        // Names were validated when set; one that no longer parses is skipped, not fatal.
        let scope = if kind == 0 {
            RetentionScope::category(name).ok()
        } else {
            StreamName::new(name).ok().map(RetentionScope::Stream)
        };
        if let Some(scope) = scope {
            policies.push((scope, retention));
        }
    }
    Ok(policies)
}

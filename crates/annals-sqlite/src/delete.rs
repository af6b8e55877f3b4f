//! Stream deletion and truncation: the stream row's `start` and `tombstone` (migration 6),
//! changed on the writer thread with the system event that records the change, in one
//! transaction.

use annals::backend::{Deletion, DeletionPlan, StreamState};
use annals::{Error, Result, StreamName, Version, STREAM_DELETED, STREAM_TRUNCATED};
use rusqlite::{params, Connection, OptionalExtension};

use crate::append::record_system;
use crate::error::backend;

/// The stream's version, start and whether it is a tombstone (`None`: never written).
fn row(conn: &Connection, stream: &StreamName) -> Result<Option<(u64, u64, bool)>> {
    conn.prepare_cached("SELECT version, start, tombstone FROM annals_streams WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([stream.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? == 1,
                ))
            })
            .optional()
        })
        .map_err(backend)
}

/// `deletion` as its plan decides from the stream row: the row at the planned version,
/// starting there (a tombstone when planned), and the system event that records it.
pub(crate) fn delete(
    conn: &Connection,
    stream: &StreamName,
    deletion: Deletion,
) -> Result<Version> {
    let found = row(conn, stream)?;
    let state = found.map(|(version, start, tombstone)| StreamState {
        version,
        shows_nothing: start == version,
        tombstone,
    });
    let (version, hard) = match deletion.plan(stream, state)? {
        DeletionPlan::Done(version) => return Ok(version),
        DeletionPlan::Change { version, hard } => (version, hard),
    };
    let at = version as i64;
    let changed = match found {
        Some(_) => conn
            .prepare_cached(
                "UPDATE annals_streams SET version = ?3, start = ?3, tombstone = ?2, \
                 snapshot = NULL, snapshot_version = NULL WHERE name = ?1",
            )
            .and_then(|mut s| s.execute(params![stream.as_str(), i64::from(hard), at])),
        None => conn
            .prepare_cached(
                "INSERT INTO annals_streams (name, category, version, start, tombstone) \
                 VALUES (?1, ?2, ?4, ?4, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    stream.as_str(),
                    stream.category(),
                    i64::from(hard),
                    at
                ])
            }),
    };
    changed.map_err(backend)?;
    record_system(
        conn,
        stream,
        STREAM_DELETED,
        serde_json::json!({"stream": stream.as_str(), "version": version, "hard": hard}),
    )?;
    Ok(Version(version))
}

pub(crate) fn truncate(conn: &Connection, stream: &StreamName, before: Version) -> Result<Version> {
    let Some((version, start, tombstone)) = row(conn, stream)? else {
        return Ok(Version(0));
    };
    if tombstone {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let before = before.get().min(version);
    if before <= start {
        return Ok(Version(start));
    }
    conn.prepare_cached(
        "UPDATE annals_streams SET start = ?2, snapshot = NULL, snapshot_version = NULL \
         WHERE name = ?1",
    )
    .and_then(|mut s| s.execute(params![stream.as_str(), before as i64]))
    .map_err(backend)?;
    record_system(
        conn,
        stream,
        STREAM_TRUNCATED,
        serde_json::json!({"stream": stream.as_str(), "before": before}),
    )?;
    Ok(Version(before))
}

/// Removes at most `limit` events that reads no longer show (below a stream's start, of a
/// tombstone, or expired by retention), or only counts them with `dry_run`: how many, and
/// their bytes.
pub(crate) fn scavenge(conn: &Connection, limit: u64, dry_run: bool) -> Result<(u64, u64)> {
    // Per stream: the version below which every event goes, and below which (by count)
    // or before when (by age) retention expires them.
    let streams: Vec<(i64, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT stream_id, CASE WHEN tombstone = 1 THEN version ELSE start END, \
             CASE WHEN max_count IS NULL THEN 0 ELSE version - max_count END, \
             CASE WHEN max_age IS NULL THEN -9223372036854775807 ELSE \
                  CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER) - max_age END \
             FROM annals_streams \
             WHERE start > 0 OR tombstone = 1 OR max_count IS NOT NULL OR max_age IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let (mut events, mut bytes) = (0u64, 0u64);
    if !dry_run {
        conn.execute("INSERT INTO annals_scavenging (token) VALUES (1)", [])
            .map_err(backend)?;
    }
    const GONE: &str = "stream_id = ?1 AND (stream_version < ?2 OR stream_version < ?3 \
                        OR recorded_at < ?4) LIMIT ?5";
    for (stream_id, below, kept_from, cutoff) in streams {
        if events >= limit {
            break;
        }
        let left = (limit - events) as i64;
        let (n, b): (i64, i64) = conn
            .prepare_cached(&format!(
                "SELECT count(*), coalesce(sum(length(data) + coalesce(length(metadata), 0)), 0) \
                 FROM (SELECT data, metadata FROM annals_events WHERE {GONE})"
            ))
            .and_then(|mut s| {
                s.query_row(params![stream_id, below, kept_from, cutoff, left], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .map_err(backend)?;
        if n > 0 && !dry_run {
            conn.prepare_cached(&format!(
                "DELETE FROM annals_events WHERE position IN \
                 (SELECT position FROM annals_events WHERE {GONE})"
            ))
            .and_then(|mut s| s.execute(params![stream_id, below, kept_from, cutoff, left]))
            .map_err(backend)?;
        }
        events += n as u64;
        bytes += b as u64;
    }
    if !dry_run {
        conn.execute("DELETE FROM annals_scavenging", [])
            .map_err(backend)?;
    }
    Ok((events, bytes))
}

/// The bytes of the file's free pages: what scavenging freed inside it (returned to the
/// file system by `VACUUM`, or as they are reused).
pub(crate) fn free_bytes(conn: &Connection) -> Result<u64> {
    let pages: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .map_err(backend)?;
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(backend)?;
    Ok((pages * size) as u64)
}

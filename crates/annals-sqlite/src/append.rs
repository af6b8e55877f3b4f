//! The write statements the writer thread runs for a request, inside the group's
//! transaction and the request's savepoint: an append (the stream row claimed with one
//! `UPDATE ... RETURNING`, then its events), a multi-stream append, the classification of
//! a batch whose ids are already recorded, a system event of a deletion, a checkpoint.

use annals::backend::idempotency::{self, Found, Verdict};
use annals::{
    AppendResult, Error, EventData, ExpectedVersion, Position, RecordedEvent, Result, StreamAppend,
    StreamName, Timestamp, Uuid, Version,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::backend;
use crate::writer::{exec, sql};

enum Attempt {
    Done(AppendResult),
    /// An exact retry of an earlier append: nothing written.
    Retried(AppendResult),
    /// An event id of the batch is already recorded: roll back and classify.
    Recorded,
}

/// Appends one batch; the bool says whether rows were written. With `shown_from`, an exact
/// append is refused (at the version expected) when the stream now starts past it
/// (`EventStore::append_at_shown`).
pub(crate) fn append(
    conn: &Connection,
    stream: &StreamName,
    expected: ExpectedVersion,
    shown_from: Option<Version>,
    events: &[EventData],
    now: i64,
) -> Result<(AppendResult, bool)> {
    match try_append(conn, stream, expected, shown_from, events, now)? {
        Attempt::Done(r) => Ok((r, true)),
        Attempt::Retried(r) => Ok((r, false)),
        Attempt::Recorded => {
            exec(conn, "ROLLBACK TO annals_req")?;
            match classify(conn, stream, expected, events)? {
                Verdict::AlreadyWritten(r) => Ok((r, false)),
                Verdict::Write => Err(backend(format!(
                    "{stream}: an event id was reported as recorded but none is found"
                ))),
            }
        }
    }
}

/// Appends a system event about `stream` to its deletions stream.
pub(crate) fn record_system(
    conn: &Connection,
    stream: &StreamName,
    event_type: &str,
    data: serde_json::Value,
) -> Result<()> {
    let event = EventData::new(event_type, data.to_string().into_bytes());
    let now = Timestamp::now().unix_micros();
    let target = annals::deletions_stream(stream);
    append(conn, &target, ExpectedVersion::Any, None, &[event], now).map(drop)
}

/// Keeps `snapshot` (the state at `version`) beside the stream's head.
pub(crate) fn store_snapshot(
    conn: &Connection,
    stream: &StreamName,
    version: Version,
    snapshot: &[u8],
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE annals_streams SET snapshot = ?2, snapshot_version = ?3 WHERE name = ?1",
    )
    .and_then(|mut s| s.execute(params![stream.as_str(), snapshot, version.get() as i64]))
    .map(drop)
    .map_err(sql)
}

/// `appends`, each refused too when its stream starts past its `shown` version (none:
/// no such check).
pub(crate) fn append_many(
    conn: &Connection,
    appends: &[StreamAppend],
    shown: &[Version],
    now: i64,
) -> Result<Vec<AppendResult>> {
    let mut results = Vec::with_capacity(appends.len());
    for (i, a) in appends.iter().enumerate() {
        let from = shown.get(i).copied();
        match try_append(conn, &a.stream, a.expected, from, &a.events, now)? {
            Attempt::Done(r) | Attempt::Retried(r) => results.push(r),
            Attempt::Recorded => return append_many_slow(conn, appends, shown, now),
        }
    }
    Ok(results)
}

/// Some event id is already recorded: undo, classify every stream, write what is new.
fn append_many_slow(
    conn: &Connection,
    appends: &[StreamAppend],
    shown: &[Version],
    now: i64,
) -> Result<Vec<AppendResult>> {
    exec(conn, "ROLLBACK TO annals_req")?;
    let verdicts = appends
        .iter()
        .map(|a| classify(conn, &a.stream, a.expected, &a.events))
        .collect::<Result<Vec<_>>>()?;
    appends
        .iter()
        .zip(verdicts)
        .enumerate()
        .map(|(i, (a, verdict))| match verdict {
            Verdict::AlreadyWritten(r) => Ok(r),
            Verdict::Write => {
                let from = shown.get(i).copied();
                match try_append(conn, &a.stream, a.expected, from, &a.events, now)? {
                    Attempt::Done(r) | Attempt::Retried(r) => Ok(r),
                    Attempt::Recorded => Err(backend(format!(
                        "{}: an event id appeared while appending",
                        a.stream
                    ))),
                }
            }
        })
        .collect()
}

/// The error of a statement on `stream`: a write the tombstone trigger refused is a
/// deleted stream.
fn refused(stream: &StreamName) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        if e.to_string().contains("annals: stream deleted") {
            Error::StreamDeleted {
                stream: stream.clone(),
            }
        } else {
            sql(e)
        }
    }
}

/// Whether `stream` is a tombstone.
pub(crate) fn tombstoned(conn: &Connection, stream: &StreamName) -> Result<bool> {
    conn.prepare_cached("SELECT tombstone FROM annals_streams WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([stream.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|t| t == Some(1))
        .map_err(sql)
}

pub(crate) fn stream_row(conn: &Connection, stream: &StreamName) -> Result<Option<(i64, u64)>> {
    conn.prepare_cached("SELECT stream_id, version FROM annals_streams WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([stream.as_str()], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()
        })
        .map_err(sql)
}

/// Claims the versions `[start, start + n)` of `stream` if `expected` admits its version
/// (and, for an exact one with `shown_from`, the stream does not start past that), in one
/// statement on the streams table (the row is the concurrency check). Returns the stream id
/// and `start`, or `None` when not admitted.
pub(crate) fn claim(
    conn: &Connection,
    stream: &StreamName,
    expected: ExpectedVersion,
    shown_from: Option<Version>,
    n: i64,
) -> Result<Option<(i64, i64)>> {
    let create = || {
        conn.prepare_cached(
            "INSERT INTO annals_streams (name, category, version) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO NOTHING RETURNING stream_id",
        )
        .and_then(|mut s| {
            s.query_row(params![stream.as_str(), stream.category(), n], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
        })
        .map(|id| id.map(|id| (id, 0)))
        .map_err(sql)
    };
    // An exact claim's bound on the stream's start: none without `shown_from`.
    let shown = shown_from.map_or(i64::MAX, |v| v.get().min(i64::MAX as u64) as i64);
    let bump = |exact: Option<i64>| {
        let claimed = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
        match exact {
            Some(v) => conn
                .prepare_cached(
                    "UPDATE annals_streams SET version = version + ?2 \
                     WHERE name = ?1 AND version = ?3 AND start <= ?4 \
                     RETURNING stream_id, version - ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![stream.as_str(), n, v, shown], claimed)
                        .optional()
                }),
            None => conn
                .prepare_cached(
                    "UPDATE annals_streams SET version = version + ?2 \
                     WHERE name = ?1 RETURNING stream_id, version - ?2",
                )
                .and_then(|mut s| s.query_row(params![stream.as_str(), n], claimed).optional()),
        }
        .map_err(refused(stream))
    };
    match expected {
        ExpectedVersion::NoStream => create(),
        ExpectedVersion::Exact(Version(0)) => create(),
        ExpectedVersion::Exact(v) => bump(Some(v.get() as i64)),
        ExpectedVersion::StreamExists => bump(None),
        ExpectedVersion::Any => match bump(None)? {
            Some(claimed) => Ok(Some(claimed)),
            None => create(),
        },
    }
}

pub(crate) const INSERT_EVENT: &str =
    "INSERT INTO annals_events (stream_id, stream_version, batch_start, \
     event_id, event_type, data, metadata, correlation_id, causation_id, recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// An event's own columns of its row: what [`insert_event`] takes besides its place and
/// time, from an event appended or imported.
pub(crate) struct EventColumns<'a> {
    id: &'a Uuid,
    event_type: &'a str,
    data: &'a [u8],
    metadata: Option<&'a [u8]>,
    correlation_id: Option<&'a Uuid>,
    causation_id: Option<&'a Uuid>,
}

/// `EventColumns` from an appended and from an imported event (the same fields on both).
macro_rules! event_columns_from {
    ($($event:ty),*) => {$(
        impl<'a> From<&'a $event> for EventColumns<'a> {
            fn from(e: &'a $event) -> Self {
                Self {
                    id: &e.event_id,
                    event_type: &e.event_type,
                    data: &e.data,
                    metadata: e.metadata.as_deref(),
                    correlation_id: e.correlation_id.as_ref(),
                    causation_id: e.causation_id.as_ref(),
                }
            }
        }
    )*};
}

event_columns_from!(EventData, RecordedEvent);

/// Inserts an event's row at `version` of the stream `stream_id`, in the append that began
/// at `batch_start`, with `insert` (the prepared [`INSERT_EVENT`]).
pub(crate) fn insert_event(
    insert: &mut rusqlite::CachedStatement<'_>,
    stream_id: i64,
    version: i64,
    batch_start: i64,
    event: EventColumns<'_>,
    recorded_at: i64,
) -> rusqlite::Result<usize> {
    insert.execute(params![
        stream_id,
        version,
        batch_start,
        &event.id.as_bytes()[..],
        event.event_type,
        event.data,
        event.metadata,
        event.correlation_id.map(|u| &u.as_bytes()[..]),
        event.causation_id.map(|u| &u.as_bytes()[..]),
        recorded_at,
    ])
}

fn try_append(
    conn: &Connection,
    stream: &StreamName,
    expected: ExpectedVersion,
    shown_from: Option<Version>,
    events: &[EventData],
    now: i64,
) -> Result<Attempt> {
    let n = events.len() as i64;
    let Some((stream_id, start)) = claim(conn, stream, expected, shown_from, n)? else {
        if tombstoned(conn, stream)? {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let actual = Version(stream_row(conn, stream)?.map_or(0, |(_, v)| v));
        return match classify(conn, stream, expected, events)? {
            Verdict::AlreadyWritten(r) => Ok(Attempt::Retried(r)),
            Verdict::Write => Err(Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            }),
        };
    };
    let mut insert = conn.prepare_cached(INSERT_EVENT).map_err(sql)?;
    let mut first_position = 0;
    for (i, e) in events.iter().enumerate() {
        let inserted = insert_event(
            &mut insert,
            stream_id,
            start + i as i64,
            start,
            e.into(),
            now,
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(Attempt::Recorded),
            Err(e) => return Err(sql(e)),
        }
        if i == 0 {
            first_position = conn.last_insert_rowid();
        }
    }
    let last_position = conn.last_insert_rowid();
    let version = start + events.len() as i64;
    Ok(Attempt::Done(AppendResult {
        version: Version(version as u64),
        first_position: annals::backend::position(first_position as u128),
        last_position: annals::backend::position(last_position as u128),
    }))
}

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE && msg.contains("event_id")
    )
}

/// Where the batch's ids are recorded, and what that means (read-only).
fn classify(
    conn: &Connection,
    stream: &StreamName,
    expected: ExpectedVersion,
    events: &[EventData],
) -> Result<Verdict> {
    let actual = Version(stream_row(conn, stream)?.map_or(0, |(_, v)| v));
    let mut lookup = conn
        .prepare_cached(
            "SELECT s.name, e.stream_version, e.batch_start, e.position FROM annals_events e \
             JOIN annals_streams s ON s.stream_id = e.stream_id WHERE e.event_id = ?1",
        )
        .map_err(sql)?;
    let mut found = Vec::with_capacity(events.len());
    for e in events {
        let row = lookup
            .query_row([&e.event_id.as_bytes()[..]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()
            .map_err(sql)?;
        found.push(match row {
            Some((name, version, batch_start, position)) => Some(Found {
                stream: StreamName::new(&name)
                    .map_err(|e| backend(format!("stored stream name: {e}")))?,
                stream_version: version as u64,
                batch_start: batch_start as u64,
                position: annals::backend::position(position as u128),
            }),
            None => None,
        });
    }
    idempotency::check(stream, expected, actual, events, &found, |v| {
        conn.prepare_cached(
            "SELECT e.batch_start FROM annals_events e JOIN annals_streams s \
             ON s.stream_id = e.stream_id WHERE s.name = ?1 AND e.stream_version = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![stream.as_str(), v as i64], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|o| o.map(|b| b as u64))
        .map_err(sql)
    })
}

pub(crate) fn commit_checkpoint(
    conn: &Connection,
    group: &str,
    source: &str,
    position: Position,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO annals_checkpoints (group_name, source, position, updated_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (group_name, source) \
         DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![group, source, position.to_string(), now]))
    .map(drop)
    .map_err(sql)
}

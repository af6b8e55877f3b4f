//! The writer thread: owns the write connection and commits queued requests in groups.
//!
//! Each loop takes every request waiting in the queue (up to `max_group`), opens one
//! `BEGIN IMMEDIATE` transaction, runs each request in its own savepoint (a failing request
//! rolls back only itself), commits once, then answers every caller and wakes subscribers.
//! One fsync thus serves many appends: that is group commit. A request whose caller has
//! given up before the writer takes it is let go unwritten.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use annals::backend::idempotency::{self, Found, Verdict};
use annals::{
    AppendResult, Error, EventData, ExpectedVersion, Position, Result, StreamAppend, StreamName,
    Timestamp, Version,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

use crate::error::backend;

/// Work a projector does in the store's transaction.
pub(crate) type ProjectFn =
    Box<dyn FnOnce(&Connection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send>;

/// Read-model work run on the writer thread, inside the group's transaction and its own
/// savepoint: it gets the connection (behind a lock it takes per statement), or the error
/// that kept it from running, and returns its answer and whether it wrote.
pub(crate) type ReadModelJob = Box<dyn FnOnce(Result<&Mutex<Connection>>) -> (Finish, bool) + Send>;

/// What the writer is asked to do.
pub(crate) enum Request {
    ReadModel {
        job: ReadModelJob,
    },
    Append {
        stream: StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        /// A head snapshot to store when the events are written.
        snapshot: Option<Vec<u8>>,
        /// Refused, as at the version expected, when the stream now starts past this
        /// version (see `EventStore::append_at_shown`).
        shown_from: Option<Version>,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    Import {
        events: Vec<annals::RecordedEvent>,
        reply: oneshot::Sender<Result<u64>>,
    },
    AppendMany {
        appends: Vec<StreamAppend>,
        /// With each append, as `shown_from` above (see `EventStore::append_many_shown`).
        shown_from: Option<Vec<Version>>,
        reply: oneshot::Sender<Result<Vec<AppendResult>>>,
    },
    Checkpoint {
        group: String,
        source: String,
        position: Position,
        work: Option<ProjectFn>,
        reply: oneshot::Sender<Result<()>>,
    },
}

pub(crate) type Finish = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) fn finish<T: Send + 'static>(
    reply: oneshot::Sender<Result<T>>,
    result: Result<T>,
) -> Finish {
    Box::new(move |commit| {
        let answer = match (commit, result) {
            (_, Err(e)) => Err(e),
            (Err(c), Ok(_)) => Err(c),
            (Ok(()), Ok(v)) => Ok(v),
        };
        // The caller may have given up waiting; the outcome stands either way.
        let _ = reply.send(answer);
    })
}

pub(crate) fn sql(e: rusqlite::Error) -> Error {
    backend(e)
}

/// How the writer groups requests: at most `max_group` per transaction, waiting up to
/// `linger` for more; `path` names the file in the group-size histogram
/// (`annals_sqlite_group_commit_requests{path}`).
pub(crate) struct Grouping {
    pub(crate) max_group: usize,
    pub(crate) linger: Duration,
    pub(crate) path: String,
}

/// Runs the writer loop until every sender is gone.
///
/// A group starts with the first request that arrives: the writer opens the transaction and
/// runs each request in its own savepoint as it comes, so statement work overlaps with
/// callers preparing their next request. It commits when the queue is empty and the group
/// is as large as the previous one, or after `linger`, or at `max_group` requests. Under
/// concurrency groups stay large; a lone writer (previous group of one) never waits.
pub(crate) fn run(
    mut conn: Connection,
    queue: mpsc::Receiver<Request>,
    changes: watch::Sender<()>,
    grouping: Grouping,
) {
    let Grouping {
        max_group,
        linger,
        path,
    } = grouping;
    // Only the group's own COMMIT may commit: a statement run outside the group's
    // transaction (SQLite rolled it back with a failed statement, and a request or a
    // projector went on) would otherwise commit on its own, and its caller be told it
    // failed. SQLite turns a commit the hook refuses into a rollback.
    let committing = Arc::new(AtomicBool::new(false));
    let allowed = Arc::clone(&committing);
    if let Err(e) = conn.commit_hook(Some(move || !allowed.load(Ordering::Relaxed))) {
        tracing::error!(error = %e, "the writer's commit hook could not be set");
    }
    let conn = Mutex::new(conn);
    let mut previous = 1;
    while let Ok(first) = queue.recv() {
        if given_up(&first) {
            continue;
        }
        let Some(mut group) = Group::begin(&conn, first) else {
            continue;
        };
        let target = previous.min(max_group);
        let deadline = Instant::now() + linger;
        while group.len() < max_group && group.open() {
            let next = match queue.try_recv() {
                Ok(r) => r,
                Err(_) if group.len() >= target => break,
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match queue.recv_timeout(left) {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                }
            };
            if !given_up(&next) {
                group.run(&conn, next);
            }
        }
        let size = group.len();
        previous = size;
        // Recorded before the callers are answered, so a caller sees its group counted.
        metrics::histogram!("annals_sqlite_group_commit_requests", "path" => path.clone())
            .record(size as f64);
        let wrote = group.commit(&conn, &committing);
        tracing::trace!(size, wrote, "group committed");
        if wrote {
            changes.send_replace(());
        }
    }
}

/// The write connection, for one request's statements.
pub(crate) fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a short statement through the statement cache.
fn exec(conn: &Connection, statement: &str) -> Result<()> {
    conn.prepare_cached(statement)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(sql)
}

/// One open write transaction and the answers it owes.
struct Group {
    now: i64,
    finishers: Vec<Finish>,
    changed: bool,
    /// SQLite rolled the whole transaction back after a request's error (it may, on a full
    /// disk, an I/O error or out of memory): the group takes no more requests, and those it
    /// ran are answered that nothing was written.
    lost: bool,
}

impl Group {
    /// Opens the transaction and runs `first`; on failure answers it and returns `None`.
    fn begin(conn: &Mutex<Connection>, first: Request) -> Option<Self> {
        if let Err(e) = lock(conn).execute_batch("BEGIN IMMEDIATE") {
            fail(first, sql(e));
            return None;
        }
        let mut group = Self {
            now: Timestamp::now().unix_micros(),
            finishers: Vec::new(),
            changed: false,
            lost: false,
        };
        group.run(conn, first);
        Some(group)
    }

    fn len(&self) -> usize {
        self.finishers.len()
    }

    /// Whether the group can take another request: its transaction is still open.
    fn open(&self) -> bool {
        !self.lost
    }

    /// Runs `request` in its own savepoint: a failure rolls back only itself.
    fn run(&mut self, conn: &Mutex<Connection>, request: Request) {
        let savepoint = exec(&lock(conn), "SAVEPOINT annals_req");
        // Read-model work writes no events: subscribers need no wake-up for it.
        let (finisher, ok, wrote) = match request {
            Request::ReadModel { job } => {
                let (finisher, ok) = job(savepoint.map(|()| conn));
                (finisher, ok, false)
            }
            request => {
                let (finisher, ok) = self.run_locked(&lock(conn), request, savepoint);
                (finisher, ok, ok)
            }
        };
        let conn = lock(conn);
        if conn.is_autocommit() {
            // No transaction any more: SQLite rolled it back with the request's failed
            // statement. Another request now would run and commit on its own.
            tracing::warn!("SQLite rolled back a group's transaction after a failed write");
            self.lost = true;
            self.finishers.push(finisher);
            return;
        }
        let end = if ok {
            exec(&conn, "RELEASE annals_req")
        } else {
            exec(&conn, "ROLLBACK TO annals_req").and_then(|()| exec(&conn, "RELEASE annals_req"))
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "closing a savepoint failed");
        }
        self.changed |= wrote;
        self.finishers.push(finisher);
    }

    /// Runs a store request on the locked connection, in the savepoint `savepoint` opened.
    fn run_locked(
        &mut self,
        conn: &Connection,
        request: Request,
        savepoint: Result<()>,
    ) -> (Finish, bool) {
        let now = self.now;
        match request {
            Request::ReadModel { .. } => unreachable!("read-model jobs take the lock themselves"),
            Request::Append {
                stream,
                expected,
                events,
                snapshot,
                shown_from,
                reply,
            } => {
                let r = savepoint
                    .and_then(|()| append(conn, &stream, expected, shown_from, &events, now));
                let r = match (r, snapshot) {
                    (Ok((result, true)), Some(snapshot)) => {
                        store_snapshot(conn, &stream, result.version, &snapshot)
                            .map(|()| (result, true))
                    }
                    (r, _) => r,
                };
                let ok = matches!(r, Ok((_, true)));
                (finish(reply, r.map(|(r, _)| r)), ok)
            }
            Request::Import { events, reply } => {
                let r = savepoint.and_then(|()| crate::import::import(conn, &events));
                let ok = matches!(r, Ok(n) if n > 0);
                (finish(reply, r), ok)
            }
            Request::AppendMany {
                appends,
                shown_from,
                reply,
            } => {
                let shown = shown_from.as_deref().unwrap_or_default();
                let r = savepoint.and_then(|()| append_many(conn, &appends, shown, now));
                let ok = r.is_ok();
                (finish(reply, r), ok)
            }
            Request::Checkpoint {
                group,
                source,
                position,
                work,
                reply,
            } => {
                let r = savepoint.and_then(|()| {
                    if let Some(work) = work {
                        // A panicking projector must not take the writer thread with it.
                        let run = std::panic::AssertUnwindSafe(|| work(conn));
                        match std::panic::catch_unwind(run) {
                            Ok(r) => r.map_err(|e| Error::backend("sqlite projector", e))?,
                            Err(_) => {
                                return Err(backend(
                                    "the projector panicked; its changes were rolled back",
                                ))
                            }
                        }
                    }
                    commit_checkpoint(conn, &group, &source, position, now)
                });
                let ok = r.is_ok();
                (finish(reply, r), ok)
            }
        }
    }

    /// Commits once and answers every caller; returns whether anything was written.
    fn commit(self, conn: &Mutex<Connection>, committing: &AtomicBool) -> bool {
        let conn = lock(conn);
        let commit = match self.lost {
            true => Err(Error::transient(
                "sqlite",
                "not written: SQLite rolled back the transaction this write shared with \
                 others after one of them failed (a full disk, an I/O error or out of memory)",
            )),
            false => {
                committing.store(true, Ordering::Relaxed);
                let commit = exec(&conn, "COMMIT");
                committing.store(false, Ordering::Relaxed);
                commit
            }
        };
        if commit.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let committed = commit.is_ok() && self.changed;
        for f in self.finishers {
            f(commit.clone());
        }
        committed
    }
}

/// Whether the caller of `request` has given up waiting for it (a timeout, a dropped
/// request) before the writer took it: such a write is let go, nothing is written for it.
/// (A read model's job answers its caller itself and always runs.)
fn given_up(request: &Request) -> bool {
    match request {
        Request::Append { reply, .. } => reply.is_closed(),
        Request::AppendMany { reply, .. } => reply.is_closed(),
        Request::Import { reply, .. } => reply.is_closed(),
        Request::Checkpoint { reply, .. } => reply.is_closed(),
        Request::ReadModel { .. } => false,
    }
}

/// Answers `request` with `error`.
fn fail(request: Request, error: Error) {
    match request {
        Request::Append { reply, .. } => finish(reply, Err(error))(Ok(())),
        Request::AppendMany { reply, .. } => finish(reply, Err(error))(Ok(())),
        Request::Import { reply, .. } => finish(reply, Err(error))(Ok(())),
        Request::Checkpoint { reply, .. } => finish(reply, Err(error))(Ok(())),
        Request::ReadModel { job } => job(Err(error)).0(Ok(())),
    }
}

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
fn append(
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
fn store_snapshot(
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
fn append_many(
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
        let inserted = insert.execute(params![
            stream_id,
            start + i as i64,
            start,
            &e.event_id.as_bytes()[..],
            e.event_type,
            e.data,
            e.metadata,
            e.correlation_id.as_ref().map(|u| &u.as_bytes()[..]),
            e.causation_id.as_ref().map(|u| &u.as_bytes()[..]),
            now,
        ]);
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

fn commit_checkpoint(
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

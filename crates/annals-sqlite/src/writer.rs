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

use annals::{
    AppendResult, Error, EventData, ExpectedVersion, Position, Result, StreamAppend, StreamName,
    Timestamp, Version,
};
use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use crate::append::{append, append_many, commit_checkpoint, store_snapshot};
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
        while group.len() < max_group && Group::open(&conn) {
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
pub(crate) fn exec(conn: &Connection, statement: &str) -> Result<()> {
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
        };
        group.run(conn, first);
        Some(group)
    }

    fn len(&self) -> usize {
        self.finishers.len()
    }

    /// Whether the group can take another request: its transaction is still open. SQLite
    /// may roll the whole transaction back with a request's failed statement (on a full
    /// disk, an I/O error or out of memory); the group then takes no more requests, and
    /// those it ran are answered that nothing was written.
    fn open(conn: &Mutex<Connection>) -> bool {
        !lock(conn).is_autocommit()
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
        let commit = match conn.is_autocommit() {
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

/// Describes this store's metrics (labelled by file path) to the installed `metrics`
/// recorder: their help text and units. Call it once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "annals_sqlite_group_commit_requests",
        metrics::Unit::Count,
        "Write requests (appends, checkpoints, deletions...) committed together by the writer in one transaction and one flush"
    );
}

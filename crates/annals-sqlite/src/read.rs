//! Reads: a small pool of read-only WAL connections, used from blocking tasks.

use std::sync::{Arc, Mutex};

use annals::{
    AllPage, Direction, Filter, Head, HeadSnapshot, Position, ReadStream, RecordedEvent, Result,
    StreamName, Timestamp, Uuid, Version,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};
use tokio::sync::Semaphore;

use crate::error::backend;
use crate::SqliteConfig;

/// Events per page when reading a stream.
const STREAM_PAGE: usize = 1000;

/// Stream reads of at most this many events are short (read on the caller's thread).
const SHORT_READ: u64 = 64;

/// The event columns, from the events table `e`; the stream `s` is joined after it.
macro_rules! select_events {
    () => {
        "SELECT e.position, s.name, e.stream_version, e.recorded_at, e.event_type, \
         e.data, e.metadata, e.event_id, e.correlation_id, e.causation_id FROM annals_events e "
    };
}

const SELECT: &str = concat!(
    select_events!(),
    "JOIN annals_streams s ON s.stream_id = e.stream_id"
);

/// A page of one stream by its name, whose name the reader knows (read with `event_in`):
/// one statement, no read of the stream's version first. The stream row is the outer loop,
/// so the events' index range starts at the first version it shows.
macro_rules! select_stream_page {
    ($($range:expr),+) => {
        concat!(
            "SELECT e.position, NULL, e.stream_version, e.recorded_at, e.event_type, e.data, \
             e.metadata, e.event_id, e.correlation_id, e.causation_id FROM annals_streams s \
             CROSS JOIN annals_events e ON e.stream_id = s.stream_id \
             WHERE s.name = ?1 AND ",
            crate::retention::alive!(),
            " AND ",
            $($range),+
        )
    };
}
const PAGE_FORWARD: &str = select_stream_page!(
    "e.stream_version >= max(?2, ",
    crate::retention::first_shown!(),
    ") ORDER BY e.stream_version LIMIT ?3"
);
const PAGE_BACKWARD: &str = select_stream_page!(
    "e.stream_version < ?2 AND e.stream_version >= ",
    crate::retention::first_shown!(),
    " ORDER BY e.stream_version DESC LIMIT ?3"
);

/// [`SELECT`] for read-all. CROSS JOIN keeps the events table as the outer loop, walking
/// positions in order and stopping at the limit. Left to itself, SQLite answers a category
/// filter through the category index and sorts the category's every event after `from`
/// for each page: quadratic over a catch-up.
const SELECT_ALL: &str = concat!(
    select_events!(),
    "CROSS JOIN annals_streams s ON s.stream_id = e.stream_id"
);

pub(crate) struct Readers {
    config: SqliteConfig,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(crate) fn new(config: SqliteConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.readers));
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits,
        }
    }

    /// Runs `f` on an idle read connection on this thread when one is free at once, else as
    /// [`Readers::with`]: for reads expected to be short (a stream read after a known
    /// version: usually a few events at most), whose hand-over to a blocking thread and back
    /// costs more than the read itself.
    pub(crate) async fn with_here<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        let Some(conn) = permit.as_ref().and_then(|_| self.take_idle()) else {
            drop(permit);
            return self.with(f).await;
        };
        self.run(Some(conn), f)
    }

    /// Runs `f` on a read connection on this thread once one is free, in
    /// [`tokio::task::block_in_place`] (the worker's other tasks go to another thread
    /// meanwhile): for long reads (a page of up to 1,000 events), whose events are then
    /// built and freed on one thread. On a current-thread runtime, where a worker cannot
    /// block in place, as [`Readers::with`].
    pub(crate) async fn with_in_place<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_threaded {
            return self.with(f).await;
        }
        let _permit = self.permit().await?;
        tokio::task::block_in_place(|| self.run(None, f))
    }

    /// Runs `f` on a read connection in a blocking task.
    pub(crate) async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self.permit().await?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.run(None, f)
        })
        .await
        .map_err(|e| backend(format!("read task failed: {e}")))?
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| backend(format!("reader pool closed: {e}")))
    }

    /// Runs `f` here on `conn`, or an idle connection, or a new one; keeps the connection
    /// for the next read, also when `f` panics (that read's error).
    fn run<T>(
        &self,
        conn: Option<Connection>,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = match conn.or_else(|| self.take_idle()) {
            Some(c) => c,
            None => crate::schema::open_reader(&self.config).map_err(backend)?,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut conn)));
        self.keep(conn);
        result.map_err(|_| backend("a read panicked"))?
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn keep(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

fn uuid(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Uuid>> {
    // Borrowed from the row: no allocation per id.
    let bytes = row.get_ref(i)?.as_blob_or_null().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into())
    })?;
    bytes
        .map(|b| {
            Uuid::from_slice(b).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into())
            })
        })
        .transpose()
}

fn event(row: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    event_after(row, &mut None)
}

/// The same as [`event`], reusing `last`'s name when the row's stream is the one before it
/// (feed pages run in streams' batches: one name checked and allocated per run).
fn event_after(row: &Row<'_>, last: &mut Option<StreamName>) -> rusqlite::Result<RecordedEvent> {
    let name = row.get_ref(1)?.as_str()?;
    let stream = match last {
        Some(s) if s.as_str() == name => s.clone(),
        _ => {
            let s = StreamName::new(name).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
            })?;
            *last = Some(s.clone());
            s
        }
    };
    event_in(row, stream)
}

/// An event of `stream` (its name column is not read).
fn event_in(row: &Row<'_>, stream: StreamName) -> rusqlite::Result<RecordedEvent> {
    Ok(RecordedEvent {
        stream,
        stream_version: row.get::<_, i64>(2)? as u64,
        position: annals::backend::position(row.get::<_, i64>(0)? as u128),
        recorded_at: Timestamp::from_unix_micros(row.get(3)?),
        event_type: row.get(4)?,
        data: row.get(5)?,
        metadata: row.get(6)?,
        event_id: uuid(row, 7)?.unwrap_or_default(),
        correlation_id: uuid(row, 8)?,
        causation_id: uuid(row, 9)?,
    })
}

/// The stream's version and whether it is a tombstone (`None`: never written).
pub(crate) fn stream_version(
    conn: &Connection,
    stream: &str,
) -> rusqlite::Result<Option<(u64, bool)>> {
    conn.prepare_cached("SELECT version, tombstone FROM annals_streams WHERE name = ?1")?
        .query_row([stream], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? == 1))
        })
        .optional()
}

/// A stream's head snapshot and up to `limit` events after it, in one read transaction.
pub(crate) fn read_head(conn: &mut Connection, stream: &str, limit: usize) -> Result<Head> {
    in_snapshot(conn, |tx| head_in(tx, stream, limit))
}

/// Runs `read` in one read transaction (one snapshot of the file), its `BEGIN` and
/// `ROLLBACK` prepared once per connection like the reads' own (`Connection::transaction`
/// parses them again at every read).
fn in_snapshot<T>(conn: &Connection, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(backend)
    };
    if !conn.is_autocommit() {
        // A read that unwound left its transaction open: end it, then take a new snapshot.
        run("ROLLBACK")?;
    }
    run("BEGIN")?;
    let result = read(conn);
    // Nothing was written: the end only releases the snapshot (as `Transaction`'s default).
    let end = run("ROLLBACK");
    let value = result?;
    end?;
    Ok(value)
}

fn head_in(tx: &Connection, stream: &str, limit: usize) -> Result<Head> {
    let row = tx
        .prepare_cached(
            "SELECT stream_id, version, snapshot, snapshot_version, start, tombstone, \
             max_age IS NOT NULL OR max_count IS NOT NULL FROM annals_streams WHERE name = ?1",
        )
        .and_then(|mut s| {
            s.query_row([stream], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)? == 1,
                    r.get::<_, bool>(6)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    let Some((stream_id, version, data, at, start, tombstone, retained)) = row else {
        return Ok(Head::default());
    };
    if tombstone {
        return Err(annals::Error::StreamDeleted {
            stream: StreamName::new(stream).map_err(backend)?,
        });
    }
    // A snapshot holds the state of every event before it: not one retention hides.
    let snapshot = data
        .zip(at)
        .filter(|_| !retained)
        .map(|(data, at)| HeadSnapshot {
            version: Version(at as u64),
            data,
        });
    let from = snapshot
        .as_ref()
        .map_or(0, |s| s.version.get() as i64)
        .max(start);
    let events = tx
        .prepare_cached(&format!(
            "{SELECT} WHERE e.stream_id = ?1 AND e.stream_version >= ?2 AND {} \
             ORDER BY e.stream_version LIMIT ?3",
            crate::retention::shown!()
        ))
        .and_then(|mut s| {
            s.query_map(
                rusqlite::params![stream_id, from, limit.min(i64::MAX as usize) as i64],
                event,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    Ok(Head {
        version: Version(version),
        snapshot,
        events,
    })
}

/// Where a stream read goes on: the next version to read (forward) or the one below which
/// to read (backward), and how many events are still wanted.
#[derive(Clone, Copy)]
struct Cursor {
    next: u64,
    left: u64,
}

/// One page of `stream` at `cursor`, and the cursor after it (`None` at the end: a short
/// page, as an empty or missing stream gives).
fn page(
    conn: &mut Connection,
    stream: &StreamName,
    cursor: Cursor,
    forward: bool,
) -> Result<(Vec<RecordedEvent>, Option<Cursor>)> {
    let want = cursor.left.min(STREAM_PAGE as u64);
    let sql = if forward { PAGE_FORWARD } else { PAGE_BACKWARD };
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let next = cursor.next.min(i64::MAX as u64) as i64;
    // One row more than wanted (unless the limit ends the read here) says whether another
    // page follows, so a stream that ends on a page boundary costs no empty page (nor the
    // tombstone check an empty page needs).
    let ask = if want < cursor.left { want + 1 } else { want };
    let mut events = Vec::with_capacity(ask as usize);
    let mut rows = stmt
        .query(rusqlite::params![stream.as_str(), next, ask as i64])
        .map_err(backend)?;
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(event_in(row, stream.clone()).map_err(backend)?);
    }
    drop(rows);
    drop(stmt);
    let more = events.len() as u64 > want;
    events.truncate(want as usize);
    // Nothing shown: a tombstone is an error, not an empty stream.
    if events.is_empty()
        && matches!(
            stream_version(conn, stream.as_str()).map_err(backend)?,
            Some((_, true))
        )
    {
        return Err(annals::Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let cursor = match events.last() {
        Some(last) if more => Some(Cursor {
            next: if forward {
                last.stream_version + 1
            } else {
                last.stream_version
            },
            left: cursor.left - want,
        }),
        _ => None,
    };
    Ok((events, cursor))
}

/// A stream read: a page per hop to a reader, one statement each; never an empty page.
pub(crate) fn read_stream_pages(
    readers: Arc<Readers>,
    stream: StreamName,
    options: ReadStream,
) -> BoxStream<'static, Result<Vec<RecordedEvent>>> {
    let forward = options.direction == Direction::Forward;
    let start = Cursor {
        next: match (forward, options.from) {
            (true, from) => from.map_or(0, Version::get),
            (false, from) => from.map_or(u64::MAX, Version::get),
        },
        left: options.limit.map_or(u64::MAX, |l| l as u64),
    };
    // Reading forward after a known version (a cached state catching up) or a few events
    // at most is short; later pages are long.
    let short = (forward && start.next > 0) || start.left <= SHORT_READ;
    let first = (start.left > 0).then_some(start);
    stream::unfold((first, short), move |(cursor, short)| {
        let readers = Arc::clone(&readers);
        let stream = stream.clone();
        async move {
            let cursor = cursor?;
            let read = move |conn: &mut Connection| page(conn, &stream, cursor, forward);
            let read = match short {
                true => readers.with_here(read).await,
                false => readers.with_in_place(read).await,
            };
            match read {
                Err(e) => Some((Err(e), (None, false))),
                Ok((events, next)) => Some((Ok(events), (next, false))),
            }
        }
    })
    .try_filter(|events| std::future::ready(!events.is_empty()))
    .boxed()
}

pub(crate) fn read_all(
    conn: &mut Connection,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> Result<AllPage> {
    let from_raw = i64::try_from(annals::backend::raw_position(from)).unwrap_or(i64::MAX);
    // The filter's terms come first: in a feed of many categories they pass over most
    // rows before the retention terms are reached.
    let mut sql = format!("{SELECT_ALL} WHERE e.position > ?");
    let mut args: Vec<rusqlite::types::Value> = vec![from_raw.into()];
    let placeholders = |n: usize| vec!["?"; n].join(", ");
    if !filter.categories.is_empty() {
        sql += &format!(
            " AND s.category IN ({})",
            placeholders(filter.categories.len())
        );
        args.extend(filter.categories.iter().map(|c| c.clone().into()));
    }
    if !filter.event_types.is_empty() {
        sql += &format!(
            " AND e.event_type IN ({})",
            placeholders(filter.event_types.len())
        );
        args.extend(filter.event_types.iter().map(|t| t.clone().into()));
    }
    if let Some(p) = filter.partition {
        sql += " AND annals_partition(s.name, ?) = ?";
        args.push(i64::from(p.count).into());
        args.push(i64::from(p.index).into());
    }
    // Truncated, deleted and expired events are not shown.
    sql += concat!(
        " AND ",
        crate::retention::shown!(),
        " ORDER BY e.position LIMIT ?"
    );
    args.push((limit as i64).into());
    in_snapshot(conn, |tx| all_in(tx, &sql, args, from, limit))
}

fn all_in(
    tx: &Connection,
    sql: &str,
    args: Vec<rusqlite::types::Value>,
    from: Position,
    limit: usize,
) -> Result<AllPage> {
    let events = {
        let mut stmt = tx.prepare_cached(sql).map_err(backend)?;
        let mut last = None;
        let rows = stmt
            .query_map(params_from_iter(args), |row| event_after(row, &mut last))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?
    };
    let page = if events.len() >= limit {
        let next = events.last().map_or(from, |e| e.position);
        AllPage {
            events,
            next,
            end: false,
        }
    } else {
        // Short page: everything up to the head was scanned.
        let head: i64 = tx
            .prepare_cached("SELECT coalesce(max(position), 0) FROM annals_events")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(backend)?;
        let next = from.max(annals::backend::position(head as u128));
        AllPage {
            events,
            next,
            end: true,
        }
    };
    Ok(page)
}

#[cfg(test)]
mod tests {
    use annals::{EventData, EventStore, ExpectedVersion, StreamName};
    use rusqlite::StatementStatus;

    use super::{page, Cursor, PAGE_BACKWARD, PAGE_FORWARD};
    use crate::{SqliteConfig, SqliteStore};

    /// Cached page statements are planned once: reading pages of other streams with other
    /// limits binds new values without preparing the SQL again.
    #[tokio::test]
    async fn page_statements_are_not_prepared_again_per_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("s.db"));
        let store = SqliteStore::open(config.clone()).unwrap();
        let names: Vec<StreamName> = (0..3)
            .map(|i| StreamName::new(format!("Plan-{i}")).unwrap())
            .collect();
        for s in &names {
            let events = (0..20)
                .map(|_| EventData::new("E", b"{}".to_vec()))
                .collect();
            store.append(s, ExpectedVersion::Any, events).await.unwrap();
        }
        let mut conn = crate::schema::open_reader(&config).unwrap();
        for round in 0..10u64 {
            for (i, s) in names.iter().enumerate() {
                let cursor = Cursor {
                    next: if i % 2 == 0 { 0 } else { u64::MAX },
                    left: 1 + (round + i as u64) % 7,
                };
                let (events, _) = page(&mut conn, s, cursor, i % 2 == 0).unwrap();
                assert_eq!(events.len() as u64, cursor.left);
            }
        }
        for sql in [PAGE_FORWARD, PAGE_BACKWARD] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
            assert!(stmt.get_status(StatementStatus::Run) >= 10);
        }
    }

    /// A short read runs on the caller's thread when a reader is idle, and in a blocking
    /// task when none is (here: before the pool has opened one).
    #[tokio::test]
    async fn a_short_read_runs_here_on_an_idle_reader_else_on_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let readers = std::sync::Arc::new(super::Readers::new(SqliteConfig::new(
            dir.path().join("r.db"),
        )));
        drop(SqliteStore::open(SqliteConfig::new(dir.path().join("r.db"))).unwrap());
        let here = std::thread::current().id();
        let thread = |_: &mut rusqlite::Connection| Ok(std::thread::current().id());
        let first = readers.with_here(thread).await.unwrap();
        assert_ne!(
            first, here,
            "no idle reader yet: a blocking task opened one"
        );
        assert_eq!(readers.with_here(thread).await.unwrap(), here);
        assert_ne!(readers.with(thread).await.unwrap(), here);
        // A read that panics here is an error, and the reader is kept.
        let e = readers
            .with_here(|_| -> annals::Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a read panicked"), "{e}");
        assert_eq!(readers.with_here(thread).await.unwrap(), here);
    }

    /// A long read runs on the caller's thread on a multi-threaded runtime, in
    /// `block_in_place`: the worker's other tasks go on meanwhile (here the only worker's: a
    /// task spawned before the read answers it from within). A panic in it is an error, and
    /// the reader is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_read_blocks_in_place_and_the_workers_other_tasks_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("l.db"));
        drop(SqliteStore::open(config.clone()).unwrap());
        let readers = std::sync::Arc::new(super::Readers::new(config));
        readers.with(|_| Ok(())).await.unwrap();
        // On the runtime's one worker (a test's body runs on the test's own thread).
        tokio::spawn(async move {
            let (ask, asked) = tokio::sync::oneshot::channel::<()>();
            let (answer, answered) = std::sync::mpsc::channel();
            tokio::spawn(async move {
                asked.await.unwrap();
                answer.send(()).unwrap();
            });
            let here = std::thread::current().id();
            let (thread, reply) = readers
                .with_in_place(move |_| {
                    ask.send(()).unwrap();
                    let reply = answered.recv_timeout(std::time::Duration::from_secs(60));
                    Ok((std::thread::current().id(), reply))
                })
                .await
                .unwrap();
            assert_eq!(thread, here);
            assert!(
                reply.is_ok(),
                "the spawned task did not run during the read"
            );
            let e = readers
                .with_in_place(|_| -> annals::Result<()> { panic!("boom") })
                .await
                .unwrap_err();
            assert!(e.to_string().contains("a read panicked"), "{e}");
            let here = std::thread::current().id();
            let thread = |_: &mut rusqlite::Connection| Ok(std::thread::current().id());
            assert_eq!(readers.with_in_place(thread).await.unwrap(), here);
        })
        .await
        .unwrap();
    }

    /// On a current-thread runtime (where a worker cannot block in place) a long read runs
    /// in a blocking task, even with a reader idle.
    #[tokio::test]
    async fn a_long_read_on_a_current_thread_runtime_runs_on_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("c.db"));
        drop(SqliteStore::open(config.clone()).unwrap());
        let readers = std::sync::Arc::new(super::Readers::new(config));
        let here = std::thread::current().id();
        let thread = |_: &mut rusqlite::Connection| Ok(std::thread::current().id());
        readers.with(thread).await.unwrap();
        assert_eq!(readers.with_here(thread).await.unwrap(), here);
        assert_ne!(readers.with_in_place(thread).await.unwrap(), here);
    }

    /// A store in a new directory where `stream` got one append of each of `batches`
    /// events, and a reader connection on its file.
    async fn written(
        stream: &StreamName,
        batches: &[usize],
    ) -> (tempfile::TempDir, SqliteStore, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("s.db"));
        let store = SqliteStore::open(config.clone()).unwrap();
        for &count in batches {
            let events = (0..count)
                .map(|_| EventData::new("E", b"{}".to_vec()))
                .collect();
            store
                .append(stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
        let conn = crate::schema::open_reader(&config).unwrap();
        (dir, store, conn)
    }

    /// Feed pages and head reads run in a read transaction whose statements are prepared
    /// once per connection: every read runs the same cached `BEGIN`, `ROLLBACK` and head
    /// query; a transaction left open on the connection is ended, not an error.
    #[tokio::test]
    async fn feed_and_head_reads_reuse_their_transaction_statements() {
        let stream = StreamName::new("Feed-1").unwrap();
        let (_dir, _store, mut conn) = written(&stream, &[5]).await;
        let filter = annals::Filter::category("Feed");
        for round in 0..10 {
            // A short page: the head is read too.
            let page = super::read_all(&mut conn, annals::Position::START, &filter, 100).unwrap();
            assert_eq!(page.events.len(), 5, "round {round}");
            assert!(page.end);
            let head = super::read_head(&mut conn, stream.as_str(), 100).unwrap();
            assert_eq!(head.events.len(), 5);
            assert!(conn.is_autocommit(), "the read transaction is ended");
        }
        for sql in [
            "BEGIN",
            "ROLLBACK",
            "SELECT coalesce(max(position), 0) FROM annals_events",
        ] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert!(stmt.get_status(StatementStatus::Run) >= 10, "{sql}");
        }
        conn.execute_batch("BEGIN").unwrap();
        let page = super::read_all(&mut conn, annals::Position::START, &filter, 100).unwrap();
        assert_eq!(page.events.len(), 5);
        assert!(conn.is_autocommit());
    }

    /// A stream that ends on a page boundary is read in its pages alone: the page says
    /// whether another follows, so no empty page is asked for; every read still gets each
    /// event once, in order, whatever its direction and limit.
    #[tokio::test]
    async fn pages_end_without_an_empty_page_at_a_boundary() {
        let stream = StreamName::new("Pages-1").unwrap();
        let n = 2 * super::STREAM_PAGE as u64;
        let (_dir, store, mut conn) =
            written(&stream, &[super::STREAM_PAGE, super::STREAM_PAGE]).await;
        let all = Cursor {
            next: 0,
            left: u64::MAX,
        };
        let (first, next) = page(&mut conn, &stream, all, true).unwrap();
        assert_eq!(first.len(), super::STREAM_PAGE);
        let next = next.expect("a second page follows");
        let (second, end) = page(&mut conn, &stream, next, true).unwrap();
        assert_eq!(second.len(), super::STREAM_PAGE);
        assert!(end.is_none(), "the last page says it is the last");
        assert_eq!(second.last().unwrap().stream_version, n - 1);

        use annals::{Direction, EventStoreExt, ReadStream};
        for (limit, direction) in [
            (None, Direction::Forward),
            (None, Direction::Backward),
            (Some(1000), Direction::Forward),
            (Some(1001), Direction::Backward),
            (Some(2000), Direction::Forward),
            (Some(2500), Direction::Backward),
        ] {
            let options = ReadStream {
                direction,
                limit,
                ..ReadStream::default()
            };
            let read = store.read_stream_vec(&stream, options).await.unwrap();
            let want = limit.map_or(n, |l| (l as u64).min(n));
            assert_eq!(read.len() as u64, want, "{limit:?} {direction:?}");
            let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
            let expected: Vec<u64> = match direction {
                Direction::Forward => (0..want).collect(),
                Direction::Backward => (n - want..n).rev().collect(),
            };
            assert_eq!(versions, expected, "{limit:?} {direction:?}");
        }
    }
}

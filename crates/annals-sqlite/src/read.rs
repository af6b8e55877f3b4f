//! Reads: a small pool of read-only WAL connections, used from blocking tasks.

use std::sync::{Arc, Mutex};

use annals::{
    AllPage, Direction, Filter, Head, HeadSnapshot, Position, ReadStream, RecordedEvent, Result,
    StartedPage, StreamName, Timestamp, Uuid, Version,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A page of one stream by its name, whose name the reader knows (read with `event_in`),
/// each row with where the stream starts (column 10, from the stream row): one statement,
/// no read of the stream's version first. The stream row is the outer loop, so the
/// events' index range starts at the first version it shows.
macro_rules! select_stream_page {
    ($($range:expr),+) => {
        concat!(
            "SELECT e.position, NULL, e.stream_version, e.recorded_at, e.event_type, e.data, \
             e.metadata, e.event_id, e.correlation_id, e.causation_id, s.start \
             FROM annals_streams s \
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
    /// Connections read the file as immutable (see `schema::open_read_only`).
    immutable: bool,
    idle: Mutex<Vec<Connection>>,
    /// Set when the store closes: connections are closed after their read, not kept.
    closed: std::sync::atomic::AtomicBool,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(crate) fn new(config: SqliteConfig) -> Self {
        Self::opening(config, false)
    }

    /// Readers whose connections open the file as immutable, or not.
    pub(crate) fn opening(config: SqliteConfig, immutable: bool) -> Self {
        let permits = Arc::new(Semaphore::new(config.readers));
        Self {
            config,
            immutable,
            idle: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            permits,
        }
    }

    /// Whether connections read the file as immutable.
    pub(crate) fn immutable(&self) -> bool {
        self.immutable
    }

    /// Runs `f` on an idle read connection on this thread, once a reader is free: for reads
    /// expected to be short (a stream read after a known version: usually a few events at
    /// most), whose hand-over to a blocking thread and back costs more than the read itself.
    /// Only a connection still to be opened is opened, and read, in a blocking task. Each
    /// read takes a unit of the task's scheduling budget, so a task reading in a loop still
    /// lets the worker's other tasks run.
    pub(crate) async fn with_here<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        tokio::task::coop::consume_budget().await;
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.permit().await?,
        };
        match self.take_idle() {
            Some(conn) => self.run(Some(conn), f),
            None => self.blocking(permit, f).await,
        }
    }

    /// Runs `f` on a read connection in a blocking task.
    pub(crate) async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self.permit().await?;
        self.blocking(permit, f).await
    }

    /// Runs `f` in a blocking task, holding `permit`.
    async fn blocking<T, F>(self: &Arc<Self>, permit: OwnedSemaphorePermit, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.run(None, f)
        })
        .await
        .map_err(|e| backend(format!("read task failed: {e}")))?
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit> {
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
            None => crate::schema::open_reader(&self.config, self.immutable).map_err(backend)?,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut conn)));
        self.keep(conn);
        result.map_err(|_| backend("a read panicked"))?
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn keep(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            idle.push(conn);
        }
    }

    /// Closes the idle connections, and each busy one once its read ends. Closed before
    /// the writer's: SQLite's last connection to a file copies the WAL back into it and
    /// removes it, which a read-only connection cannot do, so the file alone holds every
    /// commit once the store is closed (a copy of it is a whole backup).
    pub(crate) fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        idle.clear();
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
    let name = row.get_ref(1)?.as_str();
    let stream = match (&name, &*last) {
        (Ok(name), Some(s)) if s.as_str() == *name => s.clone(),
        _ => {
            let s = name
                .map_err(rusqlite::Error::from)
                .and_then(|name| {
                    StreamName::new(name).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            1,
                            rusqlite::types::Type::Text,
                            e.into(),
                        )
                    })
                })
                .map_err(|e| unreadable(row, e))?;
            *last = Some(s.clone());
            s
        }
    };
    event_in(row, stream)
}

/// An event of `stream` (its name column is not read).
fn event_in(row: &Row<'_>, stream: StreamName) -> rusqlite::Result<RecordedEvent> {
    let read = || {
        Ok(RecordedEvent {
            stream,
            stream_version: u64::try_from(row.get::<_, i64>(2)?).map_err(|_| {
                rusqlite::Error::IntegralValueOutOfRange(2, row.get(2).unwrap_or(-1))
            })?,
            position: annals::backend::position(row.get::<_, i64>(0)? as u128),
            recorded_at: Timestamp::from_unix_micros(row.get(3)?),
            event_type: row.get(4)?,
            data: row.get(5)?,
            metadata: row.get(6)?,
            event_id: uuid(row, 7)?.unwrap_or_default(),
            correlation_id: uuid(row, 8)?,
            causation_id: uuid(row, 9)?,
        })
    };
    read().map_err(|e| unreadable(row, e))
}

/// An event row holding a value Annals never writes (the file was changed by other
/// means): the error names the row's position, which the driver's error alone does not.
fn unreadable(row: &Row<'_>, cause: rusqlite::Error) -> rusqlite::Error {
    let position = row.get::<_, i64>(0).ok();
    rusqlite::Error::UserFunctionError(Box::new(Unreadable { position, cause }))
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the event at position {} cannot be read ({cause}): the file holds a value Annals does not write there",
    position.map_or_else(|| "?".to_owned(), |p| p.to_string())
)]
struct Unreadable {
    position: Option<i64>,
    cause: rusqlite::Error,
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
        start: Version(start as u64),
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

/// One page of `stream` at `cursor`, the cursor after it (`None` at the end: a short
/// page, as an empty or missing stream gives), and where the stream starts (`None` when
/// the page shows no event).
fn page(
    conn: &mut Connection,
    stream: &StreamName,
    cursor: Cursor,
    forward: bool,
) -> Result<(Vec<RecordedEvent>, Option<Cursor>, Option<u64>)> {
    let want = cursor.left.min(STREAM_PAGE as u64);
    let sql = if forward { PAGE_FORWARD } else { PAGE_BACKWARD };
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let next = cursor.next.min(i64::MAX as u64) as i64;
    // One row more than wanted (unless the limit ends the read here) says whether another
    // page follows, so a stream that ends on a page boundary costs no empty page (nor the
    // tombstone check an empty page needs).
    let ask = if want < cursor.left { want + 1 } else { want };
    let mut events = Vec::with_capacity(ask as usize);
    let mut start = None;
    let mut rows = stmt
        .query(rusqlite::params![stream.as_str(), next, ask as i64])
        .map_err(backend)?;
    while let Some(row) = rows.next().map_err(backend)? {
        if start.is_none() {
            start = Some(row.get::<_, i64>(10).map_err(backend)? as u64);
        }
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
    Ok((events, cursor, start))
}

/// At most `limit` events of `stream` forward from `from` (fewer only at its end), and
/// where the stream starts: from the page's own rows when one page showed events (one
/// statement, one snapshot), else read after the pages (a deletion or truncation between
/// two pages then shows as a later start, never an earlier one).
pub(crate) fn page_from(
    conn: &mut Connection,
    stream: &StreamName,
    from: Version,
    limit: usize,
) -> Result<StartedPage> {
    let mut events = Vec::new();
    let (mut start, mut pages) = (None, 0);
    let mut cursor = Some(Cursor {
        next: from.get(),
        left: limit as u64,
    });
    while let Some(at) = cursor.filter(|c| c.left > 0) {
        let (page, next, first) = page(conn, stream, at, true)?;
        events.extend(page);
        (start, pages) = (first, pages + 1);
        cursor = next;
    }
    let start = match start.filter(|_| pages == 1) {
        Some(start) => start,
        None => conn
            .prepare_cached("SELECT start FROM annals_streams WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([stream.as_str()], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map_err(backend)?
            .map_or(0, |s| s as u64),
    };
    Ok(StartedPage {
        events,
        start: Some(Version(start)),
    })
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
    // at most is short: its first page runs on this thread. Later pages, and long reads,
    // go to a blocking task. (Not `block_in_place`: it panics in a `LocalSet`, which tokio
    // gives no way to detect.)
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
                false => readers.with(read).await,
            };
            match read {
                Err(e) => Some((Err(e), (None, false))),
                Ok((events, next, _)) => Some((Ok(events), (next, false))),
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
mod tests;

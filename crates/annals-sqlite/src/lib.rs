//! The embedded SQLite event store for Annals: one file, durable appends, group commit.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use annals::{EventData, EventStore, ExpectedVersion, StreamName};
//! use annals_sqlite::{SqliteConfig, SqliteStore};
//!
//! let store = SqliteStore::open(SqliteConfig::new("annals.db"))?;
//! let stream = StreamName::new("Cart-1")?;
//! store.append(&stream, ExpectedVersion::NoStream, vec![EventData::new("Added", b"{}".to_vec())]).await?;
//! # Ok(()) }
//! ```
//!
//! One writer thread owns the write connection and commits queued appends in groups (one
//! transaction, one savepoint per append, one fsync for all); readers use a small pool of
//! read-only WAL connections. `journal_mode=WAL`, `synchronous=FULL` unless
//! [`Synchronous::Normal`] is asked for. Events are immutable: triggers refuse UPDATE and
//! DELETE on them. Positions are SQLite `AUTOINCREMENT` row ids: dense and in commit order.
//! Several processes may open the same file; their writes are serialised by SQLite's lock,
//! and subscribers see other processes' events by polling.
//!
//! A `SqliteStore` is also a read-model database ([`annals::ReadModelStore`], through
//! [`SqliteTx`]) fed from any event store, and a checkpoint store that keeps parked streams.

mod append;
mod config;
mod delete;
mod error;
mod import;
mod read;
mod read_model;
mod retention;
mod schema;
mod writer;

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use annals::{
    AllPage, AppendAt, AppendResult, Capabilities, Checkpoint, CheckpointStore, EventData,
    EventStore, ExpectedVersion, Filter, Head, ParkedStream, Position, ReadStream, RecordedEvent,
    Result, StartedPage, StreamAppend, StreamName, Timestamp, Version,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::{oneshot, watch};

pub use config::{SqliteConfig, Synchronous};
pub use error::OpenError;
pub use read_model::SqliteTx;
pub use rusqlite;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use writer::describe_metrics;

use error::backend;
use read::Readers;
use writer::Request;

struct Shared {
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    changes: watch::Sender<()>,
    config: SqliteConfig,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The writer's connection closes last, so it checkpoints the WAL into the file.
        self.readers.close();
        // Closing the queue lets the writer finish what is queued and stop.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The SQLite store. Clones share one writer and one reader pool.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.config.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating or migrating) the database of `config`, or, with
    /// [`SqliteConfig::read_only`], opens an existing store for reading only. Blocks while
    /// it opens the file and applies migrations.
    pub fn open(config: SqliteConfig) -> Result<Self, OpenError> {
        if config.read_only {
            let immutable = schema::open_read_only(&config)?;
            return Ok(Self {
                shared: Arc::new(Shared {
                    queue: None,
                    writer: None,
                    readers: Arc::new(Readers::opening(config.clone(), immutable)),
                    changes: watch::Sender::new(()),
                    config,
                }),
            });
        }
        let conn = schema::open_writer(&config)?;
        let thread_error = |e: std::io::Error| OpenError::Sqlite {
            path: config.path.clone(),
            source: rusqlite::Error::InvalidParameterName(format!(
                "could not start a store thread: {e}"
            )),
        };
        let (queue, rx) = mpsc::channel();
        let changes = watch::Sender::new(());
        let writer = {
            let changes = changes.clone();
            let grouping = writer::Grouping {
                max_group: config.max_group.max(1),
                linger: config.group_linger,
                path: config.path.display().to_string(),
            };
            std::thread::Builder::new()
                .name("annals-sqlite-writer".into())
                .spawn(move || writer::run(conn, rx, changes, grouping))
                .map_err(&thread_error)?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                queue: Some(queue),
                writer: Some(writer),
                readers: Arc::new(Readers::new(config.clone())),
                changes,
                config,
            }),
        })
    }

    /// The options the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.shared.config
    }

    /// Whether the store reads its file as it was when opened (a read-only store in a
    /// directory this process cannot write, which no process had open; see
    /// [`SqliteConfig::read_only`]): events written later, by any process, never show, so
    /// a subscription on it would wait for nothing.
    pub fn reads_snapshot(&self) -> bool {
        self.shared.readers.immutable()
    }

    pub(crate) async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let queue = self
            .shared
            .queue
            .as_ref()
            .ok_or(annals::Error::ReadOnly { backend: "sqlite" })?;
        queue
            .send(make(tx))
            .map_err(|_| backend("the writer thread has stopped"))?;
        rx.await
            .map_err(|_| backend("the writer thread stopped before answering"))?
    }

    /// Runs `work` on the write connection and commits `position` as the checkpoint of
    /// (`group`, `source`) in the same transaction: a projector's read-model changes and
    /// its checkpoint land together or not at all. `work` must not commit or roll back.
    pub async fn project<F, E>(
        &self,
        group: &str,
        source: &str,
        position: Position,
        work: F,
    ) -> Result<()>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<(), E> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let work: writer::ProjectFn = Box::new(move |conn| work(conn).map_err(Into::into));
        let (group, source) = (group.to_owned(), source.to_owned());
        self.request(|reply| Request::Checkpoint {
            group,
            source,
            position,
            work: Some(work),
            reply,
        })
        .await
    }

    pub(crate) fn readers(&self) -> &Arc<Readers> {
        &self.shared.readers
    }

    /// Runs a read-only query on a read connection (for read models kept in this file).
    pub async fn read<T, F>(&self, query: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.shared
            .readers
            .with(move |conn| query(conn).map_err(backend))
            .await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: annals::DeleteMode,
    ) -> Result<Version> {
        let stream = stream.clone();
        let deleted = self
            .write(move |conn| {
                let deletion = annals::backend::Deletion::Delete { expected, mode };
                delete::delete(&writer::lock(conn), &stream, deletion)
            })
            .await?;
        self.shared.changes.send_replace(());
        Ok(deleted)
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        let stream = stream.clone();
        let deleted = self
            .write(move |conn| {
                let deletion = annals::backend::Deletion::Imported(version);
                delete::delete(&writer::lock(conn), &stream, deletion)
            })
            .await?;
        self.shared.changes.send_replace(());
        Ok(deleted)
    }

    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<annals::Scavenged> {
        let limit = limit.max(1) as u64;
        self.write(move |conn| {
            let conn = writer::lock(conn);
            let (events, bytes) = delete::scavenge(&conn, limit, dry_run)?;
            Ok(annals::Scavenged {
                events,
                bytes,
                free_bytes: Some(delete::free_bytes(&conn)?),
            })
        })
        .await
    }

    async fn set_retention(
        &self,
        scope: &annals::RetentionScope,
        retention: annals::Retention,
    ) -> Result<()> {
        retention.validate()?;
        let scope = scope.clone();
        self.write(move |conn| retention::set(&writer::lock(conn), &scope, retention))
            .await?;
        self.shared.changes.send_replace(());
        Ok(())
    }

    async fn retention(&self) -> Result<Vec<(annals::RetentionScope, annals::Retention)>> {
        self.shared
            .readers
            .with(|conn| retention::list(conn).map_err(backend))
            .await
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        let stream = stream.clone();
        let start = self
            .write(move |conn| delete::truncate(&writer::lock(conn), &stream, before))
            .await?;
        self.shared.changes.send_replace(());
        Ok(start)
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.shared.config.max_event_bytes)?;
        let stream = stream.clone();
        self.request(|reply| Request::Append {
            stream,
            expected,
            events,
            snapshot: None,
            shown_from: None,
            reply,
        })
        .await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.shared.config.max_event_bytes)?;
        let stream = stream.clone();
        self.request(|reply| Request::Append {
            stream,
            expected,
            events,
            snapshot: Some(snapshot),
            shown_from: None,
            reply,
        })
        .await
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        annals::backend::validate_batch(stream, &events, self.shared.config.max_event_bytes)?;
        let tail = snapshot.is_none();
        let owned = stream.clone();
        let written = self
            .request(|reply| Request::Append {
                stream: owned,
                expected: ExpectedVersion::Exact(version),
                events,
                snapshot,
                shown_from: Some(shown_from),
                reply,
            })
            .await;
        annals::backend::answer_at(self, stream, version, written, tail).await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        annals::backend::validate_import(&events, self.shared.config.max_event_bytes)?;
        if events.is_empty() {
            return Ok(0);
        }
        self.request(|reply| Request::Import { events, reply })
            .await
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let name = stream.as_str().to_owned();
        self.shared
            .readers
            .with(move |conn| read::read_head(conn, &name, limit))
            .await
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        annals::backend::validate_many(&appends, self.shared.config.max_event_bytes)?;
        self.request(|reply| Request::AppendMany {
            appends,
            shown_from: None,
            reply,
        })
        .await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        annals::backend::validate_many(&appends, self.shared.config.max_event_bytes)?;
        self.request(|reply| Request::AppendMany {
            appends,
            shown_from: Some(shown_from),
            reply,
        })
        .await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        let name = stream.as_str().to_owned();
        let row = self
            .shared
            .readers
            .with(move |conn| read::stream_version(conn, &name).map_err(backend))
            .await?;
        match row {
            Some((_, true)) => Err(annals::Error::StreamDeleted {
                stream: stream.clone(),
            }),
            row => Ok(Version(row.map_or(0, |(v, _)| v))),
        }
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        annals::backend::events_of_pages(self.read_stream_pages(stream, options))
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        read::read_stream_pages(Arc::clone(&self.shared.readers), stream.clone(), options)
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        // Short, as a catch-up's first page: on this thread.
        let stream = stream.clone();
        self.shared
            .readers
            .with_here(move |conn| read::page_from(conn, &stream, from, limit))
            .await
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        filter.validate()?;
        let filter = filter.clone();
        let limit = limit.max(1);
        self.shared
            .readers
            .with(move |conn| read::read_all(conn, from, &filter, limit))
            .await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        let head: Option<i64> = self
            .read(|conn| {
                conn.prepare_cached("SELECT max(position) FROM annals_events")?
                    .query_row([], |r| r.get(0))
            })
            .await?;
        Ok(head.map(|p| annals::backend::position(p as u128)))
    }

    fn changes(&self) -> Option<watch::Receiver<()>> {
        Some(self.shared.changes.subscribe())
    }
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn load(&self, group: &str, source: &str) -> Result<Option<Position>> {
        let (group, source) = (group.to_owned(), source.to_owned());
        let text: Option<String> = self
            .read(move |conn| {
                use rusqlite::OptionalExtension;
                conn.prepare_cached(
                    "SELECT position FROM annals_checkpoints WHERE group_name = ?1 AND source = ?2",
                )?
                .query_row([group, source], |r| r.get(0))
                .optional()
            })
            .await?;
        text.map(|t| t.parse().map_err(backend)).transpose()
    }

    async fn commit(&self, group: &str, source: &str, position: Position) -> Result<()> {
        let (group, source) = (group.to_owned(), source.to_owned());
        self.request(|reply| Request::Checkpoint {
            group,
            source,
            position,
            work: None,
            reply,
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(String, String, String)> = self
            .read(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT group_name, source, position FROM annals_checkpoints \
                     ORDER BY group_name, source",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(group, source, position)| {
                Ok(Checkpoint {
                    group,
                    source,
                    position: position.parse().map_err(backend)?,
                })
            })
            .collect()
    }

    async fn park(&self, parked: &ParkedStream) -> Result<()> {
        let p = parked.clone();
        self.write(move |conn| {
            writer::lock(conn)
                .prepare_cached(
                    "INSERT INTO annals_parked (group_name, stream, from_version, to_version, \
                     attempts, first_error, last_error, parked_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (group_name, stream) DO UPDATE SET \
                     from_version = min(from_version, excluded.from_version), \
                     to_version = max(to_version, excluded.to_version), \
                     attempts = excluded.attempts, last_error = excluded.last_error, \
                     updated_at = excluded.updated_at",
                )
                .and_then(|mut s| {
                    s.execute(rusqlite::params![
                        p.group,
                        p.stream.as_str(),
                        p.from.get() as i64,
                        p.to.get() as i64,
                        p.attempts,
                        p.first_error,
                        p.last_error,
                        p.parked_at.unix_micros(),
                        p.updated_at.unix_micros(),
                    ])
                })
                .map(drop)
                .map_err(backend)
        })
        .await
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        type Row = (String, String, i64, i64, u32, String, String, i64, i64);
        let group = group.map(str::to_owned);
        let rows: Vec<Row> = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT group_name, stream, from_version, to_version, attempts, first_error, \
                     last_error, parked_at, updated_at FROM annals_parked \
                     WHERE ?1 IS NULL OR group_name = ?1 ORDER BY group_name, stream",
                )?;
                let rows = stmt.query_map([group], |r| Row::try_from(r))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(
                |(group, stream, from, to, attempts, first_error, last_error, at, upd)| {
                    Ok(ParkedStream {
                        group,
                        stream: StreamName::new(stream)?,
                        from: Version(from as u64),
                        to: Version(to as u64),
                        attempts,
                        first_error,
                        last_error,
                        parked_at: Timestamp::from_unix_micros(at),
                        updated_at: Timestamp::from_unix_micros(upd),
                    })
                },
            )
            .collect()
    }

    async fn unpark(&self, group: &str, stream: &StreamName) -> Result<bool> {
        let (group, stream) = (group.to_owned(), stream.as_str().to_owned());
        self.write(move |conn| {
            writer::lock(conn)
                .prepare_cached("DELETE FROM annals_parked WHERE group_name = ?1 AND stream = ?2")
                .and_then(|mut s| s.execute([group, stream]))
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await
    }
}

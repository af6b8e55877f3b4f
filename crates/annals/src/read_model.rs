//! Read models in SQL databases (documented on [`ReadModelStore`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::CheckpointStore;
use crate::store::{EventStore, ReadStream};
use crate::subscribe::EventStoreExt;
use crate::{
    Error, ProjectionId, ProjectionRow, Rebuilt, RecordedEvent, Result, StreamName, Version,
};

/// What a projector's code returns when it fails.
pub type ProjectorError = Box<dyn std::error::Error + Send + Sync>;

/// A projector failed: its changes were rolled back.
#[derive(Debug, thiserror::Error)]
#[error("projection {projection} failed{}", stream.as_ref().map_or_else(|| " to set up".to_owned(), |s| format!(" on {s}")))]
pub struct ApplyError {
    /// The projection.
    pub projection: String,
    /// The stream (`None` for its setup).
    pub stream: Option<StreamName>,
    /// What the projector returned (or that it panicked).
    #[source]
    pub source: ProjectorError,
}

/// Checks that `events` are consecutive events of `stream`, oldest first.
pub fn check_events(stream: &StreamName, events: &[RecordedEvent]) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        if &e.stream != stream {
            return Err(Error::ReadModel {
                reason: format!("events of {} given for {stream}", e.stream),
            });
        }
        if i > 0 && e.stream_version != events[i - 1].stream_version + 1 {
            return Err(Error::ReadModel {
                reason: format!(
                    "{stream}: version {} follows {}: events must be consecutive",
                    e.stream_version,
                    events[i - 1].stream_version
                ),
            });
        }
    }
    Ok(())
}

/// Checks what a rebuild ([`ReadModelStore::replace`]) is given: consecutive events of
/// `stream` that reach `version` (the stream's version before they were read); returns
/// the progress to record, the version after the last event (`version` when there are
/// none: every event below it is hidden).
pub fn check_rebuild(
    stream: &StreamName,
    events: &[RecordedEvent],
    version: Version,
) -> Result<u64> {
    check_events(stream, events)?;
    let next = events
        .last()
        .map_or(version.get(), |e| e.stream_version + 1);
    if next < version.get() {
        return Err(Error::ReadModel {
            reason: format!(
                "{stream}: a rebuild needs every event the store shows, up to version {version}; \
                 given up to {next}"
            ),
        });
    }
    Ok(next)
}

/// The refusal of a rebuild whose events end at version `read` while the projection
/// already applied those below `applied`.
pub fn rebuild_behind(projection: &str, stream: &StreamName, applied: u64, read: u64) -> Error {
    Error::ReadModel {
        reason: format!(
            "{stream}: {projection} applied the events below version {applied}, the rebuild \
             read those below {read}: read again"
        ),
    }
}

/// A value bound to a statement's `$n` placeholder, or read from a result column.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A boolean (SQLite stores it as 0 or 1).
    Bool(bool),
    /// A 64-bit integer (bound to PostgreSQL `smallint`, `integer` or `bigint` columns).
    Int(i64),
    /// A double.
    Float(f64),
    /// Text (UTF-8).
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl SqlValue {
    /// The integer (a boolean reads as 0 or 1).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            SqlValue::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The boolean (an integer reads as `!= 0`).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            SqlValue::Bool(b) => Some(*b),
            SqlValue::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    /// The text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The double (an integer converts).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Float(f) => Some(*f),
            SqlValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            SqlValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Whether it is `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                SqlValue::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Bool(v)
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Float(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&StreamName> for SqlValue {
    fn from(v: &StreamName) -> Self {
        SqlValue::Text(v.as_str().to_owned())
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Bytes(v)
    }
}

impl From<&[u8]> for SqlValue {
    fn from(v: &[u8]) -> Self {
        SqlValue::Bytes(v.to_vec())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// Which SQL a read-model database speaks, for the rare statement that differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or newer.
    Sqlite,
    /// PostgreSQL 13 or newer.
    Postgres,
}

/// A read-model transaction, as a projector sees it on every backend. Statements use
/// `$1`, `$2`... placeholders (both SQLite and PostgreSQL read them), every value is a
/// bound parameter, and unqualified table names resolve to the read model's own place
/// (the SQLite file, or the configured PostgreSQL schema). Statements are prepared once
/// per connection and cached.
#[async_trait]
pub trait SqlTx: Send {
    /// The database's dialect.
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns the rows it changed.
    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64>;

    /// Runs one query; returns its rows.
    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>>;

    /// Runs statements without parameters (schema changes, `;`-separated).
    async fn batch(&mut self, sql: &str) -> Result<()>;
}

/// What a projection recorded for one stream in its read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamProgress {
    /// The stream.
    pub stream: StreamName,
    /// The next stream version the projection needs (it applied the events below).
    pub version: Version,
    /// The schema version of the code that built the rows.
    pub schema: u32,
}

/// Builds read-model rows from one stream's events, through the transaction of the
/// read-model store `R`. Implement it for every `R` (`impl<R: ReadModelStore> Projector<R>`,
/// using only [`SqlTx`]) to run on every backend.
#[async_trait]
pub trait Projector<R: ReadModelStore>: Send + Sync + 'static {
    /// The projection's name and the schema version of this code.
    fn id(&self) -> ProjectionId<'static>;

    /// Creates what the rows need (tables, indexes) if missing. Runs in its own
    /// transaction when a pipeline starts; must be idempotent.
    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        let _ = tx;
        Ok(())
    }

    /// Applies `events` (consecutive, oldest first, all of `stream`, none applied before).
    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectorError>;

    /// Removes every row of `stream`, before a rebuild applies all its events again.
    async fn clear(&self, tx: &mut R::Tx<'_>, stream: &StreamName) -> Result<(), ProjectorError>;
}

/// A SQL database that keeps read models, with each projection's per-stream progress, its
/// pipelines' checkpoints and parked streams (it is a [`CheckpointStore`]).
///
/// Read models in SQL databases, fed from any event store.
///
/// A read model is rows in a SQL database derived from events. The database that keeps it
/// ([`ReadModelStore`]: SQLite or PostgreSQL) is chosen independently of the store the
/// events come from: events from memory, SQLite, PostgreSQL or NATS can feed a read model
/// in SQLite or PostgreSQL.
///
/// The contract, in the way sqlx's `Database` works: a read-model store names its
/// transaction type ([`ReadModelStore::Tx`]); a [`Projector`] writes rows through it. A
/// projector written against [`SqlTx`] (portable SQL, `$1`-style placeholders, values as
/// [`SqlValue`]) runs on every backend; one written against a backend's own transaction
/// type can use that backend's driver directly.
///
/// Exactly once: [`ReadModelStore::apply`] applies the events of one stream that the
/// projection has not applied yet and records the stream's new progress (the next version
/// it needs) in the same transaction. A redelivered event is never applied twice; two
/// appliers of one stream are serialized by the progress row. A failing apply rolls back
/// everything it wrote. Each progress row also records the schema version of the projector
/// code that built it ([`ProjectionId::schema`]): rows built by older code are stale and
/// [`rebuild`] refolds them.
#[async_trait]
pub trait ReadModelStore: CheckpointStore + Sized {
    /// The backend's transaction, handed to projectors.
    type Tx<'t>: SqlTx + Send;

    /// Runs `projector`'s [`setup`](Projector::setup) in a transaction of its own.
    async fn setup<P: Projector<Self>>(&self, projector: &Arc<P>) -> Result<()>;

    /// What `projection` recorded for `stream`, if anything.
    async fn progress(
        &self,
        projection: &str,
        stream: &StreamName,
    ) -> Result<Option<StreamProgress>>;

    /// In one transaction: reads (and locks) the projection's progress in `stream`, applies
    /// the events of `events` (consecutive, oldest first, all of `stream`) at or above it,
    /// and records the next version. Returns the next version the projection needs: below
    /// the first event given when events are missing in between (nothing is applied then:
    /// call again from the returned version). A failing projector rolls back everything.
    async fn apply<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version>;

    /// In one transaction: clears `stream`'s rows ([`Projector::clear`]), applies `events`
    /// (every event the event store shows of the stream, read after its version was
    /// `version`: from version 0, or from the first one not deleted, truncated or expired)
    /// and records the version after them as the progress (`version` when there are none),
    /// with the projector's schema ([`check_rebuild`]). Returns how many events were
    /// applied. Refused with [`Error::ReadModel`] (nothing written) when the projection
    /// already applied events beyond them: read them again.
    async fn replace<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
        version: Version,
    ) -> Result<u64>;

    /// Records that the event store no longer shows `stream`'s events below `to` (they
    /// were deleted, truncated or expired before the projection applied them): raises the
    /// projection's progress to `to` when it is below, applying nothing. A stream's rows
    /// are then built from the events still shown. Returns the progress after.
    async fn skip_hidden<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        to: Version,
    ) -> Result<Version>;

    /// Every stream `projection` recorded, by stream name.
    async fn rows(&self, projection: &str) -> Result<Vec<StreamProgress>>;

    /// Runs a read-only query on the read model (as [`SqlTx::query`], outside any
    /// projector's transaction): how applications read what projectors wrote.
    async fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>>;
}

/// The rows of `projection` with each stream's version in `events`: stale rows
/// ([`ProjectionRow::is_stale`]) need a rebuild, lagging ones only the pipeline.
pub async fn projection_rows<R: ReadModelStore>(
    events: &dyn EventStore,
    read_model: &R,
    projection: &str,
) -> Result<Vec<ProjectionRow>> {
    let mut rows = Vec::new();
    for p in read_model.rows(projection).await? {
        let head = events.stream_version(&p.stream).await?;
        rows.push(ProjectionRow {
            stream: p.stream,
            version: p.version,
            schema: p.schema,
            head,
        });
    }
    Ok(rows)
}

/// Replaces `projector`'s rows of `stream` with the fold of every event `events` shows of
/// it (those deleted, truncated or expired are left out), recording the projector's
/// schema. Returns the events folded. Safe while a pipeline of the projection runs: a
/// rebuild that read fewer events than the pipeline has since applied reads again.
pub async fn rebuild_stream<R: ReadModelStore, P: Projector<R>>(
    events: &dyn EventStore,
    read_model: &R,
    projector: &Arc<P>,
    stream: &StreamName,
) -> Result<u64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // The version first: the events read after it reach it, unless hidden.
        let version = events.stream_version(stream).await?;
        let all = events
            .read_stream_vec(stream, ReadStream::forward())
            .await?;
        match read_model.replace(projector, stream, &all, version).await {
            Err(Error::ReadModel { .. }) if attempt < 5 => continue,
            other => return other,
        }
    }
}

/// Rebuilds the streams whose rows older code built (`all`: every stream the projection
/// recorded), one stream per transaction.
pub async fn rebuild<R: ReadModelStore, P: Projector<R>>(
    events: &dyn EventStore,
    read_model: &R,
    projector: &Arc<P>,
    all: bool,
) -> Result<Rebuilt> {
    let schema = projector.id().schema;
    let mut rebuilt = Rebuilt::default();
    for row in read_model.rows(projector.id().name).await? {
        if all || row.schema < schema {
            rebuilt.events += rebuild_stream(events, read_model, projector, &row.stream).await?;
            rebuilt.streams += 1;
        }
    }
    Ok(rebuilt)
}

/// Applies to `projector`'s rows every event of `stream` after its progress (all of them
/// for a stream it never saw), exactly once; events the store no longer shows (deleted,
/// truncated or expired) are skipped ([`ReadModelStore::skip_hidden`]). Returns the events
/// applied. This is how a parked stream is replayed once its cause is fixed.
pub async fn catch_up_stream<R: ReadModelStore, P: Projector<R>>(
    events: &dyn EventStore,
    read_model: &R,
    projector: &Arc<P>,
    stream: &StreamName,
) -> Result<u64> {
    let mut applied = 0;
    loop {
        let from = read_model
            .progress(projector.id().name, stream)
            .await?
            .map_or(Version(0), |p| p.version);
        let page = events
            .read_stream_vec(stream, ReadStream::forward_from(from).limit(1000))
            .await?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            return Ok(applied);
        };
        let from = if first.stream_version > from.get() {
            // The events in between are hidden: a read from `from` shows none of them.
            let to = Version(first.stream_version);
            read_model.skip_hidden(projector, stream, to).await?;
            to
        } else {
            from
        };
        let next = read_model.apply(projector, stream, &page).await?;
        if next <= from {
            return Err(Error::ReadModel {
                reason: format!("{stream}: the progress went back below {from} during a catch-up"),
            });
        }
        applied += next.get() - from.get();
        if next < last.next_version() {
            continue;
        }
    }
}

//! The store contract every backend implements. (The contract itself is on [`EventStore`].)

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Capability, Error, Result};
use crate::lifecycle::{DeleteMode, Retention, RetentionScope, Scavenged};
use crate::{EventData, ExpectedVersion, Position, RecordedEvent, StreamName, Version};

pub use crate::filter::Filter;
pub use crate::partition::Partition;

/// The most events in a page of the default [`EventStore::read_stream_pages`].
pub const READ_PAGE: usize = 1000;

/// What an append recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append.
    pub version: Version,
    /// The position of the first event of the batch.
    pub first_position: Position,
    /// The position of the last event of the batch.
    pub last_position: Position,
}

/// What [`EventStore::append_at`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum AppendAt {
    /// Written (or found already written by an exact retry of the same batch).
    Written(AppendResult),
    /// Refused, nothing written: the stream is at `actual`, not at the version expected.
    Conflict {
        /// The stream's version when the append was refused.
        actual: Version,
        /// The stream's events from the expected version on, oldest first: all of them up
        /// to `actual`, or the first [`CONFLICT_EVENTS`] when there are more (read the
        /// rest from the last one's next version). Empty when `actual` is below the
        /// expected version.
        events: Vec<RecordedEvent>,
    },
}

/// The [`AppendAt::Conflict`] of an append at `version` refused with the stream at
/// `actual`, its events read from `store` (for stores that cannot return them with the
/// refusal).
pub async fn conflict_read<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
    version: Version,
    actual: Version,
) -> Result<AppendAt> {
    use futures::TryStreamExt;
    let events = if actual > version {
        store
            .read_stream(
                stream,
                ReadStream::forward_from(version).limit(CONFLICT_EVENTS),
            )
            .try_collect()
            .await?
    } else {
        Vec::new()
    };
    Ok(AppendAt::Conflict { actual, events })
}

/// The [`AppendAt`] of an exact append at `version` that answered `appended`: written, or
/// refused ([`Error::WrongExpectedVersion`]) with the stream's events from `version` on,
/// read from `store` when `tail` (none otherwise: an append with a head snapshot, whose
/// refusal carries no events).
pub async fn answer_at<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
    version: Version,
    appended: Result<AppendResult>,
    tail: bool,
) -> Result<AppendAt> {
    match appended {
        Ok(written) => Ok(AppendAt::Written(written)),
        Err(Error::WrongExpectedVersion { actual, .. }) if tail => {
            conflict_read(store, stream, version, actual).await
        }
        Err(Error::WrongExpectedVersion { actual, .. }) => Ok(AppendAt::Conflict {
            actual,
            events: Vec::new(),
        }),
        Err(e) => Err(e),
    }
}

/// At most this many events come with an [`AppendAt::Conflict`].
pub const CONFLICT_EVENTS: usize = 1000;

/// One stream's part of a multi-stream append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamName,
    /// The condition on its version.
    pub expected: ExpectedVersion,
    /// Its events.
    pub events: Vec<EventData>,
}

/// A state snapshot kept beside a stream's head ([`Capabilities::head_snapshots`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSnapshot {
    /// The stream version the snapshot was taken at (the version after its append).
    pub version: Version,
    /// The snapshot, as the writer encoded it.
    pub data: Vec<u8>,
}

/// What [`EventStore::read_head`] returns: a stream's latest head snapshot and the events
/// after it, read together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// The stream's version when read.
    pub version: Version,
    /// The first version reads show after deletion and truncation (not retention): 0 for
    /// a stream never truncated.
    pub start: Version,
    /// The snapshot written with the latest append that carried one.
    pub snapshot: Option<HeadSnapshot>,
    /// The first events from the snapshot's version on (from the start without one),
    /// oldest first, at most the limit asked for: when the last one is below `version`,
    /// read the rest with [`EventStore::read_stream`].
    pub events: Vec<RecordedEvent>,
}

/// What [`EventStore::read_page_from`] returns: a page of a stream read forward, and where
/// the stream started when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartedPage {
    /// The events from the version asked for on, oldest first, at most the limit asked
    /// for: when there are that many, more may follow.
    pub events: Vec<RecordedEvent>,
    /// The first version reads show after deletion and truncation (as [`Head::start`];
    /// retention aside), from the same read; `None` where the store does not say (the
    /// default, for stores that never hide events).
    pub start: Option<Version>,
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// How to read one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStream {
    /// Which way.
    pub direction: Direction,
    /// Forward: the first stream index to return (events with `stream_version >= from`).
    /// Backward: return the events before this version (`stream_version < from`), newest
    /// first; `None` starts at the end.
    pub from: Option<Version>,
    /// At most this many events.
    pub limit: Option<usize>,
}

impl ReadStream {
    /// The whole stream, oldest first.
    pub fn forward() -> Self {
        Self::default()
    }

    /// Oldest first, starting at stream index `from`.
    pub fn forward_from(from: Version) -> Self {
        Self {
            from: Some(from),
            ..Self::default()
        }
    }

    /// Newest first, from the end.
    pub fn backward() -> Self {
        Self {
            direction: Direction::Backward,
            ..Self::default()
        }
    }

    /// Newest first, the events before version `before`.
    pub fn backward_from(before: Version) -> Self {
        Self {
            direction: Direction::Backward,
            from: Some(before),
            limit: None,
        }
    }

    /// Returns at most `limit` events.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The half-open range of stream indexes to return, in reading order, for a stream
    /// of `len` events. For store implementations.
    pub(crate) fn index_range(&self, len: u64) -> (u64, u64) {
        let limit = self.limit.map_or(u64::MAX, |l| l as u64);
        match self.direction {
            Direction::Forward => {
                let start = self.from.map_or(0, Version::get).min(len);
                (start, start.saturating_add(limit).min(len))
            }
            Direction::Backward => {
                let end = self.from.map_or(len, Version::get).min(len);
                (end.saturating_sub(limit), end)
            }
        }
    }
}

/// One page of a read-all. A filtered page may hold fewer events than asked for, even none,
/// without being the end (a store may bound how much of the feed one page looks at): keep
/// reading from `next` until `end`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllPage {
    /// Matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts: at or after the last returned event, and past any
    /// non-matching events the page scanned.
    pub next: Position,
    /// No event was visible after `next` when the page was read.
    pub end: bool,
}

/// What a backend can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`EventStore::append_many`] is atomic across streams.
    pub multi_stream_append: bool,
    /// [`EventStore::append_with_snapshot`] and [`EventStore::read_head`] keep a snapshot
    /// beside the stream's head.
    pub head_snapshots: bool,
    /// [`EventStore::import`] copies recorded events with their versions, ids and
    /// timestamps.
    pub import: bool,
    /// [`EventStore::delete_stream`] and [`EventStore::truncate_before`].
    pub deletion: bool,
    /// [`EventStore::set_retention`].
    pub retention: bool,
}

impl Capabilities {
    /// Every capability.
    pub fn all() -> Self {
        Self {
            multi_stream_append: true,
            head_snapshots: true,
            import: true,
            deletion: true,
            retention: true,
        }
    }

    /// No optional capability.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `capability` is offered.
    pub fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::MultiStreamAppend => self.multi_stream_append,
            Capability::HeadSnapshots => self.head_snapshots,
            Capability::Import => self.import,
            Capability::Deletion => self.deletion,
            Capability::Retention => self.retention,
            Capability::Parking => false,
        }
    }
}

/// An event store: the contract every backend implements.
///
/// # Conflict and retry semantics
///
/// [`EventStore::append`] is atomic: either every event of the batch is recorded, with
/// consecutive stream versions starting at the stream's current version, or nothing is.
/// When the stream's version does not satisfy the [`ExpectedVersion`], the append returns
/// [`Error::WrongExpectedVersion`](crate::Error::WrongExpectedVersion) carrying the actual
/// version, and writes nothing.
///
/// Event ids are unique across the store and make retries safe. When the batch's event ids
/// are already recorded in the stream as exactly this batch (one earlier append, whole:
/// same ids, same order, consecutive versions) and the expected version admits the version the batch was first
/// written at, the append succeeds again with the original result and writes nothing. When
/// only some of them are, or in another arrangement, it fails with
/// [`Error::PartialRetry`](crate::Error::PartialRetry). When an id is recorded in another
/// stream it fails with [`Error::DuplicateEventId`](crate::Error::DuplicateEventId).
///
/// A call whose future is dropped before it completes (a timeout, a dropped request) may
/// or may not have written: retry it with the same event ids to find out. It never leaves
/// anything half done that another call could see or build on (the stores let go of a
/// write still queued for its group commit, and roll back a transaction left open).
///
/// # Reading all
///
/// [`EventStore::read_all`] returns events in position order, strictly after the given
/// position. A reader that resumes from the last position it saw never misses an event that
/// commits later: stores only expose events below a horizon that later commits cannot
/// undercut.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// A short name of the backend, for errors and metrics (`"memory"`, `"sqlite"`...).
    fn backend(&self) -> &'static str;

    /// The optional capabilities this store offers.
    fn capabilities(&self) -> Capabilities;

    /// Appends `events` to `stream` atomically if its version admits `expected`.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult>;

    /// Appends `events` to `stream` if it is exactly at `version`, as
    /// [`append`](EventStore::append) with [`ExpectedVersion::Exact`] (the same retry
    /// semantics); a refusal is not an error but answers what a caller needs to catch up:
    /// the actual version and the events from `version` on ([`AppendAt::Conflict`]). The
    /// decider appends this way, so a conflict costs no read of its own. Stores answer a
    /// refusal in the same round trip where they can; the default appends, then reads.
    async fn append_at(
        &self,
        stream: &StreamName,
        version: Version,
        events: Vec<EventData>,
    ) -> Result<AppendAt> {
        let expected = ExpectedVersion::Exact(version);
        let appended = self.append(stream, expected, events).await;
        answer_at(self, stream, version, appended, true).await
    }

    /// As [`append_at`](EventStore::append_at) (with a `snapshot`, as
    /// [`append_with_snapshot`](EventStore::append_with_snapshot), whose refusal carries no
    /// events), for a caller whose state was folded from the stream's events from
    /// `shown_from` on: refused too, nothing written, when a deletion or truncation has
    /// hidden any of them since (the stream now starts past `shown_from`). That refusal is
    /// an [`AppendAt::Conflict`] whose `actual` is `version` itself, with no events: the
    /// caller's state holds hidden events, and is to be folded again from the start. A
    /// `shown_from` at or above `version` asks no more than `append_at`; the check is made
    /// only when the version holds (an exact retry of a written batch still succeeds).
    ///
    /// The decider appends this way, so a state it cached is never decided on once its
    /// events were deleted or truncated (not even by another process). Stores that hide
    /// events (deletion, truncation) check it in the append's own condition; the default,
    /// for stores that never do, ignores `shown_from`.
    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        let _ = shown_from;
        let Some(snapshot) = snapshot else {
            return self.append_at(stream, version, events).await;
        };
        let expected = ExpectedVersion::Exact(version);
        let appended = self
            .append_with_snapshot(stream, expected, events, snapshot)
            .await;
        answer_at(self, stream, version, appended, false).await
    }

    /// Appends to several streams in one transaction: all or nothing. Streams must be
    /// distinct. Stores without [`Capabilities::multi_stream_append`] refuse with
    /// [`Error::Unsupported`].
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        let _ = appends;
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::MultiStreamAppend,
        })
    }

    /// A multi-stream transaction's append: as [`append_many`](EventStore::append_many),
    /// each append carrying the first version its caller's state holds (`shown_from`, one
    /// per append, in order): refused too, nothing written, when a deletion or truncation
    /// has hidden any of them since (the stream now starts past it), with
    /// [`Error::WrongExpectedVersion`] naming that stream and its version (a stream that
    /// has not moved answers the version expected). An exact retry answers its results.
    /// The check is made in the transaction's own condition (a deletion cannot slip
    /// between check and write). The default, for stores that never hide events, ignores
    /// `shown_from`.
    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        let _ = shown_from;
        self.append_many(appends).await
    }

    /// Appends as [`append`](EventStore::append) and, when events are written, replaces
    /// the stream's head snapshot with `snapshot` (the state at the version after this
    /// append) in the same transaction. An exact retry writes nothing, snapshot included.
    /// Stores without [`Capabilities::head_snapshots`] refuse with [`Error::Unsupported`].
    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        let _ = (stream, expected, events, snapshot);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::HeadSnapshots,
        })
    }

    /// Reads at most `limit` events of `stream` forward from version `from` (its first page
    /// forward from there, as [`read_stream_pages`](EventStore::read_stream_pages) would
    /// read it), and where the stream starts ([`StartedPage::start`]), in one round trip:
    /// what a decider reads to confirm a cached state, whose events are all still shown
    /// only while the stream starts at or below the first of them. The default reads the
    /// page and says nothing of the start (for stores that never hide events); a store
    /// that hides events says where it starts. A deleted stream's tombstone fails with
    /// [`Error::StreamDeleted`], as its reads do.
    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        use futures::TryStreamExt;
        let read = ReadStream::forward_from(from).limit(limit);
        let events = self.read_stream_pages(stream, read).try_concat().await?;
        Ok(StartedPage {
            events,
            start: None,
        })
    }

    /// Reads `stream`'s head snapshot and at most `limit` events after it, in one round
    /// trip. Stores without [`Capabilities::head_snapshots`] refuse with
    /// [`Error::Unsupported`].
    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let _ = (stream, limit);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::HeadSnapshots,
        })
    }

    /// Imports events recorded elsewhere (another store's `read_all`), in the given order,
    /// keeping their streams, stream versions, ids, types, data, metadata, correlation and
    /// causation ids and timestamps; positions are this store's, in the order given. Each
    /// event must be the next of its stream (`stream_version` equal to the stream's
    /// version), or already recorded there with the same id, which is skipped: an
    /// interrupted import can be run again. A stream this store does not have yet, or has
    /// with every event hidden (deleted, or truncated to its version), may begin (again) at
    /// a later version (its older events were deleted, truncated or expired where they
    /// were recorded), below 2^63 - 1 (the memory store: up to 2^20): the versions below
    /// its first event then read as truncated here.
    /// Atomic: all or nothing. Returns how many
    /// events were written. Otherwise fails with
    /// [`Error::WrongExpectedVersion`] (expected: the event's version), writing nothing.
    /// Stores without [`Capabilities::import`] refuse with [`Error::Unsupported`].
    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        let _ = events;
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Import,
        })
    }

    /// The number of events in `stream` (0 when it does not exist).
    async fn stream_version(&self, stream: &StreamName) -> Result<Version>;

    /// Reads one stream.
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>>;

    /// Reads one stream as [`read_stream`](EventStore::read_stream) does, a page at a time:
    /// the same events in the same order, in vectors that are never empty. Stores that read
    /// in pages hand each page over whole, which spares moving every event through the
    /// stream one at a time (a whole-stream read, a fold). The default gathers the events
    /// `read_stream` has ready into pages of at most [`READ_PAGE`] (it does not wait for
    /// more to fill a page); an error ends the stream, after the events read before it.
    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        crate::pages::pages_of_events(self.read_stream(stream, options))
    }

    /// Reads at most `limit` matching events after `from`, in position order.
    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage>;

    /// The position of the last event [`read_all`](EventStore::read_all) from the start
    /// would return now, or `None` when it would return none: where to start following
    /// only new events. The stores answer from an index in one round trip; the default
    /// walks the whole feed. Where the last events written have expired by retention
    /// since (hidden, not yet scavenged), the stores' answer may be the last of those: it
    /// is never before an event `read_all` shows, and reading on from it returns exactly
    /// the events written after it.
    async fn head_position(&self) -> Result<Option<Position>> {
        let (mut from, mut head) = (Position::START, None);
        loop {
            let page = self.read_all(from, &Filter::all(), 1_000).await?;
            if let Some(last) = page.events.last() {
                head = Some(last.position);
            }
            if page.events.is_empty() || page.next == from {
                return Ok(head);
            }
            from = page.next;
        }
    }

    /// Deletes `stream` if its version admits `expected` (see [`DeleteMode`]), and records a
    /// [`STREAM_DELETED`](crate::STREAM_DELETED) event in
    /// [`deletions_stream`](crate::deletions_stream), in one transaction. Returns the
    /// stream's version. Repeating a deletion changes nothing and succeeds; a hard delete
    /// after a soft one turns it into a tombstone; a soft delete of a tombstone fails with
    /// [`Error::StreamDeleted`]. Stores without [`Capabilities::deletion`] refuse with
    /// [`Error::Unsupported`].
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<Version> {
        let _ = (stream, expected, mode);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Deletion,
        })
    }

    /// Imports a soft deletion recorded in another store (its `$StreamDeleted` event at
    /// `version`): `stream` is left as that deletion left it there, every event below
    /// `version` hidden and appends continuing at `version`, recorded in
    /// [`deletions_stream`](crate::deletions_stream) as [`delete_stream`] records one.
    /// Unlike [`delete_stream`], a stream this store has at a lower version, or does not
    /// have, moves on to `version` (the versions between read as deleted): what a copy
    /// does for a stream deleted in its source with none of its events left in the feed.
    /// A stream at `version` that shows nothing (or never written, at 0) changes nothing;
    /// one past `version` is refused with [`Error::WrongExpectedVersion`] (expected:
    /// `version`), as is a version past [`MAX_IMPORTED_VERSION`](crate::backend::MAX_IMPORTED_VERSION)
    /// (the memory store: 2^20); a tombstone with [`Error::StreamDeleted`]. Returns the
    /// stream's version. Stores without [`Capabilities::deletion`] refuse with
    /// [`Error::Unsupported`].
    ///
    /// [`delete_stream`]: EventStore::delete_stream
    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        let _ = (stream, version);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Deletion,
        })
    }

    /// Hides the events of `stream` below `before` (at most its version) from every read,
    /// and records a [`STREAM_TRUNCATED`](crate::STREAM_TRUNCATED) event in
    /// [`deletions_stream`](crate::deletions_stream), in one transaction. Versions count on;
    /// truncation never moves back, so a repeat or a lower `before` changes nothing. Returns
    /// where the stream now starts. Stores without [`Capabilities::deletion`] refuse with
    /// [`Error::Unsupported`].
    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        let _ = (stream, before);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Deletion,
        })
    }

    /// Sets the retention policy of a category or one stream ([`Retention`]; one that
    /// keeps all removes the scope's policy, so a stream falls back to its category's).
    /// Takes effect on every read at once. Stores without [`Capabilities::retention`]
    /// refuse with [`Error::Unsupported`].
    async fn set_retention(&self, scope: &RetentionScope, retention: Retention) -> Result<()> {
        let _ = (scope, retention);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Retention,
        })
    }

    /// Every retention policy set, by scope.
    async fn retention(&self) -> Result<Vec<(RetentionScope, Retention)>> {
        Ok(Vec::new())
    }

    /// Removes physically at most `limit` of the events reads no longer show (truncated,
    /// soft- or hard-deleted, expired by retention), in one transaction, online: call it again until it removes
    /// none. With `dry_run` it only counts them. Nothing any read shows is touched, so
    /// subscriptions and checkpoints are unaffected. Stores that cannot refuse with
    /// [`Error::Unsupported`].
    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<Scavenged> {
        let _ = (limit, dry_run);
        Err(Error::Unsupported {
            backend: self.backend(),
            capability: Capability::Deletion,
        })
    }

    /// Waits until every event committed before this call is visible to [`read_all`]
    /// (and so to subscriptions). Stores whose read-all is immediately consistent (memory,
    /// SQLite) return at once; PostgreSQL waits for the transactions in flight at the call
    /// to end. For tests and tools that read their own writes through read-all.
    ///
    /// [`read_all`]: EventStore::read_all
    async fn await_visible(&self) -> Result<()> {
        Ok(())
    }

    /// A signal that changes after commits, so subscribers wake without polling. `None`
    /// when the backend has none; subscribers then poll.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
}

/// How a subscription reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Which events.
    pub filter: Filter,
    /// Events per read-all page.
    pub batch_size: usize,
    /// How often to look for new events when no wake-up comes (other processes' writes,
    /// backends without a change signal).
    pub poll_interval: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            filter: Filter::all(),
            batch_size: 512,
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl SubscribeOptions {
    /// Everything, with default paging and polling.
    pub fn all() -> Self {
        Self::default()
    }

    /// One category, with default paging and polling.
    pub fn category(category: impl Into<String>) -> Self {
        Self {
            filter: Filter::category(category),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for dyn EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

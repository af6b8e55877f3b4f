//! An in-memory store for users' tests (and for trying things out).
//!
//! It implements the whole store contract, including multi-stream appends. Every commit is
//! also sent to the receivers of [`MemoryStore::commits`] before `append` returns, in commit
//! order, so a test can react to exactly what was written without waiting or polling. An
//! import begins a stream (one it does not have, or whose events are all hidden) at a
//! later version only up to version 2^20 (each version below takes a word of memory); the
//! SQL and NATS stores, up to 2^63 - 2.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::error::Result;
use crate::event::{validate_batch, validate_many, DEFAULT_MAX_EVENT_BYTES};
use crate::idempotency::{self, Found, Verdict};
use crate::store::{
    AllPage, AppendAt, AppendResult, Capabilities, Direction, EventStore, Filter, Head,
    HeadSnapshot, ReadStream, StartedPage, StreamAppend,
};
use crate::{
    DeleteMode, EventData, ExpectedVersion, Position, RecordedEvent, StreamName, Timestamp, Version,
};

/// One committed append, as sent to [`MemoryStore::commits`] receivers.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The stream written.
    pub stream: StreamName,
    /// The events recorded, in order.
    pub events: Arc<[RecordedEvent]>,
}

#[derive(Default)]
struct Inner {
    /// Every event; the event at index `i` has position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Per stream, the log indexes of its events.
    streams: HashMap<StreamName, Vec<usize>>,
    /// Event id to (stream, stream index).
    ids: HashMap<Uuid, (StreamName, u64)>,
    /// Parallel to `log`: the stream version at which the event's append began, so a retry
    /// can be told apart from a batch that only covers part of an earlier append.
    batch_start: Vec<u64>,
    /// Per stream, the latest head snapshot.
    snapshots: HashMap<StreamName, HeadSnapshot>,
    /// Truncated, soft-deleted and hard-deleted streams.
    tombs: HashMap<StreamName, Tomb>,
    /// Retention policies.
    policies: std::collections::BTreeMap<crate::RetentionScope, crate::Retention>,
    observers: Vec<mpsc::UnboundedSender<Commit>>,
}

/// The log index of a version an imported stream began after: it has no event here.
const HIDDEN: usize = usize::MAX;

/// The latest version an import may begin a stream at (its versions below take a word
/// each here).
const MAX_BEGIN: u64 = 1 << 20;

/// Where a stream now starts, and whether it is a tombstone.
#[derive(Debug, Clone, Copy, Default)]
struct Tomb {
    before: u64,
    hard: bool,
}

mod inner;

/// The in-memory store. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    changes: watch::Sender<()>,
    max_event_bytes: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("events", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The events a read of `stream` shows, in the read's order, and where the stream
    /// starts, read together.
    fn stream_events(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<(Vec<RecordedEvent>, Version)> {
        let inner = self.lock();
        inner.alive(stream)?;
        let stream_start = Version(inner.start(stream));
        let indexes = inner.streams.get(stream).map_or(&[][..], Vec::as_slice);
        // The range of the versions reads show, from the stream's floor.
        let floor = inner.floor(stream, Timestamp::now());
        let from = match (options.direction, options.from) {
            (Direction::Forward, from) => Some(from.map_or(floor, |v| v.get().max(floor))),
            (Direction::Backward, from) => from.map(Version::get),
        };
        let visible = ReadStream {
            from: from.map(Version),
            ..options
        };
        let (start, end) = visible.index_range(indexes.len() as u64);
        let start = start.max(floor).min(end);
        let slice = indexes[start as usize..end as usize]
            .iter()
            .map(|&i| inner.log[i].clone());
        let events = match options.direction {
            Direction::Forward => slice.collect(),
            Direction::Backward => slice.rev().collect(),
        };
        Ok((events, stream_start))
    }

    /// `append_many`; with `shown_from`, refused when a stream to be written starts past
    /// its caller's first event.
    fn append_many_with(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Option<Vec<Version>>,
    ) -> Result<Vec<AppendResult>> {
        validate_many(&appends, self.max_event_bytes)?;
        let results = {
            let mut inner = self.lock();
            let plans = appends
                .iter()
                .map(|a| {
                    inner.alive(&a.stream)?;
                    inner.plan(&a.stream, a.expected, &a.events)
                })
                .collect::<Result<Vec<_>>>()?;
            let shown = shown_from.unwrap_or_default();
            for ((a, plan), from) in appends.iter().zip(&plans).zip(shown) {
                if matches!(plan, Verdict::Write) && inner.start(&a.stream) > from.get() {
                    return Err(crate::Error::WrongExpectedVersion {
                        stream: a.stream.clone(),
                        expected: a.expected,
                        actual: inner.version(&a.stream),
                    });
                }
            }
            appends
                .into_iter()
                .zip(plans)
                .map(|(a, plan)| match plan {
                    Verdict::AlreadyWritten(r) => r,
                    Verdict::Write => inner.write(&a.stream, a.events),
                })
                .collect()
        };
        self.changes.send_replace(());
        Ok(results)
    }

    /// `deletion` as its plan decides from the stream's state: hides its events below the
    /// planned version (moving the stream on to it first when it is past its version), and
    /// records it.
    fn delete_with(
        &self,
        stream: &StreamName,
        deletion: crate::backend::Deletion,
    ) -> Result<Version> {
        {
            let mut inner = self.lock();
            let version = inner.version(stream);
            let tomb = inner.tombs.get(stream).copied();
            let state = (inner.streams.contains_key(stream) || tomb.is_some()).then(|| {
                crate::backend::StreamState {
                    version: version.get(),
                    shows_nothing: tomb.is_some_and(|t| t.before == version.get()),
                    tombstone: tomb.is_some_and(|t| t.hard),
                }
            });
            let (version, hard) = match deletion.plan(stream, state)? {
                crate::backend::DeletionPlan::Done(version) => return Ok(version),
                crate::backend::DeletionPlan::Change { version, hard } => (version, hard),
            };
            if version > inner.version(stream).get() {
                inner.begin_at(stream, version);
            }
            // A snapshot holds the state of the events now hidden.
            inner.snapshots.remove(stream);
            inner.tombs.insert(
                stream.clone(),
                Tomb {
                    before: version,
                    hard,
                },
            );
            inner.record(
                stream,
                crate::STREAM_DELETED,
                serde_json::json!({"stream": stream.as_str(), "version": version, "hard": hard}),
            );
        }
        self.changes.send_replace(());
        Ok(Version(self.lock().version(stream).get()))
    }

    /// An empty store with the default event size limit.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changes: watch::Sender::new(()),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Sets the largest event accepted (data plus metadata, in bytes).
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// A receiver of every commit from now on, each sent before its `append` returns.
    pub fn commits(&self) -> mpsc::UnboundedReceiver<Commit> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().observers.push(tx);
        rx
    }

    /// The number of events in the store.
    pub fn len(&self) -> usize {
        self.lock().log.len()
    }

    /// Whether the store has no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An append, keeping `snapshot` as the head snapshot when it writes. With `shown_from`,
    /// an append whose version holds is refused as [`Error::WrongExpectedVersion`] at that
    /// same version when the stream now starts past it (see
    /// [`EventStore::append_at_shown`]).
    fn append_with(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
        shown_from: Option<Version>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events, self.max_event_bytes)?;
        let result = {
            let mut inner = self.lock();
            inner.alive(stream)?;
            let actual = inner.version(stream);
            if shown_from.is_some_and(|from| inner.start(stream) > from.get())
                && expected.admits(actual)
            {
                return Err(crate::Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            match inner.plan(stream, expected, &events)? {
                Verdict::AlreadyWritten(result) => return Ok(result),
                Verdict::Write => {
                    let result = inner.write(stream, events);
                    if let Some(data) = snapshot {
                        let version = result.version;
                        inner
                            .snapshots
                            .insert(stream.clone(), HeadSnapshot { version, data });
                    }
                    result
                }
            }
        };
        self.changes.send_replace(());
        Ok(result)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written batch: writes are
        // planned first and applied without fallible steps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.append_with(stream, expected, events, None, None)
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_many_with(appends, None)
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.append_many_with(appends, Some(shown_from))
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        self.append_with(stream, expected, events, Some(snapshot), None)
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        let tail = snapshot.is_none();
        let expected = ExpectedVersion::Exact(version);
        let appended = self.append_with(stream, expected, events, snapshot, Some(shown_from));
        crate::store::answer_at(self, stream, version, appended, tail).await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        crate::event::validate_import(&events, self.max_event_bytes)?;
        let written = {
            let mut inner = self.lock();
            // Plan first (nothing is written unless every event fits), then write.
            let mut next: HashMap<&StreamName, u64> = HashMap::new();
            // Streams that begin (again) past their version: ones this store does not have,
            // or whose events are all hidden (deleted or truncated here too).
            let mut begins: HashMap<&StreamName, u64> = HashMap::new();
            let mut write = Vec::with_capacity(events.len());
            let mut ids = std::collections::HashSet::new();
            for e in &events {
                inner.alive(&e.stream)?;
                let seen = next.contains_key(&e.stream);
                let version = *next
                    .entry(&e.stream)
                    .or_insert_with(|| inner.version(&e.stream).get());
                let recorded = inner.ids.get(&e.event_id);
                if !seen
                    && e.stream_version > version
                    && e.stream_version <= MAX_BEGIN
                    && inner.start(&e.stream) >= version
                    && recorded.is_none()
                {
                    begins.insert(&e.stream, e.stream_version);
                }
                let version = begins.get(&e.stream).map_or(version, |&b| version.max(b));
                if e.stream_version == version {
                    if let Some((existing, _)) = recorded {
                        return Err(crate::Error::DuplicateEventId {
                            event_id: e.event_id,
                            existing_stream: existing.clone(),
                        });
                    }
                    if !ids.insert(e.event_id) {
                        return Err(crate::Error::DuplicateEventId {
                            event_id: e.event_id,
                            existing_stream: e.stream.clone(),
                        });
                    }
                    next.insert(&e.stream, version + 1);
                    write.push(true);
                    continue;
                }
                if e.stream_version < version
                    && recorded == Some(&(e.stream.clone(), e.stream_version))
                {
                    write.push(false);
                    continue;
                }
                return Err(crate::Error::WrongExpectedVersion {
                    stream: e.stream.clone(),
                    expected: ExpectedVersion::Exact(Version(e.stream_version)),
                    actual: Version(version),
                });
            }
            let mut n = 0;
            for (e, write) in events.iter().zip(write) {
                if write {
                    if let Some(version) = begins.remove(&e.stream) {
                        inner.begin_at(&e.stream, version);
                    }
                    inner.write_at(&e.stream, vec![e.to_data()], e.recorded_at);
                    n += 1;
                }
            }
            n
        };
        if written > 0 {
            self.changes.send_replace(());
        }
        Ok(written)
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let inner = self.lock();
        inner.alive(stream)?;
        // A snapshot holds the state of every event before it: not one retention hides
        // (deletion and truncation drop it).
        let snapshot = inner
            .snapshots
            .get(stream)
            .filter(|_| inner.policy(stream).is_none())
            .cloned();
        let indexes = inner.streams.get(stream).map_or(&[][..], Vec::as_slice);
        let from = snapshot
            .as_ref()
            .map_or(0, |s| s.version.get() as usize)
            .max(inner.floor(stream, Timestamp::now()) as usize)
            .min(indexes.len());
        let events = indexes[from..]
            .iter()
            .take(limit)
            .map(|&i| inner.log[i].clone())
            .collect();
        Ok(Head {
            version: Version(indexes.len() as u64),
            start: Version(inner.start(stream)),
            snapshot,
            events,
        })
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        let inner = self.lock();
        inner.alive(stream)?;
        Ok(inner.version(stream))
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<Version> {
        self.delete_with(stream, crate::backend::Deletion::Delete { expected, mode })
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        if version.get() > MAX_BEGIN {
            return Err(crate::Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(version),
                actual: self.lock().version(stream),
            });
        }
        self.delete_with(stream, crate::backend::Deletion::Imported(version))
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        {
            let mut inner = self.lock();
            inner.alive(stream)?;
            let before = before.get().min(inner.version(stream).get());
            let start = inner.start(stream);
            if before <= start {
                return Ok(Version(start));
            }
            inner.snapshots.remove(stream);
            inner.tombs.entry(stream.clone()).or_default().before = before;
            inner.record(
                stream,
                crate::STREAM_TRUNCATED,
                serde_json::json!({"stream": stream.as_str(), "before": before}),
            );
        }
        self.changes.send_replace(());
        Ok(Version(self.lock().start(stream)))
    }

    async fn set_retention(
        &self,
        scope: &crate::RetentionScope,
        retention: crate::Retention,
    ) -> Result<()> {
        retention.validate()?;
        let mut inner = self.lock();
        if retention.keeps_all() {
            inner.policies.remove(scope);
        } else {
            inner.policies.insert(scope.clone(), retention);
        }
        Ok(())
    }

    async fn retention(&self) -> Result<Vec<(crate::RetentionScope, crate::Retention)>> {
        Ok(self
            .lock()
            .policies
            .iter()
            .map(|(s, r)| (s.clone(), *r))
            .collect())
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        match self.stream_events(stream, options) {
            Ok((events, _)) => stream::iter(events.into_iter().map(Ok)).boxed(),
            Err(e) => stream::iter([Err(e)]).boxed(),
        }
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        // The whole read is one page: it is in memory already.
        let page = self
            .stream_events(stream, options)
            .map(|(events, _)| events);
        stream::iter(page.map_or_else(|e| Some(Err(e)), |p| (!p.is_empty()).then_some(Ok(p))))
            .boxed()
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        let read = ReadStream::forward_from(from).limit(limit);
        let (events, start) = self.stream_events(stream, read)?;
        Ok(StartedPage {
            events,
            start: Some(start),
        })
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        filter.validate()?;
        let inner = self.lock();
        let now = Timestamp::now();
        let start = usize::try_from(from.raw())
            .unwrap_or(usize::MAX)
            .min(inner.log.len());
        let mut page = AllPage {
            events: Vec::new(),
            next: from,
            end: true,
        };
        for event in &inner.log[start..] {
            if page.events.len() >= limit {
                page.end = false;
                break;
            }
            page.next = event.position;
            if filter.matches(event) && inner.visible(event, now) {
                page.events.push(event.clone());
            }
        }
        Ok(page)
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        Ok(self.lock().log.last().map(|e| e.position))
    }

    fn changes(&self) -> Option<watch::Receiver<()>> {
        Some(self.changes.subscribe())
    }
}

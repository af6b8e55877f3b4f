//! A store wrapper counting round trips by operation, for the scenario reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use annals::{
    AllPage, AppendAt, AppendResult, Capabilities, EventData, EventStore, ExpectedVersion, Filter,
    Head, Position, ReadStream, RecordedEvent, Result, StartedPage, StreamAppend, StreamName,
    Version,
};
use futures::stream::BoxStream;

/// The operations counted, in report order.
pub(super) const OPERATIONS: [&str; 8] = [
    "append",
    "append_at",
    "append_with_snapshot",
    "append_many",
    "read_stream",
    "read_head",
    "stream_version",
    "read_all",
];

/// Counts each call to the wrapped store.
pub(super) struct Calls {
    inner: Arc<dyn EventStore>,
    counts: [AtomicU64; 8],
}

impl Calls {
    pub(super) fn new(inner: Arc<dyn EventStore>) -> Self {
        Self {
            inner,
            counts: Default::default(),
        }
    }

    fn count(&self, op: usize) {
        self.counts[op].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far, by operation (as [`OPERATIONS`]).
    pub(super) fn counts(&self) -> [u64; 8] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

#[async_trait::async_trait]
impl EventStore for Calls {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.count(0);
        self.inner.append(stream, expected, events).await
    }

    async fn append_at(
        &self,
        stream: &StreamName,
        version: Version,
        events: Vec<EventData>,
    ) -> Result<AppendAt> {
        self.count(1);
        self.inner.append_at(stream, version, events).await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        self.count(2);
        self.inner
            .append_with_snapshot(stream, expected, events, snapshot)
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
        self.count(if snapshot.is_some() { 2 } else { 1 });
        self.inner
            .append_at_shown(stream, version, shown_from, events, snapshot)
            .await
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.count(3);
        self.inner.append_many(appends).await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.count(3);
        self.inner.append_many_shown(appends, shown_from).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        self.count(4);
        self.inner.read_stream(stream, options)
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        self.count(4);
        self.inner.read_stream_pages(stream, options)
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        self.count(4);
        self.inner.read_page_from(stream, from, limit).await
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        self.count(5);
        self.inner.read_head(stream, limit).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        self.count(6);
        self.inner.stream_version(stream).await
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        self.count(7);
        self.inner.read_all(from, filter, limit).await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        self.inner.import(events).await
    }

    async fn await_visible(&self) -> Result<()> {
        self.inner.await_visible().await
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.changes()
    }
}

//! Tracing spans and metrics around every round trip of any store.
//!
//! Wrap a store with [`Instrumented::new`] (the CLI and the samples do): each call becomes
//! a `tracing` span `annals.store` with the operation, backend, stream, category, event
//! count, bytes, outcome and latency, and feeds the `metrics` facade:
//! `annals_store_roundtrip_seconds` (histogram, by backend/operation/outcome),
//! `annals_store_events_total` and `annals_store_bytes_total` (by backend/operation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tracing::field::Empty;
use tracing::Instrument;

use crate::store::{
    AllPage, AppendAt, AppendResult, Capabilities, EventStore, Filter, Head, ReadStream,
    StartedPage, StreamAppend,
};
use crate::{EventData, ExpectedVersion, Position, RecordedEvent, Result, StreamName, Version};

/// A store whose round trips are traced and measured.
#[derive(Debug)]
pub struct Instrumented<S: ?Sized> {
    inner: std::sync::Arc<S>,
}

impl<S: EventStore + ?Sized> Instrumented<S> {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<S>) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &std::sync::Arc<S> {
        &self.inner
    }
}

static EVENTS_READ: AtomicU64 = AtomicU64::new(0);
static EVENTS_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Events read and written through every [`Instrumented`] store of this process since it
/// started, in that order (what `annals_store_events_total` counts, without a metrics
/// recorder).
pub fn process_totals() -> (u64, u64) {
    (
        EVENTS_READ.load(Ordering::Relaxed),
        EVENTS_WRITTEN.load(Ordering::Relaxed),
    )
}

fn span(op: &'static str, backend: &'static str, stream: Option<&StreamName>) -> tracing::Span {
    tracing::debug_span!(
        "annals.store",
        op,
        backend,
        stream = stream.map(StreamName::as_str),
        category = stream.map(StreamName::category),
        count = Empty,
        bytes = Empty,
        outcome = Empty,
        latency_us = Empty,
    )
}

fn finish<T>(
    span: &tracing::Span,
    op: &'static str,
    backend: &'static str,
    started: Instant,
    count: usize,
    bytes: usize,
    result: &Result<T>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) if e.is_conflict() => "conflict",
        Err(e) if e.is_invalid_input() => "invalid",
        Err(_) => "error",
    };
    record(span, op, backend, started, count, bytes, outcome);
}

/// [`finish`] for an append at a version, whose refusal is an answer, not an error.
fn finish_at(
    span: &tracing::Span,
    backend: &'static str,
    started: Instant,
    (count, bytes): (usize, usize),
    result: &Result<AppendAt>,
) {
    match result {
        Ok(AppendAt::Conflict { .. }) => {
            record(span, "append", backend, started, count, bytes, "conflict")
        }
        _ => finish(span, "append", backend, started, count, bytes, result),
    }
}

fn record(
    span: &tracing::Span,
    op: &'static str,
    backend: &'static str,
    started: Instant,
    count: usize,
    bytes: usize,
    outcome: &'static str,
) {
    let elapsed = started.elapsed();
    span.record("count", count);
    span.record("bytes", bytes);
    span.record("outcome", outcome);
    span.record("latency_us", elapsed.as_micros() as u64);
    metrics::histogram!("annals_store_roundtrip_seconds", "backend" => backend, "op" => op, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
    if outcome == "ok" {
        let total = match op {
            "read_stream" | "read_all" | "read_head" => Some(&EVENTS_READ),
            "append" | "append_many" | "import" => Some(&EVENTS_WRITTEN),
            _ => None,
        };
        if let Some(total) = total {
            total.fetch_add(count as u64, Ordering::Relaxed);
        }
        metrics::counter!("annals_store_events_total", "backend" => backend, "op" => op)
            .increment(count as u64);
        metrics::counter!("annals_store_bytes_total", "backend" => backend, "op" => op)
            .increment(bytes as u64);
    }
}

struct ReadGuard {
    span: tracing::Span,
    backend: &'static str,
    started: Instant,
    count: usize,
    bytes: usize,
    failed: bool,
}

impl ReadGuard {
    /// A stream read of `backend` starting now.
    fn start(backend: &'static str, stream: &StreamName) -> Self {
        Self {
            span: span("read_stream", backend, Some(stream)),
            backend,
            started: Instant::now(),
            count: 0,
            bytes: 0,
            failed: false,
        }
    }

    /// Counts what a read handed over (or that it failed).
    fn saw(&mut self, item: std::result::Result<&[RecordedEvent], &crate::Error>) {
        match item {
            Ok(events) => {
                self.count += events.len();
                self.bytes += events.iter().map(RecordedEvent::size).sum::<usize>();
            }
            Err(_) => self.failed = true,
        }
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let result: Result<()> = if self.failed {
            Err(crate::Error::backend(self.backend, "read failed"))
        } else {
            Ok(())
        };
        finish(
            &self.span,
            "read_stream",
            self.backend,
            self.started,
            self.count,
            self.bytes,
            &result,
        );
    }
}

impl<S: EventStore + ?Sized> Instrumented<S> {
    /// `append_many` (or, with `shown_from`, `append_many_shown`), traced and measured as
    /// `append_many`.
    async fn append_many_traced(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Option<Vec<Version>>,
    ) -> Result<Vec<AppendResult>> {
        let backend = self.backend();
        let span = span("append_many", backend, None);
        let count = appends.iter().map(|a| a.events.len()).sum();
        let bytes = appends
            .iter()
            .flat_map(|a| &a.events)
            .map(EventData::size)
            .sum();
        let started = Instant::now();
        let call = async {
            match shown_from {
                Some(shown_from) => self.inner.append_many_shown(appends, shown_from).await,
                None => self.inner.append_many(appends).await,
            }
        };
        let result = call.instrument(span.clone()).await;
        finish(
            &span,
            "append_many",
            backend,
            started,
            count,
            bytes,
            &result,
        );
        result
    }
}

#[async_trait]
impl<S: EventStore + ?Sized> EventStore for Instrumented<S> {
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
        let backend = self.backend();
        let span = span("append", backend, Some(stream));
        let (count, bytes) = (events.len(), events.iter().map(EventData::size).sum());
        let started = Instant::now();
        let result = self
            .inner
            .append(stream, expected, events)
            .instrument(span.clone())
            .await;
        finish(&span, "append", backend, started, count, bytes, &result);
        result
    }

    async fn append_at(
        &self,
        stream: &StreamName,
        version: Version,
        events: Vec<EventData>,
    ) -> Result<AppendAt> {
        let backend = self.backend();
        let span = span("append", backend, Some(stream));
        let (count, bytes) = (events.len(), events.iter().map(EventData::size).sum());
        let started = Instant::now();
        let result = self
            .inner
            .append_at(stream, version, events)
            .instrument(span.clone())
            .await;
        finish_at(&span, backend, started, (count, bytes), &result);
        result
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        let backend = self.backend();
        let span = span("append", backend, Some(stream));
        let (count, bytes) = (events.len(), events.iter().map(EventData::size).sum());
        let started = Instant::now();
        let result = self
            .inner
            .append_at_shown(stream, version, shown_from, events, snapshot)
            .instrument(span.clone())
            .await;
        finish_at(&span, backend, started, (count, bytes), &result);
        result
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_many_traced(appends, None).await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.append_many_traced(appends, Some(shown_from)).await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        let backend = self.backend();
        let span = span("append", backend, Some(stream));
        let count = events.len();
        let bytes = events.iter().map(EventData::size).sum::<usize>() + snapshot.len();
        let started = Instant::now();
        let result = self
            .inner
            .append_with_snapshot(stream, expected, events, snapshot)
            .instrument(span.clone())
            .await;
        finish(&span, "append", backend, started, count, bytes, &result);
        result
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        let backend = self.backend();
        let span = span("import", backend, None);
        let (count, bytes) = (events.len(), events.iter().map(RecordedEvent::size).sum());
        let started = Instant::now();
        let result = self.inner.import(events).instrument(span.clone()).await;
        finish(&span, "import", backend, started, count, bytes, &result);
        result
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        // Recorded as a `read_stream`: the first page of one.
        let mut guard = ReadGuard::start(self.backend(), stream);
        let span = guard.span.clone();
        let result = self
            .inner
            .read_page_from(stream, from, limit)
            .instrument(span)
            .await;
        guard.saw(result.as_ref().map(|page| page.events.as_slice()));
        result
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let backend = self.backend();
        let span = span("read_head", backend, Some(stream));
        let started = Instant::now();
        let result = self
            .inner
            .read_head(stream, limit)
            .instrument(span.clone())
            .await;
        let (count, bytes) = match &result {
            Ok(head) => (
                head.events.len(),
                head.events.iter().map(RecordedEvent::size).sum::<usize>()
                    + head.snapshot.as_ref().map_or(0, |s| s.data.len()),
            ),
            Err(_) => (0, 0),
        };
        finish(&span, "read_head", backend, started, count, bytes, &result);
        result
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: crate::DeleteMode,
    ) -> Result<Version> {
        let backend = self.backend();
        let span = span("delete_stream", backend, Some(stream));
        let started = Instant::now();
        let result = self
            .inner
            .delete_stream(stream, expected, mode)
            .instrument(span.clone())
            .await;
        finish(&span, "delete_stream", backend, started, 0, 0, &result);
        result
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        let backend = self.backend();
        let span = span("import_deletion", backend, Some(stream));
        let started = Instant::now();
        let result = self
            .inner
            .import_deletion(stream, version)
            .instrument(span.clone())
            .await;
        finish(&span, "import_deletion", backend, started, 0, 0, &result);
        result
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        let backend = self.backend();
        let span = span("truncate_before", backend, Some(stream));
        let started = Instant::now();
        let result = self
            .inner
            .truncate_before(stream, before)
            .instrument(span.clone())
            .await;
        finish(&span, "truncate_before", backend, started, 0, 0, &result);
        result
    }

    async fn set_retention(
        &self,
        scope: &crate::RetentionScope,
        retention: crate::Retention,
    ) -> Result<()> {
        self.inner.set_retention(scope, retention).await
    }

    async fn retention(&self) -> Result<Vec<(crate::RetentionScope, crate::Retention)>> {
        self.inner.retention().await
    }

    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<crate::Scavenged> {
        let backend = self.backend();
        let span = span("scavenge", backend, None);
        let started = Instant::now();
        let result = self
            .inner
            .scavenge(limit, dry_run)
            .instrument(span.clone())
            .await;
        let (count, bytes) = result
            .as_ref()
            .map_or((0, 0), |s| (s.events as usize, s.bytes as usize));
        finish(&span, "scavenge", backend, started, count, bytes, &result);
        result
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        let backend = self.backend();
        let span = span("head_position", backend, None);
        let started = Instant::now();
        let result = self.inner.head_position().instrument(span.clone()).await;
        finish(&span, "head_position", backend, started, 0, 0, &result);
        result
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        let backend = self.backend();
        let span = span("stream_version", backend, Some(stream));
        let started = Instant::now();
        let result = self
            .inner
            .stream_version(stream)
            .instrument(span.clone())
            .await;
        finish(&span, "stream_version", backend, started, 0, 0, &result);
        result
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        let mut guard = ReadGuard::start(self.backend(), stream);
        self.inner
            .read_stream(stream, options)
            .map(move |item| {
                // The closure owns the guard, which records on drop.
                guard.saw(item.as_ref().map(std::slice::from_ref));
                item
            })
            .boxed()
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        // Recorded as a `read_stream`: the same read, handed over a page at a time.
        let mut guard = ReadGuard::start(self.backend(), stream);
        self.inner
            .read_stream_pages(stream, options)
            .map(move |page| {
                guard.saw(page.as_ref().map(Vec::as_slice));
                page
            })
            .boxed()
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        let backend = self.backend();
        let span = span("read_all", backend, None);
        let started = Instant::now();
        let result = self
            .inner
            .read_all(from, filter, limit)
            .instrument(span.clone())
            .await;
        let (count, bytes) = match &result {
            Ok(page) => (
                page.events.len(),
                page.events.iter().map(RecordedEvent::size).sum(),
            ),
            Err(_) => (0, 0),
        };
        finish(&span, "read_all", backend, started, count, bytes, &result);
        result
    }

    async fn await_visible(&self) -> Result<()> {
        self.inner.await_visible().await
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.changes()
    }
}

/// Describes the metrics this crate records (store round trips, deciders, codecs) to the
/// installed `metrics` recorder: their help text and units, which an exporter shows
/// (Prometheus' `# HELP`). Call it once after installing the recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        "annals_store_roundtrip_seconds",
        Unit::Seconds,
        "Time of one store call through Instrumented, by backend, operation and outcome (ok or error)"
    );
    describe_counter!(
        "annals_store_events_total",
        Unit::Count,
        "Events read or written by successful store calls, by backend and operation"
    );
    describe_counter!(
        "annals_store_bytes_total",
        Unit::Bytes,
        "Bytes of event data and metadata read or written by successful store calls, by backend and operation"
    );
    describe_counter!(
        "annals_decider_runs_total",
        Unit::Count,
        "Decider operations, by category and outcome: ok, refused (the domain said no), conflict (attempts exhausted on concurrent writes) or error"
    );
    describe_histogram!(
        "annals_decider_duration_seconds",
        Unit::Seconds,
        "Time of one decider operation (loads, decisions, appends and resyncs), by category"
    );
    describe_counter!(
        "annals_decider_conflicts_total",
        Unit::Count,
        "Appends of a decision refused because the stream moved on (each followed by a resync), by category"
    );
    describe_histogram!(
        "annals_decider_batch_decisions",
        Unit::Count,
        "Decisions written together in one append of a hot stream's batch, by category"
    );
    describe_counter!(
        "annals_codec_skipped_events_total",
        Unit::Count,
        "Events a codec skipped because their type is not one of its variants, by event type"
    );
}

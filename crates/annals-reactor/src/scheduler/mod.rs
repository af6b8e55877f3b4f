//! The reader task and the per-stream scheduler behind [`crate::spawn`].
//!
//! Events move, never copy, on their way to handlers: a stream's buffered events are moved
//! into the handler's task and come back with its answer; those it did not take go back to
//! the front of the stream's queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{
    error_chain, CheckpointStore, Error, FeedPage, Position, RecordedEvent, StreamName, Timestamp,
    Version,
};
use futures::stream::{BoxStream, StreamExt};
use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::stats::{Failing, HandlerLatency, Metrics, Parked, Stats};

mod parking;
use crate::{FailurePolicy, Handler, HandlerError, PipelineConfig, PipelineError};

pub(crate) struct Parts {
    pub pages: BoxStream<'static, annals::Result<FeedPage>>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub handler: Arc<dyn Handler>,
    pub config: PipelineConfig,
    pub start: Position,
    pub stats: watch::Sender<Stats>,
    pub stop: Arc<Notify>,
}

enum Feed {
    Batch {
        events: Vec<RecordedEvent>,
        end: Position,
    },
    CaughtUp {
        read: u64,
    },
    Failed(Error),
}

struct Batch {
    end: Position,
    remaining: usize,
}

/// Events of a parked stream waiting for their record to be written before their batches
/// may complete.
#[derive(Default)]
struct ParkPending {
    batches: Vec<u64>,
    from: u64,
    to: u64,
}

#[derive(Default)]
struct Stream {
    /// Buffered events (not in flight), with the batch each came in.
    queue: VecDeque<(u64, RecordedEvent)>,
    /// The handler is running on this stream.
    busy: bool,
    /// The next version the handler needs; events below it are dropped.
    next_version: u64,
    /// The handler took nothing of what it was given: wait for new events.
    stalled: bool,
    failures: u32,
    /// Consecutive failures that were not transient: what parking and stopping count.
    poison: u32,
    delays: Option<backon::ExponentialBackoff>,
    retry_at: Option<tokio::time::Instant>,
    first_error: Option<String>,
    last_error: String,
    parked: bool,
    park: Option<ParkPending>,
}

/// What a handler task gives back: its stream, answer, duration, and the events it was
/// lent with their batches.
type Done = (
    StreamName,
    Result<Version, HandlerError>,
    Duration,
    Vec<RecordedEvent>,
    Vec<u64>,
);

struct Scheduler {
    config: PipelineConfig,
    metrics: Metrics,
    source: String,
    checkpoints: Arc<dyn CheckpointStore>,
    handler: Arc<dyn Handler>,
    batches: VecDeque<Batch>,
    base: u64,
    streams: HashMap<StreamName, Stream>,
    in_flight: JoinSet<Done>,
    stats: Stats,
    /// Events buffered or in flight.
    buffered: usize,
    /// Parked streams whose record must be written (or extended).
    to_park: HashSet<StreamName>,
    /// When a failed record write may be tried again.
    park_retry_at: Option<tokio::time::Instant>,
    /// The failing list changed since it was last published.
    failing_dirty: bool,
    /// The parked list changed since it was last published.
    parked_dirty: bool,
    /// Parked streams, by stream.
    parked: HashMap<StreamName, Parked>,
    /// Handler latencies (µs) since the last stats summary.
    latency: hdrhistogram::Histogram<u64>,
    /// What the last published stats said of idleness and the last caught-up read.
    published_key: (bool, u64),
    /// When the stats may be published again without a change of `published_key`.
    next_publish: tokio::time::Instant,
    /// Something changed since the last publication.
    publish_pending: bool,
}

/// How often the stats are published at most, unless idleness or a list changes.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// The most bytes of a handler's error text kept (stats, parked records, logs): a handler
/// may fail with a whole response body, and a parked record must fit any store (a NATS
/// message is at most 1 MiB by default).
const ERROR_TEXT: usize = 4_096;

/// `text`, cut to [`ERROR_TEXT`] bytes (on a character boundary) and marked so.
fn bounded(mut text: String) -> String {
    if text.len() > ERROR_TEXT {
        let mut cut = ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = text.len() - cut;
        text.truncate(cut);
        text.push_str(&format!("… ({more} bytes more)"));
    }
    text
}

impl Scheduler {
    fn add(&mut self, events: Vec<RecordedEvent>, end: Position) {
        let index = self.base + self.batches.len() as u64;
        let mut remaining = 0;
        for e in events {
            let s = self.streams.entry(e.stream.clone()).or_default();
            if s.parked {
                let pending = s.park.get_or_insert_with(|| ParkPending {
                    from: e.stream_version,
                    ..ParkPending::default()
                });
                pending.to = pending.to.max(e.stream_version + 1);
                pending.batches.push(index);
                self.to_park.insert(e.stream.clone());
                remaining += 1;
            } else if e.stream_version >= s.next_version {
                s.queue.push_back((index, e));
                s.stalled = false;
                self.buffered += 1;
                remaining += 1;
            }
        }
        self.batches.push_back(Batch { end, remaining });
        self.stats.read_position = self.stats.read_position.max(end);
        self.stats.max_pending_batches_seen =
            self.stats.max_pending_batches_seen.max(self.batches.len());
        self.complete_prefix();
    }

    fn release(&mut self, batch: u64) {
        if let Some(b) = self.batches.get_mut((batch - self.base) as usize) {
            b.remaining -= 1;
        }
    }

    fn complete_prefix(&mut self) {
        while self.batches.front().is_some_and(|b| b.remaining == 0) {
            let b = self.batches.pop_front().expect("front exists");
            self.base += 1;
            self.stats.completed = self.stats.completed.max(b.end);
        }
    }

    fn dispatch(&mut self) {
        let now = tokio::time::Instant::now();
        let max = self.config.max_concurrent_streams.max(1);
        for (name, s) in self.streams.iter_mut() {
            if self.in_flight.len() >= max {
                break;
            }
            let ready = !s.busy
                && !s.stalled
                && !s.parked
                && !s.queue.is_empty()
                && s.retry_at.is_none_or(|t| t <= now);
            if !ready {
                continue;
            }
            s.busy = true;
            let (batches, events): (Vec<u64>, Vec<RecordedEvent>) = s.queue.drain(..).unzip();
            let (handler, stream) = (Arc::clone(&self.handler), name.clone());
            // The handler's span continues the traces the events were written in (their
            // metadata's trace context), not whatever the pipeline runs in. At DEBUG, so that
            // logs at INFO do not format it at every call; its OpenTelemetry kind says that
            // it starts a trace of its own where there is none to continue.
            let span = tracing::debug_span!(
                parent: None,
                "annals.handle",
                otel.kind = "consumer",
                group = %self.config.group,
                stream = %name,
                events = events.len(),
            );
            annals::trace::continue_traces(&span, &events);
            let handled = async move {
                let started = Instant::now();
                // A handler that panics fails this call (retried, parked or stopping as
                // configured), never the pipeline.
                let call = std::panic::AssertUnwindSafe(handler.handle(&stream, &events));
                let result = match call.catch_unwind().await {
                    Ok(result) => result,
                    Err(panic) => Err(format!(
                        "the handler panicked: {}",
                        annals::backend::panic_message(&*panic)
                    )
                    .into()),
                };
                (stream, result, started.elapsed(), events, batches)
            };
            self.in_flight
                .spawn(tracing::Instrument::instrument(handled, span));
        }
        self.stats.active_streams = self.in_flight.len();
    }

    fn next_retry(&self) -> Option<tokio::time::Instant> {
        let streams = self
            .streams
            .values()
            .filter(|s| !s.busy && !s.queue.is_empty() && !s.parked)
            .filter_map(|s| s.retry_at);
        streams.chain(self.park_retry_at).min()
    }

    fn done(&mut self, done: Result<Done, tokio::task::JoinError>) -> Result<(), PipelineError> {
        let (name, result, took, events, batches) = match done {
            Ok(d) => d,
            Err(e) => {
                return Err(PipelineError::Store(annals::Error::backend(
                    "reactor handler",
                    e.to_string(),
                )))
            }
        };
        self.metrics.handler_seconds.record(took.as_secs_f64());
        self.latency.saturating_record(took.as_micros() as u64);
        let s = self
            .streams
            .get_mut(&name)
            .expect("dispatched streams are known");
        s.busy = false;
        match result {
            Ok(next) => {
                if s.failures > 0 {
                    self.failing_dirty = true;
                }
                s.failures = 0;
                s.poison = 0;
                s.delays = None;
                s.retry_at = None;
                s.first_error = None;
                s.next_version = s.next_version.max(next.get());
                let (mut bytes, mut last, mut handled) = (0, None, 0usize);
                let mut released = Vec::new();
                let mut back = Vec::new();
                for (e, b) in events.into_iter().zip(batches) {
                    if e.stream_version < s.next_version {
                        bytes += (e.data.len() + e.metadata.as_ref().map_or(0, Vec::len)) as u64;
                        last = Some(e.stream_version);
                        handled += 1;
                        released.push(b);
                    } else {
                        back.push((b, e));
                    }
                }
                // Events the handler did not take go back before those that came meanwhile.
                for item in back.into_iter().rev() {
                    s.queue.push_front(item);
                }
                // Events that arrived meanwhile but are now below the skip-ahead.
                while s
                    .queue
                    .front()
                    .is_some_and(|(_, e)| e.stream_version < s.next_version)
                {
                    let (b, e) = s.queue.pop_front().expect("front exists");
                    last = Some(e.stream_version);
                    handled += 1;
                    released.push(b);
                }
                s.stalled = released.is_empty();
                // A stream with nothing buffered and no skip-ahead pending is forgotten, so
                // the scheduler's per-stream work covers only streams with work.
                if s.queue.is_empty() && last.is_some_and(|v| v + 1 == s.next_version) {
                    self.streams.remove(&name);
                }
                self.buffered -= handled;
                self.stats.bytes_handled += bytes;
                self.metrics.bytes.increment(bytes);
                self.stats.events_handled += handled as u64;
                self.stats.handler_calls += 1;
                self.metrics.events.increment(handled as u64);
                for b in released {
                    self.release(b);
                }
                self.complete_prefix();
                tracing::trace!(stream = %name, count = handled, ?took, "handled");
            }
            Err(e) => {
                // Everything lent comes back, in order, before what came meanwhile.
                for item in batches.into_iter().zip(events).rev() {
                    s.queue.push_front(item);
                }
                s.failures += 1;
                // A store that could not be reached says nothing of the events: such
                // failures are retried, never counted toward parking or stopping.
                let transient = annals::is_transient(&*e);
                if !transient {
                    s.poison += 1;
                }
                self.failing_dirty = true;
                self.metrics.handler_failures.increment(1);
                let message = bounded(error_chain(&*e));
                s.first_error.get_or_insert_with(|| message.clone());
                s.last_error.clone_from(&message);
                let (attempts, poison) = (s.failures, s.poison);
                let group = &self.config.group;
                match self.config.on_failure {
                    FailurePolicy::Stop { after } if poison >= after => {
                        tracing::error!(%group, stream = %name, attempts, error = %message, "handler failed; stopping the pipeline");
                        return Err(PipelineError::Handler {
                            stream: name,
                            attempts,
                            message,
                        });
                    }
                    FailurePolicy::Park { after } if poison >= after => {
                        tracing::warn!(%group, stream = %name, attempts, error = %message, "handler failed; parking the stream");
                        self.park(name);
                    }
                    _ => {
                        let delay = s
                            .delays
                            .get_or_insert_with(|| self.config.backoff.delays())
                            .next()
                            .unwrap_or(self.config.backoff.max);
                        tracing::warn!(%group, stream = %name, attempts, transient, retry_in = ?delay, error = %message, "handler failed; retrying");
                        s.retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
        }
        Ok(())
    }

    async fn commit(&mut self) {
        if self.stats.completed <= self.stats.checkpoint {
            return;
        }
        let position = self.stats.completed;
        match self
            .checkpoints
            .commit(&self.config.group, &self.source, position)
            .await
        {
            Ok(()) => {
                self.stats.checkpoint = position;
                self.metrics
                    .checkpoint
                    .set(annals::backend::raw_position(position) as f64);
            }
            Err(e) => {
                tracing::warn!(group = %self.config.group, error = %error_chain(&e), "checkpoint commit failed")
            }
        }
    }

    /// Computes the stats that walk every stream: lag in time and stalled streams.
    fn measure(&mut self) {
        let now = Timestamp::now().unix_micros();
        self.stats.behind = self
            .streams
            .values()
            .filter_map(|s| s.queue.front())
            .map(|(_, e)| e.recorded_at.unix_micros())
            .min()
            .map(|oldest| Duration::from_micros(now.saturating_sub(oldest).max(0) as u64));
        self.stats.stalled = self.streams.values().filter(|s| s.stalled).count();
        self.metrics
            .seconds_behind
            .set(self.stats.behind.map_or(0.0, |d| d.as_secs_f64()));
        self.metrics.stalled.set(self.stats.stalled as f64);
    }

    /// Logs the stats summary and starts a new latency interval.
    fn summary(&mut self) {
        self.measure();
        let h = &self.latency;
        let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        self.stats.handler_latency = (!h.is_empty()).then(|| HandlerLatency {
            calls: h.len(),
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: Duration::from_micros(h.max()),
        });
        self.latency.reset();
        let st = &self.stats;
        let lat = st.handler_latency.unwrap_or_default();
        tracing::info!(
            group = %self.config.group,
            source = %self.source,
            read = %st.read_position,
            checkpoint = %st.checkpoint,
            handled = st.events_handled,
            bytes = st.bytes_handled,
            calls = lat.calls,
            p50_ms = lat.p50.as_secs_f64() * 1e3,
            p95_ms = lat.p95.as_secs_f64() * 1e3,
            p99_ms = lat.p99.as_secs_f64() * 1e3,
            max_ms = lat.max.as_secs_f64() * 1e3,
            pending_batches = st.pending_batches,
            active = st.active_streams,
            events_behind = st.events_behind,
            behind_ms = st.behind.map_or(0, |d| d.as_millis() as u64),
            failing = st.failing.len(),
            stalled = st.stalled,
            parked = st.parked.len(),
            "reactor stats"
        );
    }

    /// Publishes the stats when what `await_idle` and the lists depend on changed, and
    /// otherwise at most every [`PUBLISH_EVERY`] (a later turn, or the loop's timer,
    /// publishes what is left): the stats are not copied on every turn of the loop.
    fn publish(&mut self, tx: &watch::Sender<Stats>, force: bool) {
        let idle = self.batches.is_empty() && self.in_flight.is_empty() && self.to_park.is_empty();
        let key = (idle, self.stats.caught_up_read);
        let now = tokio::time::Instant::now();
        let listed = self.failing_dirty || self.parked_dirty;
        if !force && !listed && key == self.published_key && now < self.next_publish {
            self.publish_pending = true;
            return;
        }
        self.published_key = key;
        self.next_publish = now + PUBLISH_EVERY;
        self.publish_pending = false;
        self.stats.pending_batches = self.batches.len();
        if self.failing_dirty {
            self.failing_dirty = false;
            let mut failing: Vec<Failing> = self
                .streams
                .iter()
                .filter(|(_, s)| s.failures > 0 && !s.parked)
                .map(|(n, s)| Failing {
                    stream: n.clone(),
                    failures: s.failures,
                    last_error: s.last_error.clone(),
                })
                .collect();
            failing.sort();
            self.stats.failing = Arc::new(failing);
            self.metrics.failing.set(self.stats.failing.len() as f64);
        }
        if self.parked_dirty {
            self.parked_dirty = false;
            let mut parked: Vec<Parked> = self.parked.values().cloned().collect();
            parked.sort_by(|a, b| a.stream.cmp(&b.stream));
            self.stats.parked = Arc::new(parked);
            self.metrics.parked.set(self.stats.parked.len() as f64);
        }
        self.stats.idle = idle;
        self.stats.events_behind = self.buffered;
        self.stats.streams_tracked = self.streams.len();
        let m = &self.metrics;
        m.read_position
            .set(annals::backend::raw_position(self.stats.read_position) as f64);
        m.events_behind.set(self.stats.events_behind as f64);
        m.pending_batches.set(self.stats.pending_batches as f64);
        tx.send_replace(self.stats.clone());
    }
}

/// Turns the feed's pages into batches for the scheduler, through a channel of one: the
/// scheduler's pace bounds the read-ahead.
async fn reader(mut pages: BoxStream<'static, annals::Result<FeedPage>>, feed: mpsc::Sender<Feed>) {
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let _ = feed.send(Feed::Failed(e)).await;
                return;
            }
        };
        let (end, read, caught_up) = (page.next, page.read, page.end);
        let batch = Feed::Batch {
            events: page.events,
            end,
        };
        if feed.send(batch).await.is_err() {
            return;
        }
        if caught_up && feed.send(Feed::CaughtUp { read }).await.is_err() {
            return;
        }
    }
}

pub(crate) async fn run(parts: Parts) -> Result<(), PipelineError> {
    let Parts {
        pages,
        checkpoints,
        handler,
        config,
        start,
        stats: stats_tx,
        stop,
    } = parts;
    let source = config.source();
    let (feed_tx, mut feed) = mpsc::channel(1);
    let reader = tokio::spawn(reader(pages, feed_tx));
    let metrics = Metrics::new(&config.group, &source);
    let mut s = Scheduler {
        source,
        checkpoints,
        handler,
        batches: VecDeque::new(),
        base: 0,
        streams: HashMap::new(),
        in_flight: JoinSet::new(),
        stats: Stats {
            checkpoint: start,
            completed: start,
            read_position: start,
            ..Stats::default()
        },
        buffered: 0,
        to_park: HashSet::new(),
        park_retry_at: None,
        failing_dirty: false,
        parked_dirty: false,
        parked: HashMap::new(),
        metrics,
        latency: hdrhistogram::Histogram::new(3).expect("3 significant figures is valid"),
        published_key: (false, 0),
        next_publish: tokio::time::Instant::now(),
        publish_pending: false,
        config,
    };
    s.refresh_parked(true).await;
    let mut checkpoint_tick = tokio::time::interval(s.config.checkpoint_interval);
    let mut stats_tick = tokio::time::interval(s.config.stats_interval);
    let outcome = loop {
        if !s.to_park.is_empty() {
            s.flush_parked().await;
        }
        s.dispatch();
        s.publish(&stats_tx, false);
        let retry = s.next_retry();
        let can_read = s.batches.len() < s.config.max_pending_batches.max(1);
        tokio::select! {
            biased;
            _ = stop.notified() => break Ok(()),
            Some(done) = s.in_flight.join_next(), if !s.in_flight.is_empty() => {
                if let Err(e) = s.done(done) {
                    break Err(e);
                }
            }
            next = feed.recv(), if can_read => match next {
                Some(Feed::Batch { events, end }) => s.add(events, end),
                Some(Feed::CaughtUp { read }) => s.stats.caught_up_read = read,
                Some(Feed::Failed(e)) => break Err(PipelineError::Store(e)),
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => {}
            _ = checkpoint_tick.tick() => {
                s.commit().await;
                s.refresh_parked(false).await;
                s.measure();
            }
            _ = stats_tick.tick() => {
                s.summary();
                s.publish(&stats_tx, true);
            }
            _ = tokio::time::sleep_until(s.next_publish), if s.publish_pending => {
                s.publish(&stats_tx, true);
            }
        }
    };
    reader.abort();
    // Let the handlers in flight finish so their work counts, then commit.
    while let Some(done) = s.in_flight.join_next().await {
        let _ = s.done(done);
    }
    if !s.to_park.is_empty() {
        s.park_retry_at = None;
        s.flush_parked().await;
    }
    s.commit().await;
    if let Err(e) = &outcome {
        s.stats.stopped = Some(e.clone());
    }
    s.publish(&stats_tx, true);
    outcome
}

//! The reader task and the per-stream scheduler behind [`crate::spawn`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{CheckpointStore, EventStore, Filter, Position, RecordedEvent, StreamName, Version};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::{FailurePolicy, Handler, HandlerError, PipelineConfig, PipelineError};

/// A stream parked after repeated failures: its events were recorded here and skipped.
#[derive(Debug, Clone)]
pub struct Parked {
    /// The stream.
    pub stream: StreamName,
    /// Its events that were skipped, oldest first.
    pub events: Vec<RecordedEvent>,
    /// The last error.
    pub error: String,
}

/// What a pipeline reports about itself.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Where the reader has read up to.
    pub read_position: Position,
    /// The end of the last batch whose every event is handled.
    pub completed: Position,
    /// The last committed checkpoint.
    pub checkpoint: Position,
    /// Events handled (or skipped by a handler's skip-ahead).
    pub events_handled: u64,
    /// Bytes (data and metadata) of the events handled.
    pub bytes_handled: u64,
    /// Handler invocations that succeeded.
    pub handler_calls: u64,
    /// Handler latency over the last stats interval (`None` before the first summary, or
    /// when no handler ran in it).
    pub handler_latency: Option<HandlerLatency>,
    /// Batches read but not complete.
    pub pending_batches: usize,
    /// The most batches ever pending at once.
    pub max_pending_batches_seen: usize,
    /// Streams being handled right now.
    pub active_streams: usize,
    /// Events read but not yet handled (lag in events).
    pub events_behind: usize,
    /// How long ago the oldest unhandled event was recorded (lag in time); `None` when
    /// nothing read is waiting.
    pub behind: Option<Duration>,
    /// Streams failing now, with their consecutive failures.
    pub failing: Vec<(StreamName, u32)>,
    /// Streams whose handler took none of the events it was given (waiting for more).
    pub stalled: usize,
    /// Streams the scheduler keeps state for: those with buffered events, in flight,
    /// failing, parked or skipping ahead. Others are forgotten once handled.
    pub streams_tracked: usize,
    /// Parked streams.
    pub parked: Vec<Parked>,
    /// The latest read that reached the end of the feed (see `Running::await_idle`).
    pub caught_up_read: u64,
    /// Nothing read is left to handle.
    pub idle: bool,
    /// Set when the pipeline stopped on an error.
    pub stopped: Option<PipelineError>,
}

/// Handler latency percentiles over one stats interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HandlerLatency {
    /// Handler calls in the interval (failed ones included).
    pub calls: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

pub(crate) struct Parts {
    pub store: Arc<dyn EventStore>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub handler: Arc<dyn Handler>,
    pub config: PipelineConfig,
    pub stats: watch::Sender<Stats>,
    pub poke: Arc<Notify>,
    pub stop: Arc<Notify>,
    pub reads: Arc<AtomicU64>,
}

enum Feed {
    Batch {
        events: Vec<RecordedEvent>,
        end: Position,
    },
    CaughtUp {
        read: u64,
    },
}

struct Batch {
    end: Position,
    remaining: usize,
}

#[derive(Default)]
struct Stream {
    queue: VecDeque<(u64, RecordedEvent)>,
    busy: bool,
    /// The next version the handler needs; events below it are dropped.
    next_version: u64,
    /// The handler took nothing of what it was given: wait for new events.
    stalled: bool,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    parked: Option<usize>,
    last_error: String,
}

type Done = (StreamName, Result<Version, HandlerError>, Duration, usize);

/// The pipeline's metrics, registered once, labelled by group and source (a partition's
/// pipeline has its own source, so the members of a group do not overwrite each other).
struct Metrics {
    handler_seconds: metrics::Histogram,
    events: metrics::Counter,
    bytes: metrics::Counter,
    checkpoint: metrics::Gauge,
    read_position: metrics::Gauge,
    events_behind: metrics::Gauge,
    seconds_behind: metrics::Gauge,
    failing: metrics::Gauge,
    stalled: metrics::Gauge,
    parked: metrics::Gauge,
    pending_batches: metrics::Gauge,
}

impl Metrics {
    fn new(group: &str, source: &str) -> Self {
        let labels = [("group", group.to_owned()), ("source", source.to_owned())];
        Self {
            handler_seconds: metrics::histogram!("annals_reactor_handler_seconds", &labels),
            events: metrics::counter!("annals_reactor_events_total", &labels),
            bytes: metrics::counter!("annals_reactor_bytes_total", &labels),
            checkpoint: metrics::gauge!("annals_reactor_checkpoint_position", &labels),
            read_position: metrics::gauge!("annals_reactor_read_position", &labels),
            events_behind: metrics::gauge!("annals_reactor_events_behind", &labels),
            seconds_behind: metrics::gauge!("annals_reactor_seconds_behind", &labels),
            failing: metrics::gauge!("annals_reactor_streams_failing", &labels),
            stalled: metrics::gauge!("annals_reactor_streams_stalled", &labels),
            parked: metrics::gauge!("annals_reactor_streams_parked", &labels),
            pending_batches: metrics::gauge!("annals_reactor_pending_batches", &labels),
        }
    }
}

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
    rng: u64,
    /// Handler latencies (µs) since the last stats summary.
    latency: hdrhistogram::Histogram<u64>,
}

/// A cheap pseudo-random number in `[0, 1)` for jitter.
fn unit(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as f64 / (1u64 << 53) as f64
}

impl Scheduler {
    fn add(&mut self, events: Vec<RecordedEvent>, end: Position) {
        let index = self.base + self.batches.len() as u64;
        let mut remaining = 0;
        for e in events {
            let s = self.streams.entry(e.stream.clone()).or_default();
            if let Some(p) = s.parked {
                self.stats.parked[p].events.push(e);
            } else if e.stream_version >= s.next_version {
                s.queue.push_back((index, e));
                s.stalled = false;
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
                && s.parked.is_none()
                && !s.queue.is_empty()
                && s.retry_at.is_none_or(|t| t <= now);
            if !ready {
                continue;
            }
            s.busy = true;
            let events: Vec<RecordedEvent> = s.queue.iter().map(|(_, e)| e.clone()).collect();
            let (handler, stream) = (Arc::clone(&self.handler), name.clone());
            self.in_flight.spawn(async move {
                let started = Instant::now();
                let result = handler.handle(&stream, &events).await;
                (stream, result, started.elapsed(), events.len())
            });
        }
        self.stats.active_streams = self.in_flight.len();
    }

    fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.streams
            .values()
            .filter(|s| !s.busy && !s.queue.is_empty() && s.parked.is_none())
            .filter_map(|s| s.retry_at)
            .min()
    }

    fn done(&mut self, done: Result<Done, tokio::task::JoinError>) -> Result<(), PipelineError> {
        let (name, result, took, count) = match done {
            Ok(d) => d,
            // A panicking handler: find the stream that was busy without a result.
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
                s.failures = 0;
                s.retry_at = None;
                s.next_version = s.next_version.max(next.get());
                let mut released = Vec::new();
                let (mut bytes, mut last) = (0, None);
                while s
                    .queue
                    .front()
                    .is_some_and(|(_, e)| e.stream_version < s.next_version)
                {
                    let (batch, e) = s.queue.pop_front().expect("front exists");
                    bytes += (e.data.len() + e.metadata.as_ref().map_or(0, Vec::len)) as u64;
                    last = Some(e.stream_version);
                    released.push(batch);
                }
                s.stalled = released.is_empty();
                // A stream with nothing buffered and no skip-ahead pending is forgotten, so
                // the scheduler's per-stream work covers only streams with work.
                if s.queue.is_empty() && last.is_some_and(|v| v + 1 == s.next_version) {
                    self.streams.remove(&name);
                }
                self.stats.bytes_handled += bytes;
                self.metrics.bytes.increment(bytes);
                self.stats.events_handled += released.len() as u64;
                self.stats.handler_calls += 1;
                self.metrics.events.increment(released.len() as u64);
                for b in released {
                    self.release(b);
                }
                self.complete_prefix();
                tracing::trace!(stream = %name, count, ?took, "handled");
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = e.to_string();
                let attempts = s.failures;
                match self.config.on_failure {
                    FailurePolicy::Stop { after } if attempts >= after => {
                        return Err(PipelineError::Handler {
                            stream: name,
                            attempts,
                            message: e.to_string(),
                        });
                    }
                    FailurePolicy::Park { after } if attempts >= after => {
                        tracing::warn!(stream = %name, attempts, error = %e, "parking stream");
                        let events: Vec<(u64, RecordedEvent)> = s.queue.drain(..).collect();
                        s.parked = Some(self.stats.parked.len());
                        self.stats.parked.push(Parked {
                            stream: name.clone(),
                            events: events.iter().map(|(_, e)| e.clone()).collect(),
                            error: e.to_string(),
                        });
                        for (b, _) in events {
                            self.release(b);
                        }
                        self.complete_prefix();
                    }
                    _ => {
                        let delay = self.config.backoff.delay(attempts, unit(&mut self.rng));
                        tracing::debug!(stream = %name, attempts, ?delay, error = %e, "handler failed; retrying");
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
                self.metrics.checkpoint.set(position.raw() as f64);
            }
            Err(e) => {
                tracing::warn!(group = %self.config.group, error = %e, "checkpoint commit failed")
            }
        }
    }

    /// Logs the stats summary and starts a new latency interval.
    fn summary(&mut self) {
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

    fn publish(&mut self, tx: &watch::Sender<Stats>) {
        self.stats.pending_batches = self.batches.len();
        self.stats.failing = self
            .streams
            .iter()
            .filter(|(_, s)| s.failures > 0 && s.parked.is_none())
            .map(|(n, s)| (n.clone(), s.failures))
            .collect();
        self.stats.idle = self.batches.is_empty() && self.in_flight.is_empty();
        self.stats.events_behind = self.streams.values().map(|s| s.queue.len()).sum();
        let now = annals::Timestamp::now().unix_micros();
        self.stats.behind = self
            .streams
            .values()
            .filter_map(|s| s.queue.front())
            .map(|(_, e)| e.recorded_at.unix_micros())
            .min()
            .map(|oldest| Duration::from_micros(now.saturating_sub(oldest).max(0) as u64));
        self.stats.stalled = self.streams.values().filter(|s| s.stalled).count();
        self.stats.streams_tracked = self.streams.len();
        let m = &self.metrics;
        m.read_position.set(self.stats.read_position.raw() as f64);
        m.events_behind.set(self.stats.events_behind as f64);
        m.seconds_behind
            .set(self.stats.behind.map_or(0.0, |d| d.as_secs_f64()));
        m.failing.set(self.stats.failing.len() as f64);
        m.stalled.set(self.stats.stalled as f64);
        m.parked.set(self.stats.parked.len() as f64);
        m.pending_batches.set(self.stats.pending_batches as f64);
        tx.send_replace(self.stats.clone());
    }
}

/// What the reader task needs.
struct Reader {
    store: Arc<dyn EventStore>,
    filter: Filter,
    batch_size: usize,
    from: Position,
    feed: mpsc::Sender<Feed>,
    poke: Arc<Notify>,
    poll: Duration,
    reads: Arc<AtomicU64>,
    partition: Option<crate::Partition>,
}

/// Pages through the feed after `from`, then follows the change signal (or polls), sending
/// batches into a channel of one: the scheduler's pace bounds the read-ahead.
async fn reader(r: Reader) {
    let Reader {
        store,
        filter,
        batch_size,
        mut from,
        feed,
        poke,
        poll,
        reads,
        partition,
    } = r;
    let mut changes = store.changes();
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Some(rx) = changes.as_mut() {
            rx.borrow_and_update();
        }
        let read = reads.fetch_add(1, Ordering::SeqCst) + 1;
        let mut page = match store.read_all(from, &filter, batch_size).await {
            Ok(page) => {
                backoff = Duration::from_millis(100);
                page
            }
            Err(e) => {
                tracing::warn!(error = %e, "reactor read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Some(p) = partition {
            page.events.retain(|e| p.contains(&e.stream));
        }
        if !page.events.is_empty() || page.next > from {
            let end = from.max(page.next);
            if feed
                .send(Feed::Batch {
                    events: page.events,
                    end,
                })
                .await
                .is_err()
            {
                return;
            }
            from = end;
        }
        if page.end {
            if feed.send(Feed::CaughtUp { read }).await.is_err() {
                return;
            }
            let wake = async {
                match changes.as_mut() {
                    Some(rx) => {
                        let _ = rx.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = poke.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

pub(crate) async fn run(parts: Parts) -> Result<(), PipelineError> {
    let Parts {
        store,
        checkpoints,
        handler,
        config,
        stats: stats_tx,
        poke,
        stop,
        reads,
    } = parts;
    let source = config.source();
    let start = match checkpoints.load(&config.group, &source).await {
        Ok(p) => p.unwrap_or(Position::START),
        Err(e) => {
            let e = PipelineError::from(e);
            stats_tx.send_modify(|s| s.stopped = Some(e.clone()));
            return Err(e);
        }
    };
    let (feed_tx, mut feed) = mpsc::channel(1);
    let reader = tokio::spawn(reader(Reader {
        store,
        filter: config.filter.clone(),
        batch_size: config.batch_size.max(1),
        from: start,
        feed: feed_tx,
        poke,
        poll: config.poll_interval,
        reads,
        partition: config.partition,
    }));
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15;
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
        rng: seed | 1,
        metrics,
        latency: hdrhistogram::Histogram::new(3).expect("3 significant figures is valid"),
        config,
    };
    let mut checkpoint_tick = tokio::time::interval(s.config.checkpoint_interval);
    let mut stats_tick = tokio::time::interval(s.config.stats_interval);
    let outcome = loop {
        s.dispatch();
        s.publish(&stats_tx);
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
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => {}
            _ = checkpoint_tick.tick() => s.commit().await,
            _ = stats_tick.tick() => s.summary(),
        }
    };
    reader.abort();
    // Let the handlers in flight finish so their work counts, then commit.
    while let Some(done) = s.in_flight.join_next().await {
        let _ = s.done(done);
    }
    s.commit().await;
    if let Err(e) = &outcome {
        s.stats.stopped = Some(e.clone());
    }
    s.publish(&stats_tx);
    outcome
}

//! What a pipeline reports about itself: its stats and its metrics.

use std::sync::Arc;
use std::time::Duration;

use annals::{Position, StreamName};

use crate::PipelineError;

/// A stream parked after repeated failures: the record kept of it, the same as the
/// checkpoint store keeps (versions and errors, never the events). Its events from `from`
/// to `to` (exclusive) were skipped, and later ones are skipped too until it is replayed or
/// skipped (`annals parked`).
pub type Parked = annals::ParkedStream;

/// What a pipeline reports about itself. Cheap to clone: the lists are shared.
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
    /// How long ago the oldest unhandled event was recorded (lag in time), as of the last
    /// checkpoint or stats interval; `None` when nothing read was waiting then.
    pub behind: Option<Duration>,
    /// Streams failing now (not parked), by name.
    pub failing: Arc<Vec<Failing>>,
    /// Streams whose handler took none of the events it was given (waiting for more), as
    /// of the last checkpoint or stats interval.
    pub stalled: usize,
    /// Streams the scheduler keeps state for: those with buffered events, in flight,
    /// failing, parked or skipping ahead. Others are forgotten once handled.
    pub streams_tracked: usize,
    /// Parked streams.
    pub parked: Arc<Vec<Parked>>,
    /// The latest read that reached the end of the feed (see `Running::await_idle`).
    pub caught_up_read: u64,
    /// Nothing read is left to handle.
    pub idle: bool,
    /// Set when the pipeline stopped on an error.
    pub stopped: Option<PipelineError>,
}

/// A stream whose handler is failing (and being retried).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failing {
    /// The stream.
    pub stream: StreamName,
    /// Consecutive failures so far.
    pub failures: u32,
    /// The last failure's error.
    pub last_error: String,
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

/// The pipeline's metrics, registered once, labelled by group and source (a partition's
/// pipeline has its own source, so the members of a group do not overwrite each other).
pub(crate) struct Metrics {
    pub(crate) handler_seconds: metrics::Histogram,
    pub(crate) events: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
    pub(crate) checkpoint: metrics::Gauge,
    pub(crate) read_position: metrics::Gauge,
    pub(crate) events_behind: metrics::Gauge,
    pub(crate) seconds_behind: metrics::Gauge,
    pub(crate) failing: metrics::Gauge,
    pub(crate) stalled: metrics::Gauge,
    pub(crate) parked: metrics::Gauge,
    pub(crate) pending_batches: metrics::Gauge,
    pub(crate) handler_failures: metrics::Counter,
}

impl Metrics {
    pub(crate) fn new(group: &str, source: &str) -> Self {
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
            handler_failures: metrics::counter!("annals_reactor_handler_failures_total", &labels),
        }
    }
}

/// Describes the pipelines' metrics (labelled by consumer group and checkpoint source) to
/// the installed `metrics` recorder: their help text and units. Call it once after
/// installing the recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "annals_reactor_handler_seconds",
        Unit::Seconds,
        "Time of one handler call on a stream's events"
    );
    describe_counter!(
        "annals_reactor_events_total",
        Unit::Count,
        "Events handled (or skipped ahead by a handler)"
    );
    describe_counter!(
        "annals_reactor_bytes_total",
        Unit::Bytes,
        "Bytes of data and metadata of the events handled"
    );
    describe_counter!(
        "annals_reactor_handler_failures_total",
        Unit::Count,
        "Handler calls that failed (each retried, or its stream parked)"
    );
    describe_gauge!(
        "annals_reactor_checkpoint_position",
        "The last committed checkpoint: the feed position the group resumes after"
    );
    describe_gauge!(
        "annals_reactor_read_position",
        "The feed position the reader has read up to"
    );
    describe_gauge!(
        "annals_reactor_events_behind",
        Unit::Count,
        "Events read but not yet handled"
    );
    describe_gauge!(
        "annals_reactor_seconds_behind",
        Unit::Seconds,
        "How long ago the oldest unhandled event was recorded"
    );
    describe_gauge!(
        "annals_reactor_streams_failing",
        Unit::Count,
        "Streams whose handler is failing and being retried"
    );
    describe_gauge!(
        "annals_reactor_streams_stalled",
        Unit::Count,
        "Streams whose handler took none of the events it was given (waiting for more)"
    );
    describe_gauge!(
        "annals_reactor_streams_parked",
        Unit::Count,
        "Streams parked after repeated failures (their events skipped until replayed)"
    );
    describe_gauge!(
        "annals_reactor_pending_batches",
        Unit::Count,
        "Batches read but not yet completely handled"
    );
}

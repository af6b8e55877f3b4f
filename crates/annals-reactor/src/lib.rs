//! The reactor pipeline: read a store's feed from a checkpoint, hand each stream's events to
//! a handler (one invocation per stream at a time, many streams in parallel), and commit the
//! checkpoint only up to the last batch whose every event has been handled.
//!
//! In the spirit of Propulsion's streams sink:
//! - a reader task pages through `read_all` after the checkpoint, then follows the store's
//!   change signal (polling as a fallback), and stops reading ahead when
//!   `max_pending_batches` batches are not yet complete;
//! - the scheduler gives a stream's handler all of its buffered events in one call; the
//!   handler answers the next version it needs, so it can skip ahead;
//! - a batch is complete when every event in it is handled (or skipped, or parked); batches
//!   complete in order, so a checkpoint never passes an unhandled event;
//! - a failing stream is retried with exponential backoff and jitter while other streams go
//!   on (each failure logged at WARN with its whole cause chain); after `after` failures it
//!   is parked (recorded in the checkpoint store with the versions skipped and its first and
//!   last error, never the events; its later events skipped too) or the
//!   pipeline stops with the error, as configured;
//! - [`Running::await_idle`] waits, without sleeping, until everything appended before the
//!   call has been handled.
//!
//! The reactor sees stores only through the core traits.

mod group;
mod project;
mod reactor;
mod scheduler;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use annals::{
    CheckpointStore, EventStore, Feed, FeedOptions, Filter, Position, RecordedEvent, StreamName,
    Version,
};
use async_trait::async_trait;
use tokio::sync::{watch, Notify};

pub use annals::{Backoff, Partition};
pub use group::{join_group, GroupConfig, Member};
pub use project::Project;
pub use reactor::{reaction_id, Reactor};
pub use stats::{describe_metrics, Failing, HandlerLatency, Parked, Stats};

/// What a handler failure carries.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles the events of one stream.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `events` (consecutive, oldest first, all of `stream`) and returns the next
    /// version it needs: usually the last event's version + 1; more to skip ahead (later
    /// events below it are dropped); less to leave the rest buffered for a later call.
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError>;
}

/// What to do with a stream whose handler keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Retry with backoff, forever.
    Retry,
    /// After this many consecutive failures, park the stream: record it in the checkpoint
    /// store ([`annals::ParkedStream`]: the versions skipped, the first and last error),
    /// skip its events and every later event of the stream, so the checkpoint moves on and
    /// the other streams keep flowing. Parked streams are loaded when a pipeline starts; one
    /// whose record is removed (`annals parked replay | skip`) is handled again.
    Park {
        /// Failures before parking.
        after: u32,
    },
    /// After this many consecutive failures, stop the pipeline with the error.
    Stop {
        /// Failures before stopping.
        after: u32,
    },
}

/// How a pipeline reads, schedules and checkpoints.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The consumer group: the checkpoint's owner.
    pub group: String,
    /// Which events to read.
    pub filter: Filter,
    /// Events per read (one batch).
    pub batch_size: usize,
    /// Batches read but not yet complete, at most (read-ahead bound).
    pub max_pending_batches: usize,
    /// Streams handled at once, at most.
    pub max_concurrent_streams: usize,
    /// How often the checkpoint is committed (and it always is on stop).
    pub checkpoint_interval: Duration,
    /// How often to look for new events when no change signal arrives.
    pub poll_interval: Duration,
    /// Delays between a failing stream's attempts.
    pub backoff: Backoff,
    /// What to do with a stream that keeps failing.
    pub on_failure: FailurePolicy,
    /// How often a stats summary is logged through `tracing`.
    pub stats_interval: Duration,
    /// Handle only the streams of this partition (see [`join_group`]); `None` for all.
    pub partition: Option<Partition>,
}

impl PipelineConfig {
    /// Defaults for `group` reading every event.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            filter: Filter::all(),
            batch_size: 500,
            max_pending_batches: 8,
            max_concurrent_streams: 16,
            checkpoint_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(500),
            backoff: Backoff::default(),
            on_failure: FailurePolicy::Retry,
            stats_interval: Duration::from_secs(60),
            partition: None,
        }
    }

    /// Reads only `filter`'s events.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the failure policy.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Sets the retry backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The checkpoint's source name: `all`, or the categories and event types read, and
    /// `#index/count` for a partition.
    pub fn source(&self) -> String {
        let mut parts = Vec::new();
        if !self.filter.categories.is_empty() {
            parts.push(format!("categories={}", self.filter.categories.join(",")));
        }
        if !self.filter.event_types.is_empty() {
            parts.push(format!("types={}", self.filter.event_types.join(",")));
        }
        let base = if parts.is_empty() {
            "all".into()
        } else {
            parts.join(";")
        };
        match self.partition {
            Some(p) => format!("{base}#{}/{}", p.index, p.count),
            None => base,
        }
    }
}

/// Why a pipeline stopped on its own.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A stream failed `attempts` times under [`FailurePolicy::Stop`].
    #[error("stream {stream} failed {attempts} times: {message}")]
    Handler {
        /// The stream.
        stream: StreamName,
        /// Consecutive failures.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The store or checkpoint store failed.
    #[error("store: {0}")]
    Store(#[from] annals::Error),
}

/// A running pipeline.
pub struct Running {
    stats: watch::Receiver<Stats>,
    poke: Arc<Notify>,
    stop: Arc<Notify>,
    store: Arc<dyn EventStore>,
    reads: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), PipelineError>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// Starts a pipeline for `handler` over `store`, resuming from the group's checkpoint in
/// `checkpoints`. The feed is read through [`annals::Feed`] with the configured filter and
/// partition (pushed into the store's read, so a partition's pipeline reads only its own
/// streams' events).
pub fn spawn(
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    handler: Arc<dyn Handler>,
    config: PipelineConfig,
) -> Running {
    let (stats_tx, stats) = watch::channel(Stats::default());
    let stop = Arc::new(Notify::new());
    let mut filter = config.filter.clone();
    filter.partition = config.partition.or(filter.partition);
    let options = FeedOptions::follow(filter, config.poll_interval)
        .page_size(config.batch_size)
        .retry(Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        ));
    // The feed starts at the checkpoint, which is only known once the task has loaded it;
    // its read counter and waker exist from now on, for `await_idle`.
    let feed_store = Arc::clone(&store);
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let poke = Arc::new(Notify::new());
    let task = {
        let (reads, poke, stop) = (Arc::clone(&reads), Arc::clone(&poke), Arc::clone(&stop));
        tokio::spawn(async move {
            let source = config.source();
            // A store that fails for a while (a lost connection, a leader election) is
            // asked again, as the feed's reads are, until it answers or the pipeline is
            // stopped.
            let mut delays = options.retry.delays();
            let mut attempt = 0u32;
            let start = loop {
                attempt += 1;
                match checkpoints.load(&config.group, &source).await {
                    Ok(p) => break p.unwrap_or(Position::START),
                    Err(e @ annals::Error::Backend { .. }) => {
                        let delay = delays.next().unwrap_or(options.retry.max);
                        tracing::warn!(
                            group = %config.group,
                            error = %annals::error_chain(&e),
                            attempt,
                            retry_in = ?delay,
                            "loading the checkpoint failed; retrying"
                        );
                        tokio::select! {
                            _ = stop.notified() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(e) => {
                        let e = PipelineError::from(e);
                        stats_tx.send_modify(|s| s.stopped = Some(e.clone()));
                        return Err(e);
                    }
                }
            };
            let pages = Feed::new(feed_store, start, options)
                .with_counters(reads, poke)
                .pages();
            scheduler::run(scheduler::Parts {
                pages,
                checkpoints,
                handler,
                config,
                start,
                stats: stats_tx,
                stop,
            })
            .await
        })
    };
    Running {
        stats,
        poke,
        stop,
        store,
        reads,
        task,
    }
}

impl Running {
    pub(crate) fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The latest stats.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// The stats as they are published (for a page or a monitor that outlives this
    /// handle's borrow).
    pub fn stats_receiver(&self) -> watch::Receiver<Stats> {
        self.stats.clone()
    }

    /// Waits until every event appended before this call has been handled, skipped or
    /// parked (no sleeping: it waits for the pipeline to report it). Returns the pipeline's
    /// error if it stops first.
    pub async fn await_idle(&mut self) -> Result<(), PipelineError> {
        self.store.await_visible().await?;
        // A read that starts after this point sees everything appended before the call.
        let target = self.reads.load(std::sync::atomic::Ordering::SeqCst) + 1;
        self.poke.notify_one();
        let mut stats = self.stats.clone();
        loop {
            {
                let s = stats.borrow_and_update();
                if let Some(e) = &s.stopped {
                    return Err(e.clone());
                }
                if s.caught_up_read >= target && s.idle {
                    return Ok(());
                }
            }
            if stats.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Stops reading, waits for the handlers in flight, commits the checkpoint and ends.
    pub async fn stop(self) -> Result<(), PipelineError> {
        self.stop.notify_one();
        self.task.await.unwrap_or_else(|e| {
            Err(PipelineError::Store(annals::Error::backend(
                "reactor",
                e.to_string(),
            )))
        })
    }

    /// Waits for the pipeline to end on its own (an error under the stop policy).
    pub async fn join(self) -> Result<(), PipelineError> {
        self.task.await.unwrap_or_else(|e| {
            Err(PipelineError::Store(annals::Error::backend(
                "reactor",
                e.to_string(),
            )))
        })
    }
}

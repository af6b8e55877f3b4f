//! The one feed reader: pages of [`EventStore::read_all`] from a position, with a filter,
//! retried with one backoff policy.
//!
//! Every walk over the feed goes through [`Feed`]: subscriptions, the reactor's reader,
//! the CLI's `dump`, `tail`, `stats` and `sync`, the benches and the testkit. A feed either
//! stops at the head ([`FeedOptions::to_end`]) or follows it ([`FeedOptions::follow`]),
//! waiting for the store's change signal (or polling) once it has caught up.
//!
//! A backend error (`Error::Backend`: a lost connection, a restarted server, a row that
//! cannot be read) is logged at WARN with its cause chain and retried from the same
//! position after a delay of [`Backoff`] (exponential with jitter, from the `backon`
//! crate): a feed that follows retries forever; one that stops at the head retries only
//! errors its store marked transient ([`Error::is_transient`]), gives up after
//! [`FeedOptions::attempts`] tries and yields the error. Any other error (an invalid
//! filter) is yielded at once and ends the feed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Notify;

use crate::store::{EventStore, Filter};
use crate::{Error, Position, RecordedEvent, Result};

/// Delays between the attempts of something that fails: after the `n`-th failure a random
/// delay in `[d, 2d)` where `d = min(max, initial * 2^(n-1))` (so concurrent failures spread
/// out). The one retry policy of the workspace (the feed reader and the reactor's failing
/// streams use it), built on the `backon` crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (before jitter).
    pub initial: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The shortest delay after the `attempt`-th consecutive failure (1-based).
    pub fn floor(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.initial
            .saturating_mul(factor)
            .min(self.max.max(self.initial))
    }

    /// The delays, one per failure, without end: an iterator that can be kept beside the
    /// thing that fails.
    pub fn delays(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max.max(self.initial))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// How a [`Feed`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOptions {
    /// Which events.
    pub filter: Filter,
    /// Events per read-all page.
    pub page_size: usize,
    /// Once caught up, wait for new events (polling at this interval when no change signal
    /// comes) instead of ending.
    pub follow: Option<Duration>,
    /// Delays between the attempts of a failing read.
    pub retry: Backoff,
    /// Tries of one read failing with a transient error before the error is yielded, when
    /// not following (a following feed retries backend errors forever; one that does not
    /// yields a non-transient error at once).
    pub attempts: u32,
}

/// The delays between attempts of a failing read of the feed or of a followed stream.
pub(crate) fn read_retry() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

impl FeedOptions {
    /// Reads to the head as it is when reached, then ends.
    pub fn to_end(filter: Filter) -> Self {
        Self {
            filter,
            page_size: 1000,
            follow: None,
            retry: read_retry(),
            attempts: 5,
        }
    }

    /// Reads to the head, then follows it, polling every `poll` when no change signal comes.
    pub fn follow(filter: Filter, poll: Duration) -> Self {
        Self {
            follow: Some(poll),
            ..Self::to_end(filter)
        }
    }

    /// Sets the events per page.
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// Sets the retry delays.
    pub fn retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }
}

/// One page read from the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// Matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the feed goes on from: at or after the last event, past what the read scanned.
    pub next: Position,
    /// The read reached the head.
    pub end: bool,
    /// The number of the read that returned this page (see [`Feed::reads`]).
    pub read: u64,
}

/// A reader of a store's feed. Make one with [`Feed::new`], keep [`Feed::reads`] or
/// [`Feed::waker`] if needed, then turn it into a stream of pages with [`Feed::pages`] or
/// of events with [`Feed::events`].
pub struct Feed<S: ?Sized> {
    store: Arc<S>,
    from: Position,
    options: FeedOptions,
    reads: Arc<AtomicU64>,
    wake: Arc<Notify>,
}

impl<S: ?Sized> std::fmt::Debug for Feed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("from", &self.from)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + ?Sized> Feed<S> {
    /// A reader of `store`'s events after `from`.
    pub fn new(store: Arc<S>, from: Position, options: FeedOptions) -> Self {
        Self {
            store,
            from,
            options,
            reads: Arc::new(AtomicU64::new(0)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Shares the read counter and waker of another feed (one that reads on from where
    /// another stopped, for example after loading a checkpoint).
    pub fn with_counters(mut self, reads: Arc<AtomicU64>, wake: Arc<Notify>) -> Self {
        self.reads = reads;
        self.wake = wake;
        self
    }

    /// The count of reads started so far: a page whose [`FeedPage::read`] is above a value
    /// taken from it came from a read that started after that moment.
    pub fn reads(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reads)
    }

    /// Wakes a following feed that waits at the head, so it reads again at once.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The pages: every read that returns events or moves the position, and every read
    /// that reaches the head (possibly empty, with `end` set). Without `follow`, the stream
    /// ends after the first page that reaches the head.
    pub fn pages(self) -> BoxStream<'static, Result<FeedPage>>
    where
        S: 'static,
    {
        if let Err(e) = self.options.filter.validate() {
            return stream::once(async move { Err(e) }).boxed();
        }
        let changes = self.store.changes();
        let state = State {
            feed: self,
            changes,
            done: false,
            waiting: false,
        };
        stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next_page().await;
            Some((item, st))
        })
        .boxed()
    }

    /// The events, one by one.
    pub fn events(self) -> BoxStream<'static, Result<RecordedEvent>>
    where
        S: 'static,
    {
        self.pages()
            .flat_map(|page| match page {
                Ok(page) => stream::iter(page.events.into_iter().map(Ok)).left_stream(),
                Err(e) => stream::once(async move { Err(e) }).right_stream(),
            })
            .boxed()
    }
}

struct State<S: ?Sized> {
    feed: Feed<S>,
    changes: Option<tokio::sync::watch::Receiver<()>>,
    done: bool,
    /// The last read reached the head: wait for a change before reading again.
    waiting: bool,
}

impl<S: EventStore + ?Sized> State<S> {
    async fn next_page(&mut self) -> Result<FeedPage> {
        loop {
            if self.waiting {
                self.wait().await;
                self.waiting = false;
            }
            if let Some(rx) = self.changes.as_mut() {
                rx.borrow_and_update();
            }
            let page = match self.read().await {
                Ok(page) => page,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            let moved = !page.events.is_empty() || page.next > self.feed.from;
            self.feed.from = self.feed.from.max(page.next);
            let page = FeedPage {
                next: self.feed.from,
                ..page
            };
            if page.end {
                match self.feed.options.follow {
                    Some(_) => self.waiting = true,
                    None => self.done = true,
                }
            }
            if moved || page.end {
                return Ok(page);
            }
        }
    }

    /// One read, retried while it fails with a transient error.
    async fn read(&mut self) -> Result<FeedPage> {
        let f = &self.feed;
        let mut delays = f.options.retry.delays();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let read = f.reads.fetch_add(1, Ordering::SeqCst) + 1;
            match f
                .store
                .read_all(f.from, &f.options.filter, f.options.page_size.max(1))
                .await
            {
                Ok(page) => {
                    return Ok(FeedPage {
                        events: page.events,
                        next: page.next,
                        end: page.end,
                        read,
                    })
                }
                // A feed that follows keeps trying whatever the backend says (someone may
                // repair what a non-transient error names); one that stops at the head
                // retries only what its store marked transient.
                Err(e @ Error::Backend { .. })
                    if f.options.follow.is_some()
                        || (e.is_transient() && attempt < f.options.attempts) =>
                {
                    let delay = delays.next().unwrap_or(f.options.retry.max);
                    tracing::warn!(
                        error = %crate::error_chain(&e),
                        attempt,
                        retry_in = ?delay,
                        from = %f.from,
                        "reading the feed failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait(&mut self) {
        let poll = self
            .feed
            .options
            .follow
            .unwrap_or(Duration::from_millis(500));
        let wake = Arc::clone(&self.feed.wake);
        wait_for_change(&mut self.changes, poll, Some(&wake)).await;
    }
}

/// Waits until the store signals a change (`changes`), `wake` is notified, or `poll`
/// passes. A signal that is gone (its store dropped) is set to `None`: polling from then on.
pub(crate) async fn wait_for_change(
    changes: &mut Option<tokio::sync::watch::Receiver<()>>,
    poll: Duration,
    wake: Option<&Notify>,
) {
    let woken = async {
        match wake {
            Some(wake) => wake.notified().await,
            None => std::future::pending().await,
        }
    };
    let closed = match changes.as_mut() {
        Some(rx) => tokio::select! {
            r = rx.changed() => r.is_err(),
            _ = woken => false,
            _ = tokio::time::sleep(poll) => false,
        },
        None => {
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(poll) => {}
            }
            false
        }
    };
    if closed {
        *changes = None;
    }
}

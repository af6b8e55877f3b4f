//! Subscriptions: catch up from a position, then follow live, as one walk of the feed; or
//! follow one stream from a version ([`subscribe_stream`]).
//!
//! There is no separate live phase to splice onto the catch-up: the subscription is a
//! [`Feed`](crate::Feed) that keeps reading pages after the last position it delivered and,
//! when it reaches the end, waits for the store's change signal (or the poll interval).
//! Because every store's read-all only exposes events below a horizon later commits cannot
//! undercut, this gives no gap and no duplicate by construction.
//!
//! A backend error (a lost connection, a restarted server) does not end a subscription: it
//! is logged and the read is retried with the feed's backoff from the last delivered
//! position. Other errors (an invalid filter) end it after being yielded.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::feed::{read_retry, wait_for_change, Feed, FeedOptions};
use crate::store::{EventStore, ReadStream, SubscribeOptions};
use crate::{Error, Position, RecordedEvent, Result, StreamName, Version};

/// A stream of events: catch-up, then live. Backend errors are retried; other errors are
/// yielded and end it.
pub type Subscription = BoxStream<'static, Result<RecordedEvent>>;

/// Subscribes to the events of `store` after `from` that match `options.filter`.
pub fn subscribe<S: EventStore + ?Sized>(
    store: Arc<S>,
    from: Position,
    options: SubscribeOptions,
) -> Subscription {
    let feed =
        FeedOptions::follow(options.filter, options.poll_interval).page_size(options.batch_size);
    Feed::new(store, from, feed).events()
}

/// Subscribes to one stream from version `from` on (`Version(0)`: from its first event):
/// the events it holds, then each new one as it is written, in version order, each once.
/// Reads take `options.batch_size` events at a time; at the stream's end the subscription
/// waits for the store's change signal, or `options.poll_interval` (writes by other
/// processes). Only events `options.filter` matches are delivered (its event types; a
/// category other than the stream's matches nothing). Events hidden by a deletion, a
/// truncation or retention are passed over as reads pass over them; a soft-deleted stream
/// goes on with the events written after. A backend error is logged and the read retried
/// from the same version; any other (a stream deleted for good:
/// [`Error::StreamDeleted`]) is yielded and ends the subscription.
pub fn subscribe_stream<S: EventStore + ?Sized + 'static>(
    store: Arc<S>,
    stream: StreamName,
    from: Version,
    options: SubscribeOptions,
) -> Subscription {
    if let Err(e) = options.filter.validate() {
        return stream::once(async move { Err(e) }).boxed();
    }
    let changes = store.changes();
    let state = StreamFollower {
        store,
        stream,
        next: from,
        options,
        changes,
        buffered: VecDeque::new(),
    };
    // Ends after the first error it yields.
    stream::try_unfold(state, |mut st| async move {
        let event = st.next_event().await?;
        Ok(Some((event, st)))
    })
    .boxed()
}

/// The state of a [`subscribe_stream`] subscription.
struct StreamFollower<S: ?Sized> {
    store: Arc<S>,
    stream: StreamName,
    /// The version of the next event to read.
    next: Version,
    options: SubscribeOptions,
    changes: Option<tokio::sync::watch::Receiver<()>>,
    buffered: VecDeque<RecordedEvent>,
}

impl<S: EventStore + ?Sized> StreamFollower<S> {
    async fn next_event(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            self.read().await?;
        }
    }

    /// Reads the next events into the buffer (none when the filter takes none of them),
    /// waiting at the end of the stream until there are some.
    async fn read(&mut self) -> Result<()> {
        let retry = read_retry();
        let mut delays = retry.delays();
        let mut attempt = 0u32;
        loop {
            // Taken before the read: a commit after it wakes the wait below.
            if let Some(rx) = self.changes.as_mut() {
                rx.borrow_and_update();
            }
            let options = ReadStream::forward_from(self.next).limit(self.options.batch_size.max(1));
            match self.store.read_stream_vec(&self.stream, options).await {
                Ok(events) => match events.last() {
                    Some(last) => {
                        self.next = Version(last.stream_version + 1);
                        let filter = &self.options.filter;
                        self.buffered
                            .extend(events.into_iter().filter(|e| filter.matches(e)));
                        return Ok(());
                    }
                    None => {
                        wait_for_change(&mut self.changes, self.options.poll_interval, None).await;
                        (attempt, delays) = (0, retry.delays());
                    }
                },
                Err(e @ Error::Backend { .. }) => {
                    attempt += 1;
                    let delay = delays.next().unwrap_or(retry.max);
                    tracing::warn!(
                        error = %crate::error_chain(&e),
                        attempt,
                        retry_in = ?delay,
                        stream = %self.stream,
                        from = %self.next,
                        "reading the stream failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Conveniences over any [`EventStore`].
#[async_trait::async_trait]
pub trait EventStoreExt: EventStore {
    /// Reads a stream into a vector.
    async fn read_stream_vec(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        // Page by page: the first page's vector becomes the result, later pages are moved
        // onto its end in one copy each.
        let mut pages = self.read_stream_pages(stream, options);
        let Some(mut events) = pages.try_next().await? else {
            return Ok(Vec::new());
        };
        while let Some(page) = pages.try_next().await? {
            events.extend(page);
        }
        Ok(events)
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

/// `store.subscribe(...)` on a shared store.
pub trait SubscribeExt {
    /// See [`subscribe`].
    fn subscribe(&self, from: Position, options: SubscribeOptions) -> Subscription;

    /// See [`subscribe_stream`].
    fn subscribe_stream(
        &self,
        stream: StreamName,
        from: Version,
        options: SubscribeOptions,
    ) -> Subscription;
}

impl<S: EventStore + ?Sized> SubscribeExt for Arc<S> {
    fn subscribe(&self, from: Position, options: SubscribeOptions) -> Subscription {
        subscribe(Arc::clone(self), from, options)
    }

    fn subscribe_stream(
        &self,
        stream: StreamName,
        from: Version,
        options: SubscribeOptions,
    ) -> Subscription {
        subscribe_stream(Arc::clone(self), stream, from, options)
    }
}

//! Subscriptions: catch up from a position, then follow live, as one walk of the feed.
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

use std::sync::Arc;

use futures::stream::{BoxStream, TryStreamExt};

use crate::feed::{Feed, FeedOptions};
use crate::store::{EventStore, ReadStream, SubscribeOptions};
use crate::{Position, RecordedEvent, Result, StreamName};

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
}

impl<S: EventStore + ?Sized> SubscribeExt for Arc<S> {
    fn subscribe(&self, from: Position, options: SubscribeOptions) -> Subscription {
        subscribe(Arc::clone(self), from, options)
    }
}

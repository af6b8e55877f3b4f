//! Subscriptions: catch up from a position, then follow live, as one loop over read-all.
//!
//! There is no separate live phase to splice onto the catch-up: the subscription keeps
//! reading pages after the last position it delivered and, when it reaches the end, waits
//! for the store's change signal (or the poll interval). Because every store's read-all
//! only exposes events below a horizon later commits cannot undercut, this gives no gap and
//! no duplicate by construction.
//!
//! A backend error (a lost connection, a restarted server) does not end a subscription: it
//! is logged and the read is retried with backoff (100 ms doubling to 5 s) from the last
//! delivered position. Other errors (an invalid filter) end it after being yielded.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::store::{EventStore, ReadStream, SubscribeOptions};
use crate::{Position, RecordedEvent, Result, StreamName};

const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A stream of events: catch-up, then live. Backend errors are retried; other errors are
/// yielded and end it.
pub type Subscription = BoxStream<'static, Result<RecordedEvent>>;

struct State<S: ?Sized> {
    store: Arc<S>,
    from: Position,
    options: SubscribeOptions,
    buffer: VecDeque<RecordedEvent>,
    changes: Option<tokio::sync::watch::Receiver<()>>,
    failed: bool,
    backoff: std::time::Duration,
}

/// Subscribes to the events of `store` after `from` that match `options.filter`.
pub fn subscribe<S: EventStore + ?Sized>(
    store: Arc<S>,
    from: Position,
    options: SubscribeOptions,
) -> Subscription {
    if let Err(e) = options.filter.validate() {
        return stream::once(async move { Err(e) }).boxed();
    }
    let changes = store.changes();
    let state = State {
        store,
        from,
        options,
        buffer: VecDeque::new(),
        changes,
        failed: false,
        backoff: RETRY_FIRST,
    };
    stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(event) = st.buffer.pop_front() {
                return Some((Ok(event), st));
            }
            if let Some(rx) = st.changes.as_mut() {
                rx.borrow_and_update();
            }
            let page = match st
                .store
                .read_all(st.from, &st.options.filter, st.options.batch_size)
                .await
            {
                Ok(page) => {
                    st.backoff = RETRY_FIRST;
                    page
                }
                Err(e @ crate::Error::Backend { .. }) => {
                    tracing::warn!(error = %e, retry_in = ?st.backoff, "subscription read failed; retrying");
                    tokio::time::sleep(st.backoff).await;
                    st.backoff = (st.backoff * 2).min(RETRY_MAX);
                    continue;
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            };
            st.from = st.from.max(page.next);
            st.buffer.extend(page.events);
            if !st.buffer.is_empty() || !page.end {
                continue;
            }
            let poll = st.options.poll_interval;
            match st.changes.as_mut() {
                Some(rx) => {
                    if let Ok(Err(_closed)) = tokio::time::timeout(poll, rx.changed()).await {
                        st.changes = None;
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
        }
    })
    .boxed()
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
        self.read_stream(stream, options).try_collect().await
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

//! Subscriptions: catch up from a position, then follow live, as one loop over read-all.
//!
//! There is no separate live phase to splice onto the catch-up: the subscription keeps
//! reading pages after the last position it delivered and, when it reaches the end, waits
//! for the store's change signal (or the poll interval). Because every store's read-all
//! only exposes events below a horizon later commits cannot undercut, this gives no gap and
//! no duplicate by construction.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::store::{EventStore, ReadStream, SubscribeOptions};
use crate::{Position, RecordedEvent, Result, StreamName};

/// A stream of events: catch-up, then live. Ends after yielding an error.
pub type Subscription = BoxStream<'static, Result<RecordedEvent>>;

struct State<S: ?Sized> {
    store: Arc<S>,
    from: Position,
    options: SubscribeOptions,
    buffer: VecDeque<RecordedEvent>,
    changes: Option<tokio::sync::watch::Receiver<()>>,
    failed: bool,
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
                Ok(page) => page,
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

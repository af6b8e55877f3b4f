//! A [`Handler`] that keeps a read model: a [`Projector`] applied through a
//! [`ReadModelStore`], exactly once per event, whatever store the events come from.

use std::sync::Arc;

use annals::{
    EventStore, EventStoreExt, Projector, ReadModelStore, ReadStream, RecordedEvent, StreamName,
    Version,
};
use async_trait::async_trait;
use tracing::Instrument;

use crate::{Handler, HandlerError};

/// Keeps `projector`'s rows in `read_model` current from the events of `events`.
///
/// Each call applies a stream's new events and records its progress in one read-model
/// transaction ([`ReadModelStore::apply`]): a redelivered event is skipped, a failing
/// projector rolls back. When the events given start above the recorded progress (the
/// stream was parked, then replayed or skipped while more came), the missing ones are read
/// from the event store first, so the rows never miss an event the store shows; those it
/// no longer shows (deleted, truncated or expired before they were applied) are skipped
/// ([`ReadModelStore::skip_hidden`]).
///
/// Run it with the read model as the pipeline's checkpoint store, so that the checkpoint,
/// the progress and the parked streams live beside the rows (and, on PostgreSQL, whose read-
/// model commits do not wait for the disk, so that the checkpoint's durable commit flushes
/// the applies it passes).
pub struct Project<R, P> {
    events: Arc<dyn EventStore>,
    read_model: Arc<R>,
    projector: Arc<P>,
}

impl<R, P> std::fmt::Debug for Project<R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project").finish_non_exhaustive()
    }
}

impl<R: ReadModelStore, P: Projector<R>> Project<R, P> {
    /// A handler applying `projector` to `read_model` from `events`'s streams. Runs the
    /// projector's setup (creating its tables) first.
    pub async fn new(
        events: Arc<dyn EventStore>,
        read_model: Arc<R>,
        projector: Arc<P>,
    ) -> annals::Result<Self> {
        read_model.setup(&projector).await?;
        Ok(Self {
            events,
            read_model,
            projector,
        })
    }
}

#[async_trait]
impl<R: ReadModelStore, P: Projector<R>> Handler for Project<R, P> {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let span = tracing::debug_span!("annals.project", %stream, events = events.len());
        let next = self
            .read_model
            .apply(&self.projector, stream, events)
            .instrument(span.clone())
            .await?;
        let Some(first) = events.first() else {
            return Ok(next);
        };
        if next.get() >= first.stream_version {
            return Ok(next);
        }
        // Events are missing between the progress and what was given: read them. Those
        // the store no longer shows (deleted, truncated or expired before they were
        // applied) are skipped: the rows are built from the events still shown.
        let mut all: Vec<RecordedEvent> = self
            .events
            .read_stream_vec(
                stream,
                ReadStream::forward_from(next).limit((first.stream_version - next.get()) as usize),
            )
            .await?;
        all.retain(|e| e.stream_version < first.stream_version);
        let shown = all.first().unwrap_or(first).stream_version;
        if shown > next.get() {
            self.read_model
                .skip_hidden(&self.projector, stream, Version(shown))
                .instrument(span.clone())
                .await?;
        }
        all.extend(events.iter().cloned());
        Ok(self
            .read_model
            .apply(&self.projector, stream, &all)
            .instrument(span)
            .await?)
    }
}

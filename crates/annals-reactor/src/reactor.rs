//! Reactors: handlers that answer events with new events.

use std::sync::Arc;

use annals::{EventData, EventStore, ExpectedVersion, RecordedEvent, StreamName, Uuid, Version};
use async_trait::async_trait;

use crate::{Handler, HandlerError};

/// A handler that appends the events `react` derives from each event it is given.
///
/// Every emitted event gets causation id = the triggering event's id and the triggering
/// event's correlation id (or its id, when it has none). Emitted event ids are derived from
/// the triggering event's id, so when a restart delivers an event again its reactions are
/// exact retries of the earlier appends and are not written twice.
#[derive(Debug)]
pub struct Reactor<F> {
    store: Arc<dyn EventStore>,
    react: F,
}

impl<F> Reactor<F>
where
    F: Fn(&RecordedEvent) -> Vec<(StreamName, EventData)> + Send + Sync + 'static,
{
    /// A reactor appending to `store` what `react` returns.
    pub fn new(store: Arc<dyn EventStore>, react: F) -> Self {
        Self { store, react }
    }
}

/// The id of the `index`-th event emitted in reaction to `cause`: stable across retries.
pub fn reaction_id(cause: &RecordedEvent, index: usize) -> Uuid {
    Uuid::new_v5(
        &cause.event_id,
        format!("annals-reaction-{index}").as_bytes(),
    )
}

#[async_trait]
impl<F> Handler for Reactor<F>
where
    F: Fn(&RecordedEvent) -> Vec<(StreamName, EventData)> + Send + Sync + 'static,
{
    async fn handle(
        &self,
        _stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        for cause in events {
            for (index, (target, data)) in (self.react)(cause).into_iter().enumerate() {
                let data = data
                    .with_id(reaction_id(cause, index))
                    .with_causation_id(cause.event_id)
                    .with_correlation_id(cause.correlation_id.unwrap_or(cause.event_id));
                self.store
                    .append(&target, ExpectedVersion::Any, vec![data])
                    .await?;
            }
        }
        Ok(events
            .last()
            .map_or(Version(0), RecordedEvent::next_version))
    }
}

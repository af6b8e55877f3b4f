//! Reactors: handlers that answer events with new events.

use std::sync::Arc;

use annals::{EventData, EventStore, ExpectedVersion, RecordedEvent, StreamName, Uuid, Version};
use async_trait::async_trait;

use crate::{Handler, HandlerError};

/// A handler that appends the events `react` derives from each event it is given.
///
/// Every emitted event gets causation id = the triggering event's id and the triggering
/// event's correlation id (or its id, when it has none), and the triggering event's trace
/// context (see [`annals::trace`]). Emitted event ids are derived from
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

/// `data` carrying `trace` (the cause's: stable across retries, unlike the handler's own
/// span) in its metadata, unless the metadata names a trace or is not a JSON object.
fn with_trace(mut data: EventData, trace: Option<&annals::TraceContext>) -> EventData {
    let Some(trace) = trace else { return data };
    // On the metadata's text, kept as the reaction wrote it.
    if let Some(metadata) = trace.add_to_json(data.metadata.as_deref()) {
        data.metadata = Some(metadata);
    }
    data
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
            let trace = annals::TraceContext::of_event(cause);
            for (index, (target, data)) in (self.react)(cause).into_iter().enumerate() {
                let data = with_trace(data, trace.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_carry_the_cause_trace_in_object_metadata_only() {
        let trace = annals::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .unwrap();
        let plain = with_trace(EventData::new("T", b"{}".to_vec()), Some(&trace));
        let metadata: serde_json::Value =
            serde_json::from_slice(plain.metadata.as_deref().unwrap()).unwrap();
        assert_eq!(metadata["traceparent"], trace.traceparent.as_str());
        let own = EventData::new("T", b"{}".to_vec()).with_metadata(br#"{"a":1}"#.to_vec());
        let own = with_trace(own, Some(&trace));
        let metadata: serde_json::Value =
            serde_json::from_slice(own.metadata.as_deref().unwrap()).unwrap();
        assert_eq!(metadata["a"], 1);
        assert_eq!(metadata["traceparent"], trace.traceparent.as_str());
        let binary = EventData::new("T", b"{}".to_vec()).with_metadata(vec![0xff, 0]);
        assert_eq!(
            with_trace(binary.clone(), Some(&trace)).metadata,
            binary.metadata
        );
        let untraced = EventData::new("T", b"{}".to_vec());
        assert_eq!(with_trace(untraced.clone(), None), untraced);
        // The reaction's metadata is kept as written: member order, numbers past 64 bits,
        // whitespace; a trace it names is its own.
        let exact = EventData::new("T", b"{}".to_vec())
            .with_metadata(b"{ \"z\": 123456789012345678901234567890, \"a\": 0.1 } ".to_vec());
        let exact = with_trace(exact, Some(&trace));
        assert_eq!(
            String::from_utf8(exact.metadata.unwrap()).unwrap(),
            format!(
                r#"{{ "z": 123456789012345678901234567890, "a": 0.1,"traceparent":"{}"}}"#,
                trace.traceparent
            )
        );
        let named = EventData::new("T", b"{}".to_vec())
            .with_metadata(br#"{"traceparent":null,"n":1}"#.to_vec());
        assert_eq!(with_trace(named.clone(), Some(&trace)), named);
        let empty = EventData::new("T", b"{}".to_vec()).with_metadata(b"{ }".to_vec());
        let empty: serde_json::Value =
            serde_json::from_slice(&with_trace(empty, Some(&trace)).metadata.unwrap()).unwrap();
        assert_eq!(empty["traceparent"], trace.traceparent.as_str());
        for not_an_object in [&b"[1]"[..], b"12", b"{\"a\":", b""] {
            let other = EventData::new("T", b"{}".to_vec()).with_metadata(not_an_object.to_vec());
            assert_eq!(with_trace(other.clone(), Some(&trace)), other);
        }
    }
}

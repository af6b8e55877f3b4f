//! Events to append and events as recorded by a store.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, InvalidEvent};
use crate::{Position, StreamName, Timestamp, Version};

/// The largest event accepted by default: data plus metadata, in bytes (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The event type: non-empty, at most [`MAX_EVENT_TYPE_LEN`] bytes, no control characters.
    pub event_type: String,
    /// The body, JSON by default.
    pub data: Vec<u8>,
    /// Optional metadata, JSON by default.
    pub metadata: Option<Vec<u8>>,
    /// Unique across the store; the key of idempotent retries. A UUIDv7 unless given.
    pub event_id: Uuid,
    /// The id shared by everything that follows from one request or process.
    pub correlation_id: Option<Uuid>,
    /// The id of the event or command that caused this one.
    pub causation_id: Option<Uuid>,
}

impl EventData {
    /// An event with a fresh UUIDv7 id and no metadata.
    pub fn new(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            event_type: event_type.into(),
            data: data.into(),
            metadata: None,
            event_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
        }
    }

    /// An event whose data is `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(event_type, serde_json::to_vec(value)?))
    }

    /// Sets the event id (for idempotent retries of a known event).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.event_id = id;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Data plus metadata, in bytes: what the size limit applies to.
    pub fn size(&self) -> usize {
        self.data.len() + self.metadata.as_ref().map_or(0, Vec::len)
    }
}

/// An event as recorded in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its 0-based index in the stream.
    pub stream_version: u64,
    /// Its place in the store-wide order.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: Timestamp,
    /// The event type.
    pub event_type: String,
    /// The body.
    pub data: Vec<u8>,
    /// The metadata, if any.
    pub metadata: Option<Vec<u8>>,
    /// The event id.
    pub event_id: Uuid,
    /// The correlation id, if any.
    pub correlation_id: Option<Uuid>,
    /// The causation id, if any.
    pub causation_id: Option<Uuid>,
}

impl RecordedEvent {
    /// Records `data` as the event at `stream_version` of `stream`.
    pub fn new(
        stream: StreamName,
        stream_version: u64,
        position: Position,
        recorded_at: Timestamp,
        data: EventData,
    ) -> Self {
        Self {
            stream,
            stream_version,
            position,
            recorded_at,
            event_type: data.event_type,
            data: data.data,
            metadata: data.metadata,
            event_id: data.event_id,
            correlation_id: data.correlation_id,
            causation_id: data.causation_id,
        }
    }

    /// The stream version after this event (its index + 1).
    pub fn next_version(&self) -> Version {
        Version(self.stream_version + 1)
    }

    /// Data plus metadata, in bytes.
    pub fn size(&self) -> usize {
        self.data.len() + self.metadata.as_ref().map_or(0, Vec::len)
    }

    /// The event's content, as it would be appended (for copying it to another store).
    pub fn to_data(&self) -> EventData {
        EventData {
            event_type: self.event_type.clone(),
            data: self.data.clone(),
            metadata: self.metadata.clone(),
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
        }
    }

    /// Whether this event has the same content and id as `data` (idempotent retries).
    pub fn same_as(&self, data: &EventData) -> bool {
        self.event_id == data.event_id
            && self.event_type == data.event_type
            && self.data == data.data
            && self.metadata == data.metadata
    }
}

/// Checks events to import (see `EventStore::import`) as [`validate_batch`] checks a batch.
pub fn validate_import(events: &[RecordedEvent], max_event_bytes: usize) -> Result<(), Error> {
    for e in events {
        validate_events(
            &e.stream,
            std::slice::from_ref(&e.to_data()),
            max_event_bytes,
        )?;
    }
    Ok(())
}

/// Batches of at most this many events look for a repeated id by scanning.
const SCAN_IDS: usize = 16;

/// Checks a batch before anything is written: not to a system stream (an id starting with
/// `$`), non-empty, valid event types, sizes within `max_event_bytes`, no event id twice.
/// Every store calls this first.
pub fn validate_batch(
    stream: &StreamName,
    events: &[EventData],
    max_event_bytes: usize,
) -> Result<(), Error> {
    if stream.id().starts_with('$') {
        return Err(Error::ReservedStream {
            stream: stream.clone(),
        });
    }
    validate_events(stream, events, max_event_bytes)
}

/// [`validate_batch`] without the system-stream check (imports copy system streams' events
/// as their source recorded them).
fn validate_events(
    stream: &StreamName,
    events: &[EventData],
    max_event_bytes: usize,
) -> Result<(), Error> {
    if events.is_empty() {
        return Err(Error::EmptyBatch {
            stream: stream.clone(),
        });
    }
    let invalid = |index: usize, reason: InvalidEvent| Error::InvalidEvent {
        stream: stream.clone(),
        index,
        reason,
    };
    // Ids seen so far: a linear scan for small batches, a set for larger ones (a scan of
    // every earlier id would make a batch of n events cost n² comparisons).
    let mut seen = (events.len() > SCAN_IDS).then(|| HashSet::with_capacity(events.len()));
    for (index, e) in events.iter().enumerate() {
        if e.event_type.is_empty() {
            return Err(invalid(index, InvalidEvent::EmptyType));
        }
        if e.event_type.len() > MAX_EVENT_TYPE_LEN {
            return Err(invalid(
                index,
                InvalidEvent::TypeTooLong {
                    len: e.event_type.len(),
                },
            ));
        }
        if e.event_type.chars().any(char::is_control) {
            return Err(invalid(index, InvalidEvent::TypeHasControlChars));
        }
        if e.size() > max_event_bytes {
            return Err(invalid(
                index,
                InvalidEvent::TooLarge {
                    size: e.size(),
                    limit: max_event_bytes,
                },
            ));
        }
        let repeated = match &mut seen {
            Some(seen) => !seen.insert(e.event_id),
            None => events[..index].iter().any(|o| o.event_id == e.event_id),
        };
        if repeated {
            return Err(invalid(index, InvalidEvent::DuplicateIdInBatch(e.event_id)));
        }
    }
    Ok(())
}

/// Checks a multi-stream append before anything is written: each batch as in
/// [`validate_batch`], no stream twice, no event id in two batches.
pub fn validate_many(
    appends: &[crate::store::StreamAppend],
    max_event_bytes: usize,
) -> Result<(), Error> {
    let mut streams = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for a in appends {
        validate_batch(&a.stream, &a.events, max_event_bytes)?;
        if !streams.insert(&a.stream) {
            return Err(Error::DuplicateStreamInBatch {
                stream: a.stream.clone(),
            });
        }
        for (index, e) in a.events.iter().enumerate() {
            if !ids.insert(e.event_id) {
                return Err(Error::InvalidEvent {
                    stream: a.stream.clone(),
                    index,
                    reason: InvalidEvent::DuplicateIdInBatch(e.event_id),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<EventData> {
        (0..n)
            .map(|i| EventData::new("Added", format!("{i}").into_bytes()))
            .collect()
    }

    #[test]
    fn a_repeated_id_is_found_at_its_index_in_small_and_large_batches() {
        let stream = StreamName::new("Cart-1").unwrap();
        for (n, first, again) in [(5, 1, 3), (SCAN_IDS, 0, SCAN_IDS - 1), (5_000, 17, 4_321)] {
            let mut events = batch(n);
            assert!(validate_batch(&stream, &events, DEFAULT_MAX_EVENT_BYTES).is_ok());
            events[again].event_id = events[first].event_id;
            match validate_batch(&stream, &events, DEFAULT_MAX_EVENT_BYTES) {
                Err(Error::InvalidEvent {
                    index,
                    reason: InvalidEvent::DuplicateIdInBatch(id),
                    ..
                }) => {
                    assert_eq!(index, again, "batch of {n}");
                    assert_eq!(id, events[first].event_id);
                }
                other => panic!("batch of {n}: {other:?}"),
            }
        }
    }
}

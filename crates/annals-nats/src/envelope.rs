//! One event as one JetStream message body: a small binary envelope around the data, so
//! any bytes (types, metadata, data) pass unchanged and headers carry only ASCII.
//!
//! Layout: format `1`; stream version (u64); the version its append began at (u64);
//! recorded at (i64 µs); event id (16); flags (metadata, correlation, causation); type
//! length (u16) and type; then, as flagged, metadata length (u32) and metadata, correlation
//! id (16), causation id (16); the data is the rest. Integers are big-endian.

use annals::{EventData, RecordedEvent, StreamName, Timestamp, Uuid};

const FORMAT: u8 = 1;

/// What a message carries besides the event itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    /// The event's stream version.
    pub(crate) version: u64,
    /// The stream version its append began at.
    pub(crate) batch_start: u64,
    /// When it was recorded.
    pub(crate) recorded_at: Timestamp,
}

pub(crate) fn encode(event: &EventData, place: Place) -> Vec<u8> {
    let meta = event.metadata.as_deref();
    let mut out = Vec::with_capacity(64 + event.event_type.len() + event.data.len());
    out.push(FORMAT);
    out.extend_from_slice(&place.version.to_be_bytes());
    out.extend_from_slice(&place.batch_start.to_be_bytes());
    out.extend_from_slice(&place.recorded_at.unix_micros().to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    let flags = u8::from(meta.is_some())
        | (u8::from(event.correlation_id.is_some()) << 1)
        | (u8::from(event.causation_id.is_some()) << 2);
    out.push(flags);
    out.extend_from_slice(&(event.event_type.len() as u16).to_be_bytes());
    out.extend_from_slice(event.event_type.as_bytes());
    if let Some(m) = meta {
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    if let Some(id) = event.correlation_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(id) = event.causation_id {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&event.data);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// The event in a message body, with where the message is; `None` when the body is not an
/// envelope this build reads.
pub(crate) fn decode(
    body: &[u8],
    stream: StreamName,
    sequence: u64,
) -> Option<(RecordedEvent, Place)> {
    let mut r = Reader(body);
    if r.array::<1>()? != [FORMAT] {
        return None;
    }
    let version = u64::from_be_bytes(r.array()?);
    let batch_start = u64::from_be_bytes(r.array()?);
    let recorded_at = Timestamp::from_unix_micros(i64::from_be_bytes(r.array()?));
    let event_id = Uuid::from_bytes(r.array()?);
    let [flags] = r.array::<1>()?;
    let type_len = u16::from_be_bytes(r.array()?) as usize;
    let event_type = String::from_utf8(r.take(type_len)?.to_vec()).ok()?;
    let metadata = if flags & 1 != 0 {
        let len = u32::from_be_bytes(r.array()?) as usize;
        Some(r.take(len)?.to_vec())
    } else {
        None
    };
    let correlation_id = if flags & 2 != 0 {
        Some(Uuid::from_bytes(r.array()?))
    } else {
        None
    };
    let causation_id = if flags & 4 != 0 {
        Some(Uuid::from_bytes(r.array()?))
    } else {
        None
    };
    let event = RecordedEvent {
        stream,
        stream_version: version,
        position: annals::backend::position(u128::from(sequence)),
        recorded_at,
        event_type,
        data: r.0.to_vec(),
        metadata,
        event_id,
        correlation_id,
        causation_id,
    };
    Some((
        event,
        Place {
            version,
            batch_start,
            recorded_at,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let mut e = EventData::new("Typé\n'x", b"\x00\xffdata".to_vec())
            .with_metadata(b"{\"m\":1}".to_vec());
        e.correlation_id = Some(Uuid::now_v7());
        let place = Place {
            version: 7,
            batch_start: 5,
            recorded_at: Timestamp::from_unix_micros(-3),
        };
        let body = encode(&e, place);
        let stream = StreamName::new("A-1").unwrap();
        let (r, p) = decode(&body, stream.clone(), 42).unwrap();
        assert_eq!(
            (
                r.event_type,
                r.data,
                r.metadata,
                r.event_id,
                r.correlation_id,
                r.causation_id
            ),
            (
                e.event_type,
                e.data,
                e.metadata,
                e.event_id,
                e.correlation_id,
                None
            )
        );
        assert_eq!(
            (r.stream_version, p.batch_start, r.recorded_at.unix_micros()),
            (7, 5, -3)
        );
        assert_eq!(annals::backend::raw_position(r.position), 42);
        assert!(decode(&body[..10], stream.clone(), 1).is_none());
        assert!(decode(b"not an envelope", stream, 1).is_none());
    }
}

//! One event as one JetStream message body: a small binary envelope around the data, so
//! any bytes (types, metadata, data) pass unchanged and headers carry only ASCII.
//!
//! Layout (format `2`): format byte; stream version (varint); how far into its append the
//! event is, `version - batch_start` (varint); recorded at (i64 µs, big-endian); event id
//! (16); flags (metadata, correlation, causation); type length (varint) and type; then, as
//! flagged, metadata length (varint) and metadata, correlation id (16), causation id (16);
//! the data is the rest. Varints are LEB128 (`integer-encoding`). Format `3` is format `2`
//! without the event id, which the message's `Nats-Msg-Id` header carries (every byte is
//! stored and replicated; the id need not be twice in a message). Format `1` (fixed-width
//! u64 versions and batch start, u16 type length, u32 metadata length) is still read.

use annals::{EventData, RecordedEvent, StreamName, Timestamp, Uuid};
use integer_encoding::VarInt;

const FORMAT: u8 = 2;
const FORMAT_1: u8 = 1;
/// Format 2 with the event id in the `Nats-Msg-Id` header only.
const FORMAT_3: u8 = 3;

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

/// The first byte of a marker's body (never an event format).
const MARKER: u8 = b'M';

/// A marker on a stream's subject, written by a deletion or a truncation in one atomic
/// batch with its system event: the stream's events below `start` are hidden (and then
/// purged), its version is `next`, and a tombstone refuses every later append and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) next: u64,
    pub(crate) start: u64,
    pub(crate) tombstone: bool,
}

pub(crate) fn encode_marker(marker: Marker) -> Vec<u8> {
    let mut out = vec![MARKER];
    varint(&mut out, marker.next);
    varint(&mut out, marker.start);
    out.push(u8::from(marker.tombstone));
    out
}

/// The marker in a message body, if it is one.
pub(crate) fn decode_marker(body: &[u8]) -> Option<Marker> {
    let mut r = Reader(body);
    let [MARKER] = r.array::<1>()? else {
        return None;
    };
    let next = r.varint()?;
    let start = r.varint()?;
    let [tombstone] = r.array::<1>()?;
    (tombstone <= 1 && start <= next && r.0.is_empty()).then_some(Marker {
        next,
        start,
        tombstone: tombstone == 1,
    })
}

fn varint(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 10];
    let len = n.encode_var(&mut buf);
    out.extend_from_slice(&buf[..len]);
}

/// The body of an event's message; `id_in_header` when the message carries the event id as
/// its `Nats-Msg-Id` (format 3), else the body holds it (format 2).
pub(crate) fn encode(event: &EventData, place: Place, id_in_header: bool) -> Vec<u8> {
    let meta = event.metadata.as_deref();
    let mut out = Vec::with_capacity(48 + event.event_type.len() + event.data.len());
    out.push(if id_in_header { FORMAT_3 } else { FORMAT });
    varint(&mut out, place.version);
    varint(&mut out, place.version.saturating_sub(place.batch_start));
    out.extend_from_slice(&place.recorded_at.unix_micros().to_be_bytes());
    if !id_in_header {
        out.extend_from_slice(event.event_id.as_bytes());
    }
    let flags = u8::from(meta.is_some())
        | (u8::from(event.correlation_id.is_some()) << 1)
        | (u8::from(event.causation_id.is_some()) << 2);
    out.push(flags);
    varint(&mut out, event.event_type.len() as u64);
    out.extend_from_slice(event.event_type.as_bytes());
    if let Some(m) = meta {
        varint(&mut out, m.len() as u64);
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

    fn varint(&mut self) -> Option<u64> {
        let (n, len) = u64::decode_var(self.0)?;
        self.0 = &self.0[len..];
        Some(n)
    }

    /// A length: a varint (format 2) or a fixed-width big-endian integer (format 1).
    fn length<const N: usize>(&mut self, format: u8) -> Option<usize> {
        if format == FORMAT_1 {
            let bytes: [u8; N] = self.array()?;
            Some(bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
        } else {
            usize::try_from(self.varint()?).ok()
        }
    }
}

/// The event in a message body (and its `Nats-Msg-Id` header, `msg_id`), with where the
/// message is; `None` when the body is not an envelope this build reads.
pub(crate) fn decode(
    body: &[u8],
    msg_id: Option<&str>,
    stream: StreamName,
    sequence: u64,
) -> Option<(RecordedEvent, Place)> {
    let mut r = Reader(body);
    let [format] = r.array::<1>()?;
    let (version, batch_start) = match format {
        FORMAT | FORMAT_3 => {
            let version = r.varint()?;
            (version, version.checked_sub(r.varint()?)?)
        }
        FORMAT_1 => (
            u64::from_be_bytes(r.array()?),
            u64::from_be_bytes(r.array()?),
        ),
        _ => return None,
    };
    let recorded_at = Timestamp::from_unix_micros(i64::from_be_bytes(r.array()?));
    let event_id = match format {
        FORMAT_3 => crate::send::id_of_msg_id(msg_id?)?,
        _ => Uuid::from_bytes(r.array()?),
    };
    let [flags] = r.array::<1>()?;
    let type_len = r.length::<2>(format)?;
    let event_type = String::from_utf8(r.take(type_len)?.to_vec()).ok()?;
    let metadata = if flags & 1 != 0 {
        let len = r.length::<4>(format)?;
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
        let stream = StreamName::new("A-1").unwrap();
        // Format 3: the id travels in the header, and without it the body is no event.
        let msg_id = crate::send::msg_id(e.event_id);
        let body = encode(&e, place, true);
        assert_eq!(body[0], FORMAT_3);
        assert!(decode_marker(&body).is_none(), "an event is never a marker");
        let (r, _) = decode(&body, Some(&msg_id), stream.clone(), 42).unwrap();
        assert_eq!((r.event_id, r.data), (e.event_id, e.data.clone()));
        assert!(decode(&body, None, stream.clone(), 42).is_none());
        assert!(decode(&body, Some("not an id"), stream.clone(), 42).is_none());
        // Format 2: the body holds the id.
        let body = encode(&e, place, false);
        assert!(decode_marker(&body).is_none(), "an event is never a marker");
        let (r, p) = decode(&body, None, stream.clone(), 42).unwrap();
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
        assert!(decode(&body[..10], None, stream.clone(), 1).is_none());
        // Format 1, as the first releases wrote it, is still read.
        let mut old = vec![1u8];
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&5u64.to_be_bytes());
        old.extend_from_slice(&(-3i64).to_be_bytes());
        old.extend_from_slice(e.event_id.as_bytes());
        old.push(1);
        old.extend_from_slice(&1u16.to_be_bytes());
        old.extend_from_slice(b"T");
        old.extend_from_slice(&2u32.to_be_bytes());
        old.extend_from_slice(b"{}");
        old.extend_from_slice(b"data");
        let (r, p) = decode(&old, None, stream.clone(), 3).unwrap();
        assert_eq!(
            (
                r.stream_version,
                p.batch_start,
                r.event_type.as_str(),
                r.metadata,
                r.data
            ),
            (7, 5, "T", Some(b"{}".to_vec()), b"data".to_vec())
        );
        assert!(decode(b"not an envelope", None, stream.clone(), 1).is_none());
        // Markers are never events, and events never markers.
        let marker = Marker {
            next: 300,
            start: 200,
            tombstone: true,
        };
        let body = encode_marker(marker);
        assert_eq!(decode_marker(&body), Some(marker));
        assert!(decode(&body, None, stream, 1).is_none());
        assert!(decode_marker(&body[..2]).is_none());
    }
}

//! Codecs: between domain events and the events a store records.
//!
//! [`JsonCodec`] maps a serde enum of events: the variant name is the event type and the
//! variant body is the JSON data. Decoding an event whose type is not a variant of the enum
//! yields `Ok(None)` ("not mine": the caller skips it, and it is counted in
//! `annals_codec_skipped_events_total`); a known type whose body does not decode is an
//! error, never silently dropped.
//!
//! Schema evolution: add optional fields (`#[serde(default)]`), rename with
//! `#[serde(alias = "...")]`, or keep the stored contracts as their own enum and map them to
//! the domain events with [`Codec::upcast`].

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

mod tagged;

use crate::error::CodecError;
use crate::trace::TraceContext;
use crate::{EventData, RecordedEvent};

/// What an encoder adds around the event body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodeContext {
    /// The correlation id to record.
    pub correlation_id: Option<Uuid>,
    /// The causation id to record.
    pub causation_id: Option<Uuid>,
    /// Metadata to record (as JSON).
    pub metadata: Option<Value>,
    /// The trace to record in the metadata (see [`crate::trace`]). Deciders fill it from
    /// the span they decide in when it is `None`.
    pub trace: Option<TraceContext>,
}

impl EncodeContext {
    /// The context of an event caused by `cause`: causation = its id, correlation copied
    /// (or its id, when it has none).
    pub fn caused_by(cause: &RecordedEvent) -> Self {
        Self {
            correlation_id: Some(cause.correlation_id.unwrap_or(cause.event_id)),
            causation_id: Some(cause.event_id),
            metadata: None,
            trace: None,
        }
    }

    /// This context, with the trace of the span the caller is in when it names none.
    pub fn with_current_trace(&self) -> Cow<'_, Self> {
        match (&self.trace, TraceContext::current()) {
            (None, Some(trace)) => Cow::Owned(Self {
                trace: Some(trace),
                ..self.clone()
            }),
            _ => Cow::Borrowed(self),
        }
    }

    /// The metadata to record: [`metadata`](Self::metadata) with the trace keys added
    /// (to a JSON object, or as one when there is no metadata).
    pub fn recorded_metadata(&self) -> Option<Cow<'_, Value>> {
        match &self.trace {
            Some(trace) => trace.add_to(self.metadata.clone()).map(Cow::Owned),
            None => self.metadata.as_ref().map(Cow::Borrowed),
        }
    }
}

/// Encodes domain events of type `E` for a store and decodes them back.
pub trait Codec<E>: Send + Sync + 'static {
    /// Encodes `event` (with a fresh event id) in `context`.
    fn encode(&self, event: &E, context: &EncodeContext) -> Result<EventData, CodecError>;

    /// Decodes a recorded event: `Ok(None)` when its type is not one of this codec's.
    fn decode(&self, event: &RecordedEvent) -> Result<Option<E>, CodecError>;

    /// Decodes with this codec, then maps the stored contract to a domain event with `up`
    /// (`None` drops it); encodes domain events through `down`.
    fn upcast<D, Up, Down>(self, up: Up, down: Down) -> Upcast<Self, E, D, Up, Down>
    where
        Self: Sized,
        Up: Fn(E, &RecordedEvent) -> Option<D> + Send + Sync + 'static,
        Down: Fn(&D) -> E + Send + Sync + 'static,
    {
        Upcast {
            inner: self,
            up,
            down,
            _types: PhantomData,
        }
    }
}

/// The serde JSON codec of an enum of events.
#[derive(Debug)]
pub struct JsonCodec<E> {
    variants: &'static [&'static str],
    _event: PhantomData<fn() -> E>,
}

impl<E: Serialize + DeserializeOwned> Default for JsonCodec<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Clone for JsonCodec<E> {
    fn clone(&self) -> Self {
        Self {
            variants: self.variants,
            _event: PhantomData,
        }
    }
}

impl<E: Serialize + DeserializeOwned> JsonCodec<E> {
    /// The codec of `E`.
    ///
    /// # Panics
    ///
    /// When `E` does not deserialize as an externally tagged enum (a programming error,
    /// caught by the first test that builds the codec).
    pub fn new() -> Self {
        let variants = enum_variants::<E>().unwrap_or_else(|| {
            panic!(
                "JsonCodec<{}>: the event type must be an externally tagged serde enum",
                std::any::type_name::<E>()
            )
        });
        Self {
            variants,
            _event: PhantomData,
        }
    }

    /// The event types this codec knows.
    pub fn event_types(&self) -> &'static [&'static str] {
        self.variants
    }
}

impl<E: Serialize + DeserializeOwned + 'static> Codec<E> for JsonCodec<E> {
    fn encode(&self, event: &E, context: &EncodeContext) -> Result<EventData, CodecError> {
        let error = |event_type: &str, message: String| CodecError {
            stream: String::new(),
            stream_version: 0,
            event_type: event_type.to_owned(),
            message,
        };
        let (event_type, data) = match tagged::split(event) {
            Ok(split) => (split.variant.to_owned(), split.body),
            Err(tagged::SplitError::Json(e)) => return Err(error("", e.to_string())),
            // Not written as one variant (a flattened struct variant, a hand-written
            // `Serialize`): taken apart as a `Value`.
            Err(tagged::SplitError::NotOneVariant) => {
                let (event_type, body) = match serde_json::to_value(event) {
                    Ok(Value::Object(map)) if map.len() == 1 => {
                        map.into_iter().next().expect("one entry")
                    }
                    Ok(Value::String(unit)) => (unit, Value::Null),
                    Ok(other) => {
                        return Err(error(
                            "",
                            format!("expected an externally tagged enum, got {other}"),
                        ))
                    }
                    Err(e) => return Err(error("", e.to_string())),
                };
                let data =
                    serde_json::to_vec(&body).map_err(|e| error(&event_type, e.to_string()))?;
                (event_type, data)
            }
        };
        let metadata = match context.recorded_metadata() {
            Some(m) => Some(serde_json::to_vec(&m).map_err(|e| error(&event_type, e.to_string()))?),
            None => None,
        };
        Ok(EventData {
            metadata,
            correlation_id: context.correlation_id,
            causation_id: context.causation_id,
            ..EventData::new(event_type, data)
        })
    }

    fn decode(&self, event: &RecordedEvent) -> Result<Option<E>, CodecError> {
        if !self.variants.contains(&event.event_type.as_str()) {
            metrics::counter!("annals_codec_skipped_events_total", "event_type" => event.event_type.clone())
                .increment(1);
            return Ok(None);
        }
        let error = |message: String| CodecError {
            stream: event.stream.to_string(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            message,
        };
        E::deserialize(tagged::Tagged {
            variant: &event.event_type,
            body: &event.data,
        })
        .map(Some)
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                error(format!("the body is not JSON: {e}"))
            }
            _ => error(e.to_string()),
        })
    }
}

/// A codec that decodes stored contracts `C` and maps them to domain events `D`.
/// Built by [`Codec::upcast`].
#[derive(Debug)]
pub struct Upcast<Inner, C, D, Up, Down> {
    inner: Inner,
    up: Up,
    down: Down,
    _types: PhantomData<fn(C) -> D>,
}

impl<Inner, C, D, Up, Down> Codec<D> for Upcast<Inner, C, D, Up, Down>
where
    Inner: Codec<C>,
    C: 'static,
    D: 'static,
    Up: Fn(C, &RecordedEvent) -> Option<D> + Send + Sync + 'static,
    Down: Fn(&D) -> C + Send + Sync + 'static,
{
    fn encode(&self, event: &D, context: &EncodeContext) -> Result<EventData, CodecError> {
        self.inner.encode(&(self.down)(event), context)
    }

    fn decode(&self, event: &RecordedEvent) -> Result<Option<D>, CodecError> {
        Ok(self
            .inner
            .decode(event)?
            .and_then(|contract| (self.up)(contract, event)))
    }
}

/// The variant names of a serde enum, found by asking its `Deserialize` impl.
fn enum_variants<E: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut grabbed = None;
    let _ = E::deserialize(VariantGrabber(&mut grabbed));
    grabbed
}

struct VariantGrabber<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for VariantGrabber<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(variants);
        Err(de::Error::custom("variants grabbed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Position, StreamName, Timestamp};
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Added { id: u32 },
        Removed(u32),
        Cleared,
    }

    fn recorded(data: EventData) -> RecordedEvent {
        let s = StreamName::new("T-1").unwrap();
        RecordedEvent::new(s, 0, Position::from_raw(1), Timestamp::now(), data)
    }

    #[test]
    fn round_trips_every_variant_shape() {
        let codec = JsonCodec::<Ev>::new();
        assert_eq!(codec.event_types(), ["Added", "Removed", "Cleared"]);
        let ctx = EncodeContext {
            correlation_id: Some(Uuid::nil()),
            ..EncodeContext::default()
        };
        for ev in [Ev::Added { id: 3 }, Ev::Removed(4), Ev::Cleared] {
            let data = codec.encode(&ev, &ctx).unwrap();
            assert_eq!(data.correlation_id, Some(Uuid::nil()));
            assert_eq!(codec.decode(&recorded(data)).unwrap(), Some(ev));
        }
        let data = codec.encode(&Ev::Added { id: 3 }, &ctx).unwrap();
        assert_eq!(data.event_type, "Added");
        assert_eq!(data.data, br#"{"id":3}"#);
    }

    #[test]
    fn unknown_type_is_not_mine_and_bad_body_is_an_error() {
        let codec = JsonCodec::<Ev>::new();
        let other = recorded(EventData::new("Renamed", br#"{}"#.to_vec()));
        assert_eq!(codec.decode(&other).unwrap(), None);
        let bad = recorded(EventData::new("Added", br#"{"id":"x"}"#.to_vec()));
        let err = codec.decode(&bad).unwrap_err();
        assert_eq!(err.event_type, "Added");
        let not_json = recorded(EventData::new("Added", b"{".to_vec()));
        assert!(codec.decode(&not_json).is_err());
    }

    /// Every shape serde derives for an externally tagged enum, with the attributes users
    /// put on events.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Rich {
        #[serde(rename = "order.placed \"v2\"")]
        Placed {
            big: u128,
            low: i128,
            #[serde(skip_serializing_if = "Option::is_none", default)]
            note: Option<String>,
            lines: Vec<(String, f64)>,
            by_id: std::collections::BTreeMap<u64, bool>,
        },
        Maybe(Option<u32>),
        Pair(i64, String),
        Nested(Inner),
        Flat {
            id: u32,
            #[serde(flatten)]
            rest: std::collections::BTreeMap<String, String>,
        },
        Unit,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Inner {
        Number(u64),
        Text(String),
    }

    /// The type and body, as serde_json writes the whole enum value.
    fn expected(ev: &Rich) -> (String, Vec<u8>) {
        match serde_json::to_value(ev) {
            Ok(Value::String(unit)) => (unit, b"null".to_vec()),
            _ => {
                // Taken from the text (a `Value` cannot hold the 128-bit numbers).
                let text = serde_json::to_string(ev).unwrap();
                let members: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
                    serde_json::from_str(&text).unwrap();
                let (k, v) = members.into_iter().next().unwrap();
                (k, v.get().as_bytes().to_vec())
            }
        }
    }

    fn rich(big: u128, low: i128, text: String, x: f64, key: u64) -> Vec<Rich> {
        vec![
            Rich::Placed {
                big,
                low,
                note: (!text.is_empty()).then(|| text.clone()),
                lines: vec![(text.clone(), x)],
                by_id: [(key, true)].into(),
            },
            Rich::Maybe(None),
            Rich::Maybe(Some(key as u32)),
            Rich::Pair(low as i64, text.clone()),
            Rich::Nested(Inner::Number(key)),
            Rich::Nested(Inner::Text(text.clone())),
            Rich::Flat {
                id: 1,
                rest: [("k".to_owned(), text)].into(),
            },
            Rich::Unit,
        ]
    }

    proptest::proptest! {
        /// The body is exactly what serde_json writes for the variant, whatever the values
        /// (integers past 64 bits included), and it decodes back to the same event.
        #[test]
        fn every_shape_is_written_as_serde_json_writes_it_and_read_back(
            big: u128, low: i128, text in ".*", x in -1e300f64..1e300, key: u64,
        ) {
            let codec = JsonCodec::<Rich>::new();
            for ev in rich(big, low, text.clone(), x, key) {
                let data = codec.encode(&ev, &EncodeContext::default()).unwrap();
                let (event_type, body) = expected(&ev);
                proptest::prop_assert_eq!(&data.event_type, &event_type);
                proptest::prop_assert_eq!(&data.data, &body);
                let back = codec.decode(&recorded(data)).unwrap();
                proptest::prop_assert_eq!(back, Some(ev));
            }
        }
    }

    #[test]
    fn bodies_of_the_wrong_shape_are_errors_naming_the_event() {
        let codec = JsonCodec::<Rich>::new();
        for (event_type, body) in [
            ("Unit", &br#"{}"#[..]),
            ("Maybe", br#""x""#),
            ("Pair", br#"[1]"#),
            ("Pair", br#"[1, "a"] [2]"#),
            ("order.placed \"v2\"", br#"{"big": 1}"#),
            ("Nested", br#"[]"#),
            ("Unit", b""),
        ] {
            let e = codec
                .decode(&recorded(EventData::new(event_type, body.to_vec())))
                .unwrap_err();
            assert_eq!(e.event_type, event_type);
            assert_eq!(e.stream, "T-1");
        }
        let e = codec
            .decode(&recorded(EventData::new("Pair", b"[1,".to_vec())))
            .unwrap_err();
        assert!(
            e.message.starts_with("the body is not JSON"),
            "{}",
            e.message
        );
        // Whitespace around a body as another writer left it is fine.
        let ok = codec.decode(&recorded(EventData::new("Pair", b" [1, \"a\"]\n".to_vec())));
        assert_eq!(ok.unwrap(), Some(Rich::Pair(1, "a".into())));
    }
}

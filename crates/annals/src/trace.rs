//! Trace context through events: one OpenTelemetry trace from a request to the events it
//! caused and to the handlers that react to them.
//!
//! A decider records the [W3C trace context](https://www.w3.org/TR/trace-context/) of the
//! span that decided (the `annals.transact` span, inside the caller's request span) in the
//! metadata of the events it writes, as the `traceparent` and `tracestate` keys of the
//! metadata object. A reactor's handler span for those events continues that trace: its
//! parent is the first event's trace context, and the other traces in the same batch are
//! links. Spans become OpenTelemetry spans when the process installs a
//! `tracing-opentelemetry` layer (the `annals` CLI does with `--otlp-endpoint`); without
//! one nothing is recorded and nothing costs more than a lookup.

use std::collections::BTreeMap;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::RecordedEvent;

/// The metadata key of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context: where a span sits in its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-{trace id}-{parent span id}-{flags}`, lowercase hex.
    pub traceparent: String,
    /// Vendor state, passed along as is.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The trace context of `traceparent` (and `tracestate`), or `None` when `traceparent`
    /// is not a valid version-00 W3C header (as a receiver must, an invalid one is
    /// ignored, not an error).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let context = Self {
            traceparent: traceparent.trim().to_ascii_lowercase(),
            tracestate: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 512)
                .map(str::to_owned),
        };
        context.span_context().map(|_| context)
    }

    /// The context of the span the caller is in, if it is recorded by OpenTelemetry.
    pub fn current() -> Option<Self> {
        Self::of_span(&tracing::Span::current())
    }

    /// The context of `span`, if it is recorded by OpenTelemetry.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| Self {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
            tracestate: Some(sc.trace_state().header()).filter(|s| !s.is_empty()),
        })
    }

    /// The trace context recorded in `event`'s metadata, if any (and valid).
    pub fn of_event(event: &RecordedEvent) -> Option<Self> {
        let metadata = event.metadata.as_deref()?;
        // Cheap refusal before parsing: most events carry no trace.
        if !contains(metadata, TRACEPARENT.as_bytes()) {
            return None;
        }
        let Value::Object(map) = serde_json::from_slice::<Value>(metadata).ok()? else {
            return None;
        };
        Self::parse(
            map.get(TRACEPARENT)?.as_str()?,
            map.get(TRACESTATE).and_then(Value::as_str),
        )
    }

    /// The trace id (32 lowercase hex digits).
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// As an OpenTelemetry span context of a remote parent.
    pub fn span_context(&self) -> Option<SpanContext> {
        let parts: Vec<&str> = self.traceparent.split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state,
        );
        context.is_valid().then_some(context)
    }

    /// Makes this context the parent of `span` (a span not yet entered). Returns whether
    /// it took (it does not when OpenTelemetry does not record `span`).
    pub fn set_parent_of(&self, span: &tracing::Span) -> bool {
        let Some(sc) = self.span_context() else {
            return false;
        };
        let parent = opentelemetry::Context::new().with_remote_span_context(sc);
        span.set_parent(parent).is_ok()
    }

    /// Adds `metadata`'s trace keys, unless it already names a trace: `None` becomes an
    /// object holding them; metadata that is not a JSON object is left as it is.
    pub fn add_to(&self, metadata: Option<Value>) -> Option<Value> {
        let mut map = match metadata {
            None => serde_json::Map::new(),
            Some(Value::Object(map)) if map.contains_key(TRACEPARENT) => {
                return Some(Value::Object(map))
            }
            Some(Value::Object(map)) => map,
            Some(other) => return Some(other),
        };
        map.insert(TRACEPARENT.into(), Value::String(self.traceparent.clone()));
        if let Some(state) = &self.tracestate {
            map.insert(TRACESTATE.into(), Value::String(state.clone()));
        }
        Some(Value::Object(map))
    }

    /// As [`add_to`](Self::add_to), on metadata's JSON text, which is kept as written (a
    /// `Value` would round its numbers past 64 bits and sort its members): the new text, or
    /// `None` when the metadata stays as it is (it names a trace, or is not a JSON object).
    pub fn add_to_json(&self, metadata: Option<&[u8]>) -> Option<Vec<u8>> {
        let quoted = |text: &str| Value::String(text.to_owned()).to_string();
        let mut keys = format!("{}:{}", quoted(TRACEPARENT), quoted(&self.traceparent));
        if let Some(state) = &self.tracestate {
            keys += &format!(",{}:{}", quoted(TRACESTATE), quoted(state));
        }
        let Some(bytes) = metadata else {
            return Some(format!("{{{keys}}}").into_bytes());
        };
        let text = std::str::from_utf8(bytes).ok()?;
        let members: BTreeMap<String, serde::de::IgnoredAny> = serde_json::from_str(text).ok()?;
        if members.contains_key(TRACEPARENT) {
            return None;
        }
        // An object's text ends with its `}`: the keys go before it.
        let open = text.trim_end().strip_suffix('}')?.trim_end();
        let separator = if members.is_empty() { "" } else { "," };
        Some(format!("{open}{separator}{keys}}}").into_bytes())
    }
}

/// Makes `span` (not yet entered) continue the traces of `events`: the first traced event's
/// context becomes its parent, the other distinct ones links. Returns how many traced
/// events there were.
pub fn continue_traces(span: &tracing::Span, events: &[RecordedEvent]) -> usize {
    if span.is_disabled() {
        return 0;
    }
    let mut traced = 0;
    let mut parent: Option<SpanContext> = None;
    let mut linked: Vec<SpanContext> = Vec::new();
    for event in events {
        let Some(sc) = TraceContext::of_event(event).and_then(|t| t.span_context()) else {
            continue;
        };
        traced += 1;
        match &parent {
            None => {
                let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
                if span.set_parent(cx).is_err() {
                    return 0;
                }
                parent = Some(sc);
            }
            Some(p) if *p == sc => {}
            Some(_) if linked.contains(&sc) || linked.len() >= 32 => {}
            Some(_) => {
                span.add_link(sc.clone());
                linked.push(sc);
            }
        }
    }
    traced
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_valid_version_00_headers() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(ok, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.span_context().unwrap().is_sampled());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
    }

    /// On text, the same keys as on a `Value` (the state's quotes escaped), the rest of
    /// the text as it was.
    #[test]
    fn adds_to_json_text_as_to_a_value() {
        let t = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("k=\"v\""),
        )
        .unwrap();
        for metadata in [None, Some(&b"{}"[..]), Some(b"{\"a\": [1, 2]}  ")] {
            let text = t.add_to_json(metadata).unwrap();
            let parsed: Value = serde_json::from_slice(&text).unwrap();
            let as_value = t.add_to(metadata.map(|m| serde_json::from_slice(m).unwrap()));
            assert_eq!(Some(parsed), as_value, "{metadata:?}");
        }
        assert_eq!(
            t.add_to_json(Some(b"{\"a\": [1, 2]}  ")).unwrap(),
            br#"{"a": [1, 2],"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"k=\"v\""}"#
        );
    }

    #[test]
    fn adds_to_object_metadata_only() {
        let t = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .unwrap();
        let added = t.add_to(None).unwrap();
        assert_eq!(added[TRACEPARENT], t.traceparent.as_str());
        let kept = t.add_to(Some(serde_json::json!({"user": "u1"}))).unwrap();
        assert_eq!(kept["user"], "u1");
        assert_eq!(kept[TRACEPARENT], t.traceparent.as_str());
        let own = serde_json::json!({ TRACEPARENT: "mine" });
        assert_eq!(t.add_to(Some(own.clone())), Some(own));
        let list = serde_json::json!([1, 2]);
        assert_eq!(t.add_to(Some(list.clone())), Some(list));
    }
}

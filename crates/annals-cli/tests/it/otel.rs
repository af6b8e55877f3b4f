//! OpenTelemetry end to end: `annals serve --otlp-endpoint` sends to an OTLP/HTTP receiver
//! in this test the spans of one request, of the decision and append it caused, and of the
//! projection of the appended event, all in the caller's trace.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::serve::Served;

/// The spans received, in arrival order.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on a free loopback port: decodes each export request's spans.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, Received) {
    let received: Received = Arc::default();
    let into = Arc::clone(&received);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
            let spans = request
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans);
            into.lock().unwrap().extend(spans);
            // An empty ExportTraceServiceResponse.
            Vec::<u8>::new()
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The received spans named `name` in trace `trace`.
fn named<'a>(spans: &'a [Span], trace: &[u8], name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect()
}

#[test]
fn one_trace_from_request_to_append_to_projection() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, received) = receiver(&rt);
    let dir = tempfile::tempdir().unwrap();
    let served =
        Served::start_configured(dir.path(), &["--otlp-endpoint", &collector], |command| {
            // Export every 50 ms instead of every 5 s.
            command.env("OTEL_BSP_SCHEDULE_DELAY", "50");
            command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
            command.env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
            command.env_remove("OTEL_SERVICE_NAME");
        });
    // The caller is in a trace of its own: the request continues it.
    let trace_hex = "5b8efff798038103d269b633813fc60c";
    let caller_span = "eee19b7ec3c1b174";
    let status = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let request = hyper::Request::post(format!("{}/todos", served.base))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{trace_hex}-{caller_span}-01"))
            .body(Full::new(Bytes::from(r#"{"title":"traced"}"#)))
            .unwrap();
        let response = client.request(request).await.expect("a response");
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    });
    assert_eq!(status, 201);
    let trace = hex(trace_hex);
    let wanted = [
        "POST /todos",
        "annals.transact",
        "annals.store",
        "annals.handle",
        "annals.project",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans = received.lock().unwrap().clone();
        let complete = wanted
            .iter()
            .all(|name| !named(&spans, &trace, name).is_empty())
            && named(&spans, &trace, "annals.store")
                .iter()
                .any(|s| attribute(s, "op").as_deref() == Some("append"));
        if complete {
            break spans;
        }
        let names: Vec<_> = spans
            .iter()
            .map(|s| (s.name.clone(), to_hex(&s.trace_id), attribute(s, "op")))
            .collect();
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace_hex} missing after 60 s; received {names:?}"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    };
    // Background reads (the feed's polls) are not traces of their own.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() && s.name == "annals.store")
        .map(|s| attribute(s, "op"))
        .collect();
    assert!(
        roots.is_empty(),
        "untraced store round trips exported: {roots:?}"
    );

    // The request span is the child of the caller's span.
    let request = named(&spans, &trace, "POST /todos")[0];
    assert_eq!(request.parent_span_id, hex(caller_span));
    assert_eq!(attribute(request, "http.route").as_deref(), Some("/todos"));
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("201")
    );
    // The decision inside the request, the append inside the decision.
    let transact = named(&spans, &trace, "annals.transact")
        .into_iter()
        .find(|s| s.parent_span_id == request.span_id)
        .expect("the decision's span is the request's child");
    let append = named(&spans, &trace, "annals.store")
        .into_iter()
        .find(|s| attribute(s, "op").as_deref() == Some("append"))
        .unwrap();
    assert_eq!(
        append.parent_span_id, transact.span_id,
        "the append is the decision's child"
    );
    // The projection's handler continues the trace from the event's metadata: its parent
    // is the decision that wrote the event.
    let handle = named(&spans, &trace, "annals.handle")[0];
    assert_eq!(handle.parent_span_id, transact.span_id);
    assert_eq!(attribute(handle, "group").as_deref(), Some("annals.todos"));
    let project = named(&spans, &trace, "annals.project")[0];
    assert_eq!(project.parent_span_id, handle.span_id);
    served.stop();

    // The event records the decision's trace context in its metadata.
    let out = crate::ops::on(dir.path(), "sqlite://annals.db", &["dump", "--json"]);
    let stdout = crate::succeeded(&out);
    let traceparent = format!("00-{trace_hex}-{}-01", to_hex(&transact.span_id));
    assert!(
        stdout.contains(&traceparent),
        "{traceparent} not in {stdout}"
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Logs on stderr and, when asked, traces exported over OTLP.
//!
//! Traces go out when `--otlp-endpoint` (the collector's base URL, e.g.
//! `http://127.0.0.1:4318`) or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: OTLP over HTTP with protobuf bodies, batched
//! (`OTEL_BSP_*` tune the batches), service name `annals` unless `OTEL_SERVICE_NAME` says
//! otherwise. The spans are Annals' own (`http.request`, `annals.transact`, `annals.store`,
//! `annals.handle`, `annals.project`...), at debug level and above for the Annals crates
//! and the TodoBackend; a debug span (a store round trip) only inside a traced operation.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{span_processor_with_async_runtime, SdkTracerProvider};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// What must be flushed at exit.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (best effort: a collector that is gone is reported
    /// on stderr, never an error of the command).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("annals: exporting the last traces failed: {e}");
            }
        }
    }
}

/// The env variables that also turn the exporter on.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Installs the global subscriber: logs at `default_level` (or `ANNALS_LOG`) on stderr, and
/// the OTLP exporter when an endpoint is given. Must run inside the Tokio runtime (the
/// exporter's batches are sent from a task of it).
pub(crate) fn install(
    default_level: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk, a closed pipe) is
        // dropped: the subscriber must never report it with `eprintln!`, which panics on the
        // same failing stderr, inside whatever request was logging.
        .log_internal_errors(false)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANNALS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        );
    let from_env = ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    let provider = match (otlp_endpoint, from_env) {
        (Some(endpoint), _) => Some(provider(Some(endpoint))?),
        (None, true) => Some(provider(None)?),
        (None, false) => None,
    };
    let traces = provider.as_ref().map(|provider| {
        let spans = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("annals", LevelFilter::DEBUG)
            .with_target("annals_sqlite", LevelFilter::DEBUG)
            .with_target("annals_postgres", LevelFilter::DEBUG)
            .with_target("annals_nats", LevelFilter::DEBUG)
            .with_target("annals_reactor", LevelFilter::DEBUG)
            .with_target("example_todo", LevelFilter::DEBUG);
        // A debug span (a store round trip) is exported inside a traced operation only:
        // the feed's polls and other background reads would each be a trace of their own.
        // A span naming its OpenTelemetry kind (a request served: `http.request`; a handler
        // call: `annals.handle`; a decision: `annals.transact`; at debug so that logs at INFO
        // do not format them) starts a trace of its own.
        let traced_only = tracing_subscriber::filter::DynFilterFn::new(|meta, cx| {
            *meta.level() <= tracing::Level::INFO
                || (meta.is_span() && meta.fields().field("otel.kind").is_some())
                || cx.lookup_current().is_some()
        });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("annals"))
            .with_filter(spans.and(traced_only))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("install the log subscriber")?;
    Ok(Telemetry { provider })
}

fn provider(endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        anyhow::ensure!(
            protocol.trim() == "http/protobuf",
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: annals exports OTLP over HTTP with protobuf bodies only (http/protobuf); point it at the collector's HTTP port (4318)"
        );
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(base) = endpoint {
        let url = url::Url::parse(base).with_context(|| format!("--otlp-endpoint {base}"))?;
        anyhow::ensure!(
            url.scheme() == "http" && url.host().is_some(),
            "--otlp-endpoint {base}: expected the collector's base URL, http://HOST:PORT (OTLP over HTTP, e.g. port 4318; TLS is not supported, use a local collector)"
        );
        // As with OTEL_EXPORTER_OTLP_ENDPOINT, the traces go to /v1/traces under it.
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = exporter.build().context("the OTLP exporter")?;
    let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("annals");
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

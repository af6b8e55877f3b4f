//! Serving the TodoBackend API: the [`web`](crate::web) router over a store, with a cache
//! of folded lists, until a shutdown signal; then the read-model pipeline (when one runs
//! beside it) catches up and commits its checkpoint before the server returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use annals::{Cache, EventStore};
use annals_reactor::Running;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::web::{self, Options};

/// How a server runs.
#[derive(Debug)]
pub struct ServerOptions {
    /// Todo lists kept folded in memory, at most.
    pub cache: usize,
    /// The Prometheus recorder whose metrics `/metrics` renders.
    pub metrics: Option<PrometheusHandle>,
    /// How long a stop waits for the read model to catch up.
    pub drain: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            cache: 10_000,
            metrics: None,
            drain: Duration::from_secs(30),
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Building the service failed.
    #[error("starting the service")]
    Start(#[source] annals::Error),
    /// Accepting or answering connections failed.
    #[error("serving")]
    Serve(#[source] std::io::Error),
    /// The read-model pipeline failed.
    #[error("the read-model pipeline failed")]
    ReadModel(#[source] annals_reactor::PipelineError),
}

/// Serves the API on `listener` until `shutdown` completes; then lets `read_model` (the
/// pipeline keeping the `todos` read model, if any) catch up with everything written
/// before the stop (within `options.drain`; otherwise it resumes on the next start) and
/// stops it.
pub async fn serve(
    store: Arc<dyn EventStore>,
    listener: tokio::net::TcpListener,
    options: ServerOptions,
    read_model: Option<Running>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cache = Arc::new(Cache::new(options.cache.max(1)));
    let service = crate::Service::new(store, Some(cache)).map_err(ServeError::Start)?;
    let base_url = format!(
        "http://{}",
        listener.local_addr().map_err(ServeError::Serve)?
    );
    let router = web::router(
        service,
        Options {
            metrics: options.metrics,
            base_url,
        },
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)?;
    if let Some(mut pipeline) = read_model {
        match tokio::time::timeout(options.drain, pipeline.await_idle()).await {
            Ok(r) => r.map_err(ServeError::ReadModel)?,
            Err(_) => tracing::warn!(
                drain = ?options.drain,
                "the todos read model did not catch up in time; it resumes on the next start"
            ),
        }
        pipeline.stop().await.map_err(ServeError::ReadModel)?;
    }
    Ok(())
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

//! Serving the TodoBackend API: the [`web`] router over a store, with a cache
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
    /// How long a client has to send a request's headers, counted from when the
    /// connection is ready for a request (so it is also how long an idle keep-alive
    /// connection stays open); then the connection is closed.
    pub header_timeout: Duration,
    /// How long a client has to send a request's body; then it gets `408` and the
    /// connection is closed.
    pub body_timeout: Duration,
    /// The Prometheus recorder whose metrics `/metrics` renders.
    pub metrics: Option<PrometheusHandle>,
    /// More pages served under `/admin/` (the admin UI), outside the API's CORS.
    pub admin: Option<axum::Router>,
    /// How long a stop waits for the read model to catch up.
    pub drain: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            cache: 10_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            metrics: None,
            admin: None,
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
/// before the stop (within `options.drain`, and not while its only work left is retrying
/// failing streams; otherwise it resumes on the next start) and stops it.
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
    let router = match options.admin {
        Some(admin) => router
            .route(
                "/admin",
                axum::routing::get(|| async { axum::response::Redirect::permanent("/admin/") }),
            )
            .nest("/admin/", admin),
        None => router,
    };
    let limits = HttpLimits {
        header_timeout: options.header_timeout,
        body_timeout: options.body_timeout,
    };
    serve_http(listener, router, limits, shutdown).await;
    if let Some(mut pipeline) = read_model {
        // Streams failing with nothing else in flight only wait for retries, which a
        // failure that lasts (a full disk, a database away) would make until the drain
        // ends: the stop does not wait for them.
        let mut stats = pipeline.stats_receiver();
        let drain = async {
            tokio::select! {
                idle = pipeline.await_idle() => idle.map(|()| 0),
                failing = stats.wait_for(|s| !s.failing.is_empty() && s.active_streams == 0) => {
                    Ok(failing.map_or(0, |s| s.failing.len()))
                }
            }
        };
        let drained = match tokio::time::timeout(options.drain, drain).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(failing)) => {
                tracing::warn!(
                    failing,
                    "the todos read model is failing on {failing} streams; the stop does not \
                     wait for their retries, and they resume on the next start"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::warn!(
                    drain = ?options.drain,
                    "the todos read model did not catch up in time; it resumes on the next start"
                );
                Ok(())
            }
        };
        // Stopped in any case; a store that cannot be reached now (a database away) leaves
        // the read model where its last checkpoint is, which is no failure of the stop.
        let stopped = pipeline.stop().await;
        for outcome in [drained, stopped] {
            match outcome {
                Err(e) if annals::is_transient(&e) => tracing::warn!(
                    error = %annals::error_chain(&e),
                    "the todos read model could not catch up or record its checkpoint at the \
                     stop; it resumes from its last checkpoint on the next start"
                ),
                other => other.map_err(ServeError::ReadModel)?,
            }
        }
    }
    Ok(())
}

/// The time limits of [`serve_http`].
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// See [`ServerOptions::header_timeout`].
    pub header_timeout: Duration,
    /// See [`ServerOptions::body_timeout`].
    pub body_timeout: Duration,
}

/// Serves `router` over HTTP/1 on `listener` until `shutdown` completes, then waits (at most
/// 30 s) for the requests in flight. A connection that does not send a request's headers
/// within `limits.header_timeout` (also when idle between requests) is closed; a request
/// whose body takes longer than `limits.body_timeout` is answered `408`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower_http::timeout::RequestBodyTimeoutLayer;

    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection =
            builder.serve_connection(TokioIo::new(crate::conn::ErrorBodies::new(stream)), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight 30 s after the stop; closing them");
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: call it before announcing that the server
/// is up, so a stop sent right after the announcement is a graceful one, not the signal's
/// default (the process killed). Must be called within a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers =
            signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
        async move {
            match handlers {
                Ok((mut interrupt, mut term)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no signal handlers: no graceful stop on a signal");
                    // Runs until the process is ended (a signal's default action), rather
                    // than stopping at once.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            if tokio::signal::ctrl_c().await.is_err() {
                tracing::warn!("no Ctrl-C handler: no graceful stop");
                std::future::pending::<()>().await;
            }
        }
    }
}

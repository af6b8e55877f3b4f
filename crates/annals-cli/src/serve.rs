//! `annals serve`: the TodoBackend API (`example_todo::web`) over the chosen store, with a
//! cache of folded lists, the `todos` read model kept current beside it (SQL stores), request
//! logs on stderr and Prometheus metrics at `/metrics`.

use std::sync::Arc;

use annals::Cache;
use anyhow::Context;
use example_todo::web::{self, Options};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::store_url::{Opened, ReadModelDb};

/// How long a stop waits for the read model to catch up.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `annals serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0: any free port; the URL printed tells which).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: String,
    /// Todo lists kept folded in memory, at most.
    #[arg(long, default_value_t = 10_000)]
    pub cache: usize,
}

/// Serves until Ctrl-C or SIGTERM, then lets the read-model pipeline catch up and stops it
/// (committing its checkpoint).
pub async fn serve(
    opened: Opened,
    read_model: Option<ReadModelDb>,
    url: &str,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("install the metrics recorder")?;
    let cache = Arc::new(Cache::new(args.cache.max(1)));
    let service = example_todo::Service::new(Arc::clone(&opened.store), Some(cache))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    if let Some(db) = &read_model {
        if opened.store.backend() == "memory" {
            // memory:// starts empty on every run: the lists a durable read model kept from
            // an earlier run would hide this run's first events behind their progress.
            let rows = crate::todo_view::rows(&*opened.store, db).await?;
            anyhow::ensure!(
                rows.is_empty(),
                "the read model in {} holds {} lists from an earlier run, but memory:// starts empty: their progress would skip this run's events; use a fresh --read-model (or a durable --store)",
                db.describe(),
                rows.len()
            );
        }
    }
    let projector = match &read_model {
        Some(db) => Some(crate::todo_view::spawn(Arc::clone(&opened.store), db).await?),
        None => None,
    };
    let router = web::router(
        service,
        Options {
            metrics: Some(metrics),
            base_url: base.clone(),
        },
    );
    println!(
        "annals serve: TodoBackend API at {base}/todos (store {}, read model {}); Ctrl-C to stop",
        crate::output::redact(url),
        match &read_model {
            Some(db) => format!("todo_view in {}", db.describe()),
            None => "none: memory:// without --read-model".into(),
        }
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped())
        .await
        .context("serving")?;
    if let Some(mut p) = projector {
        // Leave the read model current: everything written before the stop is projected
        // (bounded, so a failing read model cannot hold the process).
        match tokio::time::timeout(DRAIN, p.await_idle()).await {
            Ok(r) => r.context("the read-model pipeline failed")?,
            Err(_) => tracing::warn!(
                "the todos read model did not catch up within {DRAIN:?}; it resumes on the next start"
            ),
        }
        p.stop().await.context("stopping the read-model pipeline")?;
    }
    Ok(())
}

async fn stopped() {
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

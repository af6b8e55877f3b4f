//! `annals admin`: the admin web UI (`annals_admin`) over the store, served by this binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use example_todo::server::{serve_http, shutdown_signal, HttpLimits};

use crate::read_models::AdminReadModels;
use crate::store_url::{Opened, ReadModelDb};

/// `annals admin` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The address to listen on. Anything but a loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub listen: SocketAddr,
    /// The admin token (or `ANNALS_ADMIN_TOKEN`). Without one the pages are read-only and
    /// only served on loopback.
    #[arg(long, env = "ANNALS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Where consumer groups keep their checkpoints, parked streams and leases.
pub(crate) struct Coordination {
    pub(crate) checkpoints: Arc<dyn annals::CheckpointStore>,
    pub(crate) leases: Option<Arc<dyn annals::LeaseStore>>,
}

/// The admin pages' options for this store.
pub(crate) async fn options(
    opened: &Opened,
    read_model: Option<ReadModelDb>,
    leases: Option<Arc<dyn annals::LeaseStore>>,
) -> anyhow::Result<annals_admin::AdminOptions> {
    let (_, _, schema) = super::init::describe(opened).await?;
    Ok(annals_admin::AdminOptions {
        time: crate::output::time,
        schema: Some(schema),
        read_models: read_model.map(|db| {
            Arc::new(AdminReadModels {
                events: Arc::clone(&opened.events),
                db,
            }) as Arc<dyn annals_admin::ReadModels>
        }),
        leases,
        ..annals_admin::AdminOptions::default()
    })
}

impl AdminArgs {
    /// Refuses arguments that cannot be served, before the store is opened.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.listen.ip().is_loopback() || self.token.as_deref().is_some_and(|t| !t.is_empty()),
            "--listen {}: serving the admin pages beyond this machine needs --token (or ANNALS_ADMIN_TOKEN)",
            self.listen
        );
        Ok(())
    }
}

/// Serves the admin pages until Ctrl-C or SIGTERM.
pub(crate) async fn run(
    opened: Opened,
    read_model: Option<ReadModelDb>,
    coordination: Coordination,
    args: AdminArgs,
) -> anyhow::Result<()> {
    args.check()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let options = options(&opened, read_model, coordination.leases).await?;
    let router = annals_admin::router(
        Arc::clone(&opened.events),
        Some(coordination.checkpoints),
        args.token,
        options,
    );
    // Before the announcement: a stop sent right after it is a graceful one.
    let shutdown = shutdown_signal();
    say!(
        "annals admin: pages at {base}/ (store {}); Ctrl-C to stop",
        opened.url
    );
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
    };
    serve_http(listener, router, limits, shutdown).await;
    Ok(())
}

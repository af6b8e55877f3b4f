//! `annals serve`: the TodoBackend API of the todo example (`example_todo::server`) over
//! the chosen store, with the `todos` read model kept current beside it (SQL read-model
//! databases; not with `--no-read-model`, and a later start catches it up from its
//! checkpoint), request logs on stderr and Prometheus metrics at `/metrics`.

use anyhow::Context;
use example_todo::server::{self, ServerOptions};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets of the `/metrics` histograms of durations, in seconds.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of the `/metrics` histograms of group sizes (appends, reads, decisions).
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

use crate::read_models::todos;
use crate::store_url::{Backend, Opened, ReadModelDb};

/// `annals serve` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (port 0: any free port; the URL printed tells which).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: String,
    /// Todo lists kept folded in memory, at most.
    #[arg(long, default_value_t = 10_000)]
    pub cache: usize,
    /// How long a client has to send a request's headers (also how long an idle
    /// connection stays open); then the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Also serve the admin web UI (see `annals admin`) under /admin/.
    #[arg(long)]
    pub admin: bool,
    /// The admin token (or `ANNALS_ADMIN_TOKEN`) for --admin: needed for its actions, and
    /// to serve it on anything but a loopback address.
    #[arg(long, env = "ANNALS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long a client has to send a request's body; then it gets 408.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Serve the API only: do not keep the `todo_view` read model in this process (another
    /// `annals serve` on the same store, or a later start, catches it up from its
    /// checkpoint).
    #[arg(long)]
    pub no_read_model: bool,
}

impl ServeArgs {
    /// Refuses arguments that cannot be served, before the store is opened (or created):
    /// zero timeouts, and `--admin` on an address that is not loopback without a token
    /// (an address given by host name is checked again once bound).
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.header_timeout.is_zero() && !self.body_timeout.is_zero(),
            "--header-timeout and --body-timeout must be more than zero"
        );
        let open = self
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        anyhow::ensure!(
            !(self.admin && open && self.admin_token.as_deref().is_none_or(str::is_empty)),
            "--admin on {}: serving the admin pages beyond this machine needs --admin-token (or ANNALS_ADMIN_TOKEN)",
            self.listen
        );
        Ok(())
    }
}

/// Serves until Ctrl-C or SIGTERM, then lets the read-model pipeline catch up (unless all
/// it has left is retrying failing streams) and stops it (committing its checkpoint).
pub(crate) async fn run(
    opened: Opened,
    read_model: Option<ReadModelDb>,
    coordination: super::admin::Coordination,
    args: ServeArgs,
) -> anyhow::Result<()> {
    args.check()?;
    let metrics = PrometheusBuilder::new()
        // Histograms with buckets (not summaries): aggregated across instances and
        // queried with histogram_quantile, as Prometheus users do.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full("annals_decider_batch_decisions".into()),
            SIZES,
        )?
        .set_buckets_for_metric(
            Matcher::Full("annals_pg_group_commit_appends".into()),
            SIZES,
        )?
        .set_buckets_for_metric(Matcher::Full("annals_pg_grouped_reads".into()), SIZES)?
        .set_buckets_for_metric(
            Matcher::Full("annals_sqlite_group_commit_requests".into()),
            SIZES,
        )?
        .install_recorder()
        .context("install the metrics recorder")?;
    annals::describe_metrics();
    annals_reactor::describe_metrics();
    annals_postgres::describe_metrics();
    annals_sqlite::describe_metrics();
    example_todo::web::describe_metrics();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let admin_token = args.admin_token.filter(|t| !t.is_empty());
    anyhow::ensure!(
        !args.admin || listener.local_addr()?.ip().is_loopback() || admin_token.is_some(),
        "--admin on {}: serving the admin pages beyond this machine needs --admin-token (or ANNALS_ADMIN_TOKEN)",
        args.listen
    );
    let projected = read_model.as_ref().filter(|_| !args.no_read_model);
    if let (Some(db), Backend::Memory(_)) = (projected, &opened.backend) {
        // memory:// starts empty on every run: the lists a durable read model kept from an
        // earlier run would hide this run's first events behind their progress.
        let rows = todos::rows(&*opened.events, db).await?;
        anyhow::ensure!(
            rows.is_empty(),
            "the read model in {} holds {} lists from an earlier run, but memory:// starts empty: their progress would skip this run's events; use a fresh --read-model (or a durable --store)",
            db.describe(),
            rows.len()
        );
    }
    let pipeline = match projected {
        Some(db) => Some(
            todos::spawn(opened.events.clone(), db)
                .await
                .with_context(|| {
                    format!(
                        "the todos read model in {} (--no-read-model serves without it)",
                        db.describe()
                    )
                })?,
        ),
        None => None,
    };
    let admin = match args.admin {
        false => None,
        true => {
            let mut options =
                super::admin::options(&opened, read_model.clone(), coordination.leases).await?;
            options.pipelines = pipeline
                .iter()
                .map(|running| annals_admin::RunningGroup {
                    group: todos::GROUP.into(),
                    stats: running.stats_receiver(),
                })
                .collect();
            Some(annals_admin::router(
                opened.events.clone(),
                Some(coordination.checkpoints),
                admin_token,
                options,
            ))
        }
    };
    // Before the announcement: a stop sent right after it is a graceful one.
    let shutdown = server::shutdown_signal();
    say!(
        "annals serve: TodoBackend API at {base}/todos (store {}, read model {}); Ctrl-C to stop",
        opened.url,
        match &read_model {
            _ if args.no_read_model => "none: --no-read-model".into(),
            Some(db) => format!("todo_view in {}", db.describe()),
            None => "none: memory:// without --read-model".into(),
        }
    );
    let options = ServerOptions {
        cache: args.cache,
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        metrics: Some(metrics),
        admin,
        ..ServerOptions::default()
    };
    server::serve(opened.events, listener, options, pipeline, shutdown).await?;
    Ok(())
}

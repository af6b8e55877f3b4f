//! `annals`: operate, load-test and copy Annals stores.
//!
//! Run `annals --help` (or `cargo run -p annals-cli -- --help`) for the commands.

mod bench;
mod ops;
mod output;
mod parked;
mod serve;
mod store_url;
mod todo_view;

use clap::{Parser, Subcommand};

/// Operate, load-test and copy Annals event stores.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about)]
struct Cli {
    /// The store: `sqlite://PATH` (created if missing; `?synchronous=normal` trades the
    /// last commits on power loss for speed), `postgres://USER@HOST:PORT/DB`
    /// (`?annals_schema=NAME`, default `annals`) or `memory://` (an empty in-process store).
    #[arg(
        long,
        global = true,
        default_value = "sqlite://annals.db",
        env = "ANNALS_STORE"
    )]
    store: String,

    /// Where read models, their checkpoints and parked streams are kept: `sqlite://PATH` or
    /// `postgres://...` (default: the store's own database when it is SQL). Events from any
    /// store can feed a read model in either.
    #[arg(long, global = true, env = "ANNALS_READ_MODEL")]
    read_model: Option<String>,

    /// Print JSON lines instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store, or migrate it to this build's schema.
    Init,
    /// Append one event to a stream.
    Append(ops::AppendArgs),
    /// Read one stream.
    Read(ops::ReadArgs),
    /// Write every event (of some categories, after a position) as JSON lines.
    Dump(ops::FeedArgs),
    /// Follow new events as they are written, until interrupted.
    Tail(ops::TailArgs),
    /// Streams, events and bytes per category; head position; how far behind each
    /// consumer group is.
    Stats,
    /// List, show or move consumer groups' checkpoints.
    #[command(subcommand)]
    Checkpoint(ops::CheckpointCommand),
    /// Copy every event of one store into another, resumably.
    Sync(ops::SyncArgs),
    /// Load-test a store.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Serve the TodoBackend API (todobackend.com) over the store, at --listen.
    Serve(serve::ServeArgs),
    /// Refold a read model's rows built by older code (`todos`: the lists of `annals serve`).
    Rebuild(ops::RebuildArgs),
    /// List, replay or skip streams a consumer group parked after its handler kept failing.
    #[command(subcommand)]
    Parked(parked::ParkedCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The service logs each request; the other commands only warnings.
    let default = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANNALS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("annals: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = output::Output { json: cli.json };
    runtime.block_on(async {
        if let Command::Sync(args) = cli.command {
            return ops::sync(args, &out).await;
        }
        if let Command::Bench(bench) = cli.command {
            if cli.store.starts_with("http://") {
                return bench::run_http(&cli.store, bench).await;
            }
            let opened = store_url::open(&cli.store).await?;
            let read_model =
                store_url::ReadModelDb::choose(&opened, cli.read_model.as_deref()).await?;
            return bench::run(opened, read_model, &cli.store, bench).await;
        }
        let opened = store_url::open(&cli.store).await?;
        let read_model = store_url::ReadModelDb::choose(&opened, cli.read_model.as_deref()).await?;
        let checkpoints = match (&read_model, &cli.read_model) {
            (Some(db), Some(_)) => db.checkpoints(),
            _ => std::sync::Arc::clone(&opened.checkpoints),
        };
        match cli.command {
            Command::Init => ops::init(&opened, &cli.store, &out).await,
            Command::Append(args) => ops::append(&opened.store, args, &out).await,
            Command::Read(args) => ops::read(&opened.store, args, &out).await,
            Command::Dump(args) => ops::dump(&opened.store, args, &out).await,
            Command::Tail(args) => ops::tail(&opened.store, args, &out).await,
            Command::Stats => ops::stats(&opened.store, &checkpoints, &out).await,
            Command::Checkpoint(command) => ops::checkpoint(&checkpoints, command, &out).await,
            Command::Sync(_) => unreachable!("handled above"),
            Command::Bench(_) => unreachable!("handled above"),
            Command::Serve(args) => serve::serve(opened, read_model, &cli.store, args).await,
            Command::Rebuild(args) => {
                ops::rebuild(&opened.store, read_model.as_ref(), args, &out).await
            }
            Command::Parked(command) => {
                parked::parked(
                    &opened.store,
                    read_model.as_ref(),
                    &checkpoints,
                    command,
                    &out,
                )
                .await
            }
        }
    })
}

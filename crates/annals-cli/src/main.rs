//! `annals`: operate, load-test and copy Annals stores.
//!
//! Run `annals --help` (or `cargo run -p annals-cli -- --help`) for the commands.

/// `println!` that returns `output::Unwritten` from the calling function when stdout does
/// not take the line: the command ends as on an error, closing what it opened, and `main`
/// ends it quietly when stdout's reader has gone (see `output::say`).
macro_rules! say {
    () => {
        $crate::output::say(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::output::say(format_args!($($arg)*))?
    };
}

mod bench;
mod commands;
mod output;
mod read_models;
mod store_url;
mod telemetry;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Operate, load-test and copy Annals event stores.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about)]
struct Cli {
    /// The store: `sqlite://PATH` (`?synchronous=normal` trades the last commits on power
    /// loss for speed; `?mode=ro` only reads an existing store),
    /// `postgres://USER@HOST:PORT/DB`
    /// (`?annals_schema=NAME`, default `annals`; `&sslmode=...&sslrootcert=PATH` for TLS),
    /// `nats://HOST:PORT` (`?stream=NAME&replicas=N`; `&tls_ca=PATH` for TLS) or
    /// `memory://` (an empty in-process store). Commands that write events create the
    /// store when missing; the others refuse one that does not exist.
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

    /// Export traces over OTLP/HTTP to this collector (its base URL, e.g.
    /// `http://127.0.0.1:4318`; also on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store, or migrate it to this build's schema.
    Init,
    /// Append one event to a stream.
    Append(commands::append::AppendArgs),
    /// Read one stream.
    Read(commands::read::ReadArgs),
    /// Delete a stream: soft (reads empty, appends continue) or --hard (a tombstone).
    Delete(commands::delete::DeleteArgs),
    /// Hide a stream's events below a version.
    Truncate(commands::delete::TruncateArgs),
    /// Remove for good, in batches and online, the events reads no longer show.
    Scavenge(commands::delete::ScavengeArgs),
    /// How long a category's or stream's events are kept (max age, max count).
    #[command(subcommand)]
    Retention(commands::retention::RetentionCommand),
    /// Write every event (of some categories, after a position) as JSON lines.
    Dump(commands::dump::FeedArgs),
    /// Follow new events as they are written, until interrupted.
    Tail(commands::tail::TailArgs),
    /// Streams, events and bytes per category; head position; how far behind each
    /// consumer group is.
    Stats,
    /// List, show or move consumer groups' checkpoints.
    #[command(subcommand)]
    Checkpoint(commands::checkpoint::CheckpointCommand),
    /// Copy every event of one store into another, resumably.
    Sync(commands::sync::SyncArgs),
    /// Load-test a store.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Serve the TodoBackend API (todobackend.com) over the store, at --listen.
    Serve(commands::serve::ServeArgs),
    /// Serve the admin web UI over the store, at --listen.
    Admin(commands::admin::AdminArgs),
    /// Refold a read model's rows built by older code (`todos`: the lists of `annals serve`).
    Rebuild(commands::rebuild::RebuildArgs),
    /// List, replay or skip streams a consumer group parked after its handler kept failing.
    #[command(subcommand)]
    Parked(commands::parked::ParkedCommand),
    /// Destroy a data subject's key: its personal fields read as forgotten from then on.
    Forget(commands::forget::ForgetArgs),
}

impl Command {
    /// What the command does with its store: only reads it (a SQLite file it cannot write
    /// is then opened read-only), changes one that must exist, or writes events (and
    /// creates the store when missing).
    fn access(&self) -> store_url::Access {
        use commands::retention::RetentionCommand;
        use commands::{checkpoint::CheckpointCommand, parked::ParkedCommand};
        match self {
            Command::Read(_)
            | Command::Dump(_)
            | Command::Tail(_)
            | Command::Stats
            | Command::Checkpoint(CheckpointCommand::List | CheckpointCommand::Show { .. })
            | Command::Parked(ParkedCommand::List { .. })
            | Command::Retention(RetentionCommand::Show) => store_url::Access::Read,
            Command::Init | Command::Append(_) | Command::Serve(_) | Command::Bench(_) => {
                store_url::Access::Write
            }
            _ => store_url::Access::Existing,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The service logs each request; the other commands only warnings.
    let default = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let fail = |e: anyhow::Error| {
        // Each cause once, in one line.
        eprintln!("annals: {}", annals::error_chain(e.as_ref()));
        std::process::ExitCode::FAILURE
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(e.into()),
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        match telemetry::install(default, cli.otlp_endpoint.as_deref()) {
            Ok(telemetry) => telemetry,
            Err(e) => return fail(e),
        }
    };
    let result = run(cli, &runtime);
    telemetry.shutdown();
    // A reader of stdout that went away (`annals dump | head`) ends the command as it ends
    // other Unix tools: quietly, with success, once what it opened is closed.
    let closed = |e: &anyhow::Error| {
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<output::Unwritten>(),
                Some(output::Unwritten::Closed)
            )
        })
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn run(cli: Cli, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use commands::*;
    use store_url::{Opened, ReadModelDb, StoreKind, StoreUrl};
    let out = output::Output { json: cli.json };
    runtime.block_on(async {
        if let Command::Sync(args) = cli.command {
            return sync::run(args, &out).await;
        }
        let url: StoreUrl = cli.store.parse()?;
        let read_model_url = match &cli.read_model {
            Some(text) => Some(text.parse::<StoreUrl>().context("--read-model")?),
            None => None,
        };
        let command = match (cli.command, &url.kind) {
            (Command::Bench(bench), StoreKind::Http(http)) => {
                return bench::run_http(http, bench).await
            }
            (command, _) => command,
        };
        // Arguments that cannot be served are refused before the store is opened (a
        // store the command would create is then not created).
        match &command {
            Command::Serve(args) => args.check()?,
            Command::Admin(args) => args.check()?,
            _ => {}
        }
        let access = command.access();
        let opened = Opened::open(&url, access).await?;
        let read_model = ReadModelDb::choose(&opened, read_model_url.as_ref(), access).await?;
        // Checkpoints live beside the read models when those are elsewhere.
        let (checkpoints, leases) = match (&read_model, &read_model_url) {
            (Some(db), Some(_)) => (db.checkpoints(), db.leases()),
            _ => (opened.checkpoints(), opened.leases()),
        };
        let events = &opened.events;
        match command {
            Command::Init => init::run(&opened, &out).await,
            Command::Append(args) => append::run(events, args, &out).await,
            Command::Read(args) => read::run(events, args, &out).await,
            Command::Delete(args) => delete::delete(events, args, &out).await,
            Command::Truncate(args) => delete::truncate(events, args, &out).await,
            Command::Scavenge(args) => delete::scavenge(events, args, &out).await,
            Command::Retention(command) => retention::run(events, command, &out).await,
            Command::Dump(args) => dump::run(events, args, &out).await,
            Command::Tail(args) => {
                if let store_url::Backend::Sqlite(store) = &opened.backend {
                    if store.reads_snapshot() {
                        anyhow::bail!(
                            "cannot follow {}: this user cannot write its directory, so the file is read as it is now (SQLite needs to create its shared-memory file beside it to see later commits) and new events would never show; `annals dump` shows what it holds",
                            store.config().path.display()
                        );
                    }
                }
                tail::run(events, args, &out).await
            }
            Command::Stats => stats::run(events, &checkpoints, &out).await,
            Command::Checkpoint(command) => checkpoint::run(events, &checkpoints, command, &out).await,
            Command::Sync(_) => unreachable!("handled above"),
            Command::Bench(bench) => bench::run(opened, read_model, bench).await,
            Command::Serve(args) => {
                let coordination = admin::Coordination {
                    checkpoints,
                    leases,
                };
                serve::run(opened, read_model, coordination, args).await
            }
            Command::Admin(args) => {
                let coordination = admin::Coordination {
                    checkpoints,
                    leases,
                };
                admin::run(opened, read_model, coordination, args).await
            }
            Command::Rebuild(args) => rebuild::run(events, read_model.as_ref(), args, &out).await,
            Command::Forget(args) => {
                let given = read_model_url.is_some();
                forget::run(&opened, read_model.as_ref(), given, args, &out).await
            }
            Command::Parked(command) => {
                parked::run(events, read_model.as_ref(), &checkpoints, command, &out).await
            }
        }
    })
}

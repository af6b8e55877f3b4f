//! `annals`: operate, load-test and copy Annals stores.
//!
//! Run `annals --help` (or `cargo run -p annals-cli -- --help`) for the commands.

mod bench;
mod store_url;

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load-test a store.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANNALS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
    runtime.block_on(async {
        let opened = store_url::open(&cli.store).await?;
        match cli.command {
            Command::Bench(bench) => bench::run(opened, &cli.store, bench).await,
        }
    })
}

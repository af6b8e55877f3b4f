//! `annals bench growth`: the Favorite scenario on one client whose stream grows to
//! `--events` events. Every step loads the stream (no cache) and favorites one more SKU;
//! the report gives the step latency per stretch of the stream's growth. Without
//! snapshots a load reads the whole stream, so the cost grows with it; with
//! `--snapshots N` it reads back to the latest snapshot and stays flat.

use std::sync::Arc;
use std::time::Instant;

use annals::{Category, EventStore, JsonCodec, Timestamp};
use anyhow::ensure;
use example_favorites::{favorite, Favorites, CATEGORY};

use super::{latency_histogram, Latency};

/// Arguments of `annals bench growth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the stream grows, in events.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Write a rolling snapshot every N events (0: no snapshots).
    #[arg(long, default_value_t = 0)]
    snapshots: u64,
    /// Report every this many events.
    #[arg(long, default_value_t = 1000)]
    report_every: u64,
}

pub async fn run(store: Arc<dyn EventStore>, url: &str, args: Args) -> anyhow::Result<()> {
    ensure!(args.events > 0, "--events must be at least 1");
    ensure!(args.report_every > 0, "--report-every must be at least 1");
    let mut category = Category::<Favorites>::new(CATEGORY, store, JsonCodec::new())?;
    if args.snapshots > 0 {
        category = category.with_rolling_snapshots(args.snapshots, 1);
    }
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let decider = category.decider(&format!("growth{micros}"))?;
    println!(
        "annals bench growth --store {url}: one Favorites stream to {} events, {}",
        args.events,
        if args.snapshots > 0 {
            format!("rolling snapshots every {} events", args.snapshots)
        } else {
            "no snapshots".to_owned()
        }
    );
    println!("{:>8}  step latency ms (load + decide + append)", "events");
    let mut h = latency_histogram();
    for n in 0..args.events {
        let sku = vec![format!("sku{n}")];
        let started = Instant::now();
        decider.transact(favorite(Timestamp::now(), &sku)).await?;
        h.saturating_record(started.elapsed().as_micros().max(1) as u64);
        if (n + 1) % args.report_every == 0 || n + 1 == args.events {
            let mean = h.mean() / 1000.0;
            println!("{:>8}  mean {mean:.3}  {}", n + 1, Latency::of(&h));
            h.reset();
        }
    }
    let loaded = decider.load().await?;
    ensure!(
        loaded.state.len() as u64 == args.events,
        "the stream holds {} favorites, not {}",
        loaded.state.len(),
        args.events
    );
    Ok(())
}

//! `annals bench growth`: the Favorite scenario on one client whose stream grows to
//! `--events` events. Every step loads the stream (no cache) and toggles one of 100 SKUs
//! (favorites it, or unfavorites it if it is a favorite), so the stream grows by one event
//! per step while the state stays at most 100 favorites; the report gives the step latency
//! per stretch of the stream's growth. Without
//! snapshots a load reads the whole stream, so the cost grows with it; with
//! `--snapshots N` it reads back to the latest snapshot and stays flat.

use std::sync::Arc;
use std::time::Instant;

use annals::{Category, EventStore, JsonCodec, Timestamp};
use anyhow::ensure;
use example_favorites::{Event, Favorite, Favorites, CATEGORY};

use super::{latency_histogram, Latency};

/// Arguments of `annals bench growth`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
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

pub(super) async fn run(store: Arc<dyn EventStore>, url: &str, args: Args) -> anyhow::Result<()> {
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
    say!(
        "annals bench growth --store {url}: one Favorites stream to {} events, {}",
        args.events,
        if args.snapshots > 0 {
            format!("rolling snapshots every {} events", args.snapshots)
        } else {
            "no snapshots".to_owned()
        }
    );
    say!("{:>8}  step latency ms (load + decide + append)", "events");
    let mut h = latency_histogram();
    for n in 0..args.events {
        let sku = format!("sku{}", n % 100);
        let started = Instant::now();
        decider
            .transact(|state| {
                if state.iter().any(|f| f.sku == sku) {
                    vec![Event::Unfavorited { sku: sku.clone() }]
                } else {
                    vec![Event::Favorited(Favorite {
                        sku: sku.clone(),
                        date: Timestamp::now(),
                    })]
                }
            })
            .await?;
        h.saturating_record(started.elapsed().as_micros().max(1) as u64);
        if (n + 1) % args.report_every == 0 || n + 1 == args.events {
            let mean = h.mean() / 1000.0;
            say!("{:>8}  mean {mean:.3}  {}", n + 1, Latency::of(&h));
            h.reset();
        }
    }
    // Each SKU was toggled once per 100 steps: favorites are the SKUs toggled an odd
    // number of times.
    let loaded = decider.load().await?;
    let want = (0..100u64.min(args.events))
        .filter(|k| (args.events - k).div_ceil(100) % 2 == 1)
        .count();
    ensure!(
        loaded.state.len() == want,
        "the stream holds {} favorites, not {want}",
        loaded.state.len()
    );
    Ok(())
}

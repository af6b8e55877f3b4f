//! `annals bench favorite`: the Equinox `Favorite` load test.
//!
//! The `favorite` scenario: each test favorites a fresh SKU for a client drawn at random
//! from a pool, then reads the client's favorites back and checks the SKU is there. Many
//! workers run tests concurrently for a fixed duration; the report gives the rate of tests
//! and their latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{Cache, EventStore};
use anyhow::{bail, ensure};
use hdrhistogram::Histogram;

use super::{latency_histogram, Latency, Rng};

/// Arguments of `annals bench favorite`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run, for example `10s` or `1m`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How many tests run at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// How many distinct clients (streams) the tests spread over.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Cache folded states in process (as Equinox's `-C`).
    #[arg(long)]
    cache: bool,
}

struct WorkerReport {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(store: Arc<dyn EventStore>, url: &str, args: Args) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.clients > 0, "--clients must be at least 1");
    let cache = args.cache.then(|| Arc::new(Cache::new(args.clients)));
    let service = example_favorites::Service::new(store, cache)?;
    let run_id = std::process::id();
    let started = Instant::now();
    let deadline = started + args.duration;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let service = service.clone();
            let clients = args.clients as u64;
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0000_01B3));
                let mut report = WorkerReport {
                    latencies: Histogram::new_with_bounds(1, 60_000_000, 3)
                        .expect("histogram bounds"),
                    errors: 0,
                    first_error: None,
                };
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let client = format!("bench{run_id}_{}", rng.next() % clients);
                    let sku = format!("sku{w}x{n}");
                    n += 1;
                    let t0 = Instant::now();
                    let outcome = async {
                        service
                            .favorite(&client, std::slice::from_ref(&sku))
                            .await?;
                        let list = service.list(&client).await?;
                        anyhow::ensure!(
                            list.iter().any(|f| f.sku == sku),
                            "favorite {sku} of {client} not read back"
                        );
                        Ok(())
                    }
                    .await;
                    let micros = t0.elapsed().as_micros().max(1) as u64;
                    match outcome {
                        Ok(()) => report.latencies.saturating_record(micros),
                        Err(e) => {
                            report.errors += 1;
                            report.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                report
            })
        })
        .collect();
    let mut latencies = latency_histogram();
    let (mut errors, mut first_error) = (0, None);
    for w in workers {
        let report = w.await?;
        latencies.add(&report.latencies)?;
        errors += report.errors;
        first_error = first_error.or(report.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "scenario favorite  store {url}  concurrency {}  clients {}  cache {}  duration {:.1}s",
        args.concurrency,
        args.clients,
        if args.cache { "on" } else { "off" },
        elapsed
    );
    println!(
        "tests {}  errors {}  rate {:.1}/s",
        latencies.len(),
        errors,
        latencies.len() as f64 / elapsed
    );
    println!("latency ms  {}", Latency::of(&latencies));
    if let Some(e) = first_error {
        bail!("{errors} tests failed; the first: {e}");
    }
    Ok(())
}

//! `annals bench catchup` and `annals bench live`: the reactor pipeline.
//!
//! - `catchup` appends a backlog to a fresh category, measures the raw read-all rate over it
//!   (paging `read_all` to the end, nothing else), then runs a pipeline that projects the
//!   backlog into a read model in the same database (per-stream progress and read-model
//!   rows in one transaction, exactly once), and reports its rate as a ratio of the raw one.
//! - `live` runs a pipeline at the head of a fresh category while events are appended at a
//!   steady rate, and reports the latency from the start of each append to its handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{
    CheckpointStore, EventData, EventStore, ExpectedVersion, Feed, FeedOptions, Filter,
    MemoryCheckpoints, Position, ProjectionId, Projector, ProjectorError, ReadModelStore,
    RecordedEvent, SqlTx, StreamName, Version,
};
use annals_reactor::{Handler, HandlerError, PipelineConfig, Project};
use anyhow::{ensure, Context};
use async_trait::async_trait;
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::{latency_histogram, Latency};
use crate::store_url::{Opened, ReadModelDb};

/// Arguments of `annals bench catchup`.
#[derive(Debug, clap::Args)]
pub(crate) struct CatchupArgs {
    /// Events in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Streams the backlog is spread over.
    #[arg(long, default_value_t = 100)]
    streams: u64,
    /// Events per read (the pipeline's batch size and the raw read's page size).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Streams handled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Arguments of `annals bench live`.
#[derive(Debug, clap::Args)]
pub(crate) struct LiveArgs {
    /// How long to append, for example `10s`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Appends per second (one event each).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Streams the appends are spread over.
    #[arg(long, default_value_t = 100)]
    streams: u64,
}

/// A category no earlier run used.
fn fresh_category(prefix: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{prefix}{micros}")
}

fn stream(category: &str, n: u64) -> anyhow::Result<StreamName> {
    Ok(StreamName::new(format!("{category}-{n}"))?)
}

/// The amount an event carries (its data is the decimal number).
fn amount(e: &RecordedEvent) -> i64 {
    std::str::from_utf8(&e.data)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The read model: per stream, the events counted and the sum of their amounts, in table
/// `bench_catchup` of a SQL read model (one upsert per handler call), through the same
/// contract and handler as every read model.
struct Totals;

const PROJECTION: &str = "bench_catchup";

#[async_trait]
impl<R: ReadModelStore> Projector<R> for Totals {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new(PROJECTION, 1)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch(
            "CREATE TABLE IF NOT EXISTS bench_catchup (stream TEXT PRIMARY KEY,
             n BIGINT NOT NULL, total BIGINT NOT NULL)",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        let sum: i64 = events.iter().map(amount).sum();
        tx.execute(
            "INSERT INTO bench_catchup (stream, n, total) VALUES ($1, $2, $3)
             ON CONFLICT (stream) DO UPDATE
             SET n = bench_catchup.n + excluded.n, total = bench_catchup.total + excluded.total",
            &[stream.into(), (events.len() as i64).into(), sum.into()],
        )
        .await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut R::Tx<'_>, stream: &StreamName) -> Result<(), ProjectorError> {
        tx.execute(
            "DELETE FROM bench_catchup WHERE stream = $1",
            &[stream.into()],
        )
        .await?;
        Ok(())
    }
}

/// In memory, for `memory://` without a read model: counts only.
#[derive(Default)]
struct MemoryTotals(Mutex<HashMap<StreamName, (i64, i64)>>);

#[async_trait]
impl Handler for MemoryTotals {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let row = map.entry(stream.clone()).or_default();
        for e in events {
            row.0 += 1;
            row.1 += amount(e);
        }
        Ok(events
            .last()
            .map_or(Version(0), RecordedEvent::next_version))
    }
}

/// Runs the catch-up pipeline into `read_model` until idle; its stats and the (events,
/// sum) counted over `category`.
async fn project_into<R: ReadModelStore>(
    store: &Arc<dyn EventStore>,
    read_model: Arc<R>,
    config: PipelineConfig,
    category: &str,
) -> anyhow::Result<(Duration, annals_reactor::Stats, (i64, i64))> {
    let handler =
        Project::new(Arc::clone(store), Arc::clone(&read_model), Arc::new(Totals)).await?;
    let started = Instant::now();
    let checkpoints = Arc::clone(&read_model) as Arc<dyn CheckpointStore>;
    let mut running = annals_reactor::spawn(store.clone(), checkpoints, Arc::new(handler), config);
    running.await_idle().await?;
    let took = started.elapsed();
    let stats = running.stats();
    running.stop().await?;
    let rows = read_model
        .query(
            "SELECT coalesce(sum(n), 0), coalesce(sum(total), 0) FROM bench_catchup WHERE stream LIKE $1",
            &[format!("{category}-%").into()],
        )
        .await?;
    let get = |i: usize| rows.first().and_then(|r| r[i].as_i64()).unwrap_or(0);
    Ok((took, stats, (get(0), get(1))))
}

async fn project_in_memory(
    store: &Arc<dyn EventStore>,
    config: PipelineConfig,
) -> anyhow::Result<(Duration, annals_reactor::Stats, (i64, i64))> {
    let totals = Arc::new(MemoryTotals::default());
    let started = Instant::now();
    let mut running = annals_reactor::spawn(
        store.clone(),
        Arc::new(MemoryCheckpoints::new()),
        totals.clone(),
        config,
    );
    running.await_idle().await?;
    let took = started.elapsed();
    let stats = running.stats();
    running.stop().await?;
    let map = totals.0.lock().unwrap_or_else(|p| p.into_inner());
    let counted = map.values().fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
    Ok((took, stats, counted))
}

fn checkpoints(opened: &Opened) -> Arc<dyn CheckpointStore> {
    opened.checkpoints()
}

/// Appends `events` events (100 per append) over `streams` streams of `category` from 8
/// writers; returns the sum of their amounts.
async fn seed(
    store: &Arc<dyn EventStore>,
    category: &str,
    events: u64,
    streams: u64,
) -> anyhow::Result<i64> {
    const PER_APPEND: u64 = 100;
    let appends = events.div_ceil(PER_APPEND);
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (store, next, category) = (store.clone(), next.clone(), category.to_owned());
            tokio::spawn(async move {
                let mut sum = 0i64;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= appends {
                        return anyhow::Ok(sum);
                    }
                    let from = k * PER_APPEND;
                    let to = (from + PER_APPEND).min(events);
                    let batch: Vec<EventData> = (from..to)
                        .map(|i| {
                            let a = (i * 7919 % 1000) as i64;
                            sum += a;
                            EventData::new("Amount", a.to_string().into_bytes())
                        })
                        .collect();
                    store
                        .append(
                            &stream(&category, k % streams)?,
                            ExpectedVersion::Any,
                            batch,
                        )
                        .await?;
                }
            })
        })
        .collect();
    let mut sum = 0;
    for w in writers {
        sum += w.await.context("a seeding writer panicked")??;
    }
    Ok(sum)
}

pub(super) async fn catchup(
    opened: Opened,
    read_model: Option<ReadModelDb>,
    url: &str,
    args: CatchupArgs,
) -> anyhow::Result<()> {
    ensure!(args.events > 0, "--events must be at least 1");
    ensure!(args.streams > 0, "--streams must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    let store = opened.events.clone();
    let category = fresh_category("Catchup");
    let filter = Filter::category(&category);
    say!(
        "annals bench catchup --store {url}: {} events over {} streams of {category}, batch {}, {} streams at once",
        args.events, args.streams, args.batch, args.concurrency
    );

    let started = Instant::now();
    let amounts = seed(&store, &category, args.events, args.streams).await?;
    let took = started.elapsed();
    say!(
        "{:<40} {:>10.0} events/s  ({:.1} s)",
        "seed (100-event appends, 8 writers)",
        args.events as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    store.await_visible().await?;

    // The raw rate: page through the feed, nothing else.
    let started = Instant::now();
    let mut read = 0u64;
    let options = FeedOptions::to_end(filter.clone()).page_size(args.batch);
    let mut pages = Feed::new(Arc::clone(&store), Position::START, options).pages();
    while let Some(page) = pages.next().await {
        read += page?.events.len() as u64;
    }
    let raw_took = started.elapsed();
    ensure!(
        read == args.events,
        "the raw read saw {read} events, not {}",
        args.events
    );
    let raw_rate = read as f64 / raw_took.as_secs_f64();
    say!(
        "{:<40} {:>10.0} events/s  ({:.1} s)",
        "raw read_all",
        raw_rate,
        raw_took.as_secs_f64()
    );

    let mut config = PipelineConfig::new(format!("bench-{category}")).filter(filter);
    config.batch_size = args.batch;
    config.max_concurrent_streams = args.concurrency.max(1);
    let (took, stats, (counted, sum)) = match &read_model {
        Some(ReadModelDb::Sqlite(s)) => {
            project_into(&store, Arc::clone(s), config, &category).await?
        }
        Some(ReadModelDb::Postgres(p)) => {
            project_into(&store, Arc::clone(p), config, &category).await?
        }
        None => project_in_memory(&store, config).await?,
    };
    ensure!(
        counted == args.events as i64 && sum == amounts,
        "the read model counted {counted} events summing to {sum}, not {} summing to {amounts}",
        args.events
    );
    let rate = args.events as f64 / took.as_secs_f64();
    say!(
        "{:<40} {:>10.0} events/s  ({:.1} s, {} handler calls, {:.1} events per call, at most {} batches read ahead)",
        "pipeline into the read model",
        rate,
        took.as_secs_f64(),
        stats.handler_calls,
        stats.events_handled as f64 / stats.handler_calls.max(1) as f64,
        stats.max_pending_batches_seen
    );
    say!(
        "catch-up / raw read_all = {:.2}  (read model checked: {counted} events, sum {sum})",
        rate / raw_rate
    );
    Ok(())
}

/// Records, for each event, the time from the start of its append (carried in its data as
/// microseconds since `base`) to its handler.
struct Clock {
    base: Instant,
    latencies: Mutex<Histogram<u64>>,
}

#[async_trait]
impl Handler for Clock {
    async fn handle(
        &self,
        _stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let now = self.base.elapsed().as_micros() as u64;
        let mut h = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            let sent = amount(e) as u64;
            h.saturating_record(now.saturating_sub(sent).max(1));
        }
        Ok(events
            .last()
            .map_or(Version(0), RecordedEvent::next_version))
    }
}

pub(super) async fn live(opened: Opened, url: &str, args: LiveArgs) -> anyhow::Result<()> {
    ensure!(args.rate > 0, "--rate must be at least 1");
    ensure!(args.streams > 0, "--streams must be at least 1");
    let store = opened.events.clone();
    let category = fresh_category("Live");
    let clock = Arc::new(Clock {
        base: Instant::now(),
        latencies: Mutex::new(latency_histogram()),
    });
    let config =
        PipelineConfig::new(format!("bench-{category}")).filter(Filter::category(&category));
    let mut running =
        annals_reactor::spawn(store.clone(), checkpoints(&opened), clock.clone(), config);
    running.await_idle().await?;
    say!(
        "annals bench live --store {url}: {} appends/s of one event over {} streams for {}",
        args.rate,
        args.streams,
        humantime::format_duration(args.duration)
    );
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    let mut pace = tokio::time::interval(Duration::from_secs(1) / args.rate);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = Instant::now() + args.duration;
    let mut appended = 0u64;
    while Instant::now() < deadline {
        pace.tick().await;
        let sent = clock.base.elapsed().as_micros() as u64;
        let s = stream(&category, rng.u64(..args.streams))?;
        let e = EventData::new("Sent", sent.to_string().into_bytes());
        store.append(&s, ExpectedVersion::Any, vec![e]).await?;
        appended += 1;
    }
    running.await_idle().await?;
    running.stop().await?;
    let h = clock.latencies.lock().unwrap_or_else(|p| p.into_inner());
    ensure!(
        h.len() == appended,
        "the handler saw {} events, not the {appended} appended",
        h.len()
    );
    say!(
        "{:<40} {:>8} events  append→handler ms: {}",
        "live",
        appended,
        Latency::of(&h)
    );
    Ok(())
}

//! `annals bench`: load tests. `favorite` is the Equinox scenario over the decider runtime;
//! `append` and `read` measure raw store appends and reads against baselines measured in
//! the same run;
//! `catchup` and `live` measure the reactor pipeline.

mod append;
mod calls;
mod growth;
mod hot;
mod http;
mod nats_baseline;
mod reactor;
mod read;
mod scenario;

use hdrhistogram::Histogram;

/// The load tests.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Bench {
    /// The Equinox Favorite scenario: favorite a fresh SKU, read the favorites back.
    Favorite(scenario::Args),
    /// The Equinox SaveForLater scenario: save a fresh SKU (clearing a full list), read back.
    SaveForLater(scenario::Args),
    /// The TodoBackend scenario: add a todo, read the list back; every 20th test clears.
    Todo(scenario::Args),
    /// Append throughput and latency in three shapes, with raw baselines on the SQL stores.
    Append(append::Args),
    /// Stream and read-all reads: throughput and latency, with a raw query baseline.
    Read(read::Args),
    /// One Favorites stream growing to 10,000 events: load cost with and without snapshots.
    Growth(growth::Args),
    /// Reactor catch-up: project a backlog into a read model, against the raw read-all rate.
    Catchup(reactor::CatchupArgs),
    /// Reactor live latency: from append to handler, at a steady append rate.
    Live(reactor::LiveArgs),
}

/// Runs `bench` on an opened store (read models, for `catchup`, in `read_model`).
pub(crate) async fn run(
    opened: crate::store_url::Opened,
    read_model: Option<crate::store_url::ReadModelDb>,
    bench: Bench,
) -> anyhow::Result<()> {
    use scenario::{Scenario, Target};
    let url = &opened.url.to_string();
    let store = || Target::Store(opened.events.clone(), Some(&opened.backend));
    match bench {
        Bench::Favorite(args) => scenario::run(Scenario::Favorite, store(), url, args, None).await,
        Bench::SaveForLater(args) => {
            scenario::run(Scenario::SaveForLater, store(), url, args, None).await
        }
        Bench::Todo(args) => {
            let read_model = read_model.as_ref();
            scenario::run(Scenario::Todo, store(), url, args, read_model).await
        }
        Bench::Append(args) => append::run(opened, url, args).await,
        Bench::Read(args) => read::run(opened, url, args).await,
        Bench::Growth(args) => growth::run(opened.events, url, args).await,
        Bench::Catchup(args) => reactor::catchup(opened, read_model, url, args).await,
        Bench::Live(args) => reactor::live(opened, url, args).await,
    }
}

/// `annals bench todo --store http://HOST:PORT`: the todo scenario against a running
/// TodoBackend; the other benches need a store.
pub(crate) async fn run_http(url: &url::Url, bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Todo(args) => {
            // The load generator runs on one thread of its own (a current-thread runtime,
            // as wrk's event loops): the server it measures keeps the other cores, and its
            // requests cost no wake-ups across threads.
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(scenario::run(
                        scenario::Scenario::Todo,
                        scenario::Target::Http(url.clone()),
                        url.as_str(),
                        args,
                        None,
                    ))
            })
            .await?
        }
        _ => anyhow::bail!(
            "{url}: over HTTP only `annals bench todo` runs (against annals serve); the other benches need a store URL"
        ),
    }
}

/// A histogram of latencies in microseconds, from 1 µs to 60 s.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds.
pub(crate) struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub avg: f64,
    pub stddev: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            min: ms(h.min()),
            avg: h.mean() / 1000.0,
            stddev: h.stdev() / 1000.0,
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max {:.3}  p99 {:.3}  p95 {:.3}  p50 {:.3}  min {:.3}  avg {:.3}  stddev {:.3}",
            self.max, self.p99, self.p95, self.p50, self.min, self.avg, self.stddev
        )
    }
}

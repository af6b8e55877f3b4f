//! `annals bench favorite | save-for-later | todo`: the Equinox load-test scenarios over the
//! decider runtime.
//!
//! - `favorite`: favorite a fresh SKU for a client, read the favorites back, check it is there.
//! - `save-for-later`: save a fresh SKU (clearing the list first when it is full), read the
//!   list back, check it is there.
//! - `todo`: add a todo with a fresh title, read the list back, check it is there; every
//!   20th test of a worker clears the list (an origin: loads read back only to it).
//!
//! Workers run tests concurrently for `--duration`, as fast as they can or at `--rate` tests
//! per second overall. A line per `--interval` and a final report give outcome counts,
//! latency (max/p99/p95/p50/min/avg/stddev) and the store round trips per test, by
//! operation, counted by a wrapper around the store. On a SQL or NATS store the scenario
//! takes turns with its raw baseline, in [`SLICES`] slices of the duration, so both see the
//! same machine; intervals count the scenario's time only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{Cache, Category, DecideError, EventStore, JsonCodec};
use anyhow::{bail, ensure, Context};
use example_save_for_later::Refused;
use hdrhistogram::Histogram;

use super::append::{add, Baseline, SLICES};
use super::calls::{Calls, OPERATIONS};
use super::http::{Conflict, WebTodos};
use super::{latency_histogram, Latency};
use crate::read_models::todos;
use crate::store_url::ReadModelDb;

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scenario {
    /// Favorites.
    Favorite,
    /// SaveForLater.
    SaveForLater,
    /// TodoBackend lists.
    Todo,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Favorite => "favorite",
            Scenario::SaveForLater => "save-for-later",
            Scenario::Todo => "todo",
        }
    }
}

/// Snapshots for `--snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Snapshots {
    /// None: loads fold the stream (from the last origin, where the domain has one).
    None,
    /// A snapshot event every 50 events; loads read back to the latest.
    Rolling,
    /// A snapshot beside the stream head on every write; a load is one round trip.
    Head,
}

/// Arguments of the scenario benches.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How long to run, for example `10s` or `1m`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How many tests run at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Tests per second, overall (default: as fast as the workers go).
    #[arg(long)]
    rate: Option<f64>,
    /// How many distinct clients (streams) the tests spread over.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Cache folded states in process (as Equinox's `-C`).
    #[arg(long)]
    cache: bool,
    /// Snapshots: `none`, `rolling` (every 50 events) or `head` (at the stream head).
    #[arg(long, value_enum, default_value = "none")]
    snapshots: Snapshots,
    /// How often to print an interval report.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Todo in process only: keep the `todo_view` read model current in this process while
    /// the tests run (in the `--read-model` database, by default the store's own), as
    /// `annals serve` does; so that a run in process does the same work as the server.
    #[arg(long)]
    with_read_model: bool,
}

/// The services of the three domains, over one (counted) store, or the todo lists of a
/// TodoBackend over HTTP.
#[derive(Clone)]
enum Service {
    Favorite(example_favorites::Service),
    SaveForLater(example_save_for_later::Service),
    Todo(example_todo::Service),
    Web(Arc<WebTodos>),
}

/// What a scenario runs against.
pub(super) enum Target<'a> {
    /// A store, in process, and what it runs on (for the raw baseline).
    Store(Arc<dyn EventStore>, Option<&'a crate::store_url::Backend>),
    /// A running TodoBackend at this URL.
    Http(url::Url),
}

fn category<D: annals::Domain>(
    name: &str,
    store: Arc<dyn EventStore>,
    cache: Option<Arc<Cache>>,
    snapshots: Snapshots,
) -> anyhow::Result<Category<D>>
where
    D::Event: serde::Serialize + serde::de::DeserializeOwned,
    D::State: serde::Serialize + serde::de::DeserializeOwned,
{
    let category = Category::<D>::new(name, store, JsonCodec::new())?.with_optional_cache(cache);
    Ok(match snapshots {
        Snapshots::None => category,
        Snapshots::Rolling => category.with_rolling_snapshots(50, 1),
        Snapshots::Head => category.with_head_snapshots(1)?,
    })
}

impl Service {
    fn new(
        scenario: Scenario,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<Cache>>,
        snapshots: Snapshots,
    ) -> anyhow::Result<Self> {
        Ok(match scenario {
            Scenario::Favorite => Service::Favorite(example_favorites::Service::of(category(
                example_favorites::CATEGORY,
                store,
                cache,
                snapshots,
            )?)),
            Scenario::SaveForLater => {
                let c = category(example_save_for_later::CATEGORY, store, cache, snapshots)?
                    .with_origins(|e| matches!(e, example_save_for_later::Event::Cleared));
                Service::SaveForLater(example_save_for_later::Service::of(
                    c,
                    example_save_for_later::DEFAULT_MAX_ITEMS,
                ))
            }
            Scenario::Todo => {
                let c = category(example_todo::CATEGORY, store, cache, snapshots)?
                    .with_origins(example_todo::is_origin);
                Service::Todo(example_todo::Service::of(c))
            }
        })
    }

    /// One test for `client` with the fresh item `item`; `n` is the worker's test number.
    async fn test(&self, client: &str, item: String, n: u64) -> anyhow::Result<()> {
        match self {
            Service::Web(w) => w.test(client, item, n).await?,
            Service::Favorite(s) => {
                s.favorite(client, std::slice::from_ref(&item)).await?;
                let list = s.list(client).await?;
                ensure!(
                    list.iter().any(|f| f.sku == item),
                    "favorite {item} of {client} not read back"
                );
            }
            Service::SaveForLater(s) => {
                let before = annals::Timestamp::now();
                match s.save(client, std::slice::from_ref(&item)).await {
                    Ok(()) => {}
                    Err(DecideError::Domain(Refused::Full { .. })) => {
                        s.remove_all(client).await?;
                        s.save(client, std::slice::from_ref(&item))
                            .await
                            .with_context(|| {
                                format!("{client}: saving into an emptied list failed")
                            })?;
                    }
                    Err(e) => return Err(e.into()),
                }
                let list = s.list(client).await?;
                // Another worker may have cleared the full list since: then everything in
                // it was saved after this test began.
                ensure!(
                    list.iter().any(|i| i.sku == item)
                        || list.iter().all(|i| i.date_saved > before),
                    "saved {item} of {client} not read back"
                );
            }
            Service::Todo(s) => {
                if n % 20 == 19 {
                    s.clear(client).await?;
                }
                let todo = s.add(client, item, None, false).await?;
                let list = s.list(client).await?;
                // Another worker may have cleared the list since: then everything in it was
                // added after this todo.
                ensure!(
                    list.contains(&todo) || list.iter().all(|t| t.id > todo.id),
                    "todo {} of {client} not read back",
                    todo.id
                );
            }
        }
        Ok(())
    }
}

/// What the workers have measured since the last interval report.
struct Tally {
    latencies: Histogram<u64>,
    /// Tests whose decision conflicted on every attempt (contention, not a fault).
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latencies: latency_histogram(),
            conflicts: 0,
            errors: 0,
            first_error: None,
        }
    }
}

pub(super) async fn run(
    scenario: Scenario,
    target: Target<'_>,
    url: &str,
    args: Args,
    read_model: Option<&ReadModelDb>,
) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.clients > 0, "--clients must be at least 1");
    if let Some(rate) = args.rate {
        ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number of tests per second"
        );
    }
    if args.with_read_model {
        ensure!(
            scenario == Scenario::Todo,
            "--with-read-model keeps the todo scenario's read model (todo_view): use it with `annals bench todo`"
        );
        ensure!(
            matches!(target, Target::Store(..)),
            "--with-read-model runs the read model in process: over HTTP it is the server's choice (annals serve [--no-read-model])"
        );
        ensure!(
            read_model.is_some(),
            "--with-read-model needs a SQL database for the read model: memory:// has none; give --read-model sqlite://... or postgres://..."
        );
    }
    let run_id = std::process::id();
    let (service, calls) = match target {
        Target::Store(ref store, _) => {
            let calls = Arc::new(Calls::new(store.clone()));
            let cache = args.cache.then(|| Arc::new(Cache::new(args.clients)));
            let service = Service::new(scenario, calls.clone(), cache, args.snapshots)?;
            (service, Some(calls))
        }
        Target::Http(ref url) => {
            ensure!(
                scenario == Scenario::Todo,
                "over HTTP only the todo scenario runs (annals serve is a TodoBackend)"
            );
            ensure!(
                !args.cache && args.snapshots == Snapshots::None,
                "--cache and --snapshots are the server's choice over HTTP"
            );
            let web = Arc::new(WebTodos::new(url)?);
            web.probe().await?;
            (Service::Web(web), None)
        }
    };
    // The raw baseline: as many clients as the scenario's workers, each writing one row per
    // transaction, as long in all; the scenario and the baseline take turns.
    let baseline = match &target {
        Target::Store(_, Some(backend)) => Baseline::of(backend, &format!("r{run_id}")).await?,
        _ => None,
    };
    // The read model, as `annals serve` keeps it, fed from the store itself (its reads are
    // not the tests' round trips).
    let pipeline = match (&target, read_model) {
        (Target::Store(store, _), Some(db)) if args.with_read_model => {
            Some(todos::spawn(Arc::clone(store), db).await?)
        }
        _ => None,
    };
    let slices = if baseline.is_some() { SLICES } else { 1 };
    let mut raw = None;
    let mut clock = Clock::new(args.interval);
    let mut workers: Vec<Worker> = (0..args.concurrency)
        .map(|w| Worker {
            index: w,
            rng: fastrand::Rng::with_seed(w as u64 + 1),
            n: 0,
        })
        .collect();
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut total = Tally::new();
    let turn = Turn {
        service: &service,
        run_id,
        clients: args.clients as u64,
        rate: args.rate,
        length: args.duration / slices,
    };
    let mut measured = Ok(());
    for part in 0..slices {
        if let Some(b) = &baseline {
            match b.run(1, args.concurrency, turn.length, 100, part).await {
                Ok(r) => add(&mut raw, r),
                Err(e) => {
                    measured = Err(e);
                    break;
                }
            }
        }
        let ran = turn.run(std::mem::take(&mut workers), &tally, &mut total, &mut clock);
        match ran.await {
            Ok(w) => workers = w,
            Err(e) => {
                measured = Err(e);
                break;
            }
        }
    }
    if let Some(b) = baseline {
        b.remove().await;
    }
    // Stopped where the tests left it: what it had not handled yet is not waited for.
    let projected = match pipeline {
        Some(running) => {
            let handled = running.stats().events_handled;
            let stopped = running.stop().await;
            Some(stopped.map(|()| handled))
        }
        None => None,
    };
    measured?;
    let projected = projected
        .transpose()
        .context("the todo read model's pipeline")?;
    let rest = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(|p| p.into_inner()),
        Tally::new(),
    );
    merge(&mut total, rest)?;
    let elapsed = clock.elapsed.as_secs_f64();
    say!(
        "scenario {}  store {}  concurrency {}  clients {}  cache {}  snapshots {:?}  target {}  duration {:.1}s",
        scenario.name(),
        url,
        args.concurrency,
        args.clients,
        match (&calls, args.cache) {
            (None, _) => "the server's",
            (Some(_), true) => "on",
            (Some(_), false) => "off",
        },
        args.snapshots,
        args.rate.map_or("unthrottled".to_owned(), |r| format!("{r}/s")),
        elapsed
    );
    let tests = total.latencies.len();
    say!(
        "tests {tests}  conflicts {}  errors {}  rate {:.1}/s",
        total.conflicts,
        total.errors,
        tests as f64 / elapsed
    );
    say!("latency ms  {}", Latency::of(&total.latencies));
    if let (Some(handled), Some(db)) = (projected, read_model) {
        say!(
            "read model todo_view kept in process: {handled} events handled during the run ({})",
            db.describe()
        );
    }
    if let Some(raw) = &raw {
        raw.print()?;
        say!(
            "ratio tests/s / raw 1 row per tx: {:.2}x  (target >= 1.0)",
            tests as f64 / elapsed / raw.events_per_sec()
        );
    }
    let runs = (tests + total.conflicts + total.errors).max(1) as f64;
    match (&calls, &service) {
        (Some(calls), _) => {
            let counts = calls.counts();
            let per_test: Vec<String> = OPERATIONS
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(op, n)| format!("{op} {:.2}", n as f64 / runs))
                .collect();
            say!(
                "round trips per test  {:.2}  ({})",
                counts.iter().sum::<u64>() as f64 / runs,
                per_test.join(", ")
            );
        }
        (None, Service::Web(web)) => {
            let requests = web.requests.load(std::sync::atomic::Ordering::Relaxed);
            say!(
                "http requests per test  {:.2}  (requests/s {:.1})",
                requests as f64 / runs,
                requests as f64 / elapsed
            );
        }
        (None, _) => {}
    }
    if let Some(e) = total.first_error {
        bail!("{} tests failed; the first: {e}", total.errors);
    }
    Ok(())
}

/// A worker's place in the run, carried from one turn to the next: its clients' random
/// sequence and its test number (items stay fresh, and the todo scenario clears every 20th).
struct Worker {
    index: usize,
    rng: fastrand::Rng,
    n: u64,
}

/// The scenario's own time (its turns only, not the baseline's) and when to report next.
struct Clock {
    interval: Duration,
    elapsed: Duration,
    last: Duration,
    next: Duration,
}

impl Clock {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            elapsed: Duration::ZERO,
            last: Duration::ZERO,
            next: interval,
        }
    }
}

/// One turn of the scenario: the workers run tests for `length`.
struct Turn<'a> {
    service: &'a Service,
    run_id: u32,
    clients: u64,
    rate: Option<f64>,
    length: Duration,
}

impl Turn<'_> {
    /// Runs the workers for the turn's length, reporting each interval of scenario time
    /// (the partial window goes on into the next turn); gives the workers back.
    async fn run(
        &self,
        workers: Vec<Worker>,
        tally: &Arc<Mutex<Tally>>,
        total: &mut Tally,
        clock: &mut Clock,
    ) -> anyhow::Result<Vec<Worker>> {
        let started = Instant::now();
        let deadline = started + self.length;
        let issued = Arc::new(AtomicU64::new(0));
        let period = self.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let (run_id, clients) = (self.run_id, self.clients);
        let tasks: Vec<_> = workers
            .into_iter()
            .map(|mut worker| {
                let (service, tally, issued) =
                    (self.service.clone(), tally.clone(), issued.clone());
                tokio::spawn(async move {
                    loop {
                        if let Some(period) = period {
                            // The next slot of the turn's schedule; late slots run at once.
                            let slot = issued.fetch_add(1, Ordering::SeqCst) as u32;
                            let at = started + period * slot;
                            if at >= deadline {
                                return worker;
                            }
                            tokio::time::sleep_until(at.into()).await;
                        } else if Instant::now() >= deadline {
                            return worker;
                        }
                        let client = format!("bench{run_id}_{}", worker.rng.u64(..clients));
                        let item = format!("i{}x{}", worker.index, worker.n);
                        let t0 = Instant::now();
                        let outcome = service.test(&client, item, worker.n).await;
                        worker.n += 1;
                        let micros = t0.elapsed().as_micros().max(1) as u64;
                        record(&tally, micros, outcome);
                        // Let timers and the reporter run even when the store never yields.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        let done = loop {
            let report_at = started + clock.next.saturating_sub(clock.elapsed);
            tokio::select! {
                done = &mut all => break done,
                _ = tokio::time::sleep_until(report_at.into()) => {
                    let now = clock.elapsed + started.elapsed();
                    let window = std::mem::replace(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()), Tally::new());
                    report_interval(now, now - clock.last, &window)?;
                    clock.last = now;
                    clock.next += clock.interval;
                    merge(total, window)?;
                }
            }
        };
        clock.elapsed += started.elapsed();
        done.into_iter()
            .map(|w| w.map_err(anyhow::Error::from))
            .collect()
    }
}

/// Counts a test's outcome.
fn record(tally: &Mutex<Tally>, micros: u64, outcome: anyhow::Result<()>) {
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(()) => t.latencies.saturating_record(micros),
        Err(e)
            if matches!(
                e.downcast_ref::<annals::Error>(),
                Some(annals::Error::ResyncExhausted { .. })
            ) || e.downcast_ref::<Conflict>().is_some() =>
        {
            t.conflicts += 1
        }
        Err(e) => {
            t.errors += 1;
            t.first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

fn merge(total: &mut Tally, window: Tally) -> anyhow::Result<()> {
    total.latencies.add(&window.latencies)?;
    total.conflicts += window.conflicts;
    total.errors += window.errors;
    if total.first_error.is_none() {
        total.first_error = window.first_error;
    }
    Ok(())
}

fn report_interval(
    at: Duration,
    window: Duration,
    t: &Tally,
) -> Result<(), crate::output::Unwritten> {
    let h = &t.latencies;
    let ms = |micros: u64| micros as f64 / 1000.0;
    say!(
        "[{:>5.0}s] ok={} conflicts={} err={} rate={:.1}/s ms: max={:.2} p99={:.2} p95={:.2} p50={:.2} min={:.2} avg={:.2} stddev={:.2}",
        at.as_secs_f64(),
        h.len(),
        t.conflicts,
        t.errors,
        h.len() as f64 / window.as_secs_f64().max(1e-9),
        ms(h.max()),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.50)),
        ms(h.min()),
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
    );
    Ok(())
}

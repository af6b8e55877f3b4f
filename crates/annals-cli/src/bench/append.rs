//! `annals bench append`: append throughput and latency, in three shapes, beside a raw
//! baseline measured in the same run.
//!
//! - (a) one writer appending 100-event batches to one stream;
//! - (b) `--writers` writers (64 unless told), each appending single events to its own stream;
//! - (c) 16 deciders contending on one stream: each command a `transact` of the decider
//!   (with a cache, the default attempts), single events, so concurrent decisions queue
//!   and are written together; commands that exhaust their attempts are counted.
//!
//! The baseline is the fastest plain way to write the same rows, with no event store:
//! - SQLite: plain rusqlite inserts, with the same pragmas, into a scratch file beside the
//!   store: 100 rows per transaction, and 1 row autocommitted;
//! - PostgreSQL: a scratch table with the same keys, `--writers` clients for 1 row per
//!   transaction (a prepared `INSERT ... VALUES`, autocommitted), one client for 100 rows
//!   per transaction (one prepared multi-row insert of unnested arrays, autocommitted);
//! - NATS: plain JetStream publishes (see `nats_baseline`).
//!
//! The report gives our figures as ratios of it. Each case and its baseline take turns, in
//! [`SLICES`] slices of the case's duration ((c) in turns with (b)).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{EventData, EventStore, ExpectedVersion, StreamName};
use annals_postgres::PgConfig;
use annals_sqlite::{rusqlite, SqliteConfig};
use anyhow::{ensure, Context};
use hdrhistogram::Histogram;

use super::{latency_histogram, Latency};
use crate::store_url::{Backend, Opened};

/// Arguments of `annals bench append`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How long each case runs, for example `5s`.
    #[arg(long, short = 'd', default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bytes of JSON data per event.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Which cases to run (the baselines run with the cases that are compared to them).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    cases: Vec<Case>,
    /// Writers in case (b), each on its own stream (and clients of the 1-row baseline on
    /// PostgreSQL).
    #[arg(long, default_value_t = 64)]
    writers: usize,
}

/// One of the measured shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Case {
    /// One writer, 100-event batches (with the 100-rows-per-transaction baseline).
    A,
    /// Many writers (`--writers`), single events, own streams (with the 1-row-per-transaction
    /// baseline).
    B,
    /// 16 deciders on one stream.
    C,
}

/// What one case measured.
pub(super) struct Report {
    name: String,
    pub(super) events: u64,
    pub(super) operations: u64,
    pub(super) elapsed: Duration,
    pub(super) latencies: Histogram<u64>,
    conflicts: u64,
    /// Commands that gave up after their attempts (decider cases).
    pub(super) exhausted: Option<u64>,
    /// A write case (its conflicts are reported).
    pub(super) writes: bool,
}

impl Report {
    pub(super) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            events: 0,
            operations: 0,
            elapsed: Duration::ZERO,
            latencies: latency_histogram(),
            conflicts: 0,
            exhausted: None,
            writes: true,
        }
    }

    /// A read case's report.
    pub(super) fn read(name: impl Into<String>) -> Self {
        Self {
            writes: false,
            ..Self::new(name)
        }
    }

    pub(super) fn merge(&mut self, other: Report) {
        self.events += other.events;
        self.operations += other.operations;
        self.conflicts += other.conflicts;
        if let Some(n) = other.exhausted {
            *self.exhausted.get_or_insert(0) += n;
        }
        self.latencies
            .add(&other.latencies)
            .expect("histograms of the same bounds");
    }

    pub(super) fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(super) fn print(&self) -> Result<(), crate::output::Unwritten> {
        // The rates, then the exact counts they come from (what tests check).
        say!(
            "{:<44} {:>10.0} {:>10.0}  {}{}  total {} events / {} ops",
            self.name,
            self.events_per_sec(),
            self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9),
            Latency::of(&self.latencies),
            match (self.writes, self.exhausted) {
                (true, Some(n)) => format!("  exhausted {n}"),
                (true, None) => format!("  conflicts {}", self.conflicts),
                (false, _) => String::new(),
            },
            self.events,
            self.operations
        );
        Ok(())
    }
}

/// How many turns a case and its baseline take. On a shared machine the speed drifts by a
/// tenth or more over seconds: run one after the other, each in one piece, the ratio of a
/// run moved with the drift (`bench read` (b): 0.74x to 0.99x for one build, 2026-12-03);
/// taking turns, both see the same machine.
pub(super) const SLICES: u32 = 5;

/// Adds `part`, one slice of a case, to `total`.
pub(super) fn add(total: &mut Option<Report>, part: Report) {
    match total {
        None => *total = Some(part),
        Some(t) => {
            let elapsed = t.elapsed + part.elapsed;
            t.merge(part);
            t.elapsed = elapsed;
        }
    }
}

/// An event of about `bytes` bytes of JSON data.
pub(super) fn event(bytes: usize, n: u64) -> EventData {
    let head = format!(r#"{{"n":{n},"pad":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    EventData::new(
        "Appended",
        format!("{head}{}\"}}", "x".repeat(pad)).into_bytes(),
    )
}

pub(super) fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().max(1) as u64
}

pub(super) async fn run(opened: Opened, url: &str, args: Args) -> anyhow::Result<()> {
    ensure!(
        !args.duration.is_zero(),
        "--duration must be more than zero"
    );
    let run = format!("r{}", std::process::id());
    say!(
        "append benchmark  store {url}  {} per case  {} bytes per event",
        humantime::format_duration(args.duration),
        args.event_bytes
    );
    ensure!(args.writers > 0, "--writers must be at least 1");
    let baseline = Baseline::of(&opened.backend, &run).await?;
    let measured = measure(&opened.events, baseline.as_ref(), &run, &args).await;
    if let Some(b) = &baseline {
        b.remove().await;
    }
    let [raw_100, a, raw_1, b, c] = measured?;
    say!(
        "{:<44} {:>10} {:>10}  latency ms per operation",
        "case",
        "events/s",
        "ops/s"
    );
    for r in [&raw_100, &a, &raw_1, &b, &c].into_iter().flatten() {
        r.print()?;
    }
    if baseline.is_none() {
        say!("no raw baseline for this store");
    }
    // The targets: group commit (SQLite's single writer, PostgreSQL's grouped appends) must
    // beat one commit per row by far. On NATS, each shape should reach 0.7 of plain
    // JetStream publishes.
    let (b_target, a_target) = match opened.backend {
        Backend::Sqlite(_) => (5.0, 0.8),
        Backend::Nats(_) => (0.7, 0.7),
        _ => (1.5, 0.8),
    };
    if let (Some(b), Some(raw_1)) = (&b, &raw_1) {
        say!(
            "ratio (b) / raw 1 row per tx:      {:.2}x  (target >= {b_target})",
            b.events_per_sec() / raw_1.events_per_sec()
        );
    }
    if let (Some(c), Some(b)) = (&c, &b) {
        say!(
            "ratio (c) / (b):                    {:.2}x  (target >= 0.5, p99 <= 100 ms)",
            c.events_per_sec() / b.events_per_sec()
        );
    }
    if let (Some(a), Some(raw_100)) = (&a, &raw_100) {
        say!(
            "ratio (a) / raw 100 rows per tx:   {:.2}x  (target >= {a_target})",
            a.events_per_sec() / raw_100.events_per_sec()
        );
    }
    Ok(())
}

/// Runs the cases, each taking turns with its baseline in [`SLICES`] slices of the
/// duration, so both see the same machine: raw 100 and (a); then raw 1, (b) and (c).
async fn measure(
    store: &Arc<dyn EventStore>,
    baseline: Option<&Baseline>,
    run: &str,
    args: &Args,
) -> anyhow::Result<[Option<Report>; 5]> {
    let (slice, bytes) = (args.duration / SLICES, args.event_bytes);
    let wanted = |c: Case| args.cases.contains(&c);
    let mut out: [Option<Report>; 5] = Default::default();
    let hot = super::hot::hot_stream(store, run, bytes)?;
    for part in 0..SLICES {
        if wanted(Case::A) {
            if let Some(b) = baseline {
                add(&mut out[0], b.run(100, 1, slice, bytes, part).await?);
            }
            let name = "(a) 1 writer, 100-event batches";
            add(
                &mut out[1],
                writers(store, name, run, 1, 100, slice, bytes).await?,
            );
        }
    }
    for part in 0..SLICES {
        if wanted(Case::B) {
            if let Some(b) = baseline {
                add(
                    &mut out[2],
                    b.run(1, args.writers, slice, bytes, part).await?,
                );
            }
            let name = format!("(b) {} writers, 1 event, own streams", args.writers);
            add(
                &mut out[3],
                writers(store, &name, run, args.writers, 1, slice, bytes).await?,
            );
        }
        if wanted(Case::C) {
            add(&mut out[4], super::hot::deciders(&hot, 16, slice).await?);
        }
    }
    Ok(out)
}

/// `count` writers append `batch`-event batches for `duration`, each to its own stream.
#[allow(clippy::too_many_arguments)]
async fn writers(
    store: &Arc<dyn EventStore>,
    name: &str,
    run: &str,
    count: usize,
    batch: u64,
    duration: Duration,
    bytes: usize,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + duration;
    let tag = name.as_bytes()[1] as char;
    let tasks: Vec<_> = (0..count)
        .map(|w| {
            let store = Arc::clone(store);
            let name = name.to_owned();
            let id = format!("{run}_{w}");
            tokio::spawn(async move {
                let stream = StreamName::from_parts(&format!("Bench{tag}"), &id)?;
                let mut report = Report::new(name.as_str());
                let mut version = store.stream_version(&stream).await?;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let events = (0..batch).map(|i| event(bytes, n + i)).collect();
                    match store
                        .append(&stream, ExpectedVersion::Exact(version), events)
                        .await
                    {
                        Ok(r) => version = r.version,
                        Err(e) => return Err(anyhow::Error::new(e)),
                    }
                    n += batch;
                    report.events += batch;
                    report.operations += 1;
                    report.latencies.saturating_record(micros(t0));
                }
                Ok::<_, anyhow::Error>(report)
            })
        })
        .collect();
    let mut total = Report::new(name);
    for t in tasks {
        total.merge(t.await??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The raw baseline of a store, measured in the same run.
pub(super) enum Baseline {
    Sqlite(SqliteBaseline),
    Postgres(PgBaseline),
    Nats(super::nats_baseline::NatsBaseline),
}

impl Baseline {
    /// The baseline of `backend` (none for the memory store), in scratch tables named
    /// after `run`.
    pub(super) async fn of(backend: &Backend, run: &str) -> anyhow::Result<Option<Self>> {
        Ok(match backend {
            Backend::Sqlite(s) => Some(Baseline::Sqlite(SqliteBaseline::create(s.config(), run)?)),
            Backend::Postgres(p) => Some(Baseline::Postgres(
                PgBaseline::create(p.config(), run).await?,
            )),
            Backend::Nats(n) => Some(Baseline::Nats(
                super::nats_baseline::NatsBaseline::create(n.config(), run).await?,
            )),
            Backend::Memory(_) => None,
        })
    }

    /// `clients` clients write rows (or messages) of `bytes` bytes, `rows_per_tx` per
    /// transaction, for `duration`: turn `part` of a case (each turn writes streams of its
    /// own).
    pub(super) async fn run(
        &self,
        rows_per_tx: u64,
        clients: usize,
        duration: Duration,
        bytes: usize,
        part: u32,
    ) -> anyhow::Result<Report> {
        match self {
            Baseline::Sqlite(b) => b.run(rows_per_tx, duration, bytes, part).await,
            Baseline::Postgres(b) => b.run(rows_per_tx, clients, duration, bytes, part).await,
            Baseline::Nats(b) => b.run(rows_per_tx, clients, duration, bytes, part).await,
        }
    }

    /// Drops the scratch tables (files, streams).
    pub(super) async fn remove(&self) {
        match self {
            Baseline::Sqlite(b) => b.remove(),
            Baseline::Postgres(b) => b.remove().await,
            Baseline::Nats(b) => b.remove().await,
        }
    }
}

/// Plain rusqlite inserts of the same rows, with the same pragmas, in a scratch file.
pub(super) struct SqliteBaseline {
    path: PathBuf,
    config: SqliteConfig,
}

impl SqliteBaseline {
    fn create(config: &SqliteConfig, run: &str) -> anyhow::Result<Self> {
        let file = config
            .path
            .file_name()
            .map_or("annals.db".into(), |f| f.to_string_lossy().into_owned());
        let path = config
            .path
            .with_file_name(format!("{file}.baseline-{run}.db"));
        let baseline = Self {
            path,
            config: config.clone(),
        };
        let conn = baseline.connect()?;
        conn.execute_batch(
            "CREATE TABLE raw_events (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                stream TEXT NOT NULL,
                stream_version INTEGER NOT NULL,
                event_id BLOB NOT NULL UNIQUE,
                event_type TEXT NOT NULL,
                data BLOB NOT NULL,
                metadata BLOB,
                recorded_at INTEGER NOT NULL,
                UNIQUE (stream, stream_version)
            ) STRICT",
        )
        .with_context(|| format!("create the baseline table in {}", baseline.path.display()))?;
        Ok(baseline)
    }

    fn connect(&self) -> anyhow::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)
            .with_context(|| format!("open the baseline file {}", self.path.display()))?;
        conn.busy_timeout(self.config.busy_timeout)?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = {};",
            self.config.synchronous.pragma(),
            self.config.wal_autocheckpoint
        ))?;
        Ok(conn)
    }

    async fn run(
        &self,
        rows_per_tx: u64,
        duration: Duration,
        bytes: usize,
        part: u32,
    ) -> anyhow::Result<Report> {
        let conn = self.connect()?;
        let name = if rows_per_tx == 1 {
            "raw baseline, 1 row per transaction".to_owned()
        } else {
            format!("raw baseline, {rows_per_tx} rows per transaction")
        };
        tokio::task::spawn_blocking(move || {
            let mut report = Report::new(name);
            let stream = format!("Raw-{rows_per_tx}-{part}");
            let started = Instant::now();
            let deadline = started + duration;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                // One row is its own transaction (autocommit, the fastest plain way); more
                // rows share one.
                let batch = rows_per_tx > 1;
                if batch {
                    conn.execute_batch("BEGIN IMMEDIATE")?;
                }
                {
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO raw_events (stream, stream_version, event_id, event_type, data, metadata, recorded_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    let now = annals::Timestamp::now().unix_micros();
                    for i in 0..rows_per_tx {
                        let e = event(bytes, n + i);
                        insert.execute(rusqlite::params![
                            stream,
                            (n + i) as i64,
                            &e.event_id.as_bytes()[..],
                            e.event_type,
                            e.data,
                            e.metadata,
                            now
                        ])?;
                    }
                }
                if batch {
                    conn.execute_batch("COMMIT")?;
                }
                n += rows_per_tx;
                report.events += rows_per_tx;
                report.operations += 1;
                report.latencies.saturating_record(micros(t0));
            }
            report.elapsed = started.elapsed();
            Ok(report)
        })
        .await?
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Plain INSERTs of the same rows into a scratch table in a scratch schema.
pub(super) struct PgBaseline {
    pool: deadpool_postgres::Pool,
    schema: String,
}

impl PgBaseline {
    async fn create(config: &PgConfig, run: &str) -> anyhow::Result<Self> {
        let (pg, tls) = config.driver()?;
        let manager = deadpool_postgres::Manager::new(pg, tls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(64)
            .build()?;
        let schema = format!("annals_bench_raw_{run}");
        let client = pool.get().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.raw_events (
                    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    stream text NOT NULL,
                    stream_version bigint NOT NULL,
                    event_id uuid NOT NULL UNIQUE,
                    event_type text NOT NULL,
                    data bytea NOT NULL,
                    metadata bytea,
                    recorded_at timestamptz NOT NULL DEFAULT now(),
                    UNIQUE (stream, stream_version))"
            ))
            .await
            .context("create the baseline table")?;
        Ok(Self { pool, schema })
    }

    async fn run(
        &self,
        rows_per_tx: u64,
        clients: usize,
        duration: Duration,
        bytes: usize,
        part: u32,
    ) -> anyhow::Result<Report> {
        let name = if rows_per_tx == 1 {
            format!("raw baseline, 1 row per transaction, {clients} clients")
        } else {
            format!("raw baseline, {rows_per_tx} rows per transaction, {clients} client")
        };
        let started = Instant::now();
        let deadline = started + duration;
        // The fastest plain way: one row as a plain `INSERT ... VALUES`; more rows in one
        // statement (arrays unnested into a multi-row insert); either committed on its own,
        // one round trip per transaction.
        let table = format!("{}.raw_events", self.schema);
        let sql = if rows_per_tx == 1 {
            format!(
                "INSERT INTO {table} (stream, stream_version, event_id, event_type, data, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            )
        } else {
            format!(
                "INSERT INTO {table} (stream, stream_version, event_id, event_type, data, metadata) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::bytea[], $6::bytea[])"
            )
        };
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (pool, sql, name) = (self.pool.clone(), sql.clone(), name.clone());
                tokio::spawn(async move {
                    let client = pool.get().await?;
                    let insert = client.prepare_cached(&sql).await?;
                    let mut report = Report::new(name);
                    let stream = format!("Raw{rows_per_tx}-{c}-{part}");
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let events: Vec<_> =
                            (0..rows_per_tx).map(|i| event(bytes, n + i)).collect();
                        if let [e] = events.as_slice() {
                            client
                                .execute(
                                    &insert,
                                    &[
                                        &stream,
                                        &(n as i64),
                                        &e.event_id,
                                        &e.event_type,
                                        &e.data,
                                        &e.metadata,
                                    ],
                                )
                                .await?;
                        } else {
                            let streams = vec![stream.as_str(); events.len()];
                            let versions: Vec<i64> =
                                (n..n + rows_per_tx).map(|v| v as i64).collect();
                            let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                            let types: Vec<&str> =
                                events.iter().map(|e| e.event_type.as_str()).collect();
                            let data: Vec<&[u8]> =
                                events.iter().map(|e| e.data.as_slice()).collect();
                            let metadata: Vec<Option<&[u8]>> =
                                events.iter().map(|e| e.metadata.as_deref()).collect();
                            client
                                .execute(
                                    &insert,
                                    &[&streams, &versions, &ids, &types, &data, &metadata],
                                )
                                .await?;
                        }
                        n += rows_per_tx;
                        report.events += rows_per_tx;
                        report.operations += 1;
                        report.latencies.saturating_record(micros(t0));
                    }
                    Ok::<_, anyhow::Error>(report)
                })
            })
            .collect();
        let mut total = Report::new(name);
        for t in tasks {
            total.merge(t.await??);
        }
        total.elapsed = started.elapsed();
        Ok(total)
    }

    async fn remove(&self) {
        if let Ok(client) = self.pool.get().await {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await;
        }
    }
}

//! `annals bench read`: read throughput and latency, beside a raw baseline measured in the
//! same run against the same rows.
//!
//! A fresh category of `--streams` streams of `--events` events each is written first; then
//! `--readers` readers, each picking streams at random:
//! - (a) read a whole stream, oldest first;
//! - (b) read a stream's last 10 events, newest first (the tip a decider without a cache
//!   or snapshot would otherwise fold from the start);
//! - (c) one reader pages through the category with read-all, 1,000 events per page.
//!
//! The baselines are plain queries of the same rows from the store's own tables (rusqlite on
//! a read connection of the file, or a PostgreSQL client), decoded into plain tuples: what a
//! hand-written reader would cost. The report gives our figures as ratios of them. Each case
//! and its baseline take turns, in [`SLICES`] slices of the case's duration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{
    EventStore, EventStoreExt, ExpectedVersion, Filter, Position, ReadStream, StreamName,
};
use annals_sqlite::rusqlite;
use anyhow::ensure;

use super::append::{add, event, micros, Report, SLICES};
use crate::store_url::{Backend, Opened};

/// Arguments of `annals bench read`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How long each case runs, for example `5s`.
    #[arg(long, short = 'd', default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Streams written before reading.
    #[arg(long, default_value_t = 100)]
    streams: u64,
    /// Events per stream.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Bytes of JSON data per event.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Concurrent readers in cases (a) and (b), and in their baselines.
    #[arg(long, default_value_t = 16)]
    readers: usize,
}

/// A raw read: the whole stream or its last 10 events.
#[derive(Clone, Copy)]
enum Shape {
    Whole,
    Tip,
}

impl Shape {
    fn store_read(self) -> ReadStream {
        match self {
            Shape::Whole => ReadStream::forward(),
            Shape::Tip => ReadStream::backward().limit(10),
        }
    }
}

pub(super) async fn run(opened: Opened, url: &str, args: Args) -> anyhow::Result<()> {
    ensure!(
        !args.duration.is_zero(),
        "--duration must be more than zero"
    );
    ensure!(
        args.streams > 0 && args.events > 0 && args.readers > 0,
        "--streams, --events and --readers must be at least 1"
    );
    let run = format!("r{}", std::process::id());
    let category = format!("BenchRead{run}");
    say!(
        "read benchmark  store {url}  {} per case  {} streams x {} events of {} bytes  {} readers",
        humantime::format_duration(args.duration),
        args.streams,
        args.events,
        args.event_bytes,
        args.readers
    );
    let streams: Vec<StreamName> = (0..args.streams)
        .map(|i| StreamName::from_parts(&category, &i.to_string()))
        .collect::<Result<_, _>>()?;
    let bar = crate::output::progress(Some(args.streams * args.events), "writing");
    for s in &streams {
        let mut written = 0;
        while written < args.events {
            let n = (args.events - written).min(100);
            let batch = (0..n)
                .map(|i| event(args.event_bytes, written + i))
                .collect();
            opened.events.append(s, ExpectedVersion::Any, batch).await?;
            written += n;
            bar.inc(n);
        }
    }
    bar.finish_and_clear();
    opened.events.await_visible().await?;
    let raw = Raw::of(&opened).await?;
    let streams = Arc::new(streams);
    let slice = args.duration / SLICES;
    let mut reports = Vec::new();
    for (shape, label) in [
        (
            Shape::Whole,
            format!("(a) whole stream ({} events)", args.events),
        ),
        (Shape::Tip, "(b) last 10 events, backward".to_owned()),
    ] {
        let (mut baseline, mut ours) = (None, None);
        for _ in 0..SLICES {
            if let Some(raw) = &raw {
                add(
                    &mut baseline,
                    raw.run(shape, &streams, args.readers, slice).await?,
                );
            }
            add(
                &mut ours,
                readers(&opened.events, &label, shape, &streams, args.readers, slice).await?,
            );
        }
        reports.push((baseline, ours.expect("a slice at least")));
    }
    let (mut all_baseline, mut all) = (None, None);
    for _ in 0..SLICES {
        if let Some(raw) = &raw {
            add(&mut all_baseline, raw.feed(&category, slice).await?);
        }
        add(&mut all, read_all(&opened.events, &category, slice).await?);
    }
    reports.push((all_baseline, all.expect("a slice at least")));
    say!(
        "{:<44} {:>10} {:>10}  latency ms per read",
        "case",
        "events/s",
        "reads/s"
    );
    for (baseline, ours) in &reports {
        if let Some(b) = baseline {
            b.print()?;
        }
        ours.print()?;
    }
    match raw {
        None => say!("no raw baseline for this store"),
        Some(_) => {
            for ((baseline, ours), case) in reports.iter().zip(["(a)", "(b)", "(c)"]) {
                if let Some(b) = baseline {
                    let per = if case == "(c)" { "page" } else { "read" };
                    say!(
                        "ratio {case} / raw: {:.2}x events/s, p50 per {per} {:.3} ms vs {:.3} ms",
                        ours.events_per_sec() / b.events_per_sec(),
                        ours.latencies.value_at_quantile(0.5) as f64 / 1000.0,
                        b.latencies.value_at_quantile(0.5) as f64 / 1000.0,
                    );
                }
            }
        }
    }
    Ok(())
}

/// `count` readers read random streams for `duration`.
async fn readers(
    store: &Arc<dyn EventStore>,
    name: &str,
    shape: Shape,
    streams: &Arc<Vec<StreamName>>,
    count: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..count)
        .map(|r| {
            let (store, streams, name) = (Arc::clone(store), Arc::clone(streams), name.to_owned());
            tokio::spawn(async move {
                let mut report = Report::read(name);
                let mut rng = fastrand::Rng::with_seed(r as u64 + 1);
                while Instant::now() < deadline {
                    let s = &streams[rng.usize(..streams.len())];
                    let t0 = Instant::now();
                    let events = store.read_stream_vec(s, shape.store_read()).await?;
                    report.latencies.saturating_record(micros(t0));
                    report.events += events.len() as u64;
                    report.operations += 1;
                }
                Ok::<_, anyhow::Error>(report)
            })
        })
        .collect();
    let mut total = Report::read(name);
    for t in tasks {
        total.merge(t.await??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One reader pages through the category again and again for the duration.
async fn read_all(
    store: &Arc<dyn EventStore>,
    category: &str,
    duration: Duration,
) -> anyhow::Result<Report> {
    let mut report = Report::read("(c) read-all, 1 reader, pages of 1,000");
    let filter = Filter::category(category);
    let started = Instant::now();
    let deadline = started + duration;
    // Walks the feed through the one feed reader, from the start again at its end, in
    // whole passes (so the events read are an exact multiple of those in the category).
    while Instant::now() < deadline {
        let options = annals::FeedOptions::to_end(filter.clone()).page_size(1000);
        let mut pages = annals::Feed::new(Arc::clone(store), Position::START, options).pages();
        use futures::StreamExt;
        let mut t0 = Instant::now();
        while let Some(page) = pages.next().await {
            report.latencies.saturating_record(micros(t0));
            report.events += page?.events.len() as u64;
            report.operations += 1;
            t0 = Instant::now();
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Plain queries of the store's own tables.
enum Raw {
    Sqlite(std::path::PathBuf),
    Postgres {
        pool: deadpool_postgres::Pool,
        schema: String,
    },
}

/// Every column a recorded event holds but its stream's name (the reader knows it), as
/// plain values: position, version, time, type, data, metadata, id, correlation,
/// causation (the ids as SQLite's bytes).
type RawRow = (
    i64,
    i64,
    i64,
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);
/// The same from PostgreSQL, with the transaction half of the position: transaction,
/// position, version, time (as the server's bytes), type, data, metadata, id, correlation,
/// causation.
type PgRow = (
    Bytes,
    i64,
    i64,
    Bytes,
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    annals::Uuid,
    Option<annals::Uuid>,
    Option<annals::Uuid>,
);

/// A [`PgRow`] from the first ten columns of a PostgreSQL row.
fn pg_raw_row(r: &annals_postgres::tokio_postgres::Row) -> PgRow {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
    )
}

/// The raw query of a stream's events on SQLite, in `order`.
fn sqlite_raw_stream(order: &str) -> String {
    format!(
        "SELECT e.position, e.stream_version, e.recorded_at, e.event_type, e.data, \
         e.metadata, e.event_id, e.correlation_id, e.causation_id \
         FROM annals_events e JOIN annals_streams s ON s.stream_id = e.stream_id \
         WHERE s.name = ?1 {order}"
    )
}

/// A read-only connection to the store's file, without SQLite's mutex (one per thread), and
/// with the query planner stability guarantee, as the store's readers open theirs. Without
/// it SQLite (3.54) prepares a cached statement again whenever a new value is bound to its
/// `WHERE` or `LIMIT` parameters: every read of another stream would parse and plan its SQL
/// again, which is not the fastest plain way.
fn read_only(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// A column's value as the server sent it, not interpreted (the cheapest read of a column
/// whose type has no plain Rust counterpart here: `xid8`, `timestamptz`).
struct Bytes(Vec<u8>);

impl<'a> annals_postgres::tokio_postgres::types::FromSql<'a> for Bytes {
    fn from_sql(
        _: &annals_postgres::tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Bytes(raw.to_vec()))
    }

    fn accepts(_: &annals_postgres::tokio_postgres::types::Type) -> bool {
        true
    }
}

impl Raw {
    async fn of(opened: &Opened) -> anyhow::Result<Option<Self>> {
        Ok(match &opened.backend {
            Backend::Sqlite(s) => Some(Raw::Sqlite(s.config().path.clone())),
            Backend::Postgres(p) => {
                let config = p.config();
                let (pg, tls) = config.driver()?;
                let manager = deadpool_postgres::Manager::new(pg, tls);
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(64)
                    .build()?;
                // The tables as autovacuum leaves them within a minute of the load: with
                // statistics. (Without any, PostgreSQL may take a stream's page through a
                // bitmap scan and a sort: see BENCHMARKS.md.)
                let schema = format!("\"{}\"", config.schema.replace('"', "\"\""));
                pool.get()
                    .await?
                    .batch_execute(&format!("ANALYZE {schema}.streams, {schema}.events"))
                    .await?;
                Some(Raw::Postgres { pool, schema })
            }
            _ => None,
        })
    }

    /// The raw walk of the category in feed order, pages of 1,000 by keyset (the last
    /// position read), as `read_all` walks it in case (c): one reader, from the start again
    /// at the end, in whole passes. Each event comes with its stream's name, as the feed's
    /// events do. On SQLite the events are the outer loop (`CROSS JOIN`, SQLite's way to
    /// fix the join order): left to choose, SQLite started from the category's streams and
    /// sorted every page, 8x slower than the store's own read.
    async fn feed(&self, category: &str, duration: Duration) -> anyhow::Result<Report> {
        let mut report = Report::read("raw baseline, read-all of the category");
        let started = Instant::now();
        let deadline = started + duration;
        match self {
            Raw::Sqlite(path) => {
                let (path, category) = (path.clone(), category.to_owned());
                report = tokio::task::spawn_blocking(move || {
                    let conn = read_only(&path)?;
                    let mut q = conn.prepare(
                        "SELECT e.position, e.stream_version, e.recorded_at, e.event_type, e.data, \
                         e.metadata, e.event_id, e.correlation_id, e.causation_id, s.name \
                         FROM annals_events e CROSS JOIN annals_streams s ON s.stream_id = e.stream_id \
                         WHERE e.position > ?1 AND s.category = ?2 ORDER BY e.position LIMIT 1000",
                    )?;
                    while Instant::now() < deadline {
                        let mut from = 0i64;
                        loop {
                            let t0 = Instant::now();
                            let rows: Vec<(RawRow, String)> = q
                                .query_map(rusqlite::params![from, category], |r| {
                                    Ok((RawRow::try_from(r)?, r.get(9)?))
                                })?
                                .collect::<Result<_, _>>()?;
                            report.latencies.saturating_record(micros(t0));
                            report.events += rows.len() as u64;
                            report.operations += 1;
                            match rows.last() {
                                Some(last) if rows.len() == 1000 => from = last.0 .0,
                                _ => break,
                            }
                        }
                    }
                    Ok::<_, anyhow::Error>(report)
                })
                .await??;
            }
            Raw::Postgres { pool, schema } => {
                let client = pool.get().await?;
                let query = client
                    .prepare(&format!(
                        "SELECT e.tx_id, e.position, e.stream_version, e.recorded_at, e.event_type, \
                         e.data, e.metadata, e.event_id, e.correlation_id, e.causation_id, s.name \
                         FROM {schema}.events e JOIN {schema}.streams s ON s.stream_id = e.stream_id \
                         WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) AND s.category = $3 \
                         ORDER BY e.tx_id, e.position LIMIT 1000"
                    ))
                    .await?;
                while Instant::now() < deadline {
                    let mut from = ("0".to_owned(), 0i64);
                    loop {
                        let t0 = Instant::now();
                        let rows = client.query(&query, &[&from.0, &from.1, &category]).await?;
                        let rows: Vec<(PgRow, String)> =
                            rows.iter().map(|r| (pg_raw_row(r), r.get(10))).collect();
                        report.latencies.saturating_record(micros(t0));
                        report.events += rows.len() as u64;
                        report.operations += 1;
                        match rows.last() {
                            Some(((tx, position, ..), _)) if rows.len() == 1000 => {
                                // The transaction id as the server sent it: 8 bytes.
                                let tx: [u8; 8] = tx.0.as_slice().try_into()?;
                                from = (u64::from_be_bytes(tx).to_string(), *position);
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// `count` readers read random streams for `duration`.
    async fn run(
        &self,
        shape: Shape,
        streams: &Arc<Vec<StreamName>>,
        count: usize,
        duration: Duration,
    ) -> anyhow::Result<Report> {
        let name = match shape {
            Shape::Whole => "raw baseline, whole stream",
            Shape::Tip => "raw baseline, last 10 events",
        };
        let order = match shape {
            Shape::Whole => "ORDER BY e.stream_version",
            Shape::Tip => "ORDER BY e.stream_version DESC LIMIT 10",
        };
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for r in 0..count {
            let streams = Arc::clone(streams);
            let mut rng = fastrand::Rng::with_seed(r as u64 + 1);
            let task = match self {
                Raw::Sqlite(path) => {
                    let sql = sqlite_raw_stream(order);
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || {
                        // One connection per thread, so no SQLite mutex per call (the
                        // store's readers open theirs the same way).
                        let conn = read_only(&path)?;
                        let mut report = Report::read(name);
                        while Instant::now() < deadline {
                            let s = &streams[rng.usize(..streams.len())];
                            let t0 = Instant::now();
                            let mut q = conn.prepare_cached(&sql)?;
                            let rows: Vec<RawRow> = q
                                .query_map([s.as_str()], |r| RawRow::try_from(r))?
                                .collect::<Result<_, _>>()?;
                            report.latencies.saturating_record(micros(t0));
                            report.events += rows.len() as u64;
                            report.operations += 1;
                        }
                        Ok::<_, anyhow::Error>(report)
                    })
                }
                Raw::Postgres { pool, schema } => {
                    // The stream's id looked up first: PostgreSQL then reads the events in
                    // index order and stops at the limit (joined by name, it reads the whole
                    // stream and sorts it, even for the last 10).
                    let sql = format!(
                        "SELECT e.tx_id, e.position, e.stream_version, e.recorded_at, e.event_type, \
                         e.data, e.metadata, e.event_id, e.correlation_id, e.causation_id \
                         FROM {schema}.events e \
                         WHERE e.stream_id = (SELECT stream_id FROM {schema}.streams WHERE name = $1) {order}"
                    );
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let client = pool.get().await?;
                        let query = client.prepare_cached(&sql).await?;
                        let mut report = Report::read(name);
                        while Instant::now() < deadline {
                            let s = &streams[rng.usize(..streams.len())];
                            let t0 = Instant::now();
                            let rows = client.query(&query, &[&s.as_str()]).await?;
                            let rows: Vec<PgRow> = rows.iter().map(pg_raw_row).collect();
                            report.latencies.saturating_record(micros(t0));
                            report.events += rows.len() as u64;
                            report.operations += 1;
                        }
                        Ok::<_, anyhow::Error>(report)
                    })
                }
            };
            tasks.push(task);
        }
        let mut total = Report::read(name);
        for t in tasks {
            total.merge(t.await??);
        }
        total.elapsed = started.elapsed();
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use annals::{EventData, EventStore, ExpectedVersion, StreamName};
    use annals_sqlite::{rusqlite::StatementStatus, SqliteConfig, SqliteStore};

    use super::{read_only, sqlite_raw_stream};

    /// The raw baseline's cached statements are planned once: reading other streams binds
    /// new values without SQLite preparing the SQL again (it would, at every read, on a
    /// connection without the planner stability guarantee).
    #[tokio::test]
    async fn the_raw_sqlite_reads_are_not_prepared_again_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.db");
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        let names: Vec<StreamName> = (0..4)
            .map(|i| StreamName::new(format!("Raw-{i}")).unwrap())
            .collect();
        for (i, s) in names.iter().enumerate() {
            let events = (0..=i)
                .map(|_| EventData::new("E", b"{}".to_vec()))
                .collect();
            store.append(s, ExpectedVersion::Any, events).await.unwrap();
        }
        let conn = read_only(&path).unwrap();
        for order in [
            "ORDER BY e.stream_version",
            "ORDER BY e.stream_version DESC LIMIT 10",
        ] {
            let sql = sqlite_raw_stream(order);
            for round in 0..3 {
                for (i, s) in names.iter().enumerate() {
                    let mut q = conn.prepare_cached(&sql).unwrap();
                    let rows = q.query_map([s.as_str()], |r| r.get::<_, i64>(1)).unwrap();
                    let versions: Vec<i64> = rows.collect::<Result<_, _>>().unwrap();
                    assert_eq!(versions.len(), i + 1, "{order}, round {round}");
                }
            }
            let q = conn.prepare_cached(&sql).unwrap();
            assert_eq!(q.get_status(StatementStatus::Run), 12, "{order}");
            assert_eq!(q.get_status(StatementStatus::RePrepare), 0, "{order}");
        }
    }
}

//! Operating a store: `init`, `append`, `read`, `dump`, `tail`, `stats`, `checkpoint`,
//! `sync`. Human-readable tables by default, JSON lines with `--json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use annals::{
    CheckpointStore, EventData, EventStore, ExpectedVersion, Feed, FeedOptions, Filter, Position,
    ReadStream, RecordedEvent, StreamName, SubscribeExt, SubscribeOptions, Version,
};
use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::output::{progress, Output};
use crate::parked::{parked_json, show_parked};
use crate::store_url::{Opened, ReadModelDb};

/// Events per read-all page for `dump`, `stats` and `sync`.
const PAGE: usize = 1000;

/// The checkpoint group `annals sync` keeps in the target.
pub const SYNC_GROUP: &str = "annals.sync";

/// An expected version: a number, `any`, `no-stream` or `exists`.
fn expected(text: &str) -> anyhow::Result<ExpectedVersion> {
    Ok(match text {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "exists" => ExpectedVersion::StreamExists,
        n => ExpectedVersion::Exact(Version(n.parse().with_context(|| {
            format!("invalid --expected {n:?}: a version number, any, no-stream or exists")
        })?)),
    })
}

pub(crate) fn stream_name(text: &str) -> anyhow::Result<StreamName> {
    StreamName::new(text).with_context(|| format!("invalid stream name {text:?}"))
}

fn position(text: &str) -> anyhow::Result<Position> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("invalid position {text:?}: {e}"))
}

/// A JSON argument, checked before anything is written.
fn json_arg(flag: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("malformed JSON in {flag}: {e}"))?;
    Ok(serde_json::to_vec(&value)?)
}

/// A body as JSON when it is JSON, otherwise as a string (lossy UTF-8).
fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A timestamp in RFC 3339 (UTC, microseconds) when it is within years 1970-9999, which
/// RFC 3339 can write; any other stored value (a clock gone wrong, a foreign writer) is
/// reported as its microseconds, never a panic.
pub(crate) fn time(t: annals::Timestamp) -> String {
    /// 10000-01-01T00:00:00Z, in microseconds since 1970.
    const YEAR_10000: i64 = 253_402_300_800_000_000;
    let micros = t.unix_micros();
    match u64::try_from(micros) {
        Ok(m) if micros < YEAR_10000 => {
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(m))
                .to_string()
        }
        Ok(_) => format!("{micros} µs after 1970 (past year 9999)"),
        Err(_) => format!("{} µs before 1970", micros.unsigned_abs()),
    }
}

/// An event as one JSON object (what `dump` writes and `sync` copies).
pub fn event_json(e: &RecordedEvent) -> Value {
    json!({
        "position": e.position.to_string(),
        "stream": e.stream.as_str(),
        "version": e.stream_version,
        "type": e.event_type,
        "id": e.event_id.to_string(),
        "recorded_at": time(e.recorded_at),
        "data": body(&e.data),
        "metadata": e.metadata.as_deref().map(body),
        "correlation_id": e.correlation_id.map(|u| u.to_string()),
        "causation_id": e.causation_id.map(|u| u.to_string()),
    })
}

fn event_row(e: &RecordedEvent) -> Vec<String> {
    let mut data = String::from_utf8_lossy(&e.data).into_owned();
    if data.chars().count() > 60 {
        data = data.chars().take(57).collect::<String>() + "...";
    }
    vec![
        e.stream.to_string(),
        e.stream_version.to_string(),
        e.position.to_string(),
        time(e.recorded_at),
        e.event_type.clone(),
        data,
    ]
}

const EVENT_HEADERS: [&str; 6] = [
    "stream",
    "version",
    "position",
    "recorded at",
    "type",
    "data",
];

/// `annals init`.
pub async fn init(opened: &Opened, url: &str, out: &Output) -> anyhow::Result<()> {
    let (backend, schema) = if let Some(pg) = &opened.pg_store {
        ("postgres", Some(pg.schema_version().await? as i64))
    } else if opened.sqlite_store.is_some() {
        ("sqlite", Some(annals_sqlite::SCHEMA_VERSION))
    } else {
        ("memory", None)
    };
    if out.json {
        out.line(&json!({ "store": crate::output::redact(url), "backend": backend, "schema_version": schema }));
    } else {
        match schema {
            Some(v) => println!(
                "{} is ready ({backend}, schema version {v})",
                crate::output::redact(url)
            ),
            None => println!(
                "{} is ready ({backend}, nothing to create)",
                crate::output::redact(url)
            ),
        }
    }
    Ok(())
}

/// `annals append` arguments.
#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// The stream, `{category}-{id}`.
    stream: String,
    /// The event type.
    #[arg(long = "type")]
    event_type: String,
    /// The event body, JSON.
    #[arg(long)]
    data: String,
    /// Metadata, JSON.
    #[arg(long)]
    metadata: Option<String>,
    /// The stream's version the append expects: a number, `any`, `no-stream` or `exists`.
    #[arg(long, default_value = "any")]
    expected: String,
}

/// `annals append`.
pub async fn append(
    store: &Arc<dyn EventStore>,
    args: AppendArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let stream = stream_name(&args.stream)?;
    let expected = expected(&args.expected)?;
    let mut event = EventData::new(args.event_type, json_arg("--data", &args.data)?);
    if let Some(metadata) = &args.metadata {
        event = event.with_metadata(json_arg("--metadata", metadata)?);
    }
    let id = event.event_id;
    let appended = store.append(&stream, expected, vec![event]).await?;
    if out.json {
        out.line(&json!({
            "stream": stream.as_str(),
            "version": appended.version.get(),
            "position": appended.last_position.to_string(),
            "id": id.to_string(),
        }));
    } else {
        println!(
            "appended to {stream}: now at version {}, position {}",
            appended.version, appended.last_position
        );
    }
    Ok(())
}

/// `annals read` arguments.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The stream.
    stream: String,
    /// Forward: the first version to read. Backward: read the events before it.
    #[arg(long)]
    from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    backward: bool,
    /// At most this many events.
    #[arg(long)]
    limit: Option<usize>,
}

/// `annals read`.
pub async fn read(store: &Arc<dyn EventStore>, args: ReadArgs, out: &Output) -> anyhow::Result<()> {
    let stream = stream_name(&args.stream)?;
    let mut options = match (args.backward, args.from) {
        (false, None) => ReadStream::forward(),
        (false, Some(v)) => ReadStream::forward_from(Version(v)),
        (true, None) => ReadStream::backward(),
        (true, Some(v)) => ReadStream::backward_from(Version(v)),
    };
    options.limit = args.limit;
    let mut events = store.read_stream(&stream, options);
    let mut rows = Vec::new();
    while let Some(e) = events.next().await {
        let e = e?;
        if out.json {
            out.line(&event_json(&e));
        } else {
            rows.push(event_row(&e));
        }
    }
    if !out.json {
        if rows.is_empty() {
            println!("{stream}: no events");
        } else {
            out.table(&EVENT_HEADERS, &rows);
        }
    }
    Ok(())
}

/// `annals dump` and `annals tail` arguments.
#[derive(Debug, clap::Args)]
pub struct FeedArgs {
    /// Only this category (repeatable).
    #[arg(long)]
    category: Vec<String>,
    /// Start after this position (as printed by `read`, `dump` or `checkpoint`).
    #[arg(long)]
    from: Option<String>,
}

fn filter(categories: &[String]) -> anyhow::Result<Filter> {
    let filter = Filter {
        categories: categories.to_vec(),
        ..Filter::default()
    };
    filter.validate()?;
    Ok(filter)
}

/// `annals dump`: every event after `--from`, as JSON lines.
pub async fn dump(store: &Arc<dyn EventStore>, args: FeedArgs, out: &Output) -> anyhow::Result<()> {
    let filter = filter(&args.category)?;
    let from = match &args.from {
        Some(p) => position(p)?,
        None => Position::START,
    };
    store.await_visible().await?;
    let bar = progress(None, "dumping");
    let mut pages = Feed::new(Arc::clone(store), from, FeedOptions::to_end(filter)).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        for e in &page.events {
            out.line(&event_json(e));
        }
        bar.inc(page.events.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// `annals tail` arguments.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// The position after the last event visible now.
async fn end_of_feed(store: &Arc<dyn EventStore>, filter: &Filter) -> anyhow::Result<Position> {
    let options = FeedOptions::to_end(filter.clone()).page_size(10 * PAGE);
    let mut pages = Feed::new(Arc::clone(store), Position::START, options).pages();
    let mut end = Position::START;
    while let Some(page) = pages.next().await {
        end = page?.next;
    }
    Ok(end)
}

/// `annals tail`: new events (after `--from`, or from now on) as they are written.
pub async fn tail(store: &Arc<dyn EventStore>, args: TailArgs, out: &Output) -> anyhow::Result<()> {
    let filter = filter(&args.feed.category)?;
    let from = match &args.feed.from {
        Some(p) => position(p)?,
        None => end_of_feed(store, &filter).await?,
    };
    if !out.json {
        println!("following from position {from} (Ctrl-C to stop)");
    }
    let options = SubscribeOptions {
        filter,
        poll_interval: Duration::from_millis(250),
        ..SubscribeOptions::default()
    };
    let mut feed = store.subscribe(from, options);
    let mut seen = 0;
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            next = feed.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(e) = next else { return Ok(()) };
        let e = e?;
        if out.json {
            out.line(&event_json(&e));
        } else {
            println!("{}", event_row(&e).join("  "));
        }
        seen += 1;
    }
}

#[derive(Default)]
struct CategoryStats {
    streams: std::collections::HashSet<StreamName>,
    events: u64,
    bytes: u64,
}

/// `annals stats`: streams, events and bytes per category, the head position, how far
/// each checkpoint is behind it, and the parked streams of every group.
pub async fn stats(
    store: &Arc<dyn EventStore>,
    checkpoint_store: &Arc<dyn CheckpointStore>,
    out: &Output,
) -> anyhow::Result<()> {
    let mut checkpoints = checkpoint_store.list().await?;
    checkpoints.sort_by_key(|c| c.position);
    let parked = checkpoint_store.parked(None).await?;
    let mut behind = vec![0u64; checkpoints.len()];
    let mut categories: BTreeMap<String, CategoryStats> = BTreeMap::new();
    let mut head = None;
    store.await_visible().await?;
    let bar = progress(None, "reading the store");
    let options = FeedOptions::to_end(Filter::all()).page_size(10 * PAGE);
    let mut pages = Feed::new(Arc::clone(store), Position::START, options).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        for e in &page.events {
            let c = categories
                .entry(e.stream.category().to_owned())
                .or_default();
            if e.stream_version == 0 {
                c.streams.insert(e.stream.clone());
            }
            c.events += 1;
            c.bytes += e.size() as u64;
            head = Some(e.position);
            // Checkpoints sorted by position: those below this event are behind by one more.
            let below = checkpoints.partition_point(|cp| cp.position < e.position);
            for b in &mut behind[..below] {
                *b += 1;
            }
        }
        bar.inc(page.events.len() as u64);
    }
    bar.finish_and_clear();
    let head = head.map(|p| p.to_string());
    if out.json {
        for (name, c) in &categories {
            out.line(&json!({"category": name, "streams": c.streams.len(), "events": c.events, "bytes": c.bytes}));
        }
        for (cp, behind) in checkpoints.iter().zip(&behind) {
            out.line(&json!({"group": cp.group, "source": cp.source, "position": cp.position.to_string(), "behind": behind}));
        }
        for p in &parked {
            out.line(&parked_json(p));
        }
        out.line(
            &json!({"head": head, "events": categories.values().map(|c| c.events).sum::<u64>(), "parked": parked.len()}),
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = categories
        .iter()
        .map(|(name, c)| {
            vec![
                name.clone(),
                c.streams.len().to_string(),
                c.events.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no events");
    } else {
        out.table(&["category", "streams", "events", "bytes"], &rows);
    }
    println!(
        "head position: {}",
        head.as_deref().unwrap_or("none (empty store)")
    );
    if !checkpoints.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = checkpoints
            .iter()
            .zip(&behind)
            .map(|(cp, b)| {
                vec![
                    cp.group.clone(),
                    cp.source.clone(),
                    cp.position.to_string(),
                    b.to_string(),
                ]
            })
            .collect();
        out.table(&["group", "source", "position", "events behind"], &rows);
    }
    if !parked.is_empty() {
        println!();
        println!("parked streams (annals parked list | replay | skip):");
        show_parked(&parked, out);
    }
    Ok(())
}

/// `annals checkpoint` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointCommand {
    /// Every consumer group's checkpoints.
    List,
    /// One group's checkpoints.
    Show {
        /// The consumer group.
        group: String,
    },
    /// Moves a group's checkpoint (to replay, or to skip ahead).
    Set {
        /// The consumer group.
        group: String,
        /// The position to resume after (`0` for the start).
        position: String,
        /// The source the checkpoint is for.
        #[arg(long, default_value = "all")]
        source: String,
    },
}

/// `annals checkpoint`.
pub async fn checkpoint(
    checkpoints: &Arc<dyn CheckpointStore>,
    command: CheckpointCommand,
    out: &Output,
) -> anyhow::Result<()> {
    let show = |list: Vec<annals::Checkpoint>| {
        if out.json {
            for c in &list {
                out.line(&json!({"group": c.group, "source": c.source, "position": c.position.to_string()}));
            }
        } else if list.is_empty() {
            println!("no checkpoints");
        } else {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| vec![c.group.clone(), c.source.clone(), c.position.to_string()])
                .collect();
            out.table(&["group", "source", "position"], &rows);
        }
    };
    match command {
        CheckpointCommand::List => show(checkpoints.list().await?),
        CheckpointCommand::Show { group } => {
            let list: Vec<_> = checkpoints
                .list()
                .await?
                .into_iter()
                .filter(|c| c.group == group)
                .collect();
            if list.is_empty() {
                bail!("no checkpoint for group {group:?}");
            }
            show(list);
        }
        CheckpointCommand::Set {
            group,
            position: text,
            source,
        } => {
            let at = position(&text)?;
            checkpoints.commit(&group, &source, at).await?;
            if out.json {
                out.line(&json!({"group": group, "source": source, "position": at.to_string()}));
            } else {
                println!("{group} ({source}) now resumes after position {at}");
            }
        }
    }
    Ok(())
}

/// `annals sync` arguments.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The store to copy from.
    #[arg(long)]
    from: String,
    /// The store to copy into (it keeps the checkpoint that makes the copy resumable).
    #[arg(long)]
    to: String,
    /// Events per imported batch (one transaction each).
    #[arg(long, default_value_t = PAGE)]
    batch: usize,
}

/// `annals sync`: copies every event of `--from` into `--to` in read-all order, with its
/// stream version, id, metadata and timestamp, committing after each batch a checkpoint
/// in the target; a later run resumes after it (and events already copied are recognised
/// by id, so an interruption between a batch and its checkpoint duplicates nothing).
pub async fn sync(args: SyncArgs, out: &Output) -> anyhow::Result<()> {
    let source = crate::store_url::open(&args.from)
        .await
        .with_context(|| format!("--from {}", crate::output::redact(&args.from)))?;
    let target = crate::store_url::open(&args.to)
        .await
        .with_context(|| format!("--to {}", crate::output::redact(&args.to)))?;
    let source_name = crate::output::redact(&args.from);
    // Everything committed before the sync started is copied by this run (PostgreSQL
    // holds back events behind transactions still in flight).
    source.store.await_visible().await?;
    let resume = target.checkpoints.load(SYNC_GROUP, &source_name).await?;
    let mut from = resume.unwrap_or(Position::START);
    let bar = progress(None, "copying");
    let (mut read, mut written) = (0u64, 0u64);
    let options = FeedOptions::to_end(Filter::all()).page_size(args.batch.max(1));
    let mut pages = Feed::new(Arc::clone(&source.store), from, options).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        let n = page.events.len() as u64;
        if n > 0 {
            written += target.store.import(page.events).await?;
            read += n;
        }
        if page.next > from {
            target
                .checkpoints
                .commit(SYNC_GROUP, &source_name, page.next)
                .await?;
            from = page.next;
        }
        bar.inc(n);
        if out.json && n > 0 {
            out.line(&json!({"copied": read, "written": written, "position": from.to_string()}));
        }
    }
    bar.finish_and_clear();
    if out.json {
        out.line(&json!({"done": true, "read": read, "written": written, "resumed_after": resume.map(|p| p.to_string()), "position": from.to_string()}));
    } else {
        let resumed = match resume {
            Some(p) => format!(" (resumed after position {p})"),
            None => String::new(),
        };
        println!(
            "synced {} -> {}: {read} events read, {written} written{resumed}; source position {from}",
            crate::output::redact(&args.from),
            crate::output::redact(&args.to)
        );
    }
    Ok(())
}

/// The read models this build can rebuild.
pub const PROJECTIONS: &str = crate::todo_view::NAME;

/// `annals rebuild` arguments.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The read model: `todos` (the TodoBackend lists of `annals serve`, table `todo_view`).
    pub projection: String,
    /// Refold every row the read model recorded, not only those built by older code.
    #[arg(long)]
    pub all: bool,
}

/// `annals rebuild PROJECTION`: refolds the streams whose read-model rows were built by an
/// older schema of the projection's code (or, with `--all`, every stream it recorded), one
/// stream per transaction, safe while `annals serve` keeps the read model current.
pub async fn rebuild(
    store: &Arc<dyn EventStore>,
    read_model: Option<&ReadModelDb>,
    args: RebuildArgs,
    out: &Output,
) -> anyhow::Result<()> {
    known_projection(&args.projection)?;
    let db = needs_read_model(read_model)?;
    let schema = crate::todo_view::SCHEMA;
    let rows = crate::todo_view::rows(&**store, db).await?;
    let chosen = rows
        .iter()
        .filter(|r| args.all || r.is_stale(schema))
        .count();
    let bar = progress(Some(chosen as u64), "rebuilding");
    let rebuilt = crate::todo_view::rebuild_lists(&**store, db, args.all).await?;
    bar.finish_and_clear();
    let (streams, events) = (rebuilt.streams, rebuilt.events);
    let current = (rows.len() as u64).saturating_sub(streams);
    if out.json {
        out.line(&json!({"projection": args.projection, "schema": schema, "rebuilt_streams": streams, "events": events, "current_streams": current}));
    } else {
        println!(
            "{}: rebuilt {streams} streams ({events} events) with schema {schema}; {current} streams were current",
            args.projection
        );
    }
    Ok(())
}

fn known_projection(name: &str) -> anyhow::Result<()> {
    if name != crate::todo_view::NAME {
        bail!("unknown projection {name:?}: this build knows {PROJECTIONS}");
    }
    Ok(())
}

pub(crate) fn needs_read_model(read_model: Option<&ReadModelDb>) -> anyhow::Result<&ReadModelDb> {
    read_model.context(
        "read models are kept in SQL databases: memory:// has none; name one with --read-model sqlite://PATH or postgres://...",
    )
}

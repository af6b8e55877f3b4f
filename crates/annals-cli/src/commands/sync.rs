//! `annals sync`: copy every event of one store into another, resumably.

use std::sync::Arc;
use std::time::Duration;

use annals::{
    DeleteMode, Error, EventStore, ExpectedVersion, Feed, FeedOptions, Filter, Position,
    RecordedEvent, Retention, RetentionScope, StreamChange, Version,
};
use anyhow::Context;
use example_todo::server::shutdown_signal;
use futures::StreamExt;
use serde_json::json;

use super::PAGE;
use crate::output::{progress, Output};
use crate::store_url::{Access, Opened, StoreUrl};

/// The most events one import sends.
const IMPORT_CHUNK: usize = 1000;

/// The checkpoint group `annals sync` keeps in the target.
pub(crate) const SYNC_GROUP: &str = "annals.sync";

/// `annals sync` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct SyncArgs {
    /// The store to copy from.
    #[arg(long)]
    pub from: String,
    /// The store to copy into (it keeps the checkpoint that makes the copy resumable).
    #[arg(long)]
    pub to: String,
    /// Events per imported batch (one transaction each).
    #[arg(long, default_value_t = PAGE)]
    pub batch: usize,
    /// Once copied to the head, keep copying new events (and deletions) as the source
    /// records them, until interrupted (Ctrl-C or SIGTERM); the checkpoint follows each
    /// batch.
    #[arg(long)]
    pub follow: bool,
    /// Make the target's retention policies those of the source (set, changed and cleared
    /// as there) before copying and, with `--follow`, as the source changes them. Without
    /// it the target keeps its own (an archive that keeps what a short-lived source
    /// expires).
    #[arg(long)]
    pub retention: bool,
}

/// How often a following copy looks for new events when the source signals none (another
/// process writing to it; writes through this process wake it at once).
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// `annals sync`: copies every event of `--from` into `--to` in read-all order, with its
/// stream version, id, metadata and timestamp, committing after each batch a checkpoint
/// in the target; a later run resumes after it (and events already copied are recognised
/// by id, so an interruption between a batch and its checkpoint duplicates nothing).
pub(crate) async fn run(args: SyncArgs, out: &Output) -> anyhow::Result<()> {
    let from_url: StoreUrl = args.from.parse().context("--from")?;
    let to_url: StoreUrl = args.to.parse().context("--to")?;
    let source = Opened::open(&from_url, Access::Read)
        .await
        .with_context(|| format!("--from {from_url}"))?;
    let target = Opened::open(&to_url, Access::Write)
        .await
        .with_context(|| format!("--to {to_url}"))?;
    let checkpoints = target.checkpoints();
    let source_name = from_url.to_string();
    // Everything committed before the sync started is copied by this run (PostgreSQL
    // holds back events behind transactions still in flight).
    source.events.await_visible().await?;
    let mut policies = match args.retention {
        true => Some(mirror_retention(&*source.events, &*target.events, None).await?),
        false => None,
    };
    let resume = checkpoints.load(SYNC_GROUP, &source_name).await?;
    let mut from = resume.unwrap_or(Position::START);
    let bar = progress(None, "copying");
    let (mut read, mut written, mut applied) = (0u64, 0u64, 0u64);
    let options = match args.follow {
        true => FeedOptions::follow(Filter::all(), FOLLOW_POLL),
        false => FeedOptions::to_end(Filter::all()),
    };
    let options = options.page_size(args.batch.max(1));
    let mut pages = Feed::new(Arc::clone(&source.events), from, options).pages();
    let mut following = false;
    // Ctrl-C or SIGTERM stops a following copy; the handlers are installed now, for the
    // whole run, so a signal while a batch is copied (or before the first wait) is not
    // lost. A copy to the head keeps the signals' default (ended at once: every batch is
    // atomic, and the checkpoint follows it).
    let stop = args.follow.then(shutdown_signal);
    let mut interrupted = std::pin::pin!(async move {
        match stop {
            Some(stop) => stop.await,
            None => std::future::pending().await,
        }
    });
    loop {
        // Only the wait for a page is interrupted: a batch under way is imported and
        // checkpointed first.
        let page = tokio::select! {
            page = pages.next() => page,
            _ = &mut interrupted => None,
        };
        let Some(page) = page else { break };
        let page = page?;
        let n = page.events.len() as u64;
        if n > 0 {
            // One atomic import per chunk: every store takes 1,000 events at once (NATS at
            // most that); a resumed run recognises chunks already copied. A deletion or
            // truncation the source recorded is done in the target at its place in the feed.
            let mut chunk = Vec::with_capacity(page.events.len().min(IMPORT_CHUNK));
            for event in page.events {
                let change = StreamChange::of(&event);
                if change.is_none() {
                    chunk.push(event);
                }
                if change.is_some() || chunk.len() == IMPORT_CHUNK {
                    written +=
                        import(&*target.events, &mut chunk, &from_url, &to_url, from).await?;
                }
                if let Some(change) = change {
                    apply(&change, &*target.events).await.with_context(|| {
                        format!("{change} (recorded in {from_url}) in {to_url}")
                    })?;
                    applied += 1;
                }
            }
            written += import(&*target.events, &mut chunk, &from_url, &to_url, from).await?;
            read += n;
        }
        if page.next > from {
            checkpoints
                .commit(SYNC_GROUP, &source_name, page.next)
                .await?;
            from = page.next;
        }
        bar.inc(n);
        if out.json && n > 0 {
            out.line(&json!({"copied": read, "written": written, "applied": applied, "position": from.to_string()}))?;
        }
        if let Some(known) = policies.as_mut().filter(|_| args.follow && page.end) {
            // At the head of a following copy: the source's policy changes since.
            *known = mirror_retention(&*source.events, &*target.events, Some(&*known)).await?;
        }
        if args.follow && page.end && !following {
            following = true;
            match out.json {
                true => out.line(
                    &json!({"following": true, "copied": read, "position": from.to_string()}),
                )?,
                false => bar.suspend(|| -> Result<(), crate::output::Unwritten> {
                    say!(
                        "{read} events copied; following {from_url} for new ones (Ctrl-C to stop)"
                    );
                    Ok(())
                })?,
            }
        }
    }
    bar.finish_and_clear();
    if out.json {
        out.line(&json!({"done": true, "read": read, "written": written, "applied": applied, "resumed_after": resume.map(|p| p.to_string()), "position": from.to_string()}))?;
    } else {
        let resumed = match resume {
            Some(p) => format!(" (resumed after position {p})"),
            None => String::new(),
        };
        say!(
            "synced {} -> {}: {read} events read, {written} written, {applied} deletions and \
             truncations done{resumed}; source position {from}",
            from_url,
            to_url
        );
    }
    Ok(())
}

/// Makes `target`'s retention policies those of `source`, and returns them; with `known`
/// (the source's policies as last mirrored), nothing is done unless they changed.
async fn mirror_retention(
    source: &dyn EventStore,
    target: &dyn EventStore,
    known: Option<&[(RetentionScope, Retention)]>,
) -> anyhow::Result<Vec<(RetentionScope, Retention)>> {
    let mut wanted = source
        .retention()
        .await
        .context("the source's retention policies")?;
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    if known == Some(&wanted[..]) {
        return Ok(wanted);
    }
    let had = target
        .retention()
        .await
        .context("the target's retention policies")?;
    for (scope, _) in had
        .iter()
        .filter(|(s, _)| !wanted.iter().any(|(w, _)| w == s))
    {
        target
            .set_retention(scope, Retention::default())
            .await
            .with_context(|| format!("clearing the retention of {scope} in the target"))?;
    }
    for (scope, policy) in &wanted {
        if !had.contains(&(scope.clone(), *policy)) {
            target
                .set_retention(scope, *policy)
                .await
                .with_context(|| format!("setting the retention of {scope} in the target"))?;
        }
    }
    Ok(wanted)
}

/// Imports `chunk` (taking its events; nothing when it is empty), turning the refusal of a
/// stream the target has at a lower version into one line that says why.
async fn import(
    target: &dyn EventStore,
    chunk: &mut Vec<RecordedEvent>,
    from_url: &StoreUrl,
    to_url: &StoreUrl,
    from: Position,
) -> anyhow::Result<u64> {
    if chunk.is_empty() {
        return Ok(0);
    }
    match target.import(std::mem::take(chunk)).await {
        Err(Error::WrongExpectedVersion {
            stream,
            expected: ExpectedVersion::Exact(first),
            actual,
        }) if first > actual => {
            anyhow::bail!(
                "{stream}: its events from version {actual} to {first} are not in the feed of \
                 {from_url} (deleted, truncated or expired there), and an import continues a \
                 stream only from its version ({actual} in {to_url}): `annals sync` cannot copy \
                 this stream; nothing of this batch was written, the copy stops after position \
                 {from}"
            )
        }
        other => Ok(other?),
    }
}

/// Does a deletion or truncation the source recorded again in `target` (rather than copying
/// its system event): the target then hides what the source hides, also events an earlier
/// run had copied, and records it in its own `{category}-$deleted`. Each way is safe to
/// repeat (a resumed run may): a soft deletion imported at the source's version
/// (`import_deletion`: a stream the target has at a lower version, or not at all, as a
/// fresh copy has a stream deleted with nothing written after, moves on to it); where the
/// target has gone past it (events written after the deletion, already copied), a
/// truncation there. A tombstone in the target supersedes a soft deletion or truncation.
async fn apply(change: &StreamChange, target: &dyn EventStore) -> annals::Result<()> {
    let done = match change {
        StreamChange::Deleted {
            stream, hard: true, ..
        } => target
            .delete_stream(stream, ExpectedVersion::Any, DeleteMode::Hard)
            .await
            .map(drop),
        StreamChange::Deleted {
            stream,
            version,
            hard: false,
        } => match target.import_deletion(stream, Version(*version)).await {
            Err(Error::WrongExpectedVersion { actual, .. }) if actual.get() > *version => target
                .truncate_before(stream, Version(*version))
                .await
                .map(drop),
            other => other.map(drop),
        },
        StreamChange::Truncated { stream, before } => target
            .truncate_before(stream, Version(*before))
            .await
            .map(drop),
    };
    match done {
        Err(Error::StreamDeleted { .. }) => Ok(()),
        other => other,
    }
}

//! `annals sync`: copy every event of one store into another, resumably.

use std::sync::Arc;

use annals::{Error, ExpectedVersion, Feed, FeedOptions, Filter, Position};
use anyhow::Context;
use futures::StreamExt;
use serde_json::json;

use super::PAGE;
use crate::output::{progress, Output};
use crate::store_url::{Opened, StoreUrl};

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
}

/// `annals sync`: copies every event of `--from` into `--to` in read-all order, with its
/// stream version, id, metadata and timestamp, committing after each batch a checkpoint
/// in the target; a later run resumes after it (and events already copied are recognised
/// by id, so an interruption between a batch and its checkpoint duplicates nothing).
pub(crate) async fn run(args: SyncArgs, out: &Output) -> anyhow::Result<()> {
    let from_url: StoreUrl = args.from.parse().context("--from")?;
    let to_url: StoreUrl = args.to.parse().context("--to")?;
    let source = Opened::open(&from_url)
        .await
        .with_context(|| format!("--from {from_url}"))?;
    let target = Opened::open(&to_url)
        .await
        .with_context(|| format!("--to {to_url}"))?;
    let checkpoints = target.checkpoints();
    let source_name = from_url.to_string();
    // Everything committed before the sync started is copied by this run (PostgreSQL
    // holds back events behind transactions still in flight).
    source.events.await_visible().await?;
    let resume = checkpoints.load(SYNC_GROUP, &source_name).await?;
    let mut from = resume.unwrap_or(Position::START);
    let bar = progress(None, "copying");
    let (mut read, mut written) = (0u64, 0u64);
    let options = FeedOptions::to_end(Filter::all()).page_size(args.batch.max(1));
    let mut pages = Feed::new(Arc::clone(&source.events), from, options).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        let n = page.events.len() as u64;
        if n > 0 {
            // One atomic import per chunk: every store takes 1,000 events at once (NATS at
            // most that); a resumed run recognises chunks already copied.
            let mut events = page.events;
            while !events.is_empty() {
                let rest = events.split_off(events.len().min(IMPORT_CHUNK));
                written += match target.events.import(events).await {
                    Err(Error::WrongExpectedVersion {
                        stream,
                        expected: ExpectedVersion::Exact(first),
                        actual,
                    }) if first > actual => {
                        anyhow::bail!(
                            "{stream}: its events from version {actual} to {first} are not in \
                             the feed of {from_url} (deleted, truncated or expired there), and an \
                             import continues a stream only from its version ({actual} in \
                             {to_url}): `annals sync` cannot copy this stream; nothing of this \
                             batch was written, the copy stops after position {from}"
                        )
                    }
                    other => other?,
                };
                events = rest;
            }
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
            from_url, to_url
        );
    }
    Ok(())
}

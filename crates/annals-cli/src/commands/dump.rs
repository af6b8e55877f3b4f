//! `annals dump`: every event (of some categories, after a position) as JSON lines.

use std::sync::Arc;

use annals::{EventStore, Feed, FeedOptions, Position};
use futures::StreamExt;

use super::{filter, position};
use crate::output::{event_json, progress, Output};

/// `annals dump` and `annals tail` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct FeedArgs {
    /// Only this category (repeatable).
    #[arg(long)]
    pub category: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// Start after this position (as printed by `read`, `dump` or `checkpoint`).
    #[arg(long)]
    pub from: Option<String>,
}

/// `annals dump`: every event after `--from`, as JSON lines.
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    args: FeedArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let filter = filter(&args.category, &args.event_type)?;
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
            out.line(&event_json(e))?;
        }
        bar.inc(page.events.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

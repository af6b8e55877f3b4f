//! `annals tail`: follow new events as they are written.

use std::sync::Arc;
use std::time::Duration;

use annals::{EventStore, Feed, FeedOptions, Filter, Position, SubscribeExt, SubscribeOptions};
use example_todo::server::shutdown_signal;
use futures::StreamExt;

use super::dump::FeedArgs;
use super::{filter, position, PAGE};
use crate::output::{event_json, event_row, Output};

/// `annals tail` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
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
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    args: TailArgs,
    out: &Output,
) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM ends it; the handlers are installed before anything is shown, so
    // a signal sent once the first line is out stops it cleanly.
    let mut interrupted = std::pin::pin!(shutdown_signal());
    let filter = filter(&args.feed.category)?;
    let from = match &args.feed.from {
        Some(p) => position(p)?,
        None => end_of_feed(store, &filter).await?,
    };
    if !out.json {
        say!("following from position {from} (Ctrl-C to stop)");
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
            _ = &mut interrupted => return Ok(()),
        };
        let Some(e) = next else { return Ok(()) };
        let e = e?;
        if out.json {
            out.line(&event_json(&e))?;
        } else {
            say!("{}", event_row(&e).join("  "));
        }
        seen += 1;
    }
}

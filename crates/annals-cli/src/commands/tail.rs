//! `annals tail`: follow new events as they are written.

use std::sync::Arc;
use std::time::Duration;

use annals::{EventStore, Filter, SubscribeExt, SubscribeOptions, Version};
use example_todo::server::shutdown_signal;
use futures::StreamExt;

use super::dump::FeedArgs;
use super::{filter, position, stream_name};
use crate::output::{event_json, event_row, Output};

/// `annals tail` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Follow one stream instead of the feed: its new events, or its events from
    /// `--from-version` on.
    #[arg(long, conflicts_with_all = ["category", "from"])]
    stream: Option<String>,
    /// With `--stream`: start at this version of the stream (0: its first event).
    #[arg(long, requires = "stream")]
    from_version: Option<u64>,
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
    let options = SubscribeOptions {
        poll_interval: Duration::from_millis(250),
        ..SubscribeOptions::default()
    };
    let mut feed = match &args.stream {
        Some(name) => {
            let stream = stream_name(name)?;
            let from = match args.from_version {
                Some(v) => Version(v),
                None => store.stream_version(&stream).await?,
            };
            if !out.json {
                say!("following {stream} from version {from} (Ctrl-C to stop)");
            }
            let filter = filter(&[], &args.feed.event_type)?;
            store.subscribe_stream(stream, from, SubscribeOptions { filter, ..options })
        }
        None => {
            let filter: Filter = filter(&args.feed.category, &args.feed.event_type)?;
            // From the head (one round trip): whatever is written after it is new.
            let from = match &args.feed.from {
                Some(p) => position(p)?,
                None => store.head_position().await?.unwrap_or_default(),
            };
            if !out.json {
                say!("following from position {from} (Ctrl-C to stop)");
            }
            store.subscribe(from, SubscribeOptions { filter, ..options })
        }
    };
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

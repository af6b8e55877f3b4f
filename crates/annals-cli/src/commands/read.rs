//! `annals read`: one stream, forward or backward.

use std::sync::Arc;

use annals::{EventStore, ReadStream, Version};
use futures::StreamExt;

use super::stream_name;
use crate::output::{event_json, event_row, Output, EVENT_HEADERS};

/// `annals read` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ReadArgs {
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
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    args: ReadArgs,
    out: &Output,
) -> anyhow::Result<()> {
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
            out.line(&event_json(&e))?;
        } else {
            rows.push(event_row(&e));
        }
    }
    if !out.json {
        if rows.is_empty() {
            say!("{stream}: no events");
        } else {
            out.table(&EVENT_HEADERS, &rows)?;
        }
    }
    Ok(())
}

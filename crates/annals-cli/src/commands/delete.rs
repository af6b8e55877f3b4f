//! `annals delete STREAM [--hard]` and `annals truncate STREAM --before N`.

use std::sync::Arc;

use annals::{DeleteMode, EventStore, Version};
use serde_json::json;

use super::{expected, stream_name};
use crate::output::Output;

/// `annals delete` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// The stream, `{category}-{id}`.
    stream: String,
    /// Leave a tombstone: the name can never be written or read again. Without it the
    /// stream reads as empty and a later append continues after its last version.
    #[arg(long)]
    hard: bool,
    /// The stream's version the deletion expects: a number, `any`, `no-stream` or `exists`.
    #[arg(long, default_value = "any")]
    expected: String,
}

/// `annals truncate` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TruncateArgs {
    /// The stream, `{category}-{id}`.
    stream: String,
    /// Hide the events below this version (at most the stream's version).
    #[arg(long)]
    before: u64,
}

/// `annals delete`.
pub(crate) async fn delete(
    store: &Arc<dyn EventStore>,
    args: DeleteArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let stream = stream_name(&args.stream)?;
    let expected = expected(&args.expected)?;
    let mode = if args.hard {
        DeleteMode::Hard
    } else {
        DeleteMode::Soft
    };
    let version = store.delete_stream(&stream, expected, mode).await?;
    if out.json {
        out.line(&json!({"stream": stream.as_str(), "version": version.get(), "hard": args.hard}))?;
    } else if args.hard {
        say!("{stream} deleted for good at version {version} (a tombstone)");
    } else {
        say!("{stream} deleted at version {version}: it reads as empty; appends continue from {version}");
    }
    Ok(())
}

/// `annals truncate`.
pub(crate) async fn truncate(
    store: &Arc<dyn EventStore>,
    args: TruncateArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let stream = stream_name(&args.stream)?;
    let start = store.truncate_before(&stream, Version(args.before)).await?;
    if out.json {
        out.line(&json!({"stream": stream.as_str(), "start": start.get()}))?;
    } else {
        say!("{stream} now starts at version {start}");
    }
    Ok(())
}

/// `annals scavenge` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ScavengeArgs {
    /// Only count what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Events removed per transaction (the store stays online between them).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// `annals scavenge`: removes, in batches, the events reads no longer show.
pub(crate) async fn scavenge(
    store: &Arc<dyn EventStore>,
    args: ScavengeArgs,
    out: &Output,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be more than zero");
    let planned = store.scavenge(usize::MAX, true).await?;
    let mut done = annals::Scavenged::default();
    if !args.dry_run {
        let bar = crate::output::progress(Some(planned.events), "scavenging");
        loop {
            let step = store.scavenge(args.batch, false).await?;
            done.events += step.events;
            done.bytes += step.bytes;
            done.free_bytes = step.free_bytes;
            bar.inc(step.events);
            if step.events == 0 {
                break;
            }
        }
        bar.finish_and_clear();
    }
    let (verb, report) = match args.dry_run {
        true => ("would remove", planned),
        false => ("removed", done),
    };
    if out.json {
        out.line(&json!({
            "dry_run": args.dry_run,
            "events": report.events,
            "bytes": report.bytes,
            "free_bytes": report.free_bytes,
        }))?;
    } else {
        let free = report
            .free_bytes
            .map(|b| format!("; {b} bytes now free inside the store, reused by new events"))
            .unwrap_or_default();
        say!(
            "{verb} {} events ({} bytes of data and metadata){free}",
            report.events,
            report.bytes
        );
    }
    Ok(())
}

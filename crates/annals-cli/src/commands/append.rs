//! `annals append`: one event to a stream.

use std::sync::Arc;

use annals::{EventData, EventStore};
use serde_json::json;

use super::{expected, json_arg, stream_name};
use crate::output::Output;

/// `annals append` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AppendArgs {
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
pub(crate) async fn run(
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
        }))?;
    } else {
        say!(
            "appended to {stream}: now at version {}, position {}",
            appended.version,
            appended.last_position
        );
    }
    Ok(())
}

//! `annals append`: one event to a stream.

use std::sync::Arc;

use std::io::Read;

use annals::{EventData, EventStore, Uuid};
use anyhow::Context;
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
    /// The event body, JSON: the text itself, `@PATH` to read it from a file, or `-` from
    /// standard input.
    #[arg(long)]
    data: String,
    /// Metadata, JSON (also `@PATH` or `-`).
    #[arg(long)]
    metadata: Option<String>,
    /// The event's id (a UUID; a new one when not given). Running the same append again
    /// with the same id writes nothing the second time: a script can retry safely.
    #[arg(long)]
    id: Option<Uuid>,
    /// The id of the event or request that caused this one (a UUID).
    #[arg(long)]
    causation_id: Option<Uuid>,
    /// The id correlating this event with others of one workflow (a UUID).
    #[arg(long)]
    correlation_id: Option<Uuid>,
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
    anyhow::ensure!(
        !(args.data == "-" && args.metadata.as_deref() == Some("-")),
        "--data and --metadata cannot both be read from standard input"
    );
    let mut event = EventData::new(args.event_type, body("--data", &args.data)?);
    if let Some(metadata) = &args.metadata {
        event = event.with_metadata(body("--metadata", metadata)?);
    }
    if let Some(id) = args.id {
        event.event_id = id;
    }
    event.causation_id = args.causation_id;
    event.correlation_id = args.correlation_id;
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

/// A JSON argument given as text, `@PATH` (a file) or `-` (standard input), checked before
/// anything is written.
fn body(flag: &str, arg: &str) -> anyhow::Result<Vec<u8>> {
    let text = match (arg, arg.strip_prefix('@')) {
        ("-", _) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("{flag} -: read standard input"))?;
            text
        }
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("{flag} @{path}: read the file"))?,
        _ => return json_arg(flag, arg),
    };
    json_arg(flag, &text)
}

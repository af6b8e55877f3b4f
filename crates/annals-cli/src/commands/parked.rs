//! `annals parked`: list, replay or skip the streams consumer groups parked.

use std::sync::Arc;

use annals::{CheckpointStore, EventStore};
use anyhow::bail;
use serde_json::{json, Value};

use super::{needs_read_model, stream_name};
use crate::output::{time, Output};
use crate::read_models::{self, PROJECTIONS};
use crate::store_url::ReadModelDb;

/// `annals parked` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ParkedCommand {
    /// The streams consumer groups parked, with the versions skipped and their errors.
    List {
        /// Only this consumer group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Applies a parked stream's events after the read model's progress (exactly once),
    /// then unparks it: run it once the cause is fixed.
    Replay {
        /// The parked stream.
        stream: String,
        /// Its consumer group.
        #[arg(long, default_value = read_models::todos::GROUP)]
        group: String,
    },
    /// Unparks a stream without applying its skipped events: the group goes on with its
    /// next events.
    Skip {
        /// The parked stream.
        stream: String,
        /// Its consumer group.
        #[arg(long, default_value = read_models::todos::GROUP)]
        group: String,
    },
}

pub(crate) fn parked_json(p: &annals::ParkedStream) -> Value {
    json!({
        "group": p.group,
        "stream": p.stream.as_str(),
        "from_version": p.from.get(),
        "to_version": p.to.get(),
        "attempts": p.attempts,
        "first_error": p.first_error,
        "last_error": p.last_error,
        "parked_at": time(p.parked_at),
        "updated_at": time(p.updated_at),
    })
}

pub(crate) fn show_parked(
    parked: &[annals::ParkedStream],
    out: &Output,
) -> Result<(), crate::output::Unwritten> {
    let rows: Vec<Vec<String>> = parked
        .iter()
        .map(|p| {
            vec![
                p.group.clone(),
                p.stream.to_string(),
                format!("{}..{}", p.from.get(), p.to.get()),
                p.attempts.to_string(),
                time(p.parked_at),
                p.last_error.clone(),
            ]
        })
        .collect();
    out.table(
        &[
            "group",
            "stream",
            "versions",
            "attempts",
            "parked at",
            "error",
        ],
        &rows,
    )
}

/// `annals parked`.
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    read_model: Option<&ReadModelDb>,
    checkpoints: &Arc<dyn CheckpointStore>,
    command: ParkedCommand,
    out: &Output,
) -> anyhow::Result<()> {
    match command {
        ParkedCommand::List { group } => {
            let list = checkpoints.parked(group.as_deref()).await?;
            if out.json {
                for p in &list {
                    out.line(&parked_json(p))?;
                }
            } else if list.is_empty() {
                say!("no parked streams");
            } else {
                show_parked(&list, out)?;
            }
        }
        ParkedCommand::Replay { stream, group } => {
            let name = stream_name(&stream)?;
            if group != read_models::todos::GROUP {
                bail!(
                    "annals parked replay applies the {PROJECTIONS} read model (group {}); a stream of group {group:?} is replayed by the process that owns that group, or skipped with `annals parked skip`",
                    read_models::todos::GROUP
                );
            }
            let db = needs_read_model(read_model)?;
            let listed = checkpoints.parked(Some(&group)).await?;
            if !listed.iter().any(|p| p.stream == name) {
                bail!("{name} is not parked in group {group}");
            }
            let applied = read_models::todos::catch_up(&**store, db, &name).await?;
            checkpoints.unpark(&group, &name).await?;
            if out.json {
                out.line(&json!({"group": group, "stream": name.as_str(), "replayed": applied}))?;
            } else {
                say!("{name}: {applied} events applied to the read model; unparked from {group}");
            }
        }
        ParkedCommand::Skip { stream, group } => {
            let name = stream_name(&stream)?;
            if !checkpoints.unpark(&group, &name).await? {
                bail!("{name} is not parked in group {group}");
            }
            if out.json {
                out.line(&json!({"group": group, "stream": name.as_str(), "skipped": true}))?;
            } else {
                say!("{name}: unparked from {group} without applying its skipped events");
            }
        }
    }
    Ok(())
}

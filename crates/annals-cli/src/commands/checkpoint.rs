//! `annals checkpoint`: list, show or move consumer groups' checkpoints.

use std::sync::Arc;

use annals::{CheckpointStore, EventStore, Position};
use anyhow::bail;
use serde_json::json;

use super::position;
use crate::output::Output;

/// `annals checkpoint` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CheckpointCommand {
    /// Every consumer group's checkpoints.
    List,
    /// One group's checkpoints.
    Show {
        /// The consumer group.
        group: String,
    },
    /// Moves a group's checkpoint (to replay, or to skip ahead).
    Set {
        /// The consumer group.
        group: String,
        /// The position to resume after (`0` for the start).
        position: String,
        /// The source the checkpoint is for.
        #[arg(long, default_value = "all")]
        source: String,
    },
}

/// `annals checkpoint`.
pub(crate) async fn run(
    events: &Arc<dyn EventStore>,
    checkpoints: &Arc<dyn CheckpointStore>,
    command: CheckpointCommand,
    out: &Output,
) -> anyhow::Result<()> {
    let show = |list: Vec<annals::Checkpoint>| -> Result<(), crate::output::Unwritten> {
        if out.json {
            for c in &list {
                out.line(&json!({"group": c.group, "source": c.source, "position": c.position.to_string()}))?;
            }
        } else if list.is_empty() {
            say!("no checkpoints");
        } else {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| vec![c.group.clone(), c.source.clone(), c.position.to_string()])
                .collect();
            out.table(&["group", "source", "position"], &rows)?;
        }
        Ok(())
    };
    match command {
        CheckpointCommand::List => show(checkpoints.list().await?)?,
        CheckpointCommand::Show { group } => {
            let list: Vec<_> = checkpoints
                .list()
                .await?
                .into_iter()
                .filter(|c| c.group == group)
                .collect();
            if list.is_empty() {
                bail!("no checkpoint for group {group:?}");
            }
            show(list)?;
        }
        CheckpointCommand::Set {
            group,
            position: text,
            source,
        } => {
            let at = position(&text)?;
            if group.trim().is_empty() || source.trim().is_empty() {
                bail!("a checkpoint needs a group and a source, not empty or blank names");
            }
            // `annals sync` keeps positions of the store it copies from; the others are
            // positions in this store's feed, where one past the head would make the
            // group skip every event written until the store gets there.
            if group != super::sync::SYNC_GROUP {
                let head = events.head_position().await?.unwrap_or(Position::START);
                if at > head {
                    bail!("position {at} is past the store's head ({head}): {group} would skip every event written until the store got there; the furthest it can resume after is the head");
                }
            }
            checkpoints.commit(&group, &source, at).await?;
            if out.json {
                out.line(&json!({"group": group, "source": source, "position": at.to_string()}))?;
            } else {
                say!("{group} ({source}) now resumes after position {at}");
            }
        }
    }
    Ok(())
}

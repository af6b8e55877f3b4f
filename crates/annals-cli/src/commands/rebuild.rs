//! `annals rebuild`: refold a read model's rows built by older code.

use std::sync::Arc;

use annals::EventStore;
use anyhow::bail;
use serde_json::json;

use super::needs_read_model;
use crate::output::{progress, Output};
use crate::read_models::{self, PROJECTIONS};
use crate::store_url::ReadModelDb;

/// `annals rebuild` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RebuildArgs {
    /// The read model: `todos` (the TodoBackend lists of `annals serve`, table `todo_view`).
    pub projection: String,
    /// Refold every row the read model recorded, not only those built by older code.
    #[arg(long)]
    pub all: bool,
}

/// `annals rebuild PROJECTION`: refolds the streams whose read-model rows were built by an
/// older schema of the projection's code (or, with `--all`, every stream it recorded), one
/// stream per transaction, safe while `annals serve` keeps the read model current.
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    read_model: Option<&ReadModelDb>,
    args: RebuildArgs,
    out: &Output,
) -> anyhow::Result<()> {
    known_projection(&args.projection)?;
    let db = needs_read_model(read_model)?;
    let schema = read_models::todos::SCHEMA;
    let rows = read_models::todos::rows(&**store, db).await?;
    let chosen = rows
        .iter()
        .filter(|r| args.all || r.is_stale(schema))
        .count();
    let bar = progress(Some(chosen as u64), "rebuilding");
    let rebuilt = read_models::todos::rebuild_lists(&**store, db, args.all).await?;
    bar.finish_and_clear();
    let (streams, events) = (rebuilt.streams, rebuilt.events);
    let current = (rows.len() as u64).saturating_sub(streams);
    if out.json {
        out.line(&json!({"projection": args.projection, "schema": schema, "rebuilt_streams": streams, "events": events, "current_streams": current}))?;
    } else {
        say!(
            "{}: rebuilt {streams} streams ({events} events) with schema {schema}; {current} streams were current",
            args.projection
        );
    }
    Ok(())
}

fn known_projection(name: &str) -> anyhow::Result<()> {
    if name != read_models::todos::NAME {
        bail!("unknown projection {name:?}: this build knows {PROJECTIONS}");
    }
    Ok(())
}

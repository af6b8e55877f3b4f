//! `annals stats`: streams, events and bytes per category; the head; how far behind each
//! consumer group is; the parked streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use annals::{CheckpointStore, EventStore, Feed, FeedOptions, Filter, Position, StreamName};
use futures::StreamExt;
use serde_json::json;

use super::parked::{parked_json, show_parked};
use super::PAGE;
use crate::output::{progress, Output};

#[derive(Default)]
struct CategoryStats {
    streams: std::collections::HashSet<StreamName>,
    events: u64,
    bytes: u64,
}

/// `annals stats`: streams, events and bytes per category, the head position, how far
/// each checkpoint is behind it, and the parked streams of every group.
pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    checkpoint_store: &Arc<dyn CheckpointStore>,
    out: &Output,
) -> anyhow::Result<()> {
    let mut checkpoints = checkpoint_store.list().await?;
    checkpoints.sort_by_key(|c| c.position);
    let parked = checkpoint_store.parked(None).await?;
    let mut behind = vec![0u64; checkpoints.len()];
    let mut categories: BTreeMap<String, CategoryStats> = BTreeMap::new();
    let mut head = None;
    store.await_visible().await?;
    let bar = progress(None, "reading the store");
    let options = FeedOptions::to_end(Filter::all()).page_size(10 * PAGE);
    let mut pages = Feed::new(Arc::clone(store), Position::START, options).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        for e in &page.events {
            let c = categories
                .entry(e.stream.category().to_owned())
                .or_default();
            if e.stream_version == 0 {
                c.streams.insert(e.stream.clone());
            }
            c.events += 1;
            c.bytes += e.size() as u64;
            head = Some(e.position);
            // Checkpoints sorted by position: those below this event are behind by one more.
            let below = checkpoints.partition_point(|cp| cp.position < e.position);
            for b in &mut behind[..below] {
                *b += 1;
            }
        }
        bar.inc(page.events.len() as u64);
    }
    bar.finish_and_clear();
    let head = head.map(|p| p.to_string());
    if out.json {
        for (name, c) in &categories {
            out.line(&json!({"category": name, "streams": c.streams.len(), "events": c.events, "bytes": c.bytes}))?;
        }
        for (cp, behind) in checkpoints.iter().zip(&behind) {
            out.line(&json!({"group": cp.group, "source": cp.source, "position": cp.position.to_string(), "behind": behind}))?;
        }
        for p in &parked {
            out.line(&parked_json(p))?;
        }
        out.line(
            &json!({"head": head, "events": categories.values().map(|c| c.events).sum::<u64>(), "parked": parked.len()}),
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = categories
        .iter()
        .map(|(name, c)| {
            vec![
                name.clone(),
                c.streams.len().to_string(),
                c.events.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        say!("no events");
    } else {
        out.table(&["category", "streams", "events", "bytes"], &rows)?;
    }
    say!(
        "head position: {}",
        head.as_deref().unwrap_or("none (empty store)")
    );
    if !checkpoints.is_empty() {
        say!();
        let rows: Vec<Vec<String>> = checkpoints
            .iter()
            .zip(&behind)
            .map(|(cp, b)| {
                vec![
                    cp.group.clone(),
                    cp.source.clone(),
                    cp.position.to_string(),
                    b.to_string(),
                ]
            })
            .collect();
        out.table(&["group", "source", "position", "events behind"], &rows)?;
    }
    if !parked.is_empty() {
        say!();
        say!("parked streams (annals parked list | replay | skip):");
        show_parked(&parked, out)?;
    }
    Ok(())
}

//! `annals retention set|clear|show`: how long a category's or a stream's events are kept.

use std::sync::Arc;
use std::time::Duration;

use annals::{EventStore, Retention, RetentionScope};
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::output::Output;

/// `annals retention` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCommand {
    /// Keep a category's (or one stream's) events for a time or a count: reads stop
    /// showing older ones at once; `annals scavenge` removes them.
    Set {
        /// A category (`order`), or one stream (`order-42`), whose policy then replaces
        /// its category's.
        scope: String,
        /// Keep events recorded within this long: `30d`, `12h`, `90min`, `1week`...
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
        /// Keep each stream's last N events.
        #[arg(long)]
        max_count: Option<u64>,
    },
    /// Remove a category's or stream's policy (a stream falls back to its category's).
    Clear {
        /// The category or stream.
        scope: String,
    },
    /// Every policy set.
    Show,
}

fn scope(text: &str) -> anyhow::Result<RetentionScope> {
    text.parse()
        .with_context(|| format!("{text:?} is neither a category nor a stream name"))
}

pub(crate) async fn run(
    store: &Arc<dyn EventStore>,
    command: RetentionCommand,
    out: &Output,
) -> anyhow::Result<()> {
    match command {
        RetentionCommand::Set {
            scope: text,
            max_age,
            max_count,
        } => {
            let scope = scope(&text)?;
            let retention = Retention { max_age, max_count };
            anyhow::ensure!(
                !retention.keeps_all(),
                "give --max-age, --max-count or both (`annals retention clear {text}` removes a policy)"
            );
            store.set_retention(&scope, retention).await?;
            report(out, &scope, &retention)?;
        }
        RetentionCommand::Clear { scope: text } => {
            let scope = scope(&text)?;
            store.set_retention(&scope, Retention::default()).await?;
            report(out, &scope, &Retention::default())?;
        }
        RetentionCommand::Show => {
            let policies = store.retention().await?;
            if policies.is_empty() && !out.json {
                say!("no retention policy: every event is kept");
            }
            for (scope, retention) in &policies {
                report(out, scope, retention)?;
            }
        }
    }
    Ok(())
}

fn report(
    out: &Output,
    scope: &RetentionScope,
    retention: &Retention,
) -> Result<(), crate::output::Unwritten> {
    if out.json {
        let (kind, name) = match scope {
            RetentionScope::Category(c) => ("category", c.as_str()),
            RetentionScope::Stream(s) => ("stream", s.as_str()),
        };
        out.line(&json!({
            "kind": kind,
            "name": name,
            "max_age_seconds": retention.max_age.map(|a| a.as_secs_f64()),
            "max_count": retention.max_count,
        }))?;
    } else {
        say!("{scope}: {retention}");
    }
    Ok(())
}

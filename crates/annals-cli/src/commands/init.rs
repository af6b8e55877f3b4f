//! `annals init`: create the store, or migrate it to this build's schema.

use serde_json::json;

use crate::output::Output;
use crate::store_url::{Backend, Opened};

/// The store's backend, schema version (SQL stores) and a line saying what it is.
pub(crate) async fn describe(
    opened: &Opened,
) -> anyhow::Result<(&'static str, Option<i64>, String)> {
    Ok(match &opened.backend {
        Backend::Postgres(pg) => {
            let v = pg.schema_version().await?;
            (
                "postgres",
                Some(i64::from(v)),
                format!("schema version {v}"),
            )
        }
        Backend::Sqlite(_) => (
            "sqlite",
            Some(annals_sqlite::SCHEMA_VERSION),
            format!("schema version {}", annals_sqlite::SCHEMA_VERSION),
        ),
        Backend::Nats(n) => (
            "nats",
            None,
            format!(
                "JetStream stream {}, {} replica(s)",
                n.config().stream,
                n.config().replicas
            ),
        ),
        Backend::Memory(_) => ("memory", None, "nothing to create".to_owned()),
    })
}

/// `annals init`.
pub(crate) async fn run(opened: &Opened, out: &Output) -> anyhow::Result<()> {
    let url = &opened.url;
    let (backend, schema, detail) = describe(opened).await?;
    if out.json {
        out.line(
            &json!({ "store": url.to_string(), "backend": backend, "schema_version": schema }),
        )?;
    } else {
        say!("{url} is ready ({backend}, {detail})");
    }
    Ok(())
}

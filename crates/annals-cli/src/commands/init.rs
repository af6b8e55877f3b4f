//! `annals init`: create the store, or migrate it to this build's schema.

use serde_json::json;

use crate::output::Output;
use crate::store_url::{Backend, Opened};

/// `annals init`.
pub(crate) async fn run(opened: &Opened, out: &Output) -> anyhow::Result<()> {
    let url = &opened.url;
    let (backend, schema) = match &opened.backend {
        Backend::Postgres(pg) => ("postgres", Some(pg.schema_version().await? as i64)),
        Backend::Sqlite(_) => ("sqlite", Some(annals_sqlite::SCHEMA_VERSION)),
        Backend::Memory(_) => ("memory", None),
    };
    if out.json {
        out.line(
            &json!({ "store": url.to_string(), "backend": backend, "schema_version": schema }),
        );
    } else {
        match schema {
            Some(v) => println!("{url} is ready ({backend}, schema version {v})"),
            None => println!("{url} is ready ({backend}, nothing to create)"),
        }
    }
    Ok(())
}

//! Choosing a store by URL: the one place (with the samples) that names concrete stores.

use std::sync::Arc;

use annals::{EventStore, Instrumented, MemoryStore};
use annals_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{bail, Context};

/// The store URLs this build understands, for error messages.
pub const SUPPORTED: &str = "sqlite://PATH, memory://";

/// An opened store.
pub struct Opened {
    /// The store, instrumented with tracing spans and metrics.
    pub store: Arc<dyn EventStore>,
    /// Its SQLite options, when it is a SQLite store.
    pub sqlite: Option<SqliteConfig>,
}

/// Opens the store named by `url`.
pub fn open(url: &str) -> anyhow::Result<Opened> {
    let (scheme, rest) = url.split_once("://").with_context(|| {
        format!("malformed store URL {url:?}: expected SCHEME://..., one of {SUPPORTED}")
    })?;
    match scheme {
        "memory" if rest.is_empty() => Ok(Opened {
            store: Arc::new(Instrumented::new(Arc::new(MemoryStore::new()))),
            sqlite: None,
        }),
        "memory" => bail!("malformed store URL {url:?}: memory:// takes no path"),
        "sqlite" => {
            let config = SqliteConfig::from_url(url)?;
            let store = SqliteStore::open(config.clone())?;
            Ok(Opened {
                store: Arc::new(Instrumented::new(Arc::new(store))),
                sqlite: Some(config),
            })
        }
        other => bail!("unsupported store {other:?} in {url:?}: this build supports {SUPPORTED}"),
    }
}

//! Choosing a store by URL: the one place (with the samples) that names concrete stores.

use std::sync::Arc;

use annals::{EventStore, Instrumented, MemoryStore};
use anyhow::{bail, Context};

/// Opens the store named by `url`, instrumented with tracing spans and metrics.
pub fn open(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    let (scheme, rest) = url.split_once("://").with_context(|| {
        format!("malformed store URL {url:?}: expected SCHEME://..., for example memory://")
    })?;
    match scheme {
        "memory" if rest.is_empty() => {
            Ok(Arc::new(Instrumented::new(Arc::new(MemoryStore::new()))))
        }
        "memory" => bail!("malformed store URL {url:?}: memory:// takes no path"),
        other => bail!("unsupported store {other:?} in {url:?}: this build supports memory://"),
    }
}

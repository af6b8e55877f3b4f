//! The SQLite store against the conformance suite, and what only a file-backed store has:
//! files it must refuse, crashes, several processes, projector transactions.

mod conformance;
mod file;
mod process;
mod read_only;

use std::sync::Arc;

use annals_sqlite::{SqliteConfig, SqliteStore};

/// A store on a fresh file in a fresh temporary directory (kept alive by the caller).
pub fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("annals.db")))
        .expect("open a fresh store");
    (store, dir)
}

/// The store as a shared trait object.
pub fn shared(store: &SqliteStore) -> Arc<dyn annals::EventStore> {
    Arc::new(store.clone())
}

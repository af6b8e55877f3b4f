//! Errors of opening a SQLite store. Errors of store operations are `annals::Error`.

use std::path::PathBuf;

/// Why a SQLite store could not be opened. Nothing was written to the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file exists but is not an Annals database.
    #[error("{path}: not an Annals database ({reason}): point the store at a new file or an Annals database")]
    NotAnnalsDatabase {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The database was created by a newer Annals.
    #[error("{path}: schema version {found} is newer than this build supports ({supported}): upgrade Annals")]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The store was to be opened for writing, but this process cannot write the file or
    /// its directory (SQLite writes its `-wal` and `-shm` files beside it).
    #[error("{path}: this process cannot write the file or its directory (SQLite keeps its -wal and -shm files beside it): open it read-only to read it (SqliteConfig::read_only; `?mode=ro` in a store URL)")]
    NotWritable {
        /// The file.
        path: PathBuf,
    },
    /// The file's directory does not exist (the store creates its file, not directories).
    #[error("{path}: directory {} does not exist: create it first (the store creates its file, not directories)", .path.parent().map(|d| d.display().to_string()).unwrap_or_default())]
    NoDirectory {
        /// The file.
        path: PathBuf,
    },
    /// A read-only open found no file (a read-only open creates nothing).
    #[error("{path}: no such file (opened read-only, the store is not created)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A read-only open found commits in the store's WAL that this process cannot read:
    /// SQLite needs to make a `-shm` index beside the file to read them, and the directory
    /// cannot be written. The file alone would show the store without them.
    #[error("{path} holds commits not yet copied into the database file, which only a process that can write its directory can read (SQLite makes a -shm index beside it): read a copy in a writable directory, or open the store once for writing to fold them in")]
    WalUnreadable {
        /// The `-wal` file.
        path: PathBuf,
    },
    /// A read-only open found a store of an older schema, which it cannot migrate.
    #[error("{path}: schema version {found} is older than this build's ({current}) and a read-only open migrates nothing: open it once for writing (`annals init`)")]
    NeedsMigration {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// This build's version.
        current: i64,
    },
    /// SQLite failed (permissions, disk, locks held past the busy timeout...).
    #[error("SQLite database {path}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

/// A store error; a database busy or locked by another connection, or a full disk (space
/// may be freed), is marked transient ([`annals::Transient`]), as PostgreSQL's
/// insufficient resources are; so is a write the writer's commit hook refused (it ran
/// outside the group's transaction, after SQLite rolled it back or a statement ended it:
/// nothing of it was written), said in those words.
pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> annals::Error {
    let e = e.into();
    let code = e.downcast_ref::<rusqlite::Error>().and_then(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) => Some((f.code, f.extended_code)),
        _ => None,
    });
    match code {
        Some((_, rusqlite::ffi::SQLITE_CONSTRAINT_COMMITHOOK)) => {
            annals::Error::transient("sqlite", Refused { source: e })
        }
        Some((
            rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::DiskFull,
            _,
        )) => annals::Error::transient("sqlite", e),
        _ => annals::Error::backend("sqlite", e),
    }
}

/// A commit the writer's commit hook refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "a write outside the group's transaction (it was rolled back, or ended by a statement) \
     was refused: nothing of it is written"
)]
struct Refused {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

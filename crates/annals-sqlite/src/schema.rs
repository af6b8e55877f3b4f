//! Opening a database file: recognise it, refuse foreign or newer files before touching them,
//! then set the pragmas and apply the versioned migrations shipped in `migrations/`.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{OpenError, SqliteConfig};

/// `PRAGMA application_id` of an Annals database: "ANNL".
pub const APPLICATION_ID: i32 = 0x414E_4E4C;

/// The migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_projection_streams.sql"),
    include_str!("../migrations/0003_head_snapshots.sql"),
    include_str!("../migrations/0004_projection_schema.sql"),
    include_str!("../migrations/0005_parked.sql"),
    include_str!("../migrations/0006_deletion.sql"),
    include_str!("../migrations/0007_scavenge.sql"),
    include_str!("../migrations/0008_retention.sql"),
    include_str!("../migrations/0009_projection_streams_without_rowid.sql"),
];

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// SQLite's answers for a file or directory this process cannot write: a write on a
/// connection SQLite opened read-only, no `-shm` that can be made, or one that cannot be
/// initialised or recovered. (A hot rollback journal a read-only connection cannot roll
/// back, `SQLITE_READONLY_ROLLBACK`, is not among them: that file is not an Annals store.)
const NOT_WRITABLE: [i32; 4] = [
    rusqlite::ffi::SQLITE_READONLY,
    rusqlite::ffi::SQLITE_READONLY_DIRECTORY,
    rusqlite::ffi::SQLITE_READONLY_CANTINIT,
    rusqlite::ffi::SQLITE_READONLY_RECOVERY,
];

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |source| {
        let extended = match &source {
            rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
            _ => None,
        };
        let foreign = |reason: &str| OpenError::NotAnnalsDatabase {
            path: path.to_owned(),
            reason: reason.into(),
        };
        match (source.sqlite_error_code(), extended) {
            (Some(ErrorCode::NotADatabase), _) => foreign("the file is not a SQLite database"),
            // Only a file in rollback-journal mode has a hot journal: never an Annals
            // store, which is set to WAL before anything is written to it.
            (_, Some(rusqlite::ffi::SQLITE_READONLY_ROLLBACK)) => foreign(
                "it has a -journal of an interrupted transaction to roll back, and an Annals \
                 store keeps a WAL",
            ),
            (_, Some(code)) if NOT_WRITABLE.contains(&code) => OpenError::NotWritable {
                path: path.to_owned(),
            },
            _ => OpenError::Sqlite {
                path: path.to_owned(),
                source,
            },
        }
    }
}

/// Opens the writer connection, checks the file, migrates it.
///
/// An existing file is recognised first on a read-only connection, which neither writes
/// the file nor checkpoints (or removes) a `-wal` beside it: a file we refuse is left as it
/// was.
pub(crate) fn open_writer(config: &SqliteConfig) -> Result<Connection, OpenError> {
    let path = config.path.as_path();
    let err = sqlite(path);
    not_a_file(path)?;
    if path.exists() {
        // Before any read: a reader makes the WAL's `-shm` and `-wal` files, owned by this
        // process, which the file's owner might then not be able to write.
        if !writable(path) {
            return Err(OpenError::NotWritable {
                path: path.to_owned(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(path, flags).map_err(&err)?;
        reader.busy_timeout(config.busy_timeout).map_err(&err)?;
        check(&reader, path)?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
    conn.busy_timeout(config.busy_timeout).map_err(&err)?;
    stable_plans(&conn).map_err(&err)?;
    check(&conn, path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Sqlite {
            path: path.to_owned(),
            source: rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL could not be set"
            )),
        });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = {}; PRAGMA foreign_keys = OFF;",
        config.synchronous.pragma(),
        config.wal_autocheckpoint
    ))
    .map_err(&err)?;
    let conn = migrate(conn, path)?;
    if let Some(max) = config.max_bytes {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(&err)?;
        let pages = (max / page.max(1) as u64).clamp(1, i64::MAX as u64);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(&err)?;
    }
    Ok(conn)
}

/// Turns on the query planner stability guarantee: a statement's plan no longer depends on
/// the values bound to it. Without it, SQLite (3.54) marks a statement whose `LIMIT` is a
/// parameter to be prepared again whenever that parameter is bound, so every use of a
/// cached page statement parsed and planned its SQL again (about a third of a 10-event
/// read). The store's statements are written for their index paths and need no
/// value-dependent plans.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

/// Checks, for a store opened read-only, that the file is an Annals store at this schema,
/// writing nothing. Answers whether its connections must read it as immutable: when its
/// directory cannot be written and no process has it open, SQLite cannot make the
/// shared-memory file a WAL reader needs.
pub(crate) fn open_read_only(config: &SqliteConfig) -> Result<bool, OpenError> {
    let path = config.path.as_path();
    not_a_file(path)?;
    match path.try_exists() {
        Ok(true) => {}
        Ok(false) => {
            return Err(OpenError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => {
            return Err(OpenError::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidPath(format!("{}: {e}", path.display()).into()),
            })
        }
    }
    // A file this process cannot write, which no process has open (no `-shm`), is read as
    // immutable: a WAL reader would leave `-shm` and `-wal` files of its own beside it,
    // which the file's owner might not be able to write, and then could not write the
    // store.
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let err = sqlite(path);
    let attempt = |immutable: bool| {
        // Read as immutable, the file would not show the commits its WAL holds.
        let wal = beside("-wal");
        if immutable && std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return Err(OpenError::WalUnreadable { path: wal });
        }
        open_reader(config, immutable)
            .map_err(&err)
            .and_then(|conn| check(&conn, path))
            .map(|version| (version, immutable))
    };
    let checked = match writable(path) || beside("-shm").exists() {
        // Its directory cannot be written: no `-shm` can be made, so immutable it is.
        true => match attempt(false) {
            Err(OpenError::NotWritable { .. }) => attempt(true),
            checked => checked,
        },
        false => attempt(true),
    };
    match checked? {
        (SCHEMA_VERSION, immutable) => Ok(immutable),
        (found, _) => Err(OpenError::NeedsMigration {
            path: path.to_owned(),
            found,
            current: SCHEMA_VERSION,
        }),
    }
}

/// Refuses a path that names a directory, or whose directory does not exist, before
/// SQLite answers "disk I/O error" or "unable to open database file".
fn not_a_file(path: &Path) -> Result<(), OpenError> {
    if path.is_dir() {
        return Err(OpenError::NotAnnalsDatabase {
            path: path.to_owned(),
            reason: "it is a directory".into(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match dir.is_dir() {
        true => Ok(()),
        false => Err(OpenError::NoDirectory {
            path: path.to_owned(),
        }),
    }
}

/// Whether this process may write the file: SQLite opens a write-protected file (another
/// user's, or on a read-only mount) read-only without a word. Opening reads nothing.
fn writable(path: &Path) -> bool {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags)
        .and_then(|conn| conn.is_readonly(rusqlite::MAIN_DB))
        .is_ok_and(|read_only| !read_only)
}

/// `file:` URI of `path` (made absolute) opened as immutable: SQLite then reads the file
/// alone, with no locks and no `-wal` or `-shm`.
fn immutable_uri(path: &Path) -> rusqlite::Result<std::path::PathBuf> {
    use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let absolute = std::path::absolute(path)
        .map_err(|e| rusqlite::Error::InvalidPath(format!("{}: {e}", path.display()).into()))?;
    let bytes = absolute.as_os_str().as_encoded_bytes();
    Ok(format!("file:{}?immutable=1", percent_encode(bytes, KEEP)).into())
}

/// Opens a read-only connection (to the file as immutable, see [`open_read_only`]).
pub(crate) fn open_reader(config: &SqliteConfig, immutable: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        let uri = immutable_uri(&config.path)?;
        Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)?
    } else {
        Connection::open_with_flags(&config.path, flags)?
    };
    conn.busy_timeout(config.busy_timeout)?;
    stable_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(32);
    register_functions(&conn)?;
    Ok(conn)
}

/// `annals_partition(name, count)`: the partition of a stream name among `count`, computed
/// as [`annals::Partition::of`] computes it, so read-all can filter partitions in SQL.
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "annals_partition",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let name = ctx.get_raw(0).as_str().map_err(|e| {
                rusqlite::Error::UserFunctionError(format!("annals_partition: {e}").into())
            })?;
            let count: i64 = ctx.get(1)?;
            let count = u64::try_from(count.max(1)).unwrap_or(1);
            Ok((annals::Partition::hash(name) % count) as i64)
        },
    )
}

/// Refuses foreign and newer files, reading only. Answers the file's schema version (0 for
/// a new, empty file).
fn check(conn: &Connection, path: &Path) -> Result<i64, OpenError> {
    let err = sqlite(path);
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(&err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&err)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(&err)?;
    let foreign = |reason: String| OpenError::NotAnnalsDatabase {
        path: path.to_owned(),
        reason,
    };
    match app_id {
        APPLICATION_ID if version > SCHEMA_VERSION => Err(OpenError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        APPLICATION_ID => Ok(version),
        // A new, empty database: no schema objects and no version of anyone's.
        0 if objects == 0 && version == 0 => Ok(0),
        0 if objects == 0 => Err(foreign(format!(
            "it has no Annals application id and another application's user_version {version}"
        ))),
        0 => Err(foreign(format!(
            "it has {objects} tables or indexes of another application"
        ))),
        other => Err(foreign(format!("its application id is {other:#x}"))),
    }
}

fn migrate(mut conn: Connection, path: &Path) -> Result<Connection, OpenError> {
    let err = sqlite(path);
    // A store already at this version (the file was checked just before) is opened
    // without the write lock or a write: setting the header's fields again, even to the
    // same values, writes a page, and fails on a full disk, where the store must still
    // open for reads; the lock would wait on another process's writes.
    let header = |conn: &Connection| -> rusqlite::Result<(i64, i32)> {
        Ok((
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
            conn.query_row("PRAGMA application_id", [], |r| r.get(0))?,
        ))
    };
    if header(&conn).map_err(&err)? == (SCHEMA_VERSION, APPLICATION_ID) {
        conn.set_prepared_statement_cache_capacity(64);
        return Ok(conn);
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&err)?;
    // Another process may have migrated between the check and this lock: check again.
    check(&tx, path)?;
    let (current, app_id) = header(&tx).map_err(&err)?;
    if (current, app_id) == (SCHEMA_VERSION, APPLICATION_ID) {
        tx.rollback().map_err(&err)?;
    } else {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql).map_err(&err)?;
            tracing::info!(path = %path.display(), version = i + 1, "applied schema migration");
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An immutable reader finds the file by a `file:` URI: characters a URI gives meaning
    /// to must reach SQLite as the path's own; it reads the file alone and makes no `-wal`
    /// or `-shm` beside it.
    #[test]
    fn an_immutable_reader_opens_any_path_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a b?c#d%20e&f=1");
        std::fs::create_dir(&sub).unwrap();
        let config = SqliteConfig::new(sub.join("st?re#1%.db"));
        {
            let conn = open_writer(&config).unwrap();
            conn.execute_batch("INSERT INTO annals_checkpoints (group_name, source, position, updated_at) VALUES ('g', 's', '7', 0)")
                .unwrap();
        }
        let beside = |suffix: &str| {
            let mut p = config.path.as_os_str().to_owned();
            p.push(suffix);
            std::path::PathBuf::from(p).exists()
        };
        assert!(
            !beside("-wal") && !beside("-shm"),
            "the writer left its files"
        );
        let conn = open_reader(&config, true).unwrap();
        let position: String = conn
            .query_row("SELECT position FROM annals_checkpoints", [], |r| r.get(0))
            .unwrap();
        assert_eq!(position, "7");
        assert!(!beside("-wal") && !beside("-shm"));
        assert_eq!(check(&conn, &config.path).unwrap(), SCHEMA_VERSION);
    }
}

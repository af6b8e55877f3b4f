//! Errors of connecting to and migrating a PostgreSQL store. Errors of store operations are
//! `annals::Error`.

/// Why a PostgreSQL store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}: use lowercase letters, digits and '_' (at most 48), starting with a letter or '_'")]
    InvalidSchema(String),
    /// The schema is one of PostgreSQL's own (`pg_catalog`, `information_schema`, `pg_*`).
    #[error("schema {0:?} belongs to PostgreSQL itself: choose another annals_schema")]
    SystemSchema(String),
    /// The schema holds objects but no Annals store: another application's.
    #[error("schema {schema:?} holds {objects} tables, views or functions of another application and no Annals store: choose another annals_schema")]
    ForeignSchema {
        /// The schema.
        schema: String,
        /// How many relations and functions it holds.
        objects: i64,
    },
    /// The schema was migrated by a newer Annals.
    #[error("schema {schema}: version {found} is newer than this build supports ({supported}): upgrade Annals")]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The newest this build knows.
        supported: i32,
    },
    /// Creating the store's schema or migrating it failed (the role may not create it, the
    /// server is a read-only standby...); nothing of it was committed.
    #[error("schema {schema}: creating the store, or migrating it from version {from}, failed (this role must be allowed to create it, on a primary)")]
    Migrate {
        /// The schema.
        schema: String,
        /// The version it was at (0: no store).
        from: i32,
        /// PostgreSQL's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server could not be reached, or refused us (or we refused it: TLS).
    #[error("cannot reach PostgreSQL at {target}")]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// Why: the driver's error (its own sources say more), or the pool's timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS options cannot be used (an unknown `sslmode`, an unreadable root file...).
    #[error("PostgreSQL TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The error of getting a connection for `target`: the driver's own error when the pool
/// failed to create one, the pool's otherwise.
pub(crate) fn connect_error(target: String, e: deadpool_postgres::PoolError) -> PgError {
    let source: Box<dyn std::error::Error + Send + Sync> = match e {
        deadpool_postgres::PoolError::Backend(e) => Box::new(e),
        other => Box::new(other),
    };
    PgError::Connect { target, source }
}

/// A store error from a driver or pool error; connection-level and contention failures are
/// marked transient ([`annals::Transient`]).
pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> annals::Error {
    let mut e = e.into();
    let transient = is_transient(&*e);
    // The driver says only "db error"; the server's message is what a user needs.
    if let Some(db) = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|pg| pg.as_db_error())
    {
        let message = db.to_string();
        e = Box::new(Detailed { message, source: e });
    }
    if transient {
        annals::Error::transient("postgres", e)
    } else {
        annals::Error::backend("postgres", e)
    }
}

/// The server's message of a driver error (the driver's own text is "db error").
pub(crate) fn described(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

/// Whether `e` ended its connection: the connection closed, or the server ended it (an
/// error of severity `FATAL` or `PANIC`, such as a backend terminated by an administrator
/// or a server shutting down). Such a connection must not serve another statement.
pub(crate) fn ends_connection(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            matches!(
                db.parsed_severity(),
                Some(
                    tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic
                )
            )
        })
}

fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<deadpool_postgres::PoolError>() {
        return true;
    }
    let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() else {
        return false;
    };
    if pg.is_closed() {
        return true;
    }
    if let Some(code) = pg.code() {
        let code = code.code();
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // cannot connect now), serialization failures and deadlocks, lock not available.
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01"
            || code == "55P03";
    }
    // No server error: an I/O failure of the connection is transient; a parameter that did
    // not serialize is not.
    let mut source = std::error::Error::source(pg);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A driver error shown with the server's message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Detailed {
    message: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

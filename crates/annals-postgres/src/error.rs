//! Errors of connecting to and migrating a PostgreSQL store. Errors of store operations are
//! `annals::Error`.

/// Why a PostgreSQL store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL is not a valid `postgres://` URL.
    #[error("invalid PostgreSQL store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}: use lowercase letters, digits and '_' (at most 48), starting with a letter or '_'")]
    InvalidSchema(String),
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
    /// The server could not be reached or refused us.
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> annals::Error {
    annals::Error::backend("postgres", e)
}

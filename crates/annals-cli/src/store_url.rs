//! Choosing a store by URL: the one place (with the samples) that names concrete stores.

use std::sync::Arc;

use annals::{CheckpointStore, EventStore, Instrumented, MemoryCheckpoints, MemoryStore};
use annals_postgres::{PgConfig, PgStore};
use annals_sqlite::{SqliteConfig, SqliteStore};
use anyhow::{bail, Context};

/// The store URLs this build understands, for error messages.
pub const SUPPORTED: &str = "sqlite://PATH, postgres://USER@HOST:PORT/DB, memory://";

/// An opened store.
pub struct Opened {
    /// The store, instrumented with tracing spans and metrics.
    pub store: Arc<dyn EventStore>,
    /// Where consumer groups keep their checkpoints (in the store itself, except for
    /// `memory://`).
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Its SQLite options, when it is a SQLite store.
    pub sqlite: Option<SqliteConfig>,
    /// Its PostgreSQL options, when it is a PostgreSQL store.
    pub postgres: Option<PgConfig>,
    /// The SQLite store itself (for read models in the same file).
    pub sqlite_store: Option<SqliteStore>,
    /// The PostgreSQL store itself (for read models in the same database).
    pub pg_store: Option<PgStore>,
}

/// Opens the store named by `url`. A PostgreSQL schema is created or migrated on first use.
pub async fn open(url: &str) -> anyhow::Result<Opened> {
    let (scheme, rest) = url.split_once("://").with_context(|| {
        format!("malformed store URL {url:?}: expected SCHEME://..., one of {SUPPORTED}")
    })?;
    match scheme {
        "memory" if rest.is_empty() => Ok(Opened {
            store: Arc::new(Instrumented::new(Arc::new(MemoryStore::new()))),
            checkpoints: Arc::new(MemoryCheckpoints::new()),
            sqlite: None,
            postgres: None,
            sqlite_store: None,
            pg_store: None,
        }),
        "memory" => bail!("malformed store URL {url:?}: memory:// takes no path"),
        "sqlite" => {
            let config = SqliteConfig::from_url(url)?;
            let store = SqliteStore::open(config.clone())?;
            Ok(Opened {
                store: Arc::new(Instrumented::new(Arc::new(store.clone()))),
                checkpoints: Arc::new(store.clone()),
                sqlite: Some(config),
                postgres: None,
                sqlite_store: Some(store),
                pg_store: None,
            })
        }
        "postgres" | "postgresql" => {
            let config = PgConfig::from_url(url)?;
            let store = PgStore::connect(config.clone()).await?;
            store.migrate().await?;
            Ok(Opened {
                store: Arc::new(Instrumented::new(Arc::new(store.clone()))),
                checkpoints: Arc::new(store.clone()),
                sqlite: None,
                postgres: Some(config),
                sqlite_store: None,
                pg_store: Some(store),
            })
        }
        other => bail!("unsupported store {other:?} in {url:?}: this build supports {SUPPORTED}"),
    }
}

/// A SQL database keeping read models (`--read-model URL`, or the event store's own
/// database when it is SQL). Events from any store can feed it.
#[derive(Clone)]
pub enum ReadModelDb {
    /// A SQLite file.
    Sqlite(Arc<SqliteStore>),
    /// A PostgreSQL schema.
    Postgres(Arc<PgStore>),
}

impl ReadModelDb {
    /// The read-model database: `url` when given, otherwise the event store's database
    /// (`None` for `memory://` without `--read-model`).
    pub async fn choose(opened: &Opened, url: Option<&str>) -> anyhow::Result<Option<Self>> {
        if let Some(url) = url {
            return Self::open(url).await.map(Some);
        }
        Ok(match (&opened.sqlite_store, &opened.pg_store) {
            (Some(s), _) => Some(Self::Sqlite(Arc::new(s.clone()))),
            (_, Some(p)) => Some(Self::Postgres(Arc::new(p.clone()))),
            _ => None,
        })
    }

    /// Opens the read-model database named by a `sqlite://` or `postgres://` URL.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let context = || format!("--read-model {}", crate::output::redact(url));
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("sqlite") => {
                let store = SqliteStore::open(SqliteConfig::from_url(url).with_context(context)?)
                    .with_context(context)?;
                Ok(Self::Sqlite(Arc::new(store)))
            }
            Some("postgres" | "postgresql") => {
                let store = PgStore::connect(PgConfig::from_url(url).with_context(context)?)
                    .await
                    .with_context(context)?;
                store.migrate().await.with_context(context)?;
                Ok(Self::Postgres(Arc::new(store)))
            }
            _ => bail!(
                "unsupported read-model database {:?}: read models live in sqlite://PATH or postgres://USER@HOST:PORT/DB",
                crate::output::redact(url)
            ),
        }
    }

    /// Its checkpoints and parked streams.
    pub fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::Sqlite(s) => Arc::clone(s) as Arc<dyn CheckpointStore>,
            Self::Postgres(p) => Arc::clone(p) as Arc<dyn CheckpointStore>,
        }
    }

    /// What it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(s) => format!("sqlite://{}", s.config().path.display()),
            Self::Postgres(p) => format!("postgres schema {}", p.config().schema),
        }
    }
}

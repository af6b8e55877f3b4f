//! Store URLs: the one place a URL becomes a typed choice of store (parsed once, with the
//! `url` crate), and where the chosen store is opened. Nothing else in the workspace parses
//! or matches a URL.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use annals::{CheckpointStore, EventStore, Instrumented, MemoryCheckpoints, MemoryStore};
use annals_nats::{NatsConfig, NatsStore};
use annals_postgres::{PgConfig, PgStore, PgTls, RootCerts, SslMode};
use annals_sqlite::{OpenError, SqliteConfig, SqliteStore, Synchronous};
use anyhow::Context;

/// The store URLs this build understands, for messages.
pub(crate) const SUPPORTED: &str =
    "sqlite://PATH, postgres://USER@HOST:PORT/DB, nats://HOST:PORT, memory://";

/// A URL that cannot name a store.
#[derive(Debug, thiserror::Error)]
#[error("{what} {shown:?}: {reason}")]
pub(crate) struct InvalidUrl {
    /// "malformed store URL", "invalid PostgreSQL store URL"...
    what: String,
    /// The URL, without its password.
    shown: String,
    /// What is wrong.
    reason: String,
}

/// Which store a URL names, with its options.
#[derive(Debug, Clone)]
pub(crate) enum StoreKind {
    /// `memory://`: an empty store in this process.
    Memory,
    /// `sqlite://PATH[?synchronous=full|normal&readers=N&max_bytes=N]`.
    Sqlite(SqliteConfig),
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?annals_schema=NAME&annals_pool=N&
    /// annals_group_commits=N&sslmode=...&sslrootcert=PATH|system&...]` (other parameters
    /// go to the driver).
    Postgres(Box<PgConfig>),
    /// `nats://[USER:PASSWORD@]HOST:PORT[?stream=NAME&replicas=N&tls_ca=PATH...]`: a
    /// JetStream store.
    Nats(NatsConfig),
    /// `http://HOST:PORT`: a running `annals serve` (only `annals bench todo` takes one).
    Http(url::Url),
}

/// A parsed store URL: what it names, and how to show it (never with a password).
#[derive(Debug, Clone)]
pub(crate) struct StoreUrl {
    /// The store and its options.
    pub kind: StoreKind,
    shown: String,
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` without its password.
fn shown(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(None);
    }
    url.to_string()
}

impl FromStr for StoreUrl {
    type Err = InvalidUrl;

    fn from_str(text: &str) -> Result<Self, InvalidUrl> {
        let (first, seeds) = more_hosts(text);
        let text = first.as_str();
        let url = url::Url::parse(text).map_err(|e| {
            // Unparsed, the URL can only be shown up to its user (a password may follow),
            // and its store named from its scheme.
            let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            InvalidUrl {
                what: format!("malformed {}store URL", store_name(scheme)),
                shown: if scheme.is_empty() {
                    host.to_owned()
                } else {
                    format!("{scheme}://{host}")
                },
                reason: format!("{e}: expected SCHEME://..., one of {SUPPORTED}"),
            }
        })?;
        let mut shown = shown(&url);
        if !seeds.is_empty() {
            // The other hosts after the first's, each without a password.
            let at = host_end(&url) - url.password().map_or(0, |p| p.len() + 1);
            let mut shown_seeds = String::new();
            for seed in &seeds {
                let mut seed =
                    url::Url::parse(&format!("{}://{seed}", url.scheme())).map_err(|e| {
                        InvalidUrl {
                            what: format!("malformed {}store URL", store_name(url.scheme())),
                            shown: shown.clone(),
                            reason: format!("host {seed:?}: {e}"),
                        }
                    })?;
                let _ = seed.set_password(None);
                shown_seeds.push(',');
                shown_seeds.push_str(seed.authority());
            }
            shown.insert_str(at.min(shown.len()), &shown_seeds);
        }
        if !url.has_authority() {
            // `sqlite:/x.db`: no `//`, so no place for a host or a relative path.
            return Err(InvalidUrl {
                what: "malformed store URL".into(),
                shown,
                reason: format!("expected SCHEME://..., one of {SUPPORTED}"),
            });
        }
        let what = format!("invalid {}store URL", store_name(url.scheme()));
        let invalid = |reason: String| InvalidUrl {
            what: what.clone(),
            shown: shown.clone(),
            reason,
        };
        let kind = match url.scheme() {
            "memory" => {
                if url.has_host() && url.host_str() != Some("") || !url.path().is_empty() {
                    return Err(invalid("memory:// takes no path".into()));
                }
                if url.query().is_some() {
                    return Err(invalid("memory:// takes no options".into()));
                }
                StoreKind::Memory
            }
            "sqlite" => StoreKind::Sqlite(sqlite(&url).map_err(invalid)?),
            "postgres" | "postgresql" => {
                StoreKind::Postgres(Box::new(postgres(&url, &seeds).map_err(invalid)?))
            }
            "nats" | "tls" => StoreKind::Nats(nats(&url, &seeds).map_err(invalid)?),
            "http" => StoreKind::Http(url.clone()),
            other => {
                return Err(invalid(format!(
                    "unsupported store {other:?}: this build supports {SUPPORTED}"
                )))
            }
        };
        Ok(Self { kind, shown })
    }
}

/// The store a scheme names, for messages ("" when none).
fn store_name(scheme: &str) -> &'static str {
    match scheme {
        "sqlite" => "SQLite ",
        "postgres" | "postgresql" => "PostgreSQL ",
        "nats" | "tls" => "NATS ",
        "memory" => "memory ",
        _ => "",
    }
}

/// `sqlite://annals.db` is relative to the current directory (the URL's host is the path's
/// first part), `sqlite:///var/lib/annals.db` absolute.
fn sqlite(url: &url::Url) -> Result<SqliteConfig, String> {
    if url.port().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("a SQLite URL is sqlite://PATH, with no user or port".into());
    }
    let joined = format!("{}{}", url.host_str().unwrap_or_default(), url.path());
    let path = percent_encoding::percent_decode_str(&joined)
        .decode_utf8()
        .map_err(|e| format!("the path is not UTF-8: {e}"))?
        .into_owned();
    if path.is_empty() {
        return Err("the path is empty: use sqlite://annals.db".into());
    }
    let mut config = SqliteConfig::new(PathBuf::from(path));
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), value.to_ascii_lowercase().as_str()) {
            ("synchronous", "full") => config.synchronous = Synchronous::Full,
            ("synchronous", "normal") => config.synchronous = Synchronous::Normal,
            ("synchronous", other) => {
                return Err(format!("synchronous={other}: use full or normal"))
            }
            ("readers", n) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("readers={n}: expected a number"))?;
                config = config.readers(n);
            }
            ("max_bytes", n) => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("max_bytes={n}: expected a number of bytes"))?;
                config = config.max_bytes(n);
            }
            ("mode", "ro") => config = config.read_only(),
            ("mode", "rw") => config.read_only = false,
            ("mode", other) => {
                return Err(format!(
                    "mode={other}: use ro (read only: the file must be an Annals store) or rw"
                ))
            }
            (other, _) => {
                return Err(format!(
                    "unknown option {other:?}: known options are synchronous, readers, max_bytes and mode"
                ))
            }
        }
    }
    Ok(config)
}

/// The Annals and TLS options come out of the query; the rest of the URL goes to the
/// driver's own parser (a `tokio_postgres::Config`).
fn postgres(url: &url::Url, hosts: &[String]) -> Result<PgConfig, String> {
    let (mut schema, mut pool, mut groups, mut mode, mut root) = (None, None, None, None, None);
    let mut passed = Vec::new();
    for (key, value) in uri_pairs(url)? {
        match key.as_str() {
            "annals_schema" => schema = Some(value),
            "annals_pool" => pool = Some(at_least_one("annals_pool", &value)?),
            "annals_group_commits" => groups = Some(at_least_one("annals_group_commits", &value)?),
            "sslmode" => mode = Some(value.parse::<SslMode>().map_err(|e| e.to_string())?),
            "sslrootcert" => {
                root = Some(match value.as_str() {
                    "system" => RootCerts::System,
                    path => RootCerts::File(PathBuf::from(path)),
                })
            }
            _ => passed.push((key, value)),
        }
    }
    // Percent-encoded, not form-encoded: the driver decodes `%20` but keeps a `+` (which
    // form encoding makes of a space, as in `options=-c statement_timeout=5s`).
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let query: Vec<String> = passed
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect();
    let mut driver = url.clone();
    driver.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    // The other hosts after the first, for the driver to try in order, as libpq does.
    let mut driver = driver.to_string();
    for host in hosts.iter().rev() {
        let parsed = url::Url::parse(&format!("postgres://{host}"));
        if parsed.is_err()
            || parsed.is_ok_and(|h| h.host_str().is_none_or(str::is_empty))
            || host.contains('@')
        {
            return Err(format!("host {host:?}: expected HOST[:PORT]"));
        }
        driver.insert_str(host_end(url), &format!(",{host}"));
    }
    let connection: annals_postgres::tokio_postgres::Config = driver
        .parse()
        // The driver says only "invalid connection string"; its cause names the option.
        .map_err(|e: annals_postgres::tokio_postgres::Error| annals::error_chain(&e))?;
    let mut tls = PgTls::new(mode.unwrap_or_default());
    if let Some(root) = root {
        tls = tls.root_certs(root);
    }
    let mut config = PgConfig::new(connection).tls(tls);
    if let Some(schema) = schema {
        config = config.schema(schema);
    }
    if let Some(n) = pool {
        config = config.pool_size(n);
    }
    if let Some(n) = groups {
        config = config.group_commits(n);
    }
    Ok(config)
}

/// A PostgreSQL URL's query as libpq reads a connection URI's: `%XX` escapes decoded, a
/// `+` kept as it is (form decoding would make it a space, in a password file's path or an
/// `options` value alike).
fn uri_pairs(url: &url::Url) -> Result<Vec<(String, String)>, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("{s:?} in the query is not UTF-8 once decoded"))
    };
    url.query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// A count option of a store URL: a whole number, 1 or more.
fn at_least_one(key: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{key}={value}: expected a whole number, 1 or more")),
    }
}

/// `nats://a:4222,b:4222?...` or `postgres://u@a:5432,b:5432/db`, as NATS and libpq take
/// several hosts: the URL with its first host only (the URL crate reads one), and the other
/// hosts' `HOST:PORT`s. Other URLs are left whole.
fn more_hosts(text: &str) -> (String, Vec<String>) {
    let Some((scheme, rest)) = text
        .split_once("://")
        .filter(|(scheme, _)| ["nats", "tls", "postgres", "postgresql"].contains(scheme))
    else {
        return (text.to_owned(), Vec::new());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut hosts = authority.split(',');
    let first = hosts.next().unwrap_or_default();
    let more: Vec<String> = hosts.map(str::to_owned).collect();
    if more.is_empty() {
        return (text.to_owned(), more);
    }
    (format!("{scheme}://{first}{tail}"), more)
}

/// Where `url`'s first host (and port) ends in its text.
fn host_end(url: &url::Url) -> usize {
    url.scheme().len() + "://".len() + url.authority().len()
}

/// `stream` and `replicas` come out of the query; the server URL keeps the rest, and the
/// other `seeds` (`HOST:PORT`) are servers too.
fn nats(url: &url::Url, seeds: &[String]) -> Result<NatsConfig, String> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err("expected nats://HOST:PORT".into());
    }
    let mut server = url.clone();
    server.set_query(None);
    if server.path() == "/" {
        server.set_path("");
    }
    if !server.path().is_empty() {
        return Err("a NATS URL has no path: name the store with ?stream=NAME".into());
    }
    let mut servers = vec![server.to_string()];
    for seed in seeds {
        let parsed = url::Url::parse(&format!("{}://{seed}", url.scheme()))
            .map_err(|e| format!("seed server {seed:?}: {e}"))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("seed server {seed:?}: expected HOST:PORT"));
        }
        servers.push(parsed.to_string());
    }
    let mut config = NatsConfig::with_servers(servers);
    if url.scheme() == "tls" {
        // As the NATS tools read it: TLS with every server.
        config = config.require_tls();
    }
    let (mut cert, mut key) = (None, None);
    for (key_name, value) in url.query_pairs() {
        match key_name.as_ref() {
            "stream" => config = config.stream(value.into_owned()),
            "tls" if value == "require" => config = config.require_tls(),
            "tls" => return Err(format!("tls={value}: expected tls=require")),
            "tls_ca" => config = config.tls_ca(value.into_owned()),
            "creds" => config = config.credentials_file(value.into_owned()),
            "nkey" => config = config.nkey_file(value.into_owned()),
            "tls_cert" => cert = Some(value.into_owned()),
            "tls_key" => key = Some(value.into_owned()),
            "replicas" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("replicas={value}: expected 1, 3 or 5"))?;
                if ![1, 3, 5].contains(&n) {
                    return Err(format!("replicas={value}: expected 1, 3 or 5"));
                }
                config = config.replicas(n);
            }
            other => {
                return Err(format!(
                    "unknown option {other:?}: known options are stream, replicas, creds, nkey, tls=require, tls_ca, tls_cert and tls_key"
                ))
            }
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => config = config.tls_client(cert, key),
        (None, None) => {}
        _ => return Err("a client certificate needs both tls_cert=PATH and tls_key=PATH".into()),
    }
    Ok(config)
}

/// What a command does with its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// It only reads: a store that does not exist is refused (a mistyped name would read
    /// as an empty store), a SQLite file it cannot write is opened read-only (a backup on
    /// a read-only mount, another user's file).
    Read,
    /// It changes a store that must exist already (deletes, moves a checkpoint, sets a
    /// policy...): one that does not exist is refused rather than created.
    Existing,
    /// It writes events, or may: a store that does not exist is created.
    Write,
}

impl Access {
    /// Whether a missing store is refused (not created).
    fn needs_store(self) -> bool {
        self != Access::Write
    }
}

/// What a refusal of a missing store says to do.
const CREATE_ONE: &str = "this command creates none; `annals init` creates one";

/// Opens a SQLite store; for [`Access::Read`], read-only when the file cannot be written;
/// unless [`Access::Write`], refused when there is no file.
fn open_sqlite(config: &SqliteConfig, access: Access) -> anyhow::Result<SqliteStore> {
    if access.needs_store() && matches!(config.path.try_exists(), Ok(false)) {
        anyhow::bail!(
            "{}: no such file: there is no store here ({CREATE_ONE})",
            config.path.display()
        );
    }
    match SqliteStore::open(config.clone()) {
        Err(OpenError::NotWritable { path }) if access == Access::Read => {
            tracing::info!(path = %path.display(), "the file cannot be written: opened read-only");
            Ok(SqliteStore::open(config.clone().read_only())?)
        }
        opened => Ok(opened?),
    }
}

/// Connects to a PostgreSQL store, creating or migrating its schema; unless
/// [`Access::Write`], a schema holding no store is refused instead of created. A schema
/// already at this build's version costs no query beyond the schema check `connect` makes.
async fn open_postgres(config: &PgConfig, access: Access) -> anyhow::Result<PgStore> {
    let store = PgStore::connect(config.clone()).await?;
    let found = store.schema_version_at_connect();
    if found == annals_postgres::SCHEMA_VERSION {
        return Ok(store);
    }
    if access.needs_store() && found == 0 {
        anyhow::bail!(
            "schema {:?} at {} holds no store ({CREATE_ONE}; ?annals_schema= names another schema)",
            config.schema,
            config.target()
        );
    }
    store.migrate().await?;
    Ok(store)
}

/// The concrete store behind an [`Opened`].
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// An in-process store and its checkpoints.
    Memory(Arc<MemoryCheckpoints>),
    /// A SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL schema.
    Postgres(PgStore),
    /// A JetStream stream.
    Nats(NatsStore),
}

/// An opened store.
#[derive(Clone)]
pub(crate) struct Opened {
    /// Its URL.
    pub url: StoreUrl,
    /// The store, instrumented with tracing spans and metrics.
    pub events: Arc<dyn EventStore>,
    /// The concrete store.
    pub backend: Backend,
}

impl Opened {
    /// Opens the store `url` names; a PostgreSQL schema is created or migrated on first use.
    /// With [`Access::Read`], a SQLite file this process cannot write is opened read-only;
    /// unless [`Access::Write`], a store that does not exist (file, schema, stream) is
    /// refused, not created.
    pub(crate) async fn open(url: &StoreUrl, access: Access) -> anyhow::Result<Self> {
        let (events, backend): (Arc<dyn EventStore>, Backend) = match &url.kind {
            StoreKind::Memory => (
                Arc::new(MemoryStore::new()),
                Backend::Memory(Arc::new(MemoryCheckpoints::new())),
            ),
            StoreKind::Sqlite(config) => {
                let store = open_sqlite(config, access)?;
                (Arc::new(store.clone()), Backend::Sqlite(store))
            }
            StoreKind::Postgres(config) => {
                let store = open_postgres(config, access).await?;
                (Arc::new(store.clone()), Backend::Postgres(store))
            }
            StoreKind::Nats(config) => {
                // Only commands that write events create the stream.
                let config = match access.needs_store() {
                    true => config.clone().existing_only(),
                    false => config.clone(),
                };
                let store = NatsStore::connect(config).await?;
                (Arc::new(store.clone()), Backend::Nats(store))
            }
            StoreKind::Http(_) => anyhow::bail!(
                "{url}: over HTTP only `annals bench todo` runs (against annals serve); this command needs a store URL: {SUPPORTED}"
            ),
        };
        Ok(Self {
            url: url.clone(),
            events: Arc::new(Instrumented::new(events)),
            backend,
        })
    }

    /// Where consumer groups keep their checkpoints: the store itself (in memory for
    /// `memory://`).
    pub(crate) fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match &self.backend {
            Backend::Memory(c) => Arc::clone(c) as Arc<dyn CheckpointStore>,
            Backend::Sqlite(s) => Arc::new(s.clone()),
            Backend::Postgres(p) => Arc::new(p.clone()),
            Backend::Nats(n) => Arc::new(n.clone()),
        }
    }

    /// Where consumer groups keep their members and leases, when this store can.
    pub(crate) fn leases(&self) -> Option<Arc<dyn annals::LeaseStore>> {
        match &self.backend {
            Backend::Memory(_) | Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(Arc::new(p.clone())),
            Backend::Nats(n) => Some(Arc::new(n.clone())),
        }
    }

    /// The store's own database as a read-model database (none for `memory://`).
    pub(crate) fn read_model_db(&self) -> Option<ReadModelDb> {
        match &self.backend {
            Backend::Memory(_) | Backend::Nats(_) => None,
            Backend::Sqlite(s) => Some(ReadModelDb::Sqlite(Arc::new(s.clone()))),
            Backend::Postgres(p) => Some(ReadModelDb::Postgres(Arc::new(p.clone()))),
        }
    }
}

/// A SQL database keeping read models (`--read-model URL`, or the event store's own
/// database when it is SQL). Events from any store can feed it.
#[derive(Debug, Clone)]
pub(crate) enum ReadModelDb {
    /// A SQLite file.
    Sqlite(Arc<SqliteStore>),
    /// A PostgreSQL schema.
    Postgres(Arc<PgStore>),
}

impl ReadModelDb {
    /// The read-model database: `url` when given, otherwise the event store's database
    /// (`None` for `memory://` without `--read-model`).
    pub(crate) async fn choose(
        opened: &Opened,
        url: Option<&StoreUrl>,
        access: Access,
    ) -> anyhow::Result<Option<Self>> {
        match url {
            Some(url) => Self::open(url, access).await.map(Some),
            None => Ok(opened.read_model_db()),
        }
    }

    /// Opens the read-model database named by a `sqlite://` or `postgres://` URL.
    pub(crate) async fn open(url: &StoreUrl, access: Access) -> anyhow::Result<Self> {
        let context = || format!("--read-model {url}");
        match &url.kind {
            StoreKind::Sqlite(config) => {
                let store = open_sqlite(config, access).with_context(context)?;
                Ok(Self::Sqlite(Arc::new(store)))
            }
            StoreKind::Postgres(config) => {
                let store = open_postgres(config, access)
                    .await
                    .with_context(context)?;
                Ok(Self::Postgres(Arc::new(store)))
            }
            _ => anyhow::bail!(
                "unsupported read-model database {url}: read models live in sqlite://PATH or postgres://USER@HOST:PORT/DB"
            ),
        }
    }

    /// Its checkpoints and parked streams.
    pub(crate) fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::Sqlite(s) => Arc::clone(s) as Arc<dyn CheckpointStore>,
            Self::Postgres(p) => Arc::clone(p) as Arc<dyn CheckpointStore>,
        }
    }

    /// Where consumer groups keep their members and leases, when this database can.
    pub(crate) fn leases(&self) -> Option<Arc<dyn annals::LeaseStore>> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(p) => Some(Arc::clone(p) as Arc<dyn annals::LeaseStore>),
        }
    }

    /// What it is, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Sqlite(s) => format!("sqlite://{}", s.config().path.display()),
            Self::Postgres(p) => format!("postgres schema {}", p.config().schema),
        }
    }
}

#[cfg(test)]
mod tests;

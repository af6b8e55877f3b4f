//! The PostgreSQL event store for Annals.
//!
//! - One round trip per append: the `{schema}.append` function claims the stream's row in
//!   the streams table (the lock and the optimistic-concurrency check; no global lock or
//!   counter) and inserts the batch with `unnest`.
//! - Every event row carries its transaction id (`xid8`). Read-all and subscriptions order
//!   by `(tx_id, position)` and read only rows below
//!   `pg_snapshot_xmin(pg_current_snapshot())`, so a reader never skips an event that commits
//!   late, and rolled-back inserts leave harmless gaps. The cost: a transaction that stays
//!   open delays subscribers (never writers) until it ends; [`PgStore::horizon_lag`] and the
//!   `annals_pg_held_back_events` gauge show it. Set `idle_in_transaction_session_timeout`.
//! - Subscriptions wake on `LISTEN`/`NOTIFY` (the notification is sent after commits, outside
//!   writers' transactions, so it never serialises them), poll as a fallback, and resume from
//!   the last delivered position after a lost connection.
//! - Schema creation and upgrades are versioned migrations shipped in this crate, applied by
//!   [`PgStore::migrate`].
//! - Connections use TLS as libpq's `sslmode` describes ([`SslMode`], default `prefer`), on
//!   rustls, with the roots of [`RootCerts`].
//! - A `PgStore` is also a read-model database ([`annals::ReadModelStore`], through
//!   [`PgTx`]) fed from any event store: an apply is two round trips, its progress moved
//!   optimistically with the commit; a checkpoint store that keeps parked streams; and a
//!   lease store for competing consumers. `read_all` has connections of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use annals_postgres::{PgConfig, PgStore, PgTls, RootCerts, SslMode};
//!
//! let connection = "postgres://app@db.example.com/shop".parse()?;
//! let tls = PgTls::new(SslMode::VerifyFull).root_certs(RootCerts::File("ca.pem".into()));
//! let store = PgStore::connect(PgConfig::new(connection).schema("orders").tls(tls)).await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```

mod append;
mod append_at;
mod batch;
mod config;
mod conn;
mod coordination;
mod error;
mod group;
mod lifecycle;
mod listen;
mod many;
mod projection;
mod read_group;
mod read_model;
mod row;
mod sql;
mod sql_value;
mod store;
mod tls;

use std::sync::Arc;

use annals::backend::idempotency::{self, Found, Verdict};
use annals::{
    AllPage, AppendResult, Capabilities, Checkpoint, CheckpointStore, Direction, Error, EventData,
    EventStore, ExpectedVersion, Filter, Head, HeadSnapshot, LeaseStore, Leases, ParkedStream,
    Position, ReadStream, RecordedEvent, Result, StreamAppend, StreamName, Timestamp, Uuid,
    Version,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio_postgres::Row;

pub use config::PgConfig;
pub use error::PgError;
pub use group::describe_metrics;
pub use projection::Projection;
pub use read_model::PgTx;
pub use tls::{PgTls, RootCerts, SslMode};
pub use tokio_postgres;
pub use tokio_postgres_rustls;

use conn::Conn;
use error::backend;
use row::{event, event_after, event_in, TxId};
use sql::Sql;

/// The migrations, in order; `{schema}` is replaced by the store's schema.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_projection_streams.sql"),
    include_str!("../migrations/0003_leases.sql"),
    include_str!("../migrations/0004_read_all_plan.sql"),
    include_str!("../migrations/0005_head_snapshots.sql"),
    include_str!("../migrations/0006_projection_schema.sql"),
    include_str!("../migrations/0007_import.sql"),
    include_str!("../migrations/0008_partitions_parked.sql"),
    include_str!("../migrations/0009_append_group.sql"),
    include_str!("../migrations/0010_no_event_stream_fk.sql"),
    include_str!("../migrations/0011_lifecycle.sql"),
    include_str!("../migrations/0012_read_all_once.sql"),
    include_str!("../migrations/0013_read_all_statement.sql"),
    include_str!("../migrations/0014_import_hidden.sql"),
    include_str!("../migrations/0015_import_begins_again.sql"),
    include_str!("../migrations/0016_append_shown.sql"),
    include_str!("../migrations/0017_lock_order.sql"),
];

/// Connections kept for `read_all` (subscriptions and pipelines), apart from the pool
/// that appends and read models use.
const FEED_CONNECTIONS: usize = 4;

/// Events a filtered `read_all` page looks at, at most (or the page's limit if larger).
const READ_ALL_WINDOW: i64 = 10_000;

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Events per page when reading a stream.
const STREAM_PAGE: i64 = 1000;

/// A backward read asking at most this many rows of its first page is a tail, read with the
/// other tails queued (`read_group`); a longer one (a load reading back to a snapshot) is
/// not grouped, as a group answers when its longest page is read.
const SHORT_TAIL: i64 = 64;

/// Packs `(tx_id, position)` into an opaque, totally ordered [`Position`].
fn pack(tx: u64, position: i64) -> Position {
    annals::backend::position((u128::from(tx) << 64) | u128::from(position as u64))
}

fn unpack(p: Position) -> (u64, i64) {
    (
        (annals::backend::raw_position(p) >> 64) as u64,
        bigint(annals::backend::raw_position(p) as u64),
    )
}

/// A version or position as a `bigint` holds it. One beyond its range is beyond every
/// stream's and every transaction's (none reaches 2^63 events), so it is bound as the
/// highest `bigint`, which is beyond them too: never wrapped to a negative number, which
/// would put it before everything.
pub(crate) fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tx_of(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| backend(format!("unexpected transaction id {text:?}")))
}

struct Inner {
    pool: Pool,
    /// Connections for `read_all` alone.
    feed_pool: Pool,
    /// Connections for group commits alone (generic plans only), each with up to
    /// `group::DEPTH` group statements in flight.
    group_conns: batch::Shared,
    /// Connections for grouped catch-ups alone, one per group read at once.
    read_pool: Pool,
    config: PgConfig,
    sql: Sql,
    /// The read-model progress this process last recorded, per (projection, stream): an
    /// apply that finds it here skips reading it (its commit checks it anyway).
    progress: read_model::ProgressCache,
    changes: watch::Sender<()>,
    /// Group commit of this process's appends.
    group: group::Grouper,
    /// Grouped first pages of this process's forward stream reads.
    reads: read_group::ReadGrouper,
    notifier: listen::Notifier,
    listener: tokio::task::JoinHandle<()>,
    /// The schema's migration version when the store connected.
    connected_at: std::sync::atomic::AtomicI32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The PostgreSQL store. Clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.config.schema)
            .finish()
    }
}

/// How far subscribers are held back by open transactions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HorizonLag {
    /// Committed or in-flight events not yet visible to subscribers.
    pub held_back_events: i64,
    /// The age of the oldest transaction holding an id (other than ours), in seconds.
    pub oldest_transaction_secs: Option<f64>,
}

fn kind(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, bigint(v.get())),
    }
}

/// The per-event columns of appended events, as the arrays the append functions `unnest`.
pub(crate) struct Columns<'a> {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) data: Vec<&'a [u8]>,
    pub(crate) metadata: Vec<Option<&'a [u8]>>,
    pub(crate) correlation: Vec<Option<Uuid>>,
    pub(crate) causation: Vec<Option<Uuid>>,
}

/// A statement parameter.
pub(crate) type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);

impl<'a> Columns<'a> {
    /// The six columns as statement parameters, in the order the append functions take
    /// them.
    pub(crate) fn params(&self) -> [Param<'_>; 6] {
        [
            &self.ids,
            &self.types,
            &self.data,
            &self.metadata,
            &self.correlation,
            &self.causation,
        ]
    }

    pub(crate) fn of(events: impl Iterator<Item = &'a EventData>) -> Self {
        let mut c = Self {
            ids: Vec::new(),
            types: Vec::new(),
            data: Vec::new(),
            metadata: Vec::new(),
            correlation: Vec::new(),
            causation: Vec::new(),
        };
        for e in events {
            c.ids.push(e.event_id);
            c.types.push(e.event_type.as_str());
            c.data.push(e.data.as_slice());
            c.metadata.push(e.metadata.as_deref());
            c.correlation.push(e.correlation_id);
            c.causation.push(e.causation_id);
        }
        c
    }
}

/// The connection's prepared statement for `sql`: prepared on its first use on each
/// connection, then reused, so every later query is one round trip (bind and execute)
/// instead of two (parse, then bind and execute).
pub(crate) async fn prepared(client: &Conn, sql: &str) -> Result<tokio_postgres::Statement> {
    client
        .prepare_cached(sql)
        .await
        .map_err(|e| client.failed(e))
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Reads (never writes) what `schema` holds: its Annals migration version, 0 when it is
/// absent or empty, or [`PgError::ForeignSchema`] when it holds another application's
/// objects and no Annals `migrations` table. The table is looked for in the catalog, which
/// every role sees, not in `information_schema`, which hides the tables a role has no
/// privilege on: a role not granted the store's tables is told so ("permission denied"),
/// not that the schema belongs to another application.
async fn recognise(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<i32, PgError> {
    let row = client
        .query_one(
            "SELECT \
               (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1) \
             + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = $1), \
               (SELECT count(*) = 2 FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = 'migrations' AND c.relkind = 'r' \
                   AND NOT a.attisdropped \
                   AND ((a.attname = 'version' AND a.atttypid = 'integer'::regtype) \
                     OR (a.attname = 'applied_at' \
                       AND a.atttypid = 'timestamp with time zone'::regtype)))",
            &[&schema],
        )
        .await?;
    let (objects, ours): (i64, bool) = (row.get(0), row.get(1));
    if ours {
        let version = client
            .query_one(
                &format!(
                    "SELECT coalesce(max(version), 0) FROM {}.migrations",
                    config::quoted(schema)
                ),
                &[],
            )
            .await?;
        return Ok(version.get(0));
    }
    if objects == 0 {
        return Ok(0);
    }
    Err(PgError::ForeignSchema {
        schema: schema.to_owned(),
        objects,
    })
}

impl PgStore {
    /// Connects (lazily: the pool opens connections on demand) and checks that the schema
    /// is not newer than this build. Does not create or migrate anything: see
    /// [`migrate`](Self::migrate).
    pub async fn connect(config: PgConfig) -> Result<Self, PgError> {
        config::validate_schema(&config.schema)?;
        let (mut pg, tls) = config.driver()?;
        // Unqualified names (read models' tables) resolve to the store's schema; the
        // store's own statements name it explicitly. They are written for READ COMMITTED
        // (each statement sees what committed before it; row locks order the writers): a
        // server, database or role defaulting to a stricter level would fail concurrent
        // appends, transactions and read-model applies with serialization errors.
        let session = format!(
            "-c search_path={},public -c default_transaction_isolation=read\\ committed",
            config::quoted(&config.schema)
        );
        let options = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {session}"),
            _ => session,
        };
        pg.options(&options);
        let pool_of = |size: usize, pg: &tokio_postgres::Config| {
            let manager = Manager::from_config(
                pg.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(config.connect_timeout))
                .create_timeout(Some(config.connect_timeout))
                .recycle_timeout(Some(config.connect_timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| PgError::Connect {
                    target: config.target(),
                    source: Box::new(e),
                })
        };
        let pool = pool_of(config.pool_size.max(1), &pg)?;
        // Feed reads have connections of their own: a pipeline's reader never waits behind
        // its handlers' (or writers') transactions for a pooled connection, and the page's
        // plan is fixed by the connections' settings (`sql::FEED_OPTIONS`).
        let mut feed_pg = pg.clone();
        feed_pg.options(format!("{options} {}", sql::FEED_OPTIONS));
        let feed_pool = pool_of(FEED_CONNECTIONS, &feed_pg)?;
        // Group commits have theirs too, one per group written at once, where the group
        // statement always runs its generic plan. Left to choose, PostgreSQL kept planning
        // it anew at every execution when groups were small (a lone writer's appends: 1.2 to
        // 1.5 ms of planning each, three times the append itself; see BENCHMARKS.md). Only
        // the store's own statements run on these connections, so read models' SQL keeps
        // the server's choice. They allow only nested loops over index scans, so a group
        // locks its stream rows in its own order (`sql::GROUP_OPTIONS`).
        let mut group_pg = pg.clone();
        group_pg.options(format!("{options} {}", sql::GROUP_OPTIONS));
        let group_pool = pool_of(config.group_commits.max(1), &group_pg)?;
        // Grouped catch-ups have theirs too, one per group read at once: their backends
        // stay warm (spread over the whole pool, each statement met a backend idle since
        // long before; see BENCHMARKS.md), and their plans are generic and fixed
        // (`sql::READ_OPTIONS`).
        let mut read_pg = pg.clone();
        read_pg.options(format!("{options} {}", sql::READ_OPTIONS));
        let read_pool = pool_of(read_group::SLOTS, &read_pg)?;
        let changes = watch::Sender::new(());
        let channel = format!("annals_{}", config.schema);
        let listener =
            listen::spawn_listener(pg.clone(), tls.clone(), channel.clone(), changes.clone());
        let notifier = listen::Notifier::spawn(pg, tls, channel);
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                feed_pool,
                group_conns: batch::Shared::new(group_pool),
                read_pool,
                progress: read_model::ProgressCache::default(),
                sql: Sql::new(&config::quoted(&config.schema)),
                group: group::Grouper::pipelined(config.group_commits, group::DEPTH),
                reads: read_group::ReadGrouper::new(read_group::SLOTS),
                config,
                changes,
                notifier,
                listener,
                connected_at: std::sync::atomic::AtomicI32::new(0),
            }),
        };
        let found = store.schema_version().await?;
        store
            .inner
            .connected_at
            .store(found, std::sync::atomic::Ordering::Relaxed);
        if found > SCHEMA_VERSION {
            return Err(PgError::SchemaTooNew {
                schema: store.inner.config.schema.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// The options the store was opened with.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    pub(crate) async fn client(&self) -> Result<Conn> {
        Conn::from(&self.inner.pool).await
    }

    async fn feed_client(&self) -> Result<Conn> {
        Conn::from(&self.inner.feed_pool).await
    }

    pub(crate) async fn group_client(&self) -> Result<Arc<Object>> {
        self.inner.group_conns.get().await
    }

    pub(crate) async fn read_client(&self) -> Result<Conn> {
        Conn::from(&self.inner.read_pool).await
    }

    async fn client_for_setup(&self) -> Result<Object, PgError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| error::connect_error(self.inner.config.target(), e))
    }

    /// The schema's migration version when the store connected (0 when it had none), as
    /// [`schema_version`](Self::schema_version) then read it: what a caller that opens a
    /// store and migrates it at once needs, without asking again. It stays what was found:
    /// a migration since (by this store or another process) does not change it.
    pub fn schema_version_at_connect(&self) -> i32 {
        self.inner
            .connected_at
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The schema's migration version (0 when it has none). A schema holding objects but no
    /// Annals store is refused with [`PgError::ForeignSchema`].
    pub async fn schema_version(&self) -> Result<i32, PgError> {
        let client = self.client_for_setup().await?;
        recognise(&**client, &self.inner.config.schema).await
    }

    /// Creates the schema or applies the migrations it lacks, in one transaction, under an
    /// advisory lock so concurrent migrators take turns. Returns the versions applied. A
    /// schema of another application is refused before anything is created.
    pub async fn migrate(&self) -> Result<Vec<i32>, PgError> {
        let mut client = self.client_for_setup().await?;
        let name = self.inner.config.schema.clone();
        let schema = config::quoted(&name);
        // A schema already at this version is opened without writing or locking anything:
        // a read-only role (no CREATE on the database) or a hot standby can read the store.
        let from = recognise(&**client, &name).await?;
        if from == SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let migrating = |source| PgError::Migrate {
            schema: name.clone(),
            from,
            source,
        };
        let tx = client.transaction().await.map_err(migrating)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("annals:{name}")],
        )
        .await
        .map_err(migrating)?;
        let current = recognise(&*tx, &name).await?;
        if current > SCHEMA_VERSION {
            return Err(PgError::SchemaTooNew {
                schema: name,
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .map_err(migrating)?;
        let mut applied = Vec::new();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(&sql.replace("{schema}", &schema))
                .await
                .map_err(migrating)?;
            tx.execute(
                &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(migrating)?;
            applied.push(version);
        }
        tx.commit().await.map_err(migrating)?;
        for v in &applied {
            tracing::info!(schema = %name, version = v, "applied schema migration");
        }
        Ok(applied)
    }

    /// How far open transactions hold subscribers back (also published as the
    /// `annals_pg_held_back_events` gauge).
    pub async fn horizon_lag(&self) -> Result<HorizonLag> {
        let client = self.client().await?;
        let row = client
            .query_one(&prepared(&client, &self.inner.sql.held_back).await?, &[])
            .await
            .map_err(|e| client.failed(e))?;
        let lag = HorizonLag {
            held_back_events: row.get(0),
            oldest_transaction_secs: row.get(1),
        };
        metrics::gauge!("annals_pg_held_back_events", "schema" => self.inner.config.schema.clone())
            .set(lag.held_back_events as f64);
        Ok(lag)
    }

    /// Starts a projector transaction: run the read-model statements on
    /// [`Projection::client`], then [`Projection::commit`] writes the checkpoint in the same
    /// transaction. Dropped without commit, everything is rolled back.
    pub async fn projection(&self) -> Result<Projection> {
        let mut tx = self.client().await?;
        tx.begin().await?;
        Ok(Projection {
            tx,
            store: self.clone(),
            appended: false,
        })
    }

    fn wake(&self) {
        self.inner.changes.send_replace(());
        self.inner.notifier.notify();
    }

    /// Runs the append function: `Some` when written; `None` when refused (wrong expected
    /// version or an id already recorded), for [`classify`](Self::classify) to explain. With
    /// a snapshot, refused as [`Error::WrongExpectedVersion`] at the version expected when
    /// the stream now starts past `shown` (`EventStore::append_at_shown`).
    async fn append_once(
        &self,
        client: &Conn,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventData],
        snapshot: Option<(&[u8], Option<Version>)>,
    ) -> Result<Option<AppendResult>> {
        let sql = match snapshot {
            Some(_) => &self.inner.sql.append_with_snapshot,
            None => &self.inner.sql.append,
        };
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| client.failed(e))?;
        append::run(client, &statement, stream, expected, events, snapshot).await
    }

    /// An append, with a head snapshot stored when it writes.
    async fn append_with(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: &[u8],
        shown: Option<Version>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        let client = self.client().await?;
        // Another pass when the first met ids recorded by an append that then rolled back
        // before we could classify it, or lost the transaction-id race on the stream row.
        for _ in 0..5 {
            let written = match self
                .append_once(&client, stream, expected, &events, Some((snapshot, shown)))
                .await
            {
                Err(Error::Backend { source, .. }) if source.is::<Retry>() => continue,
                other => other?,
            };
            if let Some(r) = written {
                drop(client);
                self.wake();
                return Ok(r);
            }
            match self.classify(&client, stream, expected, &events).await? {
                Verdict::AlreadyWritten(r) => return Ok(r),
                Verdict::Write => continue,
            }
        }
        Err(backend(format!(
            "{stream}: event ids kept appearing and vanishing; retry"
        )))
    }

    /// Where the batch's ids are recorded, and what that means.
    async fn classify(
        &self,
        client: &Conn,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Verdict> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let rows = client
            .query(&prepared(client, &self.inner.sql.classify).await?, &[&ids])
            .await
            .map_err(|e| client.failed(e))?;
        let mut by_id = std::collections::HashMap::new();
        for row in rows {
            let name: String = row.get(1);
            let tx = tx_of(row.get::<_, &str>(4))?;
            let found = Found {
                stream: StreamName::new(&name).map_err(|e| backend(e.to_string()))?,
                stream_version: row.get::<_, i64>(2) as u64,
                batch_start: row.get::<_, i64>(3) as u64,
                position: pack(tx, row.get(5)),
            };
            by_id.insert(row.get::<_, Uuid>(0), found);
        }
        let found: Vec<Option<Found>> = events.iter().map(|e| by_id.remove(&e.event_id)).collect();
        let actual = self.stream_version_with(client, stream).await?;
        let after = match &found[0] {
            Some(f) => {
                let v = (f.stream_version + events.len() as u64) as i64;
                client
                    .query_opt(
                        &prepared(client, &self.inner.sql.batch_start).await?,
                        &[&stream.as_str(), &v],
                    )
                    .await
                    .map_err(|e| client.failed(e))?
                    .map(|r| r.get::<_, i64>(0) as u64)
            }
            None => None,
        };
        idempotency::check(stream, expected, actual, events, &found, |_| Ok(after))
    }

    async fn stream_version_with(&self, client: &Conn, stream: &StreamName) -> Result<Version> {
        let row = client
            .query_opt(
                &prepared(client, &self.inner.sql.version).await?,
                &[&stream.as_str()],
            )
            .await
            .map_err(|e| client.failed(e))?;
        match row {
            Some(r) if r.get::<_, bool>(1) => Err(Error::StreamDeleted {
                stream: stream.clone(),
            }),
            row => Ok(Version(row.map_or(0, |r| r.get::<_, i64>(0) as u64))),
        }
    }
}

/// The append lost the transaction-id race on its stream's row; a new transaction wins it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Retry(String);

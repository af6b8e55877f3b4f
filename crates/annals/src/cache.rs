//! An in-process bounded cache of folded state per stream.
//!
//! One cache can serve many categories: entries are keyed by stream name and state type.
//! An entry is only ever replaced by a state of the same or a newer version, so a slow
//! writer finishing late cannot roll a stream's cached state back.

use std::any::{Any, TypeId};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{StreamName, Version};

/// A cached state: its version, the state, and when it was last confirmed by the store.
#[derive(Debug, Clone)]
pub struct Cached<S> {
    /// The stream version the state was folded up to.
    pub version: Version,
    /// The folded state.
    pub state: Arc<S>,
    /// When the store last confirmed this state.
    pub confirmed_at: Instant,
}

struct Entry {
    version: Version,
    state: Arc<dyn Any + Send + Sync>,
    confirmed_at: Instant,
}

/// A bounded least-recently-used cache of `(version, state)` per stream.
pub struct Cache {
    entries: Mutex<lru::LruCache<(StreamName, TypeId), Entry>>,
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

    /// The cached state of `stream`, if any.
    pub fn get<S: Send + Sync + 'static>(&self, stream: &StreamName) -> Option<Cached<S>> {
        let mut entries = self.lock();
        let entry = entries.get(&(stream.clone(), TypeId::of::<S>()))?;
        let state = Arc::clone(&entry.state).downcast::<S>().ok()?;
        Some(Cached {
            version: entry.version,
            state,
            confirmed_at: entry.confirmed_at,
        })
    }

    /// Stores `state` at `version`, unless a newer version is cached already. Returns
    /// whether the entry was written.
    pub fn put<S: Send + Sync + 'static>(
        &self,
        stream: &StreamName,
        version: Version,
        state: Arc<S>,
    ) -> bool {
        let mut entries = self.lock();
        let key = (stream.clone(), TypeId::of::<S>());
        if let Some(existing) = entries.get(&key) {
            if existing.version > version {
                return false;
            }
        }
        entries.put(
            key,
            Entry {
                version,
                state,
                confirmed_at: Instant::now(),
            },
        );
        true
    }

    /// Drops the entry of `stream` for state type `S`.
    pub fn remove<S: 'static>(&self, stream: &StreamName) {
        self.lock().pop(&(stream.clone(), TypeId::of::<S>()));
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<(StreamName, TypeId), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

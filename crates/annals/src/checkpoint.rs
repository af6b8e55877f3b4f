//! Checkpoints: the position a consumer group has handled, per source.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Capability, Error};
use crate::{Position, Result, StreamName, Timestamp, Version};

/// One stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The consumer group.
    pub group: String,
    /// The source it reads (for example `"all"` or a category).
    pub source: String,
    /// The last position handled.
    pub position: Position,
}

/// A stream a consumer group parked after its handler kept failing: the events from `from`
/// to `to` (exclusive) were skipped, so the group's checkpoint could move past them. A
/// bounded record: versions and errors, never the events themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedStream {
    /// The consumer group.
    pub group: String,
    /// The stream.
    pub stream: StreamName,
    /// The first version skipped.
    pub from: Version,
    /// The version after the last one skipped.
    pub to: Version,
    /// Consecutive failures before the stream was parked (or its latest retry failed).
    pub attempts: u32,
    /// The error that started the failures.
    pub first_error: String,
    /// The latest error.
    pub last_error: String,
    /// When the stream was parked.
    pub parked_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl ParkedStream {
    /// Merges a later record of the same stream into this one: the range grows to cover
    /// both, the first error and time stay, the rest is the later one's.
    pub fn extend(&mut self, later: &ParkedStream) {
        self.from = self.from.min(later.from);
        self.to = self.to.max(later.to);
        self.attempts = later.attempts;
        self.last_error.clone_from(&later.last_error);
        self.updated_at = later.updated_at;
    }
}

/// Stores a position per (consumer group, source).
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The committed position, if any.
    async fn load(&self, group: &str, source: &str) -> Result<Option<Position>>;

    /// Records `position` as handled. Positions may move backwards only through this call
    /// (an operator resetting a group); readers commit increasing positions.
    async fn commit(&self, group: &str, source: &str, position: Position) -> Result<()>;

    /// Every checkpoint, ordered by group then source.
    async fn list(&self) -> Result<Vec<Checkpoint>>;

    /// Records a parked stream, or extends the record of one already parked in the group
    /// ([`ParkedStream::extend`]). Stores that cannot keep them refuse with
    /// [`Error::Unsupported`].
    async fn park(&self, parked: &ParkedStream) -> Result<()> {
        let _ = parked;
        Err(Error::Unsupported {
            backend: "checkpoint",
            capability: Capability::Parking,
        })
    }

    /// The parked streams of `group` (of every group when `None`), by group then stream.
    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        let _ = group;
        Ok(Vec::new())
    }

    /// Removes a parked stream's record (after a replay, or to skip it for good); whether
    /// there was one.
    async fn unpark(&self, group: &str, stream: &StreamName) -> Result<bool> {
        let _ = (group, stream);
        Ok(false)
    }
}

/// Checkpoints kept in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    map: Mutex<BTreeMap<(String, String), Position>>,
    parked: Mutex<BTreeMap<(String, String), ParkedStream>>,
}

impl MemoryCheckpoints {
    /// No checkpoints.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpoints {
    async fn load(&self, group: &str, source: &str) -> Result<Option<Position>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(&(group.to_owned(), source.to_owned())).copied())
    }

    async fn commit(&self, group: &str, source: &str, position: Position) -> Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((group.to_owned(), source.to_owned()), position);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .iter()
            .map(|((group, source), &position)| Checkpoint {
                group: group.clone(),
                source: source.clone(),
                position,
            })
            .collect())
    }

    async fn park(&self, parked: &ParkedStream) -> Result<()> {
        let mut map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let key = (parked.group.clone(), parked.stream.as_str().to_owned());
        match map.get_mut(&key) {
            Some(existing) => existing.extend(parked),
            None => {
                map.insert(key, parked.clone());
            }
        }
        Ok(())
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        let map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .values()
            .filter(|p| group.is_none_or(|g| g == p.group))
            .cloned()
            .collect())
    }

    async fn unpark(&self, group: &str, stream: &StreamName) -> Result<bool> {
        let mut map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .remove(&(group.to_owned(), stream.as_str().to_owned()))
            .is_some())
    }
}

impl std::fmt::Debug for dyn CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore").finish_non_exhaustive()
    }
}

//! Checkpoints: the position a consumer group has handled, per source.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{Position, Result};

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
}

/// Checkpoints kept in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    map: Mutex<BTreeMap<(String, String), Position>>,
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
}

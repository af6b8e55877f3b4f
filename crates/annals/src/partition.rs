//! Partitions of a feed, for competing consumers.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::StreamName;

/// One of `count` partitions of a feed: a stream belongs to partition
/// `FNV-1a-64(stream name) % count`, the same in every process, release and backend (the
/// SQL stores compute it in SQL), so competing consumers can split a feed by stream and each
/// reads only its own events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// How many partitions there are (1 to [`Partition::MAX_COUNT`]).
    pub count: u32,
}

impl Partition {
    /// Partition `index` of `count`.
    pub fn new(index: u32, count: u32) -> Self {
        Self { index, count }
    }

    /// The 64-bit FNV-1a hash of a stream name: fixed by its definition, so stable across
    /// processes, releases and backends.
    pub fn hash(stream: &str) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stream.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }

    /// The partition of `stream` among `count`.
    pub fn of(stream: &StreamName, count: u32) -> u32 {
        (Self::hash(stream.as_str()) % u64::from(count.max(1))) as u32
    }

    /// Whether `stream` is in this partition.
    pub fn contains(&self, stream: &StreamName) -> bool {
        Self::of(stream, self.count) == self.index
    }

    /// The most partitions a feed can be split into.
    pub const MAX_COUNT: u32 = 65_536;

    /// Checks that `index < count` and `0 < count <= MAX_COUNT`.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 || self.count > Self::MAX_COUNT || self.index >= self.count {
            return Err(Error::InvalidFilter {
                reason: format!(
                    "partition {} of {}: the index must be below the count, and the count \
                     between 1 and {}",
                    self.index,
                    self.count,
                    Self::MAX_COUNT
                ),
            });
        }
        Ok(())
    }
}

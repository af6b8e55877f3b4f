//! Naming read models and the rows they keep per stream.
//!
//! A per-stream projection records, beside its read-model rows and in the same
//! transaction, the next stream version it needs and the schema version of the projection
//! code that built the row. Bump the schema when that code changes meaning: rows built
//! under an older schema are stale, and the stores' `rebuild` calls refold them from their
//! streams. Rows that only lag behind their stream are not stale: the pipeline catches them
//! up.

use crate::{StreamName, Version};

/// A projection's name and the schema version of its current code. A plain `&str`
/// converts to schema 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionId<'a> {
    /// The projection's name.
    pub name: &'a str,
    /// The schema version of the code building its rows.
    pub schema: u32,
}

impl<'a> ProjectionId<'a> {
    /// `name` at schema version `schema`.
    pub fn new(name: &'a str, schema: u32) -> Self {
        Self { name, schema }
    }
}

impl<'a> From<&'a str> for ProjectionId<'a> {
    fn from(name: &'a str) -> Self {
        Self { name, schema: 0 }
    }
}

/// What a projection recorded for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionRow {
    /// The stream.
    pub stream: StreamName,
    /// The next stream version the projection needs (it applied the events below).
    pub version: Version,
    /// The schema version of the code that built the row.
    pub schema: u32,
    /// The stream's version when listed.
    pub head: Version,
}

impl ProjectionRow {
    /// Built by older projection code than `schema`: rebuild it.
    pub fn is_stale(&self, schema: u32) -> bool {
        self.schema < schema
    }

    /// Events of the stream not applied yet.
    pub fn behind(&self) -> u64 {
        self.head.get().saturating_sub(self.version.get())
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rebuilt {
    /// Streams whose rows were rebuilt.
    pub streams: u64,
    /// Events folded into them.
    pub events: u64,
}

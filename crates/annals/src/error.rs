//! The errors of stores, codecs and the decider runtime.

use std::sync::Arc;

use uuid::Uuid;

use crate::{ExpectedVersion, StreamName, StreamNameError, Version};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// The event type is empty.
    #[error("the event type is empty")]
    EmptyType,
    /// The event type is too long.
    #[error(
        "the event type is {len} bytes long: the limit is {}",
        crate::MAX_EVENT_TYPE_LEN
    )]
    TypeTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The event type has control characters.
    #[error("the event type has control characters")]
    TypeHasControlChars,
    /// Data plus metadata exceed the store's limit.
    #[error("the event is {size} bytes (data + metadata): the limit is {limit}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The same event id appears twice in the batch.
    #[error("event id {0} appears twice in the batch")]
    DuplicateIdInBatch(Uuid),
    /// Its data or metadata mentions a personal-data marker (`$personal`) but is not JSON
    /// a [`Shredding`](crate::Shredding) store can read (malformed, or nested too deep), so
    /// its personal fields cannot be found to encrypt: refused rather than stored in clear.
    #[error(
        "its {part} mentions \"$personal\" but is not JSON that can be read (malformed or nested too deep): its personal fields cannot be encrypted, so it is not stored"
    )]
    PersonalDataUnreadable {
        /// `data` or `metadata`.
        part: &'static str,
    },
}

/// A capability that some backends lack; asking for it there is refused, never emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Appending to several streams in one atomic transaction.
    MultiStreamAppend,
    /// Keeping a state snapshot beside a stream's head, written with an append.
    HeadSnapshots,
    /// Importing events recorded elsewhere with their versions, ids and timestamps.
    Import,
    /// Keeping records of parked streams.
    Parking,
    /// Deleting and truncating streams.
    Deletion,
    /// Retention policies (max age, max count) hiding expired events.
    Retention,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capability::MultiStreamAppend => f.write_str("multi-stream atomic append"),
            Capability::HeadSnapshots => f.write_str("snapshots at the stream head"),
            Capability::Import => f.write_str("importing recorded events"),
            Capability::Parking => f.write_str("records of parked streams"),
            Capability::Deletion => f.write_str("deleting and truncating streams"),
            Capability::Retention => f.write_str("retention policies"),
        }
    }
}

/// An event's body or metadata did not encode or decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event {event_type:?} at {stream} version {stream_version}: {message}")]
pub struct CodecError {
    /// The stream of the event (or the target stream when encoding).
    pub stream: String,
    /// The event's index in its stream (the next version when encoding).
    pub stream_version: u64,
    /// The event type.
    pub event_type: String,
    /// What went wrong.
    pub message: String,
}

/// Errors of stores, codecs and the decider runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream name or category is invalid.
    #[error("invalid stream name: {0}")]
    InvalidStreamName(#[from] StreamNameError),
    /// An append had no events.
    #[error("append to {stream} has no events: send at least one")]
    EmptyBatch {
        /// The stream.
        stream: StreamName,
    },
    /// A multi-stream append names a stream twice; nothing was written.
    #[error(
        "stream {stream} appears twice in one multi-stream append: merge its events into one entry"
    )]
    DuplicateStreamInBatch {
        /// The stream.
        stream: StreamName,
    },
    /// The append holds more events than the store takes in one atomic append.
    #[error("append to {stream} has {events} events: this store takes at most {max} per append")]
    BatchTooLarge {
        /// The stream.
        stream: StreamName,
        /// How many events the append held.
        events: usize,
        /// The store's limit.
        max: usize,
    },
    /// A multi-stream append holds more events, all its streams together, than the store
    /// takes in one atomic append; nothing was written.
    #[error(
        "a multi-stream append of {events} events to {streams} streams: this store takes at most {max} events per atomic append, all streams together"
    )]
    TransactionTooLarge {
        /// How many streams the append named.
        streams: usize,
        /// How many events the append held, all streams together.
        events: usize,
        /// The store's limit.
        max: usize,
    },
    /// One event of a batch is invalid; nothing was written.
    #[error("event {index} of the append to {stream} is invalid: {reason}")]
    InvalidEvent {
        /// The stream.
        stream: StreamName,
        /// The event's index in the batch.
        index: usize,
        /// What is wrong.
        reason: InvalidEvent,
    },
    /// An append to a system stream (an id starting with `$`, such as the
    /// `{category}-$deleted` stream where the store records deletions and truncations):
    /// only the store writes those; nothing was written.
    #[error("stream {stream} is reserved: ids starting with '$' name the store's own streams (deletions and truncations are recorded in {{category}}-$deleted), which only the store writes; nothing was written")]
    ReservedStream {
        /// The stream.
        stream: StreamName,
    },
    /// The stream was deleted for good (a tombstone): it can never be written or read
    /// again.
    #[error("stream {stream} was deleted for good (hard delete): it cannot be written or read again; use another name")]
    StreamDeleted {
        /// The stream.
        stream: StreamName,
    },
    /// The stream's version did not match the expected version; nothing was written.
    #[error(
        "wrong expected version for {stream}: expected {expected}, stream is at version {actual}"
    )]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamName,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused.
        actual: Version,
    },
    /// Some events of the batch are already in the stream, but the batch is not an exact
    /// retry of an earlier append; nothing was written.
    #[error("append to {stream} partially overlaps an earlier append (event {event_id} is already at version {stream_version}): retry with exactly the original batch, or with new event ids")]
    PartialRetry {
        /// The stream.
        stream: StreamName,
        /// The first event of the batch found already recorded.
        event_id: Uuid,
        /// Where it is recorded.
        stream_version: u64,
    },
    /// An event id of the batch is already recorded in another stream; nothing was written.
    #[error("event id {event_id} is already recorded in stream {existing_stream}: event ids are unique across the store")]
    DuplicateEventId {
        /// The event id.
        event_id: Uuid,
        /// The stream that has it.
        existing_stream: StreamName,
    },
    /// The backend does not offer this capability.
    #[error("the {backend} store does not support {capability}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked for.
        capability: Capability,
    },
    /// The store is open for reading only (a SQLite file opened read-only); nothing was
    /// written.
    #[error("the {backend} store is open read-only: nothing was written (open it for writing to change it)")]
    ReadOnly {
        /// The backend's name.
        backend: &'static str,
    },
    /// `transact` met a conflict on every attempt.
    #[error(
        "{stream}: the decision conflicted with concurrent writers on each of {attempts} attempts"
    )]
    ResyncExhausted {
        /// The stream.
        stream: StreamName,
        /// How many attempts were made.
        attempts: u32,
    },
    /// An event names a stream that does not exist (a reference checked at write time, see
    /// `Category::with_references`); nothing was written.
    #[error("event {event_type:?} for {stream} refers to {referenced}, which does not exist")]
    MissingReference {
        /// The stream written to.
        stream: StreamName,
        /// The event's type.
        event_type: String,
        /// The stream it names.
        referenced: StreamName,
    },
    /// A multi-stream transaction was not well formed (its streams live in different
    /// stores); nothing was read or written.
    #[error("invalid transaction: {reason}")]
    InvalidTransaction {
        /// What is wrong.
        reason: &'static str,
    },
    /// A retention policy is invalid.
    #[error("invalid retention: {reason}")]
    InvalidRetention {
        /// What is wrong.
        reason: String,
    },
    /// A read-all or subscription filter is invalid.
    #[error("invalid filter: {reason}")]
    InvalidFilter {
        /// What is wrong.
        reason: String,
    },
    /// A read model refused an operation (for example a rebuild whose events are older
    /// than what the read model already applied).
    #[error("read model: {reason}")]
    ReadModel {
        /// What is wrong.
        reason: String,
    },
    /// A known event type did not decode, or an event did not encode.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The backend failed (I/O, database error, closed store).
    #[error("{backend} store: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a backend's error.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// A backend failure marked transient by its store (see [`Transient`]).
    pub fn transient(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: Arc::new(Transient(source.into())),
        }
    }

    /// Whether this is a backend failure its store marked transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Backend { source, .. } if source.is::<Transient>())
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::WrongExpectedVersion { .. })
    }

    /// Whether the input was refused as invalid (nothing was written).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidStreamName(_)
                | Error::EmptyBatch { .. }
                | Error::InvalidEvent { .. }
                | Error::BatchTooLarge { .. }
                | Error::TransactionTooLarge { .. }
                | Error::DuplicateStreamInBatch { .. }
                | Error::MissingReference { .. }
                | Error::InvalidTransaction { .. }
                | Error::InvalidFilter { .. }
        )
    }
}

/// Marks a backend failure as transient: the store could not be reached or was busy (a lost
/// connection, a restarting server, an exhausted pool, a lock timeout, a serialization
/// failure). Trying again later may succeed, and it says nothing of the data: a pipeline
/// retries such failures without ever parking a stream for them.
#[derive(Debug)]
pub struct Transient(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Transient {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Whether `error`, or an error under it, is an [`Error`] its store marked transient.
pub fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Transient>() || e.downcast_ref::<Error>().is_some_and(Error::is_transient) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The text of an error and of every error under it (`a: b: c`), each part said once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // Causes often repeat what their parent said: an error that prints its source
        // ("a: b" over "b"), or one that restates it with a prefix (SQLite's "Error code 14:
        // unable to open database file" under "unable to open database file: PATH"). Say
        // only what is new.
        let last = part.rsplit(": ").next().unwrap_or_default();
        if !text.contains(last) {
            let new: Vec<&str> = part
                .split(": ")
                .filter(|s| !s.is_empty() && !text.contains(s))
                .collect();
            if !new.is_empty() {
                text.push_str(": ");
                text.push_str(&new.join(": "));
            }
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(parts: &[&'static str]) -> E {
        parts
            .iter()
            .rev()
            .fold(None, |below, part| Some(E(part, below.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn each_cause_is_said_once() {
        // SQLite's chain for a missing directory.
        let e = chain(&[
            "SQLite database /x/a.db",
            "unable to open database file: /x/a.db",
            "Error code 14: unable to open database file",
        ]);
        assert_eq!(
            error_chain(&e),
            "SQLite database /x/a.db: Error code 14: unable to open database file"
        );
        // An error that prints its source, over that source.
        let e = chain(&["database or disk is full", "database or disk is full"]);
        assert_eq!(error_chain(&e), "database or disk is full");
        // Distinct causes are all kept, in order.
        let e = chain(&[
            "cannot reach PostgreSQL at u@h:1/db",
            "error connecting to server",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            error_chain(&e),
            "cannot reach PostgreSQL at u@h:1/db: error connecting to server: Connection refused (os error 111)"
        );
    }
}

//! Stream lifecycle: deletion, truncation, retention and scavenging (the types; the
//! operations are on [`EventStore`](crate::EventStore)).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{validate_category, Error, RecordedEvent, Result, StreamName, Timestamp, Version};

/// How [`EventStore::delete_stream`](crate::EventStore::delete_stream) deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeleteMode {
    /// The stream reads as empty (its events are hidden from every read, read-all and
    /// subscriptions included); a later append continues after its last version, as in
    /// KurrentDB. The same as truncating before its version.
    Soft,
    /// A tombstone: the name can never be written again (appends, reads and truncation fail
    /// with [`Error::StreamDeleted`]), and its events are hidden from read-all.
    Hard,
}

/// What [`EventStore::scavenge`](crate::EventStore::scavenge) removed (or, in a dry run,
/// would remove).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scavenged {
    /// Events removed.
    pub events: u64,
    /// Their data and metadata, in bytes.
    pub bytes: u64,
    /// Free space inside the database file afterwards, where the store can tell.
    pub free_bytes: Option<u64>,
}

/// The event type of the system event a deletion writes.
pub const STREAM_DELETED: &str = "$StreamDeleted";
/// The event type of the system event a truncation writes.
pub const STREAM_TRUNCATED: &str = "$StreamTruncated";

/// The system stream where deletions and truncations of `stream` are recorded (as
/// [`STREAM_DELETED`] and [`STREAM_TRUNCATED`] events, data `{"stream", "version",
/// "hard"}` and `{"stream", "before"}`): `{category}-$deleted`, in the same category so a
/// category's projections and reactors see them. Ids starting with `$` are reserved.
pub fn deletions_stream(stream: &StreamName) -> StreamName {
    StreamName::new(format!("{}-$deleted", stream.category()))
        .expect("a valid category makes a valid system stream name")
}

/// A deletion or truncation, as its system event in [`deletions_stream`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// [`STREAM_DELETED`]: `stream` deleted at `version` (its event count then), soft or
    /// hard.
    Deleted {
        /// The stream deleted.
        stream: StreamName,
        /// Its version when deleted.
        version: u64,
        /// A tombstone.
        hard: bool,
    },
    /// [`STREAM_TRUNCATED`]: the events of `stream` below `before` hidden.
    Truncated {
        /// The stream truncated.
        stream: StreamName,
        /// Its first version shown from then on.
        before: u64,
    },
}

impl StreamChange {
    /// The change `event` records, if it is the system event of a deletion or truncation
    /// of a stream of its own category (`None` for any other event).
    pub fn of(event: &RecordedEvent) -> Option<Self> {
        #[derive(Deserialize)]
        struct Deleted {
            stream: StreamName,
            version: u64,
            hard: bool,
        }
        #[derive(Deserialize)]
        struct Truncated {
            stream: StreamName,
            before: u64,
        }
        if event.stream.id() != "$deleted" {
            return None;
        }
        let change = match event.event_type.as_str() {
            STREAM_DELETED => {
                let d: Deleted = serde_json::from_slice(&event.data).ok()?;
                Self::Deleted {
                    stream: d.stream,
                    version: d.version,
                    hard: d.hard,
                }
            }
            STREAM_TRUNCATED => {
                let t: Truncated = serde_json::from_slice(&event.data).ok()?;
                Self::Truncated {
                    stream: t.stream,
                    before: t.before,
                }
            }
            _ => return None,
        };
        (deletions_stream(change.stream()) == event.stream).then_some(change)
    }

    /// The stream deleted or truncated.
    pub fn stream(&self) -> &StreamName {
        match self {
            Self::Deleted { stream, .. } | Self::Truncated { stream, .. } => stream,
        }
    }
}

impl std::fmt::Display for StreamChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted {
                stream, hard: true, ..
            } => write!(f, "the hard deletion of {stream}"),
            Self::Deleted {
                stream, version, ..
            } => write!(f, "the deletion of {stream} at version {version}"),
            Self::Truncated { stream, before } => {
                write!(f, "the truncation of {stream} before version {before}")
            }
        }
    }
}

/// What a retention policy applies to: every stream of a category, or one stream (whose
/// own policy replaces its category's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RetentionScope {
    /// Every stream of the category, existing or created later.
    Category(String),
    /// One stream.
    Stream(StreamName),
}

impl RetentionScope {
    /// A category's scope, validated.
    pub fn category(category: impl Into<String>) -> Result<Self> {
        let category = category.into();
        validate_category(&category)?;
        Ok(Self::Category(category))
    }

    /// The category or stream name.
    pub fn name(&self) -> &str {
        match self {
            Self::Category(c) => c,
            Self::Stream(s) => s.as_str(),
        }
    }
}

/// A category (no `-`) or a stream name (`{category}-{id}`; categories never hold `-`).
impl std::str::FromStr for RetentionScope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.contains('-') {
            Ok(Self::Stream(StreamName::new(s)?))
        } else {
            Self::category(s)
        }
    }
}

impl std::fmt::Display for RetentionScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Category(c) => write!(f, "category {c}"),
            Self::Stream(s) => write!(f, "stream {s}"),
        }
    }
}

/// How long a stream's events are kept: the last `max_count`, and those recorded within
/// `max_age`. Reads, read-all and subscriptions stop showing an expired event at once
/// (logically: until a scavenge removes it, widening the policy shows it again);
/// [`EventStore::scavenge`](crate::EventStore::scavenge) removes expired events
/// physically. Versions never move back. `Retention::default()` keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Retention {
    /// Events recorded longer ago than this are expired.
    pub max_age: Option<Duration>,
    /// Only the stream's last `max_count` events are kept.
    pub max_count: Option<u64>,
}

impl Retention {
    /// The longest max age a policy may have: 1,000 years of 365.25 days. Every store
    /// computes "now minus max age" as a time it can hold (PostgreSQL's times end at
    /// 4713 BC); a policy that should never expire anything leaves max age unset.
    pub const MAX_AGE: Duration = Duration::from_secs(1_000 * 31_557_600);

    /// Keeps events recorded within `max_age`.
    pub fn max_age(max_age: Duration) -> Self {
        Self {
            max_age: Some(max_age),
            max_count: None,
        }
    }

    /// Keeps the stream's last `max_count` events.
    pub fn max_count(max_count: u64) -> Self {
        Self {
            max_age: None,
            max_count: Some(max_count),
        }
    }

    /// Whether the policy keeps everything (setting it removes a scope's policy).
    pub fn keeps_all(&self) -> bool {
        self.max_age.is_none() && self.max_count.is_none()
    }

    /// Refuses a policy no store can hold: a zero max age or count (delete the stream
    /// instead), or ages beyond what a store records.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| {
            Err(Error::InvalidRetention {
                reason: reason.to_owned(),
            })
        };
        match (self.max_age, self.max_count) {
            (Some(age), _) if age.as_micros() == 0 => invalid(
                "max age must be at least one microsecond (delete the stream to hide all of it)",
            ),
            (Some(age), _) if age > Self::MAX_AGE => invalid(
                "max age is too long (at most 1,000 years; leave it unset to keep events for good)",
            ),
            (_, Some(0)) => {
                invalid("max count must be at least 1 (delete the stream to hide all of it)")
            }
            (_, Some(n)) if n > i64::MAX as u64 => invalid("max count is too large"),
            _ => Ok(()),
        }
    }

    /// The max age in microseconds, as SQL stores record it.
    pub fn max_age_micros(&self) -> Option<i64> {
        self.max_age
            .map(|a| a.as_micros().min(i64::MAX as u128) as i64)
    }

    /// The policy from the microseconds and count SQL stores record.
    pub fn from_micros(max_age: Option<i64>, max_count: Option<i64>) -> Self {
        Self {
            max_age: max_age.map(|m| Duration::from_micros(m.max(0) as u64)),
            max_count: max_count.map(|c| c.max(0) as u64),
        }
    }

    /// Whether the policy hides `event` of a stream at `version`, at `now`.
    pub fn expires(&self, event: &RecordedEvent, version: u64, now: Timestamp) -> bool {
        if let Some(n) = self.max_count {
            if event.stream_version < version.saturating_sub(n) {
                return true;
            }
        }
        match self.max_age_micros() {
            Some(age) => event.recorded_at.unix_micros() < now.unix_micros().saturating_sub(age),
            None => false,
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.max_age, self.max_count) {
            (None, None) => write!(f, "keep all"),
            (Some(a), None) => write!(f, "max age {}", humantime::format_duration(a)),
            (None, Some(n)) => write!(f, "max count {n}"),
            (Some(a), Some(n)) => {
                write!(
                    f,
                    "max age {}, max count {n}",
                    humantime::format_duration(a)
                )
            }
        }
    }
}

/// A stream as a deletion finds it (stores only fetch these facts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// Its version.
    pub version: u64,
    /// Reads show none of its events (soft-deleted or truncated at its version).
    pub shows_nothing: bool,
    /// A tombstone.
    pub tombstone: bool,
}

/// What a deletion does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionPlan {
    /// Nothing to change: answer the stream's version.
    Done(Version),
    /// Hide the stream's events up to `version` (a tombstone when `hard`), and record it.
    Change {
        /// The stream's version (past the one found for an imported deletion: the stream
        /// moves on to it).
        version: u64,
        /// Leave a tombstone.
        hard: bool,
    },
}

/// A stream never written, as a deletion finds it.
const NEVER_WRITTEN: StreamState = StreamState {
    version: 0,
    shows_nothing: true,
    tombstone: false,
};

/// The highest version an imported deletion may leave a stream at (the SQL stores keep
/// versions in signed 64-bit integers, and the next append needs one more).
pub const MAX_IMPORTED_VERSION: u64 = i64::MAX as u64 - 1;

/// A deletion a store is asked for; [`Deletion::plan`] is the one rule for every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// [`EventStore::delete_stream`](crate::EventStore::delete_stream).
    Delete {
        /// What the stream's version must be.
        expected: crate::ExpectedVersion,
        /// Soft or hard.
        mode: DeleteMode,
    },
    /// [`EventStore::import_deletion`](crate::EventStore::import_deletion) at this version.
    Imported(Version),
}

impl Deletion {
    /// What the deletion does to `stream`, found as `found` (`None`: never written).
    ///
    /// A deletion: a tombstone answers a hard delete and refuses a soft one, `expected`
    /// must admit the version, and a soft delete of a stream never written or already
    /// showing nothing changes nothing. An imported one: a tombstone refuses it, a stream
    /// past its version (or a version past [`MAX_IMPORTED_VERSION`]) is a conflict, a
    /// stream at its version showing nothing (or never written, at 0) changes nothing, and
    /// anything else becomes a soft deletion at its version (a stream at a lower version
    /// moves on to it).
    pub fn plan(self, stream: &StreamName, found: Option<StreamState>) -> Result<DeletionPlan> {
        let state = found.unwrap_or(NEVER_WRITTEN);
        let conflict = |expected| {
            Err(Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: Version(state.version),
            })
        };
        let deleted = || {
            Err(Error::StreamDeleted {
                stream: stream.clone(),
            })
        };
        match self {
            Deletion::Delete { expected, mode } => {
                let hard = mode == DeleteMode::Hard;
                if state.tombstone {
                    return match hard {
                        true => Ok(DeletionPlan::Done(Version(state.version))),
                        false => deleted(),
                    };
                }
                if !expected.admits(Version(state.version)) {
                    return conflict(expected);
                }
                if !hard && state.shows_nothing {
                    return Ok(DeletionPlan::Done(Version(state.version)));
                }
                Ok(DeletionPlan::Change {
                    version: state.version,
                    hard,
                })
            }
            Deletion::Imported(version) => {
                if state.tombstone {
                    return deleted();
                }
                if state.version > version.get() || version.get() > MAX_IMPORTED_VERSION {
                    return conflict(crate::ExpectedVersion::Exact(version));
                }
                if state.version == version.get() && state.shows_nothing {
                    return Ok(DeletionPlan::Done(version));
                }
                Ok(DeletionPlan::Change {
                    version: version.get(),
                    hard: false,
                })
            }
        }
    }
}

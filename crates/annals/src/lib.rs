//! Annals: event sourcing for Rust.
//!
//! This core crate holds the model every other crate shares: validated [`StreamName`]s,
//! [`EventData`] and [`RecordedEvent`], [`Version`]s (event counts), [`ExpectedVersion`]s and
//! opaque [`Position`]s; the [`EventStore`] and [`CheckpointStore`] traits; codecs
//! ([`JsonCodec`]); the decider runtime ([`Category`], [`Decider`], [`Cache`]); and the
//! [`MemoryStore`] for tests. It performs no I/O of its own and names no backend.
//!
//! ```
//! use std::sync::Arc;
//! use annals::{Category, Domain, JsonCodec, MemoryStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! enum Event { Incremented { by: u32 } }
//!
//! struct Counter;
//! impl Domain for Counter {
//!     type Event = Event;
//!     type State = u32;
//!     fn initial() -> u32 { 0 }
//!     fn evolve(n: u32, e: &Event) -> u32 {
//!         match e { Event::Incremented { by } => n + by }
//!     }
//! }
//!
//! /// A decision that can refuse, with the domain's own error type.
//! #[derive(Debug, PartialEq)]
//! struct TooMuch { max: u32 }
//!
//! fn increment(by: u32) -> impl Fn(&u32) -> Result<Vec<Event>, TooMuch> {
//!     move |n| if n + by > 10 { Err(TooMuch { max: 10 }) } else { Ok(vec![Event::Incremented { by }]) }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = Arc::new(MemoryStore::new());
//! let counters = Category::<Counter>::new("Counter", store, JsonCodec::new())?;
//! let decider = counters.decider("a")?;
//! decider.transact(|n| if *n < 10 { vec![Event::Incremented { by: 1 }] } else { vec![] }).await?;
//! assert_eq!(decider.query(|n| *n).await?, 1);
//!
//! // The domain's refusal reaches the caller as itself, apart from store errors.
//! decider.try_transact(increment(4)).await.expect("5 is allowed");
//! match decider.try_transact(increment(6)).await {
//!     Err(annals::DecideError::Domain(refused)) => assert_eq!(refused, TooMuch { max: 10 }),
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//! assert_eq!(decider.query(|n| *n).await?, 5);
//! # Ok::<_, annals::Error>(()) }).unwrap();
//! ```

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod aggregate;
mod cache;
mod checkpoint;
mod codec;
mod decider;
mod error;
mod event;
mod feed;
mod filter;
mod idempotency;
mod instrument;
mod lease;
mod lifecycle;
mod memory;
mod pages;
mod partition;
pub mod personal;
mod projection;
mod read_model;
mod shred;
mod store;
mod stream;
mod subscribe;
pub mod trace;
mod version;

// Every public item has one path: here, at the crate root (except what only store
// implementations need, in `backend`).
pub use aggregate::{Aggregate, AggregateDomain, Repository, Root};
pub use cache::{Cache, CacheScope, Cached};
pub use checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpoints, ParkedStream};
pub use codec::{Codec, EncodeContext, JsonCodec, Upcast};
pub use decider::{
    transact_many, transact_pair, Category, DecideError, Decider, Domain, LoadOption, Loaded,
    DEFAULT_MAX_ATTEMPTS, SNAPSHOT_EVENT_TYPE,
};
pub use error::{
    error_chain, is_transient, Capability, CodecError, Error, InvalidEvent, Result, Transient,
};
pub use event::{EventData, RecordedEvent, DEFAULT_MAX_EVENT_BYTES, MAX_EVENT_TYPE_LEN};
pub use feed::{Backoff, Feed, FeedOptions, FeedPage};
pub use instrument::{describe_metrics, process_totals, Instrumented};
pub use lease::{fair_share, GroupMember, LeaseStore, Leases, MemoryLeases};
pub use lifecycle::{
    deletions_stream, DeleteMode, Retention, RetentionScope, Scavenged, StreamChange,
    STREAM_DELETED, STREAM_TRUNCATED,
};
pub use memory::{Commit, MemoryStore};
pub use personal::{MemoryKeys, Personal, SubjectKeys};
pub use projection::{ProjectionId, ProjectionRow, Rebuilt};
pub use read_model::{
    catch_up_stream, projection_rows, rebuild, rebuild_stream, ApplyError, Dialect, Projector,
    ProjectorError, ReadModelStore, SqlTx, SqlValue, StreamProgress,
};
pub use shred::{Shredding, SqlKeys};
pub use store::{
    AllPage, AppendAt, AppendResult, Capabilities, Direction, EventStore, Filter, Head,
    HeadSnapshot, Partition, ReadStream, StartedPage, StreamAppend, SubscribeOptions,
    CONFLICT_EVENTS, READ_PAGE,
};
pub use stream::{validate_category, StreamName, StreamNameError, MAX_STREAM_NAME_LEN};
pub use subscribe::{subscribe, subscribe_stream, EventStoreExt, SubscribeExt, Subscription};
pub use trace::TraceContext;
pub use uuid::Uuid;
pub use version::{ExpectedVersion, ParsePositionError, Position, Timestamp, Version};

/// What only store implementations need (users of a store never do): validating what is
/// appended or imported, the one idempotency rule, positions as raw values, the range a
/// stream read covers, the read-model checks every [`ReadModelStore`] applies, and how a
/// batch lets ready callers join before it is taken, and what a caught panic said.
pub mod backend {
    pub use crate::decider::batch::{gather, panic_message};
    pub use crate::event::{validate_batch, validate_import, validate_many};
    pub use crate::lifecycle::{Deletion, DeletionPlan, StreamState, MAX_IMPORTED_VERSION};
    pub use crate::pages::events_of_pages;
    pub use crate::read_model::{check_events, check_rebuild, rebuild_behind};
    pub use crate::store::{answer_at, conflict_read};
    use crate::{Position, ReadStream};

    /// The one rule that tells an exact retry of an append from a conflict or a partial
    /// overlap; stores only fetch the facts.
    pub mod idempotency {
        pub use crate::idempotency::{check, Found, Verdict};
    }

    /// The position of a backend's raw value.
    pub const fn position(raw: u128) -> Position {
        Position::from_raw(raw)
    }

    /// A position's raw value, as the backend gave it.
    pub const fn raw_position(position: Position) -> u128 {
        position.raw()
    }

    /// The versions `[first, end)` a stream read covers in a stream of `len` events.
    pub fn index_range(read: &ReadStream, len: u64) -> (u64, u64) {
        read.index_range(len)
    }
}

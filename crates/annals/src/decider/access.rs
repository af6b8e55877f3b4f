//! Access strategies: what a load reads (the last event alone, back to an origin, back to a
//! rolling snapshot, or a snapshot kept at the head), never the state it yields.

use std::sync::Arc;

use super::Domain;
use crate::error::Result;

pub(super) type IsOrigin<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;
type EncodeSnapshot<S> = Arc<dyn Fn(&S) -> Result<Vec<u8>, serde_json::Error> + Send + Sync>;
type DecodeSnapshot<S> = Arc<dyn Fn(&[u8]) -> Option<S> + Send + Sync>;

/// How a category's streams are loaded (see the `with_*` methods of [`Category`]). Every
/// strategy yields exactly the state of the full fold; they differ in what they read.
pub(super) struct Access<D: Domain> {
    /// The state is the fold of the last event alone.
    pub(super) latest_known_event: bool,
    /// Events from which the state can be folded without what came before.
    pub(super) is_origin: Option<IsOrigin<D::Event>>,
    /// Rolling snapshot events in the stream.
    pub(super) snapshots: Option<Snapshots<D::State>>,
    /// A snapshot kept beside the stream's head by the store.
    pub(super) head: Option<SnapshotCodec<D::State>>,
}

/// Encodes and decodes snapshots of one schema version.
pub(super) struct SnapshotCodec<S> {
    pub(super) schema: u32,
    pub(super) encode: EncodeSnapshot<S>,
    pub(super) decode: DecodeSnapshot<S>,
}

impl<S> Clone for SnapshotCodec<S> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema,
            encode: Arc::clone(&self.encode),
            decode: Arc::clone(&self.decode),
        }
    }
}

impl<S: serde::Serialize + serde::de::DeserializeOwned> SnapshotCodec<S> {
    /// JSON `{"schema", "state"}`; a body of another schema (or damaged) decodes to `None`.
    pub(super) fn json(schema: u32) -> Self {
        Self {
            schema,
            encode: Arc::new(move |state: &S| serde_json::to_vec(&SnapshotOut { schema, state })),
            decode: Arc::new(move |bytes: &[u8]| {
                let snapshot: SnapshotIn<'_> = serde_json::from_slice(bytes).ok()?;
                if snapshot.schema != schema {
                    return None;
                }
                serde_json::from_str(snapshot.state.get()).ok()
            }),
        }
    }
}

#[derive(Clone)]
pub(super) struct Snapshots<S> {
    pub(super) every: u64,
    pub(super) codec: SnapshotCodec<S>,
}

impl<D: Domain> Clone for Access<D> {
    fn clone(&self) -> Self {
        Self {
            latest_known_event: self.latest_known_event,
            is_origin: self.is_origin.clone(),
            snapshots: self.snapshots.clone(),
            head: self.head.clone(),
        }
    }
}

impl<D: Domain> Default for Access<D> {
    fn default() -> Self {
        Self {
            latest_known_event: false,
            is_origin: None,
            snapshots: None,
            head: None,
        }
    }
}

impl<D: Domain> Access<D> {
    /// Whether loads read backward to an origin rather than forward from the start.
    pub(super) fn backward(&self) -> bool {
        self.latest_known_event || self.is_origin.is_some() || self.snapshots.is_some()
    }
}

/// A snapshot event's body: the state and the schema version it was written with (the
/// state written by serde_json straight from the value: no `serde_json::Value`, which
/// cannot hold integers past 64 bits).
#[derive(serde::Serialize)]
struct SnapshotOut<'a, S> {
    schema: u32,
    state: &'a S,
}

/// A snapshot event's body as read: the state's text is decoded once its schema matches.
#[derive(serde::Deserialize)]
struct SnapshotIn<'a> {
    schema: u32,
    #[serde(borrow)]
    state: &'a serde_json::value::RawValue,
}

//! Retention on JetStream: the policies are one value (`retention`) of the store's
//! key-value bucket, changed by compare-and-set; reads hide expired events by them (a
//! process sees its own changes at once and others' within [`FRESH`]). `scavenge` purges
//! expired events from each covered stream's subject, keeping a stream's last message (it
//! holds the stream's version).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{
    Error, RecordedEvent, Result, Retention, RetentionScope, Scavenged, StreamName, Timestamp,
};
use futures::TryStreamExt;

use crate::{backend, NatsStore};

/// The key of the policies in the store's bucket.
const KEY: &str = "retention";
/// Room kept in a message for the key-value bucket's subject and headers.
const MESSAGE_OVERHEAD: usize = 1024;
/// How long a process reads by the policies it last loaded.
pub(crate) const FRESH: Duration = Duration::from_millis(250);

pub(crate) type Map = BTreeMap<RetentionScope, Retention>;

/// The policies as last loaded.
#[derive(Default)]
pub(crate) struct Policies {
    loaded: Option<Instant>,
    revision: u64,
    map: Arc<Map>,
}

/// The policy of `stream`: its own, else its category's.
pub(crate) fn policy_of(map: &Map, stream: &StreamName) -> Option<Retention> {
    map.get(&RetentionScope::Stream(stream.clone()))
        .or_else(|| map.get(&RetentionScope::Category(stream.category().to_owned())))
        .copied()
}

/// How many of `events` (a stream's, oldest first, its version `next`) `policy` expires:
/// always the oldest ones.
pub(crate) fn expired<T>(
    events: &[(RecordedEvent, T)],
    policy: Option<Retention>,
    next: u64,
    now: Timestamp,
) -> usize {
    match policy {
        Some(p) => events
            .iter()
            .take_while(|(e, _)| p.expires(e, next, now))
            .count(),
        None => 0,
    }
}

fn parse(bytes: &[u8]) -> Result<Map> {
    let list: Vec<(RetentionScope, Retention)> = serde_json::from_slice(bytes)
        .map_err(|e| backend(format!("unreadable retention policies: {e}")))?;
    Ok(list.into_iter().collect())
}

impl NatsStore {
    /// The policies, loaded again when older than [`FRESH`].
    pub(crate) async fn policies(&self) -> Result<Arc<Map>> {
        {
            let p = self
                .inner
                .policies
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if p.loaded.is_some_and(|at| at.elapsed() < FRESH) {
                return Ok(Arc::clone(&p.map));
            }
        }
        let entry = self.inner.checkpoints.entry(KEY).await.map_err(backend)?;
        let (revision, map) = match entry {
            Some(e) => (e.revision, parse(&e.value)?),
            None => (0, Map::new()),
        };
        Ok(self.keep(revision, map))
    }

    /// Keeps `map` as the policies at `revision` unless newer ones are kept.
    fn keep(&self, revision: u64, map: Map) -> Arc<Map> {
        let mut p = self
            .inner
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if revision >= p.revision {
            p.revision = revision;
            p.map = Arc::new(map);
        }
        p.loaded = Some(Instant::now());
        Arc::clone(&p.map)
    }

    pub(crate) async fn retain(&self, scope: &RetentionScope, retention: Retention) -> Result<()> {
        retention.validate()?;
        let kv = &self.inner.checkpoints;
        for _ in 0..100 {
            let entry = kv.entry(KEY).await.map_err(backend)?;
            let mut map = match &entry {
                Some(e) => parse(&e.value)?,
                None => Map::new(),
            };
            if retention.keeps_all() {
                map.remove(scope);
            } else {
                map.insert(scope.clone(), retention);
            }
            let list: Vec<(&RetentionScope, &Retention)> = map.iter().collect();
            let bytes = serde_json::to_vec(&list).map_err(backend)?;
            // All policies are one message: past the server's limit no write can take
            // them (the server would refuse it, and the loop would read it as a race).
            let limit = self
                .inner
                .client
                .max_payload()
                .saturating_sub(MESSAGE_OVERHEAD);
            if bytes.len() > limit {
                return Err(Error::backend(
                    "nats",
                    format!(
                        "{} retention policies take {} bytes, more than one message to this server holds ({limit}): a NATS store keeps every policy in one value; set policies on categories rather than on this many streams",
                        map.len(),
                        bytes.len()
                    ),
                ));
            }
            let cas = async {
                use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
                // `None`: another process wrote first (the only refusal retried here).
                Ok(match &entry {
                    Some(e) => match kv.update(KEY, bytes.into(), e.revision).await {
                        Ok(revision) => Some(revision),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(backend(e)),
                    },
                    None => match kv.create(KEY, bytes.into()).await {
                        Ok(revision) => Some(revision),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(backend(e)),
                    },
                })
            };
            let written = self.kv_write("the retention policy", cas).await?;
            // Refused: another process changed the policies first; apply ours to theirs.
            if let Some(revision) = written {
                self.keep(revision, map);
                self.inner.changes.send_replace(());
                return Ok(());
            }
        }
        Err(Error::transient(
            "nats",
            "the retention policies kept changing; retry",
        ))
    }

    /// The streams a scope covers: the stream, or every stream of the category.
    async fn covered(&self, scope: &RetentionScope) -> Result<Vec<StreamName>> {
        match scope {
            RetentionScope::Stream(s) => Ok(vec![s.clone()]),
            RetentionScope::Category(c) => {
                let subjects = self.inner.subjects.category(c);
                let info = self
                    .inner
                    .stream
                    .info_with_subjects(subjects)
                    .await
                    .map_err(backend)?;
                let subjects: Vec<(String, usize)> = info.try_collect().await.map_err(backend)?;
                Ok(subjects
                    .into_iter()
                    .filter_map(|(subject, _)| self.inner.subjects.parse(&subject))
                    .collect())
            }
        }
    }

    /// Purges (or counts) at most `limit` expired events, stream by stream.
    pub(crate) async fn scavenge_expired(&self, limit: usize, dry_run: bool) -> Result<Scavenged> {
        let map = self.policies().await?;
        let mut done = Scavenged::default();
        let mut seen = HashMap::new();
        for scope in map.keys() {
            for stream in self.covered(scope).await? {
                if done.events >= limit as u64 || seen.insert(stream.clone(), ()).is_some() {
                    continue;
                }
                let (events, next) = match self.stream_events(&stream).await {
                    Ok(found) => found,
                    Err(Error::StreamDeleted { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let now = Timestamp::now();
                // The last message stays: it holds the stream's version.
                let n = expired(&events, policy_of(&map, &stream), next, now)
                    .min(events.len().saturating_sub(1))
                    .min((limit as u64 - done.events) as usize);
                if n == 0 {
                    continue;
                }
                done.events += n as u64;
                done.bytes += events[..n]
                    .iter()
                    .map(|(e, _)| (e.data.len() + e.metadata.as_ref().map_or(0, Vec::len)) as u64)
                    .sum::<u64>();
                if !dry_run {
                    let kept = annals::backend::raw_position(events[n].0.position);
                    let sequence = u64::try_from(kept)
                        .map_err(|_| backend("a position beyond a JetStream sequence"))?;
                    self.purge_below(&stream, sequence).await?;
                }
            }
        }
        Ok(done)
    }
}

//! Stream deletion and truncation on JetStream: purge by subject. A deletion or a
//! truncation writes a marker on the stream's subject, in one atomic batch with its system
//! event: reads show none of the stream's versions below the marker's start, it carries the
//! stream's version (so appends continue after it) and, for a hard deletion, the tombstone
//! every later append and read refuses. Then the hidden messages are purged at once, so
//! scavenging has nothing left of them to do.

use annals::backend::{Deletion, DeletionPlan, StreamState};
use annals::{
    Error, EventData, Result, StreamName, Timestamp, Version, STREAM_DELETED, STREAM_TRUNCATED,
};

use crate::envelope::{Marker, Place};
use crate::write::{Outgoing, Published};
use crate::{backend, NatsStore};

/// How often a change re-reads the stream after another writer moved it.
const RACES: usize = 100;

impl NatsStore {
    /// Writes `marker` on `stream` (expecting its last message at `after`) and the system
    /// event `data` of type `kind` to its deletions stream, in one atomic batch; `false`
    /// when another writer moved either stream first.
    async fn mark(
        &self,
        stream: &StreamName,
        after: u64,
        marker: Marker,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<bool> {
        let target = annals::deletions_stream(stream);
        let last = self.last(&target).await?;
        let (target_after, target_next, target_start) =
            last.map_or((0, 0, 0), |l| (l.sequence, l.next, l.start));
        let now = Timestamp::now();
        // The marker's id only makes its message unique.
        let carrier = EventData::new("$Marker", Vec::new());
        let system = EventData::new(kind, data.to_string().into_bytes());
        let messages = [
            Outgoing {
                stream,
                event: &carrier,
                place: Place {
                    version: marker.next,
                    batch_start: marker.next,
                    recorded_at: now,
                },
                expect: Some(after),
                marker: Some(marker),
                start: marker.start,
            },
            Outgoing {
                stream: &target,
                event: &system,
                place: Place {
                    version: target_next,
                    batch_start: target_next,
                    recorded_at: now,
                },
                expect: Some(target_after),
                marker: None,
                start: target_start,
            },
        ];
        let published = self.send(&messages, true).await?;
        self.forget(stream);
        self.forget(&target);
        Ok(matches!(published, Published::Stored(_)))
    }

    /// Removes the messages of `stream`'s subject below `sequence`.
    pub(crate) async fn purge_below(&self, stream: &StreamName, sequence: u64) -> Result<()> {
        self.inner
            .stream
            .purge()
            .filter(self.inner.subjects.stream(stream))
            .sequence(sequence)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Purges what the marker at the end of `stream` hides.
    async fn purge_to_marker(&self, stream: &StreamName) -> Result<()> {
        if let Some(head) = self.head(stream).await? {
            self.purge_below(stream, head.sequence).await?;
        }
        Ok(())
    }

    /// `deletion` as its plan decides from the stream's head: a marker at the planned
    /// version, starting there (a tombstone when planned), with the system event that
    /// records it, conditional on the head it was planned from.
    pub(crate) async fn delete_with(
        &self,
        stream: &StreamName,
        deletion: Deletion,
    ) -> Result<Version> {
        for _ in 0..RACES {
            let head = self.head(stream).await?;
            let state = head.map(|h| StreamState {
                version: h.next,
                shows_nothing: h.hides_all,
                tombstone: h.tombstone,
            });
            let (version, hard) = match deletion.plan(stream, state)? {
                DeletionPlan::Done(version) => return Ok(version),
                DeletionPlan::Change { version, hard } => (version, hard),
            };
            let marker = Marker {
                next: version,
                start: version,
                tombstone: hard,
            };
            let data = serde_json::json!({
                "stream": stream.as_str(), "version": version, "hard": hard,
            });
            let after = head.map_or(0, |h| h.sequence);
            if self
                .mark(stream, after, marker, STREAM_DELETED, data)
                .await?
            {
                self.purge_to_marker(stream).await?;
                return Ok(Version(version));
            }
        }
        Err(Error::transient(
            "nats",
            format!("{stream} kept moving under its deletion ({RACES} attempts)"),
        ))
    }

    pub(crate) async fn truncate(&self, stream: &StreamName, before: Version) -> Result<Version> {
        for _ in 0..RACES {
            let Some(head) = self.last(stream).await? else {
                return Ok(Version(0));
            };
            let (events, next) = self.stream_events(stream).await?;
            let floor = events.first().map_or(next, |(e, _)| e.stream_version);
            let before = before.get().min(next);
            if before <= floor {
                return Ok(Version(floor));
            }
            let data = serde_json::json!({"stream": stream.as_str(), "before": before});
            let marker = Marker {
                next,
                start: before,
                tombstone: false,
            };
            if !self
                .mark(stream, head.sequence, marker, STREAM_TRUNCATED, data)
                .await?
            {
                continue;
            }
            // The marker hides them already; purge them (all, or up to the first kept).
            match crate::read::at_version(&events, before, |(e, _)| e.stream_version) {
                Some((kept, _)) => {
                    let sequence = u64::try_from(annals::backend::raw_position(kept.position))
                        .map_err(|_| backend("a position beyond a JetStream sequence"))?;
                    self.purge_below(stream, sequence).await?;
                }
                None => self.purge_to_marker(stream).await?,
            }
            return Ok(Version(before));
        }
        Err(Error::transient(
            "nats",
            format!("{stream} kept moving under its truncation ({RACES} attempts)"),
        ))
    }
}

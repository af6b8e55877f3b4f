//! Imports (`annals sync` into a NATS store): recorded events copied with their versions,
//! ids and timestamps.

use std::collections::HashMap;

use annals::{Error, EventData, ExpectedVersion, RecordedEvent, Result, StreamName, Version};

use crate::envelope::{Marker, Place};
use crate::write::{Outgoing, Patience, Published, RACES};
use crate::{NatsStore, MAX_BATCH};

impl NatsStore {
    /// Copies recorded events, keeping their versions, ids and timestamps, in order, as one
    /// atomic batch; events already copied (same id at the same version) are skipped.
    pub(crate) async fn import_events(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        annals::backend::validate_import(&events, self.inner.config.max_event_bytes)?;
        if events.len() > MAX_BATCH {
            return Err(Error::BatchTooLarge {
                stream: events[0].stream.clone(),
                events: events.len(),
                max: MAX_BATCH,
            });
        }
        // Imports name every event's version: a retry is recognised by it.
        let mut patience = Patience::new(true);
        let mut races = 0;
        // A marker's message for each event, should it begin a stream (ids unique).
        let carriers: Vec<EventData> = events
            .iter()
            .map(|_| EventData::new("$Marker", Vec::new()))
            .collect();
        while races < RACES {
            // Plan: per stream its head, then each event written, skipped or refused.
            // Per stream: its last sequence, its version, and its start.
            let mut heads: HashMap<&StreamName, (u64, u64, u64)> = HashMap::new();
            let mut existing: HashMap<&StreamName, Vec<RecordedEvent>> = HashMap::new();
            let mut ids = std::collections::HashSet::new();
            let mut out: Vec<Outgoing<'_>> = Vec::new();
            let data: Vec<EventData> = events.iter().map(RecordedEvent::to_data).collect();
            for ((e, d), carrier) in events.iter().zip(&data).zip(&carriers) {
                if !heads.contains_key(&e.stream) {
                    let last = self.last(&e.stream).await?;
                    heads.insert(
                        &e.stream,
                        last.map_or((0, 0, 0), |l| (l.sequence, l.next, l.start)),
                    );
                    // A stream this store does not have, or whose events are all hidden
                    // here (deleted or truncated), begins (again) at its first event's
                    // version: a marker hides the versions below, as a truncation's.
                    // Versions stay below 2^63 - 1, as on the SQL stores.
                    let begins = last.is_none_or(|l| l.hides_all && e.stream_version > l.next);
                    if begins && (1..i64::MAX as u64).contains(&e.stream_version) {
                        let version = e.stream_version;
                        out.push(Outgoing {
                            stream: &e.stream,
                            event: carrier,
                            place: Place {
                                version,
                                batch_start: version,
                                recorded_at: e.recorded_at,
                            },
                            expect: Some(last.map_or(0, |l| l.sequence)),
                            marker: Some(Marker {
                                next: version,
                                start: version,
                                tombstone: false,
                            }),
                            start: version,
                        });
                        heads.insert(&e.stream, (0, version, version));
                    }
                }
                let (after, version, start) = heads[&e.stream];
                if e.stream_version == version {
                    if !ids.insert(e.event_id) {
                        return Err(Error::DuplicateEventId {
                            event_id: e.event_id,
                            existing_stream: e.stream.clone(),
                        });
                    }
                    let first = !out.iter().any(|m| m.stream == &e.stream);
                    out.push(Outgoing {
                        stream: &e.stream,
                        event: d,
                        place: Place {
                            version,
                            batch_start: version,
                            recorded_at: e.recorded_at,
                        },
                        expect: first.then_some(after),
                        marker: None,
                        start,
                    });
                    heads.insert(&e.stream, (after, version + 1, start));
                    continue;
                }
                if e.stream_version < version {
                    if !existing.contains_key(&e.stream) {
                        let (recorded, _) = self.stream_events(&e.stream).await?;
                        existing.insert(&e.stream, recorded.into_iter().map(|(r, _)| r).collect());
                    }
                    let copied =
                        crate::read::at_version(&existing[&e.stream], e.stream_version, |r| {
                            r.stream_version
                        })
                        .is_some_and(|r| r.event_id == e.event_id);
                    if copied {
                        continue;
                    }
                }
                return Err(Error::WrongExpectedVersion {
                    stream: e.stream.clone(),
                    expected: ExpectedVersion::Exact(Version(e.stream_version)),
                    actual: Version(version),
                });
            }
            if out.is_empty() {
                return Ok(0);
            }
            // Without ids, the plan's reads (events already copied are skipped) and the
            // last-sequence checks keep a retry from writing twice.
            match self.send(&out, patience.ids).await? {
                Published::Stored(_) => {
                    return Ok(out.iter().filter(|m| m.marker.is_none()).count() as u64)
                }
                Published::Moved => races += 1,
                Published::InFlight => self.in_flight(&pairs(&out), &mut patience).await?,
                Published::Duplicate(at) => {
                    let Some(seq) = at else {
                        return Err(Error::backend(
                            "nats",
                            "an imported event id is already recorded in the store",
                        ));
                    };
                    self.refuse_foreign_ids(&pairs(&out), Some(seq)).await?;
                    races += 1;
                }
            }
        }
        Err(Error::transient(
            "nats",
            format!("the streams kept moving under this import ({RACES} attempts)"),
        ))
    }
}

/// Each outgoing event with its stream, to look for its id in other streams.
fn pairs<'a>(out: &'a [Outgoing<'a>]) -> Vec<(&'a StreamName, &'a [EventData])> {
    out.iter()
        .map(|m| (m.stream, std::slice::from_ref(m.event)))
        .collect()
}

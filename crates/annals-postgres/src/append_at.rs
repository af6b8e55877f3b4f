//! The decider's append (`EventStore::append_at`, `append_at_shown`) in one round trip:
//! through the group commit, which writes at an exact version or, refused, returns the
//! stream's events from that version on with the refusal.

use annals::{AppendAt, CONFLICT_EVENTS};

use crate::group::RACES;

use super::*;

impl PgStore {
    pub(crate) async fn append_at_version(
        &self,
        stream: &StreamName,
        version: Version,
        shown: Option<Version>,
        events: Vec<EventData>,
    ) -> Result<AppendAt> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        // Shared with each group it joins, not copied.
        let events: Arc<[EventData]> = events.into();
        let expected = ExpectedVersion::Exact(version);
        // Another pass when the append lost the transaction-id race on the stream row, or
        // met ids of an append that then rolled back.
        // A lost race is answered at once by a newer transaction; ids that vanish are rare.
        let (mut races, mut vanished) = (0, 0);
        while races < RACES && vanished < 5 {
            let (actual, refused) = match self
                .grouped(stream, expected, &events, true, shown)
                .await?
            {
                group::Answer::Written(written) => {
                    self.wake();
                    return Ok(AppendAt::Written(written));
                }
                group::Answer::Deleted => {
                    return Err(Error::StreamDeleted {
                        stream: stream.clone(),
                    })
                }
                group::Answer::Retry => {
                    races += 1;
                    continue;
                }
                group::Answer::Recorded => {
                    let client = self.client().await?;
                    match self.classify(&client, stream, expected, &events).await {
                        Ok(Verdict::AlreadyWritten(r)) => return Ok(AppendAt::Written(r)),
                        Ok(Verdict::Write) => {
                            vanished += 1;
                            continue;
                        }
                        Err(Error::WrongExpectedVersion { actual, .. }) => {
                            drop(client);
                            return annals::backend::conflict_read(self, stream, version, actual)
                                .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                group::Answer::Refused { actual, tail } => (actual, tail),
            };
            let (tail, batch_starts): (Vec<RecordedEvent>, Vec<u64>) = refused.into_iter().unzip();
            // Refused. An exact retry of an append that was written finds its ids in the
            // events returned; anything else is a conflict.
            let found: Vec<Option<Found>> = events
                .iter()
                .map(|e| {
                    let i = tail.iter().position(|r| r.event_id == e.event_id)?;
                    Some(Found {
                        stream: stream.clone(),
                        stream_version: tail[i].stream_version,
                        batch_start: batch_starts[i],
                        position: tail[i].position,
                    })
                })
                .collect();
            let conflict = |events| Ok(AppendAt::Conflict { actual, events });
            if found.iter().all(Option::is_none) {
                return conflict(tail);
            }
            if tail.len() >= CONFLICT_EVENTS {
                // The answer may stop inside the batch: ask the long way.
                let client = self.client().await?;
                return match self.classify(&client, stream, expected, &events).await {
                    Ok(Verdict::AlreadyWritten(r)) => Ok(AppendAt::Written(r)),
                    Ok(Verdict::Write) | Err(Error::WrongExpectedVersion { .. }) => conflict(tail),
                    Err(e) => Err(e),
                };
            }
            let first = version.get();
            let batch_start_of = |v: u64| {
                Ok(v.checked_sub(first)
                    .and_then(|i| batch_starts.get(i as usize).copied()))
            };
            return match idempotency::check(
                stream,
                expected,
                actual,
                &events,
                &found,
                batch_start_of,
            ) {
                Ok(Verdict::AlreadyWritten(r)) => Ok(AppendAt::Written(r)),
                Ok(Verdict::Write) | Err(Error::WrongExpectedVersion { .. }) => conflict(tail),
                Err(e) => Err(e),
            };
        }
        Err(backend(format!(
            "{stream}: event ids kept appearing and vanishing; retry"
        )))
    }
}

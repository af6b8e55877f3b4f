//! Appends: the server checks the stream's last sequence (`Nats-Expected-Last-Subject-
//! Sequence`), a multi-event append is one atomic batch, and event ids are `Nats-Msg-Id`s.

use annals::backend::idempotency::{self, Found, Verdict};
use annals::{
    AppendResult, Error, EventData, ExpectedVersion, Result, StreamName, Timestamp, Version,
};
use async_nats::HeaderMap;
use serde::Deserialize;

use crate::envelope::{self, Place};
use crate::{backend, NatsStore, MAX_BATCH};

/// How often an append re-reads the stream's head after another writer moved it, before
/// giving up (a `Any` append under heavy contention on one stream).
const RACES: usize = 100;

/// How many of the latest messages an atomic batch refused for a duplicate id searches for
/// it.
const RECENT: u64 = 10_000;

#[derive(Debug, Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What the server did with an append.
enum Published {
    /// Stored, ending at this sequence.
    Stored(u64),
    /// Another writer moved the stream first.
    Moved,
    /// An event id is already recorded (within the duplicate window), at this sequence
    /// when the server says.
    Duplicate(Option<u64>),
}

impl NatsStore {
    pub(crate) async fn append_one(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        if events.len() > MAX_BATCH {
            return Err(Error::BatchTooLarge {
                stream: stream.clone(),
                events: events.len(),
                max: MAX_BATCH,
            });
        }
        for _ in 0..RACES {
            let last = self.last(stream).await?;
            let actual = Version(last.map_or(0, |l| l.version + 1));
            if !expected.admits(actual) {
                return self.settle(stream, expected, actual, &events).await;
            }
            let after = last.map_or(0, |l| l.sequence);
            match self.publish(stream, after, actual, &events).await? {
                Published::Stored(end) => {
                    let n = events.len() as u64;
                    let position = |seq: u64| annals::backend::position(u128::from(seq));
                    return Ok(AppendResult {
                        version: Version(actual.get() + n),
                        first_position: position(end + 1 - n),
                        last_position: position(end),
                    });
                }
                Published::Moved => continue,
                Published::Duplicate(at) => {
                    match at {
                        Some(seq) => self.refuse_foreign_duplicate(stream, &events, seq).await?,
                        None => {
                            self.refuse_recent_foreign_duplicate(stream, &events)
                                .await?
                        }
                    }
                    let actual = self.last(stream).await?.map_or(0, |l| l.version + 1);
                    return self
                        .settle(stream, expected, Version(actual), &events)
                        .await;
                }
            }
        }
        Err(Error::transient(
            "nats",
            format!("{stream} kept moving under this append ({RACES} attempts)"),
        ))
    }

    /// An append that may be a retry: answers as the one idempotency rule says, from where
    /// the batch's ids are recorded in the stream.
    async fn settle(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        actual: Version,
        events: &[EventData],
    ) -> Result<AppendResult> {
        let recorded = self.stream_events(stream).await?;
        let found: Vec<Option<Found>> = events
            .iter()
            .map(|e| {
                recorded
                    .iter()
                    .find(|(r, _)| r.event_id == e.event_id)
                    .map(|(r, place)| Found {
                        stream: stream.clone(),
                        stream_version: r.stream_version,
                        batch_start: place.batch_start,
                        position: r.position,
                    })
            })
            .collect();
        let batch_start_of = |v: u64| {
            Ok(recorded
                .get(v as usize)
                .map(|(_, place): &(_, Place)| place.batch_start))
        };
        match idempotency::check(stream, expected, actual, events, &found, batch_start_of)? {
            Verdict::AlreadyWritten(result) => Ok(result),
            // Nothing recorded yet and the version holds now: the caller's race; a plain
            // conflict is the honest answer.
            Verdict::Write => Err(Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            }),
        }
    }

    /// When the duplicate the server found at `seq` is in another stream, the id is taken.
    async fn refuse_foreign_duplicate(
        &self,
        stream: &StreamName,
        events: &[EventData],
        seq: u64,
    ) -> Result<()> {
        let Some(m) = self.fetch(&self.inner.subjects.all(), seq, 1).await?.pop() else {
            return Ok(());
        };
        if m.sequence != seq {
            return Ok(());
        }
        let (other, _) = self.decode(&m)?;
        if &other.stream != stream && events.iter().any(|e| e.event_id == other.event_id) {
            return Err(Error::DuplicateEventId {
                event_id: other.event_id,
                existing_stream: other.stream,
            });
        }
        Ok(())
    }

    /// An atomic batch refused for a duplicate id does not say where the id is: look for
    /// the batch's ids among the store's latest messages (the duplicate window's).
    async fn refuse_recent_foreign_duplicate(
        &self,
        stream: &StreamName,
        events: &[EventData],
    ) -> Result<()> {
        let js = async_nats::jetstream::new(self.inner.client.clone());
        let mut handle = js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(backend)?;
        let last = handle.info().await.map_err(backend)?.state.last_sequence;
        let mut from = last.saturating_sub(RECENT).max(1);
        while from <= last {
            let batch = self.fetch(&self.inner.subjects.all(), from, 1000).await?;
            let Some(end) = batch.last().map(|m| m.sequence) else {
                break;
            };
            for m in &batch {
                let (other, _) = self.decode(m)?;
                if &other.stream != stream && events.iter().any(|e| e.event_id == other.event_id) {
                    return Err(Error::DuplicateEventId {
                        event_id: other.event_id,
                        existing_stream: other.stream,
                    });
                }
            }
            from = end + 1;
        }
        Ok(())
    }

    /// Publishes `events` at `actual`, the stream's last message being `after` (0: none).
    async fn publish(
        &self,
        stream: &StreamName,
        after: u64,
        actual: Version,
        events: &[EventData],
    ) -> Result<Published> {
        let client = &self.inner.client;
        let subject = self.inner.subjects.stream(stream);
        let recorded_at = Timestamp::now();
        let batch_id = annals::Uuid::now_v7().simple().to_string();
        let single = events.len() == 1;
        let mut reply = None;
        for (i, event) in events.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
            if i == 0 {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    after.to_string().as_str(),
                );
            }
            if !single {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            }
            let place = Place {
                version: actual.get() + i as u64,
                batch_start: actual.get(),
                recorded_at,
            };
            let body = envelope::encode(event, place);
            if i + 1 == events.len() {
                if !single {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                let answer = tokio::time::timeout(
                    self.inner.config.timeout,
                    client.request_with_headers(subject.clone(), headers, body.into()),
                )
                .await
                .map_err(|_| backend(format!("append to {stream} timed out")))?
                .map_err(backend)?;
                reply = Some(answer);
            } else {
                client
                    .publish_with_headers(subject.clone(), headers, body.into())
                    .await
                    .map_err(backend)?;
            }
        }
        let reply = reply.expect("a batch has a last event");
        let ack: Ack = serde_json::from_slice(&reply.payload)
            .map_err(|e| backend(format!("unreadable publish acknowledgement: {e}")))?;
        match ack.error {
            None if ack.duplicate => Ok(Published::Duplicate(Some(ack.seq))),
            None => Ok(Published::Stored(ack.seq)),
            Some(e) => match e.err_code {
                10071 | 10164 => Ok(Published::Moved),
                10201 => Ok(Published::Duplicate((ack.seq > 0).then_some(ack.seq))),
                10158 => Err(backend(format!("append to {stream}: {}", e.description))),
                _ => Err(Error::backend(
                    "nats",
                    format!(
                        "append to {stream} refused: {} ({})",
                        e.description, e.err_code
                    ),
                )),
            },
        }
    }
}

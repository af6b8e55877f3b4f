//! Appends: the server checks the stream's last sequence (`Nats-Expected-Last-Subject-
//! Sequence`), a multi-event append is one atomic batch, and event ids are `Nats-Msg-Id`s.

use std::time::{Duration, Instant};

use annals::backend::idempotency::{self, Found, Verdict};
use annals::{
    AppendResult, Error, EventData, ExpectedVersion, Result, StreamAppend, StreamName, Timestamp,
    Version,
};

use crate::envelope::Place;
pub(crate) use crate::send::Outgoing;
use crate::stream_read::Last;
use crate::{NatsStore, MAX_BATCH};

/// How often an append re-reads the stream's head after another writer moved it, before
/// giving up (a `Any` append under heavy contention on one stream).
pub(crate) const RACES: usize = 100;

/// How many of the latest messages an atomic batch refused for a duplicate id searches for
/// it.
const RECENT: u64 = 10_000;

/// What the server did with an append.
pub(crate) enum Published {
    /// Stored, ending at this sequence.
    Stored(u64),
    /// Another writer moved the stream first.
    Moved,
    /// An event id is already recorded (within the duplicate window), at this sequence
    /// when the server says.
    Duplicate(Option<u64>),
    /// An event id is held by the server as being written by another publish (10158).
    InFlight,
}

/// How an append waits while the server holds its event ids as being written by another
/// publish ("duplicate message id is in process"). Such a publish is normally stored, or
/// refused, within milliseconds, and the next attempt is answered as a duplicate or
/// written. But a leader that loses its place in the middle of a publish can keep its ids
/// marked in process, never stored, and refuse them for the whole duplicate window (two
/// minutes by default). Once the ids have been refused for longer than the store's
/// timeout:
/// - an append whose every expectation is an exact version (or a new stream), and an
///   import, checks that the ids are not recorded and sends its events without
///   `Nats-Msg-Id`s: still conditional on each stream's last sequence, so a late copy of
///   the other publish and this one can never both be stored, and a later retry of it is
///   answered by its expected version;
/// - an `Any` append fails with a transient error: without its ids in the server's
///   duplicate window, a later retry of it could be stored again.
pub(crate) struct Patience {
    since: Option<Instant>,
    pause: Duration,
    /// Whether the ids may be left out once the server has held them too long.
    exact: bool,
    /// Send the event ids as `Nats-Msg-Id`s.
    pub(crate) ids: bool,
}

impl Patience {
    /// For an append whose retries are recognised by their expected versions (`exact`),
    /// or not.
    pub(crate) fn new(exact: bool) -> Self {
        Self {
            since: None,
            pause: Duration::from_millis(10),
            exact,
            ids: true,
        }
    }

    /// After an in-process answer: waits before the next attempt and answers true, or,
    /// once the ids have been refused for longer than `limit`, stops sending them and
    /// answers false (the caller then checks they are not recorded), or, for an append
    /// that is not exact, fails.
    pub(crate) async fn wait(&mut self, limit: Duration) -> Result<bool> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= limit {
            if !self.exact {
                return Err(Error::transient(
                    "nats",
                    format!(
                        "the server has held this append's event ids as in process for {:?} \
                         (a publish of them a lost leader never finished); it lets them go \
                         within its duplicate window: retry later",
                        since.elapsed()
                    ),
                ));
            }
            tracing::warn!(
                waited = ?since.elapsed(),
                "the server keeps an append's event ids in process; sending it without them"
            );
            self.ids = false;
            return Ok(false);
        }
        tracing::debug!("an append's event ids are in process on the server; waiting");
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(250));
        Ok(true)
    }
}

/// Whether a retry of an append expecting `expected` is recognised by its version alone.
fn exact(expected: ExpectedVersion) -> bool {
    matches!(
        expected,
        ExpectedVersion::Exact(_) | ExpectedVersion::NoStream
    )
}

impl NatsStore {
    /// Appends `events` to `stream`; with `shown`, refused as
    /// [`Error::WrongExpectedVersion`] at the very version expected when the stream now
    /// starts past it (`EventStore::append_at_shown`: the start is read from the last
    /// message, which the publish is conditional on).
    pub(crate) async fn append_one(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        shown: Option<Version>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        if events.len() > MAX_BATCH {
            return Err(Error::BatchTooLarge {
                stream: stream.clone(),
                events: events.len(),
                max: MAX_BATCH,
            });
        }
        // The head this append starts from: the one remembered, else none for an append
        // that expects a new stream; both guesses the server checks. Otherwise, or after
        // the server refused a guess, the head is read.
        let mut guess = self.known_head(stream).map(Some).or(match expected {
            ExpectedVersion::NoStream | ExpectedVersion::Exact(Version(0)) => Some(None),
            _ => None,
        });
        let mut patience = Patience::new(exact(expected));
        let mut races = 0;
        while races < RACES {
            let (last, guessed) = match guess.take() {
                Some(last) => (last, true),
                None => (self.last(stream).await?, false),
            };
            let actual = Version(last.map_or(0, |l| l.next));
            if !expected.admits(actual) {
                if guessed {
                    continue;
                }
                return self.settle(stream, expected, actual, &events).await;
            }
            let start = last.map_or(0, |l| l.start);
            if shown.is_some_and(|from| start > from.get()) {
                // A remembered head may be old: the stream as it is now decides.
                if guessed {
                    continue;
                }
                return Err(Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            if !patience.ids {
                // Without the server's duplicate check, the stream is the only witness.
                if let Some(done) = self.recorded(stream, expected, actual, &events).await? {
                    return Ok(done);
                }
            }
            let group = Group {
                stream,
                after: last.map_or(0, |l| l.sequence),
                actual,
                start,
                events: &events,
            };
            match self.publish(&[group], patience.ids).await? {
                Published::Stored(end) => {
                    let n = events.len() as u64;
                    self.remember(
                        stream,
                        Last {
                            sequence: end,
                            next: actual.get() + n,
                            tombstone: false,
                            hides_all: false,
                            start,
                        },
                    );
                    let position = |seq: u64| annals::backend::position(u128::from(seq));
                    return Ok(AppendResult {
                        version: Version(actual.get() + n),
                        first_position: position(end + 1 - n),
                        last_position: position(end),
                    });
                }
                Published::Moved => {
                    self.forget(stream);
                    races += 1;
                }
                Published::InFlight => {
                    self.in_flight(&[(stream, &events)], &mut patience).await?;
                }
                Published::Duplicate(at) => {
                    self.forget(stream);
                    self.refuse_foreign_ids(&[(stream, &events)], at).await?;
                    let actual = self.last(stream).await?.map_or(0, |l| l.next);
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
        // Nothing recorded yet and the version holds now: the caller's race; a plain
        // conflict is the honest answer.
        self.recorded(stream, expected, actual, events)
            .await?
            .ok_or_else(|| Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            })
    }

    /// What the idempotency rule says of an append, from where the batch's ids are
    /// recorded in the stream: already written (its result), none of it written (`None`),
    /// or an error (a partial overlap, a conflict).
    async fn recorded(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        actual: Version,
        events: &[EventData],
    ) -> Result<Option<AppendResult>> {
        let (recorded, _) = self.stream_events(stream).await?;
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
            Ok(
                crate::read::at_version(&recorded, v, |(r, _)| r.stream_version)
                    .map(|(_, place): &(_, Place)| place.batch_start),
            )
        };
        match idempotency::check(stream, expected, actual, events, &found, batch_start_of)? {
            Verdict::AlreadyWritten(result) => Ok(Some(result)),
            Verdict::Write => Ok(None),
        }
    }

    /// After an in-process answer (see [`Patience`]): forgets the streams' heads and waits,
    /// or, once the ids are held too long, refuses them if another stream holds one.
    pub(crate) async fn in_flight(
        &self,
        appends: &[(&StreamName, &[EventData])],
        patience: &mut Patience,
    ) -> Result<()> {
        for (stream, _) in appends {
            self.forget(stream);
        }
        if !patience.wait(self.inner.config.timeout).await? {
            self.refuse_foreign_ids(appends, None).await?;
        }
        Ok(())
    }

    /// Refuses the appends when one of their event ids is recorded in a stream other than
    /// its own: at `seq` when the server said where the duplicate is, else among the
    /// store's latest messages (the duplicate window's; an atomic batch refused for a
    /// duplicate does not say where).
    pub(crate) async fn refuse_foreign_ids(
        &self,
        appends: &[(&StreamName, &[EventData])],
        seq: Option<u64>,
    ) -> Result<()> {
        let refuse = |m: &crate::read::Stored| -> Result<()> {
            let crate::read::Message::Event(other, _) = self.decode_any(m)? else {
                return Ok(());
            };
            let foreign = appends.iter().any(|(stream, events)| {
                *stream != &other.stream && events.iter().any(|e| e.event_id == other.event_id)
            });
            match foreign {
                true => Err(Error::DuplicateEventId {
                    event_id: other.event_id,
                    existing_stream: other.stream,
                }),
                false => Ok(()),
            }
        };
        if let Some(seq) = seq {
            return match self.leader_message(seq).await? {
                Some(m) => refuse(&m),
                None => Ok(()),
            };
        }
        let last = self.stream_state().await?.last_sequence;
        let mut from = last.saturating_sub(RECENT).max(1);
        while from <= last {
            // From a replica that has applied up to the leader's last message.
            let (batch, _) = self
                .fetch_fresh(&self.inner.subjects.all(), from - 1, 1000, last)
                .await?;
            let Some(end) = batch.last().map(|m| m.sequence) else {
                break;
            };
            batch.iter().try_for_each(refuse)?;
            from = end + 1;
        }
        Ok(())
    }

    /// Publishes `groups` (appends at their streams' heads, written now).
    async fn publish(&self, groups: &[Group<'_>], ids: bool) -> Result<Published> {
        let recorded_at = Timestamp::now();
        let mut out = Vec::new();
        for g in groups {
            for (i, event) in g.events.iter().enumerate() {
                out.push(Outgoing {
                    stream: g.stream,
                    event,
                    place: Place {
                        version: g.actual.get() + i as u64,
                        batch_start: g.actual.get(),
                        recorded_at,
                    },
                    expect: (i == 0).then_some(g.after),
                    marker: None,
                    start: g.start,
                });
            }
        }
        self.send(&out, ids).await
    }

    /// Several streams' appends as one atomic batch: each stream's expectation is checked
    /// by the server; all are written or none.
    pub(crate) async fn append_many_atomic(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Option<Vec<Version>>,
    ) -> Result<Vec<AppendResult>> {
        annals::backend::validate_many(&appends, self.inner.config.max_event_bytes)?;
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        if total > MAX_BATCH {
            return Err(Error::TransactionTooLarge {
                streams: appends.len(),
                events: total,
                max: MAX_BATCH,
            });
        }
        let mut patience = Patience::new(appends.iter().all(|a| exact(a.expected)));
        let pairs: Vec<(&StreamName, &[EventData])> =
            appends.iter().map(|a| (&a.stream, &a.events[..])).collect();
        // Set once the server has found one of the ids recorded: the next plan reads the
        // streams to answer a retry (one expecting any version is recognised only so).
        let mut witness = false;
        let mut races = 0;
        while races < RACES {
            // Plan every stream: already written (an exact retry), or to write at its head.
            let mut results: Vec<Option<AppendResult>> = Vec::with_capacity(appends.len());
            let mut heads = Vec::with_capacity(appends.len());
            for (i, a) in appends.iter().enumerate() {
                let shown = shown_from.as_ref().and_then(|s| s.get(i)).map(|v| v.get());
                let moved = |l: &Last| shown.is_some_and(|from| l.start > from);
                // The remembered head when it admits the append (the server checks it)
                // and shows the caller's events, else the head read now.
                let known = self
                    .known_head(&a.stream)
                    .filter(|l| a.expected.admits(Version(l.next)) && !moved(l));
                let last = match known {
                    Some(l) => Some(l),
                    None => self.last(&a.stream).await?,
                };
                let actual = Version(last.map_or(0, |l| l.next));
                if a.expected.admits(actual) && last.as_ref().is_some_and(moved) {
                    // The stream starts past the caller's first event: nothing is written
                    // (the publish is conditional on this last message, so a deletion
                    // after this read fails it and the plan is made again).
                    return Err(Error::WrongExpectedVersion {
                        stream: a.stream.clone(),
                        expected: a.expected,
                        actual,
                    });
                }
                if a.expected.admits(actual) {
                    // Without the server's duplicate check, the stream is the only witness.
                    results.push(match patience.ids && !witness {
                        true => None,
                        false => {
                            self.recorded(&a.stream, a.expected, actual, &a.events)
                                .await?
                        }
                    });
                } else {
                    results.push(Some(
                        self.settle(&a.stream, a.expected, actual, &a.events)
                            .await?,
                    ));
                }
                heads.push((
                    last.map_or(0, |l| l.sequence),
                    actual,
                    last.map_or(0, |l| l.start),
                ));
            }
            let groups: Vec<Group<'_>> = appends
                .iter()
                .zip(&heads)
                .zip(&results)
                .filter(|(_, done)| done.is_none())
                .map(|((a, &(after, actual, start)), _)| Group {
                    stream: &a.stream,
                    after,
                    actual,
                    start,
                    events: &a.events,
                })
                .collect();
            if groups.is_empty() {
                return Ok(results.into_iter().flatten().collect());
            }
            match self.publish(&groups, patience.ids).await? {
                Published::Stored(end) => {
                    let written: u64 = groups.iter().map(|g| g.events.len() as u64).sum();
                    let mut seq = end + 1 - written;
                    let mut fresh = groups.iter().map(|g| {
                        let n = g.events.len() as u64;
                        self.remember(
                            g.stream,
                            Last {
                                sequence: seq + n - 1,
                                next: g.actual.get() + n,
                                tombstone: false,
                                hides_all: false,
                                start: g.start,
                            },
                        );
                        let position = |s: u64| annals::backend::position(u128::from(s));
                        let r = AppendResult {
                            version: Version(g.actual.get() + n),
                            first_position: position(seq),
                            last_position: position(seq + n - 1),
                        };
                        seq += n;
                        r
                    });
                    return Ok(results
                        .into_iter()
                        .map(|done| done.unwrap_or_else(|| fresh.next().expect("one per group")))
                        .collect());
                }
                Published::Moved => {
                    for g in &groups {
                        self.forget(g.stream);
                    }
                    races += 1;
                }
                Published::InFlight => self.in_flight(&pairs, &mut patience).await?,
                Published::Duplicate(at) => {
                    for g in &groups {
                        self.forget(g.stream);
                    }
                    races += 1;
                    self.refuse_foreign_ids(&pairs, at).await?;
                    // Replanning answers a retry from the streams, or says what overlaps.
                    witness = true;
                }
            }
        }
        Err(Error::transient(
            "nats",
            format!("the streams kept moving under this append ({RACES} attempts)"),
        ))
    }
}

/// One stream's part of a publish.
struct Group<'a> {
    stream: &'a StreamName,
    /// The stream's last sequence (0: none).
    after: u64,
    /// Its version.
    actual: Version,
    /// Its start (the last message's).
    start: u64,
    events: &'a [EventData],
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Patience;

    #[tokio::test]
    async fn ids_held_too_long_are_left_out_only_when_retries_are_exact() {
        let mut exact = Patience::new(true);
        assert!(
            exact.wait(Duration::from_secs(60)).await.unwrap(),
            "waits first"
        );
        assert!(exact.ids);
        assert!(
            !exact.wait(Duration::ZERO).await.unwrap(),
            "then goes on without ids"
        );
        assert!(!exact.ids);
        let mut any = Patience::new(false);
        match any.wait(Duration::ZERO).await {
            Err(e) => assert!(e.is_transient(), "{e}"),
            Ok(_) => panic!("an `Any` append must not drop its ids"),
        }
        assert!(any.ids);
    }
}

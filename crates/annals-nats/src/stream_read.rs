//! One stream's reads: its head (the leader's last message, and the heads this client
//! remembers, from which appends start and reads go on) and its events, whole or from a
//! known head on.

use annals::{ReadStream, RecordedEvent, Result, StreamName, Timestamp};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::envelope::Place;
use crate::read::{leader_answer, CatchUp, Message, Stored, BATCH, START_HEADER};
use crate::stream_back::Ranged;
use crate::{backend, NatsStore};

/// The last message of a stream: its sequence, the stream's version after it, and whether
/// it is a tombstone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Last {
    pub(crate) sequence: u64,
    pub(crate) next: u64,
    pub(crate) tombstone: bool,
    /// The last message is a marker hiding every event: reads show none.
    pub(crate) hides_all: bool,
    /// The first version reads show after deletion and truncation: a marker's start, or
    /// what an event's message carries (`START_HEADER`; 0 without one).
    pub(crate) start: u64,
}

/// A stream's last message, and the event it holds (none for a marker).
pub(crate) type LastEvent = (Last, Option<(RecordedEvent, Place)>);

/// What a client remembers of a stream's head: the last one it saw (none once the server
/// said it moved), and the one before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known {
    pub(crate) head: Option<Last>,
    pub(crate) before: Option<Last>,
}

impl NatsStore {
    /// The last message of `stream`, if any, as the stream's leader has it (replicas may
    /// lag; appends plan from the leader's view); a tombstone is an error.
    pub(crate) async fn last(&self, stream: &StreamName) -> Result<Option<Last>> {
        match self.head(stream).await? {
            Some(last) if last.tombstone => Err(annals::Error::StreamDeleted {
                stream: stream.clone(),
            }),
            last => Ok(last),
        }
    }

    /// The last message of `stream`, tombstone or not.
    pub(crate) async fn head(&self, stream: &StreamName) -> Result<Option<Last>> {
        Ok(self.head_event(stream).await?.map(|(last, _)| last))
    }

    /// [`Self::head`], and the event the last message holds (none for a marker).
    pub(crate) async fn head_event(&self, stream: &StreamName) -> Result<Option<LastEvent>> {
        let subject = self.inner.subjects.stream(stream);
        let found = crate::read::answered(self.inner.config.timeout, || {
            self.inner.stream.get_last_raw_message_by_subject(&subject)
        })
        .await;
        let Some(m) = leader_answer(found)? else {
            return Ok(None);
        };
        let start = m
            .headers
            .get(START_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .unwrap_or(0);
        let stored = Stored::of(m);
        let (last, event) = match self.decode_any(&stored)? {
            Message::Event(event, place) => (
                Last {
                    sequence: stored.sequence,
                    next: place.version + 1,
                    tombstone: false,
                    hides_all: false,
                    start,
                },
                Some((event, place)),
            ),
            Message::Marker(marker) => (
                Last {
                    sequence: stored.sequence,
                    next: marker.next,
                    tombstone: marker.tombstone,
                    hides_all: marker.start >= marker.next,
                    start: marker.start,
                },
                None,
            ),
        };
        if !last.tombstone {
            self.remember(stream, last);
        }
        Ok(Some((last, event)))
    }

    /// The head of `stream` as this client last saw it, if it remembers one.
    pub(crate) fn known_head(&self, stream: &StreamName) -> Option<Last> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads.get(stream).and_then(|known| known.head)
    }

    /// A head of `stream` this client saw whose version is at most one past `from`: the
    /// last one, or the one before it (the head an append found moved, which a conflict's
    /// read then reads on from).
    fn anchor(&self, stream: &StreamName, from: u64) -> Option<Last> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        let known = heads.get(stream)?;
        [known.head, known.before]
            .into_iter()
            .flatten()
            .find(|head| !head.tombstone && head.next <= from.saturating_add(1))
    }

    /// Whether this client knows a head of `stream` at version `from` (its last write or
    /// read there, or the head before it): a forward read from `from` reads on from it.
    pub(crate) fn at_head(&self, stream: &StreamName, from: u64) -> bool {
        self.anchor(stream, from)
            .is_some_and(|head| head.next >= from)
    }

    /// Remembers `last` as the head of `stream`, unless a later head is remembered.
    pub(crate) fn remember(&self, stream: &StreamName, last: Last) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        match heads.get_mut(stream) {
            Some(Known { head: Some(h), .. }) if h.sequence >= last.sequence => {}
            Some(known) => {
                known.before = known.head.or(known.before);
                known.head = Some(last);
            }
            None => {
                heads.put(
                    stream.clone(),
                    Known {
                        head: Some(last),
                        before: None,
                    },
                );
            }
        }
    }

    /// Forgets the head of `stream` (the server said it moved); reads may still go on from
    /// it.
    pub(crate) fn forget(&self, stream: &StreamName) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = heads.get_mut(stream) {
            known.before = known.head.take().or(known.before);
        }
    }

    /// Every event of `stream` reads show (those after its last marker), in order, with
    /// where each append began, and the stream's version: up to its last message as the
    /// leader has it, however far the replica answering the reads lags.
    pub(crate) async fn stream_events(
        &self,
        stream: &StreamName,
    ) -> Result<(Vec<(RecordedEvent, Place)>, u64)> {
        let (events, next, _) = self.stream_events_started(stream).await?;
        Ok((events, next))
    }

    /// [`Self::stream_events`], and the stream's start (as its last message names it).
    pub(crate) async fn stream_events_started(
        &self,
        stream: &StreamName,
    ) -> Result<(Vec<(RecordedEvent, Place)>, u64, u64)> {
        self.stream_events_from(stream, None).await
    }

    /// [`Self::stream_events_started`], when only the events from version `from` on are
    /// needed (more may come): a client that knows a head of the stream at or just past
    /// `from` (its last write or read of it) reads only the messages from that head on.
    /// When the head has not moved, the leader's last message is all it reads: a cached
    /// decision's catch-up (from its state's last event) then costs one request, not a read
    /// of the whole stream. What is read must lead, version by version, from the known head
    /// to the leader's last message; otherwise (a head from before a purge, or from a
    /// stream since recreated) the whole stream is read.
    pub(crate) async fn stream_events_from(
        &self,
        stream: &StreamName,
        from: Option<u64>,
    ) -> Result<(Vec<(RecordedEvent, Place)>, u64, u64)> {
        // Asked before the leader's last message, which is remembered as the head.
        let known = self.known_at(stream, from);
        let Some(end) = self.head_event(stream).await? else {
            return Ok((Vec::new(), 0, 0));
        };
        self.stream_events_to(stream, known, end).await
    }

    /// The head this client knows at or just below version `from` (see
    /// [`Self::stream_events_from`]), and whether the read shows its event.
    fn known_at(&self, stream: &StreamName, from: Option<u64>) -> Option<(Last, bool)> {
        from.and_then(|from| {
            self.anchor(stream, from)
                .map(|head| (head, from < head.next))
        })
    }

    /// [`Self::stream_events_from`] up to `end`, the stream's last message as read, from
    /// the `known` head if it leads there.
    async fn stream_events_to(
        &self,
        stream: &StreamName,
        known: Option<(Last, bool)>,
        (end, end_event): LastEvent,
    ) -> Result<(Vec<(RecordedEvent, Place)>, u64, u64)> {
        if end.tombstone {
            return Err(annals::Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        if let Some((known, with_head)) = known {
            let tail = match end.sequence == known.sequence {
                // Unmoved: the last message is the head's own.
                true if end.next != known.next => None,
                true if with_head => end_event
                    .filter(|(_, place)| place.version + 1 == known.next)
                    .map(|event| vec![event]),
                true => Some(Vec::new()),
                false => self.events_after(stream, known, with_head, end).await?,
            };
            if let Some(events) = tail {
                return Ok((events, end.next, end.start));
            }
        }
        let mut out = Vec::new();
        self.each_message(stream, 1, end.sequence, |m| {
            match self.decode_any(m)? {
                Message::Event(e, place) => out.push((e, place)),
                // A deletion or truncation hides the versions below its start.
                Message::Marker(m) => out.retain(|(e, _)| e.stream_version >= m.start),
            }
            Ok(true)
        })
        .await?;
        Ok((out, end.next, end.start))
    }

    /// The events of `stream` after its message `known` (from it, `with_head`) up to `end`
    /// (its last message, as the leader has it), with markers applied; `None` unless they
    /// lead exactly from `known`'s version to `end`'s.
    async fn events_after(
        &self,
        stream: &StreamName,
        known: Last,
        with_head: bool,
        end: Last,
    ) -> Result<Option<Vec<(RecordedEvent, Place)>>> {
        if end.sequence < known.sequence || (with_head && known.next == 0) {
            return Ok(None);
        }
        let mut out: Vec<(RecordedEvent, Place)> = Vec::new();
        let (mut next, from) = match with_head {
            true => (known.next - 1, known.sequence),
            false => (known.next, known.sequence + 1),
        };
        let whole = self
            .each_message(stream, from, end.sequence, |m| {
                Ok(match self.decode_any(m)? {
                    Message::Event(e, place) if place.version == next => {
                        next += 1;
                        out.push((e, place));
                        true
                    }
                    Message::Marker(marker) if marker.next == next => {
                        out.retain(|(e, _)| e.stream_version >= marker.start);
                        true
                    }
                    _ => false,
                })
            })
            .await?;
        if !whole {
            return Ok(None);
        }
        Ok((next == end.next).then_some(out))
    }

    /// Hands `visit` the messages of `stream` from sequence `from` to `end` (as the leader
    /// has it), in order, asking again while the replica answering has not applied them
    /// yet; stops, answering false, when `visit` does.
    async fn each_message(
        &self,
        stream: &StreamName,
        mut from: u64,
        end: u64,
        mut visit: impl FnMut(&Stored) -> Result<bool>,
    ) -> Result<bool> {
        let subject = self.inner.subjects.stream(stream);
        let mut catch_up = CatchUp::within(self.inner.config.timeout);
        while from <= end {
            let batch = self.fetch(&subject, from, BATCH).await?;
            match batch.last() {
                Some(last) => from = last.sequence + 1,
                // The replica that answered has not applied the leader's last writes yet; it
                // will, and nothing signals when.
                None if catch_up.wait().await => continue,
                None => {
                    return Err(backend(format!(
                        "the replicas did not catch up with the leader's sequence {end} of {stream}"
                    )))
                }
            }
            for m in batch.iter().take_while(|m| m.sequence <= end) {
                if !visit(m)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    pub(crate) async fn read_stream_vec(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self.read_stream_started(stream, options).await?.0)
    }

    /// The events a read of `stream` shows, and where the stream starts, from the same
    /// messages.
    pub(crate) async fn read_stream_started(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<(Vec<RecordedEvent>, u64)> {
        let policies = self.policies().await?;
        let policy = crate::retention::policy_of(&policies, stream);
        // Only the events from `from` on are shown by a forward read; under a retention
        // policy, what expires is decided on the whole stream.
        let from = match options.direction {
            annals::Direction::Forward => options.from.map(annals::Version::get),
            annals::Direction::Backward => None,
        };
        let from = from.filter(|_| policy.is_none());
        // A forward read from a version or with a limit reads the versions it shows; a
        // client that knows a head at `from` (as a cached decision's catch-up does) reads
        // on from that head instead.
        let ranged = options.direction == annals::Direction::Forward
            && policy.is_none()
            && (from.is_some_and(|f| f > 0) || options.limit.is_some())
            && !from.is_some_and(|f| self.at_head(stream, f));
        let (mut events, next, start) = match ranged {
            true => match crate::stream_back::read_forward(self, stream, options).await? {
                Ranged::Read(events, start) => return Ok((events, start)),
                // The last message the range read, not asked for again.
                Ranged::Whole(end) => {
                    let known = self.known_at(stream, from);
                    self.stream_events_to(stream, known, *end).await?
                }
            },
            false => self.stream_events_from(stream, from).await?,
        };
        let expired = crate::retention::expired(&events, policy, next, Timestamp::now());
        events.drain(..expired);
        // The range of versions asked for, from the first one reads show.
        let floor = events.first().map_or(next, |(e, _)| e.stream_version);
        let options = match options.direction {
            annals::Direction::Forward => ReadStream {
                from: Some(annals::Version(
                    options.from.map_or(floor, |v| v.get().max(floor)),
                )),
                ..options
            },
            annals::Direction::Backward => options,
        };
        let (lo, hi) = annals::backend::index_range(&options, next);
        let mut chosen: Vec<RecordedEvent> = events
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| (lo..hi).contains(&e.stream_version))
            .collect();
        if options.direction == annals::Direction::Backward {
            chosen.reverse();
        }
        if let Some(limit) = options.limit {
            chosen.truncate(limit);
        }
        Ok((chosen, start))
    }
}

/// The events of a read handed out in chunks as they are taken: `next` gives the next
/// chunk (possibly empty) and where the read is then, or `None` at its end.
pub(crate) fn chunked<S, F, Fut>(start: S, next: F) -> BoxStream<'static, Result<RecordedEvent>>
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<(Vec<RecordedEvent>, S)>>> + Send + 'static,
{
    futures::stream::try_unfold(start, next)
        .map_ok(|events| futures::stream::iter(events.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// The events of a read of `stream`, read when first asked for.
pub(crate) fn events_of(
    store: NatsStore,
    stream: StreamName,
    options: ReadStream,
) -> BoxStream<'static, Result<RecordedEvent>> {
    futures::stream::once(async move { store.read_stream_vec(&stream, options).await })
        .flat_map(|read| match read {
            Ok(events) => futures::stream::iter(events.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        })
        .boxed()
}

//! Forward reads of one stream, oldest first, read a batch at a time as they are taken.
//!
//! A forward read from a head this client knows (a cached decision's catch-up) or under a
//! retention policy reads as [`NatsStore::read_stream_vec`] does; one asking for at most
//! half the stream reads that range back from the stream's last message
//! ([`crate::stream_back::read_forward`]). Any other reads the stream's subject from its
//! first message up to its last one as the leader has it, a batch of [`BATCH`] messages
//! at a time as the events are taken: a caller that stops early (a limit reached, a
//! `take`) stops the reading, and a long stream is never held whole. (First batches of
//! 64 messages, doubling, cut a whole read of 1,000 events to two thirds of its rate:
//! each request makes the server walk the subject's block again.)

use annals::{ReadStream, RecordedEvent, Result, StreamName, Version};
use futures::stream::BoxStream;

use crate::read::{CatchUp, Message, BATCH};
use crate::stream_back::Ranged;
use crate::stream_read::Last;
use crate::{backend, NatsStore};

/// A whole read under way.
struct Whole {
    store: NatsStore,
    stream: StreamName,
    subject: String,
    /// The stream's last message as the leader had it when the read began: the read ends
    /// there.
    end: Last,
    /// The next sequence to read from.
    cursor: u64,
    /// The version asked to read from, and how many at most.
    from: u64,
    limit: u64,
    /// The versions shown, from the first event shown (the read's start is the later of
    /// `from` and that event's version).
    window: Option<(u64, u64)>,
    catch_up: CatchUp,
}

/// Where a forward read is.
enum State {
    Start(NatsStore, StreamName, ReadStream),
    Reading(Box<Whole>),
    Done,
}

/// The events a forward read of `stream` shows, oldest first, read as they are taken.
pub(crate) fn read_forward(
    store: NatsStore,
    stream: StreamName,
    options: ReadStream,
) -> BoxStream<'static, Result<RecordedEvent>> {
    crate::stream_read::chunked(State::Start(store, stream, options), next)
}

/// The next events of a forward read (possibly none), and where it is then.
async fn next(state: State) -> Result<Option<(Vec<RecordedEvent>, State)>> {
    Ok(match state {
        State::Start(store, stream, options) => match begin(store, stream, options).await? {
            Ok(events) => Some((events, State::Done)),
            Err(whole) => Some((Vec::new(), State::Reading(Box::new(whole)))),
        },
        State::Reading(mut whole) => match whole.batch().await? {
            (events, true) => Some((events, State::Reading(whole))),
            (events, false) => Some((events, State::Done)),
        },
        State::Done => None,
    })
}

/// The read's events when it reads them otherwise than whole, else the whole read to do.
async fn begin(
    store: NatsStore,
    stream: StreamName,
    options: ReadStream,
) -> Result<std::result::Result<Vec<RecordedEvent>, Whole>> {
    let policies = store.policies().await?;
    let from = options.from.map(Version::get);
    let at_head = from.is_some_and(|f| store.at_head(&stream, f));
    if crate::retention::policy_of(&policies, &stream).is_some() || at_head {
        return Ok(Ok(store.read_stream_vec(&stream, options).await?));
    }
    let end = match from.is_some_and(|f| f > 0) || options.limit.is_some() {
        true => match crate::stream_back::read_forward(&store, &stream, options).await? {
            Ranged::Read(events, _) => return Ok(Ok(events)),
            // The last message the range read, not asked for again.
            Ranged::Whole(end) => end.0,
        },
        false => match store.head(&stream).await? {
            Some(end) => end,
            None => return Ok(Ok(Vec::new())),
        },
    };
    if end.tombstone {
        return Err(annals::Error::StreamDeleted { stream });
    }
    let limit = options
        .limit
        .map_or(u64::MAX, |l| u64::try_from(l).unwrap_or(u64::MAX));
    let subject = store.inner.subjects.stream(&stream);
    let catch_up = CatchUp::within(store.inner.config.timeout);
    Ok(Err(Whole {
        store,
        stream,
        subject,
        end,
        cursor: 1,
        from: from.unwrap_or(0),
        limit,
        window: None,
        catch_up,
    }))
}

impl Whole {
    /// The events shown in the next batch, and whether the read goes on.
    async fn batch(&mut self) -> Result<(Vec<RecordedEvent>, bool)> {
        if self.cursor > self.end.sequence || self.limit == 0 {
            return Ok((Vec::new(), false));
        }
        let (batch, _) = self
            .store
            .fetch_more(&self.subject, self.cursor, BATCH)
            .await?;
        if batch.is_empty() {
            // The replica that answered has not applied the leader's last message yet; it
            // will, and nothing signals when.
            if !self.catch_up.wait().await {
                return Err(backend(format!(
                    "the replicas did not catch up with the leader's sequence {} of {}",
                    self.end.sequence, self.stream
                )));
            }
            return Ok((Vec::new(), true));
        }
        let mut shown = Vec::new();
        for m in &batch {
            if m.sequence > self.end.sequence {
                return Ok((shown, false));
            }
            self.cursor = m.sequence + 1;
            // No version below the stream's start is shown (its last message says where
            // it starts, the highest of its markers' starts): markers hide nothing more.
            let Message::Event(event, _) = self.store.decode_any(m)? else {
                continue;
            };
            if event.stream_version < self.end.start {
                continue;
            }
            let (end, from, limit) = (self.end.next, self.from, self.limit);
            let (lo, hi) = *self.window.get_or_insert_with(|| {
                let lo = from.max(event.stream_version).min(end);
                (lo, lo.saturating_add(limit).min(end))
            });
            if event.stream_version >= hi {
                return Ok((shown, false));
            }
            if event.stream_version >= lo {
                shown.push(event);
            }
        }
        Ok((shown, self.cursor <= self.end.sequence))
    }
}

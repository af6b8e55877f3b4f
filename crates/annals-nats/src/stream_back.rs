//! Backward reads of one stream, newest first, without reading the whole stream.
//!
//! JetStream reads a subject forward only. A stream's messages rise in sequence and in
//! version together, so each step of a backward read picks a sequence to read forward from
//! by interpolating between two points it knows (the oldest sequence the versions it wants
//! can be at, and the oldest message it has read), aiming a little below the versions it
//! wants, and reads from there until the messages it has already read: a stream written
//! alone is hit exactly, an evenly interleaved one in a request or two, an uneven one in a
//! few more. A read of the last N events costs about N messages, whatever the stream's
//! length; an unbounded read (a load
//! going back to a snapshot or an origin) asks for 64 versions, then twice as many per step,
//! and stops when its caller does.

use annals::{ReadStream, RecordedEvent, Result, StreamName};
use futures::stream::BoxStream;

use crate::read::{CatchUp, Message, BATCH};
use crate::stream_read::LastEvent;
use crate::{backend, NatsStore};

/// The versions the first step of an unbounded read asks for.
const FIRST_STEP: u64 = 64;
/// The most versions one step asks for (its batch also holds the slack and the message
/// that shows it has reached what was read before).
const MAX_STEP: u64 = (BATCH as u64) / 2;
/// Guesses a step makes before reading forward from the lowest point it knows (which
/// always ends).
const GUESSES: u32 = 16;

/// Where a message sits among the stream's versions: an event's version, a marker's
/// `next` (the version of the event after it). Never falls from one message of the
/// subject to the next.
fn key(message: &Message) -> u64 {
    match message {
        Message::Event(_, place) => place.version,
        Message::Marker(marker) => marker.next,
    }
}

/// A backward read under way.
struct Back {
    store: NatsStore,
    stream: StreamName,
    subject: String,
    /// Versions below this are not shown: the stream's start (a marker's) or the limit's.
    low: u64,
    /// Versions from this one up have been handed out.
    high: u64,
    /// Every message of the subject from this sequence on has a key of at least `high`;
    /// `up_key` is the key of the first of them.
    up_seq: u64,
    up_key: u64,
    /// No message with a version from `low` up is below this sequence; the message before
    /// it has the key `bottom_key` (the stream's start, for the first sequence).
    bottom_seq: u64,
    bottom_key: u64,
    /// The versions the next step asks for.
    step: u64,
}

/// How a backward read begins.
enum Begun {
    /// Read whole (a retention policy decides expiry on the whole stream), or nothing more
    /// to read.
    Whole(Vec<RecordedEvent>),
    /// The newest event, when the last message holds it, and the steps that read on.
    Stepping(Vec<RecordedEvent>, Back),
}

/// Where a backward read is.
enum State {
    Start(NatsStore, StreamName, ReadStream),
    Stepping(Back),
    Done,
}

/// The events a backward read of `stream` shows, newest first, read a step at a time as
/// they are taken.
pub(crate) fn read_back(
    store: NatsStore,
    stream: StreamName,
    options: ReadStream,
) -> BoxStream<'static, Result<RecordedEvent>> {
    crate::stream_read::chunked(State::Start(store, stream, options), next)
}

/// The next events of a backward read (possibly none), newest first, and where it is then.
async fn next(state: State) -> Result<Option<(Vec<RecordedEvent>, State)>> {
    Ok(match state {
        State::Start(store, stream, options) => match begin(store, stream, options).await? {
            Begun::Whole(events) => Some((events, State::Done)),
            Begun::Stepping(newest, back) => Some((newest, State::Stepping(back))),
        },
        State::Stepping(mut back) => back
            .step()
            .await?
            .map(|events| (events, State::Stepping(back))),
        State::Done => None,
    })
}

/// The stream's last message (from the stream's leader): where the read starts, and its
/// newest event when the message holds it.
async fn begin(store: NatsStore, stream: StreamName, options: ReadStream) -> Result<Begun> {
    let policies = store.policies().await?;
    if crate::retention::policy_of(&policies, &stream).is_some() {
        return Ok(Begun::Whole(store.read_stream_vec(&stream, options).await?));
    }
    let Some((end, end_event)) = store.head_event(&stream).await? else {
        return Ok(Begun::Whole(Vec::new()));
    };
    if end.tombstone {
        return Err(annals::Error::StreamDeleted { stream });
    }
    let top = options.from.map_or(end.next, |v| v.get().min(end.next));
    let low = match options.limit {
        Some(limit) => top.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX)),
        None => 0,
    }
    .max(end.start);
    if low >= top {
        return Ok(Begun::Whole(Vec::new()));
    }
    let (newest, back) = stepping(
        store,
        stream,
        (end, end_event),
        low..top,
        options.limit.is_some(),
    );
    Ok(Begun::Stepping(newest, back))
}

/// The steps of a read of the versions in `range` back from the stream's last message
/// `end` (with its event, if it holds one), and the newest of them when that message
/// holds it. A `bounded` read asks for its whole range at once (a step at most), an
/// unbounded one for [`FIRST_STEP`] versions first.
fn stepping(
    store: NatsStore,
    stream: StreamName,
    (end, end_event): LastEvent,
    range: std::ops::Range<u64>,
    bounded: bool,
) -> (Vec<RecordedEvent>, Back) {
    let (low, top) = (range.start, range.end);
    let mut newest = Vec::new();
    let (high, up_key) = match end_event {
        Some((event, place)) if place.version + 1 == top => {
            newest.push(event);
            (place.version, place.version)
        }
        Some((_, place)) => (top, place.version),
        None => (top, end.next),
    };
    let subject = store.inner.subjects.stream(&stream);
    let step = match bounded {
        true => high.saturating_sub(low),
        false => FIRST_STEP,
    }
    .clamp(1, MAX_STEP);
    let back = Back {
        store,
        stream,
        subject,
        low,
        high,
        up_seq: end.sequence,
        up_key,
        bottom_seq: 1,
        bottom_key: end.start,
        step,
    };
    (newest, back)
}

/// What a forward read of a range found.
pub(crate) enum Ranged {
    /// The events in order, and where the stream starts.
    Read(Vec<RecordedEvent>, u64),
    /// Read it whole instead, up to this last message of the stream (read as the range
    /// began; not asked for again).
    Whole(Box<LastEvent>),
}

/// A forward read of `stream` from a version or with a limit (not under a retention
/// policy), read back from the stream's last message over the versions it shows, as a
/// backward read of the same versions is: about as many messages as it shows, however
/// long the stream. Answers [`Ranged::Whole`] when a whole read is as cheap (the read asks
/// for most of the stream) or must say where the read begins (the versions shown do not
/// begin at the first one asked for: messages removed from JetStream underneath leave
/// gaps).
pub(crate) async fn read_forward(
    store: &NatsStore,
    stream: &StreamName,
    options: ReadStream,
) -> Result<Ranged> {
    let Some((end, end_event)) = store.head_event(stream).await? else {
        return Ok(Ranged::Read(Vec::new(), 0));
    };
    if end.tombstone {
        return Err(annals::Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let low = options.from.map_or(0, annals::Version::get).max(end.start);
    let limit = options
        .limit
        .map_or(u64::MAX, |l| u64::try_from(l).unwrap_or(u64::MAX));
    let top = low.saturating_add(limit).min(end.next);
    if low >= top {
        return Ok(Ranged::Read(Vec::new(), end.start));
    }
    // Most of the stream: read whole, from its first message (no guesses).
    if (top - low).saturating_mul(2) > end.next.saturating_sub(end.start) {
        return Ok(Ranged::Whole(Box::new((end, end_event))));
    }
    let (mut events, mut back) = stepping(
        store.clone(),
        stream.clone(),
        (end, end_event.clone()),
        low..top,
        true,
    );
    while let Some(older) = back.step().await? {
        events.extend(older);
    }
    events.reverse();
    Ok(match events.first() {
        Some(first) if first.stream_version == low => Ranged::Read(events, end.start),
        _ => Ranged::Whole(Box::new((end, end_event))),
    })
}

impl Back {
    /// The sequence to read forward from for the messages from version `aim` on: between
    /// `lo` (a sequence and the key of the message before it) and the oldest message read,
    /// in proportion.
    fn guess(&self, (lo_seq, lo_key): (u64, u64), aim: u64) -> u64 {
        if self.up_seq <= lo_seq || aim <= lo_key {
            return lo_seq;
        }
        let keys = self.up_key.saturating_sub(lo_key).max(1);
        let seqs = self.up_seq - lo_seq;
        let offset = u128::from(aim - lo_key) * u128::from(seqs) / u128::from(keys);
        let offset = u64::try_from(offset).unwrap_or(u64::MAX);
        lo_seq.saturating_add(offset).min(self.up_seq - 1)
    }

    /// The next events, newest first (possibly none), or `None` at the end.
    async fn step(&mut self) -> Result<Option<Vec<RecordedEvent>>> {
        if self.high <= self.low {
            return Ok(None);
        }
        let target = self.high.saturating_sub(self.step).max(self.low);
        let slack = (self.high - target) / 4 + 2;
        let aim = target.saturating_sub(slack / 2);
        // The lowest point this step knows: no message of its versions is below it.
        let mut lo = (self.bottom_seq, self.bottom_key);
        let mut guesses = 1;
        // Read forward from `start`: every message of the subject from it to `cursor` has
        // been seen, and the events among them the read shows are in `kept`.
        let mut start = self.guess(lo, aim);
        let mut cursor = start;
        let mut kept: Vec<RecordedEvent> = Vec::new();
        // The key of the first and the last message read from `start`.
        let mut first: Option<u64> = None;
        let mut last: Option<u64> = None;
        let mut catch_up = CatchUp::within(self.store.inner.config.timeout);
        loop {
            let asked = match last {
                Some(last) => self.high.saturating_sub(last),
                None => self.high - aim + slack,
            };
            let asked = usize::try_from(asked.saturating_add(1))
                .unwrap_or(BATCH)
                .clamp(2, BATCH);
            let (batch, more) = self.store.fetch_more(&self.subject, cursor, asked).await?;
            // Reached the messages read before (at `up_seq`), or one at or above
            // `high` before them (its key).
            let mut reached: Option<Option<u64>> = None;
            for m in &batch {
                if m.sequence >= self.up_seq {
                    reached = Some(None);
                    break;
                }
                let message = self.store.decode_any(m)?;
                let k = key(&message);
                if k >= self.high {
                    reached = Some(Some(k));
                    break;
                }
                first.get_or_insert(k);
                last = Some(k);
                cursor = m.sequence + 1;
                match message {
                    // Reads show no version below a marker's start (the last message's is
                    // the highest already, as starts only rise).
                    Message::Marker(marker) => {
                        self.low = self.low.max(marker.start);
                        kept.retain(|e| e.stream_version >= self.low);
                    }
                    Message::Event(event, place) if place.version >= self.low => kept.push(event),
                    Message::Event(..) => {}
                }
            }
            if let Some(at) = reached {
                // Everything from `start` up to what was read before.
                return Ok(Some(self.reached(start, first.or(at), kept)));
            }
            if !more {
                // The replica that answered has not applied the messages up to the ones
                // read before (nothing else ends a batch short of them); it will.
                if !catch_up.wait().await {
                    return Err(backend(format!(
                        "the replicas did not catch up with the leader's sequence {} of {}",
                        self.up_seq, self.stream
                    )));
                }
                continue;
            }
            // A batch wholly below the versions this step wants: guess again above it
            // (reading forward from the lowest point known after a few guesses, which
            // always ends). One that reaches them is read on.
            if let Some(below) = last.filter(|last| last + 1 < target) {
                lo = (cursor, below);
                if below < self.low {
                    (self.bottom_seq, self.bottom_key) = lo;
                }
                guesses += 1;
                start = match guesses < GUESSES {
                    true => self.guess(lo, aim),
                    false => lo.0,
                };
                cursor = start;
                kept.clear();
                (first, last) = (None, None);
            }
        }
    }

    /// A step's read from `start` reached the messages read before: hands out its events
    /// newest first and moves the read below them. `first` is the key of the first message
    /// from `start` on, none when that is the one at `up_seq`.
    fn reached(
        &mut self,
        start: u64,
        first: Option<u64>,
        mut kept: Vec<RecordedEvent>,
    ) -> Vec<RecordedEvent> {
        if let Some(first) = first {
            if first < self.high {
                self.high = first;
                self.step = (self.step * 2).min(MAX_STEP);
            }
            self.up_key = first;
        }
        self.up_seq = start;
        if start <= self.bottom_seq {
            // Read from the oldest sequence the versions wanted can be at: the end.
            self.high = self.low;
        }
        kept.reverse();
        kept
    }
}

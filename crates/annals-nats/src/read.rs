//! Reads through JetStream's direct get API: batches of messages from a sequence on,
//! filtered by subject (a stream's own reads are in `stream_read`), and the feed.

use annals::{AllPage, Filter, Position, RecordedEvent, Result, StreamName, Timestamp};
use futures::StreamExt;
use serde_json::json;

use crate::envelope::{self, Marker, Place};
use crate::{backend, NatsStore};

/// How many messages one direct-get batch asks for.
pub(crate) const BATCH: usize = 1000;

/// The most bytes of messages one direct-get batch asks for (the server ends a batch once
/// it has sent this much). Left to itself the server sends up to its `max_pending` (64 MiB
/// by default), the very limit of what it queues for one connection: a client that reads
/// such a batch slowly (a busy machine) is then closed as a slow consumer, and the read
/// times out. A page of large events is cut here and read on instead.
const BATCH_BYTES: usize = 8 << 20;

/// A stored message.
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    /// Its `Nats-Msg-Id` header.
    pub(crate) msg_id: Option<String>,
    pub(crate) payload: bytes::Bytes,
}

/// How many categories' last written sequences a client remembers.
const CATEGORIES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => unreachable!(),
};

/// The last sequences this client's appends were acknowledged at: in the whole stream, and
/// by category (the most recent [`CATEGORIES`]). A replica answering a direct get may not
/// have applied yet what the leader acknowledged; a feed page is checked against these, so
/// a client always reads its own writes.
pub(crate) struct Written {
    all: u64,
    categories: lru::LruCache<String, u64>,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            all: 0,
            categories: lru::LruCache::new(CATEGORIES),
        }
    }
}

impl Written {
    /// Notes `stream`'s message at `sequence`.
    pub(crate) fn note(&mut self, stream: &StreamName, sequence: u64) {
        self.all = self.all.max(sequence);
        let category = stream.category();
        match self.categories.get_mut(category) {
            Some(last) => *last = (*last).max(sequence),
            None => {
                self.categories.put(category.to_owned(), sequence);
            }
        }
    }

    /// The last sequence written in `category`, or in the whole stream for `None` (0 for a
    /// category forgotten or never written).
    fn last(&mut self, category: Option<&str>) -> u64 {
        match category {
            None => self.all,
            Some(c) => self.categories.get(c).copied().unwrap_or(0),
        }
    }
}

/// The header of an event's message carrying its stream's start when above 0: each event
/// written after a marker carries the start it found on the message before it, so the last
/// message of a stream always says where the stream starts (what an append at a version
/// checks, conditional on that last message: `EventStore::append_at_shown`).
pub(crate) const START_HEADER: &str = "Annals-Start";

/// The item of `version` among a stream's events as reads show them (dense from the first
/// one's version).
pub(crate) fn at_version<T>(items: &[T], version: u64, of: impl Fn(&T) -> u64) -> Option<&T> {
    let first = of(items.first()?);
    items.get(usize::try_from(version.checked_sub(first)?).ok()?)
}

/// A leader-answered get (`STREAM.MSG.GET`): the message, or `None` when there is none.
pub(crate) fn leader_answer(
    found: std::result::Result<
        async_nats::jetstream::message::StreamMessage,
        async_nats::jetstream::stream::LastRawMessageError,
    >,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match found {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

impl Stored {
    /// A message as a leader-answered get gives it.
    pub(crate) fn of(m: async_nats::jetstream::message::StreamMessage) -> Self {
        Self {
            sequence: m.sequence,
            subject: m.subject.to_string(),
            msg_id: m.headers.get("Nats-Msg-Id").map(|v| v.to_string()),
            payload: m.payload,
        }
    }
}

/// Whether `e`, or an error under it, says no server answered the request: the stream (or
/// the JetStream API) has no leader for a moment, just created or electing one. Nothing
/// was done, so the request can be sent again.
pub(crate) fn no_responders(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::stream::{DirectGetError, DirectGetErrorKind};
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<async_nats::RequestError>() {
            if r.kind() == async_nats::RequestErrorKind::NoResponders {
                return true;
            }
        }
        if let Some(d) = c.downcast_ref::<DirectGetError>() {
            if matches!(d.kind(), DirectGetErrorKind::ErrorResponse(status, _)
                if status == async_nats::StatusCode::NO_RESPONDERS)
            {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Sends `request` again while no server answers it ([`no_responders`]), with
/// [`CatchUp`]'s pauses, until `timeout` would pass.
pub(crate) async fn answered<T, E, F>(
    timeout: std::time::Duration,
    mut request: impl FnMut() -> F,
) -> std::result::Result<T, E>
where
    E: std::error::Error + 'static,
    F: std::future::Future<Output = std::result::Result<T, E>>,
{
    let mut again = CatchUp::within(timeout);
    loop {
        match request().await {
            Err(e) if no_responders(&e) && again.wait().await => {}
            other => return other,
        }
    }
}

/// Runs `once` again while it says no server answered (`None`: nothing was done), with
/// [`CatchUp`]'s pauses, until `timeout` would pass; then a transient error saying so of
/// `what`.
pub(crate) async fn until_answered<T, F>(
    timeout: std::time::Duration,
    what: impl Fn() -> String,
    mut once: impl FnMut() -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<Option<T>>>,
{
    let mut again = CatchUp::within(timeout);
    loop {
        match once().await? {
            Some(answer) => return Ok(answer),
            None if again.wait().await => {}
            None => return Err(backend(format!("no server answered {}", what()))),
        }
    }
}

/// Asking again while the replica that answered has not caught up: waits 1 ms, doubling up
/// to 50 ms (`annals::Backoff`'s floors), until the store's timeout would pass.
pub(crate) struct CatchUp {
    deadline: tokio::time::Instant,
    attempts: u32,
}

impl CatchUp {
    const DELAYS: annals::Backoff = annals::Backoff {
        initial: std::time::Duration::from_millis(1),
        max: std::time::Duration::from_millis(50),
    };

    pub(crate) fn within(timeout: std::time::Duration) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + timeout,
            attempts: 0,
        }
    }

    /// Waits before the next attempt; `false` (at once) when it would end past the timeout.
    pub(crate) async fn wait(&mut self) -> bool {
        self.attempts += 1;
        let pause = Self::DELAYS.floor(self.attempts);
        if tokio::time::Instant::now() + pause > self.deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }
}

/// What a direct get's end-of-batch marker says.
#[derive(Default)]
pub(crate) struct End {
    /// `Nats-Num-Pending`: matching messages the answering replica has after the last one
    /// sent.
    pub(crate) pending: Option<u64>,
    /// `Nats-UpTo-Sequence` (multi-last gets): the answering replica's last sequence.
    pub(crate) upto: Option<u64>,
}

/// What a stored message holds.
pub(crate) enum Message {
    Event(RecordedEvent, Place),
    Marker(Marker),
}

impl NatsStore {
    /// Sends a direct-get request to the store's stream; answers the messages (until the
    /// end-of-batch marker for batch requests), none when nothing matches, and whether the
    /// answering replica has more messages matching the request after the last one sent
    /// (the marker's `Nats-Num-Pending`: a batch is also cut short by its byte limit).
    async fn direct_pending(
        &self,
        request: serde_json::Value,
        batch: bool,
    ) -> Result<(Vec<Stored>, bool)> {
        let stream = &self.inner.config.stream;
        let (messages, end) = self.direct_end(stream, request, batch).await?;
        let stored = messages
            .into_iter()
            .map(|message| {
                let headers = message.headers.as_ref();
                let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.to_string());
                let sequence = header("Nats-Sequence")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| backend("a direct get answer has no Nats-Sequence"))?;
                let subject = header("Nats-Subject")
                    .ok_or_else(|| backend("a direct get answer has no Nats-Subject"))?;
                Ok(Stored {
                    sequence,
                    subject,
                    msg_id: header("Nats-Msg-Id"),
                    payload: message.payload,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((stored, end.pending.is_some_and(|n| n > 0)))
    }

    /// Sends a direct-get request to `stream` (any stream with direct gets allowed, such as
    /// a key-value bucket's); answers the messages with their headers, none when nothing
    /// matches, and what a batch's end-of-batch marker says. A batch or multi-last request
    /// ends at that marker.
    pub(crate) async fn direct_end(
        &self,
        stream: &str,
        request: serde_json::Value,
        batch: bool,
    ) -> Result<(Vec<async_nats::Message>, End)> {
        // No replica answered (none serves direct gets for a moment): asked again.
        until_answered(
            self.inner.config.timeout,
            || format!("a direct get of {stream}"),
            || self.direct_end_once(stream, &request, batch),
        )
        .await
    }

    /// [`direct_end`](Self::direct_end) once: `None` when no server answered.
    async fn direct_end_once(
        &self,
        stream: &str,
        request: &serde_json::Value,
        batch: bool,
    ) -> Result<Option<(Vec<async_nats::Message>, End)>> {
        let inner = &self.inner;
        let inbox = inner.client.new_inbox();
        let mut replies = inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(backend)?;
        inner
            .client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        let mut end = End::default();
        loop {
            let message = tokio::time::timeout(inner.config.timeout, replies.next())
                .await
                .map_err(|_| backend("a direct get timed out"))?
                .ok_or_else(|| backend("the connection closed during a direct get"))?;
            if let Some(status) = message.status {
                match status.as_u16() {
                    // End of batch, or nothing found.
                    204 => {
                        let header = |name: &str| {
                            message
                                .headers
                                .as_ref()
                                .and_then(|h| h.get(name))
                                .and_then(|v| v.as_str().parse().ok())
                        };
                        end = End {
                            pending: header("Nats-Num-Pending"),
                            upto: header("Nats-UpTo-Sequence"),
                        };
                        break;
                    }
                    404 => break,
                    408 if !out.is_empty() => break,
                    503 if out.is_empty() => return Ok(None),
                    _ => {
                        return Err(backend(format!(
                            "direct get failed: {status} {}",
                            message.description.clone().unwrap_or_default()
                        )))
                    }
                }
            }
            out.push(message);
            if !batch {
                break;
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(Some((out, end)))
    }

    /// Up to `max` messages after sequence `after` on subjects matching `filter`, as
    /// [`NatsStore::fetch`], from a replica that has applied `written` (the last sequence
    /// this client wrote on those subjects): a short batch that ends below it may come from
    /// a replica still applying what the leader acknowledged. The leader then says whether
    /// anything up to `written` is missing; if so the batch is asked for again (from any
    /// replica) until one that has caught up answers, within the configured timeout.
    pub(crate) async fn fetch_fresh(
        &self,
        filter: &str,
        after: u64,
        max: usize,
        written: u64,
    ) -> Result<(Vec<Stored>, bool)> {
        let mut catch_up = CatchUp::within(self.inner.config.timeout);
        loop {
            let (batch, more) = self
                .fetch_more(filter, after.saturating_add(1), max)
                .await?;
            let covered = batch.last().map_or(after, |m| m.sequence);
            if more || covered >= written {
                return Ok((batch, more));
            }
            match self.leader_next(filter, covered + 1).await? {
                // Nothing between the batch's end and this client's last write: it is whole
                // (a purge can remove what was written).
                None => return Ok((batch, more)),
                Some(next) if next > written => return Ok((batch, more)),
                Some(_) => {}
            }
            if !catch_up.wait().await {
                return Err(backend(format!(
                    "the replicas answering reads have not applied this client's write at \
                     sequence {written} within {:?}",
                    self.inner.config.timeout
                )));
            }
        }
    }

    /// The message at `seq` as the stream's leader has it (a replica may not have applied
    /// one the server just named).
    pub(crate) async fn leader_message(&self, seq: u64) -> Result<Option<Stored>> {
        let found = answered(self.inner.config.timeout, || {
            self.inner.stream.get_raw_message(seq)
        })
        .await;
        Ok(leader_answer(found)?.map(Stored::of))
    }

    /// The sequence of the first message from `from` on whose subject matches `filter`, as
    /// the stream's leader has it.
    async fn leader_next(&self, filter: &str, from: u64) -> Result<Option<u64>> {
        let found = self
            .inner
            .stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(filter.to_owned())
            .send()
            .await;
        Ok(leader_answer(found)?.map(|m| m.sequence))
    }

    /// Up to `max` messages from `from` (a sequence) on, on subjects matching `filter`.
    pub(crate) async fn fetch(&self, filter: &str, from: u64, max: usize) -> Result<Vec<Stored>> {
        Ok(self.fetch_more(filter, from, max).await?.0)
    }

    /// [`NatsStore::fetch`], and whether the answering replica has more after the batch:
    /// it asked for `max` and got them, or [`BATCH_BYTES`] cut it short.
    pub(crate) async fn fetch_more(
        &self,
        filter: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<Stored>, bool)> {
        let max = max.clamp(1, BATCH);
        let (batch, pending) = self
            .direct_pending(
                json!({"batch": max, "seq": from.max(1), "next_by_subj": filter, "max_bytes": BATCH_BYTES}),
                true,
            )
            .await?;
        let more = pending || batch.len() >= max;
        Ok((batch, more))
    }

    /// The event or marker in a stored message.
    pub(crate) fn decode_any(&self, m: &Stored) -> Result<Message> {
        match envelope::decode_marker(&m.payload) {
            Some(marker) => Ok(Message::Marker(marker)),
            None => self.decode(m).map(|(e, p)| Message::Event(e, p)),
        }
    }

    /// The event in a stored message. One that is not (published to the store's subjects
    /// by something other than Annals) stops reads at it, not retried: the error names it
    /// and how to remove it, so no event past it is read as if it were not there.
    pub(crate) fn decode(&self, m: &Stored) -> Result<(RecordedEvent, Place)> {
        let foreign = |what: &str| {
            annals::Error::backend(
                "nats",
                format!(
                    "message {seq} of JetStream stream {stream:?} ({subject}) {what}: it was published to the store's subjects by something other than Annals, and reads cannot go past it: remove it (nats stream rmm {stream} {seq}), after keeping a copy if it matters",
                    seq = m.sequence,
                    stream = self.inner.config.stream,
                    subject = m.subject
                ),
            )
        };
        let stream = self
            .inner
            .subjects
            .parse(&m.subject)
            .ok_or_else(|| foreign("has a subject that names no event stream"))?;
        envelope::decode(&m.payload, m.msg_id.as_deref(), stream, m.sequence)
            .ok_or_else(|| foreign("is not an Annals event"))
    }

    pub(crate) async fn read_all_page(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<AllPage> {
        filter.validate()?;
        let subject = match filter.categories.as_slice() {
            [one] => self.inner.subjects.category(one),
            _ => self.inner.subjects.all(),
        };
        let after = u64::try_from(annals::backend::raw_position(from)).unwrap_or(u64::MAX);
        // One direct-get batch: at most BATCH messages, whatever the limit asked.
        let asked = limit.clamp(1, BATCH);
        let category = match filter.categories.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let written = self
            .inner
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last(category);
        let (batch, more) = self.fetch_fresh(&subject, after, asked, written).await?;
        let mut page = AllPage {
            events: Vec::new(),
            next: from,
            end: !more,
        };
        let policies = self.policies().await?;
        let now = Timestamp::now();
        // The version of each stream under a max count, read once per page.
        let mut versions: std::collections::HashMap<StreamName, u64> = Default::default();
        for m in &batch {
            page.next = annals::backend::position(u128::from(m.sequence));
            // Markers are not events.
            let Message::Event(event, _) = self.decode_any(m)? else {
                continue;
            };
            if !filter.matches(&event) {
                continue;
            }
            if let Some(policy) = crate::retention::policy_of(&policies, &event.stream) {
                let next = match (policy.max_count, versions.get(&event.stream)) {
                    (None, _) => 0,
                    (Some(_), Some(v)) => *v,
                    (Some(_), None) => {
                        let v = self.head(&event.stream).await?.map_or(0, |h| h.next);
                        versions.insert(event.stream.clone(), v);
                        v
                    }
                };
                if policy.expires(&event, next, now) {
                    continue;
                }
            }
            page.events.push(event);
        }
        Ok(page)
    }
}

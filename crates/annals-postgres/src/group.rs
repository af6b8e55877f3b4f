//! Group commit: concurrent appends of this process to different streams are written by
//! one statement (`Sql::append_set`; when an event id is already recorded, the
//! `append_group` function of migration 0009 through `append_group_shown` of 0016, each
//! append in its own subtransaction), so
//! one transaction and one commit serve them all, and a refusal fails only its caller.
//!
//! An append joins the queue, then either gets its answer from a group another caller is
//! writing or, when a group slot is free, takes what is queued (at most one append per
//! stream; later ones wait for the next group) and writes it as a group itself. The group is
//! a task of its own, so a caller that gives up never strands the others' answers. A group
//! as large as the one being written is sent behind it on the same connection without
//! waiting for its answer (`DEPTH`), which PostgreSQL runs as soon as that one commits.
//! Groups lock their streams in name order, so two processes' groups never wait for each
//! other in a cycle (a deadlock PostgreSQL still breaks is answered as a retry).

use std::collections::{HashMap, HashSet, VecDeque};

use annals::CONFLICT_EVENTS;
use tokio::sync::oneshot;

use super::*;

/// At most this many appends, events, and bytes of event bodies and metadata go into one
/// group (an append larger than a bound goes alone). The bytes bound keeps a group's
/// parameters far below PostgreSQL's 1 GB limit on one value or message: appends that each
/// fit must never fail together because their sum does not.
const MAX_APPENDS: usize = 256;
const MAX_EVENTS: usize = 4096;
const MAX_BYTES: usize = 64 << 20;
/// Group statements in flight at once on one group connection: the next group is sent
/// while the one before commits, and the connection runs them in order.
pub(crate) const DEPTH: usize = 2;
/// How often an append is tried again after losing the transaction-id race on its stream
/// row to another group (each try is a newer transaction, so it wins soon).
pub(crate) const RACES: u32 = 100;
/// The columns of `append_group`'s rows where an event's columns start, and its
/// `batch_start`.
const EVENT_AT: usize = 6;
const BATCH_START_AT: usize = 17;
/// The column of `append_set`'s status-6 rows with the highest of the positions they give
/// (the lowest is in column 4).
const LAST_POSITION_AT: usize = 7;

/// What the group said about one append.
pub(crate) enum Answer {
    /// Written.
    Written(AppendResult),
    /// Refused: the stream's version; with the events from the expected version on (and
    /// each one's `batch_start`) when they were asked for.
    Refused {
        actual: Version,
        tail: Vec<(RecordedEvent, u64)>,
    },
    /// An event id is already recorded: classify.
    Recorded,
    /// Lost the transaction-id race on the stream row (or a deadlock was broken): try
    /// again in a new group.
    Retry,
    /// The stream is a tombstone.
    Deleted,
}

pub(crate) struct Request {
    stream: StreamName,
    expected: ExpectedVersion,
    events: Arc<[EventData]>,
    /// The bytes of the events' bodies and metadata (summed once, not at every group formed
    /// while it waits).
    bytes: usize,
    tail: bool,
    /// Refused when the stream now starts past this version (an exact append's state holds
    /// events from it on).
    shown: Option<Version>,
    reply: oneshot::Sender<Result<Answer>>,
}

impl Request {
    fn new(
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &Arc<[EventData]>,
        (tail, shown): (bool, Option<Version>),
        reply: oneshot::Sender<Result<Answer>>,
    ) -> Self {
        Self {
            stream: stream.clone(),
            expected,
            events: Arc::clone(events),
            bytes: events.iter().map(EventData::size).sum(),
            tail,
            shown,
            reply,
        }
    }
}

pub(crate) type Grouper = crate::batch::Batches<Request>;

/// The next group: queued appends in order, the first per stream, within the bounds. An
/// append whose caller has given up (a timeout, a dropped request) before it was sent is
/// let go: nothing is written for it.
fn take(queue: &mut VecDeque<Request>) -> Vec<Request> {
    let mut streams = HashSet::new();
    let mut group = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    let mut later = VecDeque::new();
    while let Some(r) = queue.pop_front() {
        if r.reply.is_closed() {
            continue;
        }
        let size = r.bytes;
        let fits = group.len() < MAX_APPENDS
            && (group.is_empty()
                || (events + r.events.len() <= MAX_EVENTS && bytes + size <= MAX_BYTES));
        if fits && streams.insert(r.stream.clone()) {
            events += r.events.len();
            bytes += size;
            group.push(r);
        } else {
            later.push_back(r);
        }
    }
    *queue = later;
    group
}

impl PgStore {
    /// An append through the group commit, with the store's retry semantics.
    pub(crate) async fn append_grouped(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        // Shared with each group it joins, not copied.
        let events: Arc<[EventData]> = events.into();
        // Another pass when the first met ids recorded by an append that then rolled back
        // before we could classify it, or lost the transaction-id race on the stream row.
        // A lost race is answered at once by a newer transaction; ids that vanish are rare.
        let (mut races, mut vanished) = (0, 0);
        while races < RACES && vanished < 5 {
            match self.grouped(stream, expected, &events, false, None).await? {
                Answer::Written(r) => {
                    self.wake();
                    return Ok(r);
                }
                Answer::Retry => races += 1,
                Answer::Deleted => {
                    return Err(Error::StreamDeleted {
                        stream: stream.clone(),
                    })
                }
                Answer::Refused { .. } | Answer::Recorded => {
                    let client = self.client().await?;
                    match self.classify(&client, stream, expected, &events).await? {
                        Verdict::AlreadyWritten(r) => return Ok(r),
                        Verdict::Write => vanished += 1,
                    }
                }
            }
        }
        Err(backend(format!(
            "{stream}: event ids kept appearing and vanishing; retry"
        )))
    }

    /// Appends through the group commit: the answer for this append alone.
    pub(crate) async fn grouped(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &Arc<[EventData]>,
        tail: bool,
        shown: Option<Version>,
    ) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        let request = Request::new(stream, expected, events, (tail, shown), reply);
        let store = self.clone();
        let run = move |group| {
            let store = store.clone();
            async move { store.write_group(group).await }
        };
        self.inner
            .group
            .join(request, answer, take, run, "group writing this append")
            .await
    }

    /// Writes `group` in one statement and answers each append.
    async fn write_group(&self, mut group: Vec<Request>) {
        metrics::histogram!("annals_pg_group_commit_appends", "schema" => self.inner.config.schema.clone())
            .record(group.len() as f64);
        group.sort_by(|a, b| a.stream.cmp(&b.stream));
        match self.group_statement(&group).await {
            Ok(mut answers) => {
                for (r, a) in group.into_iter().zip(answers.drain(..)) {
                    let _ = r.reply.send(Ok(a));
                }
            }
            // Every caller gets the error as it is (a lost connection stays transient, so
            // a reactor retries it instead of counting it toward parking the stream).
            Err(e) => {
                for r in group {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn group_statement(&self, group: &[Request]) -> Result<Vec<Answer>> {
        let names: Vec<&str> = group.iter().map(|r| r.stream.as_str()).collect();
        let categories: Vec<&str> = group.iter().map(|r| r.stream.category()).collect();
        let (kinds, expected): (Vec<i16>, Vec<i64>) =
            group.iter().map(|r| kind(r.expected)).unzip();
        let tails: Vec<bool> = group.iter().map(|r| r.tail).collect();
        let counts: Vec<i32> = group.iter().map(|r| r.events.len() as i32).collect();
        // Each append's first event, counted from 1 across the group.
        let los: Vec<i32> = counts
            .iter()
            .scan(1, |next, n| {
                let lo = *next;
                *next += n;
                Some(lo)
            })
            .collect();
        let c = Columns::of(group.iter().flat_map(|r| r.events.iter()));
        let shown: Vec<i64> = group
            .iter()
            .map(|r| r.shown.map_or(i64::MAX, |v| bigint(v.get())))
            .collect();
        let limit = CONFLICT_EVENTS as i64;
        let mut params: Vec<crate::Param<'_>> =
            vec![&names, &categories, &kinds, &expected, &tails, &counts];
        params.extend(c.params());
        params.push(&limit);
        params.push(&shown);
        let mut set_params = params.clone();
        set_params.insert(6, &los);
        // Only an append that may create its stream (any version, no stream, or exactly
        // version 0: `append_set`'s condition) needs the statement that creates streams.
        let creates = kinds
            .iter()
            .zip(&expected)
            .any(|(k, e)| *k == 0 || *k == 1 || (*k == 3 && *e == 0));
        // Events read by index cost a walk of their arrays each; past a few events per
        // append, one `unnest` joined to the appends is cheaper (measured in BENCHMARKS.md).
        let unnested = c.ids.len() > 2 * group.len().max(16);
        let set = &self.inner.sql.append_set[usize::from(creates)][usize::from(unnested)];
        let client = self.group_client().await?;
        // The set-wise statement first; when an event id is already recorded, the function
        // that classifies each append on its own.
        let written = async {
            let set = client.prepare_cached(set).await?;
            match client.query(&set, &set_params).await {
                Err(e) if is_unique_violation(&e) => {
                    let statement = client.prepare_cached(&self.inner.sql.append_group).await?;
                    client.query(&statement, &params).await
                }
                other => other,
            }
        };
        let rows = match written.await {
            Ok(rows) => rows,
            // The whole group lost a race PostgreSQL broke (it locks in name order, so a
            // deadlock is not expected): every append is tried again in a new group.
            Err(e)
                if e.code().is_some_and(|c| {
                    *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                        || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                }) =>
            {
                return Ok(group.iter().map(|_| Answer::Retry).collect());
            }
            Err(e) => {
                if crate::error::ends_connection(&e) {
                    self.inner.group_conns.discard(client).await;
                }
                return Err(backend(e));
            }
        };
        drop(client);
        answers_of(group.len(), &rows)
    }
}

/// A written append of `append_set`: its place in the group, its stream's version, its
/// transaction, and the lowest and highest positions of its events.
struct Written {
    slot: usize,
    version: Version,
    tx: u64,
    span: Option<(i64, i64)>,
}

/// Each append's answer from the group's rows, in whatever order they came: `append_set`'s
/// (status 7, with status 6 rows giving its events' positions) or `append_group`'s (status 0
/// with the positions).
fn answers_of(size: usize, rows: &[tokio_postgres::Row]) -> Result<Vec<Answer>> {
    let mut answers: Vec<Option<Answer>> = (0..size).map(|_| None).collect();
    // Written appends of `append_set`, by their stream's id.
    let mut written: HashMap<i64, Written> = HashMap::new();
    let mut positions = Vec::new();
    let mut tails = Vec::new();
    for row in rows {
        let status: i16 = row.try_get(1).map_err(backend)?;
        if status == 6 {
            let stream_id: i64 = row.try_get(3).map_err(backend)?;
            let lo: i64 = row.try_get(4).map_err(backend)?;
            let hi: i64 = row.try_get(LAST_POSITION_AT).map_err(backend)?;
            positions.push((stream_id, lo, hi));
            continue;
        }
        let idx = row.try_get::<_, i32>(0).map_err(backend)? as usize;
        let slot_of = |idx: usize| {
            idx.checked_sub(1)
                .filter(|i| *i < size)
                .ok_or_else(|| backend(format!("append_group answered for append {idx}")))
        };
        let slot = slot_of(idx)?;
        let version = || -> Result<Version> {
            Ok(Version(row.try_get::<_, i64>(2).map_err(backend)? as u64))
        };
        let answer = match status {
            0 => {
                let tx = tx_of(row.try_get::<_, &str>(5).map_err(backend)?)?;
                Answer::Written(AppendResult {
                    version: version()?,
                    first_position: pack(tx, row.try_get(3).map_err(backend)?),
                    last_position: pack(tx, row.try_get(4).map_err(backend)?),
                })
            }
            7 => {
                let tx = tx_of(row.try_get::<_, &str>(5).map_err(backend)?)?;
                let stream_id: i64 = row.try_get(3).map_err(backend)?;
                let version = version()?;
                written.insert(
                    stream_id,
                    Written {
                        slot,
                        version,
                        tx,
                        span: None,
                    },
                );
                continue;
            }
            1 => Answer::Refused {
                actual: version()?,
                tail: Vec::new(),
            },
            2 => {
                let event = event(row, EVENT_AT)?;
                let batch_start = row.try_get::<_, i64>(BATCH_START_AT).map_err(backend)? as u64;
                tails.push((slot, event, batch_start));
                continue;
            }
            3 => Answer::Recorded,
            4 => Answer::Retry,
            5 => Answer::Deleted,
            other => return Err(backend(format!("append_group status {other}"))),
        };
        answers[slot] = Some(answer);
    }
    for (stream_id, lo, hi) in positions {
        let w = written
            .get_mut(&stream_id)
            .ok_or_else(|| backend("append_group sent events of no written append"))?;
        w.span = Some(match w.span {
            None => (lo, hi),
            Some((l, h)) => (l.min(lo), h.max(hi)),
        });
    }
    for w in written.into_values() {
        let (first, last) = w
            .span
            .ok_or_else(|| backend("append_group wrote an append without events"))?;
        answers[w.slot] = Some(Answer::Written(AppendResult {
            version: w.version,
            first_position: pack(w.tx, first),
            last_position: pack(w.tx, last),
        }));
    }
    for (slot, event, batch_start) in tails {
        match &mut answers[slot] {
            Some(Answer::Refused { tail, .. }) => tail.push((event, batch_start)),
            _ => return Err(backend("append_group sent events for no refusal")),
        }
    }
    for a in answers.iter_mut() {
        if let Some(Answer::Refused { tail, .. }) = a {
            tail.sort_by_key(|(e, _)| e.stream_version);
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.ok_or_else(|| backend(format!("append_group left append {} unanswered", i + 1)))
        })
        .collect()
}

/// Describes this store's metrics (labelled by schema) to the installed `metrics`
/// recorder: their help text and units. Call it once after installing the recorder.
pub fn describe_metrics() {
    use metrics::{describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "annals_pg_group_commit_appends",
        Unit::Count,
        "Appends committed together in one group commit (one transaction, one statement)"
    );
    describe_histogram!(
        "annals_pg_grouped_reads",
        Unit::Count,
        "Stream reads (deciders' catch-ups, tails) answered together by one grouped read"
    );
    describe_gauge!(
        "annals_pg_held_back_events",
        Unit::Count,
        "Events committed but not yet shown to subscribers, held back behind an open transaction (as of the last PgStore::horizon_lag)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    type Waiting = oneshot::Receiver<Result<Answer>>;

    /// A request whose caller waits (`waiting` keeps its end of the answer).
    fn request(stream: &str, sizes: &[usize], waiting: &mut Vec<Waiting>) -> Request {
        let events: Arc<[EventData]> = sizes
            .iter()
            .map(|n| EventData::new("Sized", vec![0; *n]))
            .collect();
        let (reply, answer) = oneshot::channel();
        waiting.push(answer);
        Request::new(
            &StreamName::new(stream).unwrap(),
            ExpectedVersion::Any,
            &events,
            (false, None),
            reply,
        )
    }

    #[test]
    fn appends_whose_callers_gave_up_are_let_go() {
        let mut waiting = Vec::new();
        let mut queue: VecDeque<Request> = [
            request("A-1", &[10], &mut waiting),
            request("B-1", &[10], &mut waiting),
            request("B-1", &[10], &mut waiting),
            request("C-1", &[10], &mut waiting),
        ]
        .into();
        // The callers of the first B-1 and of C-1 give up.
        drop(waiting.remove(3));
        drop(waiting.remove(1));
        // The second B-1 takes the place of the first.
        assert_eq!(streams(&take(&mut queue)), ["A-1", "B-1"]);
        assert!(queue.is_empty());
    }

    fn streams(group: &[Request]) -> Vec<&str> {
        group.iter().map(|r| r.stream.as_str()).collect()
    }

    #[test]
    fn a_group_keeps_within_its_bytes_and_takes_one_append_per_stream() {
        const MIB: usize = 1 << 20;
        let mut waiting = Vec::new();
        let mut queue: VecDeque<Request> = [
            request("A-1", &[MIB; 40], &mut waiting),
            request("B-1", &[MIB; 30], &mut waiting),
            request("C-1", &[10], &mut waiting),
            request("C-1", &[10], &mut waiting),
            request("E-1", &[MIB; 70], &mut waiting),
        ]
        .into();
        let first = take(&mut queue);
        assert_eq!(streams(&first), ["A-1", "C-1"]);
        let second = take(&mut queue);
        assert_eq!(streams(&second), ["B-1", "C-1"]);
        // Larger than the bound alone: it still goes, alone.
        let third = take(&mut queue);
        assert_eq!(streams(&third), ["E-1"]);
        assert!(queue.is_empty());
        let bytes = |g: &[Request]| -> usize {
            g.iter()
                .flat_map(|r| r.events.iter())
                .map(EventData::size)
                .sum()
        };
        assert!(bytes(&first) <= MAX_BYTES && bytes(&second) <= MAX_BYTES);
    }
}

//! Hot streams: concurrent decisions on one stream in one process are written together.
//!
//! A decision that finds its stream idle runs on its own (the usual one round trip). One
//! that arrives while another runs joins the stream's queue; when the running one ends, a
//! coordinator task takes everything queued (up to [`BATCH_DECISIONS`]) and runs it as one
//! batch: it offers each member, in arrival order, the state its predecessor produced;
//! each member decides in its own task (its closure never leaves it) and answers with its
//! encoded events and the state after them; the coordinator appends all the events in one
//! append, and tells every member how it ended. On a conflict every member decides again on
//! the resynced state; a member's own errors (encoding, references) are its alone. The
//! coordinator takes the next batch only after this one is answered, so a decision waits
//! for at most the decisions queued before it. A panic in code the coordinator runs
//! (`evolve` folding a resync, a snapshot's codec, the store) fails that batch's decisions,
//! with an error saying so, and the coordinator goes on with the queue; a coordinator
//! dropped with its runtime leaves the stream idle.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// How many queued decisions one batch takes at most.
pub(super) const BATCH_DECISIONS: usize = 64;

/// A batch stops taking members once it holds this many events, or this many bytes of
/// event bodies and metadata (the rest wait for the next batch), which keeps it within
/// every store's batch limits unless one decision alone is larger.
const BATCH_EVENTS: usize = 500;
const BATCH_BYTES: usize = 32 << 20;

/// How many turns of the scheduler [`gather`] gives ready tasks at most.
const GATHER_TURNS: usize = 4;

/// Lets tasks that are ready to run (callers a batch before answered, woken together) join
/// a queue before a batch is taken from it: taken at once, the queue would hold only those
/// that were already waiting, and the callers just answered would make a batch of their
/// own after it, so batches alternate between large and small. Each turn lets every other
/// ready task run once; it stops as soon as a turn brings nobody new (a lone caller pays
/// one turn), and waits on no clock. `queued` is the queue's length.
pub async fn gather(queued: impl Fn() -> usize) {
    for _ in 0..GATHER_TURNS {
        let before = queued();
        tokio::task::yield_now().await;
        if queued() == before {
            break;
        }
    }
}

/// A queued decision's end of the conversation with the coordinator.
type Member<S> = mpsc::UnboundedSender<ToMember<S>>;

/// The queues of a category's streams that have a decision running.
pub(super) type Lanes<S> = Mutex<HashMap<StreamName, VecDeque<Member<S>>>>;

/// What the coordinator tells a queued decision.
pub(super) enum ToMember<S> {
    /// Decide on this state (at this version, counting the events of the members before).
    Offer {
        loaded: Loaded<S>,
        answer: oneshot::Sender<Answer<S>>,
    },
    /// The batch holding the member's last answer was written (or wrote nothing), or failed.
    Done(Result<()>),
}

/// A member's answer to an offer.
pub(super) enum Answer<S> {
    /// Append these events; the state after them.
    Write {
        events: Vec<EventData>,
        state: Arc<S>,
    },
    /// The decision wrote nothing (or the domain refused): it stands if the state it saw
    /// does.
    Nothing,
    /// The decision failed on its own (encoding, references): it has left the batch.
    Left,
}

/// Whether a decision runs now or waits in the queue.
pub(super) enum Turn<S> {
    /// The stream was idle: run, then hand the queue to a coordinator.
    Alone,
    /// Another decision runs: wait for offers.
    Queued(mpsc::UnboundedReceiver<ToMember<S>>),
}

impl<D: Domain> Decider<D> {
    /// Takes the stream's turn, or joins its queue.
    pub(super) fn turn(&self) -> Turn<D::State> {
        let mut lanes = self
            .category
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match lanes.get_mut(&self.stream) {
            None => {
                lanes.insert(self.stream.clone(), VecDeque::new());
                Turn::Alone
            }
            Some(queue) => {
                let (tx, rx) = mpsc::unbounded_channel();
                queue.push_back(tx);
                Turn::Queued(rx)
            }
        }
    }

    /// Ends a turn taken alone: the stream goes idle, or a coordinator takes its queue.
    pub(super) fn end_turn(&self) {
        if !self.idle_unless_queued() {
            return;
        }
        let lane = Lane {
            coordinator: self.clone_with_load(LoadOption::RequireLoad),
            idle: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(lane.coordinate());
            }
            // No runtime to run the queue on (it is shutting down): the queued decisions
            // see their coordinator gone.
            Err(_) => drop(lane),
        }
    }

    /// Removes the stream's lane if nothing is queued; true if something is.
    fn idle_unless_queued(&self) -> bool {
        let mut lanes = self
            .category
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match lanes.get(&self.stream) {
            Some(queue) if !queue.is_empty() => true,
            _ => {
                lanes.remove(&self.stream);
                false
            }
        }
    }

    fn take_queue(&self, at_most: usize) -> Vec<Member<D::State>> {
        let mut lanes = self
            .category
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(queue) = lanes.get_mut(&self.stream) else {
            return Vec::new();
        };
        let n = queue.len().min(at_most);
        queue.drain(..n).collect()
    }

    /// Runs batches until the queue is empty, then sets `idle` (the lane is gone).
    async fn coordinate(&self, idle: &mut bool) {
        let mut carried: Vec<Member<D::State>> = Vec::new();
        loop {
            gather(|| self.queued()).await;
            let room = BATCH_DECISIONS.saturating_sub(carried.len());
            let mut members = std::mem::take(&mut carried);
            members.extend(self.take_queue(room));
            if members.is_empty() {
                if self.idle_unless_queued() {
                    continue;
                }
                *idle = true;
                return;
            }
            // Code the batch runs here besides the store's (`evolve` folding a resync,
            // the codecs of snapshots) is the user's: should it panic, the batch's
            // decisions fail with an error saying so, and the queue keeps a coordinator.
            let taken = members.clone();
            carried = match AssertUnwindSafe(self.run_batch(members))
                .catch_unwind()
                .await
            {
                Ok(carried) => carried,
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    tell(
                        &taken,
                        &Err(Error::backend(
                            self.category.store.backend(),
                            format!(
                                "a batch of the stream's queued decisions panicked ({message}): \
                             its decisions fail, and the stream takes the next ones"
                            ),
                        )),
                    );
                    Vec::new()
                }
            };
        }
    }

    /// Runs one batch to its end; returns the members it had no room for.
    async fn run_batch(&self, mut members: Vec<Member<D::State>>) -> Vec<Member<D::State>> {
        let cat = &self.category;
        let started = match self.cached(None) {
            Some(cached) => Ok((cached, true)),
            None => self.reload().await.map(|l| (l, false)),
        };
        let (mut loaded, mut unconfirmed) = match started {
            Ok(started) => started,
            Err(e) => {
                tell(&members, &Err(e));
                return Vec::new();
            }
        };
        let mut attempts = Attempts::new();
        loop {
            let (batch, carried) = offer(&loaded, members).await;
            members = batch.members;
            if batch.events.is_empty() {
                if std::mem::take(&mut unconfirmed) {
                    let at = loaded.version;
                    match self.catch_up_showing(loaded.clone(), at).await {
                        Ok((fresh, hidden)) if hidden || fresh.version != at => {
                            loaded = fresh;
                            members.extend(carried);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tell(&members, &Err(e));
                            return carried;
                        }
                    }
                }
                tell(&members, &Ok(()));
                return carried;
            }
            let outcome = self.write_batch(&loaded, batch.events, batch.state).await;
            match outcome {
                Ok(Written::Done) => {
                    metrics::histogram!("annals_decider_batch_decisions", "category" => cat.name.to_string())
                        .record(members.len() as f64);
                    tell(&members, &Ok(()));
                    return carried;
                }
                Ok(Written::Conflict { actual, events }) => {
                    let stale_cache = std::mem::take(&mut unconfirmed);
                    let resynced = self.resync(loaded, actual, events).await.and_then(|r| {
                        let excused = stale_cache || r.hidden;
                        attempts.refused(cat, &self.stream, excused).map(|()| r)
                    });
                    match resynced {
                        Ok(fresh) => loaded = fresh.loaded,
                        Err(e) => {
                            tell(&members, &Err(e));
                            return carried;
                        }
                    }
                    // Everyone decides again; those without room wait for the next batch.
                    members.extend(carried);
                }
                Err(e) if e.is_invalid_input() && members.len() > 1 => {
                    // The store refused some member's events (too large, a bad type...),
                    // or all of them together (more than it takes in one append): that
                    // must fail that member only, or none. Each decides again, alone, in
                    // order.
                    for member in members {
                        let more = Box::pin(self.run_batch(vec![member])).await;
                        debug_assert!(more.is_empty(), "one member always has room");
                    }
                    return carried;
                }
                Err(e) => {
                    tell(&members, &Err(e));
                    return carried;
                }
            }
        }
    }

    /// Appends a batch's events, decided on `loaded`, adding the snapshots the access
    /// strategy asks for, and caches `state` (the state after them) when written.
    async fn write_batch(
        &self,
        loaded: &Loaded<D::State>,
        mut events: Vec<EventData>,
        state: Arc<D::State>,
    ) -> Result<Written> {
        let cat = &self.category;
        let after = loaded.version.get() + events.len() as u64;
        let snapshot_error = |e| self.snapshot_error(after, e);
        if let Some(snap) = &cat.access.snapshots {
            if loaded.version.get() / snap.every != after / snap.every {
                let body = (snap.codec.encode)(&state).map_err(snapshot_error)?;
                events.push(EventData::new(SNAPSHOT_EVENT_TYPE, body));
            }
        }
        let head = match &cat.access.head {
            Some(head) => Some((head.encode)(&state).map_err(snapshot_error)?),
            None => None,
        };
        let answer = self.append_at(loaded, events, head).await?;
        Ok(match answer {
            AppendAt::Written(appended) => {
                let written = Loaded {
                    version: appended.version,
                    shown_from: loaded.shown_from,
                    state,
                };
                if let Some(cache) = &cat.cache {
                    cache.put(&self.stream, &written);
                }
                Written::Done
            }
            AppendAt::Conflict { actual, events } => Written::Conflict { actual, events },
        })
    }

    /// A queued decision: answers offers with `decide` until the coordinator says how its
    /// batch ended.
    pub(super) async fn follow<R, X, F>(
        &self,
        mut queue: mpsc::UnboundedReceiver<ToMember<D::State>>,
        mut decide: impl FnMut(Arc<D::State>) -> F,
        keep: bool,
    ) -> std::result::Result<(R, Option<Arc<D::State>>), DecideError<X>>
    where
        F: Future<Output = std::result::Result<(R, Vec<D::Event>), X>>,
    {
        let mut decided: Option<std::result::Result<R, X>> = None;
        // The state after this member's decision in the last batch offered (`keep`).
        let mut after = None;
        loop {
            let Some(message) = queue.recv().await else {
                return Err(Error::backend(
                    self.category.store.backend(),
                    "the coordinator of the stream's queued decisions stopped (runtime shutdown)",
                )
                .into());
            };
            let (loaded, answer) = match message {
                ToMember::Done(Ok(())) => {
                    return match decided {
                        Some(Ok(result)) => Ok((result, after)),
                        Some(Err(refused)) => Err(DecideError::Domain(refused)),
                        None => Err(Error::backend(
                            self.category.store.backend(),
                            "a queued decision was answered before it decided",
                        )
                        .into()),
                    };
                }
                ToMember::Done(Err(e)) => return Err(e.into()),
                ToMember::Offer { loaded, answer } => (loaded, answer),
            };
            let reply = match decide(Arc::clone(&loaded.state)).await {
                Err(refused) => {
                    decided = Some(Err(refused));
                    Answer::Nothing
                }
                Ok((result, events)) if events.is_empty() => {
                    decided = Some(Ok(result));
                    after = keep.then_some(loaded.state);
                    Answer::Nothing
                }
                Ok((result, events)) => match self.encode_member(&loaded, &events).await {
                    Ok(encoded) => {
                        decided = Some(Ok(result));
                        let state = Arc::new(D::fold((*loaded.state).clone(), &events));
                        after = keep.then(|| Arc::clone(&state));
                        Answer::Write {
                            events: encoded,
                            state,
                        }
                    }
                    Err(e) => {
                        let _ = answer.send(Answer::Left);
                        return Err(e.into());
                    }
                },
            };
            if answer.send(reply).is_err() {
                return Err(Error::backend(
                    self.category.store.backend(),
                    "the coordinator of the stream's queued decisions stopped (runtime shutdown)",
                )
                .into());
            }
        }
    }

    /// Checks references and encodes a member's events with its own context.
    async fn encode_member(
        &self,
        loaded: &Loaded<D::State>,
        events: &[D::Event],
    ) -> Result<Vec<EventData>> {
        let cat = &self.category;
        cat.check_references(&self.stream, events, &[]).await?;
        let context = self.context.with_current_trace();
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                cat.codec.encode(e, &context).map_err(|err| {
                    Error::Codec(CodecError {
                        stream: self.stream.to_string(),
                        stream_version: loaded.version.get() + i as u64,
                        ..err
                    })
                })
            })
            .collect()
    }
}

/// What one round of offers gathered.
struct Gathered<S> {
    /// The members still in the batch (those that answered), in order.
    members: Vec<Member<S>>,
    events: Vec<EventData>,
    /// The state after all the events.
    state: Arc<S>,
}

/// Offers each member, in order, the state after the members before it; returns what they
/// answered, and the members there was no room for.
async fn offer<S: Clone>(
    loaded: &Loaded<S>,
    members: Vec<Member<S>>,
) -> (Gathered<S>, Vec<Member<S>>) {
    let mut gathered = Gathered {
        members: Vec::with_capacity(members.len()),
        events: Vec::new(),
        state: Arc::clone(&loaded.state),
    };
    let mut carried = Vec::new();
    let mut bytes = 0;
    for member in members {
        if gathered.events.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES {
            carried.push(member);
            continue;
        }
        let (answer, answered) = oneshot::channel();
        let offered = Loaded {
            version: Version(loaded.version.get() + gathered.events.len() as u64),
            shown_from: loaded.shown_from,
            state: Arc::clone(&gathered.state),
        };
        let offer = ToMember::Offer {
            loaded: offered,
            answer,
        };
        if member.send(offer).is_err() {
            continue; // the caller went away
        }
        match answered.await {
            Ok(Answer::Write { events, state }) => {
                bytes += events.iter().map(EventData::size).sum::<usize>();
                gathered.events.extend(events);
                gathered.state = state;
                gathered.members.push(member);
            }
            Ok(Answer::Nothing) => gathered.members.push(member),
            Ok(Answer::Left) | Err(_) => {}
        }
    }
    (gathered, carried)
}

/// A coordinator, holding its stream's lane until the lane goes idle. Dropped before that
/// (its task dropped with its runtime, run or not), it removes the lane: the decisions
/// still queued see their coordinator gone, and later ones find the stream idle instead of
/// queueing for good.
struct Lane<D: Domain> {
    coordinator: Decider<D>,
    idle: bool,
}

impl<D: Domain> Lane<D> {
    async fn coordinate(mut self) {
        self.coordinator.coordinate(&mut self.idle).await;
    }
}

impl<D: Domain> Drop for Lane<D> {
    fn drop(&mut self) {
        if !self.idle {
            let d = &self.coordinator;
            let mut lanes = d.category.lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes.remove(&d.stream);
        }
    }
}

/// What a panic said, when it said it with a string (the payload `catch_unwind` gives).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match panic.downcast_ref::<&'static str>() {
        Some(message) => message,
        None => panic
            .downcast_ref::<String>()
            .map_or("no message", String::as_str),
    }
}

/// Tells every member how its batch ended.
fn tell<S>(members: &[Member<S>], outcome: &Result<()>) {
    for member in members {
        let _ = member.send(ToMember::Done(outcome.clone()));
    }
}

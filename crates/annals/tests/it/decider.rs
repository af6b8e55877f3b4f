//! The decider runtime: resync, attempts, caching, load options, codec errors.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::{AllPage, AppendResult, Capabilities, EventStoreExt, Filter, ReadStream};
use annals::{
    Cache, Category, Domain, Error, EventData, EventStore, ExpectedVersion, JsonCodec, LoadOption,
    MemoryStore, Position, RecordedEvent, StreamName, Version,
};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Added { n: u32 },
}

struct Tally;

impl Domain for Tally {
    type Event = Event;
    type State = Vec<u32>;
    fn initial() -> Vec<u32> {
        Vec::new()
    }
    fn evolve(mut state: Vec<u32>, event: &Event) -> Vec<u32> {
        match event {
            Event::Added { n } => state.push(*n),
        }
        state
    }
}

/// The memory store, counting reads, and optionally writing an interfering event just
/// before each of the next `interfere` appends (a concurrent writer winning the race).
#[derive(Default)]
struct Probe {
    inner: MemoryStore,
    stream_reads: AtomicUsize,
    events_read: AtomicUsize,
    interfere: AtomicU32,
    appends: AtomicUsize,
    /// The number of the append (counting from 1) to interfere with, besides `interfere`.
    interfere_at: AtomicUsize,
    /// Appends wait while a test holds this for writing.
    gate: tokio::sync::RwLock<()>,
    /// The number of the append (counting from 1) that also waits while a test holds
    /// `hold` for writing.
    hold_at: AtomicUsize,
    hold: tokio::sync::RwLock<()>,
    /// The most bytes of event bodies and metadata one append carried.
    largest: AtomicUsize,
    /// Appends of more events than this are refused as too large, as a store with a batch
    /// limit refuses them (0: no limit).
    max_batch: AtomicUsize,
}

#[async_trait]
impl EventStore for Probe {
    fn backend(&self) -> &'static str {
        "probe"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> annals::Result<AppendResult> {
        let number = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        let bytes = events.iter().map(EventData::size).sum();
        self.largest.fetch_max(bytes, Ordering::SeqCst);
        let _open = self.gate.read().await;
        let max = self.max_batch.load(Ordering::SeqCst);
        if max > 0 && events.len() > max {
            return Err(Error::BatchTooLarge {
                stream: stream.clone(),
                events: events.len(),
                max,
            });
        }
        let _held = match self.hold_at.load(Ordering::SeqCst) == number {
            true => Some(self.hold.read().await),
            false => None,
        };
        if self
            .interfere
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            || self.interfere_at.load(Ordering::SeqCst) == number
        {
            let other = EventData::json("Added", &serde_json::json!({ "n": 1000 })).unwrap();
            self.inner
                .append(stream, ExpectedVersion::Any, vec![other])
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn stream_version(&self, stream: &StreamName) -> annals::Result<Version> {
        self.inner.stream_version(stream).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        self.stream_reads.fetch_add(1, Ordering::SeqCst);
        self.inner
            .read_stream(stream, options)
            .inspect(|_| {
                self.events_read.fetch_add(1, Ordering::SeqCst);
            })
            .boxed()
    }
    async fn read_all(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> annals::Result<AllPage> {
        self.inner.read_all(from, filter, limit).await
    }
}

fn category(probe: &Arc<Probe>, cache: Option<Arc<Cache>>) -> Category<Tally> {
    category_named("Tally", probe, cache)
}

fn category_named(name: &str, probe: &Arc<Probe>, cache: Option<Arc<Cache>>) -> Category<Tally> {
    let c = Category::<Tally>::new(name, probe.clone(), JsonCodec::new()).unwrap();
    match cache {
        Some(cache) => c.with_cache(cache),
        None => c,
    }
}

fn add(n: u32) -> Vec<Event> {
    vec![Event::Added { n }]
}

#[tokio::test]
async fn conflict_resyncs_from_the_conflicting_version_and_decides_again() {
    let probe = Arc::new(Probe::default());
    let decider = category(&probe, None).decider("a").unwrap();
    decider.transact(|_| add(1)).await.unwrap();
    probe.interfere.store(1, Ordering::SeqCst);
    let (reads_before, events_before) = (
        probe.stream_reads.load(Ordering::SeqCst),
        probe.events_read.load(Ordering::SeqCst),
    );
    let mut seen = Vec::new();
    decider
        .transact(|s| {
            seen.push(s.clone());
            add(2)
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![vec![1], vec![1, 1000]],
        "decided again on the caught-up state"
    );
    assert_eq!(
        probe.stream_reads.load(Ordering::SeqCst) - reads_before,
        2,
        "one load, one resync"
    );
    assert_eq!(
        probe.events_read.load(Ordering::SeqCst) - events_before,
        2,
        "the resync reads only the event after the version it had"
    );
    assert_eq!(decider.query(Clone::clone).await.unwrap(), vec![1, 1000, 2]);
}

#[tokio::test]
async fn exhausted_attempts_give_a_typed_error_and_write_nothing_of_ours() {
    let probe = Arc::new(Probe::default());
    let decider = category(&probe, None)
        .with_max_attempts(3)
        .decider("b")
        .unwrap();
    probe.interfere.store(u32::MAX, Ordering::SeqCst);
    let mut decisions = 0;
    let err = decider
        .transact(|_| {
            decisions += 1;
            add(7)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResyncExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(decisions, 3);
    probe.interfere.store(0, Ordering::SeqCst);
    assert_eq!(
        decider.query(Clone::clone).await.unwrap(),
        vec![1000, 1000, 1000]
    );
}

#[tokio::test]
async fn a_decision_without_events_writes_nothing() {
    let probe = Arc::new(Probe::default());
    let decider = category(&probe, None).decider("c").unwrap();
    let r = decider
        .transact_result(|s| (s.len(), vec![]))
        .await
        .unwrap();
    assert_eq!(r, 0);
    assert!(probe.inner.is_empty());
}

#[tokio::test]
async fn a_cached_stream_reloads_only_newer_events() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(100));
    let decider = category(&probe, Some(cache)).decider("d").unwrap();
    for n in 0..10 {
        decider.transact(|_| add(n)).await.unwrap();
    }
    assert_eq!(
        probe.events_read.load(Ordering::SeqCst),
        0,
        "own writes update the cache"
    );
    let stream = decider.stream().clone();
    let others =
        (0..2).map(|n| EventData::json("Added", &serde_json::json!({ "n": 100 + n })).unwrap());
    probe
        .inner
        .append(
            &stream,
            ExpectedVersion::Exact(Version(10)),
            others.collect(),
        )
        .await
        .unwrap();
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state.len(), 12);
    assert_eq!(state[10..], [100, 101]);
    assert_eq!(
        probe.events_read.load(Ordering::SeqCst),
        3,
        "only the 2 new events are read, and the cached state's last (which confirms it)"
    );
    assert_eq!(decider.load().await.unwrap().version, Version(12));
    assert_eq!(
        probe.events_read.load(Ordering::SeqCst),
        4,
        "a load reads the cached state's last event only"
    );
}

/// Appends two events to `decider`'s stream behind its cache's back.
async fn write_behind(probe: &Probe, stream: &StreamName) {
    let others =
        (0..2).map(|n| EventData::json("Added", &serde_json::json!({ "n": 100 + n })).unwrap());
    probe
        .inner
        .append(stream, ExpectedVersion::Any, others.collect())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_decision_on_a_current_cached_state_appends_without_reading() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(100));
    let decider = category(&probe, Some(cache)).decider("fast").unwrap();
    for n in 0..10 {
        decider.transact(|_| add(n)).await.unwrap();
    }
    assert_eq!(
        probe.stream_reads.load(Ordering::SeqCst),
        1,
        "only the first decision (nothing cached yet) reads"
    );
    assert_eq!(
        decider.query(Clone::clone).await.unwrap(),
        (0..10).collect::<Vec<_>>()
    );
}

/// Copies of [`Counted`] states made so far.
static COPIES: AtomicUsize = AtomicUsize::new(0);

/// A state that counts its copies.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counted(Vec<u32>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        COPIES.fetch_add(1, Ordering::SeqCst);
        Counted(self.0.clone())
    }
}

struct CountedTally;

impl Domain for CountedTally {
    type Event = Event;
    type State = Counted;
    fn initial() -> Counted {
        Counted::default()
    }
    fn evolve(mut state: Counted, event: &Event) -> Counted {
        let Event::Added { n } = event;
        state.0.push(*n);
        state
    }
}

/// A decision on a cached state that nothing else holds folds its events onto that state
/// in place (the cache's entry is replaced by the state after the write anyway): no copy
/// per decision, whose cost grows with the state. After a conflict the decider still
/// decides on the state the refusal brought.
#[tokio::test]
async fn a_cached_decision_folds_its_events_in_place() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let cache = Arc::new(Cache::new(100));
    let category = Category::<CountedTally>::new("Counted", store.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(cache);
    let decider = category.decider("one").unwrap();
    decider.transact(|_| add(0)).await.unwrap();
    let before = COPIES.load(Ordering::SeqCst);
    for n in 1..10 {
        decider.transact(|_| add(n)).await.unwrap();
    }
    assert_eq!(
        COPIES.load(Ordering::SeqCst) - before,
        0,
        "a cached state nothing else holds is not copied to fold a decision's events"
    );
    let read = |s: &Counted| s.0.to_vec();
    assert_eq!(
        decider.query(read).await.unwrap(),
        (0..10).collect::<Vec<_>>()
    );
    // Another writer: the cached state is stale, the append is refused and the decision
    // runs again on the state with the other writer's event.
    let stream = StreamName::new("Counted-one").unwrap();
    let other = EventData::json("Added", &serde_json::json!({ "n": 100 })).unwrap();
    store
        .append(&stream, ExpectedVersion::Exact(Version(10)), vec![other])
        .await
        .unwrap();
    let mut seen = Vec::new();
    decider
        .transact(|s| {
            seen.push(s.0.len());
            add(11)
        })
        .await
        .unwrap();
    assert_eq!(seen, vec![10, 11], "decided again on the caught-up state");
    let mut expected: Vec<u32> = (0..10).collect();
    expected.extend([100, 11]);
    assert_eq!(decider.query(read).await.unwrap(), expected);
    let fresh = Category::<CountedTally>::new("Counted", store, JsonCodec::new()).unwrap();
    assert_eq!(
        fresh.decider("one").unwrap().query(read).await.unwrap(),
        expected,
        "the store holds what the cached state says"
    );
}

#[tokio::test]
async fn a_stale_cached_state_is_caught_by_the_append_and_costs_no_attempt() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(100));
    let decider = category(&probe, Some(cache))
        .with_max_attempts(1)
        .decider("stale")
        .unwrap();
    decider.transact(|_| add(1)).await.unwrap();
    write_behind(&probe, decider.stream()).await;
    let mut seen = Vec::new();
    decider
        .transact(|s| {
            seen.push(s.clone());
            add(2)
        })
        .await
        .expect("a stale cache is not a lost race: one attempt is enough");
    assert_eq!(seen, vec![vec![1], vec![1, 100, 101]]);
    assert_eq!(
        decider.query(Clone::clone).await.unwrap(),
        vec![1, 100, 101, 2]
    );
}

#[tokio::test]
async fn a_decision_that_writes_nothing_answers_from_the_stored_state() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(100));
    let decider = category(&probe, Some(cache)).decider("quiet").unwrap();
    decider.transact(|_| add(1)).await.unwrap();
    write_behind(&probe, decider.stream()).await;
    // Decided first on the cached state (one event), which a read shows stale: decided
    // again on the stored one.
    let len = decider
        .transact_result(|s| (s.len(), vec![]))
        .await
        .unwrap();
    assert_eq!(
        len, 3,
        "the answer comes from the stored state, not the cache"
    );
    // Now current: confirmed by a read of nothing new, the answer stands.
    let reads = probe.stream_reads.load(Ordering::SeqCst);
    let len = decider
        .transact_result(|s| (s.len(), vec![]))
        .await
        .unwrap();
    assert_eq!(len, 3);
    assert_eq!(probe.stream_reads.load(Ordering::SeqCst), reads + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_on_one_stream_take_turns_and_none_gives_up() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(100));
    // One attempt each: a decision that raced another to a conflict would give up.
    let cat = category(&probe, Some(cache)).with_max_attempts(1);
    let decider = Arc::new(cat.decider("hot").unwrap());
    decider.transact(|_| add(0)).await.unwrap();
    let tasks: Vec<_> = (1..=32)
        .map(|n| {
            let d = decider.clone();
            tokio::spawn(async move {
                d.transact_result(|s| (s.len(), add(n)))
                    .await
                    .unwrap_or_else(|e| panic!("decision {n} gave up: {e}"))
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=32).collect::<Vec<_>>(),
        "each decided on the state the one before it wrote"
    );
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state.len(), 33);
    assert_eq!(
        probe.stream_reads.load(Ordering::SeqCst),
        2,
        "one load before the first decision, one for the query: the rest came from the cache"
    );
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// The store's appends, held until dropped.
type Held<'a> = tokio::sync::RwLockWriteGuard<'a, ()>;
/// A decision's task, answering the length of the state it decided on.
type Decision = tokio::task::JoinHandle<annals::Result<usize>>;

/// Holds the store's appends and starts a decision writing `value` (returning the length it
/// saw); returns once its append waits on the held store.
async fn first_append_held<'a>(
    probe: &'a Arc<Probe>,
    decider: &Arc<annals::Decider<Tally>>,
    value: u32,
) -> (Held<'a>, Decision) {
    let held = probe.gate.write().await;
    let before = probe.appends.load(Ordering::SeqCst);
    let d = decider.clone();
    let first =
        tokio::spawn(async move { d.transact_result(move |s| (s.len(), add(value))).await });
    until("the first decision appends", || {
        probe.appends.load(Ordering::SeqCst) > before
    })
    .await;
    (held, first)
}

/// Spawns `start(k)` for each k from 1 to `n`, each once the one before is queued on
/// `decider`; returns them once all are queued.
async fn spawn_queued<D: annals::Domain, T: Send + 'static, F>(
    decider: &annals::Decider<D>,
    n: u32,
    start: impl Fn(u32) -> F,
) -> Vec<tokio::task::JoinHandle<T>>
where
    F: std::future::Future<Output = T> + Send + 'static,
{
    let mut tasks = Vec::new();
    for k in 1..=n {
        tasks.push(tokio::spawn(start(k)));
        until("it is queued", || decider.queued() == k as usize).await;
    }
    tasks
}

/// Starts one decision and holds its append; queues `n` more behind it (decision `k` adds
/// `k` and returns the length it saw); returns them once all are queued, appends still held.
async fn queue_behind_a_held_append<'a>(
    probe: &'a Arc<Probe>,
    decider: &Arc<annals::Decider<Tally>>,
    n: u32,
) -> (Held<'a>, Vec<Decision>) {
    let (held, first) = first_append_held(probe, decider, 0).await;
    let mut tasks = vec![first];
    tasks.extend(
        spawn_queued(decider, n, |k| {
            let d = decider.clone();
            async move { d.transact_result(|s| (s.len(), add(k))).await }
        })
        .await,
    );
    (held, tasks)
}

/// Starts a decision writing each of `decisions` in turn: the first's append held, each
/// other queued behind it; returns them once all are queued, appends still held.
async fn held_and_queued<'a, D: annals::Domain<Event = Event>>(
    probe: &'a Arc<Probe>,
    decider: &Arc<annals::Decider<D>>,
    decisions: Vec<Vec<Event>>,
) -> (Held<'a>, Vec<tokio::task::JoinHandle<annals::Result<()>>>) {
    let held = probe.gate.write().await;
    let before = probe.appends.load(Ordering::SeqCst);
    let start = |events: Vec<Event>| {
        let d = decider.clone();
        async move { d.transact(move |_| events.clone()).await }
    };
    let mut decisions = decisions.into_iter();
    let mut tasks = Vec::new();
    if let Some(first) = decisions.next() {
        tasks.push(tokio::spawn(start(first)));
        until("the first decision appends", || {
            probe.appends.load(Ordering::SeqCst) > before
        })
        .await;
    }
    let rest: Vec<Vec<Event>> = decisions.collect();
    let n = u32::try_from(rest.len()).unwrap();
    tasks.extend(spawn_queued(decider, n, |k| start(rest[k as usize - 1].clone())).await);
    (held, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_queued_on_a_hot_stream_are_written_in_one_append() {
    let probe = Arc::new(Probe::default());
    let recorded = annals_testkit::metrics::recorded();
    // One attempt each: a decision that raced another to a conflict would give up. A
    // category of its own: its metrics are this test's alone.
    let cat = category_named("Hot", &probe, Some(Arc::new(Cache::new(100)))).with_max_attempts(1);
    let decider = Arc::new(cat.decider("batch").unwrap());
    let (held, tasks) = queue_behind_a_held_append(&probe, &decider, 31).await;
    drop(held);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        seen,
        (0..32).collect::<Vec<_>>(),
        "each decided, in arrival order, on the state its predecessor produced"
    );
    assert_eq!(
        probe.appends.load(Ordering::SeqCst),
        2,
        "the first decision's append, then one append for the 31 queued behind it"
    );
    assert_eq!(
        recorded.histogram("annals_decider_batch_decisions{category=Hot}"),
        (1, 31.0),
        "one batch of 31 decisions (the first ran alone)"
    );
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state, (0..32).collect::<Vec<_>>());
    assert_eq!(decider.queued(), 0);
}

/// Decisions a batch answered that decide again at once (callers in a loop) join the next
/// batch rather than leave it to those queued meanwhile and make a batch of their own
/// after it: the coordinator lets them queue before it takes the queue. On one thread, so
/// that every caller the batch woke has run before the coordinator goes on.
#[tokio::test]
async fn decisions_that_decide_again_at_once_join_the_next_batch() {
    let probe = Arc::new(Probe::default());
    let cat = category_named("Again", &probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("again").unwrap());
    let (held, first) = first_append_held(&probe, &decider, 0).await;
    let tasks = spawn_queued(&decider, 8, |k| {
        let d = decider.clone();
        async move {
            d.transact_result(move |_| ((), add(k))).await?;
            d.transact_result(move |s| (s.len(), add(100 + k))).await
        }
    })
    .await;
    let before = probe.appends.load(Ordering::SeqCst);
    drop(held);
    assert_eq!(first.await.unwrap().unwrap(), 0);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        probe.appends.load(Ordering::SeqCst) - before,
        2,
        "one append for the 8 queued decisions, one for the 8 they made next"
    );
    assert_eq!(
        seen,
        (9..17).collect::<Vec<_>>(),
        "each second decision on the state of the one before it"
    );
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state.len(), 17);
}

/// A domain of large events, for the batches' bytes bound.
struct Blobs;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Blob {
    Written(String),
}

impl Domain for Blobs {
    type Event = Blob;
    type State = usize;

    fn initial() -> usize {
        0
    }

    fn evolve(count: usize, _: &Blob) -> usize {
        count + 1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_stream_batch_stops_taking_decisions_at_its_bytes_bound() {
    let probe = Arc::new(Probe::default());
    let cat = Category::<Blobs>::new("Blobs", probe.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(Arc::new(Cache::new(10)));
    let decider = Arc::new(cat.decider("big").unwrap());
    // Each decision writes one event of 900 KiB (the store takes up to 1 MiB each); 40 of
    // them, 35 MiB in all, are more than one batch may carry.
    let blob = || vec![Blob::Written("x".repeat(900 << 10))];
    let held = probe.gate.write().await;
    let d = decider.clone();
    let mut tasks = vec![tokio::spawn(async move { d.transact(|_| blob()).await })];
    until("the first decision appends", || {
        probe.appends.load(Ordering::SeqCst) == 1
    })
    .await;
    let queued = spawn_queued(&decider, 40, |_| {
        let d = decider.clone();
        async move { d.transact(|_| blob()).await }
    });
    tasks.extend(queued.await);
    drop(held);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events: Vec<RecordedEvent> = probe
        .inner
        .read_stream(&"Blobs-big".parse().unwrap(), ReadStream::default())
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(events.len(), 41, "every decision written once");
    // 37 decisions reach 32 MiB: the first batch stops there, the last 3 make a second.
    assert_eq!(
        probe.appends.load(Ordering::SeqCst),
        3,
        "the first decision, then the 40 queued ones in two batches"
    );
    let largest = probe.largest.load(Ordering::SeqCst);
    assert!(
        largest <= (32 << 20) + (1 << 20),
        "an append carried {largest} bytes"
    );
    assert_eq!(decider.query(|n| *n).await.unwrap(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_batch_decides_again_and_each_member_keeps_its_own_outcome() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, Some(Arc::new(Cache::new(100)))).with_max_attempts(2);
    let decider = Arc::new(cat.decider("mixed").unwrap());
    let before = probe.appends.load(Ordering::SeqCst);
    let (held, first) = first_append_held(&probe, &decider, 1).await;
    // Queued behind it, in this order: one that refuses once it sees 1000, one that writes
    // nothing, one that writes.
    let d = decider.clone();
    let refuses = tokio::spawn(async move {
        d.try_transact(|s: &Vec<u32>| {
            if s.contains(&1000) {
                Err("already has 1000")
            } else {
                Ok(add(2))
            }
        })
        .await
    });
    until("one is queued", || decider.queued() == 1).await;
    let d = decider.clone();
    let reads = tokio::spawn(async move { d.transact_result(|s| (s.clone(), vec![])).await });
    until("two are queued", || decider.queued() == 2).await;
    let d = decider.clone();
    let writes = tokio::spawn(async move { d.transact(|_| add(3)).await });
    until("three are queued", || decider.queued() == 3).await;
    // The batch's append (the next one) loses to another writer.
    probe.interfere_at.store(before + 2, Ordering::SeqCst);
    drop(held);
    first.await.unwrap().unwrap();
    let refused = refuses.await.unwrap().unwrap_err();
    assert_eq!(refused.domain(), Some(&"already has 1000"));
    let seen = reads.await.unwrap().unwrap();
    writes.await.unwrap().unwrap();
    assert_eq!(seen, vec![1, 1000], "decided again after the conflict");
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state, vec![1, 1000, 3]);
    assert_eq!(probe.appends.load(Ordering::SeqCst), before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_decision_given_up_by_its_caller_strands_nobody() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("cancel").unwrap());
    let (held, tasks) = queue_behind_a_held_append(&probe, &decider, 4).await;
    // The caller of the second queued decision gives up on it; the first decision's
    // caller gives up too, mid-append.
    tasks[2].abort();
    tasks[0].abort();
    drop(held);
    let results: Vec<_> = futures::future::join_all(tasks).await;
    assert!(results[0].as_ref().is_err_and(|e| e.is_cancelled()));
    assert!(results[2].as_ref().is_err_and(|e| e.is_cancelled()));
    for k in [1, 3, 4] {
        results[k].as_ref().unwrap().as_ref().unwrap();
    }
    let state = decider.query(Clone::clone).await.unwrap();
    assert!(
        state.ends_with(&[1, 3, 4]),
        "the others were written, in order: {state:?}"
    );
    assert_eq!(decider.queued(), 0);
    // And the stream takes new decisions.
    decider.transact(|_| add(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_decision_that_panics_fails_its_caller_alone() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("panics").unwrap());
    let (held, first) = first_append_held(&probe, &decider, 0).await;
    let queued = spawn_queued(&decider, 3, |k| {
        let d = decider.clone();
        async move {
            d.transact(move |s| {
                assert!(
                    k != 2,
                    "decision {k} panics (on a state of {} events)",
                    s.len()
                );
                add(k)
            })
            .await
        }
    })
    .await;
    drop(held);
    first.await.unwrap().unwrap();
    let results: Vec<_> = futures::future::join_all(queued).await;
    assert!(results[1].as_ref().is_err_and(|e| e.is_panic()));
    results[0].as_ref().unwrap().as_ref().unwrap();
    results[2].as_ref().unwrap().as_ref().unwrap();
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state, vec![0, 1, 3], "the others were written, in order");
    assert_eq!(decider.queued(), 0);
    decider.transact(|_| add(4)).await.unwrap();
}

#[tokio::test]
async fn a_stale_write_never_overwrites_a_newer_cache_entry() {
    let cache = Cache::new(10);
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let scope = annals::CacheScope::of::<Tally>(&store);
    let s = StreamName::new("Tally-e").unwrap();
    assert!(cache.put(&scope, &s, Version(5), Arc::new(vec![5u32])));
    assert!(!cache.put(&scope, &s, Version(3), Arc::new(vec![3u32])));
    let cached = cache.get::<Vec<u32>>(&scope, &s).unwrap();
    assert_eq!((cached.version, &*cached.state), (Version(5), &vec![5]));
    assert!(cache.put(&scope, &s, Version(6), Arc::new(vec![6u32])));
    assert_eq!(
        cache.get::<Vec<u32>>(&scope, &s).unwrap().version,
        Version(6)
    );

    // Through the runtime: a writer holding an old state loses the race, resyncs, and the
    // cache ends at the newest version.
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(10));
    let category = category(&probe, Some(cache.clone()));
    let scope = category.cache_scope();
    let decider = category.decider("e").unwrap();
    decider.transact(|_| add(1)).await.unwrap();
    probe.interfere.store(1, Ordering::SeqCst);
    decider
        .clone_with_load(LoadOption::AnyCachedValue)
        .transact(|_| add(2))
        .await
        .unwrap();
    let cached = cache.get::<Vec<u32>>(&scope, decider.stream()).unwrap();
    assert_eq!(
        (cached.version, &*cached.state),
        (Version(3), &vec![1, 1000, 2])
    );
}

#[tokio::test]
async fn allow_stale_shares_one_read_among_50_concurrent_loads() {
    let probe = Arc::new(Probe::default());
    let stream = StreamName::new("Tally-f").unwrap();
    let events: Vec<_> = (0..5)
        .map(|n| EventData::json("Added", &serde_json::json!({ "n": n })).unwrap())
        .collect();
    probe
        .inner
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let cat = category(&probe, Some(Arc::new(Cache::new(10))));
    let loads: Vec<_> = (0..50)
        .map(|_| {
            let d = cat
                .decider("f")
                .unwrap()
                .with_load(LoadOption::AllowStale(Duration::from_secs(60)));
            tokio::spawn(async move { d.query(|s| s.len()).await })
        })
        .collect();
    for l in loads {
        assert_eq!(l.await.unwrap().unwrap(), 5);
    }
    assert_eq!(
        probe.stream_reads.load(Ordering::SeqCst),
        1,
        "50 concurrent loads, one read"
    );
    // RequireLoad still goes to the store (for events after the cached version only, and
    // the cached state's last, which confirms it).
    cat.decider("f").unwrap().query(|s| s.len()).await.unwrap();
    assert_eq!(probe.stream_reads.load(Ordering::SeqCst), 2);
    assert_eq!(probe.events_read.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn assume_empty_reads_nothing_but_the_write_is_still_checked() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, None);
    cat.decider("g")
        .unwrap()
        .transact(|_| add(1))
        .await
        .unwrap();
    let reads = probe.stream_reads.load(Ordering::SeqCst);
    let d = cat.decider("g").unwrap().with_load(LoadOption::AssumeEmpty);
    let mut seen = Vec::new();
    d.transact(|s| {
        seen.push(s.len());
        if s.is_empty() {
            add(9)
        } else {
            vec![]
        }
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![0, 1],
        "assumed empty, conflicted, resynced, decided nothing"
    );
    assert_eq!(probe.stream_reads.load(Ordering::SeqCst) - reads, 1);
    assert_eq!(probe.inner.len(), 1);
}

#[tokio::test]
async fn unknown_types_are_skipped_and_bad_bodies_are_errors() {
    let probe = Arc::new(Probe::default());
    let stream = StreamName::new("Tally-h").unwrap();
    let events = vec![
        EventData::new("Renamed", br#"{"to":"x"}"#.to_vec()),
        EventData::json("Added", &serde_json::json!({ "n": 4 })).unwrap(),
    ];
    probe
        .inner
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let d = category(&probe, None).decider("h").unwrap();
    let loaded = d.load().await.unwrap();
    assert_eq!((loaded.version, &*loaded.state), (Version(2), &vec![4]));
    probe
        .inner
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![EventData::new("Added", br#"{"n":"four"}"#.to_vec())],
        )
        .await
        .unwrap();
    match d.load().await {
        Err(Error::Codec(e)) => assert_eq!((e.event_type.as_str(), e.stream_version), ("Added", 2)),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_decision_the_store_refuses_fails_alone() {
    // Events over 10 bytes are refused: `{"n":7}` passes, `{"n":1000000}` does not.
    let probe = Arc::new(Probe {
        inner: MemoryStore::new().with_max_event_bytes(10),
        ..Probe::default()
    });
    let cat = category(&probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("refused").unwrap());
    let decisions = [0u32, 1, 1_000_000, 3].map(add).to_vec();
    let (held, tasks) = held_and_queued(&probe, &decider, decisions).await;
    drop(held);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(
        results[0].is_ok() && results[1].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    let refused = results[2].as_ref().unwrap_err();
    assert!(refused.is_invalid_input(), "{refused}");
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state, [0, 1, 3], "the others are written, in order");
    assert_eq!(decider.queued(), 0);
}

/// Decisions queued on a hot stream whose events together pass the store's batch limit,
/// while each decision's own fit, are each written: the batch the store refuses as too
/// large is decided again member by member, in order (it used to fail every member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_decisions_too_many_together_for_the_store_are_written_one_by_one() {
    let probe = Arc::new(Probe::default());
    probe.max_batch.store(3, Ordering::SeqCst);
    let cat = category(&probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("limited").unwrap());
    let two = |n: u32| vec![Event::Added { n }, Event::Added { n: n + 1 }];
    decider.transact(|_| two(0)).await.unwrap();
    let decisions = [10u32, 20, 30, 40].map(two).to_vec();
    let (held, tasks) = held_and_queued(&probe, &decider, decisions).await;
    drop(held);
    for (k, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        assert!(result.is_ok(), "decision {k}: {result:?}");
    }
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(
        state,
        [0, 1, 10, 11, 20, 21, 30, 31, 40, 41],
        "all written, in order"
    );
    let stored = probe
        .inner
        .read_stream_vec(
            &StreamName::new("Tally-limited").unwrap(),
            ReadStream::forward(),
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 10, "each event once");
    assert_eq!(decider.queued(), 0);
}

/// One cache shared by categories over two stores (tenants, or tests each with a store of
/// their own) never gives one store's state for the other's stream of the same name.
#[tokio::test]
async fn a_cache_shared_by_two_stores_keeps_their_streams_apart() {
    let cache = Arc::new(Cache::new(16));
    let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
    let on_a = category(&a, Some(Arc::clone(&cache))).decider("x").unwrap();
    let on_b = category(&b, Some(Arc::clone(&cache))).decider("x").unwrap();
    on_a.transact(|_| add(1)).await.unwrap();
    on_a.transact(|_| add(2)).await.unwrap();
    on_b.transact(|_| add(7)).await.unwrap();
    assert_eq!(on_b.query(|s| s.clone()).await.unwrap(), vec![7]);
    on_b.transact(|_| add(8)).await.unwrap();
    assert_eq!(on_b.query(|s| s.clone()).await.unwrap(), vec![7, 8]);
    assert_eq!(on_a.query(|s| s.clone()).await.unwrap(), vec![1, 2]);
    // A store dropped and another made (perhaps where it was): nothing of it is served.
    drop(on_a);
    drop(a);
    let c = Arc::new(Probe::default());
    let on_c = category(&c, Some(Arc::clone(&cache))).decider("x").unwrap();
    assert_eq!(on_c.query(|s| s.clone()).await.unwrap(), Vec::<u32>::new());
    on_c.transact(|_| add(3)).await.unwrap();
    assert_eq!(on_c.query(|s| s.clone()).await.unwrap(), vec![3]);
    let stored: Vec<u64> = b
        .inner
        .read_stream_vec(&StreamName::new("Tally-x").unwrap(), ReadStream::forward())
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(stored, [0, 1]);
}

/// Two domains folding one stream into the same state type, with one cache: each gets its
/// own fold, never the other's.
#[tokio::test]
async fn a_cache_shared_by_two_domains_of_one_stream_keeps_their_states_apart() {
    /// Tally's events, each counted twice.
    struct Doubled;
    impl Domain for Doubled {
        type Event = Event;
        type State = Vec<u32>;
        fn initial() -> Vec<u32> {
            Tally::initial()
        }
        fn evolve(state: Vec<u32>, Event::Added { n }: &Event) -> Vec<u32> {
            Tally::evolve(state, &Event::Added { n: n * 2 })
        }
    }
    let cache = Arc::new(Cache::new(16));
    let probe = Arc::new(Probe::default());
    let tally = category(&probe, Some(Arc::clone(&cache)))
        .decider("d")
        .unwrap();
    let doubled = Category::<Doubled>::new("Tally", probe.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(Arc::clone(&cache))
        .decider("d")
        .unwrap();
    tally.transact(|_| add(1)).await.unwrap();
    assert_eq!(doubled.query(|s| s.clone()).await.unwrap(), vec![2]);
    doubled.transact(|_| add(5)).await.unwrap();
    assert_eq!(tally.query(|s| s.clone()).await.unwrap(), vec![1, 5]);
    assert_eq!(doubled.query(|s| s.clone()).await.unwrap(), vec![2, 10]);
    assert_eq!(cache.len(), 2);
}

/// A tally whose `evolve` panics on the value 1000 while [`TOUCHY`] is set: user code that
/// panics where the coordinator of a hot stream's batch runs it (folding a resync).
struct Touchy;

static TOUCHY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Domain for Touchy {
    type Event = Event;
    type State = Vec<u32>;
    fn initial() -> Vec<u32> {
        Vec::new()
    }
    fn evolve(state: Vec<u32>, event: &Event) -> Vec<u32> {
        let Event::Added { n } = event;
        assert!(
            !(*n == 1000 && TOUCHY.load(Ordering::SeqCst)),
            "evolve panics on 1000"
        );
        Tally::evolve(state, event)
    }
}

/// A panic in user code that the coordinator of a batch runs (here `evolve`, folding the
/// events of a lost race) fails that batch's decisions with an error, and the stream keeps
/// taking decisions: its queue is never left without a coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_coordinating_a_batch_fails_that_batch_and_strands_nobody() {
    let probe = Arc::new(Probe::default());
    let cat = Category::<Touchy>::new("Touchy", probe.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(Arc::new(Cache::new(100)));
    let decider = Arc::new(cat.decider("coordinator").unwrap());
    let before = probe.appends.load(Ordering::SeqCst);
    let (held, tasks) = held_and_queued(&probe, &decider, (0..3).map(add).collect()).await;
    // The batch's append (the second) loses to a writer of 1000, which the coordinator
    // folds to decide again.
    probe.interfere_at.store(before + 2, Ordering::SeqCst);
    TOUCHY.store(true, Ordering::SeqCst);
    drop(held);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    TOUCHY.store(false, Ordering::SeqCst);
    results[0].as_ref().unwrap();
    for r in &results[1..] {
        let e = r.as_ref().unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
    }
    assert_eq!(decider.queued(), 0);
    let next = tokio::time::timeout(Duration::from_secs(30), decider.transact(|_| add(5))).await;
    next.expect("the stream takes decisions after the panic")
        .unwrap();
    let state = decider.query(Clone::clone).await.unwrap();
    assert_eq!(state, [0, 1000, 5], "the failed batch wrote nothing");
}

/// A coordinator dropped mid-batch (its runtime shut down, as at the end of a test whose
/// decider outlives it) leaves the stream idle: a decision from another runtime runs.
#[test]
fn a_coordinator_dropped_with_its_runtime_strands_nobody() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, Some(Arc::new(Cache::new(100))));
    let decider = Arc::new(cat.decider("runtimes").unwrap());
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let held = first.block_on(async {
        let (held, tasks) = queue_behind_a_held_append(&probe, &decider, 2).await;
        // The first decision's append goes through; the batch's (the next) waits.
        let before = probe.appends.load(Ordering::SeqCst);
        probe.hold_at.store(before + 1, Ordering::SeqCst);
        let batch_held = probe.hold.write().await;
        drop(held);
        until("the batch appends", || {
            probe.appends.load(Ordering::SeqCst) > before
        })
        .await;
        drop(tasks);
        batch_held
    });
    // The coordinator is in the middle of its append when its runtime goes.
    first.shutdown_timeout(Duration::from_secs(10));
    drop(held);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let next =
            tokio::time::timeout(Duration::from_secs(30), decider.transact(|_| add(9))).await;
        assert!(
            next.is_ok(),
            "the stream takes decisions after its coordinator was dropped"
        );
    });
}

/// Decisions that await something first (`transact_async`): they run in spawned tasks,
/// decide again on the caught-up state after a conflict, refuse with the domain's error
/// writing nothing, and take their turn on a hot stream among pure decisions, each on the
/// state its predecessor produced, written in one append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_decisions_decide_again_after_a_conflict_and_take_their_turn() {
    let probe = Arc::new(Probe::default());
    let cache = Arc::new(Cache::new(10));
    let decider = Arc::new(category(&probe, Some(cache)).decider("async").unwrap());
    decider.transact(|_| add(1)).await.unwrap();
    // Another writer wins the race to the next append.
    probe.interfere.store(1, Ordering::SeqCst);
    // Each run of the decision awaits one permit (a reply from elsewhere).
    let replies = Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let (d, r, saw, runs) = (
        decider.clone(),
        replies.clone(),
        seen.clone(),
        started.clone(),
    );
    let task = tokio::spawn(async move {
        d.transact_async(|state| {
            let (replies, saw, runs) = (r.clone(), saw.clone(), runs.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                // Holds the state across the await.
                replies.acquire().await.unwrap().forget();
                saw.lock().unwrap().push((*state).clone());
                add(2)
            }
        })
        .await
    });
    until("the decision awaits", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    replies.add_permits(1);
    until("it decides again after the conflict", || {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), vec![vec![1]]);
    replies.add_permits(1);
    task.await.unwrap().unwrap();
    assert_eq!(
        probe.appends.load(Ordering::SeqCst),
        3,
        "one refused, one written"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![vec![1], vec![1, 1000]],
        "decided again on the caught-up state"
    );
    assert_eq!(decider.query(Clone::clone).await.unwrap(), vec![1, 1000, 2]);

    // A refusal writes nothing.
    let appends = probe.appends.load(Ordering::SeqCst);
    let refused = decider
        .try_transact_async(|state| async move {
            tokio::task::yield_now().await;
            match state.len() {
                n if n >= 3 => Err(format!("full at {n}")),
                _ => Ok(((), add(3))),
            }
        })
        .await;
    assert!(
        matches!(&refused, Err(annals::DecideError::Domain(m)) if m == "full at 3"),
        "{refused:?}"
    );
    assert_eq!(probe.appends.load(Ordering::SeqCst), appends);

    // On a hot stream: queued behind a held append, an async and a pure decision.
    let (held, first) = first_append_held(&probe, &decider, 10).await;
    let d = decider.clone();
    let awaiting = tokio::spawn(async move {
        d.try_transact_async(|state| async move {
            tokio::task::yield_now().await;
            Ok::<_, std::convert::Infallible>((state.len(), add(11)))
        })
        .await
    });
    until("the async decision is queued", || decider.queued() == 1).await;
    let d = decider.clone();
    let pure = tokio::spawn(async move { d.transact_result(|s| (s.len(), add(12))).await });
    until("the pure decision is queued", || decider.queued() == 2).await;
    let before = probe.appends.load(Ordering::SeqCst);
    drop(held);
    assert_eq!(first.await.unwrap().unwrap(), 3);
    assert_eq!(awaiting.await.unwrap().unwrap(), 4);
    assert_eq!(pure.await.unwrap().unwrap(), 5);
    assert_eq!(
        probe.appends.load(Ordering::SeqCst) - before,
        1,
        "the two queued decisions in one append"
    );
    assert_eq!(
        decider.query(Clone::clone).await.unwrap(),
        vec![1, 1000, 2, 10, 11, 12]
    );
}

/// Queued on a hot stream, each `transact_render` answers the state after its own
/// events (its predecessors' in the batch included, not its successors'); one that writes
/// nothing, the state it decided on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_renders_answer_the_state_after_their_own_events() {
    let probe = Arc::new(Probe::default());
    let cat = category(&probe, Some(Arc::new(Cache::new(10))));
    let decider = Arc::new(cat.decider("renders").unwrap());
    let (held, first) = first_append_held(&probe, &decider, 0).await;
    let tasks = spawn_queued(&decider, 3, |k| {
        let d = decider.clone();
        async move {
            d.transact_render(move |_| if k == 2 { vec![] } else { add(k) }, Clone::clone)
                .await
        }
    })
    .await;
    drop(held);
    first.await.unwrap().unwrap();
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.unwrap().unwrap());
    }
    assert_eq!(views, [vec![0, 1], vec![0, 1], vec![0, 1, 3]]);
    assert_eq!(decider.query(Clone::clone).await.unwrap(), [0, 1, 3]);
}

/// `transact_render` answers the view of the state its append produced: after a conflict,
/// the caught-up state with the decision's events; for a decision that writes nothing, the
/// state as it stands.
#[tokio::test]
async fn transact_render_answers_the_state_after_the_append() {
    let probe = Arc::new(Probe::default());
    let decider = category(&probe, Some(Arc::new(Cache::new(10))))
        .decider("render")
        .unwrap();
    let view = decider.transact_render(|_| add(1), Clone::clone).await;
    assert_eq!(view.unwrap(), vec![1]);
    probe.interfere.store(1, Ordering::SeqCst);
    let view = decider.transact_render(|_| add(2), Clone::clone).await;
    assert_eq!(view.unwrap(), vec![1, 1000, 2]);
    let reads = probe.stream_reads.load(Ordering::SeqCst);
    let appends = probe.appends.load(Ordering::SeqCst);
    let view = decider
        .transact_render(|s| if s.len() > 2 { vec![] } else { add(3) }, |s| s.len())
        .await;
    assert_eq!(view.unwrap(), 3, "nothing written: the state as it stands");
    assert_eq!(probe.appends.load(Ordering::SeqCst), appends);
    assert_eq!(
        decider.query(Clone::clone).await.unwrap(),
        vec![1, 1000, 2],
        "and what the store holds"
    );
    assert!(probe.stream_reads.load(Ordering::SeqCst) > reads);
}

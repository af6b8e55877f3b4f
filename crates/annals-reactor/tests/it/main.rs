//! The pipeline over the in-memory store (order, concurrency, checkpoints, failures), and
//! over SQLite, PostgreSQL and NATS JetStream.

mod compete;
mod process;
mod read_models;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{
    CheckpointStore, EventData, EventStore, ExpectedVersion, MemoryCheckpoints, MemoryStore,
    Position, RecordedEvent, StreamName, Version,
};
use annals_reactor::{
    Backoff, FailurePolicy, Handler, HandlerError, PipelineConfig, PipelineError,
};
use async_trait::async_trait;

const WAIT: Duration = Duration::from_secs(30);

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

async fn append(store: &MemoryStore, stream: &str, n: usize) {
    let events = (0..n)
        .map(|i| EventData::new("E", format!("{i}").into_bytes()))
        .collect();
    store
        .append(&name(stream), ExpectedVersion::Any, events)
        .await
        .unwrap();
}

fn config(group: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(group);
    c.batch_size = 7;
    c.max_pending_batches = 3;
    c.checkpoint_interval = Duration::from_millis(20);
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c
}

/// Records what it was given; fails streams listed in `failing` (for their first
/// `fail_times` calls), and can hold a stream until another has started.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<StreamName, Vec<u64>>>,
    calls: Mutex<Vec<(StreamName, Instant)>>,
    failing: Mutex<HashMap<StreamName, u32>>,
    active: Mutex<Vec<StreamName>>,
    /// Streams whose first calls must be inside their handlers at the same time to get past
    /// the barrier.
    together: Option<(Mutex<Vec<StreamName>>, Arc<tokio::sync::Barrier>)>,
    skip_to: Option<(StreamName, u64)>,
    /// The failing streams' error text, when not the default.
    failure: Option<String>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push((stream.clone(), Instant::now()));
        {
            let mut failing = self.failing.lock().unwrap();
            if let Some(left) = failing.get_mut(stream) {
                if *left > 0 {
                    *left -= 1;
                    return Err(match &self.failure {
                        Some(text) => text.clone().into(),
                        None => format!("{stream} is failing").into(),
                    });
                }
            }
        }
        {
            let mut active = self.active.lock().unwrap();
            assert!(!active.contains(stream), "{stream} handled twice at once");
            active.push(stream.clone());
        }
        if let Some((streams, barrier)) = &self.together {
            let first_call = {
                let mut waiting = streams.lock().unwrap();
                let found = waiting.contains(stream);
                waiting.retain(|s| s != stream);
                found
            };
            if first_call {
                // Only passes if the other slow stream is being handled at the same time.
                tokio::time::timeout(WAIT, barrier.wait())
                    .await
                    .expect("the slow streams overlap");
            }
        }
        self.seen
            .lock()
            .unwrap()
            .entry(stream.clone())
            .or_default()
            .extend(events.iter().map(|e| e.stream_version));
        self.active.lock().unwrap().retain(|s| s != stream);
        let next = events.last().map_or(0, |e| e.stream_version + 1);
        match &self.skip_to {
            Some((s, to)) if s == stream => Ok(Version(next.max(*to))),
            _ => Ok(Version(next)),
        }
    }
}

fn run(
    store: &Arc<MemoryStore>,
    cps: &Arc<MemoryCheckpoints>,
    h: &Arc<Recorder>,
    c: PipelineConfig,
) -> annals_reactor::Running {
    annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), c)
}

async fn idle(r: &mut annals_reactor::Running) {
    tokio::time::timeout(WAIT, r.await_idle())
        .await
        .expect("idle in time")
        .expect("no pipeline error");
}

/// Waits (checking every few milliseconds, up to [`WAIT`]) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    tokio::time::timeout(WAIT, async {
        while !done() {
            pace.tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_are_handled_in_order_and_two_slow_streams_concurrently() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let h = Arc::new(Recorder {
        together: Some((Mutex::new(vec![name("Slow-a"), name("Slow-b")]), barrier)),
        ..Recorder::default()
    });
    for i in 0..20 {
        append(&store, &format!("Many-{}", i % 5), 3).await;
    }
    append(&store, "Slow-a", 2).await;
    append(&store, "Slow-b", 2).await;
    let mut r = run(&store, &cps, &h, config("order"));
    idle(&mut r).await;
    for i in 0..10 {
        append(&store, &format!("Many-{}", i % 5), 2).await;
    }
    idle(&mut r).await;
    let seen = h.seen.lock().unwrap().clone();
    for (stream, versions) in &seen {
        let want: Vec<u64> = (0..versions.len() as u64).collect();
        assert_eq!(versions, &want, "{stream} handled out of order or twice");
    }
    assert_eq!(seen[&name("Many-0")].len(), 12 + 4);
    assert_eq!(
        seen[&name("Slow-a")],
        vec![0, 1],
        "both slow streams passed the barrier"
    );
    assert_eq!(seen[&name("Slow-b")], vec![0, 1]);
    let stats = r.stats();
    assert!(
        stats.max_pending_batches_seen <= 3,
        "read-ahead bound held: {}",
        stats.max_pending_batches_seen
    );
    assert_eq!(stats.events_handled, 60 + 4 + 20);
    assert_eq!(stats.bytes_handled, 60 + 4 + 20, "one byte per event");
    assert_eq!(stats.streams_tracked, 0, "handled streams are forgotten");
    r.stop().await.unwrap();
    let all = store
        .read_all(Position::START, &annals::Filter::all(), 1000)
        .await
        .unwrap();
    assert_eq!(
        cps.load("order", "all").await.unwrap(),
        Some(all.events.last().unwrap().position),
        "checkpoint flushed on stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_stream_pins_the_checkpoint_and_is_delivered_again_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    append(&store, "Ok-1", 3).await;
    append(&store, "Bad-1", 2).await;
    append(&store, "Ok-2", 3).await;
    let bad_position = store
        .read_all(Position::START, &annals::Filter::all(), 100)
        .await
        .unwrap()
        .events[3]
        .position;
    let h = Arc::new(Recorder::default());
    h.failing.lock().unwrap().insert(name("Bad-1"), u32::MAX);
    let mut c = config("pin");
    c.stats_interval = Duration::from_millis(10);
    let r = run(&store, &cps, &h, c);
    // Wait until the bad stream has been tried 5 times, by watching the handler's calls.
    let bad_calls = || {
        h.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == &name("Bad-1"))
            .count()
    };
    wait_until("retries happen", || bad_calls() >= 5).await;
    // The periodic summary measures handler latency over its interval.
    let mut latency = None;
    wait_until("a summary with handler calls", || {
        latency = r.stats().handler_latency;
        latency.is_some()
    })
    .await;
    let latency = latency.expect("set by the wait");
    assert!(latency.calls >= 1 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    let stats = r.stats();
    assert_eq!(
        stats.events_behind, 2,
        "the failing stream's two events are behind"
    );
    assert!(stats.behind.is_some());
    assert!(
        stats
            .failing
            .iter()
            .any(|f| f.stream == name("Bad-1") && f.failures >= 4 && !f.last_error.is_empty()),
        "{:?}",
        stats.failing
    );
    r.stop().await.unwrap();
    let checkpoint = cps
        .load("pin", "all")
        .await
        .unwrap()
        .unwrap_or(Position::START);
    assert!(
        checkpoint < bad_position,
        "the checkpoint never passes the unhandled event"
    );
    // Retry intervals grow: each gap is at least the shortest delay of its attempt.
    let times: Vec<Instant> = h
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| s == &name("Bad-1"))
        .map(|(_, t)| *t)
        .collect();
    let backoff = config("x").backoff;
    for (n, gap) in times.windows(2).map(|w| w[1] - w[0]).enumerate() {
        assert!(gap >= backoff.floor(n as u32 + 1), "gap {n} was {gap:?}");
    }
    // Restart with a working handler: the pinned events come again, nothing after is lost.
    let h2 = Arc::new(Recorder::default());
    let mut r = run(&store, &cps, &h2, config("pin"));
    idle(&mut r).await;
    let seen = h2.seen.lock().unwrap().clone();
    assert_eq!(seen[&name("Bad-1")], vec![0, 1]);
    let ok2 = |h: &Recorder| {
        h.seen
            .lock()
            .unwrap()
            .get(&name("Ok-2"))
            .cloned()
            .unwrap_or_default()
    };
    let mut both = ok2(&h);
    both.extend(ok2(&h2));
    both.sort();
    both.dedup();
    assert_eq!(both, vec![0, 1, 2], "nothing after the checkpoint is lost");
    r.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_park_policy_records_and_skips_a_stream_and_the_rest_goes_on() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    append(&store, "Bad-1", 2).await;
    append(&store, "Ok-1", 2).await;
    let h = Arc::new(Recorder::default());
    h.failing.lock().unwrap().insert(name("Bad-1"), u32::MAX);
    let mut r = run(
        &store,
        &cps,
        &h,
        config("park").on_failure(FailurePolicy::Park { after: 3 }),
    );
    idle(&mut r).await;
    append(&store, "Bad-1", 1).await;
    append(&store, "Ok-1", 1).await;
    idle(&mut r).await;
    let stats = r.stats();
    assert_eq!(stats.parked.len(), 1);
    assert_eq!(stats.parked[0].stream, name("Bad-1"));
    assert_eq!(
        (stats.parked[0].from, stats.parked[0].to),
        (Version(0), Version(3)),
        "the record covers the events skipped, later ones included"
    );
    assert!(stats.parked[0].first_error.contains("failing"));
    assert!(stats.parked[0].last_error.contains("failing"));
    let stored = cps.parked(Some("park")).await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "the parked stream is recorded in the checkpoint store"
    );
    assert_eq!(
        (stored[0].stream.clone(), stored[0].from, stored[0].to),
        (name("Bad-1"), Version(0), Version(3))
    );
    assert_eq!(
        h.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == &name("Bad-1"))
            .count(),
        3
    );
    assert_eq!(h.seen.lock().unwrap()[&name("Ok-1")], vec![0, 1, 2]);
    r.stop().await.unwrap();
    let head = store
        .read_all(Position::START, &annals::Filter::all(), 100)
        .await
        .unwrap()
        .next;
    assert_eq!(
        cps.load("park", "all").await.unwrap(),
        Some(head),
        "parked events no longer pin the checkpoint"
    );
}

/// A handler failing with a huge error text (a whole response body, say) parks its stream
/// with the text's beginning: the record stays small enough for any store (a NATS message
/// is at most 1 MiB by default), and the stats and logs carry no megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_handler_error_is_kept_short_in_the_parked_record() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    append(&store, "Bad-1", 1).await;
    let text = format!("boom: {}", "é".repeat(1 << 20));
    let h = Arc::new(Recorder {
        failure: Some(text.clone()),
        ..Recorder::default()
    });
    h.failing.lock().unwrap().insert(name("Bad-1"), u32::MAX);
    let mut r = run(
        &store,
        &cps,
        &h,
        config("huge").on_failure(FailurePolicy::Park { after: 2 }),
    );
    idle(&mut r).await;
    let stored = cps.parked(Some("huge")).await.unwrap();
    assert_eq!(stored.len(), 1);
    for kept in [
        &stored[0].first_error,
        &stored[0].last_error,
        &r.stats().parked[0].last_error,
    ] {
        assert!(kept.len() <= 4_200, "{} bytes kept", kept.len());
        let (shown, rest) = kept.split_once('…').expect("the cut is marked");
        assert!(
            text.starts_with(shown) && shown.starts_with("boom: é"),
            "{shown}"
        );
        assert!(rest.contains("bytes more"), "{rest}");
    }
    r.stop().await.unwrap();
}

/// Checkpoints whose first `failures` loads fail as a store that lost its connection does.
struct FlakyLoads {
    inner: MemoryCheckpoints,
    failures: std::sync::atomic::AtomicU32,
    loads: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl CheckpointStore for FlakyLoads {
    async fn load(&self, group: &str, source: &str) -> annals::Result<Option<Position>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.loads.fetch_add(1, SeqCst);
        let left = self.failures.load(SeqCst);
        if left > 0 {
            self.failures.store(left - 1, SeqCst);
            return Err(annals::Error::transient("flaky", "connection lost"));
        }
        self.inner.load(group, source).await
    }
    async fn commit(&self, group: &str, source: &str, position: Position) -> annals::Result<()> {
        self.inner.commit(group, source, position).await
    }
    async fn list(&self) -> annals::Result<Vec<annals::Checkpoint>> {
        self.inner.list().await
    }
}

/// A checkpoint store that fails for a while when the pipeline starts is asked again, and
/// the pipeline then handles everything from the checkpoint; stopped while it waits, the
/// pipeline ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_load_that_fails_for_a_while_is_retried() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let store = Arc::new(MemoryStore::new());
    append(&store, "Flaky-1", 3).await;
    let cps = Arc::new(FlakyLoads {
        inner: MemoryCheckpoints::new(),
        failures: AtomicU32::new(3),
        loads: AtomicU32::new(0),
    });
    let h = Arc::new(Recorder::default());
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), config("flaky"));
    idle(&mut r).await;
    assert_eq!(
        cps.loads.load(SeqCst),
        4,
        "three failures, then the checkpoint"
    );
    assert_eq!(h.seen.lock().unwrap()[&name("Flaky-1")], vec![0, 1, 2]);
    r.stop().await.unwrap();

    // Failing for good: stop ends it while it waits to ask again.
    cps.failures.store(u32::MAX, SeqCst);
    let r = annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), config("flaky"));
    wait_until("a second failed load", || cps.loads.load(SeqCst) >= 6).await;
    tokio::time::timeout(WAIT, r.stop())
        .await
        .expect("stops while retrying")
        .expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stop_policy_ends_the_pipeline_with_the_error() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    append(&store, "Ok-1", 2).await;
    append(&store, "Bad-1", 2).await;
    let h = Arc::new(Recorder::default());
    h.failing.lock().unwrap().insert(name("Bad-1"), u32::MAX);
    let mut r = run(
        &store,
        &cps,
        &h,
        config("stop").on_failure(FailurePolicy::Stop { after: 2 }),
    );
    match tokio::time::timeout(WAIT, r.await_idle())
        .await
        .expect("ends in time")
    {
        Err(PipelineError::Handler {
            stream,
            attempts,
            message,
        }) => {
            assert_eq!((stream, attempts), (name("Bad-1"), 2));
            assert!(message.contains("failing"));
        }
        other => panic!("expected the handler error, got {other:?}"),
    }
    assert!(matches!(r.join().await, Err(PipelineError::Handler { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_can_skip_ahead() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    append(&store, "Skip-1", 3).await;
    let h = Arc::new(Recorder {
        skip_to: Some((name("Skip-1"), 6)),
        ..Recorder::default()
    });
    let mut r = run(&store, &cps, &h, config("skip"));
    idle(&mut r).await;
    assert_eq!(
        r.stats().streams_tracked,
        1,
        "a stream skipping ahead is remembered until it reaches its version"
    );
    append(&store, "Skip-1", 5).await; // versions 3..8: 3, 4, 5 are below 6 and dropped
    idle(&mut r).await;
    assert_eq!(h.seen.lock().unwrap()[&name("Skip-1")], vec![0, 1, 2, 6, 7]);
    assert_eq!(r.stats().streams_tracked, 0);
    r.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reactor_sets_causation_and_correlation_and_never_emits_twice() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    let corr = annals::Uuid::now_v7();
    store
        .append(
            &name("Order-1"),
            ExpectedVersion::Any,
            vec![
                EventData::new("Placed", b"{}".to_vec()).with_correlation_id(corr),
                EventData::new("Placed", b"{}".to_vec()),
            ],
        )
        .await
        .unwrap();
    let react = |e: &RecordedEvent| {
        if e.stream.category() == "Order" {
            vec![(
                name("Invoice-1"),
                EventData::new("Invoiced", b"{}".to_vec()),
            )]
        } else {
            vec![]
        }
    };
    let reactor = Arc::new(annals_reactor::Reactor::new(store.clone(), react));
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), reactor.clone(), config("react"));
    idle(&mut r).await;
    // Deliver everything again (as after a crash before the checkpoint): nothing new.
    cps.commit("react", "all", Position::START).await.unwrap();
    r.stop().await.unwrap();
    cps.commit("react", "all", Position::START).await.unwrap();
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), reactor, config("react"));
    idle(&mut r).await;
    r.stop().await.unwrap();
    let causes = store.read_stream_vec_for_test(&name("Order-1")).await;
    let emitted = store.read_stream_vec_for_test(&name("Invoice-1")).await;
    assert_eq!(emitted.len(), 2, "reactions were not written twice");
    assert_eq!(emitted[0].causation_id, Some(causes[0].event_id));
    assert_eq!(
        emitted[0].correlation_id,
        Some(corr),
        "the correlation id is copied"
    );
    assert_eq!(emitted[1].causation_id, Some(causes[1].event_id));
    assert_eq!(
        emitted[1].correlation_id,
        Some(causes[1].event_id),
        "no correlation: the cause starts one"
    );
}

trait ReadForTest {
    async fn read_stream_vec_for_test(&self, s: &StreamName) -> Vec<RecordedEvent>;
}

impl ReadForTest for MemoryStore {
    async fn read_stream_vec_for_test(&self, s: &StreamName) -> Vec<RecordedEvent> {
        use annals::EventStoreExt;
        self.read_stream_vec(s, annals::ReadStream::forward())
            .await
            .unwrap()
    }
}

/// The pipeline over the durable stores: every event handled once, in order, and the
/// checkpoint kept in the store's own checkpoint table.
async fn over(store: Arc<dyn EventStore>, cps: Arc<dyn CheckpointStore>) {
    for i in 0..40 {
        let events = (0..3)
            .map(|j| EventData::new("E", format!("{j}").into_bytes()))
            .collect();
        store
            .append(
                &name(&format!("Durable-{}", i % 7)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    }
    let h = Arc::new(Recorder::default());
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), config("durable"));
    idle(&mut r).await;
    for i in 0..7 {
        store
            .append(
                &name(&format!("Durable-{i}")),
                ExpectedVersion::Any,
                vec![EventData::new("E", b"x".to_vec())],
            )
            .await
            .unwrap();
    }
    idle(&mut r).await;
    r.stop().await.unwrap();
    let seen = h.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7);
    for (stream, versions) in &seen {
        let want: Vec<u64> = (0..versions.len() as u64).collect();
        assert_eq!(versions, &want, "{stream}");
    }
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 127);
    store.await_visible().await.unwrap();
    // The checkpoint is at or past the last event (a store may checkpoint a position that
    // is not an event's, as PostgreSQL's horizon), and nothing is left after it.
    let all = store
        .read_all(Position::START, &annals::Filter::all(), 1000)
        .await
        .unwrap();
    let checkpoint = cps
        .load("durable", "all")
        .await
        .unwrap()
        .expect("a checkpoint");
    assert!(checkpoint >= all.events.last().unwrap().position);
    let rest = store
        .read_all(checkpoint, &annals::Filter::all(), 1000)
        .await
        .unwrap();
    assert!(rest.events.is_empty() && rest.end);

    // Holes: three streams truncated and the hidden events scavenged (NATS purged them at
    // once), then one more event per stream. The group resumes from its checkpoint and
    // handles exactly the new events (and the truncations' system events), once, in order;
    // a new group from the start handles exactly what reads show.
    for i in 0..3 {
        store
            .truncate_before(&name(&format!("Durable-{i}")), Version(10))
            .await
            .unwrap();
    }
    let scavenged = store.scavenge(usize::MAX, false).await.unwrap();
    assert!(
        scavenged.events == 30 || store.backend() == "nats",
        "{scavenged:?}"
    );
    let mut heads = Vec::new();
    for i in 0..7 {
        let appended = store
            .append(
                &name(&format!("Durable-{i}")),
                ExpectedVersion::Any,
                vec![EventData::new("E", b"y".to_vec())],
            )
            .await
            .unwrap();
        heads.push(appended.version.get() - 1);
    }
    let h = Arc::new(Recorder::default());
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), config("durable"));
    idle(&mut r).await;
    r.stop().await.unwrap();
    let seen = h.seen.lock().unwrap().clone();
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(seen[&name(&format!("Durable-{i}"))], [*head], "Durable-{i}");
    }
    assert_eq!(seen[&name("Durable-$deleted")], [0, 1, 2]);
    assert_eq!(seen.len(), 8, "{seen:?}");
    let h = Arc::new(Recorder::default());
    let mut r = annals_reactor::spawn(store.clone(), cps.clone(), h.clone(), config("fresh"));
    idle(&mut r).await;
    r.stop().await.unwrap();
    let mut shown: HashMap<StreamName, Vec<u64>> = HashMap::new();
    for e in annals_testkit::conformance::read_everything(&store).await {
        shown.entry(e.stream).or_default().push(e.stream_version);
    }
    assert_eq!(*h.seen.lock().unwrap(), shown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(dir.path().join("a.db")))
            .unwrap();
    over(Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_over_postgres() {
    let server = annals_testkit::postgres::shared();
    let config = annals_postgres::PgConfig::new(server.connection())
        .schema(annals_testkit::postgres::schema_name("reactor"));
    let store = annals_postgres::PgStore::connect(config).await.unwrap();
    store.migrate().await.unwrap();
    over(Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_over_nats() {
    let config = annals_nats::NatsConfig::new(&annals_testkit::nats::shared().url)
        .stream(annals_testkit::nats::stream_name("reactor"));
    let store = annals_nats::NatsStore::connect(config).await.unwrap();
    over(Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_split_a_group_and_one_takes_over_when_the_other_stops() {
    let store = Arc::new(MemoryStore::new());
    let cps = Arc::new(MemoryCheckpoints::new());
    let leases = Arc::new(annals::MemoryLeases::new());
    for i in 0..40 {
        append(&store, &format!("Split-{}", i % 20), 2).await;
    }
    let (ha, hb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let group = |m: &str| annals_reactor::GroupConfig {
        partitions: 8,
        lease_ttl: Duration::from_secs(5),
        renew_interval: Duration::from_millis(50),
        ..annals_reactor::GroupConfig::new(m)
    };
    let a = annals_reactor::join_group(
        store.clone(),
        cps.clone(),
        leases.clone(),
        ha.clone(),
        config("split"),
        group("a"),
    );
    let b = annals_reactor::join_group(
        store.clone(),
        cps.clone(),
        leases.clone(),
        hb.clone(),
        config("split"),
        group("b"),
    );
    // Both end up with half of the partitions.
    let mut held = (a.watch_held(), b.watch_held());
    tokio::time::timeout(WAIT, async {
        while held.0.borrow_and_update().len() != 4 || held.1.borrow_and_update().len() != 4 {
            tokio::select! {
                _ = held.0.changed() => {}
                _ = held.1.changed() => {}
            }
        }
    })
    .await
    .expect("the partitions are shared evenly");
    let (pa, pb) = (a.held(), b.held());
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "{pa:?} and {pb:?} overlap"
    );
    // Every event handled by one of them.
    let total = |h: &Recorder| h.seen.lock().unwrap().values().map(Vec::len).sum::<usize>();
    wait_until("every event is handled", || total(&ha) + total(&hb) >= 80).await;
    // After the sharing settled, a stream's new events go to the holder of its partition.
    append(&store, "Split-0", 1).await; // version 4
    let partition = annals_reactor::Partition::of(&name("Split-0"), 8);
    let (owner, other) = if pa.contains(&partition) {
        (&ha, &hb)
    } else {
        (&hb, &ha)
    };
    let has = |h: &Recorder, s: &str, v: u64| {
        h.seen
            .lock()
            .unwrap()
            .get(&name(s))
            .is_some_and(|vs| vs.contains(&v))
    };
    wait_until("the partition's holder handles it", || {
        has(owner, "Split-0", 4)
    })
    .await;
    assert!(!has(other, "Split-0", 4));
    // a stops (its leases handed back at once); b takes every partition and handles the
    // new events of a's streams too.
    a.stop().await.unwrap();
    for i in 0..20 {
        append(&store, &format!("Split-{i}"), 1).await;
    }
    wait_until("b handles every stream after a stopped", || {
        (0..20).all(|i| has(&hb, &format!("Split-{i}"), if i == 0 { 5 } else { 4 }))
    })
    .await;
    assert_eq!(b.held().len(), 8, "b took over a's partitions");
    b.stop().await.unwrap();
    // Between them, every event of every stream was handled.
    for i in 0..20u64 {
        let stream = name(&format!("Split-{i}"));
        let mut versions: Vec<u64> = [&ha, &hb]
            .iter()
            .flat_map(|h| {
                h.seen
                    .lock()
                    .unwrap()
                    .get(&stream)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        versions.sort_unstable();
        versions.dedup();
        let last = if i == 0 { 5 } else { 4 };
        assert_eq!(versions, (0..=last).collect::<Vec<_>>(), "{stream}");
    }
}

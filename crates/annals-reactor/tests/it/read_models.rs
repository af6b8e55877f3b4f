//! Read models through the pipeline, fed from another store than they live in: exactly
//! once under a checkpoint reset, poison streams parked while the others flow, and a group
//! whose members read each event once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::catch_up_stream;
use annals::{
    CheckpointStore, EventStore, Filter, MemoryStore, Partition, Position, ReadModelStore,
    StreamName,
};
use annals_reactor::{Backoff, FailurePolicy, PipelineConfig, Project};
use annals_testkit::read_models::{append_amounts, counts_row, fold_hash, Counts};

use crate::{idle, name, wait_until};

fn pipeline(group: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(group);
    c.batch_size = 100;
    c.checkpoint_interval = Duration::from_millis(20);
    c.backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(10));
    c
}

fn sqlite(dir: &tempfile::TempDir, file: &str) -> annals_sqlite::SqliteStore {
    annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(dir.path().join(file)))
        .unwrap()
}

async fn postgres(prefix: &str) -> annals_postgres::PgStore {
    let server = annals_testkit::postgres::shared();
    let config = annals_postgres::PgConfig::new(server.connection())
        .schema(annals_testkit::postgres::schema_name(prefix));
    let store = annals_postgres::PgStore::connect(config).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn expected(amounts: &[i64]) -> Option<(i64, i64, i64, i64)> {
    Some((
        amounts.len() as i64,
        amounts.iter().sum(),
        fold_hash(amounts.iter().copied()),
        1,
    ))
}

/// Every stream's events projected once, even when the checkpoint is reset and everything
/// is delivered again.
async fn exactly_once_through_the_pipeline<R: ReadModelStore>(
    events: Arc<dyn EventStore>,
    rm: Arc<R>,
) {
    let mut amounts: HashMap<StreamName, Vec<i64>> = HashMap::new();
    for i in 0..60i64 {
        let s = name(&format!("Acct-{}", i % 6));
        append_amounts(&*events, &s, &[i]).await;
        amounts.entry(s).or_default().push(i);
    }
    let handler = Arc::new(
        Project::new(Arc::clone(&events), Arc::clone(&rm), Counts::new())
            .await
            .unwrap(),
    );
    let checkpoints: Arc<dyn CheckpointStore> = rm.clone();
    for round in 0..2 {
        checkpoints
            .commit("counts", "all", Position::START)
            .await
            .unwrap();
        let mut r = annals_reactor::spawn(
            Arc::clone(&events),
            Arc::clone(&checkpoints),
            handler.clone(),
            pipeline("counts"),
        );
        idle(&mut r).await;
        r.stop().await.unwrap();
        for (s, a) in &amounts {
            assert_eq!(counts_row(&*rm, s).await, expected(a), "round {round}, {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_events_project_into_sqlite_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    exactly_once_through_the_pipeline(
        Arc::new(MemoryStore::new()),
        Arc::new(sqlite(&dir, "rm.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_events_project_into_postgres_exactly_once() {
    let store = Arc::new(postgres("rmpg").await);
    exactly_once_through_the_pipeline(store.clone(), store).await;
}

/// One stream whose apply always fails and 300 others: the 300 are projected, the failing
/// one is parked (recorded with its cause) and the checkpoint passes it; once the cause is
/// gone, a replay projects it exactly once and the pipeline takes it up again.
async fn a_poison_stream_is_parked_and_replayed<R: ReadModelStore>(
    events: Arc<dyn EventStore>,
    rm: Arc<R>,
) {
    let poison = name("Acct-poison");
    append_amounts(&*events, &poison, &[1, -13, 2]).await;
    let mut amounts = Vec::new();
    for i in 0..300i64 {
        let s = name(&format!("Acct-{i}"));
        append_amounts(&*events, &s, &[i, i + 1]).await;
        amounts.push((s, vec![i, i + 1]));
    }
    let poisoned = Arc::new(Counts {
        schema: 1,
        poison: Some(-13),
    });
    let handler = Arc::new(
        Project::new(Arc::clone(&events), Arc::clone(&rm), poisoned)
            .await
            .unwrap(),
    );
    let checkpoints: Arc<dyn CheckpointStore> = rm.clone();
    let config = pipeline("poison").on_failure(FailurePolicy::Park { after: 3 });
    let mut r = annals_reactor::spawn(
        Arc::clone(&events),
        Arc::clone(&checkpoints),
        handler,
        config,
    );
    idle(&mut r).await;
    for (s, a) in &amounts {
        assert_eq!(counts_row(&*rm, s).await, expected(a), "{s} is projected");
    }
    let stats = r.stats();
    assert_eq!(stats.parked.len(), 1, "{:?}", stats.parked);
    assert!(stats.failing.is_empty(), "{:?}", stats.failing);
    let stored = checkpoints.parked(Some("poison")).await.unwrap();
    assert_eq!(stored.len(), 1);
    let p = &stored[0];
    assert_eq!(p.stream, poison);
    assert_eq!((p.from.get(), p.to.get(), p.attempts), (0, 3, 3));
    assert!(
        p.first_error.contains("amount -13 is poison") && p.first_error.contains("Acct-poison"),
        "the cause is kept: {}",
        p.first_error
    );
    // The checkpoint passes the parked stream's events.
    events.await_visible().await.unwrap();
    let head = annals_testkit::conformance::read_everything(&events)
        .await
        .last()
        .unwrap()
        .position;
    wait_until("the checkpoint passes the parked stream", || {
        r.stats().checkpoint >= head
    })
    .await;
    assert_eq!(
        counts_row(&*rm, &poison).await,
        None,
        "nothing of it applied"
    );
    // The cause removed (fixed code), a replay projects it once; the pipeline sees it
    // unparked and handles its next events.
    let fixed = Counts::new();
    assert_eq!(
        catch_up_stream(&*events, &*rm, &fixed, &poison)
            .await
            .unwrap(),
        3
    );
    assert!(checkpoints.unpark("poison", &poison).await.unwrap());
    assert_eq!(
        catch_up_stream(&*events, &*rm, &fixed, &poison)
            .await
            .unwrap(),
        0,
        "a second replay applies nothing"
    );
    assert_eq!(counts_row(&*rm, &poison).await, expected(&[1, -13, 2]));
    wait_until("the pipeline unparks the stream", || {
        r.stats().parked.is_empty()
    })
    .await;
    append_amounts(&*events, &poison, &[5]).await;
    idle(&mut r).await;
    assert_eq!(counts_row(&*rm, &poison).await, expected(&[1, -13, 2, 5]));
    r.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_stream_is_parked_in_a_sqlite_read_model_fed_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    a_poison_stream_is_parked_and_replayed(
        Arc::new(MemoryStore::new()),
        Arc::new(sqlite(&dir, "rm.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_stream_is_parked_in_a_postgres_read_model_fed_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_poison_stream_is_parked_and_replayed(
        Arc::new(sqlite(&dir, "events.db")),
        Arc::new(postgres("poison").await),
    )
    .await;
}

/// A read-model database that goes away for a while: its streams fail while it is down,
/// transiently, and are never parked for it; once it is back, everything is projected once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_of_the_read_model_parks_nothing() {
    let server = Arc::new(
        tokio::task::spawn_blocking(annals_testkit::postgres::PgServer::start)
            .await
            .unwrap()
            .expect("a private PostgreSQL server"),
    );
    let blocking = |f: fn(&annals_testkit::postgres::PgServer) -> Result<(), String>| {
        let server = Arc::clone(&server);
        tokio::task::spawn_blocking(move || f(&server))
    };
    let config = annals_postgres::PgConfig::new(server.connection())
        .schema(annals_testkit::postgres::schema_name("outage"));
    let rm = Arc::new(annals_postgres::PgStore::connect(config).await.unwrap());
    rm.migrate().await.unwrap();
    let events: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let handler = Arc::new(
        Project::new(Arc::clone(&events), Arc::clone(&rm), Counts::new())
            .await
            .unwrap(),
    );
    let config = pipeline("outage").on_failure(FailurePolicy::Park { after: 2 });
    let mut r = annals_reactor::spawn(Arc::clone(&events), rm.clone(), handler, config);
    let mut amounts: HashMap<StreamName, Vec<i64>> = HashMap::new();
    for i in 0..20i64 {
        let s = name(&format!("Acct-{}", i % 4));
        append_amounts(&*events, &s, &[i]).await;
        amounts.entry(s).or_default().push(i);
    }
    idle(&mut r).await;
    blocking(annals_testkit::postgres::PgServer::stop)
        .await
        .unwrap()
        .expect("the server stops");
    for i in 20..40i64 {
        let s = name(&format!("Acct-{}", i % 4));
        append_amounts(&*events, &s, &[i]).await;
        amounts.entry(s).or_default().push(i);
    }
    // Well past the parking threshold, and still only failing.
    wait_until("the streams fail while the database is down", || {
        r.stats().failing.iter().any(|f| f.failures >= 4)
    })
    .await;
    assert!(r.stats().parked.is_empty(), "{:?}", r.stats().parked);
    blocking(annals_testkit::postgres::PgServer::start_again)
        .await
        .unwrap()
        .expect("the server starts again");
    idle(&mut r).await;
    let stats = r.stats();
    assert!(
        stats.parked.is_empty() && stats.failing.is_empty(),
        "{stats:?}"
    );
    for (s, a) in &amounts {
        assert_eq!(counts_row(&*rm, s).await, expected(a), "{s}");
    }
    r.stop().await.unwrap();
}

/// Counts the events `read_all` returns, at the store.
struct Counted {
    inner: Arc<dyn EventStore>,
    events: AtomicU64,
}

#[async_trait::async_trait]
impl EventStore for Counted {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> annals::Capabilities {
        self.inner.capabilities()
    }
    async fn append(
        &self,
        stream: &StreamName,
        expected: annals::ExpectedVersion,
        events: Vec<annals::EventData>,
    ) -> annals::Result<annals::AppendResult> {
        self.inner.append(stream, expected, events).await
    }
    async fn stream_version(&self, stream: &StreamName) -> annals::Result<annals::Version> {
        self.inner.stream_version(stream).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: annals::ReadStream,
    ) -> futures::stream::BoxStream<'a, annals::Result<annals::RecordedEvent>> {
        self.inner.read_stream(stream, options)
    }
    async fn read_all(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> annals::Result<annals::AllPage> {
        let page = self.inner.read_all(from, filter, limit).await?;
        self.events
            .fetch_add(page.events.len() as u64, Ordering::SeqCst);
        Ok(page)
    }
    async fn await_visible(&self) -> annals::Result<()> {
        self.inner.await_visible().await
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.changes()
    }
}

/// Records which member handled which event.
#[derive(Default)]
struct Seen(Mutex<Vec<(StreamName, u64)>>);

#[async_trait::async_trait]
impl annals_reactor::Handler for Seen {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[annals::RecordedEvent],
    ) -> Result<annals::Version, annals_reactor::HandlerError> {
        let mut seen = self.0.lock().unwrap();
        seen.extend(events.iter().map(|e| (stream.clone(), e.stream_version)));
        Ok(events
            .last()
            .map_or(annals::Version(0), |e| e.next_version()))
    }
}

/// Three members of one group over 12 partitions, on PostgreSQL: the partition filter is
/// pushed into the store's read, so each event is read from the store once (not once per
/// partition a member holds) and handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_over_twelve_partitions_read_each_event_once() {
    let pg = Arc::new(postgres("group").await);
    let counted = Arc::new(Counted {
        inner: pg.clone(),
        events: AtomicU64::new(0),
    });
    let store: Arc<dyn EventStore> = counted.clone();
    let members: Vec<_> = (0..3)
        .map(|m| {
            let seen = Arc::new(Seen::default());
            let group = annals_reactor::GroupConfig {
                partitions: 12,
                lease_ttl: Duration::from_secs(10),
                renew_interval: Duration::from_millis(50),
                ..annals_reactor::GroupConfig::new(format!("m{m}"))
            };
            let member = annals_reactor::join_group(
                Arc::clone(&store),
                pg.clone(),
                pg.clone(),
                seen.clone(),
                pipeline("readonce"),
                group,
            );
            (member, seen)
        })
        .collect();
    let mut held: Vec<_> = members.iter().map(|(m, _)| m.watch_held()).collect();
    tokio::time::timeout(crate::WAIT, async {
        loop {
            if held.iter_mut().all(|h| h.borrow_and_update().len() == 4) {
                break;
            }
            let (a, rest) = held.split_at_mut(1);
            let (b, c) = rest.split_at_mut(1);
            tokio::select! {
                _ = a[0].changed() => {}
                _ = b[0].changed() => {}
                _ = c[0].changed() => {}
            }
        }
    })
    .await
    .expect("the 12 partitions are shared 4, 4, 4");
    let before = counted.events.load(Ordering::SeqCst);
    assert_eq!(before, 0, "nothing was read before the appends");
    let mut total = 0u64;
    for i in 0..120 {
        append_amounts(&*pg, &name(&format!("Read-{i}")), &[1, 2, 3]).await;
        total += 3;
    }
    let handled = || {
        members
            .iter()
            .map(|(_, s)| s.0.lock().unwrap().len() as u64)
            .sum::<u64>()
    };
    wait_until("every event is handled", || handled() >= total).await;
    // Each member handled only its partitions' streams, each event once.
    let mut all = Vec::new();
    for (m, seen) in &members {
        let mine = m.held();
        for (s, v) in seen.0.lock().unwrap().iter() {
            assert!(
                mine.contains(&Partition::of(s, 12)),
                "{s} handled by a non-holder"
            );
            all.push((s.clone(), *v));
        }
    }
    all.sort();
    let len = all.len();
    all.dedup();
    assert_eq!(len, all.len(), "an event was handled twice");
    assert_eq!(all.len() as u64, total);
    assert_eq!(
        counted.events.load(Ordering::SeqCst),
        total,
        "each event was read from the store once"
    );
    for (m, _) in members {
        m.stop().await.unwrap();
    }
}

/// A projection started after events were hidden (a soft-deleted stream written again, a
/// truncated one) projects the events still shown and parks nothing.
async fn hidden_events_are_skipped_by_a_new_projection<R: ReadModelStore>(
    events: Arc<dyn EventStore>,
    rm: Arc<R>,
) {
    let (soft, cut) = (name("Acct-soft"), name("Acct-cut"));
    append_amounts(&*events, &soft, &[1, 2]).await;
    append_amounts(&*events, &cut, &[1, 2, 3]).await;
    events
        .delete_stream(
            &soft,
            annals::ExpectedVersion::Any,
            annals::DeleteMode::Soft,
        )
        .await
        .unwrap();
    events
        .truncate_before(&cut, annals::Version(2))
        .await
        .unwrap();
    append_amounts(&*events, &soft, &[5]).await;
    let handler = Arc::new(
        Project::new(Arc::clone(&events), Arc::clone(&rm), Counts::new())
            .await
            .unwrap(),
    );
    let checkpoints: Arc<dyn CheckpointStore> = rm.clone();
    let config = pipeline("hidden").on_failure(FailurePolicy::Park { after: 3 });
    let mut r = annals_reactor::spawn(Arc::clone(&events), checkpoints, handler, config);
    idle(&mut r).await;
    assert!(r.stats().parked.is_empty(), "{:?}", r.stats().parked);
    assert_eq!(counts_row(&*rm, &soft).await, expected(&[5]));
    assert_eq!(counts_row(&*rm, &cut).await, expected(&[3]));
    // Later events are applied on top.
    append_amounts(&*events, &cut, &[4]).await;
    idle(&mut r).await;
    assert_eq!(counts_row(&*rm, &cut).await, expected(&[3, 4]));
    r.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_events_are_skipped_by_a_new_sqlite_projection() {
    let dir = tempfile::tempdir().unwrap();
    hidden_events_are_skipped_by_a_new_projection(
        Arc::new(MemoryStore::new()),
        Arc::new(sqlite(&dir, "rm.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_events_are_skipped_by_a_new_postgres_projection() {
    let store = Arc::new(postgres("rmhidden").await);
    hidden_events_are_skipped_by_a_new_projection(store.clone(), store).await;
}

//! The transaction-id horizon under concurrent writers, open and rolled-back transactions,
//! and faults.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    EventData, EventStore, ExpectedVersion, Filter, Position, RecordedEvent, StreamName,
    SubscribeExt, SubscribeOptions, Subscription, Uuid,
};
use annals_postgres::{PgConfig, PgStore};
use annals_testkit::postgres::{self, PgServer};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(60);

fn options() -> SubscribeOptions {
    SubscribeOptions {
        batch_size: 500,
        poll_interval: Duration::from_millis(100),
        ..SubscribeOptions::all()
    }
}

async fn next(sub: &mut Subscription) -> RecordedEvent {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("subscription: {other:?}"),
    }
}

async fn read_everything(store: &PgStore) -> Vec<RecordedEvent> {
    let options = annals::FeedOptions::to_end(Filter::all()).page_size(5000);
    annals::Feed::new(std::sync::Arc::new(store.clone()), Position::START, options)
        .events()
        .map(|e| e.unwrap())
        .collect()
        .await
}

/// A migrated store on its own server: for tests that hold transactions open, which would
/// hold back read-all for every other test on a shared server (the horizon is cluster-wide).
async fn private() -> (PgStore, PgServer) {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .expect("a private server");
    let config = PgConfig::new(server.connection())
        .schema("private")
        .pool_size(24);
    let store = PgStore::connect(config).await.unwrap();
    store.migrate().await.unwrap();
    (store, server)
}

/// Every id once, and every stream in version order.
#[track_caller]
fn check_delivery(name: &str, got: &[RecordedEvent], all: &[RecordedEvent]) {
    let ids: HashSet<Uuid> = got.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), got.len(), "{name}: an event was delivered twice");
    let want: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    let missing = want.difference(&ids).count();
    let extra = ids.difference(&want).count();
    assert!(
        missing == 0 && extra == 0,
        "{name}: {missing} stored events not delivered, {extra} delivered events not stored"
    );
    let mut next: HashMap<&StreamName, u64> = HashMap::new();
    for e in got {
        let v = next.entry(&e.stream).or_default();
        assert_eq!(e.stream_version, *v, "{name}: {} out of order", e.stream);
        *v += 1;
    }
    assert!(
        got.windows(2).all(|w| w[0].position < w[1].position),
        "{name}: positions not increasing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_sixteen_slow_writers_and_four_subscribers_see_everything_once_in_order() {
    const TARGET: usize = 20_000;
    let (store, _server) = private().await;
    let store = Arc::new(store);
    let appended = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let (store, appended) = (store.clone(), appended.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w + 1);
                while appended.load(Ordering::SeqCst) < TARGET {
                    let stream = StreamName::new(format!("Soak-{}", rng.u64(..300))).unwrap();
                    let n = rng.u64(1..=5);
                    let events: Vec<EventData> = (0..n)
                        .map(|i| EventData::new("Soaked", format!("{w}.{i}").into_bytes()))
                        .collect();
                    let pause = rng.u32(..=20) as f64 / 1000.0;
                    // A transaction that lost the id race on its stream is retried whole.
                    for attempt in 0.. {
                        let mut tx = store.projection().await.unwrap();
                        match tx
                            .append(&stream, ExpectedVersion::Any, events.clone())
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if attempt < 5 => {
                                eprintln!("writer {w}: {e}; retrying");
                                continue;
                            }
                            Err(e) => panic!("writer {w}: {e}"),
                        }
                        tx.client()
                            .execute("SELECT pg_sleep($1)", &[&pause])
                            .await
                            .unwrap();
                        tx.commit_only().await.unwrap();
                        break;
                    }
                    appended.fetch_add(n as usize, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // The total, once every writer has finished (0 until then): readers stop at it.
    let (total_tx, total) = tokio::sync::watch::channel(0usize);
    let finished = |total: &tokio::sync::watch::Receiver<usize>, got: usize| {
        let t = *total.borrow();
        t > 0 && got >= t
    };
    // The next event, or `None` when the total became known meanwhile.
    async fn next_or_total(
        sub: &mut Subscription,
        total: &mut tokio::sync::watch::Receiver<usize>,
    ) -> Option<RecordedEvent> {
        tokio::select! {
            e = next(sub) => Some(e),
            _ = total.changed() => None,
        }
    }
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, mut total) = (store.clone(), total.clone());
            tokio::spawn(async move {
                let mut sub = store.subscribe(Position::START, options());
                let mut got = Vec::new();
                while !finished(&total, got.len()) {
                    got.extend(next_or_total(&mut sub, &mut total).await);
                }
                got
            })
        })
        .collect();
    let resumer = {
        let (store, mut total) = (store.clone(), total.clone());
        tokio::spawn(async move {
            let mut got: Vec<RecordedEvent> = Vec::new();
            let mut checkpoint = Position::START;
            let mut resumes = 0;
            while !finished(&total, got.len()) {
                let mut sub = store.subscribe(checkpoint, options());
                let chunk = 1500 + (resumes * 397) % 1000;
                for _ in 0..chunk {
                    if finished(&total, got.len()) {
                        break;
                    }
                    if let Some(e) = next_or_total(&mut sub, &mut total).await {
                        checkpoint = e.position;
                        got.push(e);
                    }
                }
                resumes += 1;
            }
            (got, resumes)
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let written = appended.load(Ordering::SeqCst);
    total_tx.send_replace(written);
    store.await_visible().await.unwrap();
    let all = read_everything(&store).await;
    assert_eq!(all.len(), written);
    assert!(written >= TARGET);
    for (i, r) in readers.into_iter().enumerate() {
        check_delivery(&format!("subscriber {i}"), &r.await.unwrap(), &all);
    }
    let (got, resumes) = resumer.await.unwrap();
    check_delivery("resuming subscriber", &got, &all);
    assert!(
        resumes >= 5,
        "the resuming subscriber resumed {resumes} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_leaves_no_stall() {
    let (store, _server) = private().await;
    let store = Arc::new(store);
    let mut sub = store.subscribe(Position::START, options());
    {
        let mut tx = store.projection().await.unwrap();
        tx.append(
            &StreamName::new("Rb-1").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::new("Gone", b"0".to_vec())],
        )
        .await
        .unwrap();
        // Dropped: rolled back.
    }
    store
        .append(
            &StreamName::new("Rb-2").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::new("Kept", b"1".to_vec())],
        )
        .await
        .unwrap();
    let e = next(&mut sub).await;
    assert_eq!(e.event_type, "Kept");
    assert_eq!(store.horizon_lag().await.unwrap().held_back_events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_transaction_delays_delivery_but_loses_nothing() {
    let (store, _server) = private().await;
    let store = Arc::new(store);
    let mut slow = store.projection().await.unwrap();
    slow.append(
        &StreamName::new("Slow-1").unwrap(),
        ExpectedVersion::Any,
        vec![EventData::new("Early", b"0".to_vec())],
    )
    .await
    .unwrap();
    store
        .append(
            &StreamName::new("Fast-1").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::new("Late", b"1".to_vec())],
        )
        .await
        .unwrap();
    // The committed event sits behind the open transaction: not visible yet, and measured.
    let page = store
        .read_all(Position::START, &Filter::all(), 10)
        .await
        .unwrap();
    assert!(
        page.events.is_empty(),
        "nothing may pass the open transaction: {:?}",
        page.events
    );
    let lag = store.horizon_lag().await.unwrap();
    assert_eq!(lag.held_back_events, 1);
    assert!(lag.oldest_transaction_secs.is_some());
    let mut sub = store.subscribe(Position::START, options());
    slow.commit_only().await.unwrap();
    let (a, b) = (next(&mut sub).await, next(&mut sub).await);
    assert_eq!(
        (a.event_type.as_str(), b.event_type.as_str()),
        ("Early", "Late"),
        "ordered by transaction"
    );
    assert_eq!(store.horizon_lag().await.unwrap().held_back_events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_and_killed_connections_lose_nothing_and_never_hang() {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .expect("a private server");
    let config = PgConfig::new(server.connection())
        .schema("faults")
        .pool_size(8);
    let store = Arc::new(PgStore::connect(config).await.unwrap());
    store.migrate().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Uuid>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, stop, acked) = (store.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let e = EventData::new("Fault", format!("{w}.{i}").into_bytes());
                    let id = e.event_id;
                    let stream = StreamName::new(format!("Fault-{w}")).unwrap();
                    match tokio::time::timeout(
                        Duration::from_secs(30),
                        store.append(&stream, ExpectedVersion::Any, vec![e]),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            ok += 1;
                            acked.lock().unwrap().push(id);
                        }
                        Ok(Err(_)) => failed += 1,
                        Err(_) => panic!("writer {w}: an append hung for 30 s"),
                    }
                    if failed > 0 && failed % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut sub = store.subscribe(Position::START, options());
    let mut got = Vec::new();
    let count = |acked: &std::sync::Mutex<Vec<Uuid>>| acked.lock().unwrap().len();
    while count(&acked) < 200 {
        got.push(next(&mut sub).await);
    }
    let url = server.url.clone();
    let restart = tokio::task::spawn_blocking(move || server.restart().map(|()| server));
    let server = restart.await.unwrap().expect("pg_ctl restart");
    let before = count(&acked);
    while count(&acked) < before + 200 {
        got.push(next(&mut sub).await);
    }
    // Kill every other connection: the subscription's reads, the LISTEN, the pool.
    let admin = postgres::connect(&url).await;
    admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()", &[])
        .await
        .unwrap();
    let before = count(&acked);
    while count(&acked) < before + 200 {
        got.push(next(&mut sub).await);
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = 0;
    for w in writers {
        let (ok, failed) = w.await.unwrap();
        assert!(ok > 0);
        failures += failed;
    }
    store.await_visible().await.unwrap();
    let all = read_everything(&store).await;
    while got.len() < all.len() {
        got.push(next(&mut sub).await);
    }
    check_delivery("subscriber across faults", &got, &all);
    let stored: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    let acked = acked.lock().unwrap();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged append was lost"
    );
    assert!(
        failures > 0,
        "the restart made some appends fail (with an error, not a hang)"
    );
    drop(server);
}

/// The head position is the feed's last event with transaction ids compared as numbers:
/// written in a transaction whose id has one digit more than the one before ("1000" after
/// "999"), it is still the head. (Ordered by their text, the head stayed at the last event
/// below the boundary for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_position_orders_transaction_ids_as_numbers() {
    let (store, server) = private().await;
    let client = postgres::connect(&server.url).await;
    let one = || vec![EventData::new("A", b"1".to_vec())];
    let stream = StreamName::new("Head-1").unwrap();
    let first = store
        .append(&stream, ExpectedVersion::Any, one())
        .await
        .unwrap();
    // Use up the transaction ids below the next power of ten: every subtransaction that
    // writes takes one.
    let next: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    let boundary = std::iter::successors(Some(10i64), |b| Some(b * 10))
        .find(|b| *b > next)
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE burn (x int); \
             DO $$ BEGIN FOR i IN 1..{} LOOP \
               BEGIN INSERT INTO burn VALUES (i); RAISE EXCEPTION 'burnt'; \
               EXCEPTION WHEN raise_exception THEN NULL; END; \
             END LOOP; END $$",
            boundary - next
        ))
        .await
        .unwrap();
    let second = store
        .append(&stream, ExpectedVersion::Any, one())
        .await
        .unwrap();
    let tx = |p: Position| (annals::backend::raw_position(p) >> 64) as i64;
    assert!(
        tx(first.last_position) < boundary && tx(second.last_position) >= boundary,
        "the appends straddle {boundary}: {} and {}",
        tx(first.last_position),
        tx(second.last_position)
    );
    let store: Arc<dyn EventStore> = Arc::new(store);
    let all = annals_testkit::conformance::read_everything(&store).await;
    assert_eq!(all.last().map(|e| e.position), Some(second.last_position));
    assert_eq!(
        store.head_position().await.unwrap(),
        Some(second.last_position)
    );
}

//! Faults: the stream's leader killed under load on a private 3-node cluster; messages
//! published to the store's subjects by something other than Annals.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{
    subscribe, EventData, EventStore, ExpectedVersion, Position, RecordedEvent, StreamName,
    SubscribeOptions, Uuid, Version,
};
use annals_nats::{NatsConfig, NatsStore};
use annals_testkit::eventually;
use annals_testkit::nats::NatsCluster;
use futures::StreamExt;

const WRITERS: usize = 8;
const STREAMS: u64 = 20;
const KILLS: usize = 5;

async fn connect(cluster: &NatsCluster, stream: &str) -> NatsStore {
    let mut config = NatsConfig::with_servers(&cluster.urls)
        .stream(stream)
        .replicas(3);
    config.timeout = Duration::from_secs(2);
    // The cluster elects its JetStream leader after it starts.
    eventually(
        "the cluster to take a stream",
        Duration::from_secs(90),
        || async { NatsStore::connect(config.clone()).await.ok() },
    )
    .await
}

/// Waits (bounded) until at least `n` events are acknowledged; if they never are, fails
/// with what each node says of the stream and the end of each node's log.
async fn acked_at_least(
    acked: &Mutex<Vec<Uuid>>,
    n: usize,
    what: &str,
    cluster: &NatsCluster,
    stream: &str,
) {
    let within = Duration::from_secs(120);
    let reached = tokio::time::timeout(
        within,
        eventually(what, Duration::from_secs(3600), || {
            let reached = acked.lock().unwrap().len() >= n;
            async move { reached.then_some(()) }
        }),
    )
    .await;
    if reached.is_err() {
        panic!(
            "timed out after {within:?} waiting for {what}\n{}",
            diagnose(cluster, stream).await
        );
    }
}

/// What each node says of `stream` (its leader and replicas), and each node's last log
/// lines.
async fn diagnose(cluster: &NatsCluster, stream: &str) -> String {
    let mut out = String::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let info = tokio::time::timeout(Duration::from_secs(5), async {
            let client = async_nats::connect(&node.url)
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let mut handle = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let info = handle.info().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(format!("{:?}", info.cluster))
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        out += &format!(
            "node {i} ({}): stream cluster {info:?}\n{}\n",
            cluster.names[i],
            node.log_tail(40)
        );
    }
    out
}

/// Whether `stream` has a leader and every other node is a current replica, asked of any
/// node that answers.
async fn healthy(cluster: &NatsCluster, stream: &str) -> Option<()> {
    let client = async_nats::connect(cluster.urls.as_slice()).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut handle = js.get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    let cluster_info = info.cluster.as_ref()?;
    cluster_info.leader.as_ref()?;
    let current = cluster_info
        .replicas
        .iter()
        .filter(|r| r.current && !r.offline)
        .count();
    (current + 1 == cluster.nodes.len()).then_some(())
}

/// The index of the node leading `stream`, asked of any node that answers.
async fn leader(cluster: &NatsCluster, stream: &str) -> Option<usize> {
    let client = async_nats::connect(cluster.urls.as_slice()).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut handle = js.get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    let name = info.cluster.as_ref()?.leader.clone()?;
    cluster.names.iter().position(|n| *n == name)
}

/// 8 writers append to random streams while a subscription follows the feed; the stream's
/// leader is SIGKILLed and restarted 5 times. Writers retry a failed append with the same
/// event ids. Afterwards every acknowledged event is stored exactly once, versions are
/// dense, and the subscription saw every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kills_lose_and_duplicate_nothing() {
    let cluster = NatsCluster::start(3).expect("a 3-node cluster");
    let name = "leaderkill";
    let store = Arc::new(connect(&cluster, name).await);
    let seen = Arc::new(Mutex::new(Vec::<RecordedEvent>::new()));
    let follower = {
        let (store, seen) = (Arc::clone(&store), Arc::clone(&seen));
        tokio::spawn(async move {
            let options = SubscribeOptions {
                poll_interval: Duration::from_millis(50),
                ..SubscribeOptions::default()
            };
            let mut live = subscribe(store as Arc<dyn EventStore>, Position::START, options);
            while let Some(e) = live.next().await {
                if let Ok(e) = e {
                    seen.lock().unwrap().push(e);
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, stop, acked) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w as u64 + 1);
                let mut retries = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let stream = StreamName::new(format!("Kill-{}", rng.u64(..STREAMS))).unwrap();
                    let batch: Vec<EventData> = (0..rng.u64(1..=3))
                        .map(|i| {
                            EventData::new("Wrote", format!("{{\"w\":{w},\"i\":{i}}}").into_bytes())
                        })
                        .collect();
                    // The same batch (same ids) until it is acknowledged; the errors seen
                    // on the way are kept, to say why if it never is.
                    let mut attempts = 0u64;
                    let errors = Mutex::new(Vec::<String>::new());
                    let waited = tokio::time::timeout(
                        Duration::from_secs(120),
                        eventually(
                            "an append to be acknowledged",
                            Duration::from_secs(3600),
                            || {
                                attempts += 1;
                                let (store, stream, batch) = (&store, &stream, batch.clone());
                                let errors = &errors;
                                async move {
                                    match store.append(stream, ExpectedVersion::Any, batch).await {
                                        Ok(r) => Some(r),
                                        Err(e) => {
                                            let mut errors = errors.lock().unwrap();
                                            if errors.last() != Some(&e.to_string()) {
                                                errors.push(e.to_string());
                                            }
                                            None
                                        }
                                    }
                                }
                            },
                        ),
                    )
                    .await;
                    if waited.is_err() {
                        let errors = errors.lock().unwrap();
                        let first = &errors[..errors.len().min(5)];
                        let last = &errors[errors.len().saturating_sub(5)..];
                        panic!(
                            "an append to {stream} unacknowledged after 120 s and {attempts} \
                             attempts; first errors {first:?}, last errors {last:?}"
                        );
                    }
                    retries += attempts - 1;
                    acked
                        .lock()
                        .unwrap()
                        .extend(batch.iter().map(|e| e.event_id));
                }
                retries
            })
        })
        .collect();

    for _ in 0..KILLS {
        let before = acked.lock().unwrap().len();
        // Wait for progress since the last kill (bounded), then kill the current leader.
        acked_at_least(
            &acked,
            before + 50,
            "progress before a kill",
            &cluster,
            name,
        )
        .await;
        let node = eventually("a stream leader", Duration::from_secs(60), || {
            leader(&cluster, name)
        })
        .await;
        cluster.nodes[node].kill().unwrap();
        let after_kill = acked.lock().unwrap().len();
        acked_at_least(
            &acked,
            after_kill + 50,
            "writers to resume after a kill",
            &cluster,
            name,
        )
        .await;
        cluster.nodes[node].start_again().unwrap();
        // As in a rolling restart: the next kill waits until the node is back and current.
        let back = tokio::time::timeout(
            Duration::from_secs(120),
            eventually(
                "the restarted node to be a current replica",
                Duration::from_secs(3600),
                || healthy(&cluster, name),
            ),
        )
        .await;
        if back.is_err() {
            panic!(
                "the restarted node did not become a current replica within 120 s\n{}",
                diagnose(&cluster, name).await
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut retries = 0;
    for w in writers {
        retries += w.await.unwrap();
    }
    assert!(retries > 0, "the kills were felt by the writers");

    // Stored exactly once, versions dense.
    let everything =
        annals_testkit::conformance::read_everything(&(Arc::clone(&store) as Arc<dyn EventStore>))
            .await;
    let acked: Vec<Uuid> = acked.lock().unwrap().clone();
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for e in &everything {
        *counts.entry(e.event_id).or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 1), "an event stored twice");
    let stored: HashSet<Uuid> = counts.keys().copied().collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged event is missing"
    );
    let mut versions: HashMap<&StreamName, u64> = HashMap::new();
    for e in &everything {
        let next = versions.entry(&e.stream).or_default();
        assert_eq!(
            e.stream_version, *next,
            "versions of {} are dense",
            e.stream
        );
        *next += 1;
    }
    // The subscription saw them all, once, in order.
    let total = everything.len();
    eventually(
        "the subscription to catch up",
        Duration::from_secs(60),
        || {
            let caught_up = seen.lock().unwrap().len() >= total;
            async move { caught_up.then_some(()) }
        },
    )
    .await;
    follower.abort();
    let seen: Vec<Uuid> = seen.lock().unwrap().iter().map(|e| e.event_id).collect();
    let all: Vec<Uuid> = everything.iter().map(|e| e.event_id).collect();
    assert_eq!(seen, all, "the subscription saw every event once, in order");
}

/// Writers append while all three nodes are SIGKILLed at once; after a restart of the
/// whole cluster, every acknowledged append is there (JetStream syncs every write before
/// acknowledging it: `sync_interval: always`), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_crash_loses_no_acknowledged_append() {
    let cluster = NatsCluster::start(3).expect("a 3-node cluster");
    let name = "crash";
    let store = Arc::new(connect(&cluster, name).await);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, stop, acked) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w + 100);
                while !stop.load(Ordering::SeqCst) {
                    let stream = StreamName::new(format!("Crash-{}", rng.u64(..STREAMS))).unwrap();
                    let batch: Vec<EventData> = (0..rng.u64(1..=3))
                        .map(|_| EventData::new("Wrote", b"{}".to_vec()))
                        .collect();
                    if store
                        .append(&stream, ExpectedVersion::Any, batch.clone())
                        .await
                        .is_ok()
                    {
                        acked
                            .lock()
                            .unwrap()
                            .extend(batch.iter().map(|e| e.event_id));
                    }
                    // Refused while the cluster is down: go on until told to stop.
                }
            })
        })
        .collect();
    acked_at_least(&acked, 300, "progress before the crash", &cluster, name).await;
    for node in &cluster.nodes {
        node.kill().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<Uuid> = acked.lock().unwrap().clone();
    for node in &cluster.nodes {
        node.start_again().unwrap();
    }
    let store: Arc<dyn EventStore> = Arc::new(connect(&cluster, name).await);
    // After a restart the stream's leader is elected again; read once it answers.
    let everything = eventually(
        "reads after the restart",
        Duration::from_secs(120),
        || async { read_all_events(&store).await.ok() },
    )
    .await;
    let stored: HashSet<Uuid> = everything.iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), everything.len(), "an event stored twice");
    let missing = acked.iter().filter(|id| !stored.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged events lost",
        acked.len()
    );
}

/// An append tried while the server is away fails at once as transient, unsent, and is
/// never written: not when the server is back either. (Published then, it would wait in
/// the client's buffer and go out on reconnect, after its caller was told it failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_refused_while_the_server_is_away_is_never_written() {
    let server = tokio::task::spawn_blocking(annals_testkit::nats::NatsServer::start)
        .await
        .unwrap()
        .expect("a server");
    let config =
        NatsConfig::new(server.url.clone()).stream(annals_testkit::nats::stream_name("away"));
    let store = NatsStore::connect(config).await.unwrap();
    let stream = StreamName::new("Away-1").unwrap();
    let event = || vec![EventData::new("Wrote", b"{}".to_vec())];
    store
        .append(&stream, ExpectedVersion::NoStream, event())
        .await
        .unwrap();
    server.kill().unwrap();
    eventually(
        "the client to see the server gone",
        Duration::from_secs(60),
        || async { (!store.is_connected()).then_some(()) },
    )
    .await;
    let refused = store
        .append(&stream, ExpectedVersion::Exact(Version(1)), event())
        .await
        .unwrap_err();
    assert!(refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("was not sent"), "{refused}");
    server.start_again().unwrap();
    eventually("the client back", Duration::from_secs(60), || async {
        store.is_connected().then_some(())
    })
    .await;
    // Written after anything the client still held for the server.
    eventually(
        "an append after the restart",
        Duration::from_secs(60),
        || async {
            store
                .append(
                    &StreamName::new("Away-2").unwrap(),
                    ExpectedVersion::Any,
                    event(),
                )
                .await
                .ok()
        },
    )
    .await;
    let events =
        annals::EventStoreExt::read_stream_vec(&store, &stream, annals::ReadStream::forward())
            .await
            .unwrap();
    assert_eq!(
        events.len(),
        1,
        "the refused append was written: {events:?}"
    );
    store
        .append(&stream, ExpectedVersion::Exact(Version(1)), event())
        .await
        .unwrap();
}

/// Every event, page by page, failing on the first error.
async fn read_all_events(store: &Arc<dyn EventStore>) -> annals::Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, &annals::Filter::all(), 1000).await?;
        out.extend(page.events);
        from = page.next;
        if page.end {
            return Ok(out);
        }
    }
}

/// The child half of [`a_client_killed_in_a_batch_leaves_nothing`]: run as this test binary
/// with `ANNALS_NATS_CHILD=URL STREAM`, it sends the first 5 messages of a 10-message atomic
/// batch to `Partial-1`, says so, and waits to be killed. Run plainly, it has nothing to do.
#[tokio::test]
async fn partial_batch_child() {
    let Ok(spec) = std::env::var("ANNALS_NATS_CHILD") else {
        return;
    };
    let (url, stream) = spec.split_once(' ').expect("URL STREAM");
    let client = async_nats::connect(url).await.unwrap();
    for i in 1..=5 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", "killedmidbatch");
        headers.insert("Nats-Batch-Sequence", i.to_string().as_str());
        client
            .publish_with_headers(
                format!("annals.{stream}.Partial.1"),
                headers,
                format!("part {i}").into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    println!("published");
    // Wait to be killed (the parent sends SIGKILL once it has read the line above).
    std::future::pending::<()>().await;
}

/// A client SIGKILLed in the middle of a multi-event append (its batch never committed)
/// leaves nothing in the stream, and the stream takes appends afterwards as if untouched.
#[tokio::test]
async fn a_client_killed_in_a_batch_leaves_nothing() {
    use std::io::BufRead;
    let server = annals_testkit::nats::shared();
    let name = annals_testkit::nats::stream_name("partial");
    let store = NatsStore::connect(NatsConfig::new(&server.url).stream(&name))
        .await
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "faults::partial_batch_child", "--nocapture"])
        .env("ANNALS_NATS_CHILD", format!("{} {name}", server.url))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let said = tokio::task::spawn_blocking(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("published"))
    })
    .await
    .unwrap();
    assert!(said, "the child sent its half batch");
    child.kill().unwrap();
    child.wait().unwrap();
    let stream = StreamName::new("Partial-1").unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap().get(), 0);
    let page = store
        .read_all(Position::START, &annals::Filter::all(), 100)
        .await
        .unwrap();
    assert!(page.events.is_empty(), "{:?}", page.events);
    let appended = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("Whole", b"{}".to_vec())],
        )
        .await
        .unwrap();
    assert_eq!(appended.version.get(), 1);
    let read =
        annals::EventStoreExt::read_stream_vec(&store, &stream, annals::ReadStream::forward())
            .await
            .unwrap();
    assert_eq!(read.len(), 1);
}

/// A message published to the store's subjects by something other than Annals (a stray
/// `nats pub`) is not skipped as if it were not there: reads and appends that reach it fail
/// at once (not retried as transient), naming it and how to remove it, and write nothing;
/// once removed, the store goes on.
#[tokio::test]
async fn a_message_published_by_something_else_stops_reads_at_it_saying_how_to_remove_it() {
    let store = crate::fresh().await;
    let name = store.config().stream.clone();
    let order = StreamName::new("Order-1").unwrap();
    let event = || vec![EventData::new("Placed", b"{}".to_vec())];
    store
        .append(&order, ExpectedVersion::NoStream, event())
        .await
        .unwrap();
    let js = crate::jetstream().await;
    for subject in ["Order.1", "bad"] {
        js.publish(format!("annals.{name}.{subject}"), "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let says = |e: annals::Error, seq: u64| {
        assert!(!e.is_transient(), "{e:?}");
        let text = annals::error_chain(&e);
        assert!(
            text.contains(&format!("message {seq} of"))
                && text.contains(&format!("nats stream rmm {name} {seq}")),
            "{text}"
        );
    };
    says(
        store
            .read_all(Position::START, &annals::Filter::all(), 100)
            .await
            .unwrap_err(),
        2,
    );
    let read: Vec<_> = store
        .read_stream(&order, Default::default())
        .collect()
        .await;
    says(read.into_iter().find_map(Result::err).unwrap(), 2);
    for expected in [ExpectedVersion::Exact(Version(1)), ExpectedVersion::Any] {
        says(
            store.append(&order, expected, event()).await.unwrap_err(),
            2,
        );
    }
    // Removed, the next stray message is the one named; then nothing stops the store.
    let stream = js.get_stream(&name).await.unwrap();
    assert!(stream.delete_message(2).await.unwrap());
    says(
        store
            .read_all(Position::START, &annals::Filter::all(), 100)
            .await
            .unwrap_err(),
        3,
    );
    assert!(stream.delete_message(3).await.unwrap());
    let feed = store
        .read_all(Position::START, &annals::Filter::all(), 100)
        .await
        .unwrap();
    assert_eq!(feed.events.len(), 1, "{:?}", feed.events);
    let appended = store
        .append(&order, ExpectedVersion::Exact(Version(1)), event())
        .await
        .unwrap();
    assert_eq!(appended.version, Version(2));
    let read: Vec<_> = store
        .read_stream(&order, Default::default())
        .map(|e| e.unwrap().stream_version)
        .collect()
        .await;
    assert_eq!(read, [0, 1]);
}

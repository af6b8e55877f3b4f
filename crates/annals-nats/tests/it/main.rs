//! The NATS JetStream store against the conformance suite, on a throwaway single-node server.

use std::sync::Arc;

use annals_nats::{NatsConfig, NatsStore};
use annals_testkit::{nats, TestStore};

/// A store in a fresh JetStream stream of the shared test server.
pub async fn fresh() -> NatsStore {
    let config = NatsConfig::new(&nats::shared().url).stream(nats::stream_name("t"));
    NatsStore::connect(config)
        .await
        .expect("connect to the test server")
}

/// A JetStream context of its own on the shared test server (to do what Annals does not).
pub(crate) async fn jetstream() -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(&nats::shared().url).await.unwrap())
}

/// A parked stream `Parked-{i}` of `group`.
pub(crate) fn parked(group: &str, i: usize) -> annals::ParkedStream {
    annals::ParkedStream {
        group: group.into(),
        stream: annals::StreamName::new(format!("Parked-{i}")).unwrap(),
        from: annals::Version(0),
        to: annals::Version(1),
        attempts: 1,
        first_error: "failed".into(),
        last_error: "failed".into(),
        parked_at: annals::Timestamp::now(),
        updated_at: annals::Timestamp::now(),
    }
}

/// `n` events of type `E` with an empty object.
fn events(n: usize) -> Vec<annals::EventData> {
    (0..n)
        .map(|_| annals::EventData::new("E", b"{}".to_vec()))
        .collect()
}

/// The versions and ids of `read`, in its order.
fn ids(read: &[annals::RecordedEvent]) -> Vec<(u64, annals::Uuid)> {
    read.iter()
        .map(|e| (e.stream_version, e.event_id))
        .collect()
}

annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(crate::fresh().await)) });

/// A feed page cut short by its byte limit (8 MiB of messages asked per batch, however
/// many events the page asked for) is not the end: `end` is false, and a feed read to the
/// end finds every event. (Before the store set the limit, the server's own, 64 MiB, made
/// a slowly read page close the connection as a slow consumer: the read timed out.)
#[tokio::test]
async fn a_page_cut_short_by_its_byte_limit_is_not_the_end() {
    use annals::{EventData, EventStore, ExpectedVersion, Filter, Position, StreamName};
    let store = fresh().await;
    let stream = StreamName::new("Big-1").unwrap();
    const EVENTS: usize = 30;
    for i in 0..EVENTS {
        let mut data = vec![b'x'; 900_000];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![EventData::new("Big", data)],
            )
            .await
            .unwrap();
    }
    let first = store
        .read_all(Position::START, &Filter::all(), 1000)
        .await
        .unwrap();
    assert!(
        first.events.len() < EVENTS,
        "the byte limit cut the page short ({} events)",
        first.events.len()
    );
    assert!(!first.end, "a page cut short is not the end");
    // A feed read to the end, which stops at the first page that says so.
    let all = annals_testkit::conformance::read_everything(&Arc::new(store)).await;
    let order: Vec<u64> = all
        .iter()
        .map(|e| u64::from_be_bytes(e.data[..8].try_into().unwrap()))
        .collect();
    assert_eq!(
        order,
        (0..EVENTS as u64).collect::<Vec<_>>(),
        "every event, once, in order"
    );
}

mod checkpoints {
    use std::sync::Arc;

    use annals::{CheckpointStore, ParkedStream, StreamName};

    annals_testkit::checkpoint_suite!(|| async {
        let store: Arc<dyn annals::CheckpointStore> = Arc::new(crate::fresh().await);
        (store, ())
    });

    /// More parked streams than one multi-last get answers (1,024) are all listed, by group
    /// and in all, and an unparked one is gone from the next list.
    #[tokio::test]
    async fn more_parked_streams_than_one_get_answers_are_all_listed() {
        let store = crate::fresh().await;
        let records: Vec<ParkedStream> = (0..1_100)
            .map(|i| crate::parked("many", i))
            .chain((0..3).map(|i| crate::parked("few", i)))
            .collect();
        for chunk in records.chunks(50) {
            let parks = chunk.iter().map(|p| store.park(p));
            for parked in futures::future::join_all(parks).await {
                parked.unwrap();
            }
        }
        let names = |list: Vec<ParkedStream>| -> Vec<(String, String)> {
            list.into_iter()
                .map(|p| (p.group, p.stream.as_str().to_owned()))
                .collect()
        };
        let mut expected: Vec<(String, String)> = records
            .iter()
            .map(|p| (p.group.clone(), p.stream.as_str().to_owned()))
            .collect();
        expected.sort();
        assert_eq!(names(store.parked(None).await.unwrap()), expected);
        let many = names(store.parked(Some("many")).await.unwrap());
        assert_eq!(many.len(), 1_100);
        assert!(many.iter().all(|(g, _)| g == "many"));
        assert_eq!(names(store.parked(Some("few")).await.unwrap()).len(), 3);
        let gone = StreamName::new("Parked-7").unwrap();
        assert!(store.unpark("many", &gone).await.unwrap());
        let many = names(store.parked(Some("many")).await.unwrap());
        assert_eq!(many.len(), 1_099);
        assert!(!many.iter().any(|(_, s)| s == "Parked-7"));
    }
}

mod leases {
    use std::sync::Arc;
    use std::time::Duration;

    use annals::LeaseStore;

    annals_testkit::lease_suite!(|| async {
        let store: Arc<dyn annals::LeaseStore> = Arc::new(crate::fresh().await);
        (store, ())
    });

    /// A client that has written leases asks about a group with no keys at all: the get
    /// answers "no results", which carries no sequence to wait for, and the calls answer at
    /// once instead of waiting out the store's timeout (set to two minutes here).
    #[tokio::test]
    async fn a_group_with_no_keys_is_read_at_once() {
        let mut config = crate::fresh().await.config().clone();
        config.timeout = Duration::from_secs(120);
        let store = annals_nats::NatsStore::connect(config).await.unwrap();
        let held = store.acquire("busy", "m", 2, Duration::from_secs(60)).await;
        assert_eq!(held.unwrap().held, [0, 1]);
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            assert!(store.members("empty").await.unwrap().is_empty());
            store.release("empty", "m", &[0]).await.unwrap();
            store.leave("empty", "m").await.unwrap();
        })
        .await;
        assert!(
            answered.is_ok(),
            "the calls waited for a sequence no answer carries"
        );
    }
}

mod keys {
    use std::sync::Arc;

    annals_testkit::keys_suite!(|| async {
        let keys: Arc<dyn annals::SubjectKeys> = Arc::new(crate::fresh().await);
        (keys, ())
    });
}

mod back;
mod faults;
mod followers;

/// The same suite on a 3-node cluster, every store with three replicas.
mod cluster {
    use std::sync::Arc;
    use std::time::Duration;

    use annals_nats::{NatsConfig, NatsStore};
    use annals_testkit::{nats, TestStore};

    /// A store with 3 replicas in a fresh stream of the shared cluster; the cluster elects
    /// its JetStream leader after it starts, so connecting is retried until it has one.
    pub(crate) async fn fresh() -> NatsStore {
        let cluster = nats::shared_cluster();
        let config = NatsConfig::with_servers(&cluster.urls)
            .stream(nats::stream_name("r3"))
            .replicas(3);
        annals_testkit::eventually(
            "the cluster to take a stream",
            Duration::from_secs(90),
            || async { NatsStore::connect(config.clone()).await.ok() },
        )
        .await
    }

    annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(fresh().await)) });

    /// Two clients send the same append (same event ids) at the same moment, as a retry
    /// racing its original does. While one is being replicated the leader answers the other
    /// "duplicate message id is in process"; that one waits and is answered as the same
    /// append. Both get the first's result, and the events are stored once.
    #[tokio::test]
    async fn a_retry_racing_its_original_gets_the_same_answer() {
        use annals::{EventData, EventStore, EventStoreExt, ExpectedVersion, ReadStream};
        use annals::{StreamName, Version};
        let a = fresh().await;
        let b = NatsStore::connect(a.config().clone()).await.unwrap();
        let s = StreamName::new("Race-1").unwrap();
        const ROUNDS: u64 = 40;
        for round in 0..ROUNDS {
            let batch: Vec<EventData> = (0..3)
                .map(|i| EventData::new("E", format!("{round}.{i}").into_bytes()))
                .collect();
            let expected = match round % 2 {
                0 => ExpectedVersion::Any,
                _ => ExpectedVersion::Exact(Version(round * 3)),
            };
            let (x, y) = tokio::join!(
                a.append(&s, expected, batch.clone()),
                b.append(&s, expected, batch)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x, y, "round {round}: both are the same append");
            assert_eq!(x.version, Version((round + 1) * 3));
        }
        let events = a.read_stream_vec(&s, ReadStream::forward()).await.unwrap();
        assert_eq!(events.len() as u64, ROUNDS * 3, "every append stored once");
        for (i, e) in events.iter().enumerate() {
            let want = format!("{}.{}", i / 3, i % 3);
            assert_eq!((e.stream_version, &e.data[..]), (i as u64, want.as_bytes()));
        }
    }
}

/// Each client remembers the heads of the streams it wrote and appends from them without
/// reading first; the server's check must catch every stale one.
mod heads {
    use annals::{
        Error, EventData, EventStore, EventStoreExt, ExpectedVersion, ReadStream, StreamName,
        Version,
    };
    use annals_nats::{NatsConfig, NatsStore};
    use annals_testkit::nats;

    fn one(n: u32) -> Vec<EventData> {
        vec![EventData::new("E", n.to_string().into_bytes())]
    }

    #[tokio::test]
    async fn a_stale_remembered_head_is_refused_by_the_server_and_read_again() {
        let config = NatsConfig::new(&nats::shared().url).stream(nats::stream_name("heads"));
        let a = NatsStore::connect(config.clone()).await.unwrap();
        let b = NatsStore::connect(config).await.unwrap();
        let s = StreamName::new("Head-1").unwrap();
        // a writes (and remembers the head), then b moves the stream twice.
        a.append(&s, ExpectedVersion::NoStream, one(0))
            .await
            .unwrap();
        b.append(&s, ExpectedVersion::Exact(Version(1)), one(1))
            .await
            .unwrap();
        b.append(&s, ExpectedVersion::Any, one(2)).await.unwrap();
        // a's head is stale: an exact expectation it believes in is refused with the truth.
        match a
            .append(&s, ExpectedVersion::Exact(Version(1)), one(9))
            .await
        {
            Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(3)),
            other => panic!("a stale head must not pass: {other:?}"),
        }
        // `Any` and the right version go on from the real head.
        let r = a.append(&s, ExpectedVersion::Any, one(3)).await.unwrap();
        assert_eq!(r.version, Version(4));
        b.append(&s, ExpectedVersion::Exact(Version(4)), one(4))
            .await
            .unwrap();
        let r = a
            .append(&s, ExpectedVersion::Exact(Version(5)), one(5))
            .await
            .unwrap();
        assert_eq!(r.version, Version(6));
        // A guess that the stream is new is checked too.
        match b.append(&s, ExpectedVersion::NoStream, one(9)).await {
            Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(6)),
            other => panic!("the stream exists: {other:?}"),
        }
        let fresh = StreamName::new("Head-2").unwrap();
        b.append(&fresh, ExpectedVersion::Any, one(0))
            .await
            .unwrap();
        match a
            .append(&fresh, ExpectedVersion::Exact(Version(0)), one(9))
            .await
        {
            Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(1)),
            other => panic!("the stream exists: {other:?}"),
        }
        // Several streams at once, from stale heads: refused whole, then written whole.
        b.append(&s, ExpectedVersion::Any, one(6)).await.unwrap();
        let both = |v: u64| {
            vec![
                annals::StreamAppend {
                    stream: s.clone(),
                    expected: ExpectedVersion::Exact(Version(v)),
                    events: one(7),
                },
                annals::StreamAppend {
                    stream: fresh.clone(),
                    expected: ExpectedVersion::Any,
                    events: one(1),
                },
            ]
        };
        assert!(matches!(
            a.append_many(both(6)).await,
            Err(Error::WrongExpectedVersion { .. })
        ));
        let written = a.append_many(both(7)).await.unwrap();
        assert_eq!(written[0].version, Version(8));
        assert_eq!(written[1].version, Version(2));
        // Every event once, versions dense, in the order written.
        let events = a.read_stream_vec(&s, ReadStream::forward()).await.unwrap();
        let data: Vec<&[u8]> = events.iter().map(|e| &e.data[..]).collect();
        let want: [&[u8]; 8] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"];
        assert_eq!(data, want);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.stream_version, i as u64);
        }
    }
}

/// A connection that remembers nothing of a stream (another process) finds where it starts
/// from its last message, whatever wrote it: a truncation's marker, or an event written after
/// one, which carries the start on. An append for a state holding events below it is refused.
#[tokio::test]
async fn another_connection_finds_where_a_stream_starts() {
    use annals::{AppendAt, EventData, EventStore, ExpectedVersion, StreamName, Version};
    let config = NatsConfig::new(&nats::shared().url).stream(nats::stream_name("t"));
    let connect = || async { NatsStore::connect(config.clone()).await.unwrap() };
    let one = || vec![EventData::new("E", b"{}".to_vec())];
    let stream = StreamName::new("Start-1").unwrap();
    let a = connect().await;
    let three = (0..3).flat_map(|_| one()).collect();
    a.append(&stream, ExpectedVersion::NoStream, three)
        .await
        .unwrap();
    a.truncate_before(&stream, Version(2)).await.unwrap();
    let refused = |answer: annals::Result<AppendAt>, at: u64| match answer {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!((actual, events.len()), (Version(at), 0));
        }
        other => panic!("refused at {at}: {other:?}"),
    };
    let b = connect().await;
    refused(
        b.append_at_shown(&stream, Version(3), Version(0), one(), None)
            .await,
        3,
    );
    a.append(&stream, ExpectedVersion::Exact(Version(3)), one())
        .await
        .unwrap();
    let c = connect().await;
    refused(
        c.append_at_shown(&stream, Version(4), Version(1), one(), None)
            .await,
        4,
    );
    match c
        .append_at_shown(&stream, Version(4), Version(2), one(), None)
        .await
    {
        Ok(AppendAt::Written(w)) => assert_eq!(w.version, Version(5)),
        other => panic!("written from 2: {other:?}"),
    }
    refused(
        connect()
            .await
            .append_at_shown(&stream, Version(5), Version(1), one(), None)
            .await,
        5,
    );
}

/// A store's change notifications wake a follower at each append of another client, large
/// events included (the notifications carry headers only).
#[tokio::test]
async fn change_notifications_wake_at_each_append_of_another_client() {
    use annals::{EventData, EventStore, ExpectedVersion, StreamName};
    let writer = fresh().await;
    let reader = NatsStore::connect(writer.config().clone()).await.unwrap();
    let mut changes = reader.changes().expect("the NATS store notifies changes");
    assert!(woken(&mut changes).await, "the notifications started");
    let stream = StreamName::new("Woken-1").unwrap();
    for size in [10, 900_000, 10] {
        writer
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![EventData::new("E", vec![b'x'; size])],
            )
            .await
            .unwrap();
        assert!(
            woken(&mut changes).await,
            "woken by an event of {size} bytes"
        );
    }
}

/// Whether `changes` is marked changed within 30 s.
async fn woken(changes: &mut tokio::sync::watch::Receiver<()>) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(30), changes.changed())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A client that wrote a stream reads on from its head by the messages after it alone (a
/// cached decision's catch-up); whatever other clients did since (appends, truncation, a
/// deletion whose purge took the messages after that head, a retention policy, a
/// tombstone), it shows exactly what a client that remembers nothing reads.
#[tokio::test]
async fn a_read_on_from_a_known_head_shows_what_a_whole_read_shows() {
    use annals::{
        DeleteMode, EventStore, ExpectedVersion, Retention, RetentionScope, StreamName, Version,
    };
    let config = NatsConfig::new(&nats::shared().url).stream(nats::stream_name("t"));
    let connect = || async { NatsStore::connect(config.clone()).await.unwrap() };
    let (a, b) = (connect().await, connect().await);
    // What other clients do to each stream after `a` appended 3 events.
    let scenarios = [
        "unmoved",
        "appended",
        "truncated",
        "deleted at the head",
        "deleted past the head",
        "kept by count",
    ];
    for (i, what) in scenarios.into_iter().enumerate() {
        let stream = StreamName::new(format!("Known-{i}")).unwrap();
        let s = &stream;
        a.append(s, ExpectedVersion::NoStream, events(3))
            .await
            .unwrap();
        let append =
            |at: u64, n: usize| b.append(s, ExpectedVersion::Exact(Version(at)), events(n));
        match what {
            "unmoved" => {}
            "appended" => {
                append(3, 2).await.unwrap();
            }
            "truncated" => {
                append(3, 2).await.unwrap();
                b.truncate_before(s, Version(4)).await.unwrap();
            }
            "deleted at the head" => {
                b.delete_stream(s, ExpectedVersion::Any, DeleteMode::Soft)
                    .await
                    .unwrap();
                append(3, 1).await.unwrap();
            }
            "deleted past the head" => {
                append(3, 2).await.unwrap();
                b.delete_stream(s, ExpectedVersion::Any, DeleteMode::Soft)
                    .await
                    .unwrap();
                append(5, 1).await.unwrap();
            }
            "kept by count" => {
                let keep_two = Retention {
                    max_age: None,
                    max_count: Some(2),
                };
                a.set_retention(&RetentionScope::Stream(s.clone()), keep_two)
                    .await
                    .unwrap();
                append(3, 2).await.unwrap();
            }
            other => unreachable!("{other}"),
        }
        let whole = connect().await;
        for from in [3, 4] {
            let page = |store: &NatsStore| {
                let store = store.clone();
                let stream = stream.clone();
                async move {
                    let page = store
                        .read_page_from(&stream, Version(from), 100)
                        .await
                        .unwrap();
                    (ids(&page.events), page.start)
                }
            };
            let (known, fresh) = (page(&a).await, page(&whole).await);
            assert_eq!(known, fresh, "{what}, from {from}");
        }
    }
    // A refused append's answer (the events from the version it expected) is read on
    // from the head it found moved.
    let stream = StreamName::new("Known-refused").unwrap();
    a.append(&stream, ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    b.append(&stream, ExpectedVersion::Exact(Version(3)), events(2))
        .await
        .unwrap();
    let refused = |store: NatsStore| {
        let stream = stream.clone();
        async move {
            let answer = store
                .append_at_shown(&stream, Version(3), Version(0), events(1), None)
                .await
                .unwrap();
            match answer {
                annals::AppendAt::Conflict { actual, events } => (actual, ids(&events)),
                other => panic!("refused: {other:?}"),
            }
        }
    };
    let (known, fresh) = (refused(a.clone()).await, refused(connect().await).await);
    assert_eq!(known.0, Version(5));
    assert_eq!(known, fresh, "the refusal's answer");
    // A tombstone is refused either way.
    let stream = StreamName::new("Known-tombstone").unwrap();
    a.append(&stream, ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    b.delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let refused = a.read_page_from(&stream, Version(3), 100).await;
    assert!(
        matches!(refused, Err(annals::Error::StreamDeleted { .. })),
        "{refused:?}"
    );
}

/// A backward read from the end (its newest event from the stream's last message, the
/// rest read when asked for) shows what a whole read shows, newest first, whatever the
/// last message is: an event, a truncation's or deletion's marker, under a retention
/// policy, or nothing; a tombstone is refused.
#[tokio::test]
async fn a_backward_read_from_the_end_shows_the_whole_read_newest_first() {
    use annals::{
        DeleteMode, EventStore, ExpectedVersion, ReadStream, RecordedEvent, Retention,
        RetentionScope, StreamName, Version,
    };
    use futures::TryStreamExt;
    let store = fresh().await;
    let scenarios = [
        "events",
        "truncated",
        "deleted",
        "deleted then appended",
        "kept by count",
        "none",
    ];
    for (i, what) in scenarios.into_iter().enumerate() {
        let stream = StreamName::new(format!("Back-{i}")).unwrap();
        let s = &stream;
        if what != "none" {
            store
                .append(s, ExpectedVersion::NoStream, events(4))
                .await
                .unwrap();
        }
        match what {
            "truncated" => {
                store.truncate_before(s, Version(2)).await.unwrap();
            }
            "deleted" | "deleted then appended" => {
                store
                    .delete_stream(s, ExpectedVersion::Any, DeleteMode::Soft)
                    .await
                    .unwrap();
                if what == "deleted then appended" {
                    store
                        .append(s, ExpectedVersion::Exact(Version(4)), events(2))
                        .await
                        .unwrap();
                }
            }
            "kept by count" => {
                let keep_two = Retention {
                    max_age: None,
                    max_count: Some(2),
                };
                store
                    .set_retention(&RetentionScope::Stream(s.clone()), keep_two)
                    .await
                    .unwrap();
            }
            _ => {}
        }
        let read: Vec<RecordedEvent> = store
            .read_stream(s, ReadStream::forward())
            .try_collect()
            .await
            .unwrap();
        let mut whole = ids(&read);
        whole.reverse();
        for limit in [None, Some(1), Some(2), Some(10)] {
            let read = ReadStream {
                limit,
                ..ReadStream::backward()
            };
            let back: Vec<RecordedEvent> = store.read_stream(s, read).try_collect().await.unwrap();
            let back = ids(&back);
            let expected: Vec<_> = whole
                .iter()
                .copied()
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            assert_eq!(back, expected, "{what}, limit {limit:?}");
        }
    }
    let stream = StreamName::new("Back-tombstone").unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    store
        .delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let refused: annals::Result<Vec<RecordedEvent>> = store
        .read_stream(&stream, ReadStream::backward())
        .try_collect()
        .await;
    assert!(
        matches!(refused, Err(annals::Error::StreamDeleted { .. })),
        "{refused:?}"
    );
}

/// Credentials in a server URL (`nats://USER:PASSWORD@HOST:PORT`, percent-encoded) log in,
/// and an error never shows them.
#[tokio::test]
async fn credentials_in_the_url_log_in_and_are_never_shown() {
    let server =
        nats::NatsServer::start_with("authorization {\n  user: ann\n  password: \"p@ss+1 x\"\n}")
            .unwrap_or_else(|e| panic!("{e}"));
    let at = |userinfo: &str| format!("nats://{userinfo}@127.0.0.1:{}", server.port);
    let store = NatsStore::connect(
        NatsConfig::new(at("ann:p%40ss%2B1%20x")).stream(nats::stream_name("auth")),
    )
    .await
    .unwrap_or_else(|e| panic!("log in with the URL's credentials: {e}"));
    let stream = annals::StreamName::new("Auth-1").unwrap();
    annals::EventStore::append(
        &store,
        &stream,
        annals::ExpectedVersion::NoStream,
        events(1),
    )
    .await
    .unwrap();
    for refused in [at("ann:wrong%20secret"), server.url.clone()] {
        let error = NatsStore::connect(NatsConfig::new(refused.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{refused} logs in"));
        let shown = annals::error_chain(&error);
        assert!(
            shown.contains("authorization")
                && !shown.contains("wrong")
                && !shown.contains("secret"),
            "{shown}"
        );
    }
}

/// A user allowed to read the store but not to publish to its subjects reads it, and its
/// appends and checkpoints are refused at once with the server's reason (the server drops
/// such a message and says so out of band: the request used to wait for its timeout and
/// say "timed out"); nothing is written.
#[tokio::test]
async fn a_user_who_may_only_read_is_refused_appends_with_the_servers_reason() {
    use annals::{EventStore, EventStoreExt, ExpectedVersion, ReadStream, StreamAppend, Version};
    use std::time::Duration;
    let server = nats::NatsServer::start_with(
        r#"authorization {
  users = [
    { user: owner, password: ownerpw }
    { user: reader, password: readerpw, permissions: {
        publish: { allow: ["$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES",
          "$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>", "$JS.API.CONSUMER.CREATE.>",
          "$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.DELETE.>", "$JS.API.CONSUMER.MSG.NEXT.>",
          "$JS.FC.>", "$JS.ACK.>"] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let at = |user: &str| format!("nats://{user}@127.0.0.1:{}", server.port);
    let name = nats::stream_name("perm");
    let owner = NatsStore::connect(NatsConfig::new(at("owner:ownerpw")).stream(&name))
        .await
        .unwrap();
    let stream = annals::StreamName::new("Perm-1").unwrap();
    owner
        .append(&stream, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let reader = NatsStore::connect(NatsConfig::new(at("reader:readerpw")).stream(&name))
        .await
        .unwrap_or_else(|e| panic!("a reader opens the store: {}", annals::error_chain(&e)));
    let read = reader
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let single = reader
        .append(&stream, ExpectedVersion::Exact(Version(1)), events(1))
        .await;
    let other = annals::StreamName::new("Perm-2").unwrap();
    let batch = reader
        .append_many(vec![
            StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(Version(1)),
                events: events(2),
            },
            StreamAppend {
                stream: other.clone(),
                expected: ExpectedVersion::NoStream,
                events: events(1),
            },
        ])
        .await;
    for (what, result) in [
        ("append", single.map(drop)),
        ("append_many", batch.map(drop)),
    ] {
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{what}: a reader appended"));
        let shown = annals::error_chain(&error);
        assert!(
            shown.contains("refused by the server") && shown.contains("Permissions Violation"),
            "{what}: {shown}"
        );
        assert!(!error.is_transient(), "{what}: {shown}");
    }
    let checkpoint = annals::CheckpointStore::commit(
        &reader,
        "g",
        "s",
        "1".parse::<annals::Position>().unwrap(),
    )
    .await;
    let error = checkpoint.expect_err("a reader committed a checkpoint");
    let shown = annals::error_chain(&error);
    assert!(
        shown.contains("checkpoint refused by the server") && !error.is_transient(),
        "{shown}"
    );
    // The store's other writes to its key-value bucket: each refused as soon as the server
    // says so (a compare-and-set loop would otherwise wait out a timeout per try).
    let parked = annals::ParkedStream {
        group: "g".to_owned(),
        stream: stream.clone(),
        from: Version(1),
        to: Version(2),
        attempts: 3,
        first_error: "boom".to_owned(),
        last_error: "boom".to_owned(),
        parked_at: annals::Timestamp::now(),
        updated_at: annals::Timestamp::now(),
    };
    let bucket_writes = async {
        let subject = vec!["alice".to_owned()];
        [
            (
                "a lease",
                annals::LeaseStore::acquire(&reader, "g", "m", 4, Duration::from_secs(10))
                    .await
                    .map(drop),
            ),
            (
                "a parked stream",
                annals::CheckpointStore::park(&reader, &parked).await,
            ),
            (
                "a retention policy",
                reader
                    .set_retention(
                        &annals::RetentionScope::Stream(stream.clone()),
                        annals::Retention::max_count(1),
                    )
                    .await,
            ),
            (
                "a data subject's key",
                annals::personal::SubjectKeys::keys_or_create(&reader, &subject)
                    .await
                    .map(drop),
            ),
            (
                "forgetting a key",
                annals::personal::SubjectKeys::forget(&reader, "alice")
                    .await
                    .map(drop),
            ),
        ]
    };
    let refused = tokio::time::timeout(Duration::from_secs(60), bucket_writes)
        .await
        .expect("the reader's writes to the bucket were not refused within a minute");
    for (what, result) in refused {
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{what}: a reader wrote it"));
        let shown = annals::error_chain(&error);
        assert!(
            shown.contains("refused by the server") && shown.contains("Permissions Violation"),
            "{what}: {shown}"
        );
        assert!(!error.is_transient(), "{what}: {shown}");
    }
    assert_eq!(owner.stream_version(&stream).await.unwrap(), Version(1));
    assert_eq!(owner.stream_version(&other).await.unwrap(), Version(0));
    assert_eq!(
        annals::CheckpointStore::load(&owner, "g", "s")
            .await
            .unwrap(),
        None
    );
    assert!(annals::CheckpointStore::parked(&owner, None)
        .await
        .unwrap()
        .is_empty());
    assert!(annals::LeaseStore::members(&owner, "g")
        .await
        .unwrap()
        .is_empty());
    assert!(
        annals::personal::SubjectKeys::keys(&owner, &["alice".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// An append sent while its stream has no leader (here: the JetStream stream deleted and
/// created again, as after a cluster loses its leader) waits for one instead of failing at
/// once with "no responders".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_while_the_stream_has_no_leader_waits_for_one() {
    use annals::{EventStore, ExpectedVersion, StreamName, Version};
    let name = nats::stream_name("leaderless");
    let store = NatsStore::connect(NatsConfig::new(&nats::shared().url).stream(&name))
        .await
        .unwrap();
    let stream = StreamName::new("Lead-1").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    let js = crate::jetstream().await;
    let config = js
        .get_stream(&name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    js.delete_stream(&name).await.unwrap();
    let append = tokio::spawn({
        let (store, stream) = (store.clone(), stream.clone());
        async move { store.append(&stream, ExpectedVersion::Any, events(1)).await }
    });
    js.create_stream(config).await.unwrap();
    let written = append
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the append waits for the stream's leader: {e}"));
    assert_eq!(
        written.version,
        Version(1),
        "written to the new, empty stream"
    );
}

/// A stream or checkpoint bucket set up beforehand with a limit that removes messages on
/// its own (an operator's max age, a per-subject limit, work-queue retention) would lose
/// events or checkpoints behind the store's back; one without direct gets would fail every
/// read after its timeout, one without the store's subjects would store no append: the
/// store refuses to open them, saying which setting, and changes nothing. Limits that only
/// refuse new messages are kept.
#[tokio::test]
async fn a_stream_or_bucket_that_removes_messages_on_its_own_is_refused() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy};
    use std::time::Duration;
    let url = &nats::shared().url;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    // Each case: a stream as an operator might have made it, and what the refusal names.
    fn ours(name: &str) -> Config {
        Config {
            name: name.to_owned(),
            subjects: vec![format!("annals.{name}.>")],
            allow_atomic_publish: true,
            allow_direct: true,
            ..Config::default()
        }
    }
    type Case = (&'static str, Box<dyn Fn(&str) -> Config>, &'static str);
    let cases: [Case; 5] = [
        (
            "age",
            Box::new(|n| Config {
                max_age: Duration::from_secs(3600),
                ..ours(n)
            }),
            "max_age",
        ),
        (
            "persubject",
            Box::new(|n| Config {
                max_messages_per_subject: 5,
                ..ours(n)
            }),
            "max_msgs_per_subject 5",
        ),
        (
            "queue",
            Box::new(|n| Config {
                retention: RetentionPolicy::WorkQueue,
                ..ours(n)
            }),
            "retention workqueue",
        ),
        (
            "nodirect",
            Box::new(|n| Config {
                allow_direct: false,
                ..ours(n)
            }),
            "does not allow direct gets",
        ),
        (
            "othersubjects",
            Box::new(|n| Config {
                subjects: vec![format!("{n}.>")],
                ..ours(n)
            }),
            "not the store's",
        ),
    ];
    for (label, made, named) in cases {
        let name = nats::stream_name(label);
        js.create_stream(made(&name)).await.unwrap();
        let config = |js: &async_nats::jetstream::Context| {
            let name = name.clone();
            let js = js.clone();
            async move {
                let info = js.get_stream(&name).await.unwrap();
                serde_json::to_value(&info.cached_info().config).unwrap()
            }
        };
        let before = config(&js).await;
        let error = NatsStore::connect(NatsConfig::new(url).stream(&name))
            .await
            .err()
            .unwrap_or_else(|| panic!("{label}: the stream was opened"));
        let shown = annals::error_chain(&error);
        assert!(
            shown.contains(named) && shown.contains(&name),
            "{label}: {shown}"
        );
        assert_eq!(
            config(&js).await,
            before,
            "{label}: the stream's configuration changed"
        );
        assert!(
            js.get_key_value(format!("annals_{name}_checkpoints"))
                .await
                .is_err(),
            "{label}: a bucket was created"
        );
    }

    // Limits that refuse new messages (discard new) lose nothing: the store opens.
    let name = nats::stream_name("capped");
    js.create_stream(Config {
        max_bytes: 1 << 30,
        discard: DiscardPolicy::New,
        ..ours(&name)
    })
    .await
    .unwrap();
    NatsStore::connect(NatsConfig::new(url).stream(&name))
        .await
        .unwrap_or_else(|e| panic!("a capped stream: {}", annals::error_chain(&e)));

    // A checkpoint bucket made with a time to live would forget checkpoints (and subjects'
    // keys) on its own.
    let name = nats::stream_name("ttlbucket");
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: format!("annals_{name}_checkpoints"),
        history: 1,
        max_age: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let error = NatsStore::connect(NatsConfig::new(url).stream(&name))
        .await
        .expect_err("a bucket that forgets was opened");
    let shown = annals::error_chain(&error);
    assert!(
        shown.contains("max_age") && shown.contains(&format!("KV_annals_{name}_checkpoints")),
        "{shown}"
    );
}

/// An event within the store's size limit whose message (its envelope and headers) is
/// larger than the server takes (`max_payload`, 1 MiB by default) is refused as invalid
/// before anything of its append is sent, saying how large it may be; an event of that
/// size is stored.
#[tokio::test]
async fn an_event_larger_than_the_server_takes_is_refused_before_anything_is_sent() {
    use annals::{Error, EventData, EventStore, ExpectedVersion, InvalidEvent, Version};
    let url = &nats::shared().url;
    let name = nats::stream_name("payload");
    let store = NatsStore::connect(NatsConfig::new(url).stream(&name))
        .await
        .unwrap();
    let stream = annals::StreamName::new("Big-1").unwrap();
    let body = |n: usize| format!("\"{}\"", "x".repeat(n - 2)).into_bytes();
    let max = store.config().max_event_bytes;
    let small = EventData::new("Small", b"{}".to_vec());
    let big = EventData::new("Big", body(max));
    let mut limits = Vec::new();
    for events in [vec![big.clone()], vec![small.clone(), big.clone()]] {
        let index = events.len() - 1;
        match store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
        {
            Err(Error::InvalidEvent {
                stream: s,
                index: i,
                reason: InvalidEvent::TooLarge { size, limit },
            }) => {
                assert_eq!((s, i, size), (stream.clone(), index, max));
                assert!(limit < max, "{limit}");
                limits.push(limit);
            }
            other => panic!("expected the event refused as too large, got {other:?}"),
        }
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(0));
    // The figure it gave is what the server takes.
    let fits = EventData::new("Big", body(limits[0]));
    let written = store
        .append(&stream, ExpectedVersion::NoStream, vec![fits])
        .await
        .unwrap_or_else(|e| panic!("an event of the limit it gave: {}", annals::error_chain(&e)));
    assert_eq!(written.version, Version(1));
}

/// A NATS store keeps every retention policy in one value: once they would not fit in one
/// message to the server, setting another is refused at once, not transient, saying why
/// (it was read as a race lost a hundred times over, then "retry"), and the policies set
/// before are kept as they were.
#[tokio::test]
async fn retention_policies_past_one_message_are_refused_saying_why() {
    use annals::{EventStore, Retention, RetentionScope, StreamName};
    let server =
        nats::NatsServer::start_with("max_payload: 4096").unwrap_or_else(|e| panic!("{e}"));
    let store = NatsStore::connect(NatsConfig::new(&server.url).stream("small"))
        .await
        .unwrap();
    let scope = |i: usize| RetentionScope::Stream(StreamName::new(format!("Kept-{i}")).unwrap());
    let mut set = 0;
    let refused = loop {
        assert!(set < 1000, "4 KiB never filled");
        match store
            .set_retention(&scope(set), Retention::max_count(5))
            .await
        {
            Ok(()) => set += 1,
            Err(e) => break e,
        }
    };
    assert!(set > 10, "only {set} policies fit");
    assert!(!refused.is_transient(), "{refused:?}");
    let shown = annals::error_chain(&refused);
    assert!(
        shown.contains(&format!("{} retention policies take", set + 1))
            && shown.contains("one value"),
        "{shown}"
    );
    let kept = store.retention().await.unwrap();
    assert_eq!(kept.len(), set);
    assert!(kept
        .iter()
        .all(|(s, r)| *r == Retention::max_count(5) && *s != scope(set)));
    // Removing one makes room again.
    store
        .set_retention(&scope(0), Retention::default())
        .await
        .unwrap();
    store
        .set_retention(&scope(set), Retention::max_count(5))
        .await
        .unwrap();
}

/// A server (here: an account) without JetStream is refused saying what to enable.
#[tokio::test]
async fn a_server_without_jetstream_is_refused_saying_what_to_enable() {
    let server = nats::NatsServer::start_with(
        "accounts {\n  NOJS: { users: [ { user: plain, password: plainpw } ] }\n}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("nats://plain:plainpw@127.0.0.1:{}", server.port);
    let error = NatsStore::connect(NatsConfig::new(url).stream(nats::stream_name("nojs")))
        .await
        .expect_err("a store opened without JetStream");
    let shown = annals::error_chain(&error);
    assert!(shown.contains("JetStream is not enabled"), "{shown}");
}

/// TLS, as hosted NATS requires: a server that takes TLS only and verifies clients'
/// certificates, with certificates from a CA made here. With the CA and a client
/// certificate the store works; without the CA the server's certificate is refused, and
/// without a client certificate the server refuses the client.
#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    use annals::{EventData, EventStore, EventStoreExt, ExpectedVersion, ReadStream};
    let pki = annals_testkit::tls::Pki::new("nats");
    let (client_cert, client_key) = pki.client("annals-client");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca = file("ca.pem", &pki.ca);
    let (cert, key) = (
        file("server.pem", &pki.cert),
        file("server-key.pem", &pki.key),
    );
    let client = (
        file("client.pem", &client_cert),
        file("client-key.pem", &client_key),
    );
    let server = nats::NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}",
        cert.display(),
        key.display(),
        ca.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("nats://localhost:{}", server.port);
    let name = nats::stream_name("tls");

    let store = NatsStore::connect(
        NatsConfig::new(&url)
            .stream(&name)
            .tls_ca(&ca)
            .tls_client(&client.0, &client.1),
    )
    .await
    .unwrap_or_else(|e| panic!("over TLS: {}", annals::error_chain(&e)));
    let stream = annals::StreamName::new("Tls-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("T", b"{}".to_vec())],
        )
        .await
        .unwrap();
    let read = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);

    // A `tls://` server address, as the NATS tools write one, works alike.
    let tls_url = format!("tls://localhost:{}", server.port);
    NatsStore::connect(
        NatsConfig::new(&tls_url)
            .stream(&name)
            .tls_ca(&ca)
            .tls_client(&client.0, &client.1),
    )
    .await
    .unwrap_or_else(|e| panic!("tls://: {}", annals::error_chain(&e)));

    let quick = |config: NatsConfig| {
        let mut config = config.stream(&name);
        config.timeout = std::time::Duration::from_secs(5);
        NatsStore::connect(config)
    };
    let untrusted = quick(NatsConfig::new(&url).tls_client(&client.0, &client.1))
        .await
        .expect_err("a server certificate from an unknown CA was trusted");
    let shown = annals::error_chain(&untrusted);
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
    let anonymous = quick(NatsConfig::new(&url).tls_ca(&ca))
        .await
        .expect_err("a client without a certificate was let in");
    let shown = annals::error_chain(&anonymous);
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
}

/// A NATS JWT: the `claims` of `kind` about `subject`, issued (signed) by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, kind: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": b64(subject.as_bytes()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": kind,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&signature))
}

/// Logging in as NATS users do in production: with a user's NKey seed, and in operator
/// mode (as hosted NATS) with a credentials file (a user JWT its account signed, and the
/// user's seed). Files that hold no credentials are refused naming the file, never showing
/// what they hold.
#[tokio::test]
async fn nkey_and_credentials_file_logins() {
    use annals::{EventData, EventStore, ExpectedVersion};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let works = |config: NatsConfig, label: &'static str| async move {
        let store = NatsStore::connect(config.stream(nats::stream_name("auth")))
            .await
            .unwrap_or_else(|e| panic!("{label}: {}", annals::error_chain(&e)));
        store
            .append(
                &annals::StreamName::new("Auth-1").unwrap(),
                ExpectedVersion::Any,
                vec![EventData::new("T", b"{}".to_vec())],
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: {}", annals::error_chain(&e)));
    };

    // A user known by its NKey.
    let user = nkeys::KeyPair::new_user();
    let server = nats::NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("nats://127.0.0.1:{}", server.port);
    let seed = file("user.nk", &format!("{}\n", user.seed().unwrap()));
    works(NatsConfig::new(&url).nkey_file(&seed), "nkey").await;
    let stranger = file("stranger.nk", &nkeys::KeyPair::new_user().seed().unwrap());
    let mut quick = NatsConfig::new(&url).nkey_file(&stranger);
    quick.timeout = std::time::Duration::from_secs(5);
    assert!(
        NatsStore::connect(quick).await.is_err(),
        "an unknown NKey was let in"
    );
    let secret = "not a seed, and a secret";
    let junk = file("junk.nk", secret);
    let error = NatsStore::connect(NatsConfig::new(&url).nkey_file(&junk))
        .await
        .expect_err("a file without a seed was taken");
    let shown = annals::error_chain(&error);
    assert!(
        shown.contains("junk.nk") && !shown.contains(secret),
        "{shown}"
    );
    drop(server);

    // Operator mode: an operator, an account with JetStream, a user the account signed.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
        }}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"type": "user", "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({"type": "account", "version": 2}),
    );
    let server = nats::NatsServer::start_with(&format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: {system_jwt}, {}: {account_jwt} }}",
        system.public_key(),
        system.public_key(),
        account.public_key()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("nats://127.0.0.1:{}", server.port);
    let creds = file(
        "user.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    );
    works(NatsConfig::new(&url).credentials_file(&creds), "creds").await;
    let mut anonymous = NatsConfig::new(&url);
    anonymous.timeout = std::time::Duration::from_secs(5);
    assert!(
        NatsStore::connect(anonymous).await.is_err(),
        "operator mode let a client in without credentials"
    );
    let missing = dir.path().join("missing.creds");
    let error = NatsStore::connect(NatsConfig::new(&url).credentials_file(&missing))
        .await
        .expect_err("a missing credentials file was taken");
    assert!(
        annals::error_chain(&error).contains("missing.creds"),
        "{}",
        annals::error_chain(&error)
    );
}

/// A stream made with a smaller message limit (`max_msg_size`) than the server's: an event
/// past it is refused as too large before anything is sent, with the size it may have.
#[tokio::test]
async fn a_streams_own_message_limit_is_the_events_limit() {
    use annals::{Error, EventData, EventStore, ExpectedVersion, InvalidEvent, Version};
    let url = &nats::shared().url;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let name = nats::stream_name("msgsize");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("annals.{name}.>")],
        allow_atomic_publish: true,
        allow_direct: true,
        max_message_size: 64 * 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = NatsStore::connect(NatsConfig::new(url).stream(&name))
        .await
        .unwrap();
    let stream = annals::StreamName::new("Sized-1").unwrap();
    let body = |n: usize| format!("\"{}\"", "x".repeat(n - 2)).into_bytes();
    let limit = match store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("Big", body(100 * 1024))],
        )
        .await
    {
        Err(Error::InvalidEvent {
            reason: InvalidEvent::TooLarge { limit, .. },
            ..
        }) => limit,
        other => panic!("expected the event refused as too large, got {other:?}"),
    };
    assert!(limit < 64 * 1024, "{limit}");
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(0));
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("Big", body(limit))],
        )
        .await
        .unwrap_or_else(|e| panic!("an event of the limit it gave: {}", annals::error_chain(&e)));
    assert_eq!(written.version, Version(1));
}

/// More events than one JetStream batch takes are refused before anything is sent, as
/// invalid input naming the count and the limit: for one stream, and for several streams'
/// atomic append (counted all streams together, not named after the first stream).
#[tokio::test]
async fn appends_past_the_batch_limit_are_refused_whole() {
    use annals::{
        Error, EventData, EventStore, ExpectedVersion, StreamAppend, StreamName, Version,
    };
    let store = fresh().await;
    let (a, b) = (
        StreamName::new("Limit-a").unwrap(),
        StreamName::new("Limit-b").unwrap(),
    );
    let many = |n: usize| -> Vec<EventData> {
        (0..n)
            .map(|i| EventData::new("E", format!("{i}").into_bytes()))
            .collect()
    };
    let one = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            many(annals_nats::MAX_BATCH + 1),
        )
        .await
        .expect_err("past the limit");
    match &one {
        Error::BatchTooLarge {
            stream,
            events,
            max,
        } => {
            assert_eq!(
                (stream, *events, *max),
                (&a, annals_nats::MAX_BATCH + 1, annals_nats::MAX_BATCH)
            );
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert!(one.is_invalid_input(), "{one}");
    let both = store
        .append_many(vec![
            StreamAppend {
                stream: a.clone(),
                expected: ExpectedVersion::NoStream,
                events: many(600),
            },
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::NoStream,
                events: many(401),
            },
        ])
        .await
        .expect_err("past the limit, all streams together");
    match &both {
        Error::TransactionTooLarge {
            streams,
            events,
            max,
        } => {
            assert_eq!((*streams, *events, *max), (2, 1001, annals_nats::MAX_BATCH));
        }
        other => panic!("expected TransactionTooLarge, got {other:?}"),
    }
    assert!(both.is_invalid_input(), "{both}");
    assert!(
        both.to_string().contains("1001 events to 2 streams"),
        "{both}"
    );
    for s in [&a, &b] {
        assert_eq!(store.stream_version(s).await.unwrap(), Version(0), "{s}");
    }
    // At the limit, both are written.
    store
        .append(&a, ExpectedVersion::NoStream, many(annals_nats::MAX_BATCH))
        .await
        .unwrap();
    let written = store
        .append_many(vec![
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::NoStream,
                events: many(600),
            },
            StreamAppend {
                stream: StreamName::new("Limit-c").unwrap(),
                expected: ExpectedVersion::NoStream,
                events: many(400),
            },
        ])
        .await
        .unwrap_or_else(|e| panic!("at the limit: {}", annals::error_chain(&e)));
    assert_eq!(
        written.iter().map(|w| w.version).collect::<Vec<_>>(),
        [Version(600), Version(400)]
    );
}

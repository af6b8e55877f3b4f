//! Backward reads step back from the stream's last message instead of reading the whole
//! stream, and so do forward reads from a version or with a limit: they show what a whole
//! read shows, and ask for about what they show.

use annals::{
    DeleteMode, EventData, EventStore, ExpectedVersion, ReadStream, RecordedEvent, StreamName,
    Version,
};
use annals_nats::NatsStore;
use futures::{StreamExt, TryStreamExt};

/// The direct gets a store sends while `read` runs: how many, and how many messages they
/// ask for in all. Seen by a second client subscribed to the stream's direct-get subject
/// (the server answers the store; this client only watches).
async fn asked<T>(store: &NatsStore, read: impl std::future::Future<Output = T>) -> (T, u64, u64) {
    let client = async_nats::connect(&annals_testkit::nats::shared().url)
        .await
        .unwrap();
    let subject = format!("$JS.API.DIRECT.GET.{}", store.config().stream);
    let mut spy = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let out = read.await;
    // The server sends a request without a reply subject nowhere; it ends what was seen.
    client.publish(subject, "end".into()).await.unwrap();
    client.flush().await.unwrap();
    let (mut requests, mut messages) = (0, 0);
    while let Some(m) = spy.next().await {
        if &m.payload[..] == b"end" {
            break;
        }
        let request: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        requests += 1;
        messages += request["batch"].as_u64().unwrap_or(1);
    }
    (out, requests, messages)
}

/// What a backward read of `options` shows, by the definition: the versions in its range
/// of the stream's `len` (`from` or the end, back `limit` versions), of what a whole forward
/// read shows, newest first, at most `limit`.
fn expected(whole: &[RecordedEvent], len: u64, options: &ReadStream) -> Vec<(u64, annals::Uuid)> {
    let hi = options.from.map_or(len, |v| v.get().min(len));
    let lo = options.limit.map_or(0, |l| hi.saturating_sub(l as u64));
    let mut out: Vec<_> = whole
        .iter()
        .filter(|e| (lo..hi).contains(&e.stream_version))
        .map(|e| (e.stream_version, e.event_id))
        .collect();
    out.reverse();
    out.truncate(options.limit.unwrap_or(usize::MAX));
    out
}

/// What a forward read of `options` shows, by the definition: from `from` (or the first
/// version a whole read shows, when that is later), `limit` versions of what a whole
/// forward read shows, in order.
fn expected_forward(
    whole: &[RecordedEvent],
    len: u64,
    options: &ReadStream,
) -> Vec<(u64, annals::Uuid)> {
    let floor = whole.first().map_or(len, |e| e.stream_version);
    let lo = options.from.map_or(floor, |v| v.get().max(floor)).min(len);
    let hi = lo
        .saturating_add(options.limit.map_or(u64::MAX, |l| l as u64))
        .min(len);
    whole
        .iter()
        .filter(|e| (lo..hi).contains(&e.stream_version))
        .map(|e| (e.stream_version, e.event_id))
        .collect()
}

/// Another client of `store`'s stream: it knows no head of any stream.
async fn stranger(store: &NatsStore) -> NatsStore {
    NatsStore::connect(store.config().clone()).await.unwrap()
}

/// What a whole forward read of `s` shows, and the stream's version. The two whole reads,
/// forward (batch by batch from the first message) and backward (stepped back from the
/// last), show the same events.
async fn whole(store: &NatsStore, s: &StreamName) -> (Vec<RecordedEvent>, u64) {
    let read: Vec<RecordedEvent> = store
        .read_stream(s, ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    let mut back: Vec<RecordedEvent> = store
        .read_stream(s, ReadStream::backward())
        .try_collect()
        .await
        .unwrap();
    back.reverse();
    assert_eq!(read, back, "{s}");
    (read, store.stream_version(s).await.unwrap().get())
}

/// The versions and ids `read` of `s` shows, in its order.
async fn shown(store: &NatsStore, s: &StreamName, read: ReadStream) -> Vec<(u64, annals::Uuid)> {
    let events: Vec<RecordedEvent> = store.read_stream(s, read).try_collect().await.unwrap();
    events
        .iter()
        .map(|e| (e.stream_version, e.event_id))
        .collect()
}

/// Reads like `base` of a stream of `len` versions: from the start, the truncation's
/// start (120) and around it, the middle, the end and past it; with no limit and with
/// limits from 0 to more than the stream.
fn grid(len: u64, base: ReadStream) -> Vec<ReadStream> {
    let froms = [
        None,
        Some(0),
        Some(1),
        Some(119),
        Some(120),
        Some(121),
        Some(len / 2),
        Some(len - 1),
        Some(len),
        Some(len + 5),
    ];
    let limits = [
        None,
        Some(0),
        Some(1),
        Some(2),
        Some(10),
        Some(333),
        Some(5000),
    ];
    froms
        .iter()
        .flat_map(|from| {
            limits.iter().map(move |limit| ReadStream {
                from: from.map(Version),
                limit: *limit,
                ..base
            })
        })
        .collect()
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData::new("E", format!("{{\"i\":{i}}}").into_bytes()))
        .collect()
}

/// Streams interleaved unevenly with others in `store`: `Long-1` (2,400 events, written
/// alone at first, then among more and more others), `Late-1` (created late), `Cut-1`
/// (truncated before 120) and `Again-1` (deleted and written again).
async fn uneven(store: &NatsStore) -> [StreamName; 4] {
    let long = StreamName::new("Long-1").unwrap();
    let late = StreamName::new("Late-1").unwrap();
    let cut = StreamName::new("Cut-1").unwrap();
    let again = StreamName::new("Again-1").unwrap();
    for round in 0..48usize {
        store
            .append(&long, ExpectedVersion::Any, events(50))
            .await
            .unwrap();
        for other in 0..round / 4 {
            let noise = StreamName::new(format!("Noise-{other}")).unwrap();
            store
                .append(&noise, ExpectedVersion::Any, events(1 + round % 13))
                .await
                .unwrap();
        }
        if round >= 40 {
            store
                .append(&late, ExpectedVersion::Any, events(7))
                .await
                .unwrap();
        }
        for s in [&cut, &again] {
            store
                .append(s, ExpectedVersion::Any, events(5))
                .await
                .unwrap();
        }
        if round == 30 {
            store.truncate_before(&cut, Version(120)).await.unwrap();
            store
                .delete_stream(&again, ExpectedVersion::Any, DeleteMode::Soft)
                .await
                .unwrap();
        }
    }
    [long, late, cut, again]
}

/// Streams interleaved unevenly with others (written alone at first, then among more and
/// more others), one created late, one truncated and one deleted and written again: every
/// backward read, from the end or from a version, with or without a limit, shows what the
/// whole read shows newest first; a tail of 10 of 2,400 events asks for a few dozen
/// messages, and a read taken for 5 events for about a step's worth.
#[tokio::test]
async fn backward_reads_show_the_whole_read_and_ask_for_what_they_show() {
    let store = crate::fresh().await;
    let [long, late, cut, again] = uneven(&store).await;
    for s in [&long, &late, &cut, &again] {
        let (whole, len) = whole(&store, s).await;
        for read in grid(len, ReadStream::backward()) {
            let back = shown(&store, s, read).await;
            assert_eq!(back, expected(&whole, len, &read), "{s} {read:?}");
        }
    }
    // Ten events back from anywhere: where the stream is dense or sparse, created late,
    // truncated or deleted.
    // (The tail of the long stream, written among others, asks for a few dozen messages:
    // a whole read asks for all 2,400.)
    let tens = [
        (&long, None, 80),
        (&long, Some(100), 200),
        (&long, Some(1000), 200),
        (&long, Some(2000), 200),
        (&late, None, 200),
        (&cut, None, 200),
        (&cut, Some(130), 200),
        (&again, None, 200),
    ];
    for (s, from, most) in tens {
        let read = ReadStream {
            from: from.map(Version),
            ..ReadStream::backward().limit(10)
        };
        let (ten, requests, messages) = asked(&store, async {
            let read = store.read_stream(s, read);
            read.try_collect::<Vec<_>>().await.unwrap()
        })
        .await;
        assert_eq!(ten.len(), 10, "{s} {read:?}");
        assert!(
            requests <= 8 && messages <= most,
            "10 events of {s} before {from:?} asked for {messages} messages in {requests} direct gets"
        );
    }
    let (taken, requests, messages) = asked(&store, async {
        store
            .read_stream(&long, ReadStream::backward())
            .take(5)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(taken.len(), 5);
    assert!(
        requests <= 6 && messages <= 400,
        "5 events taken of 2,400 asked for {messages} messages in {requests} direct gets"
    );
}

/// Forward reads from a version or with a limit, by the writing client (which knows the
/// streams' heads) and by another (which knows none), show what a whole read shows; ten
/// events from anywhere in the long stream ask for a few dozen messages by either client
/// (a whole read asks for all 2,400), and a whole read taken for 5 events for one batch.
#[tokio::test]
async fn forward_reads_from_a_version_or_with_a_limit_show_the_whole_read_and_ask_for_what_they_show(
) {
    let store = crate::fresh().await;
    let streams = uneven(&store).await;
    let other = stranger(&store).await;
    for s in &streams {
        let (whole, len) = whole(&store, s).await;
        for read in grid(len, ReadStream::forward()) {
            for client in [&store, &other] {
                let forward = shown(client, s, read).await;
                assert_eq!(
                    forward,
                    expected_forward(&whole, len, &read),
                    "{s} {read:?}"
                );
            }
        }
    }
    let [long, late, cut, again] = &streams;
    let tens = [
        (long, None),
        (long, Some(100)),
        (long, Some(1000)),
        (long, Some(2390)),
        (late, Some(3)),
        (cut, None),
        (cut, Some(130)),
        (again, None),
    ];
    for (s, from) in tens {
        let read = ReadStream {
            from: from.map(Version),
            ..ReadStream::forward().limit(10)
        };
        for client in [&store, &other] {
            let (ten, requests, messages) = asked(client, async {
                let read = client.read_stream(s, read);
                read.try_collect::<Vec<_>>().await.unwrap()
            })
            .await;
            assert_eq!(ten.len(), 10, "{s} {read:?}");
            assert!(
                requests <= 8 && messages <= 200,
                "10 events of {s} from {from:?} asked for {messages} messages in {requests} direct gets"
            );
        }
    }
    // A whole read is read as it is taken: 5 events of 2,400 ask for one batch.
    let (taken, requests, messages) = asked(&other, async {
        let read = other.read_stream(long, ReadStream::forward()).take(5);
        read.try_collect::<Vec<_>>().await.unwrap()
    })
    .await;
    let firsts: Vec<u64> = taken.iter().map(|e| e.stream_version).collect();
    assert_eq!(firsts, [0, 1, 2, 3, 4]);
    assert!(
        requests == 1 && messages <= 1000,
        "5 events taken of 2,400 asked for {messages} messages in {requests} direct gets"
    );
}

/// Random layouts: streams written in batches of random sizes among random others, some
/// truncated or deleted and written again, some with messages removed from JetStream
/// underneath (gaps in their versions, and at their beginning); 300 backward reads from random versions with
/// random limits each show what the definition says, and so do 300 forward reads.
#[tokio::test]
async fn backward_reads_of_random_layouts_show_the_whole_read() {
    let store = crate::fresh().await;
    let mut rng = fastrand::Rng::with_seed(16);
    let streams: Vec<StreamName> = (0..6)
        .map(|i| StreamName::new(format!("Rand-{i}")).unwrap())
        .collect();
    for round in 0..120 {
        let s = &streams[rng.usize(..streams.len())];
        let n = match rng.u8(..10) {
            0 => rng.usize(100..400),
            _ => rng.usize(1..20),
        };
        store
            .append(s, ExpectedVersion::Any, events(n))
            .await
            .unwrap();
        if round % 40 == 39 {
            let s = &streams[rng.usize(..streams.len())];
            let len = store.stream_version(s).await.unwrap().get();
            match rng.bool() {
                true => {
                    store
                        .truncate_before(s, Version(rng.u64(..=len)))
                        .await
                        .unwrap();
                }
                false => {
                    store
                        .delete_stream(s, ExpectedVersion::Any, DeleteMode::Soft)
                        .await
                        .unwrap();
                }
            }
        }
    }
    // Messages removed underneath, not the last of their stream.
    let js = crate::jetstream().await;
    let jetstream = js.get_stream(&store.config().stream).await.unwrap();
    let (gapped, _) = whole(&store, &streams[0]).await;
    for e in gapped.iter().rev().skip(1).step_by(7).take(10) {
        let seq = annals::backend::raw_position(e.position) as u64;
        assert!(jetstream.delete_message(seq).await.unwrap());
    }
    // And the first messages a stream shows: its reads then begin at a later version than
    // its start.
    let (headless, _) = whole(&store, &streams[1]).await;
    assert!(headless.len() > 4, "{} events", headless.len());
    for e in &headless[..3] {
        let seq = annals::backend::raw_position(e.position) as u64;
        assert!(jetstream.delete_message(seq).await.unwrap());
    }
    let mut wholes = Vec::new();
    for s in &streams {
        wholes.push(whole(&store, s).await);
    }
    // 300 backward reads, then 300 forward ones (by the writing client and by one that
    // knows no head, in turn).
    let other = stranger(&store).await;
    for n in 0..600 {
        let i = rng.usize(..streams.len());
        let (whole, len) = &wholes[i];
        let forward = n >= 300;
        let read = ReadStream {
            from: rng.bool().then(|| Version(rng.u64(..=len + 2))),
            limit: match rng.u8(..4) {
                0 => None,
                1 => Some(rng.usize(1..4)),
                2 => Some(rng.usize(1..100)),
                _ => Some(rng.usize(1..2000)),
            },
            ..match forward {
                true => ReadStream::forward(),
                false => ReadStream::backward(),
            }
        };
        let (client, want) = match forward {
            true => (
                [&store, &other][n % 2],
                expected_forward(whole, *len, &read),
            ),
            false => (&store, expected(whole, *len, &read)),
        };
        let read_shows = shown(client, &streams[i], read).await;
        assert_eq!(read_shows, want, "{} {read:?}", streams[i]);
    }
}

//! The conformance suite: every store must pass every function here.
//!
//! Each function takes a fresh, empty store and panics (through assertions) when the store
//! breaks the contract of [`annals::store`]. Capability differences are read from
//! [`EventStore::capabilities`], never copied into variant tests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    AppendResult, Capability, Error, EventData, EventStore, EventStoreExt, ExpectedVersion, Filter,
    Head, HeadSnapshot, InvalidEvent, Position, ReadStream, RecordedEvent, StreamAppend,
    StreamName, SubscribeExt, SubscribeOptions, Uuid, Version,
};
use futures::StreamExt;

/// How long a test waits for a subscription to deliver what it expects.
const WAIT: Duration = Duration::from_secs(30);

fn name(s: &str) -> StreamName {
    StreamName::new(s).expect("a valid test stream name")
}

fn ev(event_type: &str, n: u64) -> EventData {
    EventData::new(event_type, format!(r#"{{"n":{n}}}"#).into_bytes())
}

fn batch(n: u64) -> Vec<EventData> {
    (0..n).map(|i| ev("Happened", i)).collect()
}

async fn append(
    store: &dyn EventStore,
    stream: &StreamName,
    expected: ExpectedVersion,
    n: u64,
) -> AppendResult {
    store
        .append(stream, expected, batch(n))
        .await
        .unwrap_or_else(|e| panic!("append of {n} events to {stream} at {expected}: {e}"))
}

async fn read(
    store: &dyn EventStore,
    stream: &StreamName,
    options: ReadStream,
) -> Vec<RecordedEvent> {
    store
        .read_stream_vec(stream, options)
        .await
        .unwrap_or_else(|e| panic!("read of {stream}: {e}"))
}

async fn versions(store: &dyn EventStore, stream: &StreamName, options: ReadStream) -> Vec<u64> {
    read(store, stream, options)
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect()
}

/// Every event of `store` in read-all order, after waiting for visibility.
pub async fn read_everything<S: EventStore + ?Sized>(store: &Arc<S>) -> Vec<RecordedEvent> {
    store.await_visible().await.expect("await visibility");
    annals::Feed::new(
        Arc::clone(store),
        Position::START,
        annals::FeedOptions::to_end(Filter::all()),
    )
    .events()
    .map(|e| e.expect("read all"))
    .collect()
    .await
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: annals::Result<T>, want_actual: u64) {
    match result {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(want_actual)),
        other => panic!("expected a conflict at version {want_actual}, got {other:?}"),
    }
}

/// Every expected-version mode against a stream that does not exist.
pub async fn expected_versions_on_a_new_stream(store: Arc<dyn EventStore>) {
    let s = &*store;
    let r = append(s, &name("New-any"), ExpectedVersion::Any, 2).await;
    assert_eq!(r.version, Version(2));
    assert!(r.first_position < r.last_position);
    let r = append(s, &name("New-nostream"), ExpectedVersion::NoStream, 1).await;
    assert_eq!(r.version, Version(1));
    let r = append(
        s,
        &name("New-exact0"),
        ExpectedVersion::Exact(Version(0)),
        3,
    )
    .await;
    assert_eq!(r.version, Version(3));
    assert_conflict(
        s.append(&name("New-exists"), ExpectedVersion::StreamExists, batch(1))
            .await,
        0,
    );
    assert_conflict(
        s.append(
            &name("New-exact1"),
            ExpectedVersion::Exact(Version(1)),
            batch(1),
        )
        .await,
        0,
    );
    for refused in ["New-exists", "New-exact1"] {
        assert_eq!(s.stream_version(&name(refused)).await.unwrap(), Version(0));
        assert!(read(s, &name(refused), ReadStream::forward())
            .await
            .is_empty());
    }
    assert_eq!(
        s.stream_version(&name("New-exact0")).await.unwrap(),
        Version(3)
    );
    assert_eq!(read_everything(&store).await.len(), 6);
}

/// Every expected-version mode against a stream with events.
pub async fn expected_versions_on_an_existing_stream(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Existing-1");
    append(s, &stream, ExpectedVersion::NoStream, 2).await;
    assert_conflict(
        s.append(&stream, ExpectedVersion::NoStream, batch(1)).await,
        2,
    );
    assert_conflict(
        s.append(&stream, ExpectedVersion::Exact(Version(1)), batch(1))
            .await,
        2,
    );
    assert_conflict(
        s.append(&stream, ExpectedVersion::Exact(Version(3)), batch(1))
            .await,
        2,
    );
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(2));
    assert_eq!(
        append(s, &stream, ExpectedVersion::StreamExists, 1)
            .await
            .version,
        Version(3)
    );
    assert_eq!(
        append(s, &stream, ExpectedVersion::Exact(Version(3)), 2)
            .await
            .version,
        Version(5)
    );
    assert_eq!(
        append(s, &stream, ExpectedVersion::Any, 1).await.version,
        Version(6)
    );
    assert_eq!(
        versions(s, &stream, ReadStream::forward()).await,
        (0..6).collect::<Vec<_>>()
    );
}

/// 16 writers append at the same expected version: exactly one wins, the rest get a
/// conflict carrying the new version, and versions stay dense.
pub async fn concurrent_exact_appends_one_wins(store: Arc<dyn EventStore>) {
    let stream = name("Race-1");
    append(&*store, &stream, ExpectedVersion::NoStream, 1).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, stream) = (Arc::clone(&store), stream.clone());
            tokio::spawn(async move {
                store
                    .append(&stream, ExpectedVersion::Exact(Version(1)), batch(2))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.version, Version(3));
            }
            Err(e) => assert_conflict::<()>(Err(e), 3),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one of 16 concurrent appends at one expected version wins"
    );
    assert_eq!(
        versions(&*store, &stream, ReadStream::forward()).await,
        vec![0, 1, 2]
    );
}

/// 16 writers append with `Any`: all land, versions are 0..n with no gap, and each batch's
/// events are contiguous.
pub async fn concurrent_any_appends_all_land(store: Arc<dyn EventStore>) {
    let stream = name("Pile-1");
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (store, stream) = (Arc::clone(&store), stream.clone());
            tokio::spawn(async move {
                let events = (0..3).map(|i| ev(&format!("W{w}"), i)).collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .expect("an Any append lands")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let events = read(&*store, &stream, ReadStream::forward()).await;
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (0..48).collect::<Vec<_>>()
    );
    for chunk in events.chunks(3) {
        assert!(
            chunk.iter().all(|e| e.event_type == chunk[0].event_type),
            "a batch was interleaved: {chunk:?}"
        );
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(48));
}

/// Re-sending a committed batch (same ids, same expected version) succeeds with the
/// original result and writes nothing, even after later appends.
pub async fn retry_of_a_committed_append_writes_nothing(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Retry-1");
    let events = batch(3);
    let first = s
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    let again = s
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    let any = s
        .append(&stream, ExpectedVersion::Any, events.clone())
        .await
        .unwrap();
    assert_eq!(any, first);
    append(s, &stream, ExpectedVersion::Exact(Version(3)), 2).await;
    let late = s
        .append(&stream, ExpectedVersion::Exact(Version(0)), events.clone())
        .await
        .unwrap();
    assert_eq!(
        late, first,
        "a late retry still answers with the original result"
    );
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(5));
    assert_eq!(read_everything(&store).await.len(), 5);
    // A retry whose expected version could never have admitted the original is a conflict.
    assert_conflict(
        s.append(&stream, ExpectedVersion::Exact(Version(1)), events)
            .await,
        5,
    );
}

/// A batch that only partly repeats an earlier append is a distinct error, and writes
/// nothing.
pub async fn partial_overlap_retry_is_refused(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Overlap-1");
    let events = batch(2);
    s.append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    let overlaps = [
        vec![events[1].clone(), ev("Happened", 9)],
        vec![events[0].clone(), ev("Happened", 9)],
        vec![events[0].clone()],
        vec![events[1].clone(), events[0].clone()],
    ];
    for overlap in overlaps {
        match s
            .append(&stream, ExpectedVersion::Any, overlap.clone())
            .await
        {
            Err(Error::PartialRetry { stream: st, .. }) => assert_eq!(st, stream),
            other => panic!("expected a partial-retry error for {overlap:?}, got {other:?}"),
        }
    }
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(2));
    assert_eq!(read_everything(&store).await.len(), 2);
}

/// An event id already recorded in another stream is refused.
pub async fn event_id_recorded_in_another_stream_is_refused(store: Arc<dyn EventStore>) {
    let s = &*store;
    let (a, b) = (name("Dup-a"), name("Dup-b"));
    let event = ev("Happened", 1);
    s.append(&a, ExpectedVersion::Any, vec![event.clone()])
        .await
        .unwrap();
    match s
        .append(
            &b,
            ExpectedVersion::Any,
            vec![ev("Happened", 2), event.clone()],
        )
        .await
    {
        Err(Error::DuplicateEventId {
            event_id,
            existing_stream,
        }) => {
            assert_eq!(event_id, event.event_id);
            assert_eq!(existing_stream, a);
        }
        other => panic!("expected a duplicate event id error, got {other:?}"),
    }
    assert_eq!(s.stream_version(&b).await.unwrap(), Version(0));
    assert_eq!(read_everything(&store).await.len(), 1);
}

/// Empty batches, invalid events and invalid names are refused with a typed error, and no
/// event of the batch is written.
pub async fn invalid_input_is_refused_and_nothing_written(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Bad-1");
    assert!(matches!(
        s.append(&stream, ExpectedVersion::Any, vec![]).await,
        Err(Error::EmptyBatch { .. })
    ));
    type Case = (Vec<EventData>, usize, fn(&InvalidEvent) -> bool);
    let cases: Vec<Case> = vec![
        (vec![ev("Ok", 0), ev("", 1)], 1, |r| {
            matches!(r, InvalidEvent::EmptyType)
        }),
        (vec![ev(&"T".repeat(256), 0)], 0, |r| {
            matches!(r, InvalidEvent::TypeTooLong { .. })
        }),
        (vec![ev("Bad\ntype", 0)], 0, |r| {
            matches!(r, InvalidEvent::TypeHasControlChars)
        }),
        (
            vec![
                ev("Ok", 0),
                EventData::new("Big", vec![b'x'; annals::DEFAULT_MAX_EVENT_BYTES + 1]),
            ],
            1,
            |r| matches!(r, InvalidEvent::TooLarge { .. }),
        ),
        (
            {
                let e = ev("Ok", 0);
                vec![e.clone(), e]
            },
            1,
            |r| matches!(r, InvalidEvent::DuplicateIdInBatch(_)),
        ),
    ];
    for (events, want_index, want_reason) in cases {
        match s
            .append(&stream, ExpectedVersion::Any, events.clone())
            .await
        {
            Err(Error::InvalidEvent { index, reason, .. }) => {
                assert_eq!(index, want_index, "{reason}");
                assert!(want_reason(&reason), "unexpected reason {reason}");
            }
            other => panic!("expected an invalid-event error for {events:?}, got {other:?}"),
        }
    }
    for bad in ["nodash", "-id", "Cat-", "Ca t-1", "Cat-a b"] {
        assert!(StreamName::new(bad).is_err(), "{bad:?} must be refused");
    }
    let bad_filter = Filter::category("not-a-category");
    assert!(matches!(
        s.read_all(Position::START, &bad_filter, 10).await,
        Err(Error::InvalidStreamName(_))
    ));
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(0));
    assert!(
        read_everything(&store).await.is_empty(),
        "nothing may be written by refused appends"
    );
}

/// Recorded events carry what was appended, their stream, version, increasing positions
/// and a timestamp.
pub async fn recorded_events_keep_what_was_appended(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Keep-1");
    let (corr, cause) = (Uuid::now_v7(), Uuid::now_v7());
    let sent = EventData::new("Kept", br#"{"a":1}"#.to_vec())
        .with_metadata(br#"{"user":"u"}"#.to_vec())
        .with_correlation_id(corr)
        .with_causation_id(cause);
    let before = annals::Timestamp::now();
    let r1 = s
        .append(&stream, ExpectedVersion::Any, vec![sent.clone()])
        .await
        .unwrap();
    let r2 = append(s, &stream, ExpectedVersion::Any, 2).await;
    assert!(r1.last_position < r2.first_position && r2.first_position < r2.last_position);
    let got = read(s, &stream, ReadStream::forward()).await;
    let e = &got[0];
    assert_eq!(
        (e.stream.clone(), e.stream_version, e.position),
        (stream.clone(), 0, r1.first_position)
    );
    assert_eq!(e.event_type, "Kept");
    assert_eq!(e.data, sent.data);
    assert_eq!(e.metadata, sent.metadata);
    assert_eq!(
        (e.event_id, e.correlation_id, e.causation_id),
        (sent.event_id, Some(corr), Some(cause))
    );
    assert_eq!(got[1].metadata, None);
    let micros = |t: annals::Timestamp| t.unix_micros();
    assert!(
        micros(e.recorded_at) >= micros(before) - 1_000_000,
        "recorded_at is not in the past"
    );
    assert_eq!(got[2].position, r2.last_position);
}

/// Reading one stream forward and backward, from the middle, with limits.
pub async fn read_stream_forward_backward_with_limits(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Read-1");
    append(s, &stream, ExpectedVersion::NoStream, 6).await;
    append(s, &name("Read-other"), ExpectedVersion::NoStream, 3).await;
    append(s, &stream, ExpectedVersion::Exact(Version(6)), 4).await;
    let v = |o| versions(s, &stream, o);
    assert_eq!(v(ReadStream::forward()).await, (0..10).collect::<Vec<_>>());
    assert_eq!(v(ReadStream::forward().limit(3)).await, vec![0, 1, 2]);
    assert_eq!(
        v(ReadStream::forward_from(Version(4)).limit(4)).await,
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        v(ReadStream::forward_from(Version(8)).limit(5)).await,
        vec![8, 9]
    );
    assert!(v(ReadStream::forward_from(Version(10))).await.is_empty());
    assert!(v(ReadStream::forward_from(Version(20))).await.is_empty());
    assert_eq!(
        v(ReadStream::backward()).await,
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(v(ReadStream::backward().limit(2)).await, vec![9, 8]);
    assert_eq!(
        v(ReadStream::backward_from(Version(5)).limit(3)).await,
        vec![4, 3, 2]
    );
    assert_eq!(v(ReadStream::backward_from(Version(2))).await, vec![1, 0]);
    assert!(v(ReadStream::backward_from(Version(0))).await.is_empty());
    assert_eq!(
        v(ReadStream::backward_from(Version(99)).limit(1)).await,
        vec![9]
    );
    assert!(versions(s, &name("Read-missing"), ReadStream::forward())
        .await
        .is_empty());
    assert!(versions(s, &name("Read-missing"), ReadStream::backward())
        .await
        .is_empty());
    let events = read(s, &stream, ReadStream::forward()).await;
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
}

/// Read-all pages cross page boundaries without loss or repeat, with and without filters.
pub async fn read_all_pages_with_filters(store: Arc<dyn EventStore>) {
    let s = &*store;
    for round in 0..5 {
        for (stream, ty) in [
            ("Alpha-1", "X"),
            ("Beta-1", "Y"),
            ("Alpha-2", "Y"),
            ("Gamma-1", "X"),
        ] {
            let events = vec![ev(ty, round), ev("Z", round)];
            s.append(&name(stream), ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
    let all = read_everything(&store).await;
    assert_eq!(all.len(), 40);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "read-all is in position order"
    );
    let filters = [
        Filter::all(),
        Filter::category("Alpha"),
        Filter::category("Alpha").and_category("Gamma"),
        Filter::all().event_types(["X"]),
        Filter::category("Alpha").event_types(["Y", "Z"]),
        Filter::category("Nothing"),
    ];
    for filter in filters {
        let expected: Vec<Uuid> = all
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| e.event_id)
            .collect();
        for limit in [1, 3, 7, 100] {
            let mut got = Vec::new();
            let mut from = Position::START;
            let options = annals::FeedOptions::to_end(filter.clone()).page_size(limit);
            let mut pages = annals::Feed::new(Arc::clone(&store), Position::START, options).pages();
            while let Some(page) = pages.next().await {
                let page = page.unwrap();
                assert!(page.events.len() <= limit);
                assert!(page
                    .events
                    .iter()
                    .all(|e| filter.matches(e) && e.position > from));
                assert!(page.next >= from);
                if let Some(last) = page.events.last() {
                    assert!(page.next >= last.position);
                }
                got.extend(page.events.iter().map(|e| e.event_id));
                from = page.next;
            }
            assert_eq!(got, expected, "filter {filter:?} with pages of {limit}");
        }
    }
    // Partitions split the feed by stream: each event in exactly one, as computed here
    // (names hashed as UTF-8 bytes, the same in every backend).
    for (i, id) in ["ünïcödé", "日本語", "a_b_c", "x.y:z", "✓✓", "0", "long"]
        .iter()
        .enumerate()
    {
        let id = if *id == "long" {
            "l".repeat(200)
        } else {
            (*id).to_owned()
        };
        s.append(
            &name(&format!("Part-{id}")),
            ExpectedVersion::Any,
            batch(i as u64 + 1),
        )
        .await
        .unwrap();
    }
    let all = read_everything(&store).await;
    for count in [1u32, 2, 3, 7, 64] {
        let mut seen = Vec::new();
        for index in 0..count {
            let filter = Filter::all().partition(annals::Partition::new(index, count));
            let part = read_filtered(&store, filter, 5).await;
            assert!(part
                .iter()
                .all(|e| annals::Partition::of(&e.stream, count) == index));
            seen.extend(part.iter().map(|e| e.event_id));
        }
        seen.sort();
        let mut every: Vec<Uuid> = all.iter().map(|e| e.event_id).collect();
        every.sort();
        assert_eq!(seen, every, "{count} partitions cover every event once");
    }
    // The largest counts too (the SQL stores compute the remainder of an unsigned 64-bit
    // hash): each stream found in the partition computed here.
    for count in [65_521u32, annals::Partition::MAX_COUNT] {
        for e in all.iter().filter(|e| e.stream_version == 0) {
            let index = annals::Partition::of(&e.stream, count);
            let part = read_filtered(
                &store,
                Filter::all().partition(annals::Partition::new(index, count)),
                100,
            )
            .await;
            assert!(
                part.iter().any(|p| p.event_id == e.event_id),
                "{} in {index}/{count}",
                e.stream
            );
            assert!(part
                .iter()
                .all(|p| annals::Partition::of(&p.stream, count) == index));
        }
    }
    let alpha_half = Filter::category("Alpha").partition(annals::Partition::new(1, 2));
    let expected: Vec<Uuid> = all
        .iter()
        .filter(|e| alpha_half.matches(e))
        .map(|e| e.event_id)
        .collect();
    let got: Vec<Uuid> = read_filtered(&store, alpha_half, 4)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(got, expected);
    for bad in [annals::Partition::new(2, 2), annals::Partition::new(0, 0)] {
        assert!(matches!(
            s.read_all(Position::START, &Filter::all().partition(bad), 10)
                .await,
            Err(Error::InvalidFilter { .. })
        ));
    }
    let past_end = s
        .read_all(all.last().unwrap().position, &Filter::all(), 10)
        .await
        .unwrap();
    assert!(past_end.events.is_empty() && past_end.end);
}

async fn read_filtered(
    store: &Arc<dyn EventStore>,
    filter: Filter,
    page: usize,
) -> Vec<RecordedEvent> {
    let options = annals::FeedOptions::to_end(filter).page_size(page);
    annals::Feed::new(Arc::clone(store), Position::START, options)
        .events()
        .map(|e| e.expect("read the feed"))
        .collect()
        .await
}

async fn collect_until(sub: &mut annals::Subscription, count: usize) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Ok(e))) => got.push(e),
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended after {} of {count} events", got.len()),
            Err(_) => panic!(
                "subscription delivered {} of {count} events within {WAIT:?}",
                got.len()
            ),
        }
    }
    got
}

/// A subscription started from the beginning while writers append sees every event
/// exactly once, in position order, across the switch from catch-up to live.
pub async fn subscription_sees_every_event_once_across_catch_up_and_live(
    store: Arc<dyn EventStore>,
) {
    for i in 0..20 {
        append(
            &*store,
            &name(&format!("Sub-pre{}", i % 4)),
            ExpectedVersion::Any,
            3,
        )
        .await;
    }
    let options = SubscribeOptions {
        batch_size: 7,
        ..SubscribeOptions::all()
    };
    let mut sub = store.subscribe(Position::START, options);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..25 {
                    let stream = name(&format!("Sub-live{w}_{}", i % 3));
                    store
                        .append(&stream, ExpectedVersion::Any, batch(2))
                        .await
                        .expect("live append");
                    if i % 5 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let total = 60 + 4 * 25 * 2;
    let got = collect_until(&mut sub, total).await;
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        got.windows(2).all(|w| w[0].position < w[1].position),
        "delivered in position order"
    );
    let ids: HashSet<Uuid> = got.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), total, "no event delivered twice");
    let stored: HashSet<Uuid> = read_everything(&store)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, stored, "every stored event delivered");
    let mut next_version: HashMap<StreamName, u64> = HashMap::new();
    for e in &got {
        let expect = next_version.entry(e.stream.clone()).or_default();
        assert_eq!(
            e.stream_version, *expect,
            "stream {} delivered out of order",
            e.stream
        );
        *expect += 1;
    }
    append(&*store, &name("Sub-after"), ExpectedVersion::Any, 1).await;
    assert_eq!(
        collect_until(&mut sub, 1).await[0].stream,
        name("Sub-after")
    );
}

/// A subscription from a checkpoint sees only later events; a category subscription sees
/// only its category.
pub async fn subscription_resumes_after_a_checkpoint(store: Arc<dyn EventStore>) {
    let s = &*store;
    for i in 0..5 {
        append(s, &name(&format!("Resume-{i}")), ExpectedVersion::Any, 2).await;
        append(s, &name(&format!("Other-{i}")), ExpectedVersion::Any, 1).await;
    }
    let all = read_everything(&store).await;
    let checkpoint = all[6].position;
    let mut sub = store.subscribe(checkpoint, SubscribeOptions::all());
    let rest = collect_until(&mut sub, all.len() - 7).await;
    assert_eq!(
        rest.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        all[7..].iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    let mut cat = store.subscribe(checkpoint, SubscribeOptions::category("Other"));
    let expected: Vec<Uuid> = all[7..]
        .iter()
        .filter(|e| e.stream.category() == "Other")
        .map(|e| e.event_id)
        .collect();
    let got = collect_until(&mut cat, expected.len()).await;
    assert_eq!(got.iter().map(|e| e.event_id).collect::<Vec<_>>(), expected);
    append(s, &name("Resume-9"), ExpectedVersion::Any, 1).await;
    append(s, &name("Other-9"), ExpectedVersion::Any, 1).await;
    assert_eq!(collect_until(&mut cat, 1).await[0].stream, name("Other-9"));
    let live = collect_until(&mut sub, 2).await;
    assert_eq!(
        (live[0].stream.as_str(), live[1].stream.as_str()),
        ("Resume-9", "Other-9")
    );
}

/// A multi-stream append commits every stream or none; a store without the capability
/// refuses it with a typed error.
pub async fn multi_stream_append_is_atomic_or_refused(store: Arc<dyn EventStore>) {
    let s = &*store;
    let (a, b) = (name("Multi-a"), name("Multi-b"));
    let appends = |ea: ExpectedVersion, eb: ExpectedVersion| {
        vec![
            StreamAppend {
                stream: a.clone(),
                expected: ea,
                events: batch(2),
            },
            StreamAppend {
                stream: b.clone(),
                expected: eb,
                events: batch(1),
            },
        ]
    };
    if !s.capabilities().supports(Capability::MultiStreamAppend) {
        match s
            .append_many(appends(ExpectedVersion::Any, ExpectedVersion::Any))
            .await
        {
            Err(Error::Unsupported {
                capability: Capability::MultiStreamAppend,
                ..
            }) => {}
            other => panic!("expected an unsupported-capability error, got {other:?}"),
        }
        assert!(read_everything(&store).await.is_empty());
        return;
    }
    let first = appends(ExpectedVersion::NoStream, ExpectedVersion::NoStream);
    let r = s.append_many(first.clone()).await.unwrap();
    assert_eq!((r[0].version, r[1].version), (Version(2), Version(1)));
    let again = s.append_many(first).await.unwrap();
    assert_eq!(
        again, r,
        "an exact retry of a committed multi-stream append writes nothing"
    );
    assert_conflict(
        s.append_many(appends(
            ExpectedVersion::Exact(Version(2)),
            ExpectedVersion::NoStream,
        ))
        .await,
        1,
    );
    assert_eq!(
        s.stream_version(&a).await.unwrap(),
        Version(2),
        "a conflict in one stream writes no stream"
    );
    let dup = vec![
        StreamAppend {
            stream: a.clone(),
            expected: ExpectedVersion::Any,
            events: batch(1),
        },
        StreamAppend {
            stream: a.clone(),
            expected: ExpectedVersion::Any,
            events: batch(1),
        },
    ];
    assert!(matches!(
        s.append_many(dup).await,
        Err(Error::DuplicateStreamInBatch { .. })
    ));
    let r = s
        .append_many(appends(
            ExpectedVersion::Exact(Version(2)),
            ExpectedVersion::Exact(Version(1)),
        ))
        .await
        .unwrap();
    assert_eq!((r[0].version, r[1].version), (Version(4), Version(2)));
    assert_eq!(read_everything(&store).await.len(), 6);
}

/// Checkpoints: nothing before the first commit; commit, reload, overwrite, list in order,
/// Head snapshots (when offered): written only when the append writes, read back with the
/// events after them, untouched by refused appends and exact retries; stores without the
/// capability refuse both calls with a typed error.
pub async fn head_snapshots_ride_with_appends(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("Head-1");
    if !s.capabilities().supports(Capability::HeadSnapshots) {
        let refused = s
            .append_with_snapshot(&stream, ExpectedVersion::Any, batch(1), b"s".to_vec())
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::HeadSnapshots,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(
            s.stream_version(&stream).await.expect("version"),
            Version(0)
        );
        let read = s.read_head(&stream, 10).await;
        assert!(matches!(read, Err(Error::Unsupported { .. })), "{read:?}");
        return;
    }
    let stream = &stream;
    let head = |limit| async move { s.read_head(stream, limit).await.expect("read_head") };
    assert_eq!(head(10).await, Head::default(), "a missing stream");
    append(s, stream, ExpectedVersion::NoStream, 2).await;
    let plain = head(10).await;
    assert_eq!((plain.version, plain.snapshot.as_ref()), (Version(2), None));
    assert_eq!(
        plain.events.len(),
        2,
        "without a snapshot, the events from the start"
    );

    let first = batch(1);
    let written = s
        .append_with_snapshot(
            stream,
            ExpectedVersion::Exact(Version(2)),
            first.clone(),
            b"at 3".to_vec(),
        )
        .await
        .expect("append with snapshot");
    assert_eq!(written.version, Version(3));
    let h = head(10).await;
    assert_eq!(h.version, Version(3));
    assert_eq!(
        h.snapshot,
        Some(HeadSnapshot {
            version: Version(3),
            data: b"at 3".to_vec()
        })
    );
    assert!(
        h.events.is_empty(),
        "nothing after the snapshot: {:?}",
        h.events
    );

    // A refused append and an exact retry leave the snapshot alone.
    let refused = s
        .append_with_snapshot(
            stream,
            ExpectedVersion::Exact(Version(1)),
            batch(1),
            b"no".to_vec(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::WrongExpectedVersion { .. })),
        "{refused:?}"
    );
    let retried = s
        .append_with_snapshot(
            stream,
            ExpectedVersion::Exact(Version(2)),
            first,
            b"retry".to_vec(),
        )
        .await
        .expect("an exact retry succeeds");
    assert_eq!(retried, written);
    assert_eq!(head(10).await, h);

    // Plain appends after it: the snapshot stays, the events after it come with it.
    append(s, stream, ExpectedVersion::Exact(Version(3)), 3).await;
    let h = head(10).await;
    assert_eq!(h.version, Version(6));
    assert_eq!(h.snapshot.as_ref().map(|s| s.version), Some(Version(3)));
    let after: Vec<u64> = h.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(after, vec![3, 4, 5]);
    let limited = head(2).await;
    let after: Vec<u64> = limited.events.iter().map(|e| e.stream_version).collect();
    assert_eq!((limited.version, after), (Version(6), vec![3, 4]));
    assert_eq!(
        h.events,
        read(s, stream, ReadStream::forward_from(Version(3))).await,
        "the events after the snapshot are the stream's"
    );
}

/// Accounts for the transaction tests: a balance moved by transfers.
struct Accounts;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Movement {
    Credited { amount: i64 },
    Debited { amount: i64 },
}

impl annals::Domain for Accounts {
    type Event = Movement;
    type State = i64;
    fn initial() -> i64 {
        0
    }
    fn evolve(balance: i64, event: &Movement) -> i64 {
        match event {
            Movement::Credited { amount } => balance + amount,
            Movement::Debited { amount } => balance - amount,
        }
    }
}

fn accounts(store: &Arc<dyn EventStore>) -> annals::Category<Accounts> {
    annals::Category::new("Account", Arc::clone(store), annals::JsonCodec::new())
        .expect("a valid category")
}

/// Moves `amount` from the first decider's account to the second's.
fn transfer(amount: i64) -> impl FnMut(&[&i64]) -> ((), Vec<Vec<Movement>>) {
    move |_| {
        (
            (),
            vec![
                vec![Movement::Debited { amount }],
                vec![Movement::Credited { amount }],
            ],
        )
    }
}

/// Multi-stream transactions through the decider: a conflict on any stream writes nothing
/// on any, and the resync decides again on fresh states; stores without the capability
/// refuse with a typed error before writing.
pub async fn transactions_commit_all_or_nothing(store: Arc<dyn EventStore>) {
    let cache = Arc::new(annals::Cache::new(16));
    let category = accounts(&store).with_cache(cache);
    let a = category.decider("tx-a").expect("a valid id");
    let b = category.decider("tx-b").expect("a valid id");
    let seed = |d: &annals::Decider<Accounts>, amount| {
        let d = d.clone_with_load(annals::LoadOption::RequireLoad);
        async move {
            d.transact(|_| vec![Movement::Credited { amount }])
                .await
                .expect("seed")
        }
    };
    if !store.capabilities().supports(Capability::MultiStreamAppend) {
        seed(&a, 10).await;
        let refused = annals::transact_many(
            &[
                a.clone_with_load(annals::LoadOption::RequireLoad),
                b.clone_with_load(annals::LoadOption::RequireLoad),
            ],
            transfer(1),
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::MultiStreamAppend,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(
            store.stream_version(a.stream()).await.expect("version"),
            Version(1)
        );
        assert_eq!(
            store.stream_version(b.stream()).await.expect("version"),
            Version(0)
        );
        return;
    }
    seed(&a, 10).await;
    seed(&b, 5).await;
    // The cache now holds both accounts; a write to `b` behind its back makes the cached
    // state stale, so a transaction loading from the cache conflicts on `b` alone.
    let stale =
        |d: &annals::Decider<Accounts>| d.clone_with_load(annals::LoadOption::AnyCachedValue);
    store
        .append(
            b.stream(),
            ExpectedVersion::Exact(Version(1)),
            vec![annals::Codec::encode(
                &annals::JsonCodec::<Movement>::new(),
                &Movement::Credited { amount: 100 },
                &annals::EncodeContext::default(),
            )
            .expect("encodes")],
        )
        .await
        .expect("a write behind the cache");

    let once = category.clone().with_max_attempts(1);
    let (a1, b1) = (
        once.decider("tx-a").expect("id"),
        once.decider("tx-b").expect("id"),
    );
    let exhausted = annals::transact_many(&[stale(&a1), stale(&b1)], transfer(3)).await;
    assert!(
        matches!(exhausted, Err(Error::ResyncExhausted { .. })),
        "{exhausted:?}"
    );
    assert_eq!(
        store.stream_version(a.stream()).await.expect("version"),
        Version(1),
        "the conflict on the other stream wrote nothing here"
    );

    let mut seen = Vec::new();
    annals::transact_many(&[stale(&a), stale(&b)], |states| {
        seen.push((*states[0], *states[1]));
        transfer(3)(states)
    })
    .await
    .expect("the resync succeeds");
    assert_eq!(
        seen,
        vec![(10, 5), (10, 105)],
        "decided again on fresh states"
    );
    let a_now = a.load().await.expect("load");
    let b_now = b.load().await.expect("load");
    assert_eq!((*a_now.state, a_now.version), (7, Version(2)));
    assert_eq!((*b_now.state, b_now.version), (108, Version(3)));
}

/// Concurrent transfers between two accounts, half naming them in one order and half in
/// the other, all complete (no deadlock) and conserve the total.
pub async fn opposite_order_transactions_do_not_deadlock(store: Arc<dyn EventStore>) {
    if !store.capabilities().supports(Capability::MultiStreamAppend) {
        return;
    }
    let category = accounts(&store).with_max_attempts(10_000);
    let (tasks, each) = (4, 20);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let category = category.clone();
        handles.push(tokio::spawn(async move {
            let (x, y) = if t % 2 == 0 {
                ("dl-a", "dl-b")
            } else {
                ("dl-b", "dl-a")
            };
            let pair = [
                category.decider(x).expect("id"),
                category.decider(y).expect("id"),
            ];
            for _ in 0..each {
                annals::transact_many(&pair, transfer(1))
                    .await
                    .expect("a transfer");
            }
        }));
    }
    let all = futures::future::join_all(handles);
    let done = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("transfers in opposite orders finish (no deadlock)");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    let a = category
        .decider("dl-a")
        .expect("id")
        .load()
        .await
        .expect("load");
    let b = category
        .decider("dl-b")
        .expect("id")
        .load()
        .await
        .expect("load");
    assert_eq!(*a.state + *b.state, 0, "transfers conserve the total");
    assert_eq!(a.version.get() + b.version.get(), 2 * tasks * each);
    assert_eq!(*a.state, 0, "as many transfers each way");
}

/// What a copy of an event must keep: everything but its position.
pub fn copy_key(e: &RecordedEvent) -> impl PartialEq + std::fmt::Debug {
    (
        e.stream.clone(),
        e.stream_version,
        e.event_id,
        e.event_type.clone(),
        e.data.clone(),
        e.metadata.clone(),
        e.correlation_id,
        e.causation_id,
        e.recorded_at,
    )
}

/// Importing another store's events: versions, ids, content and timestamps kept, read-all
/// order kept, already imported events skipped (a resumed import), a gap refused with
/// nothing written; stores without the capability refuse with a typed error.
pub async fn import_keeps_events_and_order_and_resumes(store: Arc<dyn EventStore>) {
    let source = annals::MemoryStore::new();
    for i in 0..12u64 {
        let stream = name(&format!("Imported-{}", i % 3));
        let mut e = ev("Happened", i).with_metadata(format!(r#"{{"i":{i}}}"#).into_bytes());
        e.correlation_id = Some(Uuid::now_v7());
        source
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .expect("source append");
    }
    let events = source
        .read_all(Position::START, &Filter::all(), 100)
        .await
        .expect("source read")
        .events;
    if !store.capabilities().supports(Capability::Import) {
        let refused = store.import(events).await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::Import,
                    ..
                })
            ),
            "{refused:?}"
        );
        return;
    }
    assert_eq!(store.import(events[..5].to_vec()).await.expect("import"), 5);
    assert_eq!(
        store.import(events.clone()).await.expect("resumed import"),
        7,
        "the first five are recognised and skipped"
    );
    assert_eq!(store.import(events.clone()).await.expect("again"), 0);
    store.await_visible().await.expect("await visibility");
    let copied = store
        .read_all(Position::START, &Filter::category("Imported"), 100)
        .await
        .expect("read");
    assert_eq!(
        copied.events.iter().map(copy_key).collect::<Vec<_>>(),
        events.iter().map(copy_key).collect::<Vec<_>>(),
        "same events, same order"
    );
    // An id recorded in another stream: a typed refusal, nothing written.
    let mut stolen = events[0].clone();
    stolen.stream = name("Imported-thief");
    let refused = store.import(vec![stolen.clone()]).await;
    assert!(
        matches!(&refused, Err(Error::DuplicateEventId { existing_stream, .. }) if *existing_stream == events[0].stream),
        "{refused:?}"
    );
    assert_eq!(
        store.stream_version(&stolen.stream).await.expect("version"),
        Version(0)
    );
    // A gap: a new event is refused with the batch, nothing written.
    let mut next = events[0].clone();
    next.stream = name("Imported-new");
    next.event_id = Uuid::now_v7();
    let mut gap = next.clone();
    gap.stream_version = 5;
    gap.event_id = Uuid::now_v7();
    let refused = store.import(vec![next.clone(), gap]).await;
    assert!(
        matches!(
            &refused,
            Err(Error::WrongExpectedVersion {
                actual: Version(1),
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        store.stream_version(&next.stream).await.expect("version"),
        Version(0),
        "nothing of the refused batch is written"
    );
}

/// groups and sources kept apart.
pub async fn checkpoints_load_commit_and_list(store: Arc<dyn annals::CheckpointStore>) {
    assert_eq!(store.load("g1", "all").await.unwrap(), None);
    store
        .commit("g1", "all", Position::from_raw(5))
        .await
        .unwrap();
    store
        .commit("g1", "Cart", Position::from_raw(7))
        .await
        .unwrap();
    store
        .commit("g0", "all", Position::from_raw(1))
        .await
        .unwrap();
    assert_eq!(
        store.load("g1", "all").await.unwrap(),
        Some(Position::from_raw(5))
    );
    store
        .commit("g1", "all", Position::from_raw(9))
        .await
        .unwrap();
    assert_eq!(
        store.load("g1", "all").await.unwrap(),
        Some(Position::from_raw(9))
    );
    assert_eq!(store.load("g2", "all").await.unwrap(), None);
    let listed: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.group, c.source, c.position))
        .collect();
    let p = Position::from_raw;
    assert_eq!(
        listed,
        vec![
            ("g0".to_owned(), "all".to_owned(), p(1)),
            ("g1".to_owned(), "Cart".to_owned(), p(7)),
            ("g1".to_owned(), "all".to_owned(), p(9)),
        ]
    );
}

/// Leases: a lone member claims every partition; a second member gets only what is free
/// until the first releases its excess; a member's leases survive its renewals; leases of a
/// member that stops renewing expire and go to others; a release frees a lease at once;
/// one member never holds another's unexpired lease.
pub async fn leases_claim_share_expire_and_release(store: Arc<dyn annals::LeaseStore>) {
    use std::time::Duration;
    let long = Duration::from_secs(60);
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1, 2, 3], "a lone member claims everything");
    assert_eq!((a.fair_share, a.live_members), (4, 1));
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert!(b.held.is_empty(), "b may not take a's unexpired leases");
    assert_eq!((b.fair_share, b.live_members), (2, 2));
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1, 2, 3], "renewal keeps every lease");
    assert_eq!(a.fair_share, 2, "a is told to hold two");
    store.release("g", "a", &[2, 3]).await.unwrap();
    store.release("g", "b", &[0]).await.unwrap(); // not b's: nothing happens
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert_eq!(b.held, vec![2, 3], "released leases are free at once");
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1]);
    // Another group is separate.
    let other = store.acquire("h", "b", 4, long).await.unwrap();
    assert_eq!(other.held, vec![0, 1, 2, 3]);
    // c holds a short lease and stops renewing: once it expires, d takes it over.
    let c = store
        .acquire("short", "c", 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(c.held, vec![0]);
    let started = std::time::Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d = store.acquire("short", "d", 1, long).await.unwrap();
            if !d.held.is_empty() {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("an expired lease is taken over");
    assert_eq!(d.held, vec![0]);
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "not before it expired: {:?}",
        started.elapsed()
    );
    let c = store.acquire("short", "c", 1, long).await.unwrap();
    assert!(c.held.is_empty(), "c lost it for good");
    // a leaves: b's fair share is everything at once, and it claims a's partitions.
    store.leave("g", "a").await.unwrap();
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert_eq!((b.fair_share, b.live_members), (4, 1));
    assert_eq!(b.held, vec![0, 1, 2, 3]);
}

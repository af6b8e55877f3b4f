//! The conformance suite: every store must pass every function here.
//!
//! Each function takes a fresh, empty store and panics (through assertions) when the store
//! breaks the contract of [`annals::EventStore`]. Capability differences are read from
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

/// Appends racing to different streams with one event id in common (a client sending one
/// event twice): exactly one is written; each other one is refused with
/// [`Error::DuplicateEventId`] naming the winner's stream, and none of its events is written;
/// appends made at the same moment without the shared id all land.
pub async fn concurrent_appends_sharing_an_event_id_write_it_once(store: Arc<dyn EventStore>) {
    let shared = ev("Shared", 0);
    let racing: Vec<_> = (0..8u64)
        .map(|i| {
            let (store, shared) = (Arc::clone(&store), shared.clone());
            tokio::spawn(async move {
                let stream = name(&format!("DupRace-{i}"));
                let r = store
                    .append(&stream, ExpectedVersion::Any, vec![ev("Own", i), shared])
                    .await;
                (stream, r)
            })
        })
        .collect();
    let bystanders: Vec<_> = (0..8u64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let stream = name(&format!("DupBystander-{i}"));
                store
                    .append(&stream, ExpectedVersion::Any, vec![ev("Own", 100 + i)])
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in racing {
        outcomes.push(t.await.expect("task"));
    }
    for t in bystanders {
        assert!(
            t.await.expect("task").is_ok(),
            "an append without the shared id failed"
        );
    }
    let winners: Vec<&StreamName> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "one append writes the shared event: {outcomes:?}"
    );
    let winner = winners[0].clone();
    for (stream, r) in &outcomes {
        match r {
            Ok(_) => assert_eq!(store.stream_version(stream).await.unwrap(), Version(2)),
            Err(Error::DuplicateEventId {
                event_id,
                existing_stream,
            }) => {
                assert_eq!(*event_id, shared.event_id);
                assert_eq!(*existing_stream, winner);
                assert_eq!(store.stream_version(stream).await.unwrap(), Version(0));
            }
            Err(e) => panic!("{stream}: expected a duplicate event id error, got {e:?}"),
        }
    }
    let all = read_everything(&store).await;
    assert_eq!(
        all.len(),
        2 + 8,
        "the winner's two events and the bystanders' eight"
    );
    assert_eq!(
        all.iter().filter(|e| e.event_id == shared.event_id).count(),
        1
    );
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
    // The store's own streams (a forged deletion record would be replayed as a deletion
    // by copies and read models), alone or in a multi-stream append.
    let forged = EventData::new(
        annals::STREAM_DELETED,
        br#"{"stream":"Bad-1","version":0,"hard":true}"#.to_vec(),
    );
    for reserved in ["Bad-$deleted", "Bad-$any"] {
        let reserved = name(reserved);
        match s
            .append(&reserved, ExpectedVersion::Any, vec![forged.clone()])
            .await
        {
            Err(Error::ReservedStream { stream }) => assert_eq!(stream, reserved),
            other => panic!("expected {reserved} refused as reserved, got {other:?}"),
        }
        if s.capabilities().multi_stream_append {
            let appends = vec![
                StreamAppend {
                    stream: name("Bad-2"),
                    expected: ExpectedVersion::Any,
                    events: vec![ev("Ok", 0)],
                },
                StreamAppend {
                    stream: reserved.clone(),
                    expected: ExpectedVersion::Any,
                    events: vec![ev("Ok", 1)],
                },
            ];
            assert!(matches!(
                s.append_many(appends).await,
                Err(Error::ReservedStream { .. })
            ));
        }
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
    assert_eq!(
        (got[1].position, got[2].position),
        (r2.first_position, r2.last_position),
        "a batch's result spans its events' positions"
    );
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

/// A stream read a page at a time gives exactly the events of the same read one at a time,
/// over several of the store's pages, in both directions, with and without limits; no page
/// is empty; a deleted stream fails the same way both ways.
pub async fn read_stream_pages_agree_with_read_stream(store: Arc<dyn EventStore>) {
    use futures::TryStreamExt;
    let s = &*store;
    let stream = name("Pages-1");
    let mut version = ExpectedVersion::NoStream;
    for _ in 0..5 {
        let written = append(s, &stream, version, 500).await;
        version = ExpectedVersion::Exact(written.version);
    }
    let reads = [
        ReadStream::forward(),
        ReadStream::forward().limit(1000),
        ReadStream::forward().limit(1001),
        ReadStream::forward_from(Version(999)).limit(1502),
        ReadStream::forward_from(Version(1000)),
        ReadStream::forward_from(Version(2500)),
        ReadStream::backward(),
        ReadStream::backward().limit(1000),
        ReadStream::backward_from(Version(2000)).limit(1999),
        ReadStream::backward_from(Version(1)),
        ReadStream::backward_from(Version(0)),
    ];
    for options in reads {
        let one_by_one: Vec<RecordedEvent> = s
            .read_stream(&stream, options)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("read_stream {options:?}: {e}"));
        let pages: Vec<Vec<RecordedEvent>> = s
            .read_stream_pages(&stream, options)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("read_stream_pages {options:?}: {e}"));
        assert!(
            pages.iter().all(|p| !p.is_empty()),
            "{options:?}: an empty page among {:?}",
            pages.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let paged: Vec<RecordedEvent> = pages.into_iter().flatten().collect();
        assert_eq!(paged, one_by_one, "{options:?}");
        assert_eq!(read(s, &stream, options).await, one_by_one, "{options:?}");
    }
    let missing = name("Pages-missing");
    let pages: Vec<Vec<RecordedEvent>> = s
        .read_stream_pages(&missing, ReadStream::forward())
        .try_collect()
        .await
        .expect("read a missing stream");
    assert!(pages.is_empty(), "a missing stream has no pages");
    if s.capabilities().deletion {
        let gone = name("Pages-deleted");
        let written = append(s, &gone, ExpectedVersion::NoStream, 3).await;
        s.delete_stream(
            &gone,
            ExpectedVersion::Exact(written.version),
            annals::DeleteMode::Hard,
        )
        .await
        .expect("delete");
        let paged = s
            .read_stream_pages(&gone, ReadStream::forward())
            .try_collect::<Vec<_>>()
            .await;
        assert!(
            matches!(paged, Err(Error::StreamDeleted { .. })),
            "pages of a deleted stream: {paged:?}"
        );
        let one_by_one = s
            .read_stream(&gone, ReadStream::forward())
            .try_collect::<Vec<_>>()
            .await;
        assert!(
            matches!(one_by_one, Err(Error::StreamDeleted { .. })),
            "events of a deleted stream: {one_by_one:?}"
        );
    }
}

mod append_at;
mod bounds;
mod capabilities;
mod coordination;
mod copies;
mod deletion;
mod feed;
mod hidden;
mod retention;
mod transactions;

pub use append_at::*;
pub use bounds::*;
pub use capabilities::*;
pub use coordination::*;
pub use copies::*;
pub use deletion::*;
pub use feed::*;
pub use hidden::*;
pub use retention::*;
pub use transactions::*;

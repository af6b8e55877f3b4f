//! `append_at`: the decider's append, whose refusal carries what the caller needs to
//! catch up.

use std::sync::Arc;

use annals::{AppendAt, EventStore, ExpectedVersion, ReadStream, Version, CONFLICT_EVENTS};

use super::{append, batch, name, read, read_everything, versions};

/// `append_at` writes as an exact append; a refusal writes nothing and answers the actual
/// version and the stream's events from the expected version on (at most
/// [`CONFLICT_EVENTS`]), exactly as they are stored; an exact retry answers the original
/// result.
pub async fn append_at_answers_a_conflict_with_the_events_after(store: Arc<dyn EventStore>) {
    let s = &*store;
    let stream = name("At-1");
    let first = batch(2);
    let written = match s.append_at(&stream, Version(0), first.clone()).await {
        Ok(AppendAt::Written(r)) => r,
        other => panic!("a new stream at version 0 is written: {other:?}"),
    };
    assert_eq!(written.version, Version(2));
    assert_eq!(
        s.append_at(&stream, Version(0), first).await.unwrap(),
        AppendAt::Written(written),
        "an exact retry answers the original result"
    );
    append(s, &stream, ExpectedVersion::Exact(Version(2)), 3).await;
    let stored = read(s, &stream, ReadStream::forward()).await;
    let conflict = |at: u64, answer: annals::Result<AppendAt>| match answer {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(5), "the actual version, appending at {at}");
            events
        }
        other => panic!("appending at {at} to a stream at 5 is refused: {other:?}"),
    };
    // Behind: the events from the version expected on, as stored.
    let events = conflict(2, s.append_at(&stream, Version(2), batch(1)).await);
    assert_eq!(events, stored[2..], "the events after the caller's version");
    let events = conflict(0, s.append_at(&stream, Version(0), batch(1)).await);
    assert_eq!(events, stored);
    // Ahead of the stream: nothing to catch up with.
    let events = conflict(9, s.append_at(&stream, Version(9), batch(1)).await);
    assert!(events.is_empty());
    // A stream that does not exist, expected at 3.
    match s.append_at(&name("At-none"), Version(3), batch(1)).await {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(0));
            assert!(events.is_empty());
        }
        other => panic!("a missing stream is at 0: {other:?}"),
    }
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(5));
    assert_eq!(
        read_everything(&store).await.len(),
        5,
        "refusals wrote nothing"
    );
    match s.append_at(&stream, Version(5), batch(1)).await {
        Ok(AppendAt::Written(r)) => assert_eq!(r.version, Version(6)),
        other => panic!("at the actual version it is written: {other:?}"),
    }
    // A long stream: the first CONFLICT_EVENTS events after the version expected.
    let long = name("At-2");
    append(s, &long, ExpectedVersion::NoStream, 1000).await;
    append(s, &long, ExpectedVersion::Exact(Version(1000)), 5).await;
    match s.append_at(&long, Version(1), batch(1)).await {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(1005));
            assert_eq!(events.len(), CONFLICT_EVENTS);
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            assert_eq!(versions, (1..=CONFLICT_EVENTS as u64).collect::<Vec<_>>());
        }
        other => panic!("appending at 1 to a stream at 1005 is refused: {other:?}"),
    }
}

/// `append_at_shown`: an append for a state folded from the stream's events from a given
/// version on is refused, nothing written, once a deletion or truncation has hidden any of
/// them (answered as a conflict at the version expected, with no events); it is written
/// when they are all still shown, when it asks nothing (from the version itself), or as an
/// exact retry. A head snapshot riding with it is refused the same way. Version conflicts
/// are answered as by `append_at`.
pub async fn append_at_shown_is_refused_once_the_events_folded_are_hidden(
    store: Arc<dyn EventStore>,
) {
    let s = &*store;
    let stream = name("Shown-1");
    let shown = |version: u64, from: u64, events| {
        s.append_at_shown(&stream, Version(version), Version(from), events, None)
    };
    let written = |at: u64, answer: annals::Result<AppendAt>| match answer {
        Ok(AppendAt::Written(r)) => r,
        other => panic!("appending at {at} is written: {other:?}"),
    };
    append(s, &stream, ExpectedVersion::NoStream, 3).await;
    assert_eq!(written(3, shown(3, 0, batch(1)).await).version, Version(4));
    if !s.capabilities().deletion {
        return;
    }
    let start_moved = |at: u64, answer: annals::Result<AppendAt>| match answer {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(at), "refused at the version expected");
            assert!(events.is_empty(), "{events:?}");
        }
        other => panic!("appending at {at} after hidden events is refused: {other:?}"),
    };
    use annals::DeleteMode;
    s.truncate_before(&stream, Version(2)).await.unwrap();
    let before = read_everything(&store).await;
    start_moved(4, shown(4, 0, batch(1)).await);
    start_moved(4, shown(4, 1, batch(1)).await);
    assert_eq!(
        read_everything(&store).await,
        before,
        "refusals wrote nothing"
    );
    assert_eq!(s.stream_version(&stream).await.unwrap(), Version(4));
    // The events from 2 on are all shown; from the version itself asks nothing.
    let retried = batch(1);
    let at_2 = written(4, shown(4, 2, retried.clone()).await);
    assert_eq!(at_2.version, Version(5));
    // An exact retry answers its result, whatever it asks.
    assert_eq!(written(4, shown(4, 0, retried).await), at_2);
    assert_eq!(written(5, shown(5, 5, batch(1)).await).version, Version(6));
    // Soft deletion hides everything: only a state holding none of the events may write.
    s.delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    start_moved(6, shown(6, 2, batch(1)).await);
    start_moved(6, shown(6, 5, batch(1)).await);
    // A version conflict answers the events reads show from the version expected on.
    match shown(3, 0, batch(1)).await {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(6));
            assert!(events.is_empty(), "every event is hidden: {events:?}");
        }
        other => panic!("appending at 3 to a stream at 6 is refused: {other:?}"),
    }
    assert_eq!(written(6, shown(6, 6, batch(2)).await).version, Version(8));
    match shown(7, 6, batch(1)).await {
        Ok(AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(8));
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            assert_eq!(versions, [7]);
        }
        other => panic!("appending at 7 to a stream at 8 is refused: {other:?}"),
    }
    assert_eq!(written(8, shown(8, 6, batch(1)).await).version, Version(9));
    // Events written after the deletion keep its start.
    start_moved(9, shown(9, 5, batch(1)).await);
    let shown_now = versions(s, &stream, ReadStream::forward()).await;
    assert_eq!(shown_now, [6, 7, 8]);

    // With a head snapshot: refused alike, the snapshot not written.
    if s.capabilities().head_snapshots {
        let headed = name("Shown-2");
        let with_head = |version: u64, from: u64, snapshot: &[u8]| {
            let snapshot = Some(snapshot.to_vec());
            s.append_at_shown(&headed, Version(version), Version(from), batch(1), snapshot)
        };
        written(0, with_head(0, 0, b"one").await);
        written(1, with_head(1, 0, b"two").await);
        s.truncate_before(&headed, Version(1)).await.unwrap();
        start_moved(2, with_head(2, 0, b"stale").await);
        let head = s.read_head(&headed, 10).await.unwrap();
        assert_eq!(head.version, Version(2));
        assert_eq!(head.start, Version(1), "the stream starts at 1");
        assert!(
            head.snapshot.is_none(),
            "truncation dropped the snapshot: {head:?}"
        );
        written(2, with_head(2, 1, b"three").await);
        let head = s.read_head(&headed, 10).await.unwrap();
        let snapshot = head.snapshot.expect("the snapshot written with the append");
        assert_eq!(
            (snapshot.version, &snapshot.data[..]),
            (Version(3), &b"three"[..])
        );
    }
}

/// `read_page_from`: the first page forward from a version (fewer events than asked only
/// at the stream's end), as `read_stream` shows them, and, on a store that hides events,
/// where the stream starts, read with them.
pub async fn read_page_from_says_where_the_stream_starts(store: Arc<dyn EventStore>) {
    let s = &*store;
    let hides = s.capabilities().deletion;
    let stream = name("Started-1");
    let page = |from: u64, limit: usize| {
        let stream = &stream;
        async move {
            let page = s
                .read_page_from(stream, Version(from), limit)
                .await
                .unwrap_or_else(|e| panic!("reading {stream} from {from}: {e}"));
            let options = ReadStream::forward_from(Version(from)).limit(limit);
            assert_eq!(
                page.events,
                read(s, stream, options).await,
                "{stream} from {from}, {limit} events: as read_stream reads them"
            );
            if hides {
                assert!(page.start.is_some(), "a store that hides events says where");
            }
            let versions: Vec<u64> = page.events.iter().map(|e| e.stream_version).collect();
            (versions, page.start)
        }
    };
    assert_eq!(page(0, 10).await, (vec![], hides.then_some(Version(0))));
    // More than a page of the SQL stores in five appends.
    for n in 0..5 {
        append(s, &stream, ExpectedVersion::Exact(Version(n * 201)), 201).await;
    }
    let start = hides.then_some(Version(0));
    assert_eq!(page(2, 3).await, (vec![2, 3, 4], start));
    assert_eq!(page(0, 1003).await.0, (0..1003).collect::<Vec<_>>());
    assert_eq!(
        page(1000, 10).await,
        (vec![1000, 1001, 1002, 1003, 1004], start)
    );
    assert_eq!(page(1005, 10).await, (vec![], start));
    if !hides {
        return;
    }
    use annals::DeleteMode;
    s.truncate_before(&stream, Version(1002)).await.unwrap();
    let start = Some(Version(1002));
    assert_eq!(page(0, 10).await, (vec![1002, 1003, 1004], start));
    assert_eq!(page(1003, 1).await, (vec![1003], start));
    s.delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    assert_eq!(page(1004, 10).await, (vec![], Some(Version(1005))));
    append(s, &stream, ExpectedVersion::Exact(Version(1005)), 1).await;
    assert_eq!(page(0, 10).await, (vec![1005], Some(Version(1005))));
    s.delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    match s.read_page_from(&stream, Version(0), 10).await {
        Err(annals::Error::StreamDeleted { .. }) => {}
        other => panic!("a tombstone's page is refused: {other:?}"),
    }
}

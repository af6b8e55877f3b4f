//! `append_at`: the decider's append, whose refusal carries what the caller needs to
//! catch up.

use std::sync::Arc;

use annals::{AppendAt, EventStore, ExpectedVersion, ReadStream, Version, CONFLICT_EVENTS};

use super::{append, batch, name, read, read_everything};

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

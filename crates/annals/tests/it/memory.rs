//! What the memory store offers beyond the conformance suite: commit notifications.

use annals::{EventData, EventStore, ExpectedVersion, MemoryStore, StreamAppend, StreamName};

#[tokio::test]
async fn commits_are_delivered_in_order_before_append_returns() {
    let store = MemoryStore::new();
    let mut commits = store.commits();
    let (a, b) = (
        StreamName::new("N-a").unwrap(),
        StreamName::new("N-b").unwrap(),
    );
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![
                EventData::new("X", b"1".to_vec()),
                EventData::new("Y", b"2".to_vec()),
            ],
        )
        .await
        .unwrap();
    let first = commits
        .try_recv()
        .expect("the commit is there as soon as append returns");
    assert_eq!(first.stream, a);
    assert_eq!(
        first
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["X", "Y"]
    );
    store
        .append(
            &b,
            ExpectedVersion::Any,
            vec![EventData::new("Z", b"3".to_vec())],
        )
        .await
        .unwrap();
    store
        .append_many(vec![
            StreamAppend {
                stream: a.clone(),
                expected: ExpectedVersion::Any,
                events: vec![EventData::new("P", b"4".to_vec())],
            },
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::Any,
                events: vec![EventData::new("Q", b"5".to_vec())],
            },
        ])
        .await
        .unwrap();
    let rest: Vec<_> = std::iter::from_fn(|| commits.try_recv().ok()).collect();
    let seen: Vec<_> = rest
        .iter()
        .map(|c| (c.stream.as_str(), c.events[0].event_type.as_str()))
        .collect();
    assert_eq!(seen, [("N-b", "Z"), ("N-a", "P"), ("N-b", "Q")]);
    assert!(rest
        .windows(2)
        .all(|w| w[0].events[0].position < w[1].events[0].position));
    // A refused append sends nothing.
    assert!(store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![EventData::new("R", b"6".to_vec())]
        )
        .await
        .is_err());
    assert!(commits.try_recv().is_err());
}

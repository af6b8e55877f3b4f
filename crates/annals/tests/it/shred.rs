//! The crypto-shredding store wrapper: what it refuses rather than store in clear.

use std::sync::Arc;

use annals::{
    Error, EventData, EventStore, EventStoreExt, ExpectedVersion, InvalidEvent, MemoryKeys,
    MemoryStore, ReadStream, Shredding, StreamAppend, StreamName,
};

/// A body that mentions the personal-data marker but cannot be read as JSON (malformed, or
/// nested past the parser's limit) cannot have its personal fields found: the append is
/// refused with a typed error naming the event, and nothing of it, or of its batch, is
/// written. The same body without the marker, and JSON that only mentions it in a string,
/// pass through as they are.
#[tokio::test]
async fn a_body_whose_personal_fields_cannot_be_found_is_refused_not_stored_in_clear() {
    let memory = Arc::new(MemoryStore::new());
    let store = Shredding::new(memory.clone(), Arc::new(MemoryKeys::new()));
    let stream = StreamName::new("Customer-1").unwrap();
    let deep = format!(
        "{}{{\"$personal\":{{\"subject\":\"c-1\",\"value\":\"ann@example.com\"}}}}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let fine = EventData::new("Noted", br#"{"note":"$personal is a marker"}"#.to_vec());
    for (index, event) in [
        EventData::new("Registered", deep.clone().into_bytes()),
        EventData::new("Registered", br#"{"email": {"$personal": oops"#.to_vec()),
        EventData::new("Registered", b"{}".to_vec())
            .with_metadata(br#"[{"$personal": {"subject": "c-1", "value": 1}"#.to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        let refused = store
            .append(&stream, ExpectedVersion::Any, vec![fine.clone(), event])
            .await
            .unwrap_err();
        assert!(
            matches!(
                &refused,
                Error::InvalidEvent {
                    index: 1,
                    reason: InvalidEvent::PersonalDataUnreadable { part },
                    ..
                } if *part == if index == 2 { "metadata" } else { "data" }
            ),
            "{refused:?}"
        );
        // In a multi-stream append too.
        let many = store
            .append_many(vec![
                StreamAppend {
                    stream: StreamName::new("Customer-2").unwrap(),
                    expected: ExpectedVersion::Any,
                    events: vec![fine.clone()],
                },
                StreamAppend {
                    stream: stream.clone(),
                    expected: ExpectedVersion::Any,
                    events: vec![EventData::new("Registered", deep.clone().into_bytes())],
                },
            ])
            .await;
        assert!(matches!(many, Err(Error::InvalidEvent { .. })), "{many:?}");
    }
    assert_eq!(
        memory.head_position().await.unwrap(),
        None,
        "nothing written"
    );
    store
        .append(&stream, ExpectedVersion::Any, vec![fine.clone()])
        .await
        .unwrap();
    let read = memory
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read[0].data, fine.data);
}

//! Copying events between stores: import.

use super::*;
use annals::DeleteMode;

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

/// An import begins a stream this store does not have at the version of its first event
/// when the older ones are hidden where it was recorded (truncated there): reads show the
/// imported events at their versions, the stream's version follows them, appends go on
/// from it, and running the import again writes nothing; a gap in a stream the store has
/// is still refused.
pub async fn import_begins_a_stream_past_its_hidden_events(store: Arc<dyn EventStore>) {
    if !store.capabilities().supports(Capability::Import) {
        return;
    }
    let source = annals::MemoryStore::new();
    let begun = name("Begun-1");
    source
        .append(&begun, ExpectedVersion::NoStream, batch(4))
        .await
        .expect("source append");
    source
        .truncate_before(&begun, Version(2))
        .await
        .expect("truncate the source");
    let shown: Vec<RecordedEvent> = source
        .read_stream_vec(&begun, ReadStream::forward())
        .await
        .expect("source read");
    assert_eq!(store.import(shown.clone()).await.expect("import"), 2);
    assert_eq!(store.import(shown.clone()).await.expect("again"), 0);
    store.await_visible().await.expect("await visibility");
    let versions = |options| {
        let store = Arc::clone(&store);
        let begun = begun.clone();
        async move {
            store
                .read_stream_vec(&begun, options)
                .await
                .expect("read")
                .iter()
                .map(|e| e.stream_version)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(versions(ReadStream::forward()).await, [2, 3]);
    assert_eq!(versions(ReadStream::backward()).await, [3, 2]);
    assert_eq!(versions(ReadStream::forward_from(Version(1))).await, [2, 3]);
    let copied = store
        .read_stream_vec(&begun, ReadStream::forward())
        .await
        .expect("read");
    assert_eq!(
        copied.iter().map(copy_key).collect::<Vec<_>>(),
        shown.iter().map(copy_key).collect::<Vec<_>>()
    );
    assert_eq!(
        store.stream_version(&begun).await.expect("version"),
        Version(4)
    );
    let written = store
        .append(&begun, ExpectedVersion::Exact(Version(4)), batch(1))
        .await
        .expect("an append goes on from the imported version");
    assert_eq!(written.version, Version(5));
    let mut shown_in_feed: Vec<u64> = read_everything(&store)
        .await
        .iter()
        .filter(|e| e.stream == begun)
        .map(|e| e.stream_version)
        .collect();
    shown_in_feed.sort_unstable();
    assert_eq!(
        shown_in_feed,
        [2, 3, 4],
        "read-all shows the events at their versions"
    );
    // Far in, but within what every store holds; beyond it, refused with nothing written.
    let far = |stream: &str, version: u64| {
        let mut e = shown[0].clone();
        e.stream = name(stream);
        e.event_id = Uuid::now_v7();
        e.stream_version = version;
        e
    };
    assert_eq!(
        store
            .import(vec![far("Begun-far", 100_000)])
            .await
            .expect("import"),
        1
    );
    assert_eq!(
        store
            .stream_version(&name("Begun-far"))
            .await
            .expect("version"),
        Version(100_001)
    );
    for (stream, version) in [("Begun-max", i64::MAX as u64), ("Begun-end", u64::MAX)] {
        let refused = store.import(vec![far(stream, version)]).await;
        assert!(
            matches!(
                &refused,
                Err(Error::WrongExpectedVersion {
                    actual: Version(0),
                    ..
                })
            ),
            "{version}: {refused:?}"
        );
        assert_eq!(
            store.stream_version(&name(stream)).await.expect("version"),
            Version(0)
        );
    }
    // A stream this store has: a later version is still a gap, refused with nothing written.
    let kept = name("Begun-2");
    append(&*store, &kept, ExpectedVersion::NoStream, 1).await;
    let mut later = shown[0].clone();
    later.stream = kept.clone();
    later.event_id = Uuid::now_v7();
    later.stream_version = 3;
    let refused = store.import(vec![later]).await;
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
        store.stream_version(&kept).await.expect("version"),
        Version(1)
    );
}

/// An import begins again, at a later version, a stream this store has with every event
/// hidden (soft-deleted or truncated to its version here, as where it was recorded: written
/// to and then deleted there between two copies): reads show the imported event alone,
/// appends go on after it, and the import again writes nothing. A stream that still shows
/// an event, or a tombstone, is refused with nothing written.
pub async fn import_begins_again_a_stream_whose_events_are_all_hidden(store: Arc<dyn EventStore>) {
    let caps = store.capabilities();
    if !caps.supports(Capability::Import) || !caps.deletion {
        return;
    }
    let (deleted, truncated, partly, gone) = (
        name("Again-1"),
        name("Again-2"),
        name("Again-3"),
        name("Again-4"),
    );
    for stream in [&deleted, &truncated, &partly, &gone] {
        append(&*store, stream, ExpectedVersion::NoStream, 2).await;
    }
    store
        .delete_stream(
            &deleted,
            ExpectedVersion::Exact(Version(2)),
            DeleteMode::Soft,
        )
        .await
        .expect("soft delete");
    store
        .truncate_before(&truncated, Version(2))
        .await
        .expect("truncate to the version");
    store
        .truncate_before(&partly, Version(1))
        .await
        .expect("truncate");
    store
        .delete_stream(&gone, ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .expect("hard delete");
    let source = annals::MemoryStore::new();
    let copied = name("Copied-1");
    source
        .append(&copied, ExpectedVersion::NoStream, batch(5))
        .await
        .expect("source append");
    let at = |stream: &StreamName, version: u64, all: &[RecordedEvent]| {
        let mut e = all[version as usize].clone();
        e.stream = stream.clone();
        e.event_id = Uuid::now_v7();
        e
    };
    let all = source
        .read_stream_vec(&copied, ReadStream::forward())
        .await
        .expect("source read");
    for stream in [&deleted, &truncated] {
        let event = at(stream, 4, &all);
        assert_eq!(
            store.import(vec![event.clone()]).await.expect("import"),
            1,
            "{stream}"
        );
        assert_eq!(
            store.import(vec![event]).await.expect("again"),
            0,
            "{stream}"
        );
        store.await_visible().await.expect("await visibility");
        let shown: Vec<u64> = store
            .read_stream_vec(stream, ReadStream::forward())
            .await
            .expect("read")
            .iter()
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(shown, [4], "{stream}");
        assert_eq!(
            store.stream_version(stream).await.expect("version"),
            Version(5),
            "{stream}"
        );
        store
            .append(stream, ExpectedVersion::Exact(Version(5)), batch(1))
            .await
            .expect("an append goes on after the imported event");
    }
    for stream in [&partly, &gone] {
        let refused = store.import(vec![at(stream, 4, &all)]).await;
        assert!(refused.is_err(), "{stream}: {refused:?}");
    }
    assert_eq!(
        store.stream_version(&partly).await.expect("version"),
        Version(2),
        "nothing written"
    );
    let still = store.append(&gone, ExpectedVersion::Any, batch(1)).await;
    assert!(
        matches!(still, Err(Error::StreamDeleted { .. })),
        "{still:?}"
    );
}

//! Stream deletion and truncation ([`annals::Capabilities::deletion`]).

use annals::DeleteMode;

use super::*;

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

async fn read(store: &Arc<dyn EventStore>, stream: &str, options: ReadStream) -> Vec<u64> {
    versions(&store.read_stream_vec(&name(stream), options).await.unwrap())
}

fn system_events(all: &[RecordedEvent], kind: &str) -> Vec<serde_json::Value> {
    all.iter()
        .filter(|e| e.event_type == kind)
        .map(|e| serde_json::from_slice(&e.data).unwrap())
        .collect()
}

#[track_caller]
fn assert_deleted<T: std::fmt::Debug>(result: annals::Result<T>, stream: &str) {
    match result {
        Err(Error::StreamDeleted { stream: s }) => assert_eq!(s, name(stream)),
        other => panic!("expected {stream} deleted for good, got {other:?}"),
    }
}

/// Truncation hides the events below a version from every read, soft deletion hides them
/// all and lets a later append continue, hard deletion leaves a tombstone; each writes a
/// system event once, and repeating any of them changes nothing.
pub async fn deletion_soft_hard_and_truncate(store: Arc<dyn EventStore>) {
    let s = &*store;
    if !s.capabilities().deletion {
        let refused = s
            .delete_stream(&name("Gone-1"), ExpectedVersion::Any, DeleteMode::Soft)
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::Deletion,
                    ..
                })
            ),
            "{refused:?}"
        );
        return;
    }
    s.append(&name("Keep-1"), ExpectedVersion::NoStream, batch(3))
        .await
        .unwrap();
    s.append(&name("Soft-1"), ExpectedVersion::NoStream, batch(3))
        .await
        .unwrap();
    s.append(&name("Hard-1"), ExpectedVersion::NoStream, batch(2))
        .await
        .unwrap();
    let from_before = read_everything(&store).await;
    assert_eq!(from_before.len(), 8);

    // Truncation.
    let start = s
        .truncate_before(&name("Keep-1"), Version(1))
        .await
        .unwrap();
    assert_eq!(start, Version(1));
    assert_eq!(read(&store, "Keep-1", ReadStream::forward()).await, [1, 2]);
    assert_eq!(read(&store, "Keep-1", ReadStream::backward()).await, [2, 1]);
    assert_eq!(
        read(&store, "Keep-1", ReadStream::backward().limit(5)).await,
        [2, 1]
    );
    assert_eq!(s.stream_version(&name("Keep-1")).await.unwrap(), Version(3));
    for again in [1, 0] {
        let start = s
            .truncate_before(&name("Keep-1"), Version(again))
            .await
            .unwrap();
        assert_eq!(start, Version(1), "truncation never moves back");
    }
    let start = s
        .truncate_before(&name("Keep-1"), Version(99))
        .await
        .unwrap();
    assert_eq!(start, Version(3), "at most the stream's version");
    assert!(read(&store, "Keep-1", ReadStream::forward())
        .await
        .is_empty());
    s.append(
        &name("Keep-1"),
        ExpectedVersion::Exact(Version(3)),
        batch(1),
    )
    .await
    .unwrap();
    assert_eq!(read(&store, "Keep-1", ReadStream::forward()).await, [3]);

    // Soft deletion: a wrong expectation changes nothing.
    let wrong = s
        .delete_stream(
            &name("Soft-1"),
            ExpectedVersion::Exact(Version(2)),
            DeleteMode::Soft,
        )
        .await;
    assert_conflict(wrong, 3);
    assert_eq!(
        read(&store, "Soft-1", ReadStream::forward()).await,
        [0, 1, 2]
    );
    for _ in 0..2 {
        let at = s
            .delete_stream(
                &name("Soft-1"),
                ExpectedVersion::Exact(Version(3)),
                DeleteMode::Soft,
            )
            .await
            .unwrap();
        assert_eq!(at, Version(3));
    }
    assert!(read(&store, "Soft-1", ReadStream::forward())
        .await
        .is_empty());
    assert_eq!(s.stream_version(&name("Soft-1")).await.unwrap(), Version(3));
    s.append(
        &name("Soft-1"),
        ExpectedVersion::Exact(Version(3)),
        batch(2),
    )
    .await
    .unwrap();
    assert_eq!(read(&store, "Soft-1", ReadStream::forward()).await, [3, 4]);

    // Hard deletion.
    for _ in 0..2 {
        s.delete_stream(&name("Hard-1"), ExpectedVersion::Any, DeleteMode::Hard)
            .await
            .unwrap();
    }
    assert_deleted(
        s.append(&name("Hard-1"), ExpectedVersion::Any, batch(1))
            .await,
        "Hard-1",
    );
    assert_deleted(s.stream_version(&name("Hard-1")).await, "Hard-1");
    // Every way in: from the start, from the version a cache last saw, past the old head,
    // and backward.
    for options in [
        ReadStream::forward(),
        ReadStream::forward_from(Version(1)),
        ReadStream::forward_from(Version(2)),
        ReadStream::backward(),
        ReadStream::backward_from(Version(1)).limit(1),
    ] {
        assert_deleted(s.read_stream_vec(&name("Hard-1"), options).await, "Hard-1");
    }
    assert_deleted(
        s.truncate_before(&name("Hard-1"), Version(1)).await,
        "Hard-1",
    );
    assert_deleted(
        s.delete_stream(&name("Hard-1"), ExpectedVersion::Any, DeleteMode::Soft)
            .await,
        "Hard-1",
    );
    // Soft-deleting a name never written hides nothing and records nothing; it can still
    // be created.
    s.delete_stream(&name("Fresh-1"), ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    s.append(&name("Fresh-1"), ExpectedVersion::NoStream, batch(1))
        .await
        .unwrap();
    // A name never written can be tombstoned too.
    s.delete_stream(
        &name("Never-1"),
        ExpectedVersion::NoStream,
        DeleteMode::Hard,
    )
    .await
    .unwrap();
    assert_deleted(
        s.append(&name("Never-1"), ExpectedVersion::NoStream, batch(1))
            .await,
        "Never-1",
    );

    // Read-all and subscriptions from the start show exactly the events left, in order,
    // with one system event per change.
    let all = read_everything(&store).await;
    let shown: Vec<(String, u64)> = all
        .iter()
        .filter(|e| !e.event_type.starts_with('$'))
        .map(|e| (e.stream.to_string(), e.stream_version))
        .collect();
    let expected: Vec<(String, u64)> =
        [("Keep-1", 3), ("Soft-1", 3), ("Soft-1", 4), ("Fresh-1", 0)]
            .iter()
            .map(|(s, v)| (s.to_string(), *v))
            .collect();
    assert_eq!(shown, expected);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let deleted = system_events(&all, annals::STREAM_DELETED);
    assert_eq!(
        deleted.len(),
        3,
        "soft once, hard once, the never-written once: {deleted:?}"
    );
    assert!(deleted
        .iter()
        .any(|d| d["stream"] == "Hard-1" && d["hard"] == true && d["version"] == 2));
    let truncated = system_events(&all, annals::STREAM_TRUNCATED);
    assert_eq!(truncated.len(), 2, "to 1, then to 3: {truncated:?}");
    assert!(all.iter().filter(|e| e.event_type.starts_with('$')).all(
        |e| e.stream == annals::deletions_stream(&name(&format!("{}-1", e.stream.category())))
    ));
    // A category's subscribers see its system events.
    let category = s
        .read_all(Position::START, &Filter::category("Hard"), 100)
        .await
        .unwrap();
    assert_eq!(versions(&category.events), [0], "Hard's one system event");
    assert_eq!(category.events[0].event_type, annals::STREAM_DELETED);
    // Reading on from a position inside the deleted range skips what was removed.
    let middle = from_before[4].position;
    let mut after = Vec::new();
    let mut from = middle;
    loop {
        let page = s.read_all(from, &Filter::all(), 3).await.unwrap();
        after.extend(
            page.events
                .iter()
                .map(|e| (e.stream.to_string(), e.stream_version)),
        );
        if page.end {
            break;
        }
        from = page.next;
    }
    let after: Vec<_> = after
        .into_iter()
        .filter(|(s, _)| !s.ends_with("$deleted"))
        .collect();
    assert_eq!(after, expected);
    // Subscriptions from before and from inside the deleted range deliver the same.
    let ids =
        |events: &[RecordedEvent]| -> Vec<Uuid> { events.iter().map(|e| e.event_id).collect() };
    let mut sub = store.subscribe(Position::START, SubscribeOptions::all());
    let got = super::feed::collect_until(&mut sub, all.len()).await;
    assert_eq!(ids(&got), ids(&all), "a subscription from the start");
    let rest: Vec<RecordedEvent> = all
        .iter()
        .filter(|e| e.position > middle)
        .cloned()
        .collect();
    let mut sub = store.subscribe(middle, SubscribeOptions::all());
    let got = super::feed::collect_until(&mut sub, rest.len()).await;
    assert_eq!(
        ids(&got),
        ids(&rest),
        "a subscription from inside the deleted range"
    );
}

/// `import_deletion`: a soft deletion recorded elsewhere, at its version. A stream this
/// store does not have, or has at a lower version (showing events or not), is left at that
/// version showing nothing, appends going on from there; a stream at that version is
/// soft-deleted; repeats change nothing; one past it, a tombstone or a version out of range
/// are refused, nothing written. Each change is recorded once, as a deletion is.
pub async fn import_deletion_leaves_a_stream_at_its_deleted_version(store: Arc<dyn EventStore>) {
    if !store.capabilities().deletion {
        return;
    }
    let s = &*store;
    let imported = |stream: &str, version: u64| {
        let stream = name(stream);
        async move { s.import_deletion(&stream, Version(version)).await }
    };
    let version = |stream: &str| {
        let stream = name(stream);
        async move { s.stream_version(&stream).await.unwrap() }
    };
    // Never written here.
    assert_eq!(imported("Imported-1", 7).await.unwrap(), Version(7));
    assert_eq!(version("Imported-1").await, Version(7));
    assert!(read(&store, "Imported-1", ReadStream::forward())
        .await
        .is_empty());
    assert_eq!(
        imported("Imported-1", 7).await.unwrap(),
        Version(7),
        "a repeat"
    );
    // Showing events at a lower version: all hidden, moved on.
    append(s, &name("Imported-2"), ExpectedVersion::NoStream, 2).await;
    assert_eq!(imported("Imported-2", 5).await.unwrap(), Version(5));
    assert_eq!(version("Imported-2").await, Version(5));
    assert!(read(&store, "Imported-2", ReadStream::forward())
        .await
        .is_empty());
    // At its version: a soft deletion there.
    append(s, &name("Imported-3"), ExpectedVersion::NoStream, 3).await;
    assert_eq!(imported("Imported-3", 3).await.unwrap(), Version(3));
    assert!(read(&store, "Imported-3", ReadStream::forward())
        .await
        .is_empty());
    let all = read_everything(&store).await;
    let recorded = system_events(&all, annals::STREAM_DELETED);
    let of = |stream: &str| -> Vec<serde_json::Value> {
        recorded
            .iter()
            .filter(|d| d["stream"] == stream)
            .cloned()
            .collect()
    };
    assert_eq!(
        of("Imported-1"),
        [serde_json::json!({"stream": "Imported-1", "version": 7, "hard": false})]
    );
    assert_eq!(of("Imported-2").len(), 1);
    assert_eq!(of("Imported-3").len(), 1);
    // Refused, nothing written: past it, a tombstone, out of range.
    match imported("Imported-3", 2).await {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(3)),
        other => panic!("a stream past the version is refused: {other:?}"),
    }
    s.delete_stream(&name("Imported-4"), ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    assert!(matches!(
        imported("Imported-4", 1).await,
        Err(Error::StreamDeleted { .. })
    ));
    assert!(matches!(
        imported("Imported-5", u64::MAX).await,
        Err(Error::WrongExpectedVersion { .. })
    ));
    let before = read_everything(&store).await;
    let _ = imported("Imported-3", 2).await;
    assert_eq!(
        read_everything(&store).await,
        before,
        "refusals wrote nothing"
    );
    // Appends go on from the version, and imports of later events too.
    append(
        s,
        &name("Imported-1"),
        ExpectedVersion::Exact(Version(7)),
        1,
    )
    .await;
    assert_eq!(read(&store, "Imported-1", ReadStream::forward()).await, [7]);
    let mut next = read_everything(&store).await;
    next.retain(|e| e.stream.as_str() == "Imported-1");
    let mut later = next[0].clone();
    later.stream = name("Imported-2");
    later.stream_version = 5;
    later.event_id = annals::Uuid::now_v7();
    assert_eq!(s.import(vec![later]).await.unwrap(), 1);
    assert_eq!(read(&store, "Imported-2", ReadStream::forward()).await, [5]);
}

/// For stores that read a long stream a page of `page` events at a time, each page in its
/// own snapshot (not in the suite: a store that reads a stream in one snapshot sees no
/// change). A truncation between two pages shows as the later pages starting where the
/// stream now starts, never an event the truncation hid; a hard deletion between them ends
/// the read with [`Error::StreamDeleted`] after the pages already read.
pub async fn a_change_between_two_pages_is_seen_by_the_later_pages(
    store: Arc<dyn EventStore>,
    page: u64,
) {
    let (written, cut) = (page + page / 2, page + page / 5);
    for (stream, truncate) in [("Paged-truncated", true), ("Paged-deleted", false)] {
        let stream = name(stream);
        let mut left = written;
        while left > 0 {
            let n = left.min(100);
            let batch = (0..n)
                .map(|_| EventData::new("A", b"{}".to_vec()))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("append");
            left -= n;
        }
        let mut pages = store.read_stream_pages(&stream, ReadStream::forward());
        let mut first = Vec::new();
        while (first.len() as u64) < page {
            first.extend(versions(
                &pages.next().await.expect("a page").expect("read"),
            ));
        }
        assert_eq!(first, (0..page).collect::<Vec<_>>(), "the first page");
        if truncate {
            store
                .truncate_before(&stream, Version(cut))
                .await
                .expect("truncate");
            let mut rest = Vec::new();
            while let Some(p) = pages.next().await {
                rest.extend(versions(&p.expect("read")));
            }
            assert_eq!(
                rest,
                (cut..written).collect::<Vec<_>>(),
                "after the truncation"
            );
        } else {
            store
                .delete_stream(&stream, ExpectedVersion::Any, DeleteMode::Hard)
                .await
                .expect("delete");
            let next = pages.next().await.expect("an answer after the deletion");
            assert!(
                matches!(next, Err(Error::StreamDeleted { .. })),
                "after the deletion: {next:?}"
            );
        }
    }
}

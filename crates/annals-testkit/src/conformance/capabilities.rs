//! Optional capabilities: multi-stream appends and head snapshots.

use super::*;

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
    let again = s.append_many(first.clone()).await.unwrap();
    assert_eq!(
        again, r,
        "an exact retry of a committed multi-stream append writes nothing"
    );
    let any: Vec<StreamAppend> = first
        .into_iter()
        .map(|a| StreamAppend {
            expected: ExpectedVersion::Any,
            ..a
        })
        .collect();
    let again = s.append_many(any).await.unwrap();
    assert_eq!(
        again, r,
        "a retry expecting any version is recognised by its event ids"
    );
    assert_eq!(read_everything(&store).await.len(), 3);
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

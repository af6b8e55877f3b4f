//! Retention ([`annals::Capabilities::retention`]): max count and max age per category or
//! stream, hiding expired events from every read at once.

use annals::{Retention, RetentionScope};

use super::*;

fn shown(events: &[RecordedEvent], category: &str) -> Vec<(String, u64)> {
    events
        .iter()
        .filter(|e| e.stream.category() == category && !e.event_type.starts_with('$'))
        .map(|e| (e.stream.to_string(), e.stream_version))
        .collect()
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(s, v)| (s.to_string(), *v)).collect()
}

async fn policy(store: &dyn EventStore, scope: &RetentionScope, retention: Retention) {
    store
        .set_retention(scope, retention)
        .await
        .unwrap_or_else(|e| panic!("set retention of {scope} to {retention}: {e}"));
}

/// A stream's max count shows only its last events, in stream reads (forward, backward,
/// with limits), read-all and subscriptions; a category's policy covers its streams,
/// also those created later, unless a stream has its own; max age hides what is older;
/// widening or removing a policy shows the events again (nothing was removed); a zero
/// count or age is refused.
pub async fn retention_max_count_and_age(store: Arc<dyn EventStore>) {
    let s = &*store;
    let ret1 = RetentionScope::Stream(name("Ret-1"));
    let category = RetentionScope::category("Ret").unwrap();
    if !s.capabilities().retention {
        let refused = s.set_retention(&ret1, Retention::max_count(2)).await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::Retention,
                    ..
                })
            ),
            "{refused:?}"
        );
        return;
    }
    for (stream, n) in [("Ret-1", 5), ("Ret-2", 3), ("Kept-1", 2)] {
        s.append(&name(stream), ExpectedVersion::NoStream, batch(n))
            .await
            .unwrap();
    }
    let too_long = Retention::MAX_AGE + Duration::from_micros(1);
    for bad in [
        Retention::max_count(0),
        Retention::max_age(Duration::ZERO),
        Retention::max_age(too_long),
        Retention::max_age(Duration::MAX),
    ] {
        let refused = s.set_retention(&ret1, bad).await;
        assert!(
            matches!(refused, Err(Error::InvalidRetention { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    assert!(
        s.retention().await.unwrap().is_empty(),
        "nothing refused is kept"
    );

    // A stream's own max count, set twice (a repeat changes nothing).
    for _ in 0..2 {
        policy(s, &ret1, Retention::max_count(2)).await;
    }
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward()).await,
        [3, 4]
    );
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::backward()).await,
        [4, 3]
    );
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward().limit(1)).await,
        [3]
    );
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::backward().limit(5)).await,
        [4, 3]
    );
    assert_eq!(
        versions(
            s,
            &name("Ret-1"),
            ReadStream::forward_from(Version(1)).limit(2)
        )
        .await,
        [3, 4]
    );
    assert_eq!(s.stream_version(&name("Ret-1")).await.unwrap(), Version(5));
    if s.capabilities().head_snapshots {
        let head = s.read_head(&name("Ret-1"), 100).await.unwrap();
        assert_eq!(head.version, Version(5));
        let versions: Vec<u64> = head.events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, [3, 4]);
    }
    // An append moves the window on.
    s.append(&name("Ret-1"), ExpectedVersion::Exact(Version(5)), batch(1))
        .await
        .unwrap();
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward()).await,
        [4, 5]
    );
    assert_eq!(
        shown(&read_everything(&store).await, "Ret"),
        pairs(&[
            ("Ret-1", 4),
            ("Ret-2", 0),
            ("Ret-2", 1),
            ("Ret-2", 2),
            ("Ret-1", 5)
        ])
    );

    // A category's policy covers its streams, and streams created later, but not one with
    // its own policy.
    policy(s, &category, Retention::max_count(1)).await;
    s.append(&name("Ret-3"), ExpectedVersion::NoStream, batch(2))
        .await
        .unwrap();
    assert_eq!(
        versions(s, &name("Ret-2"), ReadStream::forward()).await,
        [2]
    );
    assert_eq!(
        versions(s, &name("Ret-3"), ReadStream::forward()).await,
        [1]
    );
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward()).await,
        [4, 5]
    );
    assert_eq!(
        versions(s, &name("Kept-1"), ReadStream::forward()).await,
        [0, 1]
    );
    let mut listed = s.retention().await.unwrap();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        listed,
        [
            (category.clone(), Retention::max_count(1)),
            (ret1.clone(), Retention::max_count(2)),
        ]
    );
    // A subscription from the start sees the events kept, once, in order.
    let mut sub = store.subscribe(Position::START, SubscribeOptions::category("Ret"));
    let want = pairs(&[("Ret-1", 4), ("Ret-2", 2), ("Ret-1", 5), ("Ret-3", 1)]);
    let got = super::feed::collect_until(&mut sub, want.len()).await;
    assert_eq!(shown(&got, "Ret"), want);
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    drop(sub);

    // Removing the stream's own policy falls back to its category's.
    policy(s, &ret1, Retention::default()).await;
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward()).await,
        [5]
    );

    // Max age: once the events are older than it, none is shown.
    policy(s, &category, Retention::max_age(Duration::from_millis(1))).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !shown(&read_everything(&store).await, "Ret").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events older than their max age still shown after {WAIT:?}"
        );
        tokio::task::yield_now().await;
    }
    for stream in ["Ret-1", "Ret-2", "Ret-3"] {
        assert!(versions(s, &name(stream), ReadStream::forward())
            .await
            .is_empty());
    }
    if s.capabilities().head_snapshots {
        let head = s.read_head(&name("Ret-1"), 100).await.unwrap();
        assert!(
            head.events.is_empty() && head.snapshot.is_none(),
            "{head:?}"
        );
        assert_eq!(head.version, Version(6));
    }
    assert_eq!(
        versions(s, &name("Kept-1"), ReadStream::forward()).await,
        [0, 1]
    );
    // The head may be an event expired since (the last one written, `Ret-3`'s): it is
    // past every event shown, and following from it shows exactly what comes after.
    let head = s
        .head_position()
        .await
        .unwrap()
        .expect("events were written");
    let shown_now = read_everything(&store).await;
    assert!(
        shown_now.iter().all(|e| e.position <= head),
        "the head {head} is before an event read-all shows: {shown_now:?}"
    );
    s.append(&name("Kept-2"), ExpectedVersion::NoStream, batch(1))
        .await
        .unwrap();
    store.await_visible().await.unwrap();
    let page = s.read_all(head, &Filter::all(), 100).await.unwrap();
    let after: Vec<_> = page
        .events
        .iter()
        .map(|e| (e.stream.to_string(), e.stream_version))
        .collect();
    assert_eq!(
        after,
        pairs(&[("Kept-2", 0)]),
        "only what came after the head"
    );
    assert_eq!(
        s.head_position().await.unwrap(),
        Some(page.events[0].position)
    );

    // Widening the policy shows them again (logical expiry: nothing was removed).
    policy(
        s,
        &category,
        Retention::max_age(Duration::from_secs(86_400)),
    )
    .await;
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::forward()).await,
        [0, 1, 2, 3, 4, 5]
    );
    // The longest max age a policy may have hides nothing recorded now, on every path that
    // applies it: stream reads both ways, read-all, heads, a refused append's tail.
    policy(s, &category, Retention::max_age(Retention::MAX_AGE)).await;
    assert_eq!(
        s.retention().await.unwrap(),
        [(category.clone(), Retention::max_age(Retention::MAX_AGE))]
    );
    assert_eq!(
        versions(s, &name("Ret-1"), ReadStream::backward()).await,
        [5, 4, 3, 2, 1, 0]
    );
    assert_eq!(
        versions(s, &name("Ret-2"), ReadStream::forward_from(Version(1))).await,
        [1, 2]
    );
    let under_longest = shown(&read_everything(&store).await, "Ret");
    if s.capabilities().head_snapshots {
        let head = s.read_head(&name("Ret-2"), 100).await.unwrap();
        assert_eq!(head.events.len(), 3);
    }
    match s.append_at(&name("Ret-2"), Version(1), batch(1)).await {
        Ok(annals::AppendAt::Conflict { actual, events }) => {
            assert_eq!(actual, Version(3));
            let tail: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            assert_eq!(
                tail,
                [1, 2],
                "the refusal's events from the expected version on"
            );
        }
        other => panic!("a refusal with its events: {other:?}"),
    }
    policy(s, &category, Retention::default()).await;
    assert_eq!(
        under_longest,
        shown(&read_everything(&store).await, "Ret"),
        "read-all under the longest max age shows what it shows without a policy"
    );
    assert!(s.retention().await.unwrap().is_empty());
    assert_eq!(
        versions(s, &name("Ret-2"), ReadStream::forward()).await,
        [0, 1, 2]
    );
}

//! Read-all pages, filters, partitions and subscriptions.

use super::*;

/// The head position is the position of the last event read-all returns (none when it
/// returns none), and following from it returns exactly the events appended after.
pub async fn head_position_is_the_last_event_of_read_all(store: Arc<dyn EventStore>) {
    let before = read_everything(&store).await;
    assert_eq!(
        store.head_position().await.unwrap(),
        before.last().map(|e| e.position)
    );
    for (stream, n) in [("Head-1", 2), ("Head-2", 3), ("Head-1", 1)] {
        let events = (0..n).map(|i| ev("H", i)).collect();
        store
            .append(&name(stream), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let all = read_everything(&store).await;
    let head = store.head_position().await.unwrap();
    assert_eq!(head, all.last().map(|e| e.position));
    let head = head.expect("events were appended");
    store
        .append(&name("Head-3"), ExpectedVersion::Any, vec![ev("H", 9)])
        .await
        .unwrap();
    store.await_visible().await.unwrap();
    let page = store.read_all(head, &Filter::all(), 100).await.unwrap();
    let after: Vec<_> = page.events.iter().map(|e| e.stream.to_string()).collect();
    assert_eq!(
        after,
        [name("Head-3").to_string()],
        "only what came after the head"
    );
    assert_eq!(
        store.head_position().await.unwrap(),
        Some(page.events[0].position)
    );
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

pub(super) async fn collect_until(
    sub: &mut annals::Subscription,
    count: usize,
) -> Vec<RecordedEvent> {
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

/// A stream subscription delivers the stream's events from the version asked, then each
/// new one as it is written (by concurrent writers, among other streams' appends), in
/// version order and each once; it waits on a stream not written yet, delivers only what
/// its filter matches, goes on after a soft deletion and ends with the error once the
/// stream is deleted for good.
pub async fn stream_subscription_catches_up_then_follows_the_stream_alone(
    store: Arc<dyn EventStore>,
) {
    let s = &*store;
    append(s, &name("SubS-1"), ExpectedVersion::Any, 3).await;
    append(s, &name("SubS-2"), ExpectedVersion::Any, 2).await;
    let options = SubscribeOptions {
        batch_size: 2,
        ..SubscribeOptions::all()
    };
    let mut sub = store.subscribe_stream(name("SubS-1"), Version(1), options.clone());
    let mut fresh = store.subscribe_stream(name("SubS-new"), Version(0), options.clone());
    let mut typed = store.subscribe_stream(
        name("SubS-1"),
        Version(0),
        SubscribeOptions {
            filter: Filter::all().event_types(["Picked"]),
            ..options.clone()
        },
    );
    let caught_up = collect_until(&mut sub, 2).await;
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..4 {
                    let (stream, kind) = match (w + i) % 3 {
                        0 => ("SubS-2", "Other"),
                        1 => ("SubS-1", "Picked"),
                        _ => ("SubS-1", "Happened"),
                    };
                    store
                        .append(&name(stream), ExpectedVersion::Any, vec![ev(kind, i)])
                        .await
                        .expect("live append");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let ones = read(s, &name("SubS-1"), ReadStream::forward()).await;
    let live = collect_until(&mut sub, ones.len() - 3).await;
    let got: Vec<u64> = caught_up
        .iter()
        .chain(&live)
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(got, (1..ones.len() as u64).collect::<Vec<_>>());
    assert!(caught_up
        .iter()
        .chain(&live)
        .all(|e| e.stream == name("SubS-1")));
    let picked: Vec<Uuid> = ones
        .iter()
        .filter(|e| e.event_type == "Picked")
        .map(|e| e.event_id)
        .collect();
    let typed_got = collect_until(&mut typed, picked.len()).await;
    assert_eq!(
        typed_got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        picked
    );
    // A stream written after the subscription began.
    append(s, &name("SubS-new"), ExpectedVersion::NoStream, 1).await;
    let first = collect_until(&mut fresh, 1).await;
    assert_eq!(
        (first[0].stream.as_str(), first[0].stream_version),
        ("SubS-new", 0)
    );
    if !s.capabilities().deletion {
        return;
    }
    // Soft-deleted, then written to again: the later events come.
    let at = ones.len() as u64;
    s.delete_stream(
        &name("SubS-1"),
        ExpectedVersion::Any,
        annals::DeleteMode::Soft,
    )
    .await
    .unwrap();
    append(s, &name("SubS-1"), ExpectedVersion::Any, 1).await;
    let after = collect_until(&mut sub, 1).await;
    assert_eq!(after[0].stream_version, at);
    // Deleted for good: the subscription says so and ends.
    s.delete_stream(
        &name("SubS-1"),
        ExpectedVersion::Any,
        annals::DeleteMode::Hard,
    )
    .await
    .unwrap();
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Err(Error::StreamDeleted { stream }))) => assert_eq!(stream, name("SubS-1")),
        other => panic!("expected the stream deleted for good, got {other:?}"),
    }
    assert!(matches!(
        tokio::time::timeout(WAIT, sub.next()).await,
        Ok(None)
    ));
}

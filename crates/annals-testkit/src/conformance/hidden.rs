//! The decider on streams whose events are hidden by deletion, truncation or retention:
//! what the store answers (reads, refusals) must let it write on from the stream's
//! version, deciding on only the events still shown.

use annals::{Category, DeleteMode, Domain, JsonCodec, LoadOption, Retention, RetentionScope};

use super::*;

/// The numbers added to a list.
struct Added;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Addition {
    Added(u32),
}

impl Domain for Added {
    type Event = Addition;
    type State = Vec<u32>;
    fn initial() -> Vec<u32> {
        Vec::new()
    }
    fn evolve(mut state: Vec<u32>, event: &Addition) -> Vec<u32> {
        let Addition::Added(n) = event;
        state.push(*n);
        state
    }
}

/// Adding `n`.
fn plus(n: u32) -> Vec<Addition> {
    vec![Addition::Added(n)]
}

fn added(store: &Arc<dyn EventStore>, cache: Option<usize>) -> Category<Added> {
    let category = Category::new("Hidden", Arc::clone(store), JsonCodec::new()).unwrap();
    match cache {
        Some(size) => category.with_cache(Arc::new(annals::Cache::new(size))),
        None => category,
    }
}

/// Adds `n` with a fresh decider of `category` and answers the state after it, read back
/// by an uncached decider.
async fn add(category: &Category<Added>, id: &str, n: u32) -> Vec<u32> {
    add_loading(category, LoadOption::RequireLoad, id, n).await
}

/// As [`add`], loading with `load`.
async fn add_loading(category: &Category<Added>, load: LoadOption, id: &str, n: u32) -> Vec<u32> {
    let decider = category.decider(id).unwrap().with_load(load);
    decider
        .transact(|_| plus(n))
        .await
        .unwrap_or_else(|e| panic!("{id}: add {n}: {e}"));
    let fresh = added(category.store(), None);
    fresh.decider(id).unwrap().query(Vec::clone).await.unwrap()
}

/// A decider writes on a stream whose events are all hidden (soft deletion, truncation of
/// everything, every event expired) at the stream's version, without using up an attempt
/// (not a lost race), and decides on the events still shown only: uncached under every
/// access strategy and load option, with a cached state older than the hiding, and in a
/// multi-stream transaction; a load answers the stream's version. Where some events stay
/// shown, a stale cached state starts over from them. A hard-deleted stream refuses with a
/// typed error.
pub async fn deciders_write_on_after_events_are_hidden(store: Arc<dyn EventStore>) {
    let s = &*store;
    if !s.capabilities().deletion {
        return;
    }
    let stream = |id: &str| name(&format!("Hidden-{id}"));
    let uncached = added(&store, None);
    let cached = added(&store, Some(64));

    // Uncached, after a soft deletion and after truncating everything; folding forward,
    // from rolling snapshots, from a head snapshot, and loading nothing first.
    let require = LoadOption::RequireLoad;
    let mut flavours = vec![
        ("plain", added(&store, None), require),
        ("once", added(&store, None).with_max_attempts(1), require),
        (
            "rolling",
            added(&store, None).with_rolling_snapshots(2, 1),
            require,
        ),
        ("empty", added(&store, None), LoadOption::AssumeEmpty),
        ("stale", added(&store, Some(4)), LoadOption::AnyCachedValue),
    ];
    if s.capabilities().head_snapshots {
        let head = added(&store, None).with_head_snapshots(1).unwrap();
        flavours.push(("head", head, require));
    }
    for (flavour, category, load) in &flavours {
        for (how, n) in [("soft", 3), ("truncated", 4)] {
            let id = format!("{how}_{flavour}");
            s.append(&stream(&id), ExpectedVersion::NoStream, batch(n))
                .await
                .unwrap();
            if how == "soft" {
                s.delete_stream(&stream(&id), ExpectedVersion::Any, DeleteMode::Soft)
                    .await
                    .unwrap();
            } else {
                s.truncate_before(&stream(&id), Version(n)).await.unwrap();
            }
            if *load != LoadOption::AssumeEmpty {
                let loaded = category.decider(&id).unwrap().load().await.unwrap();
                assert_eq!(
                    loaded.version,
                    Version(n),
                    "{id}: the load answers the version"
                );
                assert!(loaded.state.is_empty(), "{id}");
            }
            assert_eq!(add_loading(category, *load, &id, 7).await, [7], "{id}");
            assert_eq!(add_loading(category, *load, &id, 8).await, [7, 8], "{id}");
            let written = s
                .read_stream_vec(&stream(&id), ReadStream::forward())
                .await
                .unwrap();
            let at: Vec<u64> = written
                .iter()
                .filter(|e| e.event_type != annals::SNAPSHOT_EVENT_TYPE)
                .map(|e| e.stream_version)
                .collect();
            assert_eq!(at.len(), 2, "{id}: {at:?}");
            assert!(
                at[0] >= n,
                "{id}: written on from the stream's version: {at:?}"
            );
        }
    }

    // A cached state from before the stream was moved on and soft-deleted elsewhere.
    let stale = cached.decider("stale").unwrap();
    stale.transact(|_| plus(1)).await.unwrap();
    stale.transact(|_| plus(2)).await.unwrap();
    s.append(
        &stream("stale"),
        ExpectedVersion::Exact(Version(2)),
        batch(1),
    )
    .await
    .unwrap();
    s.delete_stream(&stream("stale"), ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    stale.transact(|_| plus(9)).await.unwrap();
    assert_eq!(stale.query(Vec::clone).await.unwrap(), [9]);
    assert_eq!(add(&uncached, "stale", 10).await, [9, 10]);

    // A cached state from before events were appended elsewhere and the older ones
    // truncated: it starts over from the events still shown.
    let partly = cached.decider("partly").unwrap();
    partly.transact(|_| plus(1)).await.unwrap();
    let uncached_partly = uncached.decider("partly").unwrap();
    for n in [2, 3, 4] {
        uncached_partly.transact(|_| plus(n)).await.unwrap();
    }
    s.truncate_before(&stream("partly"), Version(3))
        .await
        .unwrap();
    partly.transact(|_| plus(5)).await.unwrap();
    assert_eq!(partly.query(Vec::clone).await.unwrap(), [4, 5]);
    assert_eq!(add(&uncached, "partly", 6).await, [4, 5, 6]);

    // Every event expired.
    if s.capabilities().retention && s.capabilities().import {
        let old = annals::Timestamp::from_unix_micros(
            annals::Timestamp::now().unix_micros() - 2 * 3_600 * 1_000_000,
        );
        let source = annals::MemoryStore::new();
        source
            .append(&stream("expired"), ExpectedVersion::NoStream, batch(3))
            .await
            .unwrap();
        let events = source
            .read_all(Position::START, &Filter::all(), 10)
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| RecordedEvent {
                recorded_at: old,
                ..e
            })
            .collect();
        s.import(events).await.unwrap();
        let scope = RetentionScope::Stream(stream("expired"));
        s.set_retention(&scope, Retention::max_age(Duration::from_secs(3_600)))
            .await
            .unwrap();
        assert_eq!(add(&uncached, "expired", 7).await, [7]);
        s.set_retention(&scope, Retention::default()).await.unwrap();
    }

    // A multi-stream transaction over two soft-deleted streams, with one attempt.
    if s.capabilities().multi_stream_append {
        for id in ["pair-a", "pair-b"] {
            s.append(&stream(id), ExpectedVersion::NoStream, batch(2))
                .await
                .unwrap();
            s.delete_stream(&stream(id), ExpectedVersion::Any, DeleteMode::Soft)
                .await
                .unwrap();
        }
        // One attempt: finding a stream's events hidden is not a lost race.
        let once = added(&store, None).with_max_attempts(1);
        let pair = [
            once.decider("pair-a").unwrap(),
            once.decider("pair-b").unwrap(),
        ];
        annals::transact_many(&pair, |states| {
            assert!(states.iter().all(|s| s.is_empty()), "{states:?}");
            ((), vec![plus(1), plus(2)])
        })
        .await
        .unwrap();
        for (decider, n) in pair.iter().zip([1, 2]) {
            assert_eq!(decider.query(Vec::clone).await.unwrap(), [n]);
        }
    }

    // A tombstone refuses the decider with a typed error.
    s.append(&stream("hard"), ExpectedVersion::NoStream, batch(1))
        .await
        .unwrap();
    s.delete_stream(&stream("hard"), ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let refused = uncached
        .decider("hard")
        .unwrap()
        .transact(|_| plus(1))
        .await;
    assert!(
        matches!(refused, Err(Error::StreamDeleted { .. })),
        "{refused:?}"
    );
}

/// A decider whose state is cached at the stream's current version never decides on
/// events deleted or truncated since (here behind its back, as another process would):
/// its write is refused by the store and it decides again on the events still shown,
/// without using up an attempt; a decision that writes nothing finds a soft deletion or a
/// truncation of everything too. Under every access strategy with a cache.
pub async fn cached_deciders_start_over_once_their_events_are_hidden(store: Arc<dyn EventStore>) {
    let s = &*store;
    if !s.capabilities().deletion {
        return;
    }
    let stream = |id: &str| name(&format!("Hidden-{id}"));
    let cached = |category: Category<Added>| {
        category
            .with_cache(Arc::new(annals::Cache::new(16)))
            .with_max_attempts(1)
    };
    // Each flavour, and the same without a cache (what a fresh load folds: a rolling
    // snapshot still shown holds the effects of the events before it, by design).
    let mut flavours = vec![
        ("plain", added(&store, None)),
        ("rolling", added(&store, None).with_rolling_snapshots(2, 1)),
    ];
    if s.capabilities().head_snapshots {
        let head = added(&store, None).with_head_snapshots(1).unwrap();
        flavours.push(("head", head));
    }
    let uncached = added(&store, None);
    for (flavour, fresh) in &flavours {
        let category = &cached(fresh.clone());
        let decide = |id: String| category.decider(&id).unwrap();
        // Soft deletion: the write decided on the cached state is refused; the decision
        // runs again on no events.
        let id = format!("cache_soft_{flavour}");
        let decider = decide(id.clone());
        for n in [1, 2] {
            decider.transact(|_| plus(n)).await.unwrap();
        }
        s.delete_stream(&stream(&id), ExpectedVersion::Any, DeleteMode::Soft)
            .await
            .unwrap();
        let mut seen = Vec::new();
        decider
            .transact(|state| {
                seen.push(state.clone());
                plus(3)
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(seen.last().unwrap(), &Vec::<u32>::new(), "{id}: {seen:?}");
        assert_eq!(add(&uncached, &id, 4).await, [3, 4], "{id}");
        // A query on a cached state finds the deletion too.
        let id = format!("cache_query_{flavour}");
        let decider = decide(id.clone());
        for n in [1, 2] {
            decider.transact(|_| plus(n)).await.unwrap();
        }
        assert_eq!(decider.query(Vec::clone).await.unwrap(), [1, 2], "{id}");
        s.delete_stream(&stream(&id), ExpectedVersion::Any, DeleteMode::Soft)
            .await
            .unwrap();
        assert!(decider.query(Vec::clone).await.unwrap().is_empty(), "{id}");
        assert!(decider.load().await.unwrap().state.is_empty(), "{id}");
        // Truncation of the older events: decided again on the ones still shown.
        let id = format!("cache_truncated_{flavour}");
        let decider = decide(id.clone());
        for n in [1, 2, 3] {
            decider.transact(|_| plus(n)).await.unwrap();
        }
        let version = decider.load().await.unwrap().version;
        s.truncate_before(&stream(&id), Version(version.get() - 1))
            .await
            .unwrap();
        let shown = fresh.decider(&id).unwrap().query(Vec::clone).await.unwrap();
        let mut seen = Vec::new();
        decider
            .transact(|state| {
                seen.push(state.clone());
                plus(4)
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(seen.last().unwrap(), &shown, "{id}: {seen:?}");
        let mut after = shown.clone();
        after.push(4);
        assert_eq!(decider.query(Vec::clone).await.unwrap(), after, "{id}");
        assert_eq!(
            fresh.decider(&id).unwrap().query(Vec::clone).await.unwrap(),
            after,
            "{id}"
        );
        // Truncation of everything, then a query.
        let version = decider.load().await.unwrap().version;
        s.truncate_before(&stream(&id), version).await.unwrap();
        assert!(decider.query(Vec::clone).await.unwrap().is_empty(), "{id}");
        // Truncation of the older events only (the state's last still shown): a query
        // and a load on the cached state answer from the events still shown.
        let id = format!("cache_older_{flavour}");
        let decider = decide(id.clone());
        for n in [1, 2, 3] {
            decider.transact(|_| plus(n)).await.unwrap();
        }
        assert_eq!(decider.query(Vec::clone).await.unwrap(), [1, 2, 3], "{id}");
        let version = decider.load().await.unwrap().version;
        s.truncate_before(&stream(&id), Version(version.get() - 2))
            .await
            .unwrap();
        let shown = fresh.decider(&id).unwrap().query(Vec::clone).await.unwrap();
        assert_eq!(decider.query(Vec::clone).await.unwrap(), shown, "{id}");
        assert_eq!(*decider.load().await.unwrap().state, shown, "{id}");
        // Another decider of the same category (so the same cache) agrees, and a write
        // goes on from there.
        assert_eq!(
            decide(id.clone()).query(Vec::clone).await.unwrap(),
            shown,
            "{id}"
        );
        decider.transact(|_| plus(4)).await.unwrap();
        let mut after = shown.clone();
        after.push(4);
        assert_eq!(decider.query(Vec::clone).await.unwrap(), after, "{id}");
    }
}

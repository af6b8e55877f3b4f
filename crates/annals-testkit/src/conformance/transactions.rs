//! Multi-stream transactions through the decider.

use super::*;

/// Accounts for the transaction tests: a balance moved by transfers.
struct Accounts;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Movement {
    Credited { amount: i64 },
    Debited { amount: i64 },
}

impl annals::Domain for Accounts {
    type Event = Movement;
    type State = i64;
    fn initial() -> i64 {
        0
    }
    fn evolve(balance: i64, event: &Movement) -> i64 {
        match event {
            Movement::Credited { amount } => balance + amount,
            Movement::Debited { amount } => balance - amount,
        }
    }
}

fn accounts(store: &Arc<dyn EventStore>) -> annals::Category<Accounts> {
    annals::Category::new("Account", Arc::clone(store), annals::JsonCodec::new())
        .expect("a valid category")
}

/// Moves `amount` from the first decider's account to the second's.
fn transfer(amount: i64) -> impl FnMut(&[&i64]) -> ((), Vec<Vec<Movement>>) {
    move |_| {
        (
            (),
            vec![
                vec![Movement::Debited { amount }],
                vec![Movement::Credited { amount }],
            ],
        )
    }
}

/// Multi-stream transactions through the decider: a conflict on any stream writes nothing
/// on any, and the resync decides again on fresh states; stores without the capability
/// refuse with a typed error before writing.
pub async fn transactions_commit_all_or_nothing(store: Arc<dyn EventStore>) {
    let cache = Arc::new(annals::Cache::new(16));
    let category = accounts(&store).with_cache(cache);
    let a = category.decider("tx-a").expect("a valid id");
    let b = category.decider("tx-b").expect("a valid id");
    let seed = |d: &annals::Decider<Accounts>, amount| {
        let d = d.clone_with_load(annals::LoadOption::RequireLoad);
        async move {
            d.transact(|_| vec![Movement::Credited { amount }])
                .await
                .expect("seed")
        }
    };
    if !store.capabilities().supports(Capability::MultiStreamAppend) {
        seed(&a, 10).await;
        let refused = annals::transact_many(
            &[
                a.clone_with_load(annals::LoadOption::RequireLoad),
                b.clone_with_load(annals::LoadOption::RequireLoad),
            ],
            transfer(1),
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(Error::Unsupported {
                    capability: Capability::MultiStreamAppend,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(
            store.stream_version(a.stream()).await.expect("version"),
            Version(1)
        );
        assert_eq!(
            store.stream_version(b.stream()).await.expect("version"),
            Version(0)
        );
        return;
    }
    seed(&a, 10).await;
    seed(&b, 5).await;
    // The cache now holds both accounts; a write to `b` behind its back makes the cached
    // state stale, so a transaction loading from the cache conflicts on `b` alone.
    let stale =
        |d: &annals::Decider<Accounts>| d.clone_with_load(annals::LoadOption::AnyCachedValue);
    let behind = |version: u64| {
        let store = Arc::clone(&store);
        let stream = b.stream().clone();
        async move {
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(Version(version)),
                    vec![annals::Codec::encode(
                        &annals::JsonCodec::<Movement>::new(),
                        &Movement::Credited { amount: 100 },
                        &annals::EncodeContext::default(),
                    )
                    .expect("encodes")],
                )
                .await
                .expect("a write behind the cache")
        }
    };
    behind(1).await;

    let once = category.clone().with_max_attempts(1);
    let (a1, b1) = (
        once.decider("tx-a").expect("id"),
        once.decider("tx-b").expect("id"),
    );
    let exhausted = annals::transact_many(&[stale(&a1), stale(&b1)], transfer(3)).await;
    assert!(
        matches!(exhausted, Err(Error::ResyncExhausted { .. })),
        "{exhausted:?}"
    );
    assert_eq!(
        store.stream_version(a.stream()).await.expect("version"),
        Version(1),
        "the conflict on the other stream wrote nothing here"
    );

    // The refused transaction caught up before giving up: make the cached `b` stale again.
    behind(2).await;
    let mut seen = Vec::new();
    annals::transact_many(&[stale(&a), stale(&b)], |states| {
        seen.push((*states[0], *states[1]));
        transfer(3)(states)
    })
    .await
    .expect("the resync succeeds");
    assert_eq!(
        seen,
        vec![(10, 105), (10, 205)],
        "decided again on fresh states"
    );
    let a_now = a.load().await.expect("load");
    let b_now = b.load().await.expect("load");
    assert_eq!((*a_now.state, a_now.version), (7, Version(2)));
    assert_eq!((*b_now.state, b_now.version), (208, Version(4)));
}

/// Concurrent transfers between two accounts, half naming them in one order and half in
/// the other, all complete (no deadlock) and conserve the total.
pub async fn opposite_order_transactions_do_not_deadlock(store: Arc<dyn EventStore>) {
    if !store.capabilities().supports(Capability::MultiStreamAppend) {
        return;
    }
    let category = accounts(&store).with_max_attempts(10_000);
    let (tasks, each) = (4, 20);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let category = category.clone();
        handles.push(tokio::spawn(async move {
            let (x, y) = if t % 2 == 0 {
                ("dl-a", "dl-b")
            } else {
                ("dl-b", "dl-a")
            };
            let pair = [
                category.decider(x).expect("id"),
                category.decider(y).expect("id"),
            ];
            for _ in 0..each {
                annals::transact_many(&pair, transfer(1))
                    .await
                    .expect("a transfer");
            }
        }));
    }
    let all = futures::future::join_all(handles);
    let done = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("transfers in opposite orders finish (no deadlock)");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    let a = category
        .decider("dl-a")
        .expect("id")
        .load()
        .await
        .expect("load");
    let b = category
        .decider("dl-b")
        .expect("id")
        .load()
        .await
        .expect("load");
    assert_eq!(*a.state + *b.state, 0, "transfers conserve the total");
    assert_eq!(a.version.get() + b.version.get(), 2 * tasks * each);
    assert_eq!(*a.state, 0, "as many transfers each way");
}

/// `append_many_shown`: as `append_many`, and refused, nothing written, when a stream to be
/// written now starts past the first version its caller's state holds; the refusal names
/// that stream and its version. Through the decider: a transaction on cached states finds
/// a deletion or truncation behind the cache's back, decides again on the events still
/// shown, and uses up no attempt doing so.
pub async fn transactions_on_hidden_events_decide_again(store: Arc<dyn EventStore>) {
    let s = &*store;
    let caps = s.capabilities();
    if !caps.supports(Capability::MultiStreamAppend) || !caps.deletion {
        return;
    }
    use annals::{DeleteMode, StreamAppend};
    let (x, y) = (name("Shownmany-x"), name("Shownmany-y"));
    append(s, &x, ExpectedVersion::NoStream, 3).await;
    append(s, &y, ExpectedVersion::NoStream, 2).await;
    let both = |vx: u64, fx: u64, vy: u64, fy: u64| {
        let appends = vec![
            StreamAppend {
                stream: x.clone(),
                expected: ExpectedVersion::Exact(Version(vx)),
                events: batch(1),
            },
            StreamAppend {
                stream: y.clone(),
                expected: ExpectedVersion::Exact(Version(vy)),
                events: batch(1),
            },
        ];
        s.append_many_shown(appends, vec![Version(fx), Version(fy)])
    };
    let written = both(3, 0, 2, 0).await.expect("nothing hidden: written");
    assert_eq!(
        written.iter().map(|r| r.version).collect::<Vec<_>>(),
        [Version(4), Version(3)]
    );
    s.truncate_before(&y, Version(1)).await.unwrap();
    let before = read_everything(&store).await;
    match both(4, 0, 3, 0).await {
        Err(Error::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!((stream, actual), (y.clone(), Version(3)));
        }
        other => panic!("a truncated stream's state is refused: {other:?}"),
    }
    assert_eq!(read_everything(&store).await, before, "nothing written");
    both(4, 0, 3, 1)
        .await
        .expect("from where it starts: written");
    s.delete_stream(&x, ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    match both(5, 4, 4, 1).await {
        Err(Error::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!((stream, actual), (x.clone(), Version(5)));
        }
        other => panic!("a deleted stream's state is refused: {other:?}"),
    }
    both(5, 5, 4, 1)
        .await
        .expect("holding none of them: written");

    // Through the decider, on cached states, with one attempt.
    let category = accounts(&store)
        .with_cache(Arc::new(annals::Cache::new(16)))
        .with_max_attempts(1);
    let a = category.decider("hidden-a").expect("a valid id");
    let b = category.decider("hidden-b").expect("a valid id");
    for (d, amount) in [(&a, 10), (&b, 5)] {
        for _ in 0..2 {
            d.transact(|_| vec![Movement::Credited { amount }])
                .await
                .expect("seed");
        }
    }
    // Deciding on the cached states as they are (no read first): only the append's own
    // check finds what was hidden.
    let cached =
        |d: &annals::Decider<Accounts>| d.clone_with_load(annals::LoadOption::AnyCachedValue);
    let (a, b) = (cached(&a), cached(&b));
    // `a` soft-deleted behind the cache's back: the transfer decides on no events of it.
    s.delete_stream(a.stream(), ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    let mut seen = Vec::new();
    annals::transact_many(&[cached(&a), cached(&b)], |states: &[&i64]| {
        seen.push((*states[0], *states[1]));
        ((), vec![vec![Movement::Debited { amount: 1 }], vec![]])
    })
    .await
    .expect("decided again on what is shown");
    assert_eq!(seen.last(), Some(&(0, 10)), "{seen:?}");
    // `b`'s first event truncated: decided on the one still shown.
    s.truncate_before(b.stream(), Version(1)).await.unwrap();
    seen.clear();
    annals::transact_pair(&a, &b, |sa: &i64, sb: &i64| {
        seen.push((*sa, *sb));
        ((), vec![], vec![Movement::Credited { amount: 1 }])
    })
    .await
    .expect("decided again on what is shown");
    assert_eq!(seen.last(), Some(&(-1, 5)), "{seen:?}");
    let fresh = accounts(&store);
    for (d, expect) in [(&a, -1), (&b, 6)] {
        let id = d
            .stream()
            .as_str()
            .trim_start_matches("Account-")
            .to_owned();
        let balance = fresh.decider(&id).unwrap().query(|b| *b).await.unwrap();
        assert_eq!(balance, expect, "{id}");
    }
}

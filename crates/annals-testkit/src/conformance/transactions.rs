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

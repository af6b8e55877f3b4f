//! Checkpoints and leases: what consumer groups coordinate through.

use super::*;

/// groups and sources kept apart.
pub async fn checkpoints_load_commit_and_list(store: Arc<dyn annals::CheckpointStore>) {
    assert_eq!(store.load("g1", "all").await.unwrap(), None);
    store
        .commit("g1", "all", annals::backend::position(5))
        .await
        .unwrap();
    store
        .commit("g1", "Cart", annals::backend::position(7))
        .await
        .unwrap();
    store
        .commit("g0", "all", annals::backend::position(1))
        .await
        .unwrap();
    assert_eq!(
        store.load("g1", "all").await.unwrap(),
        Some(annals::backend::position(5))
    );
    store
        .commit("g1", "all", annals::backend::position(9))
        .await
        .unwrap();
    assert_eq!(
        store.load("g1", "all").await.unwrap(),
        Some(annals::backend::position(9))
    );
    assert_eq!(store.load("g2", "all").await.unwrap(), None);
    let listed: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.group, c.source, c.position))
        .collect();
    let p = annals::backend::position;
    assert_eq!(
        listed,
        vec![
            ("g0".to_owned(), "all".to_owned(), p(1)),
            ("g1".to_owned(), "Cart".to_owned(), p(7)),
            ("g1".to_owned(), "all".to_owned(), p(9)),
        ]
    );
}

/// Leases: a lone member claims every partition; a second member gets only what is free
/// until the first releases its excess; a member's leases survive its renewals; leases of a
/// member that stops renewing expire and go to others; a release frees a lease at once;
/// one member never holds another's unexpired lease.
pub async fn leases_claim_share_expire_and_release(store: Arc<dyn annals::LeaseStore>) {
    use std::time::Duration;
    let long = Duration::from_secs(60);
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1, 2, 3], "a lone member claims everything");
    assert_eq!((a.fair_share, a.live_members), (4, 1));
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert!(b.held.is_empty(), "b may not take a's unexpired leases");
    assert_eq!((b.fair_share, b.live_members), (2, 2));
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1, 2, 3], "renewal keeps every lease");
    assert_eq!(a.fair_share, 2, "a is told to hold two");
    store.release("g", "a", &[2, 3]).await.unwrap();
    store.release("g", "b", &[0]).await.unwrap(); // not b's: nothing happens
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert_eq!(b.held, vec![2, 3], "released leases are free at once");
    let a = store.acquire("g", "a", 4, long).await.unwrap();
    assert_eq!(a.held, vec![0, 1]);
    let member = |name: &str, partitions: &[u32]| annals::GroupMember {
        member: name.into(),
        partitions: partitions.to_vec(),
    };
    assert_eq!(
        store.members("g").await.unwrap(),
        [member("a", &[0, 1]), member("b", &[2, 3])],
        "the live members and what each holds"
    );
    let odd = store
        .acquire("odd group.x", "m 1/ü.*", 2, long)
        .await
        .unwrap();
    assert_eq!(odd.held, vec![0, 1]);
    assert_eq!(
        store.members("odd group.x").await.unwrap(),
        [member("m 1/ü.*", &[0, 1])]
    );
    // Another group is separate.
    let other = store.acquire("h", "b", 4, long).await.unwrap();
    assert_eq!(other.held, vec![0, 1, 2, 3]);
    // c holds a short lease and stops renewing: once it expires, d takes it over. The
    // lease runs from when the store grants it, which is after `started` (taken before
    // asking, so a slow answer to c cannot make d look early).
    let started = std::time::Instant::now();
    let c = store
        .acquire("short", "c", 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(c.held, vec![0]);
    let d = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d = store.acquire("short", "d", 1, long).await.unwrap();
            if !d.held.is_empty() {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("an expired lease is taken over");
    assert_eq!(d.held, vec![0]);
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "not before it expired: {:?}",
        started.elapsed()
    );
    let c = store.acquire("short", "c", 1, long).await.unwrap();
    assert!(c.held.is_empty(), "c lost it for good");
    // a leaves: b's fair share is everything at once, and it claims a's partitions.
    store.leave("g", "a").await.unwrap();
    let b = store.acquire("g", "b", 4, long).await.unwrap();
    assert_eq!((b.fair_share, b.live_members), (4, 1));
    assert_eq!(b.held, vec![0, 1, 2, 3]);
    assert_eq!(
        store.members("g").await.unwrap(),
        [member("b", &[0, 1, 2, 3])],
        "a left"
    );
    assert!(store.members("nobody").await.unwrap().is_empty());
}

/// Subjects' keys: created once and shared by every caller (also concurrent ones), absent
/// for unknown subjects, destroyed by forget (idempotent), and a subject keyed again after
/// a forget gets a new key.
pub async fn subject_keys_create_share_and_forget(keys: Arc<dyn annals::SubjectKeys>) {
    let subjects = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(keys.keys(&subjects(&["a"])).await.unwrap().is_empty());
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let keys = Arc::clone(&keys);
            tokio::spawn(async move {
                keys.keys_or_create(&["a".to_string(), "b/ü. *".to_string()])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in racing {
        seen.push(task.await.unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every creator got the same keys"
    );
    let first = seen[0].clone();
    assert_eq!(first.len(), 2);
    assert_ne!(first["a"], first["b/ü. *"]);
    assert_eq!(
        keys.keys(&subjects(&["a", "b/ü. *", "c"])).await.unwrap(),
        first
    );
    assert!(keys.forget("a").await.unwrap());
    assert!(!keys.forget("a").await.unwrap(), "idempotent");
    assert!(!keys.forget("never").await.unwrap());
    let left = keys.keys(&subjects(&["a", "b/ü. *"])).await.unwrap();
    assert_eq!(left.len(), 1, "only the other subject's key is left");
    assert_eq!(left["b/ü. *"], first["b/ü. *"]);
    let again = keys.keys_or_create(&subjects(&["a"])).await.unwrap();
    assert_ne!(again["a"], first["a"], "a forgotten key never comes back");
}

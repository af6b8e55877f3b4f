//! Access strategies: what a load reads (counted through a wrapper store) and that old or
//! damaged snapshots are ignored rather than misread.

use std::sync::Arc;

use annals::{
    Cache, Category, Domain, EventData, EventStore, ExpectedVersion, JsonCodec, MemoryStore,
    StreamName, Version, SNAPSHOT_EVENT_TYPE,
};
use annals_testkit::access::Counting;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Added { n: u32 },
    Reset,
}

struct Tally;

impl Domain for Tally {
    type Event = Event;
    type State = Vec<u32>;
    fn initial() -> Vec<u32> {
        Vec::new()
    }
    fn evolve(mut state: Vec<u32>, event: &Event) -> Vec<u32> {
        match event {
            Event::Added { n } => state.push(*n),
            Event::Reset => state.clear(),
        }
        state
    }
}

fn setup() -> (Arc<MemoryStore>, Arc<Counting>) {
    let memory = Arc::new(MemoryStore::new());
    let counting = Arc::new(Counting::new(memory.clone()));
    (memory, counting)
}

fn tally(store: Arc<dyn EventStore>) -> Category<Tally> {
    Category::new("Tally", store, JsonCodec::<Event>::new()).unwrap()
}

/// Events read by `f`'s loads.
async fn events_read<F: std::future::Future>(c: &Counting, f: F) -> (u64, F::Output) {
    let before = c.counts().1;
    let out = f.await;
    (c.counts().1 - before, out)
}

async fn write_hundred(store: Arc<dyn EventStore>) {
    let writer = tally(store)
        .with_rolling_snapshots(10, 1)
        .decider("t")
        .unwrap();
    for n in 0..100 {
        writer.transact(|_| vec![Event::Added { n }]).await.unwrap();
    }
}

#[tokio::test]
async fn rolling_snapshots_bound_what_a_load_reads_and_old_schemas_are_ignored() {
    let (_, counting) = setup();
    write_hundred(counting.clone()).await;
    let want: Vec<u32> = (0..100).collect();
    // 100 events and a snapshot each time a write crosses a multiple of 10 (snapshots
    // count in the version too).
    let head = counting
        .stream_version(&StreamName::new("Tally-t").unwrap())
        .await
        .unwrap();
    assert!(
        head.get() > 100 + 9,
        "about one snapshot per 10 events: {head}"
    );

    let snap = tally(counting.clone())
        .with_rolling_snapshots(10, 1)
        .decider("t")
        .unwrap();
    let (read, loaded) = events_read(&counting, snap.load()).await;
    let loaded = loaded.unwrap();
    assert_eq!((&*loaded.state, loaded.version), (&want, head));
    assert!(
        read <= 11,
        "read {read} events: the ones since the last snapshot and the snapshot"
    );

    let full = tally(counting.clone()).decider("t").unwrap();
    let (read, loaded) = events_read(&counting, full.load()).await;
    assert_eq!(*loaded.unwrap().state, want);
    assert_eq!(read, head.get(), "unoptimized reads everything");

    let newer = tally(counting.clone())
        .with_rolling_snapshots(10, 2)
        .decider("t")
        .unwrap();
    let (read, loaded) = events_read(&counting, newer.load()).await;
    assert_eq!(*loaded.unwrap().state, want);
    assert_eq!(
        read,
        head.get(),
        "snapshots of schema 1 are passed over by schema 2"
    );
}

#[tokio::test]
async fn a_cached_unchanged_stream_reads_only_its_last_event() {
    let (_, counting) = setup();
    write_hundred(counting.clone()).await;
    let decider = tally(counting.clone())
        .with_rolling_snapshots(10, 1)
        .with_cache(Arc::new(Cache::new(8)))
        .decider("t")
        .unwrap();
    let (first, _) = events_read(&counting, decider.load()).await;
    assert!(first <= 11);
    // Only the state's last event is read again: still shown, it confirms the state (a
    // deletion or truncation since would have hidden it).
    let (second, loaded) = events_read(&counting, decider.load()).await;
    assert_eq!(second, 1);
    assert_eq!(loaded.unwrap().state.len(), 100);
}

#[tokio::test]
async fn loads_stop_at_the_latest_origin_and_latest_known_event_reads_one() {
    let (_, counting) = setup();
    let writer = tally(counting.clone()).decider("o").unwrap();
    for n in 0..20 {
        writer.transact(|_| vec![Event::Added { n }]).await.unwrap();
    }
    writer.transact(|_| vec![Event::Reset]).await.unwrap();
    for n in 0..3 {
        writer.transact(|_| vec![Event::Added { n }]).await.unwrap();
    }
    let origins = tally(counting.clone())
        .with_origins(|e| matches!(e, Event::Reset))
        .decider("o")
        .unwrap();
    let (read, loaded) = events_read(&counting, origins.load()).await;
    assert_eq!(*loaded.unwrap().state, vec![0, 1, 2]);
    assert_eq!(read, 4, "the three events since the reset and the reset");

    let latest = tally(counting.clone())
        .with_latest_known_event()
        .decider("o")
        .unwrap();
    let (read, loaded) = events_read(&counting, latest.load()).await;
    let loaded = loaded.unwrap();
    assert_eq!((&*loaded.state, loaded.version), (&vec![2], Version(24)));
    assert_eq!(read, 1);
}

#[tokio::test]
async fn a_damaged_snapshot_is_ignored_not_misread() {
    let (memory, counting) = setup();
    let writer = tally(counting.clone()).decider("d").unwrap();
    for n in 0..5 {
        writer.transact(|_| vec![Event::Added { n }]).await.unwrap();
    }
    let stream = StreamName::new("Tally-d").unwrap();
    for body in [&b"not json"[..], br#"{"schema":1,"state":"not a list"}"#] {
        memory
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![EventData::new(SNAPSHOT_EVENT_TYPE, body.to_vec())],
            )
            .await
            .unwrap();
    }
    let snap = tally(counting.clone())
        .with_rolling_snapshots(10, 1)
        .decider("d")
        .unwrap();
    let loaded = snap.load().await.unwrap();
    assert_eq!(
        (&*loaded.state, loaded.version),
        (&vec![0, 1, 2, 3, 4], Version(7))
    );
    // And deciding on it goes on from the right version.
    snap.transact(|_| vec![Event::Added { n: 5 }])
        .await
        .unwrap();
    assert_eq!(snap.load().await.unwrap().state.len(), 6);
}

#[tokio::test]
async fn head_snapshots_need_the_capability() {
    let basic: Arc<dyn EventStore> =
        Arc::new(annals_testkit::access::Basic(Arc::new(MemoryStore::new())));
    let refused = tally(basic).with_head_snapshots(1).err();
    assert!(
        matches!(
            refused,
            Some(annals::Error::Unsupported {
                capability: annals::Capability::HeadSnapshots,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_head_snapshot_load_is_one_round_trip_even_after_plain_appends() {
    let (memory, counting) = setup();
    let writer = tally(memory.clone())
        .with_head_snapshots(1)
        .unwrap()
        .decider("h")
        .unwrap();
    for n in 0..50 {
        writer.transact(|_| vec![Event::Added { n }]).await.unwrap();
    }
    // Two plain appends after the last snapshot.
    let plain = tally(memory.clone()).decider("h").unwrap();
    plain
        .transact(|_| vec![Event::Added { n: 50 }])
        .await
        .unwrap();
    plain
        .transact(|_| vec![Event::Added { n: 51 }])
        .await
        .unwrap();
    let reader = tally(counting.clone())
        .with_head_snapshots(1)
        .unwrap()
        .decider("h")
        .unwrap();
    let before = counting.round_trips();
    let (read, loaded) = events_read(&counting, reader.load()).await;
    let loaded = loaded.unwrap();
    assert_eq!(counting.round_trips() - before, 1);
    assert_eq!(read, 2, "only the events after the snapshot");
    assert_eq!(loaded.version, Version(52));
    assert_eq!(*loaded.state, (0..52).collect::<Vec<u32>>());
}

/// The streams of a multi-stream transaction are read together, when loaded and when caught
/// up after a conflict: a transaction waits for one read, not one per stream.
#[tokio::test]
async fn a_transaction_reads_its_streams_together() {
    let (memory, counting) = setup();
    let cached = tally(counting.clone()).with_cache(Arc::new(Cache::new(10)));
    let deciders: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|id| cached.decider(id).unwrap())
        .collect();
    let add = |n| vec![vec![Event::Added { n }]; 3];
    annals::transact_many(&deciders, |_| ((), add(0)))
        .await
        .unwrap();
    assert_eq!(counting.take_most_in_flight(), 3, "loaded together");
    // Written behind the cache's back while the next transaction decides: its append is
    // refused on `b`, and every stream catches up. The loads' reads are taken at the first
    // decision, the catch-ups' after the transaction.
    let mut loads = None;
    let seen = annals::transact_many(&deciders, |states| {
        if loads.is_none() {
            loads = Some(counting.take_most_in_flight());
            futures::executor::block_on(memory.append(
                &StreamName::new("Tally-b").unwrap(),
                ExpectedVersion::Exact(Version(1)),
                vec![EventData::new("Added", br#"{"n":7}"#.to_vec())],
            ))
            .unwrap();
        }
        (
            states.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
            add(1),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        [vec![0], vec![0, 7], vec![0]],
        "decided again on the caught-up states"
    );
    assert_eq!(loads, Some(3), "cached states confirmed together");
    assert_eq!(counting.take_most_in_flight(), 3, "caught up together");
    // Two streams of different domains: the same.
    let (a, b) = (&deciders[0], &deciders[2]);
    let _ = counting.take_most_in_flight();
    annals::transact_pair(a, b, |_, _| ((), vec![Event::Reset], vec![Event::Reset]))
        .await
        .unwrap();
    assert_eq!(counting.take_most_in_flight(), 2, "a pair loaded together");
}

/// A ledger whose state holds what a `serde_json::Value` cannot: integers past 64 bits,
/// and floats that must come back to the last bit.
struct Ledger;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Entry {
    Credited { units: u128, rate: f64 },
    Debited(i128),
}

impl Domain for Ledger {
    type Event = Entry;
    type State = (i128, u128, f64);
    fn initial() -> Self::State {
        (0, 0, 0.0)
    }
    fn evolve((net, most, rates): Self::State, event: &Entry) -> Self::State {
        match event {
            Entry::Credited { units, rate } => (
                net.wrapping_add(*units as i128),
                most.max(*units),
                rates + rate,
            ),
            Entry::Debited(by) => (net.wrapping_sub(*by), most, rates),
        }
    }
}

/// Events and snapshots (rolling and at the head) keep 128-bit integers and floats exactly:
/// a state loaded from a snapshot or folded from events equals the one decided in memory.
#[tokio::test]
async fn states_past_64_bits_load_from_events_and_snapshots_exactly() {
    let memory = Arc::new(MemoryStore::new());
    let ledger = |store: Arc<MemoryStore>| {
        Category::<Ledger>::new("Ledger", store, JsonCodec::new()).unwrap()
    };
    let entries = [
        Entry::Credited {
            units: u128::MAX - 7,
            rate: 0.1,
        },
        Entry::Debited(i128::MIN + 3),
        Entry::Credited {
            units: 1 << 100,
            rate: 1.0 / 3.0,
        },
        Entry::Debited(-(1 << 90)),
        Entry::Credited {
            units: 3,
            rate: 2.0f64.sqrt(),
        },
    ];
    let want = entries.iter().fold(Ledger::initial(), Ledger::evolve);
    for (id, category) in [
        ("plain", ledger(memory.clone())),
        (
            "rolling",
            ledger(memory.clone()).with_rolling_snapshots(2, 1),
        ),
        (
            "head",
            ledger(memory.clone()).with_head_snapshots(1).unwrap(),
        ),
    ] {
        let decider = category.decider(id).unwrap();
        for entry in &entries {
            decider.transact(|_| vec![entry.clone()]).await.unwrap();
        }
        let loaded = decider.load().await.unwrap();
        assert_eq!(*loaded.state, want, "{id}");
    }
}

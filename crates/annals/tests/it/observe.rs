//! Metrics from the decider runtime and instrumented stores, through the `metrics` facade.

use std::sync::Arc;

use annals::{
    Category, Domain, EventData, EventStore, ExpectedVersion, Instrumented, JsonCodec, MemoryStore,
    StreamName,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Event {
    Hit,
}

struct Hits;

impl Domain for Hits {
    type Event = Event;
    type State = u32;
    fn initial() -> u32 {
        0
    }
    fn evolve(n: u32, _: &Event) -> u32 {
        n + 1
    }
}

#[test]
fn decider_runs_conflicts_cache_and_store_round_trips_are_counted() {
    let tally = annals_testkit::metrics::Recorded::default();
    metrics::with_local_recorder(&tally, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let memory = Arc::new(MemoryStore::new());
            let store = Arc::new(Instrumented::new(memory.clone()));
            let cat = Category::<Hits>::new("Hits", store.clone(), JsonCodec::new())
                .unwrap()
                .with_cache(Arc::new(annals::Cache::new(8)));
            let d = cat.decider("1").unwrap();
            d.transact(|_| vec![Event::Hit]).await.unwrap();
            // Another writer moves the stream on behind the cache's back.
            let s = StreamName::new("Hits-1").unwrap();
            memory
                .append(
                    &s,
                    ExpectedVersion::Any,
                    vec![EventData::new("Hit", b"null".to_vec())],
                )
                .await
                .unwrap();
            // Trusting the cache, the decision conflicts once, resyncs, then lands.
            let d = d.clone_with_load(annals::LoadOption::AnyCachedValue);
            d.transact(|_| vec![Event::Hit]).await.unwrap();
            assert_eq!(d.query(|n| *n).await.unwrap(), 3);
        });
    });
    assert_eq!(
        tally.count("annals_decider_runs_total{category=Hits,outcome=ok}"),
        2
    );
    assert_eq!(
        tally.count("annals_decider_conflicts_total{category=Hits}"),
        1
    );
    assert_eq!(
        tally.count("annals_decider_duration_seconds{category=Hits}"),
        2
    );
    assert!(tally.count("annals_cache_hits_total{category=Hits}") >= 2);
    assert_eq!(
        tally.count("annals_store_roundtrip_seconds{backend=memory,op=append,outcome=ok}"),
        2
    );
    assert_eq!(
        tally.count("annals_store_roundtrip_seconds{backend=memory,op=append,outcome=conflict}"),
        1
    );
    assert_eq!(
        tally.count("annals_store_events_total{backend=memory,op=append}"),
        2
    );
    // The first load reads; the conflict's events come with the refused append.
    assert_eq!(
        tally.count("annals_store_roundtrip_seconds{backend=memory,op=read_stream,outcome=ok}"),
        1
    );
}

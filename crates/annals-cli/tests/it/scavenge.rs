//! The scavenge soak: writers append and a subscription follows the feed while `annals
//! scavenge` removes, in batches, the events of one category that truncation hid. The
//! subscription sees every remaining event exactly once, in order; the rows are gone from
//! the SQLite file and the freed space is reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{EventData, EventStore, ExpectedVersion, Filter, Position, StreamName, Version};
use annals_sqlite::{SqliteConfig, SqliteStore};
use futures::StreamExt;

use crate::ops::{json_lines, on};
use crate::succeeded;

fn name(s: String) -> StreamName {
    StreamName::new(s).unwrap()
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| {
            EventData::new(
                "Ticked",
                format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(200)).into_bytes(),
            )
        })
        .collect()
}

async fn rows(store: &SqliteStore) -> i64 {
    store
        .read(|conn| conn.query_row("SELECT count(*) FROM annals_events", [], |r| r.get(0)))
        .await
        .unwrap()
}

#[test]
fn scavenging_while_writers_and_a_subscription_run_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soak.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    // 20 telemetry streams of 50 events, 40 of each hidden by truncation: 800 to remove.
    rt.block_on(async {
        for i in 0..20 {
            let stream = name(format!("Temp-{i}"));
            store
                .append(&stream, ExpectedVersion::NoStream, events(50))
                .await
                .unwrap();
            store.truncate_before(&stream, Version(40)).await.unwrap();
        }
    });
    let before = rt.block_on(rows(&store));
    // A subscription from the start, following.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let follower = {
        let (store, seen) = (Arc::clone(&store), Arc::clone(&seen));
        rt.spawn(async move {
            let feed = annals::Feed::new(
                store as Arc<dyn EventStore>,
                Position::START,
                annals::FeedOptions::follow(Filter::all(), Duration::from_millis(20)).page_size(50),
            );
            let mut events = feed.events();
            while let Some(event) = events.next().await {
                let e = event.unwrap();
                seen.lock()
                    .unwrap()
                    .push((e.stream.to_string(), e.stream_version, e.position));
            }
        })
    };
    // Writers: new events in both categories, while the scavenger runs.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = Arc::clone(&store);
            rt.spawn(async move {
                for round in 0..50 {
                    let keep = name(format!("Keep-{w}"));
                    store
                        .append(&keep, ExpectedVersion::Any, events(2))
                        .await
                        .unwrap();
                    let temp = name(format!("Temp-{}", (round + w) % 20));
                    store
                        .append(&temp, ExpectedVersion::Any, events(1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let url = format!("sqlite://{}", path.display());
    let out = on(dir.path(), &url, &["scavenge", "--batch", "64", "--json"]);
    let report = json_lines(&succeeded(&out));
    assert_eq!(report[0]["events"], 800, "{report:?}");
    assert!(report[0]["free_bytes"].as_u64().unwrap() > 0, "{report:?}");
    rt.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
    });
    // Everything reads now show, the subscription saw exactly once, in order.
    let shown: Vec<(String, u64, Position)> = rt.block_on(async {
        annals_testkit::conformance::read_everything(&store)
            .await
            .into_iter()
            .map(|e| (e.stream.to_string(), e.stream_version, e.position))
            .collect()
    });
    assert_eq!(
        shown.len(),
        20 * 10 + 2 * 100 + 2 * 50 + 20,
        "{}",
        shown.len()
    );
    annals_testkit::eventually_blocking(
        "the subscription catches up",
        Duration::from_secs(60),
        || seen.lock().unwrap().len() >= shown.len(),
    );
    follower.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, shown, "every remaining event once, in order");
    let after = rt.block_on(rows(&store));
    assert_eq!(
        before - after + 300,
        800,
        "800 rows removed (300 were added meanwhile)"
    );
    // Nothing left to remove; a dry run says so.
    let dry = json_lines(&succeeded(&on(
        dir.path(),
        &url,
        &["scavenge", "--dry-run", "--json"],
    )));
    assert_eq!(dry[0]["events"], 0);
}

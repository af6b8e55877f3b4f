//! The scavenge soak, on SQLite and on PostgreSQL: writers append and a subscription
//! follows the feed while `annals scavenge` removes, in batches, the events of one
//! category that retention expired (each stream keeps its last 10, and the writers' appends
//! expire more as they go). The subscription sees every remaining event exactly once, in
//! order (and, of the events that expired meanwhile, at most once); afterwards every row
//! left in the store is one reads show, and the freed space is reported.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{EventData, EventStore, ExpectedVersion, Filter, Position, StreamName};
use annals_sqlite::{SqliteConfig, SqliteStore};
use futures::future::BoxFuture;
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

/// How many event rows the store holds.
type Rows = Box<dyn Fn() -> BoxFuture<'static, i64>>;

/// `frees`: whether the store reports the free space scavenging left (NATS reclaims it in
/// the stream's files, and says nothing).
fn soak(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn EventStore>,
    url: &str,
    rows: Rows,
    frees: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    // 20 telemetry streams of 50 events; each keeps its last 10: 800 expired.
    rt.block_on(async {
        for i in 0..20 {
            store
                .append(
                    &name(format!("Temp-{i}")),
                    ExpectedVersion::NoStream,
                    events(50),
                )
                .await
                .unwrap();
        }
    });
    let set = on(
        dir.path(),
        url,
        &["retention", "set", "Temp", "--max-count", "10"],
    );
    assert!(succeeded(&set).contains("max count 10"), "{set:?}");
    let before = rt.block_on(rows());
    let planned = json_lines(&succeeded(&on(
        dir.path(),
        url,
        &["scavenge", "--dry-run", "--json"],
    )));
    assert_eq!(planned[0]["events"], 800, "{planned:?}");
    assert_eq!(rt.block_on(rows()), before, "a dry run removes nothing");
    // A subscription from the start, following.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let follower = {
        let (store, seen) = (Arc::clone(&store), Arc::clone(&seen));
        rt.spawn(async move {
            let feed = annals::Feed::new(
                store,
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
    let report = json_lines(&succeeded(&on(
        dir.path(),
        url,
        &["scavenge", "--batch", "64", "--json"],
    )));
    let removed = report[0]["events"].as_u64().unwrap();
    assert!(removed >= 800, "{report:?}");
    rt.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
    });
    // What reads now show: each Temp stream's last 10, and every Keep event.
    let shown: Vec<(String, u64, Position)> = rt.block_on(async {
        annals_testkit::conformance::read_everything(&store)
            .await
            .into_iter()
            .map(|e| (e.stream.to_string(), e.stream_version, e.position))
            .collect()
    });
    let temp = shown.iter().filter(|e| e.0.starts_with("Temp-")).count();
    assert_eq!(temp, 20 * 10, "each Temp stream shows its last 10");
    assert_eq!(shown.len() - temp, 2 * 100, "every Keep event");
    let last = shown.last().unwrap().2;
    annals_testkit::eventually_blocking(
        "the subscription catches up",
        Duration::from_secs(60),
        || seen.lock().unwrap().last().is_some_and(|e| e.2 >= last),
    );
    follower.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "the subscription saw each event once, in position order"
    );
    let seen_set: HashSet<_> = seen.iter().cloned().collect();
    let missed: Vec<_> = shown.iter().filter(|e| !seen_set.contains(e)).collect();
    assert!(
        missed.is_empty(),
        "remaining events never delivered: {missed:?}"
    );
    // The rest it saw are Temp events written before and expired since.
    assert!(seen
        .iter()
        .filter(|e| !shown.contains(e))
        .all(|e| e.0.starts_with("Temp-")));
    // The writers' appends expired more; a second scavenge removes them, and then every
    // row left is one reads show.
    let again = json_lines(&succeeded(&on(dir.path(), url, &["scavenge", "--json"])));
    if frees {
        assert!(
            again[0]["free_bytes"].as_u64().is_some_and(|b| b > 0),
            "freed space reported: {again:?}"
        );
    }
    assert_eq!(rt.block_on(rows()), shown.len() as i64);
    assert_eq!(
        removed + again[0]["events"].as_u64().unwrap(),
        20 * 50 + 100 - 20 * 10,
        "every expired event removed once"
    );
    let dry = json_lines(&succeeded(&on(
        dir.path(),
        url,
        &["scavenge", "--dry-run", "--json"],
    )));
    assert_eq!(dry[0]["events"], 0, "nothing left to remove");
}

#[test]
fn sqlite_scavenging_while_writers_and_a_subscription_run_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soak.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    let rows: Rows = {
        let store = Arc::clone(&store);
        Box::new(move || {
            let store = Arc::clone(&store);
            Box::pin(async move {
                store
                    .read(|conn| {
                        conn.query_row("SELECT count(*) FROM annals_events", [], |r| r.get(0))
                    })
                    .await
                    .unwrap()
            })
        })
    };
    soak(
        &rt,
        store,
        &format!("sqlite://{}", path.display()),
        rows,
        true,
    );
}

#[test]
fn postgres_scavenging_while_writers_and_a_subscription_run_loses_and_repeats_nothing() {
    let (url, config) = crate::ops::pg_target("scavenge");
    let schema = url.rsplit("annals_schema=").next().unwrap().to_owned();
    let server_url = annals_testkit::postgres::shared().url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        // Free space is reported where pg_freespacemap is installed.
        let admin = annals_testkit::postgres::connect(&server_url).await;
        let installed = admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_freespacemap")
            .await;
        if let Err(e) = installed {
            // Another test created it at the same moment.
            let there = admin
                .query_opt(
                    "SELECT 1 FROM pg_extension WHERE extname = 'pg_freespacemap'",
                    &[],
                )
                .await
                .unwrap();
            assert!(there.is_some(), "install pg_freespacemap: {e}");
        }
        let store = annals_postgres::PgStore::connect(config).await.unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    });
    let rows: Rows = Box::new(move || {
        let (server_url, schema) = (server_url.clone(), schema.clone());
        Box::pin(async move {
            let client = annals_testkit::postgres::connect(&server_url).await;
            client
                .query_one(&format!("SELECT count(*) FROM {schema}.events"), &[])
                .await
                .unwrap()
                .get(0)
        })
    });
    soak(&rt, store, &url, rows, true);
}

#[test]
fn nats_scavenging_while_writers_and_a_subscription_run_loses_and_repeats_nothing() {
    let server = annals_testkit::nats::shared();
    let stream = annals_testkit::nats::stream_name("scavenge");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = annals_nats::NatsConfig::new(&server.url).stream(&stream);
    let store = Arc::new(
        rt.block_on(annals_nats::NatsStore::connect(config))
            .unwrap(),
    );
    let rows: Rows = {
        let (url, stream) = (server.url.clone(), stream.clone());
        Box::new(move || {
            let (url, stream) = (url.clone(), stream.clone());
            Box::pin(async move {
                let client = async_nats::connect(url.as_str()).await.unwrap();
                let js = async_nats::jetstream::new(client);
                let mut handle = js.get_stream(&stream).await.unwrap();
                handle.info().await.unwrap().state.messages as i64
            })
        })
    };
    soak(
        &rt,
        store,
        &format!("{}?stream={stream}", server.url),
        rows,
        false,
    );
}

/// `annals retention`: bad input is refused with a one-line reason and changes nothing;
/// `show` lists what `set` recorded; `clear` removes it.
#[test]
fn annals_retention_sets_shows_clears_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let initialised = on(dir.path(), &url, &["init"]);
    succeeded(&initialised);
    for (args, says) in [
        (
            vec!["retention", "set", "Temp", "--max-count", "0"],
            "max count must be at least 1",
        ),
        (
            vec!["retention", "set", "Temp", "--max-age", "0s"],
            "max age must be at least",
        ),
        (
            vec!["retention", "set", "Temp"],
            "give --max-age, --max-count",
        ),
        (
            vec!["retention", "set", "Te mp", "--max-count", "3"],
            "neither a category nor a stream",
        ),
        (
            vec!["retention", "set", "Temp", "--max-age", "soon"],
            "soon",
        ),
    ] {
        let out = on(dir.path(), &url, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let show = |json: bool| {
        let mut args = vec!["retention", "show"];
        if json {
            args.push("--json");
        }
        succeeded(&on(dir.path(), &url, &args))
    };
    assert!(show(false).contains("every event is kept"));
    succeeded(&on(
        dir.path(),
        &url,
        &[
            "retention",
            "set",
            "Temp",
            "--max-age",
            "30d",
            "--max-count",
            "100",
        ],
    ));
    succeeded(&on(
        dir.path(),
        &url,
        &["retention", "set", "Temp-7", "--max-count", "5"],
    ));
    let listed = json_lines(&show(true));
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["kind"], "category");
    assert_eq!(listed[0]["name"], "Temp");
    assert_eq!(listed[0]["max_age_seconds"], 30.0 * 86_400.0);
    assert_eq!(listed[0]["max_count"], 100);
    assert_eq!(listed[1]["kind"], "stream");
    assert_eq!(listed[1]["name"], "Temp-7");
    assert!(show(false).contains("stream Temp-7: max count 5"));
    succeeded(&on(dir.path(), &url, &["retention", "clear", "Temp"]));
    let listed = json_lines(&show(true));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "Temp-7");
}

//! The operating commands end to end on the binary, on SQLite and PostgreSQL: init,
//! append, read, dump, tail, stats, checkpoint, sync, and their error paths.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use annals::{EventData, EventStore, ExpectedVersion, RecordedEvent, StreamName};
use annals_testkit::conformance::{copy_key, read_everything};
use serde_json::Value;

use crate::succeeded;

pub(crate) fn pg_url(prefix: &str) -> String {
    pg_target(prefix).0
}

/// A fresh schema of the test server: its URL for the binary and its options for the test.
pub(crate) fn pg_target(prefix: &str) -> (String, annals_postgres::PgConfig) {
    let server = annals_testkit::postgres::shared();
    let schema = annals_testkit::postgres::schema_name(prefix);
    let url = format!("{}?annals_schema={schema}", server.url);
    (
        url,
        annals_postgres::PgConfig::new(server.connection()).schema(schema),
    )
}

/// Runs `annals --store STORE args` in `dir`.
pub(crate) fn on(dir: &std::path::Path, store: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .args(["--store", store])
        .current_dir(dir)
        .env_remove("ANNALS_STORE")
        .output()
        .expect("the annals binary runs")
}

/// Asserts a failure with exactly one line on stderr containing `says`.
pub(crate) fn failed_saying(out: &std::process::Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("annals: "), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in {stderr}");
}

pub(crate) fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn commands_on(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| on(dir.path(), store, args);
    assert!(succeeded(&run(&["init"])).contains("is ready"));
    // A second init is harmless.
    let init = json_lines(&succeeded(&run(&["init", "--json"])));
    match init[0]["backend"].as_str() {
        // JetStream has no schema of ours: the stream is created as it is opened.
        Some("nats") => assert!(init[0]["schema_version"].is_null(), "{init:?}"),
        _ => assert!(init[0]["schema_version"].as_i64().unwrap() >= 1, "{init:?}"),
    }

    let first = json_lines(&succeeded(&run(&[
        "append",
        "Order-1",
        "--type",
        "Placed",
        "--data",
        r#"{"sku":"a"}"#,
        "--expected",
        "no-stream",
        "--json",
    ])));
    assert_eq!(first[0]["version"], 1);
    let second = succeeded(&run(&[
        "append",
        "Order-1",
        "--type",
        "Paid",
        "--data",
        r#"{"amount":3}"#,
        "--metadata",
        r#"{"by":"cli"}"#,
        "--expected",
        "1",
    ]));
    assert!(second.contains("now at version 2"), "{second}");

    // Error paths: one line, non-zero, nothing written.
    failed_saying(
        &run(&[
            "append",
            "Order-1",
            "--type",
            "Paid",
            "--data",
            "{}",
            "--expected",
            "1",
        ]),
        "wrong expected version",
    );
    failed_saying(
        &run(&["append", "Order-1", "--type", "Paid", "--data", "{nope"]),
        "malformed JSON in --data",
    );
    failed_saying(
        &run(&[
            "append",
            "Order-1",
            "--type",
            "Paid",
            "--data",
            "{}",
            "--metadata",
            "[1,",
        ]),
        "malformed JSON in --metadata",
    );
    failed_saying(
        &run(&["append", "no_dash", "--type", "T", "--data", "{}"]),
        "invalid stream name",
    );
    failed_saying(
        &run(&[
            "append",
            "Order-1",
            "--type",
            "T",
            "--data",
            "{}",
            "--expected",
            "soon",
        ]),
        "invalid --expected",
    );

    let table = succeeded(&run(&["read", "Order-1"]));
    assert_eq!(table.lines().count(), 3, "a header and two events: {table}");
    assert!(
        table.contains("Placed") && table.contains("Paid"),
        "{table}"
    );
    let newest = json_lines(&succeeded(&run(&[
        "read",
        "Order-1",
        "--backward",
        "--limit",
        "1",
        "--json",
    ])));
    assert_eq!(newest.len(), 1);
    assert_eq!(
        (newest[0]["type"].as_str(), newest[0]["version"].as_u64()),
        (Some("Paid"), Some(1))
    );
    assert_eq!(newest[0]["data"]["amount"], 3);
    assert_eq!(newest[0]["metadata"]["by"], "cli");
    assert!(succeeded(&run(&["read", "Order-9"])).contains("no events"));

    succeeded(&run(&[
        "append",
        "Invoice-7",
        "--type",
        "Sent",
        "--data",
        "{}",
    ]));
    let dump = json_lines(&succeeded(&run(&["dump"])));
    assert_eq!(dump.len(), 3);
    let orders = json_lines(&succeeded(&run(&["dump", "--category", "Order"])));
    assert_eq!(orders.len(), 2);
    let paid = json_lines(&succeeded(&run(&[
        "dump", "--type", "Paid", "--type", "Sent",
    ])));
    assert_eq!(
        paid.iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Paid", "Sent"]
    );
    let after_first = dump[0]["position"].as_str().unwrap().to_owned();
    let rest = json_lines(&succeeded(&run(&["dump", "--from", &after_first])));
    assert_eq!(rest.len(), 2, "dump --from starts after the position");
    failed_saying(&run(&["dump", "--from", "yesterday"]), "invalid position");

    let stats = succeeded(&run(&["stats"]));
    let order_row = stats
        .lines()
        .find(|l| l.starts_with("Order "))
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(
        order_row.split_whitespace().collect::<Vec<_>>()[1..3],
        ["1", "2"],
        "{stats}"
    );

    succeeded(&run(&["checkpoint", "set", "billing", &after_first]));
    let list = json_lines(&succeeded(&run(&["checkpoint", "list", "--json"])));
    assert!(
        list.iter()
            .any(|c| c["group"] == "billing" && c["position"] == after_first.as_str()),
        "{list:?}"
    );
    assert!(succeeded(&run(&["checkpoint", "show", "billing"])).contains("billing"));
    failed_saying(
        &run(&["checkpoint", "show", "nobody"]),
        "no checkpoint for group",
    );
    failed_saying(
        &run(&["checkpoint", "set", "billing", "abc"]),
        "invalid position",
    );
    // Past the head (a typo's extra digit) the group would skip events not written yet;
    // an empty group is no group. Neither is recorded.
    let stats = json_lines(&succeeded(&run(&["stats", "--json"])));
    let head = stats
        .iter()
        .find_map(|l| l["head"].as_str())
        .unwrap_or_else(|| panic!("{stats:?}"))
        .parse::<u128>()
        .unwrap();
    failed_saying(
        &run(&["checkpoint", "set", "billing", &format!("{head}0")]),
        "past the store's head",
    );
    failed_saying(&run(&["checkpoint", "set", "", "0"]), "empty or blank");
    let list = json_lines(&succeeded(&run(&["checkpoint", "list", "--json"])));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["position"], after_first.as_str(), "{list:?}");
    let lag = json_lines(&succeeded(&run(&["stats", "--json"])));
    let billing = lag
        .iter()
        .find(|l| l["group"] == "billing")
        .expect("the group's lag");
    assert_eq!(billing["behind"], 2, "two events after the checkpoint");

    // tail follows new events only.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args([
            "tail",
            "--category",
            "Order",
            "--count",
            "2",
            "--json",
            "--store",
            store,
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tail starts at the end of the feed: keep appending until it has reported two events
    // (appends made before it started following are not reported).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(serde_json::from_str::<Value>(&line.unwrap()).unwrap());
        }
    });
    let mut got = Vec::new();
    for n in 0..200 {
        succeeded(&run(&[
            "append",
            "Order-2",
            "--type",
            "Tick",
            "--data",
            &n.to_string(),
        ]));
        while let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(e);
        }
        if got.len() >= 2 {
            break;
        }
    }
    if got.len() < 2 {
        let _ = tail.kill();
    }
    reader.join().unwrap();
    assert_eq!(got.len(), 2, "tail --count 2 reports two events: {got:?}");
    assert!(
        got.iter().all(|e| e["stream"] == "Order-2"),
        "only new events: {got:?}"
    );
    assert_eq!(
        got[1]["version"].as_u64().unwrap(),
        got[0]["version"].as_u64().unwrap() + 1,
        "in order"
    );
    let status = tail.wait().unwrap();
    assert!(status.success());

    // tail --stream follows one stream: from a version of it, then its new events only.
    let tail = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["tail", "--stream", "Order-1", "--from-version", "1"])
        .args(["--type", "Paid", "--type", "Shipped"])
        .args(["--count", "2", "--json", "--store", store])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (stream, kind) in [
        ("Invoice-7", "Paid"),
        ("Order-1", "Noted"),
        ("Order-1", "Shipped"),
    ] {
        succeeded(&run(&["append", stream, "--type", kind, "--data", "{}"]));
    }
    let out = tail.wait_with_output().unwrap();
    let got = json_lines(&succeeded(&out));
    assert_eq!(
        got.iter()
            .map(|e| (
                e["stream"].as_str().unwrap(),
                e["version"].as_u64().unwrap(),
                e["type"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("Order-1", 1, "Paid"), ("Order-1", 3, "Shipped")]
    );
    let both = run(&["tail", "--stream", "Order-1", "--category", "Order"]);
    assert!(!both.status.success(), "--stream and --category together");
}

#[test]
fn operating_commands_on_sqlite() {
    commands_on("sqlite://ops.db");
}

#[test]
fn operating_commands_on_postgres() {
    commands_on(&pg_url("ops"));
}

#[test]
fn operating_commands_on_nats() {
    commands_on(&format!(
        "{}?stream={}",
        annals_testkit::nats::shared().url,
        annals_testkit::nats::stream_name("ops")
    ));
}

/// `?replicas=N` applies when the stream is created: opening an existing stream that keeps
/// fewer copies warns, so nobody believes in durability the stream does not have.
#[test]
fn an_existing_nats_stream_with_fewer_replicas_than_asked_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "{}?stream={}",
        annals_testkit::nats::shared().url,
        annals_testkit::nats::stream_name("replicas")
    );
    let created = on(dir.path(), &url, &["init"]);
    succeeded(&created);
    assert!(
        !String::from_utf8_lossy(&created.stderr).contains("fewer replicas"),
        "{created:?}"
    );
    let asked = on(dir.path(), &format!("{url}&replicas=3"), &["stats"]);
    succeeded(&asked);
    let warned = String::from_utf8_lossy(&asked.stderr);
    assert!(
        warned.contains("fewer replicas than asked for") && warned.contains("asked=3"),
        "{warned}"
    );
}

#[test]
fn unreachable_servers_and_malformed_urls_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (store, says) in [
        ("postgres://postgres@127.0.0.1:1/nowhere", "PostgreSQL"),
        ("postgres://[bad", "PostgreSQL"),
        ("sqlite:/missing-slash.db", "malformed store URL"),
        ("ftp://x", "unsupported store"),
    ] {
        failed_saying(&on(dir.path(), store, &["read", "Order-1"]), says);
    }
    succeeded(&on(dir.path(), "sqlite://a.db", &["init"]));
    failed_saying(
        &on(
            dir.path(),
            "memory://",
            &[
                "sync",
                "--from",
                "sqlite://a.db",
                "--to",
                "postgres://postgres@127.0.0.1:1/x",
            ],
        ),
        "--to",
    );
}

const STREAMS: u64 = 500;
const EVENTS: u64 = 100_000;

/// 100,000 events over 500 streams, with metadata, correlation and causation ids.
async fn fill(store: &annals_sqlite::SqliteStore) {
    let mut version = vec![0u64; STREAMS as usize];
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    let mut written = 0;
    while written < EVENTS {
        let s = rng.u64(..STREAMS) as usize;
        let n = rng.u64(1..=4).min(EVENTS - written);
        let events: Vec<EventData> = (0..n)
            .map(|i| {
                let mut e = EventData::new(
                    if i % 2 == 0 { "Added" } else { "Removed" },
                    format!(
                        r#"{{"n":{},"text":"ü'\"{}"}}"#,
                        written + i,
                        rng.u32(..1000)
                    )
                    .into_bytes(),
                )
                .with_metadata(format!(r#"{{"w":{s}}}"#).into_bytes());
                e.correlation_id = Some(annals::Uuid::now_v7());
                e.causation_id = (i % 3 == 0).then(annals::Uuid::now_v7);
                e
            })
            .collect();
        let stream = StreamName::new(format!("Sync{}-{s}", s % 5)).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::Exact(annals::Version(version[s])),
                events,
            )
            .await
            .unwrap();
        version[s] += n;
        written += n;
    }
}

/// Runs `annals sync --json`, killing it after `kill_after` progress lines when given.
fn sync(dir: &std::path::Path, from: &str, to: &str, kill_after: Option<usize>) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args([
            "sync", "--from", from, "--to", to, "--json", "--batch", "2000",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        lines.push(serde_json::from_str::<Value>(&line.unwrap()).unwrap());
        if kill_after == Some(lines.len()) {
            child.kill().unwrap();
            child.wait().unwrap();
            return lines;
        }
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    lines
}

#[test]
fn sync_copies_100k_events_sqlite_to_postgres_and_back_and_resumes_after_a_kill() {
    let (pg, pg_config) = pg_target("sync");
    sync_round_trip(&pg, move || {
        Box::pin(async move {
            let store: Arc<dyn EventStore> =
                Arc::new(annals_postgres::PgStore::connect(pg_config).await.unwrap());
            store
        })
    });
}

#[test]
fn sync_copies_100k_events_sqlite_to_nats_and_back_and_resumes_after_a_kill() {
    let server = annals_testkit::nats::shared();
    let stream = annals_testkit::nats::stream_name("sync");
    let url = format!("{}?stream={stream}", server.url);
    let config = annals_nats::NatsConfig::new(&server.url).stream(stream);
    sync_round_trip(&url, move || {
        Box::pin(async move {
            let store: Arc<dyn EventStore> =
                Arc::new(annals_nats::NatsStore::connect(config).await.unwrap());
            store
        })
    });
}

/// The middle store, opened in the test.
type Middle =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn EventStore>>>>>;

/// 100,000 events from SQLite to the store at `middle` (the copy killed after 5 batches,
/// then resumed), compared, then on to a fresh SQLite file and compared again.
fn sync_round_trip(
    middle: &str,
    open_middle: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn EventStore>>>>
        + 'static,
) {
    let open_middle: Middle = Box::new(open_middle);
    annals_testkit::run(async {
        let dir = tempfile::tempdir().unwrap();
        let source = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
            dir.path().join("source.db"),
        ))
        .unwrap();
        fill(&source).await;
        let (src, back) = ("sqlite://source.db", "sqlite://back.db");

        // Interrupted after 5 batches (SIGKILL), then run again to the end.
        let first = sync(dir.path(), src, middle, Some(5));
        assert_eq!(first.len(), 5);
        let copied_before_kill = first[4]["copied"].as_u64().unwrap();
        assert!(copied_before_kill < EVENTS);
        let rest = sync(dir.path(), src, middle, None);
        let done = rest.last().unwrap();
        assert_eq!(done["done"], true);
        assert!(done["resumed_after"].is_string(), "{done}");
        assert!(
            done["read"].as_u64().unwrap() <= EVENTS - copied_before_kill + 2000,
            "resumed near where it stopped: {done}"
        );

        let target = open_middle().await;
        let original = read_everything(&Arc::new(source)).await;
        let copied = read_everything(&target).await;
        assert_eq!(original.len() as u64, EVENTS);
        assert_eq!(copied.len(), original.len(), "no duplicates, nothing lost");
        assert!(
            original
                .iter()
                .map(copy_key)
                .eq(copied.iter().map(copy_key)),
            "same events in the same read-all order"
        );

        // And back to a fresh SQLite file, in one go.
        sync(dir.path(), middle, back, None);
        let back_store = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
            dir.path().join("back.db"),
        ))
        .unwrap();
        let returned = read_everything(&Arc::new(back_store)).await;
        assert!(
            original
                .iter()
                .map(copy_key)
                .eq(returned.iter().map(copy_key)),
            "the round trip changes nothing"
        );
        let per_stream = |events: &[RecordedEvent]| {
            let mut m = std::collections::BTreeMap::new();
            for e in events {
                *m.entry(e.stream.to_string()).or_insert(0u64) += 1;
            }
            m
        };
        assert_eq!(per_stream(&original), per_stream(&returned));
        // A second run finds nothing new.
        let again = sync(dir.path(), middle, back, None);
        assert_eq!(again.last().unwrap()["read"], 0);
    });
}

/// Stored values out of every calendar's range (a timestamp past year 9999, the largest and
/// the smallest one) are shown as what they are by `read`, `dump` and `tail`, never a panic.
#[test]
fn timestamps_out_of_range_are_shown_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("odd.db").display());
    let run = |args: &[&str]| on(dir.path(), &store, args);
    for _ in 0..3 {
        succeeded(&run(&["append", "Odd-1", "--type", "T", "--data", "{}"]));
    }
    {
        let conn = annals_sqlite::rusqlite::Connection::open(dir.path().join("odd.db")).unwrap();
        conn.execute_batch(
            "DROP TRIGGER annals_events_immutable_update; \
             UPDATE annals_events SET recorded_at = CASE stream_version \
               WHEN 0 THEN 253402300800000000 \
               WHEN 1 THEN 9223372036854775807 \
               ELSE -9223372036854775808 END;",
        )
        .unwrap();
    }
    let read = succeeded(&run(&["read", "Odd-1"]));
    assert!(read.contains("past year 9999"), "{read}");
    assert!(read.contains("before 1970"), "{read}");
    for args in [
        &["read", "Odd-1", "--json"][..],
        &["dump", "--json"],
        &["tail", "--from", "0", "--count", "3", "--json"],
    ] {
        let lines = json_lines(&succeeded(&run(args)));
        assert_eq!(lines.len(), 3, "{args:?}: {lines:?}");
        assert!(
            lines[0]["recorded_at"]
                .as_str()
                .unwrap()
                .starts_with("253402300800000000 µs after 1970"),
            "{args:?}: {lines:?}"
        );
        assert!(
            lines[2]["recorded_at"]
                .as_str()
                .unwrap()
                .ends_with("µs before 1970"),
            "{args:?}: {lines:?}"
        );
    }
}

/// `annals sync` copies streams whose older events are hidden in the source (truncated, or
/// soft-deleted and written again) at their versions: the target begins them there. Into
/// a target that already has such a stream at a lower version it stops with one line
/// saying which stream and why, after the batches before it (of one event each here), and
/// keeps nothing of the refused one.
#[test]
fn sync_copies_streams_whose_older_events_are_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, args: &[&str]| on(dir.path(), store, args);
    let source = "sqlite://source.db";
    let append = |store: &str, stream: &str| {
        succeeded(&run(
            store,
            &["append", stream, "--type", "Placed", "--data", "{}"],
        ));
    };
    append(source, "Kept-1");
    for _ in 0..3 {
        append(source, "Orders-1");
    }
    succeeded(&run(source, &["truncate", "Orders-1", "--before", "2"]));
    for _ in 0..2 {
        append(source, "Carts-1");
    }
    succeeded(&run(source, &["delete", "Carts-1"]));
    append(source, "Carts-1");
    let sync_to = |target: &str| {
        Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["sync", "--from", source, "--to", target, "--batch", "1"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    succeeded(&sync_to("sqlite://target.db"));
    let versions = |store: &str, stream: &str| -> Vec<u64> {
        json_lines(&succeeded(&run(store, &["read", stream, "--json"])))
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    for (stream, shown) in [
        ("Kept-1", vec![0]),
        ("Orders-1", vec![2]),
        ("Carts-1", vec![2]),
    ] {
        assert_eq!(versions("sqlite://target.db", stream), shown, "{stream}");
    }
    // The copy goes on from the versions: an append expecting the source's version.
    succeeded(&run(
        "sqlite://target.db",
        &[
            "append",
            "Orders-1",
            "--type",
            "Placed",
            "--data",
            "{}",
            "--expected",
            "3",
        ],
    ));
    // A target with its own Orders-1 at version 1.
    append("sqlite://other.db", "Orders-1");
    failed_saying(
        &sync_to("sqlite://other.db"),
        "Orders-1: its events from version 1 to 2 are not in the feed",
    );
    assert_eq!(versions("sqlite://other.db", "Kept-1"), [0]);
    assert_eq!(versions("sqlite://other.db", "Orders-1"), [0]);
}

/// `annals sync` does the source's deletions and truncations in the target, where they
/// are in the feed: also on streams an earlier run had copied (a resumed copy hides what the
/// source hid since, also of a stream written to, deleted and written to again between
/// two runs), on every store; repeating them (a run resumed from before them)
/// changes nothing; a fresh copy shows the same.
#[test]
fn sync_does_the_sources_deletions_and_truncations_in_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, args: &[&str]| on(dir.path(), store, args);
    let source = "sqlite://source.db";
    let append = |store: &str, stream: &str, expected: Option<&str>| {
        let mut args = vec!["append", stream, "--type", "Placed", "--data", "{}"];
        args.extend(expected.iter().flat_map(|e| ["--expected", e]));
        run(store, &args)
    };
    for (stream, n) in [
        ("Orders-1", 3),
        ("Carts-1", 2),
        ("Carts-2", 2),
        ("Gone-1", 1),
        ("Kept-1", 1),
        ("Later-1", 2),
    ] {
        for _ in 0..n {
            succeeded(&append(source, stream, None));
        }
    }
    let sync_to = |target: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["sync", "--from", source, "--to", target, "--json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        json_lines(&succeeded(&out)).pop().unwrap()
    };
    let versions = |store: &str, stream: &str| -> Vec<u64> {
        json_lines(&succeeded(&run(store, &["read", stream, "--json"])))
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    let nats = annals_testkit::nats::shared();
    let targets = [
        "sqlite://target.db".to_owned(),
        crate::ops::pg_url("synclife"),
        format!(
            "{}?stream={}",
            nats.url,
            annals_testkit::nats::stream_name("synclife")
        ),
    ];
    for target in &targets {
        assert_eq!(sync_to(target)["written"], 11, "{target}");
    }
    succeeded(&run(source, &["truncate", "Orders-1", "--before", "2"]));
    succeeded(&run(source, &["delete", "Carts-1"]));
    succeeded(&run(source, &["delete", "Carts-2"]));
    succeeded(&append(source, "Carts-2", Some("2")));
    succeeded(&run(source, &["delete", "Gone-1", "--hard"]));
    succeeded(&run(source, &["delete", "Never-1", "--hard"]));
    // Written to, then deleted, then written to again, all between two runs.
    succeeded(&append(source, "Later-1", Some("2")));
    succeeded(&run(source, &["delete", "Later-1"]));
    succeeded(&append(source, "Later-1", Some("3")));
    let fresh = "sqlite://fresh.db".to_owned();
    let check = |target: &str, fresh: bool| {
        assert_eq!(versions(target, "Orders-1"), [2], "{target}");
        assert_eq!(versions(target, "Carts-1"), [0u64; 0], "{target}");
        assert_eq!(versions(target, "Carts-2"), [2], "{target}");
        assert_eq!(versions(target, "Kept-1"), [0], "{target}");
        assert_eq!(versions(target, "Later-1"), [3], "{target}");
        for gone in ["Gone-1", "Never-1"] {
            failed_saying(&append(target, gone, None), "deleted");
        }
        // Each done once: the target records it once in its own `{category}-$deleted`
        // (a fresh copy never had the events, so there was no truncation to do; its
        // deleted streams are imported at their versions).
        let recorded = |category: &str| versions(target, &format!("{category}-$deleted")).len();
        let expected = if fresh { [0, 2] } else { [1, 2] };
        assert_eq!(
            [recorded("Orders"), recorded("Carts")],
            expected,
            "{target}"
        );
    };
    for target in targets.iter().chain([&fresh]) {
        let done = sync_to(target);
        assert_eq!(done["applied"], 6, "{target}: {done}");
        check(target, target == &fresh);
        // Again from the start: every event is known, every deletion already done.
        succeeded(&run(
            target,
            &["checkpoint", "set", "annals.sync", "0", "--source", source],
        ));
        let again = sync_to(target);
        assert_eq!(again["written"], 0, "{target}: {again}");
        check(target, target == &fresh);
    }
    // A deleted stream, fresh copy included, goes on at the version it was deleted at.
    for target in targets.iter().chain([&fresh]) {
        succeeded(&append(target, "Carts-1", Some("2")));
        assert_eq!(versions(target, "Carts-1"), [2], "{target}");
    }
}

/// `annals sync --follow` copies to the head, then goes on copying what the source records
/// (events written by another process, a truncation, a tombstone) until interrupted; on
/// Ctrl-C or SIGTERM it ends cleanly after the batch under way, its checkpoint committed (a run
/// afterwards has nothing left to copy).
#[test]
fn sync_follows_the_source_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, args: &[&str]| on(dir.path(), store, args);
    let targets = [
        "sqlite://target.db".to_owned(),
        crate::ops::pg_url("syncfollow"),
    ];
    for (k, target) in targets.iter().enumerate() {
        let target = target.as_str();
        let source = format!("sqlite://source{k}.db");
        let source = source.as_str();
        let append = || {
            succeeded(&run(
                source,
                &["append", "Orders-1", "--type", "Placed", "--data", "{}"],
            ))
        };
        append();
        // Killed if the test fails before it ends.
        let mut child = crate::admin::Killed(Some(
            Command::new(env!("CARGO_BIN_EXE_annals"))
                .args([
                    "sync", "--from", source, "--to", target, "--follow", "--json",
                ])
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        let (tx, lines) = std::sync::mpsc::channel::<Value>();
        let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(serde_json::from_str(&line.unwrap()).unwrap());
            }
        });
        let wait_for = |what: &str, done: &dyn Fn(&Value) -> bool| loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if done(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("{target}: no line showing {what}: {e}"),
            }
        };
        wait_for("it follows", &|l| l["following"] == true);
        // New events and operations, recorded by other processes while it follows.
        append();
        append();
        succeeded(&run(source, &["truncate", "Orders-1", "--before", "1"]));
        succeeded(&run(source, &["delete", "Gone-1", "--hard"]));
        wait_for("everything copied", &|l| {
            l["written"] == 3 && l["applied"] == 2
        });
        // Ctrl-C for one, a service manager's stop (SIGTERM) for the other.
        let signal = ["-INT", "-TERM"][k];
        let interrupted = Command::new("kill")
            .args([signal, &child.0.as_ref().unwrap().id().to_string()])
            .status()
            .unwrap();
        assert!(interrupted.success());
        let done = wait_for("the end", &|l| l["done"] == true);
        assert_eq!(
            (done["read"].as_u64(), done["applied"].as_u64()),
            (Some(5), Some(2)),
            "{target}: {done}"
        );
        let status = child.0.take().unwrap().wait().unwrap();
        assert!(status.success(), "{target}: ends cleanly on {signal}");
        reader.join().unwrap();
        let versions: Vec<u64> =
            json_lines(&succeeded(&run(target, &["read", "Orders-1", "--json"])))
                .iter()
                .map(|e| e["version"].as_u64().unwrap())
                .collect();
        assert_eq!(versions, [1, 2], "{target}");
        failed_saying(&run(target, &["read", "Gone-1"]), "deleted");
        // The checkpoint followed: nothing is left to copy.
        let again = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["sync", "--from", source, "--to", target, "--json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let again = json_lines(&succeeded(&again)).pop().unwrap();
        assert_eq!(again["read"], 0, "{target}: {again}");
    }
}

/// `annals sync --retention` makes the target's retention policies the source's (set,
/// changed and cleared as there), also while following; without it the target keeps its
/// own.
#[test]
fn sync_mirrors_retention_policies_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, args: &[&str]| on(dir.path(), store, args);
    let (source, target) = ("sqlite://rsource.db", "sqlite://rtarget.db");
    for store in [source, target] {
        succeeded(&run(store, &["init"]));
    }
    succeeded(&run(
        source,
        &["retention", "set", "Telemetry", "--max-count", "2"],
    ));
    succeeded(&run(
        source,
        &["retention", "set", "Orders-1", "--max-age", "30d"],
    ));
    succeeded(&run(
        target,
        &["retention", "set", "Carts", "--max-count", "5"],
    ));
    for n in 0..4 {
        let data = format!(r#"{{"n":{n}}}"#);
        succeeded(&run(
            source,
            &["append", "Telemetry-1", "--type", "Read", "--data", &data],
        ));
    }
    let policies =
        |store: &str| json_lines(&succeeded(&run(store, &["retention", "show", "--json"])));
    let sync = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["sync", "--from", source, "--to", target, "--json"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        succeeded(&out);
    };
    let carts = policies(target);
    sync(&[]);
    assert_eq!(policies(target), carts, "the target keeps its own");
    sync(&["--retention"]);
    assert_eq!(policies(target), policies(source));
    assert_eq!(policies(target).len(), 2);
    // Following: the source's changes are made in the target too.
    let mut child = crate::admin::Killed(Some(
        Command::new(env!("CARGO_BIN_EXE_annals"))
            .args([
                "sync",
                "--from",
                source,
                "--to",
                target,
                "--follow",
                "--retention",
                "--json",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if line["following"] == true {
            break;
        }
    }
    succeeded(&run(
        source,
        &["retention", "set", "Telemetry", "--max-count", "3"],
    ));
    succeeded(&run(source, &["retention", "clear", "Orders-1"]));
    let wanted = policies(source);
    assert_eq!(wanted.len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while policies(target) != wanted {
        assert!(
            std::time::Instant::now() < deadline,
            "the target's policies never became {wanted:?}: {:?}",
            policies(target)
        );
    }
    let pid = child.0.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "ends cleanly: {status}");
}

/// `annals tail` ends cleanly (exit 0) on Ctrl-C and on SIGTERM (a service manager's stop),
/// once it says it follows.
#[test]
fn tail_ends_cleanly_on_ctrl_c_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    succeeded(&on(
        dir.path(),
        "sqlite://tail.db",
        &["append", "Order-1", "--type", "Placed", "--data", "{}"],
    ));
    for signal in ["-INT", "-TERM"] {
        // Killed if the test fails before it ends.
        let mut child = crate::admin::Killed(Some(
            Command::new(env!("CARGO_BIN_EXE_annals"))
                .args(["tail", "--store", "sqlite://tail.db"])
                .current_dir(dir.path())
                .env_remove("ANNALS_STORE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        assert!(first.starts_with("following from position"), "{first:?}");
        let pid = child.0.as_ref().unwrap().id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success());
        let status = child.0.take().unwrap().wait().unwrap();
        assert!(status.success(), "tail on {signal}: {status}");
    }
}

#[test]
fn streams_are_truncated_and_deleted_soft_and_hard() {
    let dir = tempfile::tempdir().unwrap();
    let store = "sqlite://life.db";
    let run = |args: &[&str]| on(dir.path(), store, args);
    for n in 0..3 {
        let data = format!(r#"{{"n":{n}}}"#);
        succeeded(&run(&[
            "append", "Orders-1", "--type", "Placed", "--data", &data,
        ]));
    }
    assert!(
        succeeded(&run(&["truncate", "Orders-1", "--before", "2"])).contains("starts at version 2")
    );
    let read = json_lines(&succeeded(&run(&["read", "Orders-1", "--json"])));
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["version"], 2, "{read:?}");
    assert!(succeeded(&run(&["delete", "Orders-1", "--expected", "3"])).contains("reads as empty"));
    assert!(json_lines(&succeeded(&run(&["read", "Orders-1", "--json"]))).is_empty());
    succeeded(&run(&[
        "append",
        "Orders-1",
        "--type",
        "Placed",
        "--data",
        "{}",
        "--expected",
        "3",
    ]));
    let read = json_lines(&succeeded(&run(&["read", "Orders-1", "--json"])));
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["version"], 3);
    succeeded(&run(&["delete", "Orders-1", "--hard"]));
    failed_saying(
        &run(&["append", "Orders-1", "--type", "Placed", "--data", "{}"]),
        "deleted for good",
    );
    failed_saying(&run(&["read", "Orders-1"]), "deleted for good");
    // The system events are in the category's deletions stream.
    let system = json_lines(&succeeded(&run(&["read", "Orders-$deleted", "--json"])));
    let types: Vec<_> = system
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["$StreamTruncated", "$StreamDeleted", "$StreamDeleted"],
        "{system:?}"
    );
    // The same commands on PostgreSQL.
    let pg = pg_url("life");
    succeeded(&on(
        dir.path(),
        &pg,
        &["append", "Orders-1", "--type", "Placed", "--data", "{}"],
    ));
    assert!(
        succeeded(&on(dir.path(), &pg, &["delete", "Orders-1", "--hard"]))
            .contains("deleted for good at version 1")
    );
    failed_saying(
        &on(
            dir.path(),
            &pg,
            &["append", "Orders-1", "--type", "Placed", "--data", "{}"],
        ),
        "deleted for good",
    );
}

/// Output piped to a reader that stops early (`annals dump | head -1`) ends the command
/// quietly and successfully, as it ends other Unix tools; a stdout that cannot be written
/// (a full disk) ends it with one line saying so. Never a panic.
#[test]
fn output_to_a_closed_pipe_or_a_full_disk_ends_the_command_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = "sqlite://annals.db";
    succeeded(&on(
        dir.path(),
        store,
        &["append", "Cart-1", "--type", "Added", "--data", "{}"],
    ));
    for args in [&["dump"][..], &["read", "Cart-1"], &["--json", "stats"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(args)
            .args(["--store", store])
            .current_dir(dir.path())
            .env_remove("ANNALS_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert_eq!(stderr, "", "{args:?}");
        // The command still closed its store on the way out: the last connection folded
        // the WAL back and removed it.
        for beside in ["annals.db-wal", "annals.db-shm"] {
            assert!(
                !dir.path().join(beside).exists(),
                "{args:?} left {beside} behind"
            );
        }
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["dump", "--store", store])
        .current_dir(dir.path())
        .env_remove("ANNALS_STORE")
        .stdout(full)
        .output()
        .unwrap();
    failed_saying(&out, "writing to stdout: No space left on device");
}

/// Bodies that are not JSON: a dump loses no byte of them (text as a string, other bytes in
/// base64, said by `data_encoding`: a text body tells from a body that is a JSON string),
/// and a table never sends their control characters (a terminal's escape sequences) to the
/// terminal.
#[tokio::test]
async fn binary_and_hostile_bodies_are_dumped_exactly_and_shown_escaped() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = vec![0xff, 0x00, 0x1b, b'[', b'2', b'J', 0xfe];
    let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2Jplain text".as_bytes().to_vec();
    {
        let store = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
            dir.path().join("annals.db"),
        ))
        .unwrap();
        let events = vec![
            EventData::new("Binary", binary.clone()).with_metadata(binary.clone()),
            EventData::new("Hostile", hostile.clone()),
            EventData::new("Quoted", br#""plain text""#.to_vec()),
        ];
        store
            .append(
                &StreamName::new("Blob-1").unwrap(),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
    }
    let store = "sqlite://annals.db";
    let dumped = json_lines(&succeeded(&on(dir.path(), store, &["dump"])));
    let decode = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    assert_eq!(dumped[0]["data_encoding"], "base64");
    assert_eq!(decode(&dumped[0]["data"]), binary);
    assert_eq!(dumped[0]["metadata_encoding"], "base64");
    assert_eq!(decode(&dumped[0]["metadata"]), binary);
    assert_eq!(dumped[1]["data"].as_str().unwrap().as_bytes(), hostile);
    assert_eq!(dumped[1]["data_encoding"], "text");
    // A body that is the JSON string "plain text" is JSON: no encoding beside it.
    assert_eq!(dumped[2]["data"], "plain text");
    assert!(dumped[2].get("data_encoding").is_none());
    for args in [
        &["read", "Blob-1"][..],
        &["tail", "--from", "0", "--count", "3"],
    ] {
        let out = on(dir.path(), store, args);
        let shown = succeeded(&out);
        assert!(
            !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}]0;owned"), "{shown}");
        assert!(shown.contains("(7 bytes, not UTF-8)"), "{shown}");
    }
}

/// `annals append` as scripts use it: the body from a file (`@PATH`) or standard input
/// (`-`), and an id given so that running it again (a retry after a lost answer) writes
/// nothing the second time; with causation and correlation ids. On every store.
#[test]
fn append_takes_bodies_from_files_or_stdin_and_an_id_to_retry_safely() {
    let nats = format!(
        "{}?stream={}",
        annals_testkit::nats::shared().url,
        annals_testkit::nats::stream_name("script")
    );
    for store in ["sqlite://script.db".to_owned(), pg_url("script"), nats] {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| on(dir.path(), &store, args);
        succeeded(&run(&["init"]));
        std::fs::write(dir.path().join("body.json"), r#"{"sku": "a", "n": 1}"#).unwrap();
        let id = "0191e5a6-5c4b-7d3e-9f00-00000000a11d";
        let cause = "0191e5a6-5c4b-7d3e-9f00-0000000ca05e";
        let append = [
            "append",
            "Order-1",
            "--type",
            "Placed",
            "--data",
            "@body.json",
            "--id",
            id,
            "--causation-id",
            cause,
            "--correlation-id",
            cause,
            "--expected",
            "no-stream",
            "--json",
        ];
        let first = json_lines(&succeeded(&run(&append)));
        // The same command again: the store recognises the id and writes nothing.
        let again = json_lines(&succeeded(&run(&append)));
        assert_eq!(first, again, "{store}");
        let mut piped = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["append", "Order-1", "--type", "Paid", "--data", "-"])
            .args(["--metadata", r#"{"by":"pipe"}"#, "--expected", "1"])
            .args(["--store", &store])
            .current_dir(dir.path())
            .env_remove("ANNALS_STORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = piped.stdin.take().unwrap();
            stdin.write_all(br#"{"amount": 3}"#).unwrap();
        }
        succeeded(&piped.wait_with_output().unwrap());
        let events = json_lines(&succeeded(&run(&["read", "Order-1", "--json"])));
        assert_eq!(events.len(), 2, "{store}: {events:?}");
        assert_eq!(
            (&events[0]["id"], &events[0]["data"]["sku"]),
            (&serde_json::json!(id), &serde_json::json!("a")),
            "{store}"
        );
        assert_eq!(events[0]["causation_id"], cause, "{store}");
        assert_eq!(events[0]["correlation_id"], cause, "{store}");
        assert_eq!(events[1]["data"]["amount"], 3, "{store}");
        assert_eq!(events[1]["metadata"]["by"], "pipe", "{store}");
        // Nothing is written from a file that is missing or not JSON, or from two bodies
        // both asked of standard input.
        std::fs::write(dir.path().join("bad.json"), "[1,").unwrap();
        for (data, says) in [
            ("@missing.json", "--data @missing.json"),
            ("@bad.json", "malformed JSON in --data"),
        ] {
            failed_saying(
                &run(&["append", "Order-1", "--type", "X", "--data", data]),
                says,
            );
        }
        failed_saying(
            &run(&[
                "append",
                "Order-1",
                "--type",
                "X",
                "--data",
                "-",
                "--metadata",
                "-",
            ]),
            "cannot both be read from standard input",
        );
        let events = json_lines(&succeeded(&run(&["read", "Order-1", "--json"])));
        assert_eq!(events.len(), 2, "{store}: {events:?}");
        // A body is stored and shown as written: numbers a float cannot hold, keys in
        // their order (parsed and written out again, both would change), on one line.
        std::fs::write(
            dir.path().join("exact.json"),
            "{\n  \"id\": 123456789012345678901234567890,\n  \"amount\": 0.10000000000000000000001,\n  \"a\": -0\n}\n",
        )
        .unwrap();
        succeeded(&run(&[
            "append",
            "Exact-1",
            "--type",
            "X",
            "--data",
            "@exact.json",
        ]));
        let exact = r#""data":{"id":123456789012345678901234567890,"amount":0.10000000000000000000001,"a":-0}"#;
        for args in [
            &["read", "Exact-1", "--json"][..],
            &["dump", "--category", "Exact"],
        ] {
            let out = succeeded(&run(args));
            assert!(
                out.contains(exact) && out.lines().count() == 1,
                "{store} {args:?}: {out}"
            );
        }
        let table = succeeded(&run(&["read", "Exact-1"]));
        assert!(
            table.contains(r#"{\n  "id": 123456789012345678901234"#),
            "{table}"
        );
    }
}

//! Other processes: a writer killed with SIGKILL at random moments, and two processes
//! sharing one file. The child processes are this test binary, re-run on the
//! `process::child` test with `ANNALS_SQLITE_CHILD` saying what to do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use annals::{
    EventData, EventStore, EventStoreExt, ExpectedVersion, Position, ReadStream, StreamName,
    SubscribeExt, SubscribeOptions, Version,
};
use annals_sqlite::{SqliteConfig, SqliteStore};
use futures::StreamExt;

const CHILD: &str = "ANNALS_SQLITE_CHILD";
const WRITERS: usize = 4;
const BATCH: u64 = 5;

fn spawn_child(mode: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "process::child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{mode}:{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary re-runs as a child")
}

/// Appends 5-event batches to `Crash-{w}` streams from 4 concurrent writers, forever (or
/// `limit` acknowledgements), printing `ack STREAM VERSION` after each acknowledged append.
async fn crash_writer(path: &Path, limit: Option<usize>) {
    let store = SqliteStore::open(SqliteConfig::new(path)).expect("open");
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, acks) = (store.clone(), acks.clone());
            tokio::spawn(async move {
                let stream = StreamName::new(format!("Crash-{w}")).unwrap();
                loop {
                    if limit.is_some_and(|l| acks.load(std::sync::atomic::Ordering::SeqCst) >= l) {
                        return;
                    }
                    let version = store.stream_version(&stream).await.expect("version");
                    let b = version.get() / BATCH;
                    let events = (0..BATCH)
                        .map(|i| {
                            EventData::new("Step", format!(r#"{{"b":{b},"i":{i}}}"#).into_bytes())
                        })
                        .collect();
                    let r = store
                        .append(&stream, ExpectedVersion::Exact(version), events)
                        .await
                        .expect("append");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {stream} {}", r.version).unwrap();
                    out.flush().unwrap();
                    acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// Checks what a killed writer left: dense versions, whole batches, every ack present.
async fn check_after_crash(path: &Path, acked: &HashMap<String, u64>) -> u64 {
    let store = SqliteStore::open(SqliteConfig::new(path)).expect("reopen after the kill");
    let mut total = 0;
    for w in 0..WRITERS {
        let stream = StreamName::new(format!("Crash-{w}")).unwrap();
        let events = store
            .read_stream_vec(&stream, ReadStream::forward())
            .await
            .unwrap();
        let version = store.stream_version(&stream).await.unwrap();
        assert_eq!(
            version,
            Version(events.len() as u64),
            "{stream}: the head matches the events"
        );
        assert_eq!(
            events.len() as u64 % BATCH,
            0,
            "{stream}: a batch is partially present"
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.stream_version, i as u64, "{stream}: versions are dense");
            let body = String::from_utf8(e.data.clone()).unwrap();
            let want = format!(r#"{{"b":{},"i":{}}}"#, i as u64 / BATCH, i as u64 % BATCH);
            assert_eq!(
                body,
                want,
                "{stream}: batch {} is whole and in order",
                i as u64 / BATCH
            );
        }
        let acked = acked.get(stream.as_str()).copied().unwrap_or(0);
        assert!(
            version.get() >= acked,
            "{stream}: acknowledged version {acked} lost (found {version})"
        );
        total += version.get();
    }
    let page = store
        .read_all(Position::START, &annals::Filter::all(), 1_000_000)
        .await
        .unwrap();
    assert_eq!(page.events.len() as u64, total);
    total
}

/// Entry point of the child processes. Run directly (no variable set), it checks the
/// writer loop on its own: a bounded run leaves whole batches and every ack present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child() {
    match std::env::var(CHILD) {
        Ok(spec) => {
            // libtest has printed "test process::child ... " without a newline: end it.
            println!();
            let (mode, path) = spec.split_once(':').expect("mode:path");
            let path = Path::new(path);
            match mode {
                "crash" => crash_writer(path, None).await,
                "append" => append_twenty(path).await,
                other => panic!("unknown child mode {other}"),
            }
        }
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("annals.db");
            crash_writer(&path, Some(20)).await;
            let total = check_after_crash(&path, &HashMap::new()).await;
            assert!(total >= 20 * BATCH);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_append_and_tears_no_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    let mut acked: HashMap<String, u64> = HashMap::new();
    let seed = fastrand::u64(..);
    eprintln!("rng seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    for round in 0..25 {
        let wait_for = rng.usize(1..=40);
        let mut child = spawn_child("crash", &path);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(ack) = line.strip_prefix("ack ") else {
                continue;
            };
            let (stream, version) = ack.split_once(' ').unwrap();
            let version: u64 = version.parse().unwrap();
            let entry = acked.entry(stream.to_owned()).or_default();
            *entry = (*entry).max(version);
            seen += 1;
            if seen == wait_for {
                child.kill().expect("SIGKILL the child");
                kills += 1;
                break;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child was killed, not finished"
        );
        check_after_crash(&path, &acked).await;
    }
    assert!(kills >= 20, "only {kills} kills");
}

/// Reads what the parent wrote, prints `saw N`, appends 20 events to `Other-1`.
async fn append_twenty(path: &Path) {
    let store = SqliteStore::open(SqliteConfig::new(path)).expect("open");
    let parent = store
        .read_stream_vec(&StreamName::new("Parent-1").unwrap(), ReadStream::forward())
        .await
        .unwrap();
    println!("saw {}", parent.len());
    let stream = StreamName::new("Other-1").unwrap();
    for i in 0..20 {
        let e = EventData::new("FromChild", format!("{i}").into_bytes());
        store
            .append(&stream, ExpectedVersion::Exact(Version(i)), vec![e])
            .await
            .unwrap();
    }
    println!("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_file() {
    let (store, dir) = crate::fresh();
    let path = dir.path().join("annals.db");
    store
        .append(
            &StreamName::new("Parent-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![EventData::new("FromParent", b"0".to_vec())],
        )
        .await
        .unwrap();
    let options = SubscribeOptions {
        poll_interval: Duration::from_millis(50),
        ..SubscribeOptions::category("Other")
    };
    let mut live = crate::shared(&store).subscribe(Position::START, options);
    let child = spawn_child("append", &path);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "saw 1"),
        "the child read the parent's event: {stdout}"
    );
    let mut got = Vec::new();
    while got.len() < 20 {
        match tokio::time::timeout(Duration::from_secs(30), live.next()).await {
            Ok(Some(Ok(e))) => got.push(e),
            other => panic!("after {} events: {other:?}", got.len()),
        }
    }
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, e)| e.stream_version == i as u64 && e.event_type == "FromChild"));
    let read = store
        .read_stream_vec(&StreamName::new("Other-1").unwrap(), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 20);
}

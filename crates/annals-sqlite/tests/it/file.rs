//! Files the store must refuse untouched, immutability, persistence, projector transactions.

use annals::{
    Error, EventData, EventStore, EventStoreExt, ExpectedVersion, InvalidEvent, Position,
    ReadStream, StreamName, Version,
};
use annals_sqlite::{rusqlite, OpenError, SqliteConfig, SqliteStore, SCHEMA_VERSION};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn ev(t: &str) -> EventData {
    EventData::new(t, br#"{"x":1}"#.to_vec())
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    match SqliteStore::open(SqliteConfig::new(&path)) {
        Err(OpenError::NotAnnalsDatabase { reason, .. }) => {
            assert!(reason.contains("not a SQLite database"), "{reason}")
        }
        other => panic!("expected NotAnnalsDatabase, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), text);
    assert!(!dir.path().join("notes.txt-wal").exists());
}

#[test]
fn another_applications_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&path)).unwrap_err();
    assert!(matches!(err, OpenError::NotAnnalsDatabase { .. }), "{err}");
    assert!(err.to_string().contains("not an Annals database"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "the journal mode was not changed");
}

#[test]
fn a_database_from_a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    drop(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
            .unwrap();
    }
    match SqliteStore::open(SqliteConfig::new(&path)) {
        Err(OpenError::SchemaTooNew {
            found, supported, ..
        }) => assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION + 1);
}

/// The SHA-256 of a file and of its `-wal` (empty when there is none).
fn digests(path: &std::path::Path) -> (String, String) {
    use sha2::{Digest, Sha256};
    let of = |p: &std::path::Path| {
        let bytes = std::fs::read(p).unwrap_or_default();
        format!("{:x}", Sha256::digest(bytes))
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (of(path), of(std::path::Path::new(&wal)))
}

/// An empty-looking database (no tables, no application id) carrying another application's
/// `user_version` is not a new file: refused, and not a byte changes.
#[test]
fn a_tableless_database_with_another_user_version_is_refused_untouched() {
    for version in [99, 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {version}"))
                .unwrap();
        }
        let before = digests(&path);
        match SqliteStore::open(SqliteConfig::new(&path)) {
            Err(OpenError::NotAnnalsDatabase { reason, .. }) => {
                assert!(
                    reason.contains(&format!("user_version {version}")),
                    "{reason}"
                )
            }
            other => panic!("user_version {version}: expected NotAnnalsDatabase, got {other:?}"),
        }
        assert_eq!(digests(&path), before, "user_version {version}");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            mode, "delete",
            "user_version {version}: journal mode changed"
        );
    }
}

/// A foreign database in WAL mode whose last commits are still only in its `-wal`: refused
/// without a checkpoint, so neither the main file nor the `-wal` changes.
#[test]
fn a_foreign_wal_database_with_uncheckpointed_frames_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
             CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); \
             INSERT INTO invoices (total) VALUES (1.5), (2.5);",
        )
        .unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
    }
    let before = digests(&path);
    assert_ne!(
        before.1,
        digests(&dir.path().join("none")).1,
        "the -wal holds frames"
    );
    let err = SqliteStore::open(SqliteConfig::new(&path)).unwrap_err();
    assert!(matches!(err, OpenError::NotAnnalsDatabase { .. }), "{err}");
    assert_eq!(digests(&path), before);
}

#[tokio::test]
async fn oversized_and_malformed_events_are_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("a.db")).max_event_bytes(100)).unwrap();
    let s = name("Limits-1");
    let big = EventData::new("Big", vec![b'x'; 90]).with_metadata(vec![b'm'; 11]);
    match store
        .append(&s, ExpectedVersion::Any, vec![ev("Ok"), big])
        .await
    {
        Err(Error::InvalidEvent {
            index: 1,
            reason:
                InvalidEvent::TooLarge {
                    size: 101,
                    limit: 100,
                },
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![ev("")]).await,
        Err(Error::InvalidEvent {
            reason: InvalidEvent::EmptyType,
            ..
        })
    ));
    assert!(StreamName::new("no dash").is_err());
    assert_eq!(store.stream_version(&s).await.unwrap(), Version(0));
    let page = store
        .read_all(Position::START, &annals::Filter::all(), 10)
        .await
        .unwrap();
    assert!(page.events.is_empty());
}

#[tokio::test]
async fn events_are_immutable_in_the_database() {
    let (store, dir) = crate::fresh();
    store
        .append(&name("Imm-1"), ExpectedVersion::Any, vec![ev("A")])
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("annals.db")).unwrap();
    for sql in [
        "UPDATE annals_events SET data = x'00'",
        "DELETE FROM annals_events",
    ] {
        let err = conn.execute(sql, []).unwrap_err();
        assert!(
            err.to_string().contains("events are immutable"),
            "{sql}: {err}"
        );
    }
    let events = store
        .read_stream_vec(&name("Imm-1"), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(events[0].data, br#"{"x":1}"#);
}

/// Rows changed by other means (the immutability triggers dropped first) to hold values
/// Annals never writes: reads reaching them fail, naming the event's position, never a
/// panic; the rows after them read once a reader moves past.
#[tokio::test]
async fn rows_changed_outside_the_store_fail_reads_naming_the_event() {
    let (store, dir) = crate::fresh();
    for stream in ["Bad-1", "Bad-2", "Bad-3", "Good-1"] {
        store
            .append(&name(stream), ExpectedVersion::Any, vec![ev("A")])
            .await
            .unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("annals.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER annals_events_immutable_update; \
         UPDATE annals_events SET event_id = x'0102' WHERE position = 1; \
         UPDATE annals_events SET stream_version = -5 WHERE position = 2; \
         UPDATE annals_streams SET name = 'no_dash' WHERE name = 'Bad-3';",
    )
    .unwrap();
    let err = store
        .read_stream_vec(&name("Bad-1"), ReadStream::forward())
        .await
        .unwrap_err();
    let text = annals::error_chain(&err);
    assert!(
        !err.is_transient() && text.contains("the event at position 1 cannot be read"),
        "{text}"
    );
    // A feed to the head (what `dump` and `sync` read through) yields it after one read:
    // an error that will not go away is not retried.
    let feed = annals::Feed::new(
        std::sync::Arc::new(store.clone()),
        Position::START,
        annals::FeedOptions::to_end(annals::Filter::all()),
    );
    let reads = feed.reads();
    let first = futures::StreamExt::next(&mut feed.events()).await.unwrap();
    assert!(
        annals::error_chain(&first.unwrap_err()).contains("position 1 cannot be read"),
        "the feed yields the error"
    );
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // (The row with a negative version is below every stream's start: not shown at all.)
    let mut from = Position::START;
    for position in [1, 3] {
        let err = store
            .read_all(from, &annals::Filter::all(), 100)
            .await
            .unwrap_err();
        let text = annals::error_chain(&err);
        assert!(
            text.contains(&format!("the event at position {position} cannot be read")),
            "{text}"
        );
        from = annals::backend::position(position);
    }
    let rest = store
        .read_all(from, &annals::Filter::all(), 100)
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].stream, name("Good-1"));
}

#[tokio::test]
async fn events_survive_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    let sent = ev("Kept").with_correlation_id(annals::Uuid::now_v7());
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        store
            .append(
                &name("Keep-1"),
                ExpectedVersion::NoStream,
                vec![sent.clone(), ev("Two")],
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let got = store
        .read_stream_vec(&name("Keep-1"), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].event_id, got[0].correlation_id),
        (sent.event_id, sent.correlation_id)
    );
    let r = store
        .append(
            &name("Keep-1"),
            ExpectedVersion::NoStream,
            vec![sent, ev("Two")],
        )
        .await;
    assert!(
        r.is_err(),
        "a retry with other ids for the second event is not the same batch"
    );
    assert_eq!(
        store.stream_version(&name("Keep-1")).await.unwrap(),
        Version(2)
    );
}

/// Opening a store already at this build's schema commits nothing and takes no write lock,
/// so a store on a full disk, or one another process is writing, still opens for reading
/// (`annals read`, `annals stats`).
#[tokio::test]
async fn opening_a_current_store_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        store
            .append(&name("Open-1"), ExpectedVersion::NoStream, vec![ev("A")])
            .await
            .unwrap();
    }
    // Another connection's view: `data_version` changes when any other connection commits.
    let observer = rusqlite::Connection::open(&path).unwrap();
    let commits = || -> i64 {
        observer
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    };
    let before = commits();
    // Nor does it wait for another process's write transaction.
    observer.execute_batch("BEGIN IMMEDIATE").unwrap();
    {
        let mut config = SqliteConfig::new(&path);
        config.busy_timeout = std::time::Duration::from_millis(50);
        let store = SqliteStore::open(config).expect("opens beside a write transaction");
        assert_eq!(
            store.stream_version(&name("Open-1")).await.unwrap(),
            Version(1)
        );
    }
    observer.execute_batch("ROLLBACK").unwrap();
    assert_eq!(commits(), before, "opening the store committed a change");
}

#[tokio::test]
async fn one_conflict_in_a_group_commit_fails_only_itself() {
    let (store, _dir) = crate::fresh();
    let contested = name("Group-contested");
    store
        .append(&contested, ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            let contested = contested.clone();
            tokio::spawn(async move {
                if i % 8 == 0 {
                    store
                        .append(&contested, ExpectedVersion::NoStream, vec![ev("B")])
                        .await
                        .map(|_| false)
                } else {
                    store
                        .append(
                            &name(&format!("Group-{i}")),
                            ExpectedVersion::NoStream,
                            vec![ev("C"), ev("D")],
                        )
                        .await
                        .map(|_| true)
                }
            })
        })
        .collect();
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(i % 8 == 0 && e.is_conflict(), "task {i}: {e}"),
        }
    }
    assert_eq!(ok, 56);
    let page = store
        .read_all(Position::START, &annals::Filter::all(), 1000)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1 + 56 * 2);
    assert!(
        page.events
            .windows(2)
            .all(|w| annals::backend::raw_position(w[1].position)
                == annals::backend::raw_position(w[0].position) + 1),
        "positions are dense"
    );
}

#[tokio::test]
async fn a_projector_commits_its_read_model_and_checkpoint_together() {
    use annals::CheckpointStore;
    let (store, _dir) = crate::fresh();
    store
        .project("totals", "all", annals::backend::position(1), |conn| {
            conn.execute_batch("CREATE TABLE totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL) STRICT; INSERT INTO totals VALUES ('a', 1);")
        })
        .await
        .unwrap();
    assert_eq!(
        store.load("totals", "all").await.unwrap(),
        Some(annals::backend::position(1))
    );
    let failed = store
        .project("totals", "all", annals::backend::position(2), |conn| {
            conn.execute("UPDATE totals SET n = n + 1 WHERE k = 'a'", [])?;
            conn.execute("INSERT INTO totals VALUES ('a', 5)", [])
                .map(drop)
        })
        .await;
    assert!(failed.is_err(), "the duplicate key fails the projection");
    assert_eq!(
        store.load("totals", "all").await.unwrap(),
        Some(annals::backend::position(1)),
        "checkpoint unchanged"
    );
    let n: i64 = store
        .read(|c| c.query_row("SELECT n FROM totals WHERE k = 'a'", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(n, 1, "the read-model change was rolled back with it");
    store
        .project("totals", "all", annals::backend::position(3), |conn| {
            conn.execute("UPDATE totals SET n = n + 1", []).map(drop)
        })
        .await
        .unwrap();
    let n: i64 = store
        .read(|c| c.query_row("SELECT n FROM totals WHERE k = 'a'", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(
        (n, store.load("totals", "all").await.unwrap()),
        (2, Some(annals::backend::position(3)))
    );
}

/// A file of schema version 8 (before the read models' progress moved into a `WITHOUT
/// ROWID` table) is migrated on open, keeping every progress row, and takes appends.
#[tokio::test]
async fn a_file_of_the_previous_schema_keeps_its_read_model_progress() {
    const V8: [&str; 8] = [
        include_str!("../../migrations/0001_initial.sql"),
        include_str!("../../migrations/0002_projection_streams.sql"),
        include_str!("../../migrations/0003_head_snapshots.sql"),
        include_str!("../../migrations/0004_projection_schema.sql"),
        include_str!("../../migrations/0005_parked.sql"),
        include_str!("../../migrations/0006_deletion.sql"),
        include_str!("../../migrations/0007_scavenge.sql"),
        include_str!("../../migrations/0008_retention.sql"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v8.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in V8 {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 8;
             INSERT INTO annals_projection_streams (projection, stream, next_version, schema_version)
             VALUES ('todos', 'Todos-a', 3, 1), ('todos', 'Todos-b', 7, 2), ('other', 'Todos-a', 1, 0);",
            annals_sqlite::APPLICATION_ID
        ))
        .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    store
        .append(
            &name("Order-1"),
            ExpectedVersion::NoStream,
            vec![ev("Placed")],
        )
        .await
        .unwrap();
    let rows = annals::ReadModelStore::rows(&store, "todos").await.unwrap();
    let rows: Vec<(String, u64, u32)> = rows
        .into_iter()
        .map(|r| (r.stream.to_string(), r.version.get(), r.schema))
        .collect();
    assert_eq!(
        rows,
        [("Todos-a".to_owned(), 3, 1), ("Todos-b".to_owned(), 7, 2)]
    );
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let other: i64 = conn
        .query_row(
            "SELECT next_version FROM annals_projection_streams WHERE projection = 'other'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(other, 1);
    // Keyed by (projection, stream) alone: no rowid.
    assert!(conn
        .prepare("SELECT rowid FROM annals_projection_streams")
        .is_err());
}

/// Polls `f` once, as a caller that then gives up (or awaits it later) would.
fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// A write whose caller gives up while it is still queued for the writer (another
/// connection holds the file's write lock) is never written; the writes of callers that
/// wait are.
#[tokio::test]
async fn an_append_given_up_before_the_writer_takes_it_is_not_written() {
    let (store, dir) = crate::fresh();
    store
        .append(&name("Queued-0"), ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    // The writer's next transaction waits for this one.
    let other = rusqlite::Connection::open(dir.path().join("annals.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (first, dropped) = (name("Queued-1"), name("Queued-given-up"));
    // Queued first, and awaited.
    let mut waiting = Box::pin(store.append(&first, ExpectedVersion::Any, vec![ev("A")]));
    assert!(poll_once(waiting.as_mut()).is_pending());
    // Queued behind it, then given up.
    let mut given_up = Box::pin(store.append(&dropped, ExpectedVersion::Any, vec![ev("A")]));
    assert!(poll_once(given_up.as_mut()).is_pending());
    drop(given_up);
    let mut checkpoint = Box::pin(annals::CheckpointStore::commit(
        &store,
        "g",
        "s",
        Position::START,
    ));
    assert!(poll_once(checkpoint.as_mut()).is_pending());
    drop(checkpoint);
    other.execute_batch("COMMIT").unwrap();
    waiting.await.unwrap();
    store
        .append(&name("Queued-after"), ExpectedVersion::Any, vec![ev("A")])
        .await
        .unwrap();
    for (stream, version) in [("Queued-1", 1), ("Queued-given-up", 0), ("Queued-after", 1)] {
        assert_eq!(
            store.stream_version(&name(stream)).await.unwrap(),
            Version(version),
            "{stream}"
        );
    }
    assert_eq!(
        annals::CheckpointStore::load(&store, "g", "s")
            .await
            .unwrap(),
        None,
        "the given-up checkpoint was written"
    );
}

/// Appends queued while the writer waits for the file are committed in one transaction,
/// and the `annals_sqlite_group_commit_requests` histogram tells how many requests each
/// group carried.
#[tokio::test]
async fn appends_queued_together_are_committed_together_and_counted() {
    let recorded = annals_testkit::metrics::recorded();
    let (store, dir) = crate::fresh();
    let path = dir.path().join("annals.db");
    let groups = || {
        recorded.histogram(&format!(
            "annals_sqlite_group_commit_requests{{path={}}}",
            path.display()
        ))
    };
    store
        .append(
            &name("Together-first"),
            ExpectedVersion::NoStream,
            vec![ev("A")],
        )
        .await
        .unwrap();
    assert_eq!(groups(), (1, 1.0));
    // The writer's next transaction waits for this one; meanwhile 16 appends queue.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let streams: Vec<StreamName> = (0..16).map(|k| name(&format!("Together-{k}"))).collect();
    let mut appends: Vec<_> = streams
        .iter()
        .map(|s| Box::pin(store.append(s, ExpectedVersion::NoStream, vec![ev("A")])))
        .collect();
    for a in &mut appends {
        assert!(poll_once(a.as_mut()).is_pending());
    }
    other.execute_batch("COMMIT").unwrap();
    for a in appends {
        a.await.unwrap();
    }
    // One more group, of all 16: the writer, waiting for the file with the first, takes
    // every request queued behind it into the same transaction.
    assert_eq!(groups(), (2, 17.0));
    for s in &streams {
        assert_eq!(store.stream_version(s).await.unwrap(), Version(1), "{s}");
    }
}

/// A truncation or hard deletion between two pages of a long stream read (pages of 1,000
/// events, each its own snapshot) is seen by the later pages.
#[tokio::test]
async fn a_truncation_or_deletion_between_two_pages_of_a_long_read_is_seen_by_the_later_pages() {
    let (store, _dir) = crate::fresh();
    annals_testkit::conformance::a_change_between_two_pages_is_seen_by_the_later_pages(
        crate::shared(&store),
        1000,
    )
    .await;
}

/// Appends that fill the file (here its own bound, `max_bytes`, which fails writes as a
/// full disk does): SQLite may roll a group's whole transaction back with the failed
/// statement. Every append is then either written and answered so, or answered with a
/// transient error and not written: none may be written and answered as failed (a request
/// run after the roll-back would commit on its own). Opened again without the bound, the
/// file holds exactly the appends answered as written, and takes more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_fill_the_file_are_written_or_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    drop(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    let bytes = database_bytes(&path);
    // Room for a few dozen of the events below.
    let config = SqliteConfig::new(&path).max_bytes(bytes + 160 * 1024);
    let store = std::sync::Arc::new(SqliteStore::open(config).unwrap());
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000)).into_bytes();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (store, data) = (std::sync::Arc::clone(&store), data.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..40 {
                    let stream = name(&format!("Full-{w}x{i}"));
                    let event = EventData::new("Padded", data.clone());
                    let id = event.event_id;
                    let outcome = store
                        .append(&stream, ExpectedVersion::NoStream, vec![event])
                        .await;
                    outcomes.push((stream, id, outcome.map(drop)));
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    let written = outcomes.iter().filter(|(_, _, o)| o.is_ok()).count();
    assert!(written > 0, "nothing was written");
    assert!(written < outcomes.len(), "the bound was never reached");
    for (_, _, outcome) in &outcomes {
        if let Err(e) = outcome {
            assert!(e.is_transient(), "a full file is not transient: {e}");
        }
    }
    only_answered_writes(&store, &outcomes).await;
    drop(store);
    let store = std::sync::Arc::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    only_answered_writes(&store, &outcomes).await;
    store
        .append(
            &name("Full-after"),
            ExpectedVersion::NoStream,
            vec![EventData::new("Padded", data)],
        )
        .await
        .unwrap();
}

/// Each stream of `outcomes` holds its one event if its append was answered as written,
/// and nothing otherwise.
async fn only_answered_writes(
    store: &SqliteStore,
    outcomes: &[(StreamName, annals::Uuid, annals::Result<()>)],
) {
    for (stream, id, outcome) in outcomes {
        let events = store
            .read_stream_vec(stream, ReadStream::forward())
            .await
            .unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
        match outcome {
            Ok(()) => assert_eq!(ids, [*id], "{stream}: answered as written"),
            Err(e) => assert!(ids.is_empty(), "{stream}: answered {e}, but written"),
        }
    }
}

/// A projector that swallows the failure of a statement that cost the group its
/// transaction (the file full) gets an error for its next statement, which would otherwise
/// run, and commit, on its own; one that goes on to return `Ok` does not get its progress
/// recorded on its own either. Each apply fails as transient, and neither rows nor
/// progress are written.
#[tokio::test]
async fn a_projector_statement_after_its_transaction_was_lost_is_refused() {
    use annals::{ProjectionId, Projector, ProjectorError, ReadModelStore, RecordedEvent, SqlTx};
    use annals_sqlite::SqliteTx;

    /// Marks the stream after its failed insert, unless `quiet`.
    struct Swallows {
        quiet: bool,
    }

    #[async_trait::async_trait]
    impl Projector<SqliteStore> for Swallows {
        fn id(&self) -> ProjectionId<'static> {
            ProjectionId::new("swallows", 1)
        }

        async fn setup(&self, tx: &mut SqliteTx<'_>) -> Result<(), ProjectorError> {
            tx.batch(
                "CREATE TABLE IF NOT EXISTS rm_pad (x BLOB);
                 CREATE INDEX IF NOT EXISTS rm_pad_x ON rm_pad (x);
                 CREATE TABLE IF NOT EXISTS rm_marks (stream TEXT)",
            )
            .await?;
            Ok(())
        }

        async fn apply(
            &self,
            tx: &mut SqliteTx<'_>,
            stream: &StreamName,
            _: &[RecordedEvent],
        ) -> Result<(), ProjectorError> {
            // More than the file may take: it fails, and the failure is ignored.
            let _ = tx
                .execute("INSERT INTO rm_pad (x) VALUES (randomblob(1000000))", &[])
                .await;
            if !self.quiet {
                tx.execute(
                    "INSERT INTO rm_marks (stream) VALUES ($1)",
                    &[stream.into()],
                )
                .await?;
            }
            Ok(())
        }

        async fn clear(&self, _: &mut SqliteTx<'_>, _: &StreamName) -> Result<(), ProjectorError> {
            Ok(())
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lost.db");
    let loud = std::sync::Arc::new(Swallows { quiet: false });
    let quiet = std::sync::Arc::new(Swallows { quiet: true });
    let stream = name("Swallowed-1");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        store.setup(&loud).await.unwrap();
        store
            .append(&stream, ExpectedVersion::NoStream, vec![ev("Happened")])
            .await
            .unwrap();
    }
    let bytes = database_bytes(&path);
    let store = SqliteStore::open(SqliteConfig::new(&path).max_bytes(bytes + 64 * 1024)).unwrap();
    let events = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    let err = store.apply(&loud, &stream, &events).await.unwrap_err();
    let chain = annals::error_chain(&err);
    assert!(annals::is_transient(&err), "{chain}");
    assert!(chain.contains("rolled back"), "{chain}");
    let err = store.apply(&quiet, &stream, &events).await.unwrap_err();
    let chain = annals::error_chain(&err);
    assert!(annals::is_transient(&err), "{chain}");
    assert!(chain.contains("nothing of it is written"), "{chain}");
    assert_eq!(store.progress("swallows", &stream).await.unwrap(), None);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let marks: i64 = conn
        .query_row("SELECT count(*) FROM rm_marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(marks, 0, "a statement ran outside the apply's transaction");
}

/// How many bytes the database at `path` holds (its pages, the WAL's included).
fn database_bytes(path: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    (pages * size) as u64
}

/// A path naming a directory, or a file in a directory that does not exist, is refused
/// saying so (SQLite alone says "disk I/O error" or "unable to open database file"), and
/// nothing is created.
#[test]
fn a_directory_or_a_missing_directory_is_refused_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        SqliteConfig::new(dir.path()),
        SqliteConfig::new(dir.path()).read_only(),
    ] {
        match SqliteStore::open(config) {
            Err(e @ OpenError::NotAnnalsDatabase { .. }) => {
                assert!(e.to_string().contains("it is a directory"), "{e}")
            }
            other => panic!("expected NotAnnalsDatabase, got {other:?}"),
        }
    }
    let nested = dir.path().join("missing").join("annals.db");
    for config in [
        SqliteConfig::new(&nested),
        SqliteConfig::new(&nested).read_only(),
    ] {
        match SqliteStore::open(config) {
            Err(e @ OpenError::NoDirectory { .. }) => {
                assert!(e.to_string().contains("missing does not exist"), "{e}")
            }
            other => panic!("expected NoDirectory, got {other:?}"),
        }
    }
    assert!(!dir.path().join("missing").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A file of another application left with a hot rollback journal (a transaction cut off
/// mid-way) is refused as not an Annals store (a store keeps a WAL), opened for writing or
/// read-only, and neither the file nor its journal is rolled back or changed.
#[test]
fn a_foreign_file_with_a_hot_journal_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let conn = rusqlite::Connection::open(&live).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (x); INSERT INTO t VALUES (1); PRAGMA cache_size = 1; BEGIN;",
    )
    .unwrap();
    for _ in 0..500 {
        conn.execute("INSERT INTO t VALUES (?1)", ["x".repeat(500)])
            .unwrap();
    }
    // A copy taken mid-transaction: as a crash leaves it.
    let path = dir.path().join("cut.db");
    std::fs::copy(&live, &path).unwrap();
    let journal = dir.path().join("cut.db-journal");
    std::fs::copy(dir.path().join("live.db-journal"), &journal).unwrap();
    drop(conn);
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&journal).unwrap(),
    );
    assert!(!before.1.is_empty(), "no journal was written");
    for config in [
        SqliteConfig::new(&path),
        SqliteConfig::new(&path).read_only(),
    ] {
        match SqliteStore::open(config) {
            Err(OpenError::NotAnnalsDatabase { reason, .. }) => {
                assert!(reason.contains("-journal"), "{reason}")
            }
            other => panic!("expected NotAnnalsDatabase, got {other:?}"),
        }
    }
    let after = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&journal).unwrap(),
    );
    assert!(after == before, "the file or its journal changed");
}

/// Once the store is closed, the database file alone holds every commit: its WAL was
/// copied back and removed (the writer's connection closes last; a read-only connection
/// cannot), so copying the one file is a whole backup.
#[tokio::test]
async fn a_closed_store_leaves_every_commit_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    let stream = name("Backup-1");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        for i in 0..20u64 {
            store
                .append(&stream, ExpectedVersion::Exact(Version(i)), vec![ev("A")])
                .await
                .unwrap();
            // Reads keep read connections open until the store closes.
            store
                .read_stream_vec(&stream, ReadStream::forward())
                .await
                .unwrap();
        }
    }
    let beside = |suffix: &str| dir.path().join(format!("annals.db{suffix}"));
    assert!(!beside("-wal").exists(), "the WAL was left beside the file");
    assert!(!beside("-shm").exists());
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&path, copy.path().join("annals.db")).unwrap();
    let store = SqliteStore::open(SqliteConfig::new(copy.path().join("annals.db"))).unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(20));
}

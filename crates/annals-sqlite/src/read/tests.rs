use annals::{EventData, EventStore, ExpectedVersion, StreamName};
use rusqlite::StatementStatus;

use super::{page, Cursor, PAGE_BACKWARD, PAGE_FORWARD};
use crate::{SqliteConfig, SqliteStore};

/// Cached page statements are planned once: reading pages of other streams with other
/// limits binds new values without preparing the SQL again.
#[tokio::test]
async fn page_statements_are_not_prepared_again_per_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("s.db"));
    let store = SqliteStore::open(config.clone()).unwrap();
    let names: Vec<StreamName> = (0..3)
        .map(|i| StreamName::new(format!("Plan-{i}")).unwrap())
        .collect();
    for s in &names {
        let events = (0..20)
            .map(|_| EventData::new("E", b"{}".to_vec()))
            .collect();
        store.append(s, ExpectedVersion::Any, events).await.unwrap();
    }
    let mut conn = crate::schema::open_reader(&config, false).unwrap();
    for round in 0..10u64 {
        for (i, s) in names.iter().enumerate() {
            let cursor = Cursor {
                next: if i % 2 == 0 { 0 } else { u64::MAX },
                left: 1 + (round + i as u64) % 7,
            };
            let (events, _, _) = page(&mut conn, s, cursor, i % 2 == 0).unwrap();
            assert_eq!(events.len() as u64, cursor.left);
        }
    }
    for sql in [PAGE_FORWARD, PAGE_BACKWARD] {
        let stmt = conn.prepare_cached(sql).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        assert!(stmt.get_status(StatementStatus::Run) >= 10);
    }
}

/// A short read runs on the caller's thread when a reader is idle, and in a blocking
/// task when none is (here: before the pool has opened one).
#[tokio::test]
async fn a_short_read_runs_here_on_an_idle_reader_else_on_a_blocking_thread() {
    let dir = tempfile::tempdir().unwrap();
    let readers = std::sync::Arc::new(super::Readers::new(SqliteConfig::new(
        dir.path().join("r.db"),
    )));
    drop(SqliteStore::open(SqliteConfig::new(dir.path().join("r.db"))).unwrap());
    let here = std::thread::current().id();
    let thread = |_: &mut rusqlite::Connection| Ok(std::thread::current().id());
    let first = readers.with_here(thread).await.unwrap();
    assert_ne!(
        first, here,
        "no idle reader yet: a blocking task opened one"
    );
    assert_eq!(readers.with_here(thread).await.unwrap(), here);
    assert_ne!(readers.with(thread).await.unwrap(), here);
    // A read that panics here is an error, and the reader is kept.
    let e = readers
        .with_here(|_| -> annals::Result<()> { panic!("boom") })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a read panicked"), "{e}");
    assert_eq!(readers.with_here(thread).await.unwrap(), here);
}

/// Readers of a new store's file (`name` in a new directory), `count` at most, none open yet.
fn readers_of(name: &str, count: usize) -> (tempfile::TempDir, std::sync::Arc<super::Readers>) {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join(name)).readers(count);
    drop(SqliteStore::open(config.clone()).unwrap());
    (dir, std::sync::Arc::new(super::Readers::new(config)))
}

/// A short read that finds every reader busy waits for one, then runs on the caller's
/// thread (not in a blocking task).
#[tokio::test]
async fn a_short_read_waits_for_a_busy_reader_and_then_runs_here() {
    let (_dir, readers) = readers_of("w.db", 1);
    readers.with(|_| Ok(())).await.unwrap();
    // The only reader, busy in a blocking task until released.
    let (started, on_start) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let busy = {
        let readers = std::sync::Arc::clone(&readers);
        tokio::spawn(async move {
            readers
                .with(move |_| {
                    started.send(()).unwrap();
                    released
                        .recv_timeout(std::time::Duration::from_secs(60))
                        .unwrap();
                    Ok(())
                })
                .await
        })
    };
    on_start.await.unwrap();
    let here = std::thread::current().id();
    // The short read is polled first and waits; then the busy read is released.
    let (thread, ()) = tokio::join!(
        readers.with_here(|_| Ok(std::thread::current().id())),
        async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        }
    );
    assert_eq!(thread.unwrap(), here);
    busy.await.unwrap().unwrap();
}

/// A task reading short reads in a loop, each done at once on an idle reader, still lets
/// the other tasks of its (only) thread run.
#[tokio::test]
async fn short_reads_in_a_loop_let_other_tasks_run() {
    let (_dir, readers) = readers_of("y.db", 4);
    readers.with(|_| Ok(())).await.unwrap();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let ran = std::sync::Arc::clone(&ran);
        tokio::spawn(async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) })
    };
    let mut reads = 0;
    while !ran.load(std::sync::atomic::Ordering::SeqCst) {
        readers.with_here(|_| Ok(())).await.unwrap();
        reads += 1;
        assert!(reads < 10_000, "the other task never ran");
    }
    other.await.unwrap();
}

/// A long read runs in a blocking task, never on the worker: the worker's other tasks go
/// on meanwhile (here the only worker's: a task spawned before the read answers it from
/// within). A panic in it is that read's error, and the reader is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_long_read_runs_in_a_blocking_task_and_the_workers_other_tasks_go_on() {
    let (_dir, readers) = readers_of("l.db", 1);
    // On the runtime's one worker (a test's body runs on the test's own thread).
    tokio::spawn(async move {
        let (ask, asked) = tokio::sync::oneshot::channel::<()>();
        let (answer, answered) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            asked.await.unwrap();
            answer.send(()).unwrap();
        });
        let here = std::thread::current().id();
        let (thread, reply) = readers
            .with(move |_| {
                ask.send(()).unwrap();
                let reply = answered.recv_timeout(std::time::Duration::from_secs(60));
                Ok((std::thread::current().id(), reply))
            })
            .await
            .unwrap();
        assert_ne!(thread, here);
        assert!(
            reply.is_ok(),
            "the spawned task did not run during the read"
        );
        let e = readers
            .with(|_| -> annals::Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a read panicked"), "{e}");
        // The one reader was kept: the next read takes it, opening none.
        let idle = |_: &mut rusqlite::Connection| Ok(());
        readers.with(idle).await.unwrap();
        assert_eq!(readers.idle.lock().unwrap().len(), 1);
    })
    .await
    .unwrap();
}

/// Whole-stream reads (several pages) in both directions, from tasks of a `LocalSet`:
/// on a multi-threaded runtime (how `#[tokio::main]` runs `!Send` tasks: on the thread
/// that called `block_on`, where tokio refuses `block_in_place`) and on a current-thread
/// one. Every event comes back, in order.
#[test]
fn whole_stream_reads_from_a_local_set_return_every_event() {
    let stream = StreamName::new("Local-1").unwrap();
    let n = super::STREAM_PAGE + 500;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (_dir, store, _conn) = multi.block_on(written(&stream, &[n]));
    let store = std::sync::Arc::new(store);
    for runtime in [&multi, &current] {
        let local = tokio::task::LocalSet::new();
        let (store, stream) = (std::sync::Arc::clone(&store), stream.clone());
        let [forward, backward] = runtime.block_on(local.run_until(async move {
            use annals::{EventStoreExt, ReadStream};
            let reads = [ReadStream::forward(), ReadStream::backward()].map(|options| {
                let (store, stream) = (std::sync::Arc::clone(&store), stream.clone());
                tokio::task::spawn_local(async move {
                    let events = store.read_stream_vec(&stream, options).await.unwrap();
                    events.iter().map(|e| e.stream_version).collect::<Vec<_>>()
                })
            });
            let [f, b] = reads;
            [f.await.unwrap(), b.await.unwrap()]
        }));
        assert_eq!(forward, (0..n as u64).collect::<Vec<_>>());
        assert_eq!(backward, (0..n as u64).rev().collect::<Vec<_>>());
    }
}

/// A store in a new directory where `stream` got one append of each of `batches`
/// events, and a reader connection on its file.
async fn written(
    stream: &StreamName,
    batches: &[usize],
) -> (tempfile::TempDir, SqliteStore, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("s.db"));
    let store = SqliteStore::open(config.clone()).unwrap();
    for &count in batches {
        let events = (0..count)
            .map(|_| EventData::new("E", b"{}".to_vec()))
            .collect();
        store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let conn = crate::schema::open_reader(&config, false).unwrap();
    (dir, store, conn)
}

/// Feed pages and head reads run in a read transaction whose statements are prepared
/// once per connection: every read runs the same cached `BEGIN`, `ROLLBACK` and head
/// query; a transaction left open on the connection is ended, not an error.
#[tokio::test]
async fn feed_and_head_reads_reuse_their_transaction_statements() {
    let stream = StreamName::new("Feed-1").unwrap();
    let (_dir, _store, mut conn) = written(&stream, &[5]).await;
    let filter = annals::Filter::category("Feed");
    for round in 0..10 {
        // A short page: the head is read too.
        let page = super::read_all(&mut conn, annals::Position::START, &filter, 100).unwrap();
        assert_eq!(page.events.len(), 5, "round {round}");
        assert!(page.end);
        let head = super::read_head(&mut conn, stream.as_str(), 100).unwrap();
        assert_eq!(head.events.len(), 5);
        assert!(conn.is_autocommit(), "the read transaction is ended");
    }
    for sql in [
        "BEGIN",
        "ROLLBACK",
        "SELECT coalesce(max(position), 0) FROM annals_events",
    ] {
        let stmt = conn.prepare_cached(sql).unwrap();
        assert!(stmt.get_status(StatementStatus::Run) >= 10, "{sql}");
    }
    conn.execute_batch("BEGIN").unwrap();
    let page = super::read_all(&mut conn, annals::Position::START, &filter, 100).unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(conn.is_autocommit());
}

/// A stream that ends on a page boundary is read in its pages alone: the page says
/// whether another follows, so no empty page is asked for; every read still gets each
/// event once, in order, whatever its direction and limit.
#[tokio::test]
async fn pages_end_without_an_empty_page_at_a_boundary() {
    let stream = StreamName::new("Pages-1").unwrap();
    let n = 2 * super::STREAM_PAGE as u64;
    let (_dir, store, mut conn) = written(&stream, &[super::STREAM_PAGE, super::STREAM_PAGE]).await;
    let all = Cursor {
        next: 0,
        left: u64::MAX,
    };
    let (first, next, start) = page(&mut conn, &stream, all, true).unwrap();
    assert_eq!(first.len(), super::STREAM_PAGE);
    assert_eq!(start, Some(0), "a page says where the stream starts");
    let next = next.expect("a second page follows");
    let (second, end, _) = page(&mut conn, &stream, next, true).unwrap();
    assert_eq!(second.len(), super::STREAM_PAGE);
    assert!(end.is_none(), "the last page says it is the last");
    assert_eq!(second.last().unwrap().stream_version, n - 1);

    use annals::{Direction, EventStoreExt, ReadStream};
    for (limit, direction) in [
        (None, Direction::Forward),
        (None, Direction::Backward),
        (Some(1000), Direction::Forward),
        (Some(1001), Direction::Backward),
        (Some(2000), Direction::Forward),
        (Some(2500), Direction::Backward),
    ] {
        let options = ReadStream {
            direction,
            limit,
            ..ReadStream::default()
        };
        let read = store.read_stream_vec(&stream, options).await.unwrap();
        let want = limit.map_or(n, |l| (l as u64).min(n));
        assert_eq!(read.len() as u64, want, "{limit:?} {direction:?}");
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        let expected: Vec<u64> = match direction {
            Direction::Forward => (0..want).collect(),
            Direction::Backward => (n - want..n).rev().collect(),
        };
        assert_eq!(versions, expected, "{limit:?} {direction:?}");
    }
}

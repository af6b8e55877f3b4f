//! A store opened read-only: it reads (also what another connection writes meanwhile),
//! refuses every write with a typed error, and creates, migrates and changes nothing.

use annals::{
    Error, EventData, EventStore, EventStoreExt, ExpectedVersion, Filter, Position, ReadStream,
    RecordedEvent, StreamAppend, StreamName, Version,
};
use annals_sqlite::{rusqlite, OpenError, SqliteConfig, SqliteStore, SCHEMA_VERSION};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn ev(t: &str) -> EventData {
    EventData::new(t, br#"{"x":1}"#.to_vec())
}

fn sha(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn read_only(path: &std::path::Path) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(SqliteConfig::new(path).read_only())
}

fn pos(p: u64) -> Position {
    p.to_string().parse().unwrap()
}

async fn types(store: &SqliteStore, stream: &str) -> Vec<String> {
    let events: Vec<RecordedEvent> = store
        .read_stream_vec(&name(stream), ReadStream::forward())
        .await
        .unwrap();
    events.into_iter().map(|e| e.event_type).collect()
}

fn refused<T: std::fmt::Debug>(what: &str, result: annals::Result<T>) {
    match result {
        Err(Error::ReadOnly { backend: "sqlite" }) => {}
        other => panic!("{what}: expected Error::ReadOnly, got {other:?}"),
    }
}

#[tokio::test]
async fn a_read_only_store_reads_and_refuses_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        store
            .append(
                &name("Cart-1"),
                ExpectedVersion::NoStream,
                vec![ev("A"), ev("B")],
            )
            .await
            .unwrap();
        annals::CheckpointStore::commit(&store, "g", "s", pos(2))
            .await
            .unwrap();
    }
    let before = sha(&path);
    let store = read_only(&path).unwrap();
    assert!(store.config().read_only);
    assert_eq!(types(&store, "Cart-1").await, ["A", "B"]);
    assert_eq!(
        store.stream_version(&name("Cart-1")).await.unwrap(),
        Version(2)
    );
    let all = store
        .read_all(Position::START, &Filter::all(), 10)
        .await
        .unwrap();
    assert_eq!(all.events.len(), 2);
    assert_eq!(
        store.head_position().await.unwrap(),
        Some(all.events[1].position)
    );
    assert_eq!(
        annals::CheckpointStore::load(&store, "g", "s")
            .await
            .unwrap(),
        Some(pos(2))
    );

    let cart = name("Cart-1");
    refused(
        "append",
        store
            .append(&cart, ExpectedVersion::Any, vec![ev("C")])
            .await,
    );
    refused(
        "append_many",
        store
            .append_many(vec![StreamAppend {
                stream: name("Cart-2"),
                expected: ExpectedVersion::Any,
                events: vec![ev("C")],
            }])
            .await,
    );
    refused(
        "delete_stream",
        store
            .delete_stream(&cart, ExpectedVersion::Any, annals::DeleteMode::Soft)
            .await,
    );
    refused(
        "truncate_before",
        store.truncate_before(&cart, Version(1)).await,
    );
    refused(
        "set_retention",
        store
            .set_retention(
                &annals::RetentionScope::Stream(cart.clone()),
                annals::Retention::max_count(1),
            )
            .await,
    );
    refused("scavenge", store.scavenge(10, true).await);
    refused(
        "checkpoint commit",
        annals::CheckpointStore::commit(&store, "g", "s", pos(1)).await,
    );
    refused(
        "project",
        store
            .project("g", "s", pos(1), |conn| {
                conn.execute_batch("CREATE TABLE t (x)")
            })
            .await,
    );
    drop(store);

    assert_eq!(sha(&path), before, "the file changed");
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    assert_eq!(types(&store, "Cart-1").await, ["A", "B"]);
}

/// A read-only store beside a writing one on the same file reads what is committed
/// meanwhile (from the WAL, before any checkpoint copies it to the file).
#[tokio::test]
async fn a_read_only_store_reads_what_another_connection_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annals.db");
    let writer = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    writer
        .append(&name("Live-1"), ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    let reader = read_only(&path).unwrap();
    assert_eq!(types(&reader, "Live-1").await, ["A"]);
    writer
        .append(
            &name("Live-1"),
            ExpectedVersion::Exact(Version(1)),
            vec![ev("B")],
        )
        .await
        .unwrap();
    assert_eq!(types(&reader, "Live-1").await, ["A", "B"]);
    assert_eq!(
        reader.stream_version(&name("Live-1")).await.unwrap(),
        Version(2)
    );
}

/// A read-only open needs an Annals store at this schema: it creates no file, migrates no
/// older one, and leaves what it refuses as it was.
#[test]
fn a_read_only_open_creates_and_migrates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    match read_only(&missing) {
        Err(e @ OpenError::Missing { .. }) => {
            assert!(e.to_string().contains("no such file"), "{e}")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(!missing.exists(), "a read-only open created the file");

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    match read_only(&empty) {
        Err(OpenError::NeedsMigration {
            found: 0, current, ..
        }) => {
            assert_eq!(current, SCHEMA_VERSION)
        }
        other => panic!("expected NeedsMigration, got {other:?}"),
    }
    assert_eq!(std::fs::read(&empty).unwrap(), b"");

    let older = dir.path().join("older.db");
    drop(SqliteStore::open(SqliteConfig::new(&older)).unwrap());
    {
        let conn = rusqlite::Connection::open(&older).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION - 1))
            .unwrap();
    }
    let before = sha(&older);
    match read_only(&older) {
        Err(e @ OpenError::NeedsMigration { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!("schema version {}", SCHEMA_VERSION - 1))
                    && text.contains("annals init"),
                "{text}"
            );
        }
        other => panic!("expected NeedsMigration, got {other:?}"),
    }
    assert_eq!(sha(&older), before);

    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(SqliteConfig::new(&newer)).unwrap());
    {
        let conn = rusqlite::Connection::open(&newer).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
            .unwrap();
    }
    assert!(matches!(
        read_only(&newer),
        Err(OpenError::SchemaTooNew { .. })
    ));

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, b"not a database\n".repeat(100)).unwrap();
    let before = sha(&foreign);
    assert!(matches!(
        read_only(&foreign),
        Err(OpenError::NotAnnalsDatabase { .. })
    ));
    assert_eq!(sha(&foreign), before);
}

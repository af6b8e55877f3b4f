//! `annals rebuild todos` end to end on SQLite and PostgreSQL: the lists whose read-model
//! rows an older schema built are refolded from their events, and only those (unless
//! `--all`); a second run finds nothing to do.

use std::sync::Arc;

use annals::{EventStore, EventStoreExt, ProjectionId, ReadStream, StreamName};
use example_todo::{Patch, Service, Todo};

use crate::ops::{failed_saying, json_lines, on, pg_url};
use crate::succeeded;

/// Row as stored: (list, id, title, completed, order).
type Row = (String, i64, String, bool, i64);

/// Three lists with adds, patches, deletes and a clear.
async fn fill(store: Arc<dyn EventStore>) -> Vec<Row> {
    let service = Service::new(store, None).unwrap();
    for list in ["a", "b", "c"] {
        for i in 0..4 {
            service
                .add(list, format!("{list} todo {i} ✓ 'quoted'"), None, i == 3)
                .await
                .unwrap();
        }
    }
    let done = Patch {
        completed: Some(true),
        ..Patch::default()
    };
    service.update("a", 1, done.clone()).await.unwrap();
    service.delete("a", 2).await.unwrap();
    service.clear("b").await.unwrap();
    service
        .add("b", "after the clear".into(), Some(-1), false)
        .await
        .unwrap();
    service.update("c", 3, done).await.unwrap();
    let mut rows = Vec::new();
    for list in ["a", "b", "c"] {
        let mut todos: Vec<Todo> = service.list(list).await.unwrap();
        todos.sort_by_key(|t| t.id);
        rows.extend(todos.into_iter().map(|t| {
            (
                format!("Todos-{list}"),
                t.id as i64,
                t.title,
                t.completed,
                t.order,
            )
        }));
    }
    rows
}

fn lists() -> Vec<StreamName> {
    ["a", "b", "c"]
        .iter()
        .map(|l| StreamName::new(format!("Todos-{l}")).unwrap())
        .collect()
}

fn rebuild(dir: &std::path::Path, store: &str, all: bool) -> serde_json::Value {
    let mut args = vec!["rebuild", "todos", "--json"];
    if all {
        args.push("--all");
    }
    json_lines(&succeeded(&on(dir, store, &args))).remove(0)
}

/// Runs the command against a read model where lists a and b were projected by schema 0
/// (wrong rows) and list c by the current schema (rows marked "untouched").
fn check(dir: &std::path::Path, url: &str, expected: &[Row], read: impl Fn() -> Vec<Row>) {
    let untouched = |rows: &[Row]| {
        rows.iter()
            .filter(|r| r.0 == "Todos-c")
            .all(|r| r.2 == "untouched")
    };
    assert!(untouched(&read()));
    let first = rebuild(dir, url, false);
    assert_eq!(
        (
            &first["rebuilt_streams"],
            &first["current_streams"],
            &first["schema"]
        ),
        (&2.into(), &1.into(), &1.into()),
        "{first}"
    );
    let after = read();
    let (stale, current): (Vec<Row>, Vec<Row>) = after.into_iter().partition(|r| r.0 != "Todos-c");
    let expected_stale: Vec<Row> = expected
        .iter()
        .filter(|r| r.0 != "Todos-c")
        .cloned()
        .collect();
    assert_eq!(stale, expected_stale, "stale lists refolded");
    assert!(untouched(&current), "a current list is left alone");
    assert_eq!(rebuild(dir, url, false)["rebuilt_streams"], 0);
    let all = rebuild(dir, url, true);
    assert_eq!(all["rebuilt_streams"], 3, "{all}");
    assert_eq!(read(), expected, "--all refolds every list");
    failed_saying(
        &on(dir, url, &["rebuild", "nonesuch"]),
        "unknown projection \"nonesuch\"",
    );
}

#[test]
fn rebuild_refolds_stale_lists_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("todos.db");
    let url = format!("sqlite://{}", path.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let expected = rt.block_on(async {
        let store =
            annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(&path)).unwrap();
        let expected = fill(Arc::new(store.clone())).await;
        for (i, list) in lists().into_iter().enumerate() {
            let events = store
                .read_stream_vec(&list, ReadStream::forward())
                .await
                .unwrap();
            // a and b by schema 0 (one wrong row each), c by schema 1 (rows marked).
            let (id, title) = match i {
                2 => (ProjectionId::new("todos", 1), "untouched"),
                _ => (ProjectionId::new("todos", 0), "stale"),
            };
            let name = list.to_string();
            store
                .project_stream(id, &events, move |conn, _| {
                    conn.execute_batch(
                        "CREATE TABLE IF NOT EXISTS todo_view (list TEXT NOT NULL, id INTEGER NOT NULL, title TEXT NOT NULL, completed INTEGER NOT NULL, ord INTEGER NOT NULL, PRIMARY KEY (list, id)) STRICT",
                    )?;
                    conn.execute(
                        "INSERT INTO todo_view VALUES (?1, 0, ?2, 0, 0)",
                        annals_sqlite::rusqlite::params![name, title],
                    )
                    .map(|_| ())
                })
                .await
                .unwrap();
        }
        expected
    });
    let read = || {
        let conn = annals_sqlite::rusqlite::Connection::open(&path).unwrap();
        let mut q = conn
            .prepare("SELECT list, id, title, completed, ord FROM todo_view ORDER BY list, id")
            .unwrap();
        let rows = q
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        rows.collect::<Result<Vec<Row>, _>>().unwrap()
    };
    check(dir.path(), &url, &expected, read);
    failed_saying(
        &on(dir.path(), "memory://", &["rebuild", "todos"]),
        "read models are kept in SQLite and PostgreSQL",
    );
}

#[test]
fn rebuild_refolds_stale_lists_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url("rebuild");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let store = annals_postgres::PgStore::connect_url(&url).await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    let table = format!("\"{}\".todo_view", store.config().schema);
    let expected = rt.block_on(async {
        let expected = fill(Arc::new(store.clone())).await;
        let setup = store.projection().await.unwrap();
        setup
            .client()
            .batch_execute(&format!("CREATE TABLE {table} (list text NOT NULL, id bigint NOT NULL, title text NOT NULL, completed boolean NOT NULL, ord bigint NOT NULL, PRIMARY KEY (list, id))"))
            .await
            .unwrap();
        setup.commit_only().await.unwrap();
        for (i, list) in lists().into_iter().enumerate() {
            let events = store
                .read_stream_vec(&list, ReadStream::forward())
                .await
                .unwrap();
            let (id, title) = match i {
                2 => (ProjectionId::new("todos", 1), "untouched"),
                _ => (ProjectionId::new("todos", 0), "stale"),
            };
            let tx = store.projection().await.unwrap();
            tx.unapplied(id, &list, &events).await.unwrap();
            tx.client()
                .execute(
                    &format!("INSERT INTO {table} VALUES ($1, 0, $2, false, 0)"),
                    &[&list.as_str(), &title],
                )
                .await
                .unwrap();
            tx.commit_progress(id, &list, events.last().unwrap().next_version())
                .await
                .unwrap();
        }
        expected
    });
    let read = || {
        rt.block_on(async {
            let tx = store.projection().await.unwrap();
            let rows = tx
                .client()
                .query(
                    &format!(
                        "SELECT list, id, title, completed, ord FROM {table} ORDER BY list, id"
                    ),
                    &[],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect::<Vec<Row>>()
        })
    };
    check(dir.path(), &url, &expected, read);
}

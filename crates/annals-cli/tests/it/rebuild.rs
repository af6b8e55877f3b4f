//! `annals rebuild todos` end to end on SQLite and PostgreSQL: the lists whose read-model
//! rows an older schema built are refolded from their events, and only those (unless
//! `--all`); a second run finds nothing to do.

use std::sync::Arc;

use annals::{
    EventStore, EventStoreExt, ProjectionId, Projector, ProjectorError, ReadModelStore, ReadStream,
    SqlTx, StreamName,
};
use example_todo::{Patch, Service, Todo};

use crate::ops::{failed_saying, json_lines, on};
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

/// Writes one marker row per list as older (`stale`) or current (`untouched`) code would.
struct Marker {
    schema: u32,
    title: &'static str,
}

#[async_trait::async_trait]
impl<R: ReadModelStore> Projector<R> for Marker {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("todos", self.schema)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch("CREATE TABLE IF NOT EXISTS todo_view (list TEXT NOT NULL, id BIGINT NOT NULL, title TEXT NOT NULL, completed BOOLEAN NOT NULL, ord BIGINT NOT NULL, PRIMARY KEY (list, id))").await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        list: &StreamName,
        _: &[annals::RecordedEvent],
    ) -> Result<(), ProjectorError> {
        tx.execute(
            "INSERT INTO todo_view VALUES ($1, 0, $2, false, 0)",
            &[list.into(), self.title.into()],
        )
        .await?;
        Ok(())
    }

    async fn clear(&self, _: &mut R::Tx<'_>, _: &StreamName) -> Result<(), ProjectorError> {
        Ok(())
    }
}

/// Fills the lists, then projects a and b by schema 0 (one wrong row each) and c by
/// schema 1 (rows marked "untouched"); the rows the current code would build.
async fn stale_read_model<R: ReadModelStore>(store: Arc<dyn EventStore>, rm: &R) -> Vec<Row> {
    let expected = fill(Arc::clone(&store)).await;
    for (i, list) in lists().into_iter().enumerate() {
        let events = store
            .read_stream_vec(&list, ReadStream::forward())
            .await
            .unwrap();
        let marker = Arc::new(match i {
            2 => Marker {
                schema: 1,
                title: "untouched",
            },
            _ => Marker {
                schema: 0,
                title: "stale",
            },
        });
        rm.setup(&marker).await.unwrap();
        rm.apply(&marker, &list, &events).await.unwrap();
    }
    expected
}

async fn read_rows<R: ReadModelStore>(rm: &R) -> Vec<Row> {
    rm.query(
        "SELECT list, id, title, completed, ord FROM todo_view ORDER BY list, id",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r[0].as_str().unwrap().to_owned(),
            r[1].as_i64().unwrap(),
            r[2].as_str().unwrap().to_owned(),
            r[3].as_bool().unwrap(),
            r[4].as_i64().unwrap(),
        )
    })
    .collect()
}

#[test]
fn rebuild_refolds_stale_lists_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("todos.db");
    let url = format!("sqlite://{}", path.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(&path)).unwrap();
    let expected = rt.block_on(stale_read_model(Arc::new(store.clone()), &store));
    check(dir.path(), &url, &expected, || {
        rt.block_on(read_rows(&store))
    });
    failed_saying(
        &on(dir.path(), "memory://", &["rebuild", "todos"]),
        "read models are kept in SQL databases",
    );
}

#[test]
fn rebuild_refolds_stale_lists_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (url, config) = crate::ops::pg_target("rebuild");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let store = annals_postgres::PgStore::connect(config).await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    let expected = rt.block_on(stale_read_model(Arc::new(store.clone()), &store));
    check(dir.path(), &url, &expected, || {
        rt.block_on(read_rows(&store))
    });
}

//! A poison list on the `todos` read model of `annals serve`: the read-model database
//! refuses one list's rows (a trigger, a cause an operator can remove). The other 300 lists
//! are projected, the poison list is parked and shown by `annals parked list` and `annals
//! stats` with the database's own message, the checkpoint passes it, and once the trigger
//! is dropped `annals parked replay` projects it exactly once. On a SQLite read model in
//! the store's file, and on a PostgreSQL read model fed from a SQLite store.

use std::sync::Arc;
use std::time::Duration;

use annals::{
    Dialect, EventStore, Position, ProjectionId, Projector, ProjectorError, ReadModelStore,
    RecordedEvent, SqlTx, StreamName, Version,
};
use example_todo::Service;

use crate::ops::{failed_saying, json_lines, on};
use crate::serve::Served;
use crate::succeeded;

const LISTS: usize = 300;

/// Creates (or drops) the table of `todo_view` and a trigger refusing `Todos-poison`.
struct Trigger {
    create: bool,
}

#[async_trait::async_trait]
impl<R: ReadModelStore> Projector<R> for Trigger {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("trigger", 0)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        let sql = match (tx.dialect(), self.create) {
            (Dialect::Sqlite, true) => "CREATE TABLE IF NOT EXISTS todo_view (list TEXT NOT NULL, id BIGINT NOT NULL, title TEXT NOT NULL, completed BOOLEAN NOT NULL, ord BIGINT NOT NULL, PRIMARY KEY (list, id));
                CREATE TRIGGER poison BEFORE INSERT ON todo_view WHEN NEW.list = 'Todos-poison'
                BEGIN SELECT RAISE(ABORT, 'poison list refused by the read model'); END;",
            (Dialect::Sqlite, false) => "DROP TRIGGER poison",
            (Dialect::Postgres, true) => "CREATE TABLE IF NOT EXISTS todo_view (list TEXT NOT NULL, id BIGINT NOT NULL, title TEXT NOT NULL, completed BOOLEAN NOT NULL, ord BIGINT NOT NULL, PRIMARY KEY (list, id));
                CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'poison list refused by the read model'; END $$;
                CREATE TRIGGER poison BEFORE INSERT ON todo_view FOR EACH ROW
                WHEN (NEW.list = 'Todos-poison') EXECUTE FUNCTION poison();",
            (Dialect::Postgres, false) => "DROP TRIGGER poison ON todo_view",
        };
        tx.batch(sql).await?;
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut R::Tx<'_>,
        _: &StreamName,
        _: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        Ok(())
    }

    async fn clear(&self, _: &mut R::Tx<'_>, _: &StreamName) -> Result<(), ProjectorError> {
        Ok(())
    }
}

async fn lists_projected<R: ReadModelStore>(rm: &R) -> i64 {
    rm.query("SELECT count(DISTINCT list) FROM todo_view", &[])
        .await
        .unwrap()[0][0]
        .as_i64()
        .unwrap()
}

async fn titles<R: ReadModelStore>(rm: &R, list: &str) -> Vec<String> {
    rm.query(
        "SELECT title FROM todo_view WHERE list = $1 ORDER BY id",
        &[list.into()],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| r[0].as_str().unwrap().to_owned())
    .collect()
}

/// Waits until `done` holds, up to 120 s. The condition is the state of another process
/// (`annals serve`'s pipeline, seen through its database and the CLI), which offers no
/// signal to wait on: this looks again until it holds, never assuming a pause was long
/// enough.
fn wait_for(what: &str, done: impl FnMut() -> bool) {
    annals_testkit::eventually_blocking(what, Duration::from_secs(120), done);
}

fn poison_on<R: ReadModelStore>(
    dir: &std::path::Path,
    store_url: &str,
    events: Arc<dyn EventStore>,
    rm: Arc<R>,
    read_model_url: Option<&str>,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let service = Service::new(Arc::clone(&events), None).unwrap();
        for i in 0..LISTS {
            service
                .add(&format!("l{i}"), format!("todo of {i}"), None, false)
                .await
                .unwrap();
        }
        for t in ["first", "second"] {
            service.add("poison", t.into(), None, false).await.unwrap();
        }
        rm.setup(&Arc::new(Trigger { create: true })).await.unwrap();
    });
    let mut with_rm: Vec<&str> = vec!["--store", store_url];
    if let Some(url) = read_model_url {
        with_rm.extend(["--read-model", url]);
    }
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        if let Some(url) = read_model_url {
            all.extend(["--read-model", url]);
        }
        on(dir, store_url, &all)
    };
    let served = Served::start_with(dir, &with_rm);
    wait_for("the 300 other lists to be projected", || {
        rt.block_on(lists_projected(&*rm)) == LISTS as i64
    });
    let mut parked = Vec::new();
    wait_for("the poison list to be parked", || {
        parked = json_lines(&succeeded(&cli(&["parked", "list", "--json"])));
        !parked.is_empty()
    });
    assert_eq!(parked.len(), 1, "{parked:?}");
    let p = &parked[0];
    assert_eq!(p["group"], "annals.todos");
    assert_eq!(p["stream"], "Todos-poison");
    assert_eq!(
        (p["from_version"].as_u64(), p["to_version"].as_u64()),
        (Some(0), Some(2))
    );
    let cause = p["first_error"].as_str().unwrap();
    assert!(
        cause.contains("poison list refused by the read model") && cause.contains("todos"),
        "the database's own message, with the projection: {cause}"
    );
    let stats = succeeded(&cli(&["stats"]));
    assert!(stats.contains("Todos-poison"), "{stats}");
    served.stop();
    assert_eq!(rt.block_on(lists_projected(&*rm)), LISTS as i64);
    assert!(rt.block_on(titles(&*rm, "Todos-poison")).is_empty());
    // The checkpoint is past the parked list's events: at the head of the feed.
    let head: Position = json_lines(&succeeded(&on(dir, store_url, &["stats", "--json"])))
        .last()
        .unwrap()["head"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let checkpoint: Position = json_lines(&succeeded(&cli(&[
        "checkpoint",
        "show",
        "annals.todos",
        "--json",
    ])))[0]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        checkpoint >= head,
        "checkpoint {checkpoint} passes head {head}"
    );
    // The cause removed, a replay projects the list once.
    rt.block_on(rm.setup(&Arc::new(Trigger { create: false })))
        .unwrap();
    let replayed = json_lines(&succeeded(&cli(&[
        "parked",
        "replay",
        "Todos-poison",
        "--json",
    ])));
    assert_eq!(replayed[0]["replayed"], 2, "{replayed:?}");
    assert_eq!(
        rt.block_on(titles(&*rm, "Todos-poison")),
        vec!["first", "second"]
    );
    let progress = rt
        .block_on(rm.progress("todos", &StreamName::new("Todos-poison").unwrap()))
        .unwrap()
        .unwrap();
    assert_eq!(progress.version, Version(2));
    assert!(succeeded(&cli(&["parked", "list"])).contains("no parked streams"));
    failed_saying(
        &cli(&["parked", "replay", "Todos-poison"]),
        "Todos-poison is not parked in group annals.todos",
    );
    failed_saying(
        &cli(&["parked", "replay", "Bad name"]),
        "invalid stream name",
    );
    // Restarted, the service keeps the list projected and goes on with it.
    let served = Served::start_with(dir, &with_rm);
    rt.block_on(async {
        Service::new(Arc::clone(&events), None)
            .unwrap()
            .add("poison", "third".into(), None, false)
            .await
            .unwrap();
    });
    wait_for("the list to take its next todo", || {
        rt.block_on(titles(&*rm, "Todos-poison")).len() == 3
    });
    served.stop();
}

#[test]
fn a_poison_list_is_parked_and_replayed_on_a_sqlite_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("todos.db");
    let url = format!("sqlite://{}", path.display());
    let store = Arc::new(
        annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(&path)).unwrap(),
    );
    poison_on(dir.path(), &url, store.clone(), store, None);
}

#[test]
fn a_poison_list_is_parked_and_replayed_on_a_postgres_read_model_fed_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let url = format!("sqlite://{}", path.display());
    let events = Arc::new(
        annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(&path)).unwrap(),
    );
    let (rm_url, rm_config) = crate::ops::pg_target("parked");
    let rm = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rm = annals_postgres::PgStore::connect(rm_config).await.unwrap();
        rm.migrate().await.unwrap();
        rm
    });
    poison_on(dir.path(), &url, events, Arc::new(rm), Some(&rm_url));
}

/// `memory://` starts empty on every run: serving it with a durable read model that already
/// holds lists is refused (their progress would hide the new run's events); a fresh one
/// works, events from memory projected into SQLite.
#[test]
fn serve_on_memory_refuses_a_read_model_from_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let view = format!("sqlite://{}", dir.path().join("view.db").display());
    let args = ["--store", "memory://", "--read-model", view.as_str()];
    let served = Served::start_with(dir.path(), &args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = crate::serve::http(
        &rt,
        hyper::Method::POST,
        &format!("{}/todos", served.base),
        Some(serde_json::json!({"title": "kept in the view"})),
    );
    assert_eq!(status, 201);
    served.stop();
    let rm = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
        dir.path().join("view.db"),
    ))
    .unwrap();
    assert_eq!(
        rt.block_on(titles(&rm, "Todos-default")),
        vec!["kept in the view"],
        "the todo was projected from memory into SQLite"
    );
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir.path())
        .env_remove("ANNALS_STORE")
        .env_remove("ANNALS_READ_MODEL")
        .env("ANNALS_LOG", "off")
        .output()
        .unwrap();
    failed_saying(
        &again,
        "holds 1 lists from an earlier run, but memory:// starts empty",
    );
}

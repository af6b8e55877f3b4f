//! `annals serve` end to end on the binary: the quick start's default store, data and read
//! model across a restart, the HTTP load test, and a real browser driving the API from
//! another origin.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::ops::{failed_saying, pg_url};
use crate::succeeded;

/// A running `annals serve`.
pub(crate) struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

impl Served {
    /// Starts `annals serve` on a free port in `dir` (with `--store` when given) and waits
    /// for the line telling its URL.
    fn start(dir: &std::path::Path, store: Option<&str>) -> Served {
        match store {
            Some(store) => Self::start_with(dir, &["--store", store]),
            None => Self::start_with(dir, &[]),
        }
    }

    /// Starts `annals serve` with more arguments.
    pub(crate) fn start_with(dir: &std::path::Path, args: &[&str]) -> Served {
        Self::start_configured(dir, args, |_| {})
    }

    /// Starts `annals serve` with more arguments, after `configure` adjusted the command.
    pub(crate) fn start_configured(
        dir: &std::path::Path,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Served {
        let mut command = Command::new(env!("CARGO_BIN_EXE_annals"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env_remove("ANNALS_STORE")
            .env_remove("ANNALS_READ_MODEL")
            .env("ANNALS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().expect("annals serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("annals serve prints its URL within 60 s");
        let url = line
            .split_whitespace()
            .find_map(|w| url::Url::parse(w).ok().filter(|u| u.scheme() == "http"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        assert!(line.contains("TodoBackend API at "), "{line}");
        assert_eq!(url.path(), "/todos", "{line}");
        let base = url.origin().ascii_serialization();
        Served { child, base }
    }

    /// Stops it with SIGTERM and waits: a clean exit.
    pub(crate) fn stop(mut self) {
        self.terminate();
    }

    /// [`Served::stop`], keeping the handle (and the child's pipes).
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "a graceful stop: {exit}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request; (status, JSON body or null).
pub(crate) fn http(
    rt: &tokio::runtime::Runtime,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut request = hyper::Request::builder().method(method).uri(url);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .expect("an answer within 30 s")
            .expect("a response");
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = match bytes.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        };
        (status, value)
    })
}

/// The fields that do not depend on the port.
fn fields(todos: &Value) -> Vec<(u64, String, bool, i64)> {
    todos
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap(),
                t["title"].as_str().unwrap().to_owned(),
                t["completed"].as_bool().unwrap(),
                t["order"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The `todo_view` rows of the default list in the SQLite file.
fn read_model(path: &std::path::Path) -> Vec<(u64, String, bool, i64)> {
    let conn = annals_sqlite::rusqlite::Connection::open(path).unwrap();
    let mut q = conn
        .prepare("SELECT id, title, completed, ord FROM todo_view WHERE list = 'Todos-default' ORDER BY ord, id")
        .unwrap();
    let rows = q
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[test]
fn serve_keeps_todos_and_the_read_model_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The quick start: no --store, so ./annals.db.
    let served = Served::start(dir.path(), None);
    let todos = format!("{}/todos", served.base);
    let (status, a) = http(&rt, Method::POST, &todos, Some(json!({"title": "água ✓"})));
    assert_eq!(status, 201, "{a}");
    let (status, b) = http(
        &rt,
        Method::POST,
        &todos,
        Some(json!({"title": "second", "order": -5})),
    );
    assert_eq!(status, 201, "{b}");
    let (status, c) = http(&rt, Method::POST, &todos, Some(json!({"title": "gone"})));
    assert_eq!(status, 201, "{c}");
    let a_url = a["url"].as_str().unwrap();
    let (status, patched) = http(&rt, Method::PATCH, a_url, Some(json!({"completed": true})));
    assert_eq!(status, 200, "{patched}");
    let (status, _) = http(&rt, Method::DELETE, c["url"].as_str().unwrap(), None);
    assert_eq!(status, 204);
    let (_, before) = http(&rt, Method::GET, &todos, None);
    served.stop();
    assert!(
        dir.path().join("annals.db").exists(),
        "the default store file"
    );
    let expected = vec![
        (1, "second".to_owned(), false, -5),
        (0, "água ✓".to_owned(), true, 0),
    ];
    assert_eq!(fields(&before), expected);
    // The stop let the read model catch up.
    assert_eq!(read_model(&dir.path().join("annals.db")), expected);

    let again = Served::start(dir.path(), None);
    let todos = format!("{}/todos", again.base);
    let (status, after) = http(&rt, Method::GET, &todos, None);
    assert_eq!(status, 200);
    assert_eq!(fields(&after), expected, "the lists survive the restart");
    let a_url = after[1]["url"].as_str().unwrap().to_owned();
    assert!(
        a_url.starts_with(&again.base),
        "urls follow the new address"
    );
    let (status, a) = http(&rt, Method::GET, &a_url, None);
    assert_eq!((status, a["completed"].clone()), (200, json!(true)));
    // The HTTP load test against it.
    let out = crate::annals(&[
        "bench",
        "todo",
        "--store",
        &again.base,
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--clients",
        "20",
    ]);
    let report = succeeded(&out);
    assert!(crate::figure(&report, "tests ") > 0.0, "{report}");
    assert_eq!(crate::figure(&report, "errors "), 0.0, "{report}");
    assert!(
        crate::figure(&report, "http requests per test ") >= 2.0,
        "{report}"
    );
    again.stop();
    // Nothing stale after a clean stop; the bench's lists are projected too.
    let rebuilt = succeeded(&crate::ops::on(
        dir.path(),
        "sqlite://annals.db",
        &["rebuild", "todos", "--json"],
    ));
    let rebuilt: Value = serde_json::from_str(rebuilt.trim()).unwrap();
    assert_eq!(rebuilt["rebuilt_streams"], 0, "{rebuilt}");
    assert!(
        rebuilt["current_streams"].as_u64().unwrap() > 1,
        "{rebuilt}"
    );
}

/// The signal handlers are in place before the announcement: a SIGTERM sent the moment
/// the URL is printed stops the server gracefully (a clean exit), never by the signal's
/// default action.
#[test]
fn a_stop_right_after_the_announcement_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        Served::start_with(dir.path(), &["--no-read-model"]).stop();
    }
}

/// A stop while the read model keeps failing on a stream (its database full: `max_bytes`)
/// does not wait out the drain for retries that keep failing: it says so and ends cleanly,
/// and a later start with room catches the read model up.
#[test]
fn a_stop_does_not_wait_for_a_read_model_that_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rm = dir.path().join("rm.db");
    let unbounded = format!("sqlite://{}", rm.display());
    // A first start creates the read model's tables; the next may not grow the file.
    Served::start_with(dir.path(), &["--read-model", &unbounded]).stop();
    let bounded = format!("{unbounded}?max_bytes=1");
    let mut served = Served::start_configured(dir.path(), &["--read-model", &bounded], |c| {
        c.stderr(Stdio::piped());
    });
    let stderr = served.child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let todos = format!("{}/todos", served.base);
    let title = "x".repeat(1000);
    let (mut log, mut posted) = (Vec::<String>::new(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log.iter().any(|l| l.contains("handler failed")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the read model never failed: {log:?}"
        );
        let (status, t) = http(&rt, Method::POST, &todos, Some(json!({"title": title})));
        assert_eq!(status, 201, "{t}");
        posted += 1;
        log.extend(lines.try_iter());
    }
    served.terminate();
    // Every line, up to the end of its stderr.
    log.extend(lines.iter());
    assert!(
        log.iter().any(|l| l.contains("is failing on 1 streams")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("did not catch up in time")),
        "the stop waited out the drain: {log:#?}"
    );
    Served::start_with(dir.path(), &["--read-model", &unbounded]).stop();
    assert_eq!(read_model(&rm).len(), posted);
}

/// A stop while the store's PostgreSQL is away ends cleanly (exit 0): the read model
/// cannot record its checkpoint then, and resumes from its last one on the next start.
#[test]
fn a_stop_while_the_database_is_away_is_clean() {
    let server = annals_testkit::postgres::PgServer::start().unwrap();
    let url = format!("{}?annals_schema=away", server.url);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = Served::start_with(dir.path(), &["--store", &url]);
    let todos = format!("{}/todos", served.base);
    let (status, t) = http(&rt, Method::POST, &todos, Some(json!({"title": "kept"})));
    assert_eq!(status, 201, "{t}");
    server.stop().unwrap();
    let (status, t) = http(&rt, Method::POST, &todos, Some(json!({"title": "lost"})));
    assert_eq!(status, 503, "{t}");
    served.stop();
    server.start_again().unwrap();
    let served = Served::start_with(dir.path(), &["--store", &url]);
    let (status, list) = http(&rt, Method::GET, &format!("{}/todos", served.base), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(fields(&list), [(0, "kept".to_owned(), false, 0)]);
    served.stop();
}

#[test]
fn serve_without_the_read_model_leaves_it_to_a_later_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = Served::start_with(dir.path(), &["--no-read-model"]);
    let todos = format!("{}/todos", served.base);
    let (status, t) = http(&rt, Method::POST, &todos, Some(json!({"title": "later"})));
    assert_eq!(status, 201, "{t}");
    let (status, list) = http(&rt, Method::GET, &todos, None);
    let expected = vec![(0, "later".to_owned(), false, 0)];
    assert_eq!((status, fields(&list)), (200, expected.clone()));
    served.stop();
    let db = dir.path().join("annals.db");
    let conn = annals_sqlite::rusqlite::Connection::open(&db).unwrap();
    let views: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'todo_view'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    assert!(
        views == 0 || read_model(&db).is_empty(),
        "nothing projected without the read model"
    );
    // A later start with the read model catches it up from its checkpoint.
    Served::start(dir.path(), None).stop();
    assert_eq!(read_model(&db), expected);
}

#[test]
fn the_http_bench_reconnects_when_the_server_closes_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    // Idle connections close after 1 s; tests come every 2 s, so every test after the
    // first finds its kept connection closed by the server.
    let served = Served::start_with(dir.path(), &["--header-timeout", "1s"]);
    let out = crate::annals(&[
        "bench",
        "todo",
        "--store",
        &served.base,
        "--duration",
        "5s",
        "--rate",
        "0.5",
        "--concurrency",
        "2",
        "--clients",
        "3",
    ]);
    let report = succeeded(&out);
    assert!(crate::figure(&report, "tests ") >= 2.0, "{report}");
    assert_eq!(crate::figure(&report, "errors "), 0.0, "{report}");
    served.stop();
}

#[test]
fn serve_on_postgres_and_http_bench_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = pg_url("serve");
    let served = Served::start(dir.path(), Some(&url));
    let todos = format!("{}/todos", served.base);
    let (status, t) = http(&rt, Method::POST, &todos, Some(json!({"title": "on pg"})));
    assert_eq!(status, 201, "{t}");
    let (status, list) = http(&rt, Method::GET, &todos, None);
    assert_eq!(
        (status, fields(&list)),
        (200, vec![(0, "on pg".into(), false, 0)])
    );
    served.stop();
    let again = Served::start(dir.path(), Some(&url));
    let (_, list) = http(&rt, Method::GET, &format!("{}/todos", again.base), None);
    assert_eq!(fields(&list), vec![(0, "on pg".into(), false, 0)]);
    // Over HTTP only the todo scenario runs, and an unreachable service fails in one line.
    failed_saying(
        &crate::ops::on(
            dir.path(),
            &again.base,
            &["bench", "favorite", "--duration", "1s"],
        ),
        "only `annals bench todo`",
    );
    drop(again);
    failed_saying(
        &crate::ops::on(
            dir.path(),
            "http://127.0.0.1:1",
            &["bench", "todo", "--duration", "1s"],
        ),
        "does not answer as a TodoBackend",
    );
}

/// The page a browser loads from another origin: it drives the API with `fetch` (the
/// DELETEs, and the POST and PATCH with a JSON body, are preflighted) and posts what it saw
/// to its own origin.
const PAGE: &str = r#"<!doctype html>
<html><body><pre id="out">running</pre><script>
const api = "API/todos";
const json = { "Content-Type": "application/json" };
async function run() {
  const r = {};
  let res = await fetch(api, { method: "DELETE" });
  r.clear = res.status;
  res = await fetch(api, { method: "POST", headers: json, body: JSON.stringify({ title: "from the browser", order: 7 }) });
  r.post = res.status;
  const todo = await res.json();
  r.posted = todo;
  res = await fetch(todo.url, { method: "PATCH", headers: json, body: JSON.stringify({ completed: true, title: "patched" }) });
  r.patch = res.status;
  r.patched = await res.json();
  r.fetched = await (await fetch(todo.url)).json();
  r.list = await (await fetch(api)).json();
  res = await fetch(todo.url, { method: "DELETE" });
  r.delete = res.status;
  r.after = await (await fetch(api)).json();
  res = await fetch(api, { method: "POST", headers: json, body: "{" });
  r.bad = res.status;
  r.bad_body = await res.json();
  r.origin = location.origin;
  return r;
}
const report = (r) => fetch("/report", { method: "POST", body: JSON.stringify(r) });
run().then(report, (e) => report({ error: String(e) }));
</script></body></html>"#;

#[test]
fn a_browser_on_another_origin_drives_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), Some("sqlite://browser.db"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let page = PAGE.replace("API", &served.base);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/report",
            axum::routing::post(move |body: String| async move {
                let _ = tx.send(body);
            }),
        );
    rt.spawn(async move { axum::serve(listener, app).await });
    let profile = tempfile::tempdir().unwrap();
    let mut browser = crate::admin::headless_chromium(profile.path())
        .arg(format!("{origin}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (apt-get install chromium)");
    let reported = rx.recv_timeout(Duration::from_secs(120));
    let _ = browser.kill();
    let _ = browser.wait();
    let r: Value = serde_json::from_str(&reported.expect("the page reports within 120 s")).unwrap();
    assert_eq!(r.get("error"), None, "{r}");
    assert_ne!(r["origin"].as_str().unwrap(), served.base, "another origin");
    assert_eq!(r["clear"], 204, "{r}");
    assert_eq!(r["post"], 201, "{r}");
    assert_eq!(
        (
            &r["posted"]["title"],
            &r["posted"]["completed"],
            &r["posted"]["order"]
        ),
        (&json!("from the browser"), &json!(false), &json!(7))
    );
    assert_eq!(r["patch"], 200, "{r}");
    assert_eq!(
        (
            &r["patched"]["title"],
            &r["patched"]["completed"],
            &r["patched"]["order"]
        ),
        (&json!("patched"), &json!(true), &json!(7)),
        "a merge"
    );
    assert_eq!(r["fetched"], r["patched"], "the patch persisted");
    assert_eq!(r["list"], json!([r["patched"].clone()]));
    assert_eq!(r["delete"], 204, "{r}");
    assert_eq!(r["after"], json!([]));
    assert_eq!(
        (&r["bad"], &r["bad_body"]["error"]),
        (&json!(400), &json!("malformed_json")),
        "errors are readable across origins: {r}"
    );
    // The browser sent preflights for the collection and for the todo's url.
    let (_, metrics) = http(&rt, Method::GET, &format!("{}/metrics", served.base), None);
    let metrics = metrics.as_str().unwrap().to_owned();
    for route in ["/todos", "/todos/{id}"] {
        let line = format!(
            "annals_http_requests_total{{method=\"OPTIONS\",route=\"{route}\",status=\"200\"}}"
        );
        assert!(metrics.contains(&line), "no {line} in {metrics}");
    }
    served.stop();
}

/// The TodoBackend API over a NATS store, its read model in a SQLite file; after a stop
/// the read model equals the lists, and a restart serves the same todos.
#[test]
fn serve_on_nats_with_a_sqlite_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = format!(
        "{}?stream={}",
        annals_testkit::nats::shared().url,
        annals_testkit::nats::stream_name("serve")
    );
    let args = [
        "--store",
        store.as_str(),
        "--read-model",
        "sqlite://view.db",
    ];
    let served = Served::start_with(dir.path(), &args);
    let todos = format!("{}/todos", served.base);
    for title in ["on nats", "replicated"] {
        let (status, t) = http(&rt, Method::POST, &todos, Some(json!({ "title": title })));
        assert_eq!(status, 201, "{t}");
    }
    let (status, t) = http(
        &rt,
        Method::PATCH,
        &format!("{todos}/1"),
        Some(json!({"completed": true})),
    );
    assert_eq!(status, 200, "{t}");
    let (_, list) = http(&rt, Method::GET, &todos, None);
    let expected = vec![
        (0, "on nats".to_owned(), false, 0),
        (1, "replicated".to_owned(), true, 1),
    ];
    assert_eq!(fields(&list), expected);
    served.stop();
    assert_eq!(read_model(&dir.path().join("view.db")), expected);
    let again = Served::start_with(dir.path(), &args);
    let (_, list) = http(&rt, Method::GET, &format!("{}/todos", again.base), None);
    assert_eq!(fields(&list), expected);
    again.stop();
}

//! The TodoBackend API in process over real HTTP, on SQLite and PostgreSQL: every route,
//! CORS, partitioning, concurrent adds, persistence of patches, and bad input refused with
//! nothing written.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use annals::{Cache, EventStore, StreamName, Version};
use example_todo::web::{self, Options, MAX_BODY_BYTES, MAX_TITLE_CHARS};
use example_todo::Service;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("one recorder per process")
        })
        .clone()
}

/// A running API and a client of it.
struct Api {
    base: String,
    store: Arc<dyn EventStore>,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Api {
    /// Serves the API over `store` on a free port (with a cache, as `annals serve` does).
    async fn start(store: Arc<dyn EventStore>) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let service = Service::new(Arc::clone(&store), Some(Arc::new(Cache::new(1000)))).unwrap();
        let router = web::router(
            service,
            Options {
                metrics: Some(metrics()),
                base_url: base.clone(),
            },
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Api {
            base,
            store,
            client: Client::builder(TokioExecutor::new()).build_http(),
            server,
        }
    }

    /// Sends `method` to `target` (a path, or an absolute url) with `headers` and `body`.
    async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        // A path, or a whole URL (a todo's `url`): resolved against the server.
        let url = url::Url::parse(&self.base)
            .and_then(|base| base.join(target))
            .unwrap_or_else(|e| panic!("{target}: {e}"))
            .to_string();
        let mut request = hyper::Request::builder().method(method).uri(url);
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("an answer within 30 s")
            .expect("a response");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = match bytes.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        };
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, target: &str) -> Reply {
        self.send(Method::GET, target, &[], None).await
    }

    async fn post(&self, target: &str, body: Value) -> Reply {
        self.send(Method::POST, target, &[], Some(body.to_string()))
            .await
    }

    async fn patch(&self, target: &str, body: Value) -> Reply {
        self.send(Method::PATCH, target, &[], Some(body.to_string()))
            .await
    }

    async fn delete(&self, target: &str) -> Reply {
        self.send(Method::DELETE, target, &[], None).await
    }

    async fn version(&self, client: &str) -> Version {
        let stream = StreamName::from_parts(example_todo::CATEGORY, client).unwrap();
        self.store.stream_version(&stream).await.unwrap()
    }
}

fn ok(reply: &Reply, status: StatusCode) -> &Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    &reply.body
}

/// The TodoBackend spec's points, in its order.
async fn spec(api: &Api) {
    // The pre-requisites.
    ok(&api.delete("/todos").await, StatusCode::NO_CONTENT);
    assert_eq!(ok(&api.get("/todos").await, StatusCode::OK), &json!([]));
    let posted = api.post("/todos", json!({"title": "a todo"})).await;
    let todo = ok(&posted, StatusCode::CREATED).clone();
    assert_eq!(todo["title"], "a todo");
    assert_eq!(todo["completed"], false, "a new todo is not completed");
    let url = todo["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/todos/", api.base)), "{url}");
    assert_eq!(posted.headers["location"], url.as_str());
    // Each new todo has a url, which returns the todo.
    assert_eq!(ok(&api.get(&url).await, StatusCode::OK), &todo);
    let list = ok(&api.get("/todos").await, StatusCode::OK).clone();
    assert_eq!(list, json!([todo]), "the todo is in the list");
    ok(&api.delete("/todos").await, StatusCode::NO_CONTENT);
    assert_eq!(ok(&api.get("/todos").await, StatusCode::OK), &json!([]));
    ok(&api.get(&url).await, StatusCode::NOT_FOUND);

    // Working with an existing todo.
    let todo = ok(
        &api.post("/todos", json!({"title": "walk the dog"})).await,
        StatusCode::CREATED,
    )
    .clone();
    let url = todo["url"].as_str().unwrap().to_owned();
    let listed = ok(&api.get("/todos").await, StatusCode::OK).clone();
    assert_eq!(listed[0]["url"], url.as_str(), "from the list to the todo");
    let patched = api.patch(&url, json!({"title": "bathe the cat"})).await;
    let patched = ok(&patched, StatusCode::OK).clone();
    assert_eq!(
        (&patched["title"], &patched["completed"], &patched["order"]),
        (&json!("bathe the cat"), &todo["completed"], &todo["order"]),
        "a merge: only the title changed"
    );
    let done = api.patch(&url, json!({"completed": true})).await;
    assert_eq!(ok(&done, StatusCode::OK)["completed"], true);
    let fetched = ok(&api.get(&url).await, StatusCode::OK).clone();
    assert_eq!(
        (&fetched["title"], &fetched["completed"]),
        (&json!("bathe the cat"), &json!(true)),
        "changes persist"
    );
    ok(&api.delete(&url).await, StatusCode::NO_CONTENT);
    assert_eq!(ok(&api.get("/todos").await, StatusCode::OK), &json!([]));
    ok(&api.get(&url).await, StatusCode::NOT_FOUND);

    // Tracking order.
    let ordered = api
        .post("/todos", json!({"title": "blah", "order": 523}))
        .await;
    let ordered = ok(&ordered, StatusCode::CREATED).clone();
    assert_eq!(ordered["order"], 523);
    let url = ordered["url"].as_str().unwrap().to_owned();
    assert_eq!(
        ok(&api.patch(&url, json!({"order": 95})).await, StatusCode::OK)["order"],
        95
    );
    assert_eq!(ok(&api.get(&url).await, StatusCode::OK)["order"], 95);
    let first = api
        .post("/todos", json!({"title": "first", "order": 1}))
        .await;
    ok(&first, StatusCode::CREATED);
    let titles: Vec<Value> = ok(&api.get("/todos").await, StatusCode::OK)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].clone())
        .collect();
    assert_eq!(
        titles,
        vec![json!("first"), json!("blah")],
        "listed by order"
    );
    // A client that sends back the whole object (with id and url) is accepted.
    let whole =
        json!({"title": "blah!", "order": 95, "completed": true, "id": ordered["id"], "url": url});
    assert_eq!(
        ok(&api.patch(&url, whole).await, StatusCode::OK)["title"],
        "blah!"
    );
}

async fn patches_persist_past_the_cache(api: &Api) {
    let todo = ok(
        &api.post("/todos?client=persist", json!({"title": "kept"}))
            .await,
        StatusCode::CREATED,
    )
    .clone();
    let url = todo["url"].as_str().unwrap().to_owned();
    assert!(url.ends_with("?client=persist"), "{url}");
    ok(
        &api.patch(&url, json!({"completed": true, "order": -4}))
            .await,
        StatusCode::OK,
    );
    // A second server over the same store, with a cold cache, reads what the first wrote.
    let other = Api::start(Arc::clone(&api.store)).await;
    let seen = ok(&other.get("/todos/0?client=persist").await, StatusCode::OK).clone();
    assert_eq!(
        (&seen["title"], &seen["completed"], &seen["order"]),
        (&json!("kept"), &json!(true), &json!(-4))
    );
}

async fn two_concurrent_posts_both_land(api: &Api) {
    let headers = [("x-client-id", "race")];
    let post = |title: &'static str| {
        api.send(
            Method::POST,
            "/todos",
            &headers,
            Some(json!({ "title": title }).to_string()),
        )
    };
    for round in 0..5 {
        let (a, b) = tokio::join!(post("left"), post("right"));
        let (a, b) = (
            ok(&a, StatusCode::CREATED).clone(),
            ok(&b, StatusCode::CREATED).clone(),
        );
        assert_ne!(a["id"], b["id"], "round {round}: distinct ids");
    }
    let list = api.send(Method::GET, "/todos", &headers, None).await;
    let list = ok(&list, StatusCode::OK).as_array().unwrap().clone();
    assert_eq!(list.len(), 10, "every add is kept");
    let mut ids: Vec<u64> = list.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
}

async fn lists_are_partitioned_by_client(api: &Api) {
    let alice = [("x-client-id", "alice")];
    let added = api
        .send(
            Method::POST,
            "/todos",
            &alice,
            Some(json!({"title": "alice's"}).to_string()),
        )
        .await;
    let todo = ok(&added, StatusCode::CREATED).clone();
    let url = todo["url"].as_str().unwrap();
    assert!(url.ends_with("?client=alice"), "{url}");
    // The url alone (no header) fetches it; the default list does not have it.
    assert_eq!(ok(&api.get(url).await, StatusCode::OK)["title"], "alice's");
    let default = ok(&api.get("/todos").await, StatusCode::OK).clone();
    assert!(!default.to_string().contains("alice's"));
    let bobs = api.send(Method::GET, "/todos", &[("x-client-id", "bob")], None);
    assert_eq!(ok(&bobs.await, StatusCode::OK), &json!([]));
    // Clearing one list leaves the others.
    ok(
        &api.send(Method::DELETE, "/todos", &[("x-client-id", "bob")], None)
            .await,
        StatusCode::NO_CONTENT,
    );
    assert_eq!(ok(&api.get(url).await, StatusCode::OK)["title"], "alice's");
}

async fn cors_on_every_route_and_preflight(api: &Api) {
    for reply in [
        api.get("/todos").await,
        api.get("/todos/999").await,
        api.post("/todos", json!({})).await,
        api.get("/nowhere").await,
    ] {
        assert_eq!(
            reply.headers["access-control-allow-origin"], "*",
            "{}",
            reply.status
        );
    }
    for method in ["PATCH", "DELETE", "POST"] {
        let preflight = api
            .send(
                Method::OPTIONS,
                "/todos/0",
                &[
                    ("origin", "http://elsewhere.example"),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", "content-type,x-client-id"),
                ],
                None,
            )
            .await;
        assert!(preflight.status.is_success(), "{}", preflight.status);
        let h = &preflight.headers;
        assert_eq!(h["access-control-allow-origin"], "*");
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        for m in ["GET", "POST", "PATCH", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("content-type") && allowed.contains("x-client-id"),
            "{allowed}"
        );
    }
}

/// Every kind of bad input: the right status, a JSON error body, and nothing written.
async fn bad_input_is_refused_with_nothing_written(api: &Api) {
    let todo = ok(
        &api.post("/todos?client=strict", json!({"title": "exists"}))
            .await,
        StatusCode::CREATED,
    )
    .clone();
    let url = todo["url"].as_str().unwrap().to_owned();
    let before = api.version("strict").await;
    let long = "é".repeat(MAX_TITLE_CHARS + 1);
    let raw = |method: Method, target: &str, ctype: &str, body: String| {
        let (target, ctype) = (target.to_owned(), ctype.to_owned());
        async move {
            api.send(
                method,
                &target,
                &[("content-type", ctype.as_str())],
                Some(body),
            )
            .await
        }
    };
    let json = "application/json";
    let cases: Vec<(Reply, StatusCode, &str)> = vec![
        (
            raw(
                Method::POST,
                "/todos?client=strict",
                json,
                r#"{"title": "#.into(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            raw(
                Method::POST,
                "/todos?client=strict",
                json,
                "not json".into(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            api.post("/todos?client=strict", json!({})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.post("/todos?client=strict", json!({"title": 5})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.post("/todos?client=strict", json!({"title": "  "}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.post("/todos?client=strict", json!({"title": long}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.post(
                "/todos?client=strict",
                json!({"title": "a", "colour": "red"}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.post(
                "/todos?client=strict",
                json!({"title": "x".repeat(MAX_BODY_BYTES)}),
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            raw(
                Method::POST,
                "/todos?client=strict",
                "text/plain",
                r#"{"title":"a"}"#.into(),
            )
            .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            api.patch(&url, json!({"title": ""})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        // A body's fields as an array in field order (serde's other form of a struct).
        (
            api.post(
                "/todos?client=strict",
                json!(["walk", 1, false, null, null]),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.patch(&url, json!(["renamed", 2, true, null, null]))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.patch(&url, json!([])).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        // NUL is refused on every store (PostgreSQL text cannot hold it).
        (
            api.post("/todos?client=strict", json!({"title": "a\u{0}b"}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.patch(&url, json!({"title": "\u{0}"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.patch(&url, json!({"completed": "yes"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            api.patch(&url, json!({"done": true})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            raw(Method::PATCH, &url, json, "{".into()).await,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            api.patch("/todos/77?client=strict", json!({"completed": true}))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.delete("/todos/77?client=strict").await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.get("/todos/abc?client=strict").await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.delete("/todos/%ff?client=strict").await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            api.post("/todos?client=no%20spaces", json!({"title": "a"}))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
        (
            api.send(Method::PUT, "/todos?client=strict", &[], Some("{}".into()))
                .await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            api.get("/nowhere").await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (i, (reply, status, kind)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", reply.body);
        assert_eq!(reply.body["error"], *kind, "case {i}: {}", reply.body);
        assert!(
            reply.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}: {}",
            reply.body
        );
    }
    assert_eq!(api.version("strict").await, before, "nothing written");
    assert_eq!(
        ok(&api.get(&url).await, StatusCode::OK),
        &todo,
        "the todo is unchanged"
    );
    // The boundary itself is accepted.
    let longest = "é".repeat(MAX_TITLE_CHARS);
    let accepted = api
        .post("/todos?client=strict", json!({ "title": longest }))
        .await;
    assert_eq!(
        ok(&accepted, StatusCode::CREATED)["title"],
        longest.as_str()
    );
}

async fn metrics_are_served(api: &Api) {
    api.get("/todos").await;
    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains("annals_http_requests_total{method=\"GET\",route=\"/todos\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("annals_http_request_duration_seconds"),
        "{text}"
    );
}

async fn everything(store: Arc<dyn EventStore>) {
    let api = Api::start(store).await;
    spec(&api).await;
    patches_persist_past_the_cache(&api).await;
    two_concurrent_posts_both_land(&api).await;
    lists_are_partitioned_by_client(&api).await;
    cors_on_every_route_and_preflight(&api).await;
    bad_input_is_refused_with_nothing_written(&api).await;
    metrics_are_served(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
        dir.path().join("todos.db"),
    ))
    .unwrap();
    everything(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_on_postgres() {
    let server = annals_testkit::postgres::shared();
    let store = annals_postgres::PgStore::connect(
        annals_postgres::PgConfig::new(server.connection())
            .schema(annals_testkit::postgres::schema_name("todoweb")),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    everything(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_memory() {
    everything(Arc::new(annals::MemoryStore::new())).await;
}

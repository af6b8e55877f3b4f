//! The TodoBackend HTTP API (todobackend.com) over [`Service`]:
//!
//! | route | does |
//! |---|---|
//! | `GET /todos` | the list, in `order` |
//! | `POST /todos` | adds `{"title", "order"?, "completed"?}`; `201` with the todo and `Location` |
//! | `DELETE /todos` | clears the list; `204` |
//! | `GET /todos/{id}` | one todo |
//! | `PATCH /todos/{id}` | changes only the fields sent (`title`, `completed`, `order`) |
//! | `DELETE /todos/{id}` | deletes it; `204` |
//! | `GET /metrics` | Prometheus text format |
//!
//! A todo is `{"id", "title", "completed", "order", "url"}`, `url` absolute (from the
//! request's `Host`). Lists are partitioned by client: header `X-Client-Id` or query
//! `?client=`, 1 to 64 of `A-Z a-z 0-9 - _ . ~`; without one, the `default` list. A todo of
//! another list carries its `?client=` in its `url`, so the url alone fetches it.
//!
//! Every response, errors included, carries CORS headers allowing any origin, the headers
//! `Content-Type` and `X-Client-Id`, and the methods GET, POST, PATCH, DELETE, OPTIONS;
//! preflight `OPTIONS` requests are answered.
//!
//! Bad input is refused before anything is written, with a JSON body
//! `{"error": kind, "message": text}`: malformed JSON `400 malformed_json`; a body that is
//! not JSON `415 unsupported_media_type`; a missing or mistyped field, an unknown field, an
//! empty title, one over [`MAX_TITLE_CHARS`] characters or one holding NUL (`\u0000`,
//! which PostgreSQL text cannot store) `422 invalid`; a body over
//! [`MAX_BODY_BYTES`] `413 too_large`; an invalid client id `400 invalid_client`; an unknown
//! todo or route `404 not_found`; a method a route lacks `405 method_not_allowed`. `id` and
//! `url` are accepted in bodies and ignored (clients send back the objects they got).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};
use tracing::Instrument;

use crate::{Patch, Service, Todo};

/// The longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 1_000;
/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The header naming the client whose list a request works on.
pub const CLIENT_HEADER: &str = "x-client-id";
/// The list of requests that name no client.
pub const DEFAULT_CLIENT: &str = "default";

/// How the API is served.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Renders `/metrics`; without it `/metrics` is `404`.
    pub metrics: Option<PrometheusHandle>,
    /// The base of todo urls when a request has no `Host` header, e.g.
    /// `http://127.0.0.1:3000`.
    pub base_url: String,
}

struct App {
    service: Service,
    options: Options,
}

/// The API's routes, CORS, request logs and request metrics.
pub fn router(service: Service, options: Options) -> Router {
    let app = Arc::new(App { service, options });
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([CONTENT_TYPE, HeaderName::from_static(CLIENT_HEADER)])
        .expose_headers([LOCATION]);
    Router::new()
        .route("/todos", get(list).post(add).delete(clear))
        .route("/todos/{id}", get(one).patch(update).delete(delete))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors)
        // Outermost: preflights answered by the CORS layer are logged and counted too.
        .layer(axum::middleware::from_fn(observe))
        .with_state(app)
}

/// Counts each request in the metrics, traces it (span `http.request`, DEBUG) and logs it
/// through `tracing`: a request answered 5xx at WARN, 4xx at INFO, any other at DEBUG. A
/// log line costs the server about a sixth of a request's CPU (BENCHMARKS.md), and the
/// metrics already count every request by route and status, so a line per successful
/// request is opt-in (`ANNALS_LOG=info,example_todo=debug`), as in tower-http's
/// `TraceLayer` and ASP.NET Core's production defaults.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The request's URI (shared bytes): its path is logged after the request is answered.
    let uri = request.uri().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // The request's span, at DEBUG like its log line (a trace exporter takes it; the logs
    // at INFO do not pay for formatting it): continues the caller's trace when it sent a
    // W3C `traceparent`.
    let span = tracing::debug_span!(
        "http.request",
        otel.name = format!("{} {route}", method_label(&method)),
        otel.kind = "server",
        http.request.method = method_label(&method),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(parent) = caller_trace(request.headers()) {
            parent.set_parent_of(&span);
        }
    }
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                method = %method,
                path = uri.path(),
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            )
        };
    }
    match status {
        500.. => log!(warn),
        400..=499 => log!(info),
        _ => log!(debug),
    }
    let labels = [
        ("method", method_label(&method).to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("annals_http_requests_total", &labels).increment(1);
    metrics::histogram!("annals_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    response
}

/// The W3C trace context a caller sent, if any (an invalid one is ignored).
fn caller_trace(headers: &HeaderMap) -> Option<annals::TraceContext> {
    let header = |name: &str| headers.get(name)?.to_str().ok();
    annals::TraceContext::parse(header("traceparent")?, header("tracestate"))
}

/// A method as a metric label: the standard methods by name, anything else `other`, so
/// clients cannot grow the label set (and `/metrics`) without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Why a request was refused.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not well-formed JSON.
    MalformedJson(String),
    /// The body is declared as something other than JSON.
    UnsupportedMediaType(String),
    /// Well-formed, but not a valid request (fields, title).
    Invalid(String),
    /// The body is over [`MAX_BODY_BYTES`].
    TooLarge,
    /// The client id is not acceptable.
    InvalidClient(String),
    /// No such todo or route.
    NotFound(String),
    /// The route has no such method.
    MethodNotAllowed,
    /// The list kept changing under the request.
    Conflict(String),
    /// The store failed.
    Store(String),
    /// The body did not arrive in time.
    Timeout,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, message) = match self {
            ApiError::MalformedJson(m) => (StatusCode::BAD_REQUEST, "malformed_json", m),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::InvalidClient(m) => (StatusCode::BAD_REQUEST, "invalid_client", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method".into(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Store(m) => (StatusCode::SERVICE_UNAVAILABLE, "store", m),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body did not arrive in time".into(),
            ),
        };
        (status, Json(json!({"error": kind, "message": message}))).into_response()
    }
}

impl From<annals::Error> for ApiError {
    fn from(e: annals::Error) -> Self {
        match e {
            annals::Error::ResyncExhausted { .. } => ApiError::Conflict(e.to_string()),
            e if e.is_invalid_input() => ApiError::Invalid(e.to_string()),
            e => {
                tracing::error!(error = %e, "store failure");
                ApiError::Store(e.to_string())
            }
        }
    }
}

/// `?client=`.
#[derive(Deserialize)]
struct ClientQuery {
    client: Option<String>,
}

/// Whose list, and how todo urls are made.
struct Caller {
    client: String,
    base: String,
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let query = Query::<ClientQuery>::from_request_parts(parts, app).await;
        Caller::of(app, &parts.headers, query)
    }
}

impl Caller {
    fn of(
        app: &App,
        headers: &HeaderMap,
        query: Result<Query<ClientQuery>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        let query = query.map_err(|e| ApiError::InvalidClient(e.body_text()))?;
        let client = match (headers.get(CLIENT_HEADER), query.0.client) {
            (Some(h), _) => h
                .to_str()
                .map_err(|_| ApiError::InvalidClient("X-Client-Id is not text".into()))?
                .to_owned(),
            (None, Some(q)) => q,
            (None, None) => DEFAULT_CLIENT.to_owned(),
        };
        let valid = (1..=64).contains(&client.len())
            && client
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        if !valid {
            return Err(ApiError::InvalidClient(format!(
                "client id {client:?}: 1 to 64 of A-Z a-z 0-9 - _ . ~"
            )));
        }
        let base = match headers.get(HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => {
                let https = headers
                    .get("x-forwarded-proto")
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
                format!("{}://{host}", if https { "https" } else { "http" })
            }
            None => app.options.base_url.trim_end_matches('/').to_owned(),
        };
        Ok(Self { client, base })
    }

    fn url(&self, id: u64) -> String {
        match self.client.as_str() {
            DEFAULT_CLIENT => format!("{}/todos/{id}", self.base),
            client => format!("{}/todos/{id}?client={client}", self.base),
        }
    }

    /// The todo, or `404` when there is none.
    fn found(&self, id: u64, todo: Option<Todo>) -> Result<Response, ApiError> {
        match todo {
            Some(t) => Ok(Json(self.show(&t)).into_response()),
            None => Err(ApiError::NotFound(format!("no todo {id}"))),
        }
    }

    fn show<'t>(&self, t: &'t Todo) -> Shown<'t> {
        Shown {
            completed: t.completed,
            id: t.id,
            order: t.order,
            title: &t.title,
            url: self.url(t.id),
        }
    }
}

/// A todo as the API shows it (fields in name order, as before: one serialization, no
/// intermediate JSON value per todo).
#[derive(Serialize)]
struct Shown<'t> {
    completed: bool,
    id: u64,
    order: i64,
    title: &'t str,
    url: String,
}

/// The body of `POST /todos` (`title` required) and of `PATCH /todos/{id}` (every field
/// optional): a JSON object only (see [`TodoBody`]'s `Deserialize`).
struct TodoBody(TodoFields);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TodoFields {
    title: Option<String>,
    order: Option<i64>,
    completed: Option<bool>,
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default, rename = "url")]
    _url: Option<IgnoredAny>,
}

/// Only from an object: serde's derived `Deserialize` also takes a struct's fields as an
/// array in field order (`["walk the dog", 1, true]`), which is no TodoBackend body.
impl<'de> Deserialize<'de> for TodoBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = TodoBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<TodoBody, A::Error> {
                TodoFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TodoBody)
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// Parses a JSON body, telling malformed JSON from a well-formed but invalid request.
fn body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ if timed_out(&e) => ApiError::Timeout,
        _ => ApiError::MalformedJson(e.body_text()),
    })?;
    if let Some(kind) = headers.get(CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = kind.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {essence:?}: send application/json"
            )));
        }
    }
    // Well-formed first (a truncated body is malformed even where its start already has
    // the wrong shape), then the fields.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// Whether reading the body failed because its time ran out (the server's body timeout).
fn timed_out(e: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn title(title: String) -> Result<String, ApiError> {
    if title.trim().is_empty() {
        return Err(ApiError::Invalid("title: must not be empty".into()));
    }
    // Every store keeps a title the same way: PostgreSQL text cannot hold NUL, so no store
    // takes it (rather than one accepting what its read model can never project).
    if title.contains('\0') {
        return Err(ApiError::Invalid(
            "title: must not contain the NUL character (\\u0000)".into(),
        ));
    }
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(ApiError::Invalid(format!(
            "title: {chars} characters, at most {MAX_TITLE_CHARS}"
        )));
    }
    Ok(title)
}

/// A todo's id from the path: anything that is not one (not a number, not even text once
/// percent-decoded) names no todo.
struct TodoId(u64);

impl<S: Send + Sync> FromRequestParts<S> for TodoId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("no such todo: its id is not text".into()))?;
        text.parse()
            .map(TodoId)
            .map_err(|_| ApiError::NotFound(format!("no todo {text:?}")))
    }
}

async fn list(State(app): State<Arc<App>>, caller: Caller) -> Result<Response, ApiError> {
    let todos = app.service.list(&caller.client).await?;
    let shown: Vec<_> = todos.iter().map(|t| caller.show(t)).collect();
    Ok(Json(shown).into_response())
}

async fn add(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let TodoBody(new) = body(&headers, bytes)?;
    let title = title(
        new.title
            .ok_or_else(|| ApiError::Invalid("missing field `title`".into()))?,
    )?;
    let completed = new.completed.unwrap_or(false);
    let todo = app
        .service
        .add(&caller.client, title, new.order, completed)
        .await?;
    let mut response = (StatusCode::CREATED, Json(caller.show(&todo))).into_response();
    if let Ok(location) = HeaderValue::from_str(&caller.url(todo.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn clear(State(app): State<Arc<App>>, caller: Caller) -> Result<Response, ApiError> {
    app.service.clear(&caller.client).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn one(
    State(app): State<Arc<App>>,
    caller: Caller,
    TodoId(id): TodoId,
) -> Result<Response, ApiError> {
    caller.found(id, app.service.get(&caller.client, id).await?)
}

async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    TodoId(id): TodoId,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let TodoBody(sent) = body(&headers, bytes)?;
    let patch = Patch {
        title: sent.title.map(title).transpose()?,
        completed: sent.completed,
        order: sent.order,
    };
    caller.found(id, app.service.update(&caller.client, id, patch).await?)
}

async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    TodoId(id): TodoId,
) -> Result<Response, ApiError> {
    match app.service.delete(&caller.client, id).await? {
        true => Ok(StatusCode::NO_CONTENT.into_response()),
        false => Err(ApiError::NotFound(format!("no todo {id}"))),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    match &app.options.metrics {
        Some(handle) => Ok((
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            handle.render(),
        )
            .into_response()),
        None => Err(ApiError::NotFound("metrics are not enabled".into())),
    }
}

/// Describes the service's request metrics to the installed `metrics` recorder: their help
/// text and units. Call it once after installing the recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "annals_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "annals_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route"
    );
}

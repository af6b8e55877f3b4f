//! The admin web UI: pages over a store, served by the binary itself (no assets to build or
//! fetch). Every value shown comes from user data and is escaped by the templates (`maud`);
//! pages carry a Content-Security-Policy that allows no script but the server's own file
//! (no inline script), so even a value that escaped escaping could not run.
//!
//! Pages (all `GET`, query parameters, so any stream name works):
//! - `/`: the store's kind, head position, events, streams and categories (from a scan of
//!   the feed, bounded by [`AdminOptions::scan_limit`]), and a chart of the events written
//!   and read per second over the last 15 minutes (sampled since the pages started);
//! - `/streams?prefix=P`: streams whose names start with `P` (a category is `Category-`);
//! - `/stream?name=N[&from=V][&backward=1]`: a stream's events, a page at a time, forward
//!   or backward;
//! - `/event?stream=N&version=V`: one event, data and metadata pretty-printed, with links
//!   that follow its causation and correlation ids;
//! - `/find?id=UUID`: the event with that id (a bounded scan of the feed);
//! - `/live?category=C&type=T`: new events as they commit (server-sent events from
//!   `/live/events`; the page's one script, `/assets/live.js`, writes values as text);
//! - `/groups`: consumer groups' checkpoints with their lag, and the parked streams with
//!   their errors; `POST /replay` applies one's events to its read model and `POST /skip`
//!   unparks one without; `POST /checkpoint` moves a group's checkpoint (only with a
//!   token: see [`router`]);
//! - `/read-models`: each read model's rows by schema version, stale rows, events not
//!   applied yet and the last position its group applied; `POST /rebuild` refolds its stale
//!   rows.
//!
//! Links between pages are relative, so the pages work wherever they are mounted (at `/`,
//! or under a prefix such as `/admin/` inside `annals serve`).

use std::collections::BTreeMap;
use std::sync::Arc;

use annals::{
    CheckpointStore, EventStore, Filter, Position, ReadStream, RecordedEvent, StreamName,
    Timestamp, Version,
};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures::TryStreamExt;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

mod groups;
pub mod json;
mod live;
mod models;
mod rates;

pub use models::{ReadModel, ReadModels};

/// Events shown per stream page.
pub const PAGE: usize = 50;

/// How the admin pages run.
#[derive(Clone)]
pub struct AdminOptions {
    /// How a time is shown.
    pub time: fn(Timestamp) -> String,
    /// At most this many events are read by a page that scans the feed (the overview,
    /// stream search, finding an id).
    pub scan_limit: usize,
    /// The read models the server keeps (the read-models page, replay and rebuild).
    pub read_models: Option<Arc<dyn ReadModels>>,
    /// Where consumer groups keep their members and leases (the groups page lists them).
    pub leases: Option<Arc<dyn annals::LeaseStore>>,
    /// What the store is, beyond its kind (its schema version, or a NATS stream's
    /// replicas), for the overview.
    pub schema: Option<String>,
    /// Pipelines running in this process: the groups page shows their failing and
    /// stalled streams (which live only in the process).
    pub pipelines: Vec<RunningGroup>,
}

/// A pipeline running in the process that serves the pages.
#[derive(Debug, Clone)]
pub struct RunningGroup {
    /// Its consumer group.
    pub group: String,
    /// Its stats, as published.
    pub stats: tokio::sync::watch::Receiver<annals_reactor::Stats>,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("scan_limit", &self.scan_limit)
            .field("read_models", &self.read_models)
            .field("leases", &self.leases.is_some())
            .field("pipelines", &self.pipelines.len())
            .finish_non_exhaustive()
    }
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            time: |t| format!("{} µs since 1970", t.unix_micros()),
            scan_limit: 100_000,
            read_models: None,
            leases: None,
            schema: None,
            pipelines: Vec::new(),
        }
    }
}

struct Admin {
    store: Arc<dyn EventStore>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    token: Option<String>,
    options: AdminOptions,
    rates: std::sync::Mutex<rates::Rates>,
}

/// The admin pages over `store` (and the consumer groups of `checkpoints`). Actions that
/// change data are off without `token`; with one, each needs the token, a confirmation,
/// and a request from a page of this server (`Sec-Fetch-Site` or `Origin`).
pub fn router(
    store: Arc<dyn EventStore>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    token: Option<String>,
    options: AdminOptions,
) -> Router {
    let token = token.filter(|t| !t.is_empty());
    let admin = Arc::new(Admin {
        store,
        checkpoints,
        token,
        options,
        rates: std::sync::Mutex::default(),
    });
    rates::spawn(&admin);
    Router::new()
        .route("/", get(overview))
        .route("/streams", get(streams))
        .route("/stream", get(stream))
        .route("/event", get(event))
        .route("/find", get(find))
        .route("/groups", get(groups::groups))
        .route("/live", get(live::page_of))
        .route("/live/events", get(live::events))
        .route("/assets/live.js", get(live::script))
        .route("/read-models", get(models::read_models))
        .route("/skip", axum::routing::post(models::skip))
        .route("/replay", axum::routing::post(models::replay))
        .route("/rebuild", axum::routing::post(models::rebuild))
        .route("/checkpoint", axum::routing::post(models::set_checkpoint))
        .with_state(admin)
}

/// Why a page could not be shown.
enum PageError {
    BadRequest(String),
    NotFound(String),
    Store(annals::Error),
}

impl From<annals::Error> for PageError {
    fn from(e: annals::Error) -> Self {
        PageError::Store(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::Store(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        let body = page("Error", html! { p.error { (message) } });
        let mut response = body.into_response();
        *response.status_mut() = status;
        response
    }
}

/// A whole page: the layout around `content`, with headers that forbid scripts, framing
/// and content sniffing.
fn page(title: &str, content: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Annals admin" }
                style { (STYLE) }
            }
            body {
                nav {
                    a href="./" { "Overview" }
                    " "
                    a href="streams" { "Streams" }
                    " "
                    a href="groups" { "Consumer groups" }
                    " "
                    a href="read-models" { "Read models" }
                    " "
                    a href="live" { "Live feed" }
                    form action="stream" method="get" {
                        input name="name" placeholder="stream name" aria-label="stream name";
                        button { "Open" }
                    }
                }
                h1 { (title) }
                (content)
            }
        }
    };
    let mut response = axum::response::Html(markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
nav{display:flex;gap:1rem;align-items:center;margin-bottom:1rem}nav form{margin-left:auto}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}\
pre{background:#f6f6f6;padding:.6rem;white-space:pre-wrap;overflow-wrap:anywhere;max-width:100%}\
.error{color:#a00}.muted{color:#777}";

/// `?name=value&...` with each value encoded.
fn href(path: &str, params: &[(&str, &str)]) -> String {
    let mut query = String::new();
    for (name, value) in params {
        query.push(if query.is_empty() { '?' } else { '&' });
        query.push_str(name);
        query.push('=');
        query.extend(url_encode(value));
    }
    format!("{path}{query}")
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(value: &str) -> impl Iterator<Item = String> + '_ {
    value.bytes().map(|b| match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
            (b as char).to_string()
        }
        _ => format!("%{b:02X}"),
    })
}

fn stream_link(stream: &StreamName) -> String {
    href("stream", &[("name", stream.as_str())])
}

fn event_link(e: &RecordedEvent) -> String {
    href(
        "event",
        &[
            ("stream", e.stream.as_str()),
            ("version", &e.stream_version.to_string()),
        ],
    )
}

/// Walks the feed from the start, at most `scan_limit` events: calls `each` until it
/// returns false; true if the whole feed was seen.
async fn scan(
    admin: &Admin,
    each: impl FnMut(&RecordedEvent) -> bool,
) -> Result<bool, annals::Error> {
    scan_from(admin, Position::START, each).await
}

/// As [`scan`], from `from` on.
async fn scan_from(
    admin: &Admin,
    mut from: Position,
    mut each: impl FnMut(&RecordedEvent) -> bool,
) -> Result<bool, annals::Error> {
    let mut seen = 0usize;
    loop {
        let want = (admin.options.scan_limit - seen).min(1_000);
        if want == 0 {
            return Ok(false);
        }
        let page = admin.store.read_all(from, &Filter::all(), want).await?;
        for e in &page.events {
            if !each(e) {
                return Ok(true);
            }
        }
        seen += page.events.len();
        if page.events.is_empty() || page.next == from {
            return Ok(true);
        }
        from = page.next;
    }
}

#[derive(Default)]
struct CategoryCount {
    events: u64,
    streams: u64,
}

async fn overview(State(admin): State<Arc<Admin>>) -> Result<Response, PageError> {
    let mut categories: BTreeMap<String, CategoryCount> = BTreeMap::new();
    let (mut events, mut head) = (0u64, None);
    let whole = scan(&admin, |e| {
        let c = categories
            .entry(e.stream.category().to_owned())
            .or_default();
        c.events += 1;
        if e.stream_version == 0 {
            c.streams += 1;
        }
        events += 1;
        head = Some(e.position);
        true
    })
    .await?;
    let streams: u64 = categories.values().map(|c| c.streams).sum();
    // The true head, even past the scan.
    let head = admin.store.head_position().await?.or(head);
    let caps = admin.store.capabilities();
    let content = html! {
        @if !whole {
            p.muted { "The first " (admin.options.scan_limit) " events of the feed (the scan stops there)." }
        }
        table id="summary" {
            tr { th { "Store" } td { (admin.store.backend()) } }
            @if let Some(schema) = &admin.options.schema {
                tr { th { "Schema" } td id="schema" { (schema) } }
            }
            tr { th { "Events" } td id="events" { (events) } }
            tr { th { "Streams" } td id="streams" { (streams) } }
            tr { th { "Categories" } td id="categories" { (categories.len()) } }
            tr { th { "Head position" } td id="head" { (head.map_or("none".to_owned(), |p| p.to_string())) } }
            tr { th { "Multi-stream appends" } td { (caps.multi_stream_append) } }
        }
        (rates::chart(&admin))
        h2 { "Categories" }
        table id="category-list" {
            tr { th { "Category" } th { "Streams" } th { "Events" } }
            @for (name, c) in &categories {
                tr {
                    td { a href=(href("streams", &[("prefix", &format!("{name}-"))])) { (name) } }
                    td { (c.streams) }
                    td { (c.events) }
                }
            }
        }
    };
    Ok(page("Overview", content))
}

#[derive(Deserialize)]
struct StreamsQuery {
    #[serde(default)]
    prefix: String,
}

async fn streams(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<StreamsQuery>,
) -> Result<Response, PageError> {
    const SHOWN: usize = 500;
    let mut found: Vec<(StreamName, u64)> = Vec::new();
    let mut index: BTreeMap<StreamName, usize> = BTreeMap::new();
    let whole = scan(&admin, |e| {
        if e.stream.as_str().starts_with(&q.prefix) {
            match index.get(&e.stream) {
                Some(&i) => found[i].1 = e.stream_version + 1,
                None if found.len() < SHOWN => {
                    index.insert(e.stream.clone(), found.len());
                    found.push((e.stream.clone(), e.stream_version + 1));
                }
                None => {}
            }
        }
        true
    })
    .await?;
    let content = html! {
        form action="streams" method="get" {
            input name="prefix" value=(q.prefix) placeholder="name prefix, e.g. Todos-" aria-label="name prefix";
            button { "Search" }
        }
        @if !whole {
            p.muted { "Among the first " (admin.options.scan_limit) " events of the feed." }
        }
        @if found.is_empty() {
            p id="none" { "No stream starts with " code { (q.prefix) } "." }
        } @else {
            table id="stream-list" {
                tr { th { "Stream" } th { "Events" } }
                @for (name, len) in &found {
                    tr { td { a href=(stream_link(name)) { (name) } } td { (len) } }
                }
            }
            @if found.len() == SHOWN { p.muted { "The first " (SHOWN) " streams." } }
        }
    };
    Ok(page("Streams", content))
}

#[derive(Deserialize)]
struct StreamQuery {
    name: String,
    from: Option<u64>,
    #[serde(default)]
    backward: Option<String>,
}

fn stream_name(name: &str) -> Result<StreamName, PageError> {
    StreamName::new(name).map_err(|e| PageError::BadRequest(format!("stream name: {e}")))
}

async fn stream(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, PageError> {
    let name = stream_name(&q.name)?;
    let backward = q
        .backward
        .as_deref()
        .is_some_and(|b| b == "1" || b == "true");
    let read = match (backward, q.from) {
        (false, from) => ReadStream::forward_from(Version(from.unwrap_or(0))),
        (true, Some(before)) => ReadStream::backward_from(Version(before)),
        (true, None) => ReadStream::backward(),
    }
    .limit(PAGE);
    let events: Vec<RecordedEvent> = admin.store.read_stream(&name, read).try_collect().await?;
    let length = admin.store.stream_version(&name).await?.get();
    let time = admin.options.time;
    let (first, last) = match (events.first(), events.last()) {
        (Some(a), Some(b)) => (
            a.stream_version.min(b.stream_version),
            a.stream_version.max(b.stream_version),
        ),
        _ => (0, 0),
    };
    let content = html! {
        p { "Category " code { (name.category()) } ", " span id="length" { (length) } " events." }
        @if events.is_empty() {
            p id="none" { "No events here." }
        } @else {
            table id="events" {
                tr { th { "Version" } th { "Type" } th { "Recorded" } th { "Position" } }
                @for e in &events {
                    tr {
                        td { a href=(event_link(e)) { (e.stream_version) } }
                        td.type { (e.event_type) }
                        td { (time(e.recorded_at)) }
                        td { (e.position) }
                    }
                }
            }
            p {
                @if first > 0 {
                    a id="older" href=(href("stream", &[("name", name.as_str()), ("from", &first.to_string()), ("backward", "1")])) { "Older" }
                    " "
                }
                @if last + 1 < length {
                    a id="newer" href=(href("stream", &[("name", name.as_str()), ("from", &(last + 1).to_string())])) { "Newer" }
                    " "
                }
                a id="latest" href=(href("stream", &[("name", name.as_str()), ("backward", "1")])) { "Latest" }
            }
        }
    };
    Ok(page(name.as_str(), content))
}

#[derive(Deserialize)]
struct EventQuery {
    stream: String,
    version: u64,
}

/// Bytes shown as pretty JSON when they are JSON (numbers and key order as stored) and
/// their layout stays within a few times their size, else as text (lossy UTF-8).
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => {
            json::pretty_within(&text, 8 * bytes.len() + 4096).unwrap_or_else(|| text.into_owned())
        }
        Err(_) => text.into_owned(),
    }
}

async fn event(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<EventQuery>,
) -> Result<Response, PageError> {
    let name = stream_name(&q.stream)?;
    let mut events = admin
        .store
        .read_stream(&name, ReadStream::forward_from(Version(q.version)).limit(1));
    let Some(e) = events.try_next().await? else {
        return Err(PageError::NotFound(format!(
            "{name} has no event {}",
            q.version
        )));
    };
    let time = admin.options.time;
    let id_link = |id: &annals::Uuid| href("find", &[("id", &id.to_string())]);
    let content = html! {
        table id="event" {
            tr { th { "Stream" } td { a id="stream" href=(stream_link(&e.stream)) { (e.stream) } } }
            tr { th { "Version" } td id="version" { (e.stream_version) } }
            tr { th { "Type" } td id="type" { (e.event_type) } }
            tr { th { "Id" } td id="id" { (e.event_id) } }
            tr { th { "Position" } td { (e.position) } }
            tr { th { "Recorded" } td { (time(e.recorded_at)) } }
            tr { th { "Causation" } td {
                @if let Some(id) = &e.causation_id { a id="causation" href=(id_link(id)) { (id) } } @else { span.muted { "none" } }
            } }
            tr { th { "Correlation" } td {
                @if let Some(id) = &e.correlation_id { a id="correlation" href=(id_link(id)) { (id) } } @else { span.muted { "none" } }
            } }
        }
        h2 { "Data" }
        pre id="data" { (shown(&e.data)) }
        h2 { "Metadata" }
        @match &e.metadata {
            Some(m) => pre id="metadata" { (shown(m)) },
            None => p.muted { "none" },
        }
    };
    Ok(page(
        &format!("{} #{}", e.stream, e.stream_version),
        content,
    ))
}

#[derive(Deserialize)]
struct FindQuery {
    id: String,
}

async fn find(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<FindQuery>,
) -> Result<Response, PageError> {
    let id: annals::Uuid =
        q.id.parse()
            .map_err(|e| PageError::BadRequest(format!("event id: {e}")))?;
    let mut found = None;
    let whole = scan(&admin, |e| {
        if e.event_id == id {
            found = Some(event_link(e));
            return false;
        }
        true
    })
    .await?;
    match found {
        Some(link) => Ok(Redirect::to(&link).into_response()),
        None if whole => Err(PageError::NotFound(format!("no event has the id {id}"))),
        None => Err(PageError::NotFound(format!(
            "no event among the first {} of the feed has the id {id}",
            admin.options.scan_limit
        ))),
    }
}

//! Read models: each projection's rows by schema version, the stale ones, how far behind
//! they are and the last position its group applied; and the actions that change data
//! (replay a parked stream, rebuild a read model's stale rows, set a checkpoint), each of
//! which needs the admin token, a confirmation and a same-origin request.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::*;

/// A read model the server keeps, as the admin pages show it.
#[derive(Debug, Clone)]
pub struct ReadModel {
    /// Its name (e.g. `todos`).
    pub name: String,
    /// The consumer group keeping it current.
    pub group: String,
    /// The schema version of this build's rows.
    pub schema: u32,
    /// What it recorded per stream.
    pub rows: Vec<annals::ProjectionRow>,
}

/// The read models behind the pages, and what can be done to them: given by the program
/// that serves the pages (it has the projectors).
#[async_trait::async_trait]
pub trait ReadModels: Send + Sync + std::fmt::Debug {
    /// The read models with their rows.
    async fn list(&self) -> annals::Result<Vec<ReadModel>>;
    /// Applies the events of `stream` after the read model's progress (exactly once), for
    /// a stream `group` parked: how many were applied, or `None` when no read model here is
    /// kept by `group`.
    async fn replay(&self, group: &str, stream: &StreamName) -> annals::Result<Option<u64>>;
    /// Refolds the rows of read model `name` built by older code: `None` when there is no
    /// such read model.
    async fn rebuild(&self, name: &str) -> annals::Result<Option<annals::Rebuilt>>;
}

pub(super) async fn read_models(State(admin): State<Arc<Admin>>) -> Result<Response, PageError> {
    let Some(models) = &admin.options.read_models else {
        return Ok(page(
            "Read models",
            html! { p { "No read model database was given (--read-model)." } },
        ));
    };
    let list = models.list().await?;
    let mut applied = BTreeMap::new();
    if let Some(checkpoints) = &admin.checkpoints {
        for c in checkpoints.list().await? {
            applied.insert(c.group.clone(), c.position);
        }
    }
    let actions = admin.token.is_some();
    let content = html! {
        @for model in &list {
            @let stale: Vec<_> = model.rows.iter().filter(|r| r.is_stale(model.schema)).collect();
            @let behind: u64 = model.rows.iter().map(annals::ProjectionRow::behind).sum();
            section.model {
                h2 { (model.name) }
                table.summary {
                    tr { th { "Group" } td.group { (model.group) } }
                    tr { th { "Schema of this build" } td { (model.schema) } }
                    tr { th { "Rows" } td.rows id=(format!("rows-{}", model.name)) { (model.rows.len()) } }
                    tr { th { "Rows by schema" } td.by-schema {
                        @for (schema, n) in by_schema(&model.rows) { "v" (schema) ": " (n) " " }
                    } }
                    tr { th { "Stale rows" } td.stale id=(format!("stale-{}", model.name)) { (stale.len()) } }
                    tr { th { "Events not applied yet" } td.behind id=(format!("behind-{}", model.name)) { (behind) } }
                    tr { th { "Last applied position" } td.applied {
                        @match applied.get(&model.group) { Some(p) => (p), None => "none yet" }
                    } }
                }
                @if !stale.is_empty() {
                    h3 { "Stale rows" }
                    table.stale-rows {
                        tr { th { "Stream" } th { "Schema" } th { "Applied up to" } }
                        @for row in stale.iter().take(PAGE) {
                            tr {
                                td { a href=(stream_link(&row.stream)) { (row.stream) } }
                                td { (row.schema) }
                                td { (row.version.get()) }
                            }
                        }
                    }
                }
                @if actions {
                    (action_form("rebuild", "Rebuild stale rows", &[("name", &model.name)]))
                } @else {
                    p.muted { "Rebuilding needs --token." }
                }
            }
        }
        @if list.is_empty() { p { "None." } }
    };
    Ok(page("Read models", content))
}

/// How many rows each schema version built.
fn by_schema(rows: &[annals::ProjectionRow]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row.schema).or_default() += 1;
    }
    counts
}

/// A form posting `action` with hidden `fields`, a confirmation box and the token.
pub(super) fn action_form(action: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.action method="post" action=(action) {
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            label { input type="checkbox" name="confirm" value="yes"; " sure" }
            " "
            input type="password" name="token" placeholder="admin token" aria-label="admin token";
            " "
            button { (label) }
        }
    }
}

/// A refusal page with `status`.
pub(super) fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = page("Refused", html! { p.error id="refused" { (message) } });
    *response.status_mut() = status;
    response
}

/// What every action needs: actions on, a request from these pages, the token, and the
/// confirmation ticked. The refusal, when one is missing.
pub(super) fn refusal(
    admin: &Admin,
    headers: &HeaderMap,
    token: &str,
    confirm: &str,
) -> Option<Response> {
    let Some(expected) = &admin.token else {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "Actions are off: start the admin pages with a token.",
        ));
    };
    if !same_origin(headers) {
        return Some(refuse(StatusCode::FORBIDDEN, "Cross-site request refused."));
    }
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Some(refuse(StatusCode::FORBIDDEN, "Wrong admin token."));
    }
    if confirm != "yes" {
        return Some(refuse(
            StatusCode::BAD_REQUEST,
            "Tick the confirmation to go ahead.",
        ));
    }
    None
}

/// A request a page of this server sent: the browser says so (`Sec-Fetch-Site`), or its
/// `Origin` is this host. Requests with neither (not from a browser) pass: they still need
/// the token.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The fields every action form sends.
#[derive(Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    group: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    confirm: String,
}

/// What an action on a parked stream needs: the checks of [`refusal`], the checkpoint
/// store and a valid stream name.
fn parked_action<'a>(
    admin: &'a Admin,
    headers: &HeaderMap,
    form: &ActionForm,
) -> Result<(&'a Arc<dyn annals::CheckpointStore>, StreamName), Box<Response>> {
    if let Some(refused) = refusal(admin, headers, &form.token, &form.confirm) {
        return Err(Box::new(refused));
    }
    match (&admin.checkpoints, StreamName::new(&form.stream)) {
        (Some(checkpoints), Ok(stream)) => Ok((checkpoints, stream)),
        _ => Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "No such parked stream.",
        ))),
    }
}

/// `POST /skip`: unparks a stream without applying its skipped events.
pub(super) async fn skip(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let (checkpoints, stream) = match parked_action(&admin, &headers, &form) {
        Ok(target) => target,
        Err(refused) => return *refused,
    };
    match checkpoints.unpark(&form.group, &stream).await {
        Ok(true) => Redirect::to("groups").into_response(),
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            "That stream is not parked in that group.",
        ),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /replay`: applies a parked stream's events to its read model, then unparks it.
pub(super) async fn replay(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let (checkpoints, stream) = match parked_action(&admin, &headers, &form) {
        Ok(target) => target,
        Err(refused) => return *refused,
    };
    let Some(models) = &admin.options.read_models else {
        return refuse(
            StatusCode::CONFLICT,
            "No read model here to replay into: replay it in the process that owns the group, or skip it.",
        );
    };
    match checkpoints.parked(Some(&form.group)).await {
        Ok(list) if list.iter().any(|p| p.stream == stream) => {}
        Ok(_) => {
            return refuse(
                StatusCode::NOT_FOUND,
                "That stream is not parked in that group.",
            )
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
    match models.replay(&form.group, &stream).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refuse(
                StatusCode::CONFLICT,
                "No read model here is kept by that group: replay it in the process that owns the group, or skip it.",
            )
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
    match checkpoints.unpark(&form.group, &stream).await {
        Ok(_) => Redirect::to("groups").into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /rebuild`: refolds a read model's stale rows.
pub(super) async fn rebuild(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refusal(&admin, &headers, &form.token, &form.confirm) {
        return refused;
    }
    let Some(models) = &admin.options.read_models else {
        return refuse(StatusCode::NOT_FOUND, "No such read model.");
    };
    match models.rebuild(&form.name).await {
        Ok(Some(_)) => Redirect::to("read-models").into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "No such read model."),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /checkpoint`: moves a group's checkpoint (its pipeline must be stopped: a running
/// one commits its own position over it).
pub(super) async fn set_checkpoint(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refusal(&admin, &headers, &form.token, &form.confirm) {
        return refused;
    }
    let Some(checkpoints) = &admin.checkpoints else {
        return refuse(StatusCode::NOT_FOUND, "This store keeps no checkpoints.");
    };
    let Ok(position) = form.position.trim().parse::<Position>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The position is not a position of this store.",
        );
    };
    if form.group.is_empty() || form.source.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Which group and source?");
    }
    match checkpoints
        .commit(&form.group, &form.source, position)
        .await
    {
        Ok(()) => Redirect::to("groups").into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

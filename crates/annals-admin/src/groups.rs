//! Consumer groups: each checkpoint with its lag (events after it, and how long the oldest
//! of them has waited), the parked streams with their errors, and the action that skips a
//! parked stream (which needs the admin token, a confirmation and a same-origin request).

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::*;

pub(super) async fn groups(State(admin): State<Arc<Admin>>) -> Result<Response, PageError> {
    let Some(checkpoints) = &admin.checkpoints else {
        return Ok(page(
            "Consumer groups",
            html! { p { "This store keeps no checkpoints." } },
        ));
    };
    let mut list = checkpoints.list().await?;
    list.sort_by(|a, b| (&a.group, &a.source).cmp(&(&b.group, &b.source)));
    let mut lags = Vec::with_capacity(list.len());
    for checkpoint in &list {
        lags.push(lag(&admin, checkpoint.position).await?);
    }
    let parked = checkpoints.parked(None).await?;
    let time = admin.options.time;
    let now = Timestamp::now().unix_micros();
    let actions = admin.token.is_some();
    let content = html! {
        table id="checkpoints" {
            tr { th { "Group" } th { "Source" } th { "Position" } th { "Behind (events)" } th { "Behind (time)" } }
            @for (c, (events, oldest)) in list.iter().zip(&lags) {
                tr {
                    td.group { (c.group) }
                    td { (c.source) }
                    td { (c.position) }
                    td.lag { (events) @if *events as usize >= admin.options.scan_limit { "+" } }
                    td.wait { @match oldest {
                        Some(t) => { (format!("{:.1} s", (now - t.unix_micros()).max(0) as f64 / 1e6)) },
                        None => { "0 s" },
                    } }
                }
            }
        }
        h2 { "Parked streams" }
        @if parked.is_empty() {
            p id="no-parked" { "None." }
        } @else {
            table id="parked" {
                tr { th { "Group" } th { "Stream" } th { "Versions" } th { "Attempts" } th { "Parked at" } th { "Error" } th { "" } }
                @for p in &parked {
                    tr {
                        td { (p.group) }
                        td.stream { a href=(stream_link(&p.stream)) { (p.stream) } }
                        td { (p.from.get()) ".." (p.to.get()) }
                        td { (p.attempts) }
                        td { (time(p.parked_at)) }
                        td.error { (p.last_error) }
                        td {
                            @if actions {
                                form method="post" action="skip" {
                                    input type="hidden" name="group" value=(p.group);
                                    input type="hidden" name="stream" value=(p.stream);
                                    label { input type="checkbox" name="confirm" value="yes"; " sure" }
                                    input type="password" name="token" placeholder="admin token" aria-label="admin token";
                                    button { "Skip" }
                                }
                            } @else {
                                span.muted { "actions need --token" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Consumer groups", content))
}

/// Events after `position` (counted up to the scan limit) and when the oldest of them was
/// recorded.
async fn lag(admin: &Admin, position: Position) -> Result<(u64, Option<Timestamp>), annals::Error> {
    let (mut events, mut oldest) = (0u64, None);
    let mut from = position;
    loop {
        let want = (admin.options.scan_limit as u64 - events).min(1_000) as usize;
        if want == 0 {
            return Ok((events, oldest));
        }
        let page = admin.store.read_all(from, &Filter::all(), want).await?;
        if oldest.is_none() {
            oldest = page.events.first().map(|e| e.recorded_at);
        }
        events += page.events.len() as u64;
        if page.events.is_empty() || page.next == from {
            return Ok((events, oldest));
        }
        from = page.next;
    }
}

#[derive(Deserialize)]
pub(super) struct SkipForm {
    group: String,
    stream: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /skip`: unparks a stream without applying its skipped events.
pub(super) async fn skip(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Form(form): Form<SkipForm>,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        let mut response = page("Refused", html! { p.error id="refused" { (message) } });
        *response.status_mut() = status;
        response
    };
    let Some(token) = &admin.token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "Actions are off: start annals admin with --token.",
        );
    };
    if !same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, "Cross-site request refused.");
    }
    if !constant_time_eq(form.token.as_bytes(), token.as_bytes()) {
        return refuse(StatusCode::FORBIDDEN, "Wrong admin token.");
    }
    if form.confirm != "yes" {
        return refuse(StatusCode::BAD_REQUEST, "Tick the confirmation to skip.");
    }
    let (Some(checkpoints), Ok(stream)) = (&admin.checkpoints, StreamName::new(&form.stream))
    else {
        return refuse(StatusCode::BAD_REQUEST, "No such parked stream.");
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

//! The live feed: a page whose script follows `/live/events`, the store's feed as
//! server-sent events from a position (the head when the page was opened), filtered by
//! category and event type.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as Sse, KeepAlive, Sse as SseResponse};
use futures::StreamExt;
use maud::html;

use super::*;

#[derive(Deserialize)]
pub(super) struct LiveQuery {
    #[serde(default)]
    category: String,
    #[serde(default, rename = "type")]
    event_type: String,
    from: Option<String>,
}

impl LiveQuery {
    fn filter(&self) -> Filter {
        let mut filter = Filter::all();
        if !self.category.is_empty() {
            filter.categories.push(self.category.clone());
        }
        if !self.event_type.is_empty() {
            filter.event_types.push(self.event_type.clone());
        }
        filter
    }
}

/// The feed's head: the position of its last event (one round trip).
async fn head(admin: &Admin) -> Result<Position, annals::Error> {
    Ok(admin
        .store
        .head_position()
        .await?
        .unwrap_or(Position::START))
}

pub(super) async fn page_of(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<LiveQuery>,
) -> Result<Response, PageError> {
    q.filter()
        .validate()
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    let from = head(&admin).await?;
    let content = html! {
        form action="live" method="get" {
            input name="category" value=(q.category) placeholder="category" aria-label="category";
            input name="type" value=(q.event_type) placeholder="event type" aria-label="event type";
            button { "Filter" }
        }
        p { "Feed: " span id="state" { "connecting" } " " button id="toggle" type="button" { "Pause" } }
        table id="live" data-from=(from) {
            tr { th { "Position" } th { "Stream" } th { "Version" } th { "Type" } th { "Recorded" } }
        }
        script src="assets/live.js" {}
    };
    Ok(page("Live feed", content))
}

pub(super) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("live.js"),
    )
        .into_response()
}

pub(super) async fn events(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<LiveQuery>,
) -> Result<Response, PageError> {
    let filter = q.filter();
    filter
        .validate()
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    let from = match &q.from {
        Some(text) => text
            .parse::<Position>()
            .map_err(|e| PageError::BadRequest(format!("from: {e}")))?,
        None => head(&admin).await?,
    };
    let time = admin.options.time;
    let options = annals::FeedOptions::follow(filter, Duration::from_millis(500));
    let feed = annals::Feed::new(Arc::clone(&admin.store), from, options).events();
    let stream = feed.map(move |event| {
        Ok::<_, Infallible>(match event {
            Ok(e) => Sse::default()
                .event("event")
                .id(e.position.to_string())
                .data(
                    serde_json::json!({
                        "position": e.position.to_string(),
                        "stream": e.stream.as_str(),
                        "version": e.stream_version,
                        "type": e.event_type,
                        "recorded": time(e.recorded_at),
                    })
                    .to_string(),
                ),
            Err(e) => Sse::default().event("failure").data(e.to_string()),
        })
    });
    Ok(SseResponse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

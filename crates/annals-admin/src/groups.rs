//! Consumer groups: each checkpoint with its lag (events after it, and how long the oldest
//! of them has waited), and the parked streams with their errors and the actions that
//! replay or skip them (see [`models`] for what actions need).

use axum::extract::State;
use axum::response::Response;
use maud::html;

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
            tr { th { "Group" } th { "Source" } th { "Position" } th { "Behind (events)" } th { "Behind (time)" } @if actions { th { "Move (its pipeline stopped)" } } }
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
                    @if actions {
                        td {
                            form.action method="post" action="checkpoint" {
                                input type="hidden" name="group" value=(c.group);
                                input type="hidden" name="source" value=(c.source);
                                input name="position" value=(c.position) aria-label="new position" size="8";
                                label { input type="checkbox" name="confirm" value="yes"; " sure" }
                                " "
                                input type="password" name="token" placeholder="admin token" aria-label="admin token";
                                " "
                                button { "Set" }
                            }
                        }
                    }
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
                                @let fields = [("group", p.group.as_str()), ("stream", p.stream.as_str())];
                                (models::action_form("replay", "Replay", &fields))
                                (models::action_form("skip", "Skip", &fields))
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
    scan_from(admin, position, |e| {
        oldest.get_or_insert(e.recorded_at);
        events += 1;
        true
    })
    .await?;
    Ok((events, oldest))
}

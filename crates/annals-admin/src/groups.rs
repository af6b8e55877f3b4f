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
    // Members and their partitions, per group (where the store keeps leases).
    let mut members = Vec::new();
    if let Some(leases) = &admin.options.leases {
        let mut groups: Vec<&str> = list.iter().map(|c| c.group.as_str()).collect();
        groups.dedup();
        for group in groups {
            for m in leases.members(group).await? {
                members.push((group.to_owned(), m));
            }
        }
    }
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
        h2 { "Members" }
        @if admin.options.leases.is_none() {
            p.muted { "This store keeps no leases: each group runs in one process." }
        } @else if members.is_empty() {
            p id="no-members" { "No live members (a group running in one process without leases has none)." }
        } @else {
            table id="members" {
                tr { th { "Group" } th { "Member" } th { "Partitions held" } }
                @for (group, m) in &members {
                    tr {
                        td { (group) }
                        td.member { (m.member) }
                        td.partitions { (m.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
        @if !admin.options.pipelines.is_empty() {
            h2 { "Running in this process" }
            @for running in &admin.options.pipelines {
                @let stats = running.stats.borrow().clone();
                table.running {
                    tr { th { "Group" } td.group { (running.group) } }
                    tr { th { "Events read, not handled yet" } td { (stats.events_behind) } }
                    tr { th { "Oldest of them waited" } td { @match stats.behind {
                        Some(d) => { (format!("{:.1} s", d.as_secs_f64())) },
                        None => { "-" },
                    } } }
                    tr { th { "Stalled streams (waiting for more events)" } td.stalled { (stats.stalled) } }
                    tr { th { "State" } td { @match &stats.stopped {
                        Some(e) => span.error { "stopped: " (e) },
                        None => { @if stats.idle { "idle" } @else { "working" } },
                    } } }
                }
                @if stats.failing.is_empty() {
                    p.no-failing { "No failing streams." }
                } @else {
                    table.failing {
                        tr { th { "Failing stream" } th { "Failures in a row" } th { "Last error" } }
                        @for f in stats.failing.iter() {
                            tr {
                                td { a href=(stream_link(&f.stream)) { (f.stream) } }
                                td { (f.failures) }
                                td.error { (f.last_error) }
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

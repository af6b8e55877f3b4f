//! Write and read rates over the last minutes, for the overview's chart: a task samples the
//! feed every [`EVERY`] (events written since the last sample, by any writer) and this
//! process's store reads ([`annals::process_totals`]), and keeps the last [`KEEP`] samples.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use annals::{Filter, Position, Timestamp};
use maud::{html, Markup};

use super::Admin;

/// How often the rates are sampled.
pub(super) const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
const KEEP: usize = 180;
/// Events counted per sample at most (a burst beyond it is counted by the next samples).
const COUNT_AT_MOST: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Timestamp,
    written: u64,
    read: u64,
}

/// The samples so far, and where the next one starts.
#[derive(Debug, Default)]
pub(super) struct Rates {
    samples: VecDeque<Sample>,
    position: Option<Position>,
    read_total: u64,
}

/// Starts sampling for `admin` (when there is a Tokio runtime); stops when it is dropped.
pub(super) fn spawn(admin: &Arc<Admin>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(admin);
    runtime.spawn(run(weak));
}

async fn run(weak: Weak<Admin>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(admin) = weak.upgrade() else {
            return;
        };
        if let Err(e) = sample(&admin).await {
            tracing::debug!(error = %e, "sampling the rates failed");
        }
    }
}

async fn sample(admin: &Admin) -> annals::Result<()> {
    let (position, read_total) = {
        let rates = lock(&admin.rates);
        (rates.position, rates.read_total)
    };
    let read_now = annals::process_totals().0;
    let Some(mut from) = position else {
        // The first tick finds where to count from.
        let head = admin
            .store
            .head_position()
            .await?
            .unwrap_or(Position::START);
        let mut rates = lock(&admin.rates);
        rates.position = Some(head);
        rates.read_total = read_now;
        return Ok(());
    };
    let mut written = 0u64;
    while (written as usize) < COUNT_AT_MOST {
        let page = admin.store.read_all(from, &Filter::all(), 1_000).await?;
        written += page.events.len() as u64;
        if page.events.is_empty() || page.next == from {
            break;
        }
        from = page.next;
    }
    let mut rates = lock(&admin.rates);
    rates.position = Some(from);
    rates.read_total = read_now;
    rates.samples.push_back(Sample {
        at: Timestamp::now(),
        written,
        read: read_now.saturating_sub(read_total),
    });
    while rates.samples.len() > KEEP {
        rates.samples.pop_front();
    }
    Ok(())
}

fn lock(rates: &Mutex<Rates>) -> std::sync::MutexGuard<'_, Rates> {
    rates.lock().unwrap_or_else(|p| p.into_inner())
}

/// The chart: events written and read per second, one point per sample.
pub(super) fn chart(admin: &Admin) -> Markup {
    let samples: Vec<Sample> = lock(&admin.rates).samples.iter().copied().collect();
    let per_second = |n: u64| n as f64 / EVERY.as_secs_f64();
    let last = samples.last().copied();
    let top = samples
        .iter()
        .map(|s| per_second(s.written.max(s.read)))
        .fold(1.0f64, f64::max);
    let (width, height) = (600.0, 120.0);
    let step = width / (KEEP - 1) as f64;
    let line = |value: fn(&Sample) -> u64| -> String {
        let start = KEEP - samples.len();
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let x = (start + i) as f64 * step;
                let y = height - per_second(value(s)) / top * height;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        h2 { "Rates, last 15 minutes" }
        @match last {
            None => p.muted id="rates-none" { "Sampling every " (EVERY.as_secs()) " s since the page server started: the first figures come shortly." },
            Some(last) => {
                p id="rates" {
                    "Written: " span id="written-rate" { (format!("{:.1}", per_second(last.written))) } " events/s (all writers) · "
                    "read: " span id="read-rate" { (format!("{:.1}", per_second(last.read))) } " events/s (by this process, these pages included) · "
                    "scale: " (format!("{top:.1}")) " events/s · as of " ((admin.options.time)(last.at))
                }
                svg id="rates-chart" width="600" height="120" viewBox="0 0 600 120" role="img" aria-label="events written and read per second" {
                    rect x="0" y="0" width="600" height="120" fill="#f6f6f6" {}
                    polyline points=(line(|s| s.written)) fill="none" stroke="#1565c0" stroke-width="2" {}
                    polyline points=(line(|s| s.read)) fill="none" stroke="#2e7d32" stroke-width="2" stroke-dasharray="4 3" {}
                }
                p.muted {
                    "Blue: written. Green, dashed: read. In all "
                    span id="written-total" { (samples.iter().map(|s| s.written).sum::<u64>()) }
                    " events written and "
                    span id="read-total" { (samples.iter().map(|s| s.read).sum::<u64>()) }
                    " read over " (samples.len() as u64 * EVERY.as_secs()) " s."
                }
            }
        }
    }
}

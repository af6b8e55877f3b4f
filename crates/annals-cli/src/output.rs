//! How commands print: aligned tables for people, JSON lines with `--json`, a progress bar
//! on stderr for anything that runs longer than a second.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON lines instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints one JSON value on its own line.
    pub fn line(&self, value: &serde_json::Value) {
        println!("{value}");
    }

    /// Prints rows under headers, columns aligned (no borders, two spaces between columns).
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut table = comfy_table::Table::new();
        table
            .load_preset(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(headers.iter().copied());
        for row in rows {
            table.add_row(row.iter().map(String::as_str));
        }
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        for line in table.lines() {
            println!("{}", line.trim_end());
        }
    }
}

/// A progress bar on stderr that appears only once the work has run for a second (and only
/// on a terminal); `len` when the total is known.
pub fn progress(len: Option<u64>, message: &'static str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
    };
    let style = match len {
        Some(_) => "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        None => "{spinner} {msg}: {pos} events ({per_sec}, {elapsed})",
    };
    if let Ok(style) = ProgressStyle::with_template(style) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    let shown = bar.downgrade();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(bar) = shown.upgrade() {
            if !bar.is_finished() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
        }
    });
    bar
}

/// `url` without its password, for messages and checkpoint names.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

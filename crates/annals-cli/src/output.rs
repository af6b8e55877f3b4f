//! How commands print: aligned tables for people, JSON lines with `--json`, a progress bar
//! on stderr for anything that runs longer than a second.

use std::time::Duration;

use annals::RecordedEvent;
use serde_json::value::RawValue;
use serde_json::Value;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// JSON lines instead of tables.
    pub json: bool,
}

/// Stdout did not take a line: its reader went away (`annals dump | head`), which ends the
/// command quietly, as it ends other Unix tools, or the write failed (a full disk). Either
/// ends the command the way errors do, so what it opened is closed on the way out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unwritten {
    /// The reader went away.
    #[error("stdout was closed")]
    Closed,
    /// Another failure to write.
    #[error("writing to stdout: {0}")]
    Failed(std::io::Error),
}

/// Prints one line on stdout. Never a panic. Use it through the `say!` macro, which
/// returns the error from the calling function.
pub(crate) fn say(line: std::fmt::Arguments<'_>) -> Result<(), Unwritten> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Unwritten::Closed,
        _ => Unwritten::Failed(e),
    })
}

impl Output {
    /// Prints one JSON value on its own line.
    pub(crate) fn line(&self, value: &(impl serde::Serialize + ?Sized)) -> Result<(), Unwritten> {
        let text = serde_json::to_string(value).map_err(|e| Unwritten::Failed(e.into()))?;
        say!("{text}");
        Ok(())
    }

    /// Prints rows under headers, columns aligned (no borders, two spaces between columns).
    pub(crate) fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> Result<(), Unwritten> {
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
            say!("{}", line.trim_end());
        }
        Ok(())
    }
}

/// A progress bar on stderr that appears only once the work has run for a second (and only
/// on a terminal); `len` when the total is known.
pub(crate) fn progress(len: Option<u64>, message: &'static str) -> ProgressBar {
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

/// A body as JSON when it is JSON (its own text, numbers and key order as stored, on one
/// line), otherwise as a string, with how to read it: its text when it is UTF-8
/// (`"text"`), its bytes in base64 when not (`"base64"`); so a dump loses nothing, and a
/// text body tells from a JSON string.
fn body(bytes: &[u8]) -> (Box<RawValue>, Option<&'static str>) {
    use base64::Engine;
    let string = |text: &str| {
        RawValue::from_string(Value::String(text.to_owned()).to_string())
            .expect("a JSON string is JSON")
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => (
                RawValue::from_string(annals_admin::json::one_line(raw.get()))
                    .expect("JSON without its blanks"),
                None,
            ),
            Err(_) => (string(text), Some("text")),
        },
        Err(_) => (
            string(&base64::engine::general_purpose::STANDARD.encode(bytes)),
            Some("base64"),
        ),
    }
}

/// A timestamp in RFC 3339 (UTC, microseconds) when it is within years 1970-9999, which
/// RFC 3339 can write; any other stored value (a clock gone wrong, a foreign writer) is
/// reported as its microseconds, never a panic.
pub(crate) fn time(t: annals::Timestamp) -> String {
    /// 10000-01-01T00:00:00Z, in microseconds since 1970.
    const YEAR_10000: i64 = 253_402_300_800_000_000;
    let micros = t.unix_micros();
    match u64::try_from(micros) {
        Ok(m) if micros < YEAR_10000 => {
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(m))
                .to_string()
        }
        Ok(_) => format!("{micros} µs after 1970 (past year 9999)"),
        Err(_) => format!("{} µs before 1970", micros.unsigned_abs()),
    }
}

/// An event as one JSON object (what `dump`, `read --json` and `tail --json` write). A body
/// that is not JSON is written as a string, with `"data_encoding"` (or
/// `"metadata_encoding"`) beside it: `"text"` (its UTF-8 text) or `"base64"` (its bytes).
pub(crate) fn event_json(e: &RecordedEvent) -> EventJson {
    let (data, data_encoding) = body(&e.data);
    let (metadata, metadata_encoding) = match e.metadata.as_deref().map(body) {
        Some((value, encoding)) => (Some(value), encoding),
        None => (None, None),
    };
    EventJson {
        causation_id: e.causation_id.map(|u| u.to_string()),
        correlation_id: e.correlation_id.map(|u| u.to_string()),
        data,
        data_encoding,
        id: e.event_id.to_string(),
        metadata,
        metadata_encoding,
        position: e.position.to_string(),
        recorded_at: time(e.recorded_at),
        stream: e.stream.as_str().to_owned(),
        r#type: e.event_type.clone(),
        version: e.stream_version,
    }
}

/// An event as `event_json` writes it (fields in name order).
#[derive(Debug, serde::Serialize)]
pub(crate) struct EventJson {
    causation_id: Option<String>,
    correlation_id: Option<String>,
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_encoding: Option<&'static str>,
    id: String,
    metadata: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_encoding: Option<&'static str>,
    position: String,
    recorded_at: String,
    stream: String,
    r#type: String,
    version: u64,
}

/// An event as a table row. Its body's control characters (a terminal's escape sequences
/// among them) are shown escaped, never sent to the terminal; a body that is not UTF-8 is
/// shown by its size.
pub(crate) fn event_row(e: &RecordedEvent) -> Vec<String> {
    let mut data = match std::str::from_utf8(&e.data) {
        Ok(text) => text
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect(),
        Err(_) => format!("({} bytes, not UTF-8)", e.data.len()),
    };
    if data.chars().count() > 60 {
        data = data.chars().take(57).collect::<String>() + "...";
    }
    vec![
        e.stream.to_string(),
        e.stream_version.to_string(),
        e.position.to_string(),
        time(e.recorded_at),
        e.event_type.clone(),
        data,
    ]
}

pub(crate) const EVENT_HEADERS: [&str; 6] = [
    "stream",
    "version",
    "position",
    "recorded at",
    "type",
    "data",
];

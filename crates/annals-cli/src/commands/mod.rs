//! The operating commands, one module each. Human-readable tables by default, JSON lines
//! with `--json`. (The load tests are apart, in `bench`.)

pub(crate) mod admin;
pub(crate) mod append;
pub(crate) mod checkpoint;
pub(crate) mod delete;
pub(crate) mod dump;
pub(crate) mod forget;
pub(crate) mod init;
pub(crate) mod parked;
pub(crate) mod read;
pub(crate) mod rebuild;
pub(crate) mod retention;
pub(crate) mod serve;
pub(crate) mod stats;
pub(crate) mod sync;
pub(crate) mod tail;

use annals::{ExpectedVersion, Filter, Position, StreamName, Version};
use anyhow::Context;

use crate::store_url::ReadModelDb;

/// Events per read-all page for `dump`, `stats` and `sync`.
pub(crate) const PAGE: usize = 1000;

/// An expected version: a number, `any`, `no-stream` or `exists`.
pub(crate) fn expected(text: &str) -> anyhow::Result<ExpectedVersion> {
    Ok(match text {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "exists" => ExpectedVersion::StreamExists,
        n => ExpectedVersion::Exact(Version(n.parse().with_context(|| {
            format!("invalid --expected {n:?}: a version number, any, no-stream or exists")
        })?)),
    })
}

pub(crate) fn stream_name(text: &str) -> anyhow::Result<StreamName> {
    StreamName::new(text).with_context(|| format!("invalid stream name {text:?}"))
}

pub(crate) fn position(text: &str) -> anyhow::Result<Position> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("invalid position {text:?}: {e}"))
}

/// A JSON argument, checked before anything is written, and kept as written (only the
/// whitespace around it dropped): parsed into numbers and out again, a large integer or a
/// long decimal would come out changed, and key order with it.
pub(crate) fn json_arg(flag: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| anyhow::anyhow!("malformed JSON in {flag}: {e}"))?;
    Ok(text.trim().as_bytes().to_vec())
}

/// A filter of the given categories and event types (all when none), validated.
pub(crate) fn filter(categories: &[String], event_types: &[String]) -> anyhow::Result<Filter> {
    let filter = Filter {
        categories: categories.to_vec(),
        event_types: event_types.to_vec(),
        ..Filter::default()
    };
    filter.validate()?;
    Ok(filter)
}

/// The read-model database, or why there is none.
pub(crate) fn needs_read_model(read_model: Option<&ReadModelDb>) -> anyhow::Result<&ReadModelDb> {
    read_model.context(
        "read models are kept in SQL databases: memory:// has none; name one with --read-model sqlite://PATH or postgres://...",
    )
}

//! Telling a retry of an earlier append from a conflict, for store implementations.
//!
//! Every store answers an append whose event ids are already recorded the same way; this
//! module is that rule, so backends only fetch the facts.

use crate::error::{Error, Result};
use crate::store::AppendResult;
use crate::{EventData, ExpectedVersion, Position, StreamName, Version};

/// Where one event id of the batch is already recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its stream.
    pub stream: StreamName,
    /// Its index in that stream.
    pub stream_version: u64,
    /// The stream version at which the append that wrote it began.
    pub batch_start: u64,
    /// Its position.
    pub position: Position,
}

/// What to do with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing of it is recorded and the expected version holds: write it.
    Write,
    /// It is an exact retry of an earlier append: answer with the original result.
    AlreadyWritten(AppendResult),
}

/// Decides what an append of `events` to `stream` at `expected` must do, given the
/// stream's `actual` version and, per event in order, where its id is already recorded
/// (`found[i]` for `events[i]`). `batch_start_of(v)` gives the `batch_start` of the event at
/// index `v` of `stream`, if there is one; it is only called when every id is found.
pub fn check(
    stream: &StreamName,
    expected: ExpectedVersion,
    actual: Version,
    events: &[EventData],
    found: &[Option<Found>],
    batch_start_of: impl FnOnce(u64) -> Result<Option<u64>>,
) -> Result<Verdict> {
    debug_assert_eq!(events.len(), found.len());
    let conflict = || Error::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    };
    let recorded = || {
        events
            .iter()
            .zip(found)
            .filter_map(|(e, f)| Some((e, f.as_ref()?)))
    };
    if let Some((event, other)) = recorded().find(|(_, f)| &f.stream != stream) {
        return Err(Error::DuplicateEventId {
            event_id: event.event_id,
            existing_stream: other.stream.clone(),
        });
    }
    let Some((first_event, first)) = recorded().next() else {
        return if expected.admits(actual) {
            Ok(Verdict::Write)
        } else {
            Err(conflict())
        };
    };
    let partial = || Error::PartialRetry {
        stream: stream.clone(),
        event_id: first_event.event_id,
        stream_version: first.stream_version,
    };
    let all: Option<Vec<&Found>> = found.iter().map(Option::as_ref).collect();
    let Some(all) = all else {
        return Err(partial());
    };
    let start = all[0].stream_version;
    let contiguous = all
        .iter()
        .enumerate()
        .all(|(i, f)| f.stream_version == start + i as u64 && f.batch_start == start);
    let end = start + all.len() as u64;
    if !contiguous || batch_start_of(end)? == Some(start) {
        return Err(partial());
    }
    if !expected.admits(Version(start)) {
        return Err(conflict());
    }
    Ok(Verdict::AlreadyWritten(AppendResult {
        version: Version(end),
        first_position: all[0].position,
        last_position: all[all.len() - 1].position,
    }))
}

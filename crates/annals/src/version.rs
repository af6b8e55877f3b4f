//! Versions (event counts), expected versions, global positions and timestamps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The number of events in a stream: an empty stream has version 0, and the event at
/// stream index `n` is followed by version `n + 1`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream with no events.
    pub const EMPTY: Version = Version(0);

    /// The version as a plain count.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The condition an append puts on the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must have exactly this many events.
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn admits(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == Version::EMPTY,
            ExpectedVersion::StreamExists => actual > Version::EMPTY,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl From<Version> for ExpectedVersion {
    fn from(v: Version) -> Self {
        ExpectedVersion::Exact(v)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// A position in the store-wide order of events.
///
/// Opaque to users: compare positions, store them as checkpoints (`Display`/`FromStr` give a
/// stable text form) and resume from them. Positions need not be dense. [`Position::START`]
/// is before every event; reading "from" a position returns the events strictly after it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(u128);

impl Position {
    /// Before every event.
    pub const START: Position = Position(0);

    /// Builds a position from a backend's raw value. For store implementations.
    pub(crate) const fn from_raw(raw: u128) -> Self {
        Position(raw)
    }

    /// The backend's raw value. For store implementations.
    pub(crate) const fn raw(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The text of a position did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected a non-negative integer")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u128>()
            .map(Position)
            .map_err(|_| ParsePositionError(s.to_owned()))
    }
}

/// A point in time with microsecond precision, as recorded by a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// From microseconds since the Unix epoch.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let d = std::time::Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            std::time::UNIX_EPOCH + d
        } else {
            std::time::UNIX_EPOCH - d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_admits() {
        use ExpectedVersion::*;
        let (zero, two) = (Version(0), Version(2));
        assert!(Any.admits(zero) && Any.admits(two));
        assert!(NoStream.admits(zero) && !NoStream.admits(two));
        assert!(!StreamExists.admits(zero) && StreamExists.admits(two));
        assert!(Exact(two).admits(two) && !Exact(two).admits(zero));
    }

    #[test]
    fn position_round_trips_as_text() {
        let p = Position::from_raw(u128::from(u64::MAX) + 7);
        assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        assert!("x".parse::<Position>().is_err());
        assert!(Position::START < Position::from_raw(1));
    }
}

//! How to open a SQLite store: a file path and a few tuning knobs, or a `sqlite://` URL.

use std::path::PathBuf;
use std::time::Duration;

use crate::OpenError;

/// SQLite's `synchronous` setting for the store's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is durable when `append` returns (the default).
    #[default]
    Full,
    /// Commits survive a process crash but the last ones may be lost on power failure;
    /// faster. Only when asked for explicitly.
    Normal,
}

impl Synchronous {
    /// The value of `PRAGMA synchronous`.
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Options of a SQLite store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How many read-only connections serve reads at once.
    pub readers: usize,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// The largest event accepted (data plus metadata, in bytes).
    pub max_event_bytes: usize,
    /// The most queued requests the writer commits in one transaction.
    pub max_group: usize,
    /// How long the writer may wait for a group to grow to the size of the previous one
    /// (zero: commit whatever is queued at once).
    pub group_linger: Duration,
    /// WAL size in pages at which a commit also checkpoints (`PRAGMA wal_autocheckpoint`).
    /// Larger values copy pages that many commits touch (index leaves) back to the
    /// database less often, at the cost of a larger WAL file.
    pub wal_autocheckpoint: u32,
}

impl SqliteConfig {
    /// Defaults for the file at `path`: `synchronous=FULL`, 4 readers, a 5 s busy timeout,
    /// 1 MiB events, groups of up to 512 requests, lingering up to 500 µs for a group to
    /// grow to the size of the previous one, checkpointing the WAL every 4096 pages (16 MiB).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            max_event_bytes: annals::DEFAULT_MAX_EVENT_BYTES,
            max_group: 512,
            group_linger: Duration::from_micros(500),
            wal_autocheckpoint: 4096,
        }
    }

    /// Sets `synchronous`.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets the number of read connections (at least one).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Sets the largest event accepted.
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Parses `sqlite://PATH[?synchronous=full|normal&readers=N]`. `sqlite://annals.db` is
    /// relative to the current directory, `sqlite:///var/lib/annals.db` absolute.
    pub fn from_url(url: &str) -> Result<Self, OpenError> {
        let invalid = |reason: String| OpenError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| invalid("expected sqlite://PATH".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(invalid("the path is empty: use sqlite://annals.db".into()));
        }
        let mut config = Self::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
            match (key, value.to_ascii_lowercase().as_str()) {
                ("synchronous", "full") => config.synchronous = Synchronous::Full,
                ("synchronous", "normal") => config.synchronous = Synchronous::Normal,
                ("synchronous", other) => {
                    return Err(invalid(format!("synchronous={other}: use full or normal")))
                }
                ("readers", n) => {
                    let n: usize = n
                        .parse()
                        .map_err(|_| invalid(format!("readers={n}: expected a number")))?;
                    config = config.readers(n);
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "unknown option {other:?}: known options are synchronous and readers"
                    )))
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = SqliteConfig::from_url("sqlite://annals.db").unwrap();
        assert_eq!(
            (c.path, c.synchronous),
            (PathBuf::from("annals.db"), Synchronous::Full)
        );
        let c = SqliteConfig::from_url("sqlite:///tmp/x.db?synchronous=NORMAL&readers=2").unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x.db"));
        assert_eq!((c.synchronous, c.readers), (Synchronous::Normal, 2));
        for bad in [
            "sqlite://",
            "postgres://x",
            "sqlite://a.db?synchronous=off",
            "sqlite://a.db?x=1",
            "sqlite://a.db?readers",
        ] {
            assert!(
                matches!(
                    SqliteConfig::from_url(bad),
                    Err(OpenError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }
}

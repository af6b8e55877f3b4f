//! How to open a SQLite store: a file path and a few tuning knobs.

use std::path::PathBuf;
use std::time::Duration;

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
    /// (zero: commit whatever is queued at once). While it waits, every caller in the group
    /// waits: the default is short, since requests queue up anyway during each commit.
    pub group_linger: Duration,
    /// WAL size in pages at which a commit also checkpoints (`PRAGMA wal_autocheckpoint`).
    /// Larger values copy pages that many commits touch (index leaves) back to the
    /// database less often, at the cost of a larger WAL file.
    pub wal_autocheckpoint: u32,
    /// The most bytes the database file may hold (`PRAGMA max_page_count` on the write
    /// connection; a file already larger keeps its size as the bound). A write that would
    /// grow it further fails as on a full disk: a transient "database or disk is full"
    /// error, nothing of it written. `None` (the default): only the disk bounds it.
    pub max_bytes: Option<u64>,
    /// Open the file for reading only (see [`SqliteConfig::read_only`]).
    pub read_only: bool,
}

impl SqliteConfig {
    /// Defaults for the file at `path`: `synchronous=FULL`, one reader per core (4 to 16:
    /// reads run at most that many at once), a 5 s busy timeout,
    /// 1 MiB events, groups of up to 512 requests, lingering up to 100 µs for a group to
    /// grow to the size of the previous one, checkpointing the WAL every 4096 pages (16 MiB).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .clamp(4, 16),
            busy_timeout: Duration::from_secs(5),
            max_event_bytes: annals::DEFAULT_MAX_EVENT_BYTES,
            max_group: 512,
            group_linger: Duration::from_micros(100),
            wal_autocheckpoint: 4096,
            max_bytes: None,
            read_only: false,
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

    /// Opens the file for reading only: a backup on a read-only mount, another user's
    /// file, a store this process must not change. The file must exist and be an Annals
    /// store at this build's schema (a read-only open creates and migrates nothing); no
    /// writer thread runs and nothing is written to it. Every write fails with
    /// [`annals::Error::ReadOnly`]. A file in a directory this process cannot write, and
    /// which no process has open (SQLite could not make its shared-memory file), is read
    /// as immutable: as it was when opened.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Sets the most bytes the database file may hold (see [`SqliteConfig::max_bytes`]).
    pub fn max_bytes(mut self, limit: u64) -> Self {
        self.max_bytes = Some(limit);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_builders() {
        let c = SqliteConfig::new("annals.db")
            .synchronous(Synchronous::Normal)
            .readers(0);
        assert_eq!(
            (c.path, c.synchronous, c.readers),
            (PathBuf::from("annals.db"), Synchronous::Normal, 1)
        );
        assert_eq!(Synchronous::default().pragma(), "FULL");
        // One reader per core, 4 to 16.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(SqliteConfig::new("annals.db").readers, cores.clamp(4, 16));
    }
}

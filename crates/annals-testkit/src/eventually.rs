//! Waiting for state that another process or a cluster changes without a signal to wait on
//! (a server electing a leader, a child process's writes): ask again, with the workspace's
//! one retry policy ([`annals::Backoff`], on `backon`), until the answer comes or a deadline
//! passes. Tests use these instead of sleeping: they never assume a pause was long enough.

use std::future::Future;
use std::time::{Duration, Instant};

/// The delays between looks: short, growing to half a second.
fn policy() -> annals::Backoff {
    annals::Backoff::new(Duration::from_millis(10), Duration::from_millis(500))
}

/// Calls `look` until it answers `Some`, for at most `within`; panics naming `what` then.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut delays = policy().delays();
    loop {
        if let Some(found) = look().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(delays.next().unwrap_or(policy().max)).await;
    }
}

/// As [`eventually`], for a condition looked at from blocking code.
pub fn eventually_blocking(what: &str, within: Duration, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut delays = policy().delays();
    while !holds() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(delays.next().unwrap_or(policy().max));
    }
}

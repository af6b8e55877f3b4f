//! Test support for Annals.
//!
//! - [`conformance`]: the suite every store must pass, as plain async functions, and
//!   [`conformance_suite!`] which stamps out one named test per function for a store factory.
//! - [`given`]: a given/when/then harness for pure deciders, needing no store.
//! - [`metrics`]: a process-wide recorder of what the runtime's metrics received.

pub mod access;
pub mod conformance;
mod eventually;
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod read_models;
mod scenario;
#[cfg(feature = "tls")]
pub mod tls;

pub use eventually::{eventually, eventually_blocking};

/// A free loopback port for a throwaway server (PostgreSQL, NATS), below the kernel's
/// ephemeral range: a server that tests kill and start again rebinds its ports, and a port
/// from the ephemeral range may meanwhile be the local end of any client's connection (a
/// restarted node that cannot bind its route port leaves its cluster one node short). Never
/// the same port twice in one process.
#[cfg(any(feature = "postgres", feature = "nats"))]
fn free_loopback_port() -> Result<u16, String> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // The ephemeral range starts at 32768 unless the machine says otherwise.
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral > 12_000 {
        (10_000, ephemeral)
    } else {
        (61_000, 65_535)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // Start at a place of this process's own, so concurrent test binaries rarely meet.
    let span = u32::from(high - low);
    let start = (std::process::id().wrapping_mul(7919)) % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(format!("no free loopback port in {low}..{high}"))
}

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

pub use annals;
pub use scenario::{given, Given, Outcome, When};

/// A store under test plus whatever must live as long as the test (a temporary directory,
/// a server handle...).
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn annals::EventStore>,
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl TestStore {
    /// A store that needs nothing kept alive.
    pub fn new(store: Arc<dyn annals::EventStore>) -> Self {
        Self {
            store,
            _guard: None,
        }
    }

    /// A store that needs `guard` kept alive until the test ends.
    pub fn with_guard(store: Arc<dyn annals::EventStore>, guard: impl Any + Send + Sync) -> Self {
        Self {
            store,
            _guard: Some(Box::new(guard)),
        }
    }
}

/// Stamps out the checkpoint-store tests for the store made by `$factory`, an
/// `async fn() -> Arc<dyn CheckpointStore>` (or a closure returning such a future) that
/// may hold what must live as long as the test in the returned tuple's second element.
#[macro_export]
macro_rules! checkpoint_suite {
    ($factory:expr) => {
        #[test]
        fn checkpoints_load_commit_and_list() {
            $crate::run(async {
                let (store, _guard) = ($factory)().await;
                $crate::conformance::checkpoints_load_commit_and_list(store).await;
            });
        }

        #[test]
        fn parked_streams_are_kept() {
            $crate::run(async {
                let (store, _guard) = ($factory)().await;
                $crate::read_models::parked_streams_are_kept(store).await;
            });
        }
    };
}

/// Stamps out the subject-keys test (crypto-shredding) for the key store made by
/// `$factory`, an `async fn() -> (Arc<dyn SubjectKeys>, guard)`.
#[macro_export]
macro_rules! keys_suite {
    ($factory:expr) => {
        #[test]
        fn subject_keys_create_share_and_forget() {
            $crate::run(async {
                let (keys, _guard) = ($factory)().await;
                $crate::conformance::subject_keys_create_share_and_forget(keys).await;
            });
        }
    };
}

/// Stamps out the lease test for the lease store made by `$factory`, an
/// `async fn() -> (Arc<dyn LeaseStore>, guard)` (or a closure returning such a future).
#[macro_export]
macro_rules! lease_suite {
    ($factory:expr) => {
        #[test]
        fn leases_claim_share_expire_and_release() {
            $crate::run(async {
                let (store, _guard) = ($factory)().await;
                $crate::conformance::leases_claim_share_expire_and_release(store).await;
            });
        }
    };
}

/// Runs an async test body on a fresh multi-threaded runtime (used by
/// [`conformance_suite!`], so the calling crate needs no runtime of its own).
pub fn run<F: Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
        .block_on(body)
}

/// Stamps out one `#[test]` per conformance function for the store made by `$factory`, an
/// `async fn() -> TestStore` (or a closure returning such a future).
///
/// ```text
/// annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(MemoryStore::new())) });
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            expected_versions_on_a_new_stream,
            expected_versions_on_an_existing_stream,
            concurrent_exact_appends_one_wins,
            concurrent_any_appends_all_land,
            retry_of_a_committed_append_writes_nothing,
            append_at_answers_a_conflict_with_the_events_after,
            append_at_shown_is_refused_once_the_events_folded_are_hidden,
            read_page_from_says_where_the_stream_starts,
            versions_beyond_any_stream_are_conflicts_and_past_the_end,
            partial_overlap_retry_is_refused,
            event_id_recorded_in_another_stream_is_refused,
            concurrent_appends_sharing_an_event_id_write_it_once,
            invalid_input_is_refused_and_nothing_written,
            recorded_events_keep_what_was_appended,
            read_stream_forward_backward_with_limits,
            read_stream_pages_agree_with_read_stream,
            read_all_pages_with_filters,
            head_position_is_the_last_event_of_read_all,
            subscription_sees_every_event_once_across_catch_up_and_live,
            subscription_resumes_after_a_checkpoint,
            stream_subscription_catches_up_then_follows_the_stream_alone,
            multi_stream_append_is_atomic_or_refused,
            head_snapshots_ride_with_appends,
            transactions_commit_all_or_nothing,
            opposite_order_transactions_do_not_deadlock,
            transactions_on_hidden_events_decide_again,
            import_keeps_events_and_order_and_resumes,
            import_begins_a_stream_past_its_hidden_events,
            import_begins_again_a_stream_whose_events_are_all_hidden,
            deletion_soft_hard_and_truncate,
            import_deletion_leaves_a_stream_at_its_deleted_version,
            deciders_write_on_after_events_are_hidden,
            cached_deciders_start_over_once_their_events_are_hidden,
            retention_max_count_and_age,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run(async {
                    let fixture: $crate::TestStore = ($factory)().await;
                    $crate::conformance::$name(fixture.store.clone()).await;
                });
            }
        )*
    };
}

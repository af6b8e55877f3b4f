//! The in-memory store against the conformance suite.

use std::sync::Arc;

use annals::MemoryStore;
use annals_testkit::TestStore;

mod memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(MemoryStore::new())) });
}

mod memory_checkpoints {
    use super::*;

    annals_testkit::checkpoint_suite!(|| async {
        let store: Arc<dyn annals::CheckpointStore> = Arc::new(annals::MemoryCheckpoints::new());
        (store, ())
    });
}

mod memory_leases {
    use super::*;

    annals_testkit::lease_suite!(|| async {
        let store: Arc<dyn annals::LeaseStore> = Arc::new(annals::MemoryLeases::new());
        (store, ())
    });
}

mod memory_keys {
    use super::*;

    annals_testkit::keys_suite!(|| async {
        let keys: Arc<dyn annals::SubjectKeys> = Arc::new(annals::MemoryKeys::new());
        (keys, ())
    });
}

mod instrumented_memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async {
        TestStore::new(Arc::new(annals::Instrumented::new(Arc::new(
            MemoryStore::new(),
        ))))
    });
}

mod basic_memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async {
        TestStore::new(Arc::new(annals_testkit::access::Basic(Arc::new(
            MemoryStore::new(),
        ))))
    });
}

/// A store wrapped for crypto-shredding is a store like any other: events without personal
/// fields pass through it as they are, under the same contract.
mod shredding_memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async {
        let keys: Arc<dyn annals::SubjectKeys> = Arc::new(annals::MemoryKeys::new());
        TestStore::new(Arc::new(annals::Shredding::new(
            Arc::new(MemoryStore::new()),
            keys,
        )))
    });
}

//! The in-memory store against the conformance suite.

use std::sync::Arc;

use annals::MemoryStore;
use annals_testkit::TestStore;

mod memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(MemoryStore::new())) });
}

mod instrumented_memory {
    use super::*;

    annals_testkit::conformance_suite!(|| async {
        TestStore::new(Arc::new(annals::Instrumented::new(Arc::new(
            MemoryStore::new(),
        ))))
    });
}

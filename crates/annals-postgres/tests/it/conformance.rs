//! The whole conformance suite, one schema per test.

use std::sync::Arc;

use annals_testkit::TestStore;

annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(crate::fresh().await)) });

mod checkpoints {
    use std::sync::Arc;

    annals_testkit::checkpoint_suite!(|| async {
        let store: Arc<dyn annals::CheckpointStore> = Arc::new(crate::fresh().await);
        (store, ())
    });
}

mod leases {
    use std::sync::Arc;

    annals_testkit::lease_suite!(|| async {
        let store: Arc<dyn annals::LeaseStore> = Arc::new(crate::fresh().await);
        (store, ())
    });
}

mod keys {
    use std::sync::Arc;

    annals_testkit::keys_suite!(|| async {
        let keys: Arc<dyn annals::SubjectKeys> =
            Arc::new(annals::SqlKeys::new(Arc::new(crate::fresh().await)));
        (keys, ())
    });
}

mod read_models {
    use std::sync::Arc;

    annals_testkit::read_model_suite!(|| async { (Arc::new(crate::fresh().await), ()) });
}

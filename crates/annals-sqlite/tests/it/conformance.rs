//! The whole conformance suite, one fresh database file per test.

use std::sync::Arc;

use annals_testkit::TestStore;

annals_testkit::conformance_suite!(|| async {
    let (store, dir) = crate::fresh();
    TestStore::with_guard(Arc::new(store), dir)
});

mod checkpoints {
    use std::sync::Arc;

    annals_testkit::checkpoint_suite!(|| async {
        let (store, dir) = crate::fresh();
        let store: Arc<dyn annals::CheckpointStore> = Arc::new(store);
        (store, dir)
    });
}

mod keys {
    use std::sync::Arc;

    annals_testkit::keys_suite!(|| async {
        let (store, dir) = crate::fresh();
        let keys: Arc<dyn annals::SubjectKeys> = Arc::new(annals::SqlKeys::new(Arc::new(store)));
        (keys, dir)
    });
}

mod read_models {
    use std::sync::Arc;

    annals_testkit::read_model_suite!(|| async {
        let (store, dir) = crate::fresh();
        (Arc::new(store), dir)
    });
}

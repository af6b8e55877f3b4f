//! The NATS JetStream store against the conformance suite, on a throwaway single-node server.

use std::sync::Arc;

use annals_nats::{NatsConfig, NatsStore};
use annals_testkit::{nats, TestStore};

/// A store in a fresh JetStream stream of the shared test server.
pub async fn fresh() -> NatsStore {
    let config = NatsConfig::new(&nats::shared().url).stream(nats::stream_name("t"));
    NatsStore::connect(config)
        .await
        .expect("connect to the test server")
}

annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(crate::fresh().await)) });

mod checkpoints {
    use std::sync::Arc;

    annals_testkit::checkpoint_suite!(|| async {
        let store: Arc<dyn annals::CheckpointStore> = Arc::new(crate::fresh().await);
        (store, ())
    });
}

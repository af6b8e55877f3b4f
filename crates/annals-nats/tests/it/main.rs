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

mod leases {
    use std::sync::Arc;

    annals_testkit::lease_suite!(|| async {
        let store: Arc<dyn annals::LeaseStore> = Arc::new(crate::fresh().await);
        (store, ())
    });
}

mod faults;

/// The same suite on a 3-node cluster, every store with three replicas.
mod cluster {
    use std::sync::Arc;
    use std::time::Duration;

    use annals_nats::{NatsConfig, NatsStore};
    use annals_testkit::{nats, TestStore};

    /// A store with 3 replicas in a fresh stream of the shared cluster; the cluster elects
    /// its JetStream leader after it starts, so connecting is retried until it has one.
    pub(crate) async fn fresh() -> NatsStore {
        let cluster = nats::shared_cluster();
        let config = NatsConfig::with_servers(&cluster.urls)
            .stream(nats::stream_name("r3"))
            .replicas(3);
        annals_testkit::eventually(
            "the cluster to take a stream",
            Duration::from_secs(90),
            || async { NatsStore::connect(config.clone()).await.ok() },
        )
        .await
    }

    annals_testkit::conformance_suite!(|| async { TestStore::new(Arc::new(fresh().await)) });
}

//! The PostgreSQL store against the conformance suite, and what only it has: the
//! transaction-id horizon, faults, and every query parameterised.

mod conformance;
mod horizon;
mod round_trips;
mod store;
mod tls;

use annals_postgres::{PgConfig, PgStore};
use annals_testkit::postgres;

/// A migrated store in a fresh schema of the shared test server.
pub async fn fresh() -> PgStore {
    let config = PgConfig::new(postgres::shared().connection())
        .schema(postgres::schema_name("t"))
        .pool_size(8);
    let store = PgStore::connect(config)
        .await
        .expect("connect to the test server");
    store.migrate().await.expect("migrate a fresh schema");
    store
}

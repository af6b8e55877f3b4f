//! Access strategies on the Favorites domain: over random histories, every strategy, with
//! and without a cache, and every point-in-time load equal the full fold, on the memory,
//! SQLite and PostgreSQL stores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use annals::{EventStore, JsonCodec, Timestamp};
use annals_testkit::access::{strategies_agree, Subject};
use example_favorites::{Event, Favorite, Favorites};
use proptest::prelude::*;

const SUBJECT: Subject<Favorites, JsonCodec<Event>> = Subject {
    category: "Favorites",
    codec: JsonCodec::new,
    is_origin: |_| false,
};

fn event() -> impl Strategy<Value = Event> {
    let sku = (0..6u8).prop_map(|n| format!("sku{n}"));
    prop_oneof![
        (sku.clone(), 0..1000i64).prop_map(|(sku, d)| Event::Favorited(Favorite {
            sku,
            date: Timestamp::from_unix_micros(d),
        })),
        sku.prop_map(|sku| Event::Unfavorited { sku }),
    ]
}

fn history() -> impl Strategy<Value = Vec<Vec<Event>>> {
    prop::collection::vec(prop::collection::vec(event(), 1..5), 0..12)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn id() -> String {
    format!("client{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

fn sqlite() -> Arc<dyn EventStore> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    Arc::new(
        annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(
            dir.path().join("access.db"),
        ))
        .unwrap(),
    )
}

async fn postgres() -> Arc<dyn EventStore> {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| annals_testkit::postgres::schema_name("access"));
    let store = annals_postgres::PgStore::connect(
        annals_postgres::PgConfig::new(&annals_testkit::postgres::shared().url)
            .schema(schema.clone())
            .pool_size(4),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn on_memory_every_strategy_yields_the_full_fold(batches in history()) {
        annals_testkit::run(async {
            let store: Arc<dyn EventStore> = Arc::new(annals::MemoryStore::new());
            strategies_agree(store, &SUBJECT, &id(), batches).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn on_sqlite_every_strategy_yields_the_full_fold(batches in history()) {
        annals_testkit::run(async {
            strategies_agree(sqlite(), &SUBJECT, &id(), batches).await;
        });
    }

    #[test]
    fn on_postgres_every_strategy_yields_the_full_fold(batches in history()) {
        annals_testkit::run(async {
            strategies_agree(postgres().await, &SUBJECT, &id(), batches).await;
        });
    }
}

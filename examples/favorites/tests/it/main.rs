//! Access strategies on the sample domains (Favorites, SaveForLater, Cart): over random
//! histories, every strategy, with and without a cache, and every point-in-time load equal
//! the full fold, on the memory, SQLite and PostgreSQL stores. (One test binary for the
//! three domains: each would otherwise link both SQL stores.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use annals::{EventStore, JsonCodec, Timestamp};
use annals_testkit::access::{strategies_agree, Subject};
use example_cart::{self as cart, Cart};
use example_favorites::{Event, Favorite, Favorites};
use example_save_for_later::{self as later, SaveForLater};
use proptest::prelude::*;

const FAVORITES: Subject<Favorites, JsonCodec<Event>> = Subject {
    category: "Favorites",
    codec: JsonCodec::new,
    is_origin: |_| false,
};

const SAVE_FOR_LATER: Subject<SaveForLater, JsonCodec<later::Event>> = Subject {
    category: "SavedForLater",
    codec: JsonCodec::new,
    is_origin: |e| matches!(e, later::Event::Cleared),
};

const CART: Subject<Cart, JsonCodec<cart::Event>> = Subject {
    category: "Cart",
    codec: JsonCodec::new,
    is_origin: |_| false,
};

fn sku() -> impl Strategy<Value = String> + Clone {
    (0..6u8).prop_map(|n| format!("sku{n}"))
}

fn later_event() -> impl Strategy<Value = later::Event> {
    let skus = prop::collection::vec(sku(), 1..3);
    prop_oneof![
        4 => (skus.clone(), 0..1000i64).prop_map(|(skus, d)| later::Event::Added {
            skus,
            date_saved: Timestamp::from_unix_micros(d),
        }),
        2 => skus.prop_map(|skus| later::Event::Removed { skus }),
        1 => Just(later::Event::Cleared),
    ]
}

fn cart_event() -> impl Strategy<Value = cart::Event> {
    let line = (sku(), 1..5u32).prop_map(|(sku, quantity)| cart::Line { sku, quantity });
    prop_oneof![
        line.clone().prop_map(cart::Event::ItemAdded),
        sku().prop_map(|sku| cart::Event::ItemRemoved { sku }),
        line.prop_map(cart::Event::QuantityChanged),
    ]
}

fn histories<E: std::fmt::Debug>(
    event: impl Strategy<Value = E>,
) -> impl Strategy<Value = Vec<Vec<E>>> {
    prop::collection::vec(prop::collection::vec(event, 1..5), 0..12)
}

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
        annals_postgres::PgConfig::new(annals_testkit::postgres::shared().connection())
            .schema(schema.clone())
            .pool_size(4),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

/// For one domain: 48 random histories on memory, 16 on SQLite and 16 on PostgreSQL.
macro_rules! strategies_agree_on {
    ($domain:ident, $subject:expr, $history:expr) => {
        mod $domain {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(48))]
                #[test]
                fn on_memory_every_strategy_yields_the_full_fold(batches in $history) {
                    annals_testkit::run(async {
                        let store: Arc<dyn EventStore> = Arc::new(annals::MemoryStore::new());
                        strategies_agree(store, &$subject, &id(), batches).await;
                    });
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(16))]
                #[test]
                fn on_sqlite_every_strategy_yields_the_full_fold(batches in $history) {
                    annals_testkit::run(async {
                        strategies_agree(sqlite(), &$subject, &id(), batches).await;
                    });
                }

                #[test]
                fn on_postgres_every_strategy_yields_the_full_fold(batches in $history) {
                    annals_testkit::run(async {
                        strategies_agree(postgres().await, &$subject, &id(), batches).await;
                    });
                }
            }
        }
    };
}

strategies_agree_on!(favorite_lists, FAVORITES, histories(event()));
strategies_agree_on!(saved_for_later, SAVE_FOR_LATER, histories(later_event()));
strategies_agree_on!(carts, CART, histories(cart_event()));

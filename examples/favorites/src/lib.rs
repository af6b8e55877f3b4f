//! Favorites: a client's favorited SKUs (the Equinox `Favorite` sample and load test).
//!
//! Run its tests with `cargo test -p example-favorites`; the `annals bench` command drives
//! its [`Service`] as the `favorite` scenario.

use std::sync::Arc;

use annals::{Cache, Category, Domain, EventStore, JsonCodec, Timestamp};
use serde::{Deserialize, Serialize};

/// The category of favorites streams.
pub const CATEGORY: &str = "Favorites";

/// A favorited SKU and when it was favorited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Favorite {
    /// The SKU.
    pub sku: String,
    /// When it was favorited.
    pub date: Timestamp,
}

/// What happens to a client's favorites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A SKU was favorited.
    Favorited(Favorite),
    /// A SKU was unfavorited.
    Unfavorited {
        /// The SKU.
        sku: String,
    },
}

/// The favorites domain.
#[derive(Debug)]
pub struct Favorites;

impl Domain for Favorites {
    type Event = Event;
    type State = Vec<Favorite>;

    fn initial() -> Vec<Favorite> {
        Vec::new()
    }

    fn evolve(mut state: Vec<Favorite>, event: &Event) -> Vec<Favorite> {
        match event {
            Event::Favorited(f) => {
                if !state.iter().any(|x| x.sku == f.sku) {
                    state.push(f.clone());
                }
            }
            Event::Unfavorited { sku } => state.retain(|x| &x.sku != sku),
        }
        state
    }
}

/// Favorites `skus` at `date`: an event for each SKU not already a favorite.
pub fn favorite(date: Timestamp, skus: &[String]) -> impl Fn(&Vec<Favorite>) -> Vec<Event> + '_ {
    move |state| {
        let mut events: Vec<Event> = Vec::new();
        for sku in skus {
            let known = state.iter().any(|f| &f.sku == sku)
                || events
                    .iter()
                    .any(|e| matches!(e, Event::Favorited(f) if &f.sku == sku));
            if !known {
                events.push(Event::Favorited(Favorite {
                    sku: sku.clone(),
                    date,
                }));
            }
        }
        events
    }
}

/// Unfavorites `sku`, if it is a favorite.
pub fn unfavorite(sku: &str) -> impl Fn(&Vec<Favorite>) -> Vec<Event> + '_ {
    move |state| {
        if state.iter().any(|f| f.sku == sku) {
            vec![Event::Unfavorited {
                sku: sku.to_owned(),
            }]
        } else {
            Vec::new()
        }
    }
}

/// Favorites over a store.
#[derive(Debug, Clone)]
pub struct Service {
    category: Category<Favorites>,
}

impl Service {
    /// The service over `store`, caching states in `cache` when given.
    pub fn new(store: Arc<dyn EventStore>, cache: Option<Arc<Cache>>) -> annals::Result<Self> {
        let category = Category::new(CATEGORY, store, JsonCodec::new())?.with_optional_cache(cache);
        Ok(Self { category })
    }

    /// The service over a configured category (cache, access strategy).
    pub fn of(category: Category<Favorites>) -> Self {
        Self { category }
    }

    /// Favorites `skus` for `client`.
    pub async fn favorite(&self, client: &str, skus: &[String]) -> annals::Result<()> {
        let decide = favorite(Timestamp::now(), skus);
        self.category.decider(client)?.transact(decide).await
    }

    /// Unfavorites `sku` for `client`.
    pub async fn unfavorite(&self, client: &str, sku: &str) -> annals::Result<()> {
        self.category
            .decider(client)?
            .transact(unfavorite(sku))
            .await
    }

    /// The favorites of `client`.
    pub async fn list(&self, client: &str) -> annals::Result<Vec<Favorite>> {
        self.category.decider(client)?.query(Clone::clone).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_testkit::given;
    use proptest::prelude::*;

    fn fav(sku: &str, date: i64) -> Event {
        Event::Favorited(Favorite {
            sku: sku.into(),
            date: Timestamp::from_unix_micros(date),
        })
    }

    fn skus(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn favoriting_adds_only_new_skus_once() {
        let t = Timestamp::from_unix_micros(5);
        given::<Favorites>([fav("a", 1)])
            .when(favorite(t, &skus(&["a", "b", "b", "c"])))
            .then([fav("b", 5), fav("c", 5)]);
    }

    #[test]
    fn unfavoriting_removes_only_present_skus() {
        given::<Favorites>([fav("a", 1)])
            .when(unfavorite("a"))
            .then([Event::Unfavorited { sku: "a".into() }]);
        given::<Favorites>([fav("a", 1)])
            .when(unfavorite("z"))
            .then([]);
    }

    #[tokio::test]
    async fn service_round_trips_through_a_store() {
        let store = Arc::new(annals::MemoryStore::new());
        let svc = Service::new(store.clone(), Some(Arc::new(Cache::new(10)))).unwrap();
        svc.favorite("c1", &skus(&["x", "y"])).await.unwrap();
        svc.favorite("c1", &skus(&["x"])).await.unwrap();
        svc.unfavorite("c1", "y").await.unwrap();
        let list = svc.list("c1").await.unwrap();
        assert_eq!(
            list.iter().map(|f| f.sku.as_str()).collect::<Vec<_>>(),
            ["x"]
        );
        assert_eq!(store.len(), 3);
    }

    #[derive(Debug, Clone)]
    enum Command {
        Favorite(Vec<String>),
        Unfavorite(String),
    }

    fn sku() -> impl Strategy<Value = String> {
        "[a-e]".prop_map(String::from)
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            prop::collection::vec(sku(), 0..4).prop_map(Command::Favorite),
            sku().prop_map(Command::Unfavorite),
        ]
    }

    fn decide(c: &Command, state: &Vec<Favorite>) -> Vec<Event> {
        match c {
            Command::Favorite(s) => favorite(Timestamp::from_unix_micros(9), s)(state),
            Command::Unfavorite(s) => unfavorite(s)(state),
        }
    }

    proptest! {
        #[test]
        fn deciding_the_same_command_twice_adds_nothing(history in prop::collection::vec(command(), 0..12), c in command()) {
            let mut state = Favorites::initial();
            for h in &history {
                let events = decide(h, &state);
                state = Favorites::fold(state, &events);
            }
            let events = decide(&c, &state);
            let state = Favorites::fold(state, &events);
            prop_assert_eq!(decide(&c, &state), vec![]);
        }
    }
}

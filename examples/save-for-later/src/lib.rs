//! SaveForLater: a shopper's capped list of saved SKUs (the Equinox `SaveForLater` sample).
//!
//! The list holds at most a fixed number of items; saving a SKU again with a newer date moves
//! it to the front (the newest date wins, an older date changes nothing); removing all
//! empties the list with one `Cleared` event. Run its tests with
//! `cargo test -p example-save-for-later`.

use std::sync::Arc;

use annals::{Cache, Category, DecideError, Domain, EventStore, JsonCodec, Timestamp};
use serde::{Deserialize, Serialize};

/// The category of save-for-later streams.
pub const CATEGORY: &str = "SavedForLater";

/// The default cap on saved items (as in the Equinox load test).
pub const DEFAULT_MAX_ITEMS: usize = 50;

/// A saved SKU and when it was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The SKU.
    pub sku: String,
    /// When it was (last) saved.
    pub date_saved: Timestamp,
}

/// What happens to a saved list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// SKUs saved at a date (re-saved ones move to that date).
    Added {
        /// The SKUs.
        skus: Vec<String>,
        /// When.
        date_saved: Timestamp,
    },
    /// SKUs removed.
    Removed {
        /// The SKUs.
        skus: Vec<String>,
    },
    /// Everything removed.
    Cleared,
}

/// The save-for-later domain. State: items, newest first.
#[derive(Debug)]
pub struct SaveForLater;

impl Domain for SaveForLater {
    type Event = Event;
    type State = Vec<Item>;

    fn initial() -> Vec<Item> {
        Vec::new()
    }

    fn evolve(mut state: Vec<Item>, event: &Event) -> Vec<Item> {
        match event {
            Event::Added { skus, date_saved } => {
                state.retain(|i| !skus.contains(&i.sku));
                let added = skus.iter().map(|sku| Item {
                    sku: sku.clone(),
                    date_saved: *date_saved,
                });
                let mut next: Vec<Item> = added.collect();
                next.extend(state);
                next.sort_by_key(|i| std::cmp::Reverse(i.date_saved));
                next
            }
            Event::Removed { skus } => {
                state.retain(|i| !skus.contains(&i.sku));
                state
            }
            Event::Cleared => Vec::new(),
        }
    }
}

/// Why a save was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Saving would take the list past its cap.
    #[error("the list is full ({max_items} items at most)")]
    Full {
        /// The cap.
        max_items: usize,
    },
}

/// Saves `skus` at `date`: SKUs not saved yet, or saved at an older date. Refused when the
/// list would exceed `max_items`.
pub fn add(
    date: Timestamp,
    skus: &[String],
    max_items: usize,
) -> impl Fn(&Vec<Item>) -> Result<Vec<Event>, Refused> + '_ {
    move |state| {
        let mut fresh: Vec<String> = Vec::new();
        for sku in skus {
            let newer = match state.iter().find(|i| &i.sku == sku) {
                Some(i) => i.date_saved < date,
                None => true,
            };
            if newer && !fresh.contains(sku) {
                fresh.push(sku.clone());
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let new_count = fresh
            .iter()
            .filter(|s| !state.iter().any(|i| &&i.sku == s))
            .count();
        if state.len() + new_count > max_items {
            return Err(Refused::Full { max_items });
        }
        Ok(vec![Event::Added {
            skus: fresh,
            date_saved: date,
        }])
    }
}

/// Removes the `skus` that are saved.
pub fn remove(skus: &[String]) -> impl Fn(&Vec<Item>) -> Vec<Event> + '_ {
    move |state| {
        let mut present: Vec<String> = skus
            .iter()
            .filter(|s| state.iter().any(|i| &&i.sku == s))
            .cloned()
            .collect();
        present.dedup();
        if present.is_empty() {
            Vec::new()
        } else {
            vec![Event::Removed { skus: present }]
        }
    }
}

/// Removes everything (one event, when there is anything).
pub fn remove_all() -> impl Fn(&Vec<Item>) -> Vec<Event> {
    |state| {
        if state.is_empty() {
            Vec::new()
        } else {
            vec![Event::Cleared]
        }
    }
}

/// Save-for-later lists over a store.
#[derive(Debug, Clone)]
pub struct Service {
    category: Category<SaveForLater>,
    max_items: usize,
}

impl Service {
    /// The service over `store`, capping lists at `max_items`.
    pub fn new(
        store: Arc<dyn EventStore>,
        cache: Option<Arc<Cache>>,
        max_items: usize,
    ) -> annals::Result<Self> {
        let category = Category::new(CATEGORY, store, JsonCodec::new())?.with_optional_cache(cache);
        Ok(Self::of(category, max_items))
    }

    /// The service over a configured category (cache, access strategy).
    pub fn of(category: Category<SaveForLater>, max_items: usize) -> Self {
        Self {
            category,
            max_items,
        }
    }

    /// Saves `skus`; [`DecideError::Domain`] with [`Refused::Full`] (nothing written) when
    /// the list has no room for them.
    pub async fn save(&self, client: &str, skus: &[String]) -> Result<(), DecideError<Refused>> {
        let decide = add(Timestamp::now(), skus, self.max_items);
        self.category.decider(client)?.try_transact(decide).await
    }

    /// Removes `skus`.
    pub async fn remove(&self, client: &str, skus: &[String]) -> annals::Result<()> {
        self.category.decider(client)?.transact(remove(skus)).await
    }

    /// Removes everything.
    pub async fn remove_all(&self, client: &str) -> annals::Result<()> {
        self.category.decider(client)?.transact(remove_all()).await
    }

    /// The saved items, newest first.
    pub async fn list(&self, client: &str) -> annals::Result<Vec<Item>> {
        self.category.decider(client)?.query(Clone::clone).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_testkit::given;
    use proptest::prelude::*;

    fn t(n: i64) -> Timestamp {
        Timestamp::from_unix_micros(n)
    }

    fn skus(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    fn added(s: &[&str], date: i64) -> Event {
        Event::Added {
            skus: skus(s),
            date_saved: t(date),
        }
    }

    #[test]
    fn newest_date_wins() {
        let history = [added(&["a", "b"], 5)];
        given::<SaveForLater>(history.clone())
            .when(add(t(3), &skus(&["a", "c"]), 10))
            .then([added(&["c"], 3)]);
        let state = given::<SaveForLater>(history)
            .when(add(t(9), &skus(&["a"]), 10))
            .then([added(&["a"], 9)]);
        assert_eq!(
            state[0],
            Item {
                sku: "a".into(),
                date_saved: t(9)
            }
        );
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn the_list_is_capped() {
        given::<SaveForLater>([added(&["a", "b"], 1)])
            .when(add(t(2), &skus(&["c", "d"]), 3))
            .then_err(Refused::Full { max_items: 3 });
        // Re-saving an existing item does not grow the list, so it fits.
        given::<SaveForLater>([added(&["a", "b", "c"], 1)])
            .when(add(t(2), &skus(&["a"]), 3))
            .then([added(&["a"], 2)]);
    }

    #[test]
    fn remove_and_remove_all() {
        given::<SaveForLater>([added(&["a", "b"], 1)])
            .when(remove(&skus(&["b", "z"])))
            .then([Event::Removed { skus: skus(&["b"]) }]);
        let state = given::<SaveForLater>([added(&["a", "b"], 1)])
            .when(remove_all())
            .then([Event::Cleared]);
        assert!(state.is_empty());
        given::<SaveForLater>([]).when(remove_all()).then([]);
    }

    #[tokio::test]
    async fn service_reports_a_full_list_without_writing() {
        let store = Arc::new(annals::MemoryStore::new());
        let svc = Service::new(store.clone(), None, 2).unwrap();
        svc.save("s", &skus(&["a", "b"])).await.unwrap();
        match svc.save("s", &skus(&["c"])).await {
            Err(DecideError::Domain(Refused::Full { max_items })) => assert_eq!(max_items, 2),
            other => panic!("expected the list to be full, got {other:?}"),
        }
        assert_eq!(store.len(), 1);
        svc.remove_all("s").await.unwrap();
        assert!(svc.list("s").await.unwrap().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Command {
        Add(i64, Vec<String>),
        Remove(Vec<String>),
        RemoveAll,
    }

    fn command() -> impl Strategy<Value = Command> {
        let sku = "[a-h]".prop_map(String::from);
        prop_oneof![
            (0i64..20, prop::collection::vec(sku.clone(), 0..4))
                .prop_map(|(d, s)| Command::Add(d, s)),
            prop::collection::vec(sku, 0..3).prop_map(Command::Remove),
            Just(Command::RemoveAll),
        ]
    }

    fn decide(c: &Command, state: &Vec<Item>) -> Vec<Event> {
        match c {
            Command::Add(d, s) => add(t(*d), s, 5)(state).unwrap_or_default(),
            Command::Remove(s) => remove(s)(state),
            Command::RemoveAll => remove_all()(state),
        }
    }

    proptest! {
        #[test]
        fn deciding_the_same_command_twice_adds_nothing(history in prop::collection::vec(command(), 0..12), c in command()) {
            let mut state = SaveForLater::initial();
            for h in &history {
                let events = decide(h, &state);
                state = SaveForLater::fold(state, &events);
            }
            prop_assert!(state.len() <= 5);
            let events = decide(&c, &state);
            let state = SaveForLater::fold(state, &events);
            prop_assert_eq!(decide(&c, &state), vec![]);
        }
    }
}

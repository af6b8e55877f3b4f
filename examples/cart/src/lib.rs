//! Cart: items and quantities in a shopping cart (after the Equinox `Cart` sample).
//!
//! Commands set what the cart should hold, so repeating one changes nothing: add an item
//! with a quantity, remove it, change its quantity (0 removes it). Run its tests with
//! `cargo test -p example-cart`.

use std::sync::Arc;

use annals::{Cache, Category, DecideError, Domain, EventStore, JsonCodec};
use serde::{Deserialize, Serialize};

/// The category of cart streams.
pub const CATEGORY: &str = "Cart";

/// A line of the cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The SKU.
    pub sku: String,
    /// How many (at least 1).
    pub quantity: u32,
}

/// What happens to a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An item was added.
    ItemAdded(Line),
    /// An item was removed.
    ItemRemoved {
        /// The SKU.
        sku: String,
    },
    /// An item's quantity changed.
    QuantityChanged(Line),
}

/// A cart command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Ensure `sku` is in the cart with `quantity` (0 is refused: use `RemoveItem`).
    AddItem {
        /// The SKU.
        sku: String,
        /// The quantity.
        quantity: u32,
    },
    /// Ensure `sku` is not in the cart.
    RemoveItem {
        /// The SKU.
        sku: String,
    },
    /// Set the quantity of an item in the cart; 0 removes it.
    ChangeQuantity {
        /// The SKU.
        sku: String,
        /// The new quantity.
        quantity: u32,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Adding with quantity 0.
    #[error("an item is added with a quantity of at least 1")]
    ZeroQuantity,
    /// Changing the quantity of an item that is not in the cart.
    #[error("{0} is not in the cart")]
    NotInCart(String),
}

/// The cart domain.
#[derive(Debug)]
pub struct Cart;

impl Domain for Cart {
    type Event = Event;
    type State = Vec<Line>;

    fn initial() -> Vec<Line> {
        Vec::new()
    }

    fn evolve(mut state: Vec<Line>, event: &Event) -> Vec<Line> {
        match event {
            Event::ItemAdded(line) => {
                state.retain(|l| l.sku != line.sku);
                state.push(line.clone());
            }
            Event::ItemRemoved { sku } => state.retain(|l| &l.sku != sku),
            Event::QuantityChanged(line) => {
                if let Some(l) = state.iter_mut().find(|l| l.sku == line.sku) {
                    l.quantity = line.quantity;
                }
            }
        }
        state
    }
}

/// Decides `command` against a cart.
pub fn decide(command: &Command) -> impl Fn(&Vec<Line>) -> Result<Vec<Event>, Refused> + '_ {
    move |state| {
        let find = |sku: &str| state.iter().find(|l| l.sku == sku);
        Ok(match command {
            Command::AddItem { quantity: 0, .. } => return Err(Refused::ZeroQuantity),
            Command::AddItem { sku, quantity } => match find(sku) {
                None => vec![Event::ItemAdded(Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })],
                Some(l) if l.quantity == *quantity => vec![],
                Some(_) => vec![Event::QuantityChanged(Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })],
            },
            Command::RemoveItem { sku } | Command::ChangeQuantity { sku, quantity: 0 } => {
                match find(sku) {
                    Some(_) => vec![Event::ItemRemoved { sku: sku.clone() }],
                    None => vec![],
                }
            }
            Command::ChangeQuantity { sku, quantity } => match find(sku) {
                None => return Err(Refused::NotInCart(sku.clone())),
                Some(l) if l.quantity == *quantity => vec![],
                Some(_) => vec![Event::QuantityChanged(Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })],
            },
        })
    }
}

/// Carts over a store.
#[derive(Debug, Clone)]
pub struct Service {
    category: Category<Cart>,
}

impl Service {
    /// The service over `store`.
    pub fn new(store: Arc<dyn EventStore>, cache: Option<Arc<Cache>>) -> annals::Result<Self> {
        let category = Category::new(CATEGORY, store, JsonCodec::new())?.with_optional_cache(cache);
        Ok(Self { category })
    }

    /// Runs `command` on cart `id`: [`DecideError::Domain`] with the reason when the domain
    /// refuses it (nothing is written), [`DecideError::Store`] when the store fails.
    pub async fn execute(&self, id: &str, command: &Command) -> Result<(), DecideError<Refused>> {
        self.category
            .decider(id)?
            .try_transact(decide(command))
            .await
    }

    /// The lines of cart `id`.
    pub async fn lines(&self, id: &str) -> annals::Result<Vec<Line>> {
        self.category.decider(id)?.query(Clone::clone).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_testkit::given;
    use proptest::prelude::*;

    fn line(sku: &str, quantity: u32) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }

    fn add(sku: &str, quantity: u32) -> Command {
        Command::AddItem {
            sku: sku.into(),
            quantity,
        }
    }

    fn change(sku: &str, quantity: u32) -> Command {
        Command::ChangeQuantity {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn add_then_change_then_zero_removes() {
        let c = add("a", 2);
        given::<Cart>([])
            .when(decide(&c))
            .then([Event::ItemAdded(line("a", 2))]);
        let c = change("a", 5);
        given::<Cart>([Event::ItemAdded(line("a", 2))])
            .when(decide(&c))
            .then([Event::QuantityChanged(line("a", 5))]);
        let c = change("a", 0);
        let state = given::<Cart>([Event::ItemAdded(line("a", 2))])
            .when(decide(&c))
            .then([Event::ItemRemoved { sku: "a".into() }]);
        assert!(state.is_empty());
    }

    #[test]
    fn refusals() {
        let c = add("a", 0);
        given::<Cart>([])
            .when(decide(&c))
            .then_err(Refused::ZeroQuantity);
        let c = change("b", 3);
        given::<Cart>([])
            .when(decide(&c))
            .then_err(Refused::NotInCart("b".into()));
        let c = Command::RemoveItem { sku: "b".into() };
        given::<Cart>([]).when(decide(&c)).then([]);
    }

    #[tokio::test]
    async fn service_round_trips_through_a_store() {
        let store = Arc::new(annals::MemoryStore::new());
        let svc = Service::new(store.clone(), None).unwrap();
        svc.execute("1", &add("a", 1)).await.unwrap();
        svc.execute("1", &add("b", 2)).await.unwrap();
        svc.execute("1", &change("a", 0)).await.unwrap();
        let version = |store: &annals::MemoryStore| store.len();
        let before = version(&store);
        // The domain's refusal reaches the caller as its own type, nothing written.
        match svc.execute("1", &change("z", 1)).await {
            Err(DecideError::Domain(refused)) => {
                assert_eq!(refused, Refused::NotInCart("z".into()));
                assert_eq!(refused.to_string(), "z is not in the cart");
            }
            other => panic!("expected the domain's refusal, got {other:?}"),
        }
        let refused = svc.execute("1", &add("c", 0)).await.unwrap_err();
        assert_eq!(refused.domain(), Some(&Refused::ZeroQuantity));
        assert_eq!(version(&store), before);
        assert_eq!(svc.lines("1").await.unwrap(), vec![line("b", 2)]);
        // A store failure is the other variant: an invalid cart id.
        assert!(matches!(
            svc.execute("", &add("a", 1)).await,
            Err(DecideError::Store(_))
        ));
    }

    fn command() -> impl Strategy<Value = Command> {
        let sku = "[a-d]".prop_map(String::from);
        prop_oneof![
            (sku.clone(), 0u32..4).prop_map(|(s, q)| add(&s, q)),
            sku.clone().prop_map(|sku| Command::RemoveItem { sku }),
            (sku, 0u32..4).prop_map(|(s, q)| change(&s, q)),
        ]
    }

    proptest! {
        #[test]
        fn deciding_the_same_command_twice_adds_nothing(history in prop::collection::vec(command(), 0..12), c in command()) {
            let mut state = Cart::initial();
            for h in &history {
                let events = decide(h)(&state).unwrap_or_default();
                state = Cart::fold(state, &events);
            }
            prop_assert!(state.iter().all(|l| l.quantity > 0));
            let events = decide(&c)(&state).unwrap_or_default();
            let state = Cart::fold(state, &events);
            prop_assert_eq!(decide(&c)(&state).unwrap_or_default(), vec![]);
        }
    }
}

//! Todo lists (the TodoBackend sample of Equinox): each client's list is one stream of
//! `Added`, `Updated`, `Deleted` and `Cleared` events; `Cleared` starts the list afresh, so
//! loads read back only to the latest one.

use std::sync::Arc;

use annals::{Cache, Category, Domain, EventStore, JsonCodec};
use serde::{Deserialize, Serialize};

mod conn;
pub mod server;
pub mod view;
pub mod web;

/// The category of todo-list streams.
pub const CATEGORY: &str = "Todos";

/// One todo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    /// Its id within the list.
    pub id: u64,
    /// What to do.
    pub title: String,
    /// Done or not.
    pub completed: bool,
    /// Where it sorts.
    pub order: i64,
}

/// A change to some fields of a todo (the fields left `None` keep their value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// A new title.
    pub title: Option<String>,
    /// A new completion.
    pub completed: Option<bool>,
    /// A new order.
    pub order: Option<i64>,
}

/// What happens to a todo list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A todo was added.
    Added(Todo),
    /// A todo changed (the whole new value).
    Updated(Todo),
    /// A todo was deleted.
    Deleted {
        /// Its id.
        id: u64,
    },
    /// Every todo was deleted (ids keep counting up).
    Cleared {
        /// The next id to give.
        next_id: u64,
    },
}

/// A list: its todos in the order added, and the next id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The todos.
    pub items: Vec<Todo>,
    /// The id the next todo gets.
    pub next_id: u64,
}

/// The todo domain.
#[derive(Debug)]
pub struct Todos;

impl Domain for Todos {
    type Event = Event;
    type State = State;

    fn initial() -> State {
        State::default()
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Added(todo) => {
                state.next_id = state.next_id.max(todo.id + 1);
                state.items.push(todo.clone());
            }
            Event::Updated(todo) => {
                if let Some(t) = state.items.iter_mut().find(|t| t.id == todo.id) {
                    *t = todo.clone();
                }
            }
            Event::Deleted { id } => state.items.retain(|t| t.id != *id),
            Event::Cleared { next_id } => {
                state.items.clear();
                state.next_id = *next_id;
            }
        }
        state
    }
}

/// `Cleared` starts a list afresh.
pub fn is_origin(event: &Event) -> bool {
    matches!(event, Event::Cleared { .. })
}

/// Decides adding a todo (`order` defaults to its id); returns it.
pub fn add(
    title: String,
    order: Option<i64>,
    completed: bool,
) -> impl Fn(&State) -> (Todo, Vec<Event>) {
    move |state| {
        let todo = Todo {
            id: state.next_id,
            title: title.clone(),
            completed,
            order: order.unwrap_or(state.next_id as i64),
        };
        (todo.clone(), vec![Event::Added(todo)])
    }
}

/// Decides a patch of todo `id`; returns the todo after it (`None`: no such todo).
pub fn update(id: u64, patch: Patch) -> impl Fn(&State) -> (Option<Todo>, Vec<Event>) {
    move |state| {
        let Some(current) = state.items.iter().find(|t| t.id == id) else {
            return (None, Vec::new());
        };
        let next = Todo {
            id,
            title: patch.title.clone().unwrap_or_else(|| current.title.clone()),
            completed: patch.completed.unwrap_or(current.completed),
            order: patch.order.unwrap_or(current.order),
        };
        let events = if &next == current {
            Vec::new()
        } else {
            vec![Event::Updated(next.clone())]
        };
        (Some(next), events)
    }
}

/// Decides deleting todo `id`; returns whether it existed.
pub fn delete(id: u64) -> impl Fn(&State) -> (bool, Vec<Event>) {
    move |state| match state.items.iter().any(|t| t.id == id) {
        true => (true, vec![Event::Deleted { id }]),
        false => (false, Vec::new()),
    }
}

/// Decides clearing the list.
pub fn clear(state: &State) -> Vec<Event> {
    if state.items.is_empty() {
        Vec::new()
    } else {
        vec![Event::Cleared {
            next_id: state.next_id,
        }]
    }
}

/// The todo lists of one store.
#[derive(Debug, Clone)]
pub struct Service {
    category: Category<Todos>,
}

impl Service {
    /// Lists in `store`, cached in `cache` when given, loads stopping at `Cleared`.
    pub fn new(store: Arc<dyn EventStore>, cache: Option<Arc<Cache>>) -> annals::Result<Self> {
        let category = Category::new(CATEGORY, store, JsonCodec::new())?
            .with_optional_cache(cache)
            .with_origins(is_origin);
        Ok(Self::of(category))
    }

    /// A service over a configured category.
    pub fn of(category: Category<Todos>) -> Self {
        Self { category }
    }

    /// Adds a todo to `client`'s list.
    pub async fn add(
        &self,
        client: &str,
        title: String,
        order: Option<i64>,
        completed: bool,
    ) -> annals::Result<Todo> {
        self.category
            .decider(client)?
            .transact_result(add(title, order, completed))
            .await
    }

    /// Patches a todo; `None` when there is no such todo.
    pub async fn update(
        &self,
        client: &str,
        id: u64,
        patch: Patch,
    ) -> annals::Result<Option<Todo>> {
        self.category
            .decider(client)?
            .transact_result(update(id, patch))
            .await
    }

    /// Deletes a todo; whether it existed.
    pub async fn delete(&self, client: &str, id: u64) -> annals::Result<bool> {
        self.category
            .decider(client)?
            .transact_result(delete(id))
            .await
    }

    /// Deletes every todo of `client`.
    pub async fn clear(&self, client: &str) -> annals::Result<()> {
        self.category.decider(client)?.transact(clear).await
    }

    /// `client`'s todos, in order.
    pub async fn list(&self, client: &str) -> annals::Result<Vec<Todo>> {
        self.category
            .decider(client)?
            .query(|s| {
                let mut items = s.items.clone();
                items.sort_by_key(|t| (t.order, t.id));
                items
            })
            .await
    }

    /// One todo.
    pub async fn get(&self, client: &str, id: u64) -> annals::Result<Option<Todo>> {
        self.category
            .decider(client)?
            .query(|s| s.items.iter().find(|t| t.id == id).cloned())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_testkit::given;

    fn todo(id: u64, title: &str) -> Todo {
        Todo {
            id,
            title: title.into(),
            completed: false,
            order: id as i64,
        }
    }

    #[test]
    fn adding_gives_the_next_id_and_clearing_keeps_counting() {
        given::<Todos>([Event::Added(todo(0, "a")), Event::Cleared { next_id: 1 }])
            .when(|s| add("b".into(), None, false)(s).1)
            .then([Event::Added(todo(1, "b"))]);
    }

    #[test]
    fn a_patch_changes_only_the_fields_sent() {
        given::<Todos>([Event::Added(todo(0, "a"))])
            .when(|s| {
                update(
                    0,
                    Patch {
                        completed: Some(true),
                        ..Patch::default()
                    },
                )(s)
                .1
            })
            .then([Event::Updated(Todo {
                completed: true,
                ..todo(0, "a")
            })]);
        given::<Todos>([Event::Added(todo(0, "a"))])
            .when(|s| {
                update(
                    0,
                    Patch {
                        title: Some("a".into()),
                        ..Patch::default()
                    },
                )(s)
                .1
            })
            .then([]);
        given::<Todos>([])
            .when(|s| update(3, Patch::default())(s).1)
            .then([]);
    }

    #[test]
    fn deleting_and_clearing_an_empty_list_write_nothing() {
        given::<Todos>([]).when(|s| delete(0)(s).1).then([]);
        given::<Todos>([]).when(clear).then([]);
    }
}

//! The aggregate style (documented on [`Aggregate`]).

use std::marker::PhantomData;
use std::sync::Arc;

use crate::codec::Codec;
use crate::decider::{Category, Decider, Domain, Loaded};
use crate::error::Result;
use crate::store::EventStore;
use crate::{StreamName, Version};

/// A state that applies its own events.
///
/// An aggregate-style API over the decider runtime, for teams used to Finaps or
/// EventSourcery: an aggregate applies its events to itself, commands record new events on
/// a loaded [`Root`], and a [`Repository`] loads and saves roots.
///
/// ```
/// # use std::sync::Arc;
/// use annals::{Aggregate, Repository};
/// use annals::{JsonCodec, MemoryStore};
///
/// #[derive(Clone, Default)]
/// struct Account { balance: i64 }
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// enum Event { Deposited { amount: i64 } }
///
/// impl Aggregate for Account {
///     type Event = Event;
///     fn apply(&mut self, event: &Event) {
///         match event { Event::Deposited { amount } => self.balance += amount }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let repo = Repository::<Account>::new("Account", Arc::new(MemoryStore::new()), JsonCodec::new())?;
/// let mut account = repo.load("a1").await?;
/// account.record(Event::Deposited { amount: 5 });
/// repo.save(&mut account).await?;
/// repo.load_and_save("a1", |a| a.record(Event::Deposited { amount: 2 })).await?;
/// assert_eq!(repo.load("a1").await?.state().balance, 7);
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
pub trait Aggregate: Clone + Default + Send + Sync + 'static {
    /// Its events.
    type Event: Send + Sync + 'static;

    /// Changes the state by `event`.
    fn apply(&mut self, event: &Self::Event);
}

/// The [`Domain`] of an aggregate: `initial` is `Default`, `evolve` is `apply`. Use it to
/// configure the category (cache, access strategy) of a [`Repository`].
#[derive(Debug)]
pub struct AggregateDomain<A>(PhantomData<A>);

impl<A: Aggregate> Domain for AggregateDomain<A> {
    type Event = A::Event;
    type State = A;

    fn initial() -> A {
        A::default()
    }

    fn evolve(mut state: A, event: &A::Event) -> A {
        state.apply(event);
        state
    }
}

/// A loaded aggregate: its state, the version it was loaded at, and the events recorded on
/// it since (not yet saved).
#[derive(Debug, Clone)]
pub struct Root<A: Aggregate> {
    stream: StreamName,
    version: Version,
    /// Where the state's events begin (see [`Loaded::shown_from`]).
    shown_from: Version,
    /// The state at `version`, before the pending events.
    base: Arc<A>,
    state: A,
    pending: Vec<A::Event>,
}

impl<A: Aggregate> Root<A> {
    fn new(stream: StreamName, loaded: Loaded<A>) -> Self {
        Self {
            stream,
            version: loaded.version,
            shown_from: loaded.shown_from,
            state: (*loaded.state).clone(),
            base: loaded.state,
            pending: Vec::new(),
        }
    }

    fn loaded(&self) -> Loaded<A> {
        Loaded {
            version: self.version,
            shown_from: self.shown_from,
            state: Arc::clone(&self.base),
        }
    }

    /// The aggregate's stream.
    pub fn stream(&self) -> &StreamName {
        &self.stream
    }

    /// The version loaded (or last saved).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The state, with the recorded events applied.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The events recorded and not saved yet.
    pub fn pending(&self) -> &[A::Event] {
        &self.pending
    }

    /// Applies `event` to the state and keeps it for the next save.
    pub fn record(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.pending.push(event);
    }
}

/// Loads and saves aggregates of one category, through the decider runtime (so the
/// category's cache, access strategy and reference checks apply).
pub struct Repository<A: Aggregate> {
    category: Category<AggregateDomain<A>>,
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("category", &self.category)
            .finish()
    }
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            category: self.category.clone(),
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// The aggregates of category `name` in `store`, with events encoded by `codec`.
    pub fn new(
        name: &str,
        store: Arc<dyn EventStore>,
        codec: impl Codec<A::Event>,
    ) -> Result<Self> {
        Ok(Self::of(Category::new(name, store, codec)?))
    }

    /// A repository over a configured category.
    pub fn of(category: Category<AggregateDomain<A>>) -> Self {
        Self { category }
    }

    /// The category.
    pub fn category(&self) -> &Category<AggregateDomain<A>> {
        &self.category
    }

    fn decider(&self, id: &str) -> Result<Decider<AggregateDomain<A>>> {
        self.category.decider(id)
    }

    /// Loads the aggregate `id` (a new, empty one when its stream does not exist).
    pub async fn load(&self, id: &str) -> Result<Root<A>> {
        let decider = self.decider(id)?;
        let loaded = decider.load().await?;
        Ok(Root::new(decider.stream().clone(), loaded))
    }

    /// Saves the events recorded on `root`, provided nobody wrote to its stream since it
    /// was loaded: otherwise fails with
    /// [`Error::WrongExpectedVersion`](crate::Error::WrongExpectedVersion), writing
    /// nothing (the events were decided on a stale state; load again, or use
    /// [`load_and_save`](Self::load_and_save)). On success the root is at the new version
    /// with nothing pending.
    pub async fn save(&self, root: &mut Root<A>) -> Result<()> {
        if root.pending.is_empty() {
            return Ok(());
        }
        let decider = self.category.decider_for(root.stream.clone());
        let written = decider.write(&root.loaded(), &root.pending).await?;
        *root = Root::new(root.stream.clone(), written);
        Ok(())
    }

    /// Loads `id`, lets `command` record events on it, and saves them; on a conflict, the
    /// root catches up with the stream and `command` runs again on it, up to the
    /// category's attempt limit (then [`Error::ResyncExhausted`](crate::Error::ResyncExhausted)).
    pub async fn load_and_save<R>(
        &self,
        id: &str,
        mut command: impl FnMut(&mut Root<A>) -> R,
    ) -> Result<R> {
        let decider = self.decider(id)?;
        let mut loaded = decider.load().await?;
        let (mut attempt, mut restarted) = (1, false);
        loop {
            let mut root = Root::new(decider.stream().clone(), loaded);
            let result = command(&mut root);
            match self.save(&mut root).await {
                Ok(()) => return Ok(result),
                Err(crate::Error::WrongExpectedVersion { actual, .. }) => {
                    // Refused at the version loaded: events the state holds were deleted
                    // or truncated since (its cached state was dropped): loaded again from
                    // the start, the first time without using up an attempt (not a race).
                    let moved = actual == root.version;
                    if moved && !restarted {
                        restarted = true;
                    } else if attempt < self.category.max_attempts() {
                        attempt += 1;
                    } else {
                        return Err(crate::Error::ResyncExhausted {
                            stream: root.stream,
                            attempts: attempt,
                        });
                    }
                    loaded = match moved {
                        true => decider.load().await?,
                        false => decider.catch_up_to(root.loaded(), actual).await?,
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }
}

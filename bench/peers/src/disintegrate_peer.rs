//! The Favorite test on disintegrate with disintegrate-postgres, as its README uses them: a
//! decision on a state query, made by `DecisionMaker::make`, the read-back a `load` of the
//! same state query through the decision maker's state store.
use disintegrate::serde::json::Json;
use disintegrate::{
    Decision, DecisionError, EventSourcedStateStore, LoadState, NoSnapshot, SnapshotConfig,
    StateMutate, StateQuery,
};
use disintegrate_postgres::{PgEventId, PgEventStore, PgSnapshotter, WithPgSnapshot};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, disintegrate::Event, Serialize, Deserialize)]
pub enum FavoriteEvent {
    Favorited {
        #[id]
        client_id: String,
        sku: String,
        date: i64,
    },
}

#[derive(Debug, Default, Clone, StateQuery, Serialize, Deserialize)]
#[state_query(FavoriteEvent)]
pub struct Favorites {
    #[id]
    client_id: String,
    items: Vec<(String, i64)>,
}

impl StateMutate for Favorites {
    fn mutate(&mut self, event: FavoriteEvent) {
        match event {
            FavoriteEvent::Favorited { sku, date, .. } => self.items.push((sku, date)),
        }
    }
}

struct Favorite {
    client_id: String,
    sku: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Decision for Favorite {
    type Event = FavoriteEvent;
    type StateQuery = Favorites;
    type Error = Never;

    fn state_query(&self) -> Favorites {
        Favorites {
            client_id: self.client_id.clone(),
            items: Vec::new(),
        }
    }

    fn process(&self, state: &Favorites) -> Result<Vec<FavoriteEvent>, Never> {
        if state.items.iter().any(|(s, _)| *s == self.sku) {
            return Ok(Vec::new());
        }
        let date = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        Ok(vec![FavoriteEvent::Favorited {
            client_id: self.client_id.clone(),
            sku: self.sku.clone(),
            date,
        }])
    }
}

type Test = Pin<Box<dyn Future<Output = Outcome> + Send>>;
type Store = PgEventStore<FavoriteEvent, Json<FavoriteEvent>>;

/// The test without snapshots: every decision and read-back loads the client's events.
pub async fn without_snapshots(
    pool: sqlx::PgPool,
) -> impl Fn(String, String) -> Test + Clone + Send + Sync + 'static {
    let events = PgEventStore::try_new(pool, Json::<FavoriteEvent>::default())
        .await
        .expect("disintegrate's migration (PostgreSQL 16 or later)");
    tester(EventSourcedStateStore::new(events, NoSnapshot))
}

/// The test with disintegrate's PostgreSQL snapshotter.
pub async fn with_snapshots(
    pool: sqlx::PgPool,
    every: u64,
) -> impl Fn(String, String) -> Test + Clone + Send + Sync + 'static {
    let events = PgEventStore::try_new(pool.clone(), Json::<FavoriteEvent>::default())
        .await
        .expect("disintegrate's migration (PostgreSQL 16 or later)");
    let snapshots = PgSnapshotter::try_new(pool, every).await.expect("snapshots");
    tester(EventSourcedStateStore::new(
        events,
        WithPgSnapshot::new(snapshots),
    ))
}

fn tester<SN>(
    states: EventSourcedStateStore<PgEventId, FavoriteEvent, Store, SN>,
) -> impl Fn(String, String) -> Test + Clone + Send + Sync + 'static
where
    SN: SnapshotConfig + Clone + Send + Sync + 'static,
    EventSourcedStateStore<PgEventId, FavoriteEvent, Store, SN>:
        LoadState<PgEventId, Favorites, FavoriteEvent> + Send + Sync,
{
    let decisions = Arc::new(disintegrate::DecisionMaker::new(states.clone()));
    let states = Arc::new(states);
    move |client_id: String, sku: String| {
        let (decisions, states) = (decisions.clone(), states.clone());
        Box::pin(async move {
            let mut done = false;
            for _ in 0..3 {
                let decision = Favorite {
                    client_id: client_id.clone(),
                    sku: sku.clone(),
                };
                match decisions.make(decision).await {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(DecisionError::StateStore(e)) if is_conflict(&*e) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            if !done {
                return Outcome::Exhausted;
            }
            let query = Favorites {
                client_id,
                items: Vec::new(),
            };
            let loaded = states.load(query).await.expect("load");
            match loaded.state().items.iter().any(|(s, _)| *s == sku) {
                true => Outcome::Passed,
                false => Outcome::Missing,
            }
        }) as Test
    }
}

/// disintegrate's conflict: its own `Concurrency`, or PostgreSQL's serialization failure
/// (its appends run SERIALIZABLE).
fn is_conflict(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    match e.downcast_ref::<disintegrate_postgres::Error>() {
        Some(disintegrate_postgres::Error::Concurrency) => true,
        Some(disintegrate_postgres::Error::Database(sqlx::Error::Database(db))) => {
            db.code().as_deref() == Some("40001")
        }
        _ => false,
    }
}

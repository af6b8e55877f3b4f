//! The Favorite test (favorite a fresh SKU, read the list back and check it) on cqrs-es with
//! postgres-es: 16 workers, 1,000 clients, as `annals bench favorite --concurrency 16`.
//! A command that conflicts is retried (3 attempts, as Annals' default); the read-back
//! loads the aggregate's events (cqrs-es keeps no cache).
//!
//! ```sh
//! cargo run --release --manifest-path bench/peers/Cargo.toml -- postgres://... 5 [workers] [pool]
//! ```
//!
//! Writes only into a fresh schema of its own (`annals_peers_<pid>`), left for inspection.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventStore};
use postgres_es::{postgres_cqrs, PostgresEventRepository};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Favorites {
    items: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Favorited { sku: String, date: i64 },
}

impl DomainEvent for Event {
    fn event_type(&self) -> String {
        "Favorited".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Favorites {
    const TYPE: &'static str = "Favorites";
    type Command = String;
    type Event = Event;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, sku: String, _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        if !self.items.iter().any(|(s, _)| *s == sku) {
            let date = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            sink.write(Event::Favorited { sku, date }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Favorited { sku, date } => self.items.push((sku, date)),
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let secs: u64 = args[2].parse().unwrap();
    let workers: usize = args.get(3).map_or(16, |a| a.parse().unwrap());
    let pool_size: u32 = args.get(4).map_or(16, |a| a.parse().unwrap());
    let schema = format!("annals_peers_{}", std::process::id());
    let search_path = format!("SET search_path TO {schema}");
    let setup = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&setup)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
         event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, \
         PRIMARY KEY (aggregate_type, aggregate_id, sequence))"
    ))
    .execute(&setup)
    .await
    .unwrap();
    setup.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .after_connect(move |conn, _| {
            let search_path = search_path.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, search_path.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .expect("connect");
    let cqrs = Arc::new(postgres_cqrs::<Favorites>(pool.clone(), vec![], ()));
    let reader = Arc::new(PersistedEventStore::<_, Favorites>::new_event_store(
        PostgresEventRepository::new(pool.clone()),
    ));
    let run = std::process::id();
    let (ok, conflicts, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (cqrs, reader) = (cqrs.clone(), reader.clone());
        let (ok, conflicts, errors) = (ok.clone(), conflicts.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let client = format!("{run}-{}", rand::thread_rng().gen_range(0..1000));
                let sku = format!("sku-{w}-{n}");
                n += 1;
                let mut done = false;
                for _ in 0..3 {
                    match cqrs
                        .execute_with_metadata(&client, sku.clone(), HashMap::new())
                        .await
                    {
                        Ok(()) => {
                            done = true;
                            break;
                        }
                        Err(AggregateError::AggregateConflict) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                if !done {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut ctx = reader.load_aggregate(&client).await.expect("load");
                if ctx.aggregate().items.iter().any(|(s, _)| *s == sku) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "cqrs-es 0.5 + postgres-es 0.5  schema {schema}  workers {workers}  pool {pool_size}  {secs}s  tests {ok}  conflicts {}  errors {}  rate {:.1}/s",
        conflicts.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        ok as f64 / elapsed
    );
}

//! The Favorite test (favorite a fresh SKU, read the list back and check it) on other Rust
//! event-sourcing libraries: 16 workers, 1,000 clients, as `annals bench favorite
//! --concurrency 16`. A command that conflicts is retried (3 attempts, as Annals' default).
//! - `cqrs-es` (the default): cqrs-es with postgres-es; the read-back loads the aggregate's
//!   events (cqrs-es keeps no cache).
//! - `disintegrate`: disintegrate with disintegrate-postgres (PostgreSQL 16 or later: its
//!   migration uses hexadecimal literals), no snapshots; the read-back loads the state query.
//! - `disintegrate-snapshots`: the same with its PostgreSQL snapshotter (a snapshot every 10
//!   events), disintegrate's way to load less.
//!
//! ```sh
//! cargo run --release --manifest-path bench/peers/Cargo.toml -- [LIBRARY] postgres://... 5 [workers] [pool]
//! ```
//!
//! Writes only into a fresh schema of its own (`annals_peers_<pid>`), left for inspection.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod disintegrate_peer;

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

/// How one test ended.
enum Outcome {
    /// Written and read back.
    Passed,
    /// Every attempt conflicted.
    Exhausted,
    /// Written, but the read-back did not show it.
    Missing,
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let library = match args.first() {
        Some(a) if !a.starts_with("postgres") => args.remove(0),
        _ => "cqrs-es".to_owned(),
    };
    let url = &args[0];
    let secs: u64 = args[1].parse().unwrap();
    let workers: usize = args.get(2).map_or(16, |a| a.parse().unwrap());
    let pool_size: u32 = args.get(3).map_or(16, |a| a.parse().unwrap());
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
    let run = std::process::id();
    let name = match library.as_str() {
        "cqrs-es" => {
            let test = cqrs_es_peer(pool).await;
            drive(workers, secs, run, test).await
        }
        "disintegrate" => {
            let test = disintegrate_peer::without_snapshots(pool).await;
            drive(workers, secs, run, test).await
        }
        "disintegrate-snapshots" => {
            let test = disintegrate_peer::with_snapshots(pool, 10).await;
            drive(workers, secs, run, test).await
        }
        other => panic!("unknown library {other}: cqrs-es, disintegrate, disintegrate-snapshots"),
    };
    let (ok, exhausted, missing, elapsed) = name;
    let label = match library.as_str() {
        "cqrs-es" => "cqrs-es 0.5 + postgres-es 0.5",
        "disintegrate" => "disintegrate 4.0 + disintegrate-postgres 4.0",
        _ => "disintegrate 4.0 + disintegrate-postgres 4.0, snapshots every 10",
    };
    println!(
        "{label}  schema {schema}  workers {workers}  pool {pool_size}  {secs}s  tests {ok}  conflicts {exhausted}  errors {missing}  rate {:.1}/s",
        ok as f64 / elapsed
    );
}

/// The test on cqrs-es: `execute` (load, handle, insert), then `load_aggregate`.
async fn cqrs_es_peer(
    pool: sqlx::PgPool,
) -> impl Fn(String, String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    sqlx::query(
        "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
         event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, \
         PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cqrs = Arc::new(postgres_cqrs::<Favorites>(pool.clone(), vec![], ()));
    let reader = Arc::new(PersistedEventStore::<_, Favorites>::new_event_store(
        PostgresEventRepository::new(pool),
    ));
    move |client: String, sku: String| {
        let (cqrs, reader) = (cqrs.clone(), reader.clone());
        Box::pin(async move {
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
                return Outcome::Exhausted;
            }
            let mut ctx = reader.load_aggregate(&client).await.expect("load");
            match ctx.aggregate().items.iter().any(|(s, _)| *s == sku) {
                true => Outcome::Passed,
                false => Outcome::Missing,
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
    }
}

/// Runs `test` from `workers` tasks for `secs` seconds, each on a random one of 1,000 clients
/// with a fresh SKU: (passed, exhausted, missing, seconds).
async fn drive<F, Fut>(workers: usize, secs: u64, run: u32, test: F) -> (u64, u64, u64, f64)
where
    F: Fn(String, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send,
{
    let (ok, exhausted, missing) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let test = test.clone();
        let (ok, exhausted, missing) = (ok.clone(), exhausted.clone(), missing.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let client = format!("{run}-{}", rand::thread_rng().gen_range(0..1000));
                let sku = format!("sku-{w}-{n}");
                n += 1;
                let counter = match test(client, sku).await {
                    Outcome::Passed => &ok,
                    Outcome::Exhausted => &exhausted,
                    Outcome::Missing => &missing,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        missing.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    )
}

//! The `todos` read model: one row per todo of every list, in table `todo_view` of the
//! store's own database (the SQLite file, or the store's PostgreSQL schema), so the lists can
//! be queried with SQL. `annals serve` keeps it current with a reactor pipeline (consumer
//! group [`GROUP`]); each list's progress is recorded with the schema version of this code
//! ([`SCHEMA`]), and `annals rebuild todos` refolds the lists whose rows older code built.
//!
//! Schema history: 1 — `list, id, title, completed, ord`.

use std::sync::Arc;

use annals::{
    Codec, Domain, JsonCodec, ProjectionId, ProjectionRow, RecordedEvent, StreamName, Version,
};
use annals_postgres::PgStore;
use annals_reactor::{Handler, HandlerError, PipelineConfig};
use annals_sqlite::{rusqlite, SqliteStore};
use anyhow::bail;
use async_trait::async_trait;
use example_todo::{Event, Todos};

/// The projection's name (`annals rebuild todos`).
pub const NAME: &str = "todos";
/// The schema version of this code's rows.
pub const SCHEMA: u32 = 1;
/// The consumer group of the pipeline keeping the read model current.
pub const GROUP: &str = "annals.todos";

/// This code's projection id.
pub fn id() -> ProjectionId<'static> {
    ProjectionId::new(NAME, SCHEMA)
}

const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS todo_view (
    list TEXT NOT NULL,
    id INTEGER NOT NULL,
    title TEXT NOT NULL,
    completed INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    PRIMARY KEY (list, id)
) STRICT";

/// Where the read model is kept.
#[derive(Clone)]
pub enum Target {
    /// Beside the events, in the SQLite file.
    Sqlite(SqliteStore),
    /// Beside the events, in the store's PostgreSQL schema.
    Postgres(PgStore),
}

impl Target {
    /// The read model of `opened`'s store; an error for stores without one (memory).
    pub fn of(opened: &crate::store_url::Opened) -> anyhow::Result<Self> {
        match (&opened.sqlite_store, &opened.pg_store) {
            (Some(s), _) => Ok(Self::Sqlite(s.clone())),
            (_, Some(p)) => Ok(Self::Postgres(p.clone())),
            _ => bail!("read models are kept in SQLite and PostgreSQL stores, not in memory://"),
        }
    }

    /// Creates the table if it is missing.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        match self {
            // The SQLite statements create it in the same transaction as their first write.
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(pg) => {
                let tx = pg.projection().await?;
                tx.client()
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} (
                            list text NOT NULL,
                            id bigint NOT NULL,
                            title text NOT NULL,
                            completed boolean NOT NULL,
                            ord bigint NOT NULL,
                            PRIMARY KEY (list, id))",
                        pg_table(pg)
                    ))
                    .await?;
                tx.commit_only().await?;
                Ok(())
            }
        }
    }

    /// The rows recorded per list (progress, schema).
    pub async fn rows(&self) -> anyhow::Result<Vec<ProjectionRow>> {
        Ok(match self {
            Self::Sqlite(s) => s.projection_rows(NAME).await?,
            Self::Postgres(p) => p.projection_rows(NAME).await?,
        })
    }

    /// Replaces one list's rows with the fold of its every event; the events folded.
    pub async fn rebuild(&self, stream: &StreamName) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(s) => Ok(s
                .rebuild_stream(id(), stream, |conn, stream, events| {
                    let items = fold(events)?;
                    sqlite_replace(conn, stream, &items)
                })
                .await?),
            Self::Postgres(pg) => {
                let tx = pg.projection().await?;
                let events = tx.rebuild_events(id(), stream).await?;
                let items = fold(&events).map_err(|e| anyhow::anyhow!("{stream}: {e}"))?;
                let table = pg_table(pg);
                let client = tx.client();
                client
                    .execute(
                        &format!("DELETE FROM {table} WHERE list = $1"),
                        &[&stream.as_str()],
                    )
                    .await?;
                for t in &items {
                    pg_upsert(client, &table, stream.as_str(), t).await?;
                }
                tx.commit_rebuilt(id(), stream, Version(events.len() as u64))
                    .await?;
                Ok(events.len() as u64)
            }
        }
    }
}

async fn pg_upsert(
    client: &annals_postgres::tokio_postgres::Client,
    table: &str,
    list: &str,
    t: &example_todo::Todo,
) -> Result<u64, annals_postgres::tokio_postgres::Error> {
    client
        .execute(
            &format!("INSERT INTO {table} (list, id, title, completed, ord) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (list, id) DO UPDATE SET title = $3, completed = $4, ord = $5"),
            &[&list, &(t.id as i64), &t.title, &t.completed, &t.order],
        )
        .await
}

fn pg_table(pg: &PgStore) -> String {
    format!("\"{}\".todo_view", pg.config().schema)
}

fn decode(e: &RecordedEvent) -> Result<Option<Event>, HandlerError> {
    Ok(JsonCodec::<Event>::new().decode(e)?)
}

/// The list after `events` (its whole stream).
fn fold(events: &[RecordedEvent]) -> Result<Vec<example_todo::Todo>, HandlerError> {
    let mut state = Todos::initial();
    for e in events {
        if let Some(event) = decode(e)? {
            state = Todos::evolve(state, &event);
        }
    }
    Ok(state.items)
}

fn sqlite_replace(
    conn: &rusqlite::Connection,
    list: &StreamName,
    items: &[example_todo::Todo],
) -> Result<(), HandlerError> {
    conn.prepare_cached(SQLITE_TABLE)?.execute([])?;
    conn.prepare_cached("DELETE FROM todo_view WHERE list = ?1")?
        .execute([list.as_str()])?;
    for t in items {
        sqlite_upsert(conn, list, t)?;
    }
    Ok(())
}

fn sqlite_upsert(
    conn: &rusqlite::Connection,
    list: &StreamName,
    t: &example_todo::Todo,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO todo_view (list, id, title, completed, ord) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![list.as_str(), t.id as i64, t.title, t.completed, t.order])
}

fn sqlite_apply(
    conn: &rusqlite::Connection,
    list: &StreamName,
    events: &[RecordedEvent],
) -> Result<(), HandlerError> {
    conn.prepare_cached(SQLITE_TABLE)?.execute([])?;
    for e in events {
        match decode(e)? {
            Some(Event::Added(t) | Event::Updated(t)) => {
                sqlite_upsert(conn, list, &t)?;
            }
            Some(Event::Deleted { id }) => {
                conn.prepare_cached("DELETE FROM todo_view WHERE list = ?1 AND id = ?2")?
                    .execute(rusqlite::params![list.as_str(), id as i64])?;
            }
            Some(Event::Cleared { .. }) => {
                conn.prepare_cached("DELETE FROM todo_view WHERE list = ?1")?
                    .execute([list.as_str()])?;
            }
            None => {}
        }
    }
    Ok(())
}

/// The handler keeping the read model current: each list's new events are applied in one
/// transaction with the list's progress, so a redelivered event is never applied twice.
pub struct Projector(pub Target);

#[async_trait]
impl Handler for Projector {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        match &self.0 {
            Target::Sqlite(s) => {
                let list = stream.clone();
                Ok(s.project_stream(id(), events, move |conn, fresh| {
                    sqlite_apply(conn, &list, fresh)
                })
                .await?)
            }
            Target::Postgres(pg) => {
                let tx = pg.projection().await?;
                let (next, fresh) = tx.unapplied(id(), stream, events).await?;
                let Some(last) = fresh.last() else {
                    return Ok(next);
                };
                let (table, client, list) = (pg_table(pg), tx.client(), stream.as_str());
                for e in fresh {
                    match decode(e)? {
                        Some(Event::Added(t) | Event::Updated(t)) => {
                            pg_upsert(client, &table, list, &t).await?;
                        }
                        Some(Event::Deleted { id }) => {
                            client
                                .execute(
                                    &format!("DELETE FROM {table} WHERE list = $1 AND id = $2"),
                                    &[&list, &(id as i64)],
                                )
                                .await?;
                        }
                        Some(Event::Cleared { .. }) => {
                            client
                                .execute(&format!("DELETE FROM {table} WHERE list = $1"), &[&list])
                                .await?;
                        }
                        None => {}
                    }
                }
                let next = last.next_version();
                tx.commit_progress(id(), stream, next).await?;
                Ok(next)
            }
        }
    }
}

/// Starts the pipeline keeping the read model of `opened`'s store current.
pub async fn spawn(
    opened: &crate::store_url::Opened,
) -> anyhow::Result<Option<annals_reactor::Running>> {
    let Ok(target) = Target::of(opened) else {
        return Ok(None);
    };
    target.ensure().await?;
    let config =
        PipelineConfig::new(GROUP).filter(annals::Filter::category(example_todo::CATEGORY));
    Ok(Some(annals_reactor::spawn(
        Arc::clone(&opened.store),
        Arc::clone(&opened.checkpoints),
        Arc::new(Projector(target)),
        config,
    )))
}

//! The `todos` read model: one row per todo of every list, in table `todo_view` of a SQL
//! read-model database, so the lists can be queried with SQL. One projector, written once
//! against the read-model contract ([`annals::ReadModelStore`]), serves every backend.
//! `annals serve` keeps it current with a reactor pipeline (consumer group [`GROUP`], which
//! parks a list whose events keep failing); each list's progress is recorded with the
//! schema version of this code ([`SCHEMA`]), and `annals rebuild todos` refolds the lists
//! whose rows older code built.
//!
//! Schema history: 1 — `list, id, title, completed, ord`.

use std::sync::Arc;

use annals::{catch_up_stream, projection_rows, rebuild};
use annals::{
    Codec, Dialect, EventStore, JsonCodec, ProjectionId, ProjectionRow, Projector, ProjectorError,
    ReadModelStore, Rebuilt, RecordedEvent, SqlTx, StreamName,
};
use annals_reactor::{FailurePolicy, PipelineConfig, Project, Running};
use async_trait::async_trait;

use crate::Event;

/// The projection's name (`annals rebuild todos`).
pub const NAME: &str = "todos";
/// The schema version of this code's rows.
pub const SCHEMA: u32 = 1;
/// The consumer group of the pipeline keeping the read model current.
pub const GROUP: &str = "annals.todos";
/// Failures after which a list is parked (its rows wait for `annals parked replay`).
pub const PARK_AFTER: u32 = 5;

/// The projector of table `todo_view`.
#[derive(Debug, Default)]
pub struct TodoView;

fn decode(e: &RecordedEvent) -> Result<Option<Event>, ProjectorError> {
    Ok(JsonCodec::<Event>::new().decode(e)?)
}

const UPSERT: &str = "INSERT INTO todo_view (list, id, title, completed, ord) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (list, id) DO UPDATE SET \
     title = excluded.title, completed = excluded.completed, ord = excluded.ord";

#[async_trait]
impl<R: ReadModelStore> Projector<R> for TodoView {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new(NAME, SCHEMA)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        // On SQLite, rows kept in their key's B-tree (`WITHOUT ROWID`): a changed todo is one
        // page to write back at commit, not a row page and a page of the key's index.
        let rowid = match tx.dialect() {
            Dialect::Sqlite => " WITHOUT ROWID",
            _ => "",
        };
        tx.batch(&format!(
            "CREATE TABLE IF NOT EXISTS todo_view (
                list TEXT NOT NULL,
                id BIGINT NOT NULL,
                title TEXT NOT NULL,
                completed BOOLEAN NOT NULL,
                ord BIGINT NOT NULL,
                PRIMARY KEY (list, id)){rowid}"
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        list: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        for e in events {
            match decode(e)? {
                Some(Event::Added(t) | Event::Updated(t)) => {
                    let params = [
                        list.into(),
                        (t.id as i64).into(),
                        t.title.as_str().into(),
                        t.completed.into(),
                        t.order.into(),
                    ];
                    tx.execute(UPSERT, &params).await?;
                }
                Some(Event::Deleted { id }) => {
                    tx.execute(
                        "DELETE FROM todo_view WHERE list = $1 AND id = $2",
                        &[list.into(), (id as i64).into()],
                    )
                    .await?;
                }
                Some(Event::Cleared { .. }) => {
                    tx.execute("DELETE FROM todo_view WHERE list = $1", &[list.into()])
                        .await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut R::Tx<'_>, list: &StreamName) -> Result<(), ProjectorError> {
        tx.execute("DELETE FROM todo_view WHERE list = $1", &[list.into()])
            .await?;
        Ok(())
    }
}

/// The pipeline settings of the read model: the todo lists, parking a list that keeps
/// failing so the others go on.
pub fn pipeline() -> PipelineConfig {
    PipelineConfig::new(GROUP)
        .filter(annals::Filter::category(crate::CATEGORY))
        .on_failure(FailurePolicy::Park { after: PARK_AFTER })
}

/// Starts the pipeline keeping the read model in `read_model` current from `events`.
pub async fn spawn<R: ReadModelStore>(
    events: Arc<dyn EventStore>,
    read_model: Arc<R>,
) -> annals::Result<Running> {
    let handler = Project::new(
        Arc::clone(&events),
        Arc::clone(&read_model),
        Arc::new(TodoView),
    )
    .await?;
    Ok(annals_reactor::spawn(
        events,
        read_model,
        Arc::new(handler),
        pipeline(),
    ))
}

/// The rows recorded per list (progress, schema, the list's version). Only reads: none
/// before the read model is first set up, and it works on a store open read-only.
pub async fn rows<R: ReadModelStore>(
    events: &dyn EventStore,
    read_model: &R,
) -> annals::Result<Vec<ProjectionRow>> {
    projection_rows(events, read_model, NAME).await
}

/// Refolds the lists built by older code (`all`: every list recorded).
pub async fn rebuild_lists<R: ReadModelStore>(
    events: &dyn EventStore,
    read_model: &R,
    all: bool,
) -> annals::Result<Rebuilt> {
    let view = Arc::new(TodoView);
    read_model.setup(&view).await?;
    rebuild(events, read_model, &view, all).await
}

/// Applies a list's events after the read model's progress (a parked list, once its cause
/// is fixed), exactly once; the events applied.
pub async fn catch_up<R: ReadModelStore>(
    events: &dyn EventStore,
    read_model: &R,
    list: &StreamName,
) -> annals::Result<u64> {
    catch_up_stream(events, read_model, &Arc::new(TodoView), list).await
}

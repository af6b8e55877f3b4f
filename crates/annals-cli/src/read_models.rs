//! The read models this build keeps (`todos`, from the todo example), over whichever
//! read-model database was chosen: the one place that dispatches from [`ReadModelDb`] to a
//! concrete store.

use crate::store_url::ReadModelDb;

/// The read models this build can rebuild, for messages.
pub(crate) const PROJECTIONS: &str = todos::NAME;

/// Runs `$body` with `$r` bound to the concrete read-model store (an `Arc`).
macro_rules! on_db {
    ($db:expr, $r:ident => $body:expr) => {
        match $db {
            ReadModelDb::Sqlite($r) => $body,
            ReadModelDb::Postgres($r) => $body,
        }
    };
}

/// `todos`: the TodoBackend lists of `annals serve` (table `todo_view`).
pub(crate) mod todos {
    use std::sync::Arc;

    use annals::{EventStore, ProjectionRow, Rebuilt, StreamName};
    use annals_reactor::Running;
    use example_todo::view;
    pub(crate) use example_todo::view::{GROUP, NAME, SCHEMA};

    use super::ReadModelDb;

    /// Starts the pipeline keeping the read model in `db` current from `events`.
    pub(crate) async fn spawn(
        events: Arc<dyn EventStore>,
        db: &ReadModelDb,
    ) -> annals::Result<Running> {
        on_db!(db, r => view::spawn(events, Arc::clone(r)).await)
    }

    /// The rows recorded per list.
    pub(crate) async fn rows(
        events: &dyn EventStore,
        db: &ReadModelDb,
    ) -> annals::Result<Vec<ProjectionRow>> {
        on_db!(db, r => view::rows(events, &**r).await)
    }

    /// Refolds the lists built by older code (`all`: every list recorded).
    pub(crate) async fn rebuild_lists(
        events: &dyn EventStore,
        db: &ReadModelDb,
        all: bool,
    ) -> annals::Result<Rebuilt> {
        on_db!(db, r => view::rebuild_lists(events, &**r, all).await)
    }

    /// Applies a list's events after the read model's progress, exactly once.
    pub(crate) async fn catch_up(
        events: &dyn EventStore,
        db: &ReadModelDb,
        list: &StreamName,
    ) -> annals::Result<u64> {
        on_db!(db, r => view::catch_up(events, &**r, list).await)
    }
}

/// The read models of this build, for the admin pages (their page, replay and rebuild).
#[derive(Debug)]
pub(crate) struct AdminReadModels {
    pub(crate) events: std::sync::Arc<dyn annals::EventStore>,
    pub(crate) db: ReadModelDb,
}

#[async_trait::async_trait]
impl annals_admin::ReadModels for AdminReadModels {
    async fn list(&self) -> annals::Result<Vec<annals_admin::ReadModel>> {
        Ok(vec![annals_admin::ReadModel {
            name: todos::NAME.into(),
            group: todos::GROUP.into(),
            schema: todos::SCHEMA,
            rows: todos::rows(&*self.events, &self.db).await?,
        }])
    }

    async fn replay(
        &self,
        group: &str,
        stream: &annals::StreamName,
    ) -> annals::Result<Option<u64>> {
        if group != todos::GROUP {
            return Ok(None);
        }
        todos::catch_up(&*self.events, &self.db, stream)
            .await
            .map(Some)
    }

    async fn rebuild(&self, name: &str) -> annals::Result<Option<annals::Rebuilt>> {
        if name != todos::NAME {
            return Ok(None);
        }
        todos::rebuild_lists(&*self.events, &self.db, false)
            .await
            .map(Some)
    }
}

//! Read models kept in a SQLite file ([`annals::ReadModelStore`]), fed from any event store.
//!
//! Read-model transactions run on the store's writer thread, each in its own savepoint of
//! a group transaction like appends: one fsync serves many, and a read model kept in the
//! event store's own file never contends with appends for SQLite's write lock. The
//! projector's code is polled there to completion; it should await only its transaction
//! (the tokio runtime of the caller is entered, so timers work, but the writer waits).

use std::sync::{Arc, Mutex};

use annals::backend::{check_events, check_rebuild, rebuild_behind};
use annals::{
    ApplyError, Dialect, Error, Projector, ProjectorError, ReadModelStore, RecordedEvent, Result,
    SqlTx, SqlValue, StreamName, StreamProgress, Version,
};
use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Statement};

use crate::error::backend;
use crate::writer::{finish, lock, Request};
use crate::SqliteStore;

/// A read-model transaction on SQLite: a savepoint of the writer's transaction. Through
/// [`SqlTx`] it runs portable statements; [`SqliteTx::with`] gives the `rusqlite`
/// connection to projectors written for SQLite alone.
pub struct SqliteTx<'t> {
    conn: &'t Mutex<Connection>,
}

impl std::fmt::Debug for SqliteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteTx")
    }
}

impl SqliteTx<'_> {
    /// Runs `f` on the connection, inside the transaction. It must not commit or roll back:
    /// a `COMMIT` is refused (SQLite rolls back instead) and either ends the transaction,
    /// so the apply and the writes grouped with it fail, with nothing of them written.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&lock(self.conn))
    }
}

fn sql_error(e: rusqlite::Error) -> Error {
    backend(e)
}

/// Binds `$n` (or `?n`, or plain `?` in order) placeholders to `params`.
fn bind(statement: &mut Statement<'_>, params: &[SqlValue]) -> Result<()> {
    let count = statement.parameter_count();
    for i in 1..=count {
        let n = match statement.parameter_name(i) {
            Some(name) => name
                .strip_prefix('$')
                .or_else(|| name.strip_prefix('?'))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::ReadModel {
                    reason: format!("placeholder {name}: use $1, $2..."),
                })?,
            None => i,
        };
        let value = params
            .get(n.wrapping_sub(1))
            .ok_or_else(|| Error::ReadModel {
                reason: format!(
                    "the statement has placeholder ${n} but {} values were given",
                    params.len()
                ),
            })?;
        let bound = match value {
            SqlValue::Null => statement.raw_bind_parameter(i, rusqlite::types::Null),
            SqlValue::Bool(b) => statement.raw_bind_parameter(i, b),
            SqlValue::Int(v) => statement.raw_bind_parameter(i, v),
            SqlValue::Float(v) => statement.raw_bind_parameter(i, v),
            SqlValue::Text(v) => statement.raw_bind_parameter(i, v.as_str()),
            SqlValue::Bytes(v) => statement.raw_bind_parameter(i, v.as_slice()),
        };
        bound.map_err(sql_error)?;
    }
    Ok(())
}

fn value(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Int(i),
        ValueRef::Real(f) => SqlValue::Float(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Bytes(b.to_vec()),
    }
}

fn query(conn: &Connection, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
    let mut statement = conn.prepare_cached(sql).map_err(sql_error)?;
    bind(&mut statement, params)?;
    let columns = statement.column_count();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        out.push(
            (0..columns)
                .map(|i| row.get_ref(i).map(value))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_error)?,
        );
    }
    Ok(out)
}

#[async_trait]
impl SqlTx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let conn = lock(self.conn);
        let mut statement = conn.prepare_cached(sql).map_err(sql_error)?;
        bind(&mut statement, params)?;
        Ok(statement.raw_execute().map_err(sql_error)? as u64)
    }

    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        query(&lock(self.conn), sql, params)
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        lock(self.conn).execute_batch(sql).map_err(sql_error)
    }
}

/// Runs a projector's future to completion on this thread, with the caller's runtime
/// entered; an error or panic becomes a store error naming the projection and stream.
fn run_projector<'f>(
    handle: Option<&tokio::runtime::Handle>,
    projection: &str,
    stream: Option<&StreamName>,
    future: impl std::future::Future<Output = std::result::Result<(), ProjectorError>> + 'f,
) -> Result<()> {
    let _runtime = handle.map(tokio::runtime::Handle::enter);
    let run = std::panic::AssertUnwindSafe(|| futures::executor::block_on(future));
    let source: ProjectorError = match std::panic::catch_unwind(run) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => "the projector panicked; its changes were rolled back".into(),
    };
    Err(Error::backend(
        "sqlite",
        ApplyError {
            projection: projection.to_owned(),
            stream: stream.cloned(),
            source,
        },
    ))
}

pub(crate) fn read_progress(
    conn: &Connection,
    projection: &str,
    stream: &str,
) -> rusqlite::Result<Option<(u64, u32)>> {
    conn.prepare_cached(
        "SELECT next_version, schema_version FROM annals_projection_streams \
         WHERE projection = ?1 AND stream = ?2",
    )?
    .query_row(params![projection, stream], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32))
    })
    .optional()
}

/// Records the progress. A row built from the stream's first event is of the current
/// schema; a row that had progress keeps the schema it was built with, unless `rebuilt`.
fn write_progress(
    conn: &Connection,
    projection: &str,
    schema: u32,
    stream: &str,
    next: u64,
    rebuilt: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO annals_projection_streams (projection, stream, next_version, schema_version) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (projection, stream) DO UPDATE SET next_version = excluded.next_version, \
         schema_version = CASE WHEN ?5 OR annals_projection_streams.next_version = 0 \
         THEN excluded.schema_version ELSE annals_projection_streams.schema_version END",
    )?
    .execute(params![projection, stream, next as i64, schema, rebuilt])?;
    Ok(())
}

impl SqliteStore {
    /// Runs `work` on the writer thread in its own savepoint of a group transaction.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Mutex<Connection>) -> Result<T> + Send + 'static,
    {
        self.request(|reply| Request::ReadModel {
            job: Box::new(move |conn| {
                let r = conn.and_then(work);
                let ok = r.is_ok();
                (finish(reply, r), ok)
            }),
        })
        .await
    }
}

#[async_trait]
impl ReadModelStore for SqliteStore {
    type Tx<'t> = SqliteTx<'t>;

    async fn setup<P: Projector<Self>>(&self, projector: &Arc<P>) -> Result<()> {
        let projector = Arc::clone(projector);
        let handle = tokio::runtime::Handle::try_current().ok();
        self.write(move |conn| {
            let id = projector.id();
            let mut tx = SqliteTx { conn };
            run_projector(handle.as_ref(), id.name, None, projector.setup(&mut tx))
        })
        .await
    }

    async fn progress(
        &self,
        projection: &str,
        stream: &StreamName,
    ) -> Result<Option<StreamProgress>> {
        let (projection, name) = (projection.to_owned(), stream.clone());
        let row = self
            .read(move |conn| read_progress(conn, &projection, name.as_str()))
            .await?;
        Ok(row.map(|(version, schema)| StreamProgress {
            stream: stream.clone(),
            version: Version(version),
            schema,
        }))
    }

    async fn apply<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version> {
        check_events(stream, events)?;
        let projector = Arc::clone(projector);
        let (stream, events) = (stream.clone(), events.to_vec());
        let handle = tokio::runtime::Handle::try_current().ok();
        self.write(move |conn| {
            let id = projector.id();
            let next = read_progress(&lock(conn), id.name, stream.as_str())
                .map_err(sql_error)?
                .map_or(0, |(v, _)| v);
            let fresh = &events[events.partition_point(|e| e.stream_version < next)..];
            let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
                return Ok(Version(next));
            };
            if first.stream_version > next {
                // Events are missing in between: the caller reads them first.
                return Ok(Version(next));
            }
            let after = last.stream_version + 1;
            let mut tx = SqliteTx { conn };
            run_projector(
                handle.as_ref(),
                id.name,
                Some(&stream),
                projector.apply(&mut tx, &stream, fresh),
            )?;
            write_progress(
                &lock(conn),
                id.name,
                id.schema,
                stream.as_str(),
                after,
                false,
            )
            .map_err(sql_error)?;
            Ok(Version(after))
        })
        .await
    }

    async fn replace<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
        version: Version,
    ) -> Result<u64> {
        let next = check_rebuild(stream, events, version)?;
        let projector = Arc::clone(projector);
        let (stream, events) = (stream.clone(), events.to_vec());
        let handle = tokio::runtime::Handle::try_current().ok();
        self.write(move |conn| {
            let id = projector.id();
            let applied = read_progress(&lock(conn), id.name, stream.as_str())
                .map_err(sql_error)?
                .map_or(0, |(v, _)| v);
            let count = events.len() as u64;
            if applied > next {
                return Err(rebuild_behind(id.name, &stream, applied, next));
            }
            let mut tx = SqliteTx { conn };
            let work = async {
                projector.clear(&mut tx, &stream).await?;
                if !events.is_empty() {
                    projector.apply(&mut tx, &stream, &events).await?;
                }
                Ok(())
            };
            run_projector(handle.as_ref(), id.name, Some(&stream), work)?;
            write_progress(&lock(conn), id.name, id.schema, stream.as_str(), next, true)
                .map_err(sql_error)?;
            Ok(count)
        })
        .await
    }

    async fn skip_hidden<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        to: Version,
    ) -> Result<Version> {
        let id = projector.id();
        let (projection, schema) = (id.name.to_owned(), id.schema);
        let stream = stream.clone();
        self.write(move |conn| {
            let conn = lock(conn);
            let next = read_progress(&conn, &projection, stream.as_str())
                .map_err(sql_error)?
                .map_or(0, |(v, _)| v);
            if next >= to.get() {
                return Ok(Version(next));
            }
            write_progress(&conn, &projection, schema, stream.as_str(), to.get(), false)
                .map_err(sql_error)?;
            Ok(to)
        })
        .await
    }

    async fn rows(&self, projection: &str) -> Result<Vec<StreamProgress>> {
        let projection = projection.to_owned();
        let rows: Vec<(String, i64, i64)> = self
            .read(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT stream, next_version, schema_version FROM annals_projection_streams \
                     WHERE projection = ?1 ORDER BY stream",
                )?;
                let rows =
                    statement.query_map([projection], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(stream, version, schema)| {
                Ok(StreamProgress {
                    stream: StreamName::new(stream)?,
                    version: Version(version as u64),
                    schema: schema as u32,
                })
            })
            .collect()
    }

    async fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        let (sql, params) = (sql.to_owned(), params.to_vec());
        self.readers()
            .with(move |conn| query(conn, &sql, &params))
            .await
    }
}

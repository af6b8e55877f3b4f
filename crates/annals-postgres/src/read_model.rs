//! Read models kept in PostgreSQL ([`annals::ReadModelStore`]), fed from any event store,
//! and the parked streams of consumer groups.
//!
//! A read-model transaction is `BEGIN`, the projection's progress row locked
//! (`SELECT ... FOR UPDATE`), the projector's statements, the new progress and `COMMIT`,
//! on one pooled connection with statements prepared once per connection. `BEGIN` goes out
//! with the lock, and the progress with `COMMIT` (pipelined), so an apply of one statement
//! costs three round trips. Unqualified table names resolve to the store's schema (the
//! pool's connections start with `search_path` set to it).

use std::sync::Arc;

use annals::backend::{check_events, check_rebuild, rebuild_behind};
use annals::{
    ApplyError, Dialect, Error, ParkedStream, Projector, ProjectorError, ReadModelStore,
    RecordedEvent, Result, SqlTx, SqlValue, StreamName, StreamProgress, Timestamp, Version,
};
use async_trait::async_trait;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::ToSql;

use crate::conn::Conn;
use crate::error::backend;
use crate::prepared;
use crate::sql_value::{decode_rows, query, Param};
use crate::{bigint, PgStore};

/// A read-model transaction on PostgreSQL. Through [`SqlTx`] it runs portable statements;
/// [`PgTx::client`] gives the connection, inside the transaction, to projectors written for
/// PostgreSQL alone.
pub struct PgTx<'t> {
    client: &'t ClientWrapper,
    /// `BEGIN`, until it is sent with the first statement.
    begin: Option<&'static str>,
}

impl std::fmt::Debug for PgTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTx")
    }
}

impl<'t> PgTx<'t> {
    fn begun(client: &'t ClientWrapper) -> Self {
        Self {
            client,
            begin: None,
        }
    }

    /// Sends `BEGIN` if it has not been sent yet.
    async fn ensure_begun(&mut self) -> Result<()> {
        if let Some(begin) = self.begin.take() {
            self.client.batch_execute(begin).await.map_err(backend)?;
        }
        Ok(())
    }

    /// The connection, inside the transaction (statements prepared through
    /// `prepare_cached` are kept per connection). It must not commit or roll back.
    pub async fn client(&mut self) -> Result<&'t ClientWrapper> {
        self.ensure_begun().await?;
        Ok(self.client)
    }

    /// Runs `statement` with `BEGIN` before it in the same round trip when it is still due.
    async fn first<T>(
        &mut self,
        statement: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match self.begin.take() {
            Some(begin) => {
                let (begun, result) = futures::join!(self.client.batch_execute(begin), statement);
                begun.map_err(backend)?;
                result.map_err(backend)
            }
            None => statement.await.map_err(backend),
        }
    }
}

/// The progress each projection last recorded per stream, as this process knows it. Only
/// ever a hint: the commit of an apply checks the progress it started from.
pub(crate) struct ProgressCache(std::sync::Mutex<lru::LruCache<(String, String), u64>>);

impl Default for ProgressCache {
    fn default() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(100_000).expect("not zero"),
        )))
    }
}

impl ProgressCache {
    fn get(&self, projection: &str, stream: &StreamName) -> Option<u64> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&(projection.to_owned(), stream.as_str().to_owned()))
            .copied()
    }

    fn put(&self, projection: &str, stream: &StreamName, next: u64) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.put((projection.to_owned(), stream.as_str().to_owned()), next);
    }

    fn forget(&self, projection: &str, stream: &StreamName) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.pop(&(projection.to_owned(), stream.as_str().to_owned()));
    }
}

#[async_trait]
impl SqlTx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let client = self.client;
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        let run = client.execute_raw(&statement, params.iter().map(|p| p as &(dyn ToSql + Sync)));
        self.first(run).await
    }

    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        let client = self.client;
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.first(client.query(&statement, &refs)).await?;
        decode_rows(&rows)
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        let client = self.client;
        self.first(client.batch_execute(sql)).await
    }
}

/// Moving a progress from what an apply read to where it got.
struct Advance<'a> {
    projection: &'a str,
    schema: u32,
    stream: &'a StreamName,
    from: Option<u64>,
    to: u64,
    /// `BEGIN`, when no statement has sent it yet.
    begin: Option<&'static str>,
}

/// How a read-model apply's transaction begins: its commit need not wait for the disk (see
/// `advance_and_commit`).
const BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// Why an apply's commit failed.
enum MovedOr {
    /// Another applier moved the progress: apply again.
    Moved,
    /// Anything else.
    Error(Error),
}

fn projector_failed(
    projection: &str,
    stream: Option<&StreamName>,
    source: ProjectorError,
) -> Error {
    Error::backend(
        "postgres",
        ApplyError {
            projection: projection.to_owned(),
            stream: stream.cloned(),
            source,
        },
    )
}

/// A read-model transaction: it closes its connection (which rolls it back) when dropped
/// before it ends, so a half-done transaction never returns to the pool.
type Transaction = Conn;

/// Ends a transaction that wrote nothing: `COMMIT` if it was begun, otherwise the
/// connection simply goes back to the pool.
async fn release(mut tx: Transaction, begun: bool) -> Result<()> {
    if begun {
        return tx.commit().await;
    }
    tx.ended();
    Ok(())
}

impl PgStore {
    async fn begin(&self) -> Result<Transaction> {
        let mut tx = self.client().await?;
        tx.begin().await?;
        Ok(tx)
    }

    /// A pooled connection for a transaction whose `BEGIN` goes out with its first
    /// statement.
    async fn lazy(&self) -> Result<Transaction> {
        let mut tx = self.client().await?;
        tx.beginning();
        Ok(tx)
    }

    /// Begins a read-model transaction (its commit need not wait for the disk: see
    /// `advance_and_commit`) and reads `projection`'s progress in `stream` with `sql` (which
    /// may lock it), in one round trip.
    async fn begin_with_progress(
        &self,
        sql: &str,
        projection: &str,
        stream: &StreamName,
    ) -> Result<(Transaction, Option<u64>)> {
        // Open before `BEGIN` is sent: a caller gone meanwhile closes the connection.
        let mut tx = self.client().await?;
        tx.beginning();
        let client = tx.client();
        let read = client.prepare_cached(sql).await.map_err(backend)?;
        let name = stream.as_str();
        let params: [&(dyn ToSql + Sync); 2] = [&projection, &name];
        let (begun, row) = futures::join!(
            client.batch_execute(BEGIN),
            client.query_opt(&read, &params)
        );
        begun.map_err(backend)?;
        let progress = row.map_err(backend)?.map(|r| r.get::<_, i64>(0) as u64);
        Ok((tx, progress))
    }

    /// Begins and reads the progress without a lock (the commit checks it).
    async fn begin_reading(
        &self,
        projection: &str,
        stream: &StreamName,
    ) -> Result<(Transaction, Option<u64>)> {
        let sql = &self.inner.sql.progress_get;
        self.begin_with_progress(sql, projection, stream).await
    }

    /// Moves the progress from what was read to `to` and commits, in one round trip; `Moved`
    /// (everything rolled back) when another applier moved it meanwhile.
    ///
    /// The commit does not wait for the disk (`synchronous_commit = off`): a crash may lose
    /// the last applies, rows and progress together, never one without the other. The
    /// pipeline's checkpoint, committed durably after them, flushes them first, so it never
    /// passes an event whose apply was lost: those events are delivered and applied again.
    async fn advance_and_commit(
        &self,
        mut tx: Transaction,
        a: Advance<'_>,
    ) -> std::result::Result<(), MovedOr> {
        let client = tx.client();
        let statement = client
            .prepare_cached(&self.inner.sql.progress_advance)
            .await
            .map_err(|e| MovedOr::Error(backend(e)))?;
        let (name, exists) = (a.stream.as_str(), a.from.is_some());
        let (from, to, schema) = (a.from.unwrap_or(0) as i64, a.to as i64, a.schema as i32);
        let params: [&(dyn ToSql + Sync); 6] = [&a.projection, &name, &exists, &from, &to, &schema];
        let begin = async {
            match a.begin {
                Some(begin) => client.batch_execute(begin).await,
                None => Ok(()),
            }
        };
        let (begun, set, commit) = futures::join!(
            begin,
            client.query_one(&statement, &params),
            client.batch_execute("COMMIT")
        );
        let set = begun.and(set);
        match (set, commit) {
            (Ok(_), Ok(())) => {
                tx.ended();
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => {
                // A failed statement makes COMMIT roll back: nothing was recorded.
                let moved =
                    e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE);
                if moved {
                    // The connection is clean (the COMMIT ended the transaction).
                    tx.ended();
                    return Err(MovedOr::Moved);
                }
                // Dropped open: the connection is closed.
                Err(MovedOr::Error(backend(e)))
            }
        }
    }

    /// Begins a transaction and locks `projection`'s progress row in `stream` (creating it
    /// at 0), in one round trip; returns the transaction and the progress.
    async fn begin_locked(
        &self,
        projection: &str,
        stream: &StreamName,
    ) -> Result<(Transaction, u64)> {
        let sql = &self.inner.sql.progress_lock;
        let (tx, progress) = self.begin_with_progress(sql, projection, stream).await?;
        Ok((tx, progress.unwrap_or(0)))
    }

    /// Records the progress and commits, in one round trip.
    async fn commit_progress(
        &self,
        tx: Transaction,
        sql: &str,
        projection: &str,
        schema: u32,
        stream: &StreamName,
        next: u64,
    ) -> Result<()> {
        let client = tx.client();
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        let (schema, name, next) = (schema as i32, stream.as_str(), next as i64);
        let params: [&(dyn ToSql + Sync); 4] = [&projection, &name, &next, &schema];
        let (set, commit) = futures::join!(
            client.execute(&statement, &params),
            client.batch_execute("COMMIT")
        );
        let mut tx = tx;
        match (set, commit) {
            (Ok(_), Ok(())) => {
                tx.ended();
                Ok(())
            }
            // A failed statement makes COMMIT roll back: nothing was recorded. Dropped open,
            // the transaction closes its connection.
            (Err(e), _) | (_, Err(e)) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl ReadModelStore for PgStore {
    type Tx<'t> = PgTx<'t>;

    async fn setup<P: Projector<Self>>(&self, projector: &Arc<P>) -> Result<()> {
        let mut tx = self.begin().await?;
        let mut ptx = PgTx::begun(tx.client());
        projector
            .setup(&mut ptx)
            .await
            .map_err(|e| projector_failed(projector.id().name, None, e))?;
        tx.commit().await
    }

    async fn progress(
        &self,
        projection: &str,
        stream: &StreamName,
    ) -> Result<Option<StreamProgress>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.progress_get)
            .await
            .map_err(|e| client.failed(e))?;
        let row = client
            .query_opt(&statement, &[&projection, &stream.as_str()])
            .await
            .map_err(|e| client.failed(e))?;
        Ok(row.map(|r| StreamProgress {
            stream: stream.clone(),
            version: Version(r.get::<_, i64>(0) as u64),
            schema: r.get::<_, i32>(1) as u32,
        }))
    }

    async fn apply<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version> {
        check_events(stream, events)?;
        let id = projector.id();
        let cache = &self.inner.progress;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The progress this process recorded last, if any, saves reading it: the commit
            // checks it, and a stale one costs one more attempt.
            let cached = cache.get(id.name, stream);
            let (mut tx, progress, begin) = match cached {
                Some(p) => (self.lazy().await?, Some(p), Some(BEGIN)),
                None => {
                    let (tx, p) = self.begin_reading(id.name, stream).await?;
                    (tx, p, None)
                }
            };
            let next = progress.unwrap_or(0);
            let fresh = &events[events.partition_point(|e| e.stream_version < next)..];
            let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
                if cached.is_some() {
                    // Nothing new by the cache: make sure with the stored progress.
                    cache.forget(id.name, stream);
                    release(tx, begin.is_none()).await?;
                    continue;
                }
                tx.commit().await?;
                return Ok(Version(next));
            };
            if first.stream_version > next {
                if cached.is_some() {
                    cache.forget(id.name, stream);
                    release(tx, begin.is_none()).await?;
                    continue;
                }
                // Events are missing in between: the caller reads them first.
                tx.commit().await?;
                return Ok(Version(next));
            }
            let mut ptx = PgTx {
                client: tx.client(),
                begin,
            };
            let applied = projector.apply(&mut ptx, stream, fresh).await;
            let begin = ptx.begin;
            applied.map_err(|e| projector_failed(id.name, Some(stream), e))?;
            let after = last.stream_version + 1;
            let advance = Advance {
                projection: id.name,
                schema: id.schema,
                stream,
                from: progress,
                to: after,
                begin,
            };
            match self.advance_and_commit(tx, advance).await {
                Ok(()) => {
                    cache.put(id.name, stream, after);
                    return Ok(Version(after));
                }
                Err(MovedOr::Error(e)) => {
                    cache.forget(id.name, stream);
                    return Err(e);
                }
                // Another applier moved the progress meanwhile: everything rolled back.
                Err(MovedOr::Moved) if attempt < 10 => cache.forget(id.name, stream),
                Err(MovedOr::Moved) => {
                    cache.forget(id.name, stream);
                    return Err(Error::ReadModel {
                        reason: format!(
                            "{stream}: the progress of {} kept moving under {attempt} applies",
                            id.name
                        ),
                    });
                }
            }
        }
    }

    async fn replace<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
        version: Version,
    ) -> Result<u64> {
        let next = check_rebuild(stream, events, version)?;
        let id = projector.id();
        let (tx, applied) = self.begin_locked(id.name, stream).await?;
        let count = events.len() as u64;
        if applied > next {
            return Err(rebuild_behind(id.name, stream, applied, next));
        }
        let mut ptx = PgTx::begun(tx.client());
        let work = async {
            projector.clear(&mut ptx, stream).await?;
            if !events.is_empty() {
                projector.apply(&mut ptx, stream, events).await?;
            }
            Ok::<_, ProjectorError>(())
        };
        work.await
            .map_err(|e| projector_failed(id.name, Some(stream), e))?;
        let sql = &self.inner.sql.progress_rebuilt;
        self.inner.progress.forget(id.name, stream);
        self.commit_progress(tx, sql, id.name, id.schema, stream, next)
            .await?;
        Ok(count)
    }

    async fn skip_hidden<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        to: Version,
    ) -> Result<Version> {
        let id = projector.id();
        let client = self.client().await?;
        let statement = prepared(&client, &self.inner.sql.progress_skip).await?;
        let (schema, to) = (id.schema as i32, bigint(to.get()));
        let row = client
            .query_one(&statement, &[&id.name, &stream.as_str(), &to, &schema])
            .await
            .map_err(|e| client.failed(e))?;
        let next = row.try_get::<_, i64>(0).map_err(backend)? as u64;
        self.inner.progress.forget(id.name, stream);
        Ok(Version(next))
    }

    async fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        let client = self.client().await?;
        query(&client, sql, params).await
    }

    async fn rows(&self, projection: &str) -> Result<Vec<StreamProgress>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.inner.sql.projection_rows).await?,
                &[&projection],
            )
            .await
            .map_err(|e| client.failed(e))?;
        rows.iter()
            .map(|r| {
                Ok(StreamProgress {
                    stream: StreamName::new(r.get::<_, &str>(0))?,
                    version: Version(r.get::<_, i64>(1) as u64),
                    schema: r.get::<_, i32>(2) as u32,
                })
            })
            .collect()
    }
}

impl PgStore {
    pub(crate) async fn park_stream(&self, p: &ParkedStream) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.parked_upsert)
            .await
            .map_err(|e| client.failed(e))?;
        client
            .execute(
                &statement,
                &[
                    &p.group,
                    &p.stream.as_str(),
                    &(p.from.get() as i64),
                    &(p.to.get() as i64),
                    &(p.attempts as i32),
                    &p.first_error,
                    &p.last_error,
                    &p.parked_at.unix_micros(),
                    &p.updated_at.unix_micros(),
                ],
            )
            .await
            .map(drop)
            .map_err(|e| client.failed(e))
    }

    pub(crate) async fn parked_streams(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.inner.sql.parked_list).await?,
                &[&group],
            )
            .await
            .map_err(|e| client.failed(e))?;
        rows.iter()
            .map(|r| {
                Ok(ParkedStream {
                    group: r.get(0),
                    stream: StreamName::new(r.get::<_, &str>(1))?,
                    from: Version(r.get::<_, i64>(2) as u64),
                    to: Version(r.get::<_, i64>(3) as u64),
                    attempts: r.get::<_, i32>(4) as u32,
                    first_error: r.get(5),
                    last_error: r.get(6),
                    parked_at: Timestamp::from_unix_micros(r.get(7)),
                    updated_at: Timestamp::from_unix_micros(r.get(8)),
                })
            })
            .collect()
    }

    pub(crate) async fn unpark_stream(&self, group: &str, stream: &StreamName) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                &prepared(&client, &self.inner.sql.parked_delete).await?,
                &[&group, &stream.as_str()],
            )
            .await
            .map_err(|e| client.failed(e))?;
        Ok(n > 0)
    }
}

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

use annals::read_model::check_events;
use annals::{
    ApplyError, Dialect, Error, ParkedStream, Projector, ProjectorError,
    ReadModelStore, RecordedEvent, Result, SqlTx, SqlValue, StreamName, StreamProgress,
    Timestamp, Version,
};
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::error::backend;
use crate::PgStore;

/// A read-model transaction on PostgreSQL. Through [`SqlTx`] it runs portable statements;
/// [`PgTx::client`] gives the connection, inside the transaction, to projectors written for
/// PostgreSQL alone.
pub struct PgTx<'t> {
    client: &'t ClientWrapper,
}

impl std::fmt::Debug for PgTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTx")
    }
}

impl<'t> PgTx<'t> {
    /// The connection, inside the transaction (statements prepared through
    /// `prepare_cached` are kept per connection). It must not commit or roll back.
    pub fn client(&self) -> &'t ClientWrapper {
        self.client
    }
}

/// A [`SqlValue`] bound to a parameter of whatever type the statement declares.
#[derive(Debug)]
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot bind {:?} to a parameter of type {ty}", self.0).into()
        };
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            SqlValue::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Float(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                // The binary forms: the text, after a version byte for jsonb.
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(mismatch()),
            },
            SqlValue::Bytes(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A `numeric` (what `sum` and `avg` return): an integer when it is whole and fits, its
/// exact decimal text otherwise.
struct Numeric(SqlValue);

impl<'a> tokio_postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |k: usize| -> std::result::Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(k..k + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "a truncated numeric".into())
        };
        let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?, word(4)? as u16, word(6)?);
        if sign == 0xC000 {
            return Ok(Numeric(SqlValue::Text("NaN".into())));
        }
        let digits: Vec<i16> = (0..ndigits.max(0) as usize)
            .map(|k| word(8 + 2 * k))
            .collect::<std::result::Result<_, _>>()?;
        // Base-10000 digits: `weight` is the power of the first.
        let mut int_part = String::new();
        for p in 0..=weight.max(-1) {
            let d = digits.get(p as usize).copied().unwrap_or(0);
            if int_part.is_empty() {
                if d != 0 {
                    int_part = d.to_string();
                }
            } else {
                int_part.push_str(&format!("{d:04}"));
            }
        }
        if int_part.is_empty() {
            int_part.push('0');
        }
        let mut frac = String::new();
        for p in (weight + 1).max(0)..ndigits.max(0) {
            let d = digits.get(p as usize).copied().unwrap_or(0);
            frac.push_str(&format!("{d:04}"));
        }
        let mut frac: String = frac
            .chars()
            .chain(std::iter::repeat('0'))
            .take(dscale.max(0) as usize)
            .collect();
        if weight < -1 {
            let zeros = "0000".repeat((-1 - weight) as usize);
            frac = format!("{zeros}{frac}")
                .chars()
                .take(dscale.max(0) as usize)
                .collect();
        }
        let negative = sign == 0x4000;
        if frac.chars().all(|c| c == '0') {
            if let Ok(v) = int_part.parse::<i64>() {
                return Ok(Numeric(SqlValue::Int(if negative { -v } else { v })));
            }
        }
        let sign = if negative { "-" } else { "" };
        let text = if frac.is_empty() {
            format!("{sign}{int_part}")
        } else {
            format!("{sign}{int_part}.{frac}")
        };
        Ok(Numeric(SqlValue::Text(text)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn column(row: &tokio_postgres::Row, i: usize) -> Result<SqlValue> {
    let ty = row.columns()[i].type_();
    let get = |e: tokio_postgres::Error| backend(e);
    Ok(match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(get)?.map(SqlValue::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Int(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(get)?.map(SqlValue::Int),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Float(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(get)?.map(SqlValue::Float),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)
            .map_err(get)?
            .map(SqlValue::Text),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(get)?
            .map(SqlValue::Bytes),
        Type::NUMERIC => row
            .try_get::<_, Option<Numeric>>(i)
            .map_err(get)?
            .map(|n| n.0),
        ref other => {
            return Err(Error::ReadModel {
                reason: format!(
                    "column {} is of type {other}: cast it in the query (for example ::text)",
                    row.columns()[i].name()
                ),
            })
        }
    }
    .unwrap_or(SqlValue::Null))
}

async fn query(
    client: &ClientWrapper,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<Vec<SqlValue>>> {
    let statement = client.prepare_cached(sql).await.map_err(backend)?;
    let params: Vec<Param<'_>> = params.iter().map(Param).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&statement, &refs).await.map_err(backend)?;
    rows.iter()
        .map(|row| (0..row.len()).map(|i| column(row, i)).collect())
        .collect()
}

#[async_trait]
impl SqlTx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let statement = self.client.prepare_cached(sql).await.map_err(backend)?;
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        self.client
            .execute_raw(&statement, params.iter().map(|p| p as &(dyn ToSql + Sync)))
            .await
            .map_err(backend)
    }

    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        query(self.client, sql, params).await
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).await.map_err(backend)
    }
}

fn projector_failed(projection: &str, stream: Option<&StreamName>, source: ProjectorError) -> Error {
    Error::backend(
        "postgres",
        ApplyError {
            projection: projection.to_owned(),
            stream: stream.cloned(),
            source,
        },
    )
}

/// One read-model transaction on a pooled connection: begun (with the search path set to
/// the store's schema) and, unless committed, closed with the connection (which rolls it
/// back) so a half-done transaction never returns to the pool.
struct Transaction {
    client: Option<Object>,
}

impl Transaction {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("open until finished")
    }

    async fn commit(mut self) -> Result<()> {
        let client = self.client.take().expect("open until finished");
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(Object::take(client));
                Err(backend(e))
            }
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl PgStore {
    async fn begin(&self) -> Result<Transaction> {
        let client = self.client().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(backend)?;
        Ok(Transaction {
            client: Some(client),
        })
    }

    /// Begins a transaction and locks `projection`'s progress row in `stream` (creating it
    /// at 0), in one round trip; returns the transaction and the progress.
    async fn begin_locked(&self, projection: &str, stream: &StreamName) -> Result<(Transaction, u64)> {
        let client = self.client().await?;
        let lock = client
            .prepare_cached(&self.inner.sql.progress_lock)
            .await
            .map_err(backend)?;
        let name = stream.as_str();
        let params: [&(dyn ToSql + Sync); 2] = [&projection, &name];
        let (begun, row) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_opt(&lock, &params)
        );
        let tx = Transaction {
            client: Some(client),
        };
        begun.map_err(backend)?;
        let next = row.map_err(backend)?.map_or(0, |r| r.get::<_, i64>(0) as u64);
        Ok((tx, next))
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
        let client = tx.client.take().expect("open until finished");
        match (set, commit) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(e), _) | (_, Err(e)) => {
                // A failed statement makes COMMIT roll back: nothing was recorded.
                drop(Object::take(client));
                Err(backend(e))
            }
        }
    }
}

#[async_trait]
impl ReadModelStore for PgStore {
    type Tx<'t> = PgTx<'t>;

    async fn setup<P: Projector<Self>>(&self, projector: &Arc<P>) -> Result<()> {
        let tx = self.begin().await?;
        let mut ptx = PgTx {
            client: tx.client(),
        };
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
            .map_err(backend)?;
        let row = client
            .query_opt(&statement, &[&projection, &stream.as_str()])
            .await
            .map_err(backend)?;
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
        let (tx, next) = self.begin_locked(id.name, stream).await?;
        let fresh = &events[events.partition_point(|e| e.stream_version < next)..];
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
            // Nothing new (or nothing given): the progress row stays as it was.
            tx.commit().await?;
            return Ok(Version(next));
        };
        if first.stream_version > next {
            // Events are missing in between: the caller reads them first.
            tx.commit().await?;
            return Ok(Version(next));
        }
        let mut ptx = PgTx {
            client: tx.client(),
        };
        projector
            .apply(&mut ptx, stream, fresh)
            .await
            .map_err(|e| projector_failed(id.name, Some(stream), e))?;
        let after = last.stream_version + 1;
        let sql = &self.inner.sql.progress_set;
        self.commit_progress(tx, sql, id.name, id.schema, stream, after)
            .await?;
        Ok(Version(after))
    }

    async fn replace<P: Projector<Self>>(
        &self,
        projector: &Arc<P>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<u64> {
        check_events(stream, events)?;
        if events.first().is_some_and(|e| e.stream_version != 0) {
            return Err(Error::ReadModel {
                reason: format!("{stream}: a rebuild needs the stream from version 0"),
            });
        }
        let id = projector.id();
        let (tx, applied) = self.begin_locked(id.name, stream).await?;
        let count = events.len() as u64;
        if applied > count {
            return Err(Error::ReadModel {
                reason: format!(
                    "{stream}: {} applied {applied} events, the rebuild read {count}: read again",
                    id.name
                ),
            });
        }
        let mut ptx = PgTx {
            client: tx.client(),
        };
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
        self.commit_progress(tx, sql, id.name, id.schema, stream, count)
            .await?;
        Ok(count)
    }

    async fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        let client = self.client().await?;
        query(&client, sql, params).await
    }

    async fn rows(&self, projection: &str) -> Result<Vec<StreamProgress>> {
        let client = self.client().await?;
        let rows = client
            .query(self.inner.sql.projection_rows.as_str(), &[&projection])
            .await
            .map_err(backend)?;
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
            .map_err(backend)?;
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
            .map_err(backend)
    }

    pub(crate) async fn parked_streams(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        let client = self.client().await?;
        let rows = client
            .query(self.inner.sql.parked_list.as_str(), &[&group])
            .await
            .map_err(backend)?;
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
            .execute(self.inner.sql.parked_delete.as_str(), &[&group, &stream.as_str()])
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }
}

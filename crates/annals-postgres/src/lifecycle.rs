//! Stream deletion, truncation, retention and scavenging (migration 11): the stream row's
//! `start`, `tombstone` and policy columns, changed in one transaction with the system
//! event that records the change; scavenging deletes, a batch per transaction, the events
//! reads no longer show.

use annals::backend::{Deletion, DeletionPlan, StreamState};
use annals::{Retention, RetentionScope, Scavenged, STREAM_DELETED, STREAM_TRUNCATED};

use super::*;
use crate::conn::Conn;

/// How often a change is tried again when its system event lost the transaction-id race on
/// the deletions stream's row, or the stream was created under it.
const TRIES: usize = 20;

/// What one try of a change did.
enum Try<T> {
    Done(T),
    /// Roll back and try again in a new transaction.
    Again,
}

/// Runs `sql` as a prepared statement on `client`: the rows it changed.
async fn exec(client: &Conn, sql: &str, params: &[crate::Param<'_>]) -> Result<u64> {
    client
        .execute(&prepared(client, sql).await?, params)
        .await
        .map_err(|e| client.failed(e))
}

impl PgStore {
    fn schema(&self) -> String {
        config::quoted(&self.inner.config.schema)
    }

    /// Ends the transaction `outcome` ran in: commits what is done, rolls back the rest;
    /// `None` asks for another try in a new transaction.
    async fn settle<T>(&self, client: &mut Conn, outcome: Result<Try<T>>) -> Result<Option<T>> {
        match outcome {
            Ok(Try::Done(value)) => {
                client.commit().await?;
                Ok(Some(value))
            }
            Ok(Try::Again) => {
                client.rollback().await?;
                Ok(None)
            }
            Err(Error::Backend { source, .. }) if source.is::<Retry>() => {
                client.rollback().await?;
                Ok(None)
            }
            Err(e) => {
                let _ = client.rollback().await;
                Err(e)
            }
        }
    }

    /// Records a system event about `stream` in its deletions stream, in the transaction.
    async fn record(
        &self,
        client: &Conn,
        stream: &StreamName,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Try<()>> {
        let event = EventData::new(event_type, data.to_string().into_bytes());
        let target = annals::deletions_stream(stream);
        Ok(
            match self
                .append_once(client, &target, ExpectedVersion::Any, &[event], None)
                .await?
            {
                Some(_) => Try::Done(()),
                None => Try::Again,
            },
        )
    }

    /// The stream's version, start and whether it is a tombstone, locked (`None`: never
    /// written).
    async fn lock_row(
        &self,
        client: &Conn,
        stream: &StreamName,
    ) -> Result<Option<(u64, u64, bool)>> {
        let sql = format!(
            "SELECT version, start, tombstone FROM {}.streams WHERE name = $1 FOR UPDATE",
            self.schema()
        );
        let row = client
            .query_opt(&prepared(client, &sql).await?, &[&stream.as_str()])
            .await
            .map_err(|e| client.failed(e))?;
        Ok(row.map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                r.get::<_, i64>(1) as u64,
                r.get::<_, bool>(2),
            )
        }))
    }

    /// `deletion` as its plan decides from the stream row (locked): the row at the planned
    /// version, starting there (a tombstone when planned), and the system event that
    /// records it, in one transaction.
    pub(crate) async fn delete_with(
        &self,
        stream: &StreamName,
        deletion: Deletion,
    ) -> Result<Version> {
        let schema = self.schema();
        let mut conn = self.client().await?;
        for _ in 0..TRIES {
            conn.begin().await?;
            let client: &Conn = &conn;
            let outcome: Result<Try<_>> = async {
                let found = self.lock_row(client, stream).await?;
                let state = found.map(|(version, start, tombstone)| StreamState {
                    version,
                    shows_nothing: start == version,
                    tombstone,
                });
                let (version, hard) = match deletion.plan(stream, state)? {
                    DeletionPlan::Done(version) => return Ok(Try::Done(version)),
                    DeletionPlan::Change { version, hard } => (version, hard),
                };
                let at = bigint(version);
                if found.is_some() {
                    // The snapshot holds the state of the events now hidden.
                    let sql = format!(
                        "UPDATE {schema}.streams SET version = $3, start = $3, tombstone = $2, \
                         snapshot = NULL, snapshot_version = NULL WHERE name = $1"
                    );
                    exec(client, &sql, &[&stream.as_str(), &hard, &at]).await?;
                } else {
                    let sql = format!(
                        "INSERT INTO {schema}.streams (name, category, version, start, tombstone) \
                         VALUES ($1, $2, $3, $3, $4) ON CONFLICT (name) DO NOTHING"
                    );
                    let params: [crate::Param<'_>; 4] =
                        [&stream.as_str(), &stream.category(), &at, &hard];
                    let created = exec(client, &sql, &params).await?;
                    if created == 0 {
                        // Created meanwhile: look again.
                        return Ok(Try::Again);
                    }
                }
                let data = serde_json::json!({
                    "stream": stream.as_str(), "version": version, "hard": hard,
                });
                Ok(
                    match self.record(client, stream, STREAM_DELETED, data).await? {
                        Try::Done(()) => Try::Done(Version(version)),
                        Try::Again => Try::Again,
                    },
                )
            }
            .await;
            if let Some(value) = self.settle(&mut conn, outcome).await? {
                return Ok(value);
            }
        }
        Err(backend("the stream kept changing under the change; retry"))
    }

    pub(crate) async fn truncate(&self, stream: &StreamName, before: Version) -> Result<Version> {
        let schema = self.schema();
        let mut conn = self.client().await?;
        for _ in 0..TRIES {
            conn.begin().await?;
            let client: &Conn = &conn;
            let outcome: Result<Try<_>> = async {
                let Some((version, start, tombstone)) = self.lock_row(client, stream).await? else {
                    return Ok(Try::Done(Version(0)));
                };
                if tombstone {
                    return Err(Error::StreamDeleted {
                        stream: stream.clone(),
                    });
                }
                let before = before.get().min(version);
                if before <= start {
                    return Ok(Try::Done(Version(start)));
                }
                let sql = format!(
                    "UPDATE {schema}.streams SET start = $2, snapshot = NULL, \
                     snapshot_version = NULL WHERE name = $1"
                );
                exec(client, &sql, &[&stream.as_str(), &(before as i64)]).await?;
                let data = serde_json::json!({"stream": stream.as_str(), "before": before});
                Ok(
                    match self.record(client, stream, STREAM_TRUNCATED, data).await? {
                        Try::Done(()) => Try::Done(Version(before)),
                        Try::Again => Try::Again,
                    },
                )
            }
            .await;
            if let Some(value) = self.settle(&mut conn, outcome).await? {
                return Ok(value);
            }
        }
        Err(backend("the stream kept changing under the change; retry"))
    }

    /// Records `retention` for `scope` (removing it when it keeps all) and puts the
    /// policies in effect on the streams it covers.
    pub(crate) async fn retain(&self, scope: &RetentionScope, retention: Retention) -> Result<()> {
        retention.validate()?;
        let schema = self.schema();
        let kind: i16 = match scope {
            RetentionScope::Category(_) => 0,
            RetentionScope::Stream(_) => 1,
        };
        let covered = match scope {
            RetentionScope::Category(_) => "s.category = $1",
            RetentionScope::Stream(_) => "s.name = $1",
        };
        let max_age = retention.max_age_micros();
        let max_count = retention.max_count.map(|n| n as i64);
        let mut conn = self.client().await?;
        for _ in 0..TRIES {
            conn.begin().await?;
            let client: &Conn = &conn;
            let outcome: Result<Try<_>> = async {
                let name = scope.name();
                if retention.keeps_all() {
                    let sql =
                        format!("DELETE FROM {schema}.retention WHERE kind = $1 AND name = $2");
                    exec(client, &sql, &[&kind, &name]).await?;
                } else {
                    let sql = format!(
                        "INSERT INTO {schema}.retention (kind, name, max_age, max_count) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (kind, name) DO UPDATE \
                         SET max_age = excluded.max_age, max_count = excluded.max_count"
                    );
                    exec(client, &sql, &[&kind, &name, &max_age, &max_count]).await?;
                }
                let sql = format!(
                    "UPDATE {schema}.streams s SET (max_age, max_count) = (\
                         SELECT r.max_age, r.max_count FROM {schema}.retention r \
                         WHERE (r.kind = 1 AND r.name = s.name) \
                            OR (r.kind = 0 AND r.name = s.category) \
                         ORDER BY r.kind DESC LIMIT 1) \
                     WHERE {covered}"
                );
                exec(client, &sql, &[&name]).await?;
                Ok(Try::Done(()))
            }
            .await;
            if let Some(value) = self.settle(&mut conn, outcome).await? {
                return Ok(value);
            }
        }
        Err(backend("the stream kept changing under the change; retry"))?;
        self.wake();
        Ok(())
    }

    pub(crate) async fn policies(&self) -> Result<Vec<(RetentionScope, Retention)>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT kind, name, max_age, max_count FROM {}.retention ORDER BY kind, name",
            self.schema()
        );
        let rows = client
            .query(&prepared(&client, &sql).await?, &[])
            .await
            .map_err(|e| client.failed(e))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(1);
                // Names were validated when set; one that no longer parses is skipped.
                let scope = match r.get::<_, i16>(0) {
                    0 => RetentionScope::category(name).ok()?,
                    _ => RetentionScope::Stream(StreamName::new(name).ok()?),
                };
                Some((scope, Retention::from_micros(r.get(2), r.get(3))))
            })
            .collect())
    }

    /// Removes (or with `dry_run` counts) at most `limit` events reads no longer show, in
    /// one transaction. When nothing is left to remove, vacuums the events table so its
    /// pages are free for new rows, and reports the table's free space where the
    /// `pg_freespacemap` extension is installed.
    pub(crate) async fn scavenge_batch(&self, limit: usize, dry_run: bool) -> Result<Scavenged> {
        let schema = self.schema();
        let limit = bigint(limit.max(1) as u64);
        let gone = format!(
            "SELECT e.tx_id, e.position, length(e.data) + coalesce(length(e.metadata), 0) AS bytes \
             FROM {schema}.streams s CROSS JOIN LATERAL ( \
                 SELECT e.tx_id, e.position, e.data, e.metadata FROM {schema}.events e \
                 WHERE e.stream_id = s.stream_id AND (s.tombstone OR e.stream_version < s.start \
                    OR (s.max_count IS NOT NULL AND e.stream_version < s.version - s.max_count) \
                    OR (s.max_age IS NOT NULL \
                        AND e.recorded_at < now() - s.max_age * interval '1 microsecond')) \
                 ORDER BY e.stream_version LIMIT $1) e \
             WHERE s.start > 0 OR s.tombstone OR s.max_age IS NOT NULL OR s.max_count IS NOT NULL \
             LIMIT $1"
        );
        let (events, bytes) = self.scavenge_tx(&schema, &gone, limit, dry_run).await?;
        let mut free_bytes = None;
        if !dry_run && events < limit as u64 {
            let client = self.client().await?;
            client
                .batch_execute(&format!("VACUUM {schema}.events"))
                .await
                .map_err(|e| client.failed(e))?;
            let installed = client
                .query_opt(
                    "SELECT 1 FROM pg_extension WHERE extname = 'pg_freespacemap'",
                    &[],
                )
                .await
                .map_err(|e| client.failed(e))?
                .is_some();
            if installed {
                let row = client
                    .query_one(
                        &format!(
                            "SELECT coalesce(sum(avail), 0)::bigint \
                             FROM pg_freespace('{schema}.events'::regclass)"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| client.failed(e))?;
                free_bytes = Some(row.get::<_, i64>(0) as u64);
            }
        }
        Ok(Scavenged {
            events,
            bytes,
            free_bytes,
        })
    }

    /// One scavenging transaction: the events `gone` selects removed (or counted).
    async fn scavenge_tx(
        &self,
        schema: &str,
        gone: &str,
        limit: i64,
        dry_run: bool,
    ) -> Result<(u64, u64)> {
        let mut conn = self.client().await?;
        conn.begin().await?;
        let client: &Conn = &conn;
        let outcome: Result<Try<_>> = async {
            let sql = if dry_run {
                format!("SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM ({gone}) g")
            } else {
                // The token that lets this transaction's deletes through the trigger.
                let token =
                    format!("INSERT INTO {schema}.scavenging (tx) VALUES (pg_current_xact_id())");
                exec(client, &token, &[]).await?;
                format!(
                    "WITH g AS ({gone}), d AS (DELETE FROM {schema}.events e USING g \
                     WHERE e.tx_id = g.tx_id AND e.position = g.position RETURNING g.bytes) \
                     SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM d"
                )
            };
            let row = client
                .query_one(&sql, &[&limit])
                .await
                .map_err(|e| client.failed(e))?;
            if !dry_run {
                let token =
                    format!("DELETE FROM {schema}.scavenging WHERE tx = pg_current_xact_id()");
                exec(client, &token, &[]).await?;
            }
            Ok(Try::Done((
                row.get::<_, i64>(0) as u64,
                row.get::<_, i64>(1) as u64,
            )))
        }
        .await;
        self.settle(&mut conn, outcome)
            .await?
            .ok_or_else(|| backend("the scavenging transaction was rolled back; retry"))
    }
}

//! The decider's append (`EventStore::append_at`) in one round trip: the `append_at`
//! function of migration 0009 writes at an exact version or, refused, returns the stream's
//! events from that version on with the refusal.

use annals::{AppendAt, CONFLICT_EVENTS};

use super::*;

/// The column of the first event column in `append_at`'s rows, and of `batch_start`.
const EVENT_AT: usize = 5;
const BATCH_START_AT: usize = 16;

impl PgStore {
    pub(crate) async fn append_at_version(
        &self,
        stream: &StreamName,
        version: Version,
        events: Vec<EventData>,
    ) -> Result<AppendAt> {
        annals::backend::validate_batch(stream, &events, self.inner.config.max_event_bytes)?;
        let expected = ExpectedVersion::Exact(version);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.append_at)
            .await
            .map_err(backend)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_slice()).collect();
        let metadata: Vec<Option<&[u8]>> = events.iter().map(|e| e.metadata.as_deref()).collect();
        let correlation: Vec<Option<Uuid>> = events.iter().map(|e| e.correlation_id).collect();
        let causation: Vec<Option<Uuid>> = events.iter().map(|e| e.causation_id).collect();
        let (name, category) = (stream.as_str(), stream.category());
        let (at, limit) = (version.get() as i64, CONFLICT_EVENTS as i64);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &name,
            &category,
            &at,
            &ids,
            &types,
            &data,
            &metadata,
            &correlation,
            &causation,
            &limit,
        ];
        // Another pass when the call lost the transaction-id race on the stream row, or
        // met ids of an append that then rolled back.
        for _ in 0..5 {
            let rows = match client.query(&statement, &params).await {
                Ok(rows) => rows,
                Err(e) if is_unique_violation(&e) => {
                    match self.classify(&client, stream, expected, &events).await {
                        Ok(Verdict::AlreadyWritten(r)) => return Ok(AppendAt::Written(r)),
                        Ok(Verdict::Write) => continue,
                        Err(Error::WrongExpectedVersion { actual, .. }) => {
                            drop(client);
                            return self.conflict_read(stream, version, actual).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e)
                    if e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
                {
                    continue
                }
                Err(e) => return Err(backend(e)),
            };
            let head = rows
                .first()
                .ok_or_else(|| backend("append_at returned no status row"))?;
            let status: i16 = head.try_get(0).map_err(backend)?;
            let at_version = Version(head.try_get::<_, i64>(1).map_err(backend)? as u64);
            if status == 0 {
                let tx = tx_of(head.try_get::<_, &str>(4).map_err(backend)?)?;
                let written = AppendResult {
                    version: at_version,
                    first_position: pack(tx, head.try_get(2).map_err(backend)?),
                    last_position: pack(tx, head.try_get(3).map_err(backend)?),
                };
                drop(client);
                self.wake();
                return Ok(AppendAt::Written(written));
            }
            let mut tail = Vec::with_capacity(rows.len() - 1);
            let mut batch_starts = Vec::with_capacity(rows.len() - 1);
            for row in &rows[1..] {
                tail.push(event(row, EVENT_AT)?);
                batch_starts.push(row.try_get::<_, i64>(BATCH_START_AT).map_err(backend)? as u64);
            }
            // Refused. An exact retry of an append that was written finds its ids in the
            // events returned; anything else is a conflict.
            let found: Vec<Option<Found>> = events
                .iter()
                .map(|e| {
                    let i = tail.iter().position(|r| r.event_id == e.event_id)?;
                    Some(Found {
                        stream: stream.clone(),
                        stream_version: tail[i].stream_version,
                        batch_start: batch_starts[i],
                        position: tail[i].position,
                    })
                })
                .collect();
            if found.iter().all(Option::is_none) {
                return Ok(AppendAt::Conflict {
                    actual: at_version,
                    events: tail,
                });
            }
            if tail.len() >= CONFLICT_EVENTS {
                // The answer may stop inside the batch: ask the long way.
                return match self.classify(&client, stream, expected, &events).await {
                    Ok(Verdict::AlreadyWritten(r)) => Ok(AppendAt::Written(r)),
                    Ok(Verdict::Write) | Err(Error::WrongExpectedVersion { .. }) => {
                        Ok(AppendAt::Conflict {
                            actual: at_version,
                            events: tail,
                        })
                    }
                    Err(e) => Err(e),
                };
            }
            let first = version.get();
            let batch_start_of = |v: u64| {
                Ok(v.checked_sub(first)
                    .and_then(|i| batch_starts.get(i as usize).copied()))
            };
            return match idempotency::check(
                stream,
                expected,
                at_version,
                &events,
                &found,
                batch_start_of,
            ) {
                Ok(Verdict::AlreadyWritten(r)) => Ok(AppendAt::Written(r)),
                Ok(Verdict::Write) | Err(Error::WrongExpectedVersion { .. }) => {
                    Ok(AppendAt::Conflict {
                        actual: at_version,
                        events: tail,
                    })
                }
                Err(e) => Err(e),
            };
        }
        Err(backend(format!(
            "{stream}: event ids kept appearing and vanishing; retry"
        )))
    }

    /// A conflict found the long way: the events from `version` on, read now.
    async fn conflict_read(
        &self,
        stream: &StreamName,
        version: Version,
        actual: Version,
    ) -> Result<AppendAt> {
        use futures::TryStreamExt;
        let events = if actual > version {
            self.read_stream(
                stream,
                ReadStream::forward_from(version).limit(CONFLICT_EVENTS),
            )
            .try_collect()
            .await?
        } else {
            Vec::new()
        };
        Ok(AppendAt::Conflict { actual, events })
    }
}

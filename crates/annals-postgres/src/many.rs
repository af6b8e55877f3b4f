//! Multi-stream appends (`EventStore::append_many`, `append_many_shown`): one transaction,
//! the streams appended in name order, in two round trips (`BEGIN` with the lock and every
//! append, then `COMMIT`).

use super::*;

impl PgStore {
    /// `append_many`; with `shown_from` (one per append), refused too when a stream to be
    /// written starts past its caller's first event: the streams' rows are locked first,
    /// in name order, so a deletion or truncation either came before the check or waits
    /// for the commit.
    pub(crate) async fn append_many_with(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Option<Vec<Version>>,
    ) -> Result<Vec<AppendResult>> {
        annals::backend::validate_many(&appends, self.inner.config.max_event_bytes)?;
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by(|&a, &b| appends[a].stream.cmp(&appends[b].stream));
        let mut client = self.client().await?;
        // Appends that an earlier, committed call already wrote (exact retries).
        let mut known: Vec<Option<AppendResult>> = vec![None; appends.len()];
        for _ in 0..3 {
            // `BEGIN`, the lock of the streams' rows (when asked) and every append, in name
            // order, go out together and run in that order: one round trip, then `COMMIT`.
            // After a failed statement the server refuses the rest of the transaction; the
            // answers are read in order and the first that is not a write decides.
            let append = prepared(&client, &self.inner.sql.append).await?;
            let lock = match shown_from {
                Some(_) => Some(prepared(&client, &self.inner.sql.lock_shown).await?),
                None => None,
            };
            let pending: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| known[i].is_none())
                .collect();
            client.beginning();
            let (begun, checked, written) = futures::join!(
                client.batch_execute("BEGIN"),
                async {
                    match (&shown_from, &lock) {
                        (Some(shown), Some(lock)) => {
                            self.check_shown(&client, lock, &appends, &order, shown)
                                .await
                        }
                        _ => Ok(()),
                    }
                },
                futures::future::join_all(pending.iter().map(|&i| {
                    let a = &appends[i];
                    crate::append::run(&client, &append, &a.stream, a.expected, &a.events, None)
                })),
            );
            // A `BEGIN` refused leaves the connection in doubt: it is closed, not pooled.
            begun.map_err(backend)?;
            if let Err(e) = checked {
                let _ = client.rollback().await;
                return Err(e);
            }
            let mut results = known.clone();
            let mut refused = false;
            for (&i, written) in pending.iter().zip(written) {
                match written {
                    Ok(Some(r)) => results[i] = Some(r),
                    Ok(None) => {
                        refused = true;
                        break;
                    }
                    Err(e) => {
                        let _ = client.rollback().await;
                        return Err(e);
                    }
                }
            }
            if !refused {
                client.commit().await?;
                drop(client);
                if known.iter().any(Option::is_none) {
                    self.wake();
                }
                return Ok(results
                    .into_iter()
                    .map(|r| r.expect("every stream appended"))
                    .collect());
            }
            // A conflict, or ids already recorded: roll back, then ask what is stored. A
            // conflict or partial overlap is the answer; exact retries are kept as results
            // and the rest is written again in a new transaction.
            client.rollback().await?;
            for (i, a) in appends.iter().enumerate() {
                if known[i].is_none() {
                    if let Verdict::AlreadyWritten(r) = self
                        .classify(&client, &a.stream, a.expected, &a.events)
                        .await?
                    {
                        known[i] = Some(r);
                    }
                }
            }
        }
        Err(backend(
            "the streams kept changing under the multi-stream append; retry",
        ))
    }

    /// Locks the rows of every stream of `appends` (in the names' byte order) and refuses,
    /// with the stream's version, an append about to write (the stream at its expected
    /// version) to a stream that starts past its `shown` version. `statement` is
    /// `lock_shown`, sent when the future is first polled.
    async fn check_shown(
        &self,
        client: &Conn,
        statement: &tokio_postgres::Statement,
        appends: &[StreamAppend],
        order: &[usize],
        shown: &[Version],
    ) -> Result<()> {
        let names: Vec<&str> = order.iter().map(|&i| appends[i].stream.as_str()).collect();
        let froms: Vec<i64> = order
            .iter()
            .map(|&i| shown.get(i).map_or(i64::MAX, |v| bigint(v.get())))
            .collect();
        let rows = client
            .query(statement, &[&names, &froms])
            .await
            .map_err(|e| client.failed(e))?;
        for row in &rows {
            if !row.try_get::<_, bool>(2).map_err(backend)? {
                continue;
            }
            let name: &str = row.try_get(0).map_err(backend)?;
            let version = Version(row.try_get::<_, i64>(1).map_err(backend)? as u64);
            let Some(a) = appends.iter().find(|a| a.stream.as_str() == name) else {
                continue;
            };
            if a.expected.admits(version) && !a.events.is_empty() {
                return Err(Error::WrongExpectedVersion {
                    stream: a.stream.clone(),
                    expected: a.expected,
                    actual: version,
                });
            }
        }
        Ok(())
    }
}

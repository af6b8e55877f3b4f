//! `EventStore` for PostgreSQL: appends, reads, read-all, head snapshots, import.

use super::*;

#[async_trait]
impl EventStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.append_grouped(stream, expected, events).await
    }

    async fn append_at(
        &self,
        stream: &StreamName,
        version: Version,
        events: Vec<EventData>,
    ) -> Result<annals::AppendAt> {
        self.append_at_version(stream, version, None, events).await
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<annals::AppendAt> {
        let Some(snapshot) = snapshot else {
            return self
                .append_at_version(stream, version, Some(shown_from), events)
                .await;
        };
        let expected = ExpectedVersion::Exact(version);
        let appended = self
            .append_with(stream, expected, events, &snapshot, Some(shown_from))
            .await;
        annals::backend::answer_at(self, stream, version, appended, false).await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        self.append_with(stream, expected, events, &snapshot, None)
            .await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        annals::backend::validate_import(&events, self.inner.config.max_event_bytes)?;
        if events.is_empty() {
            return Ok(0);
        }
        let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
        let categories: Vec<&str> = events.iter().map(|e| e.stream.category()).collect();
        let versions: Vec<i64> = events.iter().map(|e| e.stream_version as i64).collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_slice()).collect();
        let metadata: Vec<Option<&[u8]>> = events.iter().map(|e| e.metadata.as_deref()).collect();
        let correlation: Vec<Option<Uuid>> = events.iter().map(|e| e.correlation_id).collect();
        let causation: Vec<Option<Uuid>> = events.iter().map(|e| e.causation_id).collect();
        let recorded: Vec<i64> = events.iter().map(|e| e.recorded_at.unix_micros()).collect();
        let mut client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.import)
            .await
            .map_err(|e| client.failed(e))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &streams,
            &categories,
            &versions,
            &ids,
            &types,
            &data,
            &metadata,
            &correlation,
            &causation,
            &recorded,
        ];
        // One function call is one transaction: a refusal raises nothing, so roll back
        // explicitly around it.
        client.begin().await?;
        let row = match client.query_one(&statement, &params).await {
            Ok(row) => row,
            Err(e) => {
                let _ = client.rollback().await;
                if !is_unique_violation(&e) {
                    return Err(backend(e));
                }
                // An id recorded elsewhere than where the import puts it.
                let rows = client
                    .query(&prepared(&client, &self.inner.sql.classify).await?, &[&ids])
                    .await
                    .map_err(|e| client.failed(e))?;
                for r in &rows {
                    let (id, name, version): (Uuid, &str, i64) = (r.get(0), r.get(1), r.get(2));
                    let Some(ours) = events.iter().find(|e| e.event_id == id) else {
                        continue;
                    };
                    if (ours.stream.as_str(), ours.stream_version as i64) != (name, version) {
                        return Err(Error::DuplicateEventId {
                            event_id: id,
                            existing_stream: StreamName::new(name)?,
                        });
                    }
                }
                return Err(backend(e));
            }
        };
        if row.get::<_, i16>(0) != 0 {
            client.rollback().await?;
            return Err(Error::WrongExpectedVersion {
                stream: StreamName::new(row.get::<_, &str>(2))?,
                expected: ExpectedVersion::Exact(Version(row.get::<_, i64>(3) as u64)),
                actual: Version(row.get::<_, i64>(4) as u64),
            });
        }
        client.commit().await?;
        let written = row.get::<_, i64>(1) as u64;
        drop(client);
        if written > 0 {
            self.wake();
        }
        Ok(written)
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.read_head)
            .await
            .map_err(|e| client.failed(e))?;
        let rows = client
            .query(&statement, &[&stream.as_str(), &bigint(limit as u64)])
            .await
            .map_err(|e| client.failed(e))?;
        let Some(first) = rows.first() else {
            return Ok(Head::default());
        };
        if first.try_get::<_, bool>(14).map_err(backend)? {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let snapshot = match (
            first.try_get::<_, Option<i64>>(1).map_err(backend)?,
            first.try_get::<_, Option<Vec<u8>>>(2).map_err(backend)?,
        ) {
            (Some(version), Some(data)) => Some(HeadSnapshot {
                version: Version(version as u64),
                data,
            }),
            _ => None,
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<_, Option<TxId>>(3)
                .map_err(backend)?
                .is_some()
            {
                events.push(event(row, 3)?);
            }
        }
        Ok(Head {
            version: Version(first.try_get::<_, i64>(0).map_err(backend)? as u64),
            start: Version(first.try_get::<_, i64>(15).map_err(backend)? as u64),
            snapshot,
            events,
        })
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_many_with(appends, None).await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.append_many_with(appends, Some(shown_from)).await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: annals::DeleteMode,
    ) -> Result<Version> {
        let version = self
            .delete_with(stream, annals::backend::Deletion::Delete { expected, mode })
            .await?;
        self.wake();
        Ok(version)
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        let version = self
            .delete_with(stream, annals::backend::Deletion::Imported(version))
            .await?;
        self.wake();
        Ok(version)
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        let start = self.truncate(stream, before).await?;
        self.wake();
        Ok(start)
    }

    async fn set_retention(
        &self,
        scope: &annals::RetentionScope,
        retention: annals::Retention,
    ) -> Result<()> {
        self.retain(scope, retention).await
    }

    async fn retention(&self) -> Result<Vec<(annals::RetentionScope, annals::Retention)>> {
        self.policies().await
    }

    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<annals::Scavenged> {
        self.scavenge_batch(limit, dry_run).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        let client = self.client().await?;
        self.stream_version_with(&client, stream).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        annals::backend::events_of_pages(self.read_stream_pages(stream, options))
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        // Pages of at most STREAM_PAGE events, each one prepared statement, with no read
        // of the stream's version first. A page asks for one row more than it returns
        // (unless the limit ends it), so it knows whether another follows: a stream that
        // ends on a page boundary costs no empty page. The first page forward comes with
        // the stream row's tombstone (`read_after`), so an empty answer (a new stream, or
        // nothing new since a decider's cached state) tells an ended stream from a deleted
        // one in the same statement; a catch-up (from past 0) is read with other readers'
        // catch-ups (`read_group`). Another empty page (a stream read backward) looks at
        // the stream row with a second statement. Forward from `from`; backward below
        // `from` (or from the end).
        let forward = options.direction == Direction::Forward;
        let start = match (forward, options.from) {
            (true, from) => from.map_or(0, Version::get),
            (false, Some(before)) => before.get(),
            (false, None) => i64::MAX as u64,
        };
        let left = options.limit.map_or(u64::MAX, |l| l as u64);
        stream::unfold(Some((start, left, true)), move |cursor| async move {
            let (next, left, first) = cursor?;
            if left == 0 {
                return None;
            }
            let want = left.min(STREAM_PAGE as u64);
            let ask = if want < left { want + 1 } else { want } as i64;
            let page = async {
                // The first page forward (what a decider loads), with the stream row's
                // tombstone in the same statement: a new stream costs one statement. A
                // catch-up (from past 0, what a decider reads on a cached state) is grouped
                // with other readers' catch-ups. A stream's last few events (a tail, usually
                // read whole in its first page) likewise, with the other tails queued.
                let grouped = match (forward, first, next) {
                    (true, true, 0) => Some(self.read_one(stream, 0, ask, false).await?),
                    (true, true, from) => {
                        Some(self.first_page(stream, bigint(from), ask, false).await?)
                    }
                    (false, true, before) if ask <= SHORT_TAIL => {
                        Some(self.first_page(stream, bigint(before), ask, true).await?)
                    }
                    _ => None,
                };
                if let Some(page) = grouped {
                    if page.tombstone {
                        return Err(Error::StreamDeleted {
                            stream: stream.clone(),
                        });
                    }
                    let more = page.events.len() as u64 > want;
                    let mut events = page.events;
                    events.truncate(want as usize);
                    return Ok((events, more));
                }
                let client = self.client().await?;
                let (sql, a, b) = match forward {
                    true => (&self.inner.sql.read_forward, bigint(next), i64::MAX),
                    false => (&self.inner.sql.read_backward, bigint(next), 0),
                };
                let statement = prepared(&client, sql).await?;
                let rows = client
                    .query(&statement, &[&stream.as_str(), &a, &b, &ask])
                    .await
                    .map_err(|e| client.failed(e))?;
                let found = rows.len() as u64;
                let events = rows
                    .iter()
                    .take(want as usize)
                    .map(|row| event_in(row, 0, stream.clone()))
                    .collect::<Result<Vec<_>>>()?;
                if rows.is_empty() {
                    // Nothing shown: a tombstone is an error, not an empty stream.
                    self.stream_version_with(&client, stream).await?;
                }
                Ok((events, found > want))
            }
            .await;
            match page {
                Err(e) => Some((Err(e), None)),
                Ok((events, more)) => {
                    let cursor = match events.last() {
                        Some(last) if more => Some((
                            if forward {
                                last.stream_version + 1
                            } else {
                                last.stream_version
                            },
                            left - events.len() as u64,
                            false,
                        )),
                        // The last page.
                        _ => None,
                    };
                    Some((Ok(events), cursor))
                }
            }
        })
        .try_filter(|events| std::future::ready(!events.is_empty()))
        .boxed()
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<annals::StartedPage> {
        // The first page of a forward read (grouped from past 0), whose last row says where
        // the stream starts.
        let ask = bigint(limit as u64);
        let page = match bigint(from.get()) {
            0 => self.read_one(stream, 0, ask, false).await?,
            from => self.first_page(stream, from, ask, false).await?,
        };
        if page.tombstone {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
            });
        }
        Ok(annals::StartedPage {
            events: page.events,
            start: Some(Version(page.start.unwrap_or(0) as u64)),
        })
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        let client = self.feed_client().await?;
        let stmt = client
            .prepare_cached(&self.inner.sql.head_position)
            .await
            .map_err(|e| client.failed(e))?;
        let row = client
            .query_opt(&stmt, &[])
            .await
            .map_err(|e| client.failed(e))?;
        row.map(|r| Ok(pack(tx_of(r.get::<_, &str>(0))?, r.get::<_, i64>(1))))
            .transpose()
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        filter.validate()?;
        // The statement asks for a row more than the page: room for it in a `bigint`.
        let limit = bigint(limit.max(1) as u64).min(i64::MAX - 1);
        let filtered = !filter.categories.is_empty()
            || !filter.event_types.is_empty()
            || filter.partition.is_some();
        let (part_index, part_count) = filter
            .partition
            .map_or((0, 0), |p| (i64::from(p.index), i64::from(p.count)));
        let window = if filtered {
            limit.max(READ_ALL_WINDOW)
        } else {
            limit
        };
        let (tx, position) = unpack(from);
        let tx = tx.to_string();
        let client = self.feed_client().await?;
        let stmt = client
            .prepare_cached(&self.inner.sql.read_all)
            .await
            .map_err(|e| client.failed(e))?;
        let rows = client
            .query(
                &stmt,
                &[
                    &tx,
                    &position,
                    &filter.categories,
                    &filter.event_types,
                    &limit,
                    &window,
                    &part_index,
                    &part_count,
                ],
            )
            .await
            .map_err(|e| client.failed(e))?;
        // The events, then the horizon, then (a short page's) window end: anything else
        // would mean the statement's `LIMIT` may have cut an event.
        let (mut horizon, mut window_end) = (None, None);
        let mut events = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let out_of_order = || backend("read-all returned its rows out of order");
            if let Some(h) = row.try_get::<_, Option<TxId>>(0).map_err(backend)? {
                if horizon.is_some() {
                    return Err(out_of_order());
                }
                horizon = Some(h.0);
            } else if row
                .try_get::<_, Option<&str>>(3)
                .map_err(backend)?
                .is_some()
            {
                if horizon.is_some() {
                    return Err(out_of_order());
                }
                events.push(event_after(row, 1, &mut last)?);
            } else {
                if horizon.is_none() || window_end.is_some() {
                    return Err(out_of_order());
                }
                let tx: TxId = row.try_get(1).map_err(backend)?;
                window_end = Some(pack(tx.0, row.try_get::<_, i64>(2).map_err(backend)?));
            }
        }
        if events.len() as i64 >= limit {
            let next = events.last().map_or(from, |e| e.position);
            return Ok(AllPage {
                events,
                next,
                end: false,
            });
        }
        // Fewer matches than asked (a filter, or events reads no longer show): if the
        // window was full, resume after it.
        if let Some(end) = window_end {
            return Ok(AllPage {
                events,
                next: from.max(end),
                end: false,
            });
        }
        // A short page scanned everything below the horizon: resume at it.
        let horizon = horizon.ok_or_else(|| backend("read-all returned no horizon row"))?;
        let next = from
            .max(pack(horizon, 0))
            .max(events.last().map_or(from, |e| e.position));
        Ok(AllPage {
            events,
            next,
            end: true,
        })
    }

    async fn await_visible(&self) -> Result<()> {
        let client = self.client().await?;
        let xmax = prepared(
            &client,
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text",
        )
        .await?;
        let passed_sql = "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8";
        let passed = prepared(&client, passed_sql).await?;
        let row = client
            .query_one(&xmax, &[])
            .await
            .map_err(|e| client.failed(e))?;
        let target: String = row.get(0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let passed: bool = client
                .query_one(&passed, &[&target])
                .await
                .map_err(|e| client.failed(e))?
                .get(0);
            if passed {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(backend(
                    "transactions open for over 60 s hold read-all back: see horizon_lag()",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    fn changes(&self) -> Option<watch::Receiver<()>> {
        Some(self.inner.changes.subscribe())
    }
}

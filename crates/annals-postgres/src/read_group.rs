//! Grouped catch-ups: the first pages of concurrent forward reads from past version 0 (what
//! a decider reads on its cached state, usually nothing new) are read by one statement
//! (`Sql::read_set`), so one round trip and one execution serve them all. PostgreSQL's work
//! per statement is many times its work per short page, so a process with many deciders is
//! no longer capped at one statement per catch-up. Tail reads (a stream's last few events,
//! newest first: the first page of a backward read asking at most `SHORT_TAIL` rows) are
//! grouped the same way (`Sql::read_set_before`); a group reads one direction. Reads from
//! the start, which may be long, are not grouped: a group answers when its longest page is
//! read.
//!
//! A read joins the queue, then either gets its page from a group another caller is reading
//! or, when a slot is free, takes everything queued and reads it itself, as a task of its
//! own (a caller that gives up never strands the others' pages). A group of one is the
//! plain statement of one stream (`Sql::read_after`, `Sql::read_before`), and so is each
//! read of a group whose statement failed (on a pooled connection). Groups run on
//! connections kept for them, one per slot, so their backends stay warm. A read queued
//! after an append it follows is in a later statement than that append's commit, so it
//! sees the append.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::*;

/// At most this many reads go into one statement.
const MAX_READS: usize = 256;

/// The first page of one stream's forward read: its events (at most the rows asked for),
/// whether the stream is a tombstone, and where it starts (none: no stream).
#[derive(Default)]
pub(crate) struct FirstPage {
    pub(crate) events: Vec<RecordedEvent>,
    pub(crate) tombstone: bool,
    pub(crate) start: Option<i64>,
}

impl FirstPage {
    /// The events in the read's order (versions ascending, or descending for a tail),
    /// whatever order the rows came in.
    fn order(&mut self, backward: bool) {
        match backward {
            false => self.events.sort_by_key(|e| e.stream_version),
            true => self
                .events
                .sort_by_key(|e| std::cmp::Reverse(e.stream_version)),
        }
    }

    /// Takes a row of `read_after`'s columns from `offset` on: an event of `stream`, or
    /// (no event) the stream row's tombstone and start.
    fn add(&mut self, row: &Row, offset: usize, stream: &StreamName) -> Result<()> {
        if row
            .try_get::<_, Option<i64>>(offset + 1)
            .map_err(backend)?
            .is_none()
        {
            self.tombstone = row
                .try_get::<_, bool>(offset + sql::STREAM_EVENT_WIDTH)
                .map_err(backend)?;
            self.start = Some(
                row.try_get::<_, i64>(offset + sql::STREAM_EVENT_WIDTH + 1)
                    .map_err(backend)?,
            );
        } else {
            self.events.push(event_in(row, offset, stream.clone())?);
        }
        Ok(())
    }
}

pub(crate) struct Request {
    stream: StreamName,
    from: i64,
    ask: i64,
    /// A tail read: the last `ask` events below version `from` (not from version `from`
    /// on), newest first.
    backward: bool,
    reply: oneshot::Sender<Result<FirstPage>>,
}

pub(crate) type ReadGrouper = crate::batch::Batches<Request>;

/// Groups read at once, each on a pooled connection.
pub(crate) const SLOTS: usize = 2;

/// The next group: the reads queued in the first one's direction (one statement reads one
/// direction), up to the bound; the others stay queued in their order.
fn take(queue: &mut VecDeque<Request>) -> Vec<Request> {
    // Reads whose callers have given up are not read.
    queue.retain(|r| !r.reply.is_closed());
    let Some(backward) = queue.front().map(|r| r.backward) else {
        return Vec::new();
    };
    let mut group = Vec::with_capacity(queue.len().min(MAX_READS));
    // Each queued read once round the queue: taken, or back at its end (so the rest keep
    // their order, and the queue its room).
    for _ in 0..queue.len() {
        let Some(r) = queue.pop_front() else { break };
        match r.backward == backward && group.len() < MAX_READS {
            true => group.push(r),
            false => queue.push_back(r),
        }
    }
    group
}

impl PgStore {
    /// The events of `stream` from version `from` on, `ask` of them at most (`backward`:
    /// the last `ask` below `from`, newest first), read with whatever other reads of that
    /// direction are queued.
    pub(crate) async fn first_page(
        &self,
        stream: &StreamName,
        from: i64,
        ask: i64,
        backward: bool,
    ) -> Result<FirstPage> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream: stream.clone(),
            from,
            ask,
            backward,
            reply,
        };
        let store = self.clone();
        let run = move |group| {
            let store = store.clone();
            async move { store.read_group(group).await }
        };
        self.inner
            .reads
            .join(request, answer, take, run, "group reading this stream")
            .await
    }

    async fn read_group(&self, group: Vec<Request>) {
        metrics::histogram!("annals_pg_grouped_reads", "schema" => self.inner.config.schema.clone())
            .record(group.len() as f64);
        let group = match <[Request; 1]>::try_from(group) {
            Ok([r]) => {
                let page = async {
                    let client = self.read_client().await?;
                    self.read_one_on(client, &r.stream, r.from, r.ask, r.backward)
                        .await
                };
                let _ = r.reply.send(page.await);
                return;
            }
            Err(group) => group,
        };
        // On an error, each read on its own below, so each caller gets its own answer (one
        // stream's bad row, or a lost connection, is not every caller's error).
        if let Ok(pages) = self.read_set(&group).await {
            for (r, page) in group.into_iter().zip(pages) {
                let _ = r.reply.send(Ok(page));
            }
            return;
        }
        let reads = group.into_iter().map(|r| async move {
            let page = self.read_one(&r.stream, r.from, r.ask, r.backward).await;
            let _ = r.reply.send(page);
        });
        futures::future::join_all(reads).await;
    }

    /// One stream's first page: `read_after` (`read_before`), its events then the stream
    /// row's tombstone.
    pub(crate) async fn read_one(
        &self,
        stream: &StreamName,
        from: i64,
        ask: i64,
        backward: bool,
    ) -> Result<FirstPage> {
        let client = self.client().await?;
        self.read_one_on(client, stream, from, ask, backward).await
    }

    /// [`Self::read_one`] on `client` (let go for good if the read ends it).
    async fn read_one_on(
        &self,
        client: Conn,
        stream: &StreamName,
        from: i64,
        ask: i64,
        backward: bool,
    ) -> Result<FirstPage> {
        let (sql, other_end) = match backward {
            false => (&self.inner.sql.read_after, i64::MAX),
            true => (&self.inner.sql.read_before, 0),
        };
        let read = async {
            let statement = client.prepare_cached(sql).await?;
            client
                .query(&statement, &[&stream.as_str(), &from, &other_end, &ask])
                .await
        };
        let rows = read.await.map_err(|e| client.failed(e))?;
        let mut page = FirstPage::default();
        for row in &rows {
            page.add(row, 0, stream)?;
        }
        page.order(backward);
        Ok(page)
    }

    /// Several streams' first pages in one statement: rows of `(read, event columns...,
    /// tombstone)`, each stream's events then its stream row (none: no stream).
    async fn read_set(&self, group: &[Request]) -> Result<Vec<FirstPage>> {
        let names: Vec<&str> = group.iter().map(|r| r.stream.as_str()).collect();
        let froms: Vec<i64> = group.iter().map(|r| r.from).collect();
        let asks: Vec<i64> = group.iter().map(|r| r.ask).collect();
        let backward = group.first().is_some_and(|r| r.backward);
        let sql = match backward {
            false => &self.inner.sql.read_set,
            true => &self.inner.sql.read_set_before,
        };
        let client = self.read_client().await?;
        let read = async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, &[&names, &froms, &asks]).await
        };
        let rows = read.await.map_err(|e| client.failed(e))?;
        let mut pages: Vec<FirstPage> = group.iter().map(|_| FirstPage::default()).collect();
        for row in &rows {
            let i = row.try_get::<_, i64>(0).map_err(backend)? as usize;
            let (r, page) = group
                .get(i.wrapping_sub(1))
                .zip(pages.get_mut(i.wrapping_sub(1)))
                .ok_or_else(|| backend(format!("a grouped read answered for read {i}")))?;
            page.add(row, 1, &r.stream)?;
            if page.events.len() as i64 > r.ask {
                return Err(backend(format!(
                    "a grouped read sent too many events for read {i}"
                )));
            }
        }
        for page in &mut pages {
            page.order(backward);
        }
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued read of stream `Take-{n}` in a direction, and the receiver of its answer.
    fn request(n: usize, backward: bool) -> (Request, oneshot::Receiver<Result<FirstPage>>) {
        let (reply, answer) = oneshot::channel();
        let stream = StreamName::new(format!("Take-{n}")).unwrap();
        let request = Request {
            stream,
            from: 0,
            ask: 1,
            backward,
            reply,
        };
        (request, answer)
    }

    fn numbers(reads: &[Request]) -> Vec<(usize, bool)> {
        reads
            .iter()
            .map(|r| (r.stream.as_str()[5..].parse().unwrap(), r.backward))
            .collect()
    }

    /// A group reads one direction, the first queued read's; the reads of the other
    /// direction stay queued in their order for the next group; callers gone are dropped;
    /// a group takes at most `MAX_READS`.
    #[test]
    fn a_group_takes_the_first_reads_direction_and_leaves_the_rest_in_order() {
        let mut answers = Vec::new();
        let mut queue = VecDeque::new();
        for (n, backward) in [(0, true), (1, false), (2, true), (3, false), (4, true)] {
            let (r, answer) = request(n, backward);
            queue.push_back(r);
            answers.push(answer);
        }
        // The caller of read 2 gave up.
        drop(answers.remove(2));
        let first = take(&mut queue);
        assert_eq!(numbers(&first), [(0, true), (4, true)]);
        assert_eq!(numbers(queue.make_contiguous()), [(1, false), (3, false)]);
        let second = take(&mut queue);
        assert_eq!(numbers(&second), [(1, false), (3, false)]);
        assert!(queue.is_empty() && take(&mut queue).is_empty());
        let mut answers = Vec::new();
        for n in 0..MAX_READS + 3 {
            let (r, answer) = request(n, false);
            queue.push_back(r);
            answers.push(answer);
        }
        assert_eq!(take(&mut queue).len(), MAX_READS);
        assert_eq!(
            numbers(queue.make_contiguous()),
            (MAX_READS..MAX_READS + 3)
                .map(|n| (n, false))
                .collect::<Vec<_>>()
        );
    }
}

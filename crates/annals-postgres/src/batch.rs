//! Requests of this process done together by one statement (group commits, grouped
//! catch-ups): a request joins the queue, then either gets its answer from a batch another
//! caller is running or, when one of the slots is free, takes what is queued and runs it
//! itself, as a task of its own (a caller that gives up never strands the others' answers).
//! That task keeps its slot and runs the next batch as soon as one is queued, so under
//! load a slot's batches follow each other without a hand-over between tasks; it ends, and
//! frees the slot, when a batch leaves nothing queued.
//!
//! With a depth over one, a slot's task also sends the batch queued while its batches are
//! in flight without waiting for their answers (up to `depth` in flight on the slot's
//! connection, which runs them in order): the server goes from one batch's commit to the
//! next batch without waiting for the client to take the answer and send again.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use futures::stream::FuturesUnordered;
use futures::FutureExt as _;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::*;

pub(crate) struct Batches<R> {
    queue: Arc<Mutex<VecDeque<R>>>,
    slots: Arc<Semaphore>,
    /// Batches a slot's task keeps in flight at once.
    depth: usize,
    /// Told when a request is queued: a slot's task with room for another batch takes it.
    queued: Arc<Notify>,
}

/// Lets callers that are ready to run join `queue` before a batch is taken from it (see
/// `annals::backend::gather`).
async fn gather<R>(queue: &Mutex<VecDeque<R>>) {
    annals::backend::gather(|| queue.lock().unwrap_or_else(|p| p.into_inner()).len()).await
}

impl<R: Send + 'static> Batches<R> {
    /// `slots` tasks may run batches at once, each one batch at a time.
    pub(crate) fn new(slots: usize) -> Self {
        Self::pipelined(slots, 1)
    }

    /// `slots` tasks may run batches at once, each with up to `depth` in flight.
    pub(crate) fn pipelined(slots: usize, depth: usize) -> Self {
        Self {
            queue: Arc::new(Mutex::new(VecDeque::new())),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            depth: depth.max(1),
            queued: Arc::new(Notify::new()),
        }
    }

    /// Queues `request`, whose answer comes on `answer`; while it has not come and a slot
    /// is free, takes a batch from the queue with `take` and runs it with `run`, then the
    /// batches queued meanwhile, in a task of its own. `what` names the batch in the error
    /// of a batch that ended without answering.
    pub(crate) async fn join<T, F>(
        &self,
        request: R,
        mut answer: oneshot::Receiver<Result<T>>,
        take: fn(&mut VecDeque<R>) -> Vec<R>,
        run: impl Fn(Vec<R>) -> F + Clone + Send + 'static,
        what: &str,
    ) -> Result<T>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let lock =
            move |q: &Mutex<VecDeque<R>>| take(&mut q.lock().unwrap_or_else(|p| p.into_inner()));
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(request);
        if self.depth > 1 {
            self.queued.notify_one();
        }
        let gone = || backend(format!("the {what} ended without an answer"));
        loop {
            tokio::select! {
                biased;
                got = &mut answer => return got.map_err(|_| gone())?,
                permit = Arc::clone(&self.slots).acquire_owned() => {
                    let permit = permit.map_err(|_| gone())?;
                    gather(&self.queue).await;
                    let batch = lock(&self.queue);
                    if batch.is_empty() {
                        // Ours is in a batch being run.
                        drop(permit);
                        return answer.await.map_err(|_| gone())?;
                    }
                    let (queue, queued, depth) =
                        (Arc::clone(&self.queue), Arc::clone(&self.queued), self.depth);
                    let run = run.clone();
                    // Not awaited: ours is answered with the first batch, while the task
                    // may go on with later ones. A batch that panics fails only its own
                    // callers (their replies are dropped with it).
                    tokio::spawn(async move {
                        let start = move |batch: Vec<R>| {
                            let size = batch.len();
                            let batch = AssertUnwindSafe(run(batch)).catch_unwind();
                            async move {
                                let _ = batch.await;
                                size
                            }
                        };
                        let mut running = FuturesUnordered::new();
                        let mut sizes = vec![batch.len()];
                        running.push(start(batch));
                        while !running.is_empty() {
                            tokio::select! {
                                biased;
                                Some(size) = running.next() => {
                                    if let Some(i) = sizes.iter().position(|s| *s == size) {
                                        sizes.swap_remove(i);
                                    }
                                }
                                _ = queued.notified(), if running.len() < depth => {}
                            }
                            if running.len() >= depth {
                                continue;
                            }
                            let queued = queue.lock().unwrap_or_else(|p| p.into_inner()).len();
                            if !worth_sending(queued, &sizes) {
                                continue;
                            }
                            // With none in flight, the callers just answered are let join
                            // first, as with one batch at a time.
                            gather(&queue).await;
                            let batch = lock(&queue);
                            if !batch.is_empty() {
                                sizes.push(batch.len());
                                running.push(start(batch));
                            }
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Whether the `queued` requests are taken as a batch now, beside the batches in flight
/// (their sizes): always when none is in flight (the batch may then be empty, and the task
/// ends); beside some, only when they are at least as many as the largest in flight. Each
/// batch costs the server a statement and a commit of its own, while fewer requests than
/// the largest batch in flight can go at no extra cost in the batch after it, with its
/// callers, who queue again as soon as they are answered.
fn worth_sending(queued: usize, in_flight: &[usize]) -> bool {
    in_flight.iter().all(|n| queued >= *n)
}

/// Pooled connections shared by the batches in flight on them: each batch takes the one
/// with the fewest in flight, a new one while the pool has room, and a connection found
/// closed is let go (back to the pool, which replaces it).
pub(crate) struct Shared {
    pool: Pool,
    conns: tokio::sync::Mutex<Vec<Arc<Object>>>,
}

impl Shared {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            conns: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Lets `conn` go after a failure that ended it (see `error::ends_connection`): the
    /// next batch gets another one. The server's error comes before its socket closes, and
    /// a connection whose driver has not yet seen the close would fail the next batch too.
    pub(crate) async fn discard(&self, conn: Arc<Object>) {
        self.conns.lock().await.retain(|c| !Arc::ptr_eq(c, &conn));
        // Out of the pool too, once no other batch in flight holds it.
        if let Ok(conn) = Arc::try_unwrap(conn) {
            drop(Object::take(conn));
        }
    }

    /// A connection for one batch.
    pub(crate) async fn get(&self) -> Result<Arc<Object>> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.is_closed());
        let least = conns.iter().min_by_key(|c| Arc::strong_count(c)).cloned();
        // Counted: the list's handle and `least` itself, then one per batch in flight.
        match least {
            Some(c) if Arc::strong_count(&c) <= 2 || conns.len() >= self.pool.status().max_size => {
                Ok(c)
            }
            _ => {
                let c = Arc::new(self.pool.get().await.map_err(backend)?);
                conns.push(Arc::clone(&c));
                Ok(c)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::time::Duration;

    use super::*;

    type Request = (u32, oneshot::Sender<Result<u32>>);
    type Run = Arc<dyn Fn(Vec<Request>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

    fn all(queue: &mut VecDeque<Request>) -> Vec<Request> {
        queue.drain(..).collect()
    }

    /// One slot of batches whose run answers each request with its value times ten; the
    /// batch holding 0 waits for `gate`, and one holding `fail` panics. `seen` keeps each
    /// batch's values.
    struct Rig {
        batches: Arc<Batches<Request>>,
        seen: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<Semaphore>,
        run: Run,
    }

    impl Rig {
        fn new(fail: u32) -> Self {
            Self::pipelined(fail, 1)
        }

        fn pipelined(fail: u32, depth: usize) -> Self {
            let seen: Arc<Mutex<Vec<Vec<u32>>>> = Default::default();
            let gate = Arc::new(Semaphore::new(0));
            let (s, g) = (Arc::clone(&seen), Arc::clone(&gate));
            let run: Run = Arc::new(move |batch: Vec<Request>| {
                let (seen, gate) = (Arc::clone(&s), Arc::clone(&g));
                Box::pin(async move {
                    let values: Vec<u32> = batch.iter().map(|r| r.0).collect();
                    seen.lock().unwrap().push(values.clone());
                    if values.contains(&0) {
                        let _ = gate.acquire().await;
                    }
                    assert!(!values.contains(&fail), "a batch failed");
                    for (value, reply) in batch {
                        let _ = reply.send(Ok(value * 10));
                    }
                })
            });
            Self {
                batches: Arc::new(Batches::pipelined(1, depth)),
                seen,
                gate,
                run,
            }
        }

        fn call(&self, value: u32) -> tokio::task::JoinHandle<Result<u32>> {
            let (batches, run) = (Arc::clone(&self.batches), Arc::clone(&self.run));
            tokio::spawn(async move {
                let (reply, answer) = oneshot::channel();
                let run = move |batch| run(batch);
                batches
                    .join((value, reply), answer, all, run, "test batch")
                    .await
            })
        }

        /// Calls with 0 (its batch waits for the gate), then with `values` once that batch
        /// runs; returns when all of them are queued.
        async fn queue_behind_a_batch(
            &self,
            values: std::ops::RangeInclusive<u32>,
        ) -> (
            tokio::task::JoinHandle<Result<u32>>,
            Vec<tokio::task::JoinHandle<Result<u32>>>,
        ) {
            let first = self.call(0);
            until(|| self.seen.lock().unwrap().len() == 1).await;
            let rest: Vec<_> = values.map(|v| self.call(v)).collect();
            let n = rest.len();
            until(|| self.batches.queue.lock().unwrap().len() == n).await;
            (first, rest)
        }
    }

    async fn until(done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the condition within 10 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_task_runs_what_was_queued_meanwhile_and_then_frees_its_slot() {
        let rig = Rig::new(u32::MAX);
        let (first, rest) = rig.queue_behind_a_batch(1..=20).await;
        rig.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (v, h) in (1..=20).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap(), v * 10, "request {v}");
        }
        // The 20 queued while the first ran went in one batch after it.
        let seen = rig.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let mut second = seen[1].clone();
        second.sort_unstable();
        assert_eq!(second, (1..=20).collect::<Vec<_>>());
        // The slot is free again: a later request is served.
        assert_eq!(rig.call(7).await.unwrap().unwrap(), 70);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_strands_nobody() {
        let rig = Rig::new(u32::MAX);
        // The caller whose request leads the first batch gives up while it runs.
        let (leader, rest) = rig.queue_behind_a_batch(1..=5).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        rig.gate.add_permits(1);
        for (v, h) in (1..=5).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap(), v * 10, "request {v}");
        }
        assert_eq!(rig.call(9).await.unwrap().unwrap(), 90);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_panics_fails_its_callers_only() {
        // 3 is queued with 1 and 2: their batch fails; 4, called after it ran, does not.
        let rig = Rig::new(3);
        let (first, doomed) = rig.queue_behind_a_batch(1..=3).await;
        rig.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for h in doomed {
            let e = h.await.unwrap().unwrap_err();
            assert!(
                e.to_string().contains("test batch ended without an answer"),
                "{e}"
            );
        }
        assert_eq!(rig.call(4).await.unwrap().unwrap(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_depth_two_a_batch_runs_while_the_one_before_is_in_flight() {
        let rig = Rig::pipelined(u32::MAX, 2);
        let first = rig.call(0);
        until(|| rig.seen.lock().unwrap().len() == 1).await;
        // The first batch is still in flight (it waits for the gate): the second goes
        // beside it, on the same slot, and is answered first.
        assert_eq!(rig.call(5).await.unwrap().unwrap(), 50);
        assert!(!first.is_finished());
        rig.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        assert_eq!(rig.seen.lock().unwrap().clone(), [vec![0], vec![5]]);
        // The slot is free again: a later request is served.
        assert_eq!(rig.call(7).await.unwrap().unwrap(), 70);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_depth_two_a_batch_that_panics_fails_its_callers_only() {
        // 3 goes beside the batch in flight and panics; the batch in flight is answered.
        let rig = Rig::pipelined(3, 2);
        let first = rig.call(0);
        until(|| rig.seen.lock().unwrap().len() == 1).await;
        let e = rig.call(3).await.unwrap().unwrap_err();
        assert!(
            e.to_string().contains("test batch ended without an answer"),
            "{e}"
        );
        rig.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        assert_eq!(rig.call(4).await.unwrap().unwrap(), 40);
    }

    #[test]
    fn a_batch_goes_beside_those_in_flight_only_when_as_large() {
        assert!(
            worth_sending(0, &[]),
            "none in flight: the task takes what is queued"
        );
        assert!(worth_sending(3, &[]));
        assert!(worth_sending(8, &[8]));
        assert!(worth_sending(9, &[8]));
        assert!(!worth_sending(7, &[8]));
        assert!(!worth_sending(1, &[16]));
        assert!(!worth_sending(4, &[2, 5]));
    }
}

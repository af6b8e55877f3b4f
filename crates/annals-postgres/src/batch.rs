//! Requests of this process done together by one statement (group commits, grouped
//! catch-ups): a request joins the queue, then either gets its answer from a batch another
//! caller is running or, when one of the slots is free, takes what is queued and runs it
//! itself, as a task of its own (a caller that gives up never strands the others' answers).
//! That task keeps its slot and runs the next batch as soon as one is queued, so under
//! load a slot's batches follow each other without a hand-over between tasks; it ends, and
//! frees the slot, when a batch leaves nothing queued.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{oneshot, Semaphore};

use super::*;

/// How many turns of the scheduler a caller that got a slot gives other callers to join
/// its batch before taking it (it stops as soon as a turn brings nobody new).
const GATHER_TURNS: usize = 4;

pub(crate) struct Batches<R> {
    queue: Arc<Mutex<VecDeque<R>>>,
    slots: Arc<Semaphore>,
}

/// Lets callers that are ready to run (those the batch before answered, woken together)
/// join `queue` before a batch is taken: the first of them to get the slot would otherwise
/// take only itself and leave the rest to the batch after. Each turn lets every other ready
/// task run once; no waiting on a clock.
async fn gather<R>(queue: &Mutex<VecDeque<R>>) {
    let queued = || queue.lock().unwrap_or_else(|p| p.into_inner()).len();
    for _ in 0..GATHER_TURNS {
        let before = queued();
        tokio::task::yield_now().await;
        if queued() == before {
            break;
        }
    }
}

impl<R: Send + 'static> Batches<R> {
    /// `slots` batches may run at once.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            queue: Arc::new(Mutex::new(VecDeque::new())),
            slots: Arc::new(Semaphore::new(slots.max(1))),
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
        let gone = || backend(format!("the {what} ended without an answer"));
        loop {
            tokio::select! {
                biased;
                got = &mut answer => return got.map_err(|_| gone())?,
                permit = Arc::clone(&self.slots).acquire_owned() => {
                    let permit = permit.map_err(|_| gone())?;
                    gather(&self.queue).await;
                    let mut batch = lock(&self.queue);
                    if batch.is_empty() {
                        // Ours is in a batch being run.
                        drop(permit);
                        return answer.await.map_err(|_| gone())?;
                    }
                    let (queue, run) = (Arc::clone(&self.queue), run.clone());
                    // Not awaited: ours is answered with the first batch, while the task
                    // may go on with later ones.
                    tokio::spawn(async move {
                        loop {
                            run(batch).await;
                            gather(&queue).await;
                            batch = lock(&queue);
                            if batch.is_empty() {
                                break;
                            }
                        }
                        drop(permit);
                    });
                }
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
                batches: Arc::new(Batches::new(1)),
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
}

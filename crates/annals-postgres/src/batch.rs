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
    use std::time::Duration;

    use super::*;

    type Request = (u32, oneshot::Sender<Result<u32>>);

    fn all(queue: &mut VecDeque<Request>) -> Vec<Request> {
        queue.drain(..).collect()
    }

    /// What the batches saw: each batch's values.
    type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

    /// Answers each request with its value times ten; a batch holding `stop` waits for
    /// `gate`, and one holding `fail` panics.
    fn runner(
        seen: Seen,
        gate: Arc<Semaphore>,
        stop: u32,
        fail: u32,
    ) -> impl Fn(Vec<Request>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone + Send
    {
        move |batch: Vec<Request>| {
            let (seen, gate) = (Arc::clone(&seen), Arc::clone(&gate));
            Box::pin(async move {
                let values: Vec<u32> = batch.iter().map(|r| r.0).collect();
                seen.lock().unwrap().push(values.clone());
                if values.contains(&stop) {
                    let _ = gate.acquire().await;
                }
                assert!(!values.contains(&fail), "a batch failed");
                for (value, reply) in batch {
                    let _ = reply.send(Ok(value * 10));
                }
            })
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"));
    }

    fn call(
        batches: &Arc<Batches<Request>>,
        run: impl Fn(Vec<Request>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
            + Clone
            + Send
            + 'static,
        value: u32,
    ) -> tokio::task::JoinHandle<Result<u32>> {
        let batches = Arc::clone(batches);
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            batches
                .join((value, reply), answer, all, run, "test batch")
                .await
        })
    }

    fn queued(batches: &Batches<Request>) -> usize {
        batches.queue.lock().unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_task_runs_what_was_queued_meanwhile_and_then_frees_its_slot() {
        let batches = Arc::new(Batches::new(1));
        let seen: Seen = Default::default();
        let gate = Arc::new(Semaphore::new(0));
        let run = runner(Arc::clone(&seen), Arc::clone(&gate), 0, u32::MAX);
        let first = call(&batches, run.clone(), 0);
        until("the first batch runs", || seen.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=20).map(|v| call(&batches, run.clone(), v)).collect();
        until("20 requests queued", || queued(&batches) == 20).await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (v, h) in (1..=20).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap(), v * 10, "request {v}");
        }
        // The 20 queued while the first ran went in one batch after it.
        let batches_seen = seen.lock().unwrap().clone();
        assert_eq!(batches_seen.len(), 2, "{batches_seen:?}");
        assert_eq!(batches_seen[1], (1..=20).collect::<Vec<_>>());
        // The slot is free again: a later request is served.
        assert_eq!(call(&batches, run, 7).await.unwrap().unwrap(), 70);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_strands_nobody() {
        let batches = Arc::new(Batches::new(1));
        let seen: Seen = Default::default();
        let gate = Arc::new(Semaphore::new(0));
        let run = runner(Arc::clone(&seen), Arc::clone(&gate), 0, u32::MAX);
        // The caller whose request leads the first batch gives up while it runs.
        let leader = call(&batches, run.clone(), 0);
        until("the first batch runs", || seen.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=5).map(|v| call(&batches, run.clone(), v)).collect();
        until("5 requests queued", || queued(&batches) == 5).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        gate.add_permits(1);
        for (v, h) in (1..=5).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap(), v * 10, "request {v}");
        }
        assert_eq!(call(&batches, run, 9).await.unwrap().unwrap(), 90);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_panics_fails_its_callers_only() {
        let batches = Arc::new(Batches::new(1));
        let seen: Seen = Default::default();
        let gate = Arc::new(Semaphore::new(0));
        let run = runner(Arc::clone(&seen), Arc::clone(&gate), 0, 3);
        let first = call(&batches, run.clone(), 0);
        until("the first batch runs", || seen.lock().unwrap().len() == 1).await;
        // 3 is queued with 1 and 2: their batch fails; 4, queued after it ran, does not.
        let doomed: Vec<_> = (1..=3).map(|v| call(&batches, run.clone(), v)).collect();
        until("3 requests queued", || queued(&batches) == 3).await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for h in doomed {
            let e = h.await.unwrap().unwrap_err();
            assert!(
                e.to_string().contains("test batch ended without an answer"),
                "{e}"
            );
        }
        assert_eq!(call(&batches, run, 4).await.unwrap().unwrap(), 40);
    }
}

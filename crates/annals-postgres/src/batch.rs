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

//! Requests of this process done together by one statement (group commits, grouped
//! catch-ups): a request joins the queue, then either gets its answer from a batch another
//! caller is running or, when one of the slots is free, takes what is queued and runs it
//! itself, as a task of its own (a caller that gives up never strands the others' answers).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{oneshot, Semaphore};

use super::*;

/// How many turns of the scheduler a caller that got a slot gives other callers to join
/// its batch before taking it (it stops as soon as a turn brings nobody new).
const GATHER_TURNS: usize = 4;

pub(crate) struct Batches<R> {
    queue: Mutex<VecDeque<R>>,
    slots: Arc<Semaphore>,
}

impl<R: Send + 'static> Batches<R> {
    /// `slots` batches may run at once.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Lets callers that are ready to run (those the batch before answered, woken
    /// together) join the queue before a batch is taken: the first of them to get the
    /// slot would otherwise take only itself and leave the rest to the batch after. Each
    /// turn lets every other ready task run once; no waiting on a clock.
    async fn gather(&self) {
        let queued = || self.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        for _ in 0..GATHER_TURNS {
            let before = queued();
            tokio::task::yield_now().await;
            if queued() == before {
                break;
            }
        }
    }

    /// Queues `request`, whose answer comes on `answer`; while it has not come and a slot
    /// is free, takes a batch from the queue with `take` and runs it with `run`. `what`
    /// names the batch in the error of a batch that ended without answering.
    pub(crate) async fn join<T, F>(
        &self,
        request: R,
        mut answer: oneshot::Receiver<Result<T>>,
        take: impl Fn(&mut VecDeque<R>) -> Vec<R>,
        run: impl Fn(Vec<R>) -> F,
        what: &str,
    ) -> Result<T>
    where
        F: Future<Output = ()> + Send + 'static,
    {
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
                    self.gather().await;
                    let batch = take(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()));
                    if batch.is_empty() {
                        // Ours is in a batch being run.
                        drop(permit);
                        return answer.await.map_err(|_| gone())?;
                    }
                    let running = run(batch);
                    let ran = tokio::spawn(async move {
                        running.await;
                        drop(permit);
                    });
                    let _ = ran.await;
                }
            }
        }
    }
}

//! Competing consumers: several processes share one consumer group's work by partition,
//! each partition leased to one member at a time (see [`annals::LeaseStore`]).
//!
//! A member heartbeats every `renew_interval`: it renews its leases and claims free or
//! expired partitions up to its fair share, runs one pipeline per held partition (each
//! with its own checkpoint, `source#index/count`), and gives back partitions above its fair
//! share after stopping their pipelines (handlers in flight finish, the checkpoint is
//! flushed). If it cannot renew in time, it aborts its pipelines before its leases can
//! expire, so the next owner never overlaps with it; leases of a member that dies expire
//! after `lease_ttl` and the others take them over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use annals::{CheckpointStore, EventStore, LeaseStore};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::{Handler, Partition, PipelineConfig, PipelineError, Running};

/// How a member takes part in a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// This member's name, unique in the group (for example host and process id).
    pub member: String,
    /// How many partitions the feed is split into. Every member of a group must agree.
    pub partitions: u32,
    /// How long a lease lasts without renewal: how long a dead member's streams wait.
    pub lease_ttl: Duration,
    /// How often leases are renewed; at most a third of `lease_ttl`.
    pub renew_interval: Duration,
}

impl GroupConfig {
    /// Defaults for `member`: 16 partitions, 10 s leases renewed every 2.5 s.
    pub fn new(member: impl Into<String>) -> Self {
        Self {
            member: member.into(),
            partitions: 16,
            lease_ttl: Duration::from_secs(10),
            renew_interval: Duration::from_millis(2500),
        }
    }
}

/// A running member of a consumer group.
#[derive(Debug)]
pub struct Member {
    held: watch::Receiver<Vec<u32>>,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Result<(), PipelineError>>,
}

impl Member {
    /// The partitions this member is handling now.
    pub fn held(&self) -> Vec<u32> {
        self.held.borrow().clone()
    }

    /// A receiver of the partitions held, updated as they change.
    pub fn watch_held(&self) -> watch::Receiver<Vec<u32>> {
        self.held.clone()
    }

    /// Stops every pipeline (handlers in flight finish, checkpoints are flushed) and gives
    /// the leases back.
    pub async fn stop(self) -> Result<(), PipelineError> {
        self.stop.notify_one();
        join(self.task).await
    }

    /// Waits for the member to end on its own (a pipeline's error under the stop policy).
    pub async fn join(self) -> Result<(), PipelineError> {
        join(self.task).await
    }
}

async fn join(
    task: tokio::task::JoinHandle<Result<(), PipelineError>>,
) -> Result<(), PipelineError> {
    task.await.unwrap_or_else(|e| {
        Err(PipelineError::Store(annals::Error::backend(
            "reactor",
            e.to_string(),
        )))
    })
}

/// Joins `group.member` to the consumer group `pipeline.group`: from now on it handles the
/// partitions it leases from `leases`, with one pipeline per partition configured as
/// `pipeline`.
pub fn join_group(
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    leases: Arc<dyn LeaseStore>,
    handler: Arc<dyn Handler>,
    pipeline: PipelineConfig,
    group: GroupConfig,
) -> Member {
    let (held_tx, held) = watch::channel(Vec::new());
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(run(Parts {
        store,
        checkpoints,
        leases,
        handler,
        pipeline,
        group,
        held: held_tx,
        stop: Arc::clone(&stop),
    }));
    Member { held, stop, task }
}

struct Parts {
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    leases: Arc<dyn LeaseStore>,
    handler: Arc<dyn Handler>,
    pipeline: PipelineConfig,
    group: GroupConfig,
    held: watch::Sender<Vec<u32>>,
    stop: Arc<Notify>,
}

impl Parts {
    fn start(&self, partition: u32) -> Running {
        let mut config = self.pipeline.clone();
        config.partition = Some(Partition {
            index: partition,
            count: self.group.partitions,
        });
        crate::spawn(
            Arc::clone(&self.store),
            Arc::clone(&self.checkpoints),
            Arc::clone(&self.handler),
            config,
        )
    }

    /// Stops `running` gracefully if it can before `deadline`, else aborts it. Returns
    /// whether it stopped gracefully (and so may be released), and its error if any.
    async fn stop_before(
        &self,
        partition: u32,
        running: Running,
        deadline: Instant,
    ) -> (bool, Result<(), PipelineError>) {
        let abort = running.abort_handle();
        match tokio::time::timeout_at(deadline, running.stop()).await {
            Ok(result) => (true, result),
            Err(_) => {
                tracing::warn!(
                    group = %self.pipeline.group,
                    partition,
                    "pipeline did not stop before its lease could expire; aborted"
                );
                abort.abort();
                (false, Ok(()))
            }
        }
    }
}

async fn run(parts: Parts) -> Result<(), PipelineError> {
    let group_name = parts.pipeline.group.clone();
    let member = parts.group.member.clone();
    let count = parts.group.partitions.max(1);
    let ttl = parts.group.lease_ttl;
    let renew = parts.group.renew_interval.min(ttl / 3);
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    // Until when (by this process's clock) the leases held are surely still ours.
    let mut deadline: Option<Instant> = None;
    let outcome = 'life: loop {
        let started = Instant::now();
        let acquired = tokio::time::timeout(
            renew,
            parts.leases.acquire(&group_name, &member, count, ttl),
        )
        .await;
        match acquired {
            Ok(Ok(leases)) => {
                let until = started + ttl;
                deadline = Some(until);
                // Leases lost (only if a renewal came too late): stop at once.
                let lost: Vec<u32> = running
                    .keys()
                    .copied()
                    .filter(|p| !leases.held.contains(p))
                    .collect();
                for p in lost {
                    tracing::error!(group = %group_name, partition = p, "lease lost; aborting its pipeline");
                    if let Some(r) = running.remove(&p) {
                        r.abort_handle().abort();
                    }
                }
                // Above the fair share: give back partitions not started yet first, then
                // the highest-numbered.
                let excess = leases.held.len().saturating_sub(leases.fair_share as usize);
                let mut give_back: Vec<u32> = leases
                    .held
                    .iter()
                    .copied()
                    .filter(|p| !running.contains_key(p))
                    .rev()
                    .take(excess)
                    .collect();
                let more = excess - give_back.len();
                give_back.extend(running.keys().rev().copied().take(more));
                let mut released = Vec::new();
                for p in &give_back {
                    match running.remove(p) {
                        Some(r) => {
                            let (graceful, result) = parts.stop_before(*p, r, until - renew).await;
                            if let Err(e) = result {
                                break 'life Err(e);
                            }
                            if graceful {
                                released.push(*p);
                            }
                        }
                        None => released.push(*p),
                    }
                }
                if !released.is_empty() {
                    if let Err(e) = parts.leases.release(&group_name, &member, &released).await {
                        tracing::warn!(group = %group_name, error = %e, "lease release failed; they will expire");
                    }
                }
                for p in &leases.held {
                    if !give_back.contains(p) && !running.contains_key(p) {
                        running.insert(*p, parts.start(*p));
                    }
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(group = %group_name, member = %member, error, "lease renewal failed");
                // The next attempt might not finish before the leases can expire.
                if deadline.is_some_and(|d| Instant::now() + renew >= d) {
                    for (p, r) in std::mem::take(&mut running) {
                        tracing::warn!(group = %group_name, partition = p, "lease not renewed in time; aborting its pipeline");
                        r.abort_handle().abort();
                    }
                    deadline = None;
                }
            }
        }
        // A pipeline that ended on its own (stop policy) ends the member.
        let finished: Vec<u32> = running
            .iter()
            .filter(|(_, r)| r.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in finished {
            if let Some(r) = running.remove(&p) {
                if let Err(e) = r.join().await {
                    break 'life Err(e);
                }
            }
        }
        parts.held.send_replace(running.keys().copied().collect());
        tokio::select! {
            _ = parts.stop.notified() => break Ok(()),
            _ = tokio::time::sleep_until(started + renew) => {}
        }
    };
    // Stop what is left, then hand it back.
    let mut released = Vec::new();
    let mut result = outcome;
    let until = deadline.unwrap_or_else(Instant::now);
    let held_at_stop = running.len();
    for (p, r) in std::mem::take(&mut running) {
        let (graceful, stopped) = parts.stop_before(p, r, until).await;
        if graceful {
            released.push(p);
        }
        if result.is_ok() {
            result = stopped;
        }
    }
    if !released.is_empty() {
        // Everything stopped gracefully: leave the group, so others take over at once.
        // Partitions aborted instead keep their leases until they expire.
        let gone = if released.len() == held_at_stop {
            parts.leases.leave(&group_name, &member).await
        } else {
            parts.leases.release(&group_name, &member, &released).await
        };
        if let Err(e) = gone {
            tracing::warn!(group = %group_name, error = %e, "leaving the group failed; leases will expire");
        }
    }
    parts.held.send_replace(Vec::new());
    result
}

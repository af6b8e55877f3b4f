//! Partition leases of consumer groups in the store's key-value bucket: `lm.{group}.{member}`
//! heartbeats and `ll.{group}.{partition}` leases, each entry stamped by the server's clock;
//! claims and renewals are compare-and-set on the entry's revision, so two members never
//! win one partition, and expiry is judged by the server's time (a heartbeat's stamp).

use std::time::Duration;

use annals::{fair_share, LeaseStore, Leases, Result};
use async_nats::jetstream::kv::{Entry, Operation};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::checkpoints::key_part;
use crate::{backend, NatsStore};

#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    ttl_ms: u64,
}

/// The server's stamp of an entry, in nanoseconds since the epoch.
fn stamp(e: &Entry) -> i128 {
    e.created.unix_timestamp_nanos()
}

fn live(e: &Entry, ttl: Duration, now: i128) -> bool {
    e.operation == Operation::Put && !e.value.is_empty() && stamp(e) + ttl.as_nanos() as i128 > now
}

impl NatsStore {
    fn member_key(group: &str, member: &str) -> String {
        format!("lm.{}.{}", key_part(group), key_part(member))
    }

    fn lease_key(group: &str, partition: u32) -> String {
        format!("ll.{}.{partition}", key_part(group))
    }
}

#[async_trait]
impl LeaseStore for NatsStore {
    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partitions: u32,
        ttl: Duration,
    ) -> Result<Leases> {
        let kv = &self.inner.checkpoints;
        let ttl_ms = ttl.as_millis() as u64;
        // The heartbeat, whose server stamp is "now" for this call.
        let me = Self::member_key(group, member);
        kv.put(&me, ttl_ms.to_string().into())
            .await
            .map_err(backend)?;
        let beat = kv
            .entry(&me)
            .await
            .map_err(backend)?
            .ok_or_else(|| backend("a heartbeat just written is missing"))?;
        let now = stamp(&beat);
        let prefix = format!("lm.{}.", key_part(group));
        let mut keys = kv.keys().await.map_err(backend)?;
        let mut live_members = 0u32;
        while let Some(k) = keys.next().await {
            let k = k.map_err(backend)?;
            if !k.starts_with(&prefix) {
                continue;
            }
            if let Some(e) = kv.entry(&k).await.map_err(backend)? {
                let their_ttl = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(ttl, Duration::from_millis);
                if k == me || live(&e, their_ttl, now) {
                    live_members += 1;
                }
            }
        }
        let live_members = live_members.max(1);
        let fair = fair_share(partitions, live_members);
        let mine = serde_json::to_vec(&Lease {
            owner: member.to_owned(),
            ttl_ms,
        })
        .map_err(backend)?;
        let mut held = Vec::new();
        let mut free = Vec::new();
        for p in 0..partitions {
            let key = Self::lease_key(group, p);
            match kv.entry(&key).await.map_err(backend)? {
                Some(e) if e.operation == Operation::Put && !e.value.is_empty() => {
                    let lease: Option<Lease> = serde_json::from_slice(&e.value).ok();
                    let expired = lease
                        .as_ref()
                        .is_none_or(|l| !live(&e, Duration::from_millis(l.ttl_ms), now));
                    let ours = lease.as_ref().is_some_and(|l| l.owner == member);
                    if ours {
                        // Renew: only while nobody took it (compare-and-set).
                        let renewed = kv.update(&key, mine.clone().into(), e.revision).await;
                        if renewed.is_ok() {
                            held.push(p);
                        }
                    } else if expired {
                        free.push((p, Some(e.revision)));
                    }
                }
                Some(e) => free.push((p, Some(e.revision))),
                None => free.push((p, None)),
            }
        }
        for (p, revision) in free {
            if held.len() as u32 >= fair {
                break;
            }
            let key = Self::lease_key(group, p);
            let claimed = match revision {
                Some(r) => kv.update(&key, mine.clone().into(), r).await.is_ok(),
                None => kv.create(&key, mine.clone().into()).await.is_ok(),
            };
            if claimed {
                held.push(p);
            }
        }
        held.sort_unstable();
        Ok(Leases {
            held,
            fair_share: fair,
            live_members,
        })
    }

    async fn release(&self, group: &str, member: &str, partitions: &[u32]) -> Result<()> {
        let kv = &self.inner.checkpoints;
        for &p in partitions {
            let key = Self::lease_key(group, p);
            if let Some(e) = kv.entry(&key).await.map_err(backend)? {
                let ours =
                    serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.owner == member);
                if ours {
                    // Only if it is still ours at that revision.
                    let _ = kv.delete_expect_revision(&key, Some(e.revision)).await;
                }
            }
        }
        Ok(())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let kv = &self.inner.checkpoints;
        let prefix = format!("ll.{}.", key_part(group));
        let mut keys = kv.keys().await.map_err(backend)?;
        let mut mine = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(backend)?;
            if let Some(p) = k.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) {
                mine.push(p);
            }
        }
        self.release(group, member, &mine).await?;
        kv.delete(Self::member_key(group, member))
            .await
            .map_err(backend)?;
        Ok(())
    }
}

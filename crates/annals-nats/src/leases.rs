//! Partition leases of consumer groups in the store's key-value bucket: `lm.{group}.{member}`
//! heartbeats and `ll.{group}.{partition}` leases, each entry stamped by the server's clock;
//! claims and renewals are compare-and-set on the entry's revision, so two members never
//! win one partition, and expiry is judged by the server's time (a heartbeat's stamp).
//!
//! One `acquire` costs three round trips whatever the group's size: the heartbeat, one
//! direct get of the last entry of every member and lease key of the group (JetStream's
//! multi-last get, with each entry's server stamp), and the renewals and claims, sent
//! together. A group's members and partitions together must stay within the 1,024 entries
//! one such get answers.

use std::time::Duration;

use annals::{fair_share, LeaseStore, Leases, Result};
use bytes::Bytes;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoints::key_part;
use crate::read::CatchUp;
use crate::{backend, NatsStore};

#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    ttl_ms: u64,
}

/// The latest entry of one key.
pub(crate) struct Found {
    key: String,
    revision: u64,
    /// The server's stamp, in nanoseconds since the epoch.
    stamp: i128,
    /// Empty for a deleted or purged key.
    pub(crate) value: Bytes,
}

impl Found {
    fn live(&self, ttl: Duration, now: i128) -> bool {
        !self.value.is_empty() && self.stamp + ttl.as_nanos() as i128 > now
    }
}

/// The most entries one multi-last get answers (the server's limit).
const MULTI_LAST_MAX: usize = 1024;

impl NatsStore {
    fn member_key(group: &str, member: &str) -> String {
        format!("lm.{}.{}", key_part(group), key_part(member))
    }

    fn lease_key(group: &str, partition: u32) -> String {
        format!("ll.{}.{partition}", key_part(group))
    }

    /// Notes a heartbeat, renewal, claim, park or removal this client wrote at `revision`:
    /// reads through [`NatsStore::latest`] wait for a replica that has it.
    pub(crate) fn wrote_kv(&self, revision: u64) {
        self.inner
            .kv_writes
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
    }

    /// The latest entry of every key of the checkpoint bucket under the given key
    /// prefixes (each ending in `.`), deleted keys included with an empty value, from a
    /// replica that has applied this client's last heartbeat, renewal, claim, park and
    /// removal (and holds `required`, a key at a revision, when given): any replica answers
    /// a direct get, and
    /// one whose last sequence is still below them, or that lacks the required entry, is
    /// asked again within the store's timeout. After it, the answer is taken as it is. An
    /// answer of no keys carries no sequence: without a required entry it is taken at once.
    pub(crate) async fn latest(
        &self,
        prefixes: &[String],
        required: Option<(&str, u64)>,
    ) -> Result<Vec<Found>> {
        let kv = &self.inner.checkpoints;
        let filters: Vec<String> = prefixes
            .iter()
            .map(|p| format!("{}{p}>", kv.prefix))
            .collect();
        let written = self
            .inner
            .kv_writes
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut catch_up = CatchUp::within(self.inner.config.timeout);
        loop {
            let (messages, end) = self
                .direct_end(
                    &kv.stream_name,
                    json!({"multi_last": filters, "batch": MULTI_LAST_MAX}),
                    true,
                )
                .await
                .map_err(|e| {
                    backend(format!(
                        "reading the group's leases (a group's members and partitions together must be at most {MULTI_LAST_MAX}): {e}"
                    ))
                })?;
            let entries = Self::found(kv, messages)?;
            let behind = end.upto.is_some_and(|upto| upto < written)
                || required.is_some_and(|(key, revision)| {
                    !entries
                        .iter()
                        .any(|e| e.key == key && e.revision >= revision)
                });
            if !behind || !catch_up.wait().await {
                return Ok(entries);
            }
        }
    }

    /// The entries of a multi-last get's messages.
    fn found(
        kv: &async_nats::jetstream::kv::Store,
        messages: Vec<async_nats::Message>,
    ) -> Result<Vec<Found>> {
        messages
            .into_iter()
            .map(|m| {
                let headers = m.headers.as_ref();
                let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.to_string());
                let subject = header("Nats-Subject")
                    .ok_or_else(|| backend("a key-value entry has no Nats-Subject"))?;
                let key = subject
                    .strip_prefix(kv.prefix.as_str())
                    .ok_or_else(|| backend(format!("{subject} is not a key of the bucket")))?
                    .to_owned();
                let revision = header("Nats-Sequence")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| backend("a key-value entry has no Nats-Sequence"))?;
                let stamp = header("Nats-Time-Stamp")
                    .and_then(|s| {
                        time::OffsetDateTime::parse(
                            &s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .ok_or_else(|| backend("a key-value entry has no Nats-Time-Stamp"))?
                    .unix_timestamp_nanos();
                let deleted = header("KV-Operation").is_some_and(|op| op == "DEL" || op == "PURGE");
                Ok(Found {
                    key,
                    revision,
                    stamp,
                    value: if deleted { Bytes::new() } else { m.payload },
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
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
        let put = async {
            kv.put(&me, ttl_ms.to_string().into())
                .await
                .map_err(backend)
        };
        let beat = self.kv_write("the lease heartbeat", put).await?;
        let members_prefix = format!("lm.{}.", key_part(group));
        let leases_prefix = format!("ll.{}.", key_part(group));
        self.wrote_kv(beat);
        let entries = self
            .latest(
                &[members_prefix.clone(), leases_prefix.clone()],
                Some((&me, beat)),
            )
            .await?;
        let now = entries
            .iter()
            .find(|e| e.key == me && e.revision >= beat)
            .map(|e| e.stamp)
            .ok_or_else(|| {
                backend("the replicas answering reads have not applied the heartbeat just written")
            })?;
        let their_ttl = |e: &Found| {
            std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(ttl, Duration::from_millis)
        };
        let members: Vec<&Found> = entries
            .iter()
            .filter(|e| e.key.starts_with(&members_prefix))
            .collect();
        let live_members = members
            .iter()
            .filter(|e| e.key == me || e.live(their_ttl(e), now))
            .count() as u32;
        // Members gone for ten of their lease times (or that left) are forgotten, their
        // keys purged without a marker, so names of past processes do not pile up. One that
        // was only slow is counted again at its next heartbeat.
        for e in members
            .iter()
            .filter(|e| e.key != me && !e.live(their_ttl(e) * 10, now))
        {
            let subject = format!("{}{}", kv.prefix, e.key);
            if let Err(error) = kv.stream.purge().filter(subject).await {
                tracing::debug!(key = %e.key, %error, "purging a departed member failed");
            }
        }
        let fair = fair_share(partitions, live_members.max(1));
        let mine: Bytes = serde_json::to_vec(&Lease {
            owner: member.to_owned(),
            ttl_ms,
        })
        .map_err(backend)?
        .into();
        // Per partition: ours to renew, or free to claim (at the revision it was seen at;
        // 0 for a key never written).
        let mut ours = Vec::new();
        let mut free = Vec::new();
        for p in 0..partitions {
            let key = Self::lease_key(group, p);
            match entries.iter().find(|e| e.key == key) {
                Some(e) if !e.value.is_empty() => {
                    let lease: Option<Lease> = serde_json::from_slice(&e.value).ok();
                    let expired = lease
                        .as_ref()
                        .is_none_or(|l| !e.live(Duration::from_millis(l.ttl_ms), now));
                    if lease.as_ref().is_some_and(|l| l.owner == member) {
                        ours.push((p, e.revision));
                    } else if expired {
                        free.push((p, e.revision));
                    }
                }
                Some(e) => free.push((p, e.revision)),
                None => free.push((p, 0)),
            }
        }
        // Renew ours (only while nobody took them) and claim free ones up to the fair
        // share, all at once; each is a compare-and-set on the revision seen.
        let room = (fair as usize).saturating_sub(ours.len());
        let tries: Vec<(u32, u64)> = ours
            .into_iter()
            .chain(free.into_iter().take(room))
            .collect();
        let results =
            join_all(tries.iter().map(|(p, revision)| {
                kv.update(Self::lease_key(group, *p), mine.clone(), *revision)
            }))
            .await;
        let mut held = Vec::new();
        for ((p, _), result) in tries.iter().zip(results) {
            if let Ok(revision) = result {
                self.wrote_kv(revision);
                held.push(*p);
            }
        }
        held.sort_unstable();
        Ok(Leases {
            held,
            fair_share: fair,
            live_members: live_members.max(1),
        })
    }

    async fn release(&self, group: &str, member: &str, partitions: &[u32]) -> Result<()> {
        let prefix = format!("ll.{}.", key_part(group));
        let entries = self.latest(std::slice::from_ref(&prefix), None).await?;
        self.release_found(member, &entries, |key| {
            key.strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| partitions.contains(&p))
        })
        .await;
        Ok(())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let prefix = format!("ll.{}.", key_part(group));
        let entries = self.latest(std::slice::from_ref(&prefix), None).await?;
        self.release_found(member, &entries, |_| true).await;
        self.kv_remove(&Self::member_key(group, member), false, None)
            .await
    }

    async fn members(&self, group: &str) -> Result<Vec<annals::GroupMember>> {
        let members_prefix = format!("lm.{}.", key_part(group));
        let leases_prefix = format!("ll.{}.", key_part(group));
        let entries = self
            .latest(&[members_prefix.clone(), leases_prefix.clone()], None)
            .await?;
        // For a display, this machine's clock against the server's stamps is close enough.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut members: Vec<annals::GroupMember> = entries
            .iter()
            .filter_map(|e| {
                let ttl = std::str::from_utf8(&e.value).ok()?.parse().ok()?;
                let name = key_part_decode(e.key.strip_prefix(&members_prefix)?)?;
                e.live(Duration::from_millis(ttl), now)
                    .then(|| annals::GroupMember {
                        member: name,
                        partitions: Vec::new(),
                    })
            })
            .collect();
        for e in &entries {
            let (Some(partition), Ok(lease)) = (
                e.key
                    .strip_prefix(&leases_prefix)
                    .and_then(|p| p.parse::<u32>().ok()),
                serde_json::from_slice::<Lease>(&e.value),
            ) else {
                continue;
            };
            if !e.live(Duration::from_millis(lease.ttl_ms), now) {
                continue;
            }
            if let Some(m) = members.iter_mut().find(|m| m.member == lease.owner) {
                m.partitions.push(partition);
            }
        }
        members.sort_by(|a, b| a.member.cmp(&b.member));
        for m in &mut members {
            m.partitions.sort_unstable();
        }
        Ok(members)
    }
}

/// The text [`key_part`] encoded, or `None` if `key` is not one of its encodings.
fn key_part_decode(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl NatsStore {
    /// Deletes the leases among `entries` that `member` holds and `wanted` names, each
    /// only if it is still at the revision seen (still ours).
    async fn release_found(&self, member: &str, entries: &[Found], wanted: impl Fn(&str) -> bool) {
        let ours = entries.iter().filter(|e| {
            wanted(&e.key)
                && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.owner == member)
        });
        // A failed delete leaves the lease to expire.
        join_all(ours.map(|e| self.kv_remove(&e.key, false, Some(e.revision)))).await;
    }
}

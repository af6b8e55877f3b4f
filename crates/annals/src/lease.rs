//! Leases: which member of a consumer group handles which partition of the feed, so that
//! several processes can share a group's work without two of them handling one stream.
//!
//! The rule every implementation keeps: a lease returned by [`LeaseStore::acquire`] stays
//! the member's for at least `ttl` after the call began (the store's own clock decides
//! expiry), and nobody else is given it before it expires or is released. A member that
//! stops handling a partition before `call start + ttl` (by its own clock) therefore never
//! overlaps with the next owner.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::Result;

/// What a member holds after [`LeaseStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leases {
    /// The partitions it holds, ascending.
    pub held: Vec<u32>,
    /// How many partitions each live member should hold: the partition count divided by
    /// the live members, rounded up. A member holding more should release the excess.
    pub fair_share: u32,
    /// Members whose heartbeat has not expired, this one included.
    pub live_members: u32,
}

/// A live member of a consumer group and the partitions it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMember {
    /// Its name.
    pub member: String,
    /// The partitions it holds (unexpired leases), ascending.
    pub partitions: Vec<u32>,
}

/// Stores a consumer group's members and partition leases.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Records `member` as alive in `group` for `ttl`, renews the leases it holds, and
    /// claims free or expired partitions of `0..partitions` up to its fair share. Each
    /// returned lease is valid for at least `ttl` from the call's start.
    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partitions: u32,
        ttl: Duration,
    ) -> Result<Leases>;

    /// Gives `partitions` up (call only after their work has stopped), so others can
    /// claim them at once.
    async fn release(&self, group: &str, member: &str, partitions: &[u32]) -> Result<()>;

    /// Gives every lease of `member` back and leaves `group`, so the others' fair share
    /// grows at once (call only after its work has stopped).
    async fn leave(&self, group: &str, member: &str) -> Result<()>;

    /// The live members of `group` (heartbeat not expired) with the partitions each holds,
    /// by name: what an operator looks at. Stores that cannot list them answer none.
    async fn members(&self, group: &str) -> Result<Vec<GroupMember>> {
        let _ = group;
        Ok(Vec::new())
    }
}

/// Leases kept in memory: for members sharing one process (tests, in-process workers).
#[derive(Debug, Default)]
pub struct MemoryLeases {
    state: Mutex<MemoryLeaseState>,
}

#[derive(Debug, Default)]
struct MemoryLeaseState {
    members: BTreeMap<(String, String), Instant>,
    leases: BTreeMap<(String, u32), (String, Instant)>,
}

impl MemoryLeases {
    /// No members, no leases.
    pub fn new() -> Self {
        Self::default()
    }
}

/// `partitions / live`, rounded up (at least 1 member).
pub fn fair_share(partitions: u32, live_members: u32) -> u32 {
    partitions.div_ceil(live_members.max(1))
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partitions: u32,
        ttl: Duration,
    ) -> Result<Leases> {
        let now = Instant::now();
        let until = now + ttl;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.members
            .insert((group.to_owned(), member.to_owned()), until);
        let live = st
            .members
            .iter()
            .filter(|((g, _), exp)| g == group && **exp > now)
            .count() as u32;
        let fair = fair_share(partitions, live);
        let mut held = Vec::new();
        for p in 0..partitions {
            if let Some((owner, exp)) = st.leases.get_mut(&(group.to_owned(), p)) {
                if owner == member {
                    *exp = until;
                    held.push(p);
                }
            }
        }
        for p in 0..partitions {
            if held.len() as u32 >= fair {
                break;
            }
            let key = (group.to_owned(), p);
            let free = st.leases.get(&key).is_none_or(|(_, exp)| *exp <= now);
            if free {
                st.leases.insert(key, (member.to_owned(), until));
                held.push(p);
            }
        }
        held.sort_unstable();
        Ok(Leases {
            held,
            fair_share: fair,
            live_members: live,
        })
    }

    async fn release(&self, group: &str, member: &str, partitions: &[u32]) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            let key = (group.to_owned(), *p);
            if st
                .leases
                .get(&key)
                .is_some_and(|(owner, _)| owner == member)
            {
                st.leases.remove(&key);
            }
        }
        Ok(())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.leases
            .retain(|(g, _), (owner, _)| !(g == group && owner == member));
        st.members.remove(&(group.to_owned(), member.to_owned()));
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Vec<GroupMember>> {
        let now = Instant::now();
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(st
            .members
            .iter()
            .filter(|((g, _), until)| g == group && **until > now)
            .map(|((_, member), _)| GroupMember {
                member: member.clone(),
                partitions: st
                    .leases
                    .iter()
                    .filter(|((g, _), (owner, until))| {
                        g == group && owner == member && *until > now
                    })
                    .map(|((_, p), _)| *p)
                    .collect(),
            })
            .collect())
    }
}

//! Parking streams whose handler keeps failing: records written before their batches may
//! complete, extended by later events, loaded at start, dropped when an operator unparks.

use super::*;

impl Scheduler {
    /// Parks a stream: its buffered events wait only for their record to be written.
    pub(super) fn park(&mut self, name: StreamName) {
        let s = self
            .streams
            .get_mut(&name)
            .expect("parked streams are known");
        s.parked = true;
        s.retry_at = None;
        s.delays = None;
        let events: Vec<(u64, RecordedEvent)> = s.queue.drain(..).collect();
        self.buffered -= events.len();
        let (from, to) = match (events.first(), events.last()) {
            (Some((_, f)), Some((_, l))) => (f.stream_version, l.stream_version + 1),
            _ => (s.next_version, s.next_version),
        };
        let pending = s.park.get_or_insert_with(|| ParkPending {
            from,
            ..ParkPending::default()
        });
        pending.from = pending.from.min(from);
        pending.to = pending.to.max(to);
        pending.batches.extend(events.iter().map(|(b, _)| *b));
        let now = Timestamp::now();
        self.parked.insert(
            name.clone(),
            Parked {
                group: self.config.group.clone(),
                stream: name.clone(),
                from: Version(from),
                to: Version(to),
                attempts: s.failures,
                first_error: s.first_error.clone().unwrap_or_default(),
                last_error: s.last_error.clone(),
                parked_at: now,
                updated_at: now,
            },
        );
        self.parked_dirty = true;
        self.failing_dirty = true;
        self.to_park.insert(name);
    }

    /// Writes the records of newly parked streams (or extends them), then lets their
    /// batches complete: the checkpoint never passes an event that is neither handled nor
    /// recorded as parked.
    pub(super) async fn flush_parked(&mut self) {
        if self
            .park_retry_at
            .is_some_and(|t| t > tokio::time::Instant::now())
        {
            return;
        }
        self.park_retry_at = None;
        let names: Vec<StreamName> = self.to_park.iter().cloned().collect();
        let now = Timestamp::now();
        for name in names {
            let Some(s) = self.streams.get_mut(&name) else {
                self.to_park.remove(&name);
                continue;
            };
            let Some(pending) = s.park.as_ref() else {
                self.to_park.remove(&name);
                continue;
            };
            // What this flush records: the pending range, with the stream's errors.
            let Some(known) = self.parked.get_mut(&name) else {
                self.to_park.remove(&name);
                continue;
            };
            let parked = Parked {
                from: Version(pending.from),
                to: Version(pending.to),
                updated_at: now,
                ..known.clone()
            };
            known.extend(&parked);
            match self.checkpoints.park(&parked).await {
                Ok(()) => {}
                Err(e @ Error::Unsupported { .. }) => {
                    tracing::warn!(group = %self.config.group, stream = %name, error = %e, "the checkpoint store keeps no parked records; the stream is parked in this process only");
                }
                Err(e) => {
                    tracing::warn!(group = %self.config.group, stream = %name, error = %error_chain(&e), "recording a parked stream failed; retrying");
                    self.park_retry_at =
                        Some(tokio::time::Instant::now() + self.config.checkpoint_interval);
                    return;
                }
            }
            let pending = self
                .streams
                .get_mut(&name)
                .and_then(|s| s.park.take())
                .unwrap_or_default();
            for b in pending.batches {
                self.release(b);
            }
            self.to_park.remove(&name);
            self.parked_dirty = true;
        }
        self.complete_prefix();
    }

    /// Loads the group's parked streams: at start, so they stay parked, and then on every
    /// checkpoint tick, so that a stream replayed or skipped by an operator is handled again.
    pub(super) async fn refresh_parked(&mut self, at_start: bool) {
        if !at_start && self.parked.is_empty() {
            return;
        }
        let stored = match self.checkpoints.parked(Some(&self.config.group)).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(group = %self.config.group, error = %error_chain(&e), "reading parked streams failed");
                return;
            }
        };
        if at_start {
            for p in stored {
                let mine = self.config.filter.categories.is_empty()
                    || self
                        .config
                        .filter
                        .categories
                        .iter()
                        .any(|c| c == p.stream.category());
                if !mine
                    || self
                        .config
                        .partition
                        .is_some_and(|q| !q.contains(&p.stream))
                {
                    continue;
                }
                let s = self.streams.entry(p.stream.clone()).or_default();
                s.parked = true;
                s.failures = p.attempts;
                self.parked.insert(p.stream.clone(), p);
                self.parked_dirty = true;
            }
            return;
        }
        let still: HashSet<StreamName> = stored.into_iter().map(|p| p.stream).collect();
        let gone: Vec<StreamName> = self
            .parked
            .keys()
            .filter(|n| !still.contains(*n) && !self.to_park.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(group = %self.config.group, stream = %name, "stream unparked (replayed or skipped)");
            self.parked.remove(&name);
            self.streams.remove(&name);
            self.parked_dirty = true;
        }
    }
}

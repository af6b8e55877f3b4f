//! The memory store's state under its lock: the log, each stream's events, deletions,
//! policies, snapshots, and what reads show of them.

use super::*;

impl Inner {
    /// Refuses writes and reads of a tombstone.
    pub(super) fn alive(&self, stream: &StreamName) -> Result<()> {
        match self.tombs.get(stream) {
            Some(t) if t.hard => Err(crate::Error::StreamDeleted {
                stream: stream.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The first version reads show.
    pub(super) fn start(&self, stream: &StreamName) -> u64 {
        self.tombs.get(stream).map_or(0, |t| t.before)
    }

    /// Whether reads show `event` at `now`.
    pub(super) fn visible(&self, event: &RecordedEvent, now: Timestamp) -> bool {
        let kept = match self.policy(&event.stream) {
            Some(p) => !p.expires(event, self.version(&event.stream).get(), now),
            None => true,
        };
        kept && match self.tombs.get(&event.stream) {
            None => true,
            Some(t) => !t.hard && event.stream_version >= t.before,
        }
    }

    /// The first version reads show at `now`: after truncation and after the events
    /// retention expires (always the oldest ones).
    pub(super) fn floor(&self, stream: &StreamName, now: Timestamp) -> u64 {
        let start = self.start(stream);
        let Some(policy) = self.policy(stream) else {
            return start;
        };
        let indexes = self.streams.get(stream).map_or(&[][..], Vec::as_slice);
        let version = indexes.len() as u64;
        let expired = indexes[(start as usize).min(indexes.len())..]
            .iter()
            .take_while(|&&i| policy.expires(&self.log[i], version, now))
            .count();
        start + expired as u64
    }

    /// The retention policy of `stream`: its own, else its category's.
    pub(super) fn policy(&self, stream: &StreamName) -> Option<crate::Retention> {
        if self.policies.is_empty() {
            return None;
        }
        self.policies
            .get(&crate::RetentionScope::Stream(stream.clone()))
            .or_else(|| {
                self.policies.get(&crate::RetentionScope::Category(
                    stream.category().to_owned(),
                ))
            })
            .copied()
    }

    /// Records a system event about `stream` in its deletions stream.
    pub(super) fn record(
        &mut self,
        stream: &StreamName,
        event_type: &str,
        data: serde_json::Value,
    ) {
        let data = EventData::new(event_type, data.to_string().into_bytes());
        self.write(&crate::deletions_stream(stream), vec![data]);
    }

    pub(super) fn version(&self, stream: &StreamName) -> Version {
        Version(self.streams.get(stream).map_or(0, |s| s.len() as u64))
    }

    pub(super) fn plan(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Verdict> {
        let found: Vec<Option<Found>> = events
            .iter()
            .map(|e| {
                let (s, v) = self.ids.get(&e.event_id)?;
                let index = self.streams[s][*v as usize];
                Some(Found {
                    stream: s.clone(),
                    stream_version: *v,
                    batch_start: self.batch_start[index],
                    position: self.log[index].position,
                })
            })
            .collect();
        idempotency::check(
            stream,
            expected,
            self.version(stream),
            events,
            &found,
            |v| {
                let indexes = self.streams.get(stream);
                Ok(indexes
                    .and_then(|ix| ix.get(v as usize))
                    .filter(|&&i| i != HIDDEN)
                    .map(|&i| self.batch_start[i]))
            },
        )
    }

    /// Begins `stream`, which this store does not have or whose events are all hidden, at
    /// `version` (an import of a stream whose older events are hidden where it was
    /// recorded), as if truncated before it: the versions up to it hold [`HIDDEN`], which no
    /// read reaches (reads start at the start).
    pub(super) fn begin_at(&mut self, stream: &StreamName, version: u64) {
        let indexes = self.streams.entry(stream.clone()).or_default();
        indexes.resize(version as usize, HIDDEN);
        self.tombs.insert(
            stream.clone(),
            Tomb {
                before: version,
                hard: false,
            },
        );
    }

    pub(super) fn write(&mut self, stream: &StreamName, events: Vec<EventData>) -> AppendResult {
        self.write_at(stream, events, Timestamp::now())
    }

    pub(super) fn write_at(
        &mut self,
        stream: &StreamName,
        events: Vec<EventData>,
        now: Timestamp,
    ) -> AppendResult {
        let start = self.version(stream).get();
        let first_index = self.log.len();
        let indexes = self.streams.entry(stream.clone()).or_default();
        for (i, data) in events.into_iter().enumerate() {
            let index = self.log.len();
            let version = start + i as u64;
            self.ids.insert(data.event_id, (stream.clone(), version));
            indexes.push(index);
            self.batch_start.push(start);
            self.log.push(RecordedEvent::new(
                stream.clone(),
                version,
                Position::from_raw(index as u128 + 1),
                now,
                data,
            ));
        }
        let recorded: Arc<[RecordedEvent]> = self.log[first_index..].into();
        self.observers.retain(|tx| {
            tx.send(Commit {
                stream: stream.clone(),
                events: Arc::clone(&recorded),
            })
            .is_ok()
        });
        AppendResult {
            version: Version(start + recorded.len() as u64),
            first_position: recorded[0].position,
            last_position: recorded[recorded.len() - 1].position,
        }
    }
}

//! Writing a decision: encoding with the snapshots the access strategy asks for, appending
//! at the loaded version, and resyncing from what a refused append returns.

use super::*;

/// Events ready to append, with what the access strategy adds.
pub(super) struct Prepared<S> {
    /// The encoded events (and a rolling snapshot event, when one is due).
    pub(super) events: Vec<EventData>,
    /// The state after the events, when it had to be folded already.
    pub(super) state: Option<S>,
    /// The head snapshot to store with the append.
    pub(super) head: Option<Vec<u8>>,
}

/// What one write attempt of a batch did.
pub(super) enum Written {
    /// Written; the state after it is cached.
    Done,
    /// Refused: the stream's version and events from the expected version on.
    Conflict {
        actual: Version,
        events: Vec<RecordedEvent>,
    },
}

/// What one write attempt of a decision did ([`Decider::write_at`]).
pub(super) enum Attempt<S> {
    /// Written; the state after it.
    Done(Loaded<S>),
    /// Refused: the stream's version, its events from the expected version on, and the
    /// state the decision was made on, handed back.
    Refused {
        actual: Version,
        events: Vec<RecordedEvent>,
        decided_on: Loaded<S>,
    },
}

/// The most refusals one decision is excused ([`Attempts`]): one per stream of a
/// multi-stream transaction whose events turn out hidden, and a stale cached state.
const FREE_REFUSALS: u32 = 16;

/// The attempts of one decision: a refused write counts against the category's limit
/// unless it was not a lost race (a cached state found stale, or a refusal that showed the
/// stream's older events hidden, which no load could have told); those are free, up to
/// [`FREE_REFUSALS`], so that not even a store answering wrongly loops for ever.
pub(super) struct Attempts {
    /// The attempt under way, from 1.
    pub(super) attempt: u32,
    free: u32,
}

impl Attempts {
    pub(super) fn new() -> Self {
        Self {
            attempt: 1,
            free: 0,
        }
    }

    /// Counts a refusal; `excused` when it was not a lost race. `Err` when the attempts are
    /// used up (after `max` counted ones).
    pub(super) fn refused<D: Domain>(
        &mut self,
        category: &Category<D>,
        stream: &StreamName,
        excused: bool,
    ) -> Result<()> {
        if excused && self.free < FREE_REFUSALS {
            self.free += 1;
            return Ok(());
        }
        category.count_conflict();
        if self.attempt >= category.max_attempts {
            return Err(Error::ResyncExhausted {
                stream: stream.clone(),
                attempts: self.attempt,
            });
        }
        self.attempt += 1;
        Ok(())
    }
}

/// The state after a refused append, and whether the refusal showed events hidden since
/// the state was loaded.
pub(super) struct Resynced<S> {
    pub(super) loaded: Loaded<S>,
    pub(super) hidden: bool,
}

impl<D: Domain> Decider<D> {
    /// The state after a refused append: `events` (the stream's events from
    /// `loaded.version` on, as the refusal returned them) folded onto `loaded`, reading on
    /// only when they stop short of `actual`. Events shown from a later version than
    /// `loaded`'s mean the ones before are hidden (deleted, truncated or expired, always
    /// the oldest first): the state starts over from them, as a load would fold it.
    pub(super) async fn resync(
        &self,
        loaded: Loaded<D::State>,
        actual: Version,
        events: Vec<RecordedEvent>,
    ) -> Result<Resynced<D::State>> {
        if actual <= loaded.version {
            // Shorter than the state this process had (never from a write of its own), or
            // refused at the very version expected: the stream now starts past the state's
            // first event (deleted or truncated since it was loaded, maybe by another
            // process). Forget the cached state and load from the start.
            if let Some(cache) = &self.category.cache {
                cache.remove(&self.stream);
            }
            let hidden = actual == loaded.version;
            if hidden {
                tracing::debug!(%actual, shown_from = %loaded.shown_from, "events deleted");
            }
            let loaded = self.reload().await?;
            return Ok(Resynced { loaded, hidden });
        }
        let cat = &self.category;
        let mut version = loaded.version;
        let mut shown_from = loaded.shown_from;
        let mut base = loaded.state;
        let mut hidden = false;
        if let Some(first) = events.first().filter(|e| e.stream_version > version.get()) {
            tracing::debug!(%version, first = first.stream_version, "events hidden");
            base = Arc::new(D::initial());
            version = Version(first.stream_version);
            shown_from = version;
            hidden = true;
        }
        let mut state: Option<D::State> = None;
        for recorded in &events {
            if recorded.stream_version != version.get() {
                break;
            }
            version = recorded.next_version();
            self.fold_recorded(&base, &mut state, recorded)?;
        }
        let folded = Loaded {
            version,
            shown_from,
            state: state.map_or(base, Arc::new),
        };
        if version < actual {
            let (loaded, found) = self.catch_up_showing(folded, actual).await?;
            return Ok(Resynced {
                loaded,
                hidden: hidden || found,
            });
        }
        if let Some(cache) = &cat.cache {
            cache.put(&self.stream, &folded);
        }
        Ok(Resynced {
            loaded: folded,
            hidden,
        })
    }

    /// Appends `events`, decided on `loaded`, expecting the stream still at its version (one
    /// attempt: a conflict is returned as [`Error::WrongExpectedVersion`]); caches the
    /// state after them.
    pub(crate) async fn write(
        &self,
        loaded: &Loaded<D::State>,
        events: &[D::Event],
    ) -> Result<Loaded<D::State>> {
        match self.write_at(loaded.clone(), events).await? {
            Attempt::Done(written) => Ok(written),
            Attempt::Refused { actual, .. } => {
                if actual == loaded.version {
                    // Refused at the very version expected: events the state holds were
                    // deleted or truncated since. A cached state is no longer to be used.
                    if let Some(cache) = &self.category.cache {
                        cache.remove(&self.stream);
                    }
                }
                Err(Error::WrongExpectedVersion {
                    stream: self.stream.clone(),
                    expected: ExpectedVersion::Exact(loaded.version),
                    actual,
                })
            }
        }
    }

    /// Appends `events`, decided on `loaded`, at its version (one attempt); caches the
    /// state after them, or answers the conflict with what the store returned and hands
    /// `loaded` back.
    pub(super) async fn write_at(
        &self,
        loaded: Loaded<D::State>,
        events: &[D::Event],
    ) -> Result<Attempt<D::State>> {
        let cat = &self.category;
        cat.check_references(&self.stream, events, &[]).await?;
        let prepared = self.prepare(&loaded, events)?;
        let answer = self
            .append_at(&loaded, prepared.events, prepared.head)
            .await?;
        match answer {
            AppendAt::Written(appended) => {
                let shown_from = loaded.shown_from;
                let state = match prepared.state {
                    Some(state) => state,
                    None => self.fold_written(loaded.state, events),
                };
                Ok(Attempt::Done(self.committed(
                    appended.version,
                    shown_from,
                    state,
                )))
            }
            AppendAt::Conflict { actual, events } => Ok(Attempt::Refused {
                actual,
                events,
                decided_on: loaded,
            }),
        }
    }

    /// The state after written `events`, folded onto `state`: in place when nothing else
    /// holds it (a query reading it meanwhile keeps its own), else onto a copy. The cache
    /// entry holding it, which the write is about to replace, is dropped first.
    fn fold_written(&self, state: Arc<D::State>, events: &[D::Event]) -> D::State {
        if let Some(cache) = &self.category.cache {
            cache.release(&self.stream, &state);
        }
        D::fold(Arc::unwrap_or_clone(state), events)
    }

    /// Appends `events`, decided on `loaded`, at its version, refused too if any event the
    /// state holds is hidden since; with the head snapshot when there is one (a refusal
    /// then carries no events: the resync reads them).
    pub(super) async fn append_at(
        &self,
        loaded: &Loaded<D::State>,
        events: Vec<EventData>,
        head: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        let (version, shown_from) = (loaded.version, loaded.shown_from);
        self.category
            .store
            .append_at_shown(&self.stream, version, shown_from, events, head)
            .await
    }

    /// The error of a snapshot of the state at `version` that did not encode.
    pub(super) fn snapshot_error(&self, version: u64, e: serde_json::Error) -> CodecError {
        CodecError {
            stream: self.stream.to_string(),
            stream_version: version,
            event_type: SNAPSHOT_EVENT_TYPE.to_owned(),
            message: e.to_string(),
        }
    }

    /// Records a written state in the cache.
    pub(super) fn committed(
        &self,
        version: Version,
        shown_from: Version,
        state: D::State,
    ) -> Loaded<D::State> {
        let loaded = Loaded {
            version,
            shown_from,
            state: Arc::new(state),
        };
        if let Some(cache) = &self.category.cache {
            cache.put(&self.stream, &loaded);
        }
        loaded
    }

    /// Encodes `events` decided on `loaded`, adding the snapshots the access strategy asks
    /// for.
    pub(super) fn prepare(
        &self,
        loaded: &Loaded<D::State>,
        events: &[D::Event],
    ) -> Result<Prepared<D::State>> {
        let cat = &self.category;
        let context = self.context.with_current_trace();
        let mut encoded = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                cat.codec.encode(e, &context).map_err(|err| CodecError {
                    stream: self.stream.to_string(),
                    stream_version: loaded.version.get() + i as u64,
                    ..err
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let before = loaded.version.get();
        let after = before + encoded.len() as u64;
        let rolling = cat
            .access
            .snapshots
            .as_ref()
            .filter(|snap| before / snap.every != after / snap.every);
        let mut prepared = Prepared {
            events: Vec::new(),
            state: None,
            head: None,
        };
        if rolling.is_some() || cat.access.head.is_some() {
            prepared.state = Some(D::fold((*loaded.state).clone(), events));
        }
        let snapshot_error = |e| self.snapshot_error(after, e);
        if let (Some(snap), Some(state)) = (rolling, &prepared.state) {
            let body = (snap.codec.encode)(state).map_err(snapshot_error)?;
            encoded.push(EventData::new(SNAPSHOT_EVENT_TYPE, body));
        }
        if let (Some(head), Some(state)) = (&cat.access.head, &prepared.state) {
            prepared.head = Some((head.encode)(state).map_err(snapshot_error)?);
        }
        prepared.events = encoded;
        Ok(prepared)
    }
}

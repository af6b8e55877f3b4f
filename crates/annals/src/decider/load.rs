//! Loading a decider's state: fresh, cached, from a head snapshot, backward to the latest
//! origin, or as of a version or a time.

use super::*;
use crate::store::READ_PAGE;
use futures::StreamExt;

impl<D: Domain> Decider<D> {
    pub(super) async fn load_with(&self, option: LoadOption) -> Result<Loaded<D::State>> {
        match option {
            LoadOption::AssumeEmpty => {
                Ok(Loaded::holding_none(Version::EMPTY, Arc::new(D::initial())))
            }
            LoadOption::RequireLoad => self.reload().await,
            LoadOption::AllowStale(max_age) => self.load_cached(Some(max_age)).await,
            LoadOption::AnyCachedValue => self.load_cached(None).await,
        }
    }

    pub(super) fn cached(&self, max_age: Option<Duration>) -> Option<Loaded<D::State>> {
        let cached = self
            .category
            .cache
            .as_ref()?
            .get::<D::State>(&self.stream)?;
        match max_age {
            Some(age) if cached.confirmed_at.elapsed() > age => None,
            _ => Some(Loaded {
                version: cached.version,
                shown_from: cached.shown_from,
                state: cached.state,
            }),
        }
    }

    pub(super) async fn load_cached(&self, max_age: Option<Duration>) -> Result<Loaded<D::State>> {
        if self.category.cache.is_none() {
            return self.reload().await;
        }
        if let Some(hit) = self.cached(max_age) {
            self.count_cache(true);
            return Ok(hit);
        }
        let lock = self.category.load_lock(&self.stream);
        let _guard = lock.lock().await;
        if let Some(hit) = self.cached(max_age) {
            self.count_cache(true);
            return Ok(hit);
        }
        self.reload().await
    }

    /// Reads the events after the cached version (from the cached state's last, which
    /// confirms it); without a cache entry, all of them, or,
    /// under an access strategy, back to the latest origin.
    pub(super) async fn reload(&self) -> Result<Loaded<D::State>> {
        if let Some(cached) = self.cached(None) {
            self.count_cache(true);
            return self.catch_up(cached).await;
        }
        if self.category.cache.is_some() {
            self.count_cache(false);
        }
        self.load_uncached().await
    }

    /// Loads without the cache (and caches the result): from the head snapshot, every
    /// event, or, under an access strategy, back to the latest origin.
    async fn load_uncached(&self) -> Result<Loaded<D::State>> {
        if let Some(head) = &self.category.access.head {
            if let Some(loaded) = self.load_head(head).await? {
                return Ok(loaded);
            }
        }
        if !self.category.access.backward() {
            return self.fold_all().await;
        }
        let loaded = self.load_backward(ReadStream::backward(), None).await?;
        if let Some(cache) = &self.category.cache {
            cache.put(&self.stream, &loaded);
        }
        Ok(loaded)
    }

    /// Folds every event reads show, from the initial state (and caches the result).
    pub(super) async fn fold_all(&self) -> Result<Loaded<D::State>> {
        let empty = Loaded::holding_none(Version::EMPTY, Arc::new(D::initial()));
        self.catch_up(empty).await
    }

    /// Reads the head snapshot and the events after it in one round trip, and folds them
    /// (reading on only when more events followed than one round trip returns). `None`
    /// when there is a snapshot this category cannot use (another schema): the caller
    /// folds the stream instead.
    pub(super) async fn load_head(
        &self,
        head: &SnapshotCodec<D::State>,
    ) -> Result<Option<Loaded<D::State>>> {
        let cat = &self.category;
        let read = cat.store.read_head(&self.stream, HEAD_EVENTS).await?;
        let (mut version, base) = match &read.snapshot {
            None => (Version::EMPTY, D::initial()),
            Some(snapshot) => match (head.decode)(&snapshot.data) {
                Some(state) => (snapshot.version, state),
                None => return Ok(None),
            },
        };
        let mut state = base;
        for recorded in &read.events {
            version = recorded.next_version();
            if recorded.event_type == SNAPSHOT_EVENT_TYPE {
                continue;
            }
            if let Some(event) = cat.codec.decode(recorded)? {
                state = D::evolve(state, &event);
            }
        }
        // Deletion and truncation drop head snapshots: the state holds the events from
        // where the stream started when read.
        let loaded = Loaded {
            version,
            shown_from: read.start.min(version),
            state: Arc::new(state),
        };
        if version < read.version {
            return self.catch_up_to(loaded, read.version).await.map(Some);
        }
        if let Some(cache) = &cat.cache {
            cache.put(&self.stream, &loaded);
        }
        Ok(Some(loaded))
    }

    /// The state after the stream's first `version` events (all of them if it has fewer),
    /// folded from the latest snapshot or origin at or before that point.
    pub async fn load_at(&self, version: Version) -> Result<Loaded<D::State>> {
        self.load_backward(ReadStream::backward_from(version), None)
            .instrument(tracing::debug_span!("annals.load_at", stream = %self.stream, %version))
            .await
    }

    /// The state as of `time`: the fold of the events recorded at or before it, from the
    /// latest snapshot or origin among them.
    pub async fn load_as_of(&self, time: Timestamp) -> Result<Loaded<D::State>> {
        self.load_backward(ReadStream::backward(), Some(time))
            .instrument(tracing::debug_span!("annals.load_as_of", stream = %self.stream))
            .await
    }

    /// Reads newest first until an origin: a current snapshot, an event for which the
    /// category's origin test holds (any event under "latest known event"), or the start;
    /// then folds forward from it. With `as_of`, events recorded later are passed over.
    pub(super) async fn load_backward(
        &self,
        read: ReadStream,
        as_of: Option<Timestamp>,
    ) -> Result<Loaded<D::State>> {
        let cat = &self.category;
        let access = &cat.access;
        // Newest first, event by event: the read stops at the origin, and a store that
        // reads lazily is asked for no more than that.
        let mut events = cat.store.read_stream(&self.stream, read);
        let mut version = None;
        // The oldest event read: where the state's events begin.
        let mut oldest = None;
        let mut base = None;
        let mut newest_first: Vec<D::Event> = Vec::new();
        let mut read = 0u64;
        while let Some(recorded) = events.try_next().await? {
            read += 1;
            if as_of.is_some_and(|t| recorded.recorded_at > t) {
                continue;
            }
            version.get_or_insert(recorded.next_version());
            oldest = Some(Version(recorded.stream_version));
            if recorded.event_type == SNAPSHOT_EVENT_TYPE {
                if let Some(state) = access
                    .snapshots
                    .as_ref()
                    .and_then(|s| (s.codec.decode)(&recorded.data))
                {
                    base = Some(state);
                    break;
                }
                continue;
            }
            if let Some(event) = cat.codec.decode(&recorded)? {
                let origin = access.latest_known_event
                    || access.is_origin.as_ref().is_some_and(|o| o(&event));
                newest_first.push(event);
                if origin {
                    break;
                }
            }
        }
        tracing::trace!(read, "loaded backward");
        let state = D::fold(base.unwrap_or_else(D::initial), newest_first.iter().rev());
        let version = version.unwrap_or(Version::EMPTY);
        Ok(Loaded {
            version,
            shown_from: oldest.unwrap_or(version),
            state: Arc::new(state),
        })
    }

    /// Folds the events after `from.version` onto `from.state`, and caches the result.
    pub(crate) async fn catch_up(&self, from: Loaded<D::State>) -> Result<Loaded<D::State>> {
        let at = from.version;
        self.catch_up_to(from, at).await
    }

    /// As [`catch_up`](Self::catch_up), knowing the stream is at `actual` or beyond (a
    /// refusal said so). Events are only ever hidden from the oldest on (deletion,
    /// truncation, retention), so a read that shows none at `from.version` (the first
    /// event it returns is a later one, or it returns none though the stream is past it)
    /// means every event before is hidden too: the state starts over from the initial
    /// one, as a load from the start would fold it.
    pub(crate) async fn catch_up_to(
        &self,
        from: Loaded<D::State>,
        actual: Version,
    ) -> Result<Loaded<D::State>> {
        Ok(self.catch_up_showing(from, actual).await?.0)
    }

    /// Folds `recorded` onto `state` (`base` until the first event folded); `false` when
    /// the codec does not know its type (skipped). Snapshot events are passed over.
    pub(super) fn fold_recorded(
        &self,
        base: &Arc<D::State>,
        state: &mut Option<D::State>,
        recorded: &RecordedEvent,
    ) -> Result<bool> {
        if recorded.event_type == SNAPSHOT_EVENT_TYPE {
            return Ok(true);
        }
        let Some(event) = self.category.codec.decode(recorded)? else {
            return Ok(false);
        };
        let current = state.take().unwrap_or_else(|| (**base).clone());
        *state = Some(D::evolve(current, &event));
        Ok(true)
    }

    /// [`catch_up_to`](Self::catch_up_to), answering too whether it found the events
    /// after `from.version` hidden. A state that holds events is confirmed by its last
    /// one and by where the stream starts, read together: finding its last event hidden
    /// (the stream deleted or truncated past it, maybe by another process) starts the
    /// state over from the events after it; finding the stream starting past the state's
    /// first event (older events truncated) loads it again from where it starts.
    pub(super) async fn catch_up_showing(
        &self,
        from: Loaded<D::State>,
        actual: Version,
    ) -> Result<(Loaded<D::State>, bool)> {
        let cat = &self.category;
        let holds_last = from.version > from.shown_from;
        let read_from = match holds_last {
            true => Version(from.version.get() - 1),
            false => from.version,
        };
        // The first page, with the stream's start when the state holds events; the rest
        // (a long way behind) page by page after it.
        let (first_page, rest_from) = match holds_last {
            true => {
                let page = cat
                    .store
                    .read_page_from(&self.stream, read_from, READ_PAGE)
                    .await?;
                if page.start.is_some_and(|start| start > from.shown_from) {
                    tracing::debug!(shown_from = %from.shown_from, start = ?page.start, "events the state holds hidden");
                    if let Some(cache) = &cat.cache {
                        cache.remove(&self.stream);
                    }
                    let fresh = Box::pin(self.load_uncached()).await?;
                    return Ok((fresh, true));
                }
                let more = page.events.len() == READ_PAGE;
                let next = page.events.last().map(RecordedEvent::next_version);
                let rest = more.then_some(next).flatten();
                (Some(page.events), rest)
            }
            false => (None, Some(read_from)),
        };
        let rest = match rest_from {
            Some(at) => cat
                .store
                .read_stream_pages(&self.stream, ReadStream::forward_from(at)),
            None => futures::stream::empty().boxed(),
        };
        let mut pages = futures::stream::iter(first_page.map(Ok)).chain(rest);
        let mut base = from.state;
        let mut version = from.version;
        let mut shown_from = from.shown_from;
        let mut state: Option<D::State> = None;
        let mut hidden = false;
        let (mut first, mut read, mut skipped) = (true, 0u64, 0u64);
        while let Some(page) = pages.try_next().await? {
            for recorded in &page {
                if std::mem::take(&mut first) {
                    if holds_last && recorded.stream_version == read_from.get() {
                        // The state's last event, still shown.
                        continue;
                    }
                    if holds_last || recorded.stream_version > version.get() {
                        tracing::debug!(%version, first = recorded.stream_version, "events hidden");
                        base = Arc::new(D::initial());
                        shown_from = Version(recorded.stream_version);
                        hidden = true;
                    }
                }
                read += 1;
                version = recorded.next_version();
                if !self.fold_recorded(&base, &mut state, recorded)? {
                    skipped += 1;
                }
            }
        }
        if read == 0 && (actual > version || (holds_last && first)) {
            tracing::debug!(%version, %actual, "every event hidden");
            base = Arc::new(D::initial());
            version = actual.max(version);
            shown_from = version;
            hidden = true;
        }
        tracing::trace!(read, skipped, %version, "caught up");
        let loaded = Loaded {
            version,
            shown_from,
            state: state.map_or(base, Arc::new),
        };
        if let Some(cache) = &cat.cache {
            cache.put(&self.stream, &loaded);
        }
        Ok((loaded, hidden))
    }
}

//! Multi-stream transactions: several streams decided together and committed with one
//! `append_many`, resyncing every stream on a conflict.

use super::*;

/// One stream of a multi-stream transaction: its loaded state and its staged write.
struct Part<'a, D: Domain> {
    decider: &'a Decider<D>,
    loaded: Loaded<D::State>,
    /// The state after the staged events, when staged.
    staged: Option<D::State>,
}

impl<'a, D: Domain> Part<'a, D> {
    async fn load(decider: &'a Decider<D>) -> Result<Self> {
        Ok(Self {
            loaded: decider.load_with(decider.load).await?,
            decider,
            staged: None,
        })
    }

    /// Catches up after a conflict; `conflict` is the refusal, naming the stream it was
    /// refused on and the version it found. `true` when this is that stream and its
    /// events after the loaded version were found hidden (not a lost race).
    async fn catch_up(&mut self, conflict: &(StreamName, Version)) -> Result<bool> {
        self.staged = None;
        let (stream, actual) = conflict;
        let refused = *stream == self.decider.stream;
        let at = if refused {
            *actual
        } else {
            self.loaded.version
        };
        let (loaded, hidden) = self
            .decider
            .catch_up_showing(self.loaded.clone(), at)
            .await?;
        self.loaded = loaded;
        Ok(refused && hidden)
    }

    /// Checks and encodes `events`, with the first version the state holds; `None` when
    /// there are none. A head snapshot is not written by a multi-stream append (the
    /// previous one stays valid).
    async fn stage(
        &mut self,
        events: &[D::Event],
        written: &[&StreamName],
    ) -> Result<Option<(StreamAppend, Version)>> {
        self.staged = None;
        if events.is_empty() {
            return Ok(None);
        }
        let d = self.decider;
        d.category
            .check_references(&d.stream, events, written)
            .await?;
        let prepared = d.prepare(&self.loaded, events)?;
        self.staged = Some(
            prepared
                .state
                .unwrap_or_else(|| D::fold((*self.loaded.state).clone(), events)),
        );
        let append = StreamAppend {
            stream: d.stream.clone(),
            expected: ExpectedVersion::Exact(self.loaded.version),
            events: prepared.events,
        };
        Ok(Some((append, self.loaded.shown_from)))
    }

    fn commit(&mut self, version: Version) {
        if let Some(state) = self.staged.take() {
            let shown_from = self.loaded.shown_from;
            self.loaded = self.decider.committed(version, shown_from, state);
        }
    }
}

/// Refuses a transaction whose streams are in different stores, repeat a stream, or whose
/// store cannot append to several streams atomically.
fn check_transaction(parts: &[(&Arc<dyn EventStore>, &StreamName)]) -> Result<()> {
    let Some((store, _)) = parts.first() else {
        return Ok(());
    };
    if parts
        .iter()
        .any(|(s, _)| !std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(store)))
    {
        return Err(Error::InvalidTransaction {
            reason: "its streams belong to different stores; one atomic append needs one store",
        });
    }
    if !store.capabilities().multi_stream_append {
        return Err(Error::Unsupported {
            backend: store.backend(),
            capability: crate::Capability::MultiStreamAppend,
        });
    }
    for (i, (_, stream)) in parts.iter().enumerate() {
        if parts[..i].iter().any(|(_, s)| s == stream) {
            return Err(Error::DuplicateStreamInBatch {
                stream: (*stream).clone(),
            });
        }
    }
    Ok(())
}

/// Appends the staged writes of one attempt (in one atomic `append_many_shown`: refused
/// too once a stream starts past the first event its state holds); returns the versions
/// written, in the order given, or the conflicting stream and its version.
async fn commit_many(
    store: &Arc<dyn EventStore>,
    staged: Vec<(StreamAppend, Version)>,
) -> Result<std::result::Result<Vec<Version>, (StreamName, Version)>> {
    if staged.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let (appends, shown_from) = staged.into_iter().unzip();
    match store.append_many_shown(appends, shown_from).await {
        Ok(results) => Ok(Ok(results.into_iter().map(|r| r.version).collect())),
        Err(Error::WrongExpectedVersion { stream, actual, .. }) => Ok(Err((stream, actual))),
        Err(e) => Err(e),
    }
}

/// Decides over several streams of one category at once and commits every stream's
/// events in one atomic append: all of them or none. `decide` gets the states in the
/// order of `deciders` and returns the events for each (an empty list leaves a stream
/// alone). A conflict on any stream writes nothing; every stream then catches up and
/// `decide` runs again, up to the first decider's attempt limit.
///
/// The streams must be distinct and in one store that offers
/// [`Capabilities::multi_stream_append`](crate::Capabilities::multi_stream_append)
/// (otherwise [`Error::Unsupported`], with nothing read or written). Stores take their
/// stream locks in one order, so transactions over overlapping streams named in opposite
/// orders do not deadlock.
pub async fn transact_many<D: Domain, R>(
    deciders: &[Decider<D>],
    mut decide: impl FnMut(&[&D::State]) -> (R, Vec<Vec<D::Event>>),
) -> Result<R> {
    let ids: Vec<_> = deciders
        .iter()
        .map(|d| (&d.category.store, &d.stream))
        .collect();
    check_transaction(&ids)?;
    let Some(first) = deciders.first() else {
        return Ok(decide(&[]).0);
    };
    // Loaded together (a store with a pool reads them at once, each on a connection of its
    // own); the first error in the deciders' order is the one returned.
    let mut parts = futures::future::join_all(deciders.iter().map(Part::load))
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut attempts = Attempts::new();
    loop {
        let states: Vec<&D::State> = parts.iter().map(|p| &*p.loaded.state).collect();
        let (result, events) = decide(&states);
        let written: Vec<&StreamName> = deciders
            .iter()
            .zip(&events)
            .filter(|(_, e)| !e.is_empty())
            .map(|(d, _)| &d.stream)
            .collect();
        let mut appends = Vec::new();
        let mut staged = Vec::new();
        for (i, part) in parts.iter_mut().enumerate() {
            let events = events.get(i).map_or(&[][..], Vec::as_slice);
            if let Some(append) = part.stage(events, &written).await? {
                appends.push(append);
                staged.push(i);
            }
        }
        match commit_many(&first.category.store, appends).await? {
            Ok(versions) => {
                for (i, v) in staged.into_iter().zip(versions) {
                    parts[i].commit(v);
                }
                return Ok(result);
            }
            Err(conflict) => {
                let caught =
                    futures::future::join_all(parts.iter_mut().map(|p| p.catch_up(&conflict)))
                        .await;
                let mut hidden = false;
                for c in caught {
                    hidden |= c?;
                }
                refused(&first.category, &mut attempts, &conflict, hidden)?;
            }
        }
    }
}

/// As [`transact_many`], over two streams of different domains (say, an order and the
/// stock it reserves): `decide` returns a result and each stream's events.
pub async fn transact_pair<A: Domain, B: Domain, R>(
    a: &Decider<A>,
    b: &Decider<B>,
    mut decide: impl FnMut(&A::State, &B::State) -> (R, Vec<A::Event>, Vec<B::Event>),
) -> Result<R> {
    check_transaction(&[
        (&a.category.store, &a.stream),
        (&b.category.store, &b.stream),
    ])?;
    let (pa, pb) = futures::join!(Part::load(a), Part::load(b));
    let (mut pa, mut pb) = (pa?, pb?);
    let mut attempts = Attempts::new();
    loop {
        let (result, ea, eb) = decide(&pa.loaded.state, &pb.loaded.state);
        let mut written = Vec::new();
        if !ea.is_empty() {
            written.push(&a.stream);
        }
        if !eb.is_empty() {
            written.push(&b.stream);
        }
        let sa = pa.stage(&ea, &written).await?;
        let sb = pb.stage(&eb, &written).await?;
        let (has_a, has_b) = (sa.is_some(), sb.is_some());
        let appends = sa.into_iter().chain(sb).collect();
        match commit_many(&a.category.store, appends).await? {
            Ok(versions) => {
                let mut versions = versions.into_iter();
                if has_a {
                    pa.commit(versions.next().expect("a version per append"));
                }
                if has_b {
                    pb.commit(versions.next().expect("a version per append"));
                }
                return Ok(result);
            }
            Err(conflict) => {
                let (ha, hb) = futures::join!(pa.catch_up(&conflict), pb.catch_up(&conflict));
                let hidden = ha? | hb?;
                refused(&a.category, &mut attempts, &conflict, hidden)?;
            }
        }
    }
}

/// Counts a multi-stream conflict (after every stream caught up) against the category's
/// attempts; `hidden` when the refused stream's events were found hidden.
fn refused<D: Domain>(
    category: &Category<D>,
    attempts: &mut Attempts,
    (stream, actual): &(StreamName, Version),
    hidden: bool,
) -> Result<()> {
    tracing::debug!(%stream, %actual, attempt = attempts.attempt, hidden, "multi-stream conflict, resynced");
    attempts.refused(category, stream, hidden)
}

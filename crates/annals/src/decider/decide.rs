//! Deciding: the `transact` family (pure, with a result, refusable, rendering the state
//! after, awaiting something first) and the loop they share: decide on the loaded (or
//! cached) state, append at its version, resync from a refusal and decide again.

use super::*;

impl<D: Domain> Decider<D> {
    /// Runs `decide` on the current state and appends its events; on a conflict, catches up
    /// and decides again, up to the category's attempt limit.
    pub async fn transact(&self, mut decide: impl FnMut(&D::State) -> Vec<D::Event>) -> Result<()> {
        self.transact_result(|s| ((), decide(s))).await
    }

    /// As [`transact`](Self::transact), answering `render` of the state after the decision's
    /// events (the state the append produced, folded from the one decided on; the state as
    /// loaded when the decision writes nothing). As Equinox's `Transact(decide, render)`:
    /// a command that answers with the updated view costs no second load.
    pub async fn transact_render<V>(
        &self,
        mut decide: impl FnMut(&D::State) -> Vec<D::Event>,
        render: impl Fn(&D::State) -> V,
    ) -> Result<V> {
        let decide = |s: Arc<D::State>| std::future::ready(Ok::<_, Infallible>(((), decide(&s))));
        let ((), after) = self
            .decide_keeping(decide, true)
            .await
            .map_err(DecideError::into_store)?;
        let after = after.expect("kept when asked for");
        Ok(render(&after))
    }

    /// As [`transact`](Self::transact), for decisions that also return a result.
    pub async fn transact_result<R>(
        &self,
        mut decide: impl FnMut(&D::State) -> (R, Vec<D::Event>),
    ) -> Result<R> {
        self.try_transact_result(|s| Ok::<_, Infallible>(decide(s)))
            .await
            .map_err(DecideError::into_store)
    }

    /// Runs a decision that can refuse: `decide` returns the events to append, or the
    /// domain's own error, which is returned as [`DecideError::Domain`] with nothing
    /// written. Store failures are [`DecideError::Store`]. On a conflict the decision runs
    /// again on the caught-up state (and may then refuse).
    pub async fn try_transact<X>(
        &self,
        mut decide: impl FnMut(&D::State) -> std::result::Result<Vec<D::Event>, X>,
    ) -> std::result::Result<(), DecideError<X>> {
        self.try_transact_result(|s| decide(s).map(|events| ((), events)))
            .await
    }

    /// As [`try_transact`](Self::try_transact), for decisions that also return a result.
    pub async fn try_transact_result<R, X>(
        &self,
        mut decide: impl FnMut(&D::State) -> std::result::Result<(R, Vec<D::Event>), X>,
    ) -> std::result::Result<R, DecideError<X>> {
        self.try_transact_async(|s: Arc<D::State>| std::future::ready(decide(&s)))
            .await
    }

    /// As [`transact`](Self::transact), for a decision that awaits something first (a
    /// price, a check with another service): `decide` takes the state (shared) and returns
    /// a future of the events. It runs again after a conflict, on the caught-up state, as
    /// a pure decision does; while it awaits, the stream's other decisions in this process
    /// wait their turn behind it.
    pub async fn transact_async<F>(&self, mut decide: impl FnMut(Arc<D::State>) -> F) -> Result<()>
    where
        F: Future<Output = Vec<D::Event>>,
    {
        self.try_transact_async(|s| {
            let decided = decide(s);
            async move { Ok::<_, Infallible>(((), decided.await)) }
        })
        .await
        .map_err(DecideError::into_store)
    }

    /// As [`try_transact_result`](Self::try_transact_result), for a decision that awaits
    /// something first (see [`transact_async`](Self::transact_async)): `decide` returns the
    /// result and the events, or the domain's own error ([`DecideError::Domain`], nothing
    /// written).
    pub async fn try_transact_async<R, X, F>(
        &self,
        decide: impl FnMut(Arc<D::State>) -> F,
    ) -> std::result::Result<R, DecideError<X>>
    where
        F: Future<Output = std::result::Result<(R, Vec<D::Event>), X>>,
    {
        Ok(self.decide_keeping(decide, false).await?.0)
    }

    /// The family's one entry: runs `decide` in this stream's turn; answers its result
    /// and, when `keep`, the state after its events (as appended and cached; the state it
    /// saw when it wrote nothing). Not kept otherwise: holding it would make the next
    /// decision copy the cached state instead of folding onto it in place.
    async fn decide_keeping<R, X, F>(
        &self,
        decide: impl FnMut(Arc<D::State>) -> F,
        keep: bool,
    ) -> std::result::Result<(R, Option<Arc<D::State>>), DecideError<X>>
    where
        F: Future<Output = std::result::Result<(R, Vec<D::Event>), X>>,
    {
        // At DEBUG, so that logs at INFO do not format it at every decision; its
        // OpenTelemetry kind lets an exporter take it as a trace of its own when no span is
        // current (as the CLI's does).
        let span = tracing::debug_span!(
            "annals.transact",
            otel.kind = "internal",
            stream = %self.stream,
            category = %self.category.name,
            attempts = tracing::field::Empty,
            conflicts = tracing::field::Empty,
            events = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        // Concurrent decisions on one stream in this process take turns: one runs, those
        // that arrive meanwhile queue and are then decided one after another and written
        // together (see `batch`), instead of racing each other to conflicts.
        let result = async {
            match self.turn() {
                batch::Turn::Alone => {
                    let _end = EndTurn(self);
                    self.run(decide, keep, &span).await
                }
                batch::Turn::Queued(queue) => self.follow(queue, decide, keep).await,
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(DecideError::Domain(_)) => "refused",
            Err(DecideError::Store(Error::ResyncExhausted { .. })) => "conflict",
            Err(DecideError::Store(_)) => "error",
        };
        span.record("outcome", outcome);
        let category = self.category.name.to_string();
        metrics::counter!("annals_decider_runs_total", "category" => category.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("annals_decider_duration_seconds", "category" => category)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn run<R, X, F>(
        &self,
        mut decide: impl FnMut(Arc<D::State>) -> F,
        keep: bool,
        span: &tracing::Span,
    ) -> std::result::Result<(R, Option<Arc<D::State>>), DecideError<X>>
    where
        F: Future<Output = std::result::Result<(R, Vec<D::Event>), X>>,
    {
        let cat = &self.category;
        // Under the default load option a cached state is decided on without reading: a
        // write is checked by the store (appended at the cached version), and a decision
        // that writes nothing is confirmed by reading from the cached state's last event on.
        // Correctness never depends on the cache; it only saves the read.
        let (mut loaded, mut unconfirmed) = match self.load {
            LoadOption::RequireLoad => match self.cached(None) {
                Some(cached) => {
                    self.count_cache(true);
                    (cached, true)
                }
                None => (self.load_with(self.load).await?, false),
            },
            other => (self.load_with(other).await?, false),
        };
        let mut attempts = Attempts::new();
        loop {
            span.record("attempts", attempts.attempt);
            let (result, events) = decide(Arc::clone(&loaded.state))
                .await
                .map_err(DecideError::Domain)?;
            span.record("events", events.len());
            if events.is_empty() {
                if unconfirmed {
                    unconfirmed = false;
                    let at = loaded.version;
                    let (fresh, hidden) = self.catch_up_showing(loaded.clone(), at).await?;
                    if hidden || fresh.version != at {
                        loaded = fresh;
                        continue;
                    }
                }
                return Ok((result, keep.then_some(loaded.state)));
            }
            match self.write_at(loaded, &events).await? {
                Attempt::Done(written) => return Ok((result, keep.then_some(written.state))),
                Attempt::Refused {
                    actual,
                    events,
                    decided_on,
                } => {
                    // A cached state found stale, or events found hidden, are not a lost
                    // race: they do not use up an attempt.
                    let stale_cache = std::mem::take(&mut unconfirmed);
                    let resynced = self.resync(decided_on, actual, events).await?;
                    let attempt = attempts.attempt;
                    attempts.refused(cat, &self.stream, stale_cache || resynced.hidden)?;
                    if attempts.attempt > attempt {
                        span.record("conflicts", attempt);
                        tracing::debug!(%actual, attempt, "conflict, resynced");
                    }
                    loaded = resynced.loaded;
                }
            }
        }
    }

    pub(super) fn count_cache(&self, hit: bool) {
        let name = if hit {
            "annals_cache_hits_total"
        } else {
            "annals_cache_misses_total"
        };
        metrics::counter!(name, "category" => self.category.name.to_string()).increment(1);
    }
}

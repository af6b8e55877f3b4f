//! Access strategies against the full fold: whatever a category's strategy (origins,
//! rolling snapshots of the current or an older schema, latest known event), with or
//! without a cache, and at any point in time, a load yields exactly the state of folding
//! every event from the start.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use annals::{
    AllPage, AppendAt, AppendResult, Cache, Capabilities, Category, Codec, Domain, EventData,
    EventStore, EventStoreExt, ExpectedVersion, Filter, Head, Position, ReadStream, RecordedEvent,
    Result, StartedPage, StreamAppend, StreamName, Timestamp, Version, SNAPSHOT_EVENT_TYPE,
};
use futures::stream::BoxStream;
use futures::StreamExt;

/// A store wrapper that counts what loads read: `read_stream` calls and events yielded.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn EventStore>,
    /// `read_stream` calls.
    pub reads: AtomicU64,
    /// Events yielded by `read_stream` and `read_head`.
    pub events: AtomicU64,
    /// `read_head` calls.
    pub heads: AtomicU64,
    /// `stream_version` calls.
    pub versions: AtomicU64,
    /// Reads under way (`read_page_from`, `read_head`, `stream_version`, `read_stream`),
    /// and the most seen at once: each yields once to the scheduler before reading, so
    /// reads made together (joined) overlap, and reads made one after the other never do.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            events: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            versions: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        }
    }

    /// The most reads under way at once since the last call of this (or since the wrapper
    /// was made).
    pub fn take_most_in_flight(&self) -> u64 {
        self.most_in_flight.swap(0, Ordering::SeqCst)
    }

    /// Counts a read under way until the guard is dropped, after one yield.
    async fn flight(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        // Counted down also when the read is dropped during its yield.
        let flight = InFlight(&self.in_flight);
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        flight
    }

    /// Store round trips of reads so far: `read_stream`, `read_head` and `stream_version`
    /// calls.
    pub fn round_trips(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
            + self.heads.load(Ordering::SeqCst)
            + self.versions.load(Ordering::SeqCst)
    }

    /// (`read_stream` calls, events yielded) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::SeqCst),
            self.events.load(Ordering::SeqCst),
        )
    }
}

/// A read under way (see [`Counting::take_most_in_flight`]).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl EventStore for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.inner.append_many(appends).await
    }

    async fn append_many_shown(
        &self,
        appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        self.inner.append_many_shown(appends, shown_from).await
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        self.inner
            .append_at_shown(stream, version, shown_from, events, snapshot)
            .await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        self.inner
            .append_with_snapshot(stream, expected, events, snapshot)
            .await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        self.inner.import(events).await
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let _flight = self.flight().await;
        let page = self.inner.read_page_from(stream, from, limit).await?;
        self.events
            .fetch_add(page.events.len() as u64, Ordering::SeqCst);
        Ok(page)
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        let _flight = self.flight().await;
        let head = self.inner.read_head(stream, limit).await?;
        self.events
            .fetch_add(head.events.len() as u64, Ordering::SeqCst);
        Ok(head)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        self.versions.fetch_add(1, Ordering::SeqCst);
        let _flight = self.flight().await;
        self.inner.stream_version(stream).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        // Under way from its first poll until dropped.
        futures::stream::once(self.flight())
            .flat_map(move |flight| {
                self.inner
                    .read_stream(stream, options)
                    .inspect(move |item| {
                        let _ = &flight;
                        if item.is_ok() {
                            self.events.fetch_add(1, Ordering::SeqCst);
                        }
                    })
            })
            .boxed()
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        self.inner.read_all(from, filter, limit).await
    }

    async fn await_visible(&self) -> Result<()> {
        self.inner.await_visible().await
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.changes()
    }
}

/// A store offering only the required part of the contract (no optional capability): the
/// wrapped store's appends and reads, and the default refusals of `append_many`,
/// `append_with_snapshot` and `read_head`. For testing what users of an optional
/// capability do on a backend without it.
#[derive(Debug)]
pub struct Basic(pub Arc<dyn EventStore>);

#[async_trait::async_trait]
impl EventStore for Basic {
    fn backend(&self) -> &'static str {
        "basic"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.0.append(stream, expected, events).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        self.0.stream_version(stream).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        self.0.read_stream(stream, options)
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        self.0.read_all(from, filter, limit).await
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.0.changes()
    }
}

/// What [`strategies_agree`] needs to know of a domain.
#[derive(Debug)]
pub struct Subject<D: Domain, C> {
    /// The category name.
    pub category: &'static str,
    /// Makes the domain's codec.
    pub codec: fn() -> C,
    /// The domain's origin test (`|_| false` if it has none).
    pub is_origin: fn(&D::Event) -> bool,
}

/// Writes `batches` to `category-{id}` through deciders that keep rolling snapshots every 3
/// events, every other batch (and the last) also keeping a snapshot at the head, then
/// checks every strategy, with and without a cache, and point-in-time loads by version and
/// by timestamp, against folding the stream from the start. Also counts what loads read:
/// a head-snapshot load is one round trip (reading only the events after the snapshot),
/// and a cached load of an unchanged stream reads no event.
pub async fn strategies_agree<D, C>(
    store: Arc<dyn EventStore>,
    subject: &Subject<D, C>,
    id: &str,
    batches: Vec<Vec<D::Event>>,
) where
    D: Domain,
    D::Event: Clone,
    D::State: PartialEq + Debug + serde::Serialize + serde::de::DeserializeOwned,
    C: Codec<D::Event>,
{
    let category = |cache: Option<Arc<Cache>>| {
        Category::<D>::new(subject.category, store.clone(), (subject.codec)())
            .expect("a valid category")
            .with_optional_cache(cache)
    };
    let plain = category(None)
        .with_origins(subject.is_origin)
        .with_rolling_snapshots(3, 1);
    let with_head = plain.clone().with_head_snapshots(1).ok();
    for (i, batch) in batches.iter().enumerate() {
        let head = i % 2 == 1 || i + 1 == batches.len();
        let writer = match (&with_head, head) {
            (Some(c), true) => c,
            _ => &plain,
        };
        writer
            .decider(id)
            .expect("a valid id")
            .transact(|_| batch.clone())
            .await
            .expect("the write succeeds");
    }
    let stream = plain.decider(id).expect("a valid id").stream().clone();
    let recorded = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .expect("read");
    let codec = (subject.codec)();
    let decoded: Vec<(RecordedEvent, Option<D::Event>)> = recorded
        .iter()
        .map(|r| {
            let e = if r.event_type == SNAPSHOT_EVENT_TYPE {
                None
            } else {
                codec.decode(r).expect("decodes")
            };
            (r.clone(), e)
        })
        .collect();
    let fold_prefix = |upto: usize| {
        D::fold(
            D::initial(),
            decoded[..upto].iter().filter_map(|(_, e)| e.as_ref()),
        )
    };
    let full = fold_prefix(decoded.len());
    let head = Version(decoded.len() as u64);

    type Make<D> = Box<dyn Fn(Category<D>) -> Category<D>>;
    let is_origin = subject.is_origin;
    let head_snapshots = store.capabilities().head_snapshots;
    let head_at = |schema| move |c: Category<D>| c.with_head_snapshots(schema).expect("offered");
    let mut strategies: Vec<(&str, Make<D>)> = vec![
        ("unoptimized", Box::new(|c| c)),
        ("origins", Box::new(move |c| c.with_origins(is_origin))),
        ("snapshots", Box::new(|c| c.with_rolling_snapshots(3, 1))),
        (
            "snapshots of a newer schema (older ones ignored)",
            Box::new(|c| c.with_rolling_snapshots(3, 2)),
        ),
        (
            "origins and snapshots",
            Box::new(move |c| c.with_origins(is_origin).with_rolling_snapshots(3, 1)),
        ),
    ];
    if head_snapshots {
        strategies.push(("head snapshots", Box::new(head_at(1))));
        strategies.push((
            "head snapshots of a newer schema (older ones ignored)",
            Box::new(head_at(2)),
        ));
        strategies.push((
            "head snapshots, origins and rolling snapshots",
            Box::new(move |c| head_at(1)(c.with_origins(is_origin).with_rolling_snapshots(3, 1))),
        ));
        load_costs(&store, subject, id, head_at(1)).await;
    }
    for (name, make) in &strategies {
        for cached in [false, true] {
            let cache = cached.then(|| Arc::new(Cache::new(16)));
            let decider = make(category(cache)).decider(id).expect("a valid id");
            for round in 0..2 {
                let loaded = decider.load().await.expect("load");
                assert_eq!(
                    (&*loaded.state, loaded.version),
                    (&full, head),
                    "{name}, cache {cached}, load {round}"
                );
            }
        }
        let decider = make(category(None)).decider(id).expect("a valid id");
        for k in 0..=decoded.len() {
            let at = decider.load_at(Version(k as u64)).await.expect("load_at");
            assert_eq!(
                (&*at.state, at.version),
                (&fold_prefix(k), Version(k as u64)),
                "{name}: state at version {k}"
            );
        }
        let mut times: Vec<Timestamp> = decoded.iter().map(|(r, _)| r.recorded_at).collect();
        times.dedup();
        for t in times {
            let upto = decoded
                .iter()
                .take_while(|(r, _)| r.recorded_at <= t)
                .count();
            let asof = decider.load_as_of(t).await.expect("load_as_of");
            assert_eq!(
                (&*asof.state, asof.version),
                (&fold_prefix(upto), Version(upto as u64)),
                "{name}: state as of {t:?}"
            );
        }
    }
}

/// What loads of `category-{id}` read under head snapshots, counted: without a cache one
/// `read_head` round trip returning only the events after the snapshot; with a cache, a
/// second load of the unchanged stream reads no event.
async fn load_costs<D, C>(
    store: &Arc<dyn EventStore>,
    subject: &Subject<D, C>,
    id: &str,
    head: impl Fn(Category<D>) -> Category<D>,
) where
    D: Domain,
    D::State: PartialEq + Debug,
    C: Codec<D::Event>,
{
    let counting = Arc::new(Counting::new(Arc::clone(store)));
    let category = |cache| {
        head(
            Category::<D>::new(subject.category, counting.clone(), (subject.codec)())
                .expect("a valid category")
                .with_optional_cache(cache),
        )
    };
    let stream = StreamName::from_parts(subject.category, id).expect("a valid id");
    let after_snapshot = {
        let h = store
            .read_head(&stream, usize::MAX)
            .await
            .expect("read_head");
        h.events.len() as u64
    };
    let decider = category(None).decider(id).expect("a valid id");
    let (trips, events) = (counting.round_trips(), counting.counts().1);
    decider.load().await.expect("load");
    assert_eq!(
        (counting.round_trips() - trips, counting.counts().1 - events),
        (1, after_snapshot),
        "a head-snapshot load: one round trip, reading the events after the snapshot"
    );
    let cached = category(Some(Arc::new(Cache::new(4))))
        .decider(id)
        .expect("a valid id");
    let first = cached.load().await.expect("load");
    let events = counting.counts().1;
    let again = cached.load().await.expect("load");
    // Only the state's last event, which confirms it (a deletion since would hide it).
    let holds = u64::from(first.version > first.shown_from);
    assert_eq!(
        counting.counts().1 - events,
        holds,
        "a cached, unchanged stream reads no event but the state's last"
    );
    assert_eq!(
        (&*again.state, again.version),
        (&*first.state, first.version)
    );
}

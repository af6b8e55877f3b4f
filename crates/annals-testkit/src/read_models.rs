//! The conformance suite of read-model stores ([`annals::ReadModelStore`]): every SQL
//! backend must pass every function here, once, through [`read_model_suite!`].
//!
//! The events come from a [`MemoryStore`]: every function already feeds a read model from
//! another store than the one it lives in.
//!
//! [`read_model_suite!`]: crate::read_model_suite

use std::sync::Arc;

use annals::{catch_up_stream, projection_rows, rebuild};
use annals::{
    CheckpointStore, Error, EventData, EventStore, EventStoreExt, ExpectedVersion, MemoryStore,
    ParkedStream, Position, ProjectionId, Projector, ProjectorError, ReadModelStore, ReadStream,
    RecordedEvent, SqlTx, SqlValue, StreamName, Timestamp, Version,
};
use async_trait::async_trait;

fn name(s: &str) -> StreamName {
    StreamName::new(s).expect("a valid test stream name")
}

/// A projection counting each stream's events and summing their amounts, with an
/// order-sensitive hash (so an event applied twice, or out of order, shows). Its rows
/// record the schema of the code that wrote them; with `poison`, an event whose amount is
/// the poison fails after the row was written (so a rollback shows).
#[derive(Debug)]
pub struct Counts {
    /// The schema version of this code.
    pub schema: u32,
    /// An amount whose event fails to apply.
    pub poison: Option<i64>,
}

impl Counts {
    /// Schema 1, no poison.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            schema: 1,
            poison: None,
        })
    }
}

/// The amount an event carries (its data is the decimal number).
pub fn amount(e: &RecordedEvent) -> i64 {
    std::str::from_utf8(&e.data)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The order-sensitive hash of a stream's amounts, as the projection folds it.
pub fn fold_hash(amounts: impl IntoIterator<Item = i64>) -> i64 {
    amounts.into_iter().fold(17i64, |h, a| {
        h.wrapping_mul(31).wrapping_add(a) % 1_000_000_007
    })
}

#[async_trait]
impl<R: ReadModelStore> Projector<R> for Counts {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("counts", self.schema)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch(
            "CREATE TABLE IF NOT EXISTS rm_counts (
                stream TEXT PRIMARY KEY,
                n BIGINT NOT NULL,
                total BIGINT NOT NULL,
                hash BIGINT NOT NULL,
                code BIGINT NOT NULL)",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        for e in events {
            let a = amount(e);
            let rows = tx
                .query(
                    "SELECT n, total, hash FROM rm_counts WHERE stream = $1",
                    &[stream.into()],
                )
                .await?;
            let (n, total, hash) = rows.first().map_or((0, 0, 17), |r| {
                (
                    r[0].as_i64().unwrap_or(0),
                    r[1].as_i64().unwrap_or(0),
                    r[2].as_i64().unwrap_or(0),
                )
            });
            let hash = hash.wrapping_mul(31).wrapping_add(a) % 1_000_000_007;
            tx.execute(
                "INSERT INTO rm_counts (stream, n, total, hash, code) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (stream) DO UPDATE SET n = excluded.n, total = excluded.total,
                 hash = excluded.hash, code = excluded.code",
                &[
                    stream.into(),
                    (n + 1).into(),
                    (total + a).into(),
                    hash.into(),
                    i64::from(self.schema).into(),
                ],
            )
            .await?;
            if self.poison == Some(a) {
                return Err(format!("amount {a} is poison").into());
            }
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut R::Tx<'_>, stream: &StreamName) -> Result<(), ProjectorError> {
        tx.execute("DELETE FROM rm_counts WHERE stream = $1", &[stream.into()])
            .await?;
        Ok(())
    }
}

/// A stream's row: (events, total, hash, code schema), if any.
pub async fn counts_row<R: ReadModelStore>(
    rm: &R,
    stream: &StreamName,
) -> Option<(i64, i64, i64, i64)> {
    let rows = rm
        .query(
            "SELECT n, total, hash, code FROM rm_counts WHERE stream = $1",
            &[stream.into()],
        )
        .await
        .expect("query the read model");
    rows.first().map(|r| {
        let i = |k: usize| r[k].as_i64().unwrap_or(-1);
        (i(0), i(1), i(2), i(3))
    })
}

/// Appends `amounts` to `stream` of `events`, one event each.
pub async fn append_amounts(events: &dyn EventStore, stream: &StreamName, amounts: &[i64]) {
    let data = amounts
        .iter()
        .map(|a| EventData::new("Amount", a.to_string().into_bytes()))
        .collect();
    events
        .append(stream, ExpectedVersion::Any, data)
        .await
        .expect("append amounts");
}

async fn all_of(events: &dyn EventStore, stream: &StreamName) -> Vec<RecordedEvent> {
    events
        .read_stream_vec(stream, ReadStream::forward())
        .await
        .expect("read the stream")
}

fn expected(amounts: &[i64], code: i64) -> (i64, i64, i64, i64) {
    (
        amounts.len() as i64,
        amounts.iter().sum(),
        fold_hash(amounts.iter().copied()),
        code,
    )
}

/// Redelivered events (overlapping batches, the whole stream again after a checkpoint
/// reset) are applied exactly once; the answer is the next version needed.
pub async fn apply_is_exactly_once_under_redelivery<R: ReadModelStore>(rm: Arc<R>) {
    let events = MemoryStore::new();
    let counts = Counts::new();
    rm.setup(&counts).await.expect("setup");
    rm.setup(&counts).await.expect("setup is idempotent");
    let s = name("Acct-1");
    let amounts: Vec<i64> = (1..=8).collect();
    append_amounts(&events, &s, &amounts).await;
    let all = all_of(&events, &s).await;
    assert_eq!(rm.apply(&counts, &s, &all[..5]).await.unwrap(), Version(5));
    // Redelivered with more: only 5..8 are new.
    assert_eq!(rm.apply(&counts, &s, &all[3..]).await.unwrap(), Version(8));
    assert_eq!(counts_row(&*rm, &s).await, Some(expected(&amounts, 1)));
    // A checkpoint reset delivers everything again, in other batches.
    rm.commit("g", "all", Position::START).await.unwrap();
    assert_eq!(rm.load("g", "all").await.unwrap(), Some(Position::START));
    for chunk in all.chunks(3) {
        let next = rm.apply(&counts, &s, chunk).await.unwrap();
        assert_eq!(next, Version(8), "already applied: the progress answers");
    }
    assert_eq!(counts_row(&*rm, &s).await, Some(expected(&amounts, 1)));
    let progress = rm.progress("counts", &s).await.unwrap().expect("recorded");
    assert_eq!((progress.version, progress.schema), (Version(8), 1));
    // Events given above the progress (some missing in between) are not applied.
    append_amounts(&events, &s, &[100, 200]).await;
    let all = all_of(&events, &s).await;
    assert_eq!(rm.apply(&counts, &s, &all[9..]).await.unwrap(), Version(8));
    assert_eq!(counts_row(&*rm, &s).await, Some(expected(&amounts, 1)));
    // Events of another stream, or not consecutive, are refused before anything is done.
    let other = name("Acct-2");
    append_amounts(&events, &other, &[1]).await;
    let mixed = vec![all[8].clone(), all_of(&events, &other).await[0].clone()];
    assert!(matches!(
        rm.apply(&counts, &s, &mixed).await,
        Err(Error::ReadModel { .. })
    ));
    let gap = vec![all[8].clone(), all[9].clone(), all[9].clone()];
    assert!(matches!(
        rm.apply(&counts, &s, &gap).await,
        Err(Error::ReadModel { .. })
    ));
    // The catch-up applies everything after the progress, exactly once.
    assert_eq!(
        catch_up_stream(&events, &*rm, &counts, &s).await.unwrap(),
        2
    );
    assert_eq!(
        catch_up_stream(&events, &*rm, &counts, &s).await.unwrap(),
        0
    );
    let mut amounts = amounts;
    amounts.extend([100, 200]);
    assert_eq!(counts_row(&*rm, &s).await, Some(expected(&amounts, 1)));
}

/// A projector that fails rolls back everything it wrote, and the progress stays.
pub async fn failing_apply_rolls_back<R: ReadModelStore>(rm: Arc<R>) {
    let events = MemoryStore::new();
    let good = Counts::new();
    let poisoned = Arc::new(Counts {
        schema: 1,
        poison: Some(13),
    });
    rm.setup(&good).await.expect("setup");
    let s = name("Acct-1");
    append_amounts(&events, &s, &[1, 2]).await;
    let all = all_of(&events, &s).await;
    rm.apply(&good, &s, &all).await.unwrap();
    append_amounts(&events, &s, &[3, 13, 4]).await;
    let all = all_of(&events, &s).await;
    let e = rm
        .apply(&poisoned, &s, &all[2..])
        .await
        .expect_err("the poison fails");
    let text = annals::error_chain(&e);
    assert!(
        text.contains("counts") && text.contains("Acct-1") && text.contains("amount 13 is poison"),
        "the error names the projection, the stream and the cause: {text}"
    );
    assert_eq!(
        counts_row(&*rm, &s).await,
        Some(expected(&[1, 2], 1)),
        "event 3 written before the poison in the same call was rolled back"
    );
    assert_eq!(
        rm.progress("counts", &s).await.unwrap().map(|p| p.version),
        Some(Version(2))
    );
    // A statement the database refuses is an error with the database's own message.
    let broken = Arc::new(Broken);
    let e = rm
        .apply(&broken, &s, &all[2..])
        .await
        .expect_err("the statement fails");
    let text = annals::error_chain(&e);
    assert!(
        text.contains("no_such_table"),
        "the database's message is kept: {text}"
    );
    assert_eq!(
        rm.progress("counts", &s).await.unwrap().map(|p| p.version),
        Some(Version(2))
    );
    // Fixed, the same events apply once.
    assert_eq!(rm.apply(&good, &s, &all[2..]).await.unwrap(), Version(5));
    assert_eq!(
        counts_row(&*rm, &s).await,
        Some(expected(&[1, 2, 3, 13, 4], 1))
    );
}

struct Broken;

#[async_trait]
impl<R: ReadModelStore> Projector<R> for Broken {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("counts", 1)
    }

    async fn apply(
        &self,
        tx: &mut R::Tx<'_>,
        _: &StreamName,
        _: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        tx.execute("INSERT INTO no_such_table (x) VALUES ($1)", &[1i64.into()])
            .await?;
        Ok(())
    }

    async fn clear(&self, _: &mut R::Tx<'_>, _: &StreamName) -> Result<(), ProjectorError> {
        Ok(())
    }
}

/// Rows built by older projector code are found and rebuilt; newer ones are left alone,
/// unless every row is asked for.
pub async fn stale_rows_are_found_and_rebuilt<R: ReadModelStore>(rm: Arc<R>) {
    let events = MemoryStore::new();
    let v1 = Counts::new();
    let v2 = Arc::new(Counts {
        schema: 2,
        poison: None,
    });
    rm.setup(&v1).await.expect("setup");
    let (a, b, c) = (name("Acct-a"), name("Acct-b"), name("Acct-c"));
    for (s, amounts) in [(&a, vec![1, 2, 3]), (&b, vec![4, 5]), (&c, vec![6])] {
        append_amounts(&events, s, &amounts).await;
    }
    for s in [&a, &b] {
        rm.apply(&v1, s, &all_of(&events, s).await).await.unwrap();
    }
    // c starts under the new code.
    rm.apply(&v2, &c, &all_of(&events, &c).await).await.unwrap();
    // a lags: one more event the pipeline has not applied yet.
    append_amounts(&events, &a, &[7]).await;
    let rows = projection_rows(&events, &*rm, "counts").await.unwrap();
    let summary: Vec<(String, u64, u32, u64, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.stream.to_string(),
                r.version.get(),
                r.schema,
                r.head.get(),
                r.is_stale(2),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Acct-a".into(), 3, 1, 4, true),
            ("Acct-b".into(), 2, 1, 2, true),
            ("Acct-c".into(), 1, 2, 1, false),
        ]
    );
    // Extending a row keeps the schema that built it.
    rm.apply(&v2, &a, &all_of(&events, &a).await).await.unwrap();
    assert_eq!(rm.progress("counts", &a).await.unwrap().unwrap().schema, 1);
    let rebuilt = rebuild(&events, &*rm, &v2, false).await.unwrap();
    assert_eq!((rebuilt.streams, rebuilt.events), (2, 6));
    assert_eq!(counts_row(&*rm, &a).await, Some(expected(&[1, 2, 3, 7], 2)));
    assert_eq!(counts_row(&*rm, &b).await, Some(expected(&[4, 5], 2)));
    assert_eq!(counts_row(&*rm, &c).await, Some(expected(&[6], 2)));
    for s in [&a, &b, &c] {
        assert_eq!(rm.progress("counts", s).await.unwrap().unwrap().schema, 2);
    }
    assert_eq!(rebuild(&events, &*rm, &v2, false).await.unwrap().streams, 0);
    let all = rebuild(&events, &*rm, &v2, true).await.unwrap();
    assert_eq!((all.streams, all.events), (3, 7));
    assert_eq!(counts_row(&*rm, &a).await, Some(expected(&[1, 2, 3, 7], 2)));
    // A rebuild that read fewer events than the read model already applied is refused, and
    // so is one given fewer events than the stream's version it read them at.
    let short = all_of(&events, &a).await[..2].to_vec();
    for version in [2, 4] {
        assert!(matches!(
            rm.replace(&v2, &a, &short, Version(version)).await,
            Err(Error::ReadModel { .. })
        ));
    }
    assert_eq!(counts_row(&*rm, &a).await, Some(expected(&[1, 2, 3, 7], 2)));
}

/// Events the event store no longer shows (soft-deleted, truncated) before a projection
/// applied them are skipped: a catch-up, a rebuild and the pipeline's applies build the
/// rows from the events still shown, and the progress moves past the hidden ones (never
/// back).
pub async fn hidden_events_are_skipped<R: ReadModelStore>(rm: Arc<R>) {
    let events = MemoryStore::new();
    let counts = Counts::new();
    rm.setup(&counts).await.unwrap();
    let (soft, cut, seen) = (name("Hide-soft"), name("Hide-cut"), name("Hide-seen"));
    append_amounts(&events, &soft, &[1, 2]).await;
    append_amounts(&events, &cut, &[1, 2, 3]).await;
    append_amounts(&events, &seen, &[1, 2, 3, 4]).await;
    // The projection saw the first event of one stream before the others were hidden.
    let first = all_of(&events, &seen).await;
    assert_eq!(
        rm.apply(&counts, &seen, &first[..1]).await.unwrap(),
        Version(1)
    );
    events
        .delete_stream(&soft, ExpectedVersion::Any, annals::DeleteMode::Soft)
        .await
        .unwrap();
    append_amounts(&events, &soft, &[5]).await;
    events.truncate_before(&cut, Version(2)).await.unwrap();
    events.truncate_before(&seen, Version(3)).await.unwrap();
    for (stream, shown, applied) in [(&soft, &[5][..], 1), (&cut, &[3], 1), (&seen, &[1, 4], 1)] {
        assert_eq!(
            catch_up_stream(&events, &*rm, &counts, stream)
                .await
                .unwrap(),
            applied,
            "{stream}"
        );
        assert_eq!(
            counts_row(&*rm, stream).await,
            Some(expected(shown, 1)),
            "{stream}"
        );
        let progress = rm.progress("counts", stream).await.unwrap().unwrap();
        assert_eq!(
            progress.version,
            events.stream_version(stream).await.unwrap()
        );
    }
    // Skipping never moves a progress back, and answers where it is.
    assert_eq!(
        rm.skip_hidden(&counts, &soft, Version(1)).await.unwrap(),
        Version(3)
    );
    // A rebuild folds what is shown, also of a stream that shows nothing.
    events
        .delete_stream(&cut, ExpectedVersion::Any, annals::DeleteMode::Soft)
        .await
        .unwrap();
    let rebuilt = rebuild(&events, &*rm, &counts, true).await.unwrap();
    assert_eq!((rebuilt.streams, rebuilt.events), (3, 2));
    assert_eq!(counts_row(&*rm, &soft).await, Some(expected(&[5], 1)));
    assert_eq!(counts_row(&*rm, &seen).await, Some(expected(&[4], 1)));
    assert_eq!(counts_row(&*rm, &cut).await, None);
    let progress = rm.progress("counts", &cut).await.unwrap().unwrap();
    assert_eq!(progress.version, Version(3));
    // An event after the soft deletion is applied on top of the empty rows.
    append_amounts(&events, &cut, &[9]).await;
    let tail = all_of(&events, &cut).await;
    assert_eq!(rm.apply(&counts, &cut, &tail).await.unwrap(), Version(4));
    assert_eq!(counts_row(&*rm, &cut).await, Some(expected(&[9], 1)));
}

/// Appliers of one stream running at once (two pipelines, a rebuild beside a pipeline)
/// never apply an event twice or lose one.
pub async fn concurrent_appliers_of_one_stream<R: ReadModelStore>(rm: Arc<R>) {
    let events = Arc::new(MemoryStore::new());
    let counts = Counts::new();
    rm.setup(&counts).await.expect("setup");
    let s = name("Acct-hot");
    let amounts: Vec<i64> = (1..=60).collect();
    append_amounts(&*events, &s, &amounts).await;
    let all = Arc::new(all_of(&*events, &s).await);
    let mut tasks = Vec::new();
    for worker in 0..4usize {
        let (rm, counts, all, s) = (
            Arc::clone(&rm),
            Arc::clone(&counts),
            Arc::clone(&all),
            s.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Each applier delivers growing prefixes in its own rhythm.
            let step = 3 + worker;
            let mut end = step;
            while end < all.len() + step {
                let slice = &all[end.saturating_sub(2 * step)..end.min(all.len())];
                let next = rm
                    .apply(&counts, &s, slice)
                    .await
                    .unwrap_or_else(|e| panic!("applier {worker}: {e}"));
                if next.get() < slice[0].stream_version {
                    // Events missing before the slice: deliver from the progress.
                    let from = next.get() as usize;
                    rm.apply(&counts, &s, &all[from..end.min(all.len())])
                        .await
                        .expect("apply from the progress");
                }
                end += step;
            }
        }));
    }
    for t in tasks {
        t.await.expect("an applier");
    }
    assert_eq!(counts_row(&*rm, &s).await, Some(expected(&amounts, 1)));
    assert_eq!(
        rm.progress("counts", &s).await.unwrap().map(|p| p.version),
        Some(Version(60))
    );
}

/// Values of every kind go in through parameters and come back out unchanged.
pub async fn values_round_trip<R: ReadModelStore>(rm: Arc<R>) {
    let probe = Arc::new(Values(std::sync::Mutex::new(Vec::new())));
    rm.setup(&probe).await.expect("values round trip");
    let rows = probe.0.lock().expect("not poisoned").clone();
    let text = "it's \"quoted\"; DROP TABLE rm_values; -- ünïcödé ✓";
    assert_eq!(
        rows,
        vec![
            vec![
                SqlValue::Int(1),
                SqlValue::Int(-9_007_199_254_740_993),
                SqlValue::Text(text.into()),
                SqlValue::Bytes(vec![0, 1, 254, 255]),
                SqlValue::Null,
                SqlValue::Float(2.5),
            ],
            vec![SqlValue::Int(-9_007_199_254_740_993), SqlValue::Int(1),]
        ]
    );
}

struct Values(std::sync::Mutex<Vec<Vec<SqlValue>>>);

#[async_trait]
impl<R: ReadModelStore> Projector<R> for Values {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("values", 0)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch(
            "CREATE TABLE IF NOT EXISTS rm_values (k BIGINT PRIMARY KEY, i BIGINT, t TEXT, b BYTEA, n TEXT, f DOUBLE PRECISION)",
        )
        .await?;
        let text = "it's \"quoted\"; DROP TABLE rm_values; -- ünïcödé ✓";
        tx.execute(
            "INSERT INTO rm_values (k, i, t, b, n, f) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                1i64.into(),
                (-9_007_199_254_740_993i64).into(),
                text.into(),
                vec![0u8, 1, 254, 255].into(),
                SqlValue::Null,
                2.5f64.into(),
            ],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT k, i, t, b, n, f FROM rm_values WHERE t = $1 AND k = $2",
                &[text.into(), 1i64.into()],
            )
            .await?;
        let mut rows = rows;
        // Aggregates come back as integers on every backend (PostgreSQL's sum is numeric).
        rows.extend(
            tx.query("SELECT sum(i), count(*) FROM rm_values", &[])
                .await?,
        );
        *self.0.lock().expect("not poisoned") = rows;
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut R::Tx<'_>,
        _: &StreamName,
        _: &[RecordedEvent],
    ) -> Result<(), ProjectorError> {
        Ok(())
    }

    async fn clear(&self, _: &mut R::Tx<'_>, _: &StreamName) -> Result<(), ProjectorError> {
        Ok(())
    }
}

/// Parked streams are recorded, extended, listed by group and removed.
pub async fn parked_streams_are_kept<C: CheckpointStore + ?Sized>(store: Arc<C>) {
    let t = |us: i64| Timestamp::from_unix_micros(us);
    let record =
        |group: &str, stream: &str, from: u64, to: u64, error: &str, at: i64| ParkedStream {
            group: group.into(),
            stream: name(stream),
            from: Version(from),
            to: Version(to),
            attempts: 5,
            first_error: error.into(),
            last_error: error.into(),
            parked_at: t(at),
            updated_at: t(at),
        };
    assert!(store.parked(None).await.unwrap().is_empty());
    store
        .park(&record("g1", "Acct-1", 3, 5, "boom: no such column", 10))
        .await
        .unwrap();
    store
        .park(&record("g2", "Acct-1", 0, 1, "other", 11))
        .await
        .unwrap();
    // Extending: the range grows, the first error and time stay.
    store
        .park(&record("g1", "Acct-1", 5, 9, "later", 20))
        .await
        .unwrap();
    let g1 = store.parked(Some("g1")).await.unwrap();
    assert_eq!(g1.len(), 1);
    let p = &g1[0];
    assert_eq!(
        (p.from, p.to, p.first_error.as_str(), p.last_error.as_str()),
        (Version(3), Version(9), "boom: no such column", "later")
    );
    assert_eq!((p.parked_at, p.updated_at), (t(10), t(20)));
    assert_eq!(store.parked(None).await.unwrap().len(), 2);
    assert!(store.unpark("g1", &name("Acct-1")).await.unwrap());
    assert!(!store.unpark("g1", &name("Acct-1")).await.unwrap());
    assert!(store.parked(Some("g1")).await.unwrap().is_empty());
    assert_eq!(store.parked(None).await.unwrap().len(), 1);
}

/// Stamps out one `#[test]` per read-model conformance function for the read-model store
/// made by `$factory`, an `async fn() -> (Arc<R>, guard)`.
#[macro_export]
macro_rules! read_model_suite {
    ($factory:expr) => {
        $crate::read_model_suite!(@tests $factory;
            apply_is_exactly_once_under_redelivery,
            failing_apply_rolls_back,
            stale_rows_are_found_and_rebuilt,
            concurrent_appliers_of_one_stream,
            hidden_events_are_skipped,
            values_round_trip,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run(async {
                    let (read_model, _guard) = ($factory)().await;
                    $crate::read_models::$name(read_model).await;
                });
            }
        )*
    };
}

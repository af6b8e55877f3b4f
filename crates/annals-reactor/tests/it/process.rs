//! Pipelines in other processes, killed with SIGKILL: exactly-once projections into SQLite
//! and PostgreSQL. The child processes are this test binary, re-run on the
//! `process::child` test with `ANNALS_REACTOR_CHILD` saying what to do.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    CheckpointStore, EventData, EventStore, EventStoreExt, ExpectedVersion, Filter, ProjectionId,
    Projector, ProjectorError, ReadModelStore, ReadStream, RecordedEvent, SqlTx, StreamName,
};
use annals_reactor::{Handler, PipelineConfig, Project};
use async_trait::async_trait;

pub(crate) const CHILD: &str = "ANNALS_REACTOR_CHILD";
pub(crate) const ARG: &str = "ANNALS_REACTOR_ARG";
const EVENTS: u64 = 100_000;
const STREAMS: u64 = 64;
const PER_APPEND: u64 = 100;
/// A child is killed after handling a random number of events up to this, so 100,000
/// events need at least 11 kills.
const MAX_EVENTS_PER_LIFE: u64 = 9_000;

pub(crate) fn spawn_child(mode: &str, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "process::child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .env(ARG, arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary re-runs as a child")
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// A random generator with a fresh seed, printed so a failing run can be replayed.
pub(crate) fn rng() -> fastrand::Rng {
    let seed = fastrand::u64(..);
    eprintln!("rng seed {seed}");
    fastrand::Rng::with_seed(seed)
}

/// The read model: per stream, the count, the sum and an order-sensitive hash of the
/// amounts. Any event counted twice, missed or applied out of order changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fold {
    n: i64,
    total: i64,
    hash: i64,
}

impl Fold {
    fn apply(mut self, amount: i64) -> Self {
        self.n += 1;
        self.total += amount;
        self.hash = (self.hash * 1_000_003 + amount + 1) % 1_000_000_007;
        self
    }
}

fn amount(e: &RecordedEvent) -> i64 {
    std::str::from_utf8(&e.data)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("an amount")
}

/// Appends the 100,000 events (64 streams, 100 per append).
async fn seed_events(store: &dyn EventStore) {
    for k in 0..EVENTS / PER_APPEND {
        let stream = StreamName::new(format!("Fold-{}", k % STREAMS)).unwrap();
        let events = (0..PER_APPEND)
            .map(|i| {
                let global = k * PER_APPEND + i;
                EventData::new("Amount", ((global * 7919) % 1000).to_string().into_bytes())
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}

/// The fold of every event, read back from the store.
async fn expected_folds(store: &dyn EventStore) -> BTreeMap<String, Fold> {
    let mut want = BTreeMap::new();
    for s in 0..STREAMS {
        let stream = StreamName::new(format!("Fold-{s}")).unwrap();
        let events = store
            .read_stream_vec(&stream, ReadStream::forward())
            .await
            .unwrap();
        let fold = events
            .iter()
            .fold(Fold::default(), |f, e| f.apply(amount(e)));
        want.insert(stream.to_string(), fold);
    }
    want
}

fn fold_config() -> PipelineConfig {
    let mut c = PipelineConfig::new("folds").filter(Filter::category("Fold"));
    c.checkpoint_interval = Duration::from_millis(100);
    c.poll_interval = Duration::from_millis(100);
    c
}

/// Runs the projection until everything is handled, printing `h N` after each handler call
/// that applied N events, then `done`.
async fn project_in_child(
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    handler: Arc<dyn Handler>,
) {
    let mut running = annals_reactor::spawn(store, checkpoints, handler, fold_config());
    running.await_idle().await.expect("no pipeline error");
    running.stop().await.expect("a clean stop");
    say("done");
}

/// The projection, written once for every read-model store: read model and per-stream
/// progress in one transaction. Says `h N` for each call that applies N events.
struct Folds;

#[async_trait]
impl<R: ReadModelStore> Projector<R> for Folds {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("folds", 0)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch(
            "CREATE TABLE IF NOT EXISTS folds (stream TEXT PRIMARY KEY, n BIGINT NOT NULL,
             total BIGINT NOT NULL, hash BIGINT NOT NULL)",
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
        let rows = tx
            .query(
                "SELECT n, total, hash FROM folds WHERE stream = $1",
                &[stream.into()],
            )
            .await?;
        let start = rows.first().map_or(Fold::default(), |r| Fold {
            n: r[0].as_i64().unwrap_or(0),
            total: r[1].as_i64().unwrap_or(0),
            hash: r[2].as_i64().unwrap_or(0),
        });
        let fold = events.iter().fold(start, |f, e| f.apply(amount(e)));
        tx.execute(
            "INSERT INTO folds (stream, n, total, hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream) DO UPDATE SET n = excluded.n, total = excluded.total,
             hash = excluded.hash",
            &[
                stream.into(),
                fold.n.into(),
                fold.total.into(),
                fold.hash.into(),
            ],
        )
        .await?;
        say(&format!("h {}", events.len()));
        Ok(())
    }

    async fn clear(&self, tx: &mut R::Tx<'_>, stream: &StreamName) -> Result<(), ProjectorError> {
        tx.execute("DELETE FROM folds WHERE stream = $1", &[stream.into()])
            .await?;
        Ok(())
    }
}

/// The projection's pipeline handler over `read_model`.
async fn folds<R: ReadModelStore>(
    events: Arc<dyn EventStore>,
    read_model: Arc<R>,
) -> Arc<dyn Handler> {
    Arc::new(
        Project::new(events, read_model, Arc::new(Folds))
            .await
            .expect("set up the projection"),
    )
}

/// Entry point of the child processes. Run directly (no variable set), it checks the
/// SQLite projection on its own, in-process, over a few events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child() {
    match std::env::var(CHILD) {
        Ok(mode) => {
            // libtest has printed "test process::child ... " without a newline: end it.
            println!();
            let arg = std::env::var(ARG).unwrap_or_default();
            match mode.as_str() {
                "sqlite-folds" => {
                    let store = Arc::new(sqlite(&arg));
                    let handler = folds(store.clone(), store.clone()).await;
                    project_in_child(store.clone(), store, handler).await
                }
                "pg-folds" => {
                    let (url, schema) = arg.split_once(' ').expect("url schema");
                    let store = Arc::new(pg(url, schema).await);
                    let handler = folds(store.clone(), store.clone()).await;
                    project_in_child(store.clone(), store, handler).await
                }
                "member" => crate::compete::member(&arg).await,
                other => panic!("unknown child mode {other}"),
            }
        }
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            let store = sqlite_with_table(&dir.path().join("f.db")).await;
            for i in 0..30 {
                store
                    .append(
                        &StreamName::new(format!("Fold-{}", i % 3)).unwrap(),
                        ExpectedVersion::Any,
                        vec![EventData::new("Amount", format!("{i}").into_bytes())],
                    )
                    .await
                    .unwrap();
            }
            let shared = Arc::new(store.clone());
            let handler = folds(shared.clone(), shared.clone()).await;
            project_in_child(shared.clone(), shared, handler).await;
            let got = sqlite_folds(&store).await;
            assert_eq!(got.len(), 3);
            assert_eq!(got["Fold-0"].n, 10);
            assert_eq!(got["Fold-0"].total, (0..30).step_by(3).sum::<i64>());
        }
    }
}

fn sqlite(path: &str) -> annals_sqlite::SqliteStore {
    annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(path)).expect("open")
}

async fn sqlite_with_table(path: &std::path::Path) -> annals_sqlite::SqliteStore {
    let store = sqlite(path.to_str().unwrap());
    store.setup(&Arc::new(Folds)).await.unwrap();
    store
}

async fn sqlite_folds(store: &annals_sqlite::SqliteStore) -> BTreeMap<String, Fold> {
    store
        .read(|c| {
            let mut s = c.prepare("SELECT stream, n, total, hash FROM folds")?;
            let rows = s.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Fold {
                        n: r.get(1)?,
                        total: r.get(2)?,
                        hash: r.get(3)?,
                    },
                ))
            })?;
            rows.collect()
        })
        .await
        .unwrap()
}

/// Per stream, the read model's count and the projection's progress, read in one snapshot.
type Pairs = Vec<(String, Option<i64>, Option<i64>)>;

const PAIRS: &str =
    "SELECT p.stream, f.n, p.next_version FROM {p} p LEFT JOIN {f} f ON f.stream = p.stream
     WHERE p.projection = 'folds'
     UNION ALL
     SELECT f.stream, f.n, NULL FROM {f} f
     WHERE NOT EXISTS (SELECT 1 FROM {p} p WHERE p.projection = 'folds' AND p.stream = f.stream)";

async fn sqlite_pairs(store: &annals_sqlite::SqliteStore) -> Pairs {
    store
        .read(|c| {
            let sql = PAIRS
                .replace("{p}", "annals_projection_streams")
                .replace("{f}", "folds");
            let mut s = c.prepare(&sql)?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
        .unwrap()
}

/// The store in `schema` of the server at `url` (a child process is handed the URL).
pub(crate) async fn pg(url: &str, schema: &str) -> annals_postgres::PgStore {
    let connection = url.parse().expect("a PostgreSQL connection URL");
    annals_postgres::PgStore::connect(annals_postgres::PgConfig::new(connection).schema(schema))
        .await
        .expect("connect")
}

async fn pg_folds(client: &tokio_postgres::Client, schema: &str) -> BTreeMap<String, Fold> {
    client
        .query(
            &format!("SELECT stream, n, total, hash FROM {schema}.folds"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                Fold {
                    n: r.get(1),
                    total: r.get(2),
                    hash: r.get(3),
                },
            )
        })
        .collect()
}

async fn pg_pairs(client: &tokio_postgres::Client, schema: &str) -> Pairs {
    let sql = PAIRS
        .replace("{p}", &format!("{schema}.projection_streams"))
        .replace("{f}", &format!("{schema}.folds"));
    client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Runs children until one finishes, killing each after it reports a random number of
/// applied events; after each kill, `check` sees the read model. Returns the kills.
async fn kill_until_done<F, Fut>(mode: &str, arg: &str, mut check: F) -> u32
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rng = rng();
    let mut kills = 0;
    for life in 0.. {
        assert!(life < 200, "the projection never finished");
        let kill_after = rng.u64(1..=MAX_EVENTS_PER_LIFE);
        let mut child = spawn_child(mode, arg);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (killed, done) = tokio::task::spawn_blocking(move || {
            let mut applied = 0;
            let mut other = String::new();
            let mut lines = stdout.lines();
            while let Some(line) = lines.next() {
                let line = line.unwrap();
                if line == "done" {
                    // Read to the end, so the child's last words do not meet a closed pipe.
                    other.extend(lines.map(|l| l.unwrap() + "\n"));
                    return (child, false, true, other);
                }
                if let Some(n) = line.strip_prefix("h ") {
                    applied += n.parse::<u64>().unwrap();
                    if applied >= kill_after {
                        child.kill().expect("SIGKILL the child");
                        return (child, true, false, other);
                    }
                } else {
                    other.push_str(&line);
                    other.push('\n');
                }
            }
            (child, false, false, other)
        })
        .await
        .map(|(mut child, killed, done, other)| {
            let status = child.wait().unwrap();
            if !killed {
                assert!(
                    status.success(),
                    "life {life}: the child failed: {status}\n{other}"
                );
            }
            (killed, done)
        })
        .unwrap();
        if killed {
            kills += 1;
            check().await;
        }
        if done {
            eprintln!("{mode}: {kills} kills in {} lives", life + 1);
            return kills;
        }
    }
    unreachable!()
}

fn assert_consistent(pairs: &Pairs) {
    for (stream, n, next) in pairs {
        assert_eq!(
            n, next,
            "{stream}: the read model and the projection's progress committed together"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_projection_killed_at_random_moments_counts_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("folds.db");
    let store = sqlite_with_table(&path).await;
    seed_events(&store).await;
    let kills = kill_until_done("sqlite-folds", path.to_str().unwrap(), || async {
        assert_consistent(&sqlite_pairs(&store).await);
    })
    .await;
    assert!(kills >= 10, "only {kills} kills");
    assert_eq!(
        sqlite_folds(&store).await,
        expected_folds(&store).await,
        "the read model is the fold of every event, once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_projection_killed_at_random_moments_counts_every_event_exactly_once() {
    let server = annals_testkit::postgres::shared();
    let schema = annals_testkit::postgres::schema_name("folds");
    let store = pg(&server.url, &schema).await;
    store.migrate().await.unwrap();
    let client = annals_testkit::postgres::connect(&server.url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.folds (stream text PRIMARY KEY, n bigint NOT NULL,
             total bigint NOT NULL, hash bigint NOT NULL)"
        ))
        .await
        .unwrap();
    seed_events(&store).await;
    let arg = format!("{} {schema}", server.url);
    let kills = kill_until_done("pg-folds", &arg, || async {
        assert_consistent(&pg_pairs(&client, &schema).await);
    })
    .await;
    assert!(kills >= 10, "only {kills} kills");
    assert_eq!(
        pg_folds(&client, &schema).await,
        expected_folds(&store).await,
        "the read model is the fold of every event, once, in order"
    );
}

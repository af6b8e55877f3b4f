//! Pipelines in other processes, killed with SIGKILL: exactly-once projections into SQLite
//! and PostgreSQL. The child processes are this test binary, re-run on the
//! `process::child` test with `ANNALS_REACTOR_CHILD` saying what to do.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    CheckpointStore, EventData, EventStore, EventStoreExt, ExpectedVersion, Filter, ReadStream,
    RecordedEvent, StreamName, Version,
};
use annals_reactor::{Handler, HandlerError, PipelineConfig};
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

/// A small xorshift generator seeded from the clock; the seed is printed so a failing run
/// can be told apart.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_clock() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Self(seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
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

/// The SQLite projection: read model and per-stream progress in one transaction.
struct SqliteFolds(annals_sqlite::SqliteStore);

#[async_trait]
impl Handler for SqliteFolds {
    async fn handle(
        &self,
        _stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let applied = Arc::new(AtomicUsize::new(0));
        let counter = applied.clone();
        let next = self
            .0
            .project_stream("folds", events, move |c, fresh| {
                for e in fresh {
                    c.execute(
                        "INSERT INTO folds (stream, n, total, hash) VALUES (?1, 1, ?2, ?2 + 1)
                         ON CONFLICT (stream) DO UPDATE
                         SET n = n + 1, total = total + ?2, hash = (hash * 1000003 + ?2 + 1) % 1000000007",
                        annals_sqlite::rusqlite::params![e.stream.as_str(), amount(e)],
                    )?;
                }
                counter.store(fresh.len(), Ordering::SeqCst);
                Ok::<(), annals_sqlite::rusqlite::Error>(())
            })
            .await?;
        say(&format!("h {}", applied.load(Ordering::SeqCst)));
        Ok(next)
    }
}

/// The PostgreSQL projection: read model and per-stream progress in one transaction.
struct PgFolds(annals_postgres::PgStore, String);

#[async_trait]
impl Handler for PgFolds {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let tx = self.0.projection().await?;
        let (next, fresh) = tx.unapplied("folds", stream, events).await?;
        let Some(last) = fresh.last() else {
            return Ok(next);
        };
        let after = last.next_version();
        let schema = &self.1;
        let row = tx
            .client()
            .query_opt(
                &format!("SELECT n, total, hash FROM {schema}.folds WHERE stream = $1"),
                &[&stream.as_str()],
            )
            .await?;
        let start = row.map_or(Fold::default(), |r| Fold {
            n: r.get(0),
            total: r.get(1),
            hash: r.get(2),
        });
        let fold = fresh.iter().fold(start, |f, e| f.apply(amount(e)));
        tx.client()
            .execute(
                &format!(
                    "INSERT INTO {schema}.folds (stream, n, total, hash) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (stream) DO UPDATE SET n = $2, total = $3, hash = $4"
                ),
                &[&stream.as_str(), &fold.n, &fold.total, &fold.hash],
            )
            .await?;
        tx.commit_progress("folds", stream, after).await?;
        say(&format!("h {}", fresh.len()));
        Ok(after)
    }
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
                    let store = sqlite(&arg);
                    project_in_child(
                        Arc::new(store.clone()),
                        Arc::new(store.clone()),
                        Arc::new(SqliteFolds(store)),
                    )
                    .await
                }
                "pg-folds" => {
                    let (url, schema) = arg.split_once(' ').expect("url schema");
                    let store = pg(url, schema).await;
                    project_in_child(
                        Arc::new(store.clone()),
                        Arc::new(store.clone()),
                        Arc::new(PgFolds(store, schema.to_owned())),
                    )
                    .await
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
            project_in_child(
                Arc::new(store.clone()),
                Arc::new(store.clone()),
                Arc::new(SqliteFolds(store.clone())),
            )
            .await;
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
    store
        .project("setup", "none", annals::Position::START, |c| {
            c.execute_batch(
                "CREATE TABLE folds (stream TEXT PRIMARY KEY, n INTEGER NOT NULL,
                 total INTEGER NOT NULL, hash INTEGER NOT NULL) STRICT",
            )
        })
        .await
        .unwrap();
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

pub(crate) async fn pg(url: &str, schema: &str) -> annals_postgres::PgStore {
    annals_postgres::PgStore::connect(annals_postgres::PgConfig::new(url).schema(schema))
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
    let mut rng = Rng::from_clock();
    let mut kills = 0;
    for life in 0.. {
        assert!(life < 200, "the projection never finished");
        let kill_after = 1 + rng.below(MAX_EVENTS_PER_LIFE);
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

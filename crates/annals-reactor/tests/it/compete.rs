//! Competing consumers: three processes share one consumer group by partition leases while
//! writers append; one is killed mid-run. The events, checkpoints and leases live in
//! PostgreSQL, or in NATS JetStream (leases and checkpoints in its key-value buckets). Every
//! handler call records its start and end in a PostgreSQL table (by the database's clock)
//! so the test can check that every event was handled, each stream in order, and no stream
//! by two processes at once. A call cut short because its member aborted the pipeline (a
//! lease it could not renew in time) prints when it ended, so only the killed member's
//! calls end unrecorded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    CheckpointStore, EventData, EventStore, ExpectedVersion, Filter, LeaseStore, RecordedEvent,
    StreamName, Version,
};
use annals_reactor::{GroupConfig, Handler, HandlerError, PipelineConfig};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::process::{pg, rng, say, spawn_child};

const STREAMS: u64 = 40;
const WAIT: Duration = Duration::from_secs(120);

/// Records each call's start and end in `calls`, as separate statements outside any
/// transaction, so a call cut short by a kill leaves its start behind.
struct Audit {
    client: tokio_postgres::Client,
    schema: String,
    member: String,
    calls: AtomicU64,
}

/// An open call: dropped before [`Open::close`] (its pipeline aborted), it prints
/// `aborted KEY SECONDS` with the wall-clock time, the clock the database's
/// `clock_timestamp()` reads on this machine. Printing is synchronous, so the line is out
/// before anything else can happen in this process.
struct Open {
    key: String,
    closed: bool,
}

impl Open {
    fn close(mut self) {
        self.closed = true;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "aborted {} {at:.6}", self.key);
        let _ = out.flush();
    }
}

#[async_trait]
impl Handler for Audit {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        let (first, last) = (
            events[0].stream_version,
            events[events.len() - 1].stream_version,
        );
        let schema = &self.schema;
        let key = format!(
            "{}-{}",
            self.member,
            self.calls.fetch_add(1, Ordering::SeqCst)
        );
        let open = Open {
            key: key.clone(),
            closed: false,
        };
        let id: i64 = self
            .client
            .query_one(
                &format!(
                    "INSERT INTO {schema}.calls (key, member, stream, first, last, started)
                     VALUES ($1, $2, $3, $4, $5, clock_timestamp()) RETURNING id"
                ),
                &[
                    &key,
                    &self.member,
                    &stream.as_str(),
                    &(first as i64),
                    &(last as i64),
                ],
            )
            .await?
            .get(0);
        // The work: one more round trip while the call is open.
        self.client.query_one("SELECT 1", &[]).await?;
        self.client
            .execute(
                &format!("UPDATE {schema}.calls SET ended = clock_timestamp() WHERE id = $1"),
                &[&id],
            )
            .await?;
        open.close();
        say("h");
        Ok(Version(last + 1))
    }
}

/// Where the group keeps its events, checkpoints and leases.
#[derive(Clone, Copy)]
enum Backend {
    Postgres,
    Nats,
}

/// One store with the three roles a group member needs.
struct Coordination {
    events: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    leases: Arc<dyn LeaseStore>,
}

impl Coordination {
    fn of<S: EventStore + CheckpointStore + LeaseStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        Self {
            events: store.clone(),
            checkpoints: store.clone(),
            leases: store,
        }
    }

    /// Opens the store `place` names: `pg` (the audit's own schema) or `nats URL STREAM`.
    async fn open(pg_url: &str, schema: &str, place: &[&str]) -> Self {
        match place {
            ["pg"] => Self::of(pg(pg_url, schema).await),
            ["nats", url, stream] => {
                let config = annals_nats::NatsConfig::new(*url).stream(*stream);
                Self::of(
                    annals_nats::NatsStore::connect(config)
                        .await
                        .expect("connect to the NATS server"),
                )
            }
            other => panic!("unknown store {other:?}"),
        }
    }
}

/// A child member: joins the group and handles its partitions until its stdin closes, then
/// stops gracefully (handing its leases back) and prints `stopped`. Its argument is
/// `PG_URL SCHEMA NAME STORE…` (see [`Coordination::open`]).
pub(crate) async fn member(arg: &str) {
    // Warnings (a lease not renewed in time, a pipeline aborted) go to the test's stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("annals_reactor=warn"))
        .try_init();
    let parts: Vec<&str> = arg.split(' ').collect();
    let (url, schema, name) = (parts[0], parts[1], parts[2]);
    let store = Coordination::open(url, schema, &parts[3..]).await;
    let handler = Arc::new(Audit {
        client: annals_testkit::postgres::connect(url).await,
        schema: schema.to_owned(),
        member: name.to_owned(),
        calls: AtomicU64::new(0),
    });
    let mut pipeline = PipelineConfig::new("audit").filter(Filter::category("Work"));
    pipeline.checkpoint_interval = Duration::from_millis(100);
    pipeline.poll_interval = Duration::from_millis(50);
    let group = GroupConfig {
        partitions: 12,
        lease_ttl: Duration::from_secs(2),
        renew_interval: Duration::from_millis(400),
        ..GroupConfig::new(name)
    };
    let member = annals_reactor::join_group(
        store.events,
        store.checkpoints,
        store.leases,
        handler,
        pipeline,
        group,
    );
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await
        .unwrap()
        .unwrap();
    member.stop().await.expect("a clean stop");
    say("stopped");
}

/// Records an `aborted KEY SECONDS` line from a member (see [`Open`]).
fn note_aborted(aborted: &mut BTreeMap<String, f64>, line: &str) {
    if let Some(rest) = line.strip_prefix("aborted ") {
        let (key, at) = rest.split_once(' ').expect("aborted KEY SECONDS");
        aborted.insert(key.to_owned(), at.parse().expect("seconds"));
    }
}

struct Call {
    member: String,
    first: i64,
    last: i64,
    started: f64,
    ended: Option<f64>,
    /// When the call was dropped unfinished, if its member printed it.
    aborted: Option<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_a_group_and_a_killed_ones_streams_go_to_the_others() {
    compete(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_a_group_over_nats_and_a_killed_ones_streams_go_to_the_others() {
    compete(Backend::Nats).await;
}

async fn compete(backend: Backend) {
    let server = annals_testkit::postgres::shared();
    let schema = annals_testkit::postgres::schema_name("compete");
    pg(&server.url, &schema).await.migrate().await.unwrap();
    let place = match backend {
        Backend::Postgres => "pg".to_owned(),
        Backend::Nats => format!(
            "nats {} {}",
            annals_testkit::nats::shared().url,
            annals_testkit::nats::stream_name("compete")
        ),
    };
    let parts: Vec<&str> = place.split(' ').collect();
    let store = Coordination::open(&server.url, &schema, &parts)
        .await
        .events;
    let client = annals_testkit::postgres::connect(&server.url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.calls (id bigserial PRIMARY KEY, key text NOT NULL, member text NOT NULL,
             stream text NOT NULL, first bigint NOT NULL, last bigint NOT NULL,
             started timestamptz NOT NULL, ended timestamptz)"
        ))
        .await
        .unwrap();

    // Three members; their output lines come to `lines` as (member, line).
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<(usize, String)>();
    let mut children = Vec::new();
    for i in 0..3 {
        let mut child = spawn_child("member", &format!("{} {schema} m{i} {place}", server.url));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                let _ = tx.send((i, line));
            }
        });
        children.push(child);
    }
    drop(lines_tx);

    // Writers append to random streams, paced, until told to stop.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop, appended) = (store.clone(), stop_writing.clone(), appended.clone());
            tokio::spawn(async move {
                let mut rng = rng();
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    let stream = StreamName::new(format!("Work-{}", rng.u64(..STREAMS))).unwrap();
                    let n = rng.u64(1..=4);
                    let events = (0..n)
                        .map(|i| EventData::new("Step", i.to_string().into_bytes()))
                        .collect();
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    appended.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Wait until all three are handling, and the first has made 30 calls; then kill it.
    let mut calls = [0u32; 3];
    // When each aborted call ended, by its key.
    let mut aborted: BTreeMap<String, f64> = BTreeMap::new();
    tokio::time::timeout(WAIT, async {
        while calls[0] < 30 || calls[1] == 0 || calls[2] == 0 {
            let (i, line) = lines.recv().await.expect("members are running");
            if line == "h" {
                calls[i] += 1;
            } else {
                note_aborted(&mut aborted, &line);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("all three members handle events: {calls:?}"));
    // The kill's time is read just before it, so a call the kill cut short counts as running
    // until no later than the kill.
    let killed_at: f64 = client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    let mut victim = children.remove(0);
    victim.kill().expect("SIGKILL member 0");
    victim.wait().unwrap();
    // Keep writing for a while after the kill, so the victim's streams get new events that
    // only the survivors can handle.
    let at_kill = appended.load(Ordering::SeqCst);
    tokio::time::timeout(WAIT, async {
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        while appended.load(Ordering::SeqCst) < at_kill + 400 {
            pace.tick().await;
        }
    })
    .await
    .expect("writers keep writing");
    stop_writing.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    // Wait until every event has a finished call covering it.
    let mut heads = BTreeMap::new();
    for s in 0..STREAMS {
        let stream = StreamName::new(format!("Work-{s}")).unwrap();
        heads.insert(
            stream.to_string(),
            store.stream_version(&stream).await.unwrap().get() as i64,
        );
    }
    tokio::time::timeout(WAIT, async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            pace.tick().await;
            let rows = client
                .query(
                    &format!(
                        "SELECT stream, max(last) FROM {schema}.calls WHERE ended IS NOT NULL GROUP BY stream"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let done: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if heads
                .iter()
                .all(|(s, v)| *v == 0 || done.get(s).is_some_and(|last| last + 1 >= *v))
            {
                return;
            }
        }
    })
    .await
    .expect("the survivors handle every event");

    // Stop the survivors gracefully.
    for mut child in children {
        drop(child.stdin.take());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "a survivor stops cleanly: {status}");
    }
    // Every member's output has ended (the victim's with the kill): collect the rest.
    while let Some((_, line)) = lines.recv().await {
        note_aborted(&mut aborted, &line);
    }

    let rows = client
        .query(
            &format!(
                "SELECT member, stream, first, last, extract(epoch FROM started)::float8,
                        extract(epoch FROM ended)::float8, key
                 FROM {schema}.calls ORDER BY stream, started, id"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut by_stream: BTreeMap<String, Vec<Call>> = BTreeMap::new();
    for r in &rows {
        let key: String = r.get(6);
        by_stream.entry(r.get(1)).or_default().push(Call {
            member: r.get(0),
            first: r.get(2),
            last: r.get(3),
            started: r.get(4),
            ended: r.get(5),
            aborted: aborted.get(&key).copied(),
        });
    }
    let mut taken_over = 0;
    for (stream, calls) in &by_stream {
        let mut handled_to = -1; // the highest version handled so far
        let mut previous_end = f64::MIN;
        let mut victim_had_it = false;
        let history = || {
            calls
                .iter()
                .map(|c| {
                    format!(
                        "{} {}..={} {:.3}-{:?} aborted {:?}; ",
                        c.member,
                        c.first,
                        c.last,
                        c.started - killed_at,
                        c.ended.map(|e| e - killed_at),
                        c.aborted.map(|e| e - killed_at)
                    )
                })
                .collect::<String>()
        };
        for c in calls {
            assert!(
                c.first <= handled_to + 1,
                "{stream}: {} handled {}..={} before {} was handled",
                c.member,
                c.first,
                c.last,
                handled_to + 1
            );
            assert!(c.first <= c.last);
            assert!(
                c.started >= previous_end,
                "{stream}: a call by {} started while another was running (times from the kill): {}",
                c.member,
                history()
            );
            let end = match (c.ended, c.aborted) {
                (Some(e), Some(a)) => e.max(a),
                (Some(e), None) | (None, Some(e)) => e,
                (None, None) => {
                    assert_eq!(
                        c.member,
                        "m0",
                        "{stream}: only the killed member leaves calls without an end: {}",
                        history()
                    );
                    killed_at
                }
            };
            if c.member == "m0" {
                victim_had_it = true;
            } else if victim_had_it && c.started > killed_at {
                taken_over += 1;
            }
            previous_end = end;
            if c.ended.is_some() {
                handled_to = handled_to.max(c.last);
            }
        }
        assert_eq!(
            handled_to + 1,
            heads[stream],
            "{stream}: every event handled"
        );
    }
    assert_eq!(by_stream.len() as u64, STREAMS);
    assert!(
        taken_over > 0,
        "the killed member's streams were handled by the others after the kill"
    );
}

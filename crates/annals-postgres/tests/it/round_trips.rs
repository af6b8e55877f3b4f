//! Statements sent per decider operation, counted by a proxy between the store and the
//! server: each simple query and each extended-protocol `Sync` is one statement (one round
//! trip unless pipelined). Round trips proper are counted too: statements a connection
//! sends while its earlier ones are all answered begin one; those it sends before (in the
//! same write) ride in it. The connections that only LISTEN or NOTIFY (change hints, off
//! the caller's path) are told apart by what they send and not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use annals::{Category, Domain, EventData, EventStore, ExpectedVersion, JsonCodec, StreamName};
use annals_postgres::{PgConfig, PgStore, PgTls, SslMode};
use annals_testkit::postgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback proxy to the test server counting the statements store connections send.
struct Proxy {
    port: u16,
    statements: Arc<AtomicU64>,
    round_trips: Arc<AtomicU64>,
    connections: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
}

/// What one connection through the proxy sent: its startup message (parameters and
/// options) and whether it sent the group statement, a feed page, a catch-up's first page
/// (`read_set`, or `read_after` alone) or any other statement.
#[derive(Default, Clone)]
struct Seen {
    startup: String,
    group: bool,
    feed: bool,
    first_pages: bool,
    /// Among the first pages, a grouped catch-up's statement.
    read_set: bool,
    other: bool,
    /// Statements sent (simple queries and `Sync`s).
    statements: u64,
}

impl Proxy {
    /// A proxy to the server at `host`:`server_port`.
    async fn start(host: String, server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let statements = Arc::new(AtomicU64::new(0));
        let counter = statements.clone();
        let round_trips = Arc::new(AtomicU64::new(0));
        let trips = round_trips.clone();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let seen_all = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect((host.as_str(), server_port))
                    .await
                    .unwrap();
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                // Statements sent to the server (the startup message first) and answers
                // (`ReadyForQuery`) passed back to the client.
                let flow = Arc::new(Flow::default());
                let answers = flow.clone();
                tokio::spawn(async move {
                    let _ = answer(from_server, to_client, &answers).await;
                });
                let counters = Counters {
                    statements: counter.clone(),
                    round_trips: trips.clone(),
                    flow,
                };
                let seen = Arc::new(Mutex::new(Seen::default()));
                seen_all.lock().unwrap().push(seen.clone());
                tokio::spawn(async move {
                    let mut from_client = tokio::io::BufReader::with_capacity(1 << 16, from_client);
                    let mut to_server = to_server;
                    let _ = forward(&mut from_client, &mut to_server, &counters, &seen).await;
                });
            }
        });
        Self {
            port,
            statements,
            round_trips,
            connections,
        }
    }

    fn count(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }

    /// What each connection so far sent.
    fn seen(&self) -> Vec<Seen> {
        let connections = self.connections.lock().unwrap();
        connections
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

/// One connection's statements sent to the server and answers passed back.
#[derive(Default)]
struct Flow {
    sent: AtomicU64,
    answered: AtomicU64,
}

/// Where [`forward`] counts.
struct Counters {
    statements: Arc<AtomicU64>,
    round_trips: Arc<AtomicU64>,
    flow: Arc<Flow>,
}

/// Passes the server's messages back to the client, counting its `ReadyForQuery`s (before
/// the client can see them, so a statement it sends after one finds it counted). What the
/// server sent together goes to the client together.
async fn answer(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    flow: &Flow,
) -> std::io::Result<()> {
    let mut from = tokio::io::BufReader::with_capacity(1 << 16, from);
    let mut to = tokio::io::BufWriter::with_capacity(1 << 16, to);
    loop {
        let kind = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        if kind == b'Z' {
            flow.answered.fetch_add(1, Ordering::SeqCst);
        }
        to.write_u8(kind).await?;
        to.write_u32(len).await?;
        to.write_all(&body).await?;
        if from.buffer().is_empty() {
            to.flush().await?;
        }
    }
}

/// Forwards one connection's frontend messages, counting its statements and round trips
/// unless it is a LISTEN or NOTIFY connection. A round trip begins with a statement read in
/// a new chunk from the client while every statement before it is answered.
async fn forward(
    from: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    counters: &Counters,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let flow = &counters.flow;
    // The startup message has no type byte.
    let len = from.read_u32().await?;
    let mut body = vec![0; len as usize - 4];
    from.read_exact(&mut body).await?;
    seen.lock().unwrap().startup = String::from_utf8_lossy(&body).into_owned();
    // The startup message is answered with a `ReadyForQuery` too.
    flow.sent.store(1, Ordering::SeqCst);
    to.write_u32(len).await?;
    to.write_all(&body).await?;
    let mut hint_only = false;
    let mut pending = 0u64;
    let mut pending_trips = 0u64;
    // Whether the next statement begins a round trip.
    let mut idle = false;
    loop {
        if from.buffer().is_empty() {
            // A new chunk from the client: a new round trip if all before is answered.
            from.fill_buf().await?;
            idle = flow.sent.load(Ordering::SeqCst) == flow.answered.load(Ordering::SeqCst);
        }
        let kind = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        let text = String::from_utf8_lossy(&body);
        // The notifier's connection starts with its own setting, before its first
        // `pg_notify`: it is a hint connection from its first statement, whenever that
        // comes (on a loaded machine, possibly while an operation is being counted).
        if text.contains("LISTEN")
            || text.contains("pg_notify")
            || text.contains("SET synchronous_commit = off")
        {
            hint_only = true;
        }
        match kind {
            b'Q' | b'S' => {
                pending += 1;
                pending_trips += u64::from(idle);
                idle = false;
                flow.sent.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().statements += 1;
            }
            _ => {}
        }
        if kind == b'P' || kind == b'Q' {
            // The group statement (prepared; the migrations that create the function are
            // simple queries) is the one that unnests the group's stream names.
            let mut seen = seen.lock().unwrap();
            // Grouped catch-ups unnest names and versions; a catch-up of one stream (its
            // first page) is the one stream read that also answers the stream row.
            let read_set = text.contains("unnest($1::text[], $2::bigint[], $3::bigint[])");
            let read_after =
                text.contains("WITH s AS MATERIALIZED") && text.contains("tombstone, start FROM s");
            let group = !read_set
                && (text.contains("unnest($1::text[]") || text.contains("append_group_shown("));
            // The feed's page is the one that computes what a stream shows.
            let feed = text.contains("AS shown, CASE WHEN s.max_count");
            if kind == b'P' && group {
                seen.group = true;
            } else if kind == b'P' && feed {
                seen.feed = true;
            } else if kind == b'P' && (read_set || read_after) {
                seen.first_pages = true;
                seen.read_set |= read_set;
            } else if !hint_only {
                seen.other = true;
            }
        }
        if !hint_only && pending > 0 {
            counters.statements.fetch_add(pending, Ordering::SeqCst);
            counters
                .round_trips
                .fetch_add(pending_trips, Ordering::SeqCst);
            pending = 0;
            pending_trips = 0;
        }
        to.write_u8(kind).await?;
        to.write_u32(len).await?;
        to.write_all(&body).await?;
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Event {
    Added { n: u32 },
}

fn added() -> Vec<Event> {
    vec![Event::Added { n: 1 }]
}

struct Count;

impl Domain for Count {
    type Event = Event;
    type State = u64;
    fn initial() -> u64 {
        0
    }
    fn evolve(n: u64, _: &Event) -> u64 {
        n + 1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_costs_one_statement_cached_two_uncached_and_two_after_a_conflict() {
    let (proxy, store) = counted_store().await;
    let cache = Arc::new(annals::Cache::new(100));
    let cached = Category::<Count>::new("Count", store.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(cache);
    let uncached = Category::<Count>::new("Count", store.clone(), JsonCodec::new()).unwrap();
    // Warm up: every statement prepared on the pool's one connection.
    for id in ["warm", "warm2"] {
        let d = cached.decider(id).unwrap();
        d.transact(|_| added()).await.unwrap();
        d.transact(|_| added()).await.unwrap();
        uncached
            .decider(id)
            .unwrap()
            .transact(|_| added())
            .await
            .unwrap();
    }
    let other = StreamName::new("Count-warm").unwrap();
    store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![EventData::new("Added", br#"{"n":1}"#.to_vec())],
        )
        .await
        .unwrap();
    cached
        .decider("warm")
        .unwrap()
        .transact(|_| added())
        .await
        .unwrap();
    cached.decider("warm").unwrap().query(|n| *n).await.unwrap();

    let measure = |before: u64| proxy.count() - before;
    // A cached decision on a current state: the append alone.
    let d = cached.decider("a").unwrap();
    d.transact(|_| added()).await.unwrap();
    let before = proxy.count();
    d.transact(|_| added()).await.unwrap();
    assert_eq!(measure(before), 1, "cached, uncontended: one statement");
    // Without a cache: the load and the append.
    let u = uncached.decider("a").unwrap();
    let before = proxy.count();
    u.transact(|_| added()).await.unwrap();
    assert_eq!(measure(before), 2, "uncached: load and append");
    // The cached decider is now stale: its append is refused with the event it missed,
    // and the second append lands.
    let before = proxy.count();
    let mut seen = Vec::new();
    d.transact(|n| {
        seen.push(*n);
        added()
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![2, 3],
        "decided again on the state the refusal brought"
    );
    assert_eq!(
        measure(before),
        2,
        "a conflict and its resync: the refused append and the one that lands"
    );
    // A query on a current cached state reads what came after it (nothing): one statement.
    let before = proxy.count();
    assert_eq!(d.query(|n| *n).await.unwrap(), 4);
    assert_eq!(measure(before), 1, "a fresh query on a current cache");
}

/// A multi-stream append is two round trips whatever its streams: `BEGIN`, the lock of the
/// streams' rows (a decider's transaction) and every append go out together, then `COMMIT`.
/// On one thread, so the store's statements are all queued before its connection writes.
#[tokio::test]
async fn a_multi_stream_append_costs_two_round_trips() {
    use annals::{EventStoreExt, ReadStream, StreamAppend, Version};
    let (proxy, store) = counted_store().await;
    let names = ["Many-c", "Many-a", "Many-b"];
    let appends = |n: u64, expected: ExpectedVersion| -> Vec<StreamAppend> {
        names
            .iter()
            .map(|s| StreamAppend {
                stream: StreamName::new(*s).unwrap(),
                expected,
                events: vec![EventData::new(
                    "Added",
                    format!(r#"{{"n":{n}}}"#).into_bytes(),
                )],
            })
            .collect()
    };
    // Every statement prepared on the pool's one connection before counting.
    store
        .append_many(appends(0, ExpectedVersion::NoStream))
        .await
        .unwrap();
    store
        .append_many_shown(
            appends(1, ExpectedVersion::Exact(Version(1))),
            vec![Version(0); 3],
        )
        .await
        .unwrap();
    for (n, shown) in [(2, false), (3, true)] {
        let before = (proxy.count(), proxy.round_trips());
        let batch = appends(n, ExpectedVersion::Exact(Version(n)));
        let written = match shown {
            false => store.append_many(batch).await.unwrap(),
            true => store
                .append_many_shown(batch, vec![Version(0); 3])
                .await
                .unwrap(),
        };
        assert!(
            written.iter().all(|r| r.version == Version(n + 1)),
            "{written:?}"
        );
        let (statements, trips) = (proxy.count() - before.0, proxy.round_trips() - before.1);
        // `BEGIN`, the lock when shown, three appends, `COMMIT`.
        assert_eq!(
            statements,
            5 + u64::from(shown),
            "statements, shown: {shown}"
        );
        assert_eq!(trips, 2, "round trips, shown: {shown}");
    }
    // A refusal: nothing written, the conflict reported.
    let refused = store
        .append_many(appends(9, ExpectedVersion::Exact(Version(2))))
        .await;
    assert!(
        matches!(refused, Err(annals::Error::WrongExpectedVersion { .. })),
        "{refused:?}"
    );
    for name in names {
        let events = store
            .read_stream_vec(&StreamName::new(name).unwrap(), ReadStream::forward())
            .await
            .unwrap();
        let ns: Vec<u64> = events
            .iter()
            .map(|e| {
                serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns, [0, 1, 2, 3], "{name}");
    }
}

/// A migrated store on a fresh schema whose one pooled connection goes through a
/// counting proxy.
async fn counted_store() -> (Proxy, Arc<PgStore>) {
    let (proxy, store, _) = counted_store_in().await;
    (proxy, store)
}

/// The same, with the store's schema.
async fn counted_store_in() -> (Proxy, Arc<PgStore>, String) {
    use annals_postgres::tokio_postgres::config::Host;
    // The server's address and credentials, from its options (also when `ANNALS_PG_URL`
    // names it); the store connects to the proxy with the same credentials.
    let server = postgres::shared().connection();
    let host = match server.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(host, port).await;
    let mut connection = annals_postgres::tokio_postgres::Config::new();
    connection.host("127.0.0.1").port(proxy.port);
    if let Some(user) = server.get_user() {
        connection.user(user);
    }
    if let Some(password) = server.get_password() {
        connection.password(password);
    }
    if let Some(db) = server.get_dbname() {
        connection.dbname(db);
    }
    let schema = postgres::schema_name("trips");
    let config = PgConfig::new(connection)
        .schema(&schema)
        .pool_size(1)
        .tls(PgTls::new(SslMode::Disable));
    let store = Arc::new(PgStore::connect(config).await.unwrap());
    store.migrate().await.unwrap();
    (proxy, store, schema)
}

/// A stream read costs one statement per page: a stream ending on a page boundary is
/// read without asking for an empty page after it, whatever the direction or limit.
#[tokio::test]
async fn a_stream_read_costs_one_statement_per_page() {
    use annals::{Direction, EventStoreExt, ReadStream};
    let (proxy, store) = counted_store().await;
    let stream = StreamName::new("Pages-1").unwrap();
    let events: Vec<EventData> = (0..1000)
        .map(|i| EventData::new("Added", format!(r#"{{"n":{i}}}"#).into_bytes()))
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    for (limit, direction, statements) in [
        (None, Direction::Forward, 1),
        (None, Direction::Backward, 1),
        (Some(1000), Direction::Forward, 1),
        (Some(999), Direction::Backward, 1),
        (Some(1001), Direction::Forward, 1),
    ] {
        let options = ReadStream {
            direction,
            limit,
            ..ReadStream::default()
        };
        // Prepared once before counting.
        store.read_stream_vec(&stream, options).await.unwrap();
        let before = proxy.count();
        let read = store.read_stream_vec(&stream, options).await.unwrap();
        assert_eq!(
            proxy.count() - before,
            statements,
            "{limit:?} {direction:?}"
        );
        let want = limit.map_or(1000, |l| l.min(1000));
        assert_eq!(read.len(), want, "{limit:?} {direction:?}");
        let first = match direction {
            Direction::Forward => 0,
            Direction::Backward => 999,
        };
        assert_eq!(read[0].stream_version, first, "{limit:?} {direction:?}");
    }
    // Nothing after the end of a stream, and after a version of one that does not exist
    // (a decider catching up), or from its start (a decider's first load of a new stream):
    // one statement each.
    let missing = StreamName::new("Pages-none").unwrap();
    for (stream, from) in [(&stream, 1000), (&missing, 3), (&missing, 0)] {
        let options = ReadStream::forward_from(annals::Version(from));
        // Prepared once before counting.
        store.read_stream_vec(stream, options).await.unwrap();
        let before = proxy.count();
        let read = store.read_stream_vec(stream, options).await.unwrap();
        assert!(read.is_empty(), "{stream}");
        assert_eq!(proxy.count() - before, 1, "an empty read of {stream}");
    }
}

/// Two stores on one new schema: two pools and two group committers, as two processes have.
async fn two_stores(name: &str) -> [Arc<PgStore>; 2] {
    let server = postgres::shared();
    let schema = postgres::schema_name(name);
    let open = || async {
        let config = PgConfig::new(server.connection())
            .schema(&schema)
            .pool_size(8);
        Arc::new(PgStore::connect(config).await.unwrap())
    };
    let first = open().await;
    first.migrate().await.unwrap();
    [first, open().await]
}

/// Waits for `writers`, then counts the events of streams `{prefix}-0..count`, checking
/// each stream's versions are dense.
async fn dense_events(
    writers: Vec<tokio::task::JoinHandle<()>>,
    store: &PgStore,
    prefix: &str,
    count: usize,
) -> usize {
    use annals::EventStoreExt;
    for w in writers {
        w.await.unwrap();
    }
    let mut total = 0;
    for n in 0..count {
        let stream = StreamName::new(format!("{prefix}-{n}")).unwrap();
        let events = store
            .read_stream_vec(&stream, annals::ReadStream::forward())
            .await
            .unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.stream_version, i as u64, "{stream}: versions are dense");
        }
        total += events.len();
    }
    total
}

/// Two stores (two pools and two group committers, as two processes have) append
/// concurrently to overlapping streams: their groups lock streams in name order, so no
/// deadlock, and every append lands once with dense versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_group_committers_on_overlapping_streams_never_fail_a_caller() {
    let stores = two_stores("groups").await;
    const WRITERS: usize = 12;
    const APPENDS: usize = 40;
    const STREAMS: usize = 6;
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed((s * 100 + w) as u64);
                for i in 0..APPENDS {
                    let stream =
                        StreamName::new(format!("Shared-{}", rng.usize(..STREAMS))).unwrap();
                    let body = format!(r#"{{"s":{s},"w":{w},"i":{i}}}"#).into_bytes();
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            vec![EventData::new("E", body)],
                        )
                        .await
                        .unwrap_or_else(|e| panic!("store {s} writer {w} append {i}: {e}"));
                }
            }));
        }
    }
    assert_eq!(
        dense_events(tasks, &stores[0], "Shared", STREAMS).await,
        2 * WRITERS * APPENDS,
        "every append landed once"
    );
}

/// Two processes deciding on the same few streams at exact versions: their groups hold
/// appends that only move an existing stream on (the statement without stream creation),
/// appends that create one, and refusals, all locking in the group's order. No caller sees
/// anything but its own refusal (answered with the stream's version, from which it tries
/// again), and every append lands once, at dense versions.
#[tokio::test]
async fn two_group_committers_deciding_on_overlapping_streams_lose_nothing() {
    let stores = two_stores("decide").await;
    const WRITERS: usize = 8;
    const APPENDS: usize = 25;
    const STREAMS: usize = 4;
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..WRITERS {
            let (store, refused) = (store.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed((s * 100 + w) as u64);
                let mut known = [0u64; STREAMS];
                for i in 0..APPENDS {
                    let n = rng.usize(..STREAMS);
                    let stream = StreamName::new(format!("Decided-{n}")).unwrap();
                    let body = format!(r#"{{"s":{s},"w":{w},"i":{i}}}"#).into_bytes();
                    let events = vec![EventData::new("E", body)];
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(tries < 10_000, "store {s} writer {w} append {i}: starved");
                        let expected = ExpectedVersion::Exact(annals::Version(known[n]));
                        match store.append(&stream, expected, events.clone()).await {
                            Ok(r) => {
                                assert_eq!(r.version.get(), known[n] + 1);
                                known[n] = r.version.get();
                                break;
                            }
                            Err(annals::Error::WrongExpectedVersion { actual, .. }) => {
                                assert_ne!(actual.get(), known[n], "refused at its own version");
                                refused.fetch_add(1, Ordering::Relaxed);
                                known[n] = actual.get();
                            }
                            Err(e) => panic!("store {s} writer {w} append {i}: {e}"),
                        }
                    }
                }
            }));
        }
    }
    assert_eq!(
        dense_events(tasks, &stores[0], "Decided", STREAMS).await,
        2 * WRITERS * APPENDS,
        "every append landed once"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "16 writers on 4 streams were never refused"
    );
}

/// Group commits run on connections of their own that always use the group statement's
/// generic plan (left to choose, PostgreSQL planned it anew at every small group), and so
/// do grouped catch-ups (see `grouped_catch_ups_alone_run_fixed_generic_plans`); the
/// pool's connections, where read models run their own SQL, keep the server's choice.
#[tokio::test]
async fn group_commits_alone_force_generic_plans() {
    use annals::EventStoreExt;
    let (proxy, store) = counted_store().await;
    for i in 0..8 {
        let stream = StreamName::new(format!("Plans-{i}")).unwrap();
        let e = EventData::new("Added", br#"{"n":1}"#.to_vec());
        store
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
        let read = store
            .read_stream_vec(&stream, annals::ReadStream::forward())
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
    }
    let connections: Vec<_> = proxy
        .seen()
        .into_iter()
        .map(|c| (c.startup, c.group, c.other))
        .collect();
    let forced = |startup: &str| startup.contains("plan_cache_mode=force_generic_plan");
    let group: Vec<_> = connections.iter().filter(|c| c.1).collect();
    assert!(!group.is_empty(), "no connection sent the group statement");
    for (startup, _, other) in &group {
        assert!(
            forced(startup),
            "a group connection plans as it likes: {startup:?}"
        );
        assert!(!other, "a group connection sent other statements");
    }
    let others: Vec<_> = connections.iter().filter(|c| c.2).collect();
    assert!(!others.is_empty(), "no connection sent the reads");
    for (startup, _, _) in others {
        assert!(
            !forced(startup),
            "a pool connection forces generic plans: {startup:?}"
        );
    }
}

/// Grouped catch-ups (a cached decider's confirm read, grouped with the others in flight)
/// run on connections of their own whose plans are generic and fixed: nested loops over
/// index probes (the pool's connections keep the server's choice:
/// `group_commits_alone_force_generic_plans`). Left to choose, PostgreSQL planned the
/// grouped statement anew at every execution once the events table had grown (its generic
/// plan, costed for ten streams, lost to a custom plan for a group's few), and planning
/// took longer than the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_catch_ups_alone_run_fixed_generic_plans() {
    let (proxy, store) = counted_store().await;
    let cache = Arc::new(annals::Cache::new(100));
    let cached = Category::<Count>::new("Count", store.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(cache);
    // Two events each: a confirm read starts at the last one, past version 0, so it is
    // grouped (reads from the start are not).
    const STREAMS: usize = 16;
    for i in 0..STREAMS {
        let d = cached.decider(&format!("c{i}")).unwrap();
        d.transact(|_| added()).await.unwrap();
        d.transact(|_| added()).await.unwrap();
    }
    // Queries on the 16 cached states at once, until some were read as one group.
    let mut rounds = 0;
    while !proxy.seen().iter().any(|c| c.read_set) {
        rounds += 1;
        assert!(rounds <= 200, "the catch-ups were never grouped");
        let queries = (0..STREAMS).map(|i| {
            let d = cached.decider(&format!("c{i}")).unwrap();
            async move { d.query(|n| *n).await.unwrap() }
        });
        let counts = futures::future::join_all(queries).await;
        assert!(
            counts.iter().all(|n| *n == 2),
            "each stream holds its two events"
        );
    }
    let seen = proxy.seen();
    let fixed = |startup: &str| {
        [
            "plan_cache_mode=force_generic_plan",
            "enable_seqscan=off",
            "enable_hashjoin=off",
            "enable_mergejoin=off",
            "enable_sort=off",
            "jit=off",
        ]
        .iter()
        .all(|o| startup.contains(o))
    };
    let readers: Vec<_> = seen
        .iter()
        .filter(|c| c.first_pages && !c.other && !c.group && !c.feed)
        .collect();
    assert!(!readers.is_empty(), "no connection read first pages alone");
    for c in &readers {
        assert!(
            fixed(&c.startup),
            "a catch-up connection plans freely: {:?}",
            c.startup
        );
    }
}

/// A feed page is one statement, whether full, short, or cut at the end of a window of
/// events the filter does not show; it runs on the feed's own connections, whose settings
/// leave its planner only the ordered walk of the primary key (and a plan made once).
#[tokio::test]
async fn feed_pages_are_one_statement_each_on_connections_with_fixed_plans() {
    let (proxy, store) = counted_store().await;
    let wanted = StreamName::new("Wanted-1").unwrap();
    let one = |i: usize| EventData::new("W", format!(r#"{{"n":{i}}}"#).into_bytes());
    store
        .append(&wanted, ExpectedVersion::Any, vec![one(0)])
        .await
        .unwrap();
    for k in 0..11 {
        let noise = (0..1000).map(one).collect();
        let stream = StreamName::new(format!("Noise-{k}")).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, noise)
            .await
            .unwrap();
    }
    store
        .append(&wanted, ExpectedVersion::Any, vec![one(1), one(2)])
        .await
        .unwrap();
    store.await_visible().await.unwrap();
    // Prepared once before counting.
    store
        .read_all(annals::Position::START, &annals::Filter::all(), 10)
        .await
        .unwrap();
    let filter = annals::Filter::category("Wanted");
    let (mut from, mut got, mut windows, mut pages) = (annals::Position::START, 0, 0, 0);
    loop {
        let before = proxy.count();
        let page = store.read_all(from, &filter, 2).await.unwrap();
        assert_eq!(proxy.count() - before, 1, "page {pages}: one statement");
        pages += 1;
        assert!(pages < 10, "the read ends");
        assert!(page.next > from || page.end, "pages move forward");
        if !page.end && page.events.len() < 2 {
            windows += 1;
        }
        got += page.events.len();
        from = page.next;
        if page.end {
            break;
        }
    }
    assert_eq!(got, 3, "every wanted event, once");
    assert!(windows >= 1, "a page ended at a window of noise");
    let before = proxy.count();
    let page = store
        .read_all(annals::Position::START, &annals::Filter::all(), 500)
        .await
        .unwrap();
    assert_eq!(proxy.count() - before, 1, "a full page: one statement");
    assert_eq!(page.events.len(), 500);
    assert!(!page.end);
    // Connections that read catch-ups' first pages alone have settings of their own
    // (`grouped_catch_ups_alone_run_fixed_generic_plans`).
    let connections: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|c| !c.first_pages || c.other)
        .map(|c| (c.startup, c.feed))
        .collect();
    let fixed = |startup: &str| {
        [
            "enable_seqscan=off",
            "enable_sort=off",
            "enable_hashjoin=off",
            "jit=off",
            "plan_cache_mode=force_generic_plan",
        ]
        .iter()
        .all(|o| startup.contains(o))
    };
    let feed: Vec<_> = connections.iter().filter(|c| c.1).collect();
    assert!(!feed.is_empty(), "no connection sent the feed's page");
    for (startup, _) in &feed {
        assert!(
            fixed(startup),
            "a feed connection plans freely: {startup:?}"
        );
    }
    // The group commit's connections allow only nested loops too, but sort freely; every
    // other connection (read models' SQL among them) plans as the server chooses.
    let group = |startup: &str| {
        startup.contains("enable_hashjoin=off") && !startup.contains("enable_sort=off")
    };
    for (startup, _) in connections.iter().filter(|c| !c.1 && !group(&c.0)) {
        assert!(
            !startup.contains("enable_seqscan=off"),
            "another connection has the feed's settings: {startup:?}"
        );
    }
}

/// Streams `name(0..count)`, stream k with `k + extra` events.
async fn write_streams(
    store: &PgStore,
    name: &impl Fn(usize) -> StreamName,
    count: usize,
    extra: usize,
) {
    for k in 0..count {
        let events = (0..k + extra)
            .map(|i| EventData::new("Added", format!(r#"{{"k":{k},"i":{i}}}"#).into_bytes()))
            .collect();
        store
            .append(&name(k), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
}

/// The streams the grouped-read tests read: `GROUPED` streams of `name`, stream k with
/// k + 3 events (versions 0 to k + 2); then 0 a tombstone, 1 starting at version 3, 2
/// keeping its last 2 events.
async fn grouped_read_streams(store: &PgStore, name: &dyn Fn(usize) -> StreamName) {
    use annals::{DeleteMode, Retention, RetentionScope, Version};
    write_streams(store, &name, GROUPED, 3).await;
    store
        .delete_stream(&name(0), ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    store.truncate_before(&name(1), Version(3)).await.unwrap();
    store
        .set_retention(&RetentionScope::Stream(name(2)), Retention::max_count(2))
        .await
        .unwrap();
}

/// How many streams [`grouped_read_streams`] writes.
const GROUPED: usize = 24;

/// The versions each of `reads` (of streams named `{prefix}{k}`) was answered, by k, after
/// checking that stream 0, a tombstone, was answered an error.
fn shown_by_stream<'a>(
    prefix: &str,
    reads: &'a [(StreamName, annals::ReadStream)],
    got: Vec<annals::Result<Vec<annals::RecordedEvent>>>,
) -> Vec<(usize, &'a annals::ReadStream, Vec<u64>)> {
    let mut shown = Vec::new();
    for ((stream, options), got) in reads.iter().zip(got) {
        let k: usize = stream.as_str()[prefix.len()..].parse().unwrap();
        if k == 0 {
            assert!(
                matches!(got, Err(annals::Error::StreamDeleted { .. })),
                "a tombstone: {got:?}"
            );
            continue;
        }
        let versions = got.unwrap().iter().map(|e| e.stream_version).collect();
        shown.push((k, options, versions));
    }
    shown
}

/// Runs `reads` at once on `store`; asserts they went into one or two groups of the
/// `annals_pg_grouped_reads` histogram of `schema`, all counted, in at most two statements
/// through `proxy`; answers each read's result.
async fn read_together(
    proxy: &Proxy,
    store: &PgStore,
    schema: &str,
    reads: &[(StreamName, annals::ReadStream)],
) -> Vec<annals::Result<Vec<annals::RecordedEvent>>> {
    use annals::EventStoreExt;
    let recorded = annals_testkit::metrics::recorded();
    let grouped = || recorded.histogram(&format!("annals_pg_grouped_reads{{schema={schema}}}"));
    let before = proxy.count();
    let (groups_before, reads_before) = grouped();
    let got = futures::future::join_all(
        reads
            .iter()
            .map(|(stream, options)| store.read_stream_vec(stream, *options)),
    )
    .await;
    let statements = proxy.count() - before;
    // The metric tells how many reads each group carried.
    let (groups, grouped_reads) = grouped();
    assert_eq!(grouped_reads - reads_before, reads.len() as f64);
    assert!(
        (1..=2).contains(&(groups - groups_before)),
        "{} groups",
        groups - groups_before
    );
    // Started together, they are read together: the first reader to get a slot lets the
    // others join before it takes the queue (without that: itself alone, the second
    // likewise, then the rest).
    assert!(
        statements <= 2,
        "{statements} statements for {} reads started together",
        reads.len()
    );
    got
}

/// Concurrent catch-ups (forward reads from past version 0, what deciders read on their
/// cached states) are read together, fewer statements than reads, and each caller gets its
/// own stream's page as a read of its own would show it: from its version, truncation and
/// retention applied, a tombstone an error, a missing stream empty, a limit kept.
#[tokio::test]
async fn concurrent_catch_ups_are_read_together_each_with_its_own_page() {
    use annals::{EventStoreExt, ReadStream, Version};
    let (proxy, store, schema) = counted_store_in().await;
    let name = |k: usize| StreamName::new(format!("Catch-{k}")).unwrap();
    // Stream 0 is a tombstone; 1 starts at version 3; 2 keeps its last 2 events.
    grouped_read_streams(&store, &name).await;
    // What each read asks: stream k from version 1 + k % 3, stream 5 at most 2 events, and
    // one stream that does not exist.
    let mut reads: Vec<(StreamName, ReadStream)> = (0..GROUPED)
        .map(|k| {
            let options = ReadStream::forward_from(Version(1 + k as u64 % 3));
            let options = if k == 5 { options.limit(2) } else { options };
            (name(k), options)
        })
        .collect();
    reads.push((name(99), ReadStream::forward_from(Version(4))));
    // Prepared once before counting.
    store
        .read_stream_vec(&name(3), ReadStream::forward_from(Version(1)))
        .await
        .unwrap();
    let got = read_together(&proxy, &store, &schema, &reads).await;
    for (k, options, got) in shown_by_stream("Catch-", &reads, got) {
        let from = options.from.unwrap().get();
        let want: Vec<u64> = match k {
            99 => vec![],
            1 => (from.max(3)..4).collect(),
            2 => (from.max(3)..5).collect(),
            5 => (from..from + 2).collect(),
            k => (from..k as u64 + 3).collect(),
        };
        assert_eq!(got, want, "stream {k} from {from}");
    }
    // A catch-up alone is still one statement.
    let before = proxy.count();
    let alone = store
        .read_stream_vec(&name(4), ReadStream::forward_from(Version(6)))
        .await
        .unwrap();
    assert_eq!(alone.len(), 1);
    assert_eq!(proxy.count() - before, 1);
}

/// Appends started together go in one group commit (or two: one may go ahead), and the
/// `annals_pg_group_commit_appends` histogram tells how many appends each group carried.
#[tokio::test]
async fn appends_started_together_are_committed_together_and_counted() {
    let recorded = annals_testkit::metrics::recorded();
    let (proxy, store, schema) = counted_store_in().await;
    let groups = || {
        recorded.histogram(&format!(
            "annals_pg_group_commit_appends{{schema={schema}}}"
        ))
    };
    let name = |k: usize| StreamName::new(format!("Together-{k}")).unwrap();
    let event = || vec![EventData::new("E", br#"{"n":1}"#.to_vec())];
    // The group statement prepared before counting: one group of one.
    store
        .append(&name(99), ExpectedVersion::NoStream, event())
        .await
        .unwrap();
    assert_eq!(groups(), (1, 1.0));
    let streams: Vec<StreamName> = (0..16).map(name).collect();
    // Statements on the group connection (the change hints' connection, opened meanwhile,
    // sends one of its own).
    let group_statements = || -> u64 {
        proxy
            .seen()
            .iter()
            .filter(|s| s.group)
            .map(|s| s.statements)
            .sum()
    };
    let before = group_statements();
    let written = futures::future::join_all(
        streams
            .iter()
            .map(|stream| store.append(stream, ExpectedVersion::NoStream, event())),
    )
    .await;
    for (k, w) in written.into_iter().enumerate() {
        assert_eq!(w.unwrap().version.get(), 1, "stream {k}");
    }
    let statements = group_statements() - before;
    let (count, appends) = groups();
    assert_eq!(appends, 17.0, "every append counted once");
    assert!(
        (2..=3).contains(&count) && statements + 1 == count,
        "{count} groups (the first of them before), {statements} statements"
    );
}

/// A group of catch-ups whose statement fails (here one stream row holds a max age no
/// time can be computed from, as a row written by hand or by an older version might) is
/// read again one stream at a time: the bad stream's reader gets the error, every other
/// reader its own page.
#[tokio::test]
async fn a_failed_group_of_catch_ups_answers_each_read_on_its_own() {
    use annals::{EventStoreExt, ReadStream, Version};
    let (proxy, store, schema) = counted_store_in().await;
    let name = |k: usize| StreamName::new(format!("Fallback-{k}")).unwrap();
    let streams = 12;
    write_streams(&store, &name, streams, 2).await;
    // Prepared once before counting.
    store
        .read_stream_vec(&name(1), ReadStream::forward_from(Version(1)))
        .await
        .unwrap();
    let admin = postgres::connect(&postgres::shared().url).await;
    admin
        .execute(
            &format!("UPDATE {schema}.streams SET max_age = 9223372036854775807 WHERE name = $1"),
            &[&name(3).as_str()],
        )
        .await
        .unwrap();
    let before = proxy.count();
    let got = futures::future::join_all((0..streams).map(|k| {
        let (store, stream) = (&store, name(k));
        async move {
            store
                .read_stream_vec(&stream, ReadStream::forward_from(Version(1)))
                .await
        }
    }))
    .await;
    let statements = proxy.count() - before;
    for (k, got) in got.into_iter().enumerate() {
        match k {
            3 => assert!(
                matches!(&got, Err(annals::Error::Backend { .. })),
                "the bad stream's own error: {got:?}"
            ),
            k => {
                let versions: Vec<u64> = got
                    .unwrap_or_else(|e| panic!("stream {k}: {e}"))
                    .iter()
                    .map(|e| e.stream_version)
                    .collect();
                assert_eq!(
                    versions,
                    (1..k as u64 + 2).collect::<Vec<_>>(),
                    "stream {k}"
                );
            }
        }
    }
    // At least one group was tried: more statements than reads (the group's, then each
    // read's own).
    assert!(
        statements > streams as u64,
        "{statements} statements for {streams} catch-ups: no group was tried"
    );
}

/// A group as large as the one in flight is sent behind it on the group connection, before
/// that one is answered: with the first group held by a row lock taken elsewhere, the proxy
/// sees the second group's statement go out. Each caller then gets its own answer, and the
/// groups commit in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_is_sent_while_the_first_waits_and_each_caller_gets_its_own_answer() {
    use annals::{AllPage, Filter, Position};
    use annals_testkit::eventually;
    let (proxy, store, schema) = counted_store_in().await;
    let name = |s: &str| StreamName::new(format!("Pipe-{s}")).unwrap();
    let event = || vec![EventData::new("E", br#"{"n":1}"#.to_vec())];
    // The stream to hold, and the group statement prepared.
    store
        .append(&name("held"), ExpectedVersion::Any, event())
        .await
        .unwrap();
    let group_statements = || -> u64 {
        let seen = proxy.seen();
        let groups: Vec<&Seen> = seen.iter().filter(|s| s.group).collect();
        assert_eq!(groups.len(), 1, "one group connection");
        groups[0].statements
    };
    let until = |want: u64, what: &'static str| {
        eventually(what, std::time::Duration::from_secs(30), move || {
            std::future::ready((group_statements() >= want).then_some(()))
        })
    };
    let admin = postgres::connect(&postgres::shared().url).await;
    admin.batch_execute("BEGIN").await.unwrap();
    admin
        .execute(
            &format!("SELECT 1 FROM {schema}.streams WHERE name = $1 FOR UPDATE"),
            &[&name("held").as_str()],
        )
        .await
        .unwrap();
    let before = group_statements();
    let spawn = |stream: StreamName, expected: ExpectedVersion| {
        let store = store.clone();
        tokio::spawn(async move { store.append(&stream, expected, event()).await })
    };
    let held = spawn(name("held"), ExpectedVersion::Any);
    until(before + 1, "the first group to be sent").await;
    let fresh = spawn(name("fresh"), ExpectedVersion::NoStream);
    let refused = spawn(name("other"), ExpectedVersion::Exact(annals::Version(5)));
    // The first group waits for the lock; the one behind it went out meanwhile.
    until(before + 2, "a second group sent behind the one waiting").await;
    assert!(!held.is_finished() && !fresh.is_finished());
    admin.batch_execute("COMMIT").await.unwrap();
    let held = held.await.unwrap().expect("the held stream's append");
    let fresh = fresh.await.unwrap().expect("the new stream's append");
    match refused.await.unwrap() {
        Err(annals::Error::WrongExpectedVersion { .. }) => {}
        other => panic!("an append at version 5 of a missing stream: {other:?}"),
    }
    assert_eq!((held.version.get(), fresh.version.get()), (2, 1));
    // Other tests' transactions on the shared server may hold the feed's horizon back.
    store.await_visible().await.unwrap();
    let AllPage { events, .. } = store
        .read_all(Position::START, &Filter::all(), 100)
        .await
        .unwrap();
    let order: Vec<(&str, u64)> = events
        .iter()
        .map(|e| (e.stream.as_str(), e.stream_version))
        .collect();
    assert_eq!(
        order,
        [("Pipe-held", 0), ("Pipe-held", 1), ("Pipe-fresh", 0)],
        "the held group commits first"
    );
}

/// Concurrent tail reads (a stream's last few events, newest first) are read together,
/// fewer statements than reads, and each caller gets its own stream's tail as a read of its
/// own would show it: below its version, truncation and retention applied, a tombstone an
/// error, a missing stream empty, its limit kept. An empty tail alone is one statement.
#[tokio::test]
async fn concurrent_tail_reads_are_read_together_each_with_its_own_tail() {
    use annals::{EventStoreExt, ReadStream, Version};
    let (proxy, store, schema) = counted_store_in().await;
    let name = |k: usize| StreamName::new(format!("Tail-{k}")).unwrap();
    // Stream k holds k + 3 events (versions 0 to k + 2); stream 0 is a tombstone; 1 starts
    // at version 3; 2 keeps its last 2 events.
    grouped_read_streams(&store, &name).await;
    // Stream k's last 1 + k % 5 events; every third read below version k (so from the
    // middle of the stream); one stream that does not exist.
    let mut reads: Vec<(StreamName, ReadStream)> = (0..GROUPED)
        .map(|k| {
            let options = match k % 3 {
                0 => ReadStream::backward_from(Version(k as u64)),
                _ => ReadStream::backward(),
            };
            (name(k), options.limit(1 + k % 5))
        })
        .collect();
    reads.push((name(99), ReadStream::backward().limit(10)));
    // Prepared once before counting.
    store
        .read_stream_vec(&name(3), ReadStream::backward().limit(2))
        .await
        .unwrap();
    let got = read_together(&proxy, &store, &schema, &reads).await;
    for (k, options, got) in shown_by_stream("Tail-", &reads, got) {
        // Versions shown: from the first one shown to the last below the read's bound.
        let first_shown = match k {
            1 => 3,
            2 => 3,
            _ => 0,
        };
        let below = options.from.map_or(k as u64 + 3, Version::get);
        let limit = options.limit.unwrap();
        let want: Vec<u64> = match k {
            99 => vec![],
            _ => (first_shown..below).rev().take(limit).collect(),
        };
        assert_eq!(got, want, "stream {k} below {below}, at most {limit}");
    }
    // A tail alone, of a stream with nothing to show, is still one statement.
    store.truncate_before(&name(5), Version(8)).await.unwrap();
    let before = proxy.count();
    let alone = store
        .read_stream_vec(&name(5), ReadStream::backward().limit(3))
        .await
        .unwrap();
    assert!(alone.is_empty(), "{alone:?}");
    assert_eq!(proxy.count() - before, 1);
    // Tails of a deleted stream, alone and with others, are errors.
    let alone = store
        .read_stream_vec(&name(0), ReadStream::backward().limit(3))
        .await;
    assert!(
        matches!(alone, Err(annals::Error::StreamDeleted { .. })),
        "{alone:?}"
    );
}

//! Crypto-shredding end to end: customers with personal fields are decided through a
//! `Shredding` store and projected; `annals forget` destroys one customer's key. Then the
//! plaintext of that customer's personal fields is nowhere in the SQLite file (WAL
//! included) or in a `pg_dump` of the store, searched byte for byte; the decider and the
//! projection still load every stream; the other customer's data reads as before.

use std::sync::Arc;

use annals::{
    Category, Domain, EventStore, EventStoreExt, JsonCodec, Personal, ProjectionId, Projector,
    ProjectorError, ReadModelStore, ReadStream, RecordedEvent, Shredding, SqlKeys, SqlTx,
    StreamName, SubjectKeys, Version,
};
use serde::{Deserialize, Serialize};

use crate::ops::on;
use crate::succeeded;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Registered {
        name: Personal<String>,
        email: Personal<String>,
        plan: String,
        /// Past 64 bits: kept exactly beside the personal fields.
        credit: u128,
    },
}

struct Customers;

impl Domain for Customers {
    type Event = Event;
    type State = Option<(Personal<String>, Personal<String>, String, u128)>;
    fn initial() -> Self::State {
        None
    }
    fn evolve(_: Self::State, event: &Event) -> Self::State {
        let Event::Registered {
            name,
            email,
            plan,
            credit,
        } = event;
        Some((name.clone(), email.clone(), plan.clone(), *credit))
    }
}

/// Plans per customer, and whether the email is still known (no personal data kept).
struct Plans;

#[async_trait::async_trait]
impl<R: ReadModelStore> Projector<R> for Plans {
    fn id(&self) -> ProjectionId<'static> {
        ProjectionId::new("plans", 1)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> Result<(), ProjectorError> {
        tx.batch("CREATE TABLE IF NOT EXISTS plans (stream TEXT PRIMARY KEY, plan TEXT NOT NULL, email_known BOOLEAN NOT NULL)")
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
            let Some(Event::Registered { email, plan, .. }) =
                annals::Codec::decode(&JsonCodec::<Event>::new(), e)?
            else {
                continue;
            };
            tx.execute(
                "INSERT INTO plans (stream, plan, email_known) VALUES ($1, $2, $3) \
                 ON CONFLICT (stream) DO UPDATE SET plan = excluded.plan, email_known = excluded.email_known",
                &[stream.into(), plan.into(), (!email.is_forgotten()).into()],
            )
            .await?;
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut R::Tx<'_>, stream: &StreamName) -> Result<(), ProjectorError> {
        tx.execute("DELETE FROM plans WHERE stream = $1", &[stream.into()])
            .await?;
        Ok(())
    }
}

const ANN: [&str; 2] = ["Ann Plaintextname", "ann.plaintext@example.com"];
const BOB: [&str; 2] = ["Bob Othername", "bob.other@example.com"];

/// A shredding store over `store` (keys in its own database) and the customers on it.
fn shredded<S>(store: &S) -> (Arc<Shredding<S>>, Category<Customers>)
where
    S: EventStore + ReadModelStore + Clone,
{
    let keys: Arc<dyn SubjectKeys> = Arc::new(SqlKeys::new(Arc::new(store.clone())));
    let events = Arc::new(Shredding::new(Arc::new(store.clone()), keys));
    let customers =
        Category::<Customers>::new("Customer", events.clone(), JsonCodec::new()).unwrap();
    (events, customers)
}

/// Registers Ann (`c-1`) and Bob (`c-2`) through a shredding store over `store` and
/// projects them.
async fn register<S>(store: &S)
where
    S: EventStore + ReadModelStore + Clone,
{
    let (events, customers) = shredded(store);
    for (id, [name, email]) in [("1", ANN), ("2", BOB)] {
        let subject = format!("c-{id}");
        customers
            .decider(id)
            .unwrap()
            .transact(|_| {
                vec![Event::Registered {
                    name: Personal::new(subject.clone(), name.to_owned()),
                    email: Personal::new(subject.clone(), email.to_owned()),
                    plan: "gold".into(),
                    credit: u128::MAX,
                }]
            })
            .await
            .unwrap();
    }
    // Read back through the shredding store: the plaintext, as decided.
    let state = customers
        .decider("1")
        .unwrap()
        .query(Clone::clone)
        .await
        .unwrap();
    let (name, email, _, credit) = state.unwrap();
    assert_eq!(credit, u128::MAX);
    assert_eq!(name.value().map(String::as_str), Some(ANN[0]));
    assert_eq!(email.value().map(String::as_str), Some(ANN[1]));
    // Read past it: no plaintext at all.
    let raw = store
        .read_stream_vec(
            &StreamName::new("Customer-1").unwrap(),
            ReadStream::forward(),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw[0].data);
    assert!(
        text.contains("$encrypted") && !text.contains(ANN[1]),
        "{text}"
    );
    project(store, &*events).await;
}

async fn project<S, E>(store: &S, events: &E)
where
    S: ReadModelStore,
    E: EventStore + ?Sized,
{
    let plans = Arc::new(Plans);
    store.setup(&plans).await.unwrap();
    for id in ["1", "2"] {
        let stream = StreamName::new(format!("Customer-{id}")).unwrap();
        let read = events
            .read_stream_vec(&stream, ReadStream::forward())
            .await
            .unwrap();
        let version = read.last().map_or(Version(0), |e| e.next_version());
        store
            .replace(&plans, &stream, &read, version)
            .await
            .unwrap();
    }
}

/// After the forget: the decider and the projection load both streams; Ann's personal
/// fields are forgotten, Bob's intact.
async fn after_forget<S>(store: &S)
where
    S: EventStore + ReadModelStore + Clone,
{
    let (events, customers) = shredded(store);
    let ann = customers
        .decider("1")
        .unwrap()
        .query(Clone::clone)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ann.0,
        Personal::Forgotten {
            subject: "c-1".into()
        }
    );
    assert_eq!(
        ann.1,
        Personal::Forgotten {
            subject: "c-1".into()
        }
    );
    assert_eq!(ann.2, "gold", "what is not personal stays");
    assert_eq!(ann.3, u128::MAX, "numbers past 64 bits too");
    let bob = customers
        .decider("2")
        .unwrap()
        .query(Clone::clone)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.1.value().map(String::as_str), Some(BOB[1]));
    project(store, &*events).await;
    let rows = store
        .query("SELECT stream, email_known FROM plans ORDER BY stream", &[])
        .await
        .unwrap();
    let rows: Vec<(String, bool)> = rows
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_bool().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("Customer-1".to_owned(), false),
            ("Customer-2".to_owned(), true)
        ]
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every byte of the SQLite database's files (the file, its WAL and shared memory).
fn sqlite_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        if let Ok(bytes) = std::fs::read(&file) {
            all.extend(bytes);
        }
    }
    all
}

#[test]
fn a_forgotten_subjects_plaintext_is_nowhere_in_sqlite_and_the_streams_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customers.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = annals_sqlite::SqliteStore::open(annals_sqlite::SqliteConfig::new(&path)).unwrap();
    rt.block_on(register(&store));
    let url = format!("sqlite://{}", path.display());
    let out = on(dir.path(), &url, &["forget", "c-1"]);
    assert!(succeeded(&out).contains("key destroyed"));
    let again = on(dir.path(), &url, &["forget", "c-1", "--json"]);
    assert!(
        succeeded(&again).contains(r#""forgotten":false"#),
        "idempotent"
    );
    rt.block_on(after_forget(&store));
    let bytes = sqlite_bytes(&path);
    assert!(!bytes.is_empty());
    for plaintext in ANN.iter().chain(&BOB) {
        assert!(
            !contains(&bytes, plaintext),
            "{plaintext} found in the SQLite files"
        );
    }
    assert!(
        contains(&bytes, "c-1"),
        "the subject id itself is kept (it is not personal)"
    );
}

#[test]
fn a_forgotten_subjects_plaintext_is_nowhere_in_a_pg_dump_and_the_streams_still_load() {
    let (url, config) = crate::ops::pg_target("forget");
    let schema = url.rsplit("annals_schema=").next().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let store = annals_postgres::PgStore::connect(config).await.unwrap();
        store.migrate().await.unwrap();
        register(&store).await;
        store
    });
    let dir = tempfile::tempdir().unwrap();
    let out = on(dir.path(), &url, &["forget", "c-1"]);
    assert!(succeeded(&out).contains("key destroyed"));
    rt.block_on(after_forget(&store));
    let dump = annals_testkit::postgres::shared()
        .dump_schema(&schema)
        .expect("pg_dump");
    assert!(
        contains(&dump, "annals_subject_keys"),
        "the dump holds the key table"
    );
    assert!(contains(&dump, "Customer-1"), "and the events");
    for plaintext in ANN.iter().chain(&BOB) {
        assert!(!contains(&dump, plaintext), "{plaintext} found in the dump");
    }
}

#[test]
fn annals_forget_destroys_a_key_kept_in_a_nats_store() {
    let server = annals_testkit::nats::shared();
    let stream = annals_testkit::nats::stream_name("forget");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let config = annals_nats::NatsConfig::new(&server.url).stream(&stream);
        let store = annals_nats::NatsStore::connect(config).await.unwrap();
        store
            .keys_or_create(&["c-9".to_owned(), "c-10".to_owned()])
            .await
            .unwrap();
        store
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?stream={stream}", server.url);
    let out = on(dir.path(), &url, &["forget", "c-9"]);
    assert!(succeeded(&out).contains("key destroyed"));
    let left = rt
        .block_on(store.keys(&["c-9".to_owned(), "c-10".to_owned()]))
        .unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["c-10"]);
    let memory = on(dir.path(), "memory://", &["forget", "c-9"]);
    crate::ops::failed_saying(&memory, "memory:// keeps no keys");
}

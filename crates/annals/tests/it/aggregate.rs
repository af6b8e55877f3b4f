//! The aggregate/repository API, references checked at write time, and multi-stream
//! transactions across domains and stores.

use std::sync::Arc;

use annals::{
    transact_many, transact_pair, Category, Domain, Error, EventStore, ExpectedVersion, JsonCodec,
    MemoryStore, StreamName, Version,
};
use annals::{Aggregate, Repository};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq)]
struct Account {
    balance: i64,
    closed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    Closed,
}

impl Aggregate for Account {
    type Event = Event;
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited { amount } => self.balance += amount,
            Event::Withdrawn { amount } => self.balance -= amount,
            Event::Closed => self.closed = true,
        }
    }
}

impl Account {
    /// A command: withdraw if the balance allows.
    fn withdraw(root: &mut annals::Root<Account>, amount: i64) -> Result<(), String> {
        if root.state().balance < amount {
            return Err(format!("balance {} < {amount}", root.state().balance));
        }
        root.record(Event::Withdrawn { amount });
        Ok(())
    }
}

fn repo(store: Arc<dyn EventStore>) -> Repository<Account> {
    Repository::new("Account", store, JsonCodec::new()).unwrap()
}

#[tokio::test]
async fn a_repository_loads_records_and_saves() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let repo = repo(store.clone());
    let mut root = repo.load("a").await.unwrap();
    assert_eq!(
        (root.version(), root.state()),
        (Version(0), &Account::default())
    );
    root.record(Event::Deposited { amount: 10 });
    Account::withdraw(&mut root, 4).unwrap();
    assert_eq!(root.state().balance, 6, "recorded events apply at once");
    assert_eq!(root.pending().len(), 2);
    repo.save(&mut root).await.unwrap();
    assert_eq!((root.version(), root.pending().len()), (Version(2), 0));
    let again = repo.load("a").await.unwrap();
    assert_eq!((again.version(), again.state().balance), (Version(2), 6));
    // Saving with nothing recorded writes nothing.
    repo.save(&mut root).await.unwrap();
    assert_eq!(
        store.stream_version(root.stream()).await.unwrap(),
        Version(2)
    );
}

/// A repository on a stream whose events are all hidden (soft-deleted, truncated): a load
/// answers the stream's version, so a save is not refused, and `load_and_save` writes on.
#[tokio::test]
async fn a_repository_saves_on_a_stream_whose_events_are_hidden() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let repo = repo(store.clone());
    for id in ["soft", "cut"] {
        repo.load_and_save(id, |a| a.record(Event::Deposited { amount: 5 }))
            .await
            .unwrap();
        let stream = repo.load(id).await.unwrap().stream().clone();
        repo.load_and_save(id, |a| a.record(Event::Deposited { amount: 1 }))
            .await
            .unwrap();
        if id == "soft" {
            store
                .delete_stream(&stream, ExpectedVersion::Any, annals::DeleteMode::Soft)
                .await
                .unwrap();
        } else {
            store.truncate_before(&stream, Version(2)).await.unwrap();
        }
        let mut root = repo.load(id).await.unwrap();
        assert_eq!(
            (root.version(), root.state()),
            (Version(2), &Account::default()),
            "{id}"
        );
        root.record(Event::Deposited { amount: 7 });
        repo.save(&mut root).await.unwrap();
        assert_eq!(root.version(), Version(3), "{id}");
        repo.load_and_save(id, |a| a.record(Event::Deposited { amount: 2 }))
            .await
            .unwrap();
        let now = repo.load(id).await.unwrap();
        assert_eq!(
            (now.version(), now.state().balance),
            (Version(4), 9),
            "{id}"
        );
    }
}

/// A cached root whose stream is soft-deleted behind the cache's back (as another process
/// would) is not saved: `save` is refused at the version loaded, and `load_and_save` runs
/// the command again on the stream as it now reads, without using up an attempt.
#[tokio::test]
async fn a_root_loaded_before_its_events_were_deleted_is_not_saved() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let category = Category::new("Account", store.clone(), JsonCodec::new())
        .unwrap()
        .with_cache(Arc::new(annals::Cache::new(8)))
        .with_max_attempts(1);
    let repo: Repository<Account> = Repository::of(category);
    repo.load_and_save("d", |a| a.record(Event::Deposited { amount: 5 }))
        .await
        .unwrap();
    let mut stale = repo.load("d").await.unwrap();
    let stream = stale.stream().clone();
    let delete = || {
        futures::executor::block_on(store.delete_stream(
            &stream,
            ExpectedVersion::Any,
            annals::DeleteMode::Soft,
        ))
        .unwrap()
    };
    delete();
    stale.record(Event::Withdrawn { amount: 5 });
    match repo.save(&mut stale).await {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Version(1)),
        other => panic!("a save on deleted events is refused: {other:?}"),
    }
    repo.load_and_save("d", |a| a.record(Event::Deposited { amount: 3 }))
        .await
        .unwrap();
    // Deleted again while the command runs: it runs once more, on no events.
    let mut balances = Vec::new();
    repo.load_and_save("d", |a| {
        balances.push(a.state().balance);
        if balances.len() == 1 {
            delete();
        }
        a.record(Event::Deposited { amount: 1 })
    })
    .await
    .unwrap();
    assert_eq!(balances, [3, 0]);
    let now = repo.load("d").await.unwrap();
    assert_eq!((now.version(), now.state().balance), (Version(3), 1));
}

#[tokio::test]
async fn a_stale_save_is_refused_and_load_and_save_resyncs() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let repo = repo(store.clone());
    let mut first = repo.load("b").await.unwrap();
    let mut second = repo.load("b").await.unwrap();
    first.record(Event::Deposited { amount: 5 });
    second.record(Event::Deposited { amount: 7 });
    repo.save(&mut first).await.unwrap();
    let refused = repo.save(&mut second).await;
    assert!(
        matches!(
            refused,
            Err(Error::WrongExpectedVersion {
                actual: Version(1),
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        store.stream_version(first.stream()).await.unwrap(),
        Version(1)
    );

    // load_and_save reruns the command on the caught-up root after a conflict.
    let mut stale = repo.load("b").await.unwrap();
    stale.record(Event::Deposited { amount: 1 });
    repo.save(&mut stale).await.unwrap();
    let mut calls = Vec::new();
    let outcome = repo
        .load_and_save("b", |root| {
            calls.push(root.state().balance);
            if calls.len() == 1 {
                // A write lands between this attempt's load and its save.
                let store = store.clone();
                let stream = root.stream().clone();
                std::thread::scope(|s| {
                    s.spawn(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap()
                            .block_on(store.append(
                                &stream,
                                ExpectedVersion::Any,
                                vec![annals::EventData::new(
                                    "Deposited",
                                    br#"{"amount":100}"#.to_vec(),
                                )],
                            ))
                            .unwrap();
                    });
                });
            }
            Account::withdraw(root, 5)
        })
        .await
        .unwrap();
    assert_eq!(
        calls,
        vec![6, 106],
        "the command ran again on the caught-up state"
    );
    assert_eq!(outcome, Ok(()));
    let after = repo.load("b").await.unwrap();
    assert_eq!((after.version(), after.state().balance), (Version(4), 101));
}

/// An order referring to a customer stream.
struct Orders;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
}

impl Domain for Orders {
    type Event = OrderEvent;
    type State = Vec<String>;
    fn initial() -> Vec<String> {
        Vec::new()
    }
    fn evolve(mut state: Vec<String>, event: &OrderEvent) -> Vec<String> {
        let OrderEvent::Placed { customer } = event;
        state.push(customer.clone());
        state
    }
}

fn orders(store: Arc<dyn EventStore>) -> Category<Orders> {
    Category::new("Order", store, JsonCodec::new())
        .unwrap()
        .with_references(|e: &OrderEvent| {
            let OrderEvent::Placed { customer } = e;
            vec![StreamName::from_parts("Account", customer).unwrap()]
        })
}

#[tokio::test]
async fn an_event_naming_a_missing_stream_is_refused_and_nothing_written() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let order = orders(store.clone()).decider("o1").unwrap();
    let place = |customer: &str| {
        let customer = customer.to_owned();
        move |_: &Vec<String>| {
            vec![OrderEvent::Placed {
                customer: customer.clone(),
            }]
        }
    };
    let refused = order.transact(place("nobody")).await;
    match refused {
        Err(Error::MissingReference {
            stream,
            event_type,
            referenced,
        }) => {
            assert_eq!(stream.as_str(), "Order-o1");
            assert_eq!(event_type, "Placed");
            assert_eq!(referenced.as_str(), "Account-nobody");
        }
        other => panic!("expected a missing reference, got {other:?}"),
    }
    assert!(Error::MissingReference {
        stream: order.stream().clone(),
        event_type: String::new(),
        referenced: order.stream().clone()
    }
    .is_invalid_input());
    assert_eq!(
        store.stream_version(order.stream()).await.unwrap(),
        Version(0)
    );

    let repo = repo(store.clone());
    repo.load_and_save("alice", |r| r.record(Event::Deposited { amount: 1 }))
        .await
        .unwrap();
    order.transact(place("alice")).await.unwrap();
    assert_eq!(
        store.stream_version(order.stream()).await.unwrap(),
        Version(1)
    );

    // Created in the same transaction counts as existing.
    let accounts: Category<annals::AggregateDomain<Account>> = repo.category().clone();
    let bob = accounts.decider("bob").unwrap();
    transact_pair(&order, &bob, |_, _| {
        (
            (),
            vec![OrderEvent::Placed {
                customer: "bob".into(),
            }],
            vec![Event::Deposited { amount: 3 }],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        store.stream_version(bob.stream()).await.unwrap(),
        Version(1)
    );
    assert_eq!(
        order.load().await.unwrap().state.as_slice(),
        ["alice".to_string(), "bob".to_string()]
    );
}

/// A referenced stream deleted for good (a tombstone) is missing: the write naming it is
/// refused as a missing reference (not as a deletion of the stream written), nothing
/// written.
#[tokio::test]
async fn an_event_naming_a_deleted_stream_is_a_missing_reference() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let repo = repo(store.clone());
    repo.load_and_save("gone", |r| r.record(Event::Deposited { amount: 1 }))
        .await
        .unwrap();
    let gone = StreamName::from_parts("Account", "gone").unwrap();
    store
        .delete_stream(&gone, ExpectedVersion::Any, annals::DeleteMode::Hard)
        .await
        .unwrap();
    let order = orders(store.clone()).decider("o2").unwrap();
    let refused = order
        .transact(|_| {
            vec![OrderEvent::Placed {
                customer: "gone".into(),
            }]
        })
        .await;
    match refused {
        Err(Error::MissingReference { referenced, .. }) => assert_eq!(referenced, gone),
        other => panic!("expected a missing reference, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(order.stream()).await.unwrap(),
        Version(0)
    );
}

#[tokio::test]
async fn a_transaction_across_stores_is_refused_before_reading() {
    let one: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let two: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let a = repo(one.clone()).category().decider("x").unwrap();
    let b = repo(two.clone()).category().decider("y").unwrap();
    let refused = transact_many(&[a.clone_with_load(Default::default()), b], |_| {
        ((), vec![vec![Event::Closed], vec![Event::Closed]])
    })
    .await;
    assert!(
        matches!(refused, Err(Error::InvalidTransaction { .. })),
        "{refused:?}"
    );
    let twice = transact_many(&[a.clone_with_load(Default::default()), a], |_| {
        ((), vec![vec![Event::Closed], vec![Event::Closed]])
    })
    .await;
    assert!(
        matches!(twice, Err(Error::DuplicateStreamInBatch { .. })),
        "{twice:?}"
    );
    assert_eq!(
        one.stream_version(&StreamName::new("Account-x").unwrap())
            .await
            .unwrap(),
        Version(0)
    );
}

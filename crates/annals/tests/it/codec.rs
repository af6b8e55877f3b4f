//! Schema evolution through an explicit upcast from stored contracts to domain events.

use annals::{Codec, EncodeContext, EventData, JsonCodec, RecordedEvent, StreamName, Timestamp};
use serde::{Deserialize, Serialize};

/// What is stored: version 1 of `Renamed` had `name`; version 2 has `first` and `last`.
#[derive(Debug, Serialize, Deserialize)]
enum Stored {
    Renamed {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        first: Option<String>,
        #[serde(default)]
        last: Option<String>,
    },
    Archived,
}

/// The domain's view.
#[derive(Debug, PartialEq)]
enum Domain {
    Renamed { first: String, last: String },
}

fn up(stored: Stored, _: &RecordedEvent) -> Option<Domain> {
    match stored {
        Stored::Renamed {
            first: Some(first),
            last: Some(last),
            ..
        } => Some(Domain::Renamed { first, last }),
        Stored::Renamed { name, .. } => {
            let name = name.unwrap_or_default();
            let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
            Some(Domain::Renamed {
                first: first.into(),
                last: last.into(),
            })
        }
        Stored::Archived => None,
    }
}

fn down(d: &Domain) -> Stored {
    match d {
        Domain::Renamed { first, last } => Stored::Renamed {
            name: None,
            first: Some(first.clone()),
            last: Some(last.clone()),
        },
    }
}

fn recorded(data: EventData) -> RecordedEvent {
    RecordedEvent::new(
        StreamName::new("User-1").unwrap(),
        0,
        annals::backend::position(1),
        Timestamp::now(),
        data,
    )
}

#[test]
fn old_contracts_upcast_and_new_events_round_trip() {
    let codec = JsonCodec::<Stored>::new().upcast(up, down);
    let v1 = recorded(EventData::new(
        "Renamed",
        br#"{"name":"Ada Lovelace"}"#.to_vec(),
    ));
    assert_eq!(
        codec.decode(&v1).unwrap(),
        Some(Domain::Renamed {
            first: "Ada".into(),
            last: "Lovelace".into()
        })
    );
    let archived = recorded(EventData::new("Archived", b"null".to_vec()));
    assert_eq!(
        codec.decode(&archived).unwrap(),
        None,
        "the upcast may drop a contract"
    );
    let unknown = recorded(EventData::new("Deleted", b"{}".to_vec()));
    assert_eq!(codec.decode(&unknown).unwrap(), None);
    let event = Domain::Renamed {
        first: "Grace".into(),
        last: "Hopper".into(),
    };
    let encoded = codec.encode(&event, &EncodeContext::default()).unwrap();
    assert_eq!(encoded.event_type, "Renamed");
    assert_eq!(codec.decode(&recorded(encoded)).unwrap(), Some(event));
    let bad = recorded(EventData::new("Renamed", br#"{"name":5}"#.to_vec()));
    assert!(
        codec.decode(&bad).is_err(),
        "a known type with a bad body is an error, not dropped"
    );
}

#[test]
fn caused_by_sets_causation_and_copies_correlation() {
    let mut cause = recorded(EventData::new("Renamed", b"{}".to_vec()));
    let ctx = EncodeContext::caused_by(&cause);
    assert_eq!(
        (ctx.causation_id, ctx.correlation_id),
        (Some(cause.event_id), Some(cause.event_id))
    );
    let corr = annals::Uuid::now_v7();
    cause.correlation_id = Some(corr);
    let ctx = EncodeContext::caused_by(&cause);
    assert_eq!(
        (ctx.causation_id, ctx.correlation_id),
        (Some(cause.event_id), Some(corr))
    );
}

//! Versions at the edge of `u64`: whatever a store keeps versions in, an expected version
//! no stream can reach is a conflict, and a read from beyond the end is past it.

use std::sync::Arc;

use annals::{AppendAt, EventStore, ExpectedVersion, Filter, Position, ReadStream, Version};

use super::{append, assert_conflict, batch, name, read_everything, versions};

/// Versions beyond any stream's reach (above what a signed 64-bit column holds, and
/// `u64::MAX`): an exact append at one is refused with the stream's actual version, on a
/// new stream and on one with events, and `append_at` answers a conflict with nothing to
/// catch up on; nothing is written. Reading forward from one gives nothing; backward from
/// one gives the whole stream, newest first. The feed read from the highest position
/// there is gives nothing. A limit of `usize::MAX` is no limit, on a stream read and on a
/// feed page (which may still stop short: a page's size is the store's to bound).
pub async fn versions_beyond_any_stream_are_conflicts_and_past_the_end(store: Arc<dyn EventStore>) {
    let s = &*store;
    let (new, old) = (name("Far-new"), name("Far-old"));
    append(s, &old, ExpectedVersion::NoStream, 3).await;
    for far in [i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX] {
        for (stream, actual) in [(&new, 0), (&old, 3)] {
            assert_conflict(
                s.append(stream, ExpectedVersion::Exact(Version(far)), batch(1))
                    .await,
                actual,
            );
            match s.append_at(stream, Version(far), batch(1)).await {
                Ok(AppendAt::Conflict {
                    actual: got,
                    events,
                }) => {
                    assert_eq!(got, Version(actual), "{stream} at {far}");
                    assert!(events.is_empty(), "{stream} at {far}: nothing after it");
                }
                other => panic!("{stream} at {far} is refused: {other:?}"),
            }
        }
        let forward = ReadStream::forward_from(Version(far));
        assert!(versions(s, &old, forward).await.is_empty(), "from {far}");
        let backward = ReadStream::backward_from(Version(far));
        assert_eq!(versions(s, &old, backward).await, [2, 1, 0], "before {far}");
    }
    assert_eq!(s.stream_version(&new).await.unwrap(), Version(0));
    assert_eq!(s.stream_version(&old).await.unwrap(), Version(3));
    assert_eq!(
        read_everything(&store).await.len(),
        3,
        "refusals wrote nothing"
    );
    let last: Position = u128::MAX.to_string().parse().unwrap();
    for filter in [Filter::all(), Filter::category("Far")] {
        let page = s.read_all(last, &filter, 10).await.unwrap();
        assert!(page.events.is_empty(), "nothing after the last position");
    }
    let unbounded = ReadStream {
        limit: Some(usize::MAX),
        ..ReadStream::forward()
    };
    assert_eq!(versions(s, &old, unbounded).await, [0, 1, 2]);
    let unbounded = ReadStream {
        limit: Some(usize::MAX),
        ..ReadStream::backward()
    };
    assert_eq!(versions(s, &old, unbounded).await, [2, 1, 0]);
    for filter in [Filter::all(), Filter::category("Far")] {
        let page = s
            .read_all(Position::START, &filter, usize::MAX)
            .await
            .unwrap();
        let got: Vec<u64> = page.events.iter().map(|e| e.stream_version).collect();
        assert!(!got.is_empty() && [0, 1, 2].starts_with(&got), "{got:?}");
    }
    if s.capabilities().head_snapshots {
        let head = s.read_head(&old, usize::MAX).await.unwrap();
        let got: Vec<u64> = head.events.iter().map(|e| e.stream_version).collect();
        assert_eq!((head.version, got), (Version(3), vec![0, 1, 2]));
    }
}

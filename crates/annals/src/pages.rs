//! A stream read as events and as pages, each from the other: stores that read in pages
//! give their events with [`events_of_pages`]; the default
//! [`EventStore::read_stream_pages`](crate::EventStore::read_stream_pages) gathers a
//! store's events into pages with [`pages_of_events`].

use futures::future::Either;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::error::Result;
use crate::store::READ_PAGE;
use crate::RecordedEvent;

/// The events of a stream of pages, one at a time (a store that reads in pages implements
/// [`EventStore::read_stream`](crate::EventStore::read_stream) with this over its
/// [`read_stream_pages`](crate::EventStore::read_stream_pages)).
pub fn events_of_pages(
    pages: BoxStream<'_, Result<Vec<RecordedEvent>>>,
) -> BoxStream<'_, Result<RecordedEvent>> {
    pages
        .flat_map(|page| match page {
            Ok(events) => Either::Left(stream::iter(events.into_iter().map(Ok))),
            Err(e) => Either::Right(stream::iter([Err(e)])),
        })
        .boxed()
}

/// `events` in pages of at most [`READ_PAGE`], each of the events ready (no waiting for
/// more to fill a page), never empty; an error ends the pages after the events read
/// before it.
pub(crate) fn pages_of_events(
    events: BoxStream<'_, Result<RecordedEvent>>,
) -> BoxStream<'_, Result<Vec<RecordedEvent>>> {
    events
        .try_ready_chunks(READ_PAGE)
        .flat_map(|chunk| match chunk {
            Ok(page) => Either::Left(stream::iter([Ok(page)])),
            Err(stream::TryReadyChunksError(before, e)) => Either::Right(stream::iter(
                (!before.is_empty())
                    .then_some(Ok(before))
                    .into_iter()
                    .chain([Err(e)]),
            )),
        })
        // Nothing after the first error.
        .scan(false, |ended, page| {
            let next = (!*ended).then_some(page);
            *ended = matches!(next, Some(Err(_)));
            std::future::ready(next)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventData, Position, StreamName, Timestamp};

    fn event(v: u64) -> RecordedEvent {
        let s = StreamName::new("Pages-1").unwrap();
        let data = EventData::new("E", v.to_string().into_bytes());
        RecordedEvent::new(
            s,
            v,
            Position::from_raw((v + 1).into()),
            Timestamp::now(),
            data,
        )
    }

    fn versions(pages: &[Result<Vec<RecordedEvent>>]) -> Vec<std::result::Result<Vec<u64>, ()>> {
        pages
            .iter()
            .map(|p| match p {
                Ok(events) => Ok(events.iter().map(|e| e.stream_version).collect()),
                Err(_) => Err(()),
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_keep_every_event_before_an_error() {
        let failed = || crate::Error::backend("test", std::io::Error::other("read failed"));
        let events = stream::iter([Ok(event(0)), Ok(event(1)), Err(failed()), Ok(event(2))]);
        let pages: Vec<_> = pages_of_events(events.boxed()).collect().await;
        assert_eq!(versions(&pages), vec![Ok(vec![0, 1]), Err(())]);
        let first = stream::iter([Err(failed())]);
        let pages: Vec<_> = pages_of_events(first.boxed()).collect().await;
        assert_eq!(
            versions(&pages),
            vec![Err(())],
            "no empty page before an error"
        );
    }

    #[tokio::test]
    async fn pages_and_events_round_trip() {
        let all: Vec<_> = (0..2 * READ_PAGE as u64 + 5).map(event).collect();
        let pages: Vec<_> = pages_of_events(stream::iter(all.clone().into_iter().map(Ok)).boxed())
            .collect()
            .await;
        assert!(pages.iter().all(|p| p
            .as_ref()
            .is_ok_and(|p| !p.is_empty() && p.len() <= READ_PAGE)));
        let flat: Vec<_> = events_of_pages(stream::iter(pages).boxed())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(flat.len(), all.len());
        assert!(flat
            .iter()
            .zip(&all)
            .all(|(a, b)| a.stream_version == b.stream_version));
    }
}

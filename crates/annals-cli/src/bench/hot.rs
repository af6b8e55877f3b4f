//! `annals bench append` case (c): deciders contending on one hot stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{
    Cache, Category, Codec, CodecError, Decider, Domain, EncodeContext, Error, EventData,
    EventStore, RecordedEvent,
};

use super::append::{event, micros, Report};

/// A counter: each command adds one event.
pub(super) struct Hot;

impl Domain for Hot {
    type Event = u64;
    type State = u64;
    fn initial() -> u64 {
        0
    }
    fn evolve(state: u64, _: &u64) -> u64 {
        state + 1
    }
}

/// The bench's events of about `bytes` bytes (`n` is all a decision reads back).
struct HotCodec {
    bytes: usize,
}

impl Codec<u64> for HotCodec {
    fn encode(&self, n: &u64, _: &EncodeContext) -> Result<EventData, CodecError> {
        Ok(event(self.bytes, *n))
    }

    fn decode(&self, event: &RecordedEvent) -> Result<Option<u64>, CodecError> {
        #[derive(serde::Deserialize)]
        struct Body {
            n: u64,
        }
        let body: Body = serde_json::from_slice(&event.data).map_err(|e| CodecError {
            stream: event.stream.to_string(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(body.n))
    }
}

/// The decider of one hot stream, through a category with a cache and the default
/// attempts, kept across the case's turns (and so is its cache).
pub(super) fn hot_stream(
    store: &Arc<dyn EventStore>,
    run: &str,
    bytes: usize,
) -> anyhow::Result<Arc<Decider<Hot>>> {
    let category = Category::<Hot>::new("BenchC", Arc::clone(store), HotCodec { bytes })?
        .with_cache(Arc::new(Cache::new(1_000)));
    Ok(Arc::new(category.decider(run)?))
}

/// `count` tasks run `transact` on `decider`'s stream for `duration`; commands that give
/// up are counted, not retried.
pub(super) async fn deciders(
    decider: &Arc<Decider<Hot>>,
    count: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let name = format!("(c) {count} deciders, 1 event, one stream");
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let decider = Arc::clone(decider);
            let name = name.clone();
            tokio::spawn(async move {
                let mut report = Report::new(name);
                let mut exhausted = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match decider.transact(|n| vec![*n]).await {
                        Ok(()) => {
                            report.events += 1;
                            report.operations += 1;
                            report.latencies.saturating_record(micros(t0));
                        }
                        Err(Error::ResyncExhausted { .. }) => exhausted += 1,
                        Err(e) => return Err(anyhow::Error::new(e)),
                    }
                }
                report.exhausted = Some(exhausted);
                Ok::<_, anyhow::Error>(report)
            })
        })
        .collect();
    let mut total = Report::new(name.as_str());
    total.exhausted = Some(0);
    for t in tasks {
        total.merge(t.await??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

//! The raw JetStream baseline of `annals bench append` on a NATS store: plain publishes of
//! the same payloads, acknowledged, into a scratch stream configured as the store's
//! (file storage, the same replicas, atomic batches allowed): 100-message atomic batches
//! from one client, and single messages from N clients.

use std::time::{Duration, Instant};

use annals_nats::NatsConfig;
use anyhow::Context;
use async_nats::jetstream;

use super::append::{micros, Report};

/// A scratch stream and a connection to publish into it.
pub(super) struct NatsBaseline {
    client: async_nats::Client,
    stream: String,
}

impl NatsBaseline {
    pub(super) async fn create(config: &NatsConfig, run: &str) -> anyhow::Result<Self> {
        let client = config
            .client()
            .await
            .context("connect for the raw baseline")?;
        let stream = format!("annals_bench_raw_{run}");
        let js = jetstream::new(client.clone());
        let _ = js.delete_stream(&stream).await;
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            num_replicas: config.replicas,
            allow_atomic_publish: true,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create the baseline stream")?;
        Ok(Self { client, stream })
    }

    pub(super) async fn run(
        &self,
        per_publish: u64,
        clients: usize,
        duration: Duration,
        bytes: usize,
        part: u32,
    ) -> anyhow::Result<Report> {
        let clients = if per_publish > 1 { 1 } else { clients.max(1) };
        let name = if per_publish == 1 {
            format!("raw baseline, 1 message per publish, {clients} clients")
        } else {
            format!("raw baseline, {per_publish}-message atomic batches, 1 client")
        };
        let started = Instant::now();
        let deadline = started + duration;
        let payload = bytes::Bytes::from(vec![b'x'; bytes]);
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (client, payload) = (self.client.clone(), payload.clone());
                let subject = format!("{}.c{c}", self.stream);
                let name = name.clone();
                tokio::spawn(async move {
                    let mut report = Report::new(name);
                    let mut batch = 0u64;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        batch += 1;
                        let id = format!("b{c}x{batch}p{part}");
                        let ack = if per_publish == 1 {
                            client
                                .request(subject.clone(), payload.clone())
                                .await
                                .context("a baseline publish")?
                        } else {
                            for i in 1..per_publish {
                                let mut h = async_nats::HeaderMap::new();
                                h.insert("Nats-Batch-Id", id.as_str());
                                h.insert("Nats-Batch-Sequence", i.to_string().as_str());
                                client
                                    .publish_with_headers(subject.clone(), h, payload.clone())
                                    .await?;
                            }
                            let mut h = async_nats::HeaderMap::new();
                            h.insert("Nats-Batch-Id", id.as_str());
                            h.insert("Nats-Batch-Sequence", per_publish.to_string().as_str());
                            h.insert("Nats-Batch-Commit", "1");
                            client
                                .request_with_headers(subject.clone(), h, payload.clone())
                                .await
                                .context("a baseline batch commit")?
                        };
                        let text = String::from_utf8_lossy(&ack.payload);
                        anyhow::ensure!(!text.contains("\"error\""), "baseline refused: {text}");
                        report.events += per_publish;
                        report.operations += 1;
                        report.latencies.saturating_record(micros(t0));
                    }
                    Ok::<_, anyhow::Error>(report)
                })
            })
            .collect();
        let mut total = Report::new(name);
        for t in tasks {
            total.merge(t.await.context("a baseline client panicked")??);
        }
        total.elapsed = started.elapsed();
        Ok(total)
    }

    pub(super) async fn remove(&self) {
        let js = jetstream::new(self.client.clone());
        let _ = js.delete_stream(&self.stream).await;
    }
}

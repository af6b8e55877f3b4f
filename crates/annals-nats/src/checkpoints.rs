//! Checkpoints and parked streams in a JetStream key-value bucket: `cp.{group}.{source}`
//! per checkpoint, `pk.{group}.{stream}` per parked stream (updated by compare-and-set on
//! the entry's revision, so concurrent parkers extend one record).

use annals::{
    Checkpoint, CheckpointStore, ParkedStream, Position, Result, StreamName, Timestamp, Version,
};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::{backend, NatsStore};

/// A key-value key for any text: `[A-Za-z0-9_-]` stay, other bytes are `=XX`.
pub(crate) fn key_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn key(group: &str, source: &str) -> String {
    format!("cp.{}.{}", key_part(group), key_part(source))
}

fn parked_key(group: &str, stream: &StreamName) -> String {
    format!("pk.{}.{}", key_part(group), key_part(stream.as_str()))
}

#[derive(Serialize, Deserialize)]
struct Parked {
    group: String,
    stream: String,
    from: u64,
    to: u64,
    attempts: u32,
    first_error: String,
    last_error: String,
    parked_at: i64,
    updated_at: i64,
}

impl Parked {
    fn of(p: &ParkedStream) -> Self {
        Self {
            group: p.group.clone(),
            stream: p.stream.to_string(),
            from: p.from.get(),
            to: p.to.get(),
            attempts: p.attempts,
            first_error: p.first_error.clone(),
            last_error: p.last_error.clone(),
            parked_at: p.parked_at.unix_micros(),
            updated_at: p.updated_at.unix_micros(),
        }
    }

    fn record(self) -> Result<ParkedStream> {
        Ok(ParkedStream {
            stream: StreamName::new(self.stream).map_err(backend)?,
            group: self.group,
            from: Version(self.from),
            to: Version(self.to),
            attempts: self.attempts,
            first_error: self.first_error,
            last_error: self.last_error,
            parked_at: Timestamp::from_unix_micros(self.parked_at),
            updated_at: Timestamp::from_unix_micros(self.updated_at),
        })
    }
}

impl NatsStore {
    /// The value and revision of `key` in the key-value bucket as the bucket's leader has
    /// it; `None` when absent, deleted or purged. The bucket's own `get` may be answered by
    /// a replica that has not applied this client's last write yet (direct get): a
    /// checkpoint just committed would load as the one before, a key just created as absent.
    pub(crate) async fn kv_get(&self, key: &str) -> Result<Option<(bytes::Bytes, u64)>> {
        let kv = &self.inner.checkpoints;
        let subject = format!("{}{key}", kv.prefix);
        let found = crate::read::answered(self.inner.config.timeout, || {
            kv.stream.get_last_raw_message_by_subject(&subject)
        })
        .await;
        Ok(crate::read::leader_answer(found)?.and_then(|m| {
            let operation = m.headers.get("KV-Operation").map(|v| v.as_str());
            let deleted = matches!(operation, Some("DEL" | "PURGE"));
            (!deleted).then_some((m.payload, m.sequence))
        }))
    }

    /// `work`, a write to the store's key-value bucket, or the server's refusal of this
    /// user's writes there as soon as it comes (see [`crate::send::unless_refused`]): the
    /// server drops a message to a subject its user may not publish to and says so only out
    /// of band, so the write would otherwise wait for its timeout, and a compare-and-set
    /// loop for one timeout per try.
    pub(crate) async fn kv_write<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.connected(what)?;
        let kv = &self.inner.checkpoints;
        // Refusals quote the subject: the bucket's, as its own calls write to it.
        let quoted = format!("\"{}", kv.put_prefix.as_ref().unwrap_or(&kv.prefix));
        let refused_here = |text: &str| text.contains(quoted.as_str());
        crate::send::unless_refused(&mut self.refusals(), refused_here, what, work).await
    }

    /// Deletes `key` (or purges it: its older entries go too), only while it is at
    /// `revision` when one is given, as the bucket's own calls do, and notes the marker's
    /// revision for later reads through [`NatsStore::latest`] (the bucket's calls do not
    /// say where they wrote): a lease released, a member gone or a stream unparked does not
    /// show again in this client's next read from a lagging replica.
    pub(crate) async fn kv_remove(
        &self,
        key: &str,
        purge: bool,
        revision: Option<u64>,
    ) -> Result<()> {
        use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_ROLLUP};
        let kv = &self.inner.checkpoints;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", if purge { "PURGE" } else { "DEL" });
        if purge {
            headers.insert(NATS_ROLLUP, "sub");
        }
        if let Some(revision) = revision {
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        // The subject the bucket's own calls write to.
        let prefix = kv.put_prefix.as_ref().unwrap_or(&kv.prefix);
        let publish = async {
            self.inner
                .js
                .publish_with_headers(format!("{prefix}{key}"), headers, bytes::Bytes::new())
                .await
                .map_err(backend)?
                .await
                .map_err(backend)
        };
        let ack = self.kv_write("removing a key", publish).await?;
        self.wrote_kv(ack.sequence);
        Ok(())
    }

    /// The values of the parked records under `prefix`, for more than one multi-last get
    /// answers: the subjects as the stream's leader lists them (a key listing's consumer may
    /// run on a replica that lacks this client's last park), each read from the leader, 64
    /// at a time.
    async fn parked_values_listed(&self, prefix: &str) -> Result<Vec<bytes::Bytes>> {
        let kv = &self.inner.checkpoints;
        let subjects = kv
            .stream
            .info_with_subjects(format!("{}{prefix}>", kv.prefix))
            .await
            .map_err(backend)?;
        let found: Vec<Option<(bytes::Bytes, u64)>> = subjects
            .map(|listed| async move {
                let (subject, _) = listed.map_err(backend)?;
                match subject.strip_prefix(kv.prefix.as_str()) {
                    Some(k) => self.kv_get(k).await,
                    None => Ok(None),
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .flatten()
            .map(|(value, _)| value)
            .collect())
    }
}

#[derive(Serialize, Deserialize)]
struct Value {
    group: String,
    source: String,
    position: String,
}

fn position_of(text: &str) -> Result<Position> {
    let raw: u128 = text
        .parse()
        .map_err(|_| backend(format!("checkpoint position {text:?} is not a number")))?;
    Ok(annals::backend::position(raw))
}

#[async_trait]
impl CheckpointStore for NatsStore {
    async fn load(&self, group: &str, source: &str) -> Result<Option<Position>> {
        match self.kv_get(&key(group, source)).await? {
            None => Ok(None),
            Some((bytes, _)) => {
                let v: Value = serde_json::from_slice(&bytes).map_err(backend)?;
                position_of(&v.position).map(Some)
            }
        }
    }

    async fn commit(&self, group: &str, source: &str, position: Position) -> Result<()> {
        let value = Value {
            group: group.to_owned(),
            source: source.to_owned(),
            position: annals::backend::raw_position(position).to_string(),
        };
        let body = serde_json::to_vec(&value).map_err(backend)?;
        let put = async {
            self.inner
                .checkpoints
                .put(key(group, source), body.into())
                .await
                .map_err(backend)
        };
        self.kv_write("the checkpoint", put).await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let mut keys = self.inner.checkpoints.keys().await.map_err(backend)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(backend)?;
            if !k.starts_with("cp.") {
                continue;
            }
            let Some((bytes, _)) = self.kv_get(&k).await? else {
                continue;
            };
            let v: Value = serde_json::from_slice(&bytes).map_err(backend)?;
            out.push(Checkpoint {
                position: position_of(&v.position)?,
                group: v.group,
                source: v.source,
            });
        }
        out.sort_by(|a, b| (&a.group, &a.source).cmp(&(&b.group, &b.source)));
        Ok(out)
    }

    async fn park(&self, parked: &ParkedStream) -> Result<()> {
        let kv = &self.inner.checkpoints;
        let k = parked_key(&parked.group, &parked.stream);
        // Compare-and-set on the entry's revision: a concurrent parker makes us re-read.
        for _ in 0..100 {
            let entry = self.kv_get(&k).await?;
            let (record, revision) = match entry.filter(|(value, _)| !value.is_empty()) {
                Some((value, revision)) => {
                    let mut existing = serde_json::from_slice::<Parked>(&value)
                        .map_err(backend)?
                        .record()?;
                    existing.extend(parked);
                    (existing, revision)
                }
                None => (parked.clone(), 0),
            };
            let body = serde_json::to_vec(&Parked::of(&record)).map_err(backend)?;
            // A refusal ends the loop; a compare-and-set lost to another parker re-reads.
            let written = self
                .kv_write("parking a stream", async {
                    Ok(if revision == 0 {
                        kv.create(&k, body.into()).await.map_err(drop)
                    } else {
                        kv.update(&k, body.into(), revision).await.map_err(drop)
                    })
                })
                .await?;
            if let Ok(revision) = written {
                self.wrote_kv(revision);
                return Ok(());
            }
        }
        Err(backend(format!(
            "parking {} in {}: the record kept changing",
            parked.stream, parked.group
        )))
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        // One multi-last get of the group's records, from a replica that has this client's
        // last park or unpark; past the get's 1,024 entries, every key listed and read from
        // the leader.
        let prefix = match group {
            Some(g) => format!("pk.{}.", key_part(g)),
            None => "pk.".to_owned(),
        };
        let values = match self.latest(std::slice::from_ref(&prefix), None).await {
            Ok(entries) => entries.into_iter().map(|e| e.value).collect(),
            Err(_) => self.parked_values_listed(&prefix).await?,
        };
        let mut out = Vec::new();
        for value in values.iter().filter(|v| !v.is_empty()) {
            let record = serde_json::from_slice::<Parked>(value)
                .map_err(backend)?
                .record()?;
            if group.is_none_or(|g| g == record.group) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| (&a.group, &a.stream).cmp(&(&b.group, &b.stream)));
        Ok(out)
    }

    async fn unpark(&self, group: &str, stream: &StreamName) -> Result<bool> {
        let k = parked_key(group, stream);
        let present = self.kv_get(&k).await?.is_some_and(|(v, _)| !v.is_empty());
        if present {
            self.kv_remove(&k, true, None).await?;
        }
        Ok(present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_distinct() {
        let k = key("g'; --", "src\"ü.x");
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)));
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
    }
}

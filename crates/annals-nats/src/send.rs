//! Sending an append's messages: one message, or one atomic batch, with its headers; the
//! server's acknowledgement read as what it did ([`Published`]).

use annals::{Error, EventData, Result, StreamName};
use async_nats::HeaderMap;
use serde::Deserialize;

use crate::envelope::{self, Place};
use crate::read::START_HEADER;
use crate::write::Published;
use crate::{backend, NatsStore};

#[derive(Debug, Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl NatsStore {
    /// Sends `messages` as one message, or one atomic batch, in order; a message with
    /// `expect` carries its stream's expected last sequence (each stream's first message),
    /// so the server checks every stream before storing any message. With `ids`, each
    /// message carries its event's id as its `Nats-Msg-Id`.
    pub(crate) async fn send(&self, messages: &[Outgoing<'_>], ids: bool) -> Result<Published> {
        // No server answered (the stream has no leader for a moment): nothing was stored,
        // a batch's earlier messages included (a staged batch never committed is dropped),
        // so the whole append is sent again, as a new batch.
        crate::read::until_answered(
            self.inner.config.timeout,
            || {
                format!(
                    "the append (the stream {} has no leader)",
                    self.inner.config.stream
                )
            },
            || self.send_once(messages, ids),
        )
        .await
    }

    /// [`send`](Self::send) once: `None` when no server answered.
    async fn send_once(&self, messages: &[Outgoing<'_>], ids: bool) -> Result<Option<Published>> {
        self.connected("the append")?;
        let client = &self.inner.client;
        // Short ids: every message carries them, and bytes are what a replicated, fsynced
        // stream pays for. A batch id only has to be unique among batches in flight.
        let batch_id = if messages.len() > 1 {
            short_id(&annals::Uuid::now_v7().as_bytes()[10..])
        } else {
            String::new()
        };
        let total = messages.len();
        let single = total == 1;
        let what = || {
            let mut names: Vec<&str> = messages.iter().map(|m| m.stream.as_str()).collect();
            names.dedup();
            names.join(", ")
        };
        // Refusals from now on: one of this append's subjects may be refused.
        let mut refusals = self.refusals();
        let mut built = Vec::with_capacity(total);
        // The server's message limit, and the stream's own when it has a smaller one.
        let max = match self.inner.stream.cached_info().config.max_message_size {
            stream if stream > 0 => client.max_payload().min(stream as usize),
            _ => client.max_payload(),
        };
        for (n, m) in messages.iter().enumerate() {
            let subject = self.inner.subjects.stream(m.stream);
            let mut headers = HeaderMap::new();
            if ids {
                headers.insert("Nats-Msg-Id", msg_id(m.event.event_id).as_str());
            }
            if let Some(after) = m.expect {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    after.to_string().as_str(),
                );
            }
            if !single {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
            }
            if m.marker.is_none() && m.start > 0 {
                headers.insert(START_HEADER, m.start.to_string().as_str());
            }
            let body = match m.marker {
                Some(marker) => envelope::encode_marker(marker),
                None => envelope::encode(m.event, m.place, ids),
            };
            if n + 1 == total && !single {
                headers.insert("Nats-Batch-Commit", "1");
            }
            // Refused before anything is sent: the server takes no message larger than its
            // max_payload (headers and the event's envelope included), nor the stream one
            // larger than its max_msg_size.
            let size = header_bytes(&headers) + body.len();
            if size > max && m.marker.is_none() {
                let data = m.event.data.len() + m.event.metadata.as_ref().map_or(0, Vec::len);
                return Err(Error::InvalidEvent {
                    stream: m.stream.clone(),
                    index: messages[..n]
                        .iter()
                        .filter(|o| o.stream == m.stream && o.marker.is_none())
                        .count(),
                    reason: annals::InvalidEvent::TooLarge {
                        size: data,
                        limit: data.saturating_sub(size - max),
                    },
                });
            }
            built.push((subject, headers, body));
        }
        let mut reply = None;
        for (n, (subject, headers, body)) in built.into_iter().enumerate() {
            if n + 1 == total {
                let request = async {
                    tokio::time::timeout(
                        self.inner.config.timeout,
                        client.request_with_headers(subject, headers, body.into()),
                    )
                    .await
                    .map_err(|_| backend(format!("append to {} timed out", what())))
                };
                // Only on a refusal: is one of this append's subjects, quoted, in it?
                let refused_here = |text: &str| {
                    messages.iter().any(|m| {
                        let subject = self.inner.subjects.stream(m.stream);
                        text.contains(&format!("\"{subject}\""))
                    })
                };
                let answer = unless_refused(
                    &mut refusals,
                    refused_here,
                    &format!("append to {}", what()),
                    request,
                )
                .await?;
                reply = Some(match answer {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        return Ok(None)
                    }
                    answer => answer.map_err(backend)?,
                });
            } else {
                client
                    .publish_with_headers(subject, headers, body.into())
                    .await
                    .map_err(backend)?;
            }
        }
        let reply = reply.ok_or_else(|| backend("an append with no events"))?;
        let ack: Ack = serde_json::from_slice(&reply.payload)
            .map_err(|e| backend(format!("unreadable publish acknowledgement: {e}")))?;
        match ack.error {
            None if ack.duplicate => Ok(Some(Published::Duplicate(Some(ack.seq)))),
            None => {
                // A batch's messages are stored at consecutive sequences ending at the ack's.
                let mut written = self.inner.written.lock().unwrap_or_else(|p| p.into_inner());
                for (n, m) in messages.iter().enumerate() {
                    let back = (total - 1 - n) as u64;
                    written.note(m.stream, ack.seq.saturating_sub(back));
                }
                Ok(Some(Published::Stored(ack.seq)))
            }
            Some(e) => match e.err_code {
                10071 | 10164 => Ok(Some(Published::Moved)),
                10201 => Ok(Some(Published::Duplicate((ack.seq > 0).then_some(ack.seq)))),
                10158 => Ok(Some(Published::InFlight)),
                _ => Err(Error::backend(
                    "nats",
                    format!(
                        "append to {} refused: {} ({})",
                        what(),
                        e.description,
                        e.err_code
                    ),
                )),
            },
        }
    }
}

/// The bytes `headers` take in a message (as the client counts them against the
/// server's max_payload): `NATS/1.0`, a line per value, and the blank line.
fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// Bytes as unpadded URL-safe base64.
fn short_id(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `Nats-Msg-Id` of an event: its id in 22 characters (the server's duplicate window
/// compares them).
pub(crate) fn msg_id(id: annals::Uuid) -> String {
    short_id(id.as_bytes())
}

/// The event id a `Nats-Msg-Id` carries, if it is one [`msg_id`] wrote.
pub(crate) fn id_of_msg_id(msg_id: &str) -> Option<annals::Uuid> {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(msg_id, &mut bytes)
        .ok()?;
    (n == 16 && msg_id.len() == 22).then(|| annals::Uuid::from_bytes(bytes))
}

/// One message of a publish.
pub(crate) struct Outgoing<'a> {
    pub(crate) stream: &'a StreamName,
    pub(crate) event: &'a EventData,
    pub(crate) place: Place,
    /// The stream's expected last sequence (on its first message of the publish).
    pub(crate) expect: Option<u64>,
    /// Sent as this marker instead of the event (whose id it keeps).
    pub(crate) marker: Option<crate::envelope::Marker>,
    /// The stream's start, carried by an event's message when above 0 (`START_HEADER`).
    pub(crate) start: u64,
}

impl NatsStore {
    /// The refusals the server sends this client from now on.
    pub(crate) fn refusals(&self) -> crate::Refusals {
        let mut refusals = self.inner.refusals.clone();
        refusals.borrow_and_update();
        refusals
    }
}

/// `work`, or, should the server first refuse this user a subject that `refused_here`
/// recognises in its refusal (subjects are quoted in it), that refusal instead of waiting
/// for `work`'s timeout: not transient, since asking again is refused again.
pub(crate) async fn unless_refused<T>(
    refusals: &mut crate::Refusals,
    refused_here: impl Fn(&str) -> bool,
    what: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        done = work => done,
        refusal = refused(refusals, refused_here) => Err(annals::Error::backend(
            "nats",
            format!("{what} refused by the server: {refusal} (this user may not publish there; nothing was written)"),
        )),
    }
}

/// The first refusal, from now on, that `matches` (subjects are quoted in it); pending
/// forever when none comes.
async fn refused(
    refusals: &mut crate::Refusals,
    matches: impl Fn(&str) -> bool,
) -> std::sync::Arc<str> {
    loop {
        if refusals.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(text) = refusals.borrow_and_update().clone() {
            if matches(&text) {
                return text;
            }
        }
    }
}

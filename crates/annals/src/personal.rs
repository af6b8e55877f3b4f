//! Personal data and crypto-shredding: fields a domain marks as personal are stored
//! encrypted with a key per data subject; forgetting the subject destroys its key, and its
//! fields then read as [`Personal::Forgotten`], while events, streams and everything else
//! stay as they were.
//!
//! A domain wraps each personal field in [`Personal`]: serde writes it as
//! `{"$personal": {"subject": S, "value": V}}`. A store wrapped in
//! [`Shredding`](crate::Shredding) replaces each such object, before anything is stored, with
//! `{"$encrypted": {"subject": S, "nonce": N, "data": D}}` (XChaCha20-Poly1305 under the
//! subject's key, the subject as associated data), in event data, metadata and snapshots;
//! on every read it puts the plaintext back, or `{"$forgotten": {"subject": S}}` when the
//! subject's key is gone. So the plaintext of a personal field never reaches the store, and
//! after [`SubjectKeys::forget`] it cannot be recovered from anything the store kept.
//!
//! The nonce is derived from the event id and the field's place in the event, so an exact
//! retry of an append encrypts to the same bytes (and is recognised as a retry).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Result;

/// The key of one data subject.
pub type SubjectKey = [u8; 32];

/// A personal field of a data subject: its value, or nothing once the subject was
/// forgotten (see the [module](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Personal<T> {
    /// The value, readable.
    Known {
        /// Whose data it is (an id, not itself personal: it stays readable).
        subject: String,
        /// The value.
        value: T,
    },
    /// The subject was forgotten (or the data is read without its key).
    Forgotten {
        /// Whose data it was.
        subject: String,
    },
}

impl<T> Personal<T> {
    /// `value`, personal data of `subject`.
    pub fn new(subject: impl Into<String>, value: T) -> Self {
        Personal::Known {
            subject: subject.into(),
            value,
        }
    }

    /// The value, unless forgotten.
    pub fn value(&self) -> Option<&T> {
        match self {
            Personal::Known { value, .. } => Some(value),
            Personal::Forgotten { .. } => None,
        }
    }

    /// Whose data it is.
    pub fn subject(&self) -> &str {
        match self {
            Personal::Known { subject, .. } | Personal::Forgotten { subject } => subject,
        }
    }

    /// Whether the subject was forgotten.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Personal::Forgotten { .. })
    }
}

/// The marker keys.
const PERSONAL: &str = "$personal";
const FORGOTTEN: &str = "$forgotten";
const ENCRYPTED: &str = "$encrypted";

#[derive(Serialize)]
enum WireOut<'a, T> {
    #[serde(rename = "$personal")]
    Personal { subject: &'a str, value: &'a T },
    #[serde(rename = "$forgotten")]
    Forgotten { subject: &'a str },
}

#[derive(Deserialize)]
enum WireIn<T> {
    #[serde(rename = "$personal")]
    Personal { subject: String, value: T },
    #[serde(rename = "$forgotten")]
    Forgotten { subject: String },
    /// Read without the [`Shredding`](crate::Shredding) store: no key, so no value.
    #[serde(rename = "$encrypted")]
    Encrypted { subject: String },
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Personal::Known { subject, value } => WireOut::Personal { subject, value },
            Personal::Forgotten { subject } => WireOut::Forgotten { subject },
        }
        .serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(match WireIn::deserialize(deserializer)? {
            WireIn::Personal { subject, value } => Personal::Known { subject, value },
            WireIn::Forgotten { subject } | WireIn::Encrypted { subject } => {
                Personal::Forgotten { subject }
            }
        })
    }
}

/// Where subjects' keys are kept. Implementations: [`MemoryKeys`] (tests), and
/// [`SqlKeys`](crate::SqlKeys) over any read-model database (a table
/// `annals_subject_keys` in the SQLite file or the PostgreSQL schema).
#[async_trait]
pub trait SubjectKeys: Send + Sync + 'static {
    /// The keys of `subjects` that exist (forgotten or never keyed subjects are absent).
    async fn keys(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>>;

    /// The keys of `subjects`, creating those missing (a concurrent creator's key wins:
    /// every caller gets the same key).
    async fn keys_or_create(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>>;

    /// Destroys `subject`'s key: whether there was one. Its personal fields read as
    /// [`Personal::Forgotten`] from then on. Idempotent.
    async fn forget(&self, subject: &str) -> Result<bool>;
}

/// A fresh random key.
pub fn new_key() -> SubjectKey {
    use chacha20poly1305::aead::Generate;
    let key = chacha20poly1305::Key::generate();
    let mut out = [0u8; 32];
    out.copy_from_slice(key.as_slice());
    out
}

/// Keys kept in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryKeys {
    keys: Mutex<BTreeMap<String, SubjectKey>>,
}

impl MemoryKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SubjectKeys for MemoryKeys {
    async fn keys(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        Ok(subjects
            .iter()
            .filter_map(|s| keys.get(s).map(|k| (s.clone(), *k)))
            .collect())
    }

    async fn keys_or_create(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        Ok(subjects
            .iter()
            .map(|s| (s.clone(), *keys.entry(s.clone()).or_insert_with(new_key)))
            .collect())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        Ok(keys.remove(subject).is_some())
    }
}

/// Whether `bytes` may hold a marker of `kind` (a cheap test before parsing).
pub(crate) fn mentions(bytes: &[u8], kind: &str) -> bool {
    let needle = kind.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The subjects of the `$personal` (`encrypting`) or `$encrypted` objects in `bytes`, when
/// it is JSON holding any.
pub(crate) fn subjects_in(bytes: &[u8], encrypting: bool) -> Option<(Value, BTreeSet<String>)> {
    let kind = if encrypting { PERSONAL } else { ENCRYPTED };
    if !mentions(bytes, kind) {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let mut subjects = BTreeSet::new();
    walk(&value, &mut |object| {
        if let Some(Value::Object(inner)) = single(object, kind) {
            if let Some(Value::String(s)) = inner.get("subject") {
                subjects.insert(s.clone());
            }
        }
    });
    (!subjects.is_empty()).then_some((value, subjects))
}

fn walk(value: &Value, visit: &mut impl FnMut(&serde_json::Map<String, Value>)) {
    match value {
        Value::Object(map) => {
            visit(map);
            map.values().for_each(|v| walk(v, visit));
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, visit)),
        _ => {}
    }
}

/// The value under `key` when `object` is `{key: value}` and nothing else.
fn single<'a>(object: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    (object.len() == 1).then(|| object.get(key)).flatten()
}

fn nonce(event_id: Uuid, index: u32, subject: &str) -> [u8; 24] {
    let mut hash = Sha256::new();
    hash.update(b"annals-personal-v1");
    hash.update(event_id.as_bytes());
    hash.update(index.to_be_bytes());
    hash.update(subject.as_bytes());
    let digest = hash.finalize();
    let mut out = [0u8; 24];
    out.copy_from_slice(&digest[..24]);
    out
}

/// `value` with every `$personal` object encrypted with its subject's key in `keys`.
pub(crate) fn encrypt(
    value: &mut Value,
    event_id: Uuid,
    keys: &HashMap<String, SubjectKey>,
) -> std::result::Result<(), String> {
    let mut index = 0u32;
    encrypt_in(value, event_id, keys, &mut index)
}

fn encrypt_in(
    value: &mut Value,
    event_id: Uuid,
    keys: &HashMap<String, SubjectKey>,
    index: &mut u32,
) -> std::result::Result<(), String> {
    match value {
        Value::Object(map) => {
            let personal = single(map, PERSONAL).and_then(|inner| {
                let subject = inner.get("subject")?.as_str()?.to_owned();
                Some((subject, inner.get("value").cloned().unwrap_or(Value::Null)))
            });
            if let Some((subject, plain)) = personal {
                let key = keys
                    .get(&subject)
                    .ok_or_else(|| format!("no key for subject {subject:?}"))?;
                let n = nonce(event_id, *index, &subject);
                *index += 1;
                let plaintext = serde_json::to_vec(&plain).map_err(|e| e.to_string())?;
                let cipher = XChaCha20Poly1305::new(&(*key).into());
                let sealed = cipher
                    .encrypt(
                        &XNonce::from(n),
                        Payload {
                            msg: &plaintext,
                            aad: subject.as_bytes(),
                        },
                    )
                    .map_err(|_| "encryption failed".to_owned())?;
                let b64 = base64::engine::general_purpose::STANDARD;
                *value = serde_json::json!({ ENCRYPTED: {
                    "subject": subject,
                    "nonce": b64.encode(n),
                    "data": b64.encode(sealed),
                }});
                return Ok(());
            }
            for v in map.values_mut() {
                encrypt_in(v, event_id, keys, index)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| encrypt_in(v, event_id, keys, index)),
        _ => Ok(()),
    }
}

/// `value` with every `$encrypted` object decrypted, or marked forgotten when its subject
/// has no key in `keys` (or the key is not the one it was sealed with).
pub(crate) fn decrypt(value: &mut Value, keys: &HashMap<String, SubjectKey>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(inner)) = single(map, ENCRYPTED) {
                let subject = inner
                    .get("subject")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let opened = keys.get(&subject).and_then(|key| {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let n: [u8; 24] = b64
                        .decode(inner.get("nonce")?.as_str()?)
                        .ok()?
                        .try_into()
                        .ok()?;
                    let sealed = b64.decode(inner.get("data")?.as_str()?).ok()?;
                    let cipher = XChaCha20Poly1305::new(&(*key).into());
                    let plain = cipher
                        .decrypt(
                            &XNonce::from(n),
                            Payload {
                                msg: &sealed,
                                aad: subject.as_bytes(),
                            },
                        )
                        .ok()?;
                    serde_json::from_slice::<Value>(&plain).ok()
                });
                *value = match opened {
                    Some(plain) => {
                        serde_json::json!({ PERSONAL: { "subject": subject, "value": plain } })
                    }
                    None => serde_json::json!({ FORGOTTEN: { "subject": subject } }),
                };
                return;
            }
            map.values_mut().for_each(|v| decrypt(v, keys));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| decrypt(v, keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Customer {
        id: u32,
        email: Personal<String>,
    }

    #[test]
    fn encrypts_deterministically_and_decrypts_or_forgets() {
        let customer = Customer {
            id: 7,
            email: Personal::new("c-7", "ann@example.com".to_owned()),
        };
        let mut value = serde_json::to_value(&customer).unwrap();
        let keys: HashMap<String, SubjectKey> = [("c-7".to_owned(), new_key())].into();
        let id = Uuid::now_v7();
        encrypt(&mut value, id, &keys).unwrap();
        let text = value.to_string();
        assert!(!text.contains("ann@example.com"), "{text}");
        assert!(
            text.contains("$encrypted") && text.contains("c-7"),
            "{text}"
        );
        let mut again = serde_json::to_value(&customer).unwrap();
        encrypt(&mut again, id, &keys).unwrap();
        assert_eq!(again, value, "the same event encrypts to the same bytes");
        // Read without keys: forgotten, not an error.
        let unread: Customer = serde_json::from_value(value.clone()).unwrap();
        assert!(unread.email.is_forgotten());
        let mut opened = value.clone();
        decrypt(&mut opened, &keys);
        assert_eq!(
            serde_json::from_value::<Customer>(opened).unwrap(),
            customer
        );
        let mut forgotten = value.clone();
        decrypt(&mut forgotten, &HashMap::new());
        let read: Customer = serde_json::from_value(forgotten).unwrap();
        assert_eq!(
            read.email,
            Personal::Forgotten {
                subject: "c-7".into()
            }
        );
        // Another key (a subject forgotten, then keyed anew) does not open old data.
        let mut other = value;
        decrypt(&mut other, &[("c-7".to_owned(), new_key())].into());
        assert!(serde_json::from_value::<Customer>(other)
            .unwrap()
            .email
            .is_forgotten());
    }
}

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
use serde_json::value::RawValue;
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

/// The members of a JSON object in the order written, each value as written.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl<'a> Members<'a> {
    /// The value of `key` (the last one, when written twice).
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The string value of `key`.
    fn string(&self, key: &str) -> Option<String> {
        serde_json::from_str(self.get(key)?.get()).ok()
    }
}

type Replace<'r, 'a> = dyn FnMut(&Members<'a>, &mut Sink) -> std::result::Result<bool, String> + 'r;

/// Where [`rewrite`] writes: the new text, or nowhere (a scan for markers).
struct Sink(Option<String>);

impl Sink {
    fn push(&mut self, text: &str) {
        if let Some(out) = &mut self.0 {
            out.push_str(text);
        }
    }
}

/// Writes the JSON value `raw` to `out` as it is written, except for the objects
/// `{kind: {...}}` (the marker's members given) that `replace` writes itself (it says so by
/// returning true). Only objects and arrays whose text mentions `kind` are taken apart, and
/// those are written without insignificant whitespace; numbers, strings and member order
/// are kept as written (a `serde_json::Value` would round numbers past 64 bits and sort
/// members).
fn rewrite<'a>(
    raw: &'a RawValue,
    kind: &str,
    out: &mut Sink,
    replace: &mut Replace<'_, 'a>,
) -> std::result::Result<(), String> {
    rewrite_at(raw, kind, out, replace, 0)
}

/// How deep [`rewrite`] takes values apart: serde_json's own recursion limit.
const MAX_DEPTH: usize = 128;

fn rewrite_at<'a>(
    raw: &'a RawValue,
    kind: &str,
    out: &mut Sink,
    replace: &mut Replace<'_, 'a>,
    depth: usize,
) -> std::result::Result<(), String> {
    let text = raw.get();
    let invalid = |e: serde_json::Error| e.to_string();
    if depth > MAX_DEPTH && text.contains(kind) {
        return Err(format!("nested more than {MAX_DEPTH} deep"));
    }
    match text.as_bytes().first() {
        Some(b'{') if text.contains(kind) => {
            let members: Members<'a> = serde_json::from_str(text).map_err(invalid)?;
            if let [(key, inner)] = members.0.as_slice() {
                if key == kind && inner.get().starts_with('{') {
                    let inner: Members<'a> = serde_json::from_str(inner.get()).map_err(invalid)?;
                    if replace(&inner, out)? {
                        return Ok(());
                    }
                }
            }
            out.push("{");
            for (i, (key, value)) in members.0.iter().enumerate() {
                if i > 0 {
                    out.push(",");
                }
                out.push(&serde_json::to_string(key).map_err(invalid)?);
                out.push(":");
                rewrite_at(value, kind, out, replace, depth + 1)?;
            }
            out.push("}");
        }
        Some(b'[') if text.contains(kind) => {
            let items: Vec<&'a RawValue> = serde_json::from_str(text).map_err(invalid)?;
            out.push("[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(",");
                }
                rewrite_at(item, kind, out, replace, depth + 1)?;
            }
            out.push("]");
        }
        _ => out.push(text),
    }
    Ok(())
}

/// `bytes` as one JSON value, when they are one.
fn parse(bytes: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice(bytes).ok()
}

/// What a body holds of the `$personal` (when encrypting) or `$encrypted` markers.
#[derive(Debug, PartialEq)]
pub(crate) enum Found {
    /// No marker (or only in strings).
    Nothing,
    /// Marker objects, of these subjects.
    Subjects(BTreeSet<String>),
    /// It mentions the marker but is not JSON that can be read (malformed, or nested past
    /// [`MAX_DEPTH`]): whatever fields it holds cannot be found.
    Unreadable,
}

/// The subjects of the `$personal` (`encrypting`) or `$encrypted` objects in `bytes`.
pub(crate) fn subjects_in(bytes: &[u8], encrypting: bool) -> Found {
    let kind = if encrypting { PERSONAL } else { ENCRYPTED };
    if !mentions(bytes, kind) {
        return Found::Nothing;
    }
    let Some(raw) = parse(bytes) else {
        return Found::Unreadable;
    };
    let mut subjects = BTreeSet::new();
    let scanned = rewrite(raw, kind, &mut Sink(None), &mut |inner, _| {
        subjects.extend(inner.string("subject"));
        Ok(false)
    });
    match (scanned, subjects.is_empty()) {
        (Err(_), _) => Found::Unreadable,
        (Ok(()), true) => Found::Nothing,
        (Ok(()), false) => Found::Subjects(subjects),
    }
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

/// `bytes` (JSON) with every `$personal` object encrypted with its subject's key in `keys`;
/// the rest as written.
pub(crate) fn encrypt(
    bytes: &[u8],
    event_id: Uuid,
    keys: &HashMap<String, SubjectKey>,
) -> std::result::Result<Vec<u8>, String> {
    let raw = parse(bytes).ok_or("not JSON")?;
    let mut index = 0u32;
    let mut out = Sink(Some(String::with_capacity(bytes.len() + 64)));
    rewrite(raw, PERSONAL, &mut out, &mut |inner, out| {
        let Some(subject) = inner.string("subject") else {
            return Ok(false);
        };
        // The value's text as written is the plaintext.
        let plain = inner.get("value").map_or("null", RawValue::get);
        let key = keys
            .get(&subject)
            .ok_or_else(|| format!("no key for subject {subject:?}"))?;
        let n = nonce(event_id, index, &subject);
        index += 1;
        let sealed = XChaCha20Poly1305::new(&(*key).into())
            .encrypt(
                &XNonce::from(n),
                Payload {
                    msg: plain.as_bytes(),
                    aad: subject.as_bytes(),
                },
            )
            .map_err(|_| "encryption failed".to_owned())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sealed = serde_json::json!({ ENCRYPTED: {
            "subject": subject,
            "nonce": b64.encode(n),
            "data": b64.encode(sealed),
        }});
        out.push(&sealed.to_string());
        Ok(true)
    })?;
    Ok(out.0.unwrap_or_default().into_bytes())
}

/// `bytes` (JSON) with every `$encrypted` object decrypted, or marked forgotten when its
/// subject has no key in `keys` (or the key is not the one it was sealed with); the rest as
/// written. `None` when `bytes` are not JSON.
pub(crate) fn decrypt(bytes: &[u8], keys: &HashMap<String, SubjectKey>) -> Option<Vec<u8>> {
    let raw = parse(bytes)?;
    let mut out = Sink(Some(String::with_capacity(bytes.len())));
    rewrite(raw, ENCRYPTED, &mut out, &mut |inner, out| {
        let subject = inner.string("subject").unwrap_or_default();
        let opened = keys.get(&subject).and_then(|key| {
            let b64 = base64::engine::general_purpose::STANDARD;
            let n: [u8; 24] = b64.decode(inner.string("nonce")?).ok()?.try_into().ok()?;
            let sealed = b64.decode(inner.string("data")?).ok()?;
            let plain = XChaCha20Poly1305::new(&(*key).into())
                .decrypt(
                    &XNonce::from(n),
                    Payload {
                        msg: &sealed,
                        aad: subject.as_bytes(),
                    },
                )
                .ok()?;
            // One JSON value, kept as it was written.
            let plain = String::from_utf8(plain).ok()?;
            serde_json::from_str::<serde::de::IgnoredAny>(&plain).ok()?;
            Some(plain)
        });
        let subject = serde_json::to_string(&subject).map_err(|e| e.to_string())?;
        match opened {
            Some(plain) => {
                let plain = plain.trim();
                out.push(&format!(
                    r#"{{"{PERSONAL}":{{"subject":{subject},"value":{plain}}}}}"#
                ));
            }
            None => out.push(&format!(r#"{{"{FORGOTTEN}":{{"subject":{subject}}}}}"#)),
        }
        Ok(true)
    })
    .ok()?;
    out.0.map(String::into_bytes)
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
        let body = serde_json::to_vec(&customer).unwrap();
        assert_eq!(
            subjects_in(&body, true),
            Found::Subjects(["c-7".to_owned()].into())
        );
        let keys: HashMap<String, SubjectKey> = [("c-7".to_owned(), new_key())].into();
        let id = Uuid::now_v7();
        let sealed = encrypt(&body, id, &keys).unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(!text.contains("ann@example.com"), "{text}");
        assert!(
            text.contains("$encrypted") && text.contains("c-7"),
            "{text}"
        );
        assert_eq!(
            subjects_in(&sealed, false),
            Found::Subjects(["c-7".to_owned()].into())
        );
        let again = encrypt(&body, id, &keys).unwrap();
        assert_eq!(again, sealed, "the same event encrypts to the same bytes");
        // Read without keys: forgotten, not an error.
        let unread: Customer = serde_json::from_slice(&sealed).unwrap();
        assert!(unread.email.is_forgotten());
        let opened = decrypt(&sealed, &keys).unwrap();
        assert_eq!(opened, body, "decrypted as it was written");
        assert_eq!(
            serde_json::from_slice::<Customer>(&opened).unwrap(),
            customer
        );
        let forgotten = decrypt(&sealed, &HashMap::new()).unwrap();
        let read: Customer = serde_json::from_slice(&forgotten).unwrap();
        assert_eq!(
            read.email,
            Personal::Forgotten {
                subject: "c-7".into()
            }
        );
        // Another key (a subject forgotten, then keyed anew) does not open old data.
        let other = decrypt(&sealed, &[("c-7".to_owned(), new_key())].into()).unwrap();
        assert!(serde_json::from_slice::<Customer>(&other)
            .unwrap()
            .email
            .is_forgotten());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Payment {
        zeta: u128,
        amount: i128,
        card: Personal<u128>,
        alpha: Vec<Personal<f64>>,
        note: String,
    }

    /// Numbers past 64 bits, member order and everything around the personal fields come
    /// back exactly as written, in the personal values as around them.
    #[test]
    fn everything_but_the_personal_fields_is_kept_as_written() {
        let payment = Payment {
            zeta: u128::MAX,
            amount: i128::MIN,
            card: Personal::new("p-1", u128::MAX - 1),
            alpha: vec![Personal::new("p-2", 0.1), Personal::new("p-1", 1e300)],
            note: "$personal in a string \\u0041 \"quoted\"".into(),
        };
        let body = serde_json::to_vec(&payment).unwrap();
        let keys: HashMap<String, SubjectKey> =
            [("p-1".to_owned(), new_key()), ("p-2".to_owned(), new_key())].into();
        let sealed = encrypt(&body, Uuid::now_v7(), &keys).unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(
            text.starts_with(&format!(
                r#"{{"zeta":{},"amount":{},"card":"#,
                u128::MAX,
                i128::MIN
            )),
            "{text}"
        );
        assert!(!text.contains(&(u128::MAX - 1).to_string()), "{text}");
        assert_eq!(text.matches("$encrypted").count(), 3, "{text}");
        let opened = decrypt(&sealed, &keys).unwrap();
        assert_eq!(
            String::from_utf8(opened.clone()).unwrap(),
            String::from_utf8(body).unwrap()
        );
        assert_eq!(serde_json::from_slice::<Payment>(&opened).unwrap(), payment);
        // Forgetting one subject leaves the other's fields and the numbers readable.
        let partly = decrypt(&sealed, &[("p-2".to_owned(), keys["p-2"])].into()).unwrap();
        let read: Payment = serde_json::from_slice(&partly).unwrap();
        assert_eq!((read.zeta, read.amount), (u128::MAX, i128::MIN));
        assert!(read.card.is_forgotten() && read.alpha[1].is_forgotten());
        assert_eq!(read.alpha[0].value(), Some(&0.1));
        // Whitespace around the body or its members (another writer's layout) hides nothing.
        let spaced =
            " \n{ \"a\" : [ {\"$personal\" : { \"subject\" : \"p-1\", \"value\" : 7 } } ] }\n ";
        assert_eq!(
            subjects_in(spaced.as_bytes(), true),
            Found::Subjects(["p-1".to_owned()].into())
        );
        let sealed = encrypt(spaced.as_bytes(), Uuid::now_v7(), &keys).unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(
            !text.contains("$personal") && text.contains("$encrypted"),
            "{text}"
        );
        let opened = decrypt(&sealed, &keys).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&opened).unwrap(),
            serde_json::json!({"a": [{"$personal": {"subject": "p-1", "value": 7}}]})
        );
        // A marker in text that cannot be read is caught (so never stored in clear); deep
        // nesting is refused, not a stack overflow.
        let deep = format!(
            "{}{{\"$personal\":{{\"subject\":\"p-1\",\"value\":1}}}}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(subjects_in(deep.as_bytes(), true), Found::Unreadable);
        assert_eq!(
            subjects_in(b"{\"$personal\": oops", true),
            Found::Unreadable
        );
        assert_eq!(subjects_in(&sealed, true), Found::Nothing);
        assert!(matches!(subjects_in(&opened, true), Found::Subjects(_)));
        // Text that holds the marker only in a string, or none, is left alone.
        assert_eq!(subjects_in(br#"{"a":"$personal"}"#, true), Found::Nothing);
        assert_eq!(subjects_in(b"plain text", true), Found::Nothing);
        assert_eq!(decrypt(b"not json $encrypted", &keys), None);
    }
}

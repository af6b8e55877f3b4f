//! Stream names as subject tokens, reversibly: `[A-Za-z0-9_-]` stay, every other byte is
//! `~XX` (hex), so `.`, `*`, `>`, spaces and unicode never reach a subject as themselves.

use annals::StreamName;

/// The token of `text`.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// The text of a token made by [`encode`].
pub(crate) fn decode(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut it = token.bytes();
    while let Some(b) = it.next() {
        if b == b'~' {
            let hex = [it.next()?, it.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// Subjects of one store: `{prefix}.{category}.{id}` per event stream.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(stream: &str) -> Self {
        Self {
            prefix: format!("annals.{stream}"),
        }
    }

    /// Every event subject of the store.
    pub(crate) fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The subjects of one category.
    pub(crate) fn category(&self, category: &str) -> String {
        format!("{}.{}.*", self.prefix, encode(category))
    }

    /// The subject of one event stream.
    pub(crate) fn stream(&self, name: &StreamName) -> String {
        format!(
            "{}.{}.{}",
            self.prefix,
            encode(name.category()),
            encode(name.id())
        )
    }

    /// The event stream of a subject of this store.
    pub(crate) fn parse(&self, subject: &str) -> Option<StreamName> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let (category, id) = rest.split_once('.')?;
        let name = format!("{}-{}", decode(category)?, decode(id)?);
        StreamName::new(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_subjects() {
        let subjects = Subjects::new("shop");
        for name in [
            "Cart-1",
            "Cart.v2-a.b*c>d~e",
            "Odd-it's;\"quoted\"_ünïcødé_🙂",
            "C-~7E~",
        ] {
            let name = StreamName::new(name).unwrap();
            let subject = subjects.stream(&name);
            assert_eq!(subject.matches('.').count(), 3, "{subject}");
            assert!(!subject.contains(['*', '>']), "{subject}");
            assert_eq!(subjects.parse(&subject), Some(name));
        }
        assert_eq!(encode("a.b"), "a~2Eb");
        assert_eq!(decode("a~2Eb").as_deref(), Some("a.b"));
        assert_eq!(decode("a~2"), None);
    }
}

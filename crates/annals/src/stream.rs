//! Stream names: `{category}-{id}`, validated on construction.
//!
//! Rules (checked by [`StreamName::new`] and friends):
//! - the whole name is at most [`MAX_STREAM_NAME_LEN`] bytes;
//! - the category is non-empty, has no `-`, and uses only ASCII letters, digits, `_`, `.`
//!   and `:`;
//! - the id is non-empty and has no whitespace or control characters (it may contain `-`:
//!   only the first `-` of a name separates the category from the id);
//! - a compound id joins its parts with `_`, so a part must itself be non-empty and free of
//!   `_`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest stream name accepted, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 255;

/// What is wrong with a stream name, category or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamNameError {
    /// The name has no `-` between a category and an id.
    #[error("stream name {0:?} has no '-': expected '{{category}}-{{id}}'")]
    MissingSeparator(String),
    /// The category is empty.
    #[error("stream name {0:?} has an empty category: expected '{{category}}-{{id}}'")]
    EmptyCategory(String),
    /// The id is empty.
    #[error("stream name {0:?} has an empty id: expected '{{category}}-{{id}}'")]
    EmptyId(String),
    /// The category has a character outside `[A-Za-z0-9_.:]`.
    #[error("category {category:?} has the character {ch:?}: use ASCII letters, digits, '_', '.' or ':'")]
    InvalidCategoryChar {
        /// The category as given.
        category: String,
        /// The offending character.
        ch: char,
    },
    /// The id has whitespace or a control character.
    #[error("stream id {id:?} has the character {ch:?}: whitespace and control characters are not allowed")]
    InvalidIdChar {
        /// The id as given.
        id: String,
        /// The offending character.
        ch: char,
    },
    /// A part of a compound id is empty or contains `_`.
    #[error("compound id part {0:?} is empty or contains '_' (the separator of compound ids)")]
    InvalidIdPart(String),
    /// The full name is longer than [`MAX_STREAM_NAME_LEN`].
    #[error("stream name is {len} bytes long: the limit is {MAX_STREAM_NAME_LEN}")]
    TooLong {
        /// The length of the name in bytes.
        len: usize,
    },
}

/// A validated stream name, `{category}-{id}`.
///
/// Cheap to clone (one shared allocation).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName {
    full: std::sync::Arc<str>,
    split: usize,
}

impl StreamName {
    /// Parses and validates a full stream name such as `"Favorites-alice"`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, StreamNameError> {
        let name = name.as_ref();
        let Some(split) = name.find('-') else {
            return Err(StreamNameError::MissingSeparator(name.to_owned()));
        };
        let (category, id) = (&name[..split], &name[split + 1..]);
        if category.is_empty() {
            return Err(StreamNameError::EmptyCategory(name.to_owned()));
        }
        if id.is_empty() {
            return Err(StreamNameError::EmptyId(name.to_owned()));
        }
        validate_category(category)?;
        validate_id(id)?;
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(StreamNameError::TooLong { len: name.len() });
        }
        Ok(Self {
            full: name.into(),
            split,
        })
    }

    /// Builds a name from a category and an id, validating both.
    pub fn from_parts(category: &str, id: &str) -> Result<Self, StreamNameError> {
        if category.is_empty() {
            return Err(StreamNameError::EmptyCategory(format!("{category}-{id}")));
        }
        if category.contains('-') {
            return Err(StreamNameError::InvalidCategoryChar {
                category: category.to_owned(),
                ch: '-',
            });
        }
        Self::new(format!("{category}-{id}"))
    }

    /// Builds a name whose id is several parts joined with `_`, for example
    /// `compound("Cart", &["tenant1", "42"])` gives `Cart-tenant1_42`.
    pub fn compound(category: &str, parts: &[&str]) -> Result<Self, StreamNameError> {
        if let Some(bad) = parts.iter().find(|p| p.is_empty() || p.contains('_')) {
            return Err(StreamNameError::InvalidIdPart((*bad).to_owned()));
        }
        Self::from_parts(category, &parts.join("_"))
    }

    /// The category: everything before the first `-`.
    pub fn category(&self) -> &str {
        &self.full[..self.split]
    }

    /// The id: everything after the first `-`.
    pub fn id(&self) -> &str {
        &self.full[self.split + 1..]
    }

    /// The parts of a compound id (a single element for a simple id).
    pub fn id_parts(&self) -> impl Iterator<Item = &str> {
        self.id().split('_')
    }

    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

/// Validates a category on its own (for category subscriptions and filters).
pub fn validate_category(category: &str) -> Result<(), StreamNameError> {
    if category.is_empty() {
        return Err(StreamNameError::EmptyCategory(category.to_owned()));
    }
    if let Some(ch) = category
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':')))
    {
        return Err(StreamNameError::InvalidCategoryChar {
            category: category.to_owned(),
            ch,
        });
    }
    if category.len() >= MAX_STREAM_NAME_LEN {
        return Err(StreamNameError::TooLong {
            len: category.len(),
        });
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), StreamNameError> {
    match id.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(ch) => Err(StreamNameError::InvalidIdChar {
            id: id.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamName({:?})", &*self.full)
    }
}

impl FromStr for StreamName {
    type Err = StreamNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = StreamNameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StreamNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_first_dash() {
        let n = StreamName::new("Todo-abc-def").unwrap();
        assert_eq!(n.category(), "Todo");
        assert_eq!(n.id(), "abc-def");
    }

    #[test]
    fn compound_ids_join_with_underscore() {
        let n = StreamName::compound("Cart", &["t1", "42"]).unwrap();
        assert_eq!(n.as_str(), "Cart-t1_42");
        assert_eq!(n.id_parts().collect::<Vec<_>>(), ["t1", "42"]);
        assert_eq!(
            StreamName::compound("Cart", &["a_b"]).unwrap_err(),
            StreamNameError::InvalidIdPart("a_b".into())
        );
    }

    #[test]
    fn rejects_bad_names() {
        use StreamNameError::*;
        assert!(matches!(
            StreamName::new("nodash"),
            Err(MissingSeparator(_))
        ));
        assert!(matches!(StreamName::new("-id"), Err(EmptyCategory(_))));
        assert!(matches!(StreamName::new("Cat-"), Err(EmptyId(_))));
        assert!(matches!(
            StreamName::new("Ca t-1"),
            Err(InvalidCategoryChar { ch: ' ', .. })
        ));
        assert!(matches!(
            StreamName::new("Cat-a b"),
            Err(InvalidIdChar { ch: ' ', .. })
        ));
        assert!(matches!(
            StreamName::from_parts("a-b", "1"),
            Err(InvalidCategoryChar { ch: '-', .. })
        ));
        let long = format!("C-{}", "x".repeat(MAX_STREAM_NAME_LEN));
        assert!(matches!(StreamName::new(long), Err(TooLong { .. })));
    }
}

//! [`Filter`]: which events a read-all or subscription returns.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{Partition, RecordedEvent};

/// Which events a read-all or subscription returns. Empty lists match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Only these categories (any, when empty).
    pub categories: Vec<String>,
    /// Only these event types (any, when empty).
    pub event_types: Vec<String>,
    /// Only the streams of this partition (all, when `None`).
    #[serde(default)]
    pub partition: Option<Partition>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of one category.
    pub fn category(category: impl Into<String>) -> Self {
        Self {
            categories: vec![category.into()],
            ..Self::default()
        }
    }

    /// Adds a category.
    pub fn and_category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Restricts to these event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to the streams of one partition.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == event.stream.category()))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.partition.is_none_or(|p| p.contains(&event.stream))
    }

    /// Checks that the categories and the partition are valid.
    pub fn validate(&self) -> Result<()> {
        for c in &self.categories {
            crate::stream::validate_category(c)?;
        }
        if let Some(p) = &self.partition {
            p.validate()?;
        }
        Ok(())
    }
}

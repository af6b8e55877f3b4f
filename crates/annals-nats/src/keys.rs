//! Data subjects' keys (crypto-shredding, `annals::personal`) in the store's key-value
//! bucket: `sk.{subject}` holds the 32-byte key; creating is a compare-and-set on "absent",
//! so concurrent creators agree on one key; forgetting purges the key's entries from the
//! bucket's stream.

use std::collections::HashMap;

use annals::personal::{new_key, SubjectKey, SubjectKeys};
use annals::Result;

use crate::checkpoints::key_part;
use crate::{backend, NatsStore};

fn key_of(subject: &str) -> String {
    format!("sk.{}", key_part(subject))
}

#[async_trait::async_trait]
impl SubjectKeys for NatsStore {
    async fn keys(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        let mut found = HashMap::new();
        for subject in subjects {
            let Some((bytes, _)) = self.kv_get(&key_of(subject)).await? else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            let key: SubjectKey = bytes[..]
                .try_into()
                .map_err(|_| backend(format!("the key of {subject:?} is not 32 bytes")))?;
            found.insert(subject.clone(), key);
        }
        Ok(found)
    }

    async fn keys_or_create(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        let kv = &self.inner.checkpoints;
        let mut found = self.keys(subjects).await?;
        for subject in subjects.iter().filter(|s| !found.contains_key(*s)) {
            let key = new_key();
            // Absent, or deleted/purged: create succeeds only then; a concurrent creator
            // that won is read back below.
            let create = async { Ok(kv.create(key_of(subject), key.to_vec().into()).await) };
            let _ = self
                .kv_write("creating a data subject's key", create)
                .await?;
        }
        let missing: Vec<String> = subjects
            .iter()
            .filter(|s| !found.contains_key(*s))
            .cloned()
            .collect();
        found.extend(self.keys(&missing).await?);
        match missing.iter().find(|s| !found.contains_key(*s)) {
            Some(s) => Err(backend(format!("the key of {s:?} could not be created"))),
            None => Ok(found),
        }
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let kv = &self.inner.checkpoints;
        let had = !self.keys(&[subject.to_owned()]).await?.is_empty();
        let purge = async { kv.purge(key_of(subject)).await.map_err(backend) };
        self.kv_write("forgetting a data subject's key", purge)
            .await?;
        Ok(had)
    }
}

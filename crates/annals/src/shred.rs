//! [`Shredding`]: a store wrapper that encrypts personal fields before they are stored and
//! decrypts them on reads (see [`crate::personal`]); and [`SqlKeys`], subjects' keys in a
//! read-model database.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::personal::{self, Found, SubjectKey, SubjectKeys};
use crate::store::{
    AllPage, AppendAt, AppendResult, Capabilities, EventStore, Filter, Head, ReadStream,
    StartedPage, StreamAppend,
};
use crate::{
    Error, EventData, ExpectedVersion, Position, Projector, ProjectorError, ReadModelStore,
    RecordedEvent, Result, SqlTx, SqlValue, StreamName, Version,
};

/// A store whose personal fields are encrypted with their subject's key before they are
/// stored, and decrypted (or read as forgotten) on every read. Everything else passes
/// through unchanged.
pub struct Shredding<S: ?Sized> {
    inner: Arc<S>,
    keys: Arc<dyn SubjectKeys>,
}

impl<S: ?Sized> std::fmt::Debug for Shredding<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shredding").finish_non_exhaustive()
    }
}

impl<S: EventStore + ?Sized> Shredding<S> {
    /// `inner`, with personal fields encrypted under the keys of `keys`.
    pub fn new(inner: Arc<S>, keys: Arc<dyn SubjectKeys>) -> Self {
        Self { inner, keys }
    }

    /// Destroys `subject`'s key (see [`SubjectKeys::forget`]).
    pub async fn forget(&self, subject: &str) -> Result<bool> {
        self.keys.forget(subject).await
    }

    fn error(&self, message: String) -> Error {
        Error::backend(self.inner.backend(), format!("personal data: {message}"))
    }

    /// Encrypts the personal fields of `events` (data and metadata).
    async fn seal(&self, stream: &StreamName, events: &mut [EventData]) -> Result<()> {
        let mut found = Vec::new();
        let mut subjects = BTreeSet::new();
        for (i, e) in events.iter().enumerate() {
            for (part, bytes) in [(0, Some(&e.data)), (1, e.metadata.as_ref())] {
                match bytes.map_or(Found::Nothing, |b| personal::subjects_in(b, true)) {
                    Found::Nothing => {}
                    Found::Subjects(s) => {
                        subjects.extend(s);
                        found.push((i, part));
                    }
                    Found::Unreadable => {
                        return Err(Error::InvalidEvent {
                            stream: stream.clone(),
                            index: i,
                            reason: crate::InvalidEvent::PersonalDataUnreadable {
                                part: if part == 0 { "data" } else { "metadata" },
                            },
                        });
                    }
                }
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        let subjects: Vec<String> = subjects.into_iter().collect();
        let keys = self.keys.keys_or_create(&subjects).await?;
        for (i, part) in found {
            let e = &mut events[i];
            // Data and metadata of one event get distinct nonces.
            match part {
                0 => {
                    e.data =
                        personal::encrypt(&e.data, e.event_id, &keys).map_err(|m| self.error(m))?;
                }
                _ => {
                    let id = metadata_id(e.event_id);
                    if let Some(metadata) = &mut e.metadata {
                        *metadata =
                            personal::encrypt(metadata, id, &keys).map_err(|m| self.error(m))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Encrypts a snapshot body (its own nonces, from `stream` and `version`).
    async fn seal_snapshot(
        &self,
        stream: &StreamName,
        after: Version,
        body: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let subjects = match personal::subjects_in(&body, true) {
            Found::Nothing => return Ok(body),
            Found::Subjects(subjects) => subjects,
            Found::Unreadable => {
                return Err(self.error(format!(
                    "the snapshot of {stream} mentions \"$personal\" but is not JSON that can be read: not stored"
                )))
            }
        };
        let subjects: Vec<String> = subjects.into_iter().collect();
        let keys = self.keys.keys_or_create(&subjects).await?;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("annals-snapshot/{stream}/{after}").as_bytes(),
        );
        personal::encrypt(&body, id, &keys).map_err(|m| self.error(m))
    }

    /// Decrypts the personal fields of `events` in place.
    async fn open(&self, events: &mut [RecordedEvent]) -> Result<()> {
        let mut found = Vec::new();
        let mut subjects = BTreeSet::new();
        for (i, e) in events.iter().enumerate() {
            for (part, bytes) in [(0, Some(&e.data)), (1, e.metadata.as_ref())] {
                // Sealed fields that cannot be read stay as they are (they read as forgotten).
                if let Some(Found::Subjects(s)) = bytes.map(|b| personal::subjects_in(b, false)) {
                    subjects.extend(s);
                    found.push((i, part));
                }
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        let subjects: Vec<String> = subjects.into_iter().collect();
        let keys = self.keys.keys(&subjects).await?;
        for (i, part) in found {
            let e = &mut events[i];
            let bytes = match part {
                0 => Some(&mut e.data),
                _ => e.metadata.as_mut(),
            };
            if let Some(bytes) = bytes {
                if let Some(opened) = personal::decrypt(bytes, &keys) {
                    *bytes = opened;
                }
            }
        }
        Ok(())
    }

    async fn open_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let Found::Subjects(subjects) = personal::subjects_in(&bytes, false) else {
            return Ok(bytes);
        };
        let subjects: Vec<String> = subjects.into_iter().collect();
        let keys = self.keys.keys(&subjects).await?;
        Ok(personal::decrypt(&bytes, &keys).unwrap_or(bytes))
    }
}

fn metadata_id(event_id: uuid::Uuid) -> uuid::Uuid {
    uuid::Uuid::new_v5(&event_id, b"metadata")
}

#[async_trait]
impl<S: EventStore + ?Sized> EventStore for Shredding<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.seal(stream, &mut events).await?;
        self.inner.append(stream, expected, events).await
    }

    async fn append_at(
        &self,
        stream: &StreamName,
        version: Version,
        mut events: Vec<EventData>,
    ) -> Result<AppendAt> {
        self.seal(stream, &mut events).await?;
        match self.inner.append_at(stream, version, events).await? {
            AppendAt::Conflict { actual, mut events } => {
                self.open(&mut events).await?;
                Ok(AppendAt::Conflict { actual, events })
            }
            written => Ok(written),
        }
    }

    async fn append_at_shown(
        &self,
        stream: &StreamName,
        version: Version,
        shown_from: Version,
        mut events: Vec<EventData>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<AppendAt> {
        self.seal(stream, &mut events).await?;
        let answer = self
            .inner
            .append_at_shown(stream, version, shown_from, events, snapshot)
            .await?;
        match answer {
            AppendAt::Conflict { actual, mut events } => {
                self.open(&mut events).await?;
                Ok(AppendAt::Conflict { actual, events })
            }
            written => Ok(written),
        }
    }

    async fn append_many(&self, mut appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        for a in &mut appends {
            self.seal(&a.stream, &mut a.events).await?;
        }
        self.inner.append_many(appends).await
    }

    async fn append_many_shown(
        &self,
        mut appends: Vec<StreamAppend>,
        shown_from: Vec<Version>,
    ) -> Result<Vec<AppendResult>> {
        for a in &mut appends {
            self.seal(&a.stream, &mut a.events).await?;
        }
        self.inner.append_many_shown(appends, shown_from).await
    }

    async fn append_with_snapshot(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
        snapshot: Vec<u8>,
    ) -> Result<AppendResult> {
        self.seal(stream, &mut events).await?;
        let after = match expected {
            ExpectedVersion::Exact(v) => Version(v.get() + events.len() as u64),
            _ => Version(events.len() as u64),
        };
        let snapshot = self.seal_snapshot(stream, after, snapshot).await?;
        self.inner
            .append_with_snapshot(stream, expected, events, snapshot)
            .await
    }

    async fn read_page_from(
        &self,
        stream: &StreamName,
        from: Version,
        limit: usize,
    ) -> Result<StartedPage> {
        let mut page = self.inner.read_page_from(stream, from, limit).await?;
        self.open(&mut page.events).await?;
        Ok(page)
    }

    async fn read_head(&self, stream: &StreamName, limit: usize) -> Result<Head> {
        let mut head = self.inner.read_head(stream, limit).await?;
        self.open(&mut head.events).await?;
        if let Some(snapshot) = &mut head.snapshot {
            snapshot.data = self.open_bytes(std::mem::take(&mut snapshot.data)).await?;
        }
        Ok(head)
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        // Imported events are copies of recorded ones: already sealed where they came from.
        self.inner.import(events).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Version> {
        self.inner.stream_version(stream).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        crate::pages::events_of_pages(self.read_stream_pages(stream, options))
    }

    fn read_stream_pages<'a>(
        &'a self,
        stream: &'a StreamName,
        options: ReadStream,
    ) -> BoxStream<'a, Result<Vec<RecordedEvent>>> {
        // The events read together are opened together: one key lookup per subject per
        // page, not per event.
        self.inner
            .read_stream_pages(stream, options)
            .and_then(move |mut events: Vec<RecordedEvent>| async move {
                self.open(&mut events).await?;
                Ok(events)
            })
            .boxed()
    }

    async fn read_all(&self, from: Position, filter: &Filter, limit: usize) -> Result<AllPage> {
        let mut page = self.inner.read_all(from, filter, limit).await?;
        self.open(&mut page.events).await?;
        Ok(page)
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        self.inner.head_position().await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mode: crate::DeleteMode,
    ) -> Result<Version> {
        self.inner.delete_stream(stream, expected, mode).await
    }

    async fn import_deletion(&self, stream: &StreamName, version: Version) -> Result<Version> {
        self.inner.import_deletion(stream, version).await
    }

    async fn truncate_before(&self, stream: &StreamName, before: Version) -> Result<Version> {
        self.inner.truncate_before(stream, before).await
    }

    async fn scavenge(&self, limit: usize, dry_run: bool) -> Result<crate::Scavenged> {
        self.inner.scavenge(limit, dry_run).await
    }

    async fn set_retention(
        &self,
        scope: &crate::RetentionScope,
        retention: crate::Retention,
    ) -> Result<()> {
        self.inner.set_retention(scope, retention).await
    }

    async fn retention(&self) -> Result<Vec<(crate::RetentionScope, crate::Retention)>> {
        self.inner.retention().await
    }

    async fn await_visible(&self) -> Result<()> {
        self.inner.await_visible().await
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.changes()
    }
}

/// Subjects' keys in a table `annals_subject_keys` of a read-model database (the SQLite
/// file or the PostgreSQL schema), created on first use. Forgetting deletes the row; on
/// SQLite with `secure_delete`, so its bytes are overwritten in the file.
pub struct SqlKeys<R> {
    db: Arc<R>,
    ready: tokio::sync::OnceCell<()>,
}

impl<R> std::fmt::Debug for SqlKeys<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlKeys").finish_non_exhaustive()
    }
}

impl<R: ReadModelStore + 'static> SqlKeys<R> {
    /// The keys kept in `db`.
    pub fn new(db: Arc<R>) -> Self {
        Self {
            db,
            ready: tokio::sync::OnceCell::new(),
        }
    }

    async fn ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async { self.db.setup(&Arc::new(KeyStatement::Create)).await })
            .await
            .map(|_| ())
    }
}

/// The statements that change the key table, each run in a transaction of its own (the
/// read-model store's `setup` is how a transaction is run on any backend).
enum KeyStatement {
    Create,
    Insert(Vec<(String, SubjectKey)>),
    Delete(String),
}

#[async_trait]
impl<R: ReadModelStore> Projector<R> for KeyStatement {
    fn id(&self) -> crate::ProjectionId<'static> {
        crate::ProjectionId::new("annals_subject_keys", 0)
    }

    async fn setup(&self, tx: &mut R::Tx<'_>) -> std::result::Result<(), ProjectorError> {
        match self {
            KeyStatement::Create => {
                tx.batch(
                    "CREATE TABLE IF NOT EXISTS annals_subject_keys (subject TEXT PRIMARY KEY, key BYTEA NOT NULL)"
                        .replace(
                            "BYTEA",
                            match tx.dialect() {
                                crate::Dialect::Sqlite => "BLOB",
                                crate::Dialect::Postgres => "BYTEA",
                            },
                        )
                        .as_str(),
                )
                .await?;
            }
            KeyStatement::Insert(keys) => {
                for (subject, key) in keys {
                    tx.execute(
                        "INSERT INTO annals_subject_keys (subject, key) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING",
                        &[SqlValue::Text(subject.clone()), SqlValue::Bytes(key.to_vec())],
                    )
                    .await?;
                }
            }
            KeyStatement::Delete(subject) => {
                if tx.dialect() == crate::Dialect::Sqlite {
                    // Overwrite the deleted row's bytes in the file, not just unlink them.
                    tx.batch("PRAGMA secure_delete = ON").await?;
                }
                tx.execute(
                    "DELETE FROM annals_subject_keys WHERE subject = $1",
                    &[SqlValue::Text(subject.clone())],
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut R::Tx<'_>,
        _: &StreamName,
        _: &[RecordedEvent],
    ) -> std::result::Result<(), ProjectorError> {
        Ok(())
    }

    async fn clear(
        &self,
        _: &mut R::Tx<'_>,
        _: &StreamName,
    ) -> std::result::Result<(), ProjectorError> {
        Ok(())
    }
}

#[async_trait]
impl<R: ReadModelStore + 'static> SubjectKeys for SqlKeys<R> {
    async fn keys(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        self.ready().await?;
        let mut found = HashMap::new();
        // One query per 100 subjects.
        for group in subjects.chunks(100) {
            let placeholders: Vec<String> = (1..=group.len()).map(|i| format!("${i}")).collect();
            let params: Vec<SqlValue> = group.iter().map(|s| SqlValue::Text(s.clone())).collect();
            let rows = self
                .db
                .query(
                    &format!(
                        "SELECT subject, key FROM annals_subject_keys WHERE subject IN ({})",
                        placeholders.join(", ")
                    ),
                    &params,
                )
                .await?;
            for row in &rows {
                let (Some(subject), Some(bytes)) = (
                    row.first().and_then(SqlValue::as_str),
                    row.get(1).and_then(SqlValue::as_bytes),
                ) else {
                    continue;
                };
                let key: SubjectKey = bytes.try_into().map_err(|_| {
                    Error::backend("keys", format!("the key of {subject:?} is not 32 bytes"))
                })?;
                found.insert(subject.to_owned(), key);
            }
        }
        Ok(found)
    }

    async fn keys_or_create(&self, subjects: &[String]) -> Result<HashMap<String, SubjectKey>> {
        let mut found = self.keys(subjects).await?;
        let missing: Vec<(String, SubjectKey)> = subjects
            .iter()
            .filter(|s| !found.contains_key(*s))
            .map(|s| (s.clone(), personal::new_key()))
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let names: Vec<String> = missing.iter().map(|(s, _)| s.clone()).collect();
        self.db
            .setup(&Arc::new(KeyStatement::Insert(missing)))
            .await?;
        // A concurrent creator may have won: read what is stored.
        found.extend(self.keys(&names).await?);
        Ok(found)
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        self.ready().await?;
        let had = !self.keys(&[subject.to_owned()]).await?.is_empty();
        self.db
            .setup(&Arc::new(KeyStatement::Delete(subject.to_owned())))
            .await?;
        Ok(had)
    }
}

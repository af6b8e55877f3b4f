//! A transaction on the store for reactors: appends and the checkpoint, committed together.

use super::*;

/// A transaction on the store: a projector's read-model changes, events appended by a
/// reactor, and the checkpoint, committed together or not at all.
#[derive(Debug)]
pub struct Projection {
    /// Dropped before the commit is answered, it closes the connection: rolled back.
    pub(crate) tx: Conn,
    pub(crate) store: PgStore,
    pub(crate) appended: bool,
}

impl Projection {
    /// The connection, inside the transaction.
    pub fn client(&self) -> &tokio_postgres::Client {
        self.tx.client()
    }

    /// Appends inside this transaction (visible to others only after the commit). A
    /// conflict or refused batch leaves the transaction usable only for rolling back.
    pub async fn append(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let store = &self.store;
        annals::backend::validate_batch(stream, &events, store.inner.config.max_event_bytes)?;
        let client = &self.tx;
        match store
            .append_once(client, stream, expected, &events, None)
            .await?
        {
            Some(r) => {
                self.appended = true;
                Ok(r)
            }
            None => match store.classify(client, stream, expected, &events).await? {
                Verdict::AlreadyWritten(r) => Ok(r),
                Verdict::Write => Err(backend(format!(
                    "{stream}: the stream changed under the append; roll back and retry"
                ))),
            },
        }
    }

    /// Records `position` as the checkpoint of (`group`, `source`) and commits everything.
    pub async fn commit(self, group: &str, source: &str, position: Position) -> Result<()> {
        let sql = self.store.inner.sql.checkpoint_commit.clone();
        let position = position.to_string();
        self.finish(Some((sql, group, source, position))).await
    }

    /// Commits without recording a checkpoint.
    pub async fn commit_only(self) -> Result<()> {
        self.finish(None).await
    }

    async fn finish(mut self, checkpoint: Option<(String, &str, &str, String)>) -> Result<()> {
        // Held by `self` until the COMMIT is answered: a caller gone meanwhile (or an error)
        // drops the transaction open, which closes the connection.
        if let Some((sql, group, source, position)) = &checkpoint {
            let client = self.tx.client();
            let statement = client.prepare_cached(sql).await.map_err(backend)?;
            client
                .execute(&statement, &[group, source, position])
                .await
                .map_err(backend)?;
        }
        self.tx.commit().await?;
        if self.appended {
            self.store.wake();
        }
        Ok(())
    }
}

//! Transactions on pooled connections. A caller may give up on a store call at any await
//! (a timeout, a dropped request): a connection whose transaction is still open must then
//! never go back to the pool, where the next caller's statements would run inside that
//! transaction (seeing its uncommitted rows, committing them with its own, holding its
//! locks). [`TxConn`] closes it instead, which rolls the transaction back on the server.

use std::ops::Deref;

use deadpool_postgres::Object;

use crate::{backend, Result};

/// A pooled connection for transactions: dropped while one is open (from just before its
/// `BEGIN` is sent until its `COMMIT` or `ROLLBACK` is answered), the connection is taken
/// out of the pool and closed; otherwise it goes back to the pool.
#[derive(Debug)]
pub(crate) struct TxConn {
    client: Option<Object>,
    open: bool,
}

impl TxConn {
    pub(crate) fn new(client: Object) -> Self {
        Self {
            client: Some(client),
            open: false,
        }
    }

    /// For a transaction whose `BEGIN` the caller sends pipelined with its first statements:
    /// open from now, until [`TxConn::ended`].
    pub(crate) fn opened(client: Object) -> Self {
        Self {
            client: Some(client),
            open: true,
        }
    }

    /// The transaction is over (a `COMMIT` or `ROLLBACK` the caller sent was answered, or it
    /// was never begun): the connection goes back to the pool.
    pub(crate) fn ended(&mut self) {
        self.open = false;
    }

    /// The connection, inside the transaction.
    pub(crate) fn client(&self) -> &Object {
        self
    }

    /// The caller is about to send `BEGIN` pipelined with its first statements: open from
    /// now, as [`TxConn::begin_with`].
    pub(crate) fn beginning(&mut self) {
        self.open = true;
    }

    /// Sends `sql`, which begins a transaction (`BEGIN`, perhaps with settings).
    pub(crate) async fn begin_with(&mut self, sql: &str) -> Result<()> {
        // Open from before it is sent: a caller gone while it is on its way leaves a
        // transaction the server may already have begun.
        self.open = true;
        self.batch_execute(sql).await.map_err(backend)
    }

    pub(crate) async fn begin(&mut self) -> Result<()> {
        self.begin_with("BEGIN").await
    }

    pub(crate) async fn commit(&mut self) -> Result<()> {
        self.end("COMMIT").await
    }

    pub(crate) async fn rollback(&mut self) -> Result<()> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, sql: &str) -> Result<()> {
        self.batch_execute(sql).await.map_err(backend)?;
        self.open = false;
        Ok(())
    }
}

impl Deref for TxConn {
    type Target = Object;

    fn deref(&self) -> &Object {
        // Taken only by `drop`.
        self.client
            .as_ref()
            .expect("a TxConn holds its connection until dropped")
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.open {
                // Out of the pool; dropping the client closes the connection.
                drop(Object::take(client));
            }
        }
    }
}

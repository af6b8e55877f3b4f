//! Pooled connections. A connection goes back to its pool when its guard, [`Conn`], is
//! dropped, unless it must not serve another caller:
//! - A caller may give up on a store call at any await (a timeout, a dropped request): a
//!   connection whose transaction is still open would run the next caller's statements
//!   inside that transaction (seeing its uncommitted rows, committing them with its own,
//!   holding its locks).
//! - A statement's error may have ended the connection (see `error::ends_connection`): the
//!   server's error comes before its socket closes, and the pool, which checks only whether
//!   the driver has seen the close, would hand it to the next caller, whose statement would
//!   fail in turn.
//!
//! Such a connection is taken out of the pool and closed instead (which rolls an open
//! transaction back on the server).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;

use crate::{backend, Result};

/// A pooled connection: dropped while a transaction is open on it (from just before its
/// `BEGIN` is sent until its `COMMIT` or `ROLLBACK` is answered), or after a statement's
/// error ended it ([`Conn::failed`]), it is taken out of the pool and closed; otherwise it
/// goes back to the pool.
#[derive(Debug)]
pub(crate) struct Conn {
    client: Option<Object>,
    open: bool,
    ended: AtomicBool,
}

impl Conn {
    /// A connection of `pool`.
    pub(crate) async fn from(pool: &deadpool_postgres::Pool) -> Result<Self> {
        let client = pool.get().await.map_err(backend)?;
        Ok(Self {
            client: Some(client),
            open: false,
            ended: AtomicBool::new(false),
        })
    }

    /// The store error of `e`, an error of a statement on this connection. A connection
    /// `e` ended is closed when dropped, not pooled again.
    pub(crate) fn failed(&self, e: tokio_postgres::Error) -> annals::Error {
        if crate::error::ends_connection(&e) {
            self.ended.store(true, Ordering::Relaxed);
        }
        backend(e)
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
    /// now, as [`Conn::begin_with`].
    pub(crate) fn beginning(&mut self) {
        self.open = true;
    }

    /// Sends `sql`, which begins a transaction (`BEGIN`, perhaps with settings).
    pub(crate) async fn begin_with(&mut self, sql: &str) -> Result<()> {
        // Open from before it is sent: a caller gone while it is on its way leaves a
        // transaction the server may already have begun.
        self.open = true;
        self.batch_execute(sql).await.map_err(|e| self.failed(e))
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
        self.batch_execute(sql).await.map_err(|e| self.failed(e))?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Conn {
    type Target = Object;

    fn deref(&self) -> &Object {
        // Taken only by `drop`.
        self.client
            .as_ref()
            .expect("a Conn holds its connection until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.open || *self.ended.get_mut() {
                // Out of the pool; dropping the client closes the connection.
                drop(Object::take(client));
            }
        }
    }
}

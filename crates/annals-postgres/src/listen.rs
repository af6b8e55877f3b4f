//! Wake-ups: a LISTEN connection that turns notifications into the store's change signal,
//! and a notifier that sends coalesced NOTIFYs after commits, outside writers' transactions
//! (a NOTIFY inside them would serialise their commits on PostgreSQL's notification lock).

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Listens on `channel` and signals `changes` on every notification; reconnects with
/// backoff when the connection is lost (signalling once after reconnecting, as events may
/// have been missed meanwhile).
pub(crate) fn spawn_listener(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    changes: watch::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let policy = annals::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut delays = policy.delays();
        loop {
            match config.connect(tls.clone()).await {
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    let statement = format!("LISTEN \"{channel}\"");
                    let listening = {
                        let listen = client.batch_execute(&statement);
                        let mut listen = std::pin::pin!(listen);
                        // Drive the connection until the LISTEN is acknowledged.
                        loop {
                            tokio::select! {
                                r = &mut listen => break r.is_ok(),
                                m = messages.next() => if !matches!(m, Some(Ok(_))) { break false },
                            }
                        }
                    };
                    if listening {
                        delays = policy.delays();
                        changes.send_replace(());
                        while let Some(Ok(message)) = messages.next().await {
                            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                                changes.send_replace(());
                            }
                        }
                    }
                    drop(client);
                    tracing::debug!(channel, "LISTEN connection lost; reconnecting");
                }
                Err(e) => tracing::debug!(channel, error = %e, "LISTEN connection failed"),
            }
            let delay = delays.next().unwrap_or(policy.max);
            tokio::time::sleep(delay).await;
        }
    })
}

/// The shortest time between two NOTIFYs.
const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Sends `NOTIFY channel` after commits, coalescing bursts into one.
pub(crate) struct Notifier {
    pending: std::sync::Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Sends the notifications on a connection of its own, with `synchronous_commit = off`:
    /// a NOTIFY takes a transaction id, and waiting for its commit record to reach disk
    /// would cost an fsync per hint. Pooled connections keep the server's durable setting.
    pub(crate) fn spawn(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        channel: String,
    ) -> Self {
        let pending = std::sync::Arc::new(Notify::new());
        let wait = pending.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            // Prepared once per connection.
            let mut statement: Option<tokio_postgres::Statement> = None;
            loop {
                wait.notified().await;
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect_async_commit(&config, &tls).await;
                    statement = None;
                }
                if let Some(c) = &client {
                    if statement.is_none() {
                        statement = c.prepare("SELECT pg_notify($1, '')").await.ok();
                    }
                    let sent = match &statement {
                        Some(st) => c.execute(st, &[&channel]).await,
                        None => c.execute("SELECT pg_notify($1, '')", &[&channel]).await,
                    };
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "NOTIFY failed");
                        statement = None;
                    }
                }
                // Rate limit: commits during the pause share the next NOTIFY. In-process
                // subscribers are woken directly; this is the hint for other processes.
                tokio::time::sleep(NOTIFY_EVERY).await;
            }
        });
        Self { pending, task }
    }

    pub(crate) fn notify(&self) {
        self.pending.notify_one();
    }
}

async fn connect_async_commit(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Option<tokio_postgres::Client> {
    match config.connect(tls.clone()).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            match client.batch_execute("SET synchronous_commit = off").await {
                Ok(()) => Some(client),
                Err(e) => {
                    tracing::debug!(error = %e, "NOTIFY connection setup failed");
                    None
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "NOTIFY connection failed");
            None
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

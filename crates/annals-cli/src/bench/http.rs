//! The `todo` scenario over HTTP, against a running `annals serve` (or any TodoBackend that
//! takes `X-Client-Id`): as Equinox's `eqx run ... web`. Each test is the same as in process
//! (every 20th clears the list, then add a todo and read the list back), one request each.
//!
//! The load generator shares the machine with the server it measures, so it is kept lean:
//! keep-alive HTTP/1 connections of its own (one per test in flight, reused), requests
//! built from parts made once, and answers read for the ids the test checks only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// The list kept changing under a request (`409`): contention, not a fault.
#[derive(Debug, thiserror::Error)]
#[error("409 conflict: {0}")]
pub(super) struct Conflict(String);

/// How long a test may take before it counts as failed.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A todo as the test reads it: its id (other fields are skipped).
#[derive(Deserialize)]
struct Id {
    id: u64,
}

/// A TodoBackend over HTTP.
pub(super) struct WebTodos {
    /// `http://HOST:PORT`, for messages.
    base: String,
    /// `HOST:PORT`: where to connect, and the `Host` header.
    authority: String,
    host: HeaderValue,
    /// Open connections no test is using.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Requests sent.
    pub requests: AtomicU64,
}

impl WebTodos {
    /// The API at `url`'s origin (`http://HOST:PORT`; a path such as `/todos` is ignored).
    pub(super) fn new(url: &url::Url) -> anyhow::Result<Self> {
        ensure!(
            url.scheme() == "http",
            "{url}: annals bench todo speaks plain http:// only"
        );
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = match url.host() {
            Some(url::Host::Ipv6(_)) => format!("[{}]:{port}", host.trim_matches(['[', ']'])),
            _ => format!("{host}:{port}"),
        };
        Ok(Self {
            base: url.origin().ascii_serialization(),
            host: HeaderValue::from_str(&authority).context("the URL's host")?,
            authority,
            idle: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// Fails with a one-line error when the API does not answer a list request.
    pub(super) async fn probe(&self) -> anyhow::Result<()> {
        let probe = async {
            let mut connection = self.connection().await?;
            self.call::<Vec<Id>>(&mut connection, Method::GET, "probe", None)
                .await?;
            self.put_back(connection);
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(TEST_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {TEST_TIMEOUT:?}")))
            .with_context(|| format!("{}/todos does not answer as a TodoBackend", self.base))
    }

    /// An idle connection, or a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                // Closed meanwhile (the server's idle timeout): take another.
                Some(mut c) => {
                    if c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                None => break,
            }
        }
        self.open().await
    }

    /// A new connection.
    async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connect to {}", self.base))?;
        stream.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {}", self.base))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(send)
    }

    /// Keeps `connection` for the next test when it is still open.
    fn put_back(&self, connection: SendRequest<Full<Bytes>>) {
        if !connection.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(connection);
        }
    }

    /// One request to `/todos` on `connection`; the answer's JSON as `T` (`None` when empty).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        connection: &mut SendRequest<Full<Bytes>>,
        method: Method,
        client: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Option<T>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri("/todos")
            .header(HOST, self.host.clone())
            .header("x-client-id", client);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let mut request = request.body(Full::new(body.unwrap_or_default()))?;
        let mut reopened = false;
        let response = loop {
            if connection.ready().await.is_err() {
                *connection = self.open().await?;
                reopened = true;
            }
            match connection.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed first (the server's idle timeout
                    // raced the request); once more on a new connection.
                    Some(unsent) if !reopened => {
                        request = unsent;
                        *connection = self.open().await?;
                        reopened = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        };
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match status {
            s if s.is_success() && bytes.is_empty() => Ok(None),
            s if s.is_success() => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{method} /todos: unexpected JSON: {}", text())
                })?))
            }
            StatusCode::CONFLICT => Err(Conflict(text()).into()),
            s => bail!("{method} /todos: {s}: {}", text()),
        }
    }

    /// One test for `client`: see the module documentation.
    pub(super) async fn test(&self, client: &str, item: String, n: u64) -> anyhow::Result<()> {
        let test = async {
            let mut connection = self.connection().await?;
            let outcome = self.exchange(&mut connection, client, item, n).await;
            // A `409` was read whole; a connection whose test failed otherwise may hold an
            // unread answer: not reused.
            match &outcome {
                Ok(()) => self.put_back(connection),
                Err(e) if e.is::<Conflict>() => self.put_back(connection),
                Err(_) => {}
            }
            outcome
        };
        tokio::time::timeout(TEST_TIMEOUT, test)
            .await
            .with_context(|| format!("no answers within {TEST_TIMEOUT:?}"))?
    }

    async fn exchange(
        &self,
        connection: &mut SendRequest<Full<Bytes>>,
        client: &str,
        item: String,
        n: u64,
    ) -> anyhow::Result<()> {
        if n % 20 == 19 {
            self.call::<serde::de::IgnoredAny>(connection, Method::DELETE, client, None)
                .await?;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "title": item }))?;
        let todo: Id = self
            .call(connection, Method::POST, client, Some(body.into()))
            .await?
            .context("the added todo is missing")?;
        let list: Vec<Id> = self
            .call(connection, Method::GET, client, None)
            .await?
            .context("the list is missing")?;
        let id = todo.id;
        // Another worker may have cleared the list since: then all in it came after.
        ensure!(
            list.iter().any(|t| t.id == id) || list.iter().all(|t| t.id > id),
            "todo {id} of {client} not read back"
        );
        Ok(())
    }
}

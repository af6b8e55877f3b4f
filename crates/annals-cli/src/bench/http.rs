//! The `todo` scenario over HTTP, against a running `annals serve` (or any TodoBackend that
//! takes `X-Client-Id`): as Equinox's `eqx run ... web`. Each test is the same as in process
//! (every 20th clears the list, then add a todo and read the list back), one request each.
//!
//! The load generator shares the machine with the server it measures, so it is kept lean,
//! as wrk is: keep-alive HTTP/1.1 connections of its own (one per test in flight, reused),
//! each driven by the test using it (a request is one write; an answer's head is parsed in
//! place by `httparse`, with no header map and no connection task), and answers read for the
//! ids the test checks only.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The list kept changing under a request (`409`): contention, not a fault.
#[derive(Debug, thiserror::Error)]
#[error("409 conflict: {0}")]
pub(super) struct Conflict(String);

/// How long a test may take before it counts as failed.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest answer head read (status line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// The most headers an answer may have.
const MAX_HEADERS: usize = 64;

/// The largest answer body read.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A todo as the test reads it: its id (other fields are skipped).
#[derive(Debug, Deserialize)]
struct Id {
    id: u64,
}

/// A request's method.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// An answer: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection and what it has read past the last answer.
struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The request being written.
    out: Vec<u8>,
    /// Whether the server said it closes the connection after its answer.
    closing: bool,
}

/// Why an exchange failed: `Unanswered` when the connection closed before any byte of the
/// answer (a kept connection the server closed meanwhile: the request may be sent again on
/// a new one, as browsers do).
enum Failure {
    Unanswered(anyhow::Error),
    Other(anyhow::Error),
}

impl Connection {
    async fn open(authority: &str, base: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connect to {base}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            out: Vec::with_capacity(512),
            closing: false,
        })
    }

    /// Whether the server has closed the connection (or sent something unasked) while it
    /// was idle: then it is not reused.
    fn stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !self.buf.is_empty()
            || !matches!(self.stream.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends one request and reads its answer.
    async fn exchange(
        &mut self,
        host: &str,
        method: Method,
        client: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, Failure> {
        self.out.clear();
        self.out.extend_from_slice(method.as_str().as_bytes());
        self.out.extend_from_slice(b" /todos HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(host.as_bytes());
        self.out.extend_from_slice(b"\r\nX-Client-Id: ");
        self.out.extend_from_slice(client.as_bytes());
        if let Some(body) = body {
            // Into the request's own buffer: no string made per request.
            let _ = write!(
                self.out,
                "\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            self.out.extend_from_slice(body);
        } else {
            self.out.extend_from_slice(b"\r\n\r\n");
        }
        if let Err(e) = self.stream.write_all(&self.out).await {
            return Err(Failure::Unanswered(e.into()));
        }
        let (status, head, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = response.code.unwrap_or(0);
                    let mut length = None;
                    let mut chunked = false;
                    self.closing = response.version == Some(0);
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .ok_or_else(|| {
                                    Failure::Other(anyhow::anyhow!("a bad Content-Length"))
                                })?;
                            length = Some(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            self.closing = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    if (100..200).contains(&status) {
                        // An interim answer: the final one follows.
                        self.buf.drain(..head);
                        continue;
                    }
                    break (status, head, length, chunked);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {
                    let empty = self.buf.is_empty();
                    match self.fill().await {
                        Ok(true) => {}
                        Ok(false) if empty => {
                            return Err(Failure::Unanswered(anyhow::anyhow!(
                                "the connection closed before an answer"
                            )))
                        }
                        Ok(false) => {
                            return Err(Failure::Other(anyhow::anyhow!(
                                "the connection closed in an answer's head"
                            )))
                        }
                        Err(e) if empty => return Err(Failure::Unanswered(e)),
                        Err(e) => return Err(Failure::Other(e)),
                    }
                }
                Ok(httparse::Status::Partial) => {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "an answer's head over {MAX_HEAD} bytes"
                    )))
                }
                Err(e) => return Err(Failure::Other(anyhow::anyhow!("a malformed answer: {e}"))),
            }
        };
        self.buf.drain(..head);
        let no_body = status == 204 || status == 304;
        let body = match (no_body, chunked, length) {
            (true, _, _) => Vec::new(),
            (false, true, _) => self.chunked().await.map_err(Failure::Other)?,
            (false, false, Some(n)) => self.exactly(n).await.map_err(Failure::Other)?,
            (false, false, None) => {
                // Delimited by the connection's end.
                self.closing = true;
                while self.fill().await.map_err(Failure::Other)? {
                    if self.buf.len() > MAX_BODY {
                        return Err(Failure::Other(anyhow::anyhow!(
                            "an answer over {MAX_BODY} bytes"
                        )));
                    }
                }
                std::mem::take(&mut self.buf)
            }
        };
        Ok(Answer { status, body })
    }

    /// Reads more; `false` at the connection's end.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        self.buf.reserve(8 * 1024);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The next `n` bytes.
    async fn exactly(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        ensure!(n <= MAX_BODY, "an answer of {n} bytes, over {MAX_BODY}");
        while self.buf.len() < n {
            ensure!(
                self.fill().await?,
                "the connection closed in an answer's body"
            );
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// A chunked body, decoded.
    async fn chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .context("a bad chunk size")?;
            if size == 0 {
                // Trailers, up to an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            ensure!(
                body.len() + size <= MAX_BODY,
                "an answer over {MAX_BODY} bytes"
            );
            body.extend_from_slice(&self.exactly(size).await?);
            ensure!(self.line().await?.is_empty(), "a chunk not ended by CRLF");
        }
    }

    /// The next line, without its CRLF.
    async fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            ensure!(
                self.buf.len() < MAX_HEAD,
                "a chunk line over {MAX_HEAD} bytes"
            );
            ensure!(
                self.fill().await?,
                "the connection closed in a chunked body"
            );
        }
    }
}

/// A TodoBackend over HTTP.
pub(super) struct WebTodos {
    /// `http://HOST:PORT`, for messages.
    base: String,
    /// `HOST:PORT`: where to connect, and the `Host` header.
    authority: String,
    /// Open connections no test is using.
    idle: Mutex<Vec<Connection>>,
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
            authority,
            idle: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// Fails with a one-line error when the API does not answer a list request.
    pub(super) async fn probe(&self) -> anyhow::Result<()> {
        let probe = async {
            let mut connection = self.connection().await?;
            self.call::<Vec<Id>>(&mut connection, Method::Get, "probe", None)
                .await?;
            self.put_back(connection);
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(TEST_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {TEST_TIMEOUT:?}")))
            .with_context(|| format!("{}/todos does not answer as a TodoBackend", self.base))
    }

    /// An idle connection still open, or a new one.
    async fn connection(&self) -> anyhow::Result<Connection> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(c) if !c.stale() => return Ok(c),
                Some(_) => {}
                None => return Connection::open(&self.authority, &self.base).await,
            }
        }
    }

    /// Keeps `connection` for the next test unless the server closes it.
    fn put_back(&self, connection: Connection) {
        if !connection.closing {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(connection);
        }
    }

    /// One request to `/todos` on `connection`; the answer's JSON as `T` (`None` when empty).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        connection: &mut Connection,
        method: Method,
        client: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Option<T>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut reopened = false;
        let answer = loop {
            if connection.closing {
                *connection = Connection::open(&self.authority, &self.base).await?;
                reopened = true;
            }
            match connection
                .exchange(&self.authority, method, client, body)
                .await
            {
                Ok(answer) => break answer,
                // The kept connection was closed by the server (its idle timeout raced
                // the request): once more on a new connection.
                Err(Failure::Unanswered(_)) if !reopened => {
                    connection.closing = true;
                }
                Err(Failure::Unanswered(e) | Failure::Other(e)) => {
                    connection.closing = true;
                    return Err(e.context(format!("{} /todos", method.as_str())));
                }
            }
        };
        let bytes = answer.body;
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match answer.status {
            200..=299 if bytes.is_empty() => Ok(None),
            200..=299 => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} /todos: unexpected JSON: {}", method.as_str(), text())
            })?)),
            409 => Err(Conflict(text()).into()),
            s => bail!("{} /todos: {s}: {}", method.as_str(), text()),
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
        connection: &mut Connection,
        client: &str,
        item: String,
        n: u64,
    ) -> anyhow::Result<()> {
        if n % 20 == 19 {
            self.call::<serde::de::IgnoredAny>(connection, Method::Delete, client, None)
                .await?;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "title": item }))?;
        let todo: Id = self
            .call(connection, Method::Post, client, Some(&body))
            .await?
            .context("the added todo is missing")?;
        let list: Vec<Id> = self
            .call(connection, Method::Get, client, None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;
    use tokio::net::TcpListener;

    /// A server answering each request read on each connection with the next of `answers`
    /// (raw bytes), in order; the requests' heads are returned when it is dropped.
    async fn server(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            let mut answers = answers.into_iter().peekable();
            'connections: while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then its body by Content-Length.
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut chunk = [0u8; 1024];
                        match stream.read(&mut chunk).await.unwrap() {
                            0 => continue 'connections,
                            n => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let text = String::from_utf8(buf[..head].to_vec()).unwrap();
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |n| n.parse::<usize>().unwrap());
                    while buf.len() < head + length {
                        let mut chunk = [0u8; 1024];
                        match stream.read(&mut chunk).await.unwrap() {
                            0 => continue 'connections,
                            n => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    heads.push(text);
                    buf.drain(..head + length);
                    let Some(answer) = answers.next() else {
                        return heads;
                    };
                    stream.write_all(answer).await.unwrap();
                    if answers.peek().is_none() {
                        return heads;
                    }
                    if answer.windows(17).any(|w| w == b"Connection: close") {
                        continue 'connections;
                    }
                }
            }
            heads
        });
        (addr, task)
    }

    #[tokio::test]
    async fn answers_are_read_whole_in_each_framing_and_connections_are_kept_or_replaced() {
        let (addr, server) = server(vec![
            // Chunked, a chunk extension and a trailer.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n[{\"i\r\n7\r\nd\":7}]\n\r\n0\r\nTrailer: t\r\n\r\n",
            // An interim answer before the final one, with a length.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\n{\"id\":8}\n",
            // A conflict, read whole, the connection kept.
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nbusy",
            // No body, then the server closes.
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            // On a new connection.
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        ])
        .await;
        let web = WebTodos::new(&format!("http://{addr}").parse().unwrap()).unwrap();
        let mut c = web.connection().await.unwrap();
        let list: Vec<Id> = web
            .call(&mut c, Method::Get, "a", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(list.iter().map(|t| t.id).collect::<Vec<_>>(), [7]);
        let added: Id = web
            .call(&mut c, Method::Post, "a", Some(b"{\"title\":\"t\"}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(added.id, 8);
        let conflict = web.call::<Id>(&mut c, Method::Post, "a", Some(b"{}")).await;
        assert!(conflict.unwrap_err().is::<Conflict>());
        assert!(!c.closing);
        let none = web
            .call::<IgnoredAny>(&mut c, Method::Delete, "a", None)
            .await;
        assert!(none.unwrap().is_none());
        assert!(c.closing, "the server said it closes");
        let list: Vec<Id> = web
            .call(&mut c, Method::Get, "b", None)
            .await
            .unwrap()
            .unwrap();
        assert!(list.is_empty());
        drop(c);
        let heads = server.await.unwrap();
        assert_eq!(heads.len(), 5);
        assert!(heads[0].starts_with("GET /todos HTTP/1.1\r\nHost: 127.0.0.1:"));
        assert!(heads[0].contains("\r\nX-Client-Id: a\r\n"));
        assert!(heads[1].contains("\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"));
        assert!(heads[4].contains("\r\nX-Client-Id: b\r\n"));
    }

    #[tokio::test]
    async fn a_malformed_or_truncated_answer_is_an_error_and_the_connection_is_dropped() {
        let (addr, server) = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n[]",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n[]",
        ])
        .await;
        let web = WebTodos::new(&format!("http://{addr}").parse().unwrap()).unwrap();
        for expected in ["Content-Length", "malformed", "closed in an answer's body"] {
            let mut c = web.connection().await.unwrap();
            let e = web
                .call::<Vec<Id>>(&mut c, Method::Get, "a", None)
                .await
                .unwrap_err();
            assert!(format!("{e:#}").contains(expected), "{e:#}");
            assert!(c.closing, "a connection in an unknown state is not reused");
        }
        server.abort();
    }
}

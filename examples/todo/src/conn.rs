//! Connections as the server sees them: responses hyper writes on its own (to requests it
//! cannot parse: 400, 431, 414...) get a JSON body like every other error of the API.
//!
//! hyper answers a malformed request line or header, or headers over its limit, with a
//! status and an empty body, before any service runs. This wrapper recognizes such a
//! response as it is written (a 4xx head with `content-length: 0` and nothing after it,
//! which the API's own errors never are: they all carry a body) and writes it with a body
//! `{"error": KIND, "message": ...}` instead.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose bodiless 4xx responses get a JSON body.
#[derive(Debug)]
pub(crate) struct ErrorBodies<T> {
    inner: T,
    /// A rewritten response still to be written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
}

impl<T> ErrorBodies<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> ErrorBodies<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(rewritten) = with_body(buf) {
            self.pending = rewritten;
            // All of `buf` is taken; what the socket does not take now goes out on the next
            // write, flush or shutdown.
            if let Poll::Ready(Err(e)) = self.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// One buffer per response (hyper then writes a response head in one piece).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// `head` with a JSON body, when it is a whole bodiless 4xx response.
fn with_body(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(b"HTTP/1.1 4") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, headers) = text[..text.len() - 2].split_once("\r\n")?;
    if headers.contains("\r\n\r\n") {
        return None;
    }
    let lines: Vec<&str> = headers.split_terminator("\r\n").collect();
    let is_empty = |l: &&str| l.eq_ignore_ascii_case("content-length: 0");
    if !lines.iter().any(is_empty)
        || lines
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("content-type:"))
    {
        return None;
    }
    let (kind, message) = match status_line.get(9..12)? {
        "431" => ("headers_too_large", "the request's headers are too large"),
        "414" => ("uri_too_long", "the request's URI is too long"),
        "400" => ("bad_request", "the request is not valid HTTP/1.1"),
        "404" => ("not_found", "no such page or route"),
        "405" => ("method_not_allowed", "this route does not take this method"),
        "408" => ("timeout", "the request did not arrive in time"),
        "413" => ("too_large", "the request's body is too large"),
        _ => ("bad_request", "the request could not be served"),
    };
    let body = serde_json::json!({"error": kind, "message": message}).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 40);
    out.push_str(status_line);
    out.push_str("\r\n");
    for line in lines {
        if is_empty(&line) {
            out.push_str(&format!("content-length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\n\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::with_body;

    #[test]
    fn only_whole_bodiless_4xx_heads_get_a_body() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_body(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("content-type: application/json"));
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"], "bad_request");
        for (head, kind) in [
            (
                &b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"[..],
                "not_found",
            ),
            (
                b"HTTP/1.1 405 Method Not Allowed\r\nallow: GET\r\ncontent-length: 0\r\n\r\n",
                "method_not_allowed",
            ),
            (
                b"HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n",
                "bad_request",
            ),
        ] {
            let out = String::from_utf8(with_body(head).unwrap()).unwrap();
            let body = out.split_once("\r\n\r\n").unwrap().1;
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(value["error"], kind, "{out}");
        }
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 303 See Other\r\nlocation: x\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(with_body(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}

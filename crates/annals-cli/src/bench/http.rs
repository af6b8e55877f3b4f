//! The `todo` scenario over HTTP, against a running `annals serve` (or any TodoBackend that
//! takes `X-Client-Id`): as Equinox's `eqx run ... web`. Each test is the same as in process
//! (every 20th clears the list, then add a todo and read the list back), one request each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The list kept changing under a request (`409`): contention, not a fault.
#[derive(Debug, thiserror::Error)]
#[error("409 conflict: {0}")]
pub(super) struct Conflict(String);

/// A TodoBackend over HTTP.
pub(super) struct WebTodos {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Requests sent.
    pub requests: AtomicU64,
}

impl WebTodos {
    /// The API at `url`'s origin (`http://HOST:PORT`; a path such as `/todos` is ignored).
    pub(super) fn new(url: &url::Url) -> Self {
        let base = url.origin().ascii_serialization();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base,
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(connector),
            requests: AtomicU64::new(0),
        }
    }

    /// Fails with a one-line error when the API does not answer a list request.
    pub(super) async fn probe(&self) -> anyhow::Result<()> {
        self.call(Method::GET, "probe", None)
            .await
            .with_context(|| format!("{}/todos does not answer as a TodoBackend", self.base))?;
        Ok(())
    }

    async fn call(
        &self,
        method: Method,
        client: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}/todos", self.base))
            .header("x-client-id", client);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .context("no answer within 60 s")??;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        match status {
            s if s.is_success() && bytes.is_empty() => Ok(Value::Null),
            s if s.is_success() => Ok(serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} /todos: not JSON: {text}"))?),
            StatusCode::CONFLICT => Err(Conflict(text.into_owned()).into()),
            s => bail!("{method} /todos: {s}: {text}"),
        }
    }

    /// One test for `client`: see the module documentation.
    pub(super) async fn test(&self, client: &str, item: String, n: u64) -> anyhow::Result<()> {
        if n % 20 == 19 {
            self.call(Method::DELETE, client, None).await?;
        }
        let todo = self
            .call(Method::POST, client, Some(json!({ "title": item })))
            .await?;
        let id = todo["id"].as_u64().context("the added todo has no id")?;
        let list = self.call(Method::GET, client, None).await?;
        let ids: Vec<u64> = list
            .as_array()
            .context("the list is not an array")?
            .iter()
            .filter_map(|t| t["id"].as_u64())
            .collect();
        // Another worker may have cleared the list since: then all in it came after.
        ensure!(
            ids.contains(&id) || ids.iter().all(|i| *i > id),
            "todo {id} of {client} not read back"
        );
        Ok(())
    }
}

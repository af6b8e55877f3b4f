//! The store's options, and the client they connect: credentials taken out of the server
//! URLs, TLS, timeouts, and the refusals the server sends out of band.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::NatsError;

/// Options of a NATS store (its `Debug` shows the servers without their credentials).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The servers to connect to (`nats://host:port`); one is enough, the client learns
    /// the rest of a cluster from it.
    pub servers: Vec<String>,
    /// The JetStream stream holding the store (letters, digits, `_`, `-`).
    pub stream: String,
    /// Replicas of the stream and of the checkpoint bucket when they are created.
    pub replicas: usize,
    /// The largest event accepted (data plus metadata, in bytes).
    pub max_event_bytes: usize,
    /// How long a request waits for the server.
    pub timeout: Duration,
    /// TLS: set, every connection is encrypted and the servers' certificates are checked
    /// against these CA certificates (a PEM file) instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// TLS: a client certificate and its key (PEM files), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Every connection is encrypted (also set by the two above; a server that asks for
    /// TLS gets it either way).
    pub tls_required: bool,
    /// A credentials file (`.creds`: a user JWT and its NKey seed), as NATS accounts in
    /// operator mode (and hosted NATS) give their users.
    pub credentials_file: Option<PathBuf>,
    /// A file holding a user's NKey seed (`SU...`), for servers that know users by NKey.
    pub nkey_file: Option<PathBuf>,
    /// Whether connecting creates the event stream when missing (the default); unset, a
    /// missing stream is [`NatsError::NoStream`] and nothing is created. (The checkpoint
    /// bucket of an existing stream is created when missing either way: only a stream made
    /// by hand lacks it.)
    pub create: bool,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &without_credentials(&self.servers).0)
            .field("stream", &self.stream)
            .field("replicas", &self.replicas)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("timeout", &self.timeout)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("tls_required", &self.tls_required)
            .field("credentials_file", &self.credentials_file)
            .field("nkey_file", &self.nkey_file)
            .field("create", &self.create)
            .finish()
    }
}

impl NatsConfig {
    /// Defaults for the server at `url`: stream `annals`, 1 replica, 1 MiB events, 10 s
    /// timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_servers([url])
    }

    /// As [`new`](Self::new), with several seed servers.
    pub fn with_servers<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            stream: "annals".into(),
            replicas: 1,
            max_event_bytes: annals::DEFAULT_MAX_EVENT_BYTES,
            timeout: Duration::from_secs(10),
            tls_ca: None,
            tls_client: None,
            tls_required: false,
            credentials_file: None,
            nkey_file: None,
            create: true,
        }
    }

    /// Opens only an existing store: a missing stream is [`NatsError::NoStream`], and
    /// nothing is created (for tools that read, so a mistyped name or server is not a new,
    /// empty store).
    pub fn existing_only(mut self) -> Self {
        self.create = false;
        self
    }

    /// Logs in with the credentials file `path` (a user JWT and its NKey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Logs in with the NKey seed in the file `path`.
    pub fn nkey_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey_file = Some(path.into());
        self
    }

    /// Encrypts every connection, checking the servers' certificates against the CA
    /// certificates in the PEM file `ca`.
    pub fn tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(ca.into());
        self.tls_required = true;
        self
    }

    /// Presents the client certificate `cert` with its key `key` (PEM files) to servers
    /// that verify clients; encrypts every connection.
    pub fn tls_client(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self.tls_required = true;
        self
    }

    /// Encrypts every connection, checking the servers' certificates against the system's
    /// roots (unless [`tls_ca`](Self::tls_ca) names others).
    pub fn require_tls(mut self) -> Self {
        self.tls_required = true;
        self
    }

    /// Uses the JetStream stream `name`.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// Creates the stream with `replicas` replicas (1, 3 or 5).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// A client connected to the servers, logged in with the credentials their URLs carry
    /// (`nats://USER:PASSWORD@HOST:PORT` or `nats://TOKEN@HOST:PORT`, percent-encoded; the
    /// client itself takes none from a URL) or with the credentials or NKey seed file, over
    /// TLS as configured, with the configured timeouts. Errors show the servers without
    /// their credentials, and a credentials file by its path only.
    pub async fn client(&self) -> std::result::Result<async_nats::Client, NatsError> {
        self.client_and_refusals().await.map(|(client, _)| client)
    }

    /// [`client`](Self::client), with the refusals its server sends it (see [`Refusals`]).
    pub(crate) async fn client_and_refusals(
        &self,
    ) -> std::result::Result<(async_nats::Client, Refusals), NatsError> {
        let (refused, refusals) = watch::channel(None);
        let (servers, credentials) = without_credentials(&self.servers);
        let options = match credentials {
            Some(Credentials::UserPassword(user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
            Some(Credentials::Token(token)) => async_nats::ConnectOptions::with_token(token),
            None => async_nats::ConnectOptions::new(),
        };
        let unreadable = |path: &PathBuf| {
            let path = path.clone();
            move |source| NatsError::Credentials { path, source }
        };
        let mut options = options.require_tls(self.tls_required);
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(unreadable(path))?;
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(unreadable(path))?;
            let seed = seed.trim();
            if !seed.starts_with("SU") {
                return Err(NatsError::Credentials {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "it holds no user NKey seed (a line starting SU)",
                    ),
                });
            }
            options = options.nkey(seed.to_owned());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .event_callback(move |event| {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
                {
                    if text.to_ascii_lowercase().contains("permissions violation") {
                        refused.send_replace(Some(Arc::from(text.as_str())));
                    }
                }
                std::future::ready(())
            })
            .connect(servers.as_slice())
            .await
            .map_err(|source| NatsError::Connect {
                url: servers.join(","),
                source,
            })?;
        Ok((client, refusals))
    }
}

/// The last refusal the server sent the client (`Permissions Violation for Publish to
/// "SUBJECT"`): a message to a subject its user may not publish to is dropped with only
/// this said, out of band, so a request to it would otherwise wait for its timeout.
pub(crate) type Refusals = watch::Receiver<Option<Arc<str>>>;

/// Credentials a server URL carries, percent-decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// `nats://USER:PASSWORD@HOST:PORT`.
    UserPassword(String, String),
    /// `nats://TOKEN@HOST:PORT`.
    Token(String),
}

/// The servers without their credentials, and the credentials of the first that has any.
/// A server that is not a URL (`host:port`) is kept as it is, for the client to read.
pub(crate) fn without_credentials(servers: &[String]) -> (Vec<String>, Option<Credentials>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut found = None;
    let servers = servers
        .iter()
        .map(|server| {
            let Ok(mut url) = url::Url::parse(server) else {
                return server.clone();
            };
            if url.username().is_empty() && url.password().is_none() {
                return server.clone();
            }
            let user = decode(url.username());
            let credentials = match url.password() {
                Some(password) => Credentials::UserPassword(user, decode(password)),
                None => Credentials::Token(user),
            };
            found.get_or_insert(credentials);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        })
        .collect();
    (servers, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_server_urls_decoded() {
        let servers = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            without_credentials(&servers(&[
                "nats://ann:p%40ss%2B1%20x@h:4222",
                "nats://g:4222"
            ])),
            (
                servers(&["nats://h:4222", "nats://g:4222"]),
                Some(Credentials::UserPassword("ann".into(), "p@ss+1 x".into()))
            )
        );
        assert_eq!(
            without_credentials(&servers(&["nats://h:4222", "nats://s3cr%2Ft@g:4222"])),
            (
                servers(&["nats://h:4222", "nats://g:4222"]),
                Some(Credentials::Token("s3cr/t".into()))
            )
        );
        assert_eq!(
            without_credentials(&servers(&["127.0.0.1:4222"])),
            (servers(&["127.0.0.1:4222"]), None)
        );
        let shown = format!("{:?}", NatsConfig::new("nats://ann:s3cret@h:4222"));
        assert!(
            shown.contains("nats://h:4222") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}

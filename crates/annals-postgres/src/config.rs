//! How to reach a PostgreSQL store: the driver's connection options, TLS, and Annals options.

use std::time::Duration;

use crate::tls::PgTls;
use crate::PgError;

/// Options of a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConfig {
    /// Where and as whom to connect (hosts, ports, user, password, database, options...),
    /// as the driver takes them.
    pub connection: tokio_postgres::Config,
    /// Whether and how to use TLS (libpq's `sslmode` and `sslrootcert`).
    pub tls: PgTls,
    /// The PostgreSQL schema holding the store's tables (several stores can share a
    /// database under different schemas).
    pub schema: String,
    /// Pooled connections, at most (for reads, read models and coordination; feed reads,
    /// group commits and grouped catch-ups have a few connections of their own besides).
    pub pool_size: usize,
    /// The largest event accepted (data plus metadata, in bytes).
    pub max_event_bytes: usize,
    /// How long to wait for a connection (to connect, or for a free pooled one).
    pub connect_timeout: Duration,
    /// How many connections write group commits (each one transaction holding the appends
    /// queued meanwhile), kept for them apart from the pool. On each, a second group as
    /// large as the one in flight is sent behind it without waiting for its answer.
    pub group_commits: usize,
}

impl PgConfig {
    /// Defaults for `connection`: TLS preferred (libpq's default), schema `annals`, 16
    /// connections, 1 MiB events, 10 s timeout, one group commit at a time.
    pub fn new(connection: tokio_postgres::Config) -> Self {
        Self {
            connection,
            tls: PgTls::default(),
            schema: "annals".into(),
            pool_size: 16,
            max_event_bytes: annals::DEFAULT_MAX_EVENT_BYTES,
            connect_timeout: Duration::from_secs(10),
            group_commits: 1,
        }
    }

    /// Uses `schema` (lowercase letters, digits and `_`, starting with a letter or `_`; not
    /// one of PostgreSQL's own).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the pool size (at least one).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Sets how many connections write group commits (at least one). One is the default:
    /// while a group commits the next one fills (or, as large, is sent behind it), and on
    /// a 2-core machine one connection wrote more events per second than two or more
    /// (`BENCHMARKS.md`); a larger server may want more.
    pub fn group_commits(mut self, groups: usize) -> Self {
        self.group_commits = groups.max(1);
        self
    }

    /// Sets how TLS is used.
    pub fn tls(mut self, tls: PgTls) -> Self {
        self.tls = tls;
        self
    }

    /// The driver's options with the TLS mode set, and the TLS connector: what the store's
    /// own connections use, for tools that open connections of their own beside it.
    pub fn driver(
        &self,
    ) -> Result<
        (
            tokio_postgres::Config,
            tokio_postgres_rustls::MakeRustlsConnect,
        ),
        PgError,
    > {
        let (tls, ssl_mode) = self.tls.connector()?;
        let mut connection = self.connection.clone();
        connection.ssl_mode(ssl_mode);
        Ok((connection, tls))
    }

    /// Where the store is, for messages: `user@host:port/database` (never the password).
    pub fn target(&self) -> String {
        use tokio_postgres::config::Host;
        let c = &self.connection;
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    Host::Unix(path) => path.display().to_string(),
                };
                let port = c
                    .get_ports()
                    .get(i)
                    .or_else(|| c.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let hosts = if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(",")
        };
        let user = c.get_user().unwrap_or("(default user)");
        let db = c.get_dbname().unwrap_or(user);
        format!("{user}@{hosts}/{db}")
    }
}

/// Checks a schema name: only plain identifiers pass (they are also quoted wherever they are
/// spliced into SQL, so reserved words work), and never one of PostgreSQL's own schemas.
pub(crate) fn validate_schema(schema: &str) -> Result<(), PgError> {
    if schema == "information_schema" || schema.starts_with("pg_") {
        return Err(PgError::SystemSchema(schema.to_owned()));
    }
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48;
    if ok {
        Ok(())
    } else {
        Err(PgError::InvalidSchema(schema.to_owned()))
    }
}

/// A validated schema name as a quoted SQL identifier.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_validated_and_quoted() {
        assert!(validate_schema("annals_1").is_ok());
        assert!(validate_schema("select").is_ok());
        for bad in ["x; drop table y", "Bad-Name", "", "1abc"] {
            assert!(
                matches!(validate_schema(bad), Err(PgError::InvalidSchema(_))),
                "{bad}"
            );
        }
        for system in ["information_schema", "pg_catalog", "pg_toast", "pg_x"] {
            assert!(
                matches!(validate_schema(system), Err(PgError::SystemSchema(_))),
                "{system}"
            );
        }
        assert_eq!(quoted("select"), "\"select\"");
    }

    #[test]
    fn the_target_names_user_hosts_and_database_never_the_password() {
        let mut c = tokio_postgres::Config::new();
        c.user("app")
            .password("secret")
            .host("db1")
            .host("db2")
            .port(6432)
            .dbname("shop");
        let target = PgConfig::new(c).target();
        assert_eq!(target, "app@db1:6432,db2:6432/shop");
        assert!(!target.contains("secret"));
    }
}

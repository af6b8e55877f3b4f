//! How to reach a PostgreSQL store: a libpq-style URL plus Annals options.

use std::time::Duration;

use crate::PgError;

/// Options of a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConfig {
    /// The connection URL, without the Annals options.
    pub url: String,
    /// The PostgreSQL schema holding the store's tables (several stores can share a
    /// database under different schemas).
    pub schema: String,
    /// Pooled connections, at most.
    pub pool_size: usize,
    /// The largest event accepted (data plus metadata, in bytes).
    pub max_event_bytes: usize,
    /// How long to wait for a connection (to connect, or for a free pooled one).
    pub connect_timeout: Duration,
}

impl PgConfig {
    /// Defaults for `url`: schema `annals`, 16 connections, 1 MiB events, 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "annals".into(),
            pool_size: 16,
            max_event_bytes: annals::DEFAULT_MAX_EVENT_BYTES,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Uses `schema` (letters, digits and `_`, starting with a letter or `_`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the pool size (at least one).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Parses `postgres://user@host:port/db?annals_schema=NAME&annals_pool=N&...`; other
    /// query parameters are passed to the driver.
    pub fn from_url(url: &str) -> Result<Self, PgError> {
        let invalid = |reason: String| PgError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "expected postgres://USER@HOST:PORT/DATABASE".into(),
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut config = Self::new(base);
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("annals_schema", v)) => config.schema = v.to_owned(),
                Some(("annals_pool", v)) => {
                    let n = v
                        .parse()
                        .map_err(|_| invalid(format!("annals_pool={v}: expected a number")))?;
                    config = config.pool_size(n);
                }
                _ => passed.push(pair),
            }
        }
        if !passed.is_empty() {
            config.url = format!("{base}?{}", passed.join("&"));
        }
        config
            .url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid(e.to_string()))?;
        validate_schema(&config.schema)?;
        Ok(config)
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
    debug_assert!(validate_schema(schema).is_ok());
    format!("\"{}\"", schema.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_options() {
        let c = PgConfig::from_url(
            "postgres://u@h:5432/db?annals_schema=shop&annals_pool=4&connect_timeout=3",
        )
        .unwrap();
        assert_eq!((c.schema.as_str(), c.pool_size), ("shop", 4));
        assert_eq!(c.url, "postgres://u@h:5432/db?connect_timeout=3");
        for bad in [
            "mysql://x",
            "postgres://u@h/db?annals_schema=Bad-Name",
            "postgres://u@h/db?annals_pool=x",
        ] {
            assert!(PgConfig::from_url(bad).is_err(), "{bad}");
        }
        assert!(validate_schema("annals_1").is_ok());
        assert!(validate_schema("x; drop table y").is_err());
        for system in ["information_schema", "pg_catalog", "pg_toast", "pg_x"] {
            assert!(
                matches!(validate_schema(system), Err(PgError::SystemSchema(_))),
                "{system}"
            );
        }
        assert_eq!(quoted("select"), "\"select\"");
    }
}

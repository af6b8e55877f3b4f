//! Throwaway PostgreSQL servers for tests.
//!
//! [`shared`] gives the server of this test binary: `ANNALS_PG_URL` when set, otherwise one
//! started from the installed binaries (`initdb`, `pg_ctl` under
//! `/usr/lib/postgresql/*/bin` or on `PATH`) in a temporary directory on a free port, as
//! the `postgres` user when running as root. A watchdog process stops it and removes the
//! directory when the test binary exits. [`PgServer::start`] starts a private one, for
//! tests that restart or break their server. Failing to get a server panics with the
//! reason: a missing PostgreSQL fails the run, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    /// A URL for the `postgres` superuser on the `postgres` database.
    pub url: String,
    /// Its data directory (when started here).
    pub data: Option<PathBuf>,
    /// Its port.
    pub port: u16,
    bin: Option<PathBuf>,
    socket_dir: Option<PathBuf>,
    /// Server settings beyond the defaults (`-c name=value ...`).
    settings: String,
}

fn find_bin() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.reverse();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin \
             or on PATH: install PostgreSQL (apt-get install postgresql) or set ANNALS_PG_URL"
                .to_owned()
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

use crate::free_loopback_port as free_port;

impl PgServer {
    /// `pg_dump` of `schema` (schema and data, plain SQL): what a backup of it holds, for
    /// tests that search it byte for byte.
    pub fn dump_schema(&self, schema: &str) -> Result<Vec<u8>, String> {
        let bin = find_bin()?;
        let out = pg_command(&bin, "pg_dump")
            .args(["-d", &self.url, "-n", schema])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_dump: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out.stdout)
    }

    /// Starts a private server, stopped and removed when this process exits.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// Starts a private server that accepts TCP connections over TLS only (`hostssl` in
    /// `pg_hba.conf`), with the given PEM certificate (chain) and private key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self, String> {
        let bin = find_bin()?;
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("annals-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&root);
                    c
                },
                "chown the server directory to postgres",
            )?;
        }
        let data = root.join("data");
        let mut initdb = pg_command(&bin, "initdb");
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb")?;
        let mut settings = String::new();
        if let Some((cert, key)) = tls {
            let write = |name: &str, text: &str| -> Result<(), String> {
                let path = data.join(name);
                std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("{}: {e}", path.display()))
            };
            write("server.crt", cert)?;
            write("server.key", key)?;
            write(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )?;
            if is_root() {
                let mut chown = Command::new("chown");
                chown
                    .args(["postgres:postgres"])
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key"))
                    .arg(data.join("pg_hba.conf"));
                run(chown, "chown the server's certificate to postgres")?;
            }
            settings = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
        }
        let port = free_port()?;
        let server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            data: Some(data),
            port,
            bin: Some(bin),
            socket_dir: Some(root.clone()),
            settings,
        };
        server.pg_ctl_start()?;
        server.watchdog(&root)?;
        Ok(server)
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c idle_in_transaction_session_timeout=60s{}",
            self.port,
            self.socket_dir.as_ref().expect("started here").display(),
            self.settings
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = pg_command(self.bin.as_ref().expect("started here"), "pg_ctl");
        c.arg("-D").arg(self.data.as_ref().expect("started here"));
        c.args(args);
        c
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self
            .socket_dir
            .as_ref()
            .expect("started here")
            .join("server.log");
        let mut c = self.pg_ctl(&["-w", "-t", "60", "-o", &self.options(), "-l"]);
        c.arg(&log).arg("start");
        run(c, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\n{log}")
        })
    }

    /// Restarts the server (fast shutdown, then start on the same port).
    pub fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.pg_ctl_start()
    }

    /// Stops the server (fast shutdown); [`start_again`](Self::start_again) brings it back.
    pub fn stop(&self) -> Result<(), String> {
        run(self.pg_ctl(&["-w", "-m", "fast", "stop"]), "pg_ctl stop")
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }

    /// Its connection options (the `postgres` superuser on the `postgres` database).
    ///
    /// # Panics
    ///
    /// When `ANNALS_PG_URL` is not a URL the driver accepts.
    pub fn connection(&self) -> tokio_postgres::Config {
        if self.bin.is_none() {
            return self
                .url
                .parse()
                .unwrap_or_else(|e| panic!("ANNALS_PG_URL is not a PostgreSQL URL: {e}"));
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        config
    }

    /// A shell that stops the server and removes its directory once this process is gone.
    fn watchdog(&self, root: &Path) -> Result<(), String> {
        let stop = format!(
            "{} -D {} -m immediate -w stop",
            self.bin
                .as_ref()
                .expect("started here")
                .join("pg_ctl")
                .display(),
            self.data.as_ref().expect("started here").display()
        );
        let stop = if is_root() {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            parent = std::process::id(),
            root = root.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("start the server watchdog: {e}"))
    }
}

/// The server shared by this test binary.
///
/// # Panics
///
/// When no server can be had: the message says why and what to install.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match std::env::var("ANNALS_PG_URL") {
        Ok(url) => Ok(PgServer {
            // Its port, for tests that need it (5432 when the URL names none or cannot be
            // read: `connection` reports that).
            port: url
                .parse::<tokio_postgres::Config>()
                .ok()
                .and_then(|c| c.get_ports().first().copied())
                .unwrap_or(5432),
            url,
            data: None,
            bin: None,
            socket_dir: None,
            settings: String::new(),
        }),
        Err(_) => PgServer::start(),
    });
    match server {
        Ok(s) => s,
        Err(e) => panic!("no PostgreSQL server for the tests: {e}"),
    }
}

/// A fresh, unique schema name for one test.
pub fn schema_name(prefix: &str) -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Connects to `url` and drives the connection on a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Creates the login role `{schema}_reader` (password `reader`) granted only `USAGE` on
/// `schema` and `SELECT` on its tables, its transactions read-only by default (as on a hot
/// standby); answers its name. Drop it with [`drop_role`].
pub async fn create_read_only_role(owner: &tokio_postgres::Client, schema: &str) -> String {
    let role = format!("{schema}_reader");
    owner
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'reader'; \
             GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; \
             ALTER ROLE {role} SET default_transaction_read_only = on"
        ))
        .await
        .unwrap_or_else(|e| panic!("create role {role}: {e}"));
    role
}

/// Drops a role made by [`create_read_only_role`] and what it owns.
pub async fn drop_role(owner: &tokio_postgres::Client, role: &str) {
    owner
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap_or_else(|e| panic!("drop role {role}: {e}"));
}

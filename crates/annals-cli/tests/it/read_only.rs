//! The reading commands on a SQLite store this process cannot write (another user's file in
//! another user's directory, a backup on a read-only mount): they read it read-only and
//! leave nothing beside it; the writing commands say why they cannot write.
//!
//! Run as root, the commands run as user `nobody` (`setpriv`); otherwise the file and its
//! directory are made read-only to this user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use annals::{EventData, EventStore, ExpectedVersion, StreamName};
use annals_sqlite::{SqliteConfig, SqliteStore};

use crate::ops::{failed_saying, json_lines, on};
use crate::succeeded;

/// Another user, or this one with the store read-only to it.
struct Other {
    dir: PathBuf,
    /// The binary where `nobody` may run it, when run as root.
    root_copy: Option<PathBuf>,
}

impl Other {
    fn new(dir: &Path) -> Self {
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let root_copy = root.then(|| {
            let bin = dir.join("annals-bin");
            let built = Path::new(env!("CARGO_BIN_EXE_annals"));
            if std::fs::hard_link(built, &bin).is_err() {
                std::fs::copy(built, &bin).unwrap();
            }
            bin
        });
        Self {
            dir: dir.to_owned(),
            root_copy,
        }
    }

    /// Makes the store and its directory read-only to the other user.
    fn lock(&self) {
        self.lock_in(&self.dir);
    }

    /// Makes the files of `dir` and `dir` read-only to the other user.
    fn lock_in(&self, dir: &Path) {
        let (files, dirs) = match self.root_copy {
            // Owned by root: `nobody` may read and enter, not write.
            Some(_) => (0o644, 0o755),
            None => (0o444, 0o555),
        };
        set_modes(dir, files, dirs);
    }

    /// Gives the store and its directory back to this user.
    fn unlock(&self) {
        set_modes(&self.dir, 0o644, 0o755);
    }

    fn run(&self, store: &str, args: &[&str]) -> Output {
        self.command(store, args)
            .output()
            .expect("the annals binary runs")
    }

    fn command(&self, store: &str, args: &[&str]) -> Command {
        let mut command = match &self.root_copy {
            Some(bin) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(bin);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_annals")),
        };
        command
            .args(args)
            .args(["--store", store])
            .current_dir(&self.dir)
            .env_remove("ANNALS_STORE")
            .env_remove("ANNALS_ADMIN_TOKEN");
        command
    }
}

/// The status code of `GET path` (the first line of the answer).
fn status(base: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Sets the mode of the SQLite files in `dir`, then of `dir`.
fn set_modes(dir: &Path, files: u32, dirs: u32) {
    let mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(dir, 0o755);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains(".db") {
            mode(&path, files);
        }
    }
    mode(dir, dirs);
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn reading_commands_read_a_store_they_cannot_write() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let store = "sqlite://annals.db";
    for data in [r#"{"n":1}"#, r#"{"n":2}"#] {
        succeeded(&on(
            dir,
            store,
            &["append", "Cart-1", "--type", "Added", "--data", data],
        ));
    }
    let other = Other::new(dir);
    let before = std::fs::read(dir.join("annals.db")).unwrap();
    let listed = entries(dir);
    other.lock();

    let read = other.run(store, &["read", "Cart-1", "--json"]);
    let events = json_lines(&succeeded(&read));
    let data: Vec<_> = events.iter().map(|e| e["data"]["n"].clone()).collect();
    assert_eq!(data, [1, 2]);
    let dumped = json_lines(&succeeded(&other.run(store, &["dump"])));
    assert_eq!(dumped.len(), 2);
    let stats = succeeded(&other.run(store, &["stats"]));
    assert!(
        stats.contains("Cart") && stats.contains("head position: 2"),
        "{stats}"
    );
    succeeded(&other.run(store, &["checkpoint", "list"]));
    succeeded(&other.run("sqlite://annals.db?mode=ro", &["read", "Cart-1"]));
    // Nobody has it open and its directory cannot be written: it reads as it is now, so
    // following it would wait for events that never show.
    let tail = other.run(store, &["tail", "--from", "0", "--count", "3"]);
    failed_saying(&tail, "new events would never show");

    // Writing commands are refused, saying why.
    let append = other.run(store, &["append", "Cart-1", "--type", "X", "--data", "{}"]);
    failed_saying(&append, "cannot write the file or its directory");
    let set = other.run(store, &["checkpoint", "set", "g", "1"]);
    failed_saying(&set, "cannot write");
    let forced = other.run(
        "sqlite://annals.db?mode=ro",
        &["append", "Cart-1", "--type", "X", "--data", "{}"],
    );
    failed_saying(&forced, "open read-only: nothing was written");
    // The admin pages (they need `?mode=ro` to open it: their actions write), read-model
    // rows included, all served.
    let refused = other.run(store, &["admin", "--listen", "127.0.0.1:0"]);
    failed_saying(&refused, "?mode=ro");
    let admin = other.command(
        "sqlite://annals.db?mode=ro",
        &["admin", "--listen", "127.0.0.1:0"],
    );
    admin_pages_served(admin);
    // The service keeps its read model in the store: refused at start, saying how.
    let serve = other.run(
        "sqlite://annals.db?mode=ro",
        &["serve", "--listen", "127.0.0.1:0"],
    );
    failed_saying(&serve, "open read-only");
    failed_saying(&serve, "--no-read-model serves without it");

    // A read-only open creates no store.
    let missing = other.run("sqlite://missing.db", &["read", "Cart-1"]);
    assert!(!missing.status.success());

    assert_eq!(std::fs::read(dir.join("annals.db")).unwrap(), before);
    assert_eq!(entries(dir), listed, "files were left beside the store");

    // While the owner has the store open and writing (its `-shm` exists), a reader joins
    // its WAL and sees what was committed since, before any checkpoint.
    other.unlock();
    let owner = SqliteStore::open(SqliteConfig::new(dir.join("annals.db"))).unwrap();
    owner
        .append(
            &StreamName::new("Cart-1").unwrap(),
            ExpectedVersion::Exact(annals::Version(2)),
            vec![EventData::new("Added", br#"{"n":3}"#.to_vec())],
        )
        .await
        .unwrap();
    other.lock();
    let read = other.run(store, &["read", "Cart-1", "--json"]);
    let events = json_lines(&succeeded(&read));
    let data: Vec<_> = events.iter().map(|e| e["data"]["n"].clone()).collect();
    assert_eq!(data, [1, 2, 3]);
    let tail = other.run(store, &["tail", "--from", "0", "--count", "3", "--json"]);
    assert_eq!(json_lines(&succeeded(&tail)).len(), 3);

    // A copy of the file and its WAL (no `-shm`) where the reader cannot write: the file
    // alone would read without the WAL's commits, so the reader refuses it.
    other.unlock();
    let backup = dir.join("backup");
    std::fs::create_dir(&backup).unwrap();
    for name in ["annals.db", "annals.db-wal"] {
        std::fs::copy(dir.join(name), backup.join(name)).unwrap();
    }
    other.lock_in(&backup);
    let copy = other.run("sqlite://backup/annals.db", &["read", "Cart-1"]);
    failed_saying(&copy, "annals.db-wal holds commits not yet copied");
    set_modes(&backup, 0o644, 0o755);
    drop(owner);
}

/// Spawns `annals admin` (`command` holds the store and `--listen 127.0.0.1:0`), checks
/// that every page of the store's `Cart-1` is served, then stops it.
fn admin_pages_served(mut command: Command) {
    let mut admin = crate::admin::Killed(Some(
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let stdout = admin.0.as_mut().unwrap().stdout.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .expect("annals admin announces its address")
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let pages = [
        "/",
        "/streams",
        "/stream?name=Cart-1",
        "/groups",
        "/read-models",
    ];
    let served: Vec<u16> = pages.iter().map(|page| status(&base, page)).collect();
    assert_eq!(served, [200; 5], "{pages:?}");
}

/// A PostgreSQL role granted only `USAGE` on the schema and `SELECT` on its tables, its
/// transactions read-only (as on a hot standby): the reading commands and every admin page
/// work, read-model rows included; a write is refused.
#[tokio::test]
async fn a_read_only_postgres_role_reads_and_browses_the_admin_pages() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let (url, config) = crate::ops::pg_target("ro_role");
    succeeded(&on(
        dir,
        &url,
        &[
            "append",
            "Cart-1",
            "--type",
            "Added",
            "--data",
            r#"{"n":1}"#,
        ],
    ));
    let schema = config.schema.clone();
    let server = annals_testkit::postgres::shared();
    let owner = annals_testkit::postgres::connect(&server.url).await;
    let role = annals_testkit::postgres::create_read_only_role(&owner, &schema).await;
    let reader = url.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:reader@"),
        1,
    );
    assert_ne!(reader, url);
    let checked = std::panic::catch_unwind(|| {
        let events = json_lines(&succeeded(&on(dir, &reader, &["read", "Cart-1", "--json"])));
        assert_eq!(events.len(), 1);
        assert_eq!(
            json_lines(&succeeded(&on(dir, &reader, &["dump"]))).len(),
            1
        );
        let stats = succeeded(&on(dir, &reader, &["stats"]));
        assert!(stats.contains("Cart"), "{stats}");
        let append = on(
            dir,
            &reader,
            &["append", "Cart-1", "--type", "X", "--data", "{}"],
        );
        assert!(!append.status.success(), "a read-only role appended");
        let mut admin = Command::new(env!("CARGO_BIN_EXE_annals"));
        admin
            .args(["admin", "--listen", "127.0.0.1:0", "--store", &reader])
            .env_remove("ANNALS_STORE")
            .env_remove("ANNALS_ADMIN_TOKEN");
        admin_pages_served(admin);
    });
    annals_testkit::postgres::drop_role(&owner, &role).await;
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

/// The reading commands, and those that change a store that must exist (delete, truncate,
/// retention, checkpoints, scavenge), refuse a store that is not there (a mistyped file,
/// schema or stream name) instead of creating an empty one; a command that writes events
/// creates it, after which they read it.
#[tokio::test]
async fn commands_that_add_no_events_refuse_a_store_that_does_not_exist_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The reading commands, and those that change a store that must exist.
    let reading: [&[&str]; 13] = [
        &["read", "Cart-1"],
        &["dump"],
        &["tail"],
        &["stats"],
        &["checkpoint", "list"],
        &["parked", "list"],
        &["retention", "show"],
        &["sync", "--to", "memory://"],
        &["delete", "Cart-1"],
        &["truncate", "Cart-1", "--before", "1"],
        &["retention", "set", "Cart", "--max-count", "5"],
        &["checkpoint", "set", "g", "0"],
        &["scavenge"],
    ];
    let pg = annals_testkit::postgres::shared();
    let (pg_url, pg_config) = crate::ops::pg_target("absent");
    let schema = pg_config.schema.clone();
    let owner = annals_testkit::postgres::connect(&pg.url).await;
    let nats = annals_testkit::nats::shared();
    let stream = annals_testkit::nats::stream_name("absent");
    let nats_url = format!("{}?stream={stream}", nats.url);
    let nats_config = annals_nats::NatsConfig::new(nats.url.clone())
        .stream(&stream)
        .existing_only();
    for (url, says) in [
        ("sqlite://typo.db", "typo.db: no such file"),
        (pg_url.as_str(), "holds no store"),
        (nats_url.as_str(), "does not exist"),
    ] {
        for args in reading {
            // `sync` reads the store named by `--from`.
            let out = match args[0] {
                "sync" => on(dir, "memory://", &[args, &["--from", url]].concat()),
                _ => on(dir, url, args),
            };
            failed_saying(&out, says);
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("annals init"),
                "{args:?} on {url}: {out:?}"
            );
        }
    }
    // Nothing was made: no file beside the commands, no schema, no stream.
    assert!(entries(dir).is_empty(), "{:?}", entries(dir));
    let schemas = owner
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .unwrap();
    assert_eq!(schemas.get::<_, i64>(0), 0);
    match annals_nats::NatsStore::connect(nats_config.clone()).await {
        Err(annals_nats::NatsError::NoStream(name)) => assert_eq!(name, stream),
        other => panic!("expected NoStream, got {:?}", other.map(|_| ())),
    }
    // Once a writing command made each store, the reading commands read it.
    for url in ["sqlite://typo.db", pg_url.as_str(), nats_url.as_str()] {
        succeeded(&on(
            dir,
            url,
            &["append", "Cart-1", "--type", "Added", "--data", "{}"],
        ));
        let events = json_lines(&succeeded(&on(dir, url, &["read", "Cart-1", "--json"])));
        assert_eq!(events.len(), 1, "{url}");
        succeeded(&on(dir, url, &["stats"]));
    }
    assert!(annals_nats::NatsStore::connect(nats_config).await.is_ok());
}

//! `annals admin` in headless Chromium: a person opening each page of a store with known
//! events sees them (a stream in order, an event's JSON, its causation link followed), and
//! hostile event data renders as inert text on every page that shows it. A screenshot of
//! each page is saved under the target directory (`admin-screenshots/`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use annals::{EventData, EventStore, ExpectedVersion, StreamName};
use annals_sqlite::{SqliteConfig, SqliteStore};

/// The stream whose name, event type, data and metadata are hostile.
const HOSTILE_STREAM: &str = "Hostile-<img/src=x/onerror=alert(3)>";
const HOSTILE_TYPE: &str = "\"><img src=x onerror=alert(2)>";

/// Writes the known events: `Orders-1` (Placed, Paid caused by Placed, Shipped) and the
/// hostile stream; returns the id of `Placed`.
fn known_events(path: &Path) -> annals::Uuid {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(path)).unwrap();
        let orders = StreamName::new("Orders-1").unwrap();
        let placed =
            EventData::json("Placed", &serde_json::json!({"item": "book", "qty": 2})).unwrap();
        let placed_id = placed.event_id;
        let paid = EventData::json("Paid", &serde_json::json!({"amount": 12.5}))
            .unwrap()
            .with_causation_id(placed_id)
            .with_correlation_id(placed_id);
        // A body whose numbers a float cannot hold and whose keys are not in order.
        let shipped = EventData::new(
            "Shipped",
            br#"{"parcel":123456789012345678901234567890,"carrier":"post","fee":0.10000000000000000000001}"#.to_vec(),
        );
        store
            .append(
                &orders,
                ExpectedVersion::NoStream,
                vec![placed, paid, shipped],
            )
            .await
            .unwrap();
        let hostile = StreamName::new(HOSTILE_STREAM).unwrap();
        let data = serde_json::json!({
            "note": "<script>document.title='pwned'</script>",
            "attr": "\"><img src=x onerror=alert(1)>",
            "big": "A".repeat(200_000),
        });
        let event = EventData::json(HOSTILE_TYPE, &data)
            .unwrap()
            .with_metadata(br#"{"m":"<b>bold</b><iframe src=javascript:alert(4)>"}"#.to_vec());
        store
            .append(&hostile, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
        placed_id
    })
}

/// A running `annals admin`.
struct Admin {
    child: Child,
    base: String,
}

impl Admin {
    fn start(store: &str, listen: &str) -> Result<Admin, String> {
        Self::start_args(&["--store", store, "--listen", listen])
    }

    fn start_with_token(store: &str, token: &str) -> Result<Admin, String> {
        Self::start_args(&[
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--token",
            token,
        ])
    }

    fn start_args(args: &[&str]) -> Result<Admin, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
            .arg("admin")
            .args(args)
            .env_remove("ANNALS_ADMIN_TOKEN")
            .env("ANNALS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("annals admin starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(line)) => {
                let base = line
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .unwrap_or_else(|| panic!("no URL in {line:?}"))
                    .trim_end_matches('/')
                    .to_owned();
                Ok(Admin { child, base })
            }
            _ => {
                let out = child.wait_with_output().unwrap();
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium as every browser test runs it, with its profile in `profile`.
pub(crate) fn headless_chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        &format!("--user-data-dir={}", profile.display()),
    ]);
    command
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args` (with a bounded wait): its stdout.
fn chromium(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = headless_chromium(profile.path())
        .arg("--hide-scrollbars")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (apt-get install chromium)");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(120));
    let _ = child.kill();
    let _ = child.wait();
    out.expect("chromium answers within 120 s")
}

/// What a person sees at `url` (the DOM after the page loaded), and a screenshot of it
/// saved as `name`.png.
fn open(url: &str, name: &str) -> String {
    let shot = screenshots().join(format!("{name}.png"));
    chromium(
        url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
        ],
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "no screenshot of {url}"
    );
    chromium(url, &["--dump-dom".into()])
}

/// The text of the element with `id` in `dom` (its inner HTML, tags stripped).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open_end = start + dom[start..].find('>').unwrap() + 1;
    let rest = &dom[open_end..];
    let mut text = String::new();
    let mut in_tag = false;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => {
                if rest[i..].starts_with("</") {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                } else if !rest[i..].starts_with("<br") {
                    depth += 1;
                }
                in_tag = true;
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// The hostile strings must appear only as text: no element they could have made, and the
/// markup characters escaped.
fn inert(dom: &str, page: &str) {
    for tag in ["<img", "<iframe", "<script", "<b>"] {
        assert!(!dom.contains(tag), "{page}: a {tag} element in the page");
    }
    // The hostile script would retitle the page.
    assert!(!dom.contains("<title>pwned"), "{page}: a script ran");
    assert!(
        dom.contains("· Annals admin</title>"),
        "{page}: its own title"
    );
}

#[test]
fn a_person_browses_a_store_and_hostile_data_stays_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("admin.db");
    let placed_id = known_events(&db);
    let store = format!("sqlite://{}", db.display());
    let admin = Admin::start(&store, "127.0.0.1:0").unwrap();
    let base = &admin.base;

    let overview = open(&format!("{base}/"), "overview");
    assert_eq!(text_of(&overview, "events"), "4");
    assert_eq!(text_of(&overview, "streams"), "2");
    assert!(overview.contains(">Orders<") && overview.contains(">Hostile<"));
    inert(&overview, "overview");

    let streams = open(&format!("{base}/streams?prefix=Orders-"), "streams");
    assert!(streams.contains(">Orders-1<"), "{streams}");
    assert!(!streams.contains("Hostile-"), "only the prefix's streams");

    let stream = open(&format!("{base}/stream?name=Orders-1"), "stream");
    let types: Vec<&str> = stream
        .match_indices("class=\"type\">")
        .map(|(i, m)| {
            let rest = &stream[i + m.len()..];
            &rest[..rest.find('<').unwrap()]
        })
        .collect();
    assert_eq!(types, ["Placed", "Paid", "Shipped"], "the stream in order");

    let paid = open(&format!("{base}/event?stream=Orders-1&version=1"), "event");
    assert_eq!(text_of(&paid, "type"), "Paid");
    let data: serde_json::Value = serde_json::from_str(&text_of(&paid, "data")).unwrap();
    assert_eq!(data, serde_json::json!({"amount": 12.5}), "the JSON body");
    assert_eq!(text_of(&paid, "causation"), placed_id.to_string());
    // A body is shown as stored: numbers exact, keys in their order.
    let shipped = open(&format!("{base}/event?stream=Orders-1&version=2"), "event");
    assert_eq!(
        text_of(&shipped, "data"),
        "{\n  \"parcel\": 123456789012345678901234567890,\n  \"carrier\": \"post\",\n  \"fee\": 0.10000000000000000000001\n}"
    );
    // Following the causation link shows the event that caused it.
    let cause = open(&format!("{base}/find?id={placed_id}"), "causation");
    assert_eq!(text_of(&cause, "type"), "Placed");
    assert_eq!(text_of(&cause, "version"), "0");

    // Hostile data, on every page that shows it.
    let hostile = url_encode(HOSTILE_STREAM);
    let pages = [
        (format!("{base}/streams?prefix=Hostile-"), "hostile-streams"),
        (format!("{base}/stream?name={hostile}"), "hostile-stream"),
        (
            format!("{base}/event?stream={hostile}&version=0"),
            "hostile-event",
        ),
        (
            format!("{base}/streams?prefix={}", url_encode("<script>x</script>")),
            "hostile-search",
        ),
    ];
    for (url, name) in &pages {
        let dom = open(url, name);
        inert(&dom, name);
    }
    let event = open(
        &format!("{base}/event?stream={hostile}&version=0"),
        "hostile-event",
    );
    assert_eq!(
        html_unescape(&text_of(&event, "type")),
        HOSTILE_TYPE,
        "the type, as text"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&html_unescape(&text_of(&event, "data"))).unwrap();
    assert_eq!(
        shown["note"], "<script>document.title='pwned'</script>",
        "shown as text"
    );
    assert_eq!(
        shown["big"].as_str().map(str::len),
        Some(200_000),
        "a huge string, whole"
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn the_admin_pages_are_refused_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("a.db").display());
    // The admin pages open an existing store (they create none).
    let missing = Admin::start(&store, "127.0.0.1:0").err().expect("refused");
    assert!(missing.contains("no such file"), "{missing}");
    crate::succeeded(&crate::ops::on(dir.path(), &store, &["init"]));
    let refused = Admin::start(&store, "0.0.0.0:0").err().expect("refused");
    assert!(refused.contains("needs --token"), "{refused}");
    // `serve` creates its store, but not for arguments it refuses: --admin beyond
    // loopback without a token, or a zero timeout.
    let fresh = format!("sqlite://{}", dir.path().join("fresh.db").display());
    for args in [
        &["serve", "--admin", "--listen", "0.0.0.0:0"][..],
        &["serve", "--header-timeout", "0s"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(args)
            .args(["--store", &fresh])
            .env_remove("ANNALS_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was served");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("needs --admin-token") || said.contains("more than zero"),
            "{said}"
        );
    }
    assert!(
        !dir.path().join("fresh.db").exists(),
        "a refused serve created its store"
    );
}

/// POSTs a form to the admin server: the status.
fn post_form(base: &str, path: &str, form: &str, headers: &[&str]) -> u16 {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(form);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn a_groups_lag_and_parked_stream_are_shown_and_skipping_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("groups.db");
    known_events(&db);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use annals::CheckpointStore;
        let store = SqliteStore::open(SqliteConfig::new(&db)).unwrap();
        let first = store
            .read_all(annals::Position::START, &annals::Filter::all(), 1)
            .await
            .unwrap();
        store
            .commit("billing", "all", first.events[0].position)
            .await
            .unwrap();
        let now = annals::Timestamp::now();
        store
            .park(&annals::ParkedStream {
                group: "billing".into(),
                stream: StreamName::new("Orders-1").unwrap(),
                from: annals::Version(1),
                to: annals::Version(3),
                attempts: 5,
                first_error: "boom".into(),
                last_error: "no invoice <script>document.title='pwned'</script>".into(),
                parked_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
    });
    let store = format!("sqlite://{}", db.display());
    let form = "group=billing&stream=Orders-1&confirm=yes&token=s3cret";
    {
        let admin = Admin::start(&store, "127.0.0.1:0").unwrap();
        let groups = open(&format!("{}/groups", admin.base), "groups");
        inert(&groups, "groups");
        assert!(groups.contains("class=\"group\">billing<"), "{groups}");
        assert!(
            groups.contains("class=\"lag\">3<"),
            "3 events after the checkpoint: {groups}"
        );
        assert!(groups.contains("class=\"stream\"><a"), "{groups}");
        assert!(
            groups.contains("no invoice &lt;script&gt;"),
            "the error, as text"
        );
        assert!(groups.contains("actions need --token"));
        // Without a token, the action is refused even with everything else right.
        let status = post_form(&admin.base, "/skip", form, &["Sec-Fetch-Site: same-origin"]);
        assert_eq!(status, 403);
    }
    let admin = Admin::start_with_token(&store, "s3cret").unwrap();
    let base = &admin.base;
    let origin = format!("Origin: {base}");
    let wrong = "group=billing&stream=Orders-1&confirm=yes&token=guess";
    assert_eq!(
        post_form(base, "/skip", wrong, &[&origin]),
        403,
        "wrong token"
    );
    assert_eq!(
        post_form(base, "/skip", form, &["Origin: http://evil.example"]),
        403,
        "cross-site"
    );
    assert_eq!(
        post_form(base, "/skip", form, &["Sec-Fetch-Site: cross-site"]),
        403,
        "cross-site, as the browser says"
    );
    let unconfirmed = "group=billing&stream=Orders-1&token=s3cret";
    assert_eq!(post_form(base, "/skip", unconfirmed, &[&origin]), 400);
    let still = open(&format!("{base}/groups"), "groups-with-token");
    assert!(
        still.contains("name=\"token\""),
        "the form asks for the token"
    );
    assert!(!still.contains("id=\"no-parked\""), "still parked");
    assert_eq!(post_form(base, "/skip", form, &[&origin]), 303);
    let after = open(&format!("{base}/groups"), "groups-after-skip");
    assert!(after.contains("id=\"no-parked\""), "unparked: {after}");
}

/// A headless Chromium driven over the DevTools protocol: open a page, evaluate script in
/// it.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // Killed on drop from here on, even when a step below panics.
        let mut child = Killed(Some(
            headless_chromium(profile.path())
                .args(["--remote-debugging-port=0", url])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("chromium runs (apt-get install chromium)"),
        ));
        let child_ref = child.0.as_mut().unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
        let stderr = child_ref.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium's DevTools endpoint within 60 s");
        let port = browser_ws
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let mut page_ws = None;
        annals_testkit::eventually_blocking(
            "chromium lists the page",
            Duration::from_secs(60),
            || {
                page_ws = http_get(&format!("127.0.0.1:{port}"), "/json/list")
                    .and_then(|list| serde_json::from_str::<serde_json::Value>(&list).ok())
                    .and_then(|pages| {
                        pages
                            .as_array()?
                            .iter()
                            .find(|p| p["type"] == "page")
                            .and_then(|p| p["webSocketDebuggerUrl"].as_str())
                            .map(str::to_owned)
                    });
                page_ws.is_some()
            },
        );
        let page_ws = page_ws.unwrap();
        let (socket, _) = tungstenite::connect(page_ws.as_str()).expect("DevTools connects");
        Browser {
            child: child.0.take().unwrap(),
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// The value of `expression` in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        self.socket
            .send(tungstenite::Message::text(call.to_string()))
            .unwrap();
        loop {
            let message = self.socket.read().expect("DevTools answers");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: serde_json::Value = serde_json::from_str(text).unwrap();
            if answer["id"] == id {
                return answer["result"]["result"]["value"].clone();
            }
        }
    }

    /// Waits (bounded) until `expression` is true in the page.
    fn until(&mut self, what: &str, expression: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.eval(expression) != serde_json::Value::Bool(true) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            std::thread::yield_now();
        }
    }
}

/// A child process killed when dropped (unless taken).
pub(crate) struct Killed(pub(crate) Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET: the body (read by its Content-Length), or `None` when the server
/// cannot be reached yet.
fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").ok()?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })?
            .parse()
            .ok()?;
        if body.len() >= length {
            return Some(body[..length].to_owned());
        }
    }
}

#[test]
fn the_live_feed_shows_an_event_as_it_commits_and_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    known_events(&db);
    let store = format!("sqlite://{}", db.display());
    let admin = Admin::start(&store, "127.0.0.1:0").unwrap();
    let mut browser = Browser::open(&format!("{}/live?category=Orders", admin.base));
    browser.until(
        "the feed is connected",
        "document.getElementById('state') !== null && document.getElementById('state').textContent === 'live'",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#live tr.event').length"),
        serde_json::json!(0),
        "only what commits from now on"
    );
    let append = |stream: &str, event_type: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["append", "--store", &store, stream, "--type", event_type])
            .args(["--data", r#"{"note":"<img src=x onerror=alert(9)>"}"#])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    append("Invoices-1", "Issued"); // another category: filtered out
    append("Orders-2", "Placed<script>");
    browser.until(
        "the new event arrives",
        "document.querySelectorAll('#live tr.event').length === 1",
    );
    let row = browser.eval(
        "Array.from(document.querySelectorAll('#live tr.event td')).map(td => td.textContent)",
    );
    assert_eq!(row[1], "Orders-2");
    assert_eq!(row[2], "0");
    assert_eq!(row[3], "Placed<script>", "the type, as text");
    assert_eq!(
        browser.eval("document.querySelectorAll('#live script, #live img').length"),
        serde_json::json!(0)
    );
    // Paused, a new event waits; resumed, it shows.
    browser.eval("document.getElementById('toggle').click()");
    append("Orders-3", "Placed");
    browser.until(
        "the paused page holds the new event",
        "document.getElementById('toggle').textContent === 'Resume (1 new)'",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#live tr.event').length"),
        serde_json::json!(1),
        "paused: not shown yet"
    );
    browser.eval("document.getElementById('toggle').click()");
    browser.until(
        "the held event shows on resume",
        "document.querySelectorAll('#live tr.event').length === 2",
    );
    drop(browser);
    open(&format!("{}/live", admin.base), "live");
}

#[test]
fn serve_mounts_the_admin_pages_under_admin() {
    let dir = tempfile::tempdir().unwrap();
    let served = crate::serve::Served::start_with(dir.path(), &["--admin"]);
    let base = served.base.clone();
    let address = base.trim_start_matches("http://").to_owned();
    let status = post_form(&base, "/todos", "", &[]);
    assert_eq!(status, 415, "the API answers beside the pages");
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let body = r#"{"title":"seen by the admin"}"#;
        write!(
            stream,
            "POST /todos HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }
    let overview = open(&format!("{base}/admin"), "serve-admin-overview");
    assert_eq!(text_of(&overview, "events"), "1", "redirected to /admin/");
    let streams = open(&format!("{base}/admin/streams"), "serve-admin-streams");
    let link = streams
        .split("href=\"")
        .find(|s| s.starts_with("stream?name="))
        .and_then(|s| s.split('"').next())
        .expect("a link to the todo list's stream")
        .replace("&amp;", "&");
    let stream = open(&format!("{base}/admin/{link}"), "serve-admin-stream");
    assert!(
        stream.contains("class=\"type\">"),
        "the list's events: {stream}"
    );
    served.stop();
}

#[test]
fn a_parked_list_is_replayed_from_the_browser_and_the_read_models_page_shows_it() {
    use crate::serve::{http, Served};
    let dir = tempfile::tempdir().unwrap();
    // The service writes a list and projects it; then, with the service stopped, the list
    // gets an event its pipeline never applied, and is parked.
    let served = Served::start_with(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = http(
        &rt,
        hyper::Method::POST,
        &format!("{}/todos", served.base),
        Some(serde_json::json!({"title": "first"})),
    );
    assert_eq!(status, 201);
    served.stop();
    let db = dir.path().join("annals.db");
    let list = rt.block_on(async {
        use annals::CheckpointStore;
        let store = SqliteStore::open(SqliteConfig::new(&db)).unwrap();
        let page = store
            .read_all(annals::Position::START, &annals::Filter::category("Todos"), 10)
            .await
            .unwrap();
        let list = page.events[0].stream.clone();
        let added = EventData::json(
            "Added",
            &serde_json::json!({"id": 1, "title": "replayed <b>here</b>", "completed": false, "order": 0}),
        )
        .unwrap();
        store
            .append(&list, ExpectedVersion::Exact(annals::Version(1)), vec![added])
            .await
            .unwrap();
        let now = annals::Timestamp::now();
        store
            .park(&annals::ParkedStream {
                group: "annals.todos".into(),
                stream: list.clone(),
                from: annals::Version(1),
                to: annals::Version(2),
                attempts: 5,
                first_error: "the database was away".into(),
                last_error: "the database was away".into(),
                parked_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        list
    });
    let store = format!("sqlite://{}", db.display());
    let list = url_encode(list.as_str());
    let form = format!("group=annals.todos&stream={list}&confirm=yes&token=s3cret");
    {
        let admin = Admin::start(&store, "127.0.0.1:0").unwrap();
        let models = open(&format!("{}/read-models", admin.base), "read-models");
        assert_eq!(text_of(&models, "behind-todos"), "1", "{models}");
        assert!(models.contains("Rebuilding needs --token"), "{models}");
        let status = post_form(
            &admin.base,
            "/replay",
            &form,
            &["Sec-Fetch-Site: same-origin"],
        );
        assert_eq!(status, 403, "no token: refused");
    }
    let admin = Admin::start_with_token(&store, "s3cret").unwrap();
    let wrong = format!("group=annals.todos&stream={list}&confirm=yes&token=guess");
    assert_eq!(post_form(&admin.base, "/replay", &wrong, &[]), 403);
    assert_eq!(
        post_form(
            &admin.base,
            "/replay",
            &form,
            &["Sec-Fetch-Site: cross-site"]
        ),
        403
    );
    // A person on the groups page ticks the box, types the token and clicks Replay.
    let mut browser = Browser::open(&format!("{}/groups", admin.base));
    browser.until(
        "the parked list is shown",
        "!!document.querySelector('form[action=replay] button')",
    );
    browser.eval(
        "const f = document.querySelector('form[action=replay]');\
         f.querySelector('input[name=confirm]').checked = true;\
         f.querySelector('input[name=token]').value = 's3cret';\
         f.querySelector('button').click(); true",
    );
    browser.until(
        "the groups page says nothing is parked",
        "location.pathname.endsWith('/groups') && !!document.getElementById('no-parked')",
    );
    let models = open(
        &format!("{}/read-models", admin.base),
        "read-models-after-replay",
    );
    assert_eq!(text_of(&models, "behind-todos"), "0", "{models}");
    // The replayed event is in the read model.
    let rows = rt.block_on(async {
        let read_model = SqliteStore::open(SqliteConfig::new(&db)).unwrap();
        annals::ReadModelStore::query(&read_model, "SELECT title FROM todo_view ORDER BY id", &[])
            .await
            .unwrap()
    });
    let titles: Vec<_> = rows
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(titles, ["first", "replayed <b>here</b>"]);
}

#[test]
fn the_overview_charts_the_events_written_since_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rates.db");
    known_events(&db);
    let admin = Admin::start(&format!("sqlite://{}", db.display()), "127.0.0.1:0").unwrap();
    let address = admin.base.trim_start_matches("http://").to_owned();
    let overview = || http_get(&address, "/").unwrap_or_default();
    // A page that does not exist says so.
    let nowhere = http_get(&address, "/nowhere").unwrap_or_default();
    assert!(nowhere.contains(r#""error":"not_found""#), "{nowhere}");
    // The first sample: nothing written since the pages started.
    let mut page = String::new();
    annals_testkit::eventually_blocking("a first sample", Duration::from_secs(60), || {
        page = overview();
        page.contains("id=\"written-rate\"")
    });
    assert!(page.contains("id=\"rates-chart\""), "{page}");
    assert_eq!(
        text_of(&page, "schema"),
        format!("schema version {}", annals_sqlite::SCHEMA_VERSION)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(&db)).unwrap();
        let events = (0..10)
            .map(|n| EventData::json("Ticked", &serde_json::json!({ "n": n })).unwrap())
            .collect();
        store
            .append(
                &StreamName::new("Clock-1").unwrap(),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    });
    // A later sample counts the 10 events.
    annals_testkit::eventually_blocking("the events are charted", Duration::from_secs(60), || {
        page = overview();
        text_of(&page, "written-total") == "10"
    });
    let _ = open(&format!("{}/", admin.base), "overview-rates");
}

#[test]
fn the_groups_page_shows_each_members_partitions_on_postgres() {
    use annals::{CheckpointStore, LeaseStore};
    let (url, config) = crate::ops::pg_target("admin_members");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = annals_postgres::PgStore::connect(config).await.unwrap();
        store.migrate().await.unwrap();
        store
            .append(
                &StreamName::new("Orders-1").unwrap(),
                ExpectedVersion::Any,
                vec![EventData::new("Placed", b"{}".to_vec())],
            )
            .await
            .unwrap();
        store
            .commit("billing", "all", annals::Position::START)
            .await
            .unwrap();
        let long = Duration::from_secs(600);
        let first = store
            .acquire("billing", "worker <1>", 4, long)
            .await
            .unwrap();
        assert_eq!(first.held, [0, 1, 2, 3]);
        store
            .release("billing", "worker <1>", &[2, 3])
            .await
            .unwrap();
        let second = store.acquire("billing", "worker-2", 4, long).await.unwrap();
        assert_eq!(second.held, [2, 3]);
    });
    let admin = Admin::start(&url, "127.0.0.1:0").unwrap();
    let groups = open(&format!("{}/groups", admin.base), "groups-members");
    inert(&groups, "groups-members");
    let members = html_unescape(&text_of(&groups, "members"));
    assert!(
        members.contains("worker <1>0, 1") && members.contains("worker-22, 3"),
        "{members}"
    );
    assert!(
        groups.contains("worker &lt;1&gt;"),
        "the member name, as text"
    );
}

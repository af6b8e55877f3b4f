//! `annals serve` against hostile and unlucky clients: connections that send headers or a
//! body too slowly are closed (and normal requests keep working meanwhile), made-up methods
//! cannot grow the metrics, a failing log sink never fails a request, failed requests are
//! logged (every request at debug), and malformed JSON is a 400 with a JSON body.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::Served;

/// Sends `request` (raw bytes) on a new connection and reads the answer until the server
/// closes the connection (or 60 s pass): the bytes received.
fn exchange(base: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(base);
    stream.write_all(request).unwrap();
    read_to_close(&mut stream)
}

fn connect(base: &str) -> TcpStream {
    let address = base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// Reads until the peer closes the connection; panics when it is still open after 60 s.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
}

/// One request with `Connection: close`: the status and the body as JSON (`Null` if empty).
fn request(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let body = body.unwrap_or("");
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = String::from_utf8(exchange(base, raw.as_bytes())).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked or not, the JSON is the part between the first `{`/`[` and the last `}`/`]`.
    let json = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if a <= b => serde_json::from_str(&body[a..=b]).unwrap(),
        _ => Value::Null,
    };
    (status, json)
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_with(
        dir.path(),
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );
    // Headers that never end, a body that never comes, and a connection that never sends.
    let mut slow_header = connect(&served.base);
    slow_header
        .write_all(b"GET /todos HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .unwrap();
    let mut slow_body = connect(&served.base);
    slow_body
        .write_all(
            b"POST /todos HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"title\":",
        )
        .unwrap();
    let mut idle = connect(&served.base);
    let opened = Instant::now();
    // Meanwhile, ordinary requests are answered.
    for n in 0..5 {
        let (status, todo) = request(
            &served.base,
            "POST",
            "/todos",
            Some(&format!(r#"{{"title":"t{n}"}}"#)),
        );
        assert_eq!(status, 201, "{todo}");
    }
    assert!(
        read_to_close(&mut slow_header).is_empty(),
        "no answer to headers that never end: the connection is closed"
    );
    let answer = String::from_utf8(read_to_close(&mut slow_body)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"timeout""#), "{answer}");
    assert!(read_to_close(&mut idle).is_empty());
    // All three were closed, by the server, long before the test's own 60 s limit.
    assert!(opened.elapsed() < Duration::from_secs(60));
    let (status, list) = request(&served.base, "GET", "/todos", None);
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(5)));
    served.stop();
}

#[test]
fn made_up_methods_leave_the_metric_labels_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_with(dir.path(), &[]);
    for n in 0..1000 {
        let (status, _) = request(&served.base, &format!("BOGUS{n}"), "/todos", None);
        assert_eq!(status, 405);
    }
    let (status, _) = request(&served.base, "GET", "/todos", None);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(exchange(
        &served.base,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    ))
    .unwrap();
    assert!(!metrics.contains("BOGUS"), "a method became a label");
    let series: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("annals_http_requests_total{"))
        .collect();
    assert!(
        series.iter().any(|l| l.contains(r#"method="other""#)),
        "{series:?}"
    );
    assert!(
        series.len() <= 4,
        "a few series, not a thousand: {series:?}"
    );
    served.stop();
}

#[test]
fn a_log_sink_that_fails_never_fails_a_request() {
    let dir = tempfile::tempdir().unwrap();
    // stderr on a device where every write fails with ENOSPC, with a log line per request.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let served = Served::start_configured(dir.path(), &[], |command| {
        command
            .env("ANNALS_LOG", "info,example_todo=debug")
            .stderr(full);
    });
    for n in 0..20 {
        let (status, todo) = request(
            &served.base,
            "POST",
            "/todos",
            Some(&format!(r#"{{"title":"logged {n}"}}"#)),
        );
        assert_eq!(status, 201, "{todo}");
    }
    let (status, list) = request(&served.base, "GET", "/todos", None);
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(20)));
    served.stop();
}

/// By default a failed request is logged and a successful one is not (the metrics count
/// it); `example_todo=debug` logs every request.
#[test]
fn failed_requests_are_logged_and_every_request_at_debug() {
    for (log, successes_logged) in [(None, false), (Some("info,example_todo=debug"), true)] {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("stderr.log");
        let sink = std::fs::File::create(&log_path).unwrap();
        let served = Served::start_configured(dir.path(), &[], |command| {
            match log {
                Some(directives) => command.env("ANNALS_LOG", directives),
                None => command.env_remove("ANNALS_LOG"),
            };
            command.stderr(sink);
        });
        let (status, _) = request(&served.base, "POST", "/todos", Some(r#"{"title":"a"}"#));
        assert_eq!(status, 201);
        let (status, _) = request(&served.base, "GET", "/todos/999", None);
        assert_eq!(status, 404);
        served.stop();
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("request")).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("INFO") && l.contains("status=404")),
            "{log:?}: {text}"
        );
        assert_eq!(
            lines.iter().any(|l| l.contains("status=201")),
            successes_logged,
            "{log:?}: {text}"
        );
    }
}

#[test]
fn malformed_json_is_a_400_with_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_with(dir.path(), &[]);
    for body in [r#"{"title":"#, "{", r#"{"title": "x""#, "[1,", "nul"] {
        let (status, error) = request(&served.base, "POST", "/todos", Some(body));
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("malformed_json")),
            "{body:?}: {error}"
        );
    }
    let (status, todo) = request(&served.base, "POST", "/todos", Some(r#"{"title":"ok"}"#));
    assert_eq!(status, 201);
    let path = format!("/todos/{}", todo["id"]);
    let (status, error) = request(&served.base, "PATCH", &path, Some(r#"{"completed":"#));
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("malformed_json")),
        "{error}"
    );
    served.stop();
}

#[test]
fn requests_hyper_cannot_parse_get_a_json_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_with(dir.path(), &[]);
    // More headers than hyper takes (100): refused as too large whatever the reads'
    // sizes, and small enough that the server reads all of it (no reset on close). A huge
    // single header is refused or not depending on how the bytes arrive.
    let many_headers = format!(
        "GET /todos HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect::<String>()
    );
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (
            b"GET /todos HTTP/1.1\r\nHost: test\r\nNo Colon Here\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            b"POST /todos HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
            400,
            "bad_request",
        ),
        (many_headers.as_bytes(), 431, "headers_too_large"),
    ];
    for (raw, status, kind) in cases {
        let answer = String::from_utf8(exchange(&served.base, raw)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(head.contains("content-type: application/json"), "{answer}");
        let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(error["error"], kind, "{answer}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Served requests on the same server are untouched, keep-alive included.
    let mut stream = connect(&served.base);
    stream
        .write_all(b"GET /todos HTTP/1.1\r\nHost: test\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut stream)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.contains(r#""error":"not_found""#), "{answer}");
    served.stop();
}

/// `/metrics` as Prometheus scrapes it: every metric described (`# HELP`), durations and
/// group sizes as histograms with buckets (summaries cannot be aggregated across
/// instances), and every line a comment or a sample.
#[test]
fn metrics_are_described_and_durations_are_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_with(dir.path(), &[]);
    let (status, _) = request(&served.base, "POST", "/todos", Some(r#"{"title":"a"}"#));
    assert_eq!(status, 201);
    let scrape = || {
        let raw = String::from_utf8(exchange(
            &served.base,
            b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        ))
        .unwrap();
        raw.split_once("\r\n\r\n").unwrap().1.to_owned()
    };
    // The read model's pipeline records once it has handled the todo.
    let mut metrics = String::new();
    annals_testkit::eventually_blocking(
        "the read model's metrics",
        Duration::from_secs(30),
        || {
            metrics = scrape();
            metrics.contains("annals_reactor_events_total{")
        },
    );
    for (name, kind) in [
        ("annals_http_requests_total", "counter"),
        ("annals_http_request_duration_seconds", "histogram"),
        ("annals_store_roundtrip_seconds", "histogram"),
        ("annals_store_events_total", "counter"),
        ("annals_decider_runs_total", "counter"),
        ("annals_decider_duration_seconds", "histogram"),
        ("annals_sqlite_group_commit_requests", "histogram"),
        ("annals_reactor_events_total", "counter"),
        ("annals_reactor_handler_seconds", "histogram"),
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}: {metrics}"
        );
        let help = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or_else(|| panic!("no help for {name}: {metrics}"));
        assert!(help.len() > 10, "{name}: {help}");
        if kind == "histogram" {
            assert!(
                metrics.contains(&format!("{name}_bucket{{"))
                    && metrics.contains(&format!("{name}_count{{")),
                "{name} has no buckets: {metrics}"
            );
        }
    }
    assert!(
        metrics.contains(r#"annals_sqlite_group_commit_requests_bucket{path="#)
            && metrics.contains(r#"le="1"}"#),
        "group sizes are counted in buckets of sizes: {metrics}"
    );
    // Every line is a comment or `name{labels} value` with a number for the value.
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            series.starts_with("annals_") && value.parse::<f64>().is_ok(),
            "not a sample: {line}"
        );
    }
    served.stop();
}

//! End-to-end tests of the `annals` binary.

mod admin;
mod forget;
mod hardening;
mod ops;
mod otel;
mod parked;
mod read_only;
mod rebuild;
mod scavenge;
mod serve;
mod tls;

use std::process::Command;

/// Runs `annals` in a fresh temporary directory (so the default `sqlite://annals.db` lands
/// there); returns its output and the directory.
fn annals_in(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .current_dir(dir.path())
        .env_remove("ANNALS_STORE")
        .output()
        .expect("the annals binary runs");
    (out, dir)
}

fn annals(args: &[&str]) -> std::process::Output {
    annals_in(args).0
}

/// Asserts `out` is a success (showing its output if not) and returns its stdout.
fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The exact counts a bench line ends with: "total EVENTS events / OPS ops".
fn totals(line: &str) -> (u64, u64) {
    let total = line
        .split("total ")
        .nth(1)
        .unwrap_or_else(|| panic!("no total in {line}"));
    let words: Vec<&str> = total.split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

/// Pulls the number after `label` out of the bench report.
fn figure(report: &str, label: &str) -> f64 {
    let rest = report
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in {report}"));
    rest.split_whitespace()
        .next()
        .and_then(|w| w.trim_end_matches("/s").trim_end_matches('x').parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {report}"))
}

#[test]
fn bench_favorite_on_memory_reports_rate_and_latency() {
    let out = annals(&[
        "bench",
        "favorite",
        "--store",
        "memory://",
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--clients",
        "20",
        "--cache",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(figure(&stdout, "tests ") > 0.0);
    assert_eq!(figure(&stdout, "errors "), 0.0);
    assert!(stdout.contains("rate "), "{stdout}");
    let (p50, p99, max) = (
        figure(&stdout, "p50 "),
        figure(&stdout, "p99 "),
        figure(&stdout, "max "),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{stdout}");
}

#[test]
fn bad_store_urls_fail_with_one_line() {
    for (url, says) in [
        ("nowhere", "malformed store URL"),
        ("ftp://x", "unsupported store"),
        ("sqlite://", "the path is empty"),
        ("memory://x", "takes no path"),
    ] {
        let out = annals(&["bench", "favorite", "--store", url, "--duration", "1s"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

#[test]
fn bad_arguments_are_refused() {
    let out = annals(&[
        "bench",
        "favorite",
        "--store",
        "memory://",
        "--concurrency",
        "0",
        "--duration",
        "1s",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--concurrency must be at least 1"));
    let out = annals(&["bench", "favorite", "--duration", "soon"]);
    assert!(!out.status.success());
    let out = annals(&[
        "bench",
        "append",
        "--store",
        "sqlite://x.db?synchronous=off",
        "--duration",
        "1s",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("synchronous=off: use full or normal"),
        "{stderr}"
    );
}

#[test]
fn the_default_store_is_sqlite_in_the_current_directory() {
    let (out, dir) = annals_in(&[
        "bench",
        "favorite",
        "--duration",
        "300ms",
        "--concurrency",
        "2",
        "--clients",
        "5",
    ]);
    let stdout = succeeded(&out);
    assert!(stdout.contains("store sqlite://annals.db"), "{stdout}");
    assert!(figure(&stdout, "tests ") > 0.0);
    let conn = annals_sqlite::rusqlite::Connection::open(dir.path().join("annals.db")).unwrap();
    let events: i64 = conn
        .query_row("SELECT count(*) FROM annals_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        events as f64,
        figure(&stdout, "tests "),
        "one favorite event per test"
    );
}

#[test]
fn a_file_that_is_not_an_annals_database_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(
        &path,
        "not a database at all, just some text that is long enough to matter",
    )
    .unwrap();
    let url = format!("sqlite://{}", path.display());
    let out = annals(&["bench", "append", "--store", &url, "--duration", "1s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not an Annals database"), "{stderr}");
}

/// Checks each append case's line is there with exact counts (100 events per operation for
/// the 100-event cases, 1 otherwise), and the ratio lines.
fn append_cases_counted(stdout: &str, cases: &[&str]) {
    for case in cases {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no {case:?} in {stdout}"));
        let (events, ops) = totals(line);
        assert!(ops > 0, "{line}");
        let per_op = if case.contains("100") { 100 } else { 1 };
        assert_eq!(events, ops * per_op, "{line}");
        if case.starts_with("(c)") {
            // The only writer of its stream: queued decisions never conflict, none gives up.
            assert!(line.contains("  exhausted 0  "), "{line}");
        }
    }
    for ratio in [
        "ratio (b) / raw 1 row per tx: ",
        "ratio (a) / raw 100 rows per tx: ",
        "ratio (c) / (b): ",
    ] {
        assert!(stdout.contains(ratio), "no {ratio:?} in {stdout}");
    }
}

#[test]
fn bench_append_on_sqlite_reports_every_case_and_the_ratios() {
    let (out, dir) = annals_in(&["bench", "append", "--duration", "300ms"]);
    let stdout = succeeded(&out);
    append_cases_counted(
        &stdout,
        &[
            "raw baseline, 100 rows per transaction",
            "(a) 1 writer, 100-event batches",
            "raw baseline, 1 row per transaction",
            "(b) 64 writers, 1 event, own streams",
            "(c) 16 deciders, 1 event, one stream",
        ],
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        left.iter().all(|f| !f.contains("baseline")),
        "the baseline scratch files are removed: {left:?}"
    );
}

#[test]
fn bench_append_on_memory_has_no_baseline() {
    let out = annals(&[
        "bench",
        "append",
        "--store",
        "memory://",
        "--duration",
        "200ms",
        "--cases",
        "a",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(a) 1 writer") && stdout.contains("no raw baseline for this store"),
        "{stdout}"
    );
}

#[test]
fn bench_append_on_postgres_reports_every_case_and_the_ratios() {
    let server = annals_testkit::postgres::shared();
    let url = format!(
        "{}?annals_schema={}",
        server.url,
        annals_testkit::postgres::schema_name("cli")
    );
    let out = annals(&[
        "bench",
        "append",
        "--store",
        &url,
        "--duration",
        "300ms",
        "--writers",
        "16",
    ]);
    let stdout = succeeded(&out);
    append_cases_counted(
        &stdout,
        &[
            "raw baseline, 100 rows per transaction, 1 client",
            "(a) 1 writer, 100-event batches",
            "raw baseline, 1 row per transaction, 16 clients",
            "(b) 16 writers, 1 event, own streams",
            "(c) 16 deciders, 1 event, one stream",
        ],
    );
}

#[test]
fn bench_append_on_nats_reports_every_case_beside_raw_jetstream_publishes() {
    let url = format!(
        "{}?stream={}",
        annals_testkit::nats::shared().url,
        annals_testkit::nats::stream_name("bench")
    );
    let out = annals(&[
        "bench",
        "append",
        "--store",
        &url,
        "--duration",
        "300ms",
        "--writers",
        "16",
    ]);
    let stdout = succeeded(&out);
    append_cases_counted(
        &stdout,
        &[
            "raw baseline, 100-message atomic batches, 1 client",
            "(a) 1 writer, 100-event batches",
            "raw baseline, 1 message per publish, 16 clients",
            "(b) 16 writers, 1 event, own streams",
            "(c) 16 deciders, 1 event, one stream",
        ],
    );
}

/// Runs `annals bench read` on `store`; checks every case read what it should (whole
/// streams of 50 events, tips of 10, pages of at most 1,000) and, with a baseline, the ratios.
fn bench_read_on(store: &str, baseline: bool) {
    let stdout = succeeded(&annals(&[
        "bench",
        "read",
        "--store",
        store,
        "--duration",
        "300ms",
        "--streams",
        "12",
        "--events",
        "50",
        "--readers",
        "4",
    ]));
    // 12 streams x 50 events: a whole read is 50 events, a tip 10, a read-all page at most
    // 1,000 (the 600 events, and whatever empty page ends the walk).
    let mut cases = vec![
        ("(a) whole stream (50 events)", 50..=50),
        ("(b) last 10 events, backward", 10..=10),
        ("(c) read-all, 1 reader, pages of 1,000", 0..=600),
    ];
    if baseline {
        cases.push(("raw baseline, whole stream", 50..=50));
        cases.push(("raw baseline, last 10 events", 10..=10));
    }
    for (case, per_read) in cases {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no {case:?} in {stdout}"));
        let (events, reads) = totals(line);
        assert!(reads > 0, "{line}");
        if per_read.start() == per_read.end() {
            assert_eq!(events, reads * per_read.start(), "{case}: {line}");
        } else {
            // Whole passes over the 600 events, in pages of at most 1,000.
            assert!(events <= reads * per_read.end(), "{case}: {line}");
            assert!(events >= 600 && events % 600 == 0, "{case}: {line}");
        }
    }
    if baseline {
        assert!(stdout.contains("ratio (a) / raw: "), "{stdout}");
        assert!(stdout.contains("ratio (b) / raw: "), "{stdout}");
    } else {
        assert!(
            stdout.contains("no raw baseline for this store"),
            "{stdout}"
        );
    }
}

#[test]
fn bench_read_reports_every_case_with_a_baseline_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    bench_read_on(
        &format!("sqlite://{}", dir.path().join("read.db").display()),
        true,
    );
    bench_read_on(&ops::pg_url("read"), true);
    bench_read_on("memory://", false);
}

#[test]
fn an_unreachable_postgres_fails_in_one_line_saying_where_and_why() {
    let out = annals(&[
        "bench",
        "append",
        "--store",
        "postgres://postgres@127.0.0.1:1/nowhere",
        "--duration",
        "1s",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:1"),
        "names where it tried: {stderr}"
    );
    assert!(stderr.contains("refused"), "says why: {stderr}");
}

/// Runs the reactor benches (`catchup` checks its read model itself and fails otherwise;
/// `live` checks the handler saw every event) on `store`.
fn reactor_benches_on(store: &str) {
    let out = annals(&[
        "bench",
        "catchup",
        "--store",
        store,
        "--events",
        "3000",
        "--streams",
        "7",
        "--batch",
        "200",
    ]);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("read model checked: 3000 events"),
        "{stdout}"
    );
    assert!(stdout.contains("raw read_all"), "{stdout}");
    assert!(stdout.contains("catch-up / raw read_all = "), "{stdout}");
    let out = annals(&[
        "bench",
        "live",
        "--store",
        store,
        // Appends are sequential: 2 s leaves room for slow appends on a loaded machine
        // (at 500 ms a CI run under load appended only 9).
        "--duration",
        "2s",
        "--rate",
        "40",
    ]);
    let stdout = succeeded(&out);
    // The bench fails unless its handler saw exactly the events it appended; how many it
    // appended in the time depends on the machine's speed, so only "some" is checked.
    assert!(
        figure(&stdout, "\nlive ") >= 1.0,
        "events handled: {stdout}"
    );
    assert!(stdout.contains("append→handler ms: max"), "{stdout}");
    assert!(
        figure(&stdout, "p50 ") <= figure(&stdout, "p99 "),
        "{stdout}"
    );
}

#[test]
fn reactor_benches_on_sqlite_check_their_read_model_and_report_rates() {
    let dir = tempfile::tempdir().unwrap();
    reactor_benches_on(&format!("sqlite://{}", dir.path().join("r.db").display()));
}

#[test]
fn reactor_benches_on_postgres_check_their_read_model_and_report_rates() {
    let server = annals_testkit::postgres::shared();
    reactor_benches_on(&format!(
        "{}?annals_schema={}",
        server.url,
        annals_testkit::postgres::schema_name("clir")
    ));
}

#[test]
fn bench_growth_reports_step_latency_as_the_stream_grows() {
    for snapshots in ["0", "10"] {
        let (out, _dir) = annals_in(&[
            "bench",
            "growth",
            "--store",
            "memory://",
            "--events",
            "40",
            "--report-every",
            "20",
            "--snapshots",
            snapshots,
        ]);
        let stdout = succeeded(&out);
        assert!(stdout.contains("\n      20  mean "), "{stdout}");
        assert!(stdout.contains("\n      40  mean "), "{stdout}");
    }
}

#[test]
fn bench_todo_in_process_keeps_the_read_model_as_serve_does_when_asked() {
    let run = |extra: &[&str]| {
        let base = "bench todo --store sqlite://todo.db --duration 1s --concurrency 4 --clients 20";
        let mut args: Vec<&str> = base.split(' ').collect();
        args.extend(extra);
        annals_in(&args)
    };
    let tables = |dir: &tempfile::TempDir| -> (i64, i64, bool) {
        let conn = annals_sqlite::rusqlite::Connection::open(dir.path().join("todo.db")).unwrap();
        let events: i64 = conn
            .query_row("SELECT count(*) FROM annals_events", [], |r| r.get(0))
            .unwrap();
        let view: Option<i64> = conn
            .query_row("SELECT count(*) FROM todo_view", [], |r| r.get(0))
            .ok();
        (events, view.unwrap_or(0), view.is_some())
    };
    let (out, dir) = run(&["--cache", "--with-read-model"]);
    let stdout = succeeded(&out);
    let handled = figure(&stdout, "todo_view kept in process: ");
    let (events, rows, exists) = tables(&dir);
    assert!(exists && rows > 0, "{stdout}");
    assert!(handled > 0.0 && handled <= events as f64, "{stdout}");
    assert!(rows <= events, "{rows} rows from {events} events");
    // Without the flag, the tests alone: no read model.
    let (out, dir) = run(&["--cache"]);
    let stdout = succeeded(&out);
    assert!(!stdout.contains("todo_view"), "{stdout}");
    assert!(!tables(&dir).2, "no todo_view table");
    // Only the todo scenario, only in process, only with a SQL database for it.
    for (args, says) in [
        (
            "bench favorite --store memory:// --with-read-model",
            "use it with `annals bench todo`",
        ),
        (
            "bench todo --store memory:// --with-read-model",
            "memory:// has none",
        ),
        (
            "bench todo --store http://127.0.0.1:9 --with-read-model",
            "it is the server's choice",
        ),
    ] {
        let out = annals(&args.split(' ').collect::<Vec<_>>());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn scenario_benches_report_intervals_outcomes_latency_and_round_trips() {
    let pg = ops::pg_url("scenario");
    for (scenario, store, extra) in [
        (
            "save-for-later",
            "memory://",
            vec!["--rate", "200", "--snapshots", "rolling"],
        ),
        (
            "todo",
            "sqlite://bench.db",
            vec!["--cache", "--snapshots", "head"],
        ),
        ("favorite", pg.as_str(), vec!["--snapshots", "head"]),
        (
            "todo",
            pg.as_str(),
            vec!["--cache", "--snapshots", "rolling"],
        ),
    ] {
        let mut args = vec![
            "bench",
            scenario,
            "--store",
            store,
            "--duration",
            "2s",
            "--interval",
            "1s",
            "--concurrency",
            "4",
            "--clients",
            "50",
        ];
        args.extend(extra);
        let stdout = succeeded(&annals(&args));
        assert!(
            stdout.lines().any(|l| l.starts_with("[    1s] ok=")),
            "{stdout}"
        );
        assert!(figure(&stdout, "tests ") > 0.0, "{stdout}");
        assert_eq!(figure(&stdout, "errors "), 0.0, "{stdout}");
        for label in ["max ", "p99 ", "p95 ", "p50 ", "min ", "avg ", "stddev "] {
            assert!(figure(&stdout, label) >= 0.0);
        }
        assert!(figure(&stdout, "round trips per test ") >= 2.0, "{stdout}");
        // On a SQL store the scenario takes turns with its raw baseline, and reports both.
        if store != "memory://" {
            assert!(
                figure(&stdout, "ratio tests/s / raw 1 row per tx: ") > 0.0,
                "{stdout}"
            );
        }
    }
    // --rate holds the rate: 200/s for 2 s is about 400 tests, never many more.
    let stdout = succeeded(&annals(&[
        "bench",
        "favorite",
        "--store",
        "memory://",
        "--duration",
        "2s",
        "--rate",
        "200",
    ]));
    let tests = figure(&stdout, "tests ");
    assert!((300.0..=401.0).contains(&tests), "{stdout}");
}

//! End-to-end tests of the `annals` binary.

use std::process::Command;

fn annals(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .env_remove("ANNALS_STORE")
        .output()
        .expect("the annals binary runs")
}

/// Pulls the number after `label` out of the bench report.
fn figure(report: &str, label: &str) -> f64 {
    let rest = report
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in {report}"));
    rest.split_whitespace()
        .next()
        .and_then(|w| w.trim_end_matches("/s").parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {report}"))
}

#[test]
fn bench_favorite_on_memory_reports_rate_and_latency() {
    let out = annals(&[
        "bench",
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
    assert!(figure(&stdout, "rate ") > 0.0);
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
        ("memory://x", "takes no path"),
    ] {
        let out = annals(&["bench", "--store", url, "--duration", "1s"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

#[test]
fn bad_arguments_are_refused() {
    let out = annals(&["bench", "--concurrency", "0", "--duration", "1s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--concurrency must be at least 1"));
    let out = annals(&["bench", "--duration", "soon"]);
    assert!(!out.status.success());
}

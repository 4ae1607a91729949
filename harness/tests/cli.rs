//! The `netfault` command line end to end: a failing scenario fails `run` and the cargo-test driver, with a
//! message that says where and what; `check` validates without running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn netfault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the netfault binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netfault-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn wrong_errno_fails_run_with_location_and_both_outcomes() {
    let reports = scratch("errno");
    let output =
        netfault(&["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/failing/wrong-errno.yaml"]);
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  wrong-errno"), "{text}");
    assert!(text.contains("wrong-errno.yaml:17:"), "names file and line of the expectation: {text}");
    assert!(text.contains("expected ETIMEDOUT, got ECONNREFUSED"), "{text}");
    assert!(text.contains("timeline around"), "shows the timeline: {text}");
    let report = reports.join("wrong-errno");
    for file in [
        "timeline.txt",
        "result.json",
        "client.pcap",
        "server.pcap",
        "capture.pcapng",
        "report.html",
        "scenario.yaml",
        "environment.txt",
    ] {
        assert!(report.join(file).is_file(), "{file} written in {}", report.display());
    }
    // The failing run's report as one archive to attach to a bug report.
    let archive = reports.join("x.tar.gz");
    let output = netfault(&["bundle", report.to_str().unwrap(), "-o", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{:?}", output);
    let listing = Command::new("tar").arg("tzf").arg(&archive).output().expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in netfault::report::bundle::FILES {
        assert!(listing.contains(&format!("wrong-errno/{file}")), "{file} in the bundle: {listing}");
    }
    let result = std::fs::read_to_string(report.join("result.json")).unwrap();
    assert!(result.contains("\"status\": \"fail\""), "{result}");
}

#[test]
fn wrong_time_fails_cargo_test_driver() {
    let reports = scratch("time");
    let output = netfault(&[
        "test",
        "--root",
        "harness/tests/fixtures/failing",
        "--reports",
        reports.to_str().unwrap(),
        "--",
        "--exact",
        "wrong-time.yaml",
    ]);
    let text = text(&output);
    assert_ne!(output.status.code(), Some(0), "a failing scenario must fail the test run: {text}");
    assert!(text.contains("1 failed"), "{text}");
    assert!(text.contains("expected to end after 1.000000s ± 0.300000s, got ETIMEDOUT after 3."), "{text}");
}

#[test]
fn check_accepts_the_suite_and_runs_nothing() {
    let output = netfault(&["check", "scenarios"]);
    let text = text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("scenario(s) valid"), "{text}");
}

#[test]
fn run_skips_slow_scenarios_unless_asked() {
    let reports = scratch("slow");
    let skipped = netfault(&["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/slow"]);
    let text_skipped = text(&skipped);
    assert_eq!(skipped.status.code(), Some(0), "{text_skipped}");
    assert!(text_skipped.contains("0 passed, 0 failed, 1 slow skipped (--slow runs them)"), "{text_skipped}");
    assert!(!reports.join("marked-slow").exists(), "a skipped scenario writes no report");

    let ran = netfault(&["run", "--slow", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/slow"]);
    let text_ran = text(&ran);
    assert_eq!(ran.status.code(), Some(0), "{text_ran}");
    assert!(text_ran.contains("PASS  marked-slow"), "{text_ran}");
    assert!(text_ran.contains("1 passed, 0 failed;"), "{text_ran}");
}

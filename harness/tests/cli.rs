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
    for file in ["timeline.txt", "result.json", "client.pcap", "server.pcap"] {
        assert!(report.join(file).is_file(), "{file} written in {}", report.display());
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

/// A folder of copies of a quick passing scenario at the given relative paths.
fn scenarios_at(name: &str, files: &[&str]) -> PathBuf {
    let dir = scratch(name);
    let text = "description: d\nclient:\n  - sleep: 10ms\n";
    for file in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn colliding_report_folders_are_refused_before_anything_runs() {
    // Found by the issue-12 campaign: these pairs wrote one report folder, or one deleted the other's.
    let dir = scenarios_at("collide", &["x.yaml", "x.yml", "d/y.yaml", "d/y/z.yaml"]);
    let reports = dir.join("reports");
    let output = netfault(&["run", "--reports", reports.to_str().unwrap(), dir.to_str().unwrap()]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("x.yml: scenario name \"x\" is also the name of"), "{said}");
    assert!(said.contains("d/y/z.yaml: its report folder `d/y/z` lies inside `d/y`, the report folder of"), "{said}");
    assert!(said.contains("2 invalid scenario(s); nothing was run"), "{said}");
    assert!(!reports.exists(), "nothing was written");
    // Two roots with the same relative name: each file is named after its own folder.
    let other = scenarios_at("collide-other", &["d/y.yaml"]);
    let output = netfault(&["check", dir.join("d").to_str().unwrap(), other.join("d").to_str().unwrap()]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("scenario name \"y\" is also the name of"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn a_file_given_twice_runs_once() {
    let dir = scenarios_at("twice", &["x.yaml"]);
    let file = dir.join("x.yaml");
    let reports = dir.join("reports");
    let output = netfault(&[
        "run",
        "--reports",
        reports.to_str().unwrap(),
        file.to_str().unwrap(),
        file.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(said.contains("x.yaml: skipped: the same file as"), "{said}");
    assert_eq!(said.matches("PASS  x").count(), 1, "{said}");
    assert!(said.contains("1 passed, 0 failed"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn impossible_repeats_and_a_scenario_file_as_reports_folder_are_refused() {
    // Found by the issue-12 campaign: the repeat count aborted the runner allocating its job list; `--reports
    // x.yaml` made every scenario a harness error.
    let output =
        netfault(&["run", "--repeat", "9223372036854775808", "harness/tests/fixtures/hang/setsid-escape.yaml"]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("is more than 100000 runs; repeat fewer times; nothing was run"), "{said}");
    let output = netfault(&[
        "run",
        "--reports",
        "harness/tests/fixtures/hang/read-forever.yaml",
        "harness/tests/fixtures/hang/setsid-escape.yaml",
    ]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("read-forever.yaml: is a file, not a folder; nothing was run"), "{said}");
}

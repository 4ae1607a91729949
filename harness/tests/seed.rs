//! `netfault run --seed`: two runs with the same seed make the same impairment decisions, packet by packet, and
//! record them (and the seed) in result.json; another seed makes others; without `--seed` one is chosen and
//! printed. The same holds for every impairment scenario, bulk transfers whose packet count varies from run to
//! run included: the decisions about the packets both runs sent agree.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SCENARIO: &str = "harness/tests/fixtures/seeded/jitter.yaml";

/// `netfault run [--seed N] --reports DIR jitter.yaml`; returns stdout and result.json.
fn run(seed: Option<&str>, name: &str) -> (String, Value) {
    run_scenario(SCENARIO, seed, name)
}

/// `netfault run [--seed N] --reports DIR <scenario>`; returns stdout and result.json.
fn run_scenario(scenario: &str, seed: Option<&str>, name: &str) -> (String, Value) {
    let reports = std::env::temp_dir().join(format!("netfault-seed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reports);
    let mut args = vec!["run".to_string(), "--reports".into(), reports.to_string_lossy().into_owned()];
    if let Some(seed) = seed {
        args.extend(["--seed".to_string(), seed.to_string()]);
    }
    args.push(scenario.into());
    let output = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(&args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the netfault binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let result = find_result(&reports).unwrap_or_else(|| panic!("no result.json under {}", reports.display()));
    let json = serde_json::from_str(&std::fs::read_to_string(&result).expect("result.json written")).unwrap();
    let _ = std::fs::remove_dir_all(&reports);
    (stdout, json)
}

/// The one result.json under `dir` (its folder is the scenario's name, which depends on the root it was run
/// from).
fn find_result(dir: &Path) -> Option<PathBuf> {
    let mut found = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found = found.or_else(|| find_result(&path));
        } else if path.file_name().is_some_and(|name| name == "result.json") {
            found = Some(path);
        }
    }
    found
}

fn decisions(result: &Value) -> &Vec<Value> {
    result["decisions"].as_array().expect("result.json has a decision list")
}

#[test]
fn the_same_seed_makes_the_same_decisions_and_another_seed_others() {
    let (stdout, first) = run(Some("4242"), "first");
    assert!(stdout.contains("impairments seeded with 4242"), "{stdout}");
    let (_, second) = run(Some("4242"), "second");
    let (_, other) = run(Some("4243"), "other");
    assert_eq!(first["seed"], 4242);
    assert_eq!(decisions(&first).len(), 20, "one decision per request: {first:#}");
    assert_eq!(decisions(&first), decisions(&second), "same seed, same decisions");
    assert_ne!(decisions(&first), decisions(&other), "another seed, other decisions");
    for decision in decisions(&first) {
        assert_eq!(decision["fault"], "jitter");
        assert_eq!(decision["decision"], "delayed");
        let by = decision["by"].as_u64().expect("delay in microseconds");
        assert!((1_000..=3_000).contains(&by), "2 ms +- 1 ms: {decision}");
    }
}

#[test]
fn without_a_seed_one_is_chosen_printed_and_recorded() {
    let (stdout, result) = run(None, "fresh");
    let printed: u64 = stdout
        .split("impairments seeded with ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| panic!("the chosen seed is printed: {stdout}"));
    assert_eq!(result["seed"].as_u64(), Some(printed), "result.json records the printed seed");
    assert_eq!(decisions(&result).len(), 20);
}

/// `netfault run --jobs 2 --seed N --reports DIR <path>` (every scenario of a folder); returns each scenario's
/// result.json by its name. Every scenario must pass.
fn run_folder(path: &str, seed: &str, name: &str) -> Vec<(String, Value)> {
    let reports = std::env::temp_dir().join(format!("netfault-seed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reports);
    let output = Command::new(env!("CARGO_BIN_EXE_netfault"))
        // Two at a time: eleven bulk transfers at once on a debug build lost capture frames on a busy machine.
        .args(["run", "--jobs", "2", "--seed", seed, "--reports"])
        .arg(&reports)
        .arg(path)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the netfault binary runs");
    let mut results = Vec::new();
    collect_results(&reports, &mut results);
    // A failed run's reports stay, for what they say (a killed scenario's killed.txt above all).
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}(reports kept in {})",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        reports.display()
    );
    let _ = std::fs::remove_dir_all(&reports);
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

fn collect_results(dir: &Path, results: &mut Vec<(String, Value)>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_results(&path, results);
        } else if path.file_name().is_some_and(|name| name == "result.json") {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("result.json read"))
                .expect("result.json is JSON");
            let scenario = json["scenario"].as_str().expect("result.json names its scenario").to_string();
            results.push((scenario, json));
        }
    }
}

/// Every scenario under scenarios/impair, twice with one seed: TCP sends a few more or fewer packets from run to
/// run (a retransmission lost again, a timeout, ACKs merged), but each decision about a packet both runs sent
/// is the same in both (report::agreement says exactly what is compared), and most decisions are about such
/// packets. Another seed decides otherwise.
#[test]
fn every_impairment_scenario_decides_alike_about_the_packets_both_runs_sent() {
    let first = run_folder("scenarios/impair", "777", "folder-first");
    let second = run_folder("scenarios/impair", "777", "folder-second");
    let names: Vec<&str> = first.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, second.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>());
    assert!(names.len() >= 11, "{names:?}");
    let mut differences = Vec::new();
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        let agreement = netfault::report::agreement::compare(a, b).expect("decision lists compare");
        let decided = decisions(a).len();
        if name == "impair/rate" {
            // Its receive window is capped below its queue, which therefore never overflows: a rate limit
            // decides only queue-full drops (impair/rate-queue-overflow makes them).
            assert_eq!(decided, 0, "{name}: its queue overflowed: {:?}", decisions(a));
        } else {
            assert!(decided > 0, "{name} made no decision");
        }
        // Rate decides by queue, not by seed; every other scenario compares most of its decisions.
        if agreement.queue_full == 0 {
            assert!(agreement.agreed * 2 >= decided, "{name}: only {} of {decided} compared", agreement.agreed);
        }
        differences.extend(agreement.differing.iter().map(|d| format!("{name}: {d}")));
    }
    assert!(differences.is_empty(), "same seed, other decisions:\n{}", differences.join("\n"));

    let (_, loss_first) = first.iter().find(|(name, _)| name.ends_with("loss-10pct")).expect("loss-10pct ran");
    let (_, other) = run_scenario("scenarios/impair/loss-10pct.yaml", Some("778"), "bulk-other");
    let agreement = netfault::report::agreement::compare(loss_first, &other).expect("decision lists compare");
    assert!(!agreement.identical(), "another seed loses other segments");
}

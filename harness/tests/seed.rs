//! `netfault run --seed`: two runs with the same seed make the same impairment decisions, packet by packet, and
//! record them (and the seed) in result.json; another seed makes others; without `--seed` one is chosen and
//! printed. The same holds in a bulk transfer whose packet count varies from run to run: the decisions about the
//! packets both runs sent agree.

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

/// The packet numbers `fault` lost, and how many packets it selected.
fn losses(result: &Value, fault: &str) -> (Vec<u64>, u64) {
    let lost = decisions(result)
        .iter()
        .filter(|decision| decision["fault"] == fault)
        .map(|decision| {
            assert_eq!(decision["decision"], "lost", "{decision}");
            decision["n"].as_u64().expect("a packet number")
        })
        .collect();
    let selected = result["fault_hits"][fault].as_u64().expect("the fault's hit count");
    (lost, selected)
}

/// scenarios/impair/loss-10pct.yaml: TCP sends a few more or fewer segments from run to run (a lost
/// retransmission, a timeout), but the n-th segment the fault selects is lost or not by the seed alone.
#[test]
fn a_bulk_transfer_loses_the_same_packets_under_the_same_seed() {
    let scenario = "scenarios/impair/loss-10pct.yaml";
    let (_, first) = run_scenario(scenario, Some("777"), "bulk-first");
    let (_, second) = run_scenario(scenario, Some("777"), "bulk-second");
    let (_, other) = run_scenario(scenario, Some("778"), "bulk-other");
    let (first_lost, first_selected) = losses(&first, "lossy");
    let (second_lost, second_selected) = losses(&second, "lossy");
    let (other_lost, other_selected) = losses(&other, "lossy");
    // 2 MiB in 1448-byte segments is 1449 of them before any retransmission.
    for selected in [first_selected, second_selected, other_selected] {
        assert!(selected >= 1449, "the fault selected every data segment: {selected}");
    }
    let common = first_selected.min(second_selected);
    let within = |lost: &[u64], limit: u64| -> Vec<u64> { lost.iter().copied().filter(|&n| n <= limit).collect() };
    assert_eq!(within(&first_lost, common), within(&second_lost, common), "same seed, same packets lost");
    // About 145 losses among the 1449 segments both runs sent at least; another seed picks others.
    let common_other = first_selected.min(other_selected);
    assert!(within(&first_lost, common).len() > 100, "10 % of {common}: {first_lost:?}");
    assert_ne!(within(&first_lost, common_other), within(&other_lost, common_other), "another seed, other losses");
}

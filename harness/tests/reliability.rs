//! Bounded waits and confinement, through the command line: a step that blocks forever is ended at the scenario
//! deadline with the step named and the report written; `run` and the cargo-test driver stop at the suite
//! deadline; host-wide sysctls and report names that leave reports/ are refused before anything runs; `exec`
//! programs run in the scenario's namespace and die with the run, even one that calls setsid.

mod common;
mod contract;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{run_processes, workspace, TOKEN_VAR};

/// `netfault args...` from the workspace, with `token` in its environment; returns its output and how long
/// it took.
fn netfault(token: &str, env: &[(&str, &str)], args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(args)
        .current_dir(workspace())
        .env(TOKEN_VAR, format!("{token}-{}", std::process::id()))
        .envs(env.iter().copied())
        .output()
        .expect("the netfault binary runs");
    (output, started.elapsed())
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netfault-reliability-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// How long a scenario process may still be finishing its exit once `netfault` has returned: it reports before
/// the kernel has released its packet sockets (an RCU grace period each, 10-16 ms at HZ=250).
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// No process of the run is alive: `netfault` has returned, so every program it started must be gone already
/// (the scenario process kills and reaps every other process of its PID namespace before it reports). netfault's
/// own processes (the scenario process, forked by the runner's fork server, or `__run-one`; the fork server,
/// which ends when the runner has) may be finishing their exit, and must be gone within [`EXIT_WAIT`].
fn assert_no_process_left(token: &str) {
    let token = format!("{token}-{}", std::process::id());
    let left = run_processes(&token);
    let programs: Vec<_> = left.iter().filter(|(pid, command)| !is_netfault(*pid, command)).collect();
    assert!(programs.is_empty(), "processes of the run outlived it: {programs:?}");
    let until = Instant::now() + EXIT_WAIT;
    loop {
        let left = run_processes(&token);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "scenario processes still alive {EXIT_WAIT:?} after the run: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the process is netfault's own: its command line is the binary's, or, once an exiting process has
/// released its memory (its command line then reads empty), its name is.
fn is_netfault(pid: u32, command: &str) -> bool {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    command.starts_with(env!("CARGO_BIN_EXE_netfault")) || (command.is_empty() && name.trim_end() == "netfault")
}

fn result_json(dir: &Path) -> serde_json::Value {
    contract::checked_result(&dir.join("result.json")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_read_nobody_answers_ends_at_the_deadline_naming_the_steps() {
    let reports = scratch("read-forever");
    let (output, took) = netfault(
        "read-forever",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/hang/read-forever.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "the 2 s deadline ended the run: took {took:?}");
    // The step with an expectation fails on it; the one without fails on the deadline.
    assert!(
        text.contains(
            "read-forever.yaml:17:13: line 17: client step stuck-read (recv): expected 10 bytes, got still running"
        ),
        "{text}"
    );
    assert!(
        text.contains("read-forever.yaml:10:5: line 10: server step server-read (recv): expected to end before the scenario deadline (2.000000s), got still running at the deadline"),
        "{text}"
    );
    assert!(
        text.contains("DEADLINE reached; still running: client step stuck-read (recv), server step server-read (recv)"),
        "{text}"
    );
    let dir = reports.join("read-forever");
    for file in ["timeline.txt", "client.pcap", "server.pcap"] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    let result = result_json(&dir);
    assert_eq!(result["deadline_hit"], true);
    assert_eq!(result["status"], "fail");
    // The partial timeline holds what happened before the deadline: the handshake and both reads starting.
    let timeline = fs::read_to_string(dir.join("timeline.txt")).unwrap();
    assert!(timeline.contains("Flags [S.]") && timeline.contains("stuck-read (recv) ..."), "{timeline}");
    assert_no_process_left("read-forever");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn a_step_that_ends_only_when_the_deadline_kills_its_peer_fails() {
    // Found by the issue-12 campaign: the read blocked at the deadline ended with EOF once the run killed the
    // server's nc, and the scenario passed.
    let reports = scratch("peer-killed");
    let (output, took) = netfault(
        "peer-killed",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/hang/peer-killed.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        text.contains(
            "peer-killed.yaml:14:5: line 14: client step blocked-read (recv): expected to end before the scenario \
             deadline (2.000000s), got still running at the deadline (started at"
        ),
        "{text}"
    );
    assert!(text.contains("it ended only after it, EOF at"), "{text}");
    let result = result_json(&reports.join("peer-killed"));
    let step = result["steps"].as_array().unwrap().iter().find(|s| s["name"] == "blocked-read").unwrap().clone();
    assert_eq!(step["verdict"], "fail", "{step}");
    assert_eq!(step["outcome"], "eof", "the outcome it ended with is still recorded: {step}");
    assert_no_process_left("peer-killed");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn a_program_that_never_exits_is_killed_at_the_deadline() {
    let reports = scratch("exec-forever");
    let (output, took) = netfault(
        "exec-forever",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/hang/exec-forever.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(text.contains("client step stuck-exec (exec): expected exit 0, got unfinished at the deadline"), "{text}");
    assert!(text.contains("killed (SIGKILL) at the scenario deadline"), "{text}");
    let dir = reports.join("exec-forever");
    assert_eq!(result_json(&dir)["status"], "fail");
    assert!(dir.join("client.pcap").is_file());
    assert_no_process_left("exec-forever");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn the_cargo_test_driver_names_the_blocked_step() {
    let reports = scratch("driver-hang");
    let (output, _) = netfault(
        "driver-hang",
        &[],
        &[
            "test",
            "--root",
            "harness/tests/fixtures/hang",
            "--reports",
            reports.to_str().unwrap(),
            "--",
            "--exact",
            "read-forever.yaml",
        ],
    );
    let text = text(&output);
    assert_ne!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("1 failed"), "{text}");
    assert!(text.contains("server step server-read (recv): expected to end before the scenario deadline"), "{text}");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn run_stops_at_its_suite_deadline_and_reports_every_scenario() {
    let reports = scratch("suite-deadline");
    // An earlier run's report, which the killed run must not leave to pass for its own.
    let folder = reports.join("long");
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join("result.json"), "{}").unwrap();
    fs::write(folder.join("timeline.txt"), "an earlier run\n").unwrap();
    let (output, took) = netfault(
        "suite-deadline",
        &[],
        &[
            "run",
            "--jobs",
            "1",
            "--deadline",
            "3s",
            "--reports",
            reports.to_str().unwrap(),
            "harness/tests/fixtures/cleanup/long.yaml",
            "harness/tests/fixtures/hang/setsid-escape.yaml",
        ],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(took < Duration::from_secs(8), "the 3 s suite deadline ended the run: took {took:?}");
    assert!(text.contains("ERROR long") && text.contains("stopped: the suite deadline (3s) passed"), "{text}");
    assert!(text.contains("not started: the suite deadline (3s) passed"), "the queued scenario is reported: {text}");
    assert!(text.contains("1 running scenario(s) killed, 1 not started"), "{text}");
    // The killed scenario's line names its own folder, which holds its report as far as it got (the captures
    // write as the frames come; result.json and timeline.txt say it was killed, and why) and nothing of the
    // earlier run.
    let error_line = text.lines().find(|line| line.starts_with("ERROR long")).unwrap_or_default();
    assert!(error_line.ends_with(&folder.display().to_string()), "{error_line}\n{text}");
    let kept = format!(
        "its report as far as it got: client.pcap, result.json, server.pcap, timeline.txt in {}",
        folder.display()
    );
    assert!(text.contains(&kept), "{text}");
    for file in ["client.pcap", "server.pcap"] {
        assert!(folder.join(file).is_file(), "{file} kept");
    }
    let result = contract::checked_result(&folder.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "killed", "{result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("stopped: the suite deadline (3s) passed"), "{reason}");
    let timeline = fs::read_to_string(folder.join("timeline.txt")).unwrap();
    assert!(timeline.contains("# KILLED stopped: the suite deadline (3s) passed"), "{timeline}");
    assert!(!timeline.contains("an earlier run"), "the earlier run's timeline is gone: {timeline}");
    assert!(!folder.join(".netfault-partial").exists(), "nothing left staged");
    assert_no_process_left("suite-deadline");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn the_cargo_test_driver_stops_at_netfault_suite_deadline() {
    let reports = scratch("driver-deadline");
    let (output, took) = netfault(
        "driver-deadline",
        &[("NETFAULT_SUITE_DEADLINE", "3s")],
        &["test", "--root", "harness/tests/fixtures/cleanup", "--reports", reports.to_str().unwrap()],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(text.contains("stopped: the suite deadline (3s) passed"), "the trial says why it failed: {text}");
    assert!(text.contains("netfault: the suite deadline (3s) passed"), "{text}");
    assert_no_process_left("driver-deadline");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn a_bad_suite_deadline_is_refused() {
    let (output, _) = netfault("bad-deadline", &[], &["run", "--deadline", "10", "harness/tests/fixtures/hang"]);
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("suite deadline: duration \"10\" needs a unit"), "{text}");
}

#[test]
fn a_sysctl_the_kernel_refuses_is_an_error_at_its_line() {
    // Found by the issue-12 campaign: the run-time error said which sysctl but not where it was written.
    let reports = scratch("sysctl-refused");
    let (output, _) = netfault(
        "sysctl-refused",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/runtime/sysctl-refused.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains(
            "harness/tests/fixtures/runtime/sysctl-refused.yaml:8:39: set sysctl in client (sysctl -w \
             net.ipv4.tcp_syn_retries=1000): Invalid argument"
        ),
        "{text}"
    );
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn a_setsid_program_dies_with_the_run() {
    let reports = scratch("setsid");
    let (output, _) = netfault(
        "setsid",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/hang/setsid-escape.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_no_process_left("setsid");
    let _ = fs::remove_dir_all(&reports);
}

/// `check` and `run` on an invalid scenario: both refuse it with `message`, and `run` creates nothing.
fn refused_before_running(file: &str, message: &[&str]) {
    let (output, _) = netfault("refused", &[], &["check", file]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    for part in message {
        assert!(said.contains(part), "{part:?} in {said}");
    }
    let reports = scratch("refused");
    let (output, _) = netfault("refused", &[], &["run", "--reports", reports.to_str().unwrap(), file]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("nothing was run"), "{said}");
    assert!(!reports.exists(), "run on an invalid scenario created {}", reports.display());
}

#[test]
fn a_host_wide_sysctl_is_refused_before_anything_runs() {
    refused_before_running(
        "harness/tests/fixtures/confine/pid-max.yaml",
        &["pid-max.yaml:6:13:", "\"kernel.pid_max\" is not a per-namespace sysctl: setting it would change the host"],
    );
}

#[test]
fn a_machine_wide_net_sysctl_is_refused_before_anything_runs() {
    refused_before_running(
        "harness/tests/fixtures/confine/rmem-max.yaml",
        &["rmem-max.yaml:6:13:", "\"net.core.rmem_max\"", "per network namespace"],
    );
}

#[test]
fn a_scenario_name_cannot_leave_the_reports_folder() {
    // The scenario root is the nearest `scenarios` folder of the path as given, so this file's name would be
    // `../harness/tests/fixtures/confine/exec-namespace`, a report folder outside reports/.
    refused_before_running(
        "scenarios/../harness/tests/fixtures/confine/exec-namespace.yaml",
        &["scenario name \"../harness/tests/fixtures/confine/exec-namespace\" cannot be a report folder"],
    );
}

#[test]
fn a_symlinked_scenario_folder_reports_under_reports() {
    let root = scratch("symlink-root");
    let outside = scratch("symlink-outside");
    fs::create_dir_all(root.join("scenarios")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::copy(workspace().join("harness/tests/fixtures/hang/setsid-escape.yaml"), outside.join("x.yaml")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("scenarios/linked")).unwrap();
    let reports = root.join("reports");
    let (output, _) = netfault(
        "symlink",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), root.join("scenarios").to_str().unwrap()],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    result_json(&reports.join("linked/x"));
    let written: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written, vec!["x.yaml"], "nothing written next to the linked scenario");
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_dir_all(&outside);
}

#[test]
fn exec_programs_run_in_the_scenario_namespace_and_die_with_it() {
    let reports = scratch("exec-namespace");
    let (output, _) = netfault(
        "exec-namespace",
        &[],
        &["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/confine/exec-namespace.yaml"],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let result = result_json(&reports.join("exec-namespace"));
    let namespace_of = |host: &str| -> String {
        let step = result["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == host && s["name"] == "where")
            .unwrap_or_else(|| panic!("{host} step where in {result}"));
        let detail = step["detail"].as_str().unwrap();
        detail.strip_prefix("stdout: ").unwrap_or(detail).lines().next().unwrap().trim().to_string()
    };
    let host = fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
    let (client, server) = (namespace_of("client"), namespace_of("server"));
    assert!(client.starts_with("net:[") && server.starts_with("net:["), "{client} {server}");
    assert_ne!(client, host, "the client's program ran in the machine's namespace");
    assert_ne!(server, host, "the server's program ran in the machine's namespace");
    assert_ne!(client, server, "each host's program runs in its own host's namespace");
    assert_no_process_left("exec-namespace");
    let _ = fs::remove_dir_all(&reports);
}

#[test]
fn repeat_runs_each_scenario_n_times_and_counts_them() {
    let reports = scratch("repeat");
    let (output, _) = netfault(
        "repeat",
        &[],
        &[
            "run",
            "--repeat",
            "3",
            "--reports",
            reports.to_str().unwrap(),
            "harness/tests/fixtures/hang/setsid-escape.yaml",
            "harness/tests/fixtures/failing/wrong-errno.yaml",
        ],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("3 runs of each of 2 scenario(s), 6 at a time:"), "{text}");
    assert!(text.contains(&format!("{:<40} {:>5} {:>5} {:>5}", "setsid-escape", 3, 0, 0)), "{text}");
    assert!(text.contains(&format!("{:<40} {:>5} {:>5} {:>5}", "wrong-errno", 0, 3, 0)), "{text}");
    assert!(text.contains("flaky: 0\nnever passed: 1\n  wrong-errno: 0/3 passed\n    run-1: "), "{text}");
    for run in 1..=3 {
        for name in ["setsid-escape", "wrong-errno"] {
            let dir = reports.join(name).join(format!("run-{run}"));
            assert_eq!(result_json(&dir)["scenario"], name, "{} written", dir.display());
        }
    }
    assert_no_process_left("repeat");
    let _ = fs::remove_dir_all(&reports);
}

/// Runs the hostile scenario `tests/fixtures/confine/<fixture>.yaml` and returns the detail (the first lines
/// of its output) of `host`'s step `step`. The scenario judges itself: each program exits 1 when it found a
/// way out of its confinement, printing which, so the run must pass.
fn confined_run(fixture: &str, host: &str, step: &str) -> String {
    let reports = scratch(fixture);
    let file = format!("harness/tests/fixtures/confine/{fixture}.yaml");
    let (output, _) = netfault(fixture, &[], &["run", "--reports", reports.to_str().unwrap(), &file]);
    let text = text(&output);
    let result = result_json(&reports.join(fixture));
    let detail = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == host && s["name"] == step)
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_else(|| panic!("no detail for {host} step {step} in {result}"))
        .to_string();
    assert_eq!(output.status.code(), Some(0), "{fixture}: {detail}\n{text}");
    assert_eq!(result["status"], "pass", "{result}");
    assert_no_process_left(fixture);
    let _ = fs::remove_dir_all(&reports);
    detail
}

/// The machine's nftables tables (`nft list tables`), read from this test's (the machine's) namespace.
fn machine_nft_tables() -> String {
    let output = Command::new("nft").args(["list", "tables"]).output().expect("nft runs");
    assert!(output.status.success(), "nft list tables: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn exec_cannot_enter_the_machine_network_namespace_through_proc() {
    let detail = confined_run("escape-nsenter", "client", "nsenter");
    assert!(detail.contains("entered 0 other network namespaces"), "{detail}");
}

#[test]
fn exec_cannot_write_a_sysctl_of_the_machine() {
    let before = fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").unwrap();
    let detail = confined_run("escape-host-sysctl", "client", "sysctl");
    assert!(detail.contains("own tcp_fin_timeout 31, wrote outside: 0"), "{detail}");
    assert_eq!(fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").unwrap(), before);
}

#[test]
fn exec_cannot_add_an_nftables_table_to_the_machine() {
    let before = machine_nft_tables();
    let detail = confined_run("escape-host-nftables", "client", "nftables");
    assert!(detail.contains("table inet scenario_own"), "its own table: {detail}");
    assert!(detail.contains("added outside: 0"), "{detail}");
    assert_eq!(machine_nft_tables(), before, "the machine's ruleset changed");
}

#[test]
fn exec_sees_its_own_interfaces_in_sys_class_net() {
    let detail = confined_run("sysfs-interfaces", "client", "interfaces");
    assert_eq!(detail, "stdout: lo | nf0");
    let machine: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo" && name != "nf0")
        .collect();
    for name in machine {
        assert!(!detail.contains(&name), "the machine's {name} seen by the program: {detail}");
    }
}

#[test]
fn exec_sees_no_process_outside_the_scenario() {
    let detail = confined_run("host-pids", "client", "pids");
    assert!(detail.contains("its NSpid has 1 pids"), "{detail}");
}

#[test]
fn exec_finds_no_saved_descriptor_or_new_mount_into_the_machine() {
    let detail = confined_run("escape-saved-fd", "client", "saved-fd");
    assert_eq!(detail, "stdout: ways back found: 0");
}

//! The `netfault` command line end to end: a failing scenario fails `run` and the cargo-test driver, with a
//! message that says where and what; `check` validates without running.

mod contract;

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
    // Each host's sysctls as the run read them in its namespace; this scenario sets none, so none is marked.
    let environment = std::fs::read_to_string(report.join("environment.txt")).unwrap();
    for host in ["client 10.0.0.1/24", "server 10.0.0.2/24"] {
        assert!(environment.contains(&format!("{host}: sysctls in force")), "{environment}");
    }
    assert!(environment.contains("\n  net.ipv4.tcp_retries2 = 15\n"), "{environment}");
    assert!(!environment.contains("\n *"), "nothing marked as set by the scenario: {environment}");
    // The failing run's report as one archive to attach to a bug report.
    let archive = reports.join("x.tar.gz");
    let output = netfault(&["bundle", report.to_str().unwrap(), "-o", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{:?}", output);
    let listing = Command::new("tar").arg("tzf").arg(&archive).output().expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in netfault::report::bundle::FILES {
        assert!(listing.contains(&format!("wrong-errno/{file}")), "{file} in the bundle: {listing}");
    }
    let result = contract::checked_result(&report.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "fail", "{result}");
    assert_eq!(result["failures"][0]["location"]["line"], 17, "{result}");
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

#[test]
fn version_and_every_commands_help_exit_zero() {
    let version = netfault(&["--version"]);
    assert_eq!(version.status.code(), Some(0), "{}", text(&version));
    let printed = String::from_utf8_lossy(&version.stdout);
    let commit = printed
        .strip_prefix(&format!("netfault {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{printed:?}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(hash == "unknown" || (hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())), "{printed:?}");
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["help", "run"],
        &["check", "-h"],
        &["list", "--help"],
        &["test", "--help"],
    ] {
        let output = netfault(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: netfault"), "{args:?}: {}", text(&output));
    }
    let run_help = String::from_utf8_lossy(&netfault(&["run", "--help"]).stdout).into_owned();
    for option in
        ["-j, --jobs <N>", "--reports <DIR>", "--deadline <DURATION>", "--repeat <N>", "--slow", "Exit status"]
    {
        assert!(run_help.contains(option), "{option}: {run_help}");
    }
}

#[test]
fn usage_errors_exit_2_and_run_nothing() {
    let reports = scratch("usage");
    for args in [
        &["run", "--frob"][..],
        &["run", "-j0", "scenarios/own-socket/closed.yaml"],
        &["run", "--jobs=many", "scenarios/own-socket/closed.yaml"],
        &["run", "--deadline", "10", "scenarios/own-socket/closed.yaml"],
        &["frob"],
        &[],
    ] {
        let mut all = args.to_vec();
        all.extend(["--reports", reports.to_str().unwrap()]);
        let output = netfault(if args.is_empty() { args } else { &all });
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(!reports.exists(), "{args:?} ran something");
    }
}

#[test]
fn short_and_equals_forms_of_options() {
    let reports = scratch("forms");
    let dir = reports.to_str().unwrap();
    let equals = format!("--reports={dir}");
    let scenario = "scenarios/own-socket/closed.yaml";
    for args in [
        &["run", "-j1", "--reports", dir, scenario][..],
        &["run", "--jobs=1", &equals, scenario],
        &["run", "-j", "1", &equals, scenario],
    ] {
        let _ = std::fs::remove_dir_all(&reports);
        let output = netfault(args);
        let text = text(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {text}");
        assert!(text.contains("1 passed, 0 failed"), "{args:?}: {text}");
        assert!(reports.join("own-socket/closed/result.json").is_file(), "{args:?}");
    }
}

/// `netfault <command> <redirect>` through `sh -c`, from the project root.
fn netfault_in_shell(command: &str, redirect: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("{} {command} {redirect}", env!("CARGO_BIN_EXE_netfault")))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_netfault_quietly() {
    for command in ["--help", "list", "test -- --list"] {
        let output = netfault_in_shell(command, "| head -1");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.is_empty(), "{command}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1, "{command}");
    }
}

/// Two scenarios: linger/zero sorts first and ends after 1.5 s, own-socket/closed after 0.6 s.
const FAST_AND_SLOW: [&str; 2] = ["scenarios/linger/zero.yaml", "scenarios/own-socket/closed.yaml"];

#[test]
fn results_come_as_they_finish_then_in_name_order() {
    let reports = scratch("live");
    let mut args = vec!["run", "--reports", reports.to_str().unwrap()];
    args.extend(FAST_AND_SLOW);
    let output = netfault(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!stdout.contains('\x1b'), "no colour and no progress line into a pipe: {stdout:?}");
    let order: Vec<&str> =
        stdout.lines().filter_map(|line| line.strip_prefix("PASS  ")?.split_whitespace().next()).collect();
    assert_eq!(order, ["own-socket/closed", "linger/zero", "linger/zero", "own-socket/closed"], "{stdout}");
    assert!(stdout.contains("all 2 in name order:\n"), "{stdout}");
}

/// `netfault args...` on a pseudo-terminal (`script`), with `env`; what the terminal showed.
fn on_a_terminal(env: &[(&str, &str)], args: &[&str]) -> String {
    let command = format!("{} {}", env!("CARGO_BIN_EXE_netfault"), args.join(" "));
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .output()
        .expect("script (util-linux) runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_terminal_gets_colour_and_a_progress_line_unless_no_color() {
    let reports = scratch("terminal");
    let mut args = vec!["run", "--reports", reports.to_str().unwrap()];
    args.extend(FAST_AND_SLOW);
    let shown = on_a_terminal(&[], &args);
    assert!(shown.contains("\x1b[32mPASS \x1b[0m own-socket/closed"), "{shown:?}");
    assert!(shown.contains("\r\x1b[2Krunning 1, done 1 of 2; longest linger/zero "), "{shown:?}");
    let plain = on_a_terminal(&[("NO_COLOR", "1")], &args);
    assert!(!plain.contains("\x1b[32m"), "NO_COLOR: {plain:?}");
    assert!(plain.contains("PASS  own-socket/closed"), "{plain:?}");
    assert!(plain.contains("running 1, done 1 of 2"), "the progress line is no colour: {plain:?}");
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
fn check_of_a_folder_names_every_invalid_file() {
    let dir = scratch("check-every");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "description: a\nclient:\n  - bogus: 1\n").unwrap();
    std::fs::write(dir.join("b.yaml"), "description: b\nserver:\n  - sleep: forever\n").unwrap();
    std::fs::write(dir.join("c.yaml"), "description: c\nclient:\n  - sleep: 10ms\n").unwrap();
    let output = netfault(&["check", dir.to_str().unwrap()]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("a.yaml:3:5: unknown key \"bogus\""), "{said}");
    assert!(said.contains("b.yaml:3:12:"), "not only the first invalid file: {said}");
    assert!(said.contains("2 invalid scenario(s); nothing was run"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
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
    assert!(said.contains("1 passed, 0 failed"), "one run, not three: {said}");
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

#[test]
fn result_json_t0_maps_pcap_timestamps_to_timeline_times() {
    let reports = scratch("t0");
    let output = netfault(&["run", "--reports", reports.to_str().unwrap(), "scenarios/own-socket/closed.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = reports.join("own-socket/closed");
    let result = contract::checked_result(&report.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
    let t0 = result["t0"]["unix_ns"].as_u64().expect("t0 is set");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(result["kernel"]["release"], kernel.trim());
    assert_eq!(result["format_version"], netfault::report::result::FORMAT_VERSION);
    for host in ["client", "server"] {
        let file = std::fs::File::open(report.join(format!("{host}.pcap"))).unwrap();
        let mut pcap = pcap_file::pcap::PcapReader::new(file).unwrap();
        let mut frames_ns = Vec::new();
        while let Some(packet) = pcap.next_packet() {
            frames_ns.push(packet.unwrap().timestamp.as_nanos() as i128 - i128::from(t0));
        }
        let events: Vec<i128> = result["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "packet" && e["host"] == host)
            .map(|e| (e["t"].as_f64().unwrap() * 1e9).round() as i128)
            .collect();
        assert!(events.len() >= 3, "{host}: {events:?}");
        for t in events {
            // The timeline's times are f64 seconds: equal to the nanosecond within their rounding.
            assert!(frames_ns.iter().any(|frame| (frame - t).abs() <= 1_000), "{host}: no frame at t0 + {t} ns");
        }
        assert!(result["sysctls"][host]["net.ipv4.tcp_syn_retries"].is_string(), "{host} sysctls: {result}");
    }
}

#[test]
fn the_file_in_result_json_is_the_same_whatever_ran_the_scenario() {
    let (by_run, by_test) = (scratch("file-run"), scratch("file-test"));
    let run = netfault(&["run", "--reports", by_run.to_str().unwrap(), "scenarios/own-socket/closed.yaml"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // As `cargo test` gives it: an absolute root through the harness folder.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let args = ["test", "--root", root.to_str().unwrap(), "--reports", by_test.to_str().unwrap()];
    let test = netfault(&[&args[..], &["--", "--exact", "own-socket/closed.yaml"]].concat());
    assert_eq!(test.status.code(), Some(0), "{}", text(&test));
    let file = |reports: &Path| {
        let result =
            contract::checked_result(&reports.join("own-socket/closed/result.json")).unwrap_or_else(|e| panic!("{e}"));
        result["file"].as_str().unwrap().to_string()
    };
    let canonical = std::fs::canonicalize("../scenarios/own-socket/closed.yaml").unwrap();
    assert_eq!(file(&by_run), canonical.to_str().unwrap());
    assert_eq!(file(&by_test), file(&by_run));
}

#[test]
fn result_json_and_the_timeline_say_whose_hosts_were_made_ahead() {
    // A folder run one scenario at a time: the pool's maker has a pair ready for each plain scenario after the
    // first (each lasts 200 ms, the maker needs milliseconds); one behind a router, or with another MTU, makes
    // its own; so does a single file's scenario.
    let dir = scratch("ahead");
    std::fs::create_dir_all(&dir).unwrap();
    let plain = "description: d\nclient:\n  - sleep: 200ms\n";
    for name in ["a", "b", "c"] {
        std::fs::write(dir.join(format!("{name}.yaml")), plain).unwrap();
    }
    std::fs::write(dir.join("jumbo.yaml"), format!("link: {{ mtu: 9000 }}\n{plain}")).unwrap();
    std::fs::write(dir.join("routed.yaml"), format!("hosts:\n  router: {{}}\n{plain}")).unwrap();
    let reports = scratch("ahead-reports");
    let output = netfault(&["run", "--jobs", "1", "--reports", reports.to_str().unwrap(), dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let made_ahead = |report: &Path| {
        let result = contract::checked_result(&report.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
        let ahead = result["hosts_made_ahead"].as_bool().expect("hosts_made_ahead is a boolean");
        let timeline = std::fs::read_to_string(report.join("timeline.txt")).unwrap();
        assert_eq!(timeline.contains("(hosts made ahead)"), ahead, "{}: {timeline}", report.display());
        ahead
    };
    let plain_ahead = ["a", "b", "c"].iter().filter(|name| made_ahead(&reports.join(name))).count();
    assert!(plain_ahead >= 2, "{plain_ahead} of 3 plain scenarios took hosts made ahead");
    assert!(!made_ahead(&reports.join("jumbo")), "another MTU fits no pooled pair");
    assert!(!made_ahead(&reports.join("routed")), "a router scenario makes its own hosts");
    let single = scratch("ahead-single");
    let output = netfault(&["run", "--reports", single.to_str().unwrap(), dir.join("a.yaml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!made_ahead(&single.join("a")), "a single file's scenario makes its own hosts");
}

#[test]
fn a_rerun_replaces_the_report_and_keeps_the_users_files() {
    let reports = scratch("rerun");
    let args = ["run", "--reports", reports.to_str().unwrap(), "scenarios/own-socket/closed.yaml"];
    let report = reports.join("own-socket/closed");
    let t0 = || {
        let result = contract::checked_result(&report.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
        result["t0"]["unix_ns"].as_u64().unwrap()
    };
    assert_eq!(netfault(&args).status.code(), Some(0));
    let first = t0();
    std::fs::write(report.join("notes.txt"), "mine").unwrap();
    assert_eq!(netfault(&args).status.code(), Some(0));
    assert!(t0() > first, "result.json is the second run's");
    assert_eq!(std::fs::read_to_string(report.join("notes.txt")).unwrap(), "mine");
    let mut names: Vec<String> =
        std::fs::read_dir(&report).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    // killed.txt only of a scenario process killed past its deadline and grace.
    let finished = netfault::report::files::OWN_FILES.into_iter().filter(|name| *name != "killed.txt");
    let mut expected: Vec<&str> = finished.chain(["notes.txt"]).collect();
    expected.sort();
    assert_eq!(names, expected, "netfault's files and the user's, nothing staged left");
}

#[test]
fn a_scenario_the_kernel_cannot_run_is_not_applicable_in_run_and_in_the_test_driver() {
    let reports = scratch("requires");
    let output = netfault(&["run", "--reports", reports.to_str().unwrap(), "harness/tests/fixtures/requires"]);
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "not applicable is no failure: {printed}");
    assert!(printed.contains("N/A   old-kernel-only"), "{printed}");
    assert!(printed.contains("not applicable: 4:1: needs kernel < 3.0; this is "), "says why: {printed}");
    assert!(printed.contains("1 passed, 0 failed, 1 not applicable"), "{printed}");
    let result =
        contract::checked_result(&reports.join("old-kernel-only/result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "not-applicable", "{result}");
    assert!(result["reason"].as_str().is_some_and(|r| r.contains("needs kernel < 3.0")), "{result}");
    assert_eq!(result["format_version"], netfault::report::result::FORMAT_VERSION);
    let ran =
        contract::checked_result(&reports.join("expectation-variants/result.json")).unwrap_or_else(|e| panic!("{e}"));
    let left_out = ran["not_applicable"].as_array().expect("a list");
    assert!(left_out.len() == 1 && left_out[0].as_str().unwrap().contains("line 9:"), "{ran}");
    // The variant for kernels without the sysctl was left out, and the report says so.
    let timeline = std::fs::read_to_string(reports.join("expectation-variants/timeline.txt")).unwrap();
    assert!(
        timeline.contains("# NOT APPLICABLE line 9: client step #1's expectation left out: needs a kernel without sysctl net.ipv4.tcp_syn_retries"),
        "{timeline}"
    );
    let output =
        netfault(&["test", "--root", "harness/tests/fixtures/requires", "--reports", reports.to_str().unwrap()]);
    let driven = text(&output);
    assert_eq!(output.status.code(), Some(0), "{driven}");
    assert!(driven.contains("old-kernel-only.yaml: not applicable: 4:1: needs kernel < 3.0"), "the reason: {driven}");
    assert!(driven.contains("1 passed; 0 failed; 1 ignored"), "ignored, not passed or failed: {driven}");
}

#[test]
fn output_that_cannot_be_written_is_a_harness_error_not_a_panic() {
    // /dev/full refuses every write with ENOSPC, as a full disk does under `> file`.
    for command in ["list", "check scenarios", "--help"] {
        let output = netfault_in_shell(command, "> /dev/full");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("netfault: failed printing to stdout: No space left on device")
                && stderr.contains("the output is incomplete")
                && !stderr.contains("panicked"),
            "{command}: {stderr}"
        );
    }
}

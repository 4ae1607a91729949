//! Faults of the harness itself: `netfault run` on a long scenario is SIGKILLed, interrupted (SIGINT, SIGTERM),
//! loses its scenario process, or has a step panic; afterwards no process and no network namespace of the run
//! may be left, and the host's links, nftables ruleset and sysctls must be as before.
//!
//! The run's processes are found by an environment variable with a token unique to the test, which every
//! process of the run inherits: the runner, its scenario process, and the programs `exec` steps start
//! (including one that left its process group and session with setsid). The run's namespaces are those its
//! processes are in or hold a descriptor of, taken while it runs; afterwards none of them may exist anywhere.

mod common;
mod contract;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{pids, run_processes, workspace, TOKEN_VAR};

const FIXTURE: &str = "harness/tests/fixtures/cleanup/long.yaml";
/// A 3 s scenario whose client step `block` and server step #4 run into the deadline.
const HANG_FIXTURE: &str = "harness/tests/fixtures/killed/hang.yaml";
/// The fixture's background programs: a `sleep 1000` on each host and a `setsid sleep 1000` on the client.
const SLEEPS: usize = 3;
/// How long the fixture's background programs take to be up, at most, on a loaded machine.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long the runner may take to stop after a SIGINT / SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How long everything of a run may take to disappear once the runner is gone.
const VANISH_WAIT: Duration = Duration::from_secs(10);
/// Host sysctls the fixture sets to other values inside its namespaces.
const SYSCTLS: [&str; 6] = [
    "net/ipv4/tcp_syn_retries",
    "net/ipv4/tcp_keepalive_time",
    "net/ipv4/tcp_retries2",
    "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_keepalive_intvl",
    "net/ipv4/tcp_child_ehash_entries",
];

/// What of the host a run must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    links: Vec<String>,
    ruleset: String,
    sysctls: Vec<(String, String)>,
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn host_state() -> HostState {
    // `ip -o link` line by line, without the counters and state that traffic may change: index and name.
    let links = command_output("ip", &["-o", "link"])
        .lines()
        .map(|line| line.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect();
    let sysctls = SYSCTLS
        .iter()
        .map(|name| {
            let value = fs::read_to_string(Path::new("/proc/sys").join(name)).unwrap();
            (name.to_string(), value.trim().to_string())
        })
        .collect();
    HostState { links, ruleset: ruleset(), sysctls }
}

/// `nft list ruleset`. An ordinary user (a rootless run) may neither read nor change the host's ruleset: the
/// kernel refuses both, and the state records the refusal.
fn ruleset() -> String {
    let output = Command::new("nft").args(["list", "ruleset"]).output().unwrap_or_else(|e| panic!("nft: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return String::from_utf8_lossy(&output.stdout).into_owned();
    }
    assert!(
        !nix::unistd::geteuid().is_root() && stderr.contains("Operation not permitted"),
        "nft list ruleset: {stderr}"
    );
    "refused to this user: unreadable and unchangeable without root".to_string()
}

/// `net:[4026532318]` -> 4026532318.
fn ns_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    target.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Network namespaces the process is in (any of its threads) or holds a descriptor of.
fn namespaces_of(pid: u32) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for dir in ["task", "fd"] {
        let Ok(entries) = fs::read_dir(format!("/proc/{pid}/{dir}")) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = if dir == "task" { entry.path().join("ns/net") } else { entry.path() };
            found.extend(ns_inode(&path));
        }
    }
    found
}

/// Every network namespace on the machine that a process is in or holds open, and what `lsns -t net` lists.
fn all_namespaces() -> BTreeSet<u64> {
    let mut found: BTreeSet<u64> = pids().into_iter().flat_map(namespaces_of).collect();
    found.extend(lsns_net().lines().filter_map(|line| line.trim().parse::<u64>().ok()));
    found
}

/// `lsns -t net -n -o NS`. It walks /proc, and now and then fails without a word when a process it is reading
/// exits under it (with many tests at once, under nextest): tried up to three times, and a third failure is one.
fn lsns_net() -> String {
    let args = ["-t", "net", "-n", "-o", "NS"];
    for _ in 1..3 {
        let output = Command::new("lsns").args(args).output().unwrap_or_else(|e| panic!("lsns {args:?}: {e}"));
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        thread::sleep(Duration::from_millis(20));
    }
    command_output("lsns", &args)
}

/// Whether the namespace numbered `ns` is another one now: the kernel gives a freed namespace's inode number to
/// the next namespace made, and with many tests at once (nextest) another test's scenario made one within
/// seconds. A namespace of the run is held by a process carrying its token or by a mount (no process); one
/// held only by processes without the token is a new namespace under the old number.
fn is_recycled(ns: u64, token: &str, processes: &[(u32, BTreeSet<u64>)]) -> bool {
    let of_the_run: BTreeSet<u32> = run_processes(token).into_iter().map(|(pid, _)| pid).collect();
    let held_by = holding(ns, processes);
    !held_by.is_empty() && held_by.iter().all(|pid| !of_the_run.contains(pid))
}

/// Every process with the network namespaces it is in or holds open.
fn processes_with_namespaces() -> Vec<(u32, BTreeSet<u64>)> {
    pids().into_iter().map(|pid| (pid, namespaces_of(pid))).collect()
}

/// The processes of `processes` in namespace `ns` or holding it open.
fn holding(ns: u64, processes: &[(u32, BTreeSet<u64>)]) -> Vec<u32> {
    processes.iter().filter(|(_, held)| held.contains(&ns)).map(|(pid, _)| *pid).collect()
}

/// Who holds each of `namespaces` now: the processes in it or with a descriptor of it, or none (a mount).
fn holders(namespaces: &[u64]) -> String {
    let processes = processes_with_namespaces();
    let described: Vec<String> = namespaces
        .iter()
        .map(|ns| {
            let held_by: Vec<String> = holding(*ns, &processes)
                .into_iter()
                .map(|pid| {
                    let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    format!("{pid} {}", cmdline.replace('\0', " ").trim_end())
                })
                .collect();
            if held_by.is_empty() {
                format!("{ns} (no process: a mount)")
            } else {
                format!("{ns} (held by {})", held_by.join("; "))
            }
        })
        .collect();
    described.join(", ")
}

struct Run {
    child: Child,
    token: String,
    reports: PathBuf,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// `netfault run` on the long fixture, with the run's token and `env` in its environment.
fn start(name: &str, env: &[(&str, &str)]) -> Run {
    start_fixture(FIXTURE, name, env)
}

/// `netfault run` on `fixture`, with the run's token and `env` in its environment.
fn start_fixture(fixture: &str, name: &str, env: &[(&str, &str)]) -> Run {
    let token = format!("{name}-{}", std::process::id());
    let reports = std::env::temp_dir().join(format!("netfault-cleanup-{token}"));
    let _ = fs::remove_dir_all(&reports);
    let mut child = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(["run", "--reports", reports.to_str().unwrap(), fixture])
        .current_dir(workspace())
        .env(TOKEN_VAR, &token)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    Run { child, token, reports, stdout, stderr }
}

/// What the run had while it ran.
struct Running {
    namespaces: BTreeSet<u64>,
    processes: Vec<(u32, String)>,
}

/// Waits until the fixture's background programs are up, then takes the run's namespaces and processes.
fn wait_until_running(run: &Run) -> Running {
    let until = Instant::now() + START_WAIT;
    loop {
        let processes = run_processes(&run.token);
        let sleeps: Vec<u32> =
            processes.iter().filter(|(_, cmd)| cmd.starts_with("sleep 1000")).map(|(pid, _)| *pid).collect();
        if sleeps.len() == SLEEPS {
            let host = namespaces_of(std::process::id());
            let namespaces: BTreeSet<u64> =
                processes.iter().flat_map(|(pid, _)| namespaces_of(*pid)).filter(|ns| !host.contains(ns)).collect();
            // The runner's private parent namespace and one per host, at least.
            assert!(namespaces.len() >= 3, "namespaces of the run: {namespaces:?} ({processes:?})");
            assert_scenario_really_changes_things(&sleeps);
            return Running { namespaces, processes };
        }
        assert!(Instant::now() < until, "background programs not up after {START_WAIT:?}: {processes:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The checks afterwards mean something only if the run did set sysctls, rules and links in its namespaces:
/// look at them from inside (`nsenter --net=/proc/<sleep>/ns/net ...`; a rootless run's namespaces belong to
/// its own user namespace, which the same ordinary user enters too, keeping its ids (mapped to root there):
/// `--user=/proc/<sleep>/ns/user --preserve-credentials`).
fn assert_scenario_really_changes_things(sleeps: &[u32]) {
    let inside = |pid: u32, program: &str, args: &[&str]| {
        let user_ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        let user = (user_ns(&pid.to_string()) != user_ns("self")).then(|| format!("--user=/proc/{pid}/ns/user"));
        let net = format!("--net=/proc/{pid}/ns/net");
        let mut full: Vec<&str> = user.iter().flat_map(|user| [user.as_str(), "--preserve-credentials"]).collect();
        full.extend([net.as_str(), program]);
        full.extend(args);
        command_output("nsenter", &full)
    };
    let syn_retries: Vec<String> = sleeps
        .iter()
        .map(|pid| inside(*pid, "sysctl", &["-n", "net.ipv4.tcp_syn_retries"]).trim().to_string())
        .collect();
    assert!(syn_retries.contains(&"2".to_string()), "client namespace has tcp_syn_retries 2: {syn_retries:?}");
    let rulesets: Vec<String> = sleeps.iter().map(|pid| inside(*pid, "nft", &["list", "ruleset"])).collect();
    assert!(rulesets.iter().any(|r| r.contains("table")), "a scenario namespace has nftables rules: {rulesets:?}");
    let links: Vec<String> =
        sleeps.iter().map(|pid| inside(*pid, "ip", &["-o", "link", "show", "type", "veth"])).collect();
    assert!(links.iter().all(|l| !l.trim().is_empty()), "each scenario namespace has its veth end: {links:?}");
}

/// Waits at most `limit` for the runner to exit.
fn wait_exit(run: &mut Run, limit: Duration) -> ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= until {
            let _ = run.child.kill();
            let _ = run.child.wait();
            panic!("netfault run still running {limit:?} after it was told to stop");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn output(run: &Run) -> String {
    let wait = Duration::from_secs(5);
    format!(
        "{}{}",
        run.stdout.recv_timeout(wait).unwrap_or_default(),
        run.stderr.recv_timeout(wait).unwrap_or_default()
    )
}

/// Nothing of the run is left: no process carrying its token, none of its namespaces anywhere, and the host
/// as it was before.
fn assert_nothing_left(run: &Run, running: &Running, before: &HostState) {
    let until = Instant::now() + VANISH_WAIT;
    loop {
        let left = run_processes(&run.token);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "processes of the run still alive {VANISH_WAIT:?} later: {left:?}");
        thread::sleep(Duration::from_millis(20));
    }
    // A scenario process that reported is only finishing its exit: a thread group's leader is a zombie while
    // its other threads, each in a namespace of its own, are still exiting (closing packet sockets waits for RCU
    // grace periods), and the namespaces go with them.
    loop {
        let existing = all_namespaces();
        let processes = processes_with_namespaces();
        let leaked: Vec<u64> = running
            .namespaces
            .intersection(&existing)
            .copied()
            .filter(|ns| !is_recycled(*ns, &run.token, &processes))
            .collect();
        if leaked.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "namespaces of the run still exist {VANISH_WAIT:?} after it ended: {} (run had {:?})",
            holders(&leaked),
            running.namespaces
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(&host_state(), before, "the host's links, nftables ruleset or sysctls changed");
    let _ = fs::remove_dir_all(&run.reports);
}

/// Whether the process is pid 1 of a PID namespace below this test's (`NSpid:` in /proc/<pid>/status ends in 1).
fn pid_namespace_init(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix("NSpid:")).is_some_and(|pids| {
        let pids: Vec<&str> = pids.split_whitespace().collect();
        pids.len() > 1 && pids.last() == Some(&"1")
    })
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: plain system call; the pid is a child of this test that has not been reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0, "kill -{signal} {pid}");
}

#[test]
fn sigkill_of_the_runner_leaves_nothing() {
    let before = host_state();
    let mut run = start("sigkill", &[]);
    let running = wait_until_running(&run);
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert_nothing_left(&run, &running, &before);
}

fn interrupt(name: &str, signo: i32, signame: &str) {
    let before = host_state();
    let mut run = start(name, &[]);
    let running = wait_until_running(&run);
    let sent = Instant::now();
    signal(run.child.id(), signo);
    let status = wait_exit(&mut run, STOP_WAIT);
    let took = sent.elapsed();
    let text = output(&run);
    assert_eq!(status.code(), Some(128 + signo), "{text}");
    assert!(text.contains(&format!("interrupted by {signame}")), "{text}");
    assert!(text.contains("ERROR long"), "the stopped scenario is reported: {text}");
    assert!(took < STOP_WAIT, "stopped in {took:?}");
    // Its report folder says it was killed, and why; it had recorded nothing yet (its watchdog writes only
    // past the deadline).
    let result = contract::checked_result(&run.reports.join("long/result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "killed", "{result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with(&format!("stopped: interrupted by {signame}")), "{reason}");
    assert!(result["stage"].is_null() && result["events"].as_array().is_some_and(Vec::is_empty), "{result}");
    // An orderly stop waits for the scenario's PID namespace to be empty before the runner exits.
    let left = run_processes(&run.token);
    assert!(left.is_empty(), "processes of the run outlived the stopped runner: {left:?}");
    assert_nothing_left(&run, &running, &before);
}

#[test]
fn sigint_stops_the_run_and_leaves_nothing() {
    interrupt("sigint", libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_stops_the_run_and_leaves_nothing() {
    interrupt("sigterm", libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigkill_of_the_scenario_process_is_reported_and_leaves_nothing() {
    let before = host_state();
    let mut run = start("child-kill", &[]);
    let running = wait_until_running(&run);
    // The scenario process: pid 1 of its PID namespace, running the scenario (the one with the sockets).
    let scenario = running
        .processes
        .iter()
        .filter(|(pid, _)| pid_namespace_init(*pid) && namespaces_of(*pid).len() > 2)
        .map(|(pid, _)| *pid)
        .next()
        .unwrap_or_else(|| panic!("no scenario process among {:?}", running.processes));
    signal(scenario, libc::SIGKILL);
    let status = wait_exit(&mut run, STOP_WAIT);
    let text = output(&run);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("ERROR long"), "{text}");
    assert!(text.contains("killed by SIGKILL"), "the runner says how its scenario process ended: {text}");
    assert_nothing_left(&run, &running, &before);
}

#[test]
fn a_panicking_step_is_a_reported_harness_error_and_leaves_nothing() {
    let before = host_state();
    let mut run = start("panic", &[("NETFAULT_TEST_PANIC_STEP", "client.block")]);
    let running = wait_until_running(&run);
    let status = wait_exit(&mut run, Duration::from_secs(20));
    let text = output(&run);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("harness error: client program panicked: deliberate panic in client step block"), "{text}");
    assert!(!text.contains("scenario deadline"), "a run ended by a harness error is not a deadline: {text}");
    let result = contract::checked_result(&run.reports.join("long/result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "error", "{result}");
    assert!(result["harness_errors"][0].as_str().is_some_and(|e| e.contains("deliberate panic")), "{result}");
    for pcap in ["client.pcap", "server.pcap"] {
        assert!(run.reports.join("long").join(pcap).is_file(), "{pcap} is still written");
    }
    assert_nothing_left(&run, &running, &before);
}

#[test]
fn a_scenario_process_hung_past_its_grace_is_killed_and_leaves_its_partial_report() {
    let before = host_state();
    let mut run = start_fixture(HANG_FIXTURE, "hang", &[("NETFAULT_TEST_HANG_STAGE", "stopping the captures")]);
    // Deadline 3 s, grace 20 s, counted from the programs' start: killed some 25 s after the start.
    let started = Instant::now();
    let status = wait_exit(&mut run, Duration::from_secs(90));
    let took = started.elapsed();
    let text = output(&run);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(took >= Duration::from_secs(23), "killed after {took:?}, before its deadline and grace: {text}");
    let killed = "scenario still running 23s after its programs started (deadline 3s + 20s grace): killed";
    assert!(text.contains(killed), "{text}");
    // The line names the scenario's report folder, not the reports root.
    let folder = run.reports.join("hang");
    let result_line = text.lines().find(|line| line.starts_with("ERROR")).unwrap_or_else(|| panic!("{text}"));
    assert!(result_line.trim_end().ends_with(&folder.display().to_string()), "{result_line}");
    assert!(text.contains("hanging at \"stopping the captures\""), "the hook did hang it: {text}");

    let result = contract::checked_result(&folder.join("result.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result["status"], "killed", "{result}");
    assert!(result["reason"].as_str().is_some_and(|reason| reason.starts_with(killed)), "{result}");
    assert_eq!(result["stage"], "stopping the captures", "{result}");
    assert_eq!(result["deadline_hit"], true, "{result}");
    // Written by its watchdog 12 s past the deadline (on a busy machine, later). The deadline counts from the
    // programs' start signal, which comes before t0 (the first program thread to run takes t0): recorded_at,
    // counted from t0, is 15 s less that wake-up (14.999886 s in one CI run: 114 us), never 3 s.
    assert!(result["recorded_at"].as_f64().is_some_and(|t| t >= 14.9), "{result}");
    let running = serde_json::json!(["client step block (recv)", "server step #4 recv"]);
    assert_eq!(result["running_steps"], running, "{result}");
    let steps = result["steps"].as_array().unwrap();
    let ended = |host: &str, action: &str| {
        steps.iter().any(|step| step["host"] == host && step["action"] == action && !step["end"].is_null())
    };
    assert!(ended("client", "connect") && ended("client", "send") && ended("server", "recv"), "{steps:?}");
    // The handshake's SYN, as the client's capture saw it.
    let events = result["events"].as_array().unwrap();
    let syn = |e: &&serde_json::Value| e["event"] == "packet" && e["flags"].as_u64().is_some_and(|f| f == 0x02);
    assert!(events.iter().any(|e| syn(&e)), "{events:?}");

    let timeline = fs::read_to_string(folder.join("timeline.txt")).unwrap();
    assert!(timeline.contains(&format!("# KILLED {killed}")), "{timeline}");
    assert!(timeline.contains("# RUNNING client step block (recv)\n# RUNNING server step #4 recv\n"), "{timeline}");
    assert!(timeline.contains("while the scenario process was stopping the captures"), "{timeline}");
    assert!(timeline.contains("client step   #1 connect -> ok"), "{timeline}");
    for pcap in ["client.pcap", "server.pcap"] {
        let size = fs::metadata(folder.join(pcap)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 24, "{pcap}: {size} bytes, no packets");
    }
    // What its threads were doing, read just before the kill: the scenario process's (forked by the runner's
    // fork server straight into its PID namespace, with no relaying parent), the client's program thread
    // blocked in its read, and the main thread in the sleep it hangs in.
    let threads = fs::read_to_string(folder.join("killed.txt")).unwrap();
    assert!(threads.starts_with(&format!("# {killed}")), "{threads}");
    let pids: BTreeSet<&str> =
        threads.lines().filter_map(|line| line.strip_prefix("pid ")?.split_whitespace().next()).collect();
    assert_eq!(pids.len(), 1, "the scenario process, and no relaying parent: {threads}");
    assert!(threads.contains("\"host-client\" state S"), "{threads}");
    if !threads.contains("kernel stack not readable") {
        assert!(threads.contains("nanosleep") && threads.contains("tcp_recvmsg"), "{threads}");
    }
    assert!(!folder.join(".netfault-partial").exists(), "the staging folder was published");
    // Nothing of the run is left.
    let until = Instant::now() + VANISH_WAIT;
    while !run_processes(&run.token).is_empty() {
        assert!(Instant::now() < until, "{:?}", run_processes(&run.token));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_state(), before, "the host's links, nftables ruleset or sysctls changed");
    let _ = fs::remove_dir_all(&run.reports);
}

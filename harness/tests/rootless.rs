//! Rootless mode for real: an unprivileged process (uid 65534 when started as root) enters its own user
//! namespace, creates two network namespaces, builds a topology and connects TCP across it.
//!
//! `harness = false`: `userns::acquire` needs a single-threaded process, which a test runner is not. The one
//! trial re-executes this binary (as uid 65534 when root) with [`CHILD_ENV`] set; that child does the work
//! before anything else, so `--list`, filters and `cargo nextest` see an ordinary test binary.

mod contract;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use netfault::error::{Context, Result};
use netfault::run::netns::Netns;
use netfault::run::runner::{Job, CHILD_COMMAND};
use netfault::run::topology;
use netfault::run::userns::{self, Privilege};
use netfault::scenario::plan::{HostId, Plan};
use netfault::testing::Suite;

const CHILD_ENV: &str = "NETFAULT_ROOTLESS_CHILD";
const NOBODY: u32 = 65534;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The line the child prints on success, followed by what it did.
const CHILD_OK: &str = "rootless child ok: ";

fn main() -> ExitCode {
    // Re-executed as a scenario's process, as a `netfault::scenarios!` test binary is (see `scenario_process`).
    if std::env::args_os().nth(1).is_some_and(|command| command == CHILD_COMMAND) {
        return Suite::new("/").main();
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_main();
    }
    // What the unprivileged runs did is worth seeing in the log: it is printed, not captured.
    let trials = vec![
        Trial::test("rootless", || match unprivileged_run() {
            Ok(report) => {
                println!("rootless: {report}");
                Ok(())
            }
            Err(message) => Err(Failed::from(message)),
        }),
        Trial::test("scenario-process", || match scenario_process() {
            Ok(report) => {
                println!("scenario-process: {report}");
                Ok(())
            }
            Err(message) => Err(Failed::from(message)),
        }),
        Trial::test("rootless-scenario-samples-states-and-says-why", || rootless_scenario().map_err(Failed::from)),
    ];
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// A scenario run the way a downstream crate's test binary runs one (`netfault::testing::Suite`: the binary
/// re-executed with the child command), unprivileged: as uid 65534 from a copy when root, else as the caller.
/// The scenario waits for a listener, connects and exchanges data, then runs two confined programs; its verdict
/// must be a pass.
fn scenario_process() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = std::env::temp_dir().join(format!("netfault-rootless-scenario-{}", std::process::id()));
    let result = run_scenario_process(&exe, &dir);
    fs::remove_dir_all(&dir).map_err(|e| format!("rm -r {}: {e}", dir.display()))?;
    result
}

fn run_scenario_process(exe: &Path, dir: &Path) -> Result<String, String> {
    let root = dir.join("scenarios");
    let reports = dir.join("reports");
    for folder in [&root, &reports] {
        fs::create_dir_all(folder).map_err(|e| format!("mkdir {}: {e}", folder.display()))?;
        fs::set_permissions(folder, fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    }
    let file = root.join("exchange.yaml");
    fs::write(&file, EXCHANGE).map_err(|e| format!("write {}: {e}", file.display()))?;
    let as_root = nix::unistd::geteuid().is_root();
    let uid = if as_root { NOBODY } else { nix::unistd::geteuid().as_raw() };
    let job = Job {
        file,
        root,
        reports: reports.clone(),
        run: None,
        ring_memory: 0,
        seed: 0,
        bulk_through_wire: false,
        about: None,
        forked_plan: None,
    };
    let child = start_copy(exe, dir, |copy| {
        let mut command = Command::new(copy);
        if as_root {
            // Unprivileged, so the scenario process must enter a user namespace of its own to make its namespaces.
            command.uid(NOBODY).gid(NOBODY);
        }
        command.arg(CHILD_COMMAND).args(job.child_args());
        command
    })?;
    let output = wait_bounded(child)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout.lines().last().unwrap_or_default();
    if !output.status.success() || !summary.contains(r#""status":"pass""#) {
        return Err(format!("the scenario process ended {} with {summary}\n{stderr}", output.status));
    }
    let result = reports.join("exchange/result.json");
    contract::checked_result(&result)?;
    Ok(format!("passed as uid {uid} in its own process, report {}", result.display()))
}

const EXCHANGE: &str = "\
description: |
  a listener, a connect that waits for it, and data both ways; then programs confined as they are as root:
  /sys/class/net shows the host's own interfaces, /proc is a proc of the scenario's PID namespace
timeout: 10s
server:
  - listen: { port: 9000 }
  - accept
  - read: { max: 4 }
    expect: 4
client:
  - wait: { listening: 9000 }
  - connect: { to: server, port: 9000 }
    expect: ok
  - send: { bytes: 4 }
    expect: 4
  - exec: { program: ls, args: [/sys/class/net], stdout: '\\Alo\\nnf0\\n\\z' }
    expect: { exit: 0 }
  - exec: { program: grep, args: ['^NSpid:', /proc/self/status], stdout: '^NSpid:\\s+[0-9]+$' }
    expect: { exit: 0 }
";

/// The re-executed child: still single-threaded, so it may enter a user namespace.
fn child_main() -> ExitCode {
    match rootless_run() {
        Ok(report) => {
            println!("{CHILD_OK}{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the child unprivileged: as root, as uid/gid 65534 with no supplementary groups, from a copy every user
/// may execute (the target directory may sit under a private home); otherwise as the caller.
fn unprivileged_run() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    if !nix::unistd::geteuid().is_root() {
        let child = start(Command::new(&exe).env(CHILD_ENV, "1"))?;
        return run_child(child);
    }
    let dir = std::env::temp_dir().join(format!("netfault-rootless-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let result = start_copy(&exe, &dir, |copy| {
        // std drops the supplementary groups itself when it switches uid as root.
        let mut command = Command::new(copy);
        command.uid(NOBODY).gid(NOBODY).env(CHILD_ENV, "1");
        command
    })
    .and_then(|child| run_child(child).map(|report| format!("as uid {NOBODY}: {report}")));
    fs::remove_dir_all(&dir).map_err(|e| format!("rm -r {}: {e}", dir.display()))?;
    result
}

/// `netfault run` of a scenario without root (as uid 65534 when root): it passes, its socket states are sampled,
/// and the report says why the kernel's transitions were not traced.
fn rootless_scenario() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("netfault-rootless-run-{}", std::process::id()));
    let reports = dir.join("reports");
    fs::create_dir_all(&reports).map_err(|e| format!("mkdir {}: {e}", reports.display()))?;
    let result = rootless_scenario_in(&dir, &reports);
    fs::remove_dir_all(&dir).map_err(|e| format!("rm -r {}: {e}", dir.display()))?;
    result
}

fn rootless_scenario_in(dir: &Path, reports: &Path) -> Result<(), String> {
    fs::set_permissions(reports, fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    let scenario = dir.join("quick.yaml");
    let text = "description: d\nserver:\n  - listen: { port: 9000 }\n  - accept\nclient:\n  - connect: { to: server, port: 9000 }\n";
    fs::write(&scenario, text).map_err(|e| e.to_string())?;
    let child = start_copy(Path::new(env!("CARGO_BIN_EXE_netfault")), dir, |copy| {
        let mut command = Command::new(copy);
        command.args(["run", "--reports"]).arg(reports).arg(&scenario);
        if nix::unistd::geteuid().is_root() {
            command.uid(NOBODY).gid(NOBODY);
        }
        command
    })?;
    let output = wait_bounded(child)?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() || !said.contains("PASS  quick") {
        return Err(format!("rootless `netfault run` failed ({}): {said}", output.status));
    }
    let timeline = fs::read_to_string(reports.join("quick/timeline.txt")).map_err(|e| e.to_string())?;
    let line = timeline.lines().find(|l| l.starts_with("# socket states:")).unwrap_or_default().to_string();
    let expected = "# socket states: sampled only (sock_diag), the kernel's transitions could not be traced: missing \
                    permission to load BPF programs";
    if !line.starts_with(expected) || !line.contains("rootless mode cannot") {
        return Err(format!("timeline.txt says {line:?}, not {expected:?}...rootless mode cannot"));
    }
    if timeline.lines().any(|l| l.contains(" tcp    ")) {
        return Err(format!("transitions recorded without root:\n{timeline}"));
    }
    Ok(())
}

/// Held while a copy of this binary is written and while any child is started: a child forked by one trial
/// while another's copy is still open for writing holds that write descriptor until its own exec, and the copy's
/// exec then fails with ETXTBSY ("Text file busy").
static COPY_OR_START: Mutex<()> = Mutex::new(());

/// Copies this test binary into `dir` (where every user may execute it) and starts the copy.
fn start_copy(exe: &Path, dir: &Path, command: impl FnOnce(&Path) -> Command) -> Result<Child, String> {
    let _copying = COPY_OR_START.lock().unwrap_or_else(PoisonError::into_inner);
    let copy = dir.join("rootless");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    fs::copy(exe, &copy).map_err(|e| format!("cp {} {}: {e}", exe.display(), copy.display()))?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    spawn_piped(&mut command(&copy))
}

/// Starts a child (see [`COPY_OR_START`]).
fn start(command: &mut Command) -> Result<Child, String> {
    let _starting = COPY_OR_START.lock().unwrap_or_else(PoisonError::into_inner);
    spawn_piped(command)
}

/// Starts a child from `/` with no input and its output piped; `spawn` returns once the exec has happened.
fn spawn_piped(command: &mut Command) -> Result<Child, String> {
    command
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {command:?}: {e}"))
}

/// Waits for the child at most [`CHILD_TIMEOUT`] (killing it then) and returns its status and output.
fn wait_bounded(mut child: Child) -> Result<Output, String> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() > deadline => {
                child.kill().map_err(|e| e.to_string())?;
                child.wait().map_err(|e| e.to_string())?;
                return Err(format!("the child took longer than {CHILD_TIMEOUT:?}"));
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// Waits for the unprivileged child and returns what it reported.
fn run_child(child: Child) -> Result<String, String> {
    let output = wait_bounded(child)?;
    let status = output.status;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !status.success() {
        return Err(format!("unprivileged run failed ({status}): {stdout}{stderr}"));
    }
    match stdout.lines().find_map(|line| line.strip_prefix(CHILD_OK)) {
        Some(report) => Ok(report.to_string()),
        None => Err(format!("unprivileged run printed no result: {stdout}{stderr}")),
    }
}

/// Client and server on one veth pair, the client with `tcp_syn_retries` 2, as a scenario file says it.
fn plan() -> Result<Plan> {
    let text = "description: rootless topology\nsysctl:\n  client: { net.ipv4.tcp_syn_retries: 2 }\n";
    netfault::scenario::parse("rootless", Path::new("rootless.yaml"), text)
        .map_err(|e| netfault::error::Error::Internal(e.to_string()))
}

/// Unprivileged and still single-threaded: acquire first, then namespaces, topology and a TCP exchange.
fn rootless_run() -> Result<String> {
    let uid = nix::unistd::geteuid();
    let privilege = userns::acquire()?;
    if privilege != Privilege::Rootless {
        return Err(netfault::error::Error::Internal(format!("uid {uid}: expected rootless, got {privilege:?}")));
    }
    let start = Instant::now();
    let client = Netns::new_anonymous()?;
    let server = Netns::new_anonymous()?;
    let topology = topology::build(&plan()?, &[&client, &server], None)?;
    let address = |host: HostId| {
        topology
            .link(host)
            .map(|end| end.address)
            .ok_or_else(|| netfault::error::Error::Internal(format!("no {host} end")))
    };
    let built = start.elapsed();

    let syn_retries = client.run(|| {
        fs::read_to_string("/proc/sys/net/ipv4/tcp_syn_retries").context(|| "read tcp_syn_retries in client".into())
    })?;
    if syn_retries.trim() != "2" {
        return Err(netfault::error::Error::Internal(format!("tcp_syn_retries in client is {syn_retries:?}")));
    }

    let listener = server.run(|| TcpListener::bind((SERVER, 7000)).context(|| "listen in server".into()))?;
    let to = SocketAddr::from((address(HostId::Server)?, 7000));
    let mut stream =
        client.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)).context(|| "connect".into()))?;
    // The handshake is complete once connect returns: the connection already waits in the accept queue.
    let (mut accepted, peer) = listener.accept().context(|| "accept".into())?;
    accepted.set_read_timeout(Some(Duration::from_secs(5))).context(|| "SO_RCVTIMEO".into())?;
    stream.write_all(b"ping").context(|| "send".into())?;
    let mut received = [0u8; 4];
    accepted.read_exact(&mut received).context(|| "recv".into())?;
    if &received != b"ping" || peer.ip() != address(HostId::Client)? {
        return Err(netfault::error::Error::Internal(format!("received {received:?} from {peer}")));
    }
    Ok(format!("original uid {uid}, namespaces + topology in {built:?}, TCP {peer} -> {to} exchanged data"))
}

//! Every file under tests/bad-scenarios/ must be refused by `netfault::scenario::load` with the error its
//! first line announces: `# error: LINE:COLUMN: part of the message`. Huge files are generated here rather than
//! committed; they must fail as fast as small ones. `netfault check` on the whole corpus must print every error
//! and exit 2 without starting a process or creating a namespace (a seccomp filter kills it if it tries).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netfault::scenario::variables::Variables;
use netfault::scenario::{discover, load, MAX_FILE_SIZE};

struct Expected {
    line: usize,
    column: usize,
    message: String,
}

fn expected_error(file: &Path) -> Result<Expected, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    // A byte order mark may open a file (byte-order-mark.yaml): it is no part of the header.
    let header = text.trim_start_matches('\u{feff}').lines().next().unwrap_or("");
    let rest = header.strip_prefix("# error: ").ok_or("first line must be `# error: LINE:COLUMN: message`")?;
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|n| n.trim().parse().ok()).ok_or("bad LINE in header")?;
    let column = parts.next().and_then(|n| n.trim().parse().ok()).ok_or("bad COLUMN in header")?;
    let message = parts.next().map(str::trim).filter(|m| !m.is_empty()).ok_or("empty message in header")?;
    Ok(Expected { line, column, message: message.to_string() })
}

fn corpus() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-scenarios");
    let files = discover(&root).expect("list tests/bad-scenarios").files;
    (root, files)
}

#[test]
fn every_bad_scenario_fails_with_its_announced_error() {
    let (root, files) = corpus();
    assert!(files.len() >= 30, "the corpus holds {} files; it must keep at least 30", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let expected = match expected_error(file) {
            Ok(expected) => expected,
            Err(problem) => {
                failures.push(format!("{}: {problem}", file.display()));
                continue;
            }
        };
        let error = match load(&root, file, &Variables::from_environment()) {
            Ok(_) => {
                failures.push(format!("{}: loaded without error", file.display()));
                continue;
            }
            Err(error) => error,
        };
        let shown = error.to_string();
        let prefix = format!("{}:{}:{}: ", file.display(), expected.line, expected.column);
        if error.file != *file || !shown.starts_with(&prefix) || !error.message.contains(&expected.message) {
            failures.push(format!(
                "{}\n    expected: {}:{}: ...{}...\n    got:      {}",
                file.display(),
                expected.line,
                expected.column,
                expected.message,
                shown.strip_prefix(&format!("{}:", file.display())).unwrap_or(&shown)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad scenarios differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// A bad scenario too big to commit: its text and the error it must give.
struct Generated {
    name: &'static str,
    text: String,
    expected: Expected,
}

fn expect(line: usize, column: usize, message: &str) -> Expected {
    Expected { line, column, message: message.to_string() }
}

/// Files of about 1 MiB that once took seconds to minutes or gigabytes (repeated long keys in node paths, pairwise
/// name checks, edit distances over the whole input) or that test the size limit itself.
fn generated() -> Vec<Generated> {
    let mut files = Vec::new();
    let mut over_the_limit = String::from("description: d\n");
    while over_the_limit.len() <= MAX_FILE_SIZE {
        over_the_limit.push_str("# a comment line to pass the size limit of a scenario file\n");
    }
    files.push(Generated {
        name: "over-the-size-limit",
        text: over_the_limit,
        expected: expect(1, 1, "file is larger than 1 MiB"),
    });
    files.push(Generated {
        name: "megabyte-errno",
        text: format!("description: d\nclient:\n  - close: {{}}\n    expect: {}\n", "E".repeat(1_000_000)),
        expected: expect(4, 13, "unknown errno \"EEEE"),
    });
    // libyaml (asked for a better syntax message) took minutes on these: each token against each open level.
    files.push(Generated {
        name: "quarter-million-open-braces",
        text: "{a: ".repeat(250_000),
        expected: expect(1, 4 * 255 + 1, "nested more than 64 levels deep"),
    });
    files.push(Generated {
        name: "open-braces-after-a-syntax-error",
        text: format!("description: \"x\ny\"\n{}", "{a: ".repeat(250_000)),
        expected: expect(1, 14, "invalid indentation in quoted scalar"),
    });
    let items = vec!["1"; 480_000].join(",");
    files.push(Generated {
        name: "long-key-over-a-long-list",
        text: format!("description: d\n? {}\n: [{items}]\n", "k".repeat(10_000)),
        expected: expect(2, 3, "unknown key \"kkkk"),
    });
    let mut steps = String::from("description: d\nclient:\n");
    for i in 0..30_000 {
        steps.push_str(&format!("  - close: {{}}\n    name: s{i}\n"));
    }
    steps.push_str("  - close: {}\n    name: s0\n");
    files.push(Generated {
        name: "thirty-thousand-step-names",
        text: steps,
        expected: expect(60_004, 11, "duplicate step name \"s0\" on client (first at 4:11)"),
    });
    let mut sockets = String::from("description: d\nclient:\n");
    for i in 0..30_000 {
        sockets.push_str(&format!("  - socket: {{}}\n    as: s{i}\n"));
    }
    sockets.push_str("  - socket: {}\n    as: s0\n");
    files.push(Generated {
        name: "thirty-thousand-sockets",
        text: sockets,
        expected: expect(60_004, 9, "socket name \"s0\" is already given"),
    });
    // Client steps wait for server steps 1, 2, ...; the server's first step waits for the client's last: the
    // first client wait can never end. Every pair of waits used to be compared.
    let mut waits = String::from("description: d\nserver:\n  - wait: client.last\n");
    for i in 1..15_000 {
        waits.push_str(&format!("  - close: {{}}\n    name: s{i}\n"));
    }
    waits.push_str("client:\n");
    for i in 1..15_000 {
        waits.push_str(&format!("  - wait: server.s{i}\n"));
    }
    waits.push_str("  - close: {}\n    name: last\n");
    files.push(Generated {
        name: "fifteen-thousand-waits",
        text: waits,
        expected: expect(30_003, 5, "deadlock: this step waits for server.s1"),
    });
    // Few aliases of a long string pass the node limit; serde aborted on out of memory expanding them.
    files.push(Generated {
        name: "aliases-of-a-long-string",
        text: format!(
            "description: &a \"{}\"\nclient:\n  - exec: {{ program: true, args: [{}] }}\n",
            "x".repeat(400_000),
            vec!["*a"; 90_000].join(", ")
        ),
        expected: expect(3, 35 + 4 * 9, "aliases (*name) expand this file to more than 4 MiB of text"),
    });
    let mut faults = String::from("description: d\nfaults:\n");
    for i in 0..20_000 {
        faults.push_str(&format!("  - {{ name: f{i}, at: server, action: drop }}\n"));
    }
    faults.push_str("  - { name: f0, at: server, action: drop }\n");
    files.push(Generated {
        name: "twenty-thousand-faults",
        text: faults,
        expected: expect(20_003, 13, "duplicate fault name \"f0\" (first at 3:13)"),
    });
    files
}

/// CPU time of the calling thread: unlike wall time, not stretched by other work on the machine.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid one given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Peak resident memory of this process so far (VmHWM in /proc/self/status), in KiB.
fn peak_memory_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn write_generated(dir: &Path) -> Vec<(PathBuf, Expected)> {
    std::fs::create_dir_all(dir).unwrap();
    generated()
        .into_iter()
        .map(|g| {
            let file = dir.join(format!("{}.yaml", g.name));
            std::fs::write(&file, &g.text).unwrap();
            (file, g.expected)
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netfault-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn huge_generated_files_fail_fast_with_their_error() {
    let dir = scratch("generated");
    let mut failures = Vec::new();
    for (file, expected) in write_generated(&dir) {
        let started = thread_cpu_time();
        let result = load(&dir, &file, &Variables::from_environment());
        let spent = thread_cpu_time() - started;
        // Unoptimized, these take 0.1 to 3 s of CPU; before their fixes they took minutes (optimized: up to 60 s).
        if spent > Duration::from_secs(20) {
            failures.push(format!("{}: took {spent:?} of CPU", file.display()));
        }
        match result {
            Ok(_) => failures.push(format!("{}: loaded without error", file.display())),
            Err(error) => {
                let at = error.location.map(|l| (l.line, l.column));
                if at != Some((expected.line, expected.column)) || !error.message.contains(&expected.message) {
                    let head: String = error.message.chars().take(200).collect();
                    failures.push(format!(
                        "{}\n    expected: {}:{}: ...{}...\n    got:      {at:?}: {head}",
                        file.display(),
                        expected.line,
                        expected.column,
                        expected.message
                    ));
                }
            }
        }
    }
    // A long key used to be copied into the path of every node below it: 5 GB for the long-key file.
    let peak = peak_memory_kib();
    assert!(peak < 1024 * 1024, "peak memory {peak} KiB");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Audit architecture of this build, as seccomp reports it in `seccomp_data.arch` (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// System calls that make a namespace or a process outright; `clone` is checked by its flags.
#[cfg(target_arch = "x86_64")]
const FORBIDDEN_CALLS: [libc::c_long; 4] = [libc::SYS_unshare, libc::SYS_setns, libc::SYS_fork, libc::SYS_vfork];
#[cfg(target_arch = "aarch64")]
const FORBIDDEN_CALLS: [libc::c_long; 2] = [libc::SYS_unshare, libc::SYS_setns];

/// A seccomp filter that kills the process (SIGSYS) on unshare, setns, fork, vfork, and on clone unless it makes
/// a thread without a new namespace; clone3 (whose flags a filter cannot read) gets ENOSYS, so that threads fall
/// back to clone.
fn no_process_no_namespace_filter() -> Vec<libc::sock_filter> {
    let op = |code: u32| code as u16;
    let load = |offset: u32| libc::sock_filter {
        code: op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
        jt: 0,
        jf: 0,
        k: offset,
    };
    let ret = |value: u32| libc::sock_filter { code: op(libc::BPF_RET | libc::BPF_K), jt: 0, jf: 0, k: value };
    let jump = |test: u32, k: u32, jt: usize, jf: usize| libc::sock_filter {
        code: op(libc::BPF_JMP | test | libc::BPF_K),
        jt: jt as u8,
        jf: jf as u8,
        k,
    };
    // struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (low half first).
    let (nr, arch, flags) = (0, 4, 16);
    let new_namespaces = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u32;
    let calls = FORBIDDEN_CALLS.len();
    // Layout: [0] load arch, [1] arch?, [2] kill, [3] load nr, forbidden calls, clone3?, clone?, load flags,
    // new namespace?, thread?, then the three returns: allow, kill, ENOSYS.
    let allow_at = 4 + calls + 5;
    let (kill_at, enosys_at) = (allow_at + 1, allow_at + 2);
    let mut program = vec![load(arch), jump(libc::BPF_JEQ, AUDIT_ARCH, 1, 0), ret(libc::SECCOMP_RET_KILL_PROCESS)];
    program.push(load(nr));
    for call in FORBIDDEN_CALLS {
        let here = program.len();
        program.push(jump(libc::BPF_JEQ, call as u32, kill_at - here - 1, 0));
    }
    let here = program.len();
    program.push(jump(libc::BPF_JEQ, libc::SYS_clone3 as u32, enosys_at - here - 1, 0));
    let here = program.len();
    program.push(jump(libc::BPF_JEQ, libc::SYS_clone as u32, 0, allow_at - here - 1));
    program.push(load(flags));
    let here = program.len();
    program.push(jump(libc::BPF_JSET, new_namespaces, kill_at - here - 1, 0));
    let here = program.len();
    program.push(jump(libc::BPF_JSET, libc::CLONE_THREAD as u32, allow_at - here - 1, kill_at - here - 1));
    assert_eq!(program.len(), allow_at);
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program.push(ret(libc::SECCOMP_RET_KILL_PROCESS));
    program.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    program
}

/// `netfault ARGS` from the repository root, confined by [`no_process_no_namespace_filter`].
fn confined_netfault(args: &[&str]) -> std::process::Output {
    let mut filter = no_process_no_namespace_filter();
    let mut command = Command::new(env!("CARGO_BIN_EXE_netfault"));
    command.args(args).current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    // SAFETY: between fork and exec the closure makes only the two prctl calls, on the filter allocated before the
    // fork and owned by the closure.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("the netfault binary starts")
}

#[test]
fn the_confinement_kills_a_netfault_that_starts_a_scenario() {
    // The control for the test below: `run` must start a child process and namespaces, so the filter kills it.
    let reports = scratch("confined-run");
    let output =
        confined_netfault(&["run", "--reports", reports.to_str().unwrap(), "scenarios/syn-sent/nonblocking.yaml"]);
    let _ = std::fs::remove_dir_all(&reports);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSYS),
        "status {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_prints_every_error_and_starts_nothing() {
    let (root, files) = corpus();
    let dir = scratch("check");
    let mut expected: Vec<(PathBuf, Expected)> = write_generated(&dir);
    for file in &files {
        let copy = dir.join(file.strip_prefix(&root).unwrap());
        std::fs::copy(file, &copy).unwrap();
        expected.push((copy, expected_error(file).unwrap()));
    }
    let output = confined_netfault(&["check", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "status {:?}\n{stderr}", output.status);
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    let mut missing = Vec::new();
    for (file, error) in &expected {
        let prefix = format!("{}:{}:{}: ", file.display(), error.line, error.column);
        let printed = stderr.lines().any(|line| line.starts_with(&prefix) && line.contains(&error.message));
        if !printed {
            missing.push(format!("{prefix}...{}...", error.message));
        }
    }
    let printed = stderr.lines().filter(|line| line.starts_with(dir.to_str().unwrap())).count();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(missing.is_empty(), "not printed:\n{}\n--- stderr ---\n{stderr}", missing.join("\n"));
    assert_eq!(printed, expected.len(), "one error per file");
}

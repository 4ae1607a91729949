//! `exec` steps: real programs (curl, nc, sh...) run inside a host's namespace with their output captured and
//! checked, and the registry through which the runner kills every program still running when the run ends.
//!
//! A program is forked by a thread that has entered the host's namespace, so it starts in that namespace
//! (setns is per thread and a child inherits its forking thread's), and enters the host's confinement before
//! exec ([`Confinement::enter`]: mount, UTS and IPC namespaces, network capabilities only). Each program leads its own process group
//! (so `kill -KILL -- -PGID` also takes its children) and has PR_SET_PDEATHSIG(SIGKILL), so it dies when the
//! thread that forked it exits: with the scenario's process, whatever ends it. Foreground programs are forked
//! by the actor's thread, which outlives them; background programs by a keeper thread that lives until
//! [`ProcessRegistry::kill_all`] (or shortly after the deadline).

use crate::run::handoff;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use regex::RegexBuilder;

use super::{sockets, trace, StepEnd};
use crate::error::{Context, Error, Result};
use crate::run::confine::Confinement;
use crate::scenario::plan::{Errno, ExecPlan};
use crate::timeline::Outcome;

/// Output kept per stream: the first `HEAD_BYTES` and the last `TAIL_BYTES`.
const HEAD_BYTES: usize = 16 * 1024;
const TAIL_BYTES: usize = 64 * 1024;
/// Lines of each stream shown in a step's detail.
const DETAIL_LINES: usize = 3;
const DETAIL_LINE_CHARS: usize = 120;
/// How long a SIGKILLed program may take to die before the step gives up on it.
const DEATH_WAIT: Duration = Duration::from_secs(5);
/// How long the output readers may take to see end of file once the program's group is dead.
const OUTPUT_WAIT: Duration = Duration::from_secs(1);
/// How long the background keeper thread outlives the scenario deadline, waiting for `kill_all`.
const KEEPER_GRACE: Duration = Duration::from_secs(2);
/// Programs started by `exec` steps and still running, by process group, so that the runner can kill them
/// at the deadline or the end of the run (`kill -KILL -- -PGID` for each).
#[derive(Debug, Default)]
pub struct ProcessRegistry {
    state: Mutex<RegistryState>,
    closed_changed: Condvar,
}

#[derive(Debug, Default)]
struct RegistryState {
    groups: Vec<Group>,
    /// Set by `kill_all`: programs registered later are killed at once.
    closed: bool,
}

#[derive(Debug)]
struct Group {
    /// The leader's pid, which is also the group's id. The leader is never reaped while registered, so the
    /// id cannot have been reused when it is signalled.
    pgid: i32,
    /// Background programs are reaped by `kill_all`; foreground ones by their step.
    background: Option<Child>,
}

impl ProcessRegistry {
    pub fn new() -> Arc<ProcessRegistry> {
        Arc::new(ProcessRegistry::default())
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `kill -KILL -- -PGID` for every registered program, then reaps the background ones (each bounded by a
    /// few seconds); programs registered afterwards are killed at once.
    pub fn kill_all(&self) {
        let background: Vec<Child> = {
            let mut state = self.lock();
            state.closed = true;
            for group in &state.groups {
                kill_group(group.pgid);
            }
            let (background, foreground): (Vec<Group>, Vec<Group>) =
                state.groups.drain(..).partition(|g| g.background.is_some());
            state.groups = foreground;
            background.into_iter().filter_map(|g| g.background).collect()
        };
        self.closed_changed.notify_all();
        for mut child in background {
            reap(&mut child, Instant::now() + DEATH_WAIT);
        }
    }

    /// How many programs are registered (foreground ones until their step ends, background ones until
    /// `kill_all`).
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock().groups.len()
    }

    fn register(&self, pgid: i32, background: Option<Child>) {
        let mut state = self.lock();
        if state.closed {
            kill_group(pgid);
        }
        state.groups.push(Group { pgid, background });
    }

    /// Forgets a foreground program; must happen before its leader is reaped.
    fn unregister(&self, pgid: i32) {
        self.lock().groups.retain(|g| g.pgid != pgid);
    }

    fn wait_closed(&self, until: Instant) {
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= until {
                return;
            }
            state = self.closed_changed.wait_timeout(state, until - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// `kill -KILL -- -PGID`; a group that is already gone is fine.
fn kill_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Waits (until `until`) for a killed child to die, and reaps it.
fn reap(child: &mut Child, until: Instant) {
    if let Ok(pidfd) = pidfd_open(child.id()) {
        let _ = wait_for_exit(&pidfd, until);
    }
    let _ = child.try_wait();
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the process exits.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new descriptor owned by no one else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by pidfd_open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` exited by `until` (it is not reaped).
fn wait_for_exit(pidfd: &OwnedFd, until: Instant) -> io::Result<bool> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match sockets::poll(pidfd.as_raw_fd(), libc::POLLIN, left) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) if Instant::now() >= until => return Ok(false),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `program args...` with the given variables added to the harness's environment, leading its own process
/// group, killed when its forking thread exits, confined; under `strace` writing to the log when `trace` gives
/// one (strace and the log).
fn command(
    plan: &ExecPlan,
    confinement: &Arc<Confinement>,
    capture_output: bool,
    trace: Option<(&Path, &Path)>,
) -> Command {
    let output = || {
        if capture_output {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut command = match trace {
        Some((strace, log)) => {
            let mut command = Command::new(strace);
            command.args(trace::strace_args(log)).arg(&plan.program);
            command
        }
        None => Command::new(&plan.program),
    };
    command
        .args(&plan.args)
        .envs(plan.env.iter().map(|(name, value)| (name, value)))
        .stdin(if plan.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(output())
        .stderr(output())
        .process_group(0);
    let confinement = Arc::clone(confinement);
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            die_with_forking_thread()?;
            crate::run::runaway::restore_for_exec()?;
            confinement.enter()
        });
    }
    command
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child before exec.
fn die_with_forking_thread() -> io::Result<()> {
    // SAFETY: plain system call with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn spawn_failure(plan: &ExecPlan, e: &io::Error) -> (Outcome, Option<String>) {
    let name = e.raw_os_error().map(|n| Errno(n).name()).unwrap_or_else(|| e.to_string());
    (Outcome::Error(name), Some(format!("cannot run {}: {e}", plan.program)))
}

/// What a program wrote on one stream: the beginning and the end, with the size of what was left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
    /// The stream was still open when the step stopped waiting for it.
    unfinished: bool,
}

impl Capture {
    fn push(&mut self, mut bytes: &[u8]) {
        let room = HEAD_BYTES - self.head.len();
        if room > 0 {
            let taken = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
        self.tail.extend(bytes);
        if self.tail.len() > TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The kept text, with a marker where bytes were left out.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("\n[... {} bytes not kept ...]\n", self.dropped));
        }
        let (front, back) = self.tail.as_slices();
        let tail: Vec<u8> = [front, back].concat();
        text.push_str(&String::from_utf8_lossy(&tail));
        text
    }
}

/// A stream being read on its own thread: what it gave so far, and a signal at its end of file.
struct Reader {
    capture: Arc<Mutex<Capture>>,
    done: handoff::Receiver<()>,
}

/// Reads `source` to its end on its own thread.
fn spawn_reader(name: &str, mut source: impl Read + Send + 'static) -> Result<Reader> {
    let capture = Arc::new(Mutex::new(Capture::default()));
    let (done_tx, done) = handoff::channel();
    let shared = Arc::clone(&capture);
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => shared.lock().unwrap_or_else(PoisonError::into_inner).push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        })
        .context(|| format!("spawn thread {name}"))?;
    Ok(Reader { capture, done })
}

/// Writes `text` to the program's stdin and closes it, on its own thread (the program may never read it; the
/// thread then ends when the program does).
fn spawn_stdin_writer(mut stdin: impl Write + Send + 'static, text: String) -> Result<()> {
    thread::Builder::new()
        .name("exec-stdin".into())
        .spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
        .context(|| "spawn thread exec-stdin".to_string())?;
    Ok(())
}

/// What the stream gave by its end of file, or by `until` (then marked unfinished).
fn collect(reader: Option<Reader>, until: Instant) -> Capture {
    let Some(reader) = reader else {
        return Capture::default();
    };
    let finished = reader.done.recv_timeout(until.saturating_duration_since(Instant::now())).is_ok();
    let mut capture = reader.capture.lock().unwrap_or_else(PoisonError::into_inner).clone();
    capture.unfinished = !finished;
    capture
}

/// Kills and forgets a foreground program's group if its step leaves early (a harness error).
struct ForegroundGroup<'a> {
    pgid: i32,
    registry: &'a ProcessRegistry,
    armed: bool,
}

impl ForegroundGroup<'_> {
    /// Kills whatever is left of the group and forgets it; the leader may be reaped afterwards.
    fn finish(mut self) {
        kill_group(self.pgid);
        self.registry.unregister(self.pgid);
        self.armed = false;
    }
}

impl Drop for ForegroundGroup<'_> {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid);
            self.registry.unregister(self.pgid);
        }
    }
}

/// Runs a foreground program to its end, its timeout or the scenario deadline, whichever comes first.
///
/// Outcome: `Exit { code, signal }`; killed at its own timeout: `Exit { signal: 9 }` with the detail saying
/// so; killed at the scenario deadline: `Unfinished`; not startable: `Error(errno)` (ENOENT for a missing
/// program). Processes the program left in its group are killed when it exits. `unmatched` lists the
/// `stdout` / `stderr` patterns that match nowhere; the detail gives the first lines of each stream. With
/// `trace_log`, the program runs under strace, which writes its calls there.
pub fn run_foreground(
    plan: &ExecPlan,
    confinement: &Arc<Confinement>,
    registry: &ProcessRegistry,
    deadline: Instant,
    trace_log: Option<&Path>,
) -> Result<StepEnd> {
    let strace = trace_log.map(|_| trace::strace()).transpose()?;
    let started = Instant::now();
    let own_end = started + plan.timeout;
    let end = own_end.min(deadline);
    let mut child = match command(plan, confinement, true, strace.as_deref().zip(trace_log)).spawn() {
        Ok(child) => child,
        Err(e) => return Ok(spawn_failure(plan, &e).into()),
    };
    let pid = child.id();
    let pgid = pid as i32;
    registry.register(pgid, None);
    let group = ForegroundGroup { pgid, registry, armed: true };
    let pidfd = pidfd_open(pid).context(|| format!("pidfd_open({pid}) for {}", plan.program))?;
    if let (Some(stdin), Some(text)) = (child.stdin.take(), &plan.stdin) {
        spawn_stdin_writer(stdin, text.clone())?;
    }
    let stdout = child.stdout.take().map(|s| spawn_reader("exec-stdout", s)).transpose()?;
    let stderr = child.stderr.take().map(|s| spawn_reader("exec-stderr", s)).transpose()?;

    let exited = wait_for_exit(&pidfd, end).context(|| format!("poll pidfd of {}", plan.program))?;
    let mut note = None;
    if !exited {
        kill_group(pgid);
        let cause = if own_end <= deadline {
            format!("killed (SIGKILL) at its timeout of {:?}", plan.timeout)
        } else {
            "killed (SIGKILL) at the scenario deadline".to_string()
        };
        note = Some(cause);
        wait_for_exit(&pidfd, Instant::now() + DEATH_WAIT).context(|| format!("poll pidfd of {}", plan.program))?;
    }
    group.finish();
    let status = child.try_wait().context(|| format!("waitpid({pid}) for {}", plan.program))?;
    let outputs_until = Instant::now() + OUTPUT_WAIT;
    let stdout = collect(stdout, outputs_until);
    let stderr = collect(stderr, outputs_until);

    let outcome = match status {
        None => {
            note = Some(format!("did not die within {DEATH_WAIT:?} of SIGKILL"));
            Outcome::Unfinished
        }
        Some(_) if !exited && own_end > deadline => Outcome::Unfinished,
        // The runner's kill_all at the deadline: the program did not end on its own.
        Some(status) if exited && status.signal() == Some(libc::SIGKILL) && Instant::now() >= deadline => {
            note = Some("killed (SIGKILL) at the scenario deadline".to_string());
            Outcome::Unfinished
        }
        Some(status) => Outcome::Exit { code: status.code(), signal: status.signal() },
    };
    if stdout.unfinished || stderr.unfinished {
        let held = "output still held open by a process outside the program's group";
        note = Some(match note {
            Some(note) => format!("{note}; {held}"),
            None => held.to_string(),
        });
    }
    let (stdout, stderr) = (stdout.text(), stderr.text());
    let unmatched = pattern_failures(plan, &stdout, &stderr);
    Ok(StepEnd { outcome, detail: exec_detail(note, &stdout, &stderr), unmatched })
}

/// The `stdout` / `stderr` patterns that match nowhere in the output, as `stdout /re/`, each distinct pattern
/// judged once per stream (a scenario's `*aliases` may repeat one thousands of times). Patterns are
/// multi-line: `^` and `$` match at line boundaries.
pub fn pattern_failures(plan: &ExecPlan, stdout: &str, stderr: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (stream, patterns, text) in [("stdout", &plan.stdout, stdout), ("stderr", &plan.stderr, stderr)] {
        let mut judged: HashMap<&str, Option<String>> = HashMap::new();
        for pattern in patterns {
            let failure = judged.entry(pattern.as_str()).or_insert_with(|| {
                match RegexBuilder::new(pattern).multi_line(true).build() {
                    Ok(re) if re.is_match(text) => None,
                    Ok(_) => Some(format!("{stream} /{pattern}/")),
                    Err(e) => Some(format!("{stream} /{pattern}/ (invalid regex: {e})")),
                }
            });
            failures.extend(failure.clone());
        }
    }
    failures
}

fn first_lines(text: &str) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(DETAIL_LINES)
        .map(|l| {
            let line = l.trim_end();
            match line.char_indices().nth(DETAIL_LINE_CHARS) {
                Some((cut, _)) => format!("{}...", &line[..cut]),
                None => line.to_string(),
            }
        })
        .collect();
    if text.lines().filter(|l| !l.trim().is_empty()).count() > DETAIL_LINES {
        lines.push("...".to_string());
    }
    lines.join(" | ")
}

/// `<note>; stdout: first | lines; stderr: ...`, or nothing to say.
fn exec_detail(note: Option<String>, stdout: &str, stderr: &str) -> Option<String> {
    let mut parts = Vec::new();
    parts.extend(note);
    for (stream, text) in [("stdout", stdout), ("stderr", stderr)] {
        let lines = first_lines(text);
        if !lines.is_empty() {
            parts.push(format!("{stream}: {lines}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

type Job = Box<dyn FnOnce() + Send>;

/// Starts background programs from a keeper thread that stays alive (so their PR_SET_PDEATHSIG does not
/// fire) until `kill_all` or shortly after the deadline, even once the actor's program has ended.
pub struct BackgroundLauncher {
    jobs: handoff::Sender<Job>,
    registry: Arc<ProcessRegistry>,
    confinement: Arc<Confinement>,
}

impl BackgroundLauncher {
    /// Starts the keeper thread; call it on the actor's thread, so the keeper is in the host's namespace.
    pub fn start(
        registry: Arc<ProcessRegistry>,
        confinement: Arc<Confinement>,
        deadline: Instant,
    ) -> Result<BackgroundLauncher> {
        let (jobs, queue) = handoff::channel::<Job>();
        let keeper_registry = Arc::clone(&registry);
        let until = deadline + KEEPER_GRACE;
        thread::Builder::new()
            .name("exec-keeper".into())
            .spawn(move || {
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    match queue.recv_timeout(left) {
                        Ok(job) => job(),
                        Err(handoff::RecvTimeoutError::Timeout) => return,
                        Err(handoff::RecvTimeoutError::Disconnected) => break,
                    }
                }
                keeper_registry.wait_closed(until);
            })
            .context(|| "spawn thread exec-keeper".to_string())?;
        Ok(BackgroundLauncher { jobs, registry, confinement })
    }

    /// Starts the program and returns at once: `Ok` with its pid in the detail, or `Error(errno)` when it
    /// cannot be started. Its output is discarded; `stdout` / `stderr` patterns cannot be checked and are
    /// reported as unmatched.
    pub fn launch(&self, plan: &ExecPlan) -> Result<StepEnd> {
        let mut command = command(plan, &self.confinement, false, None);
        let stdin = plan.stdin.clone();
        let registry = Arc::clone(&self.registry);
        let (reply, answer) = handoff::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(start_background(&mut command, stdin, &registry));
        });
        self.jobs.send(job).map_err(|_| Error::Internal("the exec keeper thread has ended".into()))?;
        let started = answer
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::Internal(format!("starting {} took over 10 s", plan.program)))?;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => return Ok(spawn_failure(plan, &e).into()),
        };
        let unmatched: Vec<String> = plan
            .stdout
            .iter()
            .map(|p| format!("stdout /{p}/"))
            .chain(plan.stderr.iter().map(|p| format!("stderr /{p}/")))
            .map(|pattern| format!("{pattern} (output of a background program is not captured)"))
            .collect();
        let detail = Some(format!("pid {pid}, runs until the end of the run"));
        Ok(StepEnd { outcome: Outcome::Ok, detail, unmatched })
    }
}

fn start_background(command: &mut Command, stdin: Option<String>, registry: &ProcessRegistry) -> io::Result<u32> {
    let mut child = command.spawn()?;
    let pid = child.id();
    let input = child.stdin.take();
    registry.register(pid as i32, Some(child));
    if let (Some(input), Some(text)) = (input, stdin) {
        if let Err(e) = spawn_stdin_writer(input, text) {
            kill_group(pid as i32);
            return Err(io::Error::other(e.to_string()));
        }
    }
    Ok(pid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn plan(program: &str, args: &[&str]) -> ExecPlan {
        ExecPlan {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            stdin: None,
            timeout: Duration::from_secs(5),
            background: false,
            stdout: vec![],
            stderr: vec![],
            trace: false,
        }
    }

    /// A confinement around a fresh network namespace, which it keeps alive as long as it lives.
    fn confinement() -> Arc<Confinement> {
        let netns = crate::run::netns::Netns::new_anonymous().expect("new namespace: these tests must run as root");
        Arc::new(Confinement::new(&netns, "client").unwrap())
    }

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut capture = Capture::default();
        capture.push(&vec![b'h'; HEAD_BYTES]);
        capture.push(&vec![b'm'; 1000]);
        capture.push(&vec![b't'; TAIL_BYTES]);
        let text = capture.text();
        assert!(text.starts_with(&"h".repeat(HEAD_BYTES)));
        assert!(text.contains("[... 1000 bytes not kept ...]"));
        assert!(text.ends_with(&"t".repeat(TAIL_BYTES)));
        assert!(!text.contains('m'));
    }

    #[test]
    fn patterns_are_multiline_and_bad_ones_fail() {
        let mut exec = plan("true", &[]);
        exec.stdout = vec!["^world$".into(), "absent".into()];
        exec.stderr = vec!["(".into()];
        let failures = pattern_failures(&exec, "hello\nworld\n", "");
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!(failures[0], "stdout /absent/");
        assert!(failures[1].starts_with("stderr /(/ (invalid regex"), "{}", failures[1]);
    }

    #[test]
    fn detail_gives_the_note_then_first_lines() {
        let detail = exec_detail(Some("note".into()), "a\n\nb\nc\nd\n", "").unwrap();
        assert_eq!(detail, "note; stdout: a | b | c | ...");
        assert_eq!(exec_detail(None, "", "\n"), None);
    }

    /// The state letter of `/proc/<pid>/stat` (`S`, `Z`...), or `None` once the process is reaped.
    pub(crate) fn process_state(pid: &str) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    #[test]
    fn background_programs_die_with_the_keeper_thread() {
        let registry = ProcessRegistry::new();
        let launcher = BackgroundLauncher::start(Arc::clone(&registry), confinement(), Instant::now()).unwrap();
        let mut sleeper = plan("sleep", &["100"]);
        sleeper.background = true;
        let StepEnd { outcome, detail, .. } = launcher.launch(&sleeper).unwrap();
        assert_eq!(outcome, Outcome::Ok);
        let detail = detail.unwrap();
        let pid = detail.strip_prefix("pid ").unwrap().split(',').next().unwrap().to_string();
        drop(launcher);
        let state = process_state(&pid);
        assert!(matches!(state, Some(c) if c != 'Z'), "not running while the keeper waits for kill_all: {state:?}");
        // The keeper gives up KEEPER_GRACE after the deadline; PR_SET_PDEATHSIG then kills the program, which
        // stays a zombie until kill_all reaps it.
        let give_up = Instant::now() + KEEPER_GRACE + Duration::from_secs(3);
        while process_state(&pid) != Some('Z') && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(process_state(&pid), Some('Z'), "killed when the keeper thread ended");
        registry.kill_all();
        assert_eq!(process_state(&pid), None, "reaped by kill_all");
        assert_eq!(registry.running(), 0);
    }

    #[test]
    fn missing_program_is_enoent() {
        let registry = ProcessRegistry::new();
        let exec = plan("/nonexistent/netfault-program", &[]);
        let StepEnd { outcome, detail, .. } =
            run_foreground(&exec, &confinement(), &registry, Instant::now() + Duration::from_secs(5), None).unwrap();
        assert_eq!(outcome, Outcome::Error("ENOENT".into()));
        assert!(detail.unwrap().starts_with("cannot run /nonexistent/netfault-program"));
        assert_eq!(registry.running(), 0);
    }
}

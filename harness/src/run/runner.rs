//! Running scenarios: one child process each (the harness re-executes itself), many at once, each bounded by
//! its deadline; and the libtest-mimic glue that makes every scenario one `cargo test` trial.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Context, Error, Result};
use crate::observe::sockets::SCENARIOS_AT_ONCE_ENV;
use crate::observe::{capture, transitions};
use crate::report::verdict;
use crate::report::{self, Status, Summary};
use crate::run::cpu_gate::{Admission, CpuGate};
use crate::run::ring_budget::RingBudget;
use crate::run::supervise::{self, StopReason, Supervisor, SETUP_LIMIT};
use crate::run::{engine, forkserver, netns, partial, pidns, requirements, sampling, snapshot, userns};
use crate::scenario::{self, plan::Plan, variables::Variables};

/// How many scenario processes this runner runs at once, for its children's observers to pace themselves by.
static SCENARIOS_AT_ONCE: AtomicUsize = AtomicUsize::new(1);

/// What a scenario process prints on stdout once its programs start (set-up done).
const STARTED_LINE: &str = "netfault: programs started";

/// Time a child gets beyond its scenario deadline for set-up, teardown and writing its report.
pub const CHILD_GRACE: Duration = Duration::from_secs(20);

/// Hidden subcommand the harness re-executes itself with to run one scenario.
pub const CHILD_COMMAND: &str = "__run-one";

/// How long the runner waits for a killed scenario process's output pipes to close.
const OUTPUT_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long the runner waits for the output of a scenario process that exited by itself: the pipes close only
/// when the last process of its PID namespace is gone, which with 200 scenarios tearing down namespaces at
/// once on 2 CPUs was seen to take longer than [`OUTPUT_CLOSE_WAIT`] (the verdict line was then lost).
const OUTPUT_AFTER_EXIT_WAIT: Duration = Duration::from_secs(60);

/// How long after a stop (signal or suite deadline) the watchdog lets the runner finish before exiting it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a scenario lives and where its report goes.
#[derive(Debug, Clone)]
pub struct Job {
    pub file: PathBuf,
    pub root: PathBuf,
    pub reports: PathBuf,
    /// Which repetition of the scenario this is (`netfault run --repeat`): its report goes to
    /// `reports/<scenario>/run-<n>/`.
    pub run: Option<usize>,
    /// Kernel memory the run pins besides its sockets: its capture rings (both ends).
    pub ring_memory: u64,
    /// Where the impairments' random decisions come from (`netfault run --seed`).
    pub seed: u64,
    /// Whether it moves a bulk transfer through the wire ([`Plan::bulk_through_wire`]): such runs go one at a
    /// time ([`CpuGate`]).
    pub bulk_through_wire: bool,
    /// The scenario's name, description and source, for the result.json the runner writes when its scenario
    /// process was killed without writing one; `None` in the scenario process.
    pub about: Option<Arc<About>>,
    /// Its plan's place in the table of the runner's fork server (`run::forkserver`), whose copy of the loaded
    /// plan its scenario process then runs; `None`: the process executes netfault (`__run-one FILE`).
    pub forked_plan: Option<usize>,
}

/// What result.json's heading says of a scenario ([`report::result::Heading`]), kept by the runner.
#[derive(Debug)]
pub struct About {
    pub name: String,
    pub description: String,
    pub source: Option<String>,
}

impl Job {
    /// One run of `plan`, read from `file` under `root`, reporting under `reports`, its impairments seeded
    /// with `seed`.
    pub fn new(file: PathBuf, root: PathBuf, reports: PathBuf, plan: &Plan, seed: u64) -> Job {
        Job {
            file,
            root,
            reports,
            run: None,
            ring_memory: 2 * plan.capture.ring_bytes.unwrap_or(0),
            seed,
            bulk_through_wire: plan.bulk_through_wire(),
            about: Some(Arc::new(About {
                name: plan.name.clone(),
                description: plan.description.clone(),
                source: plan.source.clone(),
            })),
            forked_plan: None,
        }
    }

    /// The arguments after [`CHILD_COMMAND`] that make a scenario process run this job ([`ChildArgs`]).
    pub fn child_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["--root".into(), self.root.clone().into(), "--reports".into(), self.reports.clone().into()];
        if let Some(run) = self.run {
            args.extend(["--run".into(), run.to_string().into()]);
        }
        args.extend(["--seed".into(), self.seed.to_string().into()]);
        args.push(self.file.clone().into());
        args
    }

    /// The folder its report goes to, as its scenario process names it: `reports/<scenario>[/run-<n>]`; the
    /// reports root when the name cannot be a folder (the scenario process says why).
    pub fn report_folder(&self) -> PathBuf {
        match report::report_dir(&self.reports, &scenario::scenario_name(&self.root, &self.file)) {
            Ok(dir) => match self.run {
                Some(run) => dir.join(run_folder(run)),
                None => dir,
            },
            Err(_) => self.reports.clone(),
        }
    }

    /// The scenario's name, with `#<run>` for a repetition.
    pub fn name(&self) -> String {
        let name = display_name(&self.root, &self.file);
        match self.run {
            Some(run) => format!("{name} #{run}"),
            None => name,
        }
    }
}

/// What follows [`CHILD_COMMAND`] on a scenario process's command line, as [`Job::child_args`] writes it:
/// `--root ROOT --reports DIR [--run N] --seed N FILE`. Parsed by `netfault __run-one` and by a test binary's
/// [`crate::testing::Suite`] alike.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    #[arg(long, default_value = ".")]
    root: PathBuf,
    #[arg(long, default_value = "reports")]
    reports: PathBuf,
    /// Which repetition of `run --repeat` this is.
    #[arg(long)]
    run: Option<usize>,
    /// The seed of the impairments' random decisions.
    #[arg(long, default_value = "0", value_parser = parse_seed)]
    seed: u64,
    file: PathBuf,
}

impl From<ChildArgs> for Job {
    fn from(args: ChildArgs) -> Job {
        Job {
            file: args.file,
            root: args.root,
            reports: args.reports,
            run: args.run,
            ring_memory: 0,
            seed: args.seed,
            bulk_through_wire: false,
            about: None,
            forked_plan: None,
        }
    }
}

/// The child command's arguments on their own (what follows [`CHILD_COMMAND`]).
#[derive(Debug, clap::Parser)]
#[command(name = CHILD_COMMAND, no_binary_name = true)]
struct ChildCommand {
    #[command(flatten)]
    args: ChildArgs,
}

/// The job the arguments after [`CHILD_COMMAND`] describe, or clap's error saying what is wrong with them.
pub fn parse_child_args(args: impl IntoIterator<Item = OsString>) -> Result<Job, clap::Error> {
    <ChildCommand as clap::Parser>::try_parse_from(args).map(|command| Job::from(command.args))
}

/// The folder a repetition's report goes to, under the scenario's report folder.
pub fn run_folder(run: usize) -> String {
    format!("run-{run}")
}

/// Runs one scenario in a child process of `exe` and waits for it, at most its deadline plus grace, or until
/// `supervisor` says to stop (then the child is killed; a job not started yet is not started).
pub fn run_in_child(exe: &Path, job: &Job, deadline: Duration, supervisor: &Supervisor) -> Summary {
    let name = job.name();
    if let Some(reason) = supervisor.stop_reason() {
        return Summary::harness_error(name, &job.reports, format!("not started: {reason}"));
    }
    // Held by the runner too, so that the kernel's stamping stays on between scenarios run one after another.
    if let Err(e) = capture::keep_kernel_timestamps_on() {
        return Summary::harness_error(name, &job.reports, e.to_string());
    }
    let budget = RingBudget::of_this_machine();
    let Some(_rings) = budget.reserve(job.ring_memory, || supervisor.stop_reason().is_some()) else {
        let reason = supervisor.stop_reason().map_or_else(String::new, |reason| reason.to_string());
        return Summary::harness_error(name, &job.reports, format!("not started: {reason}"));
    };
    let Some(admission) =
        CpuGate::of_this_machine().admit(deadline, job.bulk_through_wire, || supervisor.stop_reason().is_some())
    else {
        let reason = supervisor.stop_reason().map_or_else(String::new, |reason| reason.to_string());
        return Summary::harness_error(name, &job.reports, format!("not started: {reason}"));
    };
    match spawn_and_wait(exe, job, deadline, supervisor, admission) {
        Ok(summary) => summary,
        Err(e) => Summary::harness_error(name, &job.report_folder(), e.to_string()),
    }
}

/// After its scenario process was killed for `reason`: publishes what it had written of its report (the pcaps
/// are written as the frames come; result.json and timeline.txt as far as its watchdog got, given `reason`
/// here), with killed.txt, what its threads were doing when the runner killed it (`threads`, [`snapshot`]),
/// which also removes an earlier run's files from the folder, so that nothing there passes for this run's
/// report. A process killed before it wrote a result.json gets the runner's, which says why. Says what the
/// folder holds now.
fn publish_partial(job: &Job, reason: &str, threads: Option<&str>) -> String {
    let dir = job.report_folder();
    // A name that cannot be a folder: the scenario process says so, and there is no folder to write into.
    if dir == job.reports {
        return String::new();
    }
    let staging = if report::files::is_staged(&dir) {
        report::files::staging_of(&dir)
    } else {
        match report::files::stage(&dir) {
            Ok(staging) => staging,
            Err(e) => return format!("; no report could be written: {e}"),
        }
    };
    let marked = match report::set_killed_reason(&staging, reason) {
        Ok(true) => Ok(()),
        Ok(false) => match &job.about {
            Some(about) => {
                let heading =
                    report::result::Heading::new(&about.name, &job.file, &about.description, about.source.as_deref());
                report::write_killed_unrecorded(heading, &job.file, reason, &staging)
            }
            None => Ok(()),
        },
        Err(e) => Err(e),
    };
    let mut unmarked = marked.err().map_or_else(String::new, |e| format!(" (its result.json could not say why: {e})"));
    if let Some(threads) = threads {
        let text = format!(
            "# {reason}\n# Its process tree's threads just before the kill (pid, tid, name, state, scheduling, CPU time, \
             wchan, kernel stack):\n{threads}"
        );
        if let Err(e) = std::fs::write(staging.join("killed.txt"), text) {
            unmarked.push_str(&format!(" (killed.txt: {e})"));
        }
    }
    match report::files::publish(&dir) {
        Ok(()) => {
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|entry| entry.ok())
                        .filter(|entry| entry.path().is_file())
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .filter(|name| report::files::OWN_FILES.contains(&name.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            if files.is_empty() {
                format!("; it wrote nothing into {}{unmarked}", dir.display())
            } else {
                format!("; its report as far as it got: {} in {}{unmarked}", files.join(", "), dir.display())
            }
        }
        Err(e) => format!("; what it wrote before could not be kept: {e}"),
    }
}

fn spawn_and_wait(
    exe: &Path,
    job: &Job,
    deadline: Duration,
    supervisor: &Supervisor,
    mut admission: Admission<'static>,
) -> Result<Summary> {
    let at_once = SCENARIOS_AT_ONCE.load(Ordering::Relaxed).max(1);
    let (mut child, mut output) = match job.forked_plan.filter(|_| forkserver::running()) {
        Some(plan) => {
            let (forked, stdout, stderr) = forkserver::spawn(job, plan, at_once)?;
            (Process::Forked(forked), ChildOutput::new(Some(stdout), Some(stderr)))
        }
        None => {
            let mut command = Command::new(exe);
            command.arg(CHILD_COMMAND).args(job.child_args());
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            command.envs(scenario_environment());
            command.env(SCENARIOS_AT_ONCE_ENV, at_once.to_string());
            // The child, and with it its namespaces, must not outlive the runner, whatever kills the runner: it
            // asks for that itself ([`die_with_runner`]). Done here between fork and exec, it made the standard
            // library fork this whole process instead of spawning the child (`posix_spawn`, a vfork): 0.5-1 ms
            // more per run.
            command.env(RUNNER_PID_ENV, std::process::id().to_string());
            let mut child = command.spawn().context(|| format!("start {} {CHILD_COMMAND}", exe.display()))?;
            let output = ChildOutput::take(&mut child);
            (Process::executed(child), output)
        }
    };
    admission.spawned(child.id());
    output.admission = Some(admission);
    let limit = deadline + CHILD_GRACE;
    let started = Instant::now();
    let ended = wait_bounded(&mut child, &mut output, limit, supervisor)?;
    let summary = output.summary();
    let stderr = output.stderr_text();
    let threads = output.threads_at_kill.take();
    let killed = |reason: String| {
        let kept = publish_partial(job, &reason, threads.as_deref());
        Error::Internal(format!("{reason}{kept}{}", tail("child stderr", &stderr)))
    };
    match (ended, summary) {
        (Ended::Reported(summary), _) => {
            // The scenario process is only exiting (see `pidns`); the process started here exits at once, and
            // with it the last of the scenario.
            child.wait_gone(OUTPUT_AFTER_EXIT_WAIT)?;
            Ok(*summary)
        }
        (Ended::Exited(_), Some(summary)) => Ok(summary),
        (Ended::Stopped(reason), _) => Err(killed(format!(
            "stopped: {reason}; the scenario process was killed after {:.1}s, before its report",
            started.elapsed().as_secs_f64(),
        ))),
        (Ended::TimedOut(Phase::SettingUp), _) => Err(killed(format!(
            "scenario process still setting up {}s after its start: killed",
            SETUP_LIMIT.as_secs(),
        ))),
        (Ended::TimedOut(Phase::Running), _) => Err(killed(format!(
            "scenario still running {}s after its programs started (deadline {}s + {}s grace): killed",
            limit.as_secs(),
            deadline.as_secs(),
            CHILD_GRACE.as_secs(),
        ))),
        (Ended::Exited(status), None) => Err(killed(match status.signal().map(nix::sys::signal::Signal::try_from) {
            Some(Ok(signal)) => format!("the scenario process was killed by {signal}, without a verdict"),
            _ => format!("scenario process ended ({status}) without a verdict"),
        })),
    }
}

fn tail(what: &str, text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\n  {what}:\n    {}", lines[lines.len().saturating_sub(15)..].join("\n    "))
}

/// A scenario process's stdout and stderr, read as they come by the thread that waits for it.
struct ChildOutput {
    /// stdout, stderr; `None` once at its end.
    pipes: [Option<OwnedFd>; 2],
    text: [Vec<u8>; 2],
    /// When its [`STARTED_LINE`] was read.
    programs_started: Option<Instant>,
    /// Counted among the scenarios sampling from its [`STARTED_LINE`] until this output is dropped.
    sampling: Option<sampling::Sampling>,
    /// Its place among the scenarios running on the machine's CPUs, setting up until its [`STARTED_LINE`].
    admission: Option<Admission<'static>>,
    /// What its threads were doing when its time ran out, read just before it was killed ([`snapshot`]).
    threads_at_kill: Option<String>,
}

impl ChildOutput {
    fn take(child: &mut Child) -> ChildOutput {
        ChildOutput::new(child.stdout.take().map(OwnedFd::from), child.stderr.take().map(OwnedFd::from))
    }

    /// The read ends of a scenario process's stdout and stderr.
    fn new(stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) -> ChildOutput {
        ChildOutput {
            pipes: [stdout, stderr],
            text: [Vec::new(), Vec::new()],
            programs_started: None,
            sampling: None,
            admission: None,
            threads_at_kill: None,
        }
    }

    /// One read from each pipe `ready` names (poll said it has data or is closed); a pipe at its end is dropped.
    fn read_ready(&mut self, ready: [bool; 2]) {
        for ((pipe, text), ready) in self.pipes.iter_mut().zip(&mut self.text).zip(ready) {
            let Some(fd) = pipe.as_ref().filter(|_| ready) else { continue };
            let mut buffer = [0u8; 16 * 1024];
            match nix::unistd::read(fd, &mut buffer) {
                Ok(0) => *pipe = None,
                Ok(n) => text.extend_from_slice(&buffer[..n]),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => *pipe = None,
            }
        }
        if self.programs_started.is_none() && self.lines(0).any(|line| line == STARTED_LINE) {
            self.programs_started = Some(Instant::now());
            self.sampling = Some(sampling::programs_started());
            if let Some(admission) = &mut self.admission {
                admission.programs_started();
            }
        }
    }

    /// The complete lines read so far from stdout (0) or stderr (1).
    fn lines(&self, stream: usize) -> impl Iterator<Item = &str> {
        let text = &self.text[stream];
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        std::str::from_utf8(&text[..complete]).unwrap_or_default().lines()
    }

    fn stdout_closed(&self) -> bool {
        self.pipes[0].is_none()
    }

    fn all_closed(&self) -> bool {
        self.pipes.iter().all(Option::is_none)
    }

    /// The summary line: the last line of stdout that parses as one.
    fn summary(&self) -> Option<Summary> {
        let stdout = String::from_utf8_lossy(&self.text[0]);
        stdout.lines().rev().find_map(|line| serde_json::from_str::<Summary>(line).ok())
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.text[1]).into_owned()
    }
}

/// How the wait for a scenario process ended.
enum Ended {
    /// It closed its stdout, this summary written, before it exited: what remains of it is exiting.
    Reported(Box<Summary>),
    Exited(std::process::ExitStatus),
    /// Still setting up, or still running, at its limit: killed.
    TimedOut(Phase),
    /// The supervisor said stop: killed.
    Stopped(StopReason),
}

/// Where a scenario process was when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before its programs started: bounded by [`SETUP_LIMIT`].
    SettingUp,
    /// Its programs started: bounded by its deadline and [`CHILD_GRACE`] from then.
    Running,
}

/// How often a wait for a scenario process looks at the supervisor.
const SUPERVISOR_TICK: Duration = Duration::from_millis(20);

/// Reads the scenario process's output as it comes until it closes its stdout with its summary written, or
/// exits: at most [`SETUP_LIMIT`] until its [`STARTED_LINE`] came, then at most `limit` from there; or until
/// the supervisor says stop. Stops it in those last cases. After an exit with its output still open, reads on
/// until both streams close, at most [`OUTPUT_AFTER_EXIT_WAIT`].
fn wait_bounded(
    child: &mut Process,
    output: &mut ChildOutput,
    limit: Duration,
    supervisor: &Supervisor,
) -> Result<Ended> {
    let spawned = Instant::now();
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    loop {
        match exited {
            // Without a summary (it crashed), its exit status and last words on stderr say more.
            None if output.stdout_closed() => {
                if let Some(summary) = output.summary() {
                    return Ok(Ended::Reported(Box::new(summary)));
                }
            }
            Some((status, at)) if output.all_closed() || at.elapsed() >= OUTPUT_AFTER_EXIT_WAIT => {
                return Ok(Ended::Exited(status));
            }
            Some(_) => {}
            None => {}
        }
        if exited.is_none() {
            if let Some(status) = child.try_wait()? {
                exited = Some((status, Instant::now()));
                continue;
            }
        }
        let (phase, until) = match output.programs_started {
            None => (Phase::SettingUp, spawned + SETUP_LIMIT),
            Some(since) => (Phase::Running, since + limit),
        };
        let stop = match supervisor.stop_reason() {
            Some(reason) => Some(Ended::Stopped(reason)),
            None if exited.is_none() && Instant::now() >= until => Some(Ended::TimedOut(phase)),
            None => None,
        };
        if let Some(ended) = stop {
            if exited.is_none() {
                // Past its time, the evidence of what it is stuck in goes first; a stop is not a hang.
                if matches!(ended, Ended::TimedOut(_)) {
                    output.threads_at_kill = Some(snapshot::describe(child.id()));
                }
                stop_child(child);
            }
            output.read_ready([true, true]);
            return Ok(ended);
        }
        let nap = match exited {
            Some(_) => SUPERVISOR_TICK,
            None => until.saturating_duration_since(Instant::now()),
        };
        let ready = wait_for_output(output, child.exit_signal().filter(|_| exited.is_none()), nap);
        output.read_ready(ready);
    }
}

/// Sleeps at most `limit` (and one [`SUPERVISOR_TICK`]), waking at once when a pipe of `output` has data or is
/// closed, or the process behind `exit_signal` exits. Says which pipes to read.
fn wait_for_output(output: &ChildOutput, exit_signal: Option<BorrowedFd<'_>>, limit: Duration) -> [bool; 2] {
    let limit = limit.min(SUPERVISOR_TICK);
    let millis = u16::try_from(limit.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
    let mut slots = [None, None];
    for (slot, pipe) in slots.iter_mut().zip(&output.pipes) {
        if let Some(fd) = pipe {
            *slot = Some(fds.len());
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
    }
    if let Some(fd) = exit_signal {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    // Nothing to wait on (no pidfd, pipes closed) sleeps the whole tick. An interrupted or failed poll only ends
    // this nap early; the caller looks again.
    let _ = poll(&mut fds, PollTimeout::from(millis));
    slots.map(|slot| slot.is_some_and(|index| fds[index].any().unwrap_or(false)))
}

/// Waits for a helper program at most `limit`; kills it (SIGKILL) past that and returns `None`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let started = Instant::now();
    let exit_signal = pidfd(child);
    loop {
        if let Some(status) = child.try_wait().context(|| "wait for a program".to_string())? {
            return Ok(Some(status));
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        nap_until_exit(exit_signal.as_ref(), left);
    }
}

/// `pidfd_open(2)` of a child: readable the moment it exits. `None` on kernels without it (< 5.3).
fn pidfd(child: &Child) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no memory; a non-negative result is a new descriptor we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: raw was just returned by pidfd_open and is owned by nobody else.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// Sleeps at most `limit`, waking at once when the process behind `exit_signal` exits (20 ms steps without one).
fn nap_until_exit(exit_signal: Option<&OwnedFd>, limit: Duration) {
    match exit_signal {
        Some(fd) => {
            let millis = u16::try_from(limit.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            // An interrupted or failed poll only ends this nap early; the caller looks again.
            let _ = poll(&mut fds, PollTimeout::from(millis));
        }
        None => thread::sleep(limit.min(SUPERVISOR_TICK)),
    }
}

/// Stops a scenario process: SIGTERM, on which it SIGKILLs its PID namespace's init and waits for it (see
/// [`pidns`]), so that when it has exited every process of the scenario is gone; SIGKILL if it has not
/// exited within [`OUTPUT_CLOSE_WAIT`] (the namespace then dies shortly after, through PR_SET_PDEATHSIG).
/// Each wait is bounded; a process stuck in the kernel is left to the watchdog.
fn stop_child(child: &mut Process) {
    child.signal(libc::SIGTERM);
    if reaped_within(child, OUTPUT_CLOSE_WAIT) {
        return;
    }
    child.signal(libc::SIGKILL);
    reaped_within(child, OUTPUT_CLOSE_WAIT);
}

/// A scenario process, as the job thread that waits for it sees it.
enum Process {
    /// netfault executed again (`__run-one`), a child of the runner; with its pidfd, readable once it exits.
    Executed(Child, Option<OwnedFd>),
    /// Forked by the fork server ([`forkserver`]), which reaps it.
    Forked(forkserver::Forked),
}

impl Process {
    fn executed(child: Child) -> Process {
        let exit_signal = pidfd(&child);
        Process::Executed(child, exit_signal)
    }

    fn id(&self) -> u32 {
        match self {
            Process::Executed(child, _) => child.id(),
            Process::Forked(forked) => forked.id(),
        }
    }

    /// Its exit status once it has exited and been reaped.
    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self {
            Process::Executed(child, _) => child.try_wait().context(|| "wait for scenario process".to_string()),
            Process::Forked(forked) => forked.try_wait(),
        }
    }

    /// Readable once [`Process::try_wait`] has a status to give (`None`: look every tick).
    fn exit_signal(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Process::Executed(_, pidfd) => pidfd.as_ref().map(AsFd::as_fd),
            Process::Forked(forked) => Some(forked.status_signal()),
        }
    }

    /// `kill -SIGNAL`; the process is not reaped before the job thread has seen it exit, so its pid (a pidfd
    /// for a forked one) is still its own.
    fn signal(&mut self, signal: i32) {
        match self {
            Process::Executed(child, _) => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: plain system call; the child is not reaped yet, so its pid cannot have been reused.
                    unsafe { libc::kill(pid, signal) };
                }
            }
            Process::Forked(forked) => forked.signal(signal),
        }
    }

    /// Waits until it has exited, at most `limit`, and kills it (SIGKILL) past that.
    fn wait_gone(&mut self, limit: Duration) -> Result<()> {
        match self {
            Process::Executed(child, _) => wait_with_timeout(child, limit).map(drop),
            // Nothing of the scenario but this process is left, and its exit waits for the kernel (`pidns`).
            Process::Forked(forked) if forked.is_init() => Ok(()),
            Process::Forked(forked) => {
                // Its exit is what counts, not the server's word on it: the scenario is gone when it has exited.
                if !forked.exited_within(limit) {
                    forked.signal(libc::SIGKILL);
                }
                Ok(())
            }
        }
    }
}

/// Whether the child exited (and was reaped) within `limit`.
fn reaped_within(child: &mut Process, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        match child.try_wait() {
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Ok(Some(_)) | Err(_) => return true,
        }
    }
    false
}

/// What a scenario process's environment gets from its runner besides [`SCENARIOS_AT_ONCE_ENV`]: the kernel's
/// layouts for the transition tracer, the descriptor of the sampling count, the private parent it inherits.
pub(crate) fn scenario_environment() -> Vec<(&'static str, String)> {
    let mut environment = transitions::layouts_for_children();
    environment.extend(sampling::child_env());
    if let Some(namespace) = netns::private_parent_for_children() {
        environment.push((netns::PRIVATE_PARENT_ENV, namespace.to_string()));
    }
    environment
}

/// Environment variable with which the runner gives a scenario process its own pid (`$$`).
const RUNNER_PID_ENV: &str = "NETFAULT_RUNNER_PID";

/// In a scenario process the runner started: asks the kernel to SIGKILL it when the runner's thread that
/// started it ends (`prctl(PR_SET_PDEATHSIG, SIGKILL)`), and exits at once if the runner is gone already (its
/// parent is no longer the pid in [`RUNNER_PID_ENV`]). Takes the variable out of the environment, so the
/// scenario's programs never see it: call it while the process is single-threaded. Without the variable
/// (started by hand) it does nothing.
fn die_with_runner() -> Result<()> {
    let Some(runner) = std::env::var_os(RUNNER_PID_ENV) else { return Ok(()) };
    die_with_parent(runner)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`, then exits at once if the parent is no longer `runner` (a pid).
fn die_with_parent(runner: OsString) -> Result<()> {
    std::env::remove_var(RUNNER_PID_ENV);
    // SAFETY: plain system call with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Error::last_os("prctl(PR_SET_PDEATHSIG, SIGKILL) for the scenario process"));
    }
    // Checked after the prctl: a runner that died before it is not there to send the signal.
    if runner.to_str() != Some(nix::unistd::getppid().to_string().as_str()) {
        std::process::exit(128 + libc::SIGKILL);
    }
    Ok(())
}

/// The hidden child command: runs one scenario in this process and prints its summary as the last stdout line.
/// Exit code: 0 pass, 1 verdict failure, 2 harness error.
pub fn child_main(job: &Job, variables: &Variables) -> ExitCode {
    let ran = die_with_runner().and_then(|()| run_here(job, PlanSource::File(variables), false));
    finish_child(job, ran)
}

/// A scenario process forked by the fork server: runs `plan`, the runner's copy of the job's scenario, loaded
/// and checked before the fork, as [`child_main`] runs the file it loads.
pub(crate) fn forked_child_main(job: &Job, plan: Plan, shape: forkserver::Shape) -> ! {
    let ran = match shape {
        forkserver::Shape::Init(server_alive) => {
            // SAFETY: the descriptor was inherited from the server, and nothing else in this process owns it.
            let server_alive = unsafe { OwnedFd::from_raw_fd(server_alive) };
            pidns::forked_init(server_alive).and_then(|()| run_here(job, PlanSource::Loaded(Box::new(plan)), true))
        }
        forkserver::Shape::Relayed(server) => die_with_parent(server.to_string().into())
            .and_then(|()| run_here(job, PlanSource::Loaded(Box::new(plan)), false)),
    };
    finish_child(job, ran)
}

/// Where a scenario process's plan comes from.
enum PlanSource<'a> {
    /// The job's file, loaded with these variables (`__run-one`).
    File(&'a Variables),
    /// The runner's copy (a forked scenario process).
    Loaded(Box<Plan>),
}

/// Prints the summary, tells the relaying parent, exits.
fn finish_child(job: &Job, ran: Result<Summary>) -> ! {
    let summary = match ran {
        Ok(summary) => summary,
        Err(e) => Summary::harness_error(display_name(&job.root, &job.file), &job.report_folder(), e.to_string()),
    };
    match serde_json::to_string(&summary) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode the summary: {e}"),
    }
    let code: u8 = match summary.status {
        Status::Pass => 0,
        Status::Fail => 1,
        Status::Error => 2,
        Status::NotApplicable => 0,
    };
    // Once the runner has the summary, nothing of the scenario but this process is left: the relaying parent
    // exits with the code at once, while this process's exit waits for the kernel to release its packet
    // sockets (see [`pidns`]).
    pidns::end_others();
    close_standard_streams();
    pidns::report_done(code);
    // Threads still blocked in a socket call at the deadline die with the process; the report is written.
    std::process::exit(i32::from(code))
}

/// Points stdout and stderr at /dev/null (after writing out what is buffered), which closes this process's
/// ends of the runner's pipes; anything written later is discarded instead of failing.
fn close_standard_streams() {
    let _ = std::io::stdout().flush();
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else { return };
    for stream in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: plain system call on two descriptors this process owns; the standard stream stays open.
        unsafe { libc::dup2(null.as_raw_fd(), stream) };
    }
}

/// Runs the job's scenario in this process; `init`: it is pid 1 of its own PID namespace already.
fn run_here(job: &Job, source: PlanSource<'_>, init: bool) -> Result<Summary> {
    // Entering a user namespace needs a single-threaded process: do it before anything spawns a thread.
    userns::acquire()?;
    if !init {
        // From here on this process is pid 1 of its own PID namespace: what its programs start dies with it.
        pidns::become_init()?;
    }
    netns::ensure_private_parent()?;
    capture::keep_kernel_timestamps_on()?;
    let plan = match source {
        PlanSource::File(variables) => scenario::load(&job.root, &job.file, variables)?,
        PlanSource::Loaded(plan) => *plan,
    };
    let mut kernel = requirements::Kernel::running();
    let unmet = requirements::scenario_unmet(&plan, &mut kernel);
    let plan = requirements::specialize(plan, &mut kernel);
    let mut dir = report::report_dir(&job.reports, &plan.name)?;
    if let Some(run) = job.run {
        dir.push(run_folder(run));
    }
    // Written aside, then moved over the old report: a killed run leaves the old one whole.
    let staging = report::files::stage(&dir)?;
    let progress = partial::Progress::new();
    if unmet.is_none() {
        // At its deadline plus a part of its grace, a killed run leaves a report of what it recorded; killed
        // before that, the runner writes one that says so.
        progress.watch(plan.clone(), staging.clone())?;
    }
    let reported = match unmet {
        Some(reason) => report::write_not_applicable(&plan, reason, &staging),
        None => {
            let ran = engine::run(&plan, &staging, job.seed, &progress, || {
                // The runner counts the scenario's deadline from here, set-up done; a lost line only leaves it
                // counting from the process's start.
                println!("{STARTED_LINE}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            });
            match ran {
                Ok(mut record) => {
                    progress.stage(partial::Stage::Judging);
                    let verdict = verdict::judge(&plan, &record.timeline);
                    engine::blame_late_wire(&mut record, verdict.passed());
                    engine::blame_late_observers(&mut record, &verdict);
                    progress.finish();
                    report::write(&plan, &record, &verdict, &staging)
                }
                // The summary says what went wrong.
                Err(e) => {
                    progress.finish();
                    Err(e.in_file(&plan.file))
                }
            }
        }
    };
    // Even a run that ended in a harness error shows what it captured; its own error is the one to report. The
    // old files go before the summary: once `netfault run` has exited, the report folder holds the report alone
    // (removed after the summary, off the runner's wait, a rerun's folder still held them when a script looked).
    let published = report::files::publish(&dir);
    let summary = reported?;
    published?;
    Ok(Summary { report: dir, ..summary })
}

/// The environment variable that gives the cargo-test driver its seed (`netfault run --seed` for the others).
pub const SEED_ENV: &str = "NETFAULT_SEED";

/// A seed as given on the command line or in [`SEED_ENV`]: a whole number 0 .. 2^64 - 1.
pub fn parse_seed(text: &str) -> std::result::Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| format!("seed {text:?}: need a whole number 0..18446744073709551615"))
}

/// A seed for a run that was given none: from the clock and the process, printed so the run can be repeated.
/// Kept below 2^53 so that it survives JSON readers that hold numbers as doubles.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    super::impair::rng::Stream::new(nanos, &std::process::id().to_string()).bits(0, 0) >> 11
}

/// The scenario's name for humans and test filters: its path relative to the root.
pub fn display_name(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file);
    scenario::printable(&relative.to_string_lossy().replace('\\', "/"))
}

/// What `run`, `check` and `list` loaded from their paths.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every valid scenario, in the order found (each path's files sorted), each file once.
    pub plans: Vec<(Job, Plan)>,
    /// What was left out and why (not regular files, folders reached twice, files given twice).
    pub skipped: Vec<String>,
    /// Every invalid scenario, and every path that could not be searched: nothing may run if there is one.
    pub errors: Vec<String>,
}

impl Loaded {
    /// The plans, or every error if there is one.
    pub fn into_result(self) -> Result<Vec<(Job, Plan)>, Vec<String>> {
        if self.errors.is_empty() {
            Ok(self.plans)
        } else {
            Err(self.errors)
        }
    }
}

/// Loads every scenario under the given paths, reporting every invalid one and every pair of scenarios whose
/// report folders would collide.
pub fn load_all(paths: &[PathBuf], variables: &Variables) -> Loaded {
    let mut loaded = Loaded::default();
    let mut seen_files: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for path in paths {
        let root = scenario_root(path);
        let discovered = match scenario::discover(path) {
            Ok(discovered) => discovered,
            Err(e) => {
                loaded.errors.push(format!("{}: cannot read: {e}", scenario::printable_path(path)));
                continue;
            }
        };
        loaded.skipped.extend(discovered.skipped);
        if discovered.files.is_empty() {
            loaded.errors.push(format!("{}: no scenario files (*.yaml) found", scenario::printable_path(path)));
        }
        for file in discovered.files {
            if let Ok(metadata) = std::fs::metadata(&file) {
                if let Some(first) = seen_files.get(&(metadata.dev(), metadata.ino())) {
                    loaded.skipped.push(format!(
                        "{}: skipped: the same file as {} (each scenario runs once)",
                        scenario::printable_path(&file),
                        scenario::printable_path(first)
                    ));
                    continue;
                }
                seen_files.insert((metadata.dev(), metadata.ino()), file.clone());
            }
            match scenario::load(&root, &file, variables) {
                // Refused here too, not only by the child: `check` must say so, and `run` must run nothing.
                Ok(plan) => match report::report_dir(Path::new("reports"), &plan.name) {
                    Ok(_) => {
                        let job = Job::new(file, root.clone(), PathBuf::new(), &plan, 0);
                        loaded.plans.push((job, plan));
                    }
                    Err(e) => loaded.errors.push(format!("{}: {e}", scenario::printable_path(&file))),
                },
                Err(e) => loaded.errors.push(e.to_string()),
            }
        }
    }
    let names: Vec<(&str, &Path)> =
        loaded.plans.iter().map(|(job, plan)| (plan.name.as_str(), job.file.as_path())).collect();
    let conflicts: Vec<String> = report_conflicts(&names).into_iter().map(|(_, message)| message).collect();
    loaded.errors.extend(conflicts);
    loaded
}

/// Scenarios whose report folders would collide, by index into `names` (scenario name, file): two scenarios of
/// one name (`x.yaml` and `x.yml`, or `a/x.yaml` and `b/x.yaml` given as two roots), or one whose folder lies
/// inside another's (`x.yaml` and `x/y.yaml`: clearing `x`'s old report would delete `x/y`'s). Each conflict is
/// reported once, on the later file, naming the earlier.
pub fn report_conflicts(names: &[(&str, &Path)]) -> Vec<(usize, String)> {
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut conflicts = Vec::new();
    for (index, (name, _)) in names.iter().enumerate() {
        first_of.entry(name).or_insert(index);
    }
    for (index, (name, file)) in names.iter().enumerate() {
        let file = scenario::printable_path(file);
        let shown = scenario::printable(name);
        match first_of.get(name) {
            Some(first) if *first != index => {
                conflicts.push((
                    index,
                    format!(
                        "{file}: scenario name \"{shown}\" is also the name of {}: both would write the report \
                         folder `{shown}`; rename one of them",
                        scenario::printable_path(names[*first].1)
                    ),
                ));
                continue;
            }
            _ => {}
        }
        let enclosing = name.match_indices('/').find_map(|(cut, _)| first_of.get(&name[..cut]).map(|i| (cut, *i)));
        if let Some((cut, outer)) = enclosing {
            conflicts.push((
                index,
                format!(
                    "{file}: its report folder `{shown}` lies inside `{}`, the report folder of {}: rename one of them",
                    scenario::printable(&name[..cut]),
                    scenario::printable_path(names[outer].1)
                ),
            ));
        }
    }
    conflicts
}

/// Most scenario runs one `netfault run` makes (`--repeat N` times the scenarios): each is a process of its
/// own, and the run keeps every summary.
pub const MAX_RUNS: usize = 100_000;

/// Refuses a `--repeat` that would make more than [`MAX_RUNS`] runs of `scenarios` scenarios.
pub fn check_repeat(repeat: usize, scenarios: usize) -> Result<(), String> {
    match repeat.checked_mul(scenarios) {
        Some(runs) if runs <= MAX_RUNS => Ok(()),
        _ => Err(format!(
            "--repeat {repeat} of {scenarios} scenario(s) is more than {MAX_RUNS} runs; repeat fewer times"
        )),
    }
}

/// Refuses a reports folder that is a file (most likely a scenario file that `--reports` took as its value).
pub fn check_reports_folder(reports: &Path) -> Result<(), String> {
    let shown = scenario::printable_path(reports);
    match std::fs::metadata(reports) {
        Ok(metadata) if !metadata.is_dir() => Err(format!("--reports {shown}: is a file, not a folder")),
        _ if scenario::is_scenario_file(reports) => Err(format!(
            "--reports {shown}: looks like a scenario file, not a folder (the scenarios to run come after the options)"
        )),
        _ => Ok(()),
    }
}

/// The folder scenario names are relative to: the nearest `scenarios` folder above the path, else the path
/// itself (a folder) or its parent (a file; `.` for a file named without a folder).
pub fn scenario_root(path: &Path) -> PathBuf {
    for ancestor in path.ancestors() {
        if ancestor.file_name().is_some_and(|n| n == "scenarios") {
            return ancestor.to_path_buf();
        }
    }
    if path.is_dir() {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// As root, starts making the namespace the runner's scenario processes create theirs from (see
/// [`netns::enter_private_parent`]), on a thread of its own while the caller loads the scenarios; without root
/// `None`: each scenario process then makes its own inside its user namespace.
pub fn start_private_parent() -> Option<netns::PendingParent> {
    // A failure here is the scenario processes' to report: they try again themselves.
    nix::unistd::geteuid().is_root().then(netns::PendingParent::start).and_then(Result::ok)
}

/// As root, starts loading the transition tracer's programs (`transitions::Shared`) on a thread of its own
/// while the caller loads the scenarios: the scenario processes the fork server forks inherit them, and only
/// register their namespaces. Without root `None`: each scenario process tries itself and says why it cannot.
/// Its ring slots are as many as the scenarios `paths` may hold at once, by a guess made before they are
/// loaded: one per file, `transitions::RUNNER_SLOTS` for a folder (each ring costs its making and kernel
/// memory; a scenario without a free slot loads a program of its own).
pub fn start_tracer_programs(paths: &[PathBuf], repeat: Option<usize>) -> Option<std::thread::JoinHandle<()>> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let per_path = |path: &PathBuf| if path.is_dir() { transitions::RUNNER_SLOTS } else { 1 };
    let guess = paths.iter().map(per_path).sum::<usize>().saturating_mul(repeat.unwrap_or(1));
    let slots = guess.clamp(1, transitions::RUNNER_SLOTS);
    // A failure is each scenario's to report (its tracer says why its states are sampled).
    std::thread::Builder::new()
        .name("tracer-load".into())
        .spawn(move || {
            let _ = transitions::load_shared(slots);
        })
        .ok()
}

/// Moves the runner into the namespace [`start_private_parent`] made, and waits for the tracer's programs
/// ([`start_tracer_programs`]), before it starts any scenario process: they inherit both instead of each making
/// its own. Call it before spawning the threads that start them.
pub fn share_private_parent(pending: Option<netns::PendingParent>, tracer: Option<std::thread::JoinHandle<()>>) {
    // While the parent is still being made on its thread, what the first scenario process's start would read
    // after it (`perf trace`: about 1 ms between the runner entering the parent and starting the child): the
    // CPU gate's CPU count (cgroup files), the ring budget's memory (/proc/meminfo), the kernel's layouts for
    // the tracer (the cache file), the sampling count's memfd. Each is made once per process.
    CpuGate::of_this_machine();
    RingBudget::of_this_machine();
    transitions::layouts_for_children();
    sampling::child_env();
    if let Some(pending) = pending {
        // As above: the scenario processes make their own if this failed.
        let _ = pending.enter();
    }
    if let Some(tracer) = tracer {
        // A panic there leaves the programs unloaded: each scenario process then loads its own.
        let _ = tracer.join();
    }
}

/// Starts the fork server (`run::forkserver`) with `table`, the jobs' plans, each job's [`Job::forked_plan`] its
/// place there: call it after [`share_private_parent`] (the scenario processes inherit the namespace the
/// server is in) and before the runner starts any thread. Where it cannot start, the scenario processes are
/// executed as before, and the runner says why.
pub fn start_fork_server(table: Vec<(Job, Plan)>) {
    if let Err(e) = forkserver::start(table) {
        eprintln!("netfault: the scenario processes are executed, not forked: {e}");
    }
}

/// Once every scenario has reported: tells the fork server that no more will be asked for; it exits once their
/// processes have (they remove the report files their runs replaced after reporting), with nobody waiting.
pub fn release_fork_server() {
    forkserver::release();
}

/// After a stop (signal, suite deadline), once every scenario process has been stopped: ends the fork server
/// and waits for it, at most [`STOP_GRACE`], so that nothing of the run outlives the runner.
pub fn stop_fork_server() {
    forkserver::stop(STOP_GRACE);
}

/// What [`run_all`] reports while it runs, for a live display.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// The job with this index started.
    Started(usize),
    /// The job with this index finished, with this summary; jobs finish in any order.
    Finished(usize, &'a Summary),
    /// Nothing started or finished for [`IDLE_TICK`]: a progress display may redraw.
    Idle,
}

/// How often [`run_all`] reports [`RunEvent::Idle`] while nothing happens.
pub const IDLE_TICK: Duration = Duration::from_millis(250);

/// Runs jobs on `parallel` worker threads until done or until `supervisor` says stop; `on_event` sees each
/// job start and finish as it happens. Returns the summaries in job order.
pub fn run_all(
    exe: &Path,
    jobs: Vec<(Job, Duration)>,
    parallel: usize,
    supervisor: &Supervisor,
    mut on_event: impl FnMut(RunEvent<'_>),
) -> Vec<Summary> {
    let total = jobs.len();
    SCENARIOS_AT_ONCE.store(parallel.clamp(1, total.max(1)), Ordering::Relaxed);
    let labels: Vec<(String, PathBuf)> = jobs.iter().map(|(job, _)| (job.name(), job.reports.clone())).collect();
    let queue = Arc::new(Mutex::new(longest_deadline_first(jobs).into_iter()));
    let (tx, rx) = mpsc::channel();
    // The workers end by themselves once the queue is empty; nobody waits for that.
    (0..parallel.clamp(1, total.max(1))).for_each(|_| {
        let queue = Arc::clone(&queue);
        let tx = tx.clone();
        let exe = exe.to_path_buf();
        let supervisor = *supervisor;
        thread::spawn(move || loop {
            let next = queue.lock().ok().and_then(|mut q| q.next());
            let Some((index, (job, deadline))) = next else { break };
            if tx.send((index, None)).is_err() {
                break;
            }
            let summary = run_in_child(&exe, &job, deadline, &supervisor);
            if tx.send((index, Some(summary))).is_err() {
                break;
            }
        });
    });
    drop(tx);
    let mut results: Vec<Option<Summary>> = (0..total).map(|_| None).collect();
    let mut unfinished = total;
    // Until every job has finished, or every worker is gone (one that died leaves its job without a summary).
    while unfinished > 0 {
        match rx.recv_timeout(IDLE_TICK) {
            Ok((index, None)) => on_event(RunEvent::Started(index)),
            Ok((index, Some(summary))) => {
                on_event(RunEvent::Finished(index, &summary));
                results[index] = Some(summary);
                unfinished -= 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => on_event(RunEvent::Idle),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    results
        .into_iter()
        .zip(labels)
        .map(|(summary, (name, reports))| {
            summary.unwrap_or_else(|| Summary::harness_error(name, &reports, "its worker thread died".into()))
        })
        .collect()
}

/// The jobs with their index, in the order they start: longest deadline first, as the CPU gate admits them
/// (see `cpu_gate`), so that with fewer workers than jobs (`--jobs`) the longest is not left for last either.
fn longest_deadline_first<T>(jobs: Vec<(T, Duration)>) -> Vec<(usize, (T, Duration))> {
    let mut ordered: Vec<_> = jobs.into_iter().enumerate().collect();
    // Stable: jobs of equal deadlines keep their order.
    ordered.sort_by_key(|(_, (_, deadline))| std::cmp::Reverse(*deadline));
    ordered
}

/// Default parallelism: every scenario at once, since they mostly wait on kernel timers (capped to keep a
/// small machine responsive).
pub fn default_parallelism(jobs: usize) -> usize {
    jobs.clamp(1, 256)
}

/// The kind libtest-mimic prints before a scenario's name: `[scenario] keepalive/idle.yaml`.
const TRIAL_KIND: &str = "scenario";

/// `cargo test` entry: every scenario file under `root` is one trial named by its path relative to `root`.
///
/// Only the scenarios the name filters select are loaded: `cargo nextest` runs each trial in a process of its
/// own (`--exact NAME`), and each of those must not parse the whole suite.
///
/// The whole run is bounded by the suite deadline: `NETFAULT_SUITE_DEADLINE` (e.g. `10m`), by default
/// `supervise::default_budget` of the selected scenarios' deadlines. SIGINT / SIGTERM or the deadline kill
/// every scenario process and fail its trial with the reason.
pub fn test_main(root: &Path, reports: &Path, exe: &Path, variables: &Variables, mut args: Arguments) -> ExitCode {
    // Made while the scenarios load.
    let parent = start_private_parent();
    let discovered = match scenario::discover(root) {
        Ok(discovered) => discovered,
        Err(e) => {
            eprintln!("netfault: cannot read scenarios in {}: {e}", scenario::printable_path(root));
            return ExitCode::from(2);
        }
    };
    for skipped in &discovered.skipped {
        eprintln!("netfault: {skipped}");
    }
    // Report folders are named after the files, so collisions are found among every file, selected or not.
    let names: Vec<String> = discovered.files.iter().map(|file| scenario::scenario_name(root, file)).collect();
    let named: Vec<(&str, &Path)> =
        names.iter().zip(&discovered.files).map(|(name, file)| (name.as_str(), file.as_path())).collect();
    let mut conflicts: HashMap<usize, String> = report_conflicts(&named).into_iter().collect();
    let plans: Vec<(PathBuf, String, Candidate)> = discovered
        .files
        .into_iter()
        .enumerate()
        .map(|(index, file)| {
            let name = display_name(root, &file);
            let candidate = match selected_by_name(&args, &name) {
                false => Candidate::FilteredOut,
                true => match (conflicts.remove(&index), scenario::load(root, &file, variables)) {
                    (_, Err(e)) => Candidate::Invalid(e.to_string()),
                    (Some(conflict), Ok(_)) => Candidate::Invalid(conflict),
                    (None, Ok(plan)) => Candidate::Loaded(Box::new(plan)),
                },
            };
            (file, name, candidate)
        })
        .collect();
    if args.test_threads.is_none() {
        args.test_threads = Some(default_parallelism(plans.len()));
    }
    SCENARIOS_AT_ONCE.store(args.test_threads.unwrap_or(1).clamp(1, plans.len().max(1)), Ordering::Relaxed);
    let limits: Vec<Duration> = plans
        .iter()
        .filter_map(|(_, _, candidate)| match candidate {
            Candidate::Loaded(plan) => Some(plan.deadline + CHILD_GRACE),
            _ => None,
        })
        .collect();
    let budget = match std::env::var(supervise::SUITE_DEADLINE_ENV) {
        Ok(text) => match supervise::parse_budget(&text) {
            Ok(budget) => budget,
            Err(e) => {
                eprintln!("netfault: {}: {e}", supervise::SUITE_DEADLINE_ENV);
                return ExitCode::from(2);
            }
        },
        Err(_) => supervise::default_budget(&limits),
    };
    let supervisor = Supervisor::new(budget);
    share_private_parent(parent, None);
    if let Err(e) = supervise::catch_stop_signals().and_then(|()| supervisor.start_watchdog(STOP_GRACE)) {
        eprintln!("netfault: {e}");
        return ExitCode::from(2);
    }
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => match parse_seed(&text) {
            Ok(seed) => seed,
            Err(e) => {
                eprintln!("netfault: {SEED_ENV}: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => fresh_seed(),
    };
    // A listing runs nothing: no seed to repeat.
    let impaired =
        plans.iter().any(|(_, _, candidate)| matches!(candidate, Candidate::Loaded(plan) if plan.has_impairments()));
    if impaired && !args.list {
        eprintln!("netfault: impairments seeded with {seed} ({SEED_ENV}={seed} repeats their decisions)");
    }
    let mut kernel = requirements::Kernel::running();
    let trials: Vec<Trial> = plans
        .into_iter()
        .map(|(file, name, candidate)| match candidate {
            Candidate::Loaded(plan) => {
                // Ignored, never silently: the reason is printed.
                let unmet = requirements::scenario_unmet(&plan, &mut kernel);
                if let Some(reason) = &unmet {
                    eprintln!("netfault: {name}: {reason} (ignored)");
                }
                let job = Job::new(file, root.to_path_buf(), reports.to_path_buf(), &plan, seed);
                let exe = exe.to_path_buf();
                let deadline = plan.deadline;
                Trial::test(name, move || trial_result(run_in_child(&exe, &job, deadline, &supervisor)))
                    .with_kind(TRIAL_KIND)
                    .with_ignored_flag(plan.slow || unmet.is_some())
            }
            Candidate::Invalid(message) => Trial::test(name, move || Err(Failed::from(message))).with_kind(TRIAL_KIND),
            // libtest-mimic counts it as filtered out and never runs it.
            Candidate::FilteredOut => Trial::test(name, || Ok(())).with_kind(TRIAL_KIND),
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(reason) = supervisor.stop_reason() {
        eprintln!("netfault: {reason}: the scenarios still running were killed and failed");
        return ExitCode::from(reason.exit_code());
    }
    conclusion.exit_code()
}

/// A scenario file as the test driver sees it.
enum Candidate {
    /// Left out by the name filters: not loaded.
    FilteredOut,
    Loaded(Box<Plan>),
    /// Its trial fails with this error.
    Invalid(String),
}

/// Whether the name filters of `args` (a filter, `--exact`, `--skip`) keep the scenario of this name. Whether
/// it is ignored (`slow`) is left to libtest-mimic, which knows it once the scenario is loaded.
fn selected_by_name(args: &Arguments, name: &str) -> bool {
    let by_name = Arguments { ignored: false, ..args.clone() };
    !by_name.is_filtered_out(&Trial::test(name, || Ok(())).with_kind(TRIAL_KIND))
}

fn trial_result(summary: Summary) -> Result<(), Failed> {
    match summary.status {
        // Only run when asked for with --include-ignored: the child found the kernel lacking, as the driver did.
        Status::Pass | Status::NotApplicable => Ok(()),
        status => {
            let what = if status == Status::Fail { "FAILED" } else { "HARNESS ERROR" };
            Err(Failed::from(format!(
                "{what}: {}\n{}\n  report: {} (report.html, capture.pcapng, timeline.txt, result.json)",
                scenario::printable(&summary.name),
                scenario::printable_lines(&summary.messages.join("\n")),
                scenario::printable_path(&summary.report)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_start_longest_deadline_first_and_keep_their_index() {
        let secs = Duration::from_secs;
        let jobs = vec![("a", secs(12)), ("b", secs(24)), ("c", secs(12)), ("d", secs(40))];
        let order: Vec<(usize, &str)> =
            longest_deadline_first(jobs).into_iter().map(|(index, (name, _))| (index, name)).collect();
        assert_eq!(order, [(3, "d"), (1, "b"), (0, "a"), (2, "c")]);
    }

    #[test]
    fn report_folders_that_would_collide_are_named_with_both_files() {
        // Found by the issue-12 campaign: each pair wrote one report folder, or one deleted the other's.
        let names = [
            ("x", Path::new("s/x.yaml")),
            ("x", Path::new("s/x.yml")),
            ("a/b", Path::new("one/a/b.yaml")),
            ("a/b", Path::new("two/a/b.yaml")),
            ("x/y", Path::new("s/x/y.yaml")),
            ("x/y/z", Path::new("s/x/y/z.yaml")),
            ("xy", Path::new("s/xy.yaml")),
            ("a", Path::new("s/a.yaml")),
        ];
        let conflicts = report_conflicts(&names);
        let at: Vec<usize> = conflicts.iter().map(|(index, _)| *index).collect();
        assert_eq!(at, vec![1, 2, 3, 4, 5], "{conflicts:?}");
        assert_eq!(
            conflicts[0].1,
            "s/x.yml: scenario name \"x\" is also the name of s/x.yaml: both would write the report folder `x`; \
             rename one of them"
        );
        assert_eq!(
            conflicts[1].1,
            "one/a/b.yaml: its report folder `a/b` lies inside `a`, the report folder of s/a.yaml: rename one of them"
        );
        assert!(conflicts[2].1.starts_with("two/a/b.yaml: scenario name \"a/b\" is also the name of one/a/b.yaml"));
        assert!(conflicts[3].1.starts_with("s/x/y.yaml: its report folder `x/y` lies inside `x`"), "{conflicts:?}");
        assert!(conflicts[4].1.starts_with("s/x/y/z.yaml: its report folder `x/y/z` lies inside `x`"));
    }

    #[test]
    fn repeats_and_reports_folders_are_checked_before_anything_runs() {
        // Found by the issue-12 campaign: `--repeat 9223372036854775808` aborted allocating its job list.
        assert!(check_repeat(1000, 50).is_ok());
        assert_eq!(
            check_repeat(9_223_372_036_854_775_808, 2).unwrap_err(),
            "--repeat 9223372036854775808 of 2 scenario(s) is more than 100000 runs; repeat fewer times"
        );
        assert!(check_repeat(usize::MAX, 1).is_err());
        // `run --reports x.yaml` took the scenario file for the reports folder.
        let file = std::env::temp_dir().join(format!("netfault-reports-file-{}.yaml", std::process::id()));
        std::fs::write(&file, "description: d\n").unwrap();
        let refused = check_reports_folder(&file).unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert!(refused.ends_with(".yaml: is a file, not a folder"), "{refused}");
        assert!(check_reports_folder(Path::new("not-there/x.yml")).unwrap_err().contains("looks like a scenario file"));
        assert!(check_reports_folder(Path::new("reports")).is_ok());
    }

    #[test]
    fn the_deadline_counts_from_the_programs_start_line_not_from_the_process_start() {
        // Set-up (1 s here, tens of seconds on a slow machine) is not scenario time: a 0.4 s limit counted
        // from the process's start would kill this one; counted from its start line, it exits in time.
        let mut child = Command::new("sh")
            .args(["-c", &format!("sleep 1; echo '{STARTED_LINE}'; sleep 0.1; echo done")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = ChildOutput::take(&mut child);
        let mut child = Process::executed(child);
        let supervisor = Supervisor::new(Duration::from_secs(60));
        let ended = wait_bounded(&mut child, &mut output, Duration::from_millis(400), &supervisor);
        assert!(matches!(ended.unwrap(), Ended::Exited(status) if status.success()));
        assert_eq!(String::from_utf8_lossy(&output.text[0]), format!("{STARTED_LINE}\ndone\n"));
        // Past its limit after the start line: killed, in the running phase.
        let mut child = Command::new("sh")
            .args(["-c", &format!("echo '{STARTED_LINE}'; sleep 5")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = ChildOutput::take(&mut child);
        let mut child = Process::executed(child);
        let ended = wait_bounded(&mut child, &mut output, Duration::from_millis(300), &supervisor).unwrap();
        assert!(matches!(ended, Ended::TimedOut(Phase::Running)));
    }

    #[test]
    fn a_process_that_closes_its_stdout_with_a_summary_has_reported_before_it_exits() {
        // What a scenario process does: summary, stdout closed, then a long exit (a packet socket's grace
        // period; a sleep here, exec'd so that the kill below ends it rather than leaving it to hold the test's
        // stderr, which nextest reports as a leak). The wait ends with the summary, not with the exit.
        let summary = serde_json::to_string(&Summary::harness_error("x".into(), Path::new("r"), "m".into())).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", &format!("echo '{STARTED_LINE}'; echo '{summary}'; exec >&-; exec sleep 3")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = ChildOutput::take(&mut child);
        let mut child = Process::executed(child);
        let supervisor = Supervisor::new(Duration::from_secs(60));
        let started = Instant::now();
        let ended = wait_bounded(&mut child, &mut output, Duration::from_secs(10), &supervisor).unwrap();
        assert!(matches!(ended, Ended::Reported(ref reported) if reported.name == "x"));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(output.programs_started.is_some());
        child.signal(libc::SIGKILL);
        assert!(reaped_within(&mut child, Duration::from_secs(5)));
    }

    #[test]
    fn a_job_survives_the_child_command_line() {
        let job = Job {
            file: "scenarios/a b/c.yaml".into(),
            root: "scenarios".into(),
            reports: "/tmp/r".into(),
            run: Some(3),
            ring_memory: 0,
            seed: 18_446_744_073_709_551_615,
            bulk_through_wire: false,
            about: None,
            forked_plan: None,
        };
        let back = parse_child_args(job.child_args()).unwrap();
        assert_eq!(
            (back.file, back.root, back.reports, back.run, back.seed),
            (job.file, job.root, job.reports, job.run, job.seed)
        );
        let plain = parse_child_args(["x.yaml".into()]).unwrap();
        assert_eq!(
            (plain.root, plain.reports, plain.run, plain.seed),
            (PathBuf::from("."), PathBuf::from("reports"), None, 0)
        );
        let problem = |args: &[&str]| parse_child_args(args.iter().map(OsString::from)).unwrap_err().kind();
        assert_eq!(problem(&["a.yaml", "b.yaml"]), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(problem(&["--run", "x", "a.yaml"]), clap::error::ErrorKind::ValueValidation);
        assert_eq!(problem(&["--root"]), clap::error::ErrorKind::InvalidValue);
        assert_eq!(problem(&[]), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn a_file_named_without_a_folder_has_the_current_folder_as_root() {
        assert_eq!(scenario_root(Path::new("no-such-scenario.yaml")), PathBuf::from("."));
        assert_eq!(scenario_root(Path::new("some/where/x.yaml")), PathBuf::from("some/where"));
        assert_eq!(scenario_root(Path::new("a/scenarios/b/x.yaml")), PathBuf::from("a/scenarios"));
        // The root survives the child command line (clap refuses an empty --root).
        let job = Job {
            file: "x.yaml".into(),
            root: scenario_root(Path::new("x.yaml")),
            reports: "r".into(),
            run: None,
            ring_memory: 0,
            seed: 0,
            bulk_through_wire: false,
            about: None,
            forked_plan: None,
        };
        assert_eq!(parse_child_args(job.child_args()).unwrap().root, PathBuf::from("."));
    }

    #[test]
    fn bounded_wait_sees_an_exit_at_once_and_kills_past_the_limit() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let started = Instant::now();
        assert_eq!(wait_with_timeout(&mut child, Duration::from_millis(100)).unwrap(), None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2), "{waited:?}");
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(5)).unwrap().unwrap().code(), Some(3));
    }
}

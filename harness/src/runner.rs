//! Running scenarios: one child process each (the harness re-executes itself), many at once, each bounded by
//! its deadline; and the libtest-mimic glue that makes every scenario one `cargo test` trial.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Context, Error, Result};
use crate::report::{self, Status, Summary};
use crate::scenario::{self, plan::Plan};
use crate::{engine, netns, userns, verdict};

/// Time a child gets beyond its scenario deadline for set-up, teardown and writing its report.
pub const CHILD_GRACE: Duration = Duration::from_secs(20);

/// Hidden subcommand the harness re-executes itself with to run one scenario.
pub const CHILD_COMMAND: &str = "__run-one";

/// Where a scenario lives and where its report goes.
#[derive(Debug, Clone)]
pub struct Job {
    pub file: PathBuf,
    pub root: PathBuf,
    pub reports: PathBuf,
}

/// Runs one scenario in a child process of `exe` and waits for it, at most its deadline plus grace.
pub fn run_in_child(exe: &Path, job: &Job, deadline: Duration) -> Summary {
    let name = display_name(&job.root, &job.file);
    match spawn_and_wait(exe, job, deadline) {
        Ok(summary) => summary,
        Err(e) => Summary {
            name,
            status: Status::Error,
            duration: 0.0,
            setup_ms: 0.0,
            teardown_ms: 0.0,
            report: job.reports.clone(),
            messages: vec![e.to_string()],
        },
    }
}

fn spawn_and_wait(exe: &Path, job: &Job, deadline: Duration) -> Result<Summary> {
    let mut command = Command::new(exe);
    command
        .arg(CHILD_COMMAND)
        .arg("--root")
        .arg(&job.root)
        .arg("--reports")
        .arg(&job.reports)
        .arg(&job.file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The child, and with it its namespaces, must not outlive the runner, whatever kills the runner.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context(|| format!("start {} {CHILD_COMMAND}", exe.display()))?;
    let stdout = read_to_end_in_background(child.stdout.take());
    let stderr = read_to_end_in_background(child.stderr.take());
    let limit = deadline + CHILD_GRACE;
    let status = wait_bounded(&mut child, limit)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let summary = stdout.lines().rev().find_map(|line| serde_json::from_str::<Summary>(line).ok());
    match (status, summary) {
        (Some(_), Some(summary)) => Ok(summary),
        (None, _) => Err(Error::Internal(format!(
            "scenario still running {}s after its start (deadline {}s + {}s grace): killed{}",
            limit.as_secs(),
            deadline.as_secs(),
            CHILD_GRACE.as_secs(),
            tail("child stderr", &stderr)
        ))),
        (Some(status), None) => Err(Error::Internal(format!(
            "scenario process ended ({status}) without a verdict{}",
            tail("child stderr", &stderr)
        ))),
    }
}

fn tail(what: &str, text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\n  {what}:\n    {}", lines[lines.len().saturating_sub(15)..].join("\n    "))
}

fn read_to_end_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Waits for the child at most `limit`; kills it (SIGKILL) past that and returns `None`.
///
/// Sleeps in poll(2) on a pidfd, so the exit is seen the moment it happens; kernels without pidfd_open
/// (< 5.3) fall back to looking every 20 ms.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let started = Instant::now();
    // SAFETY: pidfd_open takes a pid and flags, no memory; a non-negative result is a new descriptor we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw >= 0 {
        // SAFETY: raw was just returned by pidfd_open and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        loop {
            let left = limit.saturating_sub(started.elapsed());
            let millis = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) if left.is_zero() => break,
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => return child.wait().map(Some).context(|| "wait for scenario process".to_string()),
                Err(e) => return Err(Error::sys("wait for scenario process: poll(pidfd)", e)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    }
    loop {
        if let Some(status) = child.try_wait().context(|| "wait for scenario process".to_string())? {
            return Ok(Some(status));
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The hidden child command: runs one scenario in this process and prints its summary as the last stdout line.
/// Exit code: 0 pass, 1 verdict failure, 2 harness error.
pub fn child_main(root: &Path, reports: &Path, file: &Path) -> ExitCode {
    let summary = match run_here(root, reports, file) {
        Ok(summary) => summary,
        Err(e) => Summary {
            name: display_name(root, file),
            status: Status::Error,
            duration: 0.0,
            setup_ms: 0.0,
            teardown_ms: 0.0,
            report: reports.to_path_buf(),
            messages: vec![e.to_string()],
        },
    };
    match serde_json::to_string(&summary) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode the summary: {e}"),
    }
    let code = match summary.status {
        Status::Pass => 0,
        Status::Fail => 1,
        Status::Error => 2,
    };
    // Threads still blocked in a socket call at the deadline die with the process; the report is written.
    std::process::exit(code)
}

fn run_here(root: &Path, reports: &Path, file: &Path) -> Result<Summary> {
    // Entering a user namespace needs a single-threaded process: do it before anything spawns a thread.
    userns::acquire()?;
    netns::enter_private_parent()?;
    let plan = scenario::load(root, file)?;
    let dir = report::report_dir(reports, &plan.name)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).context(|| format!("clear old report {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).context(|| format!("create report folder {}", dir.display()))?;
    let output = engine::run(&plan, &dir)?;
    let verdict = verdict::judge(&plan, &output.timeline);
    report::write(&plan, &output, &verdict, &dir)
}

/// The scenario's name for humans and test filters: its path relative to the root.
pub fn display_name(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file);
    relative.to_string_lossy().replace('\\', "/")
}

/// Loads every scenario under the given paths, or reports every invalid one.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<(Job, Plan)>, Vec<String>> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let root = scenario_root(path);
        let files = match scenario::discover(path) {
            Ok(files) => files,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        if files.is_empty() {
            errors.push(format!("{}: no scenario files (*.yaml) found", path.display()));
        }
        for file in files {
            match scenario::load(&root, &file) {
                Ok(plan) => plans.push((Job { file, root: root.clone(), reports: PathBuf::new() }, plan)),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(errors)
    }
}

/// The folder scenario names are relative to: the nearest `scenarios` folder above the path, else the path
/// itself (a folder) or its parent (a file).
pub fn scenario_root(path: &Path) -> PathBuf {
    for ancestor in path.ancestors() {
        if ancestor.file_name().is_some_and(|n| n == "scenarios") {
            return ancestor.to_path_buf();
        }
    }
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Runs jobs on `parallel` worker threads; `on_done` sees each summary in job order as soon as it and all
/// earlier ones are done, so output is deterministic yet live.
pub fn run_all(
    exe: &Path,
    jobs: Vec<(Job, Duration)>,
    parallel: usize,
    mut on_done: impl FnMut(&Summary),
) -> Vec<Summary> {
    let total = jobs.len();
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>().into_iter()));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..parallel.clamp(1, total.max(1)))
        .map(|_| {
            let queue = Arc::clone(&queue);
            let tx = tx.clone();
            let exe = exe.to_path_buf();
            thread::spawn(move || loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((index, (job, deadline))) = next else { break };
                let summary = run_in_child(&exe, &job, deadline);
                if tx.send((index, summary)).is_err() {
                    break;
                }
            })
        })
        .collect();
    drop(tx);
    let mut pending = BTreeMap::new();
    let mut next = 0;
    let mut results = Vec::with_capacity(total);
    for (index, summary) in rx {
        pending.insert(index, summary);
        while let Some(summary) = pending.remove(&next) {
            on_done(&summary);
            results.push(summary);
            next += 1;
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
    results
}

/// Default parallelism: every scenario at once, since they mostly wait on kernel timers (capped to keep a
/// small machine responsive).
pub fn default_parallelism(jobs: usize) -> usize {
    jobs.clamp(1, 256)
}

/// `cargo test` entry: every scenario file under `root` is one trial named by its path relative to `root`.
pub fn test_main(root: &Path, reports: &Path, exe: &Path, mut args: Arguments) -> ExitCode {
    let files = match scenario::discover(root) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("netfault: cannot read scenarios in {}: {e}", root.display());
            return ExitCode::from(2);
        }
    };
    let trials: Vec<Trial> = files
        .into_iter()
        .map(|file| {
            let name = display_name(root, &file);
            match scenario::load(root, &file) {
                Ok(plan) => {
                    let job = Job { file, root: root.to_path_buf(), reports: reports.to_path_buf() };
                    let exe = exe.to_path_buf();
                    let deadline = plan.deadline;
                    Trial::test(name, move || trial_result(run_in_child(&exe, &job, deadline)))
                        .with_kind("scenario")
                        .with_ignored_flag(plan.slow)
                }
                Err(e) => {
                    let message = e.to_string();
                    Trial::test(name, move || Err(Failed::from(message))).with_kind("scenario")
                }
            }
        })
        .collect();
    if args.test_threads.is_none() {
        args.test_threads = Some(default_parallelism(trials.len()));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

fn trial_result(summary: Summary) -> Result<(), Failed> {
    match summary.status {
        Status::Pass => Ok(()),
        status => {
            let what = if status == Status::Fail { "FAILED" } else { "HARNESS ERROR" };
            Err(Failed::from(format!(
                "{what}: {}\n{}\n  report: {} (timeline.txt, result.json, client.pcap, server.pcap)",
                summary.name,
                summary.messages.join("\n"),
                summary.report.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_wait_sees_an_exit_at_once_and_kills_past_the_limit() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let started = Instant::now();
        assert_eq!(wait_bounded(&mut child, Duration::from_millis(100)).unwrap(), None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2), "{waited:?}");
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        assert_eq!(wait_bounded(&mut child, Duration::from_secs(5)).unwrap().unwrap().code(), Some(3));
    }
}

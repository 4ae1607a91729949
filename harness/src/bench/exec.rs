//! `netfault bench exec`: what confining an `exec` program costs. The same program (`/bin/true`) is started
//! and waited for from a thread inside a scenario-like network namespace, alternating: unconfined (as exec
//! steps ran before confinement: fork, PR_SET_PDEATHSIG, exec), confined (the host's confinement entered between fork and exec),
//! and confined the shell way, each program through `unshare --mount --uts --ipc --mount-proc` and `setpriv`
//! (what confining each program on its own would cost). Making the confinement, once per host with exec
//! steps, is measured on its own.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{interrupted, millis, Comparison, Distribution, Report};
use crate::error::{Context, Error, Result};
use crate::run::confine::Confinement;
use crate::run::netns::Netns;

/// Runs before the measured ones: page cache, dynamic loader, first namespace use.
const WARM_UP: usize = 10;
/// The program every variant starts.
const PROGRAM: &str = "/bin/true";
/// The shell way: `unshare` with a proc of its own, then `setpriv` down to the capabilities a confined program
/// keeps.
const SHELL_WAY: [&str; 10] = [
    "unshare",
    "--mount",
    "--uts",
    "--ipc",
    "--propagation=slave",
    "--mount-proc",
    "setpriv",
    "--bounding-set=-all,+chown,+dac_override,+dac_read_search,+fowner,+fsetid,+setgid,+setuid,\
     +net_bind_service,+net_admin,+net_raw",
    "--",
    PROGRAM,
];

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub repetitions: usize,
}

/// How long it took to start `command` and see it exit 0.
fn time_program(mut command: Command) -> Result<Duration> {
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context(|| format!("start {command:?}"))?;
    let took = started.elapsed();
    if !status.success() {
        return Err(Error::Internal(format!("{command:?} ended with {status}")));
    }
    Ok(took)
}

/// `program` with a hook between fork and exec, as an exec step starts it: the hook makes std fork instead of
/// taking its posix_spawn path, which an exec step never takes (it always has PR_SET_PDEATHSIG to set).
fn hooked(program: &str, confinement: Option<Arc<Confinement>>) -> Command {
    let mut command = Command::new(program);
    // SAFETY: the hook makes system calls only and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            confinement.as_ref().map_or(Ok(()), |confinement| confinement.enter())
        });
    }
    command
}

/// One unconfined, one confined and one shell-way start, from a thread inside `netns`.
fn once(netns: &Netns, confinement: &Arc<Confinement>) -> Result<[Duration; 3]> {
    let confinement = Arc::clone(confinement);
    netns.run(move || {
        let unconfined = time_program(hooked(PROGRAM, None))?;
        let confined = time_program(hooked(PROGRAM, Some(confinement)))?;
        let mut shell_way = hooked(SHELL_WAY[0], None);
        shell_way.args(&SHELL_WAY[1..]);
        Ok([unconfined, confined, time_program(shell_way)?])
    })
}

pub fn bench_exec(options: &ExecOptions) -> Result<Report> {
    let netns = Netns::new_anonymous()?;
    let mut report = Report::new("exec");
    let mut builds = Vec::new();
    for _ in 0..(options.repetitions / 10).max(WARM_UP) {
        let started = Instant::now();
        drop(Confinement::new(&netns, "client")?);
        builds.push(millis(started.elapsed()));
    }
    let confinement = Arc::new(Confinement::new(&netns, "client")?);
    let (mut unconfined, mut confined, mut shell_way) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARM_UP + options.repetitions {
        if interrupted() {
            report.note("interrupted", format!("after {} repetitions", unconfined.len()));
            break;
        }
        let [plain, ours, theirs] = once(&netns, &confinement)?;
        if i >= WARM_UP {
            unconfined.push(millis(plain));
            confined.push(millis(ours));
            shell_way.push(millis(theirs));
        }
    }
    report.row("start + wait /bin/true, unconfined (exec before confinement)", "ms", &unconfined);
    report.row("start + wait /bin/true, confined (4 setns + capabilities before exec)", "ms", &confined);
    report.row("start + wait /bin/true through unshare --mount-proc + setpriv", "ms", &shell_way);
    report.row("make one host's confinement (once per host with exec steps, before t0)", "ms", &builds);
    report.note(
        "method",
        format!(
            "each repetition, from one thread inside a fresh network namespace, starts {PROGRAM} three ways and \
             times spawn to exit status: with PR_SET_PDEATHSIG between fork and exec (an exec step before \
             confinement), with that and the confinement entered, and through `{}`; {WARM_UP} repetitions first are \
             not counted. The confinement is made {} times on its own (`Confinement::new`, dropped at once)",
            SHELL_WAY.join(" "),
            builds.len()
        ),
    );
    let medians = (Distribution::of(&unconfined), Distribution::of(&confined), Distribution::of(&shell_way));
    if let (Some(plain), Some(ours), Some(theirs)) = medians {
        report.note("confinement cost per exec (median difference)", format!("{:.3} ms", ours.median - plain.median));
        report.compare(Comparison {
            what: "confined exec of /bin/true (median)".into(),
            netfault: format!("{:.3} ms (unconfined {:.3} ms)", ours.median, plain.median),
            alternative: format!("{:.3} ms (unshare + setpriv per program)", theirs.median),
            ratio: Some(theirs.median / ours.median),
            target: "cheaper than confining each program the shell way".into(),
            met: ours.median < theirs.median,
        });
    }
    Ok(report.finish())
}

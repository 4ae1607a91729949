//! The scenario process as init of a PID namespace of its own (`unshare --pid --fork --kill-child`), so that
//! nothing a scenario starts can outlive it: when init ends, however it ends, the kernel SIGKILLs every other
//! process of the namespace, including `exec` programs that called setsid or double-forked out of their
//! process group.
//!
//! Shape: the process `netfault run` started stays outside as a small parent that only waits and relays the
//! exit status; its forked child is pid 1 of the new namespace and runs the scenario. The child dies with the
//! parent (PR_SET_PDEATHSIG), and the parent with the runner (the runner sets the same on it), so a SIGKILL
//! anywhere up the chain takes the whole namespace down.
//!
//! The parent exits as soon as the child says it is done ([`report_done`]: its report is written and its
//! summary printed), with the child's exit code, rather than when the child's exit is complete: a process
//! that held packet sockets exits only after the kernel has released each of them, and releasing one waits
//! for an RCU grace period (`synchronize_net()` in `packet_release`, 10-16 ms at HZ=250), which is longer
//! than a whole trivial scenario. The child is by then only exiting; the kernel finishes that on its own,
//! and the namespace's other processes die with it as before. A child that ends without saying it is done
//! (a crash, a signal) is waited for and its status relayed.
//!
//! SIGTERM (or SIGINT) to the parent is the orderly stop: it SIGKILLs the child and still waits for it. The
//! kernel reaps every other process of the namespace before init's exit can be waited for, so once the
//! parent has exited after a stop, nothing of the scenario is left; after a SIGKILL of the parent, that
//! happens shortly after instead.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use crate::error::{Context, Error, Result};
use crate::run::userns;

/// Exit status the relaying parent gives when its child ended without one (killed by a signal): 128 + signal,
/// as a shell reports it.
const SIGNAL_EXIT_BASE: i32 = 128;

/// The scenario process, as the relaying parent sees it (0 before the fork).
static SCENARIO_PID: AtomicI32 = AtomicI32::new(0);

/// The scenario process's end of the pipe on which it tells the relaying parent its exit code.
static DONE: Mutex<Option<File>> = Mutex::new(None);

/// Whether this process is a scenario's init ([`become_init`], [`forked_init`]).
static INIT: AtomicBool = AtomicBool::new(false);

extern "C" fn kill_scenario(_signal: libc::c_int) {
    let pid = SCENARIO_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; the pid is our unreaped child, so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// `unshare --pid --fork --kill-child`: returns in a forked child that is pid 1 of a new PID namespace; the
/// calling process never returns from here but waits for that child and exits with its status (128 + signal
/// number when a signal ended it).
///
/// Must be called while the process is single-threaded (after [`userns::acquire`], before anything spawns a
/// thread): the fork copies only the calling thread.
pub fn become_init() -> Result<()> {
    userns::require_single_thread()?;
    // The parent holds the write end for as long as it lives: the child sees it closed if the parent died
    // before the child asked to die with it.
    let (parent_alive, parent_holds) =
        pipe2(OFlag::O_CLOEXEC).context(|| "pipe2(O_CLOEXEC) to watch the relaying parent".to_string())?;
    let (done_read, done_write) =
        pipe2(OFlag::O_CLOEXEC).context(|| "pipe2(O_CLOEXEC) for the scenario's exit code".to_string())?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| match e {
        Errno::EPERM => Error::Missing {
            what: "permission to create PID namespaces".into(),
            hint: "run as root, or where unprivileged user namespaces are allowed".into(),
        },
        other => Error::sys("unshare(CLONE_NEWPID) (unshare --pid)", other),
    })?;
    // SAFETY: the process is single-threaded (checked above), so the child may run any code after the fork.
    match unsafe { fork() }.context(|| "fork() into the new PID namespace (unshare --fork)".to_string())? {
        ForkResult::Child => {
            drop(parent_holds);
            drop(done_read);
            if let Ok(mut done) = DONE.lock() {
                *done = Some(File::from(done_write));
            }
            forked_init(parent_alive)
        }
        ForkResult::Parent { child } => {
            drop(parent_alive);
            drop(done_write);
            // The runner takes the child's summary as soon as stdout closes, which must not wait for this
            // process: its own stdout goes. Its stderr stays, for what it says when the child dies.
            stdout_to_null();
            SCENARIO_PID.store(child.as_raw(), Ordering::SeqCst);
            if let Err(e) = forward_stop_signals() {
                eprintln!("netfault: {e}");
                kill_scenario(libc::SIGKILL);
            }
            let code = reported_exit(done_read).unwrap_or_else(|| relay_exit(child));
            drop(parent_holds);
            std::process::exit(code)
        }
    }
}

/// In a process forked as pid 1 of a new PID namespace (by [`become_init`], or by the runner's fork server,
/// which then needs no relaying parent: it reaps the process itself and the runner waits for its summary, not
/// its exit): dies with its parent (PR_SET_PDEATHSIG), and exits at once if the parent is gone already, which
/// the parent tells by holding the write end of `parent_alive` for as long as it lives.
pub fn forked_init(parent_alive: OwnedFd) -> Result<()> {
    die_with_parent()?;
    if parent_gone(&parent_alive)? {
        std::process::exit(SIGNAL_EXIT_BASE + libc::SIGKILL);
    }
    INIT.store(true, Ordering::SeqCst);
    Ok(())
}

/// Ends every other process of the namespace (`kill -KILL -1` from its init) and reaps them, at most
/// [`REAP_OTHERS_TIMEOUT`]: the programs the scenario started, including any that left their process group
/// and were handed to init when their parent died. Call it once the scenario is over, before
/// [`report_done`], so that everything of the scenario but this process is gone when the runner hears of the
/// result. Does nothing in a process that is not a scenario's init.
pub fn end_others() {
    if !INIT.load(Ordering::SeqCst) {
        return;
    }
    // SAFETY: plain system call; from init of a PID namespace, -1 means every other process of it.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let until = std::time::Instant::now() + REAP_OTHERS_TIMEOUT;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            // ECHILD: nothing left.
            Err(_) => return,
        }
    }
}

/// How long [`end_others`] waits for killed processes to be gone: SIGKILL ends a process within microseconds
/// unless it is stuck in the kernel, which the namespace's end then takes care of.
const REAP_OTHERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the relaying parent that the scenario is done and what its exit code is; the parent exits with it at
/// once. Call it last, after everything the runner reads (report files, the summary on stdout) is written and
/// the standard streams are closed. Does nothing in a process without a relaying parent.
pub fn report_done(code: u8) {
    let Ok(mut done) = DONE.lock() else { return };
    if let Some(mut pipe) = done.take() {
        // If the parent is gone, there is nobody to tell.
        let _ = pipe.write_all(&[code]);
    }
}

/// The exit code the scenario process reported with [`report_done`], or `None` when it ended without one (the
/// pipe closed with its exit). The wait is as long as the child's life, which the runner bounds.
fn reported_exit(done: OwnedFd) -> Option<i32> {
    let mut code = [0u8; 1];
    let mut pipe = File::from(done);
    loop {
        match pipe.read(&mut code) {
            Ok(1) => return Some(i32::from(code[0])),
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// SIGTERM and SIGINT to the relaying parent SIGKILL the scenario process, whose exit the parent then relays.
fn forward_stop_signals() -> Result<()> {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // SAFETY: the handler only loads an atomic and calls kill(2); the struct is initialised before use.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = kill_scenario as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::last_os(format!("sigaction({name}) in the scenario's relaying parent")));
        }
    }
    Ok(())
}

/// Points stdout at /dev/null (best effort: the runner then only takes the summary a little later).
fn stdout_to_null() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: plain system call on two descriptors this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`.
fn die_with_parent() -> Result<()> {
    // SAFETY: plain system call with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::last_os("prctl(PR_SET_PDEATHSIG, SIGKILL) for the scenario process"));
    }
    Ok(())
}

/// Whether the write end of the pipe is closed, i.e. the parent has already exited. getppid() cannot tell:
/// in the new namespace it is 0 whether the parent lives or not.
fn parent_gone(parent_alive: &OwnedFd) -> Result<bool> {
    let mut fds = [PollFd::new(parent_alive.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN))),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll the relaying parent's pipe", e)),
        }
    }
}

/// Waits for `child` and turns how it ended into an exit code. The wait is as long as the child's life, which
/// the runner bounds: past the scenario's deadline and grace it SIGKILLs this process, and the child with it.
fn relay_exit(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                eprintln!("netfault: the scenario process was killed by {signal}");
                return SIGNAL_EXIT_BASE + signal as i32;
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("netfault: waitpid({child}) for the scenario process: {e}");
                return 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_multithreaded_process() {
        // libtest runs this test on a thread of its own: forking here would copy one thread of many.
        let error = become_init().unwrap_err().to_string();
        assert!(error.contains("single-threaded"), "{error}");
    }
}

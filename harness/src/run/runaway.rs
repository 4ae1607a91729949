//! The guard against a real-time thread that never blocks (`prlimit --rttime`): the kernel signals a thread
//! that has used [`RUNAWAY_LIMIT`] of CPU at a real-time policy without sleeping, and the signal makes it an
//! ordinary thread again and names it, so that the run reports a harness defect instead of starving the
//! machine.
//!
//! Why: the kernel's RT throttling (`kernel.sched_rt_runtime_us`) keeps 5 % of each CPU for ordinary threads,
//! but none for real-time threads of the same priority. All of a scenario's real-time threads are SCHED_FIFO 1
//! (`priority`), so two of them that spin, one per CPU, leave every other one runnable and never run. It
//! happened once in a `cargo nextest run` here: two hosts' set-up threads of a router scenario used 169 s of CPU
//! each in user space while the third waited, runnable, in the middle of making its namespace; every scenario
//! set up beside it was killed 180 s later (51 tests failed). The threads of a scenario block in system calls
//! nearly all the time: 5 s of CPU without a sleep is a defect, never a measurement.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// CPU time a real-time thread may use without blocking before it is made ordinary (`RLIMIT_RTTIME`). After
/// each signal the kernel raises the process's limit by a second.
const RUNAWAY_LIMIT: Duration = Duration::from_secs(5);

/// Threads made ordinary so far, the first one's thread id and name (`comm`, 16 bytes, in two words: the
/// signal handler may only store).
static RUNAWAYS: AtomicU32 = AtomicU32::new(0);
static FIRST_TID: AtomicI32 = AtomicI32::new(0);
static FIRST_NAME: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Where the first one was when the signal came: the instruction it would have run next.
static FIRST_AT: AtomicU64 = AtomicU64::new(0);

static INSTALL: Once = Once::new();

/// The soft limit the process had before [`install`] (`RLIM_INFINITY` unless someone set one), for the
/// programs `exec` steps start ([`restore_for_exec`]).
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(libc::RLIM_INFINITY);

/// The limit set, in microseconds, for the report.
static LIMIT_MICROS: AtomicU64 = AtomicU64::new(0);

/// Installs the guard for this process, once: the SIGXCPU handler, then `RLIMIT_RTTIME` (soft limit
/// [`RUNAWAY_LIMIT`], the hard limit left as it is). A failure leaves the process unguarded, as before.
pub fn install() {
    INSTALL.call_once(|| {
        let _ = install_with(RUNAWAY_LIMIT);
    });
}

fn install_with(limit: Duration) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe system calls and stores
    // into atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction =
            on_runaway as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGXCPU, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_RTTIME, &mut current) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ORIGINAL_SOFT.store(current.rlim_cur, Ordering::SeqCst);
        let wanted = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
        let guarded = libc::rlimit { rlim_cur: wanted.min(current.rlim_max), rlim_max: current.rlim_max };
        LIMIT_MICROS.store(guarded.rlim_cur, Ordering::SeqCst);
        if libc::setrlimit(libc::RLIMIT_RTTIME, &guarded) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Between fork and exec of a program an `exec` step starts: gives it the process's limit as it was before
/// [`install`], since exec resets the SIGXCPU handler and a real-time program of the user's own would be killed
/// by the signal's default action instead. Only system calls: safe in a `pre_exec` hook.
pub fn restore_for_exec() -> std::io::Result<()> {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_RTTIME, &mut current) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let original = libc::rlimit { rlim_cur: ORIGINAL_SOFT.load(Ordering::SeqCst), rlim_max: current.rlim_max };
        if libc::setrlimit(libc::RLIMIT_RTTIME, &original) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// SIGXCPU, on the thread that used the limit (the kernel sends it from that thread's own tick): makes it
/// ordinary, and keeps the first one's name and where it was.
extern "C" fn on_runaway(_: c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let ordinary = libc::sched_param { sched_priority: 0 };
    // SAFETY: system calls on the calling thread (pid 0, PR_GET_NAME into a 16-byte buffer), async-signal-safe.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_OTHER, &ordinary);
        if RUNAWAYS.fetch_add(1, Ordering::SeqCst) == 0 {
            FIRST_TID.store(libc::gettid(), Ordering::SeqCst);
            let mut name = [0u8; 16];
            libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr());
            for (word, bytes) in FIRST_NAME.iter().zip(name.chunks_exact(8)) {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(bytes);
                word.store(u64::from_ne_bytes(eight), Ordering::SeqCst);
            }
            if let Some(context) = context.cast::<libc::ucontext_t>().as_ref() {
                FIRST_AT.store(interrupted_at(context), Ordering::SeqCst);
            }
        }
    }
}

/// The instruction pointer the signal interrupted.
#[cfg(target_arch = "x86_64")]
fn interrupted_at(context: &libc::ucontext_t) -> u64 {
    context.uc_mcontext.gregs[libc::REG_RIP as usize] as u64
}

#[cfg(target_arch = "aarch64")]
fn interrupted_at(context: &libc::ucontext_t) -> u64 {
    context.uc_mcontext.pc
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn interrupted_at(_: &libc::ucontext_t) -> u64 {
    0
}

/// `addr2line`'s view of an address of this process: the file it lies in and its offset there, e.g.
/// `/usr/bin/netfault+0x4b1c20`.
fn place_of(address: u64) -> String {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables and fills `info`; the names it gives live as long as the
    // object, which stays loaded.
    let found = unsafe { libc::dladdr(address as *const libc::c_void, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return format!("{address:#x}");
    }
    // SAFETY: a non-null dli_fname is a NUL-terminated string of the loader's.
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    // The loader keeps the program's path as it was started (relative, for one started so).
    let file = std::fs::canonicalize(&file).map_or(file, |path| path.display().to_string());
    format!("{file}+{:#x}", address.wrapping_sub(info.dli_fbase as u64))
}

/// What the guard did in this process, as a harness error: `None` when no real-time thread ran away.
pub fn report() -> Option<String> {
    let count = RUNAWAYS.load(Ordering::SeqCst);
    if count == 0 {
        return None;
    }
    let mut name = Vec::with_capacity(16);
    for word in &FIRST_NAME {
        name.extend_from_slice(&word.load(Ordering::SeqCst).to_ne_bytes());
    }
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]).into_owned();
    let more = match count {
        1 => String::new(),
        n => format!(" (and {} more after it)", n - 1),
    };
    Some(format!(
        "the real-time thread {name} (tid {}){more} used {:?} of CPU without blocking once, and was made ordinary so \
         that the others could run (RLIMIT_RTTIME); it was at {} (`addr2line -f -C -e FILE OFFSET` names the \
         function): a harness defect, whatever the kernel did; please report it with this report",
        FIRST_TID.load(Ordering::SeqCst),
        Duration::from_micros(LIMIT_MICROS.load(Ordering::SeqCst)),
        place_of(FIRST_AT.load(Ordering::SeqCst)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Set for the copy of this test binary that runs the spinning thread in a process of its own: the limit
    /// is process-wide, and the other tests' real-time threads must not meet it.
    const CHILD_ENV: &str = "NETFAULT_RUNAWAY_TEST_CHILD";

    /// The `Max realtime timeout` line of /proc/self/limits of a program started from here, its limit given back
    /// before exec or not.
    fn realtime_timeout(restored: bool) -> String {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("cat");
        command.arg("/proc/self/limits");
        if restored {
            // SAFETY: the hook makes system calls only.
            unsafe {
                command.pre_exec(restore_for_exec);
            }
        }
        let limits = String::from_utf8(command.output().unwrap().stdout).unwrap();
        limits.lines().find(|line| line.starts_with("Max realtime timeout")).unwrap().to_string()
    }

    #[test]
    fn a_real_time_thread_that_never_blocks_is_made_ordinary_and_named() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let before = realtime_timeout(false);
            install_with(Duration::from_millis(300)).expect("RLIMIT_RTTIME and the SIGXCPU handler");
            assert!(realtime_timeout(false).contains("300000"), "{}", realtime_timeout(false));
            assert_eq!(realtime_timeout(true), before, "an exec step's program gets the limit as it was");
            let spinner = std::thread::Builder::new()
                .name("spinner".into())
                .spawn(|| {
                    assert_eq!(crate::run::priority::raise_current_thread().ok(), Some(true), "needs CAP_SYS_NICE");
                    let started = Instant::now();
                    // Spins, never blocking, until the guard has made it ordinary: at most 5 s. Nearly all of it
                    // in this loop's code, where the signal then finds it (not in the clock's vDSO).
                    while RUNAWAYS.load(Ordering::SeqCst) == 0 {
                        for _ in 0..1_000_000 {
                            if RUNAWAYS.load(Ordering::Relaxed) > 0 {
                                break;
                            }
                            std::hint::spin_loop();
                        }
                        assert!(started.elapsed() < Duration::from_secs(5), "still real-time after 5 s");
                    }
                    assert_eq!(crate::run::priority::current_policy(), libc::SCHED_OTHER, "made ordinary");
                    started.elapsed()
                })
                .unwrap();
            let spun = spinner.join().unwrap();
            let report = report().expect("the guard reports the thread");
            assert!(report.contains("spinner"), "{report}");
            // Where it spun: this test binary, in this test's loop.
            let exe = std::env::current_exe().unwrap();
            assert!(report.contains(&format!("{}+0x", exe.display())), "{report}");
            assert!(report.contains("used 300ms of CPU"), "{report}");
            // The kernel counts the limit in ticks (4 ms at HZ=250) and checks it on the next tick after.
            assert!(spun >= Duration::from_millis(290) && spun < Duration::from_secs(2), "{spun:?}");
            return;
        }
        assert!(report().is_none(), "nothing ran away in this process");
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "run::runaway::tests::a_real_time_thread_that_never_blocks_is_made_ordinary_and_named"])
            .args(["--test-threads", "1", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "the spinning copy failed:\n{text}");
        assert!(text.contains("1 passed"), "the spinning copy ran no test:\n{text}");
    }
}

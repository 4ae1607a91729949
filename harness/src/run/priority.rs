//! Real-time scheduling for the threads whose clock readings are the measurement: each host's program thread
//! (a step's end is stamped when the blocked call returns to it), the socket observers (a sample is stamped
//! when requested) and the hub (which switches faults on
//! events). `chrt --fifo --reset-on-fork 1` for the calling thread only.
//!
//! Why: on a loaded machine a thread woken from a blocking call waits for a CPU behind every runnable
//! ordinary thread. Measured with 200 scenarios at once on 2 cores: program threads started up to 0.3 s after
//! the hub woke them, and steps ended up to 0.6 s after the kernel's timers (which fire in softirq context and
//! stayed within milliseconds). A SCHED_FIFO thread runs as soon as it is woken. These threads block in
//! system calls nearly all the time, and the kernel's RT throttling (`kernel.sched_rt_runtime_us`) bounds
//! what a runaway one could take. Threads and programs they start get the ordinary policy back
//! (SCHED_RESET_ON_FORK), so an `exec`'d program never runs real-time.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

/// The lowest real-time priority: above every ordinary thread, below the kernel's own real-time threads.
const PRIORITY: libc::c_int = 1;

/// Makes the calling thread SCHED_FIFO at the lowest real-time priority (`chrt --fifo --reset-on-fork -p 1
/// <tid>`). Without CAP_SYS_NICE (rootless mode) the kernel refuses: the thread keeps its ordinary policy and
/// the run goes on; `Ok(false)` says so.
pub fn raise_current_thread() -> io::Result<bool> {
    set_current_thread(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, PRIORITY)
}

/// [`raise_current_thread`] for a thread just spawned, done by the thread that spawned it (`chrt --fifo
/// --reset-on-fork -p 1 <tid>`), so that the new thread is real-time from its first run.
///
/// Why not let it raise itself: until it first runs it is an ordinary thread (the spawner's real-time policy is
/// reset on fork), and with many scenarios at once the real-time threads leave ordinary ones little CPU. With the
/// suite at once on 2 CPUs (perf sched), capture threads first ran up to 1.8 s after they were spawned, 41 of
/// 787 more than 64 ms: a transfer that started meanwhile filled the capture's ring before its thread ever read
/// it, and the kernel dropped the rest (reorder-beyond-rtt: the last 828 of 4,940 frames).
pub fn raise_spawned<T>(thread: &JoinHandle<T>) -> io::Result<bool> {
    let param = libc::sched_param { sched_priority: PRIORITY };
    // SAFETY: the handle keeps the thread joinable, so its pthread_t stays valid for the call; `param` lives
    // across it.
    let rc = unsafe {
        libc::pthread_setschedparam(thread.as_pthread_t(), libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    match rc {
        0 => Ok(true),
        libc::EPERM => Ok(false),
        _ => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// The real-time priority of the impairment wire's threads: one above the harness's own threads, because the
/// wire is the network the scenario runs on, and a frame it releases late is a delay nobody asked for (the
/// captures and observers stamp with kernel times and keep their frames in kernel buffers meanwhile).
const WIRE_PRIORITY: libc::c_int = PRIORITY + 1;

/// [`raise_current_thread`] for a wire thread: `chrt --fifo --reset-on-fork -p 2 <tid>`.
pub fn raise_wire_thread() -> io::Result<bool> {
    set_current_thread(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, WIRE_PRIORITY)
}

/// Gives the calling thread the ordinary policy back (`chrt --other -p 0 <tid>`), before work that may take
/// long (teardown, decoding) and must not hold a CPU against everything else.
pub fn lower_current_thread() -> io::Result<()> {
    set_current_thread(libc::SCHED_OTHER, 0).map(|_| ())
}

fn set_current_thread(policy: libc::c_int, priority: libc::c_int) -> io::Result<bool> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPERM) => Ok(false),
        _ => Err(error),
    }
}

/// The calling thread's scheduling policy (`chrt -p <tid>`), without the reset-on-fork flag.
#[cfg(test)]
pub fn current_policy() -> libc::c_int {
    // SAFETY: plain system call on the calling thread.
    unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
}

/// Restricts the calling thread, and the threads it spawns from then on, to the CPU it is on (`taskset -p`);
/// returns that CPU.
#[cfg(test)]
pub fn pin_to_one_cpu() -> usize {
    // SAFETY: plain system call without memory arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu: {}", io::Error::last_os_error());
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE (the kernel numbered it), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: `set` lives across the call and the size passed is its size.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity: {}", io::Error::last_os_error());
    cpu as usize
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::userns::{test_privilege, Privilege};

    #[test]
    fn a_thread_is_raised_and_lowered_and_its_threads_start_ordinary() {
        if test_privilege() == Privilege::Rootless {
            // CAP_SYS_NICE of a user namespace does not count for the scheduler: the thread stays ordinary.
            assert!(!raise_current_thread().unwrap(), "rootless: the kernel refuses SCHED_FIFO");
            assert_eq!(current_policy(), libc::SCHED_OTHER);
            return;
        }
        std::thread::spawn(|| {
            assert!(raise_current_thread().unwrap(), "as root, with CAP_SYS_NICE");
            assert_eq!(current_policy(), libc::SCHED_FIFO);
            let child = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(child, libc::SCHED_OTHER, "reset on fork: a thread it starts is ordinary");
            lower_current_thread().unwrap();
            assert_eq!(current_policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    /// A thread raised by its spawner is real-time before it first runs: the spawner, real-time and alone on
    /// one CPU with its children, does not let an ordinary child run before it blocks.
    #[test]
    fn a_spawned_thread_is_real_time_before_it_first_runs() {
        if test_privilege() == Privilege::Rootless {
            let child = std::thread::spawn(current_policy);
            assert!(!raise_spawned(&child).unwrap(), "rootless: the kernel refuses SCHED_FIFO");
            assert_eq!(child.join().unwrap(), libc::SCHED_OTHER);
            return;
        }
        std::thread::spawn(|| {
            pin_to_one_cpu();
            assert!(raise_current_thread().unwrap());
            let (started_tx, started) = std::sync::mpsc::channel();
            let child = std::thread::spawn(move || {
                let _ = started_tx.send(());
                current_policy()
            });
            assert!(raise_spawned(&child).unwrap(), "as root, with CAP_SYS_NICE");
            assert!(started.try_recv().is_err(), "the child ran before its spawner blocked");
            assert_eq!(child.join().unwrap(), libc::SCHED_FIFO, "the child's first instruction ran real-time");
            let grandchild = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(grandchild, libc::SCHED_OTHER, "reset on fork still applies to the spawner's other threads");
            lower_current_thread().unwrap();
        })
        .join()
        .unwrap();
    }
}

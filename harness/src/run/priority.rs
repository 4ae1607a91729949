//! Real-time scheduling for the threads whose clock readings are the measurement: each host's program thread
//! (a step's end is stamped when the blocked call returns to it), the socket observers (a sample is stamped
//! when requested) and the hub (which switches faults on
//! events); and the set-up's threads (the hub and each host's), so that a busy machine does not stretch it.
//! `chrt --fifo --reset-on-fork 1` for the calling thread only.
//!
//! Why: on a loaded machine a thread woken from a blocking call waits for a CPU behind every runnable
//! ordinary thread. Measured with 200 scenarios at once on 2 cores: program threads started up to 0.3 s after
//! the hub woke them, and steps ended up to 0.6 s after the kernel's timers (which fire in softirq context and
//! stayed within milliseconds). A SCHED_FIFO thread runs as soon as it is woken. These threads block in
//! system calls nearly all the time; the kernel's RT throttling (`kernel.sched_rt_runtime_us`) bounds what a
//! runaway one could take from ordinary threads, and `runaway` what it could take from the others of the
//! same real-time priority. Threads and programs they start get the ordinary policy back
//! (SCHED_RESET_ON_FORK), so an `exec`'d program never runs real-time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// A thread that runs only on CPUs nothing else wants (SCHED_IDLE, `chrt --idle 0`) until its result is wanted,
/// and from then on as an ordinary thread: background work started early, to soak up the gaps of a set-up whose
/// threads wait on the kernel and on each other. Shared by the thread and whoever will wait for it. Only where
/// the thread can be made ordinary again (CAP_SYS_NICE: leaving SCHED_IDLE is privileged); elsewhere it stays
/// ordinary throughout.
#[derive(Debug, Default)]
pub struct Background {
    wanted: AtomicBool,
}

impl Background {
    /// Called by the thread itself, first thing: a spawner that lowered it after the spawn let it run as an
    /// ordinary thread until then, ahead of the spawner itself (measured: the set-up 1.4 ms longer under load).
    pub fn start_idle(&self) {
        if !may_leave_idle() {
            return;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` lives across the calls.
        unsafe {
            // Wanted before it got here, it would stay idle: the flag is set before the policy is asked for,
            // so either that request comes after this one, or this thread sees the flag and undoes it.
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 && self.wanted.load(Ordering::SeqCst) {
                libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            }
        }
    }

    /// Called by whoever will wait for `thread`: ordinary from now on (`chrt --other -p 0 <tid>`).
    pub fn want<T>(&self, thread: &JoinHandle<T>) {
        self.wanted.store(true, Ordering::SeqCst);
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the handle keeps the thread joinable, so its pthread_t stays valid for the call; `param` lives
        // across it. Refused (not privileged) the thread never left the ordinary policy.
        unsafe { libc::pthread_setschedparam(thread.as_pthread_t(), libc::SCHED_OTHER, &param) };
    }
}

/// Whether this process may move a thread out of SCHED_IDLE: CAP_SYS_NICE as the scheduler counts it, i.e. root
/// in the initial user namespace, not rootless mode (nor a process that never asked, which is left alone).
fn may_leave_idle() -> bool {
    crate::run::userns::acquired() == Some(crate::run::userns::Privilege::Root)
}

/// CPU time this process's threads have spent real-time, by role: the thread's name up to its first `-`
/// (`capture-client` is a `capture`; the hub is `main`). What a run reports as `realtime_cpu_ms`.
static REALTIME_CPU: Mutex<BTreeMap<String, Duration>> = Mutex::new(BTreeMap::new());

/// The calling thread's stretch at real-time priority: its role and its CPU time when raised. Charged to
/// [`REALTIME_CPU`] when it is lowered or ends.
struct RealTimeStretch(RefCell<Option<(String, Duration)>>);

impl RealTimeStretch {
    /// Starts the stretch of a thread its spawner raised before it first ran ([`raise_spawned`]): all its CPU
    /// time so far was real-time.
    fn adopt_raised_by_spawner(&self) {
        if current_policy() == libc::SCHED_FIFO {
            self.begin_at(Duration::ZERO);
        }
    }

    fn begin(&self) {
        self.begin_at(thread_cpu_time());
    }

    /// Starts a stretch that counts the thread's CPU time from `raised_at`, unless one is running already.
    fn begin_at(&self, raised_at: Duration) {
        let mut stretch = self.0.borrow_mut();
        if stretch.is_none() {
            let name = std::thread::current().name().unwrap_or("unnamed").to_string();
            *stretch = Some((role_of(&name), raised_at));
        }
    }

    fn end(&self) {
        if let Some((role, raised_at)) = self.0.borrow_mut().take() {
            let used = thread_cpu_time().saturating_sub(raised_at);
            *REALTIME_CPU.lock().unwrap_or_else(PoisonError::into_inner).entry(role).or_default() += used;
        }
    }
}

impl Drop for RealTimeStretch {
    fn drop(&mut self) {
        self.end();
    }
}

/// A thread's role: its name up to its first `-`.
fn role_of(name: &str) -> String {
    name.split('-').next().unwrap_or_default().to_string()
}

thread_local! {
    static STRETCH: RealTimeStretch = const { RealTimeStretch(RefCell::new(None)) };
}

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`); zero where the clock is refused.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec the call fills in.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Counts what the calling thread has spent real-time so far, and goes on counting from now, without changing
/// its priority: for a thread about to report its end, whose report the run's own may come before it exits.
pub fn count_realtime_cpu() {
    let _ = STRETCH.try_with(|stretch| {
        stretch.adopt_raised_by_spawner();
        if stretch.0.borrow().is_some() {
            stretch.end();
            stretch.begin();
        }
    });
}

/// CPU time this process's threads have spent real-time so far, by role (ended stretches only: call it once
/// the threads are lowered or gone, or have counted theirs).
pub fn realtime_cpu() -> BTreeMap<String, Duration> {
    REALTIME_CPU.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The real-time priority of the impairment wire's threads: one above the harness's own threads, because the
/// wire is the network the scenario runs on, and a frame it releases late is a delay nobody asked for (the
/// captures and observers stamp with kernel times and keep their frames in kernel buffers meanwhile).
const WIRE_PRIORITY: libc::c_int = PRIORITY + 1;

/// [`raise_current_thread`] for a wire thread: `chrt --fifo --reset-on-fork -p 2 <tid>`.
pub fn raise_wire_thread() -> io::Result<bool> {
    set_current_thread(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, WIRE_PRIORITY)
}

/// Keeps the calling thread, and the threads it spawns from then on, on the CPU it runs on now (`taskset -p -c
/// <cpu> <tid>`); returns that CPU.
#[cfg(test)]
pub fn pin_current_thread() -> io::Result<usize> {
    // SAFETY: plain system call without arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel numbered `cpu`, so it is below CPU_SETSIZE and its bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` lives across the call and the size passed is its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cpu)
}

/// Gives the calling thread the ordinary policy back (`chrt --other -p 0 <tid>`), before work that may take
/// long (teardown, decoding) and must not hold a CPU against everything else.
pub fn lower_current_thread() -> io::Result<()> {
    set_current_thread(libc::SCHED_OTHER, 0).map(|_| ())
}

/// Runs `f` with the calling thread at the ordinary policy, then gives it back its real-time one if it had it:
/// bulk work of a thread that must wake at once but need not finish at once (a socket observer's paced
/// dumps), so that it never holds a CPU against the kernel's own ordinary threads (`ksoftirqd`).
pub fn ordinary_while<T>(f: impl FnOnce() -> T) -> T {
    let raised = current_policy() == libc::SCHED_FIFO && lower_current_thread().is_ok();
    let result = f();
    if raised {
        // Refused only without CAP_SYS_NICE, which the thread had a moment ago.
        let _ = raise_current_thread();
    }
    result
}

fn set_current_thread(policy: libc::c_int, priority: libc::c_int) -> io::Result<bool> {
    let param = libc::sched_param { sched_priority: priority };
    let _ = STRETCH.try_with(RealTimeStretch::adopt_raised_by_spawner);
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        // A thread being torn down has no stretch left to charge: its end was charged already.
        let _ = STRETCH.try_with(|stretch| if policy == libc::SCHED_OTHER { stretch.end() } else { stretch.begin() });
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPERM) => Ok(false),
        _ => Err(error),
    }
}

/// The calling thread's scheduling policy (`chrt -p <tid>`), without the reset-on-fork flag.
pub fn current_policy() -> libc::c_int {
    // SAFETY: plain system call on the calling thread.
    unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
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
            count_realtime_cpu();
            assert_eq!(current_policy(), libc::SCHED_FIFO, "counting leaves the thread real-time");
            let inside = ordinary_while(current_policy);
            assert_eq!((inside, current_policy()), (libc::SCHED_OTHER, libc::SCHED_FIFO), "ordinary only inside");
            lower_current_thread().unwrap();
            assert_eq!(current_policy(), libc::SCHED_OTHER);
            assert_eq!(ordinary_while(current_policy), libc::SCHED_OTHER);
            assert_eq!(current_policy(), libc::SCHED_OTHER, "an ordinary thread is not raised afterwards");
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
            pin_current_thread().unwrap();
            assert!(raise_current_thread().unwrap());
            let (started_tx, started) = crate::run::handoff::channel();
            let child = std::thread::Builder::new()
                .name("spawnraised-test".into())
                .spawn(move || {
                    let _ = started_tx.send(());
                    let policy = current_policy();
                    let started = std::time::Instant::now();
                    let mut spin = 0u64;
                    while started.elapsed() < Duration::from_millis(10) {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                    count_realtime_cpu();
                    policy
                })
                .unwrap();
            assert!(raise_spawned(&child).unwrap(), "as root, with CAP_SYS_NICE");
            assert!(started.try_recv().is_err(), "the child ran before its spawner blocked");
            assert_eq!(child.join().unwrap(), libc::SCHED_FIFO, "the child's first instruction ran real-time");
            let counted = realtime_cpu().get("spawnraised").copied().unwrap_or_default();
            assert!(counted > Duration::ZERO, "a thread raised by its spawner counts its real-time CPU");
            let grandchild = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(grandchild, libc::SCHED_OTHER, "reset on fork still applies to the spawner's other threads");
            lower_current_thread().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_cpu_a_thread_spends_real_time_is_counted_under_its_role() {
        let spun = std::thread::Builder::new()
            .name("spinning-test".into())
            .spawn(|| {
                let raised = raise_current_thread().unwrap();
                let started = std::time::Instant::now();
                let mut spin = 0u64;
                while started.elapsed() < Duration::from_millis(30) {
                    spin = std::hint::black_box(spin.wrapping_add(1));
                }
                lower_current_thread().unwrap();
                // Ordinary again: this is not counted.
                while started.elapsed() < Duration::from_millis(60) {
                    spin = std::hint::black_box(spin.wrapping_add(1));
                }
                raised
            })
            .unwrap()
            .join()
            .unwrap();
        let counted = realtime_cpu().get("spinning").copied();
        if !spun {
            assert_eq!(counted, None, "rootless: never real-time, nothing counted");
            return;
        }
        let counted = counted.expect("counted under the name up to its first -");
        // 30 ms of wall time busy: some of it on a CPU, none of the ordinary 30 ms after.
        assert!(counted > Duration::ZERO && counted <= Duration::from_millis(40), "{counted:?}");
    }

    #[test]
    fn a_background_thread_is_idle_until_wanted_then_ordinary() {
        use std::sync::{Arc, Barrier};
        // Each step waits for the other side at a barrier: idle, read, wanted, read.
        let steps: [Arc<Barrier>; 3] = std::array::from_fn(|_| Arc::new(Barrier::new(2)));
        let background = Arc::new(Background::default());
        let (at, own) = (steps.clone(), Arc::clone(&background));
        let thread = std::thread::spawn(move || {
            own.start_idle();
            at[0].wait();
            let idle = current_policy();
            at[1].wait();
            at[2].wait();
            (idle, current_policy())
        });
        steps[0].wait();
        steps[1].wait();
        background.want(&thread);
        steps[2].wait();
        let (idle, ordinary) = thread.join().unwrap();
        assert_eq!(ordinary, libc::SCHED_OTHER);
        match test_privilege() {
            Privilege::Root => assert_eq!(idle, libc::SCHED_IDLE),
            // Leaving SCHED_IDLE needs CAP_SYS_NICE in the initial user namespace: never entered.
            Privilege::Rootless => assert_eq!(idle, libc::SCHED_OTHER),
        }
    }

    #[test]
    fn a_background_thread_wanted_before_it_ran_stays_ordinary() {
        use std::sync::{Arc, Barrier};
        let started = Arc::new(Barrier::new(2));
        let background = Arc::new(Background::default());
        let (go, own) = (Arc::clone(&started), Arc::clone(&background));
        let thread = std::thread::spawn(move || {
            go.wait();
            own.start_idle();
            current_policy()
        });
        background.want(&thread);
        started.wait();
        assert_eq!(thread.join().unwrap(), libc::SCHED_OTHER);
    }
}

//! When the runner starts its next scenario process on this machine's CPUs: at most one setting up per CPU,
//! and only while the scenario processes running used less than [`CPU_SHARE`] of the CPUs over the last
//! [`WINDOW`] (`/proc/<pid>/stat` utime + stime, their children's included: `top` for the suite's processes).
//!
//! Why: the kernel does its deferred network and timer work (softirqs spilled over to `ksoftirqd`) in
//! ordinary threads, and netfault's own measuring threads are real-time. A machine whose CPUs the scenarios
//! keep busy therefore delays the very timers and packets the scenarios assert on; before Linux 6.5 it
//! delays all of them, since while `ksoftirqd` waits for a CPU no softirq runs at interrupt exit either.
//! Measured in a 2-vCPU TCG VM running Debian's 6.1 with the 67 scenarios started at once: CPUs 96% busy,
//! `ksoftirqd` waited 89.8 s for a CPU, and 28 scenarios failed on late keepalive probes, late SYN-ACKs and
//! RTOs. On a fast machine the gate costs only the set-ups' serialisation: scenarios use a few percent of a
//! CPU, so every one of them still runs at once.
//!
//! Bulk transfers through the wire (impairments on a transfer of 1 MiB or more) run one at a time: the wire
//! threads of two such scenarios take turns on the same CPUs and each holds the other's frames back. Measured
//! in the 6.12 TCG VM with everything at once: impair/rate ran beside impair/loss-10pct for its whole
//! transfer, its wire sent 595 frames more than 10 ms late (55 ms at most), and its 4 MiB took 3.73 s for
//! 3.51 s; on this machine, all 72 at once, impair/reorder's wire sent 859 frames more than 10 ms late. One
//! at a time, each has the CPUs the others leave.
//!
//! Bulk transfers through the wire run one at a time across this machine's netfault processes too (an `flock`
//! on `machine_bulk_lock_path`): `cargo nextest run` runs each scenario, and each report test's copy of it,
//! in a test process of its own with a gate of its own, which alone would start every bulk transfer of the
//! suite at once. (How much this reduces the nextest profile's failures on a busy machine is not measured:
//! those also come from everything else starting at once, which only a machine-wide CPU share would order.)
//!
//! Who goes first: of the scenarios waiting, the one with the longest deadline (then the one that asked first),
//! as a suite ends no sooner than its longest scenario does: a long one held back while short ones start makes
//! the suite that much longer. The deadline is the only length a scenario declares before it runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The share of the machine's CPUs the running scenario processes may keep busy before the next one waits:
/// the rest is for the kernel's own work, the programs the scenarios `exec`, and the wake-up latency of
/// everything that measures. Measured in the 6.1 TCG VM (2 vCPUs, 72 scenarios): with half, the guest's CPUs
/// were still 83% busy, `ksoftirqd` waited 29.8 s for a CPU and 10 scenarios failed on late timers.
pub const CPU_SHARE: f64 = 0.25;

/// The span the scenarios' CPU use is measured over: long against the 10 ms granule of `/proc/<pid>/stat`,
/// short against a scenario.
pub const WINDOW: Duration = Duration::from_millis(250);

/// How often a waiting start looks again (a scenario ending or reaching its programs wakes it sooner).
const RECHECK: Duration = Duration::from_millis(50);

/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s times on every Linux architecture netfault runs on.
const TICKS_PER_SECOND: f64 = 100.0;

static MACHINE: LazyLock<CpuGate> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    CpuGate::with_bulk_lock(cpus, &machine_bulk_lock_path())
});

/// The file whose `flock` a runner holds while it runs a bulk transfer through the wire: in the temporary
/// directory (`$TMPDIR`, else `/tmp`), which every netfault process of the machine sees.
fn machine_bulk_lock_path() -> PathBuf {
    std::env::temp_dir().join("netfault-bulk.lock")
}

/// The gate of one runner.
#[derive(Debug)]
pub struct CpuGate {
    cpus: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// Locked (`flock -x`) while a bulk transfer of this runner runs; `None` where it could not be opened (the
    /// gate then orders this runner's bulk transfers only).
    bulk_lock: Option<File>,
}

#[derive(Debug, Default)]
struct State {
    /// Admitted and not yet running their programs.
    setting_up: usize,
    /// Scenario processes spawned and not yet ended, by pid: their CPU ticks at the last reading.
    processes: BTreeMap<u32, u64>,
    /// When the CPU use was last read, and what it was then, in CPUs.
    read_at: Option<Instant>,
    busy_cpus: f64,
    /// The starts waiting, in the order they go: longest deadline first, then by ticket (first come); and
    /// whether each is a bulk transfer through the wire.
    waiting: BTreeSet<(Reverse<Duration>, u64, bool)>,
    next_ticket: u64,
    /// Bulk transfers through the wire admitted and not yet ended: at most one.
    bulk: usize,
    /// Whether this runner holds the machine's bulk lock ([`CpuGate::with_bulk_lock`]).
    holds_machine_bulk: bool,
}

/// One admitted scenario: it counts as setting up until [`Admission::programs_started`], and its process's CPU
/// counts from [`Admission::spawned`]; everything is given back when it is dropped.
#[derive(Debug)]
pub struct Admission<'a> {
    gate: &'a CpuGate,
    pid: Option<u32>,
    setting_up: bool,
    bulk: bool,
}

impl CpuGate {
    /// The gate every scenario this process starts goes through.
    pub fn of_this_machine() -> &'static CpuGate {
        &MACHINE
    }

    pub fn new(cpus: usize) -> CpuGate {
        CpuGate { cpus: cpus.max(1), state: Mutex::new(State::default()), changed: Condvar::new(), bulk_lock: None }
    }

    /// [`CpuGate::new`], whose bulk transfers also wait for those of every other gate locking the file at
    /// `path`. Opened read-only where another user made it (an `flock` needs no write access).
    pub fn with_bulk_lock(cpus: usize, path: &Path) -> CpuGate {
        let bulk_lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .or_else(|_| File::open(path))
            .ok();
        CpuGate { bulk_lock, ..CpuGate::new(cpus) }
    }

    /// Whether a bulk transfer may start now: none of this runner's runs, and the machine's lock is this
    /// runner's (taken now if no other process holds it). Asked only while a bulk transfer waits.
    fn bulk_slot_free(&self, state: &mut State) -> bool {
        if state.bulk > 0 {
            return false;
        }
        if !state.holds_machine_bulk {
            state.holds_machine_bulk = self.bulk_lock.as_ref().is_none_or(|lock| {
                // SAFETY: flock on a descriptor the gate owns; non-blocking.
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
            });
        }
        state.holds_machine_bulk
    }

    /// Gives the machine's lock back when this runner neither runs nor waits to run a bulk transfer.
    fn release_bulk_slot_if_unused(&self, state: &mut State) {
        let waiting = state.waiting.iter().any(|(_, _, bulk)| *bulk);
        if state.holds_machine_bulk && state.bulk == 0 && !waiting {
            if let Some(lock) = &self.bulk_lock {
                // SAFETY: flock on a descriptor the gate owns.
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            }
            state.holds_machine_bulk = false;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a scenario whose deadline is `deadline` may start (at once when none is setting up or
    /// running), or until `stop` says to give up (`None`). While several wait, the longest deadline goes first,
    /// except that a `bulk` transfer through the wire waits while another one runs, and those behind it go.
    pub fn admit(&self, deadline: Duration, bulk: bool, stop: impl Fn() -> bool) -> Option<Admission<'_>> {
        self.admit_by(deadline, bulk, stop, cpu_ticks)
    }

    fn admit_by(
        &self,
        deadline: Duration,
        bulk: bool,
        stop: impl Fn() -> bool,
        ticks: impl Fn(u32) -> Option<u64>,
    ) -> Option<Admission<'_>> {
        let mut state = self.lock();
        let place = (Reverse(deadline), state.next_ticket, bulk);
        state.next_ticket += 1;
        state.waiting.insert(place);
        loop {
            state.measure(&ticks);
            let idle = state.setting_up == 0 && state.processes.is_empty();
            let room = idle || (state.setting_up < self.cpus && state.busy_cpus < CPU_SHARE * self.cpus as f64);
            // A bulk transfer waiting for another process's to end does not hold back the others.
            let bulk_waiting = state.waiting.iter().any(|(_, _, bulk)| *bulk);
            let bulk_free = bulk_waiting && self.bulk_slot_free(&mut state);
            let next = state.waiting.iter().find(|(_, _, bulk)| !bulk || bulk_free);
            if room && next == Some(&place) {
                state.waiting.remove(&place);
                state.setting_up += 1;
                state.bulk += usize::from(bulk);
                // The next in line may fit too (another CPU's set-up slot).
                self.changed.notify_all();
                return Some(Admission { gate: self, pid: None, setting_up: true, bulk });
            }
            if stop() {
                state.waiting.remove(&place);
                self.release_bulk_slot_if_unused(&mut state);
                self.changed.notify_all();
                return None;
            }
            state = self.changed.wait_timeout(state, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

impl State {
    /// Reads the processes' CPU ticks again if the last reading is a [`WINDOW`] old: the CPUs they kept busy
    /// since then. A process that started in between counts from zero.
    fn measure(&mut self, ticks: impl Fn(u32) -> Option<u64>) {
        let now = Instant::now();
        if self.read_at.is_some_and(|at| now.duration_since(at) < WINDOW) {
            return;
        }
        let mut used = 0;
        for (pid, last) in &mut self.processes {
            if let Some(total) = ticks(*pid) {
                used += total.saturating_sub(*last);
                *last = total;
            }
        }
        self.busy_cpus = match self.read_at.map(|at| now.duration_since(at)) {
            Some(elapsed) if !elapsed.is_zero() => used as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64(),
            _ => 0.0,
        };
        self.read_at = Some(now);
    }
}

impl Admission<'_> {
    /// The scenario's process is `pid`: its CPU counts from now on.
    pub fn spawned(&mut self, pid: u32) {
        self.gate.lock().processes.insert(pid, 0);
        self.pid = Some(pid);
    }

    /// The scenario's programs started: its set-up no longer holds a CPU's slot.
    pub fn programs_started(&mut self) {
        if std::mem::take(&mut self.setting_up) {
            self.gate.lock().setting_up -= 1;
            self.gate.changed.notify_all();
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        if self.setting_up {
            state.setting_up -= 1;
        }
        if self.bulk {
            state.bulk -= 1;
            self.gate.release_bulk_slot_if_unused(&mut state);
        }
        if let Some(pid) = self.pid {
            state.processes.remove(&pid);
        }
        drop(state);
        self.gate.changed.notify_all();
    }
}

/// CPU ticks used so far by process `pid`, its threads and its waited-for children, and by its children
/// still running (the scenario runs in a child of the process the runner starts: see `pidns`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let own = process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let running_children: u64 = children
        .split_whitespace()
        .filter_map(|child| std::fs::read_to_string(format!("/proc/{child}/stat")).ok())
        .filter_map(|stat| process_ticks(&stat))
        .sum();
    Some(own + running_children)
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` line (fields 14 to 17).
fn process_ticks(stat: &str) -> Option<u64> {
    let stat = crate::run::procstat::ProcStat::parse(stat)?;
    (14..=17).map(|n| stat.field(n)?.parse::<i64>().ok().map(|ticks| ticks.max(0) as u64)).sum()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_ticks_are_the_four_cpu_times_of_the_stat_line() {
        let stat = "77 (netfault (x)) S 1 77 77 0 -1 4194560 10 0 0 0 250 50 7 3 20 0 9 0 100 1000 10";
        assert_eq!(process_ticks(stat), Some(310));
        assert_eq!(process_ticks("77 (x) S 1"), None);
        let own = cpu_ticks(std::process::id()).unwrap();
        // 60 ms of this thread's own CPU time, not of the wall clock: in a loaded test run a wall-clock 60 ms
        // spin got under one tick of CPU. Bounded: 10 s of wall time.
        let thread_cpu = crate::run::priority::thread_cpu_time;
        let (cpu_started, started) = (thread_cpu(), Instant::now());
        let mut spin = 0u64;
        while thread_cpu().saturating_sub(cpu_started) < Duration::from_millis(60) {
            assert!(started.elapsed() < Duration::from_secs(10), "60 ms of CPU not given within 10 s");
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(cpu_ticks(std::process::id()).unwrap() > own, "60 ms of CPU are at least one 10 ms tick");
    }

    #[test]
    fn one_scenario_sets_up_per_cpu_at_a_time() {
        let gate = CpuGate::new(2);
        let idle = |_| Some(0);
        let mut first = gate.admit_by(SECOND, false, || false, idle).unwrap();
        let _second = gate.admit_by(SECOND, false, || false, idle).unwrap();
        assert!(gate.admit_by(SECOND, false, || true, idle).is_none(), "both CPUs have a set-up");
        first.spawned(10);
        first.programs_started();
        assert!(gate.admit_by(SECOND, false, || true, idle).is_some(), "the first is running and uses no CPU");
    }

    #[test]
    fn a_start_waits_while_the_running_scenarios_keep_a_quarter_of_the_cpus_busy() {
        let gate = CpuGate::new(2);
        // Process 10 (a scenario and its programs) keeps one and a half CPUs busy: 150 ticks a second.
        let started = Instant::now();
        let busy = |pid| (pid == 10).then(|| (started.elapsed().as_secs_f64() * 150.0) as u64);
        let mut running = gate.admit_by(SECOND, false, || false, busy).unwrap();
        running.spawned(10);
        running.programs_started();
        // What it used shows once a window has passed.
        std::thread::sleep(WINDOW);
        let asked = Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 20
        };
        assert!(gate.admit_by(SECOND, false, stop, busy).is_none(), "1.5 CPUs of two busy: not below a quarter");
        assert!(asked.get() > 20, "it looked again until told to stop");
        // It ends: the next starts at once.
        drop(running);
        assert!(gate.admit_by(SECOND, false, || true, busy).is_some());
    }

    #[test]
    fn a_start_goes_on_while_the_running_scenarios_use_little() {
        let gate = CpuGate::new(2);
        let started = Instant::now();
        // A tenth of a CPU each, three of them.
        let light: HashMap<u32, ()> = (1..=3).map(|pid| (pid, ())).collect();
        let ticks = |pid| light.get(&pid).map(|_| (started.elapsed().as_secs_f64() * 10.0) as u64);
        let mut admitted = Vec::new();
        for pid in 1..=3 {
            let mut admission = gate.admit_by(SECOND, false, || false, ticks).unwrap();
            admission.spawned(pid);
            admission.programs_started();
            admitted.push(admission);
        }
        std::thread::sleep(WINDOW * 2);
        assert!(
            gate.admit_by(SECOND, false, || true, ticks).is_some(),
            "0.3 CPUs of two busy, below the 0.5 of a quarter"
        );
    }

    #[test]
    fn of_the_starts_waiting_the_longest_deadline_goes_first() {
        let gate = CpuGate::new(1);
        let idle = |_| Some(0);
        let setting_up = gate.admit_by(SECOND, false, || false, idle).unwrap();
        let admitted = Mutex::new(Vec::new());
        let waiting = |n: usize| {
            let bound = Instant::now() + Duration::from_secs(10);
            while gate.lock().waiting.len() < n {
                assert!(Instant::now() < bound, "{n} starts never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        std::thread::scope(|threads| {
            // Asked in this order: a short one, a long one, one as short as the first.
            for (asked, (name, secs)) in [("short", 2), ("long", 24), ("short again", 2)].into_iter().enumerate() {
                let (gate, admitted) = (&gate, &admitted);
                threads.spawn(move || {
                    let admission = gate.admit_by(Duration::from_secs(secs), false, || false, idle).unwrap();
                    // Written while it holds the one CPU's set-up slot: the order of the admissions.
                    admitted.lock().unwrap().push(name);
                    drop(admission);
                });
                waiting(asked + 1);
            }
            drop(setting_up);
        });
        assert_eq!(admitted.into_inner().unwrap(), ["long", "short", "short again"]);
    }

    #[test]
    fn a_start_that_gives_up_leaves_the_line() {
        let gate = CpuGate::new(1);
        let idle = |_| Some(0);
        let setting_up = gate.admit_by(SECOND, false, || false, idle).unwrap();
        assert!(gate.admit_by(Duration::from_secs(60), false, || true, idle).is_none(), "the CPU's slot is taken");
        drop(setting_up);
        assert!(gate.admit_by(SECOND, false, || true, idle).is_some(), "the start that gave up no longer goes first");
    }

    #[test]
    fn bulk_transfers_through_the_wire_run_one_at_a_time_and_others_pass_a_waiting_one() {
        let gate = CpuGate::new(2);
        let idle = |_| Some(0);
        let mut rate = gate.admit_by(SECOND * 30, true, || false, idle).unwrap();
        rate.spawned(10);
        rate.programs_started();
        assert!(gate.admit_by(SECOND * 60, true, || true, idle).is_none(), "another bulk transfer waits");
        std::thread::scope(|threads| {
            let waiting = threads.spawn(|| gate.admit_by(SECOND * 60, true, || false, idle).map(|a| a.bulk));
            let bound = Instant::now() + Duration::from_secs(10);
            while gate.lock().waiting.is_empty() {
                assert!(Instant::now() < bound, "the second bulk transfer never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Its longer deadline would put it first; blocked, it lets a short scenario go.
            let short = gate.admit_by(SECOND, false, || true, idle);
            assert!(short.is_some(), "a scenario without a bulk transfer starts beside the running one");
            drop(short);
            drop(rate);
            assert_eq!(waiting.join().unwrap(), Some(true), "the first ended: the second starts");
        });
    }

    #[test]
    fn bulk_transfers_of_two_runners_sharing_the_machines_lock_run_one_at_a_time() {
        let path = std::env::temp_dir().join(format!("netfault-gate-test-{}.lock", std::process::id()));
        // Two runners, as two test processes of `cargo nextest run` are: two gates, two open files.
        let (ours, theirs) = (CpuGate::with_bulk_lock(2, &path), CpuGate::with_bulk_lock(2, &path));
        let idle = |_| Some(0);
        let mut rate = theirs.admit_by(SECOND * 30, true, || false, idle).unwrap();
        rate.spawned(10);
        rate.programs_started();
        let asked = Cell::new(0);
        let a_few_looks = || {
            asked.set(asked.get() + 1);
            asked.get() > 3
        };
        assert!(ours.admit_by(SECOND * 60, true, a_few_looks, idle).is_none(), "the other runner's runs");
        assert!(!ours.lock().holds_machine_bulk && ours.lock().waiting.is_empty(), "given up, it holds nothing");
        std::thread::scope(|threads| {
            let waiting = threads.spawn(|| ours.admit_by(SECOND * 60, true, || false, idle).map(|a| a.bulk));
            let bound = Instant::now() + Duration::from_secs(10);
            while ours.lock().waiting.is_empty() {
                assert!(Instant::now() < bound, "the second bulk transfer never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
            let short = ours.admit_by(SECOND, false, || true, idle);
            assert!(short.is_some(), "a scenario without a bulk transfer starts beside the other runner's");
            drop(short);
            drop(rate);
            assert_eq!(waiting.join().unwrap(), Some(true), "the other runner's ended: ours starts");
        });
        assert!(!ours.lock().holds_machine_bulk, "its bulk transfer done, it gave the machine's lock back");
        let again = theirs.admit_by(SECOND, true, || true, idle);
        assert!(again.is_some(), "so the other runner's next one starts");
        let _ = std::fs::remove_file(&path);
    }
}

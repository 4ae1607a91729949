//! Kernel memory for capture rings: a scenario with `capture: { ring }` pins its ring on both veth ends for its
//! whole run, so the runner starts it only while the rings of the scenarios already running leave room for it
//! (`free -b` MemAvailable / 2 in all); otherwise it waits for one of them to end.

use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often a waiting scenario looks whether the run was told to stop.
const STOP_TICK: Duration = Duration::from_millis(100);

/// Bytes of ring memory that scenarios running at once may pin, and how many they pin now.
#[derive(Debug)]
pub struct RingBudget {
    limit: u64,
    in_use: Mutex<u64>,
    freed: Condvar,
}

/// What one running scenario holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a RingBudget,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_use = self.budget.lock();
        *in_use = in_use.saturating_sub(self.bytes);
        drop(in_use);
        self.budget.freed.notify_all();
    }
}

static MACHINE: LazyLock<RingBudget> = LazyLock::new(|| RingBudget::with_limit(available_memory() / 2));

impl RingBudget {
    /// Half of the memory this machine had available when the first scenario asked.
    pub fn of_this_machine() -> &'static RingBudget {
        &MACHINE
    }

    pub fn with_limit(limit: u64) -> RingBudget {
        RingBudget { limit, in_use: Mutex::new(0), freed: Condvar::new() }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `bytes` fit beside what is reserved (a scenario larger than the whole budget runs alone), or
    /// until `stop` says to give up (`None`).
    pub fn reserve(&self, bytes: u64, stop: impl Fn() -> bool) -> Option<Reservation<'_>> {
        let mut in_use = self.lock();
        loop {
            if *in_use == 0 || in_use.saturating_add(bytes) <= self.limit {
                *in_use += bytes;
                return Some(Reservation { budget: self, bytes });
            }
            if stop() {
                return None;
            }
            in_use = self.freed.wait_timeout(in_use, STOP_TICK).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (what `free -b` shows as available); 1 GiB if it cannot be read.
fn available_memory() -> u64 {
    const FALLBACK: u64 = 1 << 30;
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else { return FALLBACK };
    meminfo_available(&meminfo).unwrap_or(FALLBACK)
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use crate::run::handoff;
    use std::sync::Arc;
    use std::thread;

    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_ring_that_does_not_fit_waits_for_one_to_end() {
        let budget = Arc::new(RingBudget::with_limit(3 * GIB));
        let first = budget.reserve(2 * GIB, || false).unwrap();
        let (started, started_rx) = handoff::channel();
        let waiting = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || {
                let _second = budget.reserve(2 * GIB, || false).unwrap();
                started.send(()).unwrap();
            })
        };
        assert!(started_rx.recv_timeout(Duration::from_millis(300)).is_err(), "4 GiB do not fit in 3");
        // Small rings still fit beside the first.
        let small = budget.reserve(GIB, || false).unwrap();
        drop(small);
        drop(first);
        started_rx.recv_timeout(Duration::from_secs(5)).expect("the second starts once the first ended");
        waiting.join().unwrap();
        assert_eq!(*budget.lock(), 0);
    }

    #[test]
    fn a_ring_larger_than_the_budget_runs_alone_and_a_stop_ends_the_wait() {
        let budget = RingBudget::with_limit(GIB);
        let alone = budget.reserve(4 * GIB, || false).expect("runs when nothing else does");
        assert!(budget.reserve(GIB, || true).is_none(), "told to stop while waiting");
        drop(alone);
        assert!(budget.reserve(0, || true).is_some());
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24567892 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
        assert!(RingBudget::of_this_machine().limit() > 0);
    }
}

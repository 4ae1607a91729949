//! The CPU budget of one socket observer's periodic samples: how much CPU time their dumps may take, so that
//! the observers of every scenario running at once stay within [`OBSERVERS_CPU_SHARE`] of the machine's CPUs.

use std::time::{Duration, Instant};

/// The share of the machine's CPUs that the paced samples of every observer of every scenario running at once
/// may take. Observers run real-time, so past it they starve every ordinary thread: measured in a 2-vCPU
/// emulated (TCG) VM, where a dump costs 50 times what it costs here, 50 scenarios sampling every 10 ms left
/// ordinary threads (the scenarios' own teardown and reports, the runner, a shell) without a CPU for tens of
/// seconds, and 44 scenario processes were killed at their deadline with no report.
pub const OBSERVERS_CPU_SHARE: f64 = 0.25;

/// Dumps' worth of credit saved up at most: after a quiet spell, a few periodic samples in a row.
const MOST_CREDIT: f64 = 4.0;

/// CPU seconds per second for one observer among `observers_at_once` on `cpus` CPUs.
fn rate(observers_at_once: usize, cpus: usize) -> f64 {
    OBSERVERS_CPU_SHARE * cpus.max(1) as f64 / observers_at_once.max(1) as f64
}

/// Credit in CPU time, earned at a fixed rate, spent by each dump at what it cost.
#[derive(Debug, Clone)]
pub struct Budget {
    /// CPU seconds this observer may use per second.
    rate: f64,
    /// CPU seconds it may spend now.
    credit: f64,
    updated: Instant,
}

impl Budget {
    /// The budget of one observer among `observers_at_once` on `cpus` CPUs, starting with full credit.
    pub fn new(observers_at_once: usize, cpus: usize, now: Instant) -> Budget {
        Budget { rate: rate(observers_at_once, cpus), credit: f64::INFINITY, updated: now }
    }

    /// From `now` on, the budget of one observer among `observers_at_once`: what was earned until now at the
    /// former rate is kept.
    pub fn share(&mut self, now: Instant, observers_at_once: usize, cpus: usize, dump_cost: Duration) {
        self.earn(now, dump_cost);
        self.rate = rate(observers_at_once, cpus);
    }

    fn earn(&mut self, now: Instant, dump_cost: Duration) {
        let earned = now.saturating_duration_since(self.updated).as_secs_f64() * self.rate;
        self.credit = (self.credit + earned).min(MOST_CREDIT * dump_cost.as_secs_f64());
        self.updated = self.updated.max(now);
    }

    /// Spends what a dump cost.
    pub fn spend(&mut self, now: Instant, cost: Duration, dump_cost: Duration) {
        self.earn(now, dump_cost);
        self.credit -= cost.as_secs_f64();
    }

    /// When a periodic sample costing `dump_cost` can be paid for: `now` or later.
    pub fn periodic_at(&mut self, now: Instant, dump_cost: Duration) -> Instant {
        self.earn(now, dump_cost);
        let missing = dump_cost.as_secs_f64() - self.credit;
        if missing <= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(missing / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Equal but for floating-point rounding.
    fn assert_close(got: Instant, expected: Instant) {
        let off = if got > expected { got - expected } else { expected - got };
        assert!(off < Duration::from_micros(1), "off by {off:?}");
    }

    #[test]
    fn a_cheap_dump_is_always_affordable() {
        // This machine: 17 us dumps, 100 observers (50 scenarios) on 2 CPUs: 5 us of CPU per ms each.
        let t0 = Instant::now();
        let mut budget = Budget::new(100, 2, t0);
        let dump = Duration::from_micros(17);
        for tick in 1..100 {
            let now = t0 + ms(10 * tick);
            assert_close(budget.periodic_at(now, dump), now);
            budget.spend(now, dump, dump);
        }
    }

    #[test]
    fn dear_dumps_are_spaced_to_the_share() {
        // An emulated machine: 1 ms dumps, 100 observers on 2 CPUs: one dump's worth earned every 200 ms.
        let t0 = Instant::now();
        let dump = ms(1);
        let mut budget = Budget::new(100, 2, t0);
        // Full credit (4 dumps) at first, then one every 200 ms.
        for _ in 0..4 {
            assert_close(budget.periodic_at(t0, dump), t0);
            budget.spend(t0, dump, dump);
        }
        assert_close(budget.periodic_at(t0, dump), t0 + ms(200));
        // Credit saved up is capped at 4 dumps.
        let later = t0 + Duration::from_secs(60);
        assert_close(budget.periodic_at(later, dump), later);
        spend_saved_credit(&mut budget, later, dump);
        assert_close(budget.periodic_at(later, dump), later + ms(200));
    }

    /// Spends the 4 dumps' worth of credit a budget may save up, so that the next periodic sample waits.
    fn spend_saved_credit(budget: &mut Budget, at: Instant, dump: Duration) {
        for _ in 0..4 {
            budget.spend(at, dump, dump);
        }
    }

    #[test]
    fn the_share_grows_as_other_scenarios_end() {
        // 100 observers, 1 ms dumps: one every 200 ms; once only 10 run, one every 20 ms.
        let t0 = Instant::now();
        let dump = ms(1);
        let mut budget = Budget::new(100, 2, t0);
        spend_saved_credit(&mut budget, t0, dump);
        assert_close(budget.periodic_at(t0, dump), t0 + ms(200));
        let later = t0 + ms(100);
        budget.share(later, 10, 2, dump);
        // Half a dump earned in the first 100 ms at the former rate, the other half in 10 ms at the new one.
        assert_close(budget.periodic_at(later, dump), later + ms(10));
    }

    #[test]
    fn one_scenario_alone_samples_every_10_ms_even_with_dear_dumps() {
        // 2 observers on 2 CPUs with 1 ms dumps: a quarter of a CPU each, a dump's worth every 4 ms.
        let t0 = Instant::now();
        let dump = ms(1);
        let mut budget = Budget::new(2, 2, t0);
        for tick in 1..100 {
            let now = t0 + ms(10 * tick);
            assert_close(budget.periodic_at(now, dump), now);
            budget.spend(now, dump, dump);
        }
    }
}

//! What the guest's CPUs did while its suite ran: `/proc/stat`'s CPU line and the softirq threads'
//! `/proc/<pid>/schedstat` (time on a CPU, time waiting for one), read by the guest's init before and after
//! the suite. An emulated machine is slow; these figures say how slow, and whether the kernel's deferred
//! softirq work (timers, packet delivery, when they spill over to `ksoftirqd`) had to wait for a CPU.

use std::fmt;
use std::time::Duration;

/// The guest's `/init` fragment that appends one reading to `file`, headed `== LABEL`.
pub const READ_LOAD: &str = r#"read_load() {
  echo "== $1"
  head -n 1 /proc/stat
  for task in /proc/[0-9]*; do
    read -r name < "$task/comm" 2>/dev/null || continue
    case "$name" in ksoftirqd/*) echo "$name $(cat "$task/schedstat")" ;; esac
  done
}"#;

/// `USER_HZ`: the unit of `/proc/stat`, 100 on every Linux architecture netfault runs on.
const USER_HZ: f64 = 100.0;

/// One reading.
#[derive(Debug, Default, Clone, PartialEq)]
struct Reading {
    /// `/proc/stat` `cpu` fields: user nice system idle iowait irq softirq steal.
    cpu: Vec<u64>,
    /// Summed over the `ksoftirqd/N` threads: nanoseconds on a CPU, nanoseconds waiting for one.
    softirq_thread_ran: u64,
    softirq_thread_waited: u64,
}

/// The difference between the readings before and after the suite.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestLoad {
    /// CPU time of every CPU together, busy or not.
    pub total: Duration,
    /// Neither idle nor waiting for I/O.
    pub busy: Duration,
    /// In softirq context (timers, packet delivery), wherever it ran.
    pub softirq: Duration,
    /// The `ksoftirqd/N` threads: time they ran, time they were runnable but waiting for a CPU.
    pub softirq_thread_ran: Duration,
    pub softirq_thread_waited: Duration,
}

impl GuestLoad {
    /// Reads the `before` and `after` readings of the guest's load file; `None` if either is missing or
    /// malformed (an old guest, a suite that did not end).
    pub fn parse(text: &str) -> Option<GuestLoad> {
        let before = reading(text, "before")?;
        let after = reading(text, "after")?;
        let delta = |i: usize| after.cpu.get(i).zip(before.cpu.get(i)).map(|(a, b)| a.saturating_sub(*b));
        let ticks = |n: u64| Duration::from_secs_f64(n as f64 / USER_HZ);
        let total: u64 = (0..after.cpu.len().min(8)).filter_map(delta).sum();
        let idle = delta(3)? + delta(4).unwrap_or(0);
        Some(GuestLoad {
            total: ticks(total),
            busy: ticks(total.saturating_sub(idle)),
            softirq: ticks(delta(6).unwrap_or(0)),
            softirq_thread_ran: Duration::from_nanos(
                after.softirq_thread_ran.saturating_sub(before.softirq_thread_ran),
            ),
            softirq_thread_waited: Duration::from_nanos(
                after.softirq_thread_waited.saturating_sub(before.softirq_thread_waited),
            ),
        })
    }

    fn share(&self, part: Duration) -> f64 {
        if self.total.is_zero() {
            0.0
        } else {
            100.0 * part.as_secs_f64() / self.total.as_secs_f64()
        }
    }
}

impl fmt::Display for GuestLoad {
    /// `CPUs 87% busy (softirq 9%); ksoftirqd ran 3.1s and waited 12.4s for a CPU`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPUs {:.0}% busy (softirq {:.0}%); ksoftirqd ran {:.1}s and waited {:.1}s for a CPU",
            self.share(self.busy),
            self.share(self.softirq),
            self.softirq_thread_ran.as_secs_f64(),
            self.softirq_thread_waited.as_secs_f64()
        )
    }
}

/// The reading headed `== label`.
fn reading(text: &str, label: &str) -> Option<Reading> {
    let mut lines = text.lines().skip_while(|line| line.trim() != format!("== {label}")).skip(1);
    let cpu: Vec<u64> =
        lines.next()?.strip_prefix("cpu ")?.split_whitespace().map(|n| n.parse().ok()).collect::<Option<_>>()?;
    if cpu.len() < 5 {
        return None;
    }
    let mut reading = Reading { cpu, ..Reading::default() };
    for line in lines.take_while(|line| !line.starts_with("== ")) {
        let mut fields = line.split_whitespace();
        if !fields.next().is_some_and(|name| name.starts_with("ksoftirqd/")) {
            continue;
        }
        let mut number = || fields.next().and_then(|n| n.parse::<u64>().ok());
        reading.softirq_thread_ran += number()?;
        reading.softirq_thread_waited += number()?;
    }
    Some(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_is_the_difference_of_the_two_readings() {
        let text = "\
== before
cpu  100 0 50 1000 10 0 20 0 0 0
ksoftirqd/0 1000000000 2000000000 30
ksoftirqd/1 500000000 500000000 10
== after
cpu  1100 0 350 1300 10 0 220 0 0 0
ksoftirqd/0 2000000000 9000000000 300
ksoftirqd/1 1000000000 4500000000 100
";
        let load = GuestLoad::parse(text).unwrap();
        // 1000 user + 300 system + 300 idle + 200 softirq ticks.
        assert_eq!(load.total, Duration::from_secs(18));
        assert_eq!(load.busy, Duration::from_secs(15));
        assert_eq!(load.softirq, Duration::from_secs(2));
        assert_eq!(load.softirq_thread_ran, Duration::from_millis(1500));
        assert_eq!(load.softirq_thread_waited, Duration::from_secs(11));
        assert_eq!(load.to_string(), "CPUs 83% busy (softirq 11%); ksoftirqd ran 1.5s and waited 11.0s for a CPU");
    }

    #[test]
    fn a_missing_reading_gives_nothing() {
        assert_eq!(GuestLoad::parse("== before\ncpu  1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(GuestLoad::parse(""), None);
    }
}

//! Stopping a suite early: SIGINT / SIGTERM to the runner, and the suite deadline (`netfault run --deadline`,
//! `NETFAULT_SUITE_DEADLINE` for the cargo-test driver). The runner's workers ask [`Supervisor::stop_reason`]
//! while they wait for a scenario process, kill it when told to stop, and start no new one; a watchdog ends
//! the runner itself if even that does not finish in time.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::scenario::duration::parse_duration;

/// The environment variable the cargo-test driver reads its suite deadline from, e.g. `10m`.
pub const SUITE_DEADLINE_ENV: &str = "NETFAULT_SUITE_DEADLINE";

/// How long a scenario process may take to set up (namespaces, wire, faults, captures, observers) before its
/// programs start. The kernel creates and destroys network namespaces one at a time (RTNL,
/// `pernet_ops_rwsem`): with 50 scenarios at once in an emulated 2-vCPU VM the last set-ups waited tens of
/// seconds, and counting that against their deadline got 25 of them killed with no report.
pub const SETUP_LIMIT: Duration = Duration::from_secs(180);

/// Added to the computed default suite deadline: the runner's own start and the last summaries.
const SUITE_MARGIN: Duration = Duration::from_secs(30);

/// The last stop signal received (0: none). Written by the signal handler, read by the workers.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_stop_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// `trap ... INT TERM`: from now on SIGINT and SIGTERM no longer end the process at once but are recorded, so
/// that the runner stops its scenario processes, reports them and exits non-zero.
pub fn catch_stop_signals() -> Result<()> {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // SAFETY: the handler only stores to an atomic; the struct is fully initialised before use.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::last_os(format!("sigaction({name}) (trap ... {name})")));
        }
    }
    Ok(())
}

/// Why the runner stops its scenario processes before they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT or SIGTERM (the number).
    Signal(i32),
    /// The suite deadline passed; it was this long.
    SuiteDeadline(Duration),
}

impl StopReason {
    /// The runner's exit status for it: 128 + signal number, as a shell reports a signal; 2 for the deadline.
    pub fn exit_code(self) -> u8 {
        match self {
            StopReason::Signal(signal) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
            StopReason::SuiteDeadline(_) => 2,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(signal) => write!(f, "interrupted by {}", signal_name(*signal)),
            StopReason::SuiteDeadline(budget) => {
                write!(f, "the suite deadline ({}s) passed", budget.as_secs())
            }
        }
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// The stop conditions of one suite run, shared by its workers.
#[derive(Debug, Clone, Copy)]
pub struct Supervisor {
    budget: Duration,
    deadline: Instant,
}

impl Supervisor {
    /// A suite that must be over within `budget` from now.
    pub fn new(budget: Duration) -> Supervisor {
        Supervisor { budget, deadline: Instant::now() + budget }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether to stop now, and why; a signal wins over the deadline.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match STOP_SIGNAL.load(Ordering::SeqCst) {
            0 if Instant::now() >= self.deadline => Some(StopReason::SuiteDeadline(self.budget)),
            0 => None,
            signal => Some(StopReason::Signal(signal)),
        }
    }

    /// Last resort, should the workers themselves hang (a scenario process that cannot be reaped): `grace`
    /// after the suite deadline, or after a stop signal, the runner prints why and exits with status 2; its
    /// scenario processes die with it (PR_SET_PDEATHSIG).
    pub fn start_watchdog(&self, grace: Duration) -> Result<()> {
        let supervisor = *self;
        thread::Builder::new()
            .name("suite-watchdog".into())
            .spawn(move || {
                let mut stopped_at = None;
                loop {
                    let now = Instant::now();
                    let reason = supervisor.stop_reason();
                    if reason.is_some() && stopped_at.is_none() {
                        stopped_at = Some(now);
                    }
                    if let (Some(reason), Some(at)) = (reason, stopped_at) {
                        if now >= at + grace {
                            eprintln!(
                                "netfault: {reason}, and the runner did not stop its scenario processes within {}s: \
                                 exiting; they die with it",
                                grace.as_secs()
                            );
                            std::process::exit(i32::from(reason.exit_code()));
                        }
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
            .context(|| "spawn thread suite-watchdog".to_string())?;
        Ok(())
    }
}

/// Default suite deadline: the jobs one after the other, each at most its `limit` (scenario deadline + the
/// child's grace) once set up, plus the longest a set-up may wait ([`SETUP_LIMIT`]) and a margin. However many
/// workers there are, the CPU gate ([`crate::run::cpu_gate`]) may start the scenarios one at a time on a busy
/// machine (in a 2-vCPU TCG VM it did, and a bound for all of them at once killed the 6.12 column's last nine
/// scenarios): no schedule of these jobs can legitimately take longer.
pub fn default_budget(limits: &[Duration]) -> Duration {
    limits.iter().sum::<Duration>() + SETUP_LIMIT + SUITE_MARGIN
}

/// A suite deadline given by the user (`--deadline 10m`, `NETFAULT_SUITE_DEADLINE=10m`), in the scenario
/// duration syntax; `0s` is refused.
pub fn parse_budget(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(budget) if budget.is_zero() => Err(format!("suite deadline {text:?} must be more than 0s")),
        Ok(budget) => Ok(budget),
        Err(e) => Err(format!("suite deadline: {}", e.message(text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budget_covers_the_worst_schedule() {
        let secs = Duration::from_secs;
        // The jobs one after the other, whatever the workers: the CPU gate may start them so.
        assert_eq!(default_budget(&[secs(10), secs(20), secs(30)]), secs(60) + SETUP_LIMIT + SUITE_MARGIN);
        assert_eq!(default_budget(&[]), SETUP_LIMIT + SUITE_MARGIN);
    }

    #[test]
    fn budgets_parse_as_durations() {
        assert_eq!(parse_budget("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_budget("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_budget("0s").unwrap_err().contains("more than 0s"));
        assert!(parse_budget("10").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn the_deadline_stops_a_suite_and_says_how_long_it_was() {
        let supervisor = Supervisor::new(Duration::ZERO);
        assert_eq!(supervisor.stop_reason(), Some(StopReason::SuiteDeadline(Duration::ZERO)));
        assert_eq!(supervisor.stop_reason().map(StopReason::exit_code), Some(2));
        assert!(Supervisor::new(Duration::from_secs(60)).stop_reason().is_none());
        assert_eq!(StopReason::Signal(libc::SIGINT).to_string(), "interrupted by SIGINT");
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
    }
}

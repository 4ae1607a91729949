//! The socket-state sampler of a host: `ss -tanoi` read through sock_diag (NETLINK_SOCK_DIAG), and the thread
//! that turns successive samples into `EventKind::Socket` timeline events.

mod budget;
mod changes;
mod diag;

use crate::run::handoff;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::record::ObserverStats;
use crate::run::clock::EventSink;
use crate::run::netns::Netns;
use crate::run::priority::thread_cpu_time;
use crate::run::sampling::SamplingCount;
use crate::scenario::plan::HostId;
use crate::timeline::EventKind;
use budget::Budget;
use changes::ChangeTracker;
pub use diag::{dump_into, DiagSocket, SocketSample};

/// `stop` waits this long for the final sample (which may itself wait `RECEIVE_TIMEOUT`).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

struct Sampler {
    socket: DiagSocket,
    host: HostId,
    sink: EventSink,
    samples: Vec<SocketSample>,
    tracker: ChangeTracker,
    count: u64,
    total_dump_time: Duration,
    max_dump_time: Duration,
    /// What a sample has lately cost this thread in CPU time (kernel and user), a moving average: what pacing
    /// goes by. Wall time is no measure of cost on a loaded machine: there a dump that waited a second for a
    /// CPU (measured in a TCG VM with 50 scenarios starting at once) made one observer's mean wall time 160 ms
    /// and its periodic samples 30 s apart, while its dumps cost under a millisecond of CPU.
    recent_dump_cpu: Option<Duration>,
    answers: AnswerDelays,
}

/// How long the samples asked for at once (a step's end, a SYN, FIN or RST) waited for this thread.
#[derive(Debug, Default)]
struct AnswerDelays {
    /// Those answered more than [`LATE_ANSWER`] after they were asked for.
    late: u64,
    /// The longest wait, and the scenario time it was asked at.
    max: Duration,
    max_asked_at: Duration,
}

/// A sample asked for at once and taken later than this waited for a CPU, not for the kernel: a dump costs
/// tens of microseconds of CPU here in a release build, about a millisecond in a debug build or a TCG VM, and
/// took 27 ms of wall time at worst with 128 tests at once on 2 CPUs. What it would have seen meanwhile (a
/// Recv-Q, a timer, a state lasting tens of milliseconds) may be missing.
pub const LATE_ANSWER: Duration = Duration::from_millis(50);

/// Weight of the newest dump in [`Sampler::recent_dump_cpu`]: an eighth, so one odd dump moves it little.
const RECENT_WEIGHT: f64 = 0.125;

/// The moving average of a dump's CPU cost with `latest` folded in, taken as at most 4 times the average: in a
/// VM, a thread's CPU time also counts the time the host did not run its virtual CPU, and one such dump must
/// not space the periodic samples seconds apart.
fn fold_in(recent: Option<Duration>, latest: Duration) -> Duration {
    recent.map_or(latest, |recent| recent.mul_f64(1.0 - RECENT_WEIGHT) + latest.min(recent * 4).mul_f64(RECENT_WEIGHT))
}

impl Sampler {
    /// One dump, and its changes as events stamped with the time the dump ended: the kernel walked its socket
    /// table before that instant, so a change seen at `t` happened before `t` and after the previous sample's
    /// dump began (`t` - the dump time: 20 to 200 microseconds, see `ObserverStats`). Stamped with its start, a
    /// paced dump that was preempted (it runs at the ordinary policy) showed a state up to 200 ms before it
    /// came about in the 6.1 TCG VM: a Recv-Q of 11 before the segment carrying those bytes had left.
    fn sample(&mut self) -> Result<Duration> {
        let requested = Instant::now();
        let cpu_before = thread_cpu_time();
        dump_into(&mut self.socket, &mut self.samples)?;
        let t = self.sink.clock().now();
        let took = requested.elapsed();
        self.count += 1;
        self.total_dump_time += took;
        self.max_dump_time = self.max_dump_time.max(took);
        let (sink, host) = (&self.sink, self.host);
        self.tracker.update(&self.samples, |event| sink.emit_at(t, host, EventKind::Socket(event)));
        // The budget's measure: dump and comparison, in CPU time.
        let cost = thread_cpu_time().saturating_sub(cpu_before);
        self.recent_dump_cpu = Some(fold_in(self.recent_dump_cpu, cost));
        Ok(cost)
    }

    /// A sample asked for at `asked` (by [`Observer::poke`]) was just taken.
    fn answered(&mut self, asked: Instant) {
        let delay = asked.elapsed();
        if delay > LATE_ANSWER {
            self.answers.late += 1;
        }
        if delay > self.answers.max {
            self.answers.max = delay;
            self.answers.max_asked_at = self.sink.clock().now().saturating_sub(delay);
        }
    }

    fn stats(&self) -> ObserverStats {
        let mean_nanos = self.total_dump_time.as_nanos() / u128::from(self.count.max(1));
        ObserverStats {
            samples: self.count,
            mean_dump_time: Duration::from_nanos(u64::try_from(mean_nanos).unwrap_or(u64::MAX)),
            max_dump_time: self.max_dump_time,
            late_answers: self.answers.late,
            max_answer_delay: self.answers.max,
            max_answer_delay_asked_at: self.answers.max_asked_at,
        }
    }

    /// Samples every `interval` and when asked, until told to stop (or the `Observer` is dropped), then once
    /// more. Samples asked for by a SYN, FIN, RST or a step's end are taken at once and again
    /// [`PACKET_SAMPLE_GAP`] later; those asked for by other packets at most one per [`PACKET_SAMPLE_GAP`];
    /// periodic ones within the observer's CPU [`Budget`], shared among the scenarios of the runner running
    /// their programs now ([`SamplingCount`]).
    fn run(mut self, interval: Duration, signals: handoff::Receiver<Signal>) -> Result<ObserverStats> {
        let sampling = SamplingCount::inherited();
        let observers_at_once = || 2 * sampling.read().unwrap_or_else(scenarios_at_once);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut budget = Budget::new(observers_at_once(), cpus, Instant::now());
        let mut next_periodic = Instant::now() + interval;
        let mut last_sample = Instant::now();
        let mut packet_waiting = false;
        loop {
            let now = Instant::now();
            let dump_cost = self.recent_dump_cpu.unwrap_or_default();
            let periodic_due = now >= next_periodic && {
                budget.share(now, observers_at_once(), cpus, dump_cost);
                let affordable = budget.periodic_at(now, dump_cost);
                // Waiting for credit, the share is read again now and then: scenarios ending make it larger.
                next_periodic = affordable.min(now + SHARE_RECHECK);
                affordable <= now
            };
            let packet_at = last_sample + PACKET_SAMPLE_GAP;
            if periodic_due || (packet_waiting && packet_at <= now) {
                // Bulk work, at the ordinary policy, but for a packet's sample while dumps are cheap
                // ([`CHEAP_DUMP`]); a SYN's, FIN's, RST's or a step's end's is real-time. Real-time, these dumps were the larger part of the real-time threads' CPU
                // in the 6.1 TCG VM (70.8 s of 183 s at `--jobs 4`), and every millisecond of it kept
                // `ksoftirqd`, and with it that kernel's timers and packets, off a CPU.
                let cost = if periodic_due || !is_cheap(self.recent_dump_cpu) {
                    crate::run::priority::ordinary_while(|| self.sample())?
                } else {
                    self.sample()?
                };
                if periodic_due {
                    budget.spend(Instant::now(), cost, self.recent_dump_cpu.unwrap_or_default());
                }
                packet_waiting = false;
                last_sample = Instant::now();
                next_periodic = next_periodic.max(last_sample + interval);
                continue;
            }
            let wake = if packet_waiting { next_periodic.min(packet_at) } else { next_periodic };
            match signals.recv_timeout(wake.saturating_duration_since(now)) {
                Err(handoff::RecvTimeoutError::Timeout) => {}
                Ok(Signal::SampleNow { asked }) => {
                    // One sample answers every poke already waiting (thousands of quick steps poke in a burst);
                    // this one, the first, waited longest.
                    let stop = signals.try_iter().any(|signal| matches!(signal, Signal::Stop));
                    self.sample()?;
                    self.answered(asked);
                    if stop {
                        return Ok(self.stats());
                    }
                    // And once more a packet gap later: a capture sees an arriving packet before TCP has
                    // processed it, and on a slow machine this sample can win that race (in the 6.12 TCG VM a
                    // FIN's CLOSE-WAIT went unseen for the 500 ms it lasted, the next paced sample coming later).
                    packet_waiting = true;
                    last_sample = Instant::now();
                    next_periodic = next_periodic.max(last_sample + interval);
                }
                Ok(Signal::PacketSeen) => packet_waiting = true,
                Ok(Signal::Stop) | Err(handoff::RecvTimeoutError::Disconnected) => {
                    self.sample()?;
                    return Ok(self.stats());
                }
            }
        }
    }
}

/// How often an observer waiting for credit reads again how many scenarios share the budget.
const SHARE_RECHECK: Duration = Duration::from_millis(100);

/// Samples asked for by packets other than SYN, FIN and RST are at least this far apart (many packets make
/// one sample), and outside the [`Budget`], as those asked for by SYN, FIN, RST and step ends are: they are
/// as many as the scenario's packets, which are few but for bulk transfers, where this bounds them to 50 a
/// second. Charged to the budget, they put it into debt in the TCG VM, and the periodic samples waited for
/// seconds; within it, a Recv-Q between two writes 200 ms apart went unseen.
const PACKET_SAMPLE_GAP: Duration = Duration::from_millis(20);

/// A dump that has cost less CPU than this lately is taken real-time when a packet asks for it. Taken at the
/// ordinary policy on a busy machine, such a sample came more than 100 ms late, and a Recv-Q that lasted 100 or
/// 200 ms went unseen (rst-read, unread-data-shut-rd, with every test of the workspace at once); here a dump
/// costs tens of microseconds. Dearer dumps (50 times dearer in a TCG VM) stay ordinary, so that they never
/// hold a CPU against `ksoftirqd`.
const CHEAP_DUMP: Duration = Duration::from_micros(250);

/// Whether dumps that lately cost `recent_cpu` are cheap enough to take real-time ([`CHEAP_DUMP`]); before
/// any was measured, they are not.
fn is_cheap(recent_cpu: Option<Duration>) -> bool {
    recent_cpu.is_some_and(|cpu| cpu < CHEAP_DUMP)
}

/// The environment variable through which the runner tells each scenario process how many scenarios it runs
/// at once (absent: this one alone); the count of those running now ([`SamplingCount`]) takes its place where
/// the runner shares one.
pub const SCENARIOS_AT_ONCE_ENV: &str = "NETFAULT_SCENARIOS_AT_ONCE";

fn scenarios_at_once() -> usize {
    std::env::var(SCENARIOS_AT_ONCE_ENV).ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// What the owner of an observer tells its thread.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// Something just happened (a SYN, FIN or RST, a step's end): sample now rather than at the next tick.
    SampleNow {
        asked: Instant,
    },
    /// Another packet left or arrived (data, an ACK, a probe): sample as soon as the budget allows.
    PacketSeen,
    Stop,
}

/// `watch -n <interval> ss -tanoi` inside one host's namespace, as timeline events.
#[derive(Debug)]
pub struct Observer {
    host: HostId,
    stop: handoff::Sender<Signal>,
    finished: handoff::Receiver<Result<ObserverStats>>,
    thread: thread::JoinHandle<()>,
}

impl Observer {
    /// `watch -n <interval> ss -tanoi` inside `ns`: a thread samples every `interval` and emits an
    /// `EventKind::Socket` event for every socket whose (state, timer kind, retrans, recv_q, send_q) changed
    /// since the previous sample, and a `state: Gone` event when a socket disappears. Sockets are keyed by
    /// (local, remote) 4-tuple plus whether it is a listener; a SYN-RECV request socket turning into ESTABLISHED
    /// with the same 4-tuple is the same socket changing state.
    ///
    /// The first sample is taken before this returns, so a namespace without sock_diag fails here. Events are
    /// stamped with the time their dump ended.
    pub fn start(ns: &Netns, host: HostId, interval: Duration, sink: EventSink) -> Result<Observer> {
        if interval.is_zero() {
            return Err(Error::Internal(format!("observer of {host}: the sampling interval must not be zero")));
        }
        let mut sampler = Sampler {
            socket: DiagSocket::open_in(ns)?,
            host,
            sink,
            samples: Vec::new(),
            tracker: ChangeTracker::default(),
            count: 0,
            total_dump_time: Duration::ZERO,
            max_dump_time: Duration::ZERO,
            recent_dump_cpu: None,
            answers: AnswerDelays::default(),
        };
        sampler.sample()?;
        let (stop, stop_rx) = handoff::channel();
        let (finished_tx, finished) = handoff::channel();
        let thread = thread::Builder::new()
            .name(format!("observe-{host}"))
            .spawn(move || {
                // Nobody waits for the result only when `stop` already gave up on this thread.
                let _ = finished_tx.send(sampler.run(interval, stop_rx));
            })
            .context(|| format!("spawn the socket observer thread of {host}"))?;
        // A sample asked for must be taken at once: on a loaded machine an ordinary thread was seen to miss
        // short-lived states entirely (no sample for hundreds of ms). Best effort, as for the program threads;
        // real-time for its wake-ups and the samples events ask for, ordinary for the paced ones (see `run`).
        // Raised by this thread, so the observer is real-time from its first run (`raise_spawned` says why).
        let _ = crate::run::priority::raise_spawned(&thread);
        Ok(Observer { host, stop, finished, thread })
    }

    /// `ss -tanoi` right now: asks for a sample between ticks, so short-lived states (a handshake, a FIN
    /// exchange) are seen even when they last less than the sampling interval.
    pub fn poke(&self) {
        // A stopped thread needs no sample.
        let _ = self.stop.send(Signal::SampleNow { asked: Instant::now() });
    }

    /// A packet other than a SYN, FIN or RST left or arrived: asks for a sample as soon as the CPU budget
    /// allows, so values that last less than the paced interval (a Recv-Q between two writes, a keepalive or
    /// persist timer's count after its probe) are seen on a slow machine too. Many asks make one sample.
    pub fn poke_packet(&self) {
        let _ = self.stop.send(Signal::PacketSeen);
    }

    /// Tells the thread to take its last sample and stop, without waiting for it: [`Observer::stop`] then
    /// collects the result, so several observers stop at once.
    pub fn request_stop(&self) {
        // The thread is gone already if a dump failed; its result waits in `finished`.
        let _ = self.stop.send(Signal::Stop);
    }

    /// Takes one last sample, stops the thread (bounded), returns the number of samples taken and the mean dump
    /// time. A dump that failed while running ends the sampling early and is reported here.
    pub fn stop(self) -> Result<ObserverStats> {
        self.request_stop();
        match self.finished.recv_timeout(STOP_TIMEOUT) {
            Ok(result) => {
                self.thread
                    .join()
                    .map_err(|_| Error::Internal(format!("socket observer thread of {} panicked", self.host)))?;
                result
            }
            Err(handoff::RecvTimeoutError::Timeout) => {
                Err(Error::Internal(format!("socket observer of {} did not stop within {STOP_TIMEOUT:?}", self.host)))
            }
            Err(handoff::RecvTimeoutError::Disconnected) => {
                Err(Error::Internal(format!("socket observer thread of {} panicked", self.host)))
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn one_dear_dump_moves_the_recent_cost_little() {
        let us = Duration::from_micros;
        assert_eq!(fold_in(None, us(400)), us(400));
        // A dump that cost 80 ms among 400 us ones counts as 1.6 ms: 550 us.
        let recent = fold_in(Some(us(400)), us(80_400));
        assert!(recent.abs_diff(us(550)) < us(1), "{recent:?}");
        // Dearer dumps that last raise it step by step.
        let mut recent = us(400);
        for _ in 0..40 {
            recent = fold_in(Some(recent), us(4000));
        }
        assert!(recent > us(3900), "{recent:?}");
    }

    #[test]
    fn a_dump_costs_this_thread_cpu_time() {
        let before = thread_cpu_time();
        let mut spin = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let used = thread_cpu_time() - before;
        // Busy for 20 ms of wall time: some CPU time, never more than the wall time.
        assert!(used > Duration::ZERO && used <= started.elapsed(), "{used:?}");
    }

    #[test]
    fn only_dumps_measured_cheap_are_taken_real_time_for_a_packet() {
        assert!(is_cheap(Some(Duration::from_micros(20))), "a dump here");
        assert!(!is_cheap(Some(Duration::from_millis(1))), "a dump in a TCG VM");
        assert!(!is_cheap(Some(CHEAP_DUMP)));
        assert!(!is_cheap(None), "not measured yet");
    }
}

#[cfg(test)]
mod kernel_tests;

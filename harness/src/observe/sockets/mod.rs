//! The socket-state sampler of a host: `ss -tanoi` read through sock_diag (NETLINK_SOCK_DIAG), and the thread
//! that turns successive samples into `EventKind::Socket` timeline events.

mod budget;
mod changes;
mod diag;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::record::ObserverStats;
use crate::run::clock::EventSink;
use crate::run::netns::Netns;
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
}

/// Weight of the newest dump in [`Sampler::recent_dump_cpu`]: an eighth, so one odd dump moves it little.
const RECENT_WEIGHT: f64 = 0.125;

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`); zero where the clock is refused.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec the call fills in.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// The moving average of a dump's CPU cost with `latest` folded in.
fn fold_in(recent: Option<Duration>, latest: Duration) -> Duration {
    recent.map_or(latest, |recent| recent.mul_f64(1.0 - RECENT_WEIGHT) + latest.mul_f64(RECENT_WEIGHT))
}

impl Sampler {
    /// One dump, and its changes as events stamped with the time the dump was requested: the kernel walks its
    /// socket table after that instant, so a change seen at `t` happened before `t` + the dump time (20 to 200
    /// microseconds, see `ObserverStats`) and after the previous sample's `t`.
    fn sample(&mut self) -> Result<Duration> {
        let requested = Instant::now();
        let t = self.sink.clock().at(requested);
        let cpu_before = thread_cpu_time();
        dump_into(&mut self.socket, &mut self.samples)?;
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

    fn stats(&self) -> ObserverStats {
        let mean_nanos = self.total_dump_time.as_nanos() / u128::from(self.count.max(1));
        ObserverStats {
            samples: self.count,
            mean_dump_time: Duration::from_nanos(u64::try_from(mean_nanos).unwrap_or(u64::MAX)),
            max_dump_time: self.max_dump_time,
        }
    }

    /// Samples every `interval` and when asked, until told to stop (or the `Observer` is dropped), then once
    /// more. Samples asked for by a SYN, FIN, RST or a step's end are taken at once, outside the budget;
    /// periodic ones and those asked for by other packets within the observer's [`Budget`], periodic ones
    /// leaving a reserve for packets.
    fn run(mut self, interval: Duration, signals: mpsc::Receiver<Signal>) -> Result<ObserverStats> {
        let observers_at_once = 2 * scenarios_at_once();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut budget = Budget::new(observers_at_once, cpus, Instant::now());
        let mut next_periodic = Instant::now() + interval;
        let mut packet_waiting = false;
        loop {
            let now = Instant::now();
            let dump_cost = self.recent_dump_cpu.unwrap_or_default();
            let due = if now >= next_periodic {
                let affordable = budget.periodic_at(now, dump_cost);
                next_periodic = affordable;
                affordable <= now
            } else {
                false
            };
            let packet_due = packet_waiting && budget.packet_at(now, dump_cost) <= now;
            if due || packet_due {
                packet_waiting = false;
                self.sample_within(&mut budget)?;
                next_periodic = Instant::now() + interval;
                continue;
            }
            let mut wake = next_periodic;
            if packet_waiting {
                wake = wake.min(budget.packet_at(now, dump_cost));
            }
            match signals.recv_timeout(wake.saturating_duration_since(now)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Signal::SampleNow) => {
                    // Outside the budget: these are few (a handshake, a close, each step's end), and charged
                    // they put the budget into debt for seconds in the TCG VM, where the periodic and packet
                    // samples that would have seen a Recv-Q or an ESTABLISHED between them then waited.
                    self.sample()?;
                    packet_waiting = false;
                    next_periodic = Instant::now() + interval;
                }
                Ok(Signal::PacketSeen) => packet_waiting = true,
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.sample()?;
                    return Ok(self.stats());
                }
            }
        }
    }

    /// One sample, its CPU time spent from `budget`.
    fn sample_within(&mut self, budget: &mut Budget) -> Result<()> {
        let cost = self.sample()?;
        budget.spend(Instant::now(), cost, self.recent_dump_cpu.unwrap_or_default());
        Ok(())
    }
}

/// The environment variable through which the runner tells each scenario process how many scenarios it runs
/// at once (absent: this one alone).
pub const SCENARIOS_AT_ONCE_ENV: &str = "NETFAULT_SCENARIOS_AT_ONCE";

fn scenarios_at_once() -> usize {
    std::env::var(SCENARIOS_AT_ONCE_ENV).ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// What the owner of an observer tells its thread.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// Something just happened (a SYN, FIN or RST, a step's end): sample now rather than at the next tick.
    SampleNow,
    /// Another packet left or arrived (data, an ACK, a probe): sample as soon as the budget allows.
    PacketSeen,
    Stop,
}

/// `watch -n <interval> ss -tanoi` inside one host's namespace, as timeline events.
#[derive(Debug)]
pub struct Observer {
    host: HostId,
    stop: mpsc::Sender<Signal>,
    finished: mpsc::Receiver<Result<ObserverStats>>,
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
    /// stamped with the time their dump was requested.
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
        };
        sampler.sample()?;
        let (stop, stop_rx) = mpsc::channel();
        let (finished_tx, finished) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("observe-{host}"))
            .spawn(move || {
                // A sample is stamped when it is requested: on a loaded machine an ordinary thread was seen to
                // miss short-lived states entirely (no sample for hundreds of ms). Best effort, as for the
                // program threads; a dump costs tens of microseconds, so the real-time thread takes little.
                let _ = crate::run::priority::raise_current_thread();
                // Nobody waits for the result only when `stop` already gave up on this thread.
                let _ = finished_tx.send(sampler.run(interval, stop_rx));
            })
            .context(|| format!("spawn the socket observer thread of {host}"))?;
        Ok(Observer { host, stop, finished, thread })
    }

    /// `ss -tanoi` right now: asks for a sample between ticks, so short-lived states (a handshake, a FIN
    /// exchange) are seen even when they last less than the sampling interval.
    pub fn poke(&self) {
        // A stopped thread needs no sample.
        let _ = self.stop.send(Signal::SampleNow);
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
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::Internal(format!("socket observer of {} did not stop within {STOP_TIMEOUT:?}", self.host)))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
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
    fn one_dear_dump_moves_the_recent_cost_by_an_eighth() {
        let us = Duration::from_micros;
        assert_eq!(fold_in(None, us(400)), us(400));
        // A dump that cost 80 ms among 400 us ones: 10.4 ms, and back under 1 ms after 25 ordinary ones.
        let mut recent = fold_in(Some(us(400)), us(80_400));
        assert!(recent.abs_diff(us(10_400)) < us(1), "{recent:?}");
        for _ in 0..25 {
            recent = fold_in(Some(recent), us(400));
        }
        assert!(recent < us(1000), "{recent:?}");
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
}

#[cfg(test)]
mod kernel_tests;

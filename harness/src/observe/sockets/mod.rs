//! The socket-state sampler of a host: `ss -tanoi` read through sock_diag (NETLINK_SOCK_DIAG), and the thread
//! that turns successive samples into `EventKind::Socket` timeline events.

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
}

impl Sampler {
    /// One dump, and its changes as events stamped with the time the dump was requested: the kernel walks its
    /// socket table after that instant, so a change seen at `t` happened before `t` + the dump time (20 to 200
    /// microseconds, see `ObserverStats`) and after the previous sample's `t`.
    fn sample(&mut self) -> Result<()> {
        let requested = Instant::now();
        let t = self.sink.clock().at(requested);
        dump_into(&mut self.socket, &mut self.samples)?;
        let took = requested.elapsed();
        self.count += 1;
        self.total_dump_time += took;
        self.max_dump_time = self.max_dump_time.max(took);
        let (sink, host) = (&self.sink, self.host);
        self.tracker.update(&self.samples, |event| sink.emit_at(t, host, EventKind::Socket(event)));
        Ok(())
    }

    fn stats(&self) -> ObserverStats {
        let mean_nanos = self.total_dump_time.as_nanos() / u128::from(self.count.max(1));
        ObserverStats {
            samples: self.count,
            mean_dump_time: Duration::from_nanos(u64::try_from(mean_nanos).unwrap_or(u64::MAX)),
            max_dump_time: self.max_dump_time,
        }
    }

    /// Samples every `interval`, and at once when poked, until told to stop (or the `Observer` is dropped),
    /// then once more.
    fn run(mut self, interval: Duration, signals: mpsc::Receiver<Signal>) -> Result<ObserverStats> {
        let observers_at_once = 2 * scenarios_at_once();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut next = Instant::now() + interval;
        loop {
            match signals.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Signal::SampleNow) => {
                    self.sample()?;
                    continue;
                }
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.sample()?;
                    return Ok(self.stats());
                }
            }
            self.sample()?;
            let interval = paced(interval, self.stats().mean_dump_time, observers_at_once, cpus);
            next += interval;
            let now = Instant::now();
            if next <= now {
                // Late (a loaded machine): keep the interval from now rather than firing a burst to catch up.
                next = now + interval;
            }
        }
    }
}

/// The environment variable through which the runner tells each scenario process how many scenarios it runs
/// at once (absent: this one alone).
pub const SCENARIOS_AT_ONCE_ENV: &str = "NETFAULT_SCENARIOS_AT_ONCE";

/// The share of the machine's CPUs that the periodic samples of every observer of every scenario running at
/// once may take. Observers run real-time, so past it they starve every ordinary thread: measured in a 2-vCPU
/// emulated (TCG) VM, where a dump costs 50 times what it costs here, 50 scenarios sampling every 10 ms left
/// ordinary threads (the scenarios' own teardown and reports, the runner, a shell) without a CPU for tens of
/// seconds, and 44 scenario processes were killed at their deadline with no report.
const OBSERVERS_CPU_SHARE: f64 = 0.25;

fn scenarios_at_once() -> usize {
    std::env::var(SCENARIOS_AT_ONCE_ENV).ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// The sampling interval an observer keeps: the scenario's, or longer where a dump costs so much that the
/// observers of all the scenarios running at once would take more than [`OBSERVERS_CPU_SHARE`] of `cpus`.
/// Samples asked for by events (SYN, FIN, RST, a step's end) are not paced.
fn paced(interval: Duration, mean_dump: Duration, observers_at_once: usize, cpus: usize) -> Duration {
    let share_per_observer = OBSERVERS_CPU_SHARE * cpus as f64 / observers_at_once.max(1) as f64;
    interval.max(Duration::from_secs_f64(mean_dump.as_secs_f64() / share_per_observer))
}

/// What the owner of an observer tells its thread.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// Something just happened (a SYN, FIN or RST, a step's end): sample now rather than at the next tick.
    SampleNow,
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
    fn sampling_slows_down_only_where_all_observers_would_take_more_than_their_share() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // This machine: 17 us dumps, 100 observers (50 scenarios) on 2 CPUs: 3.4 ms of CPU per 10 ms interval
        // would be their share; the scenario's 10 ms stands.
        assert_eq!(paced(ms(10), us(17), 100, 2), ms(10));
        // An emulated machine: 1 ms dumps: 200 ms between periodic samples keeps them to a quarter of 2 CPUs.
        assert_eq!(paced(ms(10), ms(1), 100, 2), ms(200));
        // One scenario alone keeps its interval even then.
        assert_eq!(paced(ms(10), ms(1), 2, 2), ms(10));
    }
}

#[cfg(test)]
mod kernel_tests;

//! The run's single clock: t0 taken once, every event stamped relative to it.

use crate::run::handoff;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::observe::decode::SharedIsns;
use crate::scenario::plan::HostId;
use crate::timeline::{Event, EventKind};

/// t0 on the monotonic clock, and the wall-clock time of the same instant for pcap timestamps.
///
/// A clock can be handed out before it starts (capture and observer are set up first); until
/// [`Clock::start`] every time reads as zero, and every copy sees t0 once it is set.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    t0: Arc<OnceLock<T0>>,
}

/// The same instant read three ways: packets carry wall-clock timestamps (`SO_TIMESTAMPNS`), the kernel's
/// state transitions monotonic ones (`bpf_ktime_get_ns`), user-space events `Instant`s.
#[derive(Debug, Clone, Copy)]
struct T0 {
    instant: Instant,
    wall: SystemTime,
    /// CLOCK_MONOTONIC in nanoseconds, the clock `Instant` and `bpf_ktime_get_ns` read.
    monotonic_ns: u64,
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid one given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

impl Clock {
    /// A clock whose t0 is not set yet.
    pub fn unstarted() -> Clock {
        Clock::default()
    }

    /// A clock started now.
    #[cfg(any(test, feature = "bench"))]
    pub fn started() -> Clock {
        let clock = Clock::unstarted();
        clock.start();
        clock
    }

    /// Sets t0 to now; later calls keep the first t0.
    pub fn start(&self) {
        let _ = self.t0.set(T0 { instant: Instant::now(), monotonic_ns: monotonic_ns(), wall: SystemTime::now() });
    }

    /// Time since t0 (zero before the start).
    pub fn now(&self) -> Duration {
        self.at(Instant::now())
    }

    /// Time from t0 to a monotonic instant (zero if it is before t0 or the clock has not started).
    pub fn at(&self, instant: Instant) -> Duration {
        self.t0.get().map_or(Duration::ZERO, |t0| instant.saturating_duration_since(t0.instant))
    }

    /// t0 on the wall clock (the time base of the pcaps); `None` before the start.
    pub fn t0_wall(&self) -> Option<SystemTime> {
        self.t0.get().map(|t0| t0.wall)
    }

    /// Converts a kernel wall-clock timestamp (a packet's) to time since t0; earlier than t0 gives zero.
    pub fn since_t0(&self, wall: SystemTime) -> Duration {
        self.t0.get().map_or(Duration::ZERO, |t0| wall.duration_since(t0.wall).unwrap_or(Duration::ZERO))
    }

    /// Converts a kernel monotonic timestamp (a state transition's, in nanoseconds) to time since t0; earlier
    /// than t0 gives zero.
    pub fn since_t0_monotonic(&self, ns: u64) -> Duration {
        self.t0.get().map_or(Duration::ZERO, |t0| Duration::from_nanos(ns.saturating_sub(t0.monotonic_ns)))
    }
}

/// Where every producer (actors, capture, observer, schedule) sends its events, stamped on the one clock.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: handoff::Sender<Event>,
    clock: Clock,
    /// The run's TCP sequence number bases, so that every producer of packet events numbers them alike.
    initial_seqs: SharedIsns,
}

impl EventSink {
    pub fn new(clock: Clock) -> (EventSink, handoff::Receiver<Event>) {
        let (tx, rx) = handoff::channel();
        (EventSink { tx, clock, initial_seqs: SharedIsns::default() }, rx)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The initial sequence numbers the run's decoders share.
    pub fn initial_seqs(&self) -> &SharedIsns {
        &self.initial_seqs
    }

    /// Records `kind` on `host` at a time measured elsewhere (a packet's kernel timestamp).
    pub fn emit_at(&self, t: Duration, host: HostId, kind: EventKind) {
        // The receiver is gone only once the run is over; late events have nowhere to go.
        let _ = self.tx.send(Event { t, host, kind });
    }

    /// Records events measured elsewhere, in order, with one hand-over (a capture's chunk of packets).
    pub fn emit_all(&self, events: impl IntoIterator<Item = Event>) {
        // As for `emit_at`.
        let _ = self.tx.send_all(events);
    }
}

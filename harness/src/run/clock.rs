//! The run's single clock: t0 taken once, every event stamped relative to it.

use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::scenario::plan::HostId;
use crate::timeline::{Event, EventKind};

/// t0 on the monotonic clock, and the wall-clock time of the same instant for pcap timestamps.
///
/// A clock can be handed out before it starts (capture and observer are set up first); until
/// [`Clock::start`] every time reads as zero, and every copy sees t0 once it is set.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    t0: Arc<OnceLock<(Instant, SystemTime)>>,
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
        let _ = self.t0.set((Instant::now(), SystemTime::now()));
    }

    /// Time since t0 (zero before the start).
    pub fn now(&self) -> Duration {
        self.at(Instant::now())
    }

    /// Time from t0 to a monotonic instant (zero if it is before t0 or the clock has not started).
    pub fn at(&self, instant: Instant) -> Duration {
        self.t0.get().map_or(Duration::ZERO, |(t0, _)| instant.saturating_duration_since(*t0))
    }

    /// t0 on the wall clock (the time base of the pcaps); `None` before the start.
    pub fn t0_wall(&self) -> Option<SystemTime> {
        self.t0.get().map(|(_, wall)| *wall)
    }

    /// Converts a kernel wall-clock timestamp (a packet's) to time since t0; earlier than t0 gives zero.
    pub fn since_t0(&self, wall: SystemTime) -> Duration {
        self.t0.get().map_or(Duration::ZERO, |(_, t0_wall)| wall.duration_since(*t0_wall).unwrap_or(Duration::ZERO))
    }
}

/// Where every producer (actors, capture, observer, schedule) sends its events, stamped on the one clock.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    clock: Clock,
}

impl EventSink {
    pub fn new(clock: Clock) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        (EventSink { tx, clock }, rx)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Records `kind` on `host` now.
    pub fn emit(&self, host: HostId, kind: EventKind) {
        self.emit_at(self.clock.now(), host, kind);
    }

    /// Records `kind` on `host` at a time measured elsewhere (a packet's kernel timestamp).
    pub fn emit_at(&self, t: Duration, host: HostId, kind: EventKind) {
        // The receiver is gone only once the run is over; late events have nowhere to go.
        let _ = self.tx.send(Event { t, host, kind });
    }
}

//! The run's single clock: t0 taken once, every event stamped relative to it.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::scenario::plan::HostId;
use crate::timeline::{Event, EventKind};

/// t0 on the monotonic clock, and the wall-clock time of the same instant for pcap timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
    t0_wall: SystemTime,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { t0: Instant::now(), t0_wall: SystemTime::now() }
    }

    /// Time since t0.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Converts a kernel wall-clock timestamp (a packet's) to time since t0; earlier than t0 gives zero.
    pub fn since_t0(&self, wall: SystemTime) -> Duration {
        wall.duration_since(self.t0_wall).unwrap_or(Duration::ZERO)
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

    pub fn clock(&self) -> Clock {
        self.clock
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

//! Whole-run expectations of the plan: packets, traced errors, socket states, timers and queues, each with the
//! zero its times count from; and the kernel's counters and a connection's tcp_info at the end.

use std::time::Duration;

use serde::Serialize;

use super::{Errno, HostId, Location, PacketFilter, StepRef, TcpState, TimerKind, Tolerance};

/// Whole-run expectations checked against the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunExpectations {
    pub packets: Vec<PacketExpectation>,
    pub states: Vec<StateExpectation>,
    pub timers: Vec<TimerExpectation>,
    pub queues: Vec<QueueExpectation>,
    pub errors: Vec<ErrorExpectation>,
    pub counters: Vec<CounterExpectation>,
    pub tcp_info: Vec<TcpInfoExpectation>,
}

/// A kernel counter of `host` (`nstat` name), or the sum of several, at the end of the run lies in [`min`,
/// `max`].
#[derive(Debug, Clone, Serialize)]
pub struct CounterExpectation {
    pub host: HostId,
    pub counters: Vec<String>,
    pub min: Option<CounterBound>,
    pub max: Option<CounterBound>,
    pub location: Location,
}

/// One bound of a counter expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterBound {
    Count(u64),
    /// How many decisions the impairment of this name made in the run (its `impairment` events): the kernel's
    /// count of what the wire did, asserted exactly whatever the seed.
    Decisions(String),
}

/// The last `tcp_info` sample (`ss -i`) of a connection of `host` shows `rtt` and `rto` in their ranges.
#[derive(Debug, Clone, Serialize)]
pub struct TcpInfoExpectation {
    pub host: HostId,
    /// Local or remote port of the socket (any connection when `None`).
    pub port: Option<u16>,
    pub rtt: Option<DurationRange>,
    pub rto: Option<DurationRange>,
    pub location: Location,
}

/// Inclusive bounds; `None` leaves that side open.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Option<Duration>,
    pub max: Option<Duration>,
}

impl DurationRange {
    pub fn contains(&self, value: Duration) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }
}

/// Packets matching `filter`: how many, and when.
#[derive(Debug, Clone, Serialize)]
pub struct PacketExpectation {
    pub filter: PacketFilter,
    /// Exactly this many (`0` = none at all).
    pub count: Option<u32>,
    /// Times at which they are seen, in order; the count must match when given.
    pub at: Vec<Duration>,
    /// Only packets seen in this scenario-time window count.
    pub window: Option<(Duration, Duration)>,
    /// The last this many intervals between the packets each last twice the one before (`tolerance` of it):
    /// a retransmission timer's exponential backoff, whatever RTO the connection started from.
    pub doubling: Option<u32>,
    pub tolerance: Tolerance,
    /// Times (`at`, `window`) count from this step's end or packet, and only packets from then on count.
    pub since: Option<Since>,
    pub location: Location,
}

/// Errno events of the programs traced on `host` (exec steps with `trace: true`): the socket calls that
/// failed, selected by port, errno and call; how many, and when they returned.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorExpectation {
    pub host: HostId,
    /// The local or remote port of the call's socket.
    pub port: Option<u16>,
    pub errno: Option<Errno>,
    /// The system call as strace names it (`recvfrom`, `connect`), or `getsockopt SO_ERROR`.
    pub call: Option<String>,
    /// Exactly this many (`0` = none at all).
    pub count: Option<u32>,
    /// Times at which the calls returned, in order; the count must match when given.
    pub at: Vec<Duration>,
    /// Only calls that returned in this window count.
    pub window: Option<(Duration, Duration)>,
    pub tolerance: Tolerance,
    pub since: Option<Since>,
    pub location: Location,
}

/// What an expectation's times count from (`since:`) instead of t0.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// The end of a named step: `since: client.connect`.
    Step(StepRef),
    /// The start of a named step: `since: { started: client.connect }`.
    Started(StepRef),
    /// The n-th (1-based) packet matching the filter, as its sender's capture saw it leave:
    /// `since: { packet: { from: server, window: 0 }, nth: 1 }`. Its kernel timestamp is exact, where a
    /// step's end is stamped by a thread that may run late.
    Packet { filter: PacketFilter, nth: u32 },
    /// When the retransmission timer armed by the last packet matching the filter expires: that packet's time
    /// plus twice the interval since the one before it, the kernel doubling the RTO at each expiry
    /// (`since: { next-retransmission: { from: client, len: 17 } }`). What the kernel does there (give up
    /// with ETIMEDOUT, or retransmit once more) is then timed by the connection's own RTO, not a figure.
    NextRetransmission { filter: PacketFilter },
}

/// A socket of `host` goes through these states in order (other states may come between).
#[derive(Debug, Clone, Serialize)]
pub struct StateExpectation {
    pub host: HostId,
    /// Which socket: local or remote port; `None` = any socket of the host that is not a listener.
    pub port: Option<u16>,
    pub sequence: Vec<StateStep>,
    pub tolerance: Tolerance,
    /// `at` times count from this step's end or packet.
    pub since: Option<Since>,
    pub location: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateStep {
    pub state: TcpState,
    /// Scenario time at which the socket enters the state.
    pub at: Option<Duration>,
}

/// A socket of `host` shows `timer`, with its retransmission / probe count reaching `retrans`.
#[derive(Debug, Clone, Serialize)]
pub struct TimerExpectation {
    pub host: HostId,
    pub port: Option<u16>,
    pub timer: TimerKind,
    pub retrans: Option<u32>,
    /// The state the socket is in when the timer is seen.
    pub state: Option<TcpState>,
    pub location: Location,
}

/// `ss` Recv-Q or Send-Q.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// `Recv-Q`: unread bytes; for a listener, connections waiting in the accept queue.
    Recv,
    /// `Send-Q`: unacknowledged and unsent bytes; for a listener, its backlog.
    Send,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Recv => "Recv-Q",
            QueueKind::Send => "Send-Q",
        }
    }
}

/// A socket of `host` shows these values of one queue in order (other values may come between), and never
/// more than `max`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueExpectation {
    pub host: HostId,
    /// Which socket: local or remote port; `None` = any.
    pub port: Option<u16>,
    /// Only listeners (`LISTEN`) when true, only other sockets when false.
    pub listener: bool,
    pub queue: QueueKind,
    /// Values in the order they are seen; may be empty when only `max` is asked.
    pub sequence: Vec<QueueStep>,
    /// No selected socket ever shows more than this.
    pub max: Option<u32>,
    /// Some selected socket shows at least this at some time.
    pub reaches: Option<u32>,
    pub tolerance: Tolerance,
    /// `at` times count from this step's end or packet.
    pub since: Option<Since>,
    pub location: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStep {
    pub value: u32,
    /// Scenario time at which the queue takes this value.
    pub at: Option<Duration>,
}

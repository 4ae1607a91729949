//! The timeline: every event of a run on one clock (time since t0), in order, and its text form.
//!
//! Actors, the fault schedule, the capture decoder and the observer all produce `Event`s; the timeline is
//! what the verdict reads and what timeline.txt shows, one line per event. It is the run's read model: the
//! questions asked of a run ([`query`]) live here, so the engine, the verdict and the report ask them alike.

mod decision;
pub mod query;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

pub use decision::{Decision, DecisionKind, ImpairmentEvent, PacketKey};

use crate::scenario::plan::{HostId, Protocol, TcpState, TimerKind};

/// Something that happened at `t` (time since t0) on `host`.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct Event {
    /// Seconds since t0.
    #[serde(serialize_with = "serialize_secs")]
    #[schemars(with = "f64")]
    pub t: Duration,
    pub host: HostId,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    FaultOn {
        fault: String,
    },
    FaultOff {
        fault: String,
    },
    StepStart {
        step: usize,
        label: String,
    },
    StepEnd {
        step: usize,
        label: String,
        outcome: Outcome,
        detail: Option<String>,
        /// `exec` output patterns that matched nowhere in the program's output, as `stdout /re/`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        unmatched: Vec<String>,
    },
    Packet(PacketEvent),
    Socket(SocketEvent),
    /// A TCP socket changed state, as the kernel's own `sock:inet_sock_set_state` event says, at its time.
    Transition(TransitionEvent),
    /// What the wire's impairments did to a packet (or a segment they forged), when it reached the wire.
    Impairment(ImpairmentEvent),
    /// The host's kernel counters at the end of the run (`nstat`), those that are not zero.
    Counters {
        counters: std::collections::BTreeMap<String, u64>,
    },
    /// A socket call of a traced exec program that failed, or an error it read with `getsockopt(SO_ERROR)`.
    Errno(ErrnoEvent),
    /// The run was cut at the deadline with this step still running.
    Deadline {
        step: Option<String>,
    },
}

/// A step's actual result, expected or not.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Bytes(u64),
    Eof,
    Error(String),
    Events(Vec<String>),
    Timeout,
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The step was still running when the scenario ended.
    Unfinished,
    /// A `getsockopt` read this value (as `SockOptValue`'s canonical text: `2304`, `500ms`, `{on,3}`, `cubic`).
    Value(String),
    /// A `getsockopt: TCP_INFO` read these fields of `struct tcp_info`, by name (times in the kernel's units:
    /// microseconds, or milliseconds for the `last_*` fields and `total_rto_time`).
    TcpInfo(BTreeMap<String, u64>),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Bytes(n) => write!(f, "{n} bytes"),
            Outcome::Eof => f.write_str("EOF"),
            Outcome::Error(name) => f.write_str(name),
            Outcome::Events(events) if events.is_empty() => f.write_str("no events"),
            Outcome::Events(events) => f.write_str(&events.join("|")),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Exit { code: Some(code), .. } => write!(f, "exit {code}"),
            Outcome::Exit { signal: Some(signal), .. } => write!(f, "killed by signal {signal}"),
            Outcome::Exit { .. } => f.write_str("exit ?"),
            Outcome::Unfinished => f.write_str("unfinished"),
            Outcome::Value(value) => write!(f, "value {value}"),
            Outcome::TcpInfo(read) => write!(f, "tcp_info {}", crate::scenario::tcp_info::describe(read)),
        }
    }
}

/// Direction of a packet as seen on the host's veth end.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PacketDirection {
    In,
    Out,
}

/// One captured packet, decoded as tcpdump would print it.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct PacketEvent {
    pub direction: PacketDirection,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    #[schemars(with = "String")]
    pub protocol: IpProtocol,
    /// IPv4 identification field (tells a retransmission from the original: `tcpdump -v` shows it as `id`);
    /// IPv6 has none (0, or a fragment header's low 16 bits).
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (FIN=0x01 ... CWR=0x80).
    pub flags: u8,
    /// Relative to the first SYN of the connection in that direction, as tcpdump prints without -S.
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// TCP payload length.
    pub len: u32,
    /// Notable options: mss, wscale, sackOK, TS; and ICMP type/code text for ICMP.
    pub options: String,
    /// Name of the fault whose rule dropped or rejected this packet.
    pub fault: Option<String>,
    /// The sending host's kernel dropped it before it reached the wire (no capture has it: the transition
    /// tracer saw the drop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<DroppedBy>,
    /// What the wire's impairments did to this packet, one label per decision (`lossy #17: lost`), on the
    /// sender's copy and on each copy the receiver got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impairments: Vec<String>,
}

/// The IPv4 protocol of a captured packet: one the scenario format names, or another by its number. Written
/// as tcpdump does: `tcp`, `udp`, `icmp`, or the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpProtocol {
    Known(Protocol),
    Other(u8),
}

impl IpProtocol {
    pub fn from_number(number: u8) -> IpProtocol {
        [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Icmpv6]
            .into_iter()
            .find(|known| known.number() == number)
            .map_or(IpProtocol::Other(number), IpProtocol::Known)
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Known(protocol) => f.write_str(protocol.name()),
            IpProtocol::Other(number) => write!(f, "{number}"),
        }
    }
}

impl Serialize for IpProtocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A change of one socket as sock_diag shows it (`ss -tanoi`).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct SocketEvent {
    /// `local:port -> remote:port` (remote `*:*` for a listener).
    pub socket: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub state: TcpState,
    pub timer: Option<TimerKind>,
    /// Time until the timer fires.
    #[serde(serialize_with = "serialize_opt_secs")]
    #[schemars(with = "Option<f64>")]
    pub expires: Option<Duration>,
    /// Retransmissions / probes so far (`ss -o` third timer field).
    pub retrans: u32,
    pub recv_q: u32,
    pub send_q: u32,
    /// `ss -i` `rtt:` (the smoothed round-trip time) and `rto:`, for full sockets (`tcp_info`); sampled with the
    /// changes above, not a change of their own. Seconds.
    #[serde(serialize_with = "serialize_opt_secs")]
    #[schemars(with = "Option<f64>")]
    pub rtt: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_secs")]
    #[schemars(with = "Option<f64>")]
    pub rto: Option<Duration>,
}

/// What dropped a packet inside its sender, as the kernel's drop reason says.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DroppedBy {
    /// An nftables rule (`SKB_DROP_REASON_NETFILTER_DROP`): the sender's TCP sees a failed transmit (-EPERM).
    Netfilter,
    /// The queueing discipline (`SKB_DROP_REASON_TC_EGRESS` or `QDISC_DROP`): TCP sees local congestion.
    Qdisc,
}

impl DroppedBy {
    pub fn name(self) -> &'static str {
        match self {
            DroppedBy::Netfilter => "netfilter",
            DroppedBy::Qdisc => "its queueing discipline",
        }
    }
}

/// One TCP state transition of a full socket (request and TIME-WAIT sockets have none: sock_diag shows those).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct TransitionEvent {
    /// `local:port -> remote:port` (remote `*:*` for a listener), as socket samples name it.
    pub socket: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub from: TcpState,
    pub to: TcpState,
}

/// A socket call of a program started by an `exec` step with `trace: true`, as `strace -f -yy` shows it: a
/// call that returned -1 with an errno, or `getsockopt(SO_ERROR)` giving a pending error. The event's time is
/// when the call returned.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ErrnoEvent {
    /// The exec step (0-based index in its host's program) whose program, or a process it started, made the call.
    pub step: usize,
    /// The calling process, as the scenario's PID namespace numbers it.
    pub pid: u32,
    /// The system call as strace names it (`recvfrom`, `connect`), or `getsockopt SO_ERROR`.
    pub call: String,
    /// The errno's name, e.g. `ETIMEDOUT`.
    pub errno: String,
    /// `local:port -> remote:port` as far as known (`0.0.0.0:0` for an unknown side).
    pub socket: String,
    pub local_port: u16,
    pub remote_port: u16,
    /// How long the call took, in seconds.
    #[serde(serialize_with = "serialize_secs")]
    #[schemars(with = "f64")]
    pub took: Duration,
}

/// All events of a run, sorted by time (stable for equal times).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    pub events: Vec<Event>,
}

impl Timeline {
    pub fn new(mut events: Vec<Event>) -> Timeline {
        events.sort_by_key(|e| e.t);
        Timeline { events }
    }

    /// Lines of timeline.txt around scenario time `t`: `before` lines before and `after` lines after.
    pub fn lines_around(&self, t: Duration, before: usize, after: usize) -> Vec<String> {
        let pivot = self.events.partition_point(|e| e.t < t);
        let start = pivot.saturating_sub(before);
        let end = (pivot + after).min(self.events.len());
        self.events[start..end].iter().map(|e| e.to_string()).collect()
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for event in &self.events {
            writeln!(f, "{event}")?;
        }
        Ok(())
    }
}

/// `12.345678` seconds, as tcpdump's relative timestamps.
pub fn format_secs(t: Duration) -> String {
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

/// `ss` flag letters in tcpdump's order: `S`, `F`, `R`, `P`, `.` for ACK, `U`, `E`, `W`.
pub fn format_tcp_flags(flags: u8) -> String {
    let mut out = String::new();
    for (bit, letter) in [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P'), (0x20, 'U'), (0x40, 'E'), (0x80, 'W')] {
        if flags & bit != 0 {
            out.push(letter);
        }
    }
    if flags & 0x10 != 0 {
        out.push('.');
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>11} {:<6} ", format_secs(self.t), self.host.name())?;
        match &self.kind {
            EventKind::FaultOn { fault } => write!(f, "fault  {fault} ON"),
            EventKind::FaultOff { fault } => write!(f, "fault  {fault} OFF"),
            EventKind::StepStart { label, .. } => write!(f, "step   {label} ..."),
            EventKind::StepEnd { label, outcome, detail, unmatched, .. } => {
                write!(f, "step   {label} -> {outcome}")?;
                let unmatched = (!unmatched.is_empty()).then(|| format!("pattern not found: {}", unmatched.join(", ")));
                let notes: Vec<&str> = unmatched.iter().chain(detail).map(String::as_str).collect();
                if !notes.is_empty() {
                    write!(f, " ({})", notes.join("; "))?;
                }
                Ok(())
            }
            EventKind::Packet(p) => {
                let arrow = match p.direction {
                    PacketDirection::Out => "out",
                    PacketDirection::In => "in ",
                };
                write!(f, "{arrow}    {p}")?;
                let marks: Vec<&str> = p.fault.iter().chain(&p.impairments).map(String::as_str).collect();
                if !marks.is_empty() {
                    write!(f, "  << {}", marks.join("; "))?;
                }
                if let Some(dropped) = p.dropped {
                    write!(f, " (dropped by {} before it left)", dropped.name())?;
                }
                Ok(())
            }
            EventKind::Impairment(impairment) => {
                let decision = &impairment.decision;
                write!(f, "wire   {} #{}: {}", decision.fault, impairment.n, decision.kind)?;
                if let Some(packet) = &impairment.packet {
                    write!(f, ": {packet}")?;
                }
                Ok(())
            }
            EventKind::Socket(s) => {
                write!(f, "ss     {:<11} {} rq {} sq {}", s.state.name(), s.socket, s.recv_q, s.send_q)?;
                if let Some(timer) = s.timer {
                    let expires = s.expires.map(|e| format!("{}ms", e.as_millis())).unwrap_or_default();
                    write!(f, " timer:({timer},{expires},{})", s.retrans)?;
                }
                Ok(())
            }
            EventKind::Transition(t) => {
                write!(f, "tcp    {} -> {} {}", t.from.name(), t.to.name(), t.socket)
            }
            EventKind::Counters { counters } => {
                f.write_str("nstat ")?;
                for (name, value) in counters {
                    write!(f, " {name} {value}")?;
                }
                Ok(())
            }
            EventKind::Errno(e) => write!(
                f,
                "errno  #{} pid {} {} {} = {} after {}s",
                e.step + 1,
                e.pid,
                e.call,
                e.socket,
                e.errno,
                format_secs(e.took)
            ),
            EventKind::Deadline { step: Some(step) } => write!(f, "DEADLINE reached; still running: {step}"),
            EventKind::Deadline { step: None } => write!(f, "DEADLINE reached"),
        }
    }
}

impl PacketEvent {
    /// The acknowledgment number, when the segment carries one (its ACK flag is set): tcpdump prints none for
    /// a SYN or a RST without ACK, whose field means nothing.
    pub fn shown_ack(&self) -> Option<u32> {
        const TCP_ACK: u8 = 0x10;
        (self.flags & TCP_ACK != 0).then_some(self.ack)
    }
}

#[cfg(test)]
impl PacketEvent {
    /// For tests: a TCP segment leaving the client (10.0.0.1:40000 > 10.0.0.2:9000) with these flags and this
    /// much payload, every other field zero or empty; a test sets what else it needs with `..`.
    pub fn test_segment(flags: u8, len: u32) -> PacketEvent {
        PacketEvent {
            direction: PacketDirection::Out,
            src: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            dst: std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            protocol: IpProtocol::Known(Protocol::Tcp),
            ip_id: 0,
            sport: 40000,
            dport: 9000,
            flags,
            seq: 0,
            ack: 0,
            window: 0,
            len,
            options: String::new(),
            fault: None,
            dropped: None,
            impairments: Vec::new(),
        }
    }
}

/// The packet as `tcpdump -n` prints it, without the time: `10.0.0.1.35712 > 10.0.0.2.9000: Flags [.], ...`.
impl fmt::Display for PacketEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self;
        if p.protocol != IpProtocol::Known(Protocol::Tcp) {
            return write!(f, "{} > {}: {} {}", p.src, p.dst, p.protocol, p.options);
        }
        write!(
            f,
            "{}.{} > {}.{}: Flags [{}], seq {}",
            p.src,
            p.sport,
            p.dst,
            p.dport,
            format_tcp_flags(p.flags),
            p.seq
        )?;
        if let Some(ack) = p.shown_ack() {
            write!(f, ", ack {ack}")?;
        }
        write!(f, ", win {}, length {}", p.window, p.len)?;
        if !p.options.is_empty() {
            write!(f, ", [{}]", p.options)?;
        }
        Ok(())
    }
}

fn serialize_secs<S: serde::Serializer>(t: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(t.as_secs_f64())
}

fn serialize_opt_secs<S: serde::Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.as_secs_f64()),
        None => s.serialize_none(),
    }
}

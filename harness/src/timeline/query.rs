//! Queries on the timeline, the run's read model: a step's start and end, the packets a host sent, each
//! socket's history of states or queue values, the errno events of traced programs. The verdict, the engine's triggers and the report all read the
//! run through these.

use std::time::Duration;

use serde::Serialize;

use super::{ErrnoEvent, Event, EventKind, IpProtocol, Outcome, PacketDirection, PacketEvent, SocketEvent, Timeline};
use crate::scenario::plan::{ErrorExpectation, HostId, PacketFilter, Protocol, QueueExpectation, QueueKind, TcpState};

/// The start and end of one step as the timeline recorded them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub host: HostId,
    pub index: usize,
    #[serde(serialize_with = "secs_opt")]
    pub start: Option<Duration>,
    #[serde(serialize_with = "secs_opt")]
    pub end: Option<Duration>,
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
    /// `exec` output patterns that matched nowhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<String>,
}

impl StepRecord {
    pub fn elapsed(&self) -> Option<Duration> {
        Some(self.end?.saturating_sub(self.start?))
    }
}

/// Finds the start and end events of a host's step.
pub fn step_record(timeline: &Timeline, host: HostId, index: usize) -> StepRecord {
    let mut record =
        StepRecord { host, index, start: None, end: None, outcome: None, detail: None, unmatched: Vec::new() };
    for event in timeline.events.iter().filter(|e| e.host == host) {
        match &event.kind {
            EventKind::StepStart { step, .. } if *step == index => record.start = Some(event.t),
            EventKind::StepEnd { step, outcome, detail, unmatched, .. } if *step == index => {
                record.end = Some(event.t);
                record.outcome = Some(outcome.clone());
                record.detail.clone_from(detail);
                record.unmatched.clone_from(unmatched);
            }
            _ => {}
        }
    }
    record
}
/// The errno events of `host`'s traced programs that the expectation selects (port, errno, call).
pub fn errno_events<'a>(
    timeline: &'a Timeline,
    expectation: &'a ErrorExpectation,
) -> impl Iterator<Item = (Duration, &'a ErrnoEvent)> + 'a {
    timeline.events.iter().filter_map(move |event| match &event.kind {
        EventKind::Errno(errno)
            if event.host == expectation.host
                && expectation.port.is_none_or(|port| errno.local_port == port || errno.remote_port == port)
                && expectation.errno.is_none_or(|wanted| wanted.name() == errno.errno)
                && expectation.call.as_ref().is_none_or(|call| *call == errno.call) =>
        {
            Some((event.t, errno))
        }
        _ => None,
    })
}

/// Packets sent by a host as its own capture saw them leave (each packet once).
pub fn sent_packets<'a>(
    timeline: &'a Timeline,
    filter: &'a PacketFilter,
) -> impl Iterator<Item = (Duration, &'a PacketEvent)> + 'a {
    timeline.events.iter().filter_map(move |event| match &event.kind {
        EventKind::Packet(packet)
            if packet.direction == PacketDirection::Out
                && filter.from.is_none_or(|from| from == event.host)
                && packet_matches(filter, packet) =>
        {
            Some((event.t, packet))
        }
        _ => None,
    })
}

/// Whether a packet has the filter's protocol (TCP unless it says otherwise), flags, payload length and window;
/// `from` is left to the caller, which knows the capturing host.
pub fn packet_matches(filter: &PacketFilter, packet: &PacketEvent) -> bool {
    packet.protocol == IpProtocol::Known(filter.protocol.unwrap_or(Protocol::Tcp))
        && filter.flags.is_none_or(|flags| flags.matches(packet.flags))
        && filter.len.is_none_or(|len| len == packet.len)
        && filter.window.is_none_or(|window| window == packet.window)
}

/// Appends `value` at `t` to the history of `socket` (created on first sight) when it differs from the last.
fn record_change<T: PartialEq>(histories: &mut Vec<(String, Vec<(T, Duration)>)>, socket: &str, value: T, t: Duration) {
    let position = match histories.iter().position(|(name, _)| name == socket) {
        Some(position) => position,
        None => {
            histories.push((socket.to_string(), Vec::new()));
            histories.len() - 1
        }
    };
    let history = &mut histories[position].1;
    if history.last().map(|(last, _)| last) != Some(&value) {
        history.push((value, t));
    }
}

/// Each socket's consecutive distinct states with the time it entered them, in first-seen order.
pub fn socket_histories(timeline: &Timeline, host: HostId) -> Vec<(String, Vec<(TcpState, Duration)>)> {
    let mut histories: Vec<(String, Vec<(TcpState, Duration)>)> = Vec::new();
    for event in timeline.events.iter().filter(|e| e.host == host) {
        let EventKind::Socket(socket) = &event.kind else { continue };
        record_change(&mut histories, &socket.socket, socket.state, event.t);
    }
    histories
}

pub fn socket_events<'a>(
    timeline: &'a Timeline,
    host: HostId,
    socket: &'a str,
) -> impl Iterator<Item = &'a SocketEvent> {
    timeline.events.iter().filter_map(move |e: &Event| match &e.kind {
        EventKind::Socket(s) if e.host == host && s.socket == socket => Some(s),
        _ => None,
    })
}

/// Each selected socket's consecutive distinct values of one queue with the time it took them, in first-seen
/// order; a socket's history ends when it is gone.
pub fn queue_histories(timeline: &Timeline, expectation: &QueueExpectation) -> Vec<(String, Vec<(u32, Duration)>)> {
    let mut histories: Vec<(String, Vec<(u32, Duration)>)> = Vec::new();
    for event in timeline.events.iter().filter(|e| e.host == expectation.host) {
        let EventKind::Socket(socket) = &event.kind else { continue };
        let is_listener = socket.socket.ends_with("*:*");
        if socket.state == TcpState::Gone
            || is_listener != expectation.listener
            || expectation.port.is_some_and(|port| socket.local_port != port && socket.remote_port != port)
        {
            continue;
        }
        let value = match expectation.queue {
            QueueKind::Recv => socket.recv_q,
            QueueKind::Send => socket.send_q,
        };
        record_change(&mut histories, &socket.socket, value, event.t);
    }
    histories
}

/// The host's kernel counters as read at the end of the run (`nstat`), and when.
pub fn counters(timeline: &Timeline, host: HostId) -> Option<(Duration, &std::collections::BTreeMap<String, u64>)> {
    timeline.events.iter().rev().find_map(|event| match &event.kind {
        EventKind::Counters { counters } if event.host == host => Some((event.t, counters)),
        _ => None,
    })
}

/// How many decisions the impairment named `fault` made (its `impairment` events).
pub fn decisions_of(timeline: &Timeline, fault: &str) -> u64 {
    let made =
        |event: &&Event| matches!(&event.kind, EventKind::Impairment(impairment) if impairment.decision.fault == fault);
    timeline.events.iter().filter(made).count() as u64
}

/// The last socket sample of `host` that carries `tcp_info` (a full socket), of a socket with `port` as its
/// local or remote port when one is given.
pub fn last_tcp_info(timeline: &Timeline, host: HostId, port: Option<u16>) -> Option<(Duration, &SocketEvent)> {
    timeline.events.iter().rev().find_map(|event| match &event.kind {
        EventKind::Socket(socket)
            if event.host == host
                && socket.rtt.is_some()
                && port.is_none_or(|port| socket.local_port == port || socket.remote_port == port) =>
        {
            Some((event.t, socket))
        }
        _ => None,
    })
}

fn secs_opt<S: serde::Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.as_secs_f64()),
        None => s.serialize_none(),
    }
}

//! Queries on the timeline, the run's read model: a step's start and end, the packets a host sent, each
//! socket's history of states or queue values, the errno events of traced programs. The verdict, the engine's
//! triggers and the report all read the run through these. Each is one pass over the events (or over what an
//! earlier pass sorted out), so a run of tens of thousands of steps is read in time linear in its events.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::{
    ErrnoEvent, EventKind, IpProtocol, Outcome, PacketDirection, PacketEvent, SocketEvent, Timeline, TransitionEvent,
};
use crate::scenario::plan::{
    ErrorExpectation, HostId, PacketFilter, Plan, Protocol, QueueExpectation, QueueKind, TcpState,
};

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

/// Every step's record, indexed by host and step, found in one pass over the timeline.
#[derive(Debug, Clone)]
pub struct StepRecords {
    /// By `HostId::index()`, then by step index.
    by_host: [Vec<StepRecord>; 2],
}

impl StepRecords {
    pub fn of(plan: &Plan, timeline: &Timeline) -> StepRecords {
        let mut by_host = HostId::ALL.map(|host| {
            (0..plan.host(host).steps.len()).map(|index| StepRecord::empty(host, index)).collect::<Vec<_>>()
        });
        for event in &timeline.events {
            // A router runs no steps.
            let Some(records) = by_host.get_mut(event.host.index()) else { continue };
            match &event.kind {
                EventKind::StepStart { step, .. } => {
                    if let Some(record) = records.get_mut(*step) {
                        record.start = Some(event.t);
                    }
                }
                EventKind::StepEnd { step, outcome, detail, unmatched, .. } => {
                    if let Some(record) = records.get_mut(*step) {
                        record.end = Some(event.t);
                        record.outcome = Some(outcome.clone());
                        record.detail.clone_from(detail);
                        record.unmatched.clone_from(unmatched);
                    }
                }
                _ => {}
            }
        }
        StepRecords { by_host }
    }

    /// The record of `host`'s step `index`; `None` for a step the plan does not have.
    pub fn get(&self, host: HostId, index: usize) -> Option<&StepRecord> {
        self.by_host.get(host.index())?.get(index)
    }
}

impl StepRecord {
    /// A step that neither started nor ended.
    pub fn empty(host: HostId, index: usize) -> StepRecord {
        StepRecord { host, index, start: None, end: None, outcome: None, detail: None, unmatched: Vec::new() }
    }
}

/// When the run was cut at its deadline (scenario time), if it was.
pub fn deadline_of(timeline: &Timeline) -> Option<Duration> {
    timeline.events.iter().find_map(|e| matches!(e.kind, EventKind::Deadline { .. }).then_some(e.t))
}

/// Whether a step was still running when the run reached its `deadline`: it started and had not ended by then
/// (it never ended, the deadline cut it `unfinished`, or it ended only afterwards, as when the run stopped the
/// peer program it was blocked on).
pub fn ran_into_deadline(record: &StepRecord, deadline: Option<Duration>) -> bool {
    let Some(deadline) = deadline else { return false };
    record.start.is_some()
        && match (record.end, &record.outcome) {
            (None, _) | (_, Some(Outcome::Unfinished)) => true,
            (Some(end), _) => end >= deadline,
        }
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

/// A packet as its sender's capture saw it leave: time, sender, packet.
pub type SentPacket<'a> = (Duration, HostId, &'a PacketEvent);

/// Every packet as its sender's capture saw it leave (each packet once), in time order.
pub fn sent_by_all(timeline: &Timeline) -> Vec<SentPacket<'_>> {
    timeline
        .events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Packet(packet) if packet.direction == PacketDirection::Out => {
                Some((event.t, event.host, packet))
            }
            _ => None,
        })
        .collect()
}

/// The packets of `sent` that match `filter` (its `from` included).
pub fn sent_packets<'a>(
    sent: &'a [SentPacket<'a>],
    filter: &'a PacketFilter,
) -> impl Iterator<Item = (Duration, &'a PacketEvent)> + 'a {
    sent.iter()
        .filter(move |(_, host, packet)| filter.from.is_none_or(|from| from == *host) && packet_matches(filter, packet))
        .map(|(t, _, packet)| (*t, *packet))
}

/// Whether a packet has the filter's protocol (TCP unless it says otherwise), flags, payload length and window;
/// `from` is left to the caller, which knows the capturing host.
pub fn packet_matches(filter: &PacketFilter, packet: &PacketEvent) -> bool {
    packet.protocol == IpProtocol::Known(filter.protocol.unwrap_or(Protocol::Tcp))
        && filter.flags.is_none_or(|flags| flags.matches(packet.flags))
        && filter.len.is_none_or(|len| len == packet.len)
        && filter.window.is_none_or(|window| window == packet.window)
        && filter.dropped == packet.dropped.is_some()
}

/// One host's socket events with their times, in time order.
pub type SocketEvents<'a> = Vec<(Duration, &'a SocketEvent)>;

/// Each host's socket events (by `HostId::index()`).
pub fn socket_events_by_host(timeline: &Timeline) -> [SocketEvents<'_>; 3] {
    let mut by_host: [SocketEvents<'_>; 3] = Default::default();
    for event in &timeline.events {
        if let EventKind::Socket(socket) = &event.kind {
            by_host[event.host.index()].push((event.t, socket));
        }
    }
    by_host
}

/// Each host's state transitions (by `HostId::index()`), in time order.
pub fn transitions_by_host(timeline: &Timeline) -> [Vec<(Duration, &TransitionEvent)>; 3] {
    let mut by_host: [Vec<(Duration, &TransitionEvent)>; 3] = Default::default();
    for event in &timeline.events {
        if let EventKind::Transition(transition) = &event.kind {
            by_host[event.host.index()].push((event.t, transition));
        }
    }
    by_host
}

/// A socket as histories name it: its label and ports.
#[derive(Clone, Copy)]
struct Named<'a> {
    socket: &'a str,
    local_port: u16,
    remote_port: u16,
}

impl<'a> From<&'a SocketEvent> for Named<'a> {
    fn from(event: &'a SocketEvent) -> Named<'a> {
        Named { socket: &event.socket, local_port: event.local_port, remote_port: event.remote_port }
    }
}

impl<'a> From<&'a TransitionEvent> for Named<'a> {
    fn from(event: &'a TransitionEvent) -> Named<'a> {
        Named { socket: &event.socket, local_port: event.local_port, remote_port: event.remote_port }
    }
}

/// Consecutive distinct values of something per socket, in first-seen order: one entry per socket label.
struct Histories<'a, T> {
    entries: Vec<(Named<'a>, Vec<(T, Duration)>)>,
    position: HashMap<&'a str, usize>,
}

impl<'a, T: PartialEq> Histories<'a, T> {
    fn new() -> Histories<'a, T> {
        Histories { entries: Vec::new(), position: HashMap::new() }
    }

    /// Appends `value` at `t` to the history of `socket` (created on first sight) when it differs from the last.
    fn record(&mut self, socket: Named<'a>, value: T, t: Duration) {
        let entries = &mut self.entries;
        let position = *self.position.entry(socket.socket).or_insert_with(|| {
            entries.push((socket, Vec::new()));
            entries.len() - 1
        });
        let history = &mut self.entries[position].1;
        if history.last().map(|(last, _)| last) != Some(&value) {
            history.push((value, t));
        }
    }
}

/// One socket's consecutive distinct states with the time it entered each, and its ports.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketHistory {
    /// `local -> remote`, as the socket events name it.
    pub socket: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub states: Vec<(TcpState, Duration)>,
}

impl SocketHistory {
    pub fn is_listener(&self) -> bool {
        self.socket.ends_with("*:*")
    }
}

/// Each socket's consecutive distinct states, in first-seen order, from one host's socket samples and state
/// transitions. A socket the kernel's transitions were traced for takes its states from them, at the kernel's
/// times; its samples add only what no transition shows: its request socket (SYN-RECV), its TIME-WAIT
/// successor, and its disappearance (GONE) where the transitions cannot tell it. A traced socket that goes to
/// CLOSE from any state but FIN-WAIT-2 and CLOSING is GONE at that instant too: the kernel takes a socket out of
/// its tables as it enters CLOSE (`inet_unhash`), so no sample can show it after that, while one that takes
/// those two ways may have left a TIME-WAIT successor, which only samples show. (A socket that lasted less
/// than a sample's interval, a SYN-SENT answered at once by an ICMP error in a slow VM, was seen in no sample,
/// and its disappearance then in none either.) A socket without transitions (the tracer was not available)
/// takes its states from the samples, at the times they were taken.
pub fn socket_histories(
    samples: &[(Duration, &SocketEvent)],
    transitions: &[(Duration, &TransitionEvent)],
) -> Vec<SocketHistory> {
    let traced: HashSet<&str> = transitions.iter().map(|(_, transition)| transition.socket.as_str()).collect();
    let untraceable = |state: TcpState| matches!(state, TcpState::SynRecv | TcpState::TimeWait | TcpState::Gone);
    let mut histories = Histories::new();
    let (mut samples, mut transitions) = (samples.iter().peekable(), transitions.iter().peekable());
    loop {
        // In time order; at equal times the kernel's transition first.
        let transition_first = match (samples.peek(), transitions.peek()) {
            (None, None) => break,
            (Some((sampled, _)), Some((traced_at, _))) => traced_at <= sampled,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if transition_first {
            if let Some((t, transition)) = transitions.next() {
                histories.record(Named::from(*transition), transition.to, *t);
                let may_leave_time_wait = matches!(transition.from, TcpState::FinWait2 | TcpState::Closing);
                if transition.to == TcpState::Close && !may_leave_time_wait {
                    histories.record(Named::from(*transition), TcpState::Gone, *t);
                }
            }
        } else if let Some((t, sample)) = samples.next() {
            if !traced.contains(sample.socket.as_str()) || untraceable(sample.state) {
                histories.record(Named::from(*sample), sample.state, *t);
            }
        }
    }
    histories
        .entries
        .into_iter()
        .map(|(named, states)| SocketHistory {
            socket: named.socket.to_string(),
            local_port: named.local_port,
            remote_port: named.remote_port,
            states,
        })
        .collect()
}

/// Each selected socket's consecutive distinct values of one queue with the time it took them, in first-seen
/// order, from the socket events of the expectation's host; a socket's history ends when it is gone.
pub fn queue_histories(
    events: &[(Duration, &SocketEvent)],
    expectation: &QueueExpectation,
) -> Vec<(String, Vec<(u32, Duration)>)> {
    let mut histories = Histories::new();
    for (t, socket) in events {
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
        histories.record(Named::from(*socket), value, *t);
    }
    histories.entries.into_iter().map(|(named, values)| (named.socket.to_string(), values)).collect()
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
    let made = |event: &&super::Event| matches!(&event.kind, EventKind::Impairment(impairment) if impairment.decision.fault == fault);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Event;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(t: u64, socket: &str, state: TcpState) -> Event {
        Event {
            t: ms(t),
            host: HostId::Client,
            kind: EventKind::Socket(SocketEvent {
                socket: socket.into(),
                local_port: 40000,
                remote_port: 9000,
                state,
                timer: None,
                expires: None,
                retrans: 0,
                recv_q: 0,
                send_q: 0,
                rtt: None,
                rto: None,
            }),
        }
    }

    fn transition(t: u64, socket: &str, from: TcpState, to: TcpState) -> Event {
        Event {
            t: ms(t),
            host: HostId::Client,
            kind: EventKind::Transition(TransitionEvent {
                socket: socket.into(),
                local_port: 40000,
                remote_port: 9000,
                from,
                to,
            }),
        }
    }

    fn histories(events: Vec<Event>) -> Vec<(String, Vec<(TcpState, u64)>)> {
        let timeline = Timeline::new(events);
        let samples = socket_events_by_host(&timeline);
        let transitions = transitions_by_host(&timeline);
        socket_histories(&samples[0], &transitions[0])
            .into_iter()
            .map(|h| (h.socket, h.states.into_iter().map(|(s, t)| (s, t.as_millis() as u64)).collect()))
            .collect()
    }

    #[test]
    fn a_traced_socket_takes_its_states_from_the_kernels_transitions() {
        use TcpState::*;
        let traced = "10.0.0.1:40000 -> 10.0.0.2:9000";
        let sampled = "10.0.0.1:40001 -> 10.0.0.2:9000";
        let got = histories(vec![
            transition(1, traced, Close, SynSent),
            transition(2, traced, SynSent, Established),
            // A sample stamped when it was asked for, before the kernel's FIN-WAIT-1 it then showed.
            sample(3, traced, FinWait1),
            transition(4, traced, Established, FinWait1),
            transition(6, traced, FinWait1, FinWait2),
            transition(8, traced, FinWait2, Close),
            // What no transition shows: the TIME-WAIT successor and its end.
            sample(9, traced, TimeWait),
            sample(70, traced, Gone),
            sample(1, sampled, SynSent),
            sample(5, sampled, Established),
        ]);
        assert_eq!(
            got,
            vec![
                (
                    traced.to_string(),
                    vec![
                        (SynSent, 1),
                        (Established, 2),
                        (FinWait1, 4),
                        (FinWait2, 6),
                        (Close, 8),
                        (TimeWait, 9),
                        (Gone, 70)
                    ]
                ),
                (sampled.to_string(), vec![(SynSent, 1), (Established, 5)]),
            ]
        );
    }

    #[test]
    fn a_traced_socket_is_gone_as_it_closes_unless_it_may_leave_a_time_wait_successor() {
        use TcpState::*;
        let refused = "10.0.0.1:40000 -> 10.0.0.2:9000";
        let reset = "10.0.0.1:40001 -> 10.0.0.2:9000";
        let timed_wait = "10.0.0.1:40002 -> 10.0.0.2:9000";
        let got = histories(vec![
            // An ICMP error ends a SYN-SENT before any sample saw it.
            transition(1, refused, Close, SynSent),
            transition(2, refused, SynSent, Close),
            // A RST in FIN-WAIT-1, then the sample that no longer finds it.
            transition(1, reset, Close, Established),
            transition(3, reset, Established, FinWait1),
            transition(5, reset, FinWait1, Close),
            sample(40, reset, Gone),
            // FIN-WAIT-2 to CLOSE: its TIME-WAIT successor is there, and gone only when a sample says so.
            transition(1, timed_wait, Close, Established),
            transition(4, timed_wait, FinWait2, Close),
            sample(6, timed_wait, TimeWait),
            sample(60, timed_wait, Gone),
        ]);
        assert_eq!(
            got,
            vec![
                (refused.to_string(), vec![(SynSent, 1), (Close, 2), (Gone, 2)]),
                (reset.to_string(), vec![(Established, 1), (FinWait1, 3), (Close, 5), (Gone, 5)]),
                (timed_wait.to_string(), vec![(Established, 1), (Close, 4), (TimeWait, 6), (Gone, 60)]),
            ]
        );
    }
}

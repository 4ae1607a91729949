//! Verdict tests of queue expectations and of the packet filter (flag masks, protocols) on hand-built timelines.

use std::net::Ipv4Addr;

use super::*;
use crate::scenario::plan::{PacketFilter, Protocol, QueueKind, QueueStep, StepRef, TcpFlagsMatch, Tolerance};
use crate::timeline::{Event, EventKind, IpProtocol, Outcome, PacketDirection, PacketEvent, SocketEvent};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn socket(t: u64, label: &str, remote_port: u16, state: TcpState, recv_q: u32, send_q: u32) -> Event {
    Event {
        t: ms(t),
        host: HostId::Server,
        kind: EventKind::Socket(SocketEvent {
            socket: label.to_string(),
            local_port: 9000,
            remote_port,
            state,
            timer: None,
            expires: None,
            retrans: 0,
            recv_q,
            send_q,
            rtt: None,
            rto: None,
        }),
    }
}

fn packet(t: u64, host: HostId, protocol: Protocol, flags: u8, window: u16, len: u32) -> Event {
    Event {
        t: ms(t),
        host,
        kind: EventKind::Packet(PacketEvent {
            direction: PacketDirection::Out,
            src: Ipv4Addr::new(10, 0, 0, 2).into(),
            dst: Ipv4Addr::new(10, 0, 0, 1).into(),
            protocol: IpProtocol::Known(protocol),
            ip_id: 0,
            sport: 9000,
            dport: 40000,
            flags,
            seq: 0,
            ack: 0,
            window,
            len,
            options: String::new(),
            fault: None,
            dropped: None,
            impairments: Vec::new(),
        }),
    }
}

const LISTENER: &str = "10.0.0.2:9000 -> *:*";
const CONNECTION: &str = "10.0.0.2:9000 -> 10.0.0.1:40000";

/// A listener whose accept queue goes 0 -> 1 at 8 s, and a connection with 11 unread bytes at 8 s.
fn accept_queue_timeline() -> Timeline {
    Timeline::new(vec![
        socket(1, LISTENER, 0, TcpState::Listen, 0, 128),
        socket(2, CONNECTION, 40000, TcpState::SynRecv, 0, 0),
        socket(8000, LISTENER, 0, TcpState::Listen, 1, 128),
        socket(8000, CONNECTION, 40000, TcpState::Established, 11, 0),
        socket(10000, CONNECTION, 40000, TcpState::Gone, 0, 0),
    ])
}

fn queue(listener: bool, sequence: &[(u32, Option<u64>)], max: Option<u32>) -> QueueExpectation {
    QueueExpectation {
        host: HostId::Server,
        port: Some(9000),
        listener,
        queue: QueueKind::Recv,
        sequence: sequence.iter().map(|(value, at)| QueueStep { value: *value, at: at.map(ms) }).collect(),
        max,
        reaches: None,
        tolerance: Tolerance::either_side(ms(100)),
        since: None,
        location: Location { line: 3, column: 7 },
    }
}

fn judge_queue_t0(expectation: &QueueExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let events = socket_events_by_host(timeline);
    judge_queue(expectation, Anchor::t0(), &events[expectation.host.index()])
}

#[test]
fn listener_recv_q_sequence_with_times() {
    let timeline = accept_queue_timeline();
    assert_eq!(judge_queue_t0(&queue(true, &[(0, None), (1, Some(8000))], Some(1)), &timeline), Ok(()));
    let late = judge_queue_t0(&queue(true, &[(0, None), (1, Some(7000))], None), &timeline).unwrap_err();
    assert_eq!(late.subject, "server listener (port 9000) Recv-Q values");
    assert_eq!(late.expected, "0 then 1@7.000000s (± 0.100000s)");
    assert_eq!(late.actual, "10.0.0.2:9000 -> *:*: 0@0.001000s 1@8.000000s");
    assert_eq!(late.around, Some(ms(7000)));
    let out_of_order = judge_queue_t0(&queue(true, &[(1, None), (0, None)], None), &timeline);
    assert!(out_of_order.is_err(), "values must come in the given order");
}

#[test]
fn listener_and_connection_queues_are_apart() {
    let timeline = accept_queue_timeline();
    assert_eq!(judge_queue_t0(&queue(false, &[(0, None), (11, Some(8000))], Some(11)), &timeline), Ok(()));
    assert!(judge_queue_t0(&queue(false, &[(1, None)], None), &timeline).is_err(), "1 is the listener's value");
    let over = judge_queue_t0(&queue(false, &[], Some(10)), &timeline).unwrap_err();
    assert_eq!(over.expected, "never more than 10");
    assert!(over.actual.starts_with("11 at 8.000000s"), "{}", over.actual);
    assert_eq!(over.around, Some(ms(8000)));
}

#[test]
fn gone_sockets_end_their_history_and_unseen_sockets_fail() {
    let timeline = accept_queue_timeline();
    assert_eq!(judge_queue_t0(&queue(false, &[(11, None)], Some(11)), &timeline), Ok(()), "GONE's 0 is no value");
    let mut elsewhere = queue(true, &[], Some(5));
    elsewhere.port = Some(8080);
    let unseen = judge_queue_t0(&elsewhere, &timeline).unwrap_err();
    assert_eq!(unseen.actual, "no such socket observed");
}

#[test]
fn packet_filter_by_flag_mask_and_its_description() {
    let timeline = Timeline::new(vec![
        packet(1, HostId::Client, Protocol::Tcp, 0x11, 0, 100),
        packet(2, HostId::Client, Protocol::Tcp, 0x19, 40, 100),
        packet(3, HostId::Client, Protocol::Tcp, 0x14, 0, 100),
        packet(4, HostId::Client, Protocol::Tcp, 0x10, 0, 100),
    ]);
    let sent = sent_by_all(&timeline);
    let count = |flags: TcpFlagsMatch| {
        sent_packets(&sent, &PacketFilter { flags: Some(flags), ..PacketFilter::default() }).count()
    };
    let fin_without_rst = TcpFlagsMatch { mask: 0x01 | 0x04, value: 0x01 };
    assert_eq!(count(fin_without_rst), 2, "F. and FP. alike");
    assert_eq!(count(TcpFlagsMatch::exactly(0x11)), 1, "F. only");
    assert_eq!(count(TcpFlagsMatch { mask: 0x04, value: 0x04 }), 1, "any RST");
    assert_eq!(count(TcpFlagsMatch { mask: 0x01 | 0x04, value: 0 }), 1, "neither FIN nor RST");
    let described = |flags| describe_filter(&PacketFilter { flags: Some(flags), ..PacketFilter::default() });
    assert_eq!(described(TcpFlagsMatch::exactly(0x11)), "packets [F.]");
    assert_eq!(described(fin_without_rst), "packets [F of FR]");
    assert_eq!(described(TcpFlagsMatch { mask: 0x01 | 0x04, value: 0 }), "packets [none of FR]");
}

#[test]
fn packet_filter_by_window_and_protocol() {
    let timeline = Timeline::new(vec![
        packet(1, HostId::Server, Protocol::Tcp, 0x10, 0, 0),
        packet(2, HostId::Server, Protocol::Tcp, 0x10, 576, 0),
        packet(3, HostId::Server, Protocol::Icmp, 0, 0, 0),
    ]);
    let sent = sent_by_all(&timeline);
    let count = |filter: PacketFilter| sent_packets(&sent, &filter).count();
    let zero_window =
        PacketFilter { flags: Some(TcpFlagsMatch::exactly(0x10)), window: Some(0), ..PacketFilter::default() };
    assert_eq!(count(zero_window.clone()), 1);
    assert_eq!(count(PacketFilter { window: Some(576), ..PacketFilter::default() }), 1);
    assert_eq!(count(PacketFilter::default()), 2, "no protocol means TCP only");
    let icmp = PacketFilter { from: Some(HostId::Server), protocol: Some(Protocol::Icmp), ..PacketFilter::default() };
    assert_eq!(count(icmp.clone()), 1);
    assert_eq!(count(PacketFilter { from: Some(HostId::Client), ..icmp.clone() }), 0);
    assert_eq!(describe_filter(&zero_window), "packets [.] win 0");
    assert_eq!(describe_filter(&icmp), "packets from server (icmp)");
}

#[test]
fn packets_dropped_before_they_left_are_counted_only_when_asked_for() {
    let mut dropped = packet(2, HostId::Server, Protocol::Tcp, 0x10, 0, 0);
    if let EventKind::Packet(packet) = &mut dropped.kind {
        packet.dropped = Some(crate::timeline::DroppedBy::Netfilter);
    }
    let timeline = Timeline::new(vec![packet(1, HostId::Server, Protocol::Tcp, 0x10, 0, 0), dropped]);
    let sent = sent_by_all(&timeline);
    let at = |filter: PacketFilter| sent_packets(&sent, &filter).map(|(t, _)| t).collect::<Vec<_>>();
    assert_eq!(at(PacketFilter::default()), vec![ms(1)], "packets that left, by default");
    let only_dropped = PacketFilter { dropped: true, ..PacketFilter::default() };
    assert_eq!(at(only_dropped.clone()), vec![ms(2)]);
    assert_eq!(describe_filter(&only_dropped), "packets dropped before they left");
}

fn step_event(t: u64, host: HostId, step: usize, end: bool) -> Event {
    let label = format!("#{}", step + 1);
    let kind = if end {
        EventKind::StepEnd { step, label, outcome: Outcome::Ok, detail: None, unmatched: Vec::new() }
    } else {
        EventKind::StepStart { step, label }
    };
    Event { t: ms(t), host, kind }
}

#[test]
fn times_since_a_step_count_from_its_end() {
    let plan = crate::scenario::parse(
        "anchor",
        std::path::Path::new("anchor.yaml"),
        "description: d\nclient:\n  - sleep: 1s\n    name: warmup\n  - connect: { port: 9000 }\n    name: connect\n\
         expect:\n  packets:\n    - { from: server, flags: \".\", at: [5s], since: client.connect, tolerance: 50ms }\n\
         \x20   - { from: server, flags: \".\", within: [0s, 1s], count: 0, since: client.connect }\n\
         \x20 states:\n    - { host: server, port: 9000, sequence: [{ state: SYN-RECV, at: 6s }], since: client.warmup }\n\
         \x20 queues:\n    - { host: server, listener: true, queue: recv, sequence: [{ value: 1, at: 5s }], since: client.connect }\n",
    )
    .unwrap();
    assert_eq!(
        plan.expect.packets[0].since,
        Some(Since::Step(StepRef { host: HostId::Client, index: 1, name: "connect".into() }))
    );
    let mut events = vec![
        step_event(0, HostId::Client, 0, false),
        step_event(1000, HostId::Client, 0, true),
        step_event(1000, HostId::Client, 1, false),
        step_event(1500, HostId::Client, 1, true),
        // Before the anchor: not counted by the `within: [0s, 1s]` expectation.
        packet(1200, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
        packet(6520, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
        socket(7000, LISTENER, 0, TcpState::Listen, 0, 128),
    ];
    events.push(socket(6500, LISTENER, 0, TcpState::Listen, 1, 128));
    events.push(socket(7000, CONNECTION, 40000, TcpState::SynRecv, 0, 0));
    let verdict = judge(&plan, &Timeline::new(events.clone()));
    assert_eq!(verdict.failures, vec![], "5 s after connect is 6.5 s");

    // The same packet 5 s after t0 is not 5 s after the connect.
    events.retain(|e| !matches!(e.kind, EventKind::Packet(_)) || e.t != ms(6520));
    events.push(packet(5000, HostId::Server, Protocol::Tcp, 0x10, 64, 0));
    let verdict = judge(&plan, &Timeline::new(events.clone()));
    assert_eq!(verdict.failures.len(), 1);
    let failure = &verdict.failures[0];
    assert_eq!(failure.subject, "packets from server [.] since client.connect (1.500000s)");
    assert_eq!(failure.actual, "1 at 3.500000s");
    assert_eq!(failure.around, Some(ms(6500)));
    assert_eq!(verdict.sampled_failures, [], "a packet check reads no socket samples");

    // Without the sample of the queue holding one, the queue check fails: one that read the server's samples.
    events.retain(|e| !matches!(&e.kind, EventKind::Socket(socket) if socket.recv_q == 1));
    let verdict = judge(&plan, &Timeline::new(events));
    assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
    assert_eq!(verdict.sampled_failures, [HostId::Server]);
}

#[test]
fn times_since_a_steps_start_count_from_its_start() {
    // Found by the issue-12 cases: `since: { started: ... }` was refused, though triggers have `started`.
    let plan = crate::scenario::parse(
        "anchor",
        std::path::Path::new("anchor.yaml"),
        "description: d\nclient:\n  - sleep: 1s\n  - connect: { port: 9000 }\n    name: connect\n\
         expect:\n  packets:\n    - { from: server, flags: \".\", at: [2s], since: { started: client.connect }, tolerance: 50ms }\n",
    )
    .unwrap();
    assert_eq!(
        plan.expect.packets[0].since,
        Some(Since::Started(StepRef { host: HostId::Client, index: 1, name: "connect".into() }))
    );
    let timeline = |packet_at: u64| {
        Timeline::new(vec![
            step_event(1000, HostId::Client, 1, false),
            step_event(1500, HostId::Client, 1, true),
            packet(packet_at, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
        ])
    };
    assert_eq!(judge(&plan, &timeline(3000)).failures, vec![], "2 s after the start at 1 s");
    let late = judge(&plan, &timeline(3500)).failures;
    assert_eq!(late.len(), 1, "2 s after the end is not 2 s after the start");
    assert_eq!(late[0].subject, "packets from server [.] since the start of client.connect (1.000000s)");
    let never = judge(&plan, &Timeline::new(vec![])).failures;
    assert_eq!((never[0].expected.as_str(), never[0].actual.as_str()), ("client.connect to start", "it never started"));
    let both = crate::scenario::parse(
        "anchor",
        std::path::Path::new("anchor.yaml"),
        "description: d\nclient:\n  - connect: { port: 9000 }\n    name: connect\n\
         expect:\n  packets:\n    - { from: server, count: 0, since: { started: client.connect, nth: 2 } }\n",
    )
    .unwrap_err();
    assert!(both.to_string().contains("since counts from one moment"), "{both}");
}

#[test]
fn an_anchor_step_that_never_ended_fails_its_expectations() {
    let plan = crate::scenario::parse(
        "anchor",
        std::path::Path::new("anchor.yaml"),
        "description: d\nclient:\n  - connect: { port: 9000 }\n    name: connect\n\
         expect:\n  packets:\n    - { from: client, count: 0, since: client.connect }\n",
    )
    .unwrap();
    let verdict = judge(&plan, &Timeline::new(vec![step_event(0, HostId::Client, 0, false)]));
    assert_eq!(verdict.failures.len(), 1);
    assert_eq!(verdict.failures[0].expected, "client.connect to finish");
    assert_eq!(verdict.failures[0].actual, "it never finished");
}

#[test]
fn tolerances_bound_each_side() {
    let late_only = Tolerance { early: ms(0), late: ms(300) };
    assert!(late_only.admits(ms(1300), ms(1000)));
    assert!(!late_only.admits(ms(1301), ms(1000)));
    assert!(!late_only.admits(ms(999), ms(1000)), "no earliness allowed");
    assert!(Tolerance { early: ms(10), late: ms(300) }.admits(ms(990), ms(1000)));
    assert!(Tolerance::either_side(ms(300)).admits(ms(700), ms(1000)), "symmetric");
    assert!(!Tolerance::either_side(ms(300)).admits(ms(699), ms(1000)));
    assert_eq!(Tolerance::either_side(ms(300)).to_string(), "± 0.300000s");
    assert_eq!(late_only.to_string(), "-0.000000s/+0.300000s");
}

#[test]
fn times_since_a_packet_count_from_its_kernel_timestamp() {
    let plan = crate::scenario::parse(
        "anchor",
        std::path::Path::new("anchor.yaml"),
        "description: d\nexpect:\n  packets:\n\
         \x20   - { from: server, flags: \".\", window: 64, at: [0.2s, 0.6s], since: { packet: { from: server, window: 0 } }, tolerance: 10ms }\n\
         \x20   - { from: server, count: 2, since: { packet: { from: server, window: 0 }, nth: 2 } }\n\
         \x20   - { from: server, count: 0, since: { packet: { from: client } } }\n",
    )
    .unwrap();
    assert_eq!(
        plan.expect.packets[1].since,
        Some(Since::Packet {
            filter: PacketFilter { from: Some(HostId::Server), window: Some(0), ..PacketFilter::default() },
            nth: 2
        })
    );
    let timeline = Timeline::new(vec![
        packet(100, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
        packet(1000, HostId::Server, Protocol::Tcp, 0x10, 0, 0),
        packet(1200, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
        packet(1500, HostId::Server, Protocol::Tcp, 0x10, 0, 0),
        packet(1600, HostId::Server, Protocol::Tcp, 0x10, 64, 0),
    ]);
    let verdict = judge(&plan, &timeline);
    assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
    let failure = &verdict.failures[0];
    assert_eq!(failure.subject, "times since the 1st of the packets from client");
    assert_eq!(failure.expected, "the 1st of the packets from client to be sent");
    assert_eq!(failure.actual, "0 such packets");
    assert_eq!(ordinal(2), "2nd");
    assert_eq!(ordinal(13), "13th");
    assert_eq!(ordinal(23), "23rd");
}

/// Retransmissions of a 17-byte segment at `times` (ms), then a RST from the client at `rst` (ms).
fn backoff_timeline(times: &[u64], rst: u64) -> Timeline {
    let mut events: Vec<Event> =
        times.iter().map(|t| packet(*t, HostId::Client, Protocol::Tcp, 0x18, 64, 17)).collect();
    events.push(packet(rst, HostId::Client, Protocol::Tcp, 0x04, 0, 0));
    Timeline::new(events)
}

fn backoff_plan() -> Plan {
    crate::scenario::parse(
        "backoff",
        std::path::Path::new("backoff.yaml"),
        "description: d\ntimeout: 30s\nexpect:\n  packets:\n\
         \x20   - { from: client, len: 17, doubling: 4, tolerance: { early: 40ms, late: 40ms } }\n\
         \x20   - { from: client, flags: R, at: [0s], since: { next-retransmission: { from: client, len: 17 } }, tolerance: 20ms }\n",
    )
    .unwrap()
}

#[test]
fn doubling_intervals_and_the_next_retransmission_follow_the_connections_own_rto() {
    let plan = backoff_plan();
    assert_eq!(plan.expect.packets[0].doubling, Some(4));
    assert_eq!(plan.expect.packets[0].count, None);
    // This machine's 204 ms RTO, and an emulated machine's 220 ms with its timers firing a little late: the
    // kernel's rule holds for both.
    let fast = backoff_timeline(&[0, 204, 408, 816, 1632, 3264, 6528], 13056);
    assert!(judge(&plan, &fast).failures.is_empty(), "{:?}", judge(&plan, &fast).failures);
    let slow = backoff_timeline(&[0, 226, 454, 922, 1850, 3674, 7354], 14720);
    assert!(judge(&plan, &slow).failures.is_empty(), "{:?}", judge(&plan, &slow).failures);
}

#[test]
fn linear_intervals_and_an_early_or_late_give_up_fail() {
    let plan = backoff_plan();
    let linear = backoff_timeline(&[0, 200, 400, 600, 800, 1000, 1200], 1600);
    let verdict = judge(&plan, &linear);
    assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
    let failure = &verdict.failures[0];
    assert_eq!(failure.subject, "packets from client length 17: intervals between them");
    assert_eq!(failure.expected, "the last 4 each twice the one before ± 0.040000s");
    assert_eq!(failure.actual, "0.200000s, 0.200000s, 0.200000s, 0.200000s, 0.200000s, 0.200000s");
    // Given up one expiry early (at the last retransmission's own expiry), and one late.
    for rst in [9792, 26112] {
        let verdict = judge(&plan, &backoff_timeline(&[0, 204, 408, 816, 1632, 3264, 6528], rst));
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert!(
            verdict.failures[0].subject.contains("since the next retransmission of the packets from client length 17"),
            "{}",
            verdict.failures[0].subject
        );
    }
    // A single packet arms no timer whose interval can be doubled.
    let verdict = judge(&plan, &backoff_timeline(&[0], 100));
    let anchor = verdict.failures.iter().find(|f| f.subject.starts_with("times since")).expect("anchor failure");
    assert_eq!(anchor.expected, "at least 2 packets from client length 17 (the timer's last interval)");
    assert_eq!(anchor.actual, "1 such packets");
}

#[test]
fn doubling_is_refused_without_enough_packets_and_next_retransmission_goes_alone() {
    let parse = |expect: &str| {
        crate::scenario::parse(
            "x",
            std::path::Path::new("x.yaml"),
            &format!("description: d\nexpect:\n  packets:\n    - {expect}\n"),
        )
        .unwrap_err()
        .to_string()
    };
    let error = parse("{ from: client, count: 4, doubling: 3 }");
    assert!(error.contains("doubling: 3 compares 4 intervals, which takes 5 packets; count says 4"), "{error}");
    let error = parse("{ from: client, count: 0, since: { next-retransmission: { from: client }, nth: 2 } }");
    assert!(error.contains("since counts from one moment"), "{error}");
    let error =
        parse("{ from: client, count: 0, since: { next-retransmission: { from: client }, started: client.connect } }");
    assert!(error.contains("not two of them"), "{error}");
}

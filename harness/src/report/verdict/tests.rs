//! Verdict tests on hand-built timelines: step outcomes and times, packet and state expectations, anchors.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;
use crate::scenario::plan::Protocol;
use crate::timeline::{Event, IpProtocol, PacketDirection, PacketEvent, SocketEvent};

const SCENARIO: &str = r#"
description: verdict test
tolerance: 100ms
server:
  - listen: { port: 9000 }
client:
  - connect: { to: server, port: 9000 }
    expect: { result: ETIMEDOUT, after: 7s }
  - send: { bytes: 11 }
expect:
  packets:
    - { from: client, flags: "S", at: [0s, 1s, 3s] }
    - { from: client, flags: "R.", count: 0 }
  states:
    - { host: client, port: 9000, sequence: [SYN-SENT, { state: GONE, at: 7s }] }
  timers:
    - { host: client, timer: "on", retrans: 2 }
"#;

fn plan() -> Plan {
    crate::scenario::parse("verdict", Path::new("verdict.yaml"), SCENARIO).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn syn(t: Duration) -> Event {
    Event {
        t,
        host: HostId::Client,
        kind: EventKind::Packet(PacketEvent {
            direction: PacketDirection::Out,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::Known(Protocol::Tcp),
            ip_id: 0,
            sport: 40000,
            dport: 9000,
            flags: 0x02,
            seq: 0,
            ack: 0,
            window: 64240,
            len: 0,
            options: String::new(),
            fault: None,
            impairments: Vec::new(),
        }),
    }
}

fn socket(t: Duration, state: TcpState, retrans: u32) -> Event {
    Event {
        t,
        host: HostId::Client,
        kind: EventKind::Socket(SocketEvent {
            socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
            local_port: 40000,
            remote_port: 9000,
            state,
            timer: (state == TcpState::SynSent).then_some(crate::scenario::plan::TimerKind::On),
            expires: None,
            retrans,
            recv_q: 0,
            send_q: 1,
            rtt: None,
            rto: None,
        }),
    }
}

fn step(t: Duration, index: usize, end: Option<Outcome>) -> Event {
    let label = format!("#{}", index + 1);
    let kind = match end {
        Some(outcome) => EventKind::StepEnd { step: index, label, outcome, detail: None, unmatched: Vec::new() },
        None => EventKind::StepStart { step: index, label },
    };
    Event { t, host: HostId::Client, kind }
}

/// What the kernel does with tcp_syn_retries 2 and exponential backoff.
fn kernel_run(timeout_at: Duration, outcome: Outcome) -> Timeline {
    Timeline::new(vec![
        step(ms(0), 0, None),
        syn(ms(1)),
        socket(ms(5), TcpState::SynSent, 0),
        syn(ms(1010)),
        socket(ms(1015), TcpState::SynSent, 1),
        syn(ms(3030)),
        socket(ms(3035), TcpState::SynSent, 2),
        socket(timeout_at, TcpState::Gone, 0),
        step(timeout_at, 0, Some(outcome)),
        step(timeout_at, 1, None),
        step(timeout_at, 1, Some(Outcome::Error("EPIPE".into()))),
    ])
}

#[test]
fn the_expected_run_passes_every_check() {
    let verdict = judge(&plan(), &kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into())));
    assert_eq!(verdict.failures, vec![]);
    // outcome + after of the connect, two packet, one state, one timer expectations.
    assert_eq!(verdict.checks, 6);
}

#[test]
fn a_different_errno_fails_with_both_names_and_the_line() {
    let verdict = judge(&plan(), &kernel_run(ms(7040), Outcome::Error("ECONNREFUSED".into())));
    assert_eq!(verdict.failures.len(), 1);
    let failure = &verdict.failures[0];
    assert_eq!((failure.expected.as_str(), failure.actual.as_str()), ("ETIMEDOUT", "ECONNREFUSED"));
    assert_eq!(failure.location.line, 8);
    assert!(failure.to_string().contains("client step #1 connect"), "{failure}");
}

#[test]
fn a_time_outside_the_tolerance_fails_and_one_inside_passes() {
    let late = judge(&plan(), &kernel_run(ms(7101), Outcome::Error("ETIMEDOUT".into())));
    let subjects: Vec<&str> = late.failures.iter().map(|f| f.expected.as_str()).collect();
    assert!(subjects.contains(&"to end after 7.000000s ± 0.100000s"), "{late:?}");
    assert!(late.failures.iter().any(|f| f.subject.contains("socket states")), "GONE at 7.101 is late too");
    let in_time = judge(&plan(), &kernel_run(ms(7099), Outcome::Error("ETIMEDOUT".into())));
    assert!(in_time.passed(), "{:?}", in_time.failures);
}

#[test]
fn unmatched_output_patterns_fail_the_step_and_each_step_is_judged() {
    let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
    let passing = judge(&plan(), &timeline);
    let judgements: Vec<StepJudgement> = passing.steps.iter().map(|s| s.judgement).collect();
    assert_eq!(judgements, [StepJudgement::Pass, StepJudgement::Recorded, StepJudgement::Recorded]);
    for event in &mut timeline.events {
        if let EventKind::StepEnd { step: 1, unmatched, .. } = &mut event.kind {
            unmatched.push("stdout /^bye$/".into());
        }
    }
    let verdict = judge(&plan(), &timeline);
    assert_eq!(verdict.failures.len(), 1, "{verdict:?}");
    let failure = &verdict.failures[0];
    assert_eq!(failure.expected, "output matching every pattern");
    assert_eq!(failure.actual, "no match for stdout /^bye$/");
    let send = verdict.steps.iter().find(|s| s.host == HostId::Client && s.index == 1).unwrap();
    assert_eq!(send.judgement, StepJudgement::Fail, "a step expected nothing still fails on its patterns");
}

#[test]
fn a_step_that_never_ended_is_reported_as_still_running() {
    let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
    timeline.events.retain(|e| !matches!(e.kind, EventKind::StepEnd { step: 0, .. }));
    let verdict = judge(&plan(), &timeline);
    assert!(verdict.failures[0].actual.starts_with("still running at the end of the run"), "{verdict:?}");
}

#[test]
fn packet_counts_and_times_are_checked() {
    let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
    timeline.events.retain(|e| e.t != ms(3030));
    let verdict = judge(&plan(), &timeline);
    let packets = verdict.failures.iter().find(|f| f.subject == "packets from client [S]").unwrap();
    assert_eq!(packets.actual, "2 at 0.001000s, 1.010000s");
}

#[test]
fn a_timer_count_that_never_reaches_n_fails() {
    let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
    timeline.events.retain(|e| e.t != ms(3035));
    let verdict = judge(&plan(), &timeline);
    let timer = verdict.failures.iter().find(|f| f.subject.starts_with("client timer on")).unwrap();
    assert_eq!(timer.actual, "count at most 1 (last rise at 1.015000s)");
}

#[test]
fn states_must_come_in_order() {
    let history = vec![(TcpState::Gone, ms(1)), (TcpState::SynSent, ms(2))];
    let expectation = &plan().expect.states[0];
    assert!(!history_matches(&history, expectation, Duration::ZERO));
    let history = vec![(TcpState::SynSent, ms(1)), (TcpState::Established, ms(2)), (TcpState::Gone, ms(7000))];
    assert!(history_matches(&history, expectation, Duration::ZERO));
}

#[test]
fn a_step_end_at_a_time_since_a_packet_counts_from_that_packet() {
    // The send ends with the connect: 4.01 s after the third SYN (3.03 s).
    let scenario = SCENARIO.replace(
        "  - send: { bytes: 11 }\n",
        "  - send: { bytes: 11 }\n    expect: { at: 4s, since: { packet: { from: client, flags: S }, nth: 3 } }\n",
    );
    let plan = crate::scenario::parse("verdict", Path::new("verdict.yaml"), &scenario).unwrap();
    let in_time = judge(&plan, &kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into())));
    assert!(in_time.passed(), "{:?}", in_time.failures);
    let late = judge(&plan, &kernel_run(ms(7140), Outcome::Error("ETIMEDOUT".into())));
    let failure = late.failures.iter().find(|f| f.subject.contains("#2 send")).expect("the send is late");
    assert_eq!(
        failure.expected,
        "to end at 4.000000s ± 0.100000s since the 3rd of the packets from client [S] (3.030000s)"
    );
    assert_eq!(failure.actual, "EPIPE at 4.110000s");
    // A run without a third SYN cannot place the end: the expectation fails, naming the packet.
    let two_syns =
        Timeline::new(vec![syn(ms(1)), syn(ms(1010)), step(ms(2000), 1, None), step(ms(2000), 1, Some(Outcome::Ok))]);
    let missing = judge(&plan, &two_syns);
    assert!(missing.failures.iter().any(|f| f.actual == "2 such packets"), "{:?}", missing.failures);
}

//! The engine's pure parts: fault triggers (time, step, packet), fault marks on the timeline, capture losses
//! as harness errors.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;
use crate::timeline::{Outcome, PacketEvent};

const SCENARIO: &str = r#"
description: schedule test
faults:
  - name: at-two
    at: server
    action: drop
    from: 2s
    until: 3s
  - name: after-connect
    at: server
    match: { flags: "." }
    action: drop
    from: { after: client.connect, delay: 500ms }
  - name: third-ack
    at: client
    action: drop
    from: { packet: { from: client, flags: "." }, nth: 3 }
server:
  - listen: { port: 9000 }
client:
  - connect: { to: server, port: 9000 }
    name: connect
"#;

fn plan() -> Plan {
    crate::scenario::parse("schedule", Path::new("schedule.yaml"), SCENARIO).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ack(t: Duration, host: HostId, direction: PacketDirection) -> Event {
    Event {
        t,
        host,
        kind: EventKind::Packet(PacketEvent {
            direction,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::Known(Protocol::Tcp),
            ip_id: t.as_millis() as u16,
            sport: 40000,
            dport: 9000,
            flags: 0x10,
            seq: 1,
            ack: 1,
            window: 63,
            len: 0,
            options: String::new(),
            fault: None,
            impairments: Vec::new(),
        }),
    }
}

fn names(switches: Vec<(&FaultPlan, bool)>) -> Vec<(String, bool)> {
    switches.into_iter().map(|(f, on)| (f.name.clone(), on)).collect()
}

#[test]
fn timed_faults_switch_on_and_off_at_their_times() {
    let plan = plan();
    let mut schedule = FaultSchedule::new(&plan.faults);
    assert_eq!(schedule.next_due(), Some(ms(2000)));
    assert!(schedule.due(ms(1999)).is_empty());
    assert_eq!(names(schedule.due(ms(2000))), vec![("at-two".to_string(), true)]);
    assert_eq!(schedule.next_due(), Some(ms(3000)));
    assert_eq!(names(schedule.due(ms(3000))), vec![("at-two".to_string(), false)]);
    assert_eq!(schedule.next_due(), None);
}

#[test]
fn a_step_trigger_fires_after_its_delay() {
    let plan = plan();
    let mut schedule = FaultSchedule::new(&plan.faults);
    let end = Event {
        t: ms(100),
        host: HostId::Client,
        kind: EventKind::StepEnd {
            step: 0,
            label: "connect".into(),
            outcome: Outcome::Ok,
            detail: None,
            unmatched: Vec::new(),
        },
    };
    schedule.observe(&end);
    assert!(schedule.due(ms(599)).iter().all(|(f, _)| f.name != "after-connect"));
    assert_eq!(names(schedule.due(ms(600))), vec![("after-connect".to_string(), true)]);
}

#[test]
fn a_packet_trigger_counts_matching_packets_from_the_sender() {
    let plan = plan();
    let mut schedule = FaultSchedule::new(&plan.faults);
    for t in [10, 20] {
        schedule.observe(&ack(ms(t), HostId::Client, PacketDirection::Out));
        // The receiver's copy of the same packet is not counted twice.
        schedule.observe(&ack(ms(t), HostId::Server, PacketDirection::In));
    }
    assert!(schedule.due(ms(25)).is_empty());
    schedule.observe(&ack(ms(30), HostId::Client, PacketDirection::Out));
    assert_eq!(names(schedule.due(ms(30))), vec![("third-ack".to_string(), true)]);
}

#[test]
fn packets_taken_by_an_active_ingress_fault_are_marked_on_both_copies() {
    let plan = plan();
    let mut timeline = Timeline::new(vec![
        ack(ms(10), HostId::Client, PacketDirection::Out),
        ack(ms(10), HostId::Server, PacketDirection::In),
        Event { t: ms(600), host: HostId::Server, kind: EventKind::FaultOn { fault: "after-connect".into() } },
        ack(ms(700), HostId::Client, PacketDirection::Out),
        ack(ms(700), HostId::Server, PacketDirection::In),
    ]);
    annotate_faults(&mut timeline, &plan);
    let marks: Vec<Option<&str>> = timeline
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Packet(p) => Some(p.fault.as_deref()),
            _ => None,
        })
        .collect();
    assert_eq!(marks, vec![None, None, Some("after-connect"), Some("after-connect")]);
}

#[test]
fn a_capture_that_lost_frames_is_a_harness_error_naming_its_host() {
    let whole = CaptureStats { packets: 40, bytes: 4000, kernel_drops: 0, interface_frames: 40 };
    let dropped = CaptureStats { packets: 37, bytes: 3700, kernel_drops: 3, interface_frames: 40 };
    let unseen = CaptureStats { packets: 38, bytes: 3800, kernel_drops: 0, interface_frames: 40 };
    let interface = |host: HostId, ifname: &str| CapturedInterface {
        link: 0,
        host,
        ifname: ifname.into(),
        mac: [2, 0, 0, 0, 0, 1],
        address: std::net::Ipv4Addr::new(10, 0, 0, 1),
        pcap: format!("{host}.pcap"),
        snaplen: 262_144,
    };
    let ends = [interface(HostId::Client, "nf0"), interface(HostId::Server, "nf0"), interface(HostId::Router, "nf1")];
    assert!(capture_losses(&ends, &[whole, whole, whole]).is_empty());
    let errors = capture_losses(&ends, &[whole, dropped, whole]);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("capture of server nf0 lost 3 of the 40 frames"), "{}", errors[0]);
    assert!(errors[0].contains("(3 dropped by the kernel)") && errors[0].contains("ring: 64MiB"), "{}", errors[0]);
    let errors = capture_losses(&ends, &[unseen, whole, whole]);
    assert!(errors[0].starts_with("capture of client nf0 lost 2 of the 40 frames"), "{}", errors[0]);
    let errors = capture_losses(&ends, &[whole, whole, unseen]);
    assert!(errors[0].starts_with("capture of router nf1 lost 2 of the 40 frames"), "{}", errors[0]);
}

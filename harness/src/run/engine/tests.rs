//! The engine's pure parts: fault marks on the timeline (the fault triggers are `run::switchboard`'s), capture
//! losses as harness errors.

use super::*;
use crate::record::TracerStats;
use crate::run::switchboard::tests::{ack, ms, plan};

/// The fault mark of each packet of the timeline, in order.
fn fault_marks(timeline: &Timeline) -> Vec<Option<&str>> {
    timeline
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Packet(p) => Some(p.fault.as_deref()),
            _ => None,
        })
        .collect()
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
    let marks = fault_marks(&timeline);
    assert_eq!(marks, vec![None, None, Some("after-connect"), Some("after-connect")]);
}

#[test]
fn each_arrival_taken_by_a_fault_marks_its_own_sent_copy_when_identical_ones_overlap() {
    let plan = plan();
    // Three packets with IP id 0, as a request socket sends its SYN-ACKs: two alike, one with another window.
    // The later ones leave before the first arrives.
    let copy = |t: u64, host: HostId, direction: PacketDirection, window: u16| {
        let mut event = ack(ms(t), host, direction);
        if let EventKind::Packet(packet) = &mut event.kind {
            (packet.ip_id, packet.window) = (0, window);
        }
        event
    };
    let mut timeline = Timeline::new(vec![
        Event { t: ms(0), host: HostId::Server, kind: EventKind::FaultOn { fault: "after-connect".into() } },
        copy(10, HostId::Client, PacketDirection::Out, 63),
        copy(11, HostId::Client, PacketDirection::Out, 63),
        copy(12, HostId::Client, PacketDirection::Out, 7),
        copy(13, HostId::Server, PacketDirection::In, 63),
        copy(14, HostId::Server, PacketDirection::In, 63),
        copy(15, HostId::Server, PacketDirection::In, 7),
    ]);
    annotate_faults(&mut timeline, &plan);
    assert_eq!(fault_marks(&timeline), vec![Some("after-connect"); 6], "every copy marked once");
}

#[test]
fn a_packet_dropped_before_it_left_is_marked_with_the_active_egress_fault_that_matches_it() {
    let plan = crate::scenario::parse(
        "egress",
        Path::new("egress.yaml"),
        "description: d\nfaults:\n  - { name: local, at: client, match: { dport: 9000 }, action: qdisc-drop, from: 1s }\n  \
         - { name: other-port, at: client, direction: egress, match: { dport: 9001 }, action: drop }\nclient:\n  \
         - sleep: 2s\n",
    )
    .unwrap();
    let dropped = |t: u64| {
        let mut event = ack(ms(t), HostId::Client, PacketDirection::Out);
        if let EventKind::Packet(packet) = &mut event.kind {
            packet.dropped = Some(crate::timeline::DroppedBy::Qdisc);
        }
        event
    };
    let mut timeline = Timeline::new(vec![
        Event { t: ms(0), host: HostId::Client, kind: EventKind::FaultOn { fault: "other-port".into() } },
        // Before `local` is on: dropped, but by no fault of the plan that was on.
        dropped(500),
        Event { t: ms(1000), host: HostId::Client, kind: EventKind::FaultOn { fault: "local".into() } },
        dropped(1200),
        // One that left is not the egress fault's, even while it is on.
        ack(ms(1300), HostId::Client, PacketDirection::Out),
        ack(ms(1300), HostId::Server, PacketDirection::In),
    ]);
    annotate_faults(&mut timeline, &plan);
    let marks = fault_marks(&timeline);
    assert_eq!(marks, vec![None, Some("local"), None, None]);
}

#[test]
fn drops_a_fault_counted_that_the_timeline_lacks_are_a_harness_error_per_host_and_dropper() {
    let plan = crate::scenario::parse(
        "egress",
        Path::new("egress.yaml"),
        "description: d\nfaults:\n  - { name: local, at: client, match: { dport: 9000 }, action: qdisc-drop }\n  \
         - { name: refused, at: client, direction: egress, match: { dport: 9001 }, action: drop }\n  \
         - { name: inbound, at: server, direction: ingress, match: { dport: 9000 }, action: drop }\nclient:\n  \
         - sleep: 2s\n",
    )
    .unwrap();
    let dropped = |t: u64, by: DroppedBy| {
        let mut event = ack(ms(t), HostId::Client, PacketDirection::Out);
        if let EventKind::Packet(packet) = &mut event.kind {
            packet.dropped = Some(by);
        }
        event
    };
    let timeline = Timeline::new(vec![
        dropped(100, DroppedBy::Qdisc),
        dropped(200, DroppedBy::Qdisc),
        dropped(300, DroppedBy::Netfilter),
        // After the counters were read: not compared with them.
        dropped(2100, DroppedBy::Netfilter),
        ack(ms(400), HostId::Client, PacketDirection::Out),
    ]);
    let traced = StateSource::Traced(TracerStats::default());
    let hits = |local: u64, refused: u64| {
        vec![("inbound".to_string(), 50), ("local".to_string(), local), ("refused".to_string(), refused)]
    };
    let gaps = |hits: &[(String, u64)], states: &StateSource| drop_gaps(&timeline, &plan, hits, ms(2000), states);
    assert_eq!(gaps(&hits(2, 1), &traced), Vec::<String>::new(), "every counted drop shown; ingress drops are not");
    assert_eq!(
        gaps(&hits(3, 2), &traced),
        vec![
            "client's faults refused made netfilter drop 2 packets before they left (their nftables counters), but \
             the timeline shows 1: the drop tracer did not record 1 of them"
                .to_string(),
            "client's faults local made its queueing discipline drop 3 packets before they left (their nftables \
             counters), but the timeline shows 2: the drop tracer did not record 1 of them"
                .to_string(),
        ]
    );
    // Without the kfree_skb program (which shows only a shaper's queue drops) every fault still records its own
    // drops, and they are still compared.
    let no_kfree = StateSource::Traced(TracerStats { drops_untraced: Some("no BTF".into()), ..Default::default() });
    assert_eq!(gaps(&hits(2, 2), &no_kfree).len(), 1);
    assert_eq!(gaps(&hits(9, 9), &StateSource::Sampled { reason: "rootless".into() }), Vec::<String>::new());
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
        address6: None,
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

#[test]
fn a_failed_run_whose_wire_fell_behind_blames_the_wire_and_a_passed_one_keeps_its_verdict() {
    let mut late = WireStats { frames_out: 2905, ..WireStats::default() };
    for us in [4_000, 60_000, 12_000] {
        late.count_lateness(Duration::from_micros(us));
    }
    assert_eq!((late.late_frames, late.max_late_us), (2, 60_000));
    let wire = Some([WireStats::default(), late]);
    let errors = late_wire(wire, false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "the wire toward server fell behind: 2 of its 2905 frames left more than 10 ms after their time, the \
             latest 60.0 ms late"
        ),
        "{}",
        errors[0]
    );
    assert!(late_wire(wire, true).is_empty(), "a pass stands: late frames only make a network worse");
    assert!(late_wire(Some([WireStats::default(); 2]), false).is_empty(), "a wire on time blames nothing");
    assert!(late_wire(None, false).is_empty());
}

#[test]
fn a_failed_sampled_check_of_a_host_whose_observer_answered_late_blames_the_observer() {
    let late = ObserverStats {
        samples: 118,
        late_answers: 1,
        max_answer_delay: Duration::from_micros(560_197),
        max_answer_delay_asked_at: Duration::from_micros(102),
        ..ObserverStats::default()
    };
    let on_time = ObserverStats { samples: 149, max_answer_delay: ms(3), ..ObserverStats::default() };
    let observers = [(HostId::Client, on_time), (HostId::Server, late)];
    let errors = late_observers(&observers, &[HostId::Server]);
    assert_eq!(
        errors,
        ["the socket observer of server fell behind: once a sample asked for at once was taken more than 50 ms \
          later, the latest asked at 0.000102s and taken 560.2 ms later (its thread had no CPU: the machine is too busy); \
          a queue, timer or state that lasted less may be missing from its samples, so the failures below about \
          server's sockets may be this machine's, not the kernel's"]
    );
    assert!(late_observers(&observers, &[HostId::Client]).is_empty(), "the client's samples were on time");
    assert!(late_observers(&observers, &[]).is_empty(), "no failed check read samples: the verdict stands");
}

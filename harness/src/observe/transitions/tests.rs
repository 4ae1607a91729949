//! Kernel tests of the transition tracer: real namespaces, real sockets over loopback, the real tracepoint.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use super::*;
use crate::observe::decode::Decoder;
use crate::run::clock::Clock;
use crate::timeline::{Event, Timeline};

/// A listener, a connection to it that is shut down at once and closed, inside `ns` over loopback.
fn short_connection(ns: &Netns, port: u16) {
    ns.run(|| {
        let lo = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
        assert!(lo.is_ok_and(|s| s.success()), "ip link set lo up");
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // ESTABLISHED for microseconds: sampling every 10 ms never sees it.
        client.shutdown(Shutdown::Write).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).unwrap();
        server.write_all(b"x").unwrap();
        drop(server);
        drop(client);
        Ok(())
    })
    .unwrap();
}

fn transitions(events: &[Event]) -> Vec<(HostId, String, TcpState, TcpState)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Transition(t) => Some((e.host, t.socket.clone(), t.from, t.to)),
            _ => None,
        })
        .collect()
}

/// Whether `seen` ([`transitions`]) has a listener on 127.0.0.1:`port` coming up, of `host` (any host: `None`).
fn saw_listener(seen: &[(HostId, String, TcpState, TcpState)], host: Option<HostId>, port: u16) -> bool {
    let listener = format!("127.0.0.1:{port} -> *:*");
    seen.iter().any(|(by, socket, _, to)| {
        host.is_none_or(|host| host == *by) && *socket == listener && *to == TcpState::Listen
    })
}

#[test]
fn every_transition_of_the_runs_namespaces_and_none_of_others() {
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let elsewhere = Netns::new_anonymous().unwrap();
    let clock = Clock::started();
    let (sink, received) = EventSink::new(clock);
    let tracer =
        Tracer::start(HostId::ALL.into_iter().zip(&namespaces), RingMaps::create().unwrap(), sink, QueueDrops::Traced)
            .unwrap();
    short_connection(&namespaces[1], 9000);
    short_connection(&elsewhere, 9001);
    let stats = tracer.stop().unwrap();
    let events = Timeline::new(received.try_iter().collect()).events;
    let seen = transitions(&events);
    assert!(seen.iter().all(|(host, ..)| *host == HostId::Server), "only the server's namespace: {seen:?}");
    assert!(seen.iter().all(|(_, socket, ..)| !socket.contains(":9001")), "not the other namespace's: {seen:?}");
    let listener = "127.0.0.1:9000 -> *:*";
    let of = |socket: &str| -> Vec<(TcpState, TcpState)> {
        seen.iter().filter(|(_, s, ..)| s == socket).map(|(_, _, from, to)| (*from, *to)).collect()
    };
    assert_eq!(of(listener), vec![(TcpState::Close, TcpState::Listen), (TcpState::Listen, TcpState::Close)]);
    let client = seen
        .iter()
        .find(|(_, socket, _, to)| *to == TcpState::SynSent && socket.ends_with("-> 127.0.0.1:9000"))
        .map(|(_, socket, ..)| socket.clone())
        .expect("the client's SYN-SENT, named with the port it got afterwards");
    assert!(!client.starts_with("127.0.0.1:0 "), "{client}");
    use TcpState::*;
    assert_eq!(
        of(&client),
        vec![
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close)
        ],
        "the microseconds of ESTABLISHED are recorded"
    );
    let port = client.split(['.', ':', ' ']).nth(4).unwrap().to_string();
    let server_side = format!("127.0.0.1:9000 -> 127.0.0.1:{port}");
    assert_eq!(
        of(&server_side),
        vec![
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ],
        "the new connection's first transition (cloned from the listener) is named by its own address"
    );
    assert_eq!(stats.transitions as usize, seen.len());
    assert_eq!(stats.lost, 0);
    assert!(stats.max_latency_us > 0.0 && stats.median_latency_us <= stats.max_latency_us, "{stats:?}");
}

#[test]
fn ipv6_sockets_are_traced_with_their_ipv6_and_v4_mapped_addresses() {
    let namespace = Netns::new_anonymous().unwrap();
    let clock = Clock::started();
    let (sink, received) = EventSink::new(clock);
    let tracer =
        Tracer::start([(HostId::Server, &namespace)], RingMaps::create().unwrap(), sink, QueueDrops::Traced).unwrap();
    namespace
        .run(|| {
            let lo = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
            assert!(lo.is_ok_and(|s| s.success()), "ip link set lo up");
            // A dual-stack listener (IPV6_V6ONLY off, the namespace's default): one IPv6 client, one IPv4.
            let listener = TcpListener::bind("[::]:9002").unwrap();
            for client in ["[::1]:9002", "127.0.0.1:9002"] {
                let client = TcpStream::connect(client).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(client);
                drop(server);
            }
            Ok(())
        })
        .unwrap();
    tracer.stop().unwrap();
    let events = Timeline::new(received.try_iter().collect()).events;
    let seen = transitions(&events);
    let sockets: Vec<&str> = seen.iter().map(|(_, socket, ..)| socket.as_str()).collect();
    assert!(sockets.contains(&"[::]:9002 -> *:*"), "the IPv6 listener: {sockets:?}");
    let named = |prefix: &str, suffix: &str| {
        sockets.iter().any(|socket| socket.starts_with(prefix) && socket.ends_with(suffix) && !socket.contains("]:0 "))
    };
    assert!(named("[::1]:", " -> [::1]:9002"), "the IPv6 client, with its port: {sockets:?}");
    assert!(named("[::1]:9002 -> [::1]:", ""), "its accepted socket: {sockets:?}");
    assert!(named("127.0.0.1:", " -> 127.0.0.1:9002"), "the IPv4 client: {sockets:?}");
    assert!(
        named("[::ffff:127.0.0.1]:9002 -> [::ffff:127.0.0.1]:", ""),
        "the IPv4 client's connection, accepted by the IPv6 listener, with v4-mapped addresses: {sockets:?}"
    );
    let mapped = seen.iter().find(|(_, socket, ..)| socket.starts_with("[::ffff:")).map(|(_, socket, ..)| socket);
    let states: Vec<(TcpState, TcpState)> =
        seen.iter().filter(|(_, socket, ..)| Some(socket) == mapped).map(|(_, _, from, to)| (*from, *to)).collect();
    assert_eq!(states.first(), Some(&(TcpState::Listen, TcpState::SynRecv)), "{states:?}");
    assert!(states.contains(&(TcpState::SynRecv, TcpState::Established)), "{states:?}");
}

#[test]
fn a_routers_namespace_is_traced_as_the_routers() {
    // The hosts in the wire's order (client, router, server), which is not `HostId::index()` order.
    let hosts = [HostId::Client, HostId::Router, HostId::Server];
    let namespaces = hosts.map(|_| Netns::new_anonymous().unwrap());
    let (sink, received) = EventSink::new(Clock::started());
    let tracer =
        Tracer::start(hosts.into_iter().zip(&namespaces), RingMaps::create().unwrap(), sink, QueueDrops::Traced)
            .unwrap();
    short_connection(&namespaces[1], 9002);
    short_connection(&namespaces[2], 9000);
    tracer.stop().unwrap();
    let seen = transitions(&Timeline::new(received.try_iter().collect()).events);
    let hosts_of = |port: &str| -> Vec<HostId> {
        let mut hosts: Vec<HostId> = seen.iter().filter(|(_, s, ..)| s.contains(port)).map(|(h, ..)| *h).collect();
        hosts.dedup();
        hosts
    };
    assert_eq!(hosts_of(":9002"), vec![HostId::Router], "{seen:?}");
    assert_eq!(hosts_of(":9000"), vec![HostId::Server], "{seen:?}");
    assert!(!seen.iter().any(|(host, ..)| *host == HostId::Client), "{seen:?}");
}

#[test]
fn transitions_are_stamped_with_the_kernels_time_on_the_runs_clock() {
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let clock = Clock::started();
    let (sink, received) = EventSink::new(clock.clone());
    let tracer =
        Tracer::start(HostId::ALL.into_iter().zip(&namespaces), RingMaps::create().unwrap(), sink, QueueDrops::Traced)
            .unwrap();
    let before = clock.at(Instant::now());
    short_connection(&namespaces[0], 9000);
    let after = clock.at(Instant::now());
    tracer.stop().unwrap();
    let times: Vec<Duration> = received.try_iter().map(|e| e.t).collect();
    assert!(!times.is_empty());
    for t in times {
        assert!(t >= before && t <= after, "{t:?} outside [{before:?}, {after:?}]");
    }
}

#[test]
fn records_are_held_until_their_socket_is_named() {
    let record = |sock: u64, from: u32, to: u32, local: &str, remote: &str| Record {
        instance: Instance::First,
        time_ns: 1,
        sock,
        from,
        to,
        host: 0,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
    };
    let mut namer = Namer::default();
    assert!(namer.take(record(1, 7, 2, "10.0.0.1:0", "10.0.0.2:9000")).is_empty(), "no local port yet");
    let named = namer.take(record(1, 2, 1, "10.0.0.1:40000", "10.0.0.2:9000"));
    let sockets: Vec<(&str, TcpState)> = named.iter().map(|(_, e)| (e.socket.as_str(), e.to)).collect();
    assert_eq!(
        sockets,
        vec![
            ("10.0.0.1:40000 -> 10.0.0.2:9000", TcpState::SynSent),
            ("10.0.0.1:40000 -> 10.0.0.2:9000", TcpState::Established)
        ]
    );
    let listener = namer.take(record(2, 7, 10, "10.0.0.2:9000", "0.0.0.0:0"));
    assert_eq!(listener[0].1.socket, "10.0.0.2:9000 -> *:*");
    assert!(namer.take(record(3, 7, 7, "10.0.0.1:1", "10.0.0.2:2")).is_empty(), "no change of state");
    assert!(namer.take(record(4, 10, 3, "10.0.0.2:9000", "0.0.0.0:0")).is_empty(), "a clone not named yet");
    let left = namer.flush();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.socket, "10.0.0.2:9000 -> 0.0.0.0:0");
    // Entering TIME-WAIT the socket loses its port: it keeps the name it had.
    let closed = namer.take(record(1, 5, 7, "10.0.0.1:0", "10.0.0.2:9000"));
    assert_eq!(closed[0].1.socket, "10.0.0.1:40000 -> 10.0.0.2:9000");
    // A new life at the same address starts unnamed again.
    assert!(namer.take(record(1, 7, 2, "10.0.0.1:0", "10.0.0.2:9001")).is_empty());
}

#[test]
fn the_kernel_counts_and_times_every_run_of_the_program() {
    // The program runs at every transition on the machine, the run's or not: its cost is what the tracer adds.
    let stats_on = run_time_stats().unwrap();
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let (sink, _received) = EventSink::new(Clock::started());
    let tracer =
        Tracer::start(HostId::ALL.into_iter().zip(&namespaces), RingMaps::create().unwrap(), sink, QueueDrops::Traced)
            .unwrap();
    short_connection(&namespaces[0], 9000);
    let (runs, time) = tracer.run_stats().unwrap();
    let recorded = tracer.stop().unwrap().transitions;
    drop(stats_on);
    assert!(runs >= recorded && recorded >= 10, "{runs} runs, {recorded} transitions recorded");
    let per_run = time / u32::try_from(runs).unwrap();
    assert!(per_run > Duration::ZERO && per_run < Duration::from_micros(100), "{per_run:?} per run");
}

/// The layouts cached for this kernel read back exactly as the kernel's BTF gives them; a file of another boot or
/// kernel, a half-written one or one with more in it gives none, so the BTF is read again.
#[test]
fn cached_layouts_are_the_btfs_and_only_for_the_same_kernel() {
    let btf = btf::Btf::of_running_kernel().unwrap();
    let (sock, skb) = (SockLayout::of(&btf).unwrap(), SkbLayout::of(&btf).unwrap());
    let dir = std::env::temp_dir().join(format!("netfault-layout-cache-{}", std::process::id()));
    let key = layout_cache_key("0f2c6c0e-1d1e-4c4b-9a51-1d8a4f1f7d2e", 5_000_000);
    let cache = LayoutCache { path: dir.join("netfault").join("kernel-layouts"), key: key.clone() };
    assert_eq!(cache.read(), None, "no file yet");
    cache.write(&sock, &skb).unwrap();
    assert_eq!(cache.read(), Some((sock, skb)));

    let text = std::fs::read_to_string(&cache.path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(parse_layout_cache(&text, &key), Some((sock, skb)));
    let other_boot = layout_cache_key("5d9e2a61-7c1b-4f0e-8d7a-2b3c4d5e6f70", 5_000_000);
    assert_eq!(parse_layout_cache(&text, &other_boot), None);
    assert_eq!(parse_layout_cache(&text, &layout_cache_key("0f2c6c0e-1d1e-4c4b-9a51-1d8a4f1f7d2e", 5_000_001)), None);
    let first_two_lines: String = text.lines().take(2).map(|line| format!("{line}\n")).collect();
    assert_eq!(parse_layout_cache(&first_two_lines, &key), None);
    assert_eq!(parse_layout_cache(&format!("{text}more\n"), &key), None);
    let cut = &text[..text.len() / 2];
    assert_eq!(parse_layout_cache(cut, &key), None, "{cut}");
}

#[test]
fn one_record_of_each_hit_is_kept_whichever_instance_ran() {
    use Instance::{First, Second};
    let mut pairs = Pairs::new();
    let mut keep = |instance, key: u32| pairs.first_of_hit(instance, key);
    // A hit both instances ran for: the second record of the pair goes, in either order.
    assert!(keep(First, 1));
    assert!(!keep(Second, 1));
    assert!(keep(Second, 2));
    assert!(!keep(First, 2));
    // A hit in an interrupt of the first instance's run: only the second wrote it, and it is kept, though the
    // interrupted run's own pair comes around it.
    assert!(keep(First, 3));
    assert!(keep(Second, 4));
    assert!(!keep(Second, 3));
    // A hit in an interrupt of the second instance's run: only the first wrote it.
    assert!(keep(First, 5));
    assert!(keep(First, 6));
    assert!(!keep(Second, 5));
    // The same key again later (a new hit): kept once more.
    assert!(keep(First, 1));
    assert!(!keep(Second, 1));
    assert!(pairs.unpaired.keys().all(|(_, key)| *key == 4 || *key == 6), "{:?}", pairs.unpaired);
}

/// The mark the first `qdisc-drop` fault's rule sets, and the mask its program compares under.
const QDISC_MARK: u32 = 0x6e66_0000;
const QDISC_MASK: u32 = 0xffff_0000;

/// A frame as `tc` egress on a veth has it: an Ethernet header, then IPv4 and a TCP ACK carrying `data` bytes,
/// 10.0.0.1:40000 -> 10.0.0.2:9000, IP id `id`.
fn tcp_frame(id: u16, data: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&((40 + data) as u16).to_be_bytes());
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&9000u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0x01, 0x00, 0, 0, 0, 0]);
    frame.extend((0..data).map(|i| i as u8 | 0x80));
    frame
}

/// `struct __sk_buff` with only its mark set (the test run's context).
fn marked(mark: u32) -> Vec<u8> {
    let mut skb = vec![0u8; 192];
    skb[8..12].copy_from_slice(&mark.to_ne_bytes());
    skb
}

/// Every record in `maps`' ring, the lost count and the token of the ring's claim.
fn ring_records(maps: RingMaps) -> (Vec<Vec<u8>>, u64, u64) {
    let token = maps.claim.token;
    let mut lost = [0u8; 8];
    maps.lost.lookup(&0u32.to_ne_bytes(), &mut lost).unwrap();
    let mut reader = RingReader::new(maps.ring, RING_BYTES as usize).unwrap();
    let wake = bpf::wake_event().unwrap();
    let mut records = Vec::new();
    reader.read(Duration::ZERO, wake.as_raw_fd(), |bytes| records.push(bytes.to_vec())).unwrap();
    (records, u64::from_ne_bytes(lost), token)
}

#[test]
fn a_qdisc_drop_program_records_each_drop_it_makes_and_only_those() {
    let maps = RingMaps::create().unwrap();
    let recording = program::DropRecording { maps: maps.fds(), host: HostId::Server.index() as u32 };
    let insns = program::tc_drop_marked_instructions(QDISC_MARK, QDISC_MASK, Some(recording));
    let loaded = Program::load(bpf::PROG_TYPE_SCHED_CLS, "test_qdrop", &insns, LICENSE);
    let program = loaded.unwrap_or_else(|refused| panic!("{}: {}", refused.error, refused.log));
    let run = |frame: &[u8], mark: u32| program.test_run(frame, &marked(mark)).unwrap();
    let before = monotonic_ns();
    assert_eq!(run(&tcp_frame(1, 0), QDISC_MARK | 3), 2, "a pure ACK of the fourth fault: TC_ACT_SHOT");
    assert_eq!(run(&tcp_frame(2, 1000), QDISC_MARK), 2, "a full segment");
    let after = monotonic_ns();
    assert_eq!(run(&tcp_frame(3, 0), 0), 0, "TC_ACT_OK for an unmarked packet, and no record");
    assert_eq!(run(&tcp_frame(4, 0), 0x6e65_0000), 0, "nor for another mark");
    // Dropped all the same, but with less than an IPv4 header there is nothing to show: counted lost, which the
    // run reports as a harness error, never silently. (The kernel's test run refuses an IPv4 frame shorter than
    // its header: the local experimental ethertype carries it.)
    let mut short = tcp_frame(5, 0)[..14 + 19].to_vec();
    short[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    assert_eq!(run(&short, QDISC_MARK), 2);
    drop(program);

    let (records, lost, token) = ring_records(maps);
    assert_eq!(lost, 1, "the packet too short to show");
    assert_eq!(records.len(), 2, "one record per drop shown");
    let mut decoder = Decoder::new();
    let mut drops = Vec::new();
    for bytes in &records {
        assert_eq!(bytes.len(), program::record::DROP_LEN);
        let Some(Parsed::Drop { pair, host, time_ns, by, packet }) = parse(bytes, token) else { panic!("{bytes:?}") };
        assert_eq!((pair, host, by), (None, HostId::Server.index() as u32, DroppedBy::Qdisc));
        assert!((before..=after).contains(&time_ns), "{time_ns} outside [{before}, {after}]");
        let event = decoder.decode_ip(packet, true).unwrap();
        drops.push((event.ip_id, event.sport, event.dport, event.flags, event.len));
        if event.len == 0 {
            assert!(packet[40..].iter().all(|b| *b == 0), "past the packet's end, zeros: {packet:?}");
        } else {
            assert_eq!(packet, &tcp_frame(2, 1000)[14..14 + 64], "the first 64 bytes from the IPv4 header on");
        }
    }
    assert_eq!(drops, vec![(1, 40000, 9000, 0x10, 0), (2, 40000, 9000, 0x10, 1000)]);
}

#[test]
fn a_netfilter_drop_recorder_records_every_packet_its_rule_takes_and_always_matches() {
    let maps = RingMaps::create().unwrap();
    let recording = program::DropRecording { maps: maps.fds(), host: HostId::Client.index() as u32 };
    let insns = program::netfilter_drop_instructions(recording);
    let loaded = Program::load(bpf::PROG_TYPE_SOCKET_FILTER, "test_nfdrop", &insns, LICENSE);
    let program = loaded.unwrap_or_else(|refused| panic!("{}: {}", refused.error, refused.log));
    // A socket filter's test run starts the packet at its IPv4 header, as a netfilter hook does.
    let run = |frame: &[u8]| program.test_run(frame, &marked(0)).unwrap();
    let before = monotonic_ns();
    assert_eq!(run(&tcp_frame(7, 0)), 1, "a zero-window probe: matched");
    assert_eq!(run(&tcp_frame(8, 1000)), 1, "a full segment: matched");
    let after = monotonic_ns();
    let mut short = tcp_frame(9, 0)[..14 + 19].to_vec();
    short[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    assert_eq!(run(&short), 1, "matched even when it cannot be shown, so the fault still takes it");
    drop(program);

    let (records, lost, token) = ring_records(maps);
    assert_eq!(lost, 1, "the packet too short to show");
    let mut decoder = Decoder::new();
    let mut drops = Vec::new();
    for bytes in &records {
        let Some(Parsed::Drop { pair, host, time_ns, by, packet }) = parse(bytes, token) else { panic!("{bytes:?}") };
        assert_eq!((pair, host, by), (None, HostId::Client.index() as u32, DroppedBy::Netfilter));
        assert!((before..=after).contains(&time_ns), "{time_ns} outside [{before}, {after}]");
        let event = decoder.decode_ip(packet, true).unwrap();
        drops.push((event.ip_id, event.dport, event.len));
    }
    assert_eq!(drops, vec![(7, 9000, 0), (8, 9000, 1000)], "one record per packet, in order");
}

#[test]
fn a_qdisc_drop_program_without_the_tracer_only_drops() {
    let insns = program::tc_drop_marked_instructions(QDISC_MARK, QDISC_MASK, None);
    let program = Program::load(bpf::PROG_TYPE_SCHED_CLS, "test_qdrop", &insns, LICENSE).unwrap();
    assert_eq!(program.test_run(&tcp_frame(1, 0), &marked(QDISC_MARK | 49)).unwrap(), 2);
    assert_eq!(program.test_run(&tcp_frame(1, 0), &marked(0)).unwrap(), 0);
}

#[test]
fn drop_records_pair_by_instance_and_skb_and_tc_records_stand_alone() {
    let mut bytes = vec![0u8; program::record::DROP_LEN];
    let put = |bytes: &mut Vec<u8>, at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
    put(&mut bytes, program::record::KIND, &program::record::DROP.to_ne_bytes());
    put(&mut bytes, program::record::HOST, &2u32.to_ne_bytes());
    put(&mut bytes, program::record::TIME_NS, &77u64.to_ne_bytes());
    put(&mut bytes, program::record::DROPPED_BY, &program::record::BY_NETFILTER.to_ne_bytes());
    put(&mut bytes, program::record::DROP_INSTANCE, &1u32.to_ne_bytes());
    put(&mut bytes, program::record::SKB, &0xffff_8880_1234_5600u64.to_ne_bytes());
    let token: u64 = 0x0000_0007_0000_0003;
    put(&mut bytes, program::record::DROP_TOKEN, &token.to_ne_bytes());
    assert!(parse(&bytes, token + 1).is_none(), "a record of another claim of the ring");
    let Some(Parsed::Drop { pair, host, time_ns, by, .. }) = parse(&bytes, token) else { panic!() };
    assert_eq!(
        (pair, host, time_ns, by),
        (Some((Instance::Second, 0xffff_8880_1234_5600)), 2, 77, DroppedBy::Netfilter)
    );
    put(&mut bytes, program::record::KIND, &program::record::TC_DROP.to_ne_bytes());
    put(&mut bytes, program::record::DROPPED_BY, &program::record::BY_QDISC.to_ne_bytes());
    let Some(Parsed::Drop { pair, by, .. }) = parse(&bytes, token) else { panic!() };
    assert_eq!((pair, by), (None, DroppedBy::Qdisc));
    assert!(parse(&bytes[..program::record::PACKET + 8], token).is_none(), "a cut record");
    put(&mut bytes, program::record::KIND, &4u32.to_ne_bytes());
    assert!(parse(&bytes, token).is_none(), "an unknown kind");
}

#[test]
fn the_drop_program_is_loaded_only_where_an_exec_step_can_add_a_queue() {
    let plan = |server_step: &str| {
        let yaml = format!(
            "description: t\ntimeout: 5s\nserver:\n  - listen: {{ port: 9000 }}\n  - {server_step}\nclient:\n  - connect: {{ \
             to: server, port: 9000 }}\n"
        );
        crate::scenario::parse("t", Path::new("t.yaml"), &yaml).unwrap()
    };
    assert_eq!(QueueDrops::of(&plan("accept")), QueueDrops::NoQueues);
    assert_eq!(QueueDrops::of(&plan("exec: { program: tc, args: [qdisc, show] }")), QueueDrops::Traced);
}

#[test]
fn a_tracer_without_queue_drops_attaches_no_drop_program_and_says_nothing_is_untraced() {
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let (sink, _received) = EventSink::new(Clock::started());
    let maps = RingMaps::create().unwrap();
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&namespaces), maps, sink, QueueDrops::NoQueues).unwrap();
    let programs = tracer.registration.shared().programs.len();
    assert_eq!((programs, tracer.drop_links.len(), tracer.drop_programs.len()), (2, 0, 0));
    let stats = tracer.stop().unwrap();
    assert_eq!((stats.drops_untraced, stats.drop_skipped_runs), (None, 0));
}

/// The keys of `shared`'s namespace map that are among `inodes`.
fn registered_in(shared: &Shared, inodes: &[u32]) -> Vec<u32> {
    let keys = shared.namespaces.keys_u32(NAMESPACES_MAX as usize).unwrap();
    inodes.iter().copied().filter(|inode| keys.contains(inode)).collect()
}

/// The keys of the process's shared namespace map that are among `inodes`.
fn registered(inodes: &[u32]) -> Vec<u32> {
    registered_in(&shared().unwrap(), inodes)
}

/// Whether `shared`'s slot `slot` is claimed.
fn claimed(shared: &Shared, slot: u32) -> bool {
    shared.slots.lookup(&slot.to_ne_bytes(), &mut [0u8; 8]).is_ok()
}

#[test]
fn two_runs_at_once_share_the_program_and_each_reads_only_its_own_namespaces() {
    let first = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let second = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let (first_sink, first_received) = EventSink::new(Clock::started());
    let (second_sink, second_received) = EventSink::new(Clock::started());
    let start = |namespaces: &[Netns; 2], sink| {
        Tracer::start(HostId::ALL.into_iter().zip(namespaces), RingMaps::create().unwrap(), sink, QueueDrops::NoQueues)
            .unwrap()
    };
    let (first_tracer, second_tracer) = (start(&first, first_sink), start(&second, second_sink));
    let process = shared().unwrap();
    for tracer in [&first_tracer, &second_tracer] {
        assert!(Arc::ptr_eq(&tracer.registration.claim.shared, &process), "the process's program, a slot of it");
    }
    let slots = [first_tracer.registration.claim.slot, second_tracer.registration.claim.slot];
    assert_ne!(slots[0], slots[1], "a slot each");
    let inodes: Vec<u32> = first.iter().chain(&second).map(|ns| namespace_inode(ns).unwrap()).collect();
    assert_eq!(registered(&inodes), inodes, "both runs' namespaces registered at once");
    short_connection(&first[0], 9100);
    short_connection(&second[1], 9200);
    first_tracer.stop().unwrap();
    assert_eq!(registered(&inodes), inodes[2..].to_vec(), "a stopped run's namespaces are removed, the other's stay");
    assert!(!claimed(&process, slots[0]) && claimed(&process, slots[1]), "the stopped run's slot is free again");
    second_tracer.stop().unwrap();
    assert_eq!(registered(&inodes), Vec::<u32>::new());
    let seen = |received: handoff::Receiver<Event>| transitions(&Timeline::new(received.try_iter().collect()).events);
    let (first_seen, second_seen) = (seen(first_received), seen(second_received));
    assert!(saw_listener(&first_seen, None, 9100), "the first run's own listener: {first_seen:?}");
    assert!(saw_listener(&second_seen, None, 9200), "the second run's own listener: {second_seen:?}");
    assert!(first_seen.iter().all(|(host, socket, ..)| *host == HostId::Client && !socket.contains(":9200")));
    assert!(second_seen.iter().all(|(host, socket, ..)| *host == HostId::Server && !socket.contains(":9100")));
}

#[test]
fn what_a_killed_scenario_process_left_registered_is_forgotten_by_its_owner_number_only() {
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let inodes: Vec<u32> = namespaces.iter().map(|ns| namespace_inode(ns).unwrap()).collect();
    let process = shared().unwrap();
    // As a forked scenario process claims and registers (its owner number, set at the fork, in its token and
    // entries), and then dies without its teardown: neither is ever dropped.
    let owner = 0x7e57_0001;
    let token = (u64::from(owner) << 32) | 1;
    let claim = Claim::in_shared(Arc::clone(&process), token).unwrap().expect("a free slot");
    let slot = claim.slot;
    for (host, inode) in inodes.iter().enumerate() {
        process.namespaces.update(&inode.to_ne_bytes(), &namespace_entry_of(host as u32, owner, slot, token)).unwrap();
    }
    std::mem::forget(claim);
    forget_owner(owner + 1);
    assert_eq!(registered(&inodes), inodes, "another owner's number removes nothing");
    assert!(claimed(&process, slot), "nor its slot");
    forget_owner(owner);
    assert_eq!(registered(&inodes), Vec::<u32>::new(), "the dead process's namespaces are gone");
    assert!(!claimed(&process, slot), "its slot is free again");
}

#[test]
fn a_slot_used_again_gives_the_next_scenario_none_of_the_earlier_ones_records() {
    // A program of the test's own with one slot: the second scenario gets the slot the first left.
    let own = Arc::new(Shared::load(1).unwrap());
    let first = Netns::new_anonymous().unwrap();
    let first_inode = namespace_inode(&first).unwrap();
    let earlier = Claim::in_shared(Arc::clone(&own), 0x0000_0009_0000_0001).unwrap().expect("the free slot");
    let entry = namespace_entry_of(HostId::Client.index() as u32, 9, earlier.slot, earlier.token);
    own.namespaces.update(&first_inode.to_ne_bytes(), &entry).unwrap();
    // Its transitions stay in the ring unread, as a killed scenario's would; and its namespace stays
    // registered while the next scenario starts (a transition written late, after the slot changed hands).
    short_connection(&first, 9300);
    drop(earlier);
    assert!(!claimed(&own, 0));
    let second = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let (sink, received) = EventSink::new(Clock::started());
    let maps = RingMaps::of_claim(Claim::in_shared(Arc::clone(&own), next_token()).unwrap().expect("free")).unwrap();
    assert_eq!(maps.claim.slot, 0, "the same slot");
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&second), maps, sink, QueueDrops::NoQueues).unwrap();
    short_connection(&first, 9301);
    short_connection(&second[1], 9302);
    let stats = tracer.stop().unwrap();
    own.namespaces.delete(&first_inode.to_ne_bytes()).unwrap();
    let seen = transitions(&Timeline::new(received.try_iter().collect()).events);
    assert!(saw_listener(&seen, Some(HostId::Server), 9302), "its own listener: {seen:?}");
    assert!(seen.iter().all(|(_, socket, ..)| !socket.contains(":9300") && !socket.contains(":9301")), "{seen:?}");
    assert_eq!(stats.transitions, seen.len() as u64, "no other record counted");
}

#[test]
fn a_scenario_finding_every_slot_taken_loads_a_program_of_its_own_and_reads_only_its_namespaces() {
    let process = shared().unwrap();
    // Every free slot taken (other tests running meanwhile find none free either, and load their own too).
    let mut taken = Vec::new();
    while let Some(claim) = Claim::in_shared(Arc::clone(&process), next_token()).unwrap() {
        taken.push(claim);
    }
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let (sink, received) = EventSink::new(Clock::started());
    let maps = RingMaps::create().unwrap();
    drop(taken);
    assert!(!Arc::ptr_eq(&maps.claim.shared, &process), "a program of its own");
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&namespaces), maps, sink, QueueDrops::NoQueues).unwrap();
    let inodes: Vec<u32> = namespaces.iter().map(|ns| namespace_inode(ns).unwrap()).collect();
    assert_eq!(registered(&inodes), Vec::<u32>::new(), "not in the process's program");
    assert_eq!(registered_in(tracer.registration.shared(), &inodes), inodes);
    short_connection(&namespaces[0], 9400);
    tracer.stop().unwrap();
    let seen = transitions(&Timeline::new(received.try_iter().collect()).events);
    assert!(saw_listener(&seen, Some(HostId::Client), 9400), "its own listener: {seen:?}");
    assert!(seen.iter().all(|(host, ..)| *host == HostId::Client), "{seen:?}");
}

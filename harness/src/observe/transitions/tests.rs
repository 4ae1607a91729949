//! Kernel tests of the transition tracer: real namespaces, real sockets over loopback, the real tracepoint.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use super::*;
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

#[test]
fn every_transition_of_the_runs_namespaces_and_none_of_others() {
    let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
    let elsewhere = Netns::new_anonymous().unwrap();
    let clock = Clock::started();
    let (sink, received) = EventSink::new(clock);
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&namespaces), sink).unwrap();
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
fn a_routers_namespace_is_traced_as_the_routers() {
    // The hosts in the wire's order (client, router, server), which is not `HostId::index()` order.
    let hosts = [HostId::Client, HostId::Router, HostId::Server];
    let namespaces = hosts.map(|_| Netns::new_anonymous().unwrap());
    let (sink, received) = EventSink::new(Clock::started());
    let tracer = Tracer::start(hosts.into_iter().zip(&namespaces), sink).unwrap();
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
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&namespaces), sink).unwrap();
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
    let tracer = Tracer::start(HostId::ALL.into_iter().zip(&namespaces), sink).unwrap();
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

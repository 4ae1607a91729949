//! Kernel tests: two fresh namespaces joined by a veth pair, real TCP connections, real nftables.
//! They need root (or CAP_NET_ADMIN in a user namespace) and fail when it is missing.

use std::io::{ErrorKind, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn};

use super::*;
use crate::observe::transitions::program::DropRecording;
use crate::observe::transitions::RingMaps;
use crate::run::userns::{test_privilege, Privilege};
use crate::scenario::plan::{Location, PacketMatch, TcpFlagsMatch, Trigger};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 9000;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// `client` (10.0.0.1, veth nfc) and `server` (10.0.0.2, veth nfs), each an anonymous namespace.
struct Pair {
    client: Netns,
    server: Netns,
}

impl Pair {
    fn new() -> Pair {
        let client = Netns::new_anonymous().unwrap();
        let server = Netns::new_anonymous().unwrap();
        // `ip` opens a namespace given as a path; ours is an open descriptor of this process.
        let server_path = format!("/proc/{}/fd/{}", std::process::id(), server.raw_fd());
        let link = ["link", "add", "nfc", "type", "veth", "peer", "name", "nfs", "netns"];
        run(&client, "ip", &[&link[..], &[server_path.as_str()]].concat());
        for (ns, dev, address) in [(&client, "nfc", "10.0.0.1/24"), (&server, "nfs", "10.0.0.2/24")] {
            run(ns, "ip", &["addr", "add", address, "dev", dev]);
            run(ns, "ip", &["link", "set", dev, "up"]);
            run(ns, "ip", &["link", "set", "lo", "up"]);
        }
        Pair { client, server }
    }
}

/// Runs a program inside `ns`; returns its stdout, and fails the test if it fails or hangs.
fn run(ns: &Netns, program: &str, args: &[&str]) -> String {
    ns.run(|| Ok(run_here(program, args))).unwrap()
}

/// Runs a program in the calling thread's namespace: its exit status, stdout and stderr; a hang fails the test.
fn output_here(program: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{program} {args:?} still runs after 10 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stdout, stderr)
}

fn run_here(program: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) = output_here(program, args);
    assert!(status.success(), "{program} {args:?}: {status}: {stderr}");
    stdout
}

fn fault(name: &str, host: HostId, direction: Direction, matcher: PacketMatch, action: FaultAction) -> FaultPlan {
    FaultPlan {
        name: name.into(),
        host,
        direction,
        matcher,
        action,
        from: Trigger::At(Duration::ZERO),
        until: None,
        location: Location::default(),
    }
}

/// `tcp dport 9000 tcp flags & (syn|ack) == syn`: the client's connection requests.
fn syn_to_server() -> PacketMatch {
    PacketMatch {
        protocol: Some(Protocol::Tcp),
        dport: Some(PORT),
        tcp_flags: Some(TcpFlagsMatch { mask: SYN | ACK, value: SYN }),
        ..PacketMatch::default()
    }
}

fn listen(pair: &Pair) -> TcpListener {
    let listener = pair.server.run(|| Ok(TcpListener::bind((SERVER, PORT)).unwrap())).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn accept_within(listener: &TcpListener, limit: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

struct Attempt {
    socket: OwnedFd,
    result: nix::Result<()>,
    elapsed: Duration,
}

/// A blocking `connect()` from the client to the server's port, with TCP_SYNCNT 1 and
/// TCP_USER_TIMEOUT bounding how long a dropped SYN can block it, and IP_RECVERR keeping ICMP errors.
fn connect(pair: &Pair, user_timeout: Duration) -> Attempt {
    pair.client
        .run(|| {
            let socket = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
            socket::setsockopt(&socket, sockopt::TcpUserTimeout, &(user_timeout.as_millis() as u32)).unwrap();
            let syn_retries: libc::c_int = 1;
            // SAFETY: TCP_SYNCNT takes an int, passed by pointer with its size.
            let set = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_SYNCNT,
                    (&raw const syn_retries).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "setsockopt(TCP_SYNCNT)");
            socket::setsockopt(&socket, sockopt::Ipv4RecvErr, &true).unwrap();
            let start = Instant::now();
            let result = socket::connect(socket.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(SERVER, PORT)));
            Ok(Attempt { socket, result, elapsed: start.elapsed() })
        })
        .unwrap()
}

/// The ICMP type and code of the error queued on a socket with IP_RECVERR, if any.
fn queued_icmp(socket: &OwnedFd) -> Option<(u8, u8)> {
    let mut data = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    let message = socket::recvmsg::<SockaddrIn>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let found = message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::Ipv4RecvErr(err, _) if err.ee_origin == libc::SO_EE_ORIGIN_ICMP => {
            Some((err.ee_type, err.ee_code))
        }
        _ => None,
    });
    found
}

/// TCP sockets of the namespace as /proc/net/tcp lists them: (local, remote, state number).
fn tcp_sockets(ns: &Netns) -> Vec<(SocketAddrV4, SocketAddrV4, u8)> {
    let table = ns.run(|| Ok(std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap())).unwrap();
    let address = |field: &str| {
        let (ip, port) = field.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap().to_ne_bytes();
        SocketAddrV4::new(Ipv4Addr::from(ip), u16::from_str_radix(port, 16).unwrap())
    };
    table
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let state = u8::from_str_radix(fields[3], 16).unwrap();
            (address(fields[1]), address(fields[2]), state)
        })
        .collect()
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;

fn counter(firewall: &mut Firewall, name: &str) -> u64 {
    let counters = firewall.counters().unwrap();
    counters
        .iter()
        .find(|(fault, _)| fault == name)
        .unwrap_or_else(|| panic!("no counter for {name} in {counters:?}"))
        .1
}

/// Rule lines of a fault's chain, as `nft list chain` prints them.
fn rules(ns: &Netns, fault: &str) -> Vec<String> {
    let chain = format!("fault_{fault}");
    run(ns, "nft", &["list", "chain", "inet", "netfault", &chain])
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("table") && !line.starts_with("chain") && *line != "}")
        .map(str::to_string)
        .collect()
}

#[test]
fn firewall_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Firewall>();
}

#[test]
fn install_creates_the_table_with_every_fault_off() {
    let pair = Pair::new();
    let faults = [
        fault("syn", HostId::Server, Direction::Ingress, syn_to_server(), FaultAction::Drop),
        fault("out", HostId::Server, Direction::Egress, PacketMatch::default(), FaultAction::Drop),
        fault("theirs", HostId::Client, Direction::Ingress, PacketMatch::default(), FaultAction::Drop),
    ];
    let mut firewall = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    assert!(firewall.socket.belongs_to(&pair.server).unwrap());
    assert!(!firewall.socket.belongs_to(&pair.client).unwrap());

    let ruleset = run(&pair.server, "nft", &["list", "ruleset"]);
    for expected in [
        "table inet netfault",
        "counter fault_out",
        "counter fault_syn",
        "chain input",
        "type filter hook input priority filter; policy accept;",
        "jump fault_syn",
        "chain output",
        "type filter hook output priority filter; policy accept;",
        "jump fault_out",
    ] {
        assert!(ruleset.contains(expected), "{expected:?} missing from\n{ruleset}");
    }
    assert!(!ruleset.contains("theirs"), "another host's fault installed:\n{ruleset}");
    assert!(rules(&pair.server, "syn").is_empty());
    assert!(rules(&pair.server, "out").is_empty());
    assert_eq!(firewall.counters().unwrap(), vec![("out".to_string(), 0), ("syn".to_string(), 0)]);
    assert_eq!(run(&pair.client, "nft", &["list", "ruleset"]), "");

    let listener = listen(&pair);
    assert_eq!(connect(&pair, Duration::from_secs(1)).result, Ok(()));
    assert!(accept_within(&listener, Duration::from_secs(1)).is_some());

    match test_privilege() {
        Privilege::Root => {
            let tables = run_here("nft", &["list", "tables"]);
            assert!(!tables.contains("netfault"), "host namespace got a netfault table:\n{tables}");
        }
        // Rootless, the kernel refuses this process the host namespace's nftables altogether, so it cannot
        // have changed them either.
        Privilege::Rootless => {
            let (status, _, stderr) = output_here("nft", &["list", "tables"]);
            assert!(!status.success() && stderr.contains("Operation not permitted"), "{status}: {stderr}");
        }
    }

    // A second install in the same namespace replaces the table instead of doubling it.
    let mut again = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    let ruleset = run(&pair.server, "nft", &["list", "ruleset"]);
    assert_eq!(ruleset.matches("jump fault_syn").count(), 1, "{ruleset}");
    assert_eq!(again.counters().unwrap().len(), 2);
}

#[test]
fn unknown_faults_and_impossible_matches_are_refused() {
    let ns = Netns::new_anonymous().unwrap();
    let mut firewall = Firewall::install(&ns, HostId::Server, &[], None, None).unwrap();
    let err = firewall.activate("nope").unwrap_err().to_string();
    assert_eq!(err, "host server has no fault named nope");
    assert!(firewall.deactivate("nope").is_err());
    assert_eq!(firewall.counters().unwrap(), vec![]);

    let icmp_with_port = PacketMatch { protocol: Some(Protocol::Icmp), dport: Some(PORT), ..PacketMatch::default() };
    let faults = [fault("bad", HostId::Server, Direction::Ingress, icmp_with_port, FaultAction::Drop)];
    let err = Firewall::install(&ns, HostId::Server, &faults, None, None).err().unwrap().to_string();
    assert!(err.contains("fault bad") && err.contains("icmp has no ports"), "{err}");
}

#[test]
fn fifty_faults_on_one_host_install_and_switch() {
    // Found by the issue-12 campaign: 50 faults in one batch drew more acknowledgements than the socket's
    // receive buffer holds, and the install failed with ENOBUFS.
    let ns = Netns::new_anonymous().unwrap();
    let faults: Vec<FaultPlan> = (0..50)
        .map(|i| {
            let matcher = PacketMatch { dport: Some(1000 + i), ..syn_to_server() };
            fault(&format!("f{i:02}"), HostId::Server, Direction::Ingress, matcher, FaultAction::Drop)
        })
        .collect();
    let mut firewall = Firewall::install(&ns, HostId::Server, &faults, None, None).unwrap();
    firewall.activate("f49").unwrap();
    let ruleset = run(&ns, "nft", &["list", "ruleset"]);
    assert_eq!(ruleset.matches("jump fault_f").count(), 50, "{ruleset}");
    assert!(ruleset.contains("tcp dport 1049 tcp flags syn / syn,ack counter name \"fault_f49\" drop"), "{ruleset}");
    assert_eq!(firewall.counters().unwrap().len(), 50);
}

#[test]
fn a_fault_the_kernel_refuses_is_an_error_at_its_line() {
    // A payload condition on a kernel without `@ih` (< 6.2) is refused by the kernel only; any refused fault
    // names itself. Here the chain name is over the kernel's limit, which validation would refuse first.
    let ns = Netns::new_anonymous().unwrap();
    let mut refused = fault(&"f".repeat(300), HostId::Server, Direction::Ingress, syn_to_server(), FaultAction::Drop);
    refused.location = Location { line: 7, column: 5 };
    let error = Firewall::install(&ns, HostId::Server, &[refused], None, None).err().unwrap();
    let shown = error.in_file(std::path::Path::new("s.yaml")).to_string();
    assert!(shown.starts_with("s.yaml:7:5: install fault fffff"), "{shown}");
    assert!(shown.ends_with("Numerical result out of range (os error 34)"), "{shown}");
}

/// A TcpExt counter of the namespace (`nstat -az TcpExtLockDroppedIcmps`).
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    let netstat = ns.run(|| Ok(std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap())).unwrap();
    let mut lines = netstat.lines();
    let names = lines.next().unwrap().split_whitespace();
    let values = lines.next().unwrap().split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

/// What the connecting client sees of each reject. A reset is queued to the socket's backlog and
/// fails connect() at once. An ICMP error on a veth link comes back while connect() still holds the
/// socket lock (the whole round trip runs in the softirq of the SYN's transmission); TCP then drops
/// it (LockDroppedIcmps) and fails the connect only when the SYN retransmitted after 1 s draws the
/// error again. If softirqs are deferred the first ICMP arrives after the lock is released instead.
#[test]
fn each_reject_gives_the_sender_its_errno() {
    let pair = Pair::new();
    // (fault, action, connect's errno, ICMP (type, code) queued on the client socket)
    let cases = [
        ("rst", FaultAction::RejectTcpReset, "reject with tcp reset", Errno::ECONNREFUSED, None),
        (
            "port",
            FaultAction::RejectIcmpPortUnreachable,
            "\"fault_port\" reject", // nft omits the inet default
            Errno::ECONNREFUSED,
            Some((3, 3)),
        ),
        (
            "host",
            FaultAction::RejectIcmpHostUnreachable,
            "reject with icmpx host-unreachable",
            Errno::EHOSTUNREACH,
            Some((3, 1)),
        ),
        ("net", FaultAction::RejectIcmpNetUnreachable, "reject with icmpx no-route", Errno::ENETUNREACH, Some((3, 0))),
        (
            "admin",
            FaultAction::RejectIcmpAdminProhibited,
            "reject with icmpx admin-prohibited",
            Errno::EHOSTUNREACH,
            Some((3, 13)),
        ),
    ];
    let faults: Vec<FaultPlan> = cases
        .iter()
        .map(|(name, action, _, _, _)| fault(name, HostId::Server, Direction::Ingress, syn_to_server(), *action))
        .collect();
    let mut firewall = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    let listener = listen(&pair);
    for (name, _, reject_text, errno, icmp) in cases {
        let lock_dropped_before = tcp_ext(&pair.client, "LockDroppedIcmps");
        firewall.activate(name).unwrap();
        let rule = rules(&pair.server, name).join("\n");
        assert!(rule.ends_with(reject_text), "{name}: {rule}");
        let attempt = connect(&pair, Duration::from_secs(3));
        assert_eq!(attempt.result, Err(errno), "{name}");
        assert_eq!(queued_icmp(&attempt.socket), icmp, "{name}");
        let lock_dropped = tcp_ext(&pair.client, "LockDroppedIcmps") - lock_dropped_before;
        let syns = counter(&mut firewall, name);
        match (icmp, lock_dropped) {
            (None, 0) | (Some(_), 0) => {
                assert_eq!(syns, 1, "{name}");
                assert!(attempt.elapsed < Duration::from_millis(500), "{name}: {:?}", attempt.elapsed);
            }
            (Some(_), 1) => {
                assert_eq!(syns, 2, "{name}: first SYN and its retransmission");
                assert!(
                    attempt.elapsed > Duration::from_millis(900) && attempt.elapsed < Duration::from_millis(2500),
                    "{name}: {:?}",
                    attempt.elapsed
                );
            }
            other => panic!("{name}: unexpected (icmp, LockDroppedIcmps) {other:?}"),
        }

        firewall.deactivate(name).unwrap();
        assert_eq!(connect(&pair, Duration::from_secs(1)).result, Ok(()), "{name} off");
        assert!(accept_within(&listener, Duration::from_secs(1)).is_some());
        assert_eq!(counter(&mut firewall, name), syns, "{name} counted while off");
    }
}

#[test]
fn drop_times_connect_out_until_switched_off() {
    let pair = Pair::new();
    let faults = [fault("blackhole", HostId::Server, Direction::Ingress, syn_to_server(), FaultAction::Drop)];
    let mut firewall = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    let listener = listen(&pair);

    firewall.activate("blackhole").unwrap();
    firewall.activate("blackhole").unwrap();
    assert_eq!(rules(&pair.server, "blackhole").len(), 1, "activate twice must leave one rule");
    let attempt = connect(&pair, Duration::from_millis(500));
    assert_eq!(attempt.result, Err(Errno::ETIMEDOUT));
    assert!(
        attempt.elapsed >= Duration::from_millis(400) && attempt.elapsed < Duration::from_secs(4),
        "{:?}",
        attempt.elapsed
    );
    let dropped = counter(&mut firewall, "blackhole");
    assert!(dropped >= 1, "{dropped}");

    firewall.deactivate("blackhole").unwrap();
    firewall.deactivate("blackhole").unwrap();
    assert!(rules(&pair.server, "blackhole").is_empty());
    assert_eq!(connect(&pair, Duration::from_secs(1)).result, Ok(()));
    assert!(accept_within(&listener, Duration::from_secs(1)).is_some());
    assert_eq!(counter(&mut firewall, "blackhole"), dropped, "counted while off");

    // Counters keep what earlier activations counted.
    firewall.activate("blackhole").unwrap();
    let attempt = connect(&pair, Duration::from_millis(300));
    assert_eq!(attempt.result, Err(Errno::ETIMEDOUT));
    assert!(counter(&mut firewall, "blackhole") > dropped);
}

#[test]
fn dropping_pure_acks_leaves_the_server_in_syn_recv() {
    let pair = Pair::new();
    let pure_ack = PacketMatch {
        protocol: Some(Protocol::Tcp),
        dport: Some(PORT),
        // PSH is left out of the mask: data segments match the flags, only the payload test spares them.
        tcp_flags: Some(TcpFlagsMatch { mask: SYN | ACK | FIN | RST, value: ACK }),
        payload: Some(PayloadMatch::Empty),
        ..PacketMatch::default()
    };
    let faults = [fault("acks", HostId::Server, Direction::Ingress, pure_ack, FaultAction::Drop)];
    let mut firewall = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    let listener = listen(&pair);
    firewall.activate("acks").unwrap();
    assert_eq!(
        rules(&pair.server, "acks"),
        [
            "meta l4proto tcp @ih,0,8 >= 0x0 return comment \"tcp payload not empty: not this fault's packet\"",
            "tcp dport 9000 tcp flags ack / fin,syn,rst,ack counter name \"fault_acks\" drop",
        ]
    );

    let attempt = connect(&pair, Duration::from_secs(5));
    assert_eq!(attempt.result, Ok(()));
    let server = SocketAddrV4::new(SERVER, PORT);
    let client_states = tcp_sockets(&pair.client);
    assert!(
        client_states.iter().any(|(_, remote, state)| *remote == server && *state == TCP_ESTABLISHED),
        "{client_states:?}"
    );
    assert!(accept_within(&listener, Duration::from_millis(300)).is_none());
    let server_states = tcp_sockets(&pair.server);
    assert!(
        server_states
            .iter()
            .any(|(local, remote, state)| *local == server && *remote.ip() == CLIENT && *state == TCP_SYN_RECV),
        "{server_states:?}"
    );
    assert!(counter(&mut firewall, "acks") >= 1);

    // A data segment carries the same ACK, but has payload: it passes and completes the handshake.
    let mut client = TcpStream::from(attempt.socket);
    client.write_all(b"hello").unwrap();
    let mut accepted = accept_within(&listener, Duration::from_secs(2)).expect("data segment dropped");
    accepted.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut received = [0u8; 5];
    accepted.read_exact(&mut received).unwrap();
    assert_eq!(&received, b"hello");
}

#[test]
fn dropping_data_spares_the_handshake() {
    let pair = Pair::new();
    let data = PacketMatch { dport: Some(PORT), payload: Some(PayloadMatch::NonEmpty), ..PacketMatch::default() };
    let faults = [fault("data", HostId::Server, Direction::Ingress, data, FaultAction::Drop)];
    let mut firewall = Firewall::install(&pair.server, HostId::Server, &faults, None, None).unwrap();
    let listener = listen(&pair);
    firewall.activate("data").unwrap();
    assert_eq!(rules(&pair.server, "data"), ["tcp dport 9000 @ih,0,8 >= 0x0 counter name \"fault_data\" drop"]);

    let attempt = connect(&pair, Duration::from_secs(10));
    assert_eq!(attempt.result, Ok(()));
    let mut accepted = accept_within(&listener, Duration::from_secs(1)).expect("handshake dropped");
    assert_eq!(counter(&mut firewall, "data"), 0, "handshake segments counted as data");

    let mut client = TcpStream::from(attempt.socket);
    client.write_all(&[7u8; 100]).unwrap();
    accepted.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut received = [0u8; 100];
    let err = accepted.read(&mut received).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
    assert!(counter(&mut firewall, "data") >= 1);

    // Switched off, the next retransmission gets through.
    firewall.deactivate("data").unwrap();
    accepted.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    accepted.read_exact(&mut received).unwrap();
    assert_eq!(received, [7u8; 100]);
}

#[test]
fn egress_faults_hold_the_hosts_own_packets() {
    let pair = Pair::new();
    let to_server = PacketMatch { protocol: Some(Protocol::Tcp), dport: Some(PORT), ..PacketMatch::default() };
    let faults = [fault("out", HostId::Client, Direction::Egress, to_server, FaultAction::Drop)];
    let mut firewall = Firewall::install(&pair.client, HostId::Client, &faults, None, None).unwrap();
    let listener = listen(&pair);
    firewall.activate("out").unwrap();

    let attempt = connect(&pair, Duration::from_millis(500));
    assert_eq!(attempt.result, Err(Errno::ETIMEDOUT));
    assert!(counter(&mut firewall, "out") >= 1);
    assert!(accept_within(&listener, Duration::from_millis(100)).is_none());

    firewall.deactivate("out").unwrap();
    assert_eq!(connect(&pair, Duration::from_secs(1)).result, Ok(()));
    assert!(accept_within(&listener, Duration::from_secs(1)).is_some());
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Measures install and switch latency; prints the medians (run with --nocapture to see them).
#[test]
fn switching_a_fault_takes_well_under_a_millisecond() {
    let faults = [
        fault("syn", HostId::Server, Direction::Ingress, syn_to_server(), FaultAction::Drop),
        fault(
            "acks",
            HostId::Server,
            Direction::Ingress,
            PacketMatch { payload: Some(PayloadMatch::Empty), ..syn_to_server() },
            FaultAction::RejectTcpReset,
        ),
    ];
    let (mut installs, mut drops) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let ns = Netns::new_anonymous().unwrap();
        let start = Instant::now();
        let firewall = Firewall::install(&ns, HostId::Server, &faults, None, None).unwrap();
        installs.push(start.elapsed());
        // Closing the socket waits for nf_tables to finish destroying what the batches removed
        // (an RCU grace period), so it is measured apart.
        let start = Instant::now();
        drop(firewall);
        drops.push(start.elapsed());
    }
    let ns = Netns::new_anonymous().unwrap();
    let mut firewall = Firewall::install(&ns, HostId::Server, &faults, None, None).unwrap();
    let (mut on, mut off, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100 {
        let start = Instant::now();
        firewall.activate("acks").unwrap();
        on.push(start.elapsed());
        let start = Instant::now();
        firewall.deactivate("acks").unwrap();
        off.push(start.elapsed());
        let start = Instant::now();
        firewall.counters().unwrap();
        reads.push(start.elapsed());
    }
    let (install, on, off, reads) = (median(installs), median(on), median(off), median(reads));
    let dropped = median(drops);
    println!(
        "firewall medians: install {install:?} (20), drop {dropped:?} (20), activate {on:?}, \
         deactivate {off:?}, counters {reads:?} (100 each)"
    );
    assert!(on < Duration::from_millis(1), "activate median {on:?}");
    assert!(off < Duration::from_millis(1), "deactivate median {off:?}");
}

#[test]
fn loading_conntrack_registers_its_sysctls_and_leaves_no_table() {
    let ns = Netns::new_anonymous().unwrap();
    ns.run(load_conntrack_here).unwrap();
    let tcp_loose = std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_tcp_loose");
    assert!(ns.run(|| Ok(tcp_loose.exists())).unwrap(), "nf_conntrack's sysctls are there once it is loaded");
    assert_eq!(run(&ns, "nft", &["list", "ruleset"]).trim(), "", "the scratch table is gone");
}

/// A connection from the client with the given IP options (`IP_OPTIONS`: they make the IP header longer) and
/// TCP timestamps on or off (the TCP header 32 or 20 bytes long for data), which sends `sizes` bytes in turn,
/// each echoed back by the server, then closes both ends.
fn exchange(pair: &Pair, listener: &TcpListener, ip_options: &[u8], timestamps: bool, sizes: &[usize]) {
    let value = if timestamps { "1" } else { "0" };
    run(&pair.client, "sysctl", &["-qw", &format!("net.ipv4.tcp_timestamps={value}")]);
    let client = pair
        .client
        .run(|| {
            let socket = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
            if !ip_options.is_empty() {
                // SAFETY: IP_OPTIONS takes the option bytes, passed by pointer with their length.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_OPTIONS,
                        ip_options.as_ptr().cast(),
                        ip_options.len() as libc::socklen_t,
                    )
                };
                assert_eq!(set, 0, "setsockopt(IP_OPTIONS)");
            }
            socket::connect(socket.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(SERVER, PORT))).unwrap();
            Ok(TcpStream::from(socket))
        })
        .unwrap();
    let mut client = client;
    let mut server = accept_within(listener, Duration::from_secs(2)).expect("accepted");
    server.set_nonblocking(false).unwrap();
    for &size in sizes {
        let data = vec![0x5a; size];
        client.write_all(&data).unwrap();
        let mut echoed = vec![0; size];
        server.read_exact(&mut echoed).unwrap();
        server.write_all(&echoed).unwrap();
        client.read_exact(&mut echoed).unwrap();
    }
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
}

#[test]
fn both_payload_encodings_select_the_same_packets() {
    // The header-lengths encoding is what kernels without `@ih` (6.1) get; this kernel has both, so the two
    // are installed side by side on the server's input and counted on the same packets: segments with and
    // without payload, IP headers of 20 and 24 bytes, TCP headers of 20, 32 and 40 bytes (SYN).
    let pair = Pair::new();
    let with = |name: &str, payload| {
        let matcher = PacketMatch { dport: Some(PORT), payload: Some(payload), ..PacketMatch::default() };
        // Marked for a queueing discipline that is not there: every packet goes on, and the counter counts it.
        fault(name, HostId::Server, Direction::Ingress, matcher, FaultAction::QdiscDrop)
    };
    let faults = [
        with("data-ih", PayloadMatch::NonEmpty),
        with("data-lengths", PayloadMatch::NonEmpty),
        with("empty-ih", PayloadMatch::Empty),
        with("empty-lengths", PayloadMatch::Empty),
    ];
    let encoding = |fault: &FaultPlan| {
        if fault.name.ends_with("-ih") {
            PayloadEncoding::InnerHeader
        } else {
            PayloadEncoding::HeaderLengths
        }
    };
    let mut firewall =
        Firewall::install_encoded(&pair.server, HostId::Server, &faults, (None, None), encoding).unwrap();
    for fault in &faults {
        firewall.activate(&fault.name).unwrap();
    }
    assert_eq!(
        rules(&pair.server, "data-lengths"),
        ["tcp dport 9000 ip length . @nh,0,8 . tcp doff != @tcp_no_payload counter name \"fault_data-lengths\" meta mark set 0x6e660001"],
        "{}",
        run(&pair.server, "nft", &["list", "ruleset"])
    );
    let listener = listen(&pair);
    // NOP, NOP, NOP, end of options: a 24-byte IP header.
    let nops = [1, 1, 1, 0];
    exchange(&pair, &listener, &[], true, &[1, 100, 5000]);
    exchange(&pair, &listener, &nops, true, &[1, 3000]);
    exchange(&pair, &listener, &[], false, &[7, 2000]);
    exchange(&pair, &listener, &nops, false, &[1]);

    let (data, empty) = (counter(&mut firewall, "data-ih"), counter(&mut firewall, "empty-ih"));
    assert_eq!(counter(&mut firewall, "data-lengths"), data, "segments with payload");
    assert_eq!(counter(&mut firewall, "empty-lengths"), empty, "segments without payload");
    // At least the 8 sends of the client (a large one may arrive in several segments), and its handshakes' and
    // closes' segments (SYN, ACK, FIN) per connection.
    assert!(data >= 8, "{data} segments with payload");
    assert!(empty >= 4 * 3, "{empty} segments without payload");
}

#[test]
fn asking_for_an_xtables_match_finds_bpf_and_refuses_one_that_does_not_exist() {
    let ns = Netns::new_anonymous().unwrap();
    let mut socket = NetfilterSocket::open(&ns).unwrap();
    socket.load_xt_match(c"bpf", expr::XT_BPF_REVISION).unwrap();
    let refused = socket.load_xt_match(c"netfault_none", 0).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ENOENT), "{refused}");
    // The socket still answers after a refusal.
    socket.load_xt_match(c"bpf", expr::XT_BPF_REVISION).unwrap();
}

/// A recording fault's switch adds no xtables match, which would first wait for the pending nf_tables destroy
/// work of every namespace (an RCU grace period, seconds under a suite's load): the rule it switches jumps to a
/// chain made at install, whose one rule holds the match, the counter and the verdict for the whole run.
#[test]
fn a_recording_fault_is_switched_by_a_jump_and_keeps_its_bpf_match_installed() {
    let maps = RingMaps::create().unwrap();
    let recording = DropRecording { maps: maps.fds(), host: HostId::Client.index() as u32 };
    let faults = [fault("probes", HostId::Client, Direction::Egress, syn_to_server(), FaultAction::Drop)];
    let ns = Netns::new_anonymous().unwrap();
    let mut firewall = Firewall::install(&ns, HostId::Client, &faults, None, Some(recording)).unwrap();
    let chain = |name: &str| {
        let listed = ns
            .run(|| Ok(Command::new("nft").args(["list", "chain", "inet", "netfault", name]).output().unwrap()))
            .unwrap();
        assert!(listed.status.success(), "nft list chain {name}: {}", String::from_utf8_lossy(&listed.stderr));
        String::from_utf8(listed.stdout).unwrap()
    };
    let record = chain("fault_probes_record");
    assert!(record.contains("bpf") && record.contains("counter name \"fault_probes\" drop"), "{record}");
    assert!(!chain("fault_probes").contains("jump"), "off: {}", chain("fault_probes"));
    firewall.activate("probes").unwrap();
    let switched = chain("fault_probes");
    assert!(switched.contains("tcp dport 9000") && switched.contains("jump fault_probes_record"), "{switched}");
    assert!(!switched.contains("bpf"), "the switched rule holds no xtables match: {switched}");
    firewall.deactivate("probes").unwrap();
    assert!(!chain("fault_probes").contains("jump"), "off again: {}", chain("fault_probes"));
    assert_eq!(chain("fault_probes_record"), record, "the recording rule stays as it was");
}

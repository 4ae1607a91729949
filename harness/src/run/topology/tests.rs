//! Topology against the real kernel: fresh namespaces, a veth pair, addresses, offloads and sysctls checked
//! with `ip`, `ethtool`, `sysctl` and `tcpdump` (root needed; these fail, not skip, without it).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr as InetAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Instant;

use super::ethtool::*;
use super::rtnl::*;
use super::*;
use crate::observe::capture::{Capture, CaptureBuffer};
use crate::run::clock::{Clock, EventSink};
use crate::run::userns::unprivileged_command;
use crate::scenario::plan::{CapturePlan, HostPlan, Link, LinkEnd, LinkPlan, RunExpectations, Tolerance};

const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

fn host_plan(id: HostId, address: Ipv4Addr, sysctls: &[(&str, &str)]) -> HostPlan {
    HostPlan {
        id,
        address,
        prefix_len: 24,
        address6: None,
        gateway: None,
        sysctls: sysctls
            .iter()
            .map(|(name, value)| Sysctl { name: name.to_string(), value: value.to_string(), location: None })
            .collect(),
        steps: Vec::new(),
    }
}

fn plan_with(mtu: u32, client_sysctls: &[(&str, &str)], server_sysctls: &[(&str, &str)]) -> Plan {
    Plan {
        name: "topology/test".into(),
        file: PathBuf::from("topology/test.yaml"),
        description: "topology unit test".into(),
        source: None,
        slow: false,
        deadline: Duration::from_secs(10),
        tolerance: Tolerance::either_side(Duration::from_millis(100)),
        sample_interval: Duration::from_millis(10),
        link: LinkPlan { mtu, ipv6: false },
        capture: CapturePlan::default(),
        hosts: vec![
            host_plan(HostId::Client, CLIENT_ADDRESS, client_sysctls),
            host_plan(HostId::Server, SERVER_ADDRESS, server_sysctls),
        ],
        links: vec![Link {
            ends: [
                LinkEnd {
                    host: HostId::Client,
                    ifname: LINK_NAME.into(),
                    address: CLIENT_ADDRESS,
                    prefix_len: 24,
                    address6: None,
                },
                LinkEnd {
                    host: HostId::Server,
                    ifname: LINK_NAME.into(),
                    address: SERVER_ADDRESS,
                    prefix_len: 24,
                    address6: None,
                },
            ],
            wire: false,
        }],
        router: None,
        faults: Vec::new(),
        expect: RunExpectations::default(),
        requires: Default::default(),
        conditional: Vec::new(),
        not_applicable: Vec::new(),
    }
}

fn default_plan() -> Plan {
    plan_with(1500, &[], &[])
}

fn namespaces() -> (Netns, Netns) {
    (Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap())
}

fn wait_bounded(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
    child.wait_with_output().unwrap()
}

/// `nsenter --net=<the namespace's fd> program args...`; panics unless it exits 0.
fn in_namespace(ns: &Netns, program: &str, args: &[&str]) -> String {
    let net = format!("--net=/proc/{}/fd/{}", std::process::id(), ns.raw_fd());
    let child = Command::new("nsenter")
        .arg(&net)
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_bounded(child, program);
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn host_link_names() -> BTreeSet<String> {
    let child = Command::new("ip").args(["-o", "link"]).stdout(Stdio::piped()).spawn().unwrap();
    let output = wait_bounded(child, "ip -o link");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(|name| name.trim().to_string()))
        .collect()
}

fn read_sysctl_in(ns: Option<&Netns>, name: &str) -> String {
    let path = Sysctl { name: name.into(), value: String::new(), location: None }.proc_path();
    let read = move || std::fs::read_to_string(&path).context(|| format!("read {}", path.display()));
    match ns {
        Some(ns) => ns.run(read).unwrap().trim().to_string(),
        None => read().unwrap().trim().to_string(),
    }
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A connected pair: the client's socket made in the client namespace, the server's in the server's.
fn connect_across(client: &Netns, server: &Netns, port: u16) -> (TcpStream, TcpStream) {
    let listener =
        server.run(|| TcpListener::bind((SERVER_ADDRESS, port)).context(|| "listen in server".to_string())).unwrap();
    let to = InetAddr::from((SERVER_ADDRESS, port));
    let stream = client
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)).context(|| "connect".to_string()))
        .unwrap();
    let accepted = accept_within(&listener, Duration::from_secs(2));
    for socket in [&stream, &accepted] {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    (stream, accepted)
}

#[test]
fn builds_addresses_mtu_macs_and_links_up() {
    let (client, server) = namespaces();
    let plan = plan_with(1400, &[], &[]);
    let topology = build(&plan, &[&client, &server], None).unwrap();

    for (id, ns, address) in [(HostId::Client, &client, CLIENT_ADDRESS), (HostId::Server, &server, SERVER_ADDRESS)] {
        let link = topology.link(id).unwrap();
        assert_eq!(link.ifname, "nf0");
        assert_eq!(link.address, address);
        assert_eq!(link.mac, link_mac(id, 0));

        let addresses = in_namespace(ns, "ip", &["-o", "-4", "addr", "show", "dev", "nf0"]);
        assert!(addresses.contains(&format!("inet {address}/24")), "{id}: {addresses}");
        let shown = in_namespace(ns, "ip", &["-o", "link", "show", "nf0"]);
        assert!(shown.starts_with(&format!("{}: nf0@", link.ifindex)), "{id}: {shown}");
        assert!(shown.contains("mtu 1400"), "{id}: {shown}");
        assert!(shown.contains("state UP"), "{id}: {shown}");
        assert!(shown.contains(&format!("link/ether {}", format_mac(link_mac(id, 0)))), "{id}: {shown}");
        let loopback = in_namespace(ns, "ip", &["-o", "link", "show", "lo"]);
        assert!(loopback.contains("<LOOPBACK,UP,LOWER_UP>"), "{id}: {loopback}");
        let ipv6 = in_namespace(ns, "ip", &["-o", "-6", "addr"]);
        assert_eq!(ipv6, "", "{id}: IPv6 must be off");
        let links = in_namespace(ns, "ip", &["-o", "link"]);
        assert_eq!(links.lines().count(), 2, "{id}: only lo and nf0: {links}");
        // No queue on either, so no queueing discipline drops a packet (the tracer's drop program is loaded only
        // for scenarios whose exec steps could add one: `QueueDrops`).
        let qdiscs = in_namespace(ns, "tc", &["qdisc", "show"]);
        assert_eq!(qdiscs.lines().count(), 2, "{id}: {qdiscs}");
        assert!(qdiscs.lines().all(|line| line.starts_with("qdisc noqueue 0: dev ")), "{id}: {qdiscs}");
        let (peer, peer_address) = match id {
            HostId::Server => (HostId::Client, CLIENT_ADDRESS),
            _ => (HostId::Server, SERVER_ADDRESS),
        };
        let neighbours = in_namespace(ns, "ip", &["neigh", "show", "dev", "nf0"]);
        assert_eq!(
            neighbours.trim(),
            format!("{peer_address} lladdr {} PERMANENT", format_mac(link_mac(peer, 0))),
            "{id}: its peer known from the start, no ARP"
        );
    }
}

/// A connect's first frame on the wire is its SYN: the peer's MAC is known (no ARP request before it).
#[test]
fn the_first_frame_of_a_connect_is_its_syn() {
    let (client, server) = namespaces();
    let plan = default_plan();
    let topology = build(&plan, &[&client, &server], None).unwrap();
    let ifindex = topology.link(HostId::Client).unwrap().ifindex;
    let socket = client
        .run(|| {
            let socket = crate::observe::capture::open_socket("the test's capture")?;
            crate::observe::capture::bind(&socket, ifindex, "the test's capture")?;
            Ok(socket)
        })
        .unwrap();
    connect_across(&client, &server, 9100);
    let mut frame = [0u8; 128];
    // SAFETY: a valid socket and a live buffer of the length given; the frames are queued already.
    let length = unsafe { libc::recv(socket.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    assert!(length >= 54, "a frame was captured: {length}");
    assert_eq!(frame[12..14], [0x08, 0x00], "the first frame is IPv4, not ARP: {:02x?}", &frame[..length as usize]);
    assert_eq!((frame[23], frame[47] & 0x3f), (6, 0x02), "the first frame is a SYN: {:02x?}", &frame[..54]);
}

#[test]
fn offloads_are_off_on_both_ends() {
    let (client, server) = namespaces();
    build(&default_plan(), &[&client, &server], None).unwrap();
    for ns in [&client, &server] {
        let features = in_namespace(ns, "ethtool", &["-k", "nf0"]);
        for name in [
            "tx-checksumming",
            "scatter-gather",
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
            "generic-receive-offload",
        ] {
            assert!(features.contains(&format!("\n{name}: off")), "{name}: {features}");
        }
        let segmentation_on: Vec<&str> =
            features.lines().filter(|l| l.contains("segmentation: on") && !l.contains("[fixed]")).collect();
        assert!(segmentation_on.is_empty(), "{segmentation_on:?}");
        let still_on = ns.run(|| active_offloads(Rtnl::open()?.raw_fd(), LINK_NAME).context(|| "read".into()));
        assert_eq!(still_on.unwrap(), Vec::<String>::new());
    }
}

#[test]
fn each_end_receives_on_one_cpu_except_rootless() {
    let (client, server) = namespaces();
    build(&default_plan(), &[&client, &server], None).unwrap();
    for ns in [&client, &server] {
        let masks = ns
            .run(|| {
                let Some(sysfs) = steering::Sysfs::of_current_namespace()? else {
                    return Ok(None);
                };
                let mut masks = Vec::new();
                for queue in 0.. {
                    match fs_read(&sysfs, &format!("class/net/nf0/queues/rx-{queue}/rps_cpus")) {
                        Some(text) => masks.push(text.trim().replace(',', "")),
                        None => break,
                    }
                }
                Ok(Some(masks))
            })
            .unwrap();
        match (crate::run::userns::test_privilege(), masks) {
            (crate::run::userns::Privilege::Root, Some(masks)) => {
                assert!(!masks.is_empty(), "nf0 has receive queues");
                for mask in masks {
                    let cpus: u32 = mask.chars().map(|c| c.to_digit(16).map_or(0, u32::count_ones)).sum();
                    assert_eq!(cpus, 1, "one CPU in rps_cpus {mask}");
                }
            }
            (crate::run::userns::Privilege::Root, None) => panic!("root may mount a sysfs"),
            (crate::run::userns::Privilege::Rootless, masks) => {
                // The kernel lets only the machine's CAP_NET_ADMIN write rps_cpus: nothing is steered.
                for mask in masks.into_iter().flatten() {
                    assert!(mask.chars().all(|c| c == '0'), "rootless, yet rps_cpus {mask}");
                }
            }
        }
    }
}

/// A file under a detached sysfs mount, through the mount's descriptor (`/proc/self/fd/<fd>/<path>`).
fn fs_read(sysfs: &steering::Sysfs, path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fd/{}/{path}", sysfs.raw_fd())).ok()
}

#[test]
fn offload_names_cover_what_ethtool_k_toggles() {
    for name in [
        "tx-checksum-ip-generic",
        "tx-scatter-gather",
        "tx-tcp-segmentation",
        "tx-tcp-accecn-segmentation",
        "tx-generic-segmentation",
        "rx-gro",
        "rx-lro",
        "tx-gso-list",
    ] {
        assert!(is_offload(name), "{name}");
    }
    for name in ["rx-checksum", "highdma", "rx-vlan-hw-parse", "tx-lockless"] {
        assert!(!is_offload(name), "{name}");
    }
}

#[test]
fn tcp_connects_right_after_build() {
    let (client, server) = namespaces();
    build(&default_plan(), &[&client, &server], None).unwrap();
    let (mut stream, mut accepted) = connect_across(&client, &server, 7000);
    assert_eq!(stream.local_addr().unwrap().ip(), IpAddr::V4(CLIENT_ADDRESS));
    stream.write_all(b"ping").unwrap();
    let mut received = [0u8; 4];
    accepted.read_exact(&mut received).unwrap();
    assert_eq!(&received, b"ping");
}

#[test]
fn sysctls_apply_to_the_scenario_namespace_only() {
    let names = ["net.ipv4.tcp_syn_retries", "net.ipv4.tcp_keepalive_time", "net.ipv6.conf.all.disable_ipv6"];
    let host_before: Vec<String> = names.iter().map(|n| read_sysctl_in(None, n)).collect();
    let (client, server) = namespaces();
    let plan = plan_with(
        1500,
        &[("net.ipv4.tcp_syn_retries", "2")],
        &[("net.ipv4.tcp_keepalive_time", "77"), ("net.ipv4.tcp_syn_retries", "3")],
    );
    build(&plan, &[&client, &server], None).unwrap();

    assert_eq!(read_sysctl_in(Some(&client), "net.ipv4.tcp_syn_retries"), "2");
    assert_eq!(read_sysctl_in(Some(&server), "net.ipv4.tcp_syn_retries"), "3");
    assert_eq!(read_sysctl_in(Some(&server), "net.ipv4.tcp_keepalive_time"), "77");
    assert_eq!(read_sysctl_in(Some(&client), "net.ipv4.tcp_keepalive_time"), "7200", "kernel default");
    for ns in [&client, &server] {
        assert_eq!(read_sysctl_in(Some(ns), "net.ipv6.conf.all.disable_ipv6"), "1");
        assert_eq!(read_sysctl_in(Some(ns), "net.ipv6.conf.nf0.disable_ipv6"), "1");
    }
    let host_after: Vec<String> = names.iter().map(|n| read_sysctl_in(None, n)).collect();
    assert_eq!(host_before, host_after, "the host's sysctls must not change");
}

/// What a run reports of each host's sysctls, read the short way (one host reads every TCP sysctl, each host
/// only those that can differ), equals what each host's namespace holds, read whole: hosts made as a run makes
/// them (each from the same private parent, whose hash table size their derived values follow), each setting
/// its own, and one having drawn a TCP Fast Open key.
#[test]
fn each_hosts_sysctls_read_the_short_way_equal_a_whole_reading() {
    let readings = thread::spawn(|| {
        crate::run::netns::enter_private_parent()?;
        let (client, server) = namespaces();
        let plan = plan_with(
            1500,
            &[("net.ipv4.tcp_syn_retries", "2"), ("net.core.somaxconn", "64")],
            &[("net.ipv4.tcp_keepalive_time", "77"), ("net.ipv4.tcp_syn_retries", "3")],
        );
        build(&plan, &[&client, &server], None)?;
        // A listener asking for TCP Fast Open makes its namespace draw a key.
        server.run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").context(|| "bind".to_string())?;
            let queue: libc::c_int = 5;
            // SAFETY: setsockopt on a live socket with a pointer to an int of the size given.
            let set = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&listener),
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN,
                    (&queue as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "setsockopt(TCP_FASTOPEN): {}", io::Error::last_os_error());
            Ok(())
        })?;
        let files = client.run(tcp_sysctl_files)?;
        let set_in_any_host: Vec<Sysctl> = plan.hosts.iter().flat_map(|host| host.sysctls.clone()).collect();
        let common = client.run(|| common_sysctls(files))?;
        let mut readings = Vec::new();
        for (ns, host) in [&client, &server].into_iter().zip(&plan.hosts) {
            let whole = ns.run(|| effective_sysctls(files, &host.sysctls))?;
            let short = host_sysctls(&common, ns.run(|| differing_sysctls(&host.sysctls, &set_in_any_host, files))?);
            readings.push((whole, short));
        }
        Ok::<_, crate::error::Error>(readings)
    })
    .join()
    .unwrap()
    .unwrap();
    for (whole, short) in &readings {
        assert_eq!(whole, short);
        assert!(whole.len() > 50, "every TCP sysctl: {}", whole.len());
    }
    let (client, server) = (&readings[0].0, &readings[1].0);
    assert_eq!(client["net.ipv4.tcp_syn_retries"], "2");
    assert_eq!(server["net.ipv4.tcp_syn_retries"], "3");
    assert_eq!((&*client["net.core.somaxconn"], &*server["net.core.somaxconn"]), ("64", "4096"));
    assert_eq!((&*client["net.ipv4.tcp_keepalive_time"], &*server["net.ipv4.tcp_keepalive_time"]), ("7200", "77"));
    if let (Some(client_key), Some(server_key)) =
        (client.get("net.ipv4.tcp_fastopen_key"), server.get("net.ipv4.tcp_fastopen_key"))
    {
        assert_ne!(client_key, server_key, "only the server drew a key");
    }
    assert_eq!(client["net.ipv4.tcp_ehash_entries"], "1024", "the private parent's child hash size");
}

#[test]
fn ipv6_stays_on_when_the_plan_asks_for_it() {
    let (client, server) = namespaces();
    let mut plan = default_plan();
    plan.link.ipv6 = true;
    build(&plan, &[&client, &server], None).unwrap();
    assert_eq!(read_sysctl_in(Some(&client), "net.ipv6.conf.nf0.disable_ipv6"), "0");
}

#[test]
fn a_sysctl_missing_from_network_namespaces_is_a_clear_error() {
    let (client, server) = namespaces();
    let plan = plan_with(1500, &[], &[("net.core.netdev_max_backlog", "10")]);
    let error = build(&plan, &[&client, &server], None).unwrap_err().to_string();
    assert!(
        error.contains(
            "sysctl net.core.netdev_max_backlog does not exist in a network namespace on this kernel \
             (not per-namespace?)"
        ),
        "{error}"
    );
    assert!(error.contains("server"), "{error}");
}

#[test]
fn a_sysctl_outside_net_is_refused() {
    let (client, server) = namespaces();
    let plan = plan_with(1500, &[("kernel.hostname", "oops")], &[]);
    let error = build(&plan, &[&client, &server], None).unwrap_err().to_string();
    assert!(error.contains("kernel.hostname") && error.contains("not a net.* sysctl"), "{error}");
}

#[test]
fn a_bad_sysctl_value_names_the_command() {
    let (client, server) = namespaces();
    let plan = plan_with(1500, &[("net.ipv4.tcp_syn_retries", "many")], &[]);
    let error = build(&plan, &[&client, &server], None).unwrap_err().to_string();
    assert!(error.contains("sysctl -w net.ipv4.tcp_syn_retries=many"), "{error}");
}

#[test]
fn a_rejected_veth_reports_the_ip_command() {
    let (client, server) = namespaces();
    let error = build(&plan_with(10, &[], &[]), &[&client, &server], None).unwrap_err();
    let Error::Sys { what, source } = &error else { panic!("{error}") };
    assert!(what.contains("ip link add nf0 mtu 10"), "{what}");
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn a_rejected_address_reports_the_ip_command_and_the_kernels_reason() {
    let (client, server) = namespaces();
    let mut plan = default_plan();
    plan.links[0].ends[1].prefix_len = 33;
    let error = build(&plan, &[&client, &server], None).unwrap_err();
    let Error::Sys { what, source } = &error else { panic!("{error}") };
    assert!(what.contains("in server (ip addr add 10.0.0.2/33 dev nf0)"), "{what}");
    assert!(what.contains("[kernel: "), "extended ACK message expected: {what}");
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn the_host_namespace_gets_no_link() {
    let before = host_link_names();
    let (client, server) = namespaces();
    build(&default_plan(), &[&client, &server], None).unwrap();
    let after = host_link_names();
    assert!(!after.iter().any(|name| name.starts_with(LINK_NAME)), "{after:?}");
    assert!(after.is_subset(&before), "new host links: {:?}", after.difference(&before).collect::<Vec<_>>());
}

/// Dropping one namespace handle destroys that namespace and with it the veth pair: the other end vanishes.
/// This also proves `build` keeps no socket or thread in either namespace.
#[test]
fn dropping_a_namespace_removes_the_pair() {
    for dropped in HostId::ALL {
        let (client, server) = namespaces();
        build(&default_plan(), &[&client, &server], None).unwrap();
        let (kept, gone) = if dropped == HostId::Client { (server, client) } else { (client, server) };
        let mut rtnl = kept.run(Rtnl::open).unwrap();
        rtnl.get_link(LINK_NAME, "nf0 before the drop").unwrap();
        drop(gone);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rtnl.get_link(LINK_NAME, "nf0 after the drop") {
                Err(Error::Sys { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => break,
                Ok(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                other => panic!("nf0 still there after dropping {dropped}: {other:?}"),
            }
        }
    }
}

/// The client's end, captured while 200 kB cross the link, shows segments no larger than the MTU, each
/// checksum verified correct by `tcpdump -vv`. The capture is netfault's own AF_PACKET one (what every run
/// uses): tcpdump cannot capture live in a rootless run, where it cannot switch to its own user after opening
/// the interface.
#[test]
fn capture_shows_wire_sized_segments_with_correct_checksums() {
    const MTU: u32 = 1400;
    let (client, server) = namespaces();
    let topology = build(&plan_with(MTU, &[], &[]), &[&client, &server], None).unwrap();
    let pcap = std::env::temp_dir().join(format!("netfault-topology-{}.pcap", std::process::id()));
    let (sink, _events) = EventSink::new(Clock::started());
    let capture = client
        .run(|| {
            Capture::start(
                &client,
                HostId::Client,
                topology.link(HostId::Client).unwrap().ifindex,
                &pcap,
                sink,
                CaptureBuffer::DEFAULT,
            )
        })
        .unwrap();

    let (mut stream, mut accepted) = connect_across(&client, &server, 7001);
    let reader = thread::spawn(move || {
        let mut received = Vec::new();
        accepted.read_to_end(&mut received).map(|_| received.len())
    });
    stream.write_all(&vec![0x5a; 200_000]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), 200_000);
    capture.stop().unwrap();

    let decoded = decode_pcap(&pcap);
    std::fs::remove_file(&pcap).unwrap();
    assert!(!decoded.contains("incorrect"), "{decoded}");
    let ip_lengths: Vec<u32> = decoded
        .lines()
        .filter_map(|line| line.split("proto TCP (6), length ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .collect();
    let data_segments = ip_lengths.iter().filter(|length| **length > 1000).count();
    assert!(data_segments >= 100, "expected the 200 kB as full segments, saw {ip_lengths:?}");
    assert!(ip_lengths.iter().all(|length| *length <= MTU), "a segment larger than the MTU: {ip_lengths:?}");
    let verified = decoded.matches("(correct)").count();
    assert!(verified >= ip_lengths.len(), "every checksum verified: {verified} of {}", ip_lengths.len());
}

fn decode_pcap(pcap: &Path) -> String {
    let mut child = unprivileged_command("tcpdump")
        .args(["-n", "-vv", "-r"])
        .arg(pcap)
        .arg("tcp")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let status = wait_bounded(child, "tcpdump -r").status;
    assert!(status.success());
    reader.join().unwrap().unwrap()
}

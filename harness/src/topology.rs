//! The wire between the two hosts of a scenario: sysctls, `lo`, the veth pair, addresses and offloads,
//! all set up over rtnetlink and ethtool ioctls from sockets that live in the hosts' namespaces.
//!
//! Nothing here runs `ip` or `ethtool`: one scenario's topology is a handful of netlink round trips.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::error::{joined, Context, Error, Result};
use crate::netns::Netns;
use crate::scenario::plan::{HostId, HostPlan, Plan, Sysctl};

/// Name of the veth end in each host's namespace; both ends share it since they live in different namespaces.
pub const LINK_NAME: &str = "nf0";

/// Longest wait for one netlink answer. Generous because namespace teardown elsewhere can hold the RTNL lock.
const NETLINK_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a veth end to become operational after `ip link set nf0 up`: the kernel's link-watch work
/// that does it waits for the RTNL lock, which many namespaces set up or torn down at once hold for seconds.
const OPERATIONAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the link state is asked for while waiting for it.
const OPERATIONAL_POLL: Duration = Duration::from_millis(2);

/// Large enough for any single answer we ask for (a link message is about 1.5 KiB).
const NETLINK_RECV_BUFFER: usize = 64 * 1024;

/// One host's end of the veth pair (`ip -o addr show dev nf0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub ifindex: u32,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
}

/// Both ends of the wire, as built by [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub client: HostLink,
    pub server: HostLink,
    /// The wire's own veth ends when the hosts are joined through a wire namespace ([`build_with_wire`]).
    pub wire: Option<WireLinks>,
}

/// The two veth ends inside the wire's namespace: `facing[host.index()]` is the ifindex of the end whose peer is
/// that host's `nf0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLinks {
    pub facing: [u32; 2],
}

/// Names of the wire's veth ends, by the host each one faces.
pub const WIRE_LINK_NAMES: [&str; 2] = ["to-client", "to-server"];

impl Topology {
    pub fn link(&self, host: HostId) -> &HostLink {
        match host {
            HostId::Client => &self.client,
            HostId::Server => &self.server,
        }
    }
}

/// The MAC address of a host's veth end: locally administered and fixed, so pcaps of two runs compare equal.
pub fn link_mac(host: HostId) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, host.index() as u8 + 1]
}

/// Builds the wire of `plan` inside the two namespaces. In command-line terms:
///
/// ```text
/// each host:    sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1   (unless link.ipv6)
///                sysctl -w <the host's sysctls>
///                ip link set lo up
/// client:        ip link add nf0 mtu M address 02:00:00:00:00:01 type veth
///                    peer name nf0 netns <server> mtu M address 02:00:00:00:00:02
/// each host:     ethtool -K nf0 tx off sg off tso off gso off gro off
///                ip addr add <address>/<prefix> dev nf0
///                ip link set nf0 up
/// ```
///
/// Offloads go off before the link goes up, so no frame ever leaves with a deferred checksum or as a
/// super-segment. `build` returns once both ends are operational (`ip link show nf0` says `state UP`); see
/// [`wait_operational`].
pub fn build(plan: &Plan, client: &Netns, server: &Netns) -> Result<Topology> {
    let client_rtnl = client.run(|| prepare_host(plan, HostId::Client))?;
    let server_rtnl = server.run(|| prepare_host(plan, HostId::Server))?;
    connect(plan, [client_rtnl, server_rtnl], server)
}

/// [`build`] in two namespaces it creates (`ip netns add`), both at once: each on a thread of its own that
/// creates its host's namespace and sets it up from inside (the kernel creates namespaces in parallel).
pub fn build_in_new_namespaces(plan: &Plan) -> Result<([Netns; 2], Topology)> {
    let [client, server] = thread::scope(|scope| {
        let preparing = HostId::ALL.map(|host| {
            thread::Builder::new().name(format!("netns-{host}")).spawn_scoped(scope, move || {
                let ns = Netns::unshare_current_thread()?;
                Ok((ns, prepare_host(plan, host)?))
            })
        });
        preparing.map(|spawned| joined(spawned, "namespace set-up"))
    });
    let ((client_ns, client_rtnl), (server_ns, server_rtnl)) = (client?, server?);
    let topology = connect(plan, [client_rtnl, server_rtnl], &server_ns)?;
    Ok(([client_ns, server_ns], topology))
}

/// Joins two prepared hosts with the veth pair and configures both ends.
fn connect(plan: &Plan, [mut client_rtnl, mut server_rtnl]: [Rtnl; 2], server: &Netns) -> Result<Topology> {
    let mtu = plan.link.mtu;
    create_veth(
        &mut client_rtnl,
        (LINK_NAME, link_mac(HostId::Client)),
        (LINK_NAME, link_mac(HostId::Server), server, "<server>"),
        mtu,
    )?;
    let topology = Topology {
        client: configure_link_end(&mut client_rtnl, plan.host(HostId::Client))?,
        server: configure_link_end(&mut server_rtnl, plan.host(HostId::Server))?,
        wire: None,
    };
    wait_operational(&mut client_rtnl, LINK_NAME, "client")?;
    wait_operational(&mut server_rtnl, LINK_NAME, "server")?;
    Ok(topology)
}

/// [`build_in_new_namespaces`] with a third namespace between the hosts, the wire, joined to each host by a veth
/// pair of its own; the hosts keep their addresses and MACs and still share one subnet, and nothing in the wire
/// forwards a frame until [`crate::impair::Wire`] runs there. In command-line terms, on top of each host's
/// set-up:
///
/// ```text
/// wire:    sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1
/// client:  ip link add nf0 mtu M address 02:00:00:00:00:01 type veth peer name to-client netns <wire> mtu M
/// server:  ip link add nf0 mtu M address 02:00:00:00:00:02 type veth peer name to-server netns <wire> mtu M
/// each:    ethtool -K <end> tx off sg off tso off gso off gro off; ip link set <end> up
/// hosts:   ethtool -K nf0 rx off
/// ```
///
/// The hosts verify received checksums themselves (`rx off`): a veth end otherwise marks every frame from its
/// peer as checked, and a frame the wire corrupted would reach TCP as good data.
pub fn build_with_wire(plan: &Plan) -> Result<([Netns; 2], Netns, Topology)> {
    let (hosts, wire) = thread::scope(|scope| {
        let preparing = HostId::ALL.map(|host| {
            thread::Builder::new().name(format!("netns-{host}")).spawn_scoped(scope, move || {
                let ns = Netns::unshare_current_thread()?;
                Ok((ns, prepare_host(plan, host)?))
            })
        });
        let wire = thread::Builder::new().name("netns-wire".into()).spawn_scoped(scope, || {
            let ns = Netns::unshare_current_thread()?;
            Ok((ns, prepare_wire()?))
        });
        (preparing.map(|spawned| joined(spawned, "namespace set-up")), joined(wire, "wire namespace set-up"))
    });
    let [client, server] = hosts;
    let ((client_ns, mut client_rtnl), (server_ns, mut server_rtnl)) = (client?, server?);
    let (wire_ns, mut wire_rtnl) = wire?;
    let mtu = plan.link.mtu;
    for (host, rtnl) in [(HostId::Client, &mut client_rtnl), (HostId::Server, &mut server_rtnl)] {
        let wire_mac = [0x02, 0, 0, 0, 1, host.index() as u8 + 1];
        create_veth(
            rtnl,
            (LINK_NAME, link_mac(host)),
            (WIRE_LINK_NAMES[host.index()], wire_mac, &wire_ns, "<wire>"),
            mtu,
        )?;
    }
    let client = configure_link_end(&mut client_rtnl, plan.host(HostId::Client))?;
    let server = configure_link_end(&mut server_rtnl, plan.host(HostId::Server))?;
    for (host, rtnl) in [(HostId::Client, &client_rtnl), (HostId::Server, &server_rtnl)] {
        turn_off_rx_checksum(rtnl.raw_fd(), LINK_NAME)
            .context(|| format!("verify checksums on {LINK_NAME} in {host} (ethtool -K {LINK_NAME} rx off)"))?;
    }
    let mut facing = [0; 2];
    for host in HostId::ALL {
        facing[host.index()] = configure_wire_end(&mut wire_rtnl, WIRE_LINK_NAMES[host.index()])?;
    }
    wait_operational(&mut client_rtnl, LINK_NAME, "client")?;
    wait_operational(&mut server_rtnl, LINK_NAME, "server")?;
    for name in WIRE_LINK_NAMES {
        wait_operational(&mut wire_rtnl, name, "the wire")?;
    }
    Ok(([client_ns, server_ns], wire_ns, Topology { client, server, wire: Some(WireLinks { facing }) }))
}

/// Runs on a thread inside the wire's namespace: IPv6 off (no router solicitations of its own), and the
/// rtnetlink socket that configures its ends.
fn prepare_wire() -> Result<Rtnl> {
    for name in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
        let sysctl = Sysctl { name: name.to_string(), value: "1".to_string() };
        match write_sysctl(&sysctl) {
            Err(SysctlError::Absent(_)) => {}
            other => other.map_err(|e| e.into_error_in("the wire"))?,
        }
    }
    Rtnl::open().map_err(|e| in_place(e, "the wire"))
}

/// Offloads off and the link up for one of the wire's veth ends; returns its ifindex.
fn configure_wire_end(rtnl: &mut Rtnl, name: &str) -> Result<u32> {
    let link = rtnl.get_link(name, &format!("look up {name} in the wire (ip link show {name})"))?;
    turn_off_offloads(rtnl.raw_fd(), name).context(|| {
        format!("turn off offloads on {name} in the wire (ethtool -K {name} tx off sg off tso off gso off gro off)")
    })?;
    let mut up = LinkMessage::default();
    up.header.index = link.header.index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewLink(up),
        0,
        format!("set {name} up in the wire (ip link set {name} up)"),
    )])?;
    Ok(link.header.index)
}

/// Waits until the host's veth end is operational (`ip link show nf0` says `state UP`), at most
/// [`OPERATIONAL_TIMEOUT`].
///
/// `ip link set up` brings the carrier up at once, but the kernel attaches the link's queueing discipline
/// only in its link-watch work, which sets the operational state in the same step. Until then every frame
/// sent on the link is dropped before any capture sees it: a scenario started early loses its first ARP
/// request and SYN, and after three lost ARP requests its connect fails with EHOSTUNREACH. Idle, the work
/// runs within a millisecond; with 200 scenarios setting up at once, 55 of 200 runs had to wait (90th
/// percentile 9 ms, longest 5.2 s). Without this wait 111 of 200 such runs failed, most of them on this.
fn wait_operational(rtnl: &mut Rtnl, name: &str, place: &str) -> Result<()> {
    let started = Instant::now();
    let what = format!("wait for {name} in {place} to be up (ip link show {name}: state UP)");
    loop {
        let link = rtnl.get_link(name, &what)?;
        let state = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::OperState(state) => Some(*state),
            _ => None,
        });
        if state == Some(State::Up) {
            return Ok(());
        }
        if started.elapsed() >= OPERATIONAL_TIMEOUT {
            return Err(Error::Internal(format!(
                "{what}: still {state:?} {}s after ip link set {name} up",
                OPERATIONAL_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(OPERATIONAL_POLL);
    }
}

/// Runs on a thread inside the host's namespace: sysctls (which resolve against the calling thread's
/// namespace), then an rtnetlink socket that stays bound to this namespace wherever it is used from.
fn prepare_host(plan: &Plan, host: HostId) -> Result<Rtnl> {
    if !plan.link.ipv6 {
        for name in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
            let sysctl = Sysctl { name: name.to_string(), value: "1".to_string() };
            match write_sysctl(&sysctl) {
                // A kernel without IPv6 sends no router solicitations either.
                Err(SysctlError::Absent(_)) => {}
                other => other.map_err(|e| e.into_error(host))?,
            }
        }
    }
    for sysctl in &plan.host(host).sysctls {
        write_sysctl(sysctl).map_err(|e| e.into_error(host))?;
    }
    let mut rtnl = Rtnl::open().map_err(|e| in_host(e, host))?;
    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewLink(link_up_by_name("lo")),
        0,
        format!("set lo up in {host} (ip link set lo up)"),
    )])?;
    Ok(rtnl)
}

fn in_host(error: Error, host: HostId) -> Error {
    in_place(error, host.name())
}

fn in_place(error: Error, place: &str) -> Error {
    match error {
        Error::Sys { what, source } => Error::Sys { what: format!("{what} in {place}"), source },
        other => other,
    }
}

enum SysctlError {
    /// The file does not exist in this namespace.
    Absent(Sysctl),
    /// Not a `net.*` name: it would change the whole machine, not the scenario's namespace.
    NotNamespaced(Sysctl),
    Write(Sysctl, io::Error),
}

impl SysctlError {
    fn into_error(self, host: HostId) -> Error {
        self.into_error_in(host.name())
    }

    fn into_error_in(self, host: &str) -> Error {
        match self {
            SysctlError::Absent(s) => Error::sys(
                format!(
                    "sysctl {} does not exist in a network namespace on this kernel (not per-namespace?) \
                     (in {host})",
                    s.name
                ),
                io::Error::from(io::ErrorKind::NotFound),
            ),
            SysctlError::NotNamespaced(s) => Error::Internal(format!(
                "sysctl {} of {host} is not a net.* sysctl: only per-namespace network sysctls can be set \
                 for one scenario host",
                s.name
            )),
            SysctlError::Write(s, e) => {
                Error::sys(format!("set sysctl in {host} (sysctl -w {}={})", s.name, s.value), e)
            }
        }
    }
}

/// `sysctl -w name=value` for the calling thread's network namespace.
fn write_sysctl(sysctl: &Sysctl) -> std::result::Result<(), SysctlError> {
    let namespaced = sysctl.name.starts_with("net.")
        && !sysctl.name.contains('/')
        && sysctl.name.split('.').all(|part| !part.is_empty());
    if !namespaced {
        return Err(SysctlError::NotNamespaced(sysctl.clone()));
    }
    let mut file = OpenOptions::new().write(true).open(sysctl.proc_path()).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SysctlError::Absent(sysctl.clone()),
        _ => SysctlError::Write(sysctl.clone(), e),
    })?;
    file.write_all(format!("{}\n", sysctl.value).as_bytes()).map_err(|e| SysctlError::Write(sysctl.clone(), e))
}

fn link_up_by_name(name: &str) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::IfName(name.to_string()));
    message
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One RTM_NEWLINK creates both ends: `(name, mac)` in the namespace of `rtnl`, the peer born in `peer_ns`
/// (`peer_label` names it in messages).
fn create_veth(
    rtnl: &mut Rtnl,
    (name, mac): (&str, [u8; 6]),
    (peer_name, peer_mac, peer_ns, peer_label): (&str, [u8; 6], &Netns, &str),
    mtu: u32,
) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
    peer.attributes.push(LinkAttribute::Mtu(mtu));
    peer.attributes.push(LinkAttribute::Address(peer_mac.to_vec()));
    peer.attributes.push(LinkAttribute::NetNsFd(peer_ns.raw_fd()));

    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_string()));
    link.attributes.push(LinkAttribute::Mtu(mtu));
    link.attributes.push(LinkAttribute::Address(mac.to_vec()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));

    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewLink(link),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "create veth pair (ip link add {name} mtu {mtu} address {} type veth peer name {peer_name} \
             netns {peer_label} mtu {mtu} address {})",
            format_mac(mac),
            format_mac(peer_mac)
        ),
    )])
}

/// Offloads, address and link state of one veth end, through the socket that lives in its namespace.
fn configure_link_end(rtnl: &mut Rtnl, host: &HostPlan) -> Result<HostLink> {
    let id = host.id;
    let link = rtnl.get_link(LINK_NAME, &format!("look up {LINK_NAME} in {id} (ip link show {LINK_NAME})"))?;
    let mac = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Internal(format!("{LINK_NAME} in {id} has no Ethernet address")))?;
    let ifindex = link.header.index;

    turn_off_offloads(rtnl.raw_fd(), LINK_NAME).context(|| {
        format!(
            "turn off offloads on {LINK_NAME} in {id} (ethtool -K {LINK_NAME} tx off sg off tso off gso off gro off)"
        )
    })?;

    let mut address = AddressMessage::default();
    address.header.family = AddressFamily::Inet;
    address.header.prefix_len = host.prefix_len;
    address.header.scope = AddressScope::Universe;
    address.header.index = ifindex;
    address.attributes.push(AddressAttribute::Local(IpAddr::V4(host.address)));
    address.attributes.push(AddressAttribute::Address(IpAddr::V4(host.address)));

    let mut up = LinkMessage::default();
    up.header.index = ifindex;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;

    rtnl.execute(vec![
        Request::new(
            RouteNetlinkMessage::NewAddress(address),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "add address {}/{} to {LINK_NAME} in {id} (ip addr add {}/{} dev {LINK_NAME})",
                host.address, host.prefix_len, host.address, host.prefix_len
            ),
        ),
        Request::new(
            RouteNetlinkMessage::NewLink(up),
            0,
            format!("set {LINK_NAME} up in {id} (ip link set {LINK_NAME} up)"),
        ),
    ])?;

    Ok(HostLink { ifindex, ifname: LINK_NAME.to_string(), address: host.address, mac })
}

/// `ethtool -K <ifname> tx off sg off tso off gso off gro off lro off` and the like, by feature name
/// (ETHTOOL_GSTRINGS, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES, as ethtool itself does): every transmit checksum, scatter-gather, segmentation and receive-aggregation feature the device can
/// change goes off, so the capture sees the segments the wire carries, with their final checksums.
/// Fails if one of them is still active afterwards (a feature the device cannot turn off).
pub fn turn_off_offloads(socket: RawFd, ifname: &str) -> io::Result<()> {
    let names = feature_names(socket, ifname)?;
    let before = features(socket, ifname, names.len())?;
    let wanted_off: Vec<usize> =
        (0..names.len()).filter(|&bit| is_offload(&names[bit]) && before.available(bit)).collect();
    set_features_off(socket, ifname, names.len(), &wanted_off)?;
    let still_on = offloads_active(&names, &features(socket, ifname, names.len())?);
    if !still_on.is_empty() {
        return Err(io::Error::other(format!("cannot turn off {}", still_on.join(", "))));
    }
    Ok(())
}

/// `ethtool -K <ifname> rx off`: the device no longer vouches for received checksums, so the stack verifies
/// them (and drops and counts a frame whose checksum fails).
pub fn turn_off_rx_checksum(socket: RawFd, ifname: &str) -> io::Result<()> {
    let names = feature_names(socket, ifname)?;
    let rx_checksum: Vec<usize> = (0..names.len()).filter(|&bit| names[bit] == "rx-checksum").collect();
    set_features_off(socket, ifname, names.len(), &rx_checksum)?;
    let state = features(socket, ifname, names.len())?;
    if rx_checksum.iter().any(|&bit| state.active(bit)) {
        return Err(io::Error::other("cannot turn off rx-checksum"));
    }
    Ok(())
}

/// Names (as `ethtool -k` prints them) of the offloads [`turn_off_offloads`] deals with that are active.
pub fn active_offloads(socket: RawFd, ifname: &str) -> io::Result<Vec<String>> {
    let names = feature_names(socket, ifname)?;
    let state = features(socket, ifname, names.len())?;
    Ok(offloads_active(&names, &state))
}

fn offloads_active(names: &[String], state: &FeatureState) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .filter(|(bit, name)| is_offload(name) && state.active(*bit))
        .map(|(_, name)| name.clone())
        .collect()
}

/// Whether a feature (by its `ethtool -k` name) lets the stack hand the device something other than a
/// finished wire frame, or merge received frames before the capture sees them.
fn is_offload(name: &str) -> bool {
    name.starts_with("tx-checksum-")
        || name.starts_with("tx-scatter-gather")
        || name.ends_with("-segmentation")
        || name.starts_with("rx-gro")
        || matches!(name, "rx-lro" | "tx-gso-list" | "tx-gso-partial" | "rx-udp-gro-forwarding")
}

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// `ioctl(SIOCETHTOOL)` on `request` (an ethtool command struct starting with its `cmd`); returns the ioctl's
/// non-negative result. Any socket carries device ioctls for the namespace it was created in.
fn ethtool_ioctl(socket: RawFd, ifname: &str, request: &mut [u32]) -> io::Result<i32> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value of it.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifreq.ifr_name.len() || ifname.bytes().any(|b| b == 0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    ifreq.ifr_ifru.ifru_data = request.as_mut_ptr().cast();
    // SAFETY: `ifreq` names a NUL-terminated interface and points at `request`, which outlives the call and is
    // as large as the command's struct (callers size it from the counts the kernel reported).
    let result = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut ifreq) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// The device's feature names by bit (`ethtool --show-features` string set).
fn feature_names(socket: RawFd, ifname: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[1] }
    let mut info = [ETHTOOL_GSSET_INFO, 0, 0, 0, 0];
    let mask = 1u64 << ETH_SS_FEATURES;
    info[2..4].copy_from_slice(&[mask as u32, (mask >> 32) as u32]);
    if cfg!(target_endian = "big") {
        info.swap(2, 3);
    }
    ethtool_ioctl(socket, ifname, &mut info)?;
    let count = info[4] as usize;
    if count == 0 {
        return Err(io::Error::other("the device names no features (ethtool --show-features is empty)"));
    }

    // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * ETH_GSTRING_LEN] }
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool_ioctl(socket, ifname, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|word| word.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|raw| String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
        .collect())
}

/// `struct ethtool_gfeatures` blocks: per 32 features, available / requested / active / never_changed.
struct FeatureState {
    blocks: Vec<[u32; 4]>,
}

impl FeatureState {
    fn bit(&self, field: usize, bit: usize) -> bool {
        self.blocks.get(bit / 32).is_some_and(|block| block[field] & (1 << (bit % 32)) != 0)
    }

    fn available(&self, bit: usize) -> bool {
        self.bit(0, bit)
    }

    fn active(&self, bit: usize) -> bool {
        self.bit(2, bit)
    }
}

fn features(socket: RawFd, ifname: &str, count: usize) -> io::Result<FeatureState> {
    let size = count.div_ceil(32);
    let mut request = vec![0u32; 2 + 4 * size];
    request[..2].copy_from_slice(&[ETHTOOL_GFEATURES, size as u32]);
    ethtool_ioctl(socket, ifname, &mut request)?;
    Ok(FeatureState { blocks: request[2..].chunks(4).map(|b| [b[0], b[1], b[2], b[3]]).collect() })
}

fn set_features_off(socket: RawFd, ifname: &str, count: usize, bits: &[usize]) -> io::Result<()> {
    let size = count.div_ceil(32);
    // struct ethtool_sfeatures { cmd, size, { valid, requested }[size] }; requested stays 0: off.
    let mut request = vec![0u32; 2 + 2 * size];
    request[..2].copy_from_slice(&[ETHTOOL_SFEATURES, size as u32]);
    for &bit in bits {
        request[2 + 2 * (bit / 32)] |= 1 << (bit % 32);
    }
    ethtool_ioctl(socket, ifname, &mut request).map(drop)
}

/// One request of a batch, with what it does in `ip` terms for the error message.
struct Request {
    message: RouteNetlinkMessage,
    flags: u16,
    what: String,
}

impl Request {
    fn new(message: RouteNetlinkMessage, flags: u16, what: String) -> Request {
        Request { message, flags, what }
    }
}

/// A synchronous rtnetlink socket of one namespace: requests go out in batches, every answer is awaited with
/// a bounded receive.
struct Rtnl {
    socket: Socket,
    next_sequence: u32,
    buffer: Vec<u8>,
}

impl Rtnl {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)` in the calling thread's namespace.
    fn open() -> Result<Rtnl> {
        let what = || "open rtnetlink socket (socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE))".to_string();
        let mut socket = Socket::new(NETLINK_ROUTE).context(what)?;
        socket.bind_auto().context(what)?;
        socket.connect(&SocketAddr::new(0, 0)).context(what)?;
        // Errors then carry only the request's header back, plus the kernel's explanation.
        socket.set_cap_ack(true).context(what)?;
        socket.set_ext_ack(true).context(what)?;
        let timeout = TimeVal::new(NETLINK_REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .context(|| "bound netlink receives (setsockopt SO_RCVTIMEO)".to_string())?;
        Ok(Rtnl { socket, next_sequence: 1, buffer: Vec::with_capacity(NETLINK_RECV_BUFFER) })
    }

    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends every request in one datagram and waits for all their ACKs; the first NACK is the error.
    fn execute(&mut self, requests: Vec<Request>) -> Result<()> {
        let first_sequence = self.next_sequence;
        let mut whats = Vec::with_capacity(requests.len());
        let mut datagram = Vec::new();
        for request in requests {
            let sequence = self.take_sequence();
            append_message(&mut datagram, request.message, request.flags | NLM_F_ACK, sequence);
            whats.push(request.what);
        }
        let batch_what = whats.join("; ");
        self.send(&datagram, &batch_what)?;

        let deadline = Instant::now() + NETLINK_REPLY_TIMEOUT;
        let mut acked = vec![false; whats.len()];
        while acked.iter().any(|done| !done) {
            for message in self.receive(&batch_what, deadline)? {
                let index = message.header.sequence_number.wrapping_sub(first_sequence);
                let Some(slot) = acked.get_mut(index as usize) else {
                    continue;
                };
                if let NetlinkPayload::Error(error) = &message.payload {
                    if error.code.is_some() {
                        return Err(nack_error(&whats[index as usize], &message.header, error));
                    }
                    *slot = true;
                }
            }
        }
        Ok(())
    }

    /// `ip link show <name>`: the link's header and attributes.
    fn get_link(&mut self, name: &str, what: &str) -> Result<LinkMessage> {
        let mut query = LinkMessage::default();
        query.attributes.push(LinkAttribute::IfName(name.to_string()));
        let sequence = self.take_sequence();
        let mut datagram = Vec::new();
        append_message(&mut datagram, RouteNetlinkMessage::GetLink(query), 0, sequence);
        self.send(&datagram, what)?;
        let deadline = Instant::now() + NETLINK_REPLY_TIMEOUT;
        loop {
            for message in self.receive(what, deadline)? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => return Ok(link),
                    NetlinkPayload::Error(ref error) if error.code.is_some() => {
                        return Err(nack_error(what, &message.header, error))
                    }
                    _ => {}
                }
            }
        }
    }

    fn take_sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    fn send(&self, datagram: &[u8], what: &str) -> Result<()> {
        let sent = self.socket.send(datagram, 0).context(|| format!("{what}: send netlink request"))?;
        if sent != datagram.len() {
            return Err(Error::Internal(format!(
                "{what}: netlink request truncated ({sent} of {} bytes)",
                datagram.len()
            )));
        }
        Ok(())
    }

    /// One datagram from the kernel, split into its messages. Each receive waits at most
    /// [`NETLINK_REPLY_TIMEOUT`], and none starts after `deadline`.
    fn receive(&mut self, what: &str, deadline: Instant) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let timed_out = || {
            Error::sys(
                format!("{what}: no netlink answer within {NETLINK_REPLY_TIMEOUT:?}"),
                io::Error::from(io::ErrorKind::TimedOut),
            )
        };
        let length = loop {
            if Instant::now() > deadline {
                return Err(timed_out());
            }
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, libc::MSG_TRUNC) {
                Ok(length) => break length,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(Error::sys(format!("{what}: receive netlink answer"), e)),
            }
        };
        if length > self.buffer.len() {
            return Err(Error::Internal(format!(
                "{what}: netlink answer of {length} bytes does not fit in {} bytes",
                self.buffer.len()
            )));
        }
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < length {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..length])
                .map_err(|e| Error::Internal(format!("{what}: undecodable netlink answer: {e}")))?;
            let message_length = message.header.length as usize;
            if message_length == 0 {
                return Err(Error::Internal(format!("{what}: netlink answer with a zero-length message")));
            }
            offset += (message_length + 3) & !3;
            messages.push(message);
        }
        Ok(messages)
    }
}

fn append_message(datagram: &mut Vec<u8>, message: RouteNetlinkMessage, flags: u16, sequence: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = datagram.len();
    datagram.resize(start + message.buffer_len(), 0);
    message.serialize(&mut datagram[start..]);
}

/// The errno of a NACK, with the kernel's extended-ACK explanation (e.g. "Invalid MTU") added to `what`.
fn nack_error(what: &str, header: &NetlinkHeader, error: &netlink_packet_core::ErrorMessage) -> Error {
    match extended_ack_message(header, &error.header) {
        Some(explanation) => Error::sys(format!("{what} [kernel: {explanation}]"), error.to_io()),
        None => Error::sys(what.to_string(), error.to_io()),
    }
}

/// NLMSGERR_ATTR_MSG from the attributes that follow the echoed request (only its header when capped).
fn extended_ack_message(header: &NetlinkHeader, payload: &[u8]) -> Option<String> {
    const NETLINK_HEADER_LEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if header.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if header.flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize
    };
    let mut attributes = payload.get((echoed + 3) & !3..)?;
    while attributes.len() >= 4 {
        let length = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 || length > attributes.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attributes[4..length];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attributes = attributes.get((length + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader, Read};
    use std::net::{SocketAddr as InetAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use super::*;
    use crate::scenario::plan::{CapturePlan, LinkPlan, RunExpectations};

    const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

    fn host_plan(id: HostId, address: Ipv4Addr, sysctls: &[(&str, &str)]) -> HostPlan {
        HostPlan {
            id,
            address,
            prefix_len: 24,
            sysctls: sysctls
                .iter()
                .map(|(name, value)| Sysctl { name: name.to_string(), value: value.to_string() })
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
            tolerance: Duration::from_millis(100),
            early_tolerance: None,
            sample_interval: Duration::from_millis(10),
            link: LinkPlan { mtu, ipv6: false },
            capture: CapturePlan::default(),
            hosts: [
                host_plan(HostId::Client, CLIENT_ADDRESS, client_sysctls),
                host_plan(HostId::Server, SERVER_ADDRESS, server_sysctls),
            ],
            faults: Vec::new(),
            expect: RunExpectations::default(),
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
        let path = Sysctl { name: name.into(), value: String::new() }.proc_path();
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
        let listener = server
            .run(|| TcpListener::bind((SERVER_ADDRESS, port)).context(|| "listen in server".to_string()))
            .unwrap();
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
        let topology = build(&plan, &client, &server).unwrap();

        for (id, ns, address) in [(HostId::Client, &client, CLIENT_ADDRESS), (HostId::Server, &server, SERVER_ADDRESS)]
        {
            let link = topology.link(id);
            assert_eq!(link.ifname, "nf0");
            assert_eq!(link.address, address);
            assert_eq!(link.mac, link_mac(id));

            let addresses = in_namespace(ns, "ip", &["-o", "-4", "addr", "show", "dev", "nf0"]);
            assert!(addresses.contains(&format!("inet {address}/24")), "{id}: {addresses}");
            let shown = in_namespace(ns, "ip", &["-o", "link", "show", "nf0"]);
            assert!(shown.starts_with(&format!("{}: nf0@", link.ifindex)), "{id}: {shown}");
            assert!(shown.contains("mtu 1400"), "{id}: {shown}");
            assert!(shown.contains("state UP"), "{id}: {shown}");
            assert!(shown.contains(&format!("link/ether {}", format_mac(link_mac(id)))), "{id}: {shown}");
            let loopback = in_namespace(ns, "ip", &["-o", "link", "show", "lo"]);
            assert!(loopback.contains("<LOOPBACK,UP,LOWER_UP>"), "{id}: {loopback}");
            let ipv6 = in_namespace(ns, "ip", &["-o", "-6", "addr"]);
            assert_eq!(ipv6, "", "{id}: IPv6 must be off");
            let links = in_namespace(ns, "ip", &["-o", "link"]);
            assert_eq!(links.lines().count(), 2, "{id}: only lo and nf0: {links}");
        }
    }

    #[test]
    fn offloads_are_off_on_both_ends() {
        let (client, server) = namespaces();
        build(&default_plan(), &client, &server).unwrap();
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
        build(&default_plan(), &client, &server).unwrap();
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
        build(&plan, &client, &server).unwrap();

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

    #[test]
    fn ipv6_stays_on_when_the_plan_asks_for_it() {
        let (client, server) = namespaces();
        let mut plan = default_plan();
        plan.link.ipv6 = true;
        build(&plan, &client, &server).unwrap();
        assert_eq!(read_sysctl_in(Some(&client), "net.ipv6.conf.nf0.disable_ipv6"), "0");
    }

    #[test]
    fn a_sysctl_missing_from_network_namespaces_is_a_clear_error() {
        let (client, server) = namespaces();
        let plan = plan_with(1500, &[], &[("net.core.netdev_max_backlog", "10")]);
        let error = build(&plan, &client, &server).unwrap_err().to_string();
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
        let error = build(&plan, &client, &server).unwrap_err().to_string();
        assert!(error.contains("kernel.hostname") && error.contains("not a net.* sysctl"), "{error}");
    }

    #[test]
    fn a_bad_sysctl_value_names_the_command() {
        let (client, server) = namespaces();
        let plan = plan_with(1500, &[("net.ipv4.tcp_syn_retries", "many")], &[]);
        let error = build(&plan, &client, &server).unwrap_err().to_string();
        assert!(error.contains("sysctl -w net.ipv4.tcp_syn_retries=many"), "{error}");
    }

    #[test]
    fn a_rejected_veth_reports_the_ip_command() {
        let (client, server) = namespaces();
        let error = build(&plan_with(10, &[], &[]), &client, &server).unwrap_err();
        let Error::Sys { what, source } = &error else { panic!("{error}") };
        assert!(what.contains("ip link add nf0 mtu 10"), "{what}");
        assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_rejected_address_reports_the_ip_command_and_the_kernels_reason() {
        let (client, server) = namespaces();
        let mut plan = default_plan();
        plan.hosts[HostId::Server.index()].prefix_len = 33;
        let error = build(&plan, &client, &server).unwrap_err();
        let Error::Sys { what, source } = &error else { panic!("{error}") };
        assert!(what.contains("in server (ip addr add 10.0.0.2/33 dev nf0)"), "{what}");
        assert!(what.contains("[kernel: "), "extended ACK message expected: {what}");
        assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn the_host_namespace_gets_no_link() {
        let before = host_link_names();
        let (client, server) = namespaces();
        build(&default_plan(), &client, &server).unwrap();
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
            build(&default_plan(), &client, &server).unwrap();
            let (kept, gone) = match dropped {
                HostId::Client => (server, client),
                HostId::Server => (client, server),
            };
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

    fn wait_for_line(lines: &mpsc::Receiver<String>, wanted: &str) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return,
                Ok(_) => {}
                Err(e) => panic!("no {wanted:?} line: {e}"),
            }
        }
    }

    /// tcpdump on the client's end sees segments no larger than the MTU, every checksum verified correct.
    #[test]
    fn capture_shows_wire_sized_segments_with_correct_checksums() {
        const MTU: u32 = 1400;
        let (client, server) = namespaces();
        build(&plan_with(MTU, &[], &[]), &client, &server).unwrap();
        let pcap = std::env::temp_dir().join(format!("netfault-topology-{}.pcap", std::process::id()));

        let net = format!("--net=/proc/{}/fd/{}", std::process::id(), client.raw_fd());
        let mut tcpdump = Command::new("nsenter")
            .args([net.as_str(), "tcpdump", "--immediate-mode", "-Z", "root", "-i", "nf0", "-n", "-U", "-w"])
            .arg(&pcap)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = tcpdump.stderr.take().unwrap();
        let (line_sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line_sender.send(line).is_err() {
                    break;
                }
            }
        });
        wait_for_line(&lines, "listening on nf0");

        let (mut stream, mut accepted) = connect_across(&client, &server, 7001);
        let reader = thread::spawn(move || {
            let mut received = Vec::new();
            accepted.read_to_end(&mut received).map(|_| received.len())
        });
        stream.write_all(&vec![0x5a; 200_000]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), 200_000);
        thread::sleep(Duration::from_millis(200));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tcpdump.id() as i32), nix::sys::signal::SIGINT).unwrap();
        wait_bounded(tcpdump, "tcpdump");

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
        let mut child = Command::new("tcpdump")
            .args(["-n", "-vv", "-r"])
            .arg(pcap)
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

    /// Namespaces + build, median of 100; run with `cargo test --lib build_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: times 100 namespace + topology builds; run with --ignored --nocapture"]
    fn build_timing() {
        fn summary(mut times: Vec<Duration>) -> String {
            times.sort();
            let at = |fraction: f64| times[((times.len() - 1) as f64 * fraction) as usize];
            format!("min {:?}, median {:?}, p90 {:?}, max {:?}", at(0.0), at(0.5), at(0.9), at(1.0))
        }
        let plan = default_plan();
        let (mut totals, mut builds) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let start = Instant::now();
            let (client, server) = namespaces();
            let built = Instant::now();
            build(&plan, &client, &server).unwrap();
            builds.push(built.elapsed());
            totals.push(start.elapsed());
        }
        println!("namespaces + build over 100 runs: {}", summary(totals));
        println!("build alone over 100 runs: {}", summary(builds));
    }
}

//! The wire between the hosts of a scenario: sysctls, `lo`, a veth pair per link (two through the impairment
//! wire's namespace, for a link with impairments), addresses, offloads and routes, all set up over rtnetlink
//! and ethtool ioctls from sockets that live in the hosts' namespaces.
//!
//! Nothing here runs `ip` or `ethtool`: one scenario's topology is a handful of netlink round trips.

mod ethtool;
pub(crate) mod rtnl;
mod steering;
mod sysctl;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;
use crate::scenario::plan::{HostId, Link, LinkEnd, Plan, Sysctl, IPV6_PREFIX_LEN};
use ethtool::turn_off_rx_checksum;
pub use ethtool::{active_offloads, turn_off_offloads};
use rtnl::{Request, Rtnl};
use steering::Sysfs;
#[cfg(test)]
use sysctl::effective_sysctls;
pub use sysctl::{common_sysctls, differing_sysctls, host_sysctls, tcp_sysctl_files};
use sysctl::{write_sysctl, SysctlError};

/// Name of the veth end of client and server; ends in different namespaces may share a name.
pub const LINK_NAME: &str = "nf0";

/// Longest wait for a veth end to become operational after `ip link set nf0 up`: the kernel's link-watch work
/// that does it waits for the RTNL lock, which many namespaces set up or torn down at once hold for seconds.
const OPERATIONAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a link notification before the link state is asked for again anyway.
const OPERATIONAL_POLL: Duration = Duration::from_millis(50);

/// One host's end of a link (`ip -o addr show dev nf0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub host: HostId,
    pub ifindex: u32,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The MAC address of the impairment wire's end facing `host`: 02:00:00:00:10:01 facing the client, :02 facing
/// the server.
pub fn wire_mac(host: HostId) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, host.index() as u8 + 1]
}

/// The name of the impairment wire's end facing `host`, in the wire's namespace: `to-client`, `to-server`.
pub fn wire_end_name(host: HostId) -> String {
    format!("to-{host}")
}

/// The impairment wire's namespace (`ip netns add`), with IPv6 off so that it sends nothing of its own. Its ends
/// come with the hosts' (see [`HostWire::create_veth_to_wire`]).
pub fn wire_namespace() -> Result<Netns> {
    let namespace = Netns::new_anonymous()?;
    namespace.run(|| disable_ipv6().map_err(|e| e.into_error_in("the wire")))?;
    Ok(namespace)
}

/// The ifindex of the wire's end facing each program host (`ip -n <wire> link show to-client`, `to-server`),
/// by `HostId::index()`.
pub fn wire_ends(wire: &Netns) -> Result<[u32; 2]> {
    let mut rtnl = wire.run(Rtnl::open)?;
    let mut facing = [0; 2];
    for host in HostId::ALL {
        let name = wire_end_name(host);
        facing[host.index()] =
            rtnl.get_link(&name, &format!("look up {name} in the wire (ip link show {name})"))?.header.index;
    }
    Ok(facing)
}

/// Every end of every link, as built by [`build`]: two per link, in the plan's link order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub ends: Vec<HostLink>,
}

impl Topology {
    /// The interfaces of `host`, in link order (client and server have one; the router two).
    pub fn ends_of(&self, host: HostId) -> impl Iterator<Item = &HostLink> {
        self.ends.iter().filter(move |end| end.host == host)
    }

    /// The first interface of `host`: the only one of client and server.
    pub fn link(&self, host: HostId) -> Option<&HostLink> {
        self.ends_of(host).next()
    }
}

/// The MAC address of a host's `n`-th interface: locally administered and fixed, so pcaps of two runs compare
/// equal (client 02:00:00:00:00:01, server :02, the router's :03 and 02:00:00:00:01:03).
pub fn link_mac(host: HostId, n: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, n as u8, host.index() as u8 + 1]
}

/// The MAC address `end` is given: [`link_mac`] of its host and its place among that host's ends.
fn end_mac(plan: &Plan, end: &LinkEnd) -> [u8; 6] {
    let n = plan.link_ends().filter(|(_, other)| other.host == end.host).position(|(_, other)| other == end);
    link_mac(end.host, n.unwrap_or_default())
}

/// Builds the wire of `plan` inside the hosts' namespaces (`namespaces[i]` is `plan.hosts[i]`'s), and a link
/// with impairments through `wire` ([`wire_namespace`]). In command-line terms:
///
/// ```text
/// each host:    sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1   (unless link.ipv6)
///                sysctl -w <the host's sysctls>
///                ip link set lo up
/// each link:     ip link add nf0 mtu M address 02:00:00:00:00:01 type veth
///                    peer name nf0 netns <other host> mtu M address 02:00:00:00:00:02
/// each end:      echo <one CPU> > /sys/class/net/nf0/queues/rx-*/rps_cpus   (not rootless; see steering)
///                ethtool -K nf0 tx off sg off tso off gso off gro off
///                ip addr add <address>/<prefix> dev nf0
///                ip link set nf0 up
///                ip neigh add <peer> lladdr <peer's MAC> dev nf0 nud permanent
/// with a router: ip route add default via <router>          (client and server)
/// through the impairment wire, instead of the link's one pair, each end:
///                ip link add nf0 mtu M address <its own> type veth
///                    peer name to-<host> netns <wire> mtu M address 02:00:00:00:10:0N
///                ip -n <wire> link set to-<host> up   (receives steered and offloads off first, as on every end)
///                ethtool -K nf0 rx off
/// ```
///
/// A host on the wire verifies received checksums itself (`rx off`): a veth end otherwise marks every frame
/// from its peer as checked, and a frame the wire corrupted would reach TCP as good data.
///
/// Offloads go off before a link goes up, so no frame ever leaves with a deferred checksum or as a
/// super-segment. `build` returns once every end is operational (`ip link show nf0` says `state UP`); see
/// [`HostWire::wait_operational`]. `namespaces` are in `plan.hosts` order. A run builds the same wire with
/// [`HostWire`], each host from a thread of its own.
pub fn build(plan: &Plan, namespaces: &[&Netns], wire: Option<&Netns>) -> Result<Topology> {
    let mut wires = Vec::with_capacity(plan.hosts.len());
    for (host, ns) in plan.hosts.iter().zip(namespaces) {
        wires.push(ns.run(|| HostWire::prepare(plan, host.id))?);
    }
    let position = |host: HostId| {
        plan.position(host).ok_or_else(|| Error::Internal(format!("a link names {host}, which the plan lacks")))
    };
    for link in &plan.links {
        let [near, far] = &link.ends;
        if !link.wire {
            wires[position(near.host)?].create_veth_pair(plan, link, namespaces[position(far.host)?])?;
            continue;
        }
        let wire = wire.ok_or_else(|| Error::Internal("a link through the wire, but no wire namespace".into()))?;
        for end in [near, far] {
            wires[position(end.host)?].create_veth_to_wire(plan, end, wire)?;
        }
    }
    let mut by_host = Vec::with_capacity(wires.len());
    for wire in &mut wires {
        by_host.push(wire.configure(plan)?);
    }
    for wire in &mut wires {
        wire.wait_operational(plan)?;
    }
    // In the wire's order: each link's two ends.
    let mut ends = Vec::new();
    for (_, end) in plan.link_ends() {
        let configured = by_host.iter().flatten().find(|link| link.host == end.host && link.ifname == end.ifname);
        ends.push(
            configured
                .cloned()
                .ok_or_else(|| Error::Internal(format!("{} {} was not configured", end.host, end.ifname)))?,
        );
    }
    Ok(Topology { ends })
}

/// One host's side of the wire while it is built: an rtnetlink socket of the host's namespace, opened once the
/// host's sysctls are written and `lo` is up. Each step may run on any thread; the sysctls need a thread
/// inside the namespace.
pub struct HostWire {
    host: HostId,
    rtnl: Rtnl,
    /// The sysfs of the host's namespace, to steer its ends' receives ([`steering`]); none in rootless mode.
    sysfs: Option<Sysfs>,
    /// The impairment wire's ends this host created, each with a socket of the wire's namespace.
    wire_ends: Vec<(Rtnl, String)>,
}

impl HostWire {
    /// Runs on a thread inside the host's namespace: `sysctl -w` (IPv6 off unless asked for, then the host's
    /// own, which resolve against the calling thread's namespace) and `ip link set lo up`.
    pub fn prepare(plan: &Plan, host: HostId) -> Result<HostWire> {
        let rtnl = prepare_host(plan, host)?;
        Ok(HostWire { host, rtnl, sysfs: Sysfs::of_current_namespace()?, wire_ends: Vec::new() })
    }

    /// The side of the link's first end, once per link: one `RTM_NEWLINK` creates both ends, the peer born in
    /// `far`'s namespace.
    pub fn create_veth_pair(&mut self, plan: &Plan, link: &Link, far: &Netns) -> Result<()> {
        let [near, far_end] = &link.ends;
        let near = VethEnd { netns: near.host.name(), ifname: &near.ifname, mac: end_mac(plan, near) };
        let far_end = VethEnd { netns: far_end.host.name(), ifname: &far_end.ifname, mac: end_mac(plan, far_end) };
        create_veth_pair(&mut self.rtnl, near, far_end, plan.link.mtu, far)
    }

    /// This host's side of a link through the impairment wire: its end `end` paired with the wire's end facing
    /// it, `to-<host>`, born in `wire`'s namespace; then that end's offloads off and its link up, from a socket
    /// of the wire's namespace (each host sets up its own side of the wire, at the same time as the others).
    pub fn create_veth_to_wire(&mut self, plan: &Plan, end: &LinkEnd, wire: &Netns) -> Result<()> {
        let name = wire_end_name(self.host);
        let own = VethEnd { netns: self.host.name(), ifname: &end.ifname, mac: end_mac(plan, end) };
        let wire_end = VethEnd { netns: "wire", ifname: &name, mac: wire_mac(self.host) };
        create_veth_pair(&mut self.rtnl, own, wire_end, plan.link.mtu, wire)?;
        let mut wire_rtnl = wire
            .run(|| {
                if let Some(sysfs) = Sysfs::of_current_namespace()? {
                    sysfs.steer_to_one_cpu(&name)?;
                }
                Rtnl::open()
            })
            .map_err(|e| in_place(e, "the wire"))?;
        configure_wire_end(&mut wire_rtnl, &name)?;
        self.wire_ends.push((wire_rtnl, name));
        Ok(())
    }

    /// Once every pair exists: receives steered to one CPU, offloads off, address and link up on each of this host's ends, in link order,
    /// then its default route through the router when it has one.
    pub fn configure(&mut self, plan: &Plan) -> Result<Vec<HostLink>> {
        let mut links = Vec::new();
        for (link, end) in plan.link_ends().filter(|(_, end)| end.host == self.host) {
            if let Some(sysfs) = &self.sysfs {
                sysfs.steer_to_one_cpu(&end.ifname).map_err(|e| in_host(e, self.host))?;
            }
            let peer =
                plan.links[link].ends.iter().find(|other| *other != end).ok_or_else(|| {
                    Error::Internal(format!("the link of {} {} has no other end", end.host, end.ifname))
                })?;
            links.push(configure_link_end(&mut self.rtnl, end, (peer, end_mac(plan, peer)))?);
            if plan.links[link].wire {
                let (host, ifname) = (self.host, &end.ifname);
                turn_off_rx_checksum(self.rtnl.raw_fd(), ifname)
                    .context(|| format!("verify checksums on {ifname} in {host} (ethtool -K {ifname} rx off)"))?;
            }
        }
        if let Some(gateway) = plan.host(self.host).gateway {
            add_default_route(&mut self.rtnl, self.host, gateway)?;
        }
        Ok(links)
    }

    /// Returns once each of this host's ends is operational, which needs the other end of its link up too:
    /// each host's side may wait at the same time, once all are configured.
    pub fn wait_operational(&mut self, plan: &Plan) -> Result<()> {
        for (_, end) in plan.link_ends().filter(|(_, end)| end.host == self.host) {
            wait_operational(&mut self.rtnl, &end.ifname, end.host.name())?;
            if let Some(address6) = end.address6 {
                wait_ipv6_usable(&mut self.rtnl, &end.ifname, address6, end.host.name())?;
            }
        }
        for (rtnl, name) in &mut self.wire_ends {
            wait_operational(rtnl, name, "the wire")?;
        }
        Ok(())
    }
}

/// Waits until a veth end is operational (`ip link show nf0` says `state UP`), at most
/// [`OPERATIONAL_TIMEOUT`], looking again at each link notification of the namespace (`ip monitor link`).
///
/// `ip link set up` brings the carrier up at once, but the kernel attaches the link's queueing discipline
/// only in its link-watch work, which sets the operational state in the same step. Until then every frame
/// sent on the link is dropped before any capture sees it: a scenario started early loses its first ARP
/// request and SYN, and after three lost ARP requests its connect fails with EHOSTUNREACH. Idle, the work
/// runs within a millisecond; with 200 scenarios setting up at once, 55 of 200 runs had to wait (90th
/// percentile 9 ms, longest 5.2 s). Without this wait 111 of 200 such runs failed, most of them on this.
fn wait_operational(rtnl: &mut Rtnl, ifname: &str, place: &str) -> Result<()> {
    let what = format!("wait for {ifname} in {place} to be up (ip link show {ifname}: state UP)");
    wait_for(rtnl, &what, "ip monitor link (join RTNLGRP_LINK)", |rtnl| {
        let link = rtnl.get_link(ifname, &what)?;
        let state = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::OperState(state) => Some(*state),
            _ => None,
        });
        Ok(if state == Some(State::Up) {
            Ok(())
        } else {
            Err(format!("still {state:?} {}s after ip link set {ifname} up", OPERATIONAL_TIMEOUT.as_secs()))
        })
    })
}

/// Looks with `ready` until it says yes (`Ok(())`) or says what it still sees (`Err`) for
/// [`OPERATIONAL_TIMEOUT`], looking again at each link or address notification and at least every
/// [`OPERATIONAL_POLL`]. Subscribed before the first look, so a change cannot slip between a look and the wait
/// for the next.
fn wait_for(
    rtnl: &mut Rtnl,
    what: &str,
    subscription: &str,
    mut ready: impl FnMut(&mut Rtnl) -> Result<std::result::Result<(), String>>,
) -> Result<()> {
    let started = Instant::now();
    rtnl.watch_links().context(|| format!("{what}: {subscription}"))?;
    loop {
        let still = match ready(rtnl)? {
            Ok(()) => return Ok(()),
            Err(still) => still,
        };
        let waited = started.elapsed();
        if waited >= OPERATIONAL_TIMEOUT {
            return Err(Error::Internal(format!("{what}: {still}")));
        }
        rtnl.wait_for_notification(OPERATIONAL_POLL.min(OPERATIONAL_TIMEOUT - waited), what)?;
    }
}

/// Waits until the interface's IPv6 address is usable: no longer tentative (`ip -6 addr show dev nf0`
/// without `tentative`) and delivered locally (`ip -6 route get <address>` says `local`), at most
/// [`OPERATIONAL_TIMEOUT`], looking again at each address or link notification.
///
/// Even with `nodad`, an address stays tentative until the kernel's IPv6 layer sees the link ready, which its
/// own notifier does after the operational state changes, and its local route goes in after that: a SYN that
/// arrives before then is dropped unseen by TCP (measured: a connect at t0 to a closed port got no RST, and
/// its SYN's retransmission 1 s later did; the address's MLD report, sent when it becomes usable, left 9 ms
/// after t0; waiting for the tentative flag alone still let 2 of 30 runs start 11 ms early).
fn wait_ipv6_usable(rtnl: &mut Rtnl, ifname: &str, address: std::net::Ipv6Addr, place: &str) -> Result<()> {
    let what = format!(
        "wait for {address} on {ifname} in {place} to be usable (ip -6 addr show: not tentative; ip -6 route get \
         {address}: local)"
    );
    let ifindex = rtnl.get_link(ifname, &what)?.header.index;
    wait_for(rtnl, &what, "ip monitor link address (join RTNLGRP_LINK, RTNLGRP_IPV6_IFADDR)", |rtnl| {
        let usable = !rtnl.has_tentative_ipv6(ifindex, &what)? && rtnl.is_local_ipv6(address, &what)?;
        Ok(if usable {
            Ok(())
        } else {
            Err(format!("still tentative {}s after ip link set {ifname} up", OPERATIONAL_TIMEOUT.as_secs()))
        })
    })
}

/// The sysctls nf_conntrack registers when it loads.
const CONNTRACK_SYSCTLS: &str = "net.netfilter.nf_conntrack_";

/// Runs on a thread inside the host's namespace: sysctls (which resolve against the calling thread's
/// namespace), then an rtnetlink socket that stays bound to this namespace wherever it is used from.
fn prepare_host(plan: &Plan, host: HostId) -> Result<Rtnl> {
    if plan.link.ipv6 {
        quiet_ipv6().map_err(|e| e.into_error(host))?;
    } else {
        disable_ipv6().map_err(|e| e.into_error(host))?;
    }
    write_host_sysctls(plan, host)?;
    let mut rtnl = Rtnl::open().map_err(|e| in_host(e, host))?;
    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewLink(link_up_by_name("lo")),
        0,
        format!("set lo up in {host} (ip link set lo up)"),
    )])?;
    Ok(rtnl)
}

/// `sysctl -w <the host's sysctls>` on a thread inside the host's namespace (they resolve against the calling
/// thread's), nf_conntrack loaded first where one of them is its own.
pub fn write_host_sysctls(plan: &Plan, host: HostId) -> Result<()> {
    for sysctl in &plan.host(host).sysctls {
        match write_sysctl(sysctl) {
            Err(SysctlError::Absent(_)) if sysctl.name.starts_with(CONNTRACK_SYSCTLS) => {
                crate::run::firewall::load_conntrack_here()?;
                write_sysctl(sysctl).map_err(|e| e.into_error(host))?;
            }
            other => other.map_err(|e| e.into_error(host))?,
        }
    }
    Ok(())
}

/// `sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1` in the calling thread's namespace.
fn disable_ipv6() -> std::result::Result<(), SysctlError> {
    for name in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
        let sysctl = Sysctl { name: name.to_string(), value: "1".to_string(), location: None };
        match write_sysctl(&sysctl) {
            // A kernel without IPv6 sends no router solicitations either.
            Err(SysctlError::Absent(_)) => {}
            other => other?,
        }
    }
    Ok(())
}

/// The IPv6 settings of a host whose link has IPv6, written before its interface exists so that it inherits
/// them (`default`) and on `all`: the interface gets no link-local address (`addr_gen_mode` 1), sends no
/// router solicitation and accepts no advertisement, and its address is usable at once (no duplicate address
/// detection, which would hold it "tentative" for a second). What it still sends of its own are the MLD
/// reports of the multicast group its address joins (the solicited-node group), which the timeline leaves
/// out as it leaves out ARP.
const QUIET_IPV6: &[(&str, &str)] =
    &[("addr_gen_mode", "1"), ("accept_dad", "0"), ("router_solicitations", "0"), ("accept_ra", "0")];

/// `sysctl -w net.ipv6.conf.{all,default}.<name>=<value>` for [`QUIET_IPV6`] in the calling thread's namespace.
fn quiet_ipv6() -> std::result::Result<(), SysctlError> {
    for (name, value) in QUIET_IPV6 {
        for scope in ["all", "default"] {
            let sysctl =
                Sysctl { name: format!("net.ipv6.conf.{scope}.{name}"), value: value.to_string(), location: None };
            match write_sysctl(&sysctl) {
                // `all.addr_gen_mode` is refused by some kernels: `default` is what a new interface takes.
                Err(SysctlError::Absent(_)) if scope == "all" => {}
                other => other?,
            }
        }
    }
    Ok(())
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

/// Transmit and receive queues of each veth end (`ip link add ... numtxqueues 1 numrxqueues 1`).
const VETH_QUEUES: u32 = 1;

/// One end of a veth pair being created: its name and MAC, and the namespace it is born in (a host's, or
/// `wire`), for messages.
struct VethEnd<'a> {
    netns: &'a str,
    ifname: &'a str,
    mac: [u8; 6],
}

/// One RTM_NEWLINK from the namespace of the near end creates both ends; the peer is born in `far`'s namespace
/// (the other host's, or the wire's).
///
/// Each end is asked for one transmit and one receive queue, which is what a veth ends up with anyway: asked
/// for none, it is made with a queue per possible CPU and then cut down to one, and each cut waits for an RCU
/// grace period (`synchronize_net()` in `netif_set_real_num_tx_queues`): two per pair, 0.3-0.5 ms each here.
fn create_veth_pair(rtnl: &mut Rtnl, near: VethEnd<'_>, far_end: VethEnd<'_>, mtu: u32, far: &Netns) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(far_end.ifname.to_string()));
    peer.attributes.push(LinkAttribute::Mtu(mtu));
    peer.attributes.push(LinkAttribute::Address(far_end.mac.to_vec()));
    peer.attributes.push(LinkAttribute::NumTxQueues(VETH_QUEUES));
    peer.attributes.push(LinkAttribute::NumRxQueues(VETH_QUEUES));
    peer.attributes.push(LinkAttribute::NetNsFd(far.raw_fd()));

    let mut veth = LinkMessage::default();
    veth.attributes.push(LinkAttribute::IfName(near.ifname.to_string()));
    veth.attributes.push(LinkAttribute::Mtu(mtu));
    veth.attributes.push(LinkAttribute::Address(near.mac.to_vec()));
    veth.attributes.push(LinkAttribute::NumTxQueues(VETH_QUEUES));
    veth.attributes.push(LinkAttribute::NumRxQueues(VETH_QUEUES));
    veth.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));

    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewLink(veth),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "create veth pair {} - {} (ip link add {} mtu {mtu} address {} numtxqueues 1 numrxqueues 1 type veth \
             peer name {} netns <{}> mtu {mtu} address {} numtxqueues 1 numrxqueues 1)",
            near.netns,
            far_end.netns,
            near.ifname,
            format_mac(near.mac),
            far_end.ifname,
            far_end.netns,
            format_mac(far_end.mac)
        ),
    )])
}

/// Offloads off and the link up for one of the impairment wire's ends, from a socket of the wire's namespace.
fn configure_wire_end(rtnl: &mut Rtnl, name: &str) -> Result<()> {
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
    )])
}

/// `ip route add default via <gateway>` in the host's namespace.
fn add_default_route(rtnl: &mut Rtnl, host: HostId, gateway: Ipv4Addr) -> Result<()> {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    rtnl.execute(vec![Request::new(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_EXCL,
        format!("add the default route of {host} (ip route add default via {gateway})"),
    )])
}

/// Offloads, address and link state of one veth end, and its peer's address as a permanent neighbour, through
/// the socket that lives in its namespace.
///
/// The permanent neighbour (`ip neigh add <peer> lladdr <its MAC> dev nf0 nud permanent`) means no ARP
/// exchange: a connect's first SYN otherwise waits for the ARP reply, while its retransmission timer already
/// runs from the connect, so the SYN left 10-35 ms late in a loaded TCG VM and its retransmission looked that
/// much early against it. Nor does an ARP probe come between a scenario's packets later.
/// With IPv6 on the link, the same for its IPv6 address (`ip -6 addr add fd00::1/64 dev nf0 nodad`, `ip -6 neigh
/// add fd00::2 lladdr ... nud permanent`): no neighbour solicitation comes between a scenario's packets.
fn configure_link_end(rtnl: &mut Rtnl, end: &LinkEnd, (peer_end, peer_mac): (&LinkEnd, [u8; 6])) -> Result<HostLink> {
    let peer = peer_end.address;
    let (id, ifname) = (end.host, end.ifname.as_str());
    let link = rtnl.get_link(ifname, &format!("look up {ifname} in {id} (ip link show {ifname})"))?;
    let mac = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Internal(format!("{ifname} in {id} has no Ethernet address")))?;
    let ifindex = link.header.index;

    turn_off_offloads(rtnl.raw_fd(), ifname).context(|| {
        format!("turn off offloads on {ifname} in {id} (ethtool -K {ifname} tx off sg off tso off gso off gro off)")
    })?;

    let mut up = LinkMessage::default();
    up.header.index = ifindex;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;

    let mut requests = vec![Request::new(
        RouteNetlinkMessage::NewAddress(interface_address(ifindex, IpAddr::V4(end.address), end.prefix_len)),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "add address {}/{} to {ifname} in {id} (ip addr add {}/{} dev {ifname})",
            end.address, end.prefix_len, end.address, end.prefix_len
        ),
    )];
    // The IPv6 address and neighbour go in before the link comes up, with the IPv4 address.
    if let (Some(own), Some(peer6)) = (end.address6, peer_end.address6) {
        let mut address6 = interface_address(ifindex, IpAddr::V6(own), IPV6_PREFIX_LEN);
        address6.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        requests.push(Request::new(
            RouteNetlinkMessage::NewAddress(address6),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "add address {own}/{IPV6_PREFIX_LEN} to {ifname} in {id} (ip -6 addr add {own}/{IPV6_PREFIX_LEN} dev \
                 {ifname} nodad)"
            ),
        ));
        requests.push(Request::new(
            RouteNetlinkMessage::NewNeighbour(permanent_neighbour(ifindex, IpAddr::V6(peer6), peer_mac)),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "add {peer6}'s address to {ifname} in {id} (ip -6 neigh add {peer6} lladdr {} dev {ifname} nud \
                 permanent)",
                format_mac(peer_mac)
            ),
        ));
    }
    requests.push(Request::new(
        RouteNetlinkMessage::NewLink(up),
        0,
        format!("set {ifname} up in {id} (ip link set {ifname} up)"),
    ));
    requests.push(Request::new(
        RouteNetlinkMessage::NewNeighbour(permanent_neighbour(ifindex, IpAddr::V4(peer), peer_mac)),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "add {peer}'s address to {ifname} in {id} (ip neigh add {peer} lladdr {} dev {ifname} nud permanent)",
            format_mac(peer_mac)
        ),
    ));
    rtnl.execute(requests)?;

    Ok(HostLink { host: id, ifindex, ifname: ifname.to_string(), address: end.address, mac })
}

/// `inet` or `inet6`, as `ip` says.
fn family_of(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip addr add <address>/<prefix_len> dev <ifindex>` (either family), scope global.
fn interface_address(ifindex: u32, address: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family_of(address);
    message.header.prefix_len = prefix_len;
    message.header.scope = AddressScope::Universe;
    message.header.index = ifindex;
    message.attributes.push(AddressAttribute::Local(address));
    message.attributes.push(AddressAttribute::Address(address));
    message
}

/// `ip neigh add <address> lladdr <mac> dev <ifindex> nud permanent`.
fn permanent_neighbour(ifindex: u32, address: IpAddr, mac: [u8; 6]) -> NeighbourMessage {
    let mut neighbour = NeighbourMessage::default();
    neighbour.header.family = family_of(address);
    neighbour.header.ifindex = ifindex;
    neighbour.header.state = NeighbourState::Permanent;
    neighbour.attributes.push(NeighbourAttribute::Destination(match address {
        IpAddr::V4(address) => NeighbourAddress::Inet(address),
        IpAddr::V6(address) => NeighbourAddress::Inet6(address),
    }));
    neighbour.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    neighbour
}

#[cfg(test)]
mod tests;

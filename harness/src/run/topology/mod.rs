//! The wire between the two hosts of a scenario: sysctls, `lo`, the veth pair, addresses and offloads,
//! all set up over rtnetlink and ethtool ioctls from sockets that live in the hosts' namespaces.
//!
//! Nothing here runs `ip` or `ethtool`: one scenario's topology is a handful of netlink round trips.

mod ethtool;
mod rtnl;
mod sysctl;
mod wire;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;
use crate::scenario::plan::{HostId, HostPlan, Plan, Sysctl};
pub use ethtool::{active_offloads, turn_off_offloads};
use rtnl::{Request, Rtnl};
pub use sysctl::{effective_sysctls, tcp_sysctl_files, Ipv4Sysctls};
use sysctl::{write_sysctl, SysctlError};
pub use wire::{build_with_wire, WireLinks, WIRE_LINK_NAMES};

/// Name of the veth end in each host's namespace; both ends share it since they live in different namespaces.
pub const LINK_NAME: &str = "nf0";

/// Longest wait for a veth end to become operational after `ip link set nf0 up`: the kernel's link-watch work
/// that does it waits for the RTNL lock, which many namespaces set up or torn down at once hold for seconds.
const OPERATIONAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a link notification before the link state is asked for again anyway.
const OPERATIONAL_POLL: Duration = Duration::from_millis(50);

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
/// [`HostWire::wait_operational`]. A run builds the same wire with [`HostWire`], each host from a thread of its
/// own.
pub fn build(plan: &Plan, client: &Netns, server: &Netns) -> Result<Topology> {
    let mut client_wire = client.run(|| HostWire::prepare(plan, HostId::Client))?;
    let mut server_wire = server.run(|| HostWire::prepare(plan, HostId::Server))?;
    client_wire.create_veth_pair(plan.link.mtu, server)?;
    let topology = Topology {
        client: client_wire.configure(plan.host(HostId::Client))?,
        server: server_wire.configure(plan.host(HostId::Server))?,
        wire: None,
    };
    client_wire.wait_operational()?;
    server_wire.wait_operational()?;
    Ok(topology)
}

/// One host's side of the wire while it is built: an rtnetlink socket of the host's namespace, opened once the
/// host's sysctls are written and `lo` is up. Each step may run on any thread; the sysctls need a thread
/// inside the namespace.
pub struct HostWire {
    host: HostId,
    rtnl: Rtnl,
}

impl HostWire {
    /// Runs on a thread inside the host's namespace: `sysctl -w` (IPv6 off unless asked for, then the host's
    /// own, which resolve against the calling thread's namespace) and `ip link set lo up`.
    pub fn prepare(plan: &Plan, host: HostId) -> Result<HostWire> {
        Ok(HostWire { host, rtnl: prepare_host(plan, host)? })
    }

    /// The client's side, once: one `RTM_NEWLINK` creates both ends, the peer born in `server`'s namespace.
    pub fn create_veth_pair(&mut self, mtu: u32, server: &Netns) -> Result<()> {
        create_veth(
            &mut self.rtnl,
            (LINK_NAME, link_mac(HostId::Client)),
            (LINK_NAME, link_mac(HostId::Server), server, "<server>"),
            mtu,
        )
    }

    /// Offloads off, address, link up, once the pair exists.
    pub fn configure(&mut self, host: &HostPlan) -> Result<HostLink> {
        configure_link_end(&mut self.rtnl, host)
    }

    /// Returns once this end is operational, which needs the other end up too: each host's side may wait at
    /// the same time, once both are configured.
    pub fn wait_operational(&mut self) -> Result<()> {
        wait_operational(&mut self.rtnl, LINK_NAME, self.host.name())
    }
}

/// Waits until the host's veth end is operational (`ip link show nf0` says `state UP`), at most
/// [`OPERATIONAL_TIMEOUT`], looking again at each link notification of the namespace (`ip monitor link`).
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
    // Subscribed before the first look, so the change cannot slip between a look and the wait for the next.
    rtnl.watch_links().context(|| format!("{what}: ip monitor link (join RTNLGRP_LINK)"))?;
    loop {
        let link = rtnl.get_link(name, &what)?;
        let state = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::OperState(state) => Some(*state),
            _ => None,
        });
        if state == Some(State::Up) {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= OPERATIONAL_TIMEOUT {
            return Err(Error::Internal(format!(
                "{what}: still {state:?} {}s after ip link set {name} up",
                OPERATIONAL_TIMEOUT.as_secs()
            )));
        }
        rtnl.wait_for_notification(OPERATIONAL_POLL.min(OPERATIONAL_TIMEOUT - waited), &what)?;
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

#[cfg(test)]
mod tests;

//! The impairment wire's place in the topology: a third namespace between the hosts, joined to each by a veth
//! pair of its own, through which every frame passes when a scenario has impairments.

use std::thread;

use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::ethtool::{turn_off_offloads, turn_off_rx_checksum};
use super::rtnl::{Request, Rtnl};
use super::sysctl::{write_sysctl, SysctlError};
use super::{configure_link_end, create_veth, in_place, link_mac, prepare_host, wait_operational, Topology, LINK_NAME};
use crate::error::{joined, Context, Result};
use crate::run::netns::Netns;
use crate::scenario::plan::{HostId, Plan, Sysctl};

/// Names of the wire's veth ends, by the host each one faces.
pub const WIRE_LINK_NAMES: [&str; 2] = ["to-client", "to-server"];

/// The two veth ends inside the wire's namespace: `facing[host.index()]` is the ifindex of the end whose peer is
/// that host's `nf0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLinks {
    pub facing: [u32; 2],
}

/// [`super::build`], in namespaces it creates, with a third namespace between the hosts, the wire, joined to each host by
/// a veth pair of its own; the hosts keep their addresses and MACs and still share one subnet, and nothing in
/// the wire forwards a frame until `run::impair::Wire` runs there. In command-line terms, on top of each host's
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
        let wire_end = (WIRE_LINK_NAMES[host.index()], wire_mac, &wire_ns, "<wire>");
        create_veth(rtnl, (LINK_NAME, link_mac(host)), wire_end, mtu)?;
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

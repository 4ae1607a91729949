//! Faults in the plan: an nftables rule per fault (`nft add rule inet netfault <chain> <match> <action>`) or an
//! impairment of the wire on the link, what it matches, what it does, and the triggers that switch it on and off.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{HostId, Location, PacketFilter, Plan, StepEdge, StepRef, TcpState};
use crate::scenario::impairment::Impairment;

/// `nft add rule inet netfault <chain> <match> <action>`, or an impairment of the wire, switched on and off by
/// triggers.
#[derive(Debug, Clone, Serialize)]
pub struct FaultPlan {
    pub name: String,
    /// Host whose namespace holds the rule.
    pub host: HostId,
    pub direction: Direction,
    pub matcher: PacketMatch,
    pub action: FaultAction,
    pub from: Trigger,
    pub until: Option<Trigger>,
    pub location: Location,
}

impl FaultPlan {
    /// The host the packets a wire impairment acts on travel to: `at` for ingress, its peer for egress. A
    /// router's faults are never impairments (validation refuses them), so `Forward` only names the router.
    pub fn toward(&self) -> HostId {
        match self.direction {
            Direction::Ingress | Direction::Forward => self.host,
            Direction::Egress => self.host.peer(),
        }
    }
}

impl Plan {
    /// Whether any fault is carried out by the wire, which then sits on the link between the hosts
    /// (`run::impair`).
    pub fn has_impairments(&self) -> bool {
        self.faults.iter().any(|fault| fault.action.impairment().is_some())
    }
}

/// Which netfilter hook the rule sits on.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `hook input`: packets arriving at the host (the default, as a lossy network would).
    Ingress,
    /// `hook output`: packets the host sends, dropped after its TCP handed them on (TCP sees a loss, not local
    /// congestion: that is [`FaultAction::QdiscDrop`]).
    Egress,
    /// `hook forward`: packets the router forwards (every fault of the router).
    Forward,
}

/// What a fault rule matches; `None` fields match anything.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PacketMatch {
    pub protocol: Option<Protocol>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// `tcp flags & mask == value`.
    pub tcp_flags: Option<TcpFlagsMatch>,
    pub payload: Option<PayloadMatch>,
}

/// A transport protocol a fault or an expectation selects (`meta l4proto`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// ICMP for IPv6 (next header 58): what an IPv6 host answers errors with.
    Icmpv6,
}

impl Protocol {
    /// As `nft` and tcpdump name it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    /// The IP protocol number (`/etc/protocols`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
            Protocol::Icmp => libc::IPPROTO_ICMP as u8,
            Protocol::Icmpv6 => libc::IPPROTO_ICMPV6 as u8,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `tcp flags & mask == value`, with flags as in the TCP header (FIN=0x01 ... CWR=0x80).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct TcpFlagsMatch {
    pub mask: u8,
    pub value: u8,
}

impl TcpFlagsMatch {
    /// Exactly these flags and no other (`flags: "F."`).
    pub const fn exactly(flags: u8) -> TcpFlagsMatch {
        TcpFlagsMatch { mask: 0xff, value: flags }
    }

    pub fn matches(&self, flags: u8) -> bool {
        flags & self.mask == self.value
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMatch {
    /// No TCP payload (pure ACKs, SYNs, FINs without data).
    Empty,
    NonEmpty,
}

/// What the fault does to a matched packet: an nftables verdict in the host's firewall, a router's conntrack
/// flush, or an impairment of the wire on the link (`run::impair`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// `drop`.
    Drop,
    /// `reject with tcp reset`.
    RejectTcpReset,
    /// `reject with icmp type port-unreachable`.
    RejectIcmpPortUnreachable,
    /// `reject with icmp type host-unreachable`.
    RejectIcmpHostUnreachable,
    /// `reject with icmp type net-unreachable`.
    RejectIcmpNetUnreachable,
    /// `reject with icmp type admin-prohibited`.
    RejectIcmpAdminProhibited,
    /// `conntrack -F` on the router when the fault switches on: every connection it tracks is forgotten.
    FlushConntrack,
    /// Dropped by the sending host's queueing discipline (`tc filter add dev <veth> egress ... action drop`,
    /// as packetdrill drops): the transmit returns NET_XMIT_DROP, which TCP takes for local congestion. Egress
    /// only.
    QdiscDrop,
    /// Done by the wire to packets travelling toward [`FaultPlan::toward`].
    Impair(Impairment),
}

impl FaultAction {
    /// The impairment, for a fault the wire carries out; `None` otherwise.
    pub fn impairment(&self) -> Option<&Impairment> {
        match self {
            FaultAction::Impair(impairment) => Some(impairment),
            _ => None,
        }
    }
}

/// When a fault switches on or off.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Scenario time since t0.
    At(Duration),
    /// A host's named step started or finished, plus an optional delay.
    Step { step: StepRef, edge: StepEdge, delay: Duration },
    /// A socket of the host reached a TCP state (as `ss` names it, e.g. `ESTABLISHED`).
    State { host: HostId, state: TcpState, delay: Duration },
    /// The n-th packet (1-based) matching the filter, seen on the host's interface.
    Packet { host: HostId, filter: PacketFilter, nth: u32, delay: Duration },
    /// At least `bytes` of TCP payload left the host.
    Bytes { host: HostId, bytes: u64, delay: Duration },
}

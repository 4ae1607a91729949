//! What a fault's match means, as pure data: the packets its nftables rules select, and the same
//! predicate applied to captured packets.

use crate::scenario::plan::{
    Direction, FaultAction, FaultPlan, HostId, PacketMatch, PayloadMatch, Protocol, TcpFlagsMatch,
};
use crate::timeline::{IpProtocol, PacketDirection, PacketEvent};

/// One conjunction of header conditions (`meta l4proto tcp tcp dport 9000 tcp flags & ack == ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Alternative {
    pub protocol: Option<Protocol>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<TcpFlagsMatch>,
}

/// A fault's match: any of `alternatives`, and then the TCP payload condition (which forces a single
/// TCP alternative, so it can be checked once per chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selection {
    pub alternatives: Vec<Alternative>,
    pub payload: Option<PayloadMatch>,
}

/// Resolves the protocol a match implies, the way `nft` adds `meta l4proto` dependencies:
/// `tcp flags`, a payload condition or `reject with tcp reset` imply TCP; ports alone mean TCP or UDP.
pub(super) fn selection(matcher: &PacketMatch, action: FaultAction) -> Result<Selection, String> {
    if action == FaultAction::FlushConntrack {
        return Err("flush-conntrack empties the conntrack table; it is not a rule".to_string());
    }
    let needs_tcp = matcher.tcp_flags.is_some() || matcher.payload.is_some() || action == FaultAction::RejectTcpReset;
    let has_ports = matcher.sport.is_some() || matcher.dport.is_some();
    if let Some(flags) = matcher.tcp_flags {
        if flags.value & !flags.mask != 0 {
            return Err(format!(
                "tcp flags value {:#04x} has bits outside mask {:#04x}: it can never match",
                flags.value, flags.mask
            ));
        }
    }
    let protocols = match matcher.protocol {
        Some(Protocol::Tcp) => vec![Some(Protocol::Tcp)],
        Some(other) if needs_tcp => {
            return Err(format!("protocol {} cannot have tcp flags, a payload condition or a tcp-reset action", other))
        }
        Some(icmp @ (Protocol::Icmp | Protocol::Icmpv6)) if has_ports => {
            return Err(format!("protocol {icmp} has no ports"));
        }
        Some(other) => vec![Some(other)],
        None if needs_tcp => vec![Some(Protocol::Tcp)],
        None if has_ports => vec![Some(Protocol::Tcp), Some(Protocol::Udp)],
        None => vec![None],
    };
    let tcp_flags = matcher.tcp_flags.filter(|flags| flags.mask != 0);
    let alternatives = protocols
        .into_iter()
        .map(|protocol| Alternative { protocol, sport: matcher.sport, dport: matcher.dport, tcp_flags })
        .collect();
    Ok(Selection { alternatives, payload: matcher.payload })
}

impl Alternative {
    fn selects(&self, packet: &PacketEvent) -> bool {
        self.protocol.is_none_or(|protocol| packet.protocol == IpProtocol::Known(protocol))
            && self.sport.is_none_or(|port| packet.sport == port)
            && self.dport.is_none_or(|port| packet.dport == port)
            && self.tcp_flags.is_none_or(|flags| packet.flags & flags.mask == flags.value)
    }
}

impl Selection {
    fn selects(&self, packet: &PacketEvent) -> bool {
        self.alternatives.iter().any(|alt| alt.selects(packet))
            && self.payload.is_none_or(|payload| match payload {
                PayloadMatch::Empty => packet.len == 0,
                PayloadMatch::NonEmpty => packet.len > 0,
            })
    }
}

/// Whether a fault with this match selects `packet`, wherever it is seen: what the wire's impairments use.
pub fn selects(matcher: &PacketMatch, packet: &PacketEvent) -> bool {
    selection(matcher, FaultAction::Drop).is_ok_and(|sel| sel.selects(packet))
}

/// Would this fault's rule (a firewall fault's: impairments have none) select this packet, seen on `host`'s veth end in the packet's direction?
/// Used to mark the captured packets a fault dropped or rejected. A fault that `check` refuses
/// matches nothing. Packets an egress fault stops never reach the capture (AF_PACKET sees outgoing
/// packets after the output hook); ingress ones are captured before the input hook drops them.
pub fn matches(fault: &FaultPlan, host: HostId, packet: &PacketEvent) -> bool {
    // A router's fault acts in the forward hook, after its ingress interface captured the packet.
    let hook_direction = match fault.direction {
        Direction::Ingress | Direction::Forward => PacketDirection::In,
        Direction::Egress => PacketDirection::Out,
    };
    fault.action.impairment().is_none()
        && fault.host == host
        && packet.direction == hook_direction
        && selection(&fault.matcher, fault.action).is_ok_and(|sel| sel.selects(packet))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::scenario::plan::{Location, Trigger};

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;

    fn fault(host: HostId, direction: Direction, matcher: PacketMatch) -> FaultPlan {
        FaultPlan {
            name: "f".into(),
            host,
            direction,
            matcher,
            action: FaultAction::Drop,
            from: Trigger::At(std::time::Duration::ZERO),
            until: None,
            location: Location::default(),
        }
    }

    fn tcp(direction: PacketDirection, sport: u16, dport: u16, flags: u8, len: u32) -> PacketEvent {
        PacketEvent { direction, sport, dport, ..PacketEvent::test_segment(flags, len) }
    }

    fn udp(direction: PacketDirection, sport: u16, dport: u16) -> PacketEvent {
        PacketEvent { protocol: IpProtocol::Known(Protocol::Udp), flags: 0, ..tcp(direction, sport, dport, 0, 12) }
    }

    fn icmp(direction: PacketDirection) -> PacketEvent {
        PacketEvent {
            protocol: IpProtocol::Known(Protocol::Icmp),
            options: "host 10.0.0.2 unreachable".into(),
            ..tcp(direction, 0, 0, 0, 0)
        }
    }

    use PacketDirection::{In, Out};

    #[test]
    fn only_the_faults_host_and_hook_direction_match() {
        let f = fault(HostId::Server, Direction::Ingress, PacketMatch::default());
        let packet = tcp(In, 40000, 9000, SYN, 0);
        assert!(matches(&f, HostId::Server, &packet));
        assert!(!matches(&f, HostId::Client, &packet));
        assert!(!matches(&f, HostId::Server, &tcp(Out, 9000, 40000, SYN | ACK, 0)));

        let egress = fault(HostId::Client, Direction::Egress, PacketMatch::default());
        assert!(matches(&egress, HostId::Client, &tcp(Out, 40000, 9000, SYN, 0)));
        assert!(!matches(&egress, HostId::Client, &tcp(In, 9000, 40000, SYN | ACK, 0)));
    }

    #[test]
    fn an_empty_match_selects_every_protocol() {
        let f = fault(HostId::Server, Direction::Ingress, PacketMatch::default());
        assert!(matches(&f, HostId::Server, &udp(In, 1, 2)));
        assert!(matches(&f, HostId::Server, &icmp(In)));
    }

    #[test]
    fn ports_without_protocol_mean_tcp_or_udp() {
        let f = fault(HostId::Server, Direction::Ingress, PacketMatch { dport: Some(9000), ..PacketMatch::default() });
        assert!(matches(&f, HostId::Server, &tcp(In, 40000, 9000, SYN, 0)));
        assert!(matches(&f, HostId::Server, &udp(In, 40000, 9000)));
        assert!(!matches(&f, HostId::Server, &tcp(In, 40000, 9001, SYN, 0)));
        assert!(!matches(&f, HostId::Server, &icmp(In)));
        let sel = selection(&f.matcher, f.action).unwrap();
        assert_eq!(sel.alternatives.len(), 2);
    }

    #[test]
    fn protocol_and_source_port_must_both_hold() {
        let f = fault(
            HostId::Client,
            Direction::Ingress,
            PacketMatch { protocol: Some(Protocol::Udp), sport: Some(53), ..PacketMatch::default() },
        );
        assert!(matches(&f, HostId::Client, &udp(In, 53, 40000)));
        assert!(!matches(&f, HostId::Client, &udp(In, 54, 40000)));
        assert!(!matches(&f, HostId::Client, &tcp(In, 53, 40000, ACK, 0)));
    }

    #[test]
    fn tcp_flags_compare_under_the_mask() {
        let syn_only = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch { tcp_flags: Some(TcpFlagsMatch { mask: SYN | ACK, value: SYN }), ..PacketMatch::default() },
        );
        assert!(matches(&syn_only, HostId::Server, &tcp(In, 1, 2, SYN, 0)));
        assert!(!matches(&syn_only, HostId::Server, &tcp(In, 1, 2, SYN | ACK, 0)));
        assert!(!matches(&syn_only, HostId::Server, &tcp(In, 1, 2, ACK, 0)));
        assert!(!matches(&syn_only, HostId::Server, &udp(In, 1, 2)));

        let ack_ignoring_psh = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch {
                tcp_flags: Some(TcpFlagsMatch { mask: SYN | ACK | FIN | RST, value: ACK }),
                ..PacketMatch::default()
            },
        );
        assert!(matches(&ack_ignoring_psh, HostId::Server, &tcp(In, 1, 2, ACK, 0)));
        assert!(matches(&ack_ignoring_psh, HostId::Server, &tcp(In, 1, 2, PSH | ACK, 9)));
        assert!(!matches(&ack_ignoring_psh, HostId::Server, &tcp(In, 1, 2, FIN | ACK, 0)));
    }

    #[test]
    fn payload_conditions_split_pure_acks_from_data() {
        let empty = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch { payload: Some(PayloadMatch::Empty), ..PacketMatch::default() },
        );
        let nonempty = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch { payload: Some(PayloadMatch::NonEmpty), ..PacketMatch::default() },
        );
        let pure_ack = tcp(In, 1, 2, ACK, 0);
        let data = tcp(In, 1, 2, PSH | ACK, 100);
        assert!(matches(&empty, HostId::Server, &pure_ack));
        assert!(!matches(&empty, HostId::Server, &data));
        assert!(matches(&nonempty, HostId::Server, &data));
        assert!(!matches(&nonempty, HostId::Server, &pure_ack));
        assert!(!matches(&empty, HostId::Server, &udp(In, 1, 2)));
    }

    #[test]
    fn tcp_reset_implies_tcp() {
        let mut f = fault(HostId::Server, Direction::Ingress, PacketMatch::default());
        f.action = FaultAction::RejectTcpReset;
        assert!(matches(&f, HostId::Server, &tcp(In, 1, 2, SYN, 0)));
        assert!(!matches(&f, HostId::Server, &udp(In, 1, 2)));
    }

    #[test]
    fn zero_mask_is_no_flag_condition_but_still_tcp() {
        let f = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch { tcp_flags: Some(TcpFlagsMatch { mask: 0, value: 0 }), ..PacketMatch::default() },
        );
        let sel = selection(&f.matcher, f.action).unwrap();
        assert_eq!(
            sel.alternatives,
            vec![Alternative { protocol: Some(Protocol::Tcp), sport: None, dport: None, tcp_flags: None }]
        );
    }

    #[test]
    fn impossible_matches_are_refused_and_match_nothing() {
        let cases = [
            PacketMatch { protocol: Some(Protocol::Icmp), dport: Some(1), ..PacketMatch::default() },
            PacketMatch { protocol: Some(Protocol::Udp), payload: Some(PayloadMatch::Empty), ..PacketMatch::default() },
            PacketMatch {
                protocol: Some(Protocol::Udp),
                tcp_flags: Some(TcpFlagsMatch { mask: SYN, value: SYN }),
                ..PacketMatch::default()
            },
            PacketMatch { tcp_flags: Some(TcpFlagsMatch { mask: SYN, value: ACK }), ..PacketMatch::default() },
        ];
        for matcher in cases {
            let f = fault(HostId::Server, Direction::Ingress, matcher.clone());
            assert!(selection(&f.matcher, f.action).is_err(), "{matcher:?} should be refused");
            assert!(!matches(&f, HostId::Server, &udp(In, 1, 1)));
            assert!(!matches(&f, HostId::Server, &tcp(In, 1, 1, SYN, 0)));
        }
        let mut reset_udp = fault(
            HostId::Server,
            Direction::Ingress,
            PacketMatch { protocol: Some(Protocol::Udp), ..PacketMatch::default() },
        );
        reset_udp.action = FaultAction::RejectTcpReset;
        assert!(selection(&reset_udp.matcher, reset_udp.action).is_err());
    }
}

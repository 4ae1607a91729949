//! Decoding one captured Ethernet frame into a [`PacketEvent`], as `tcpdump -n` prints it (pure, no I/O).
//!
//! Sequence numbers are relative, one choice made here and kept everywhere: the SYN of each direction sets
//! that direction's initial sequence number (ISN), so a SYN shows `seq 0`, the SYN-ACK `seq 0, ack 1`, and
//! every later segment counts from there (tcpdump itself prints the two SYNs absolute). Before a SYN of a
//! direction was seen (capture started mid-connection), numbers of that direction stay absolute. `ack` is
//! 0 when the ACK flag is off, as tcpdump then leaves it out.

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use crate::timeline::{IpProtocol, PacketDirection, PacketEvent};

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers a packet may carry before its transport header (RFC 8200 4.1), skipped to reach it:
/// hop-by-hop options, routing, destination options. A fragment header (44) is read for its offset.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION: u8 = 60;
const IPV6_HEADER_LEN: usize = 40;

const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
const TCP_MIN_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Hashes a [`FlowKey`] for the ISN maps, looked up twice for every captured segment (600,000 a second in a
/// bulk transfer captured at both ends): the keys are connections of the run's own hosts, with nobody to
/// defend the map against, so a multiply-and-rotate per field does instead of SipHash.
#[derive(Default)]
struct FlowHasher(u64);

impl FlowHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FlowHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&byte| self.mix(u64::from(byte)));
    }

    fn write_u16(&mut self, n: u16) {
        self.mix(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

type FlowMap<V> = HashMap<FlowKey, V, BuildHasherDefault<FlowHasher>>;

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

impl FlowKey {
    fn reversed(self) -> FlowKey {
        FlowKey { src: self.dst, sport: self.dport, dst: self.src, dport: self.sport }
    }
}

/// The initial sequence numbers every decoder of a run has learnt, shared by them: a packet the kernel dropped
/// before it left (which no capture saw) is numbered as its connection's captured packets are.
#[derive(Debug, Clone, Default)]
pub struct SharedIsns(Arc<Mutex<FlowMap<u32>>>);

impl SharedIsns {
    fn get(&self, key: &FlowKey) -> Option<u32> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(key).copied()
    }

    fn learn(&self, key: FlowKey, isn: u32) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key, isn);
    }
}

/// TCP flags that change a socket's state: FIN, SYN, RST.
pub const STATE_CHANGING_FLAGS: u8 = 0x01 | TCP_SYN | 0x04;

/// Whether `frame` is a TCP segment with a flag in [`STATE_CHANGING_FLAGS`], under the checks `decode` makes
/// before it reads the flags; nothing else is decoded.
pub fn changes_tcp_state(frame: &[u8]) -> bool {
    tcp_flags(frame).is_some_and(|flags| flags & STATE_CHANGING_FLAGS != 0)
}

/// The flags of a TCP segment, under the checks `decode` makes before it reads them (an IPv4 or IPv6 frame,
/// not a later fragment, a complete enough TCP header).
fn tcp_flags(frame: &[u8]) -> Option<u8> {
    let ip = ip_of(frame)?;
    if ip.fragment_offset != 0 || ip.protocol != IPPROTO_TCP {
        return None;
    }
    tcp_header_len(ip.payload)?;
    Some(ip.payload[13])
}

/// The IPv4 or IPv6 header of an Ethernet frame, if it carries a complete enough one.
fn ip_of(frame: &[u8]) -> Option<IpHeader<'_>> {
    let packet = frame.get(ETHERNET_HEADER_LEN..)?;
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        ETHERTYPE_IPV4 => IpHeader::parse_v4(packet),
        ETHERTYPE_IPV6 => IpHeader::parse_v6(packet),
        _ => None,
    }
}

/// The length a TCP header says it has, if the segment holds its fixed part and the length is a valid one.
fn tcp_header_len(tcp: &[u8]) -> Option<usize> {
    if tcp.len() < TCP_MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(tcp[12] >> 4) * 4;
    (header_len >= TCP_MIN_HEADER_LEN).then_some(header_len)
}

/// Decodes the frames of one capture (one interface), remembering each TCP direction's ISN so that
/// seq/ack come out relative, as `tcpdump -n -r file.pcap` shows them.
#[derive(Debug, Default)]
pub struct Decoder {
    initial_seq: FlowMap<u32>,
    shared: Option<SharedIsns>,
}

impl Decoder {
    /// A decoder that learns initial sequence numbers from the SYNs it sees itself.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that also learns from, and tells, the run's other decoders.
    pub fn sharing(shared: SharedIsns) -> Decoder {
        Decoder { initial_seq: FlowMap::default(), shared: Some(shared) }
    }

    /// A packet that starts at its IPv4 or IPv6 header (as a drop inside the kernel shows it; the version
    /// nibble says which), as [`Decoder::decode`] decodes a frame.
    pub fn decode_ip(&mut self, packet: &[u8], outgoing: bool) -> Option<PacketEvent> {
        let ethertype = if packet.first()? >> 4 == 6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN];
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(packet);
        self.decode(&frame, outgoing)
    }

    fn isn(&self, key: &FlowKey) -> Option<u32> {
        self.initial_seq.get(key).copied().or_else(|| self.shared.as_ref()?.get(key))
    }

    /// The event tcpdump would print for `frame` (Ethernet, starting at the destination MAC), or `None` for
    /// anything that is not a complete enough IPv4 or IPv6 packet (ARP, truncated headers) and for the ICMPv6
    /// messages a host sends of its own (neighbour discovery, multicast listener reports), which the timeline
    /// leaves out as it leaves out ARP. `outgoing` is whether the host sent it (`sll_pkttype ==
    /// PACKET_OUTGOING`).
    pub fn decode(&mut self, frame: &[u8], outgoing: bool) -> Option<PacketEvent> {
        let ip = ip_of(frame)?;
        let direction = if outgoing { PacketDirection::Out } else { PacketDirection::In };
        let mut event = PacketEvent {
            direction,
            src: ip.src,
            dst: ip.dst,
            protocol: IpProtocol::from_number(ip.protocol),
            ip_id: ip.id,
            sport: 0,
            dport: 0,
            flags: 0,
            seq: 0,
            ack: 0,
            window: 0,
            len: ip.payload_len,
            options: String::new(),
            fault: None,
            dropped: None,
            impairments: Vec::new(),
        };
        if ip.fragment_offset != 0 {
            // Only the first fragment carries the transport header.
            event.options = format!("frag {}:{}@{}", ip.id, ip.payload_len, ip.fragment_offset);
            return Some(event);
        }
        match ip.protocol {
            IPPROTO_TCP => self.decode_tcp(&ip, &mut event)?,
            IPPROTO_UDP => decode_udp(&ip, &mut event)?,
            IPPROTO_ICMP => decode_icmp(&ip, &mut event)?,
            IPPROTO_ICMPV6 => decode_icmpv6(&ip, &mut event)?,
            _ => event.options = format!("length {}", ip.payload_len),
        }
        Some(event)
    }

    fn decode_tcp(&mut self, ip: &IpHeader, event: &mut PacketEvent) -> Option<()> {
        let tcp = ip.payload;
        let header_len = tcp_header_len(tcp)?;
        let key = FlowKey { src: ip.src, sport: be16(tcp, 0)?, dst: ip.dst, dport: be16(tcp, 2)? };
        let seq = be32(tcp, 4)?;
        let ack = be32(tcp, 8)?;
        let flags = tcp[13];
        if flags & TCP_SYN != 0 {
            self.initial_seq.insert(key, seq);
            if let Some(shared) = &self.shared {
                shared.learn(key, seq);
            }
        }
        let own_isn = self.isn(&key);
        let peer_isn = self.isn(&key.reversed());

        event.sport = key.sport;
        event.dport = key.dport;
        event.flags = flags;
        event.seq = relative(seq, own_isn);
        event.ack = if flags & TCP_ACK != 0 { relative(ack, peer_isn) } else { 0 };
        event.window = be16(tcp, 14)?;
        event.len = ip.payload_len.saturating_sub(header_len as u32);
        // The options may be cut off by the snap length; summarize what was captured.
        let options = tcp.get(TCP_MIN_HEADER_LEN..header_len.min(tcp.len())).unwrap_or_default();
        event.options = tcp_options(options, peer_isn);
        Some(())
    }
}

fn relative(number: u32, initial: Option<u32>) -> u32 {
    match initial {
        Some(initial) => number.wrapping_sub(initial),
        None => number,
    }
}

/// The IP header fields the timeline needs (IPv4, or IPv6 with its extension headers skipped), and the
/// captured bytes after the header.
struct IpHeader<'a> {
    /// IPv4's identification field; IPv6 has none outside a fragment header (0).
    id: u16,
    /// In bytes.
    fragment_offset: u32,
    /// IPv4's protocol, IPv6's last next header.
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    /// The transport payload's length, from the header (not from what was captured).
    payload_len: u32,
    /// Captured bytes of the payload, at most `payload_len` of them (Ethernet padding cut off).
    payload: &'a [u8],
}

impl<'a> IpHeader<'a> {
    fn parse_v4(packet: &'a [u8]) -> Option<IpHeader<'a>> {
        let first = *packet.first()?;
        let header_len = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || header_len < IPV4_MIN_HEADER_LEN || packet.len() < header_len {
            return None;
        }
        let total_len = usize::from(be16(packet, 2)?);
        let payload_len = total_len.checked_sub(header_len)?;
        let payload_end = total_len.min(packet.len());
        Some(IpHeader {
            id: be16(packet, 4)?,
            fragment_offset: u32::from(be16(packet, 6)? & IPV4_FRAGMENT_OFFSET_MASK) * 8,
            protocol: packet[9],
            src: IpAddr::V4(ipv4(packet, 12)?),
            dst: IpAddr::V4(ipv4(packet, 16)?),
            payload_len: payload_len as u32,
            payload: packet.get(header_len..payload_end)?,
        })
    }

    /// The fixed header, then hop-by-hop, routing, fragment and destination options headers up to the
    /// transport header (an ICMPv6 error quotes the packet it answers the same way).
    fn parse_v6(packet: &'a [u8]) -> Option<IpHeader<'a>> {
        if packet.first()? >> 4 != 6 || packet.len() < IPV6_HEADER_LEN {
            return None;
        }
        let total_len = IPV6_HEADER_LEN + usize::from(be16(packet, 4)?);
        let end = total_len.min(packet.len());
        let mut next = packet[6];
        let mut at = IPV6_HEADER_LEN;
        let (mut id, mut fragment_offset) = (0, 0);
        loop {
            match next {
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION => {
                    next = *packet.get(at)?;
                    at += (usize::from(*packet.get(at + 1)?) + 1) * 8;
                }
                IPV6_FRAGMENT => {
                    next = *packet.get(at)?;
                    fragment_offset = u32::from(be16(packet, at + 2)? & 0xfff8);
                    // The low 16 bits of the identification: IPv4's field is 16 bits wide too.
                    id = be16(packet, at + 6)?;
                    at += 8;
                }
                _ => break,
            }
        }
        let address = |at: usize| -> Option<IpAddr> {
            let octets: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        };
        Some(IpHeader {
            id,
            fragment_offset,
            protocol: next,
            src: address(8)?,
            dst: address(24)?,
            payload_len: total_len.checked_sub(at)? as u32,
            payload: packet.get(at..end.max(at))?,
        })
    }

    /// Either version, by the version nibble: the header an ICMP error quotes.
    fn parse(packet: &'a [u8]) -> Option<IpHeader<'a>> {
        match packet.first()? >> 4 {
            4 => IpHeader::parse_v4(packet),
            6 => IpHeader::parse_v6(packet),
            _ => None,
        }
    }
}

fn decode_udp(ip: &IpHeader, event: &mut PacketEvent) -> Option<()> {
    let udp = ip.payload;
    event.sport = be16(udp, 0)?;
    event.dport = be16(udp, 2)?;
    event.len = u32::from(be16(udp, 4)?).saturating_sub(UDP_HEADER_LEN as u32);
    event.options = format!("{} > {}, length {}", event.sport, event.dport, event.len);
    Some(())
}

fn decode_icmp(ip: &IpHeader, event: &mut PacketEvent) -> Option<()> {
    let icmp = ip.payload;
    let (icmp_type, code) = (*icmp.first()?, *icmp.get(1)?);
    event.options = match icmp_type {
        0 | 8 => {
            let kind = if icmp_type == 0 { "echo reply" } else { "echo request" };
            format!("{kind}, id {}, seq {}, length {}", be16(icmp, 4)?, be16(icmp, 6)?, ip.payload_len)
        }
        3 => unreachable_text(code, icmp.get(ICMP_HEADER_LEN..).unwrap_or_default(), be16(icmp, 6)),
        4 => "source quench".to_string(),
        5 => match (ipv4(icmp, 4), quoted_packet(icmp.get(ICMP_HEADER_LEN..).unwrap_or_default())) {
            (Some(gateway), Some(quoted)) => format!("redirect {} to host {gateway}", quoted.dst),
            _ => "redirect".to_string(),
        },
        11 if code == 0 => "time exceeded in-transit".to_string(),
        11 => "ip reassembly time exceeded".to_string(),
        12 => "parameter problem".to_string(),
        other => format!("type-#{other}"),
    };
    Some(())
}

/// ICMPv6 as tcpdump prints it (`ICMP6, destination unreachable, unreachable port, fd00::2 tcp port 9000`),
/// errors and echoes; `None` for the rest (neighbour discovery, multicast listener reports: a host's own
/// housekeeping, left out of the timeline as ARP is).
fn decode_icmpv6(ip: &IpHeader, event: &mut PacketEvent) -> Option<()> {
    let icmp = ip.payload;
    let (icmp_type, code) = (*icmp.first()?, *icmp.get(1)?);
    let quoted = quoted_packet(icmp.get(ICMP_HEADER_LEN..).unwrap_or_default());
    let about = |quoted: &Option<QuotedPacket>| match quoted {
        Some(QuotedPacket { dst, protocol, dport: Some(port) }) => {
            format!(", {dst} {} port {port}", IpProtocol::from_number(*protocol))
        }
        Some(QuotedPacket { dst, .. }) => format!(", {dst}"),
        None => String::new(),
    };
    event.options = match icmp_type {
        1 => {
            let why = match code {
                0 => "no route".to_string(),
                1 => "unreachable prohibited".to_string(),
                2 => "beyond scope".to_string(),
                3 => "unreachable address".to_string(),
                4 => "unreachable port".to_string(),
                5 => "source address failed policy".to_string(),
                6 => "reject route".to_string(),
                other => format!("code {other}"),
            };
            format!("destination unreachable, {why}{}", about(&quoted))
        }
        2 => format!("packet too big, mtu {}{}", be32(icmp, 4)?, about(&quoted)),
        3 => format!("time exceeded in-transit{}", about(&quoted)),
        4 => format!("parameter problem, code {code}{}", about(&quoted)),
        128 | 129 => {
            let kind = if icmp_type == 128 { "echo request" } else { "echo reply" };
            format!("{kind}, id {}, seq {}, length {}", be16(icmp, 4)?, be16(icmp, 6)?, ip.payload_len)
        }
        _ => return None,
    };
    Some(())
}

/// The header an ICMP error quotes: the original packet's addresses and, for TCP and UDP, its ports.
struct QuotedPacket {
    dst: IpAddr,
    protocol: u8,
    dport: Option<u16>,
}

fn quoted_packet(bytes: &[u8]) -> Option<QuotedPacket> {
    let header = IpHeader::parse(bytes)?;
    let dport = match header.protocol {
        IPPROTO_TCP | IPPROTO_UDP => be16(header.payload, 2),
        _ => None,
    };
    Some(QuotedPacket { dst: header.dst, protocol: header.protocol, dport })
}

/// tcpdump's text for ICMP destination unreachable (`reject with icmp type ...` in nft).
fn unreachable_text(code: u8, quoted: &[u8], next_hop_mtu: Option<u16>) -> String {
    let Some(quoted) = quoted_packet(quoted) else {
        return format!("unreachable, code {code}");
    };
    let dst = quoted.dst;
    match code {
        0 => format!("net {dst} unreachable"),
        1 => format!("host {dst} unreachable"),
        2 => format!("{dst} protocol {} unreachable", quoted.protocol),
        3 => match quoted.dport {
            Some(port) => format!("{dst} {} port {port} unreachable", IpProtocol::from_number(quoted.protocol)),
            None => format!("{dst} port unreachable"),
        },
        4 => match next_hop_mtu {
            Some(mtu) => format!("{dst} unreachable - need to frag (mtu {mtu})"),
            None => format!("{dst} unreachable - need to frag"),
        },
        5 => format!("{dst} unreachable - source route failed"),
        6 => format!("net {dst} unreachable - unknown"),
        7 => format!("host {dst} unreachable - unknown"),
        8 => format!("{dst} unreachable - source host isolated"),
        9 => format!("net {dst} unreachable - admin prohibited"),
        10 => format!("host {dst} unreachable - admin prohibited"),
        11 => format!("net {dst} unreachable - tos prohibited"),
        12 => format!("host {dst} unreachable - tos prohibited"),
        13 => format!("host {dst} unreachable - admin prohibited filter"),
        14 => format!("host {dst} unreachable - host precedence violation"),
        15 => format!("host {dst} unreachable - precedence cutoff"),
        other => format!("{dst} unreachable - #{other}"),
    }
}

/// TCP options as tcpdump lists them between brackets: `mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7`.
/// SACK blocks are relative to the peer's ISN, like the ack number.
fn tcp_options(mut bytes: &[u8], peer_isn: Option<u32>) -> String {
    // One string written in place: this runs for every captured segment of a bulk transfer.
    let mut out = String::with_capacity(48);
    while let Some(&kind) = bytes.first() {
        if !out.is_empty() {
            out.push(',');
        }
        match kind {
            0 => {
                out.push_str("eol");
                break;
            }
            1 => {
                out.push_str("nop");
                bytes = &bytes[1..];
                continue;
            }
            _ => {}
        }
        let len = bytes.get(1).map_or(0, |&len| usize::from(len));
        if len < 2 || len > bytes.len() {
            let _ = write!(out, "bad opt {kind}");
            break;
        }
        let option = &bytes[..len];
        // Writing to a String cannot fail.
        let _ = match (kind, len) {
            (2, 4) => write!(out, "mss {}", be16(option, 2).unwrap_or_default()),
            (3, 3) => write!(out, "wscale {}", option[2]),
            (4, 2) => write!(out, "sackOK"),
            (5, _) => {
                let _ = write!(out, "sack {} ", (len - 2) / 8);
                for block in option[2..].chunks_exact(8) {
                    let left = relative(be32(block, 0).unwrap_or_default(), peer_isn);
                    let right = relative(be32(block, 4).unwrap_or_default(), peer_isn);
                    let _ = write!(out, "{{{left}:{right}}}");
                }
                Ok(())
            }
            (8, 10) => {
                // On every segment of a connection with timestamps: written digit by digit rather than
                // through `write!`'s formatting machinery.
                out.push_str("TS val ");
                push_decimal(&mut out, be32(option, 2).unwrap_or_default());
                out.push_str(" ecr ");
                push_decimal(&mut out, be32(option, 6).unwrap_or_default());
                Ok(())
            }
            (34, _) => write!(out, "tfo"),
            (30, _) => write!(out, "mptcp"),
            _ => write!(out, "unknown-{kind}"),
        };
        bytes = &bytes[len..];
    }
    out
}

/// Appends `n` in decimal, as `write!(out, "{n}")` does.
fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only: always UTF-8, and one copy rather than a push per character.
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// Big-endian u16 at `at`, if the bytes are there (also what the impairment wire reads frames with).
pub(crate) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn ipv4(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::plan::Protocol;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    /// An IPv6 packet in an Ethernet frame: `next` is the first next header, `payload` what follows the fixed
    /// header (extension headers included).
    fn frame6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        frame.extend_from_slice(&ip6_packet(src, dst, next, payload));
        frame
    }

    fn ip6_packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(payload);
        ip
    }

    #[test]
    fn ipv6_segments_are_decoded_like_ipv4_ones() {
        let mut decoder = Decoder::new();
        let syn = Segment {
            sport: 40000,
            dport: 9000,
            seq: 5000,
            ack: 0,
            flags: 0x02,
            window: 64800,
            options: &SYN_OPTIONS,
            data: &[],
        };
        let event = decoder.decode(&frame6(CLIENT6, SERVER6, IPPROTO_TCP, &tcp(&syn)), true).unwrap();
        assert_eq!((event.src, event.dst), (IpAddr::V6(CLIENT6), IpAddr::V6(SERVER6)));
        assert_eq!(event.protocol, IpProtocol::Known(Protocol::Tcp));
        assert_eq!(
            (event.sport, event.dport, event.flags, event.seq, event.len, event.ip_id),
            (40000, 9000, 2, 0, 0, 0)
        );
        assert_eq!(event.to_string(), "fd00::1.40000 > fd00::2.9000: Flags [S], seq 0, win 64800, length 0, [mss 1460,sackOK,TS val 123 ecr 0,nop,wscale 7]");
        // Data behind a destination options header: the header is skipped, its length not counted as payload.
        let data = Segment { seq: 5001, ack: 1, flags: 0x18, data: b"hello", options: &[], ..syn };
        let mut with_options = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        with_options.extend_from_slice(&tcp(&data));
        let event = decoder.decode(&frame6(CLIENT6, SERVER6, IPV6_DESTINATION, &with_options), true).unwrap();
        assert_eq!((event.flags, event.seq, event.len), (0x18, 1, 5));
        // The same packet as a drop inside the kernel shows it, from its IPv6 header on.
        let packet = ip6_packet(CLIENT6, SERVER6, IPPROTO_TCP, &tcp(&data));
        assert_eq!(decoder.decode_ip(&packet, true).map(|e| (e.src, e.len)), Some((IpAddr::V6(CLIENT6), 5)));
        assert!(changes_tcp_state(&frame6(CLIENT6, SERVER6, IPPROTO_TCP, &tcp(&syn))));
    }

    #[test]
    fn icmpv6_errors_name_their_code_and_the_packet_they_quote() {
        let mut decoder = Decoder::new();
        let syn = Segment { sport: 40000, dport: 9000, seq: 1, ack: 0, flags: 2, window: 1, options: &[], data: &[] };
        let quoted = ip6_packet(CLIENT6, SERVER6, IPPROTO_TCP, &tcp(&syn));
        let error = |code: u8| {
            let mut icmp = vec![1, code, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quoted);
            frame6(SERVER6, CLIENT6, IPPROTO_ICMPV6, &icmp)
        };
        let texts: Vec<String> = [4, 3, 0, 1]
            .into_iter()
            .map(|code| {
                let event = decoder.decode(&error(code), true).unwrap();
                assert_eq!(event.protocol, IpProtocol::Known(Protocol::Icmpv6));
                event.options
            })
            .collect();
        assert_eq!(
            texts,
            [
                "destination unreachable, unreachable port, fd00::2 tcp port 9000",
                "destination unreachable, unreachable address, fd00::2 tcp port 9000",
                "destination unreachable, no route, fd00::2 tcp port 9000",
                "destination unreachable, unreachable prohibited, fd00::2 tcp port 9000",
            ]
        );
        let event = decoder.decode(&error(4), true).unwrap();
        assert_eq!(
            event.to_string(),
            "fd00::2 > fd00::1: icmpv6 destination unreachable, unreachable port, fd00::2 tcp port 9000"
        );
        let mut too_big = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        too_big.extend_from_slice(&quoted);
        let event = decoder.decode(&frame6(SERVER6, CLIENT6, IPPROTO_ICMPV6, &too_big), true).unwrap();
        assert_eq!(event.options, "packet too big, mtu 1280, fd00::2 tcp port 9000");
    }

    /// An IPv4 packet in an Ethernet frame; checksums are left zero (the decoder does not verify them).
    fn frame(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip_packet(src, dst, protocol, id, payload));
        frame
    }

    fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, id: u16, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&[0x40, 0, 64, protocol, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(payload);
        ip
    }

    struct Segment<'a> {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: &'a [u8],
        data: &'a [u8],
    }

    fn tcp(segment: &Segment) -> Vec<u8> {
        assert_eq!(segment.options.len() % 4, 0, "test options must be padded");
        let doff = (20 + segment.options.len()) / 4;
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&segment.sport.to_be_bytes());
        tcp.extend_from_slice(&segment.dport.to_be_bytes());
        tcp.extend_from_slice(&segment.seq.to_be_bytes());
        tcp.extend_from_slice(&segment.ack.to_be_bytes());
        tcp.extend_from_slice(&[(doff as u8) << 4, segment.flags]);
        tcp.extend_from_slice(&segment.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(segment.options);
        tcp.extend_from_slice(segment.data);
        tcp
    }

    const SYN_OPTIONS: [u8; 20] = [
        2, 4, 0x05, 0xb4, // mss 1460
        4, 2, // sackOK
        8, 10, 0, 0, 0, 123, 0, 0, 0, 0, // TS val 123 ecr 0
        1, // nop
        3, 3, 7, // wscale 7
    ];

    fn syn(sport: u16, isn: u32) -> Vec<u8> {
        let segment = Segment {
            sport,
            dport: 9000,
            seq: isn,
            ack: 0,
            flags: 0x02,
            window: 64240,
            options: &SYN_OPTIONS,
            data: &[],
        };
        frame(CLIENT, SERVER, IPPROTO_TCP, 0x1234, &tcp(&segment))
    }

    fn syn_ack(dport: u16, isn: u32, client_isn: u32) -> Vec<u8> {
        let segment = Segment {
            sport: 9000,
            dport,
            seq: isn,
            ack: client_isn.wrapping_add(1),
            flags: 0x12,
            window: 65160,
            options: &SYN_OPTIONS,
            data: &[],
        };
        frame(SERVER, CLIENT, IPPROTO_TCP, 0, &tcp(&segment))
    }

    #[test]
    fn syn_with_options_is_seq_zero_and_lists_its_options() {
        let mut decoder = Decoder::new();
        let event = decoder.decode(&syn(40000, 1_000_000), true).unwrap();
        assert_eq!(event.direction, PacketDirection::Out);
        assert_eq!((event.src, event.dst), (IpAddr::V4(CLIENT), IpAddr::V4(SERVER)));
        assert_eq!(event.protocol, IpProtocol::Known(Protocol::Tcp));
        assert_eq!(event.ip_id, 0x1234);
        assert_eq!((event.sport, event.dport), (40000, 9000));
        assert_eq!(event.flags, 0x02);
        assert_eq!((event.seq, event.ack), (0, 0));
        assert_eq!(event.window, 64240);
        assert_eq!(event.len, 0);
        assert_eq!(event.options, "mss 1460,sackOK,TS val 123 ecr 0,nop,wscale 7");
        assert_eq!(event.fault, None);
    }

    #[test]
    fn handshake_and_data_are_relative_to_each_directions_isn() {
        let mut decoder = Decoder::new();
        let client_isn = 0xffff_fff0; // wraps during the exchange
        let server_isn = 77;
        decoder.decode(&syn(40000, client_isn), true).unwrap();

        let reply = decoder.decode(&syn_ack(40000, server_isn, client_isn), false).unwrap();
        assert_eq!(reply.direction, PacketDirection::In);
        assert_eq!((reply.seq, reply.ack, reply.flags), (0, 1, 0x12));

        let data = [0xabu8; 100];
        let ts_option = [1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 9];
        let push = Segment {
            sport: 40000,
            dport: 9000,
            seq: client_isn.wrapping_add(1),
            ack: server_isn + 1,
            flags: 0x18,
            window: 502,
            options: &ts_option,
            data: &data,
        };
        let event = decoder.decode(&frame(CLIENT, SERVER, IPPROTO_TCP, 7, &tcp(&push)), true).unwrap();
        assert_eq!((event.seq, event.ack, event.len, event.window), (1, 1, 100, 502));
        assert_eq!(event.options, "nop,nop,TS val 5 ecr 9");

        let sack = [1, 1, 5, 10, 0, 0, 0, 201, 0, 0, 1, 45];
        let server_ack = Segment {
            sport: 9000,
            dport: 40000,
            seq: server_isn + 1,
            ack: client_isn.wrapping_add(101),
            flags: 0x10,
            window: 509,
            options: &sack,
            data: &[],
        };
        let event = decoder.decode(&frame(SERVER, CLIENT, IPPROTO_TCP, 8, &tcp(&server_ack)), false).unwrap();
        assert_eq!((event.seq, event.ack, event.len), (1, 101, 0));
        let expected_left = 201u32.wrapping_sub(client_isn);
        let expected_right = 301u32.wrapping_sub(client_isn);
        assert_eq!(event.options, format!("nop,nop,sack 1 {{{expected_left}:{expected_right}}}"));
    }

    /// The client's zero-window probe 1152 bytes into a connection whose ISNs are 5000 and 90,000.
    fn zero_window_probe() -> Segment<'static> {
        Segment {
            sport: 40000,
            dport: 9000,
            seq: 5000 + 1152,
            ack: 90_001,
            flags: 0x10,
            window: 63,
            options: &[],
            data: &[],
        }
    }

    #[test]
    fn a_packet_dropped_before_it_left_is_numbered_from_the_isns_the_captures_learnt() {
        // The drop tracer has the packet from its IPv4 header on, and never saw the handshake: the captures did.
        let shared = SharedIsns::default();
        let mut client_capture = Decoder::sharing(shared.clone());
        let mut server_capture = Decoder::sharing(shared.clone());
        client_capture.decode(&syn(40000, 5000), true).unwrap();
        server_capture.decode(&syn_ack(40000, 90_000, 5000), true).unwrap();
        let probe = zero_window_probe();
        let mut tracer = Decoder::sharing(shared);
        let event = tracer.decode_ip(&ip_packet(CLIENT, SERVER, IPPROTO_TCP, 9, &tcp(&probe)), true).unwrap();
        assert_eq!((event.seq, event.ack, event.sport, event.dport), (1152, 1, 40000, 9000));
        assert_eq!(event.direction, PacketDirection::Out);
        // Without the shared numbers it would print them absolute.
        let event = Decoder::new().decode_ip(&ip_packet(CLIENT, SERVER, IPPROTO_TCP, 9, &tcp(&probe)), true).unwrap();
        assert_eq!((event.seq, event.ack), (6152, 90_001));
    }

    /// A capture that decodes after it stops decodes during the run only the frames that change a TCP state
    /// (and a few more): every SYN among them, so the tracer's drops are numbered as when every frame is
    /// decoded live.
    #[test]
    fn decoding_only_state_changing_frames_numbers_a_drop_as_decoding_all_does() {
        let probe = zero_window_probe();
        let frames =
            [syn(40000, 5000), syn_ack(40000, 90_000, 5000), frame(CLIENT, SERVER, IPPROTO_TCP, 9, &tcp(&probe))];
        let (decoded, announced) = (SharedIsns::default(), SharedIsns::default());
        let (mut live, mut announcer) = (Decoder::sharing(decoded.clone()), Decoder::sharing(announced.clone()));
        for frame in &frames {
            live.decode(frame, true).unwrap();
            if changes_tcp_state(frame) {
                announcer.decode(frame, true).unwrap();
            }
        }
        let (mut from_decoded, mut from_announced) = (Decoder::sharing(decoded), Decoder::sharing(announced.clone()));
        let drop = ip_packet(CLIENT, SERVER, IPPROTO_TCP, 9, &tcp(&probe));
        let expected = from_decoded.decode_ip(&drop, true).unwrap();
        assert_eq!((expected.seq, expected.ack), (1152, 1));
        assert_eq!(from_announced.decode_ip(&drop, true), Some(expected));
        assert_eq!(announced.0.lock().unwrap().len(), 2, "both directions' ISNs");
        // The SYN and SYN-ACK change a socket's state, the ACK does not; neither does anything but TCP, nor a
        // SYN whose TCP header was cut.
        assert_eq!(frames.map(|frame| changes_tcp_state(&frame)), [true, true, false]);
        let mut arp = syn(40001, 1);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!changes_tcp_state(&arp));
        assert!(!changes_tcp_state(&syn(40002, 1)[..14 + 20 + 10]));
        let fin = Segment { flags: 0x11, ..probe };
        let rst = Segment { flags: 0x04, ..probe };
        for segment in [fin, rst] {
            assert!(changes_tcp_state(&frame(CLIENT, SERVER, IPPROTO_TCP, 9, &tcp(&segment))));
        }
    }

    #[test]
    fn connections_are_kept_apart_and_unseen_syns_leave_numbers_absolute() {
        let mut decoder = Decoder::new();
        decoder.decode(&syn(40000, 5000), true).unwrap();
        let mid_stream = Segment {
            sport: 40001,
            dport: 9000,
            seq: 123_456,
            ack: 654_321,
            flags: 0x10,
            window: 100,
            options: &[],
            data: b"xy",
        };
        let event = decoder.decode(&frame(CLIENT, SERVER, IPPROTO_TCP, 1, &tcp(&mid_stream)), true).unwrap();
        assert_eq!((event.seq, event.ack, event.len), (123_456, 654_321, 2));
        assert_eq!(event.options, "");
    }

    #[test]
    fn a_new_syn_on_the_same_ports_restarts_the_numbering() {
        let mut decoder = Decoder::new();
        decoder.decode(&syn(40000, 5000), true).unwrap();
        let event = decoder.decode(&syn(40000, 9_000_000), true).unwrap();
        assert_eq!(event.seq, 0);
        let reply = decoder.decode(&syn_ack(40000, 1, 9_000_000), false).unwrap();
        assert_eq!(reply.ack, 1);
    }

    #[test]
    fn rst_without_ack_shows_relative_seq_and_prints_no_ack() {
        let mut decoder = Decoder::new();
        decoder.decode(&syn(40000, 1000), true).unwrap();
        decoder.decode(&syn_ack(40000, 50_000, 1000), false).unwrap();
        let rst = Segment {
            sport: 9000,
            dport: 40000,
            seq: 50_001,
            ack: 0xdead_beef,
            flags: 0x04,
            window: 0,
            options: &[],
            data: &[],
        };
        let event = decoder.decode(&frame(SERVER, CLIENT, IPPROTO_TCP, 0, &tcp(&rst)), false).unwrap();
        assert_eq!(event.flags, 0x04);
        assert_eq!((event.seq, event.ack, event.window, event.len), (1, 0, 0, 0));
        assert_eq!(crate::timeline::format_tcp_flags(event.flags), "R");
        // Found by the issue-12 cases: printed `ack 0`, which tcpdump does not print for a segment without ACK.
        assert_eq!(event.to_string(), "10.0.0.2.9000 > 10.0.0.1.40000: Flags [R], seq 1, win 0, length 0");
        let syn = decoder.decode(&syn(40001, 7), true).unwrap();
        assert!(syn.to_string().starts_with("10.0.0.1.40001 > 10.0.0.2.9000: Flags [S], seq 0, win 64240, length 0"));
        let syn_ack = decoder.decode(&syn_ack(40001, 70, 7), false).unwrap();
        assert!(syn_ack.to_string().contains("Flags [S.], seq 0, ack 1, win 65160"), "{syn_ack}");
    }

    #[test]
    fn icmp_port_unreachable_names_the_quoted_tcp_port() {
        let original = tcp(&Segment {
            sport: 40000,
            dport: 9000,
            seq: 1,
            ack: 0,
            flags: 0x02,
            window: 0,
            options: &[],
            data: &[],
        });
        let quoted = ip_packet(CLIENT, SERVER, IPPROTO_TCP, 3, &original);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..28]); // the quoted IP header and 8 bytes of TCP, as the kernel sends
        let event = Decoder::new().decode(&frame(SERVER, CLIENT, IPPROTO_ICMP, 9, &icmp), false).unwrap();
        assert_eq!(event.protocol, IpProtocol::Known(Protocol::Icmp));
        assert_eq!((event.src, event.dst, event.ip_id), (IpAddr::V4(SERVER), IpAddr::V4(CLIENT), 9));
        assert_eq!(event.options, "10.0.0.2 tcp port 9000 unreachable");
        assert_eq!((event.sport, event.dport, event.flags), (0, 0, 0));
    }

    #[test]
    fn icmp_unreachable_codes_read_as_tcpdump_prints_them() {
        let quoted = ip_packet(CLIENT, SERVER, IPPROTO_TCP, 3, &[0x9c, 0x40, 0x23, 0x28, 0, 0, 0, 1]);
        let text = |code: u8| {
            let mut icmp = vec![3, code, 0, 0, 0, 0, 0x05, 0x78];
            icmp.extend_from_slice(&quoted);
            Decoder::new().decode(&frame(SERVER, CLIENT, IPPROTO_ICMP, 0, &icmp), false).unwrap().options
        };
        assert_eq!(text(1), "host 10.0.0.2 unreachable");
        assert_eq!(text(4), "10.0.0.2 unreachable - need to frag (mtu 1400)");
        assert_eq!(text(10), "host 10.0.0.2 unreachable - admin prohibited");
        assert_eq!(text(13), "host 10.0.0.2 unreachable - admin prohibited filter");
    }

    #[test]
    fn icmp_echo_and_udp() {
        let echo = [8, 0, 0, 0, 0, 7, 0, 1, 1, 2, 3, 4];
        let event = Decoder::new().decode(&frame(CLIENT, SERVER, IPPROTO_ICMP, 0, &echo), true).unwrap();
        assert_eq!(event.options, "echo request, id 7, seq 1, length 12");

        let udp = [0x13, 0x88, 0x00, 0x35, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o'];
        let event = Decoder::new().decode(&frame(CLIENT, SERVER, IPPROTO_UDP, 0, &udp), true).unwrap();
        assert_eq!(
            (event.protocol, event.sport, event.dport, event.len),
            (IpProtocol::Known(Protocol::Udp), 5000, 53, 5)
        );
        assert_eq!(event.options, "5000 > 53, length 5");
    }

    #[test]
    fn non_ipv4_and_truncated_frames_are_skipped() {
        let mut decoder = Decoder::new();
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(decoder.decode(&arp, true), None);

        // A multicast listener report, with its hop-by-hop header (router alert), from `::`: a host's own.
        let mut hop_by_hop = vec![IPPROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0];
        hop_by_hop.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1]);
        let report = frame6(Ipv6Addr::UNSPECIFIED, "ff02::16".parse().unwrap(), IPV6_HOP_BY_HOP, &hop_by_hop);
        assert_eq!(decoder.decode(&report, true), None, "MLD report");
        let solicitation = frame6(CLIENT6, SERVER6, IPPROTO_ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decoder.decode(&solicitation, true), None, "neighbour solicitation");
        assert_eq!(decoder.decode(&report[..14 + 39], true), None, "IPv6 header cut short");

        let whole = syn(40000, 1);
        assert_eq!(decoder.decode(&whole[..14 + 20 + 10], true), None, "TCP header cut short");
        assert_eq!(decoder.decode(&whole[..10], true), None, "Ethernet header cut short");
    }

    #[test]
    fn decimals_are_written_as_format_writes_them() {
        for n in [0, 7, 10, 99, 100, 4_294_967_295, 3_567_674_727, 1_000_000_000] {
            let mut out = String::from("x");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn ethernet_padding_does_not_count_as_payload() {
        let mut padded = frame(
            CLIENT,
            SERVER,
            IPPROTO_TCP,
            0,
            &tcp(&Segment { sport: 1, dport: 2, seq: 0, ack: 0, flags: 0x10, window: 1, options: &[], data: &[] }),
        );
        padded.resize(60, 0);
        let event = Decoder::new().decode(&padded, false).unwrap();
        assert_eq!(event.len, 0);
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut packet = frame(CLIENT, SERVER, IPPROTO_UDP, 42, &[0u8; 16]);
        packet[14 + 6] = 0x00;
        packet[14 + 7] = 0xb9; // offset 185 (1480 bytes)
        let event = Decoder::new().decode(&packet, true).unwrap();
        assert_eq!((event.sport, event.dport), (0, 0));
        assert_eq!(event.options, "frag 42:16@1480");
    }
}

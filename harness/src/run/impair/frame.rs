//! The raw Ethernet / IPv4 / TCP fields the wire tracks connections by and forges segments from, Internet
//! checksums, and the bit flip that corrupts a frame (pure, no I/O).

use std::net::Ipv4Addr;
use std::ops::Range;

use crate::observe::decode::{be16, be32, ipv4};

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
/// TCP option kinds.
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_WINDOW_SCALE: u8 = 3;
const OPTION_TIMESTAMPS: u8 = 8;
/// The TTL Linux gives its own packets (`net.ipv4.ip_default_ttl`).
const DEFAULT_TTL: u8 = 64;
/// IPv4 "don't fragment", as Linux sets it on TCP.
const DONT_FRAGMENT: u16 = 0x4000;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// One TCP segment's header fields, sequence numbers absolute, as they are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field, unscaled.
    pub window: u16,
    pub payload_len: u32,
    /// The window scale option (SYN and SYN-ACK only).
    pub window_scale: Option<u8>,
    /// The maximum segment size option (SYN and SYN-ACK only): the largest payload the sender will take.
    pub mss: Option<u16>,
    /// The timestamps option: (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

impl TcpSegment {
    /// The sequence number after this segment: its payload, SYN and FIN each count.
    pub fn end_seq(&self) -> u32 {
        let control = u32::from(self.flags & TCP_SYN != 0) + u32::from(self.flags & TCP_FIN != 0);
        self.seq.wrapping_add(self.payload_len).wrapping_add(control)
    }

    /// Reads the segment from an Ethernet frame; `None` for anything but an unfragmented IPv4 TCP segment
    /// with complete headers.
    pub fn parse(frame: &[u8]) -> Option<TcpSegment> {
        let (ip, tcp) = ip_and_transport(frame, IPPROTO_TCP)?;
        let header_len = usize::from(*tcp.get(12)? >> 4) * 4;
        if header_len < TCP_HEADER_LEN || tcp.len() < header_len {
            return None;
        }
        let total_len = usize::from(be16(ip, 2)?);
        let ip_header_len = usize::from(ip[0] & 0x0f) * 4;
        let payload_len = total_len.checked_sub(ip_header_len + header_len)? as u32;
        let mut segment = TcpSegment {
            src_mac: frame.get(6..12)?.try_into().ok()?,
            dst_mac: frame.get(0..6)?.try_into().ok()?,
            src: ipv4(ip, 12)?,
            dst: ipv4(ip, 16)?,
            sport: be16(tcp, 0)?,
            dport: be16(tcp, 2)?,
            seq: be32(tcp, 4)?,
            ack: be32(tcp, 8)?,
            flags: tcp[13],
            window: be16(tcp, 14)?,
            payload_len,
            window_scale: None,
            mss: None,
            timestamps: None,
        };
        let mut options = &tcp[TCP_HEADER_LEN..header_len];
        while let Some(&kind) = options.first() {
            match kind {
                OPTION_END => break,
                OPTION_NOP => options = &options[1..],
                _ => {
                    let len = usize::from(*options.get(1)?);
                    if len < 2 || len > options.len() {
                        break;
                    }
                    match (kind, len) {
                        (OPTION_WINDOW_SCALE, 3) => segment.window_scale = Some(options[2]),
                        (OPTION_MSS, 4) => segment.mss = be16(options, 2),
                        (OPTION_TIMESTAMPS, 10) => {
                            segment.timestamps = Some((be32(options, 2)?, be32(options, 6)?));
                        }
                        _ => {}
                    }
                    options = &options[len..];
                }
            }
        }
        Some(segment)
    }
}

/// The IPv4 header and the transport bytes after it (cut to the IP total length) of an unfragmented IPv4
/// frame carrying `protocol`.
fn ip_and_transport(frame: &[u8], protocol: u8) -> Option<(&[u8], &[u8])> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let header_len = usize::from(*ip.first()? & 0x0f) * 4;
    let total_len = usize::from(be16(ip, 2)?);
    let fragment = be16(ip, 6)? & 0x3fff;
    if ip[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN || fragment != 0 || ip[9] != protocol {
        return None;
    }
    let transport = ip.get(header_len..total_len.min(ip.len()))?;
    Some((ip, transport))
}

/// The IPv4 protocol number of a frame that is IPv4 and its payload: after the UDP header for an unfragmented
/// UDP datagram (its source port may be any), after the IPv4 header otherwise.
pub fn datagram_payload(frame: &[u8]) -> Option<(u8, &[u8])> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let protocol = *ip.get(9)?;
    if let Some((_, udp)) = ip_and_transport(frame, IPPROTO_UDP) {
        return Some((protocol, udp.get(8..)?));
    }
    let header_len = usize::from(*ip.first()? & 0x0f) * 4;
    let total_len = usize::from(be16(ip, 2)?);
    Some((protocol, ip.get(header_len..total_len.min(ip.len())).unwrap_or_default()))
}

/// Where the transport segment (TCP or UDP header and payload) of an IPv4 frame lies in the frame: the bytes
/// whose checksum the receiver verifies. `None` for other frames.
pub fn transport_range(frame: &[u8]) -> Option<Range<usize>> {
    let protocol = *frame.get(ETHERNET_HEADER_LEN + 9)?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let (ip, transport) = ip_and_transport(frame, protocol)?;
    let start = ETHERNET_HEADER_LEN + usize::from(ip[0] & 0x0f) * 4;
    Some(start..start + transport.len())
}

/// Flips bit `bit` (counted over `range`, wrapped into it) of the frame: the segment's checksum no longer holds,
/// so the receiver drops it and counts it (`nstat` TcpInCsumErrors / UdpInCsumErrors). Returns the byte offset
/// into the segment and the bit within that byte.
pub fn flip_bit(frame: &mut [u8], range: Range<usize>, bit: u64) -> (usize, u8) {
    let bits = (range.len() as u64) * 8;
    let bit = bit % bits.max(1);
    let offset = (bit / 8) as usize;
    let within = (bit % 8) as u8;
    if let Some(byte) = frame.get_mut(range.start + offset) {
        *byte ^= 1 << within;
    }
    (offset, within)
}

/// The Ethernet frame of a segment with `header`'s addresses, ports, numbers, flags, window and timestamps
/// and MSS options (its `payload_len` and `window_scale` are not used), IP id `ip_id`, carrying `payload`, IPv4 and TCP
/// checksums correct: a segment the receiver's stack takes as its peer's.
pub fn forge(header: &TcpSegment, ip_id: u16, payload: &[u8]) -> Vec<u8> {
    let options_len = if header.timestamps.is_some() { 12 } else { 0 } + if header.mss.is_some() { 4 } else { 0 };
    let tcp_len = TCP_HEADER_LEN + options_len + payload.len();
    let total_len = IPV4_HEADER_LEN + tcp_len;
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + total_len);
    frame.extend_from_slice(&header.dst_mac);
    frame.extend_from_slice(&header.src_mac);
    frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&(total_len as u16).to_be_bytes());
    frame.extend_from_slice(&ip_id.to_be_bytes());
    frame.extend_from_slice(&DONT_FRAGMENT.to_be_bytes());
    frame.extend_from_slice(&[DEFAULT_TTL, IPPROTO_TCP, 0, 0]);
    frame.extend_from_slice(&header.src.octets());
    frame.extend_from_slice(&header.dst.octets());
    let ip_checksum = checksum(&frame[ip_start..], 0);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&ip_checksum.to_be_bytes());

    let tcp_start = frame.len();
    frame.extend_from_slice(&header.sport.to_be_bytes());
    frame.extend_from_slice(&header.dport.to_be_bytes());
    frame.extend_from_slice(&header.seq.to_be_bytes());
    frame.extend_from_slice(&header.ack.to_be_bytes());
    frame.push((((TCP_HEADER_LEN + options_len) / 4) as u8) << 4);
    frame.push(header.flags);
    frame.extend_from_slice(&header.window.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    if let Some(mss) = header.mss {
        frame.extend_from_slice(&[OPTION_MSS, 4]);
        frame.extend_from_slice(&mss.to_be_bytes());
    }
    if let Some((value, echo)) = header.timestamps {
        frame.extend_from_slice(&[OPTION_NOP, OPTION_NOP, OPTION_TIMESTAMPS, 10]);
        frame.extend_from_slice(&value.to_be_bytes());
        frame.extend_from_slice(&echo.to_be_bytes());
    }
    frame.extend_from_slice(payload);
    let tcp_checksum = checksum(&frame[tcp_start..], pseudo_header_sum(header.src, header.dst, tcp_len));
    frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&tcp_checksum.to_be_bytes());
    frame
}

/// A client-to-server `P.` segment with timestamps, for tests of what reads and acts on frames.
#[cfg(test)]
pub fn sample_header() -> TcpSegment {
    TcpSegment {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 0, 0, 2),
        sport: 40000,
        dport: 9000,
        seq: 0xffff_fff0,
        ack: 1234,
        flags: TCP_PSH | TCP_ACK,
        window: 502,
        payload_len: 0,
        window_scale: None,
        mss: None,
        timestamps: Some((100, 200)),
    }
}

/// An IPv4 UDP frame carrying `payload` (checksums left zero), for tests of what names packets.
#[cfg(test)]
pub fn udp_frame_for_tests(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + 8];
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    frame[14] = 0x45;
    let total_len = (IPV4_HEADER_LEN + 8 + payload.len()) as u16;
    frame[16..18].copy_from_slice(&total_len.to_be_bytes());
    frame[14 + 9] = IPPROTO_UDP;
    frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
    frame[36..38].copy_from_slice(&9000u16.to_be_bytes());
    frame[38..40].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The sum of the IPv4 pseudo-header a TCP checksum covers.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, transport_len: usize) -> u32 {
    let words = |address: Ipv4Addr| {
        let o = address.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    words(src) + words(dst) + u32::from(IPPROTO_TCP) + transport_len as u32
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from a partial sum.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the TCP checksum of an IPv4 TCP frame holds, as the receiver checks it.
#[cfg(test)]
pub fn tcp_checksum_holds(frame: &[u8]) -> bool {
    let Some((ip, tcp)) = ip_and_transport(frame, IPPROTO_TCP) else { return false };
    let (Some(src), Some(dst)) = (ipv4(ip, 12), ipv4(ip, 16)) else { return false };
    checksum(tcp, pseudo_header_sum(src, dst, tcp.len())) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_segment_parses_back_with_valid_checksums() {
        let frame = forge(&sample_header(), 7, b"forged!");
        assert_eq!(frame.len(), 14 + 20 + 32 + 7);
        assert_eq!(checksum(&frame[14..34], 0), 0, "IPv4 header checksum");
        assert!(tcp_checksum_holds(&frame));
        let segment = TcpSegment::parse(&frame).unwrap();
        assert_eq!((segment.sport, segment.dport, segment.seq, segment.ack), (40000, 9000, 0xffff_fff0, 1234));
        assert_eq!((segment.flags, segment.window, segment.payload_len), (TCP_PSH | TCP_ACK, 502, 7));
        assert_eq!(segment.timestamps, Some((100, 200)));
        assert_eq!(segment.end_seq(), 0xffff_fff7, "wraps around 2^32");
        assert_eq!(segment.src_mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn an_odd_length_rst_without_options_checks_out() {
        let rst = TcpSegment { flags: TCP_RST | TCP_ACK, timestamps: None, ..sample_header() };
        let frame = forge(&rst, 7, &[0xab]);
        assert!(tcp_checksum_holds(&frame));
        let segment = TcpSegment::parse(&frame).unwrap();
        assert_eq!(segment.timestamps, None);
        assert_eq!(segment.end_seq(), 0xffff_fff1);
    }

    #[test]
    fn any_flipped_bit_of_the_segment_breaks_its_checksum_and_only_that_bit_changes() {
        let original = forge(&sample_header(), 7, b"forged!");
        let range = transport_range(&original).unwrap();
        assert_eq!(range, 34..original.len());
        for bit in 0..(range.len() as u64 * 8) {
            let mut frame = original.clone();
            let (offset, within) = flip_bit(&mut frame, range.clone(), bit);
            assert_eq!((offset as u64) * 8 + u64::from(within), bit);
            assert!(!tcp_checksum_holds(&frame), "bit {bit}");
            let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != original[i]).collect();
            assert_eq!(changed, vec![range.start + offset]);
        }
    }

    #[test]
    fn window_scale_mss_and_syn_are_read_from_a_syn() {
        let syn = TcpSegment { flags: TCP_SYN, timestamps: None, mss: Some(1460), ..sample_header() };
        let mut frame = forge(&syn, 7, &[]);
        // After the forged MSS option, a window scale option by hand (nop, wscale 7), the lengths fixed.
        frame.extend_from_slice(&[OPTION_NOP, OPTION_WINDOW_SCALE, 3, 7]);
        frame[14 + 3] += 4;
        frame[34 + 12] = 7 << 4;
        let segment = TcpSegment::parse(&frame).unwrap();
        assert_eq!(segment.window_scale, Some(7));
        assert_eq!(segment.mss, Some(1460));
        assert_eq!(segment.end_seq(), 0xffff_fff1, "a SYN takes one sequence number");
    }

    #[test]
    fn other_frames_are_not_tcp_segments() {
        let arp = [0xffu8; 42];
        assert!(TcpSegment::parse(&arp).is_none());
        assert!(transport_range(&arp).is_none());
        let mut fragment = forge(&sample_header(), 7, b"forged!");
        fragment[14 + 6] = 0x20; // more fragments
        assert!(TcpSegment::parse(&fragment).is_none());
    }
}

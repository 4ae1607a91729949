//! Which packet is which, named the same way in every run: a TCP segment by its connection's number on the
//! wire, its sender, the MSS-sized block of the sender's stream it starts nearest to (sequence numbers
//! relative to the sender's ISN), its length and control flags (and, for a segment that takes no sequence
//! space, its relative acknowledgement), and how many times the wire has seen that same segment before; any
//! other IPv4 packet by a digest of its payload and its occurrence.
//!
//! The impairments draw their decisions from this key and the seed rather than from the order packets arrive
//! in: TCP sends a different number of packets from run to run (a retransmission more, an ACK less), and a
//! segment both runs send must meet the same fate in both. The kernel randomizes each connection's ISN, hence
//! numbers relative to the SYN's, and each client port, hence connections numbered in the order the wire saw
//! their handshakes. Blocks rather than sequence numbers, because TCP cuts a bulk stream differently from run
//! to run (a write that waits for buffer space first pushes the segment it has half filled), and after one
//! short segment every later one starts elsewhere: the segment covering the same bytes keeps its name.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use super::frame::{self, TcpSegment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use super::rng;
use crate::scenario::plan::HostId;
use crate::timeline::PacketKey;

/// The flags that make a segment what it is: PSH, URG, ECE and CWR may differ between a segment and its
/// retransmission.
const IDENTITY_FLAGS: u8 = TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK;

/// A packet as the impairments see it: its key, the key hashed (what its draws come from), and its place in
/// a sequential model's order (Gilbert-Elliott).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub key: PacketKey,
    pub hash: u64,
    pub place: Place,
}

/// Where a packet stands in the order a sequential model steps through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The first time the wire sees this part of the sender's stream (new data, in sequence order for one TCP
    /// direction) or this packet: the model steps. The number names the place.
    New(u64),
    /// A part of the stream, or a packet, seen before (a retransmission, even cut differently): the place of
    /// the packet it repeats.
    Again(u64),
}

/// What the wire has seen, to name the next packet: connections with their numbers and ISNs, and how often
/// each packet has come.
#[derive(Debug, Default)]
pub struct Identities {
    /// By (client address, client port, server address, server port): the side that sent the first SYN is
    /// whoever the wire's direction says sent it.
    connections: HashMap<(Ipv4Addr, u16, Ipv4Addr, u16), Connection>,
    /// Connections numbered so far.
    numbered: u32,
    occurrences: Occurrences,
}

/// One TCP connection as the wire names its segments.
#[derive(Debug)]
struct Connection {
    number: u32,
    /// Each side's initial sequence number, by `HostId::index()` of the sender (client, server).
    isn: [Option<u32>; 2],
    /// The relative sequence number after the furthest segment each side has sent.
    furthest: [u32; 2],
    /// Each side's new segments by relative start, with the place they took.
    places: [BTreeMap<u32, u64>; 2],
    /// What each side's SYN announced: its MSS option, and whether it carried timestamps.
    mss: [Option<u16>; 2],
    timestamps: [bool; 2],
}

/// The TCP timestamps option as every segment carries it once both SYNs agreed on it (with two NOPs).
const TIMESTAMPS_LEN: u32 = 12;

impl Connection {
    fn new(number: u32) -> Connection {
        Connection {
            number,
            isn: [None; 2],
            furthest: [0; 2],
            places: [BTreeMap::new(), BTreeMap::new()],
            mss: [None; 2],
            timestamps: [false; 2],
        }
    }

    /// The largest payload side `side` sends: the MSS its peer announced, less the timestamps both use; 1 (every
    /// sequence number its own block) before the peer's SYN is seen.
    fn block(&self, side: usize) -> u32 {
        let options = if self.timestamps == [true, true] { TIMESTAMPS_LEN } else { 0 };
        self.mss[1 - side].map_or(1, |mss| u32::from(mss).saturating_sub(options).max(1))
    }
}

impl Identities {
    /// Names `frame`, which `from` sent: `None` for a frame that is not IPv4 (ARP), which no impairment takes.
    pub fn identify(&mut self, from: HostId, frame: &[u8]) -> Option<Identity> {
        match TcpSegment::parse(frame) {
            Some(segment) => Some(self.segment(from, &segment)),
            None => {
                let (protocol, payload) = frame::datagram_payload(frame)?;
                let key = PacketKey::Datagram { from, protocol, digest: rng::digest(payload), occurrence: 0 };
                Some(self.occurrences.count(key, None))
            }
        }
    }

    fn segment(&mut self, from: HostId, segment: &TcpSegment) -> Identity {
        let side = usize::from(from == HostId::Server);
        let ends = if from == HostId::Server {
            (segment.dst, segment.dport, segment.src, segment.sport)
        } else {
            (segment.src, segment.sport, segment.dst, segment.dport)
        };
        let flags = segment.flags & IDENTITY_FLAGS;
        let opening = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let numbered = &mut self.numbered;
        let connection = match self.connections.entry(ends) {
            Entry::Occupied(entry) => {
                let connection = entry.into_mut();
                // A SYN with another ISN on the same ports opens a new connection.
                if opening && connection.isn[side].is_some_and(|isn| isn != segment.seq) {
                    *numbered += 1;
                    *connection = Connection::new(*numbered);
                }
                connection
            }
            Entry::Vacant(entry) => {
                *numbered += 1;
                entry.insert(Connection::new(*numbered))
            }
        };
        if flags & TCP_SYN != 0 {
            connection.mss[side] = segment.mss;
            connection.timestamps[side] = segment.timestamps.is_some();
        }
        // Without a SYN seen (a connection older than the wire), numbers count from the first segment seen.
        let isn = *connection.isn[side].get_or_insert(segment.seq);
        let seq = segment.seq.wrapping_sub(isn);
        let takes_space = segment.payload_len > 0 || flags & (TCP_SYN | TCP_FIN) != 0;
        let ack = (!takes_space).then(|| match connection.isn[1 - side] {
            Some(peer_isn) if flags & TCP_ACK != 0 => segment.ack.wrapping_sub(peer_isn),
            _ => 0,
        });
        let block = connection.block(side);
        let key = PacketKey::Tcp {
            connection: connection.number,
            from,
            block: ((u64::from(seq) + u64::from(block / 2)) / u64::from(block)) as u32,
            ack,
            len: segment.payload_len,
            flags,
            occurrence: 0,
        };
        if !takes_space {
            return self.occurrences.count(key, None);
        }
        // New data comes in sequence order; anything starting before the furthest byte sent is sent again.
        let new = seq.wrapping_sub(connection.furthest[side]) as i32 >= 0;
        let again = if new { None } else { connection.places[side].range(..=seq).next_back().map(|(_, p)| *p) };
        let identity = self.occurrences.count(key, again.map(Place::Again));
        if let (true, Place::New(place)) = (new, identity.place) {
            connection.places[side].insert(seq, place);
            connection.furthest[side] = seq.wrapping_add(segment.end_seq().wrapping_sub(segment.seq));
        }
        identity
    }
}

/// How many times each packet (its key with occurrence 0) has come.
#[derive(Debug, Default)]
struct Occurrences(HashMap<PacketKey, u32>);

impl Occurrences {
    /// Counts `key` and gives it its occurrence, hash and place: `again` when the caller knows which place it
    /// repeats, otherwise new the first time and the first one's place after.
    fn count(&mut self, key: PacketKey, again: Option<Place>) -> Identity {
        let count = self.0.entry(key).or_insert(0);
        *count += 1;
        let occurrence = *count;
        let first = rng::key_hash(&with_occurrence(key, 1));
        let key = with_occurrence(key, occurrence);
        let place = again.unwrap_or(if occurrence == 1 { Place::New(first) } else { Place::Again(first) });
        Identity { key, hash: rng::key_hash(&key), place }
    }
}

fn with_occurrence(key: PacketKey, n: u32) -> PacketKey {
    match key {
        PacketKey::Tcp { connection, from, block, ack, len, flags, .. } => {
            PacketKey::Tcp { connection, from, block, ack, len, flags, occurrence: n }
        }
        PacketKey::Datagram { from, protocol, digest, .. } => {
            PacketKey::Datagram { from, protocol, digest, occurrence: n }
        }
        forged @ PacketKey::Forged { .. } => forged,
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{forge, sample_header, TCP_PSH};
    use super::*;

    /// A segment `from` sends on the connection with client port `port`, absolute numbers; SYNs announce an
    /// MSS of 1460, and every segment carries timestamps.
    fn frame(from: HostId, port: u16, seq: u32, ack: u32, flags: u8, len: usize) -> Vec<u8> {
        let client = TcpSegment { mss: (flags & TCP_SYN != 0).then_some(1460), ..sample_header() };
        let header = if from == HostId::Client {
            TcpSegment { sport: port, seq, ack, flags, ..client }
        } else {
            TcpSegment {
                src: client.dst,
                dst: client.src,
                sport: client.dport,
                dport: port,
                src_mac: client.dst_mac,
                dst_mac: client.src_mac,
                seq,
                ack,
                flags,
                ..client
            }
        };
        forge(&header, 1, &vec![7; len])
    }

    /// The keys of a handshake and `segments` (relative start, length, PSH or not) of client data, with the
    /// given ISNs and client port.
    fn keys(client_isn: u32, server_isn: u32, port: u16, segments: &[(u32, usize, u8)]) -> Vec<Identity> {
        let mut identities = Identities::default();
        let mut frames = vec![
            frame(HostId::Client, port, client_isn, 0, TCP_SYN, 0),
            frame(HostId::Server, port, server_isn, client_isn + 1, TCP_SYN | TCP_ACK, 0),
            frame(HostId::Client, port, client_isn + 1, server_isn + 1, TCP_ACK, 0),
        ];
        let from = [HostId::Client, HostId::Server, HostId::Client];
        let mut senders = from.to_vec();
        for &(seq, len, psh) in segments {
            frames.push(frame(HostId::Client, port, client_isn.wrapping_add(seq), server_isn + 1, TCP_ACK | psh, len));
            senders.push(HostId::Client);
        }
        frames.iter().zip(senders).map(|(frame, from)| identities.identify(from, frame).unwrap()).collect()
    }

    #[test]
    fn segments_are_named_relative_to_their_isns_whatever_the_kernel_drew() {
        let segments = [(1, 1448, 0), (1449, 1448, TCP_PSH)];
        let a = keys(1_000, 50_000, 40_000, &segments);
        let b = keys(0xffff_ff00, 7, 51_234, &segments);
        assert_eq!(a, b, "other ISNs (one wrapping around 2^32) and another client port, the same names");
        assert_eq!(
            a[4].key,
            PacketKey::Tcp {
                connection: 1,
                from: HostId::Client,
                block: 1,
                ack: None,
                len: 1448,
                flags: TCP_ACK,
                occurrence: 1
            }
        );
        let PacketKey::Tcp { ack, .. } = a[2].key else { panic!("{:?}", a[2]) };
        assert_eq!(ack, Some(1), "a pure ACK is told apart by what it acknowledges");
        let PacketKey::Tcp { ack, .. } = a[1].key else { panic!("{:?}", a[1]) };
        assert_eq!(ack, None, "a SYN-ACK takes sequence space");
    }

    #[test]
    fn a_retransmission_is_the_same_segment_seen_again_and_takes_the_originals_place() {
        // 1 and 1449 sent, 1 retransmitted with PSH, then retransmitted again cut differently (2896 bytes from
        // 1: collapsed), then new data.
        let ids =
            keys(9, 99, 40_000, &[(1, 1448, 0), (1449, 1448, 0), (1, 1448, TCP_PSH), (1, 2896, 0), (2897, 100, 0)]);
        let (first, second, again, collapsed, next) = (ids[3], ids[4], ids[5], ids[6], ids[7]);
        let occurrence = |identity: Identity| match identity.key {
            PacketKey::Tcp { occurrence, .. } => occurrence,
            _ => panic!("{identity:?}"),
        };
        assert_eq!((occurrence(first), occurrence(again), occurrence(collapsed)), (1, 2, 1));
        assert_ne!(first.hash, again.hash, "a retransmission draws afresh");
        let Place::New(original) = first.place else { panic!("{first:?}") };
        assert_eq!(again.place, Place::Again(original));
        assert_eq!(collapsed.place, Place::Again(original), "cut differently, still data seen before");
        assert!(matches!(second.place, Place::New(p) if p != original));
        assert!(matches!(next.place, Place::New(_)));
    }

    #[test]
    fn connections_are_numbered_in_the_order_their_handshakes_came() {
        let mut identities = Identities::default();
        let first = identities.identify(HostId::Client, &frame(HostId::Client, 40_000, 5, 0, TCP_SYN, 0)).unwrap();
        let second = identities.identify(HostId::Client, &frame(HostId::Client, 40_001, 5, 0, TCP_SYN, 0)).unwrap();
        let retried = identities.identify(HostId::Client, &frame(HostId::Client, 40_000, 5, 0, TCP_SYN, 0)).unwrap();
        let reused = identities.identify(HostId::Client, &frame(HostId::Client, 40_000, 77, 0, TCP_SYN, 0)).unwrap();
        let number = |identity: Identity| match identity.key {
            PacketKey::Tcp { connection, occurrence, .. } => (connection, occurrence),
            _ => panic!("{identity:?}"),
        };
        assert_eq!(
            [number(first), number(second), number(retried), number(reused)],
            [(1, 1), (2, 1), (1, 2), (3, 1)],
            "a retransmitted SYN is the same connection; a new ISN on the same ports a new one"
        );
    }

    #[test]
    fn datagrams_are_named_by_their_payload_and_occurrence() {
        let mut identities = Identities::default();
        let udp = |payload: &[u8]| frame::udp_frame_for_tests(payload);
        let a = identities.identify(HostId::Client, &udp(b"datagram 1")).unwrap();
        let b = identities.identify(HostId::Client, &udp(b"datagram 2")).unwrap();
        let a_again = identities.identify(HostId::Client, &udp(b"datagram 1")).unwrap();
        assert_ne!(a.hash, b.hash);
        assert!(matches!(a_again.key, PacketKey::Datagram { occurrence: 2, .. }));
        let Place::New(place) = a.place else { panic!("{a:?}") };
        assert_eq!(a_again.place, Place::Again(place));
        assert!(identities.identify(HostId::Client, &[0xff; 42]).is_none(), "ARP is not named");
    }

    #[test]
    fn a_stream_cut_elsewhere_keeps_the_names_of_the_segments_covering_the_same_bytes() {
        // The second run pushed a 1256-byte segment in the middle of a write: every later segment starts 1256
        // bytes further into its block of 1448 (1460 less 12 for timestamps), and still names that block.
        let whole: Vec<(u32, usize, u8)> = (0..8).map(|i| (1 + 1448 * i, 1448, 0)).collect();
        let mut cut: Vec<(u32, usize, u8)> = (0..3).map(|i| (1 + 1448 * i, 1448, 0)).collect();
        cut.push((1 + 1448 * 3, 1256, TCP_PSH));
        cut.extend((0..4).map(|i| (1 + 1448 * 3 + 1256 + 1448 * i, 1448, 0)));
        let names = |segments: &[(u32, usize, u8)]| -> Vec<PacketKey> {
            keys(5, 6, 40_000, segments).into_iter().skip(3).map(|identity| identity.key).collect()
        };
        let (whole, cut) = (names(&whole), names(&cut));
        let blocks = |keys: &[PacketKey]| -> Vec<(u32, u32)> {
            keys.iter()
                .map(|key| match key {
                    PacketKey::Tcp { block, len, .. } => (*block, *len),
                    _ => panic!("{key:?}"),
                })
                .collect()
        };
        assert_eq!(blocks(&whole), (0..8).map(|i| (i, 1448)).collect::<Vec<_>>());
        assert_eq!(
            blocks(&cut),
            [(0, 1448), (1, 1448), (2, 1448), (3, 1256), (4, 1448), (5, 1448), (6, 1448), (7, 1448)]
        );
        let both = cut.iter().filter(|key| whole.contains(key)).count();
        assert_eq!(both, 7, "all but the short segment are the same packets in both runs");
    }
}

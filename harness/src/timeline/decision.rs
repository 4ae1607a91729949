//! The impairments' decisions as the timeline records them: what the wire did to which packet, by which fault,
//! as plain data (result.json's decision list, the packets' marks, and the records a pcapng writer can turn
//! into packet comments).

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::PacketEvent;
use crate::scenario::impairment::{InjectedSegment, InjectedSeq, Injection};
use crate::scenario::plan::HostId;

/// One decision of the wire's impairments, with the packet it was about as the captures decode it.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ImpairmentEvent {
    /// The host the packet was travelling to.
    pub toward: HostId,
    /// The packet's number (from 1) among those the fault selected, in the order they reached the wire.
    pub n: u64,
    #[serde(flatten)]
    pub decision: Decision,
    pub packet: Option<PacketEvent>,
}

/// What the wire did to a packet, and why: one entry of the run's decision list.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum DecisionKind {
    Lost,
    /// Flipped bit `bit` of byte `byte` of the TCP/UDP segment.
    Corrupted {
        byte: usize,
        bit: u8,
    },
    Duplicated,
    /// Held for `by` (jitter included; in-order waiting and queueing are not decisions and not counted).
    Delayed {
        /// Microseconds.
        #[serde(serialize_with = "serialize_micros")]
        #[schemars(with = "u64")]
        by: Duration,
    },
    /// Held back until `gap` later packets went past (or its time ran out).
    Reordered {
        gap: u32,
    },
    /// The rate limit's queue was full.
    QueueFull,
    /// A forged segment: what and where in the window.
    Injected {
        segment: InjectedSegment,
        seq: InjectedSeq,
    },
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionKind::Lost => f.write_str("lost"),
            DecisionKind::Corrupted { byte, bit } => write!(f, "corrupted (bit {bit} of segment byte {byte})"),
            DecisionKind::Duplicated => f.write_str("duplicated"),
            DecisionKind::Delayed { by } => write!(f, "delayed {:.3}ms", by.as_secs_f64() * 1e3),
            DecisionKind::Reordered { gap } => write!(f, "held back behind {gap} packets"),
            DecisionKind::QueueFull => f.write_str("dropped: rate queue full"),
            DecisionKind::Injected { segment, seq } => {
                write!(f, "forged {}", Injection { segment: *segment, seq: *seq })
            }
        }
    }
}

/// A decision of a fault about one packet, named as every run that sends that packet names it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Decision {
    pub fault: String,
    pub key: PacketKey,
    #[serde(flatten)]
    pub kind: DecisionKind,
}

/// Which packet a decision was about, independent of when it arrived and of how many packets came before it:
/// two runs that send the same segment name it the same way, so its decisions (drawn from this key and the
/// seed) are the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PacketKey {
    /// A TCP segment.
    Tcp {
        /// The connection's number on this wire: 1 for the first handshake the wire saw, 2 for the next, ...
        connection: u32,
        /// The host that sent it.
        from: HostId,
        /// Which MSS-sized block of the sender's stream the segment starts nearest to: its sequence number
        /// relative to the sender's ISN (as tcpdump prints it without -S) plus half a block, divided by the
        /// block (the payload the peer's SYN allows: its MSS option, less 12 bytes when both SYNs carried
        /// timestamps). Two runs that cut the stream at different places (a short segment pushed in the middle
        /// of a write, when the writer waited) so name alike the segments covering the same bytes; the sequence
        /// number itself when no SYN was seen.
        block: u32,
        /// Relative to the peer's initial sequence number; only for segments that take no sequence space (a
        /// pure ACK or a RST), which their acknowledgement tells apart. A retransmission may carry a newer one.
        #[serde(skip_serializing_if = "Option::is_none")]
        ack: Option<u32>,
        /// Payload bytes.
        len: u32,
        /// SYN, FIN, RST and ACK as tcpdump prints them (PSH, URG, ECE and CWR left out: a retransmission may
        /// carry others than the original).
        #[serde(serialize_with = "serialize_flags")]
        #[schemars(with = "String")]
        flags: u8,
        /// 1 the first time the wire saw this segment, 2 for its first retransmission, ...
        occurrence: u32,
    },
    /// Any other IPv4 packet (UDP, ICMP): a digest of its transport payload.
    Datagram {
        from: HostId,
        /// The IPv4 protocol number.
        protocol: u8,
        /// FNV-1a of the payload after the UDP header (after the IPv4 header for other protocols), in hex.
        #[serde(serialize_with = "serialize_hex")]
        #[schemars(with = "String")]
        digest: u64,
        /// 1 the first time the wire saw this payload from this host, 2 the next, ...
        occurrence: u32,
    },
    /// A segment an injection forged: the how-manieth it forged.
    Forged { number: u64 },
}

impl fmt::Display for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketKey::Tcp { connection, from, block, ack, len, flags, occurrence } => {
                write!(f, "#{connection} {from} [{}] block {block}", super::format_tcp_flags(*flags))?;
                if let Some(ack) = ack {
                    write!(f, " ack {ack}")?;
                }
                write!(f, " length {len} (seen {occurrence})")
            }
            PacketKey::Datagram { from, protocol, digest, occurrence } => {
                write!(f, "{from} protocol {protocol} payload {digest:016x} (seen {occurrence})")
            }
            PacketKey::Forged { number } => write!(f, "forged #{number}"),
        }
    }
}

fn serialize_flags<S: serde::Serializer>(flags: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::format_tcp_flags(*flags))
}

fn serialize_hex<S: serde::Serializer>(digest: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{digest:016x}"))
}

/// A duration as whole microseconds, for decisions in result.json.
fn serialize_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels timeline.txt, the ladder and the pcapng packet comments show.
    #[test]
    fn each_decision_reads_as_what_the_wire_did() {
        let labels = [
            (DecisionKind::Lost, "lost"),
            (DecisionKind::Corrupted { byte: 13, bit: 2 }, "corrupted (bit 2 of segment byte 13)"),
            (DecisionKind::Duplicated, "duplicated"),
            (DecisionKind::Delayed { by: Duration::from_micros(102_117) }, "delayed 102.117ms"),
            (DecisionKind::Reordered { gap: 5 }, "held back behind 5 packets"),
            (DecisionKind::QueueFull, "dropped: rate queue full"),
            (
                DecisionKind::Injected { segment: InjectedSegment::Rst, seq: InjectedSeq::Exact },
                "forged RST at RCV.NXT",
            ),
            (
                DecisionKind::Injected { segment: InjectedSegment::Data { bytes: 10 }, seq: InjectedSeq::OutOfWindow },
                "forged 10 bytes of data out of window",
            ),
            (
                DecisionKind::Injected { segment: InjectedSegment::Rst, seq: InjectedSeq::InWindow },
                "forged RST in window",
            ),
        ];
        for (kind, label) in labels {
            assert_eq!(kind.to_string(), label);
        }
    }
}

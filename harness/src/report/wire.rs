//! The packets on the wire: every frame of every captured interface read back from the per-host pcaps, each
//! packet paired with its copy at the other end of its link, marked with the fault that took it, and written
//! as one capture.pcapng (`mergecap -w capture.pcapng client.pcap server.pcap`, plus the packet comments
//! Wireshark shows).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::pcapng::{self, InterfaceStatistics, PcapngWriter, Section};
use crate::error::{Context, Error, Result};
use crate::observe::capture::{PcapRecords, Record, READ_BLOCK};
use crate::record::CapturedInterface;
use crate::scenario::plan::HostId;
use crate::timeline::{EventKind, PacketEvent, Timeline};

/// One captured interface: a host's end of a link, and the pcap its capture wrote.
#[derive(Debug, Clone)]
pub struct End {
    pub host: HostId,
    /// The interface's name inside the host's namespace (`ip link show`).
    pub ifname: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub pcap: PathBuf,
    /// Longest frame part the capture kept.
    pub snaplen: u32,
}

impl End {
    /// The interface the run record names, its pcap in the report folder `dir`.
    pub fn of(interface: &CapturedInterface, dir: &Path) -> End {
        End {
            host: interface.host,
            ifname: interface.ifname.clone(),
            mac: interface.mac,
            address: interface.address,
            pcap: dir.join(&interface.pcap),
            snaplen: interface.snaplen,
        }
    }

    /// `client/nf0`: the name capture.pcapng gives the interface.
    pub fn label(&self) -> String {
        format!("{}/{}", self.host, self.ifname)
    }
}

/// The two ends (indices into the ends) of one link: what one sends, the other receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link(pub usize, pub usize);

/// How a fault treats what it matches, for the packet comments: `dropped`, `rejected with tcp reset`.
#[derive(Debug, Clone)]
pub struct FaultNote {
    pub name: String,
    pub host: HostId,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub verb: String,
}

/// One frame as one interface saw it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Index of the end (interface) that captured it.
    pub end: usize,
    /// Kernel timestamp, since the Unix epoch.
    pub wall: Duration,
    /// Nanoseconds since t0 (negative before it; since the Unix epoch when t0 is unknown).
    pub t_ns: i64,
    pub original_len: u32,
    pub data: Vec<u8>,
    /// Sent by the interface's own host.
    pub outgoing: bool,
    /// As the timeline shows it (IPv4 only), with its fault mark.
    pub event: Option<PacketEvent>,
    /// What the frame is when it is not IPv4 (`ARP who-has 10.0.0.2 tell 10.0.0.1`).
    pub summary: String,
    pub comments: Vec<String>,
}

/// One packet: its sender's copy and its receiver's, as frame indices; one of them may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WirePacket {
    pub sent: Option<usize>,
    pub received: Option<usize>,
}

impl WirePacket {
    /// The copy that describes the packet: the sender's if there is one.
    pub fn first(&self) -> usize {
        self.sent.or(self.received).unwrap_or_default()
    }
}

/// Every frame of a run in time order (the order of capture.pcapng: frame `i` is Wireshark's number `i + 1`)
/// and the packets they make.
#[derive(Debug, Clone)]
pub struct Wire {
    pub ends: Vec<End>,
    pub links: Vec<Link>,
    pub frames: Vec<Frame>,
    pub packets: Vec<WirePacket>,
}

impl Wire {
    /// Reads every end's pcap, orders the frames by time, pairs the copies of each link and marks the frames
    /// the timeline says a fault took. `t0` is the wall-clock time of the run's t0.
    pub fn read(
        ends: Vec<End>,
        links: Vec<Link>,
        timeline: &Timeline,
        faults: &[FaultNote],
        t0: Option<SystemTime>,
    ) -> Result<Wire> {
        let t0 = t0.and_then(|t0| t0.duration_since(SystemTime::UNIX_EPOCH).ok()).unwrap_or_default();
        let mut frames = Vec::new();
        for (index, end) in ends.iter().enumerate() {
            frames.extend(read_end(index, end, timeline, t0)?);
        }
        frames.sort_by_key(|frame| frame.wall);
        let packets = pair_copies(&frames, &links);
        let mut wire = Wire { ends, links, frames, packets };
        wire.comment(faults);
        Ok(wire)
    }

    /// The packet comments: the fault that took a packet, what the wire's impairments did to it, and packets seen
    /// at one end only.
    fn comment(&mut self, faults: &[FaultNote]) {
        for packet in self.packets.clone() {
            let copies = [packet.sent, packet.received];
            let fault = copies
                .iter()
                .flatten()
                .find_map(|&i| self.frames[i].event.as_ref().and_then(|e| e.fault.clone()))
                .and_then(|name| faults.iter().find(|f| f.name == name));
            for (i, other) in [(packet.sent, packet.received), (packet.received, packet.sent)] {
                let Some(i) = i else { continue };
                let host = self.ends[self.frames[i].end].host;
                if let Some(fault) = fault {
                    let mut text =
                        format!("{} by fault {} at {} {}", fault.verb, fault.name, fault.host, fault.direction);
                    if fault.host != host {
                        text.push_str(&format!(" ({host}'s copy"));
                        if let Some(other) = other {
                            text.push_str(&format!("; {}'s is frame {}", fault.host, other + 1));
                        }
                        text.push(')');
                    }
                    self.frames[i].comments.push(text);
                }
                let impaired: Vec<String> = self.frames[i].event.iter().flat_map(|e| e.impairments.clone()).collect();
                self.frames[i].comments.extend(impaired.into_iter().map(|label| format!("wire impairment {label}")));
                if other.is_none() {
                    let peer = peer_end(&self.links, self.frames[i].end).map(|end| self.ends[end].host);
                    self.frames[i].comments.push(match peer {
                        Some(peer) => format!("seen at {host} only: not in {peer}'s capture"),
                        None => format!("seen at {host} only"),
                    });
                }
            }
        }
    }

    /// Writes capture.pcapng: the section, one interface per end, every frame with its direction and
    /// comments, and each interface's counters.
    pub fn write_pcapng(&self, path: &Path, section: &Section, stats: &[(u64, u64, u64)]) -> Result<()> {
        let file = File::create(path).context(|| format!("create {}", path.display()))?;
        let interfaces: Vec<pcapng::Interface> = self
            .ends
            .iter()
            .map(|end| pcapng::Interface {
                name: end.label(),
                description: format!("{}'s end of the veth ({}, {})", end.host, end.address, format_mac(end.mac)),
                snaplen: end.snaplen,
            })
            .collect();
        let write = || -> std::io::Result<()> {
            let mut writer = PcapngWriter::new(BufWriter::new(file), section, &interfaces)?;
            for frame in &self.frames {
                writer.write_packet(&pcapng::Packet {
                    interface: frame.end as u32,
                    timestamp: frame.wall,
                    original_len: frame.original_len,
                    data: &frame.data,
                    direction: Some(if frame.outgoing {
                        pcapng::Direction::Outbound
                    } else {
                        pcapng::Direction::Inbound
                    }),
                    comments: frame.comments.clone(),
                })?;
            }
            let first = self.frames.first().map(|f| f.wall).unwrap_or_default();
            let last = self.frames.last().map(|f| f.wall).unwrap_or_default();
            for (interface, &(received, dropped, os_dropped)) in stats.iter().enumerate() {
                writer.write_statistics(&InterfaceStatistics {
                    interface: interface as u32,
                    start: first,
                    end: last,
                    received,
                    dropped,
                    os_dropped,
                })?;
            }
            writer.finish()?;
            Ok(())
        };
        write().context(|| format!("write {}", path.display()))
    }
}

/// The frames of one end's pcap, each IPv4 frame with its timeline event (the capture stamped the event with
/// the frame's own kernel timestamp, so the two meet at the same time since t0, in capture order).
fn read_end(index: usize, end: &End, timeline: &Timeline, t0: Duration) -> Result<Vec<Frame>> {
    let what = || format!("read {} (the capture of {})", end.pcap.display(), end.label());
    let file = File::open(&end.pcap).context(what)?;
    let mut events: HashMap<Duration, VecDeque<&PacketEvent>> = HashMap::new();
    for event in timeline.events.iter().filter(|e| e.host == end.host) {
        // A packet dropped before it left is on the timeline but in no pcap.
        if let EventKind::Packet(packet @ PacketEvent { dropped: None, .. }) = &event.kind {
            events.entry(event.t).or_default().push_back(packet);
        }
    }
    let mut frames = Vec::new();
    let mut add = |packet: Record<'_>| {
        // An IPv4 or IPv6 frame is the timeline packet of its time, if the timeline has one (an IPv6 host's
        // MLD reports have none: they stay summarized).
        let ip = matches!(packet.data.get(12..14), Some([0x08, 0x00] | [0x86, 0xdd]));
        let since_t0 = packet.timestamp.saturating_sub(t0);
        let event = if ip { events.get_mut(&since_t0).and_then(VecDeque::pop_front).cloned() } else { None };
        let summary = if event.is_none() { summarize(&packet.data) } else { String::new() };
        frames.push(Frame {
            end: index,
            wall: packet.timestamp,
            t_ns: signed_nanos(packet.timestamp, t0),
            original_len: packet.orig_len,
            outgoing: packet.data.get(6..12) == Some(&end.mac[..]),
            data: packet.data.into_owned(),
            event,
            summary,
            comments: Vec::new(),
        });
    };
    // Read through a buffer no larger than the file: pcap-file's reader allocates and zeroes 8 MB for each file,
    // whatever its size (for the two pcaps of a short run 16 MB of zeroing and about 1900 page faults).
    let size = file.metadata().context(what)?.len();
    let mut records = PcapRecords::new(file, READ_BLOCK.min(usize::try_from(size).unwrap_or(READ_BLOCK)))
        .map_err(|e| Error::Internal(format!("{}: {e}", what())))?;
    while let Some(packet) = records.read_next() {
        add(packet.map_err(|e| Error::Internal(format!("{}: {e}", what())))?);
    }
    Ok(frames)
}

/// Pairs each frame an end sent with the same bytes arriving at the other end of its link (a veth changes
/// nothing in a frame), first sent with first arrived; frames without a copy stay packets of their own. With a
/// snap length the bytes are the frame's first ones, headers included (IP id, sequence numbers, checksums:
/// what tells two packets apart), and the length on the wire must agree too.
fn pair_copies(frames: &[Frame], links: &[Link]) -> Vec<WirePacket> {
    let mut sent_on: HashMap<(usize, u32, &[u8]), VecDeque<usize>> = HashMap::new();
    let mut packets: Vec<WirePacket> = Vec::new();
    let mut packet_of_sent: HashMap<usize, usize> = HashMap::new();
    for (i, frame) in frames.iter().enumerate() {
        if frame.outgoing {
            packet_of_sent.insert(i, packets.len());
            packets.push(WirePacket { sent: Some(i), received: None });
            if let Some(peer) = peer_end(links, frame.end) {
                sent_on.entry((peer, frame.original_len, frame.data.as_slice())).or_default().push_back(i);
            }
            continue;
        }
        let sender =
            sent_on.get_mut(&(frame.end, frame.original_len, frame.data.as_slice())).and_then(VecDeque::pop_front);
        match sender {
            Some(sent) => packets[packet_of_sent[&sent]].received = Some(i),
            None => packets.push(WirePacket { sent: None, received: Some(i) }),
        }
    }
    packets
}

/// The other end of the link `end` is on.
fn peer_end(links: &[Link], end: usize) -> Option<usize> {
    links.iter().find_map(|&Link(a, b)| {
        if end == a {
            Some(b)
        } else if end == b {
            Some(a)
        } else {
            None
        }
    })
}

/// What a frame that is not IPv4 is, in tcpdump's words.
fn summarize(frame: &[u8]) -> String {
    let Some(ethertype) = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return format!("truncated frame ({} bytes)", frame.len());
    };
    let arp = |at: usize| frame.get(at..at + 4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    match ethertype {
        0x0806 => match (frame.get(20..22), arp(28), arp(38)) {
            (Some([0, 1]), Some(sender), Some(target)) => format!("ARP, Request who-has {target} tell {sender}"),
            (Some([0, 2]), Some(sender), _) => {
                let mac = frame.get(22..28).map(|m| format_mac(m.try_into().unwrap_or_default()));
                format!("ARP, Reply {sender} is-at {}", mac.unwrap_or_default())
            }
            _ => "ARP".to_string(),
        },
        0x86dd => match frame.get(20) {
            Some(58) => "IPv6 ICMPv6".to_string(),
            Some(next) => format!("IPv6 next header {next}"),
            None => "IPv6".to_string(),
        },
        other => format!("ethertype 0x{other:04x}"),
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn signed_nanos(wall: Duration, t0: Duration) -> i64 {
    if wall >= t0 {
        (wall - t0).as_nanos() as i64
    } else {
        -((t0 - wall).as_nanos() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::timeline::PacketDirection;

    fn end(host: HostId) -> End {
        End {
            host,
            ifname: "nf0".into(),
            mac: [2, 0, 0, 0, 0, host.index() as u8 + 1],
            address: Ipv4Addr::new(10, 0, 0, host.index() as u8 + 1),
            pcap: PathBuf::new(),
            snaplen: 262_144,
        }
    }

    fn frame(end: usize, micros: u64, data: &[u8], outgoing: bool, fault: Option<&str>) -> Frame {
        let event = PacketEvent {
            direction: if outgoing { PacketDirection::Out } else { PacketDirection::In },
            ip_id: 1,
            seq: 1,
            ack: 1,
            window: 63,
            fault: fault.map(String::from),
            ..PacketEvent::test_segment(0x10, 0)
        };
        Frame {
            end,
            wall: Duration::from_micros(micros),
            t_ns: 0,
            original_len: data.len() as u32,
            data: data.to_vec(),
            outgoing,
            event: Some(event),
            summary: String::new(),
            comments: Vec::new(),
        }
    }

    fn wire(frames: Vec<Frame>) -> Wire {
        let links = vec![Link(0, 1)];
        let packets = pair_copies(&frames, &links);
        let faults = [FaultNote {
            name: "blackhole".into(),
            host: HostId::Server,
            direction: "ingress",
            verb: "dropped".into(),
        }];
        let mut wire = Wire { ends: vec![end(HostId::Client), end(HostId::Server)], links, frames, packets };
        wire.comment(&faults);
        wire
    }

    #[test]
    fn copies_pair_by_their_bytes_first_sent_first_received() {
        let wire = wire(vec![
            frame(0, 1, b"a", true, None),
            frame(0, 2, b"a", true, None),
            frame(1, 3, b"a", false, None),
            frame(1, 4, b"b", true, None),
            frame(0, 5, b"b", false, None),
            frame(1, 6, b"a", false, None),
        ]);
        let pairs: Vec<(Option<usize>, Option<usize>)> = wire.packets.iter().map(|p| (p.sent, p.received)).collect();
        assert_eq!(pairs, [(Some(0), Some(2)), (Some(1), Some(5)), (Some(3), Some(4))]);
        assert!(wire.frames.iter().all(|f| f.comments.is_empty()));
    }

    /// Cut to a snap length, two frames may share their captured bytes: a copy pairs only with a frame that
    /// was as long on the wire.
    #[test]
    fn cut_copies_pair_only_with_a_frame_of_the_same_length_on_the_wire() {
        let cut = |frame: Frame, original_len: u32| Frame { original_len, ..frame };
        let wire = wire(vec![
            cut(frame(0, 1, b"head", true, None), 1514),
            cut(frame(0, 2, b"head", true, None), 600),
            cut(frame(1, 3, b"head", false, None), 600),
            cut(frame(1, 4, b"head", false, None), 1514),
        ]);
        let pairs: Vec<(Option<usize>, Option<usize>)> = wire.packets.iter().map(|p| (p.sent, p.received)).collect();
        assert_eq!(pairs, [(Some(0), Some(3)), (Some(1), Some(2))]);
    }

    #[test]
    fn a_faulted_packet_is_commented_on_both_copies_and_a_lone_copy_says_so() {
        let wire = wire(vec![
            frame(0, 1, b"probe", true, Some("blackhole")),
            frame(1, 2, b"probe", false, Some("blackhole")),
            frame(0, 3, b"lost", true, None),
            frame(1, 4, b"stray", false, None),
        ]);
        let comments: Vec<&[String]> = wire.frames.iter().map(|f| f.comments.as_slice()).collect();
        assert_eq!(comments[0], ["dropped by fault blackhole at server ingress (client's copy; server's is frame 2)"]);
        assert_eq!(comments[1], ["dropped by fault blackhole at server ingress"]);
        assert_eq!(comments[2], ["seen at client only: not in server's capture"]);
        assert_eq!(comments[3], ["seen at server only: not in client's capture"]);
        assert_eq!(wire.packets.len(), 3);
    }

    #[test]
    fn what_the_wire_did_to_a_packet_is_commented_on_each_copy() {
        let mark = |mut frame: Frame, label: &str| {
            if let Some(event) = frame.event.as_mut() {
                event.impairments.push(label.to_string());
            }
            frame
        };
        let wire = wire(vec![
            mark(frame(0, 1, b"slow", true, None), "slow #3: delayed 102.117ms"),
            mark(frame(1, 2, b"slow", false, None), "slow #3: delayed 102.117ms"),
            mark(frame(0, 3, b"gone", true, None), "lossy #9: lost"),
        ]);
        let comments: Vec<&[String]> = wire.frames.iter().map(|f| f.comments.as_slice()).collect();
        assert_eq!(comments[0], ["wire impairment slow #3: delayed 102.117ms"]);
        assert_eq!(comments[1], ["wire impairment slow #3: delayed 102.117ms"]);
        assert_eq!(comments[2], ["wire impairment lossy #9: lost", "seen at client only: not in server's capture"]);
    }

    #[test]
    fn frames_that_are_not_ipv4_are_named_as_tcpdump_names_them() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        assert_eq!(summarize(&arp), "ARP, Request who-has 10.0.0.2 tell 10.0.0.1");
        assert_eq!(summarize(&[0; 10]), "truncated frame (10 bytes)");
        let mut ipv6 = vec![0; 12];
        ipv6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 58]);
        assert_eq!(summarize(&ipv6), "IPv6 ICMPv6");
    }
}

//! The pcapng file format as written (`tcpdump -w file.pcapng`, Wireshark's default): a section header with
//! its comments, one interface description per captured interface (Ethernet, nanosecond timestamps), and one
//! enhanced packet block per frame, with its direction and comments (Wireshark's "packet comments").
//!
//! Blocks are written little-endian; a reader finds the byte order from the section header's magic.

use std::io::{self, Write};
use std::time::Duration;

const BLOCK_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const BLOCK_INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const BLOCK_INTERFACE_STATISTICS: u32 = 0x0000_0005;
const BLOCK_ENHANCED_PACKET: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_HARDWARE: u16 = 2;
const SHB_OS: u16 = 3;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;
const ISB_OSDROP: u16 = 7;

/// `if_tsresol` 9: timestamps count nanoseconds.
const NANOSECONDS: u8 = 9;
/// An option's value is at most this long (its length field is 16 bits).
const MAX_OPTION_LEN: usize = u16::MAX as usize;

/// What the section header says about the whole file (`capinfos` shows it; Wireshark under Capture File
/// Properties).
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// `shb_hardware`: the machine's architecture.
    pub hardware: String,
    /// `shb_os`: the kernel the packets went through.
    pub os: String,
    /// `shb_userappl`: the program that wrote the file.
    pub application: String,
    /// One `opt_comment` each.
    pub comments: Vec<String>,
}

/// One captured interface (`tcpdump -i <name>`), link type Ethernet.
#[derive(Debug, Clone)]
pub struct Interface {
    /// `if_name`, as Wireshark's interface column shows it.
    pub name: String,
    /// `if_description`.
    pub description: String,
    /// Longest frame part kept.
    pub snaplen: u32,
}

/// Which way a frame went through its interface (`epb_flags` bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One frame as captured on one interface.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// Index of its interface in the order they were declared.
    pub interface: u32,
    /// Kernel timestamp, since the Unix epoch.
    pub timestamp: Duration,
    /// Length on the wire; `data` may be shorter (snap length).
    pub original_len: u32,
    pub data: &'a [u8],
    pub direction: Option<Direction>,
    /// One `opt_comment` each.
    pub comments: Vec<String>,
}

/// What an interface's capture counted (`isb_ifrecv`, `isb_ifdrop`, `isb_osdrop`), between two times.
#[derive(Debug, Clone, Copy)]
pub struct InterfaceStatistics {
    pub interface: u32,
    pub start: Duration,
    pub end: Duration,
    /// Frames the interface counted.
    pub received: u64,
    /// Frames the interface counted that are not in the file.
    pub dropped: u64,
    /// Of those, dropped by the kernel's capture buffer.
    pub os_dropped: u64,
}

/// A pcapng file being written: the section header and interfaces first, then packets in any order the
/// caller chooses (readers show them in file order).
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header and the interface descriptions.
    pub fn new(mut out: W, section: &Section, interfaces: &[Interface]) -> io::Result<PcapngWriter<W>> {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // Section length not given: readers walk the blocks.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        let mut options = Options::default();
        options.text(SHB_HARDWARE, &section.hardware);
        options.text(SHB_OS, &section.os);
        options.text(SHB_USERAPPL, &section.application);
        for comment in &section.comments {
            options.text(OPT_COMMENT, comment);
        }
        write_block(&mut out, BLOCK_SECTION_HEADER, &body, options)?;
        for interface in interfaces {
            let mut body = Vec::new();
            body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&interface.snaplen.to_le_bytes());
            let mut options = Options::default();
            options.text(IF_NAME, &interface.name);
            options.text(IF_DESCRIPTION, &interface.description);
            options.raw(IF_TSRESOL, &[NANOSECONDS]);
            write_block(&mut out, BLOCK_INTERFACE_DESCRIPTION, &body, options)?;
        }
        let interfaces = u32::try_from(interfaces.len()).map_err(|_| invalid("too many interfaces"))?;
        Ok(PcapngWriter { out, interfaces })
    }

    /// Writes one enhanced packet block.
    pub fn write_packet(&mut self, packet: &Packet<'_>) -> io::Result<()> {
        self.known_interface(packet.interface)?;
        let captured_len = u32::try_from(packet.data.len()).map_err(|_| invalid("frame longer than 4 GiB"))?;
        let mut body = Vec::with_capacity(20 + packet.data.len() + 3);
        body.extend_from_slice(&packet.interface.to_le_bytes());
        push_timestamp(&mut body, packet.timestamp);
        body.extend_from_slice(&captured_len.to_le_bytes());
        body.extend_from_slice(&packet.original_len.max(captured_len).to_le_bytes());
        body.extend_from_slice(packet.data);
        pad(&mut body);
        let mut options = Options::default();
        if let Some(direction) = packet.direction {
            let bits: u32 = match direction {
                Direction::Inbound => 0b01,
                Direction::Outbound => 0b10,
            };
            options.raw(EPB_FLAGS, &bits.to_le_bytes());
        }
        for comment in &packet.comments {
            options.text(OPT_COMMENT, comment);
        }
        write_block(&mut self.out, BLOCK_ENHANCED_PACKET, &body, options)
    }

    /// Writes an interface statistics block (`capinfos` and Wireshark's capture properties show the drops).
    pub fn write_statistics(&mut self, stats: &InterfaceStatistics) -> io::Result<()> {
        self.known_interface(stats.interface)?;
        let mut body = Vec::new();
        body.extend_from_slice(&stats.interface.to_le_bytes());
        push_timestamp(&mut body, stats.end);
        let mut options = Options::default();
        let mut start = Vec::new();
        push_timestamp(&mut start, stats.start);
        options.raw(ISB_STARTTIME, &start);
        let mut end = Vec::new();
        push_timestamp(&mut end, stats.end);
        options.raw(ISB_ENDTIME, &end);
        options.raw(ISB_IFRECV, &stats.received.to_le_bytes());
        options.raw(ISB_IFDROP, &stats.dropped.to_le_bytes());
        options.raw(ISB_OSDROP, &stats.os_dropped.to_le_bytes());
        write_block(&mut self.out, BLOCK_INTERFACE_STATISTICS, &body, options)
    }

    /// Flushes and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    fn known_interface(&self, interface: u32) -> io::Result<()> {
        if interface < self.interfaces {
            Ok(())
        } else {
            Err(invalid(&format!("interface {interface} was not declared ({} were)", self.interfaces)))
        }
    }
}

/// A block's options, each padded to 32 bits.
#[derive(Default)]
struct Options {
    bytes: Vec<u8>,
}

impl Options {
    /// A UTF-8 option; empty text is left out, text too long for one option is cut at a character boundary.
    fn text(&mut self, code: u16, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut end = text.len().min(MAX_OPTION_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.raw(code, &text.as_bytes()[..end]);
    }

    fn raw(&mut self, code: u16, value: &[u8]) {
        let len = value.len().min(MAX_OPTION_LEN);
        self.bytes.extend_from_slice(&code.to_le_bytes());
        // At most u16::MAX by the line above.
        self.bytes.extend_from_slice(&(len as u16).to_le_bytes());
        self.bytes.extend_from_slice(&value[..len]);
        pad(&mut self.bytes);
    }
}

/// Type, total length, body, options (closed by `opt_endofopt` when there are any), total length again.
fn write_block(out: &mut impl Write, block_type: u32, body: &[u8], mut options: Options) -> io::Result<()> {
    if !options.bytes.is_empty() {
        options.bytes.extend_from_slice(&OPT_END.to_le_bytes());
        options.bytes.extend_from_slice(&0u16.to_le_bytes());
    }
    let total = 12 + body.len() + options.bytes.len();
    let total = u32::try_from(total).map_err(|_| invalid("block longer than 4 GiB"))?.to_le_bytes();
    out.write_all(&block_type.to_le_bytes())?;
    out.write_all(&total)?;
    out.write_all(body)?;
    out.write_all(&options.bytes)?;
    out.write_all(&total)
}

/// A timestamp in nanoseconds as the format splits it: high 32 bits, then low 32 bits.
fn push_timestamp(bytes: &mut Vec<u8>, timestamp: Duration) {
    // Nanoseconds since 1970 fit 64 bits until the year 2554.
    let nanos = timestamp.as_nanos() as u64;
    bytes.extend_from_slice(&((nanos >> 32) as u32).to_le_bytes());
    bytes.extend_from_slice(&(nanos as u32).to_le_bytes());
}

fn pad(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len().next_multiple_of(4), 0);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("pcapng: {what}"))
}

#[cfg(test)]
mod tests {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::blocks::section_header::SectionHeaderOption;
    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;

    fn interface(name: &str) -> Interface {
        Interface { name: name.into(), description: format!("{name} end"), snaplen: 262_144 }
    }

    #[test]
    fn a_packet_block_is_laid_out_as_the_format_says() {
        let mut writer = PcapngWriter::new(Vec::new(), &Section::default(), &[interface("a")]).unwrap();
        let header_len = writer.out.len();
        writer
            .write_packet(&Packet {
                interface: 0,
                timestamp: Duration::new(1, 2),
                original_len: 60,
                data: &[0xAA, 0xBB, 0xCC],
                direction: Some(Direction::Outbound),
                comments: vec!["hi".into()],
            })
            .unwrap();
        let block = &writer.finish().unwrap()[header_len..];
        let nanos: u64 = 1_000_000_002;
        let mut expected = Vec::new();
        for word in [6u32, 56, 0, (nanos >> 32) as u32, nanos as u32, 3, 60] {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        expected.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0]);
        expected.extend_from_slice(&[2, 0, 4, 0, 2, 0, 0, 0]); // epb_flags: outbound
        expected.extend_from_slice(&[1, 0, 2, 0, b'h', b'i', 0, 0]); // opt_comment "hi", padded
        expected.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
        expected.extend_from_slice(&56u32.to_le_bytes());
        assert_eq!(block, expected.as_slice());
    }

    #[test]
    fn another_reader_gets_back_interfaces_packets_comments_and_nanoseconds() {
        let section = Section {
            hardware: "x86_64".into(),
            os: "Linux 6.18.0".into(),
            application: "netfault 0.1.0".into(),
            comments: vec!["scenario: keepalive/idle".into(), "seed: none".into()],
        };
        let mut writer = PcapngWriter::new(Vec::new(), &section, &[interface("client"), interface("server")]).unwrap();
        let frame: Vec<u8> = (0..61).collect();
        let stamps = [Duration::new(1_700_000_000, 123_456_789), Duration::new(1_700_000_000, 123_457_001)];
        for (interface, timestamp) in [0, 1].into_iter().zip(stamps) {
            writer
                .write_packet(&Packet {
                    interface,
                    timestamp,
                    original_len: 1514,
                    data: &frame,
                    direction: Some(if interface == 0 { Direction::Outbound } else { Direction::Inbound }),
                    comments: if interface == 1 { vec!["dropped by fault blackhole".into()] } else { vec![] },
                })
                .unwrap();
        }
        let stats = InterfaceStatistics {
            interface: 1,
            start: stamps[0],
            end: stamps[1],
            received: 1,
            dropped: 0,
            os_dropped: 0,
        };
        writer.write_statistics(&stats).unwrap();
        let bytes = writer.finish().unwrap();

        let mut reader = PcapNgReader::new(bytes.as_slice()).unwrap();
        let shb = reader.section().clone();
        assert!(shb.options.contains(&SectionHeaderOption::OS("Linux 6.18.0".into())));
        assert!(shb.options.contains(&SectionHeaderOption::UserApplication("netfault 0.1.0".into())));
        assert!(shb.options.contains(&SectionHeaderOption::Comment("seed: none".into())));
        let mut names = Vec::new();
        let mut packets = Vec::new();
        let mut statistics = 0;
        while let Some(block) = reader.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => {
                    assert!(idb.options.contains(&InterfaceDescriptionOption::IfTsResol(NANOSECONDS)));
                    names.extend(idb.options.iter().filter_map(|o| match o {
                        InterfaceDescriptionOption::IfName(name) => Some(name.to_string()),
                        _ => None,
                    }));
                }
                Block::EnhancedPacket(epb) => {
                    let comments: Vec<String> = epb
                        .options
                        .iter()
                        .filter_map(|o| match o {
                            EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                            _ => None,
                        })
                        .collect();
                    packets.push((epb.interface_id, epb.timestamp, epb.original_len, epb.data.to_vec(), comments));
                }
                Block::InterfaceStatistics(_) => statistics += 1,
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(names, ["client", "server"]);
        assert_eq!(statistics, 1);
        assert_eq!(packets.len(), 2);
        assert_eq!((packets[0].0, packets[0].1, packets[0].2), (0, stamps[0], 1514));
        assert_eq!(packets[1].1, stamps[1], "nanoseconds kept");
        assert_eq!(packets[0].3, frame);
        assert!(packets[0].4.is_empty());
        assert_eq!(packets[1].4, ["dropped by fault blackhole"]);
    }

    #[test]
    fn a_packet_on_an_undeclared_interface_is_refused() {
        let mut writer = PcapngWriter::new(Vec::new(), &Section::default(), &[interface("a")]).unwrap();
        let packet = Packet {
            interface: 1,
            timestamp: Duration::ZERO,
            original_len: 0,
            data: &[],
            direction: None,
            comments: vec![],
        };
        let error = writer.write_packet(&packet).unwrap_err();
        assert!(error.to_string().contains("interface 1 was not declared (1 were)"), "{error}");
    }
}

//! The TCP payload condition of a fault (`payload: empty | nonempty`) as nftables expressions, in one of two
//! encodings chosen by a probe of the running kernel:
//!
//! - `@ih,0,8 >= 0x0` (the inner-header payload base, `NFT_PAYLOAD_INNER_HEADER`, Linux >= 6.2): a one-byte
//!   load right after the TCP header as its data offset says, which succeeds only if the payload has a byte.
//! - Without it (6.1 and older): the header lengths. A TCP segment carries no payload exactly when the IP
//!   total length is the IP header's length plus the TCP header's, `ip length == 4 * ihl + 4 * doff`. nftables
//!   has no addition of two fields, so the rule looks the triple up in a set of every possible one instead:
//!   `ip length . @nh,0,8 . tcp doff @tcp_no_payload` (with `meta nfproto ipv4`), the set holding the 121
//!   triples (4 * (ihl + doff), 0x40 | ihl, doff << 4) for ihl and doff 5 to 15 (`@nh,0,8` is version and
//!   ihl; `tcp doff` is TCP header byte 12 & 0xf0). Exact for any IP or TCP option length, as `@ih` is; IPv4 only, the
//!   family every scenario's addresses are in.

use std::ffi::CStr;
use std::sync::OnceLock;

use nftnl::expr::{Cmp, CmpOp, Meta};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, Chain, MsgType, ProtoFamily, Rule, Table};

use super::expr::{LoadInto, MaskByte, PayloadBase, RawPayload, SetLookup, NFT_REG32_00};
use super::socket::NetfilterSocket;
use super::{BATCH_PAGE_SIZE, FAMILY, TABLE};
use crate::run::netns::Netns;

/// How a payload condition is written into rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// `@ih,0,8 >= 0x0`.
    InnerHeader,
    /// `ip length . @nh,0,8 . tcp doff` looked up in [`NO_PAYLOAD_SET`].
    HeaderLengths,
}

/// The named set of (IP total length, version and IHL byte, data offset byte) triples of TCP segments without
/// payload, in table `inet netfault` of a host whose faults use [`PayloadEncoding::HeaderLengths`].
pub(super) const NO_PAYLOAD_SET: &CStr = c"tcp_no_payload";

impl PayloadEncoding {
    /// `@ih` where nf_tables accepts it (a rule loading from the inner header, added in a scratch network
    /// namespace), the header lengths where it refuses it (EOPNOTSUPP). Probed once per process; `@ih` when no
    /// namespace can be made to ask in, so that the install itself says what failed.
    pub fn of_this_kernel() -> PayloadEncoding {
        static PROBED: OnceLock<PayloadEncoding> = OnceLock::new();
        *PROBED.get_or_init(|| match inner_header_loads() {
            Some(false) => PayloadEncoding::HeaderLengths,
            Some(true) | None => PayloadEncoding::InnerHeader,
        })
    }
}

/// Whether nf_tables accepts loads from the inner header (`@ih`), asked in a scratch network namespace; `None`
/// when it cannot be asked (no namespace, no netfilter socket, another error).
pub fn inner_header_loads() -> Option<bool> {
    let ns = Netns::new_anonymous().ok()?;
    let mut socket = NetfilterSocket::open(&ns).ok()?;
    let table = Table::new(TABLE, FAMILY);
    let chain = Chain::new(c"probe", &table);
    let mut rule = Rule::new(&chain);
    add_payload_nonempty(&mut rule, PayloadEncoding::InnerHeader);
    let mut batch = Batch::with_page_size(BATCH_PAGE_SIZE);
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    batch.add(&rule, MsgType::Add);
    match socket.apply(&batch.finalize()) {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Some(false),
        Err(_) => None,
    }
}

/// A key of [`NO_PAYLOAD_SET`]: three concatenated fields, each padded to 4 bytes as registers hold them.
struct HeaderLengths {
    ip_length: u16,
    version_ihl: u8,
    data_offset: u8,
}

impl SetKey for HeaderLengths {
    /// For `nft list` only (the kernel matches by the key's bytes): nft's datatypes of these sizes, six bits
    /// per field, `inet_service . icmp_type . icmp_type` (13, 14, 14): 16, 8 and 8 bits. Its `integer` has no
    /// size of its own, and `nft list` aborts on a concatenation of those.
    const TYPE: u32 = (13 << 12) | (14 << 6) | 14;
    const LEN: u32 = 12;

    fn data(&self) -> Box<[u8]> {
        let [high, low] = self.ip_length.to_be_bytes();
        Box::new([high, low, 0, 0, self.version_ihl, 0, 0, 0, self.data_offset, 0, 0, 0])
    }
}

/// Every triple of a TCP segment without payload: IHL and data offset each 5 to 15 words.
fn no_payload_triples() -> impl Iterator<Item = HeaderLengths> {
    (5u8..=15).flat_map(|ihl| {
        (5u8..=15).map(move |doff| HeaderLengths {
            ip_length: 4 * (u16::from(ihl) + u16::from(doff)),
            version_ihl: 0x40 | ihl,
            data_offset: doff << 4,
        })
    })
}

/// Adds [`NO_PAYLOAD_SET`] with its elements to the batch that makes the table.
pub(super) fn add_no_payload_set(batch: &mut Batch, table: &Table) {
    let mut set: Set<'_, HeaderLengths> = Set::new_named(NO_PAYLOAD_SET, 0, table, ProtoFamily::Inet);
    for triple in no_payload_triples() {
        set.add(&triple);
    }
    batch.add(&set, MsgType::Add);
    for elements in set.elems_iter() {
        batch.add(&elements, MsgType::Add);
    }
}

/// The rule goes on only for a TCP segment with payload. (A fault on segments without payload has a first rule
/// that returns for those with, as `nft` cannot negate an `@ih` load.)
pub(super) fn add_payload_nonempty(rule: &mut Rule, encoding: PayloadEncoding) {
    match encoding {
        PayloadEncoding::InnerHeader => {
            // The load succeeds only if the transport payload has a first byte; the always-true comparison
            // makes `nft list` show the condition (it hides a load nothing reads).
            rule.add_expr(&RawPayload { base: PayloadBase::Inner, offset: 0, len: 1 });
            rule.add_expr(&Cmp::new(CmpOp::Gte, 0u8));
        }
        PayloadEncoding::HeaderLengths => {
            rule.add_expr(&Meta::NfProto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
            let fields = [
                (RawPayload { base: PayloadBase::Network, offset: 2, len: 2 }, None),
                (RawPayload { base: PayloadBase::Network, offset: 0, len: 1 }, None),
                (RawPayload { base: PayloadBase::Transport, offset: 12, len: 1 }, Some(0xf0)),
            ];
            for (index, (payload, mask)) in (0u32..).zip(fields) {
                let register = NFT_REG32_00 + index;
                rule.add_expr(&LoadInto { payload, register });
                if let Some(mask) = mask {
                    rule.add_expr(&MaskByte { register, mask });
                }
            }
            rule.add_expr(&SetLookup { set: NO_PAYLOAD_SET, register: NFT_REG32_00, absent: true });
        }
    }
}

/// [`add_payload_nonempty`] as `nft` writes it, for messages.
pub(super) fn nonempty_text(encoding: PayloadEncoding) -> String {
    match encoding {
        PayloadEncoding::InnerHeader => "@ih,0,8 >= 0x0".to_string(),
        PayloadEncoding::HeaderLengths => {
            format!("ip length . @nh,0,8 . tcp doff != @{}", NO_PAYLOAD_SET.to_string_lossy())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_holds_one_triple_per_header_length_pair() {
        let triples: Vec<HeaderLengths> = no_payload_triples().collect();
        assert_eq!(triples.len(), 121);
        // A pure ACK with timestamps: 20 + 32 bytes, IHL 5, data offset 8.
        let ack = HeaderLengths { ip_length: 52, version_ihl: 0x45, data_offset: 0x80 };
        assert!(triples.iter().any(|t| t.data() == ack.data()));
        assert_eq!(&*ack.data(), &[0, 52, 0, 0, 0x45, 0, 0, 0, 0x80, 0, 0, 0]);
        // The largest: 60 + 60 bytes.
        assert!(triples.iter().any(|t| t.ip_length == 120 && t.version_ihl == 0x4f && t.data_offset == 0xf0));
        // One byte of payload is in no triple.
        let data = HeaderLengths { ip_length: 53, version_ihl: 0x45, data_offset: 0x80 };
        assert!(!triples.iter().any(|t| t.data() == data.data()));
    }
}

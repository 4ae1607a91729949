//! The fields of `struct tcp_info` (`<linux/tcp.h>`) that a `getsockopt: TCP_INFO` step reads and may
//! expect (`ss -ti` prints most of them): each field's name without the `tcpi_` prefix, where it lies in the
//! struct, and what it counts. The verdict compares what the step read with the scenario's bounds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::scenario::duration::format_duration;

/// What a field counts, and so how a scenario writes its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A number: segments, bytes, a state or option code.
    Count,
    /// Microseconds as the kernel reports them (`rto`, `rtt`, ...): bounds are written as durations.
    Micros,
    /// Milliseconds as the kernel reports them (`last_data_recv`, ...): bounds are written as durations.
    Millis,
}

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    U8,
    /// The low four bits of a byte (`tcpi_snd_wscale`).
    LowNibble,
    /// The high four bits of a byte (`tcpi_rcv_wscale`).
    HighNibble,
    U16,
    U32,
    U64,
}

/// One field of `struct tcp_info`.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    offset: usize,
    width: Width,
    pub unit: Unit,
}

impl Field {
    /// Bytes from the struct's start to this field's end: a kernel whose struct is shorter does not have it.
    fn end(&self) -> usize {
        self.offset
            + match self.width {
                Width::U8 | Width::LowNibble | Width::HighNibble => 1,
                Width::U16 => 2,
                Width::U32 => 4,
                Width::U64 => 8,
            }
    }

    /// A value of this field in words: `10`, `204ms`.
    pub fn show(&self, value: u64) -> String {
        match self.unit {
            Unit::Count => value.to_string(),
            Unit::Micros => format_duration(Duration::from_micros(value)),
            Unit::Millis => format_duration(Duration::from_millis(value)),
        }
    }
}

const fn field(name: &'static str, offset: usize, width: Width, unit: Unit) -> Field {
    Field { name, offset, width, unit }
}

/// The fields in the struct's order. Those up to `snd_wnd` are in every kernel netfault runs on (Linux >=
/// 5.4); `rcv_wnd` and after came with Linux 6.7 (an expectation on one of them fails on an older kernel, saying
/// so).
pub const FIELDS: &[Field] = &[
    field("state", 0, Width::U8, Unit::Count),
    field("ca_state", 1, Width::U8, Unit::Count),
    field("retransmits", 2, Width::U8, Unit::Count),
    field("probes", 3, Width::U8, Unit::Count),
    field("backoff", 4, Width::U8, Unit::Count),
    field("options", 5, Width::U8, Unit::Count),
    field("snd_wscale", 6, Width::LowNibble, Unit::Count),
    field("rcv_wscale", 6, Width::HighNibble, Unit::Count),
    field("rto", 8, Width::U32, Unit::Micros),
    field("ato", 12, Width::U32, Unit::Micros),
    field("snd_mss", 16, Width::U32, Unit::Count),
    field("rcv_mss", 20, Width::U32, Unit::Count),
    field("unacked", 24, Width::U32, Unit::Count),
    field("sacked", 28, Width::U32, Unit::Count),
    field("lost", 32, Width::U32, Unit::Count),
    field("retrans", 36, Width::U32, Unit::Count),
    field("last_data_sent", 44, Width::U32, Unit::Millis),
    field("last_data_recv", 52, Width::U32, Unit::Millis),
    field("last_ack_recv", 56, Width::U32, Unit::Millis),
    field("pmtu", 60, Width::U32, Unit::Count),
    field("rcv_ssthresh", 64, Width::U32, Unit::Count),
    field("rtt", 68, Width::U32, Unit::Micros),
    field("rttvar", 72, Width::U32, Unit::Micros),
    field("snd_ssthresh", 76, Width::U32, Unit::Count),
    field("snd_cwnd", 80, Width::U32, Unit::Count),
    field("advmss", 84, Width::U32, Unit::Count),
    field("reordering", 88, Width::U32, Unit::Count),
    field("rcv_rtt", 92, Width::U32, Unit::Micros),
    field("rcv_space", 96, Width::U32, Unit::Count),
    field("total_retrans", 100, Width::U32, Unit::Count),
    field("bytes_acked", 120, Width::U64, Unit::Count),
    field("bytes_received", 128, Width::U64, Unit::Count),
    field("segs_out", 136, Width::U32, Unit::Count),
    field("segs_in", 140, Width::U32, Unit::Count),
    field("notsent_bytes", 144, Width::U32, Unit::Count),
    field("min_rtt", 148, Width::U32, Unit::Micros),
    field("data_segs_in", 152, Width::U32, Unit::Count),
    field("data_segs_out", 156, Width::U32, Unit::Count),
    field("delivered", 192, Width::U32, Unit::Count),
    field("delivered_ce", 196, Width::U32, Unit::Count),
    field("bytes_sent", 200, Width::U64, Unit::Count),
    field("bytes_retrans", 208, Width::U64, Unit::Count),
    field("dsack_dups", 216, Width::U32, Unit::Count),
    field("reord_seen", 220, Width::U32, Unit::Count),
    field("rcv_ooopack", 224, Width::U32, Unit::Count),
    field("snd_wnd", 228, Width::U32, Unit::Count),
    field("rcv_wnd", 232, Width::U32, Unit::Count),
    field("rehash", 236, Width::U32, Unit::Count),
    field("total_rto", 240, Width::U16, Unit::Count),
    field("total_rto_recoveries", 242, Width::U16, Unit::Count),
    field("total_rto_time", 244, Width::U32, Unit::Millis),
];

/// Room for the longest struct a kernel may give: it copies `min(its size, the buffer)`.
pub const READ_LEN: usize = 256;

/// A field by name.
pub fn lookup(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|field| field.name == name)
}

/// Every field within the `bytes` the kernel filled, by name.
pub fn decode(bytes: &[u8]) -> BTreeMap<String, u64> {
    FIELDS
        .iter()
        .filter(|field| field.end() <= bytes.len())
        .map(|field| {
            let at = &bytes[field.offset..field.end()];
            let value = match field.width {
                Width::U8 => u64::from(at[0]),
                Width::LowNibble => u64::from(at[0] & 0x0f),
                Width::HighNibble => u64::from(at[0] >> 4),
                Width::U16 => u64::from(u16::from_ne_bytes([at[0], at[1]])),
                Width::U32 => u64::from(u32::from_ne_bytes([at[0], at[1], at[2], at[3]])),
                Width::U64 => u64::from_ne_bytes([at[0], at[1], at[2], at[3], at[4], at[5], at[6], at[7]]),
            };
            (field.name.to_string(), value)
        })
        .collect()
}

/// What a read shows, in the struct's order: `state=1 ca_state=0 ... rto=204ms ...`.
pub fn describe(read: &BTreeMap<String, u64>) -> String {
    FIELDS
        .iter()
        .filter_map(|field| read.get(field.name).map(|value| format!("{}={}", field.name, field.show(*value))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `expect: { tcp_info: { FIELD: VALUE } }` or `{ FIELD: { min, max } }`: bounds in the unit the kernel
/// reports the field in (microseconds or milliseconds for times).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Bound {
    pub field: &'static str,
    pub min: Option<u64>,
    pub max: Option<u64>,
}

impl Bound {
    pub fn admits(&self, value: u64) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }

    /// The read value of this bound's field, judged: `Err` says what was read (or that the kernel has no such
    /// field).
    pub fn judge(&self, read: &BTreeMap<String, u64>) -> Result<(), String> {
        let shown = |value: u64| lookup(self.field).map_or(value.to_string(), |field| field.show(value));
        match read.get(self.field) {
            Some(value) if self.admits(*value) => Ok(()),
            Some(value) => Err(format!("{}={}", self.field, shown(*value))),
            None => Err(format!("no {} (this kernel's struct tcp_info ends before it)", self.field)),
        }
    }
}

/// `snd_cwnd 10`, `total_retrans 1..3`, `rto at least 200ms`.
impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |value: u64| lookup(self.field).map_or(value.to_string(), |field| field.show(value));
        match (self.min, self.max) {
            (Some(min), Some(max)) if min == max => write!(f, "{} {}", self.field, shown(min)),
            (Some(min), Some(max)) => write!(f, "{} {}..{}", self.field, shown(min), shown(max)),
            (Some(min), None) => write!(f, "{} at least {}", self.field, shown(min)),
            (None, Some(max)) => write!(f, "{} at most {}", self.field, shown(max)),
            (None, None) => write!(f, "{} any", self.field),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_lie_in_order_without_overlap_within_the_read() {
        for pair in FIELDS.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let shares_a_byte = a.offset == b.offset && a.width == Width::LowNibble && b.width == Width::HighNibble;
            assert!(a.end() <= b.offset || shares_a_byte, "{} overlaps {}", a.name, b.name);
        }
        assert!(FIELDS.iter().all(|field| field.end() <= READ_LEN));
    }

    #[test]
    fn decoding_reads_each_width_and_stops_at_the_kernel_s_length() {
        let mut bytes = vec![0u8; 232];
        bytes[0] = 1;
        bytes[6] = 0x97;
        bytes[8..12].copy_from_slice(&204_000u32.to_ne_bytes());
        bytes[80..84].copy_from_slice(&10u32.to_ne_bytes());
        bytes[120..128].copy_from_slice(&(5u64 << 33).to_ne_bytes());
        let read = decode(&bytes);
        assert_eq!(read["state"], 1);
        assert_eq!((read["snd_wscale"], read["rcv_wscale"]), (7, 9));
        assert_eq!(read["rto"], 204_000);
        assert_eq!(read["snd_cwnd"], 10);
        assert_eq!(read["bytes_acked"], 5 << 33);
        assert!(read.contains_key("snd_wnd"));
        assert!(!read.contains_key("rcv_wnd"), "a 6.1 kernel's struct ends at snd_wnd");
        let described = describe(&read);
        assert!(described.starts_with("state=1 ca_state=0 "), "{described}");
        assert!(described.contains(" rto=204ms ") && described.contains(" snd_cwnd=10 "), "{described}");
    }

    #[test]
    fn bounds_judge_and_describe_in_the_field_s_unit() {
        let read = decode(&{
            let mut bytes = vec![0u8; 232];
            bytes[8..12].copy_from_slice(&204_000u32.to_ne_bytes());
            bytes[80..84].copy_from_slice(&10u32.to_ne_bytes());
            bytes
        });
        let cwnd = Bound { field: "snd_cwnd", min: Some(10), max: Some(10) };
        assert_eq!(cwnd.to_string(), "snd_cwnd 10");
        assert_eq!(cwnd.judge(&read), Ok(()));
        let rto = Bound { field: "rto", min: Some(300_000), max: None };
        assert_eq!(rto.to_string(), "rto at least 300ms");
        assert_eq!(rto.judge(&read), Err("rto=204ms".into()));
        let newer = Bound { field: "total_rto", min: Some(1), max: None };
        assert!(newer.judge(&read).unwrap_err().contains("ends before it"));
    }
}

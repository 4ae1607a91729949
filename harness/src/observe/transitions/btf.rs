//! The kernel's own type information (`/sys/kernel/btf/vmlinux`, what `bpftool btf dump file` reads): where the
//! fields the transition tracer reads lie inside `struct sock` and `struct net` on the running kernel, so that
//! one program works across kernel versions without being compiled against their headers.

use crate::error::{Error, Result};

/// `/sys/kernel/btf/vmlinux`: the running kernel's types (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union.
#[derive(Debug, Clone, Copy)]
struct Member {
    type_id: u32,
    /// From the start of the enclosing struct.
    bit_offset: u32,
    /// Non-zero for a bitfield.
    bitfield_size: u32,
}

/// The types of one BTF blob, indexed once: where each type's record starts (id 0, `void`, has none). Names and
/// members are read from the records only for the few types looked up, so indexing the kernel's 5 MB of types
/// takes one pass over their headers.
#[derive(Debug, Clone)]
pub struct Btf {
    bytes: Vec<u8>,
    big_endian: bool,
    /// Byte offset of each type's record, by id (index 0 unused).
    records: Vec<usize>,
    strings: std::ops::Range<usize>,
}

/// Where a field lies: bytes from the start of the struct it was looked up in, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Internal(format!("{VMLINUX}: malformed BTF: {}", what.into()))
}

/// A type record's header: `name_off`, `info` (vlen, kind, kind_flag) and `size` or `type`.
#[derive(Debug, Clone, Copy)]
struct Header {
    name: u32,
    vlen: usize,
    kind: u32,
    kind_flag: bool,
    size_or_type: u32,
}

impl Btf {
    /// Indexes a BTF blob (the format of `/sys/kernel/btf/vmlinux`).
    pub fn parse(bytes: Vec<u8>) -> Result<Btf> {
        let big_endian = match bytes.get(0..2) {
            Some([0x9f, 0xeb]) => false,
            Some([0xeb, 0x9f]) => true,
            _ => return Err(malformed(format!("no magic {MAGIC:#x}"))),
        };
        let mut btf = Btf { bytes, big_endian, records: vec![0], strings: 0..0 };
        let header_len = btf.u32(4)? as usize;
        if header_len < HEADER_LEN {
            return Err(malformed(format!("header of {header_len} bytes")));
        }
        let (type_off, type_len) = (btf.u32(8)? as usize, btf.u32(12)? as usize);
        let (str_off, str_len) = (btf.u32(16)? as usize, btf.u32(20)? as usize);
        btf.strings = header_len + str_off..header_len + str_off + str_len;
        if btf.strings.end > btf.bytes.len() {
            return Err(malformed("string section past the end"));
        }
        let (mut at, end) = (header_len + type_off, header_len + type_off + type_len);
        while at < end {
            let header = btf.header_at(at)?;
            btf.records.push(at);
            at += 12
                + match header.kind {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * header.vlen,
                    KIND_ENUM | KIND_FUNC_PROTO => 8 * header.vlen,
                    0..=19 => 0,
                    other => return Err(malformed(format!("unknown kind {other} of type {}", btf.records.len() - 1))),
                };
        }
        Ok(btf)
    }

    /// Reads and indexes the running kernel's BTF.
    pub fn of_running_kernel() -> Result<Btf> {
        let bytes = std::fs::read(VMLINUX).map_err(|e| Error::Missing {
            what: format!("the kernel's type information ({VMLINUX}): {e}"),
            hint: "a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian and Ubuntu kernels are)".into(),
        })?;
        Btf::parse(bytes)
    }

    /// The blob's word at `at`, in its byte order.
    fn u32(&self, at: usize) -> Result<u32> {
        let word: [u8; 4] = self
            .bytes
            .get(at..at + 4)
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| malformed(format!("read past the end at byte {at}")))?;
        Ok(if self.big_endian { u32::from_be_bytes(word) } else { u32::from_le_bytes(word) })
    }

    fn header_at(&self, at: usize) -> Result<Header> {
        let info = self.u32(at + 4)?;
        Ok(Header {
            name: self.u32(at)?,
            vlen: (info & 0xffff) as usize,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32(at + 8)?,
        })
    }

    fn header(&self, id: u32) -> Result<Header> {
        match self.records.get(id as usize) {
            Some(at) if id != 0 => self.header_at(*at),
            _ => Err(malformed(format!("type id {id} out of range"))),
        }
    }

    /// The name at `offset` of the string section.
    fn name(&self, offset: u32) -> &[u8] {
        let strings = &self.bytes[self.strings.clone()];
        let rest = strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// The struct named `name` (the first one: later ones of the same name come from modules).
    pub fn struct_named(&self, name: &str) -> Result<u32> {
        for id in 1..self.records.len() as u32 {
            let header = self.header(id)?;
            if header.kind == KIND_STRUCT && self.name(header.name) == name.as_bytes() {
                return Ok(id);
            }
        }
        Err(Error::Missing {
            what: format!("struct {name} in the kernel's type information ({VMLINUX})"),
            hint: "a kernel with CONFIG_NET and CONFIG_DEBUG_INFO_BTF".into(),
        })
    }

    /// The value of `member` of `enum <name>` (e.g. `SKB_DROP_REASON_NETFILTER_DROP` of `skb_drop_reason`).
    pub fn enum_value(&self, name: &str, member: &str) -> Result<u32> {
        for id in 1..self.records.len() as u32 {
            let header = self.header(id)?;
            if header.kind != KIND_ENUM || self.name(header.name) != name.as_bytes() {
                continue;
            }
            let first = self.records[id as usize] + 12;
            for index in 0..header.vlen {
                if self.name(self.u32(first + 8 * index)?) == member.as_bytes() {
                    return self.u32(first + 8 * index + 4);
                }
            }
        }
        Err(Error::Missing {
            what: format!("enum {name} value {member} in the kernel's type information ({VMLINUX})"),
            hint: "Linux >= 5.17 (drop reasons)".into(),
        })
    }

    /// Follows typedefs and const / volatile / restrict / type tags to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let header = self.header(id)?;
            match header.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = header.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(malformed(format!("typedef chain from type {id} too long")))
    }

    /// The byte size of a type (pointers: 8).
    fn size_of(&self, id: u32) -> Result<u32> {
        let header = self.header(self.resolve(id)?)?;
        Ok(match header.kind {
            KIND_PTR => 8,
            _ => header.size_or_type,
        })
    }

    /// Where `path` (member names, each inside the one before; anonymous unions and structs on the way are
    /// looked through) lies inside `struct <name>`.
    #[cfg(test)]
    pub fn field(&self, name: &str, path: &[&str]) -> Result<Field> {
        self.field_in(self.struct_named(name)?, name, path)
    }

    /// Where `path` lies inside the struct `id` (named `name`, for messages). A bitfield is refused: it cannot
    /// be read as whole bytes.
    pub fn field_in(&self, mut id: u32, name: &str, path: &[&str]) -> Result<Field> {
        let mut bits = 0;
        for (depth, member_name) in path.iter().enumerate() {
            let member = self.find_member(self.resolve(id)?, member_name, 0)?.ok_or_else(|| Error::Missing {
                what: format!("struct {name} member {} in the kernel's type information", path[..=depth].join(".")),
                hint: "a kernel whose struct layout the transition tracer knows (Linux >= 5.8)".into(),
            })?;
            if member.bitfield_size != 0 {
                return Err(Error::Missing {
                    what: format!("struct {name} member {} as whole bytes (it is a bitfield)", path.join(".")),
                    hint: "a kernel whose struct layout the transition tracer knows (Linux >= 5.8)".into(),
                });
            }
            bits += member.bit_offset;
            id = member.type_id;
        }
        if bits % 8 != 0 {
            return Err(malformed(format!("struct {name} member {} at bit {bits}", path.join("."))));
        }
        Ok(Field { offset: bits / 8, size: self.size_of(id)? })
    }

    /// The member `name` of struct or union `id`, with its offset counted from `id`'s start, looking through
    /// anonymous members.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>> {
        let header = self.header(id)?;
        if !matches!(header.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        let first = self.records[id as usize] + 12;
        for index in 0..header.vlen {
            let at = first + 12 * index;
            let raw_offset = self.u32(at + 8)?;
            let (bit_offset, bitfield_size) =
                if header.kind_flag { (raw_offset & 0xff_ffff, raw_offset >> 24) } else { (raw_offset, 0) };
            let member = Member { type_id: self.u32(at + 4)?, bit_offset, bitfield_size };
            let member_name = self.name(self.u32(at)?);
            if member_name == name.as_bytes() {
                return Ok(Some(member));
            }
            if member_name.is_empty() {
                if let Some(mut inner) = self.find_member(self.resolve(member.type_id)?, name, depth + 1)? {
                    inner.bit_offset += member.bit_offset;
                    return Ok(Some(inner));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob holding `struct outer { int a; union { struct inner { short x; short y; } in; int z; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0short\0outer\0a\0inner\0x\0y\0in\0z\0".to_vec();
        let at = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types: Vec<u8> = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        push(&[at("int"), KIND_INT << 24, 4, 32]); // 1: int
        push(&[at("short"), KIND_INT << 24, 2, 16]); // 2: short
        push(&[at("inner"), (KIND_STRUCT << 24) | 2, 4]); // 3: struct inner
        push(&[at("x"), 2, 0, at("y"), 2, 16]);
        push(&[0, (KIND_UNION << 24) | 2, 4]); // 4: anonymous union
        push(&[at("in"), 3, 0, at("z"), 1, 0]);
        push(&[at("outer"), (KIND_STRUCT << 24) | 2, 8]); // 5: struct outer
        push(&[at("a"), 1, 0, 0, 4, 32]);
        let mut blob = Vec::new();
        for word in [u32::from(MAGIC) | (1 << 16), HEADER_LEN as u32, 0, types.len() as u32] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        for word in [types.len() as u32, strings.len() as u32] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn fields_are_found_through_anonymous_unions() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.records.len(), 6, "void and the five types");
        assert_eq!(btf.field("outer", &["a"]).unwrap(), Field { offset: 0, size: 4 });
        assert_eq!(btf.field("outer", &["z"]).unwrap(), Field { offset: 4, size: 4 });
        assert_eq!(btf.field("outer", &["in", "y"]).unwrap(), Field { offset: 6, size: 2 });
        assert!(btf.field("outer", &["nope"]).is_err());
        assert!(btf.field("missing", &["a"]).is_err());
        assert!(Btf::parse(b"not btf".to_vec()).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_fields_the_tracer_reads() {
        let btf = Btf::of_running_kernel().unwrap();
        let net = btf.field("sock", &["__sk_common", "skc_net", "net"]).unwrap();
        assert_eq!(net.size, 8, "a pointer");
        assert_eq!(btf.field("net", &["ns", "inum"]).unwrap().size, 4);
        assert_eq!(btf.field("sock", &["__sk_common", "skc_daddr"]).unwrap(), Field { offset: 0, size: 4 });
        assert_eq!(btf.field("sock", &["__sk_common", "skc_rcv_saddr"]).unwrap(), Field { offset: 4, size: 4 });
        assert_eq!(btf.field("sock", &["__sk_common", "skc_dport"]).unwrap().size, 2);
        assert_eq!(btf.field("sock", &["__sk_common", "skc_num"]).unwrap().size, 2);
        assert_eq!(btf.field("sock", &["__sk_common", "skc_family"]).unwrap().size, 2);
        assert_eq!(btf.field("sock", &["sk_protocol"]).unwrap().size, 2);
    }
}

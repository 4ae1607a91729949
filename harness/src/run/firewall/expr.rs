//! nftables pieces the `nftnl` crate lacks, added through its own `Expression` and `NlMsg` traits:
//! raw payload loads (including the inner header `@ih`) into any register, bitwise masks and set lookups on any
//! register, named counters and references to them.

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg, ProtoFamily, Rule};

/// `NFT_OBJECT_COUNTER` in linux/netfilter/nf_tables.h (missing from the libc crate).
const NFT_OBJECT_COUNTER: u32 = 1;

/// `NFT_PAYLOAD_INNER_HEADER` in linux/netfilter/nf_tables.h, Linux >= 6.2: the first byte after the
/// transport header (after the TCP header as its data offset says, after the 8-byte UDP header).
const NFT_PAYLOAD_INNER_HEADER: u32 = 3;

/// Where a raw payload load starts counting its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PayloadBase {
    /// nft `@nh`: the IP header.
    Network,
    /// nft `@th`.
    Transport,
    /// nft `@ih`.
    Inner,
}

/// `NFT_REG32_00` in linux/netfilter/nf_tables.h: the first 32-bit data register, where register 1 (the
/// 16-byte `NFT_REG_1`) starts; a concatenation's fields go into consecutive ones, each padded to 4 bytes.
pub(super) const NFT_REG32_00: u32 = 8;

/// nft `@th,<8*offset>,<8*len>` / `@ih,...`: loads `len` bytes at byte `offset` into register 1.
/// A load past the end of the packet ends the rule there (the kernel's NFT_BREAK), which is how an
/// `@ih` load tests "has payload".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawPayload {
    pub base: PayloadBase,
    pub offset: u32,
    pub len: u32,
}

/// nftnl's own policy when libnftnl cannot allocate a few bytes: there is no way to go on.
fn allocated<T>(ptr: *mut T) -> NonNull<T> {
    NonNull::new(ptr).unwrap_or_else(|| std::process::abort())
}

impl Expression for RawPayload {
    fn to_expr(&self, rule: &Rule) -> NonNull<sys::nftnl_expr> {
        LoadInto { payload: *self, register: libc::NFT_REG_1 as u32 }.to_expr(rule)
    }
}

/// [`RawPayload`] into another register (the bytes after the load's length up to the next 4 are zeroed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LoadInto {
    pub payload: RawPayload,
    pub register: u32,
}

impl Expression for LoadInto {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let RawPayload { base, offset, len } = self.payload;
        let base = match base {
            PayloadBase::Network => libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            PayloadBase::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            PayloadBase::Inner => NFT_PAYLOAD_INNER_HEADER,
        };
        let expr = allocated(unsafe { sys::nftnl_expr_alloc(c"payload".as_ptr()) });
        // SAFETY: `expr` is a live payload expression; these attributes are u32s of that expression.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, len);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, self.register);
        }
        expr
    }
}

/// nft `& <mask>` on the one-byte value in `register`, in place.
pub(super) struct MaskByte {
    pub register: u32,
    pub mask: u8,
}

impl Expression for MaskByte {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = allocated(unsafe { sys::nftnl_expr_alloc(c"bitwise".as_ptr()) });
        let (mask, xor) = ([self.mask], [0u8]);
        // SAFETY: `expr` is a live bitwise expression; libnftnl copies the one-byte mask and xor.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_BITWISE_SREG as u16, self.register);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_BITWISE_DREG as u16, self.register);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_BITWISE_LEN as u16, 1);
            sys::nftnl_expr_set(raw, sys::NFTNL_EXPR_BITWISE_MASK as u16, mask.as_ptr().cast(), 1);
            sys::nftnl_expr_set(raw, sys::NFTNL_EXPR_BITWISE_XOR as u16, xor.as_ptr().cast(), 1);
        }
        expr
    }
}

/// `NFT_LOOKUP_F_INV`: the lookup matches when the key is not in the set.
const NFT_LOOKUP_F_INV: u32 = 1;

/// nft `<key> @<set>` (or `!= @<set>`): the key that starts at `register` is (not) an element of the set named
/// `set`, a set of the rule's table.
pub(super) struct SetLookup<'a> {
    pub set: &'a CStr,
    pub register: u32,
    pub absent: bool,
}

impl Expression for SetLookup<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = allocated(unsafe { sys::nftnl_expr_alloc(c"lookup".as_ptr()) });
        // SAFETY: `expr` is a live lookup expression; libnftnl copies the set's name.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_LOOKUP_SREG as u16, self.register);
            sys::nftnl_expr_set_str(raw, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.as_ptr());
            if self.absent {
                sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, NFT_LOOKUP_F_INV);
            }
        }
        expr
    }
}

/// nft `counter name "<name>"`: counts the packet in a named counter object of the rule's table.
pub(super) struct CounterRef<'a> {
    pub name: &'a CStr,
}

impl Expression for CounterRef<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = allocated(unsafe { sys::nftnl_expr_alloc(c"objref".as_ptr()) });
        // SAFETY: `expr` is a live objref expression; libnftnl copies the name.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_OBJREF_IMM_TYPE as u16, NFT_OBJECT_COUNTER);
            sys::nftnl_expr_set_str(raw, sys::NFTNL_EXPR_OBJREF_IMM_NAME as u16, self.name.as_ptr());
        }
        expr
    }
}

/// nft `add counter <family> <table> <name>`: a named counter that outlives the rules using it.
pub(super) struct CounterObject {
    obj: NonNull<sys::nftnl_obj>,
    family: ProtoFamily,
}

// SAFETY: the object is owned here alone and libnftnl keeps no thread-bound state in it.
unsafe impl Send for CounterObject {}

impl CounterObject {
    pub fn new(family: ProtoFamily, table: &CStr, name: &CStr) -> CounterObject {
        let counter = CounterObject::unnamed(family, table);
        // SAFETY: `counter.obj` is live; libnftnl copies the string.
        unsafe {
            sys::nftnl_obj_set_str(counter.obj.as_ptr(), sys::NFTNL_OBJ_NAME as u16, name.as_ptr());
        }
        counter
    }

    /// Every counter of a table, as a dump request selects them.
    fn unnamed(family: ProtoFamily, table: &CStr) -> CounterObject {
        let obj = allocated(unsafe { sys::nftnl_obj_alloc() });
        // SAFETY: `obj` is live; libnftnl copies the string.
        unsafe {
            let raw = obj.as_ptr();
            sys::nftnl_obj_set_u32(raw, sys::NFTNL_OBJ_FAMILY as u16, family as u32);
            sys::nftnl_obj_set_str(raw, sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_u32(raw, sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
        }
        CounterObject { obj, family }
    }
}

// SAFETY: a counter object message is a header plus table, name, type and an empty counter nest,
// far below `nft_nlmsg_maxsize()`.
unsafe impl NlMsg for CounterObject {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (raw_type, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWOBJ, libc::NLM_F_ACK | libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELOBJ, libc::NLM_F_ACK),
        };
        // SAFETY: the caller gives a buffer of at least `nft_nlmsg_maxsize()` bytes.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                raw_type as u16,
                self.family as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_obj_nlmsg_build_payload(header, self.obj.as_ptr());
        }
    }
}

impl Drop for CounterObject {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_obj_alloc and freed only here.
        unsafe { sys::nftnl_obj_free(self.obj.as_ptr()) };
    }
}

/// Writes `nft list counters table <family> <table>` as a dump request into `buf` (which must be
/// aligned for `nlmsghdr` and at least a page long); returns the request's length.
pub(super) fn write_counter_dump_request(buf: &mut [u8], family: ProtoFamily, table: &CStr, seq: u32) -> usize {
    assert!(buf.len() >= 4096 && buf.as_ptr().cast::<libc::nlmsghdr>().is_aligned());
    let obj = CounterObject::unnamed(family, table);
    // SAFETY: `buf` holds a page, more than header, table name (at most 256 bytes) and type need.
    unsafe {
        let header = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            libc::NFT_MSG_GETOBJ as u16,
            family as u16,
            libc::NLM_F_DUMP as u16,
            seq,
        );
        sys::nftnl_obj_nlmsg_build_payload(header, obj.obj.as_ptr());
        (*header).nlmsg_len as usize
    }
}

/// One counter object of a dump reply: table, name and packets so far.
pub(super) struct CounterValue {
    pub table: String,
    pub name: String,
    pub packets: u64,
}

/// Parses one `NFT_MSG_NEWOBJ` message of a counter dump.
pub(super) fn parse_counter(message: &libc::nlmsghdr) -> Option<CounterValue> {
    let obj = CounterObject { obj: allocated(unsafe { sys::nftnl_obj_alloc() }), family: ProtoFamily::Unspec };
    // SAFETY: `message` is a complete netlink message (checked by the caller's iterator); the
    // strings libnftnl returns live as long as `obj`, and are copied before it is dropped.
    unsafe {
        let raw = obj.obj.as_ptr();
        if sys::nftnl_obj_nlmsg_parse(message, raw) < 0 {
            return None;
        }
        let text = |attr: u32| {
            let ptr = sys::nftnl_obj_get_str(raw, attr as u16);
            (!ptr.is_null()).then(|| CStr::from_ptr(ptr).to_string_lossy().into_owned())
        };
        Some(CounterValue {
            table: text(sys::NFTNL_OBJ_TABLE)?,
            name: text(sys::NFTNL_OBJ_NAME)?,
            packets: sys::nftnl_obj_get_u64(raw, sys::NFTNL_OBJ_CTR_PKTS as u16),
        })
    }
}

/// `struct xt_bpf_info_v1` in linux/netfilter/xt_bpf.h: `mode`, `bpf_program_num_elem`, `fd`, a union of 64
/// classic BPF instructions or a 512-byte path, and a kernel-only program pointer (8-aligned): 528 bytes.
const XT_BPF_INFO_V1_BYTES: usize = 528;
/// `XT_BPF_MODE_FD_ELF`: the match runs the loaded program whose descriptor `fd` is, in the process adding the
/// rule (the kernel takes its own reference when it checks the rule).
const XT_BPF_MODE_FD_ELF: u16 = 2;
pub(super) const XT_BPF_REVISION: u32 = 1;

/// iptables `-m bpf` (revision 1) through `nft_compat`: runs the socket-filter program `program_fd` on the
/// packet and matches when it returns anything but 0. `nft` can list such a rule but not write one.
pub(super) struct XtBpfMatch {
    pub program_fd: i32,
}

impl Expression for XtBpfMatch {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = allocated(unsafe { sys::nftnl_expr_alloc(c"match".as_ptr()) });
        let mut info = [0u8; XT_BPF_INFO_V1_BYTES];
        info[0..2].copy_from_slice(&XT_BPF_MODE_FD_ELF.to_ne_bytes());
        info[4..8].copy_from_slice(&self.program_fd.to_ne_bytes());
        // libnftnl keeps the match's info pointer as given and frees it with the expression: it must come
        // from malloc.
        let data = allocated(unsafe { libc::malloc(XT_BPF_INFO_V1_BYTES) }.cast::<u8>());
        // SAFETY: `data` holds XT_BPF_INFO_V1_BYTES bytes; `expr` is a live match expression, which takes
        // `data` over; libnftnl copies the name and the revision.
        unsafe {
            std::ptr::copy_nonoverlapping(info.as_ptr(), data.as_ptr(), XT_BPF_INFO_V1_BYTES);
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_str(raw, sys::NFTNL_EXPR_MT_NAME as u16, c"bpf".as_ptr());
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_MT_REV as u16, XT_BPF_REVISION);
            sys::nftnl_expr_set(
                raw,
                sys::NFTNL_EXPR_MT_INFO as u16,
                data.as_ptr().cast::<c_void>(),
                XT_BPF_INFO_V1_BYTES as u32,
            );
        }
        expr
    }
}

//! The transition tracer's BPF program, written out instruction by instruction: run at the kernel's
//! `sock:inet_sock_set_state` tracepoint (as a raw tracepoint: `sk`, `oldstate`, `newstate`), it keeps the
//! transitions of IPv4 and IPv6 TCP sockets whose network namespace is one of the run's and hands each to user space
//! through a ring buffer, stamped with the kernel's monotonic clock at the transition.

use super::btf::{Btf, Field};
use crate::error::Result;

/// `AF_INET`, `AF_INET6`, `IPPROTO_TCP`.
const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
const IPPROTO_TCP: i32 = 6;

/// One record in the ring buffer, as the programs write it (native byte order unless said otherwise): a
/// header, then a transition's or a dropped packet's fields.
pub mod record {
    /// [`TRANSITION`], [`DROP`] or [`TC_DROP`].
    pub const KIND: usize = 0;
    pub const TRANSITION: u32 = 1;
    pub const DROP: u32 = 2;
    /// A packet a fault drops, written by a program in the fault's own path as the packet goes by: a
    /// `qdisc-drop` fault's `tc` program as it returns TC_ACT_SHOT ([`BY_QDISC`], see
    /// [`super::tc_drop_marked_instructions`]), an egress fault's rule as it matches ([`BY_NETFILTER`], see
    /// [`super::netfilter_drop_instructions`]). Laid out as a [`DROP`] record, [`DROP_INSTANCE`] and [`SKB`]
    /// 0. One record per drop: the program is not a tracepoint's, so no run of it is skipped and none is
    /// doubled.
    pub const TC_DROP: u32 = 3;
    /// Index of the host whose namespace the socket is in (by `HostId::index()`).
    pub const HOST: usize = 4;
    /// `bpf_ktime_get_ns()` at the transition or drop (CLOCK_MONOTONIC).
    pub const TIME_NS: usize = 8;
    /// A transition: the socket's kernel address (tells sockets apart across their transitions, never shown),
    /// the two states, the remote and local IPv4 address (network byte order), the remote port (network byte
    /// order) and the local port (native order, 0 until the socket has one).
    pub const SOCK: usize = 16;
    pub const OLD_STATE: usize = 24;
    pub const NEW_STATE: usize = 28;
    pub const REMOTE_ADDRESS: usize = 32;
    pub const LOCAL_ADDRESS: usize = 36;
    pub const REMOTE_PORT: usize = 40;
    pub const LOCAL_PORT: usize = 42;
    /// Which of the two instances of the program wrote the record (see [`super::Instance`]).
    pub const TRANSITION_INSTANCE: usize = 44;
    /// The socket's family (`AF_INET` or `AF_INET6`), and for an IPv6 socket its remote and local IPv6
    /// addresses (network byte order; a v4-mapped address for an IPv4 peer of a dual-stack socket). An IPv4
    /// socket's copy of those fields is not read.
    pub const FAMILY: usize = 48;
    pub const REMOTE_ADDRESS6: usize = 56;
    pub const LOCAL_ADDRESS6: usize = 72;
    /// The registration the record was written for ([`TRANSITION_TOKEN`], [`DROP_TOKEN`]): a ring is used by one
    /// scenario after another, and a reader keeps only its own scenario's records (see `super::super::Claim`).
    pub const TRANSITION_TOKEN: usize = 88;
    pub const TRANSITION_LEN: usize = 96;
    /// A dropped packet: who dropped it ([`BY_NETFILTER`] or [`BY_QDISC`]), the instance of the program that
    /// wrote the record, its first bytes from its IPv4 header on, and its `struct sk_buff`'s kernel address (tells the
    /// second instance's record of a drop from another drop, never shown).
    pub const DROPPED_BY: usize = 16;
    pub const DROP_INSTANCE: usize = 20;
    pub const BY_NETFILTER: u32 = 1;
    pub const BY_QDISC: u32 = 2;
    pub const PACKET: usize = 24;
    pub const PACKET_BYTES: usize = 64;
    pub const SKB: usize = PACKET + PACKET_BYTES;
    pub const DROP_TOKEN: usize = SKB + 8;
    pub const DROP_LEN: usize = DROP_TOKEN + 8;
}

/// Each program is loaded and attached twice, as two instances, because the kernel runs a tracepoint's program
/// at most once per CPU at a time: a hit in an interrupt (or in the softirq work run at its end) that came
/// while the same program ran on that CPU is skipped, and only counted (`bpftool prog show`'s
/// recursion_misses). A transition made in a softirq that interrupted the program's run for some other
/// socket (any socket of the machine: the program sees them all before it filters) was lost that way. Such an
/// interrupt comes during one of the two instances at most, and the other records the hit; the reader keeps
/// one record of each pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instance {
    First,
    Second,
}

impl Instance {
    pub const BOTH: [Instance; 2] = [Instance::First, Instance::Second];

    /// The number the program writes into its records.
    pub fn number(self) -> u32 {
        match self {
            Instance::First => 0,
            Instance::Second => 1,
        }
    }

    /// The copy `number` names; `None` for any other number.
    pub fn of_number(number: u32) -> Option<Instance> {
        Instance::BOTH.into_iter().find(|instance| instance.number() == number)
    }

    pub fn other(self) -> Instance {
        match self {
            Instance::First => Instance::Second,
            Instance::Second => Instance::First,
        }
    }
}

/// Where the program finds what it reads in the running kernel's `struct sock` and `struct net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockLayout {
    /// `sk->__sk_common.skc_net.net`: the socket's `struct net *`.
    net: Field,
    /// `net->ns.inum`: the namespace's inode number, as `ls -i /proc/<pid>/ns/net` shows it.
    inum: Field,
    family: Field,
    protocol: Field,
    remote_address: Field,
    local_address: Field,
    remote_port: Field,
    local_port: Field,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr`: an IPv6 socket's addresses, read on their own (outside the span).
    remote_address6: Field,
    local_address6: Field,
}

/// `offset:size` of each field, comma-separated: how a layout travels to the scenario processes.
fn fields_text(fields: &[Field]) -> String {
    fields.iter().map(|field| format!("{}:{}", field.offset, field.size)).collect::<Vec<_>>().join(",")
}

/// The fields [`fields_text`] wrote; `None` unless there are exactly `N`.
fn parse_fields<const N: usize>(text: &str) -> Option<[Field; N]> {
    let fields: Vec<Field> = text
        .split(',')
        .map(|pair| {
            let (offset, size) = pair.split_once(':')?;
            Some(Field { offset: offset.parse().ok()?, size: size.parse().ok()? })
        })
        .collect::<Option<_>>()?;
    fields.try_into().ok()
}

impl std::fmt::Display for SockLayout {
    /// `offset:size` of each field, comma-separated, in declaration order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&fields_text(&self.fields()))
    }
}

impl SockLayout {
    fn fields(&self) -> [Field; 10] {
        [
            self.net,
            self.inum,
            self.family,
            self.protocol,
            self.remote_address,
            self.local_address,
            self.remote_port,
            self.local_port,
            self.remote_address6,
            self.local_address6,
        ]
    }

    /// A layout as [`Display`](std::fmt::Display) writes it; `None` unless it is exactly that, with sizes the
    /// program can read (the namespace pointer 8 bytes; inode, IPv4 addresses 4; family, protocol, ports 2;
    /// IPv6 addresses 16).
    pub fn parse(text: &str) -> Option<SockLayout> {
        let [net, inum, family, protocol, remote_address, local_address, remote_port, local_port, remote_address6, local_address6] =
            parse_fields(text)?;
        let layout = SockLayout {
            net,
            inum,
            family,
            protocol,
            remote_address,
            local_address,
            remote_port,
            local_port,
            remote_address6,
            local_address6,
        };
        let sizes = layout.fields().map(|field| field.size);
        (sizes == [8, 4, 2, 2, 4, 4, 2, 2, 16, 16] && layout.span().1 <= MAX_SPAN).then_some(layout)
    }

    /// The bytes of `struct sock` that hold the namespace pointer, family, addresses and ports, read at once.
    fn span(&self) -> (u32, u32) {
        let fields =
            [self.net, self.family, self.remote_address, self.local_address, self.remote_port, self.local_port];
        let start = fields.iter().map(|f| f.offset).min().unwrap_or(0);
        let end = fields.iter().map(|f| f.offset + f.size).max().unwrap_or(0);
        (start, end - start)
    }

    /// The layout of the running kernel, from its type information.
    pub fn of(btf: &Btf) -> Result<SockLayout> {
        let (sock, net) = (btf.struct_named("sock")?, btf.struct_named("net")?);
        let common = |member: &str| btf.field_in(sock, "sock", &["__sk_common", member]);
        let layout = SockLayout {
            net: btf.field_in(sock, "sock", &["__sk_common", "skc_net", "net"])?,
            inum: btf.field_in(net, "net", &["ns", "inum"])?,
            family: common("skc_family")?,
            protocol: btf.field_in(sock, "sock", &["sk_protocol"])?,
            remote_address: common("skc_daddr")?,
            local_address: common("skc_rcv_saddr")?,
            remote_port: common("skc_dport")?,
            local_port: common("skc_num")?,
            remote_address6: common("skc_v6_daddr")?,
            local_address6: common("skc_v6_rcv_saddr")?,
        };
        let (_, len) = layout.span();
        if len > MAX_SPAN {
            return Err(crate::error::Error::Missing {
                what: format!("struct sock_common with its addresses and namespace within {MAX_SPAN} bytes ({len})"),
                hint: "a kernel whose struct layout the transition tracer knows (Linux >= 5.8)".into(),
            });
        }
        Ok(layout)
    }
}

/// The sizes of `sk`, `head`, `network_header` and `skb_iif` as the drop program reads them.
const SKB_SIZES: [u32; 4] = [8, 8, 2, 4];

/// Where the drop program finds a packet in the running kernel's `struct sk_buff`, and the kernel's drop
/// reason it keeps (`enum skb_drop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkbLayout {
    sk: Field,
    head: Field,
    network_header: Field,
    /// The interface a packet arrived on; 0 for one the host made (the only drops kept).
    skb_iif: Field,
    qdisc_drop: u32,
}

impl std::fmt::Display for SkbLayout {
    /// The fields as [`SockLayout`] writes its own, then `;` and the drop reason's value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = fields_text(&[self.sk, self.head, self.network_header, self.skb_iif]);
        write!(f, "{fields};{}", self.qdisc_drop)
    }
}

impl SkbLayout {
    /// A layout as [`Display`](std::fmt::Display) writes it; `None` unless it is exactly that, with the sizes
    /// the program reads.
    pub fn parse(text: &str) -> Option<SkbLayout> {
        let (fields, reason) = text.split_once(';')?;
        let [sk, head, network_header, skb_iif] = parse_fields(fields)?;
        let layout = SkbLayout { sk, head, network_header, skb_iif, qdisc_drop: reason.parse().ok()? };
        (layout.sizes() == SKB_SIZES).then_some(layout)
    }

    fn sizes(&self) -> [u32; 4] {
        [self.sk.size, self.head.size, self.network_header.size, self.skb_iif.size]
    }

    pub fn of(btf: &Btf) -> Result<SkbLayout> {
        let skb = btf.struct_named("sk_buff")?;
        let reason = |name: &str| btf.enum_value("skb_drop_reason", name);
        let layout = SkbLayout {
            sk: btf.field_in(skb, "sk_buff", &["sk"])?,
            head: btf.field_in(skb, "sk_buff", &["head"])?,
            network_header: btf.field_in(skb, "sk_buff", &["network_header"])?,
            skb_iif: btf.field_in(skb, "sk_buff", &["skb_iif"])?,
            qdisc_drop: reason("SKB_DROP_REASON_QDISC_DROP")?,
        };
        let sizes = layout.sizes();
        if sizes != SKB_SIZES {
            return Err(crate::error::Error::Missing {
                what: format!(
                    "struct sk_buff with sk, head, network_header and skb_iif as the drop tracer reads them \
                     ({sizes:?})"
                ),
                hint: "a kernel whose struct layout the transition tracer knows (Linux >= 5.17)".into(),
            });
        }
        Ok(layout)
    }
}

/// The maps a scenario's own programs (drops) use, by descriptor, and the token their records carry.
#[derive(Debug, Clone, Copy)]
pub struct Maps {
    /// Ring buffer of records.
    pub ring: i32,
    /// Array of one u64: records the ring buffer had no room for.
    pub lost: i32,
    /// What the scenario's records carry at [`record::DROP_TOKEN`] (its claim of the ring).
    pub token: u64,
}

/// The most bytes of `struct sock_common` the program copies at once: the namespace pointer, family,
/// addresses and ports lie within its first 64 bytes on every kernel the tracer knows.
const MAX_SPAN: u32 = 128;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_KTIME_GET_NS: i32 = 5;
const HELPER_SKB_LOAD_BYTES: i32 = 26;
const HELPER_PROBE_READ_KERNEL: i32 = 113;
const HELPER_RINGBUF_RESERVE: i32 = 131;
const HELPER_RINGBUF_SUBMIT: i32 = 132;

const LDX: u8 = 0x01;
/// Jumps comparing the low 32 bits (an inode number is a u32; a 64-bit compare would sign-extend the immediate).
const JMP32: u8 = 0x06;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const SIZE_H: u8 = 0x08;
const SIZE_DW: u8 = 0x18;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const SOURCE_REG: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_MOV: u8 = 0xb0;
const OP_JA: u8 = 0x00;
const OP_JEQ: u8 = 0x10;
const OP_JNE: u8 = 0x50;
/// Signed compares: `if dst s< imm`, `if dst s<= imm`.
const OP_JSLT: u8 = 0xc0;
const OP_JSLE: u8 = 0xd0;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
/// `ld_imm64` of a map by descriptor (`BPF_LD | BPF_IMM | BPF_DW`, source `BPF_PSEUDO_MAP_FD`).
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// Stack slots (offsets from the frame pointer): the copied span of the socket first.
const SLOT_SPAN: i16 = -(MAX_SPAN as i16);
const SLOT_INUM: i16 = SLOT_SPAN - 8;
const SLOT_PROTOCOL: i16 = SLOT_SPAN - 16;
const SLOT_TIME: i16 = SLOT_SPAN - 24;
const SLOT_ZERO: i16 = SLOT_SPAN - 28;
/// The namespace entry's ring slot and token.
const SLOT_RING: i16 = SLOT_SPAN - 32;
/// An IPv6 socket's remote and local addresses, 16 bytes each.
const SLOT_REMOTE6: i16 = SLOT_SPAN - 48;
const SLOT_LOCAL6: i16 = SLOT_SPAN - 64;
const SLOT_TOKEN: i16 = SLOT_SPAN - 72;
/// The drop program's own slots (its packet copy where the transition program copies the socket).
const SLOT_PACKET: i16 = -(record::PACKET_BYTES as i16);
const SLOT_SOCK: i16 = SLOT_PACKET - 8;
const SLOT_NET_POINTER: i16 = SLOT_PACKET - 16;
const SLOT_HEAD: i16 = SLOT_PACKET - 32;
const SLOT_NETWORK_HEADER: i16 = SLOT_PACKET - 40;
const SLOT_IIF: i16 = SLOT_PACKET - 48;

/// Jump targets, patched once the program is complete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    /// Nothing to record: the program returns 0.
    Out,
    Lost,
    /// After the record (or its loss): the program returns its verdict.
    Done,
    Ours,
    Copy,
    /// An IPv4 or IPv6 socket: go on to the protocol check.
    Inet,
    /// The ring buffer of the slot with this number is chosen (see [`instructions`]).
    Slot(u16),
    /// A ring buffer is in R1: reserve the record.
    Reserve,
}

#[derive(Default)]
struct Assembler {
    insns: Vec<u64>,
    jumps: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Assembler {
    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        let registers = if cfg!(target_endian = "little") { (src << 4) | dst } else { (dst << 4) | src };
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[1] = registers;
        bytes[2..4].copy_from_slice(&off.to_ne_bytes());
        bytes[4..8].copy_from_slice(&imm.to_ne_bytes());
        self.insns.push(u64::from_ne_bytes(bytes));
    }

    fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.raw(LDX | size | MODE_MEM, dst, src, off, 0);
    }

    fn store(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.raw(STX | size | MODE_MEM, dst, src, off, 0);
    }

    fn mov(&mut self, dst: u8, src: u8) {
        self.raw(ALU64 | OP_MOV | SOURCE_REG, dst, src, 0, 0);
    }

    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64 | OP_MOV, dst, 0, 0, imm);
    }

    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64 | OP_ADD, dst, 0, 0, imm);
    }

    fn add(&mut self, dst: u8, src: u8) {
        self.raw(ALU64 | OP_ADD | SOURCE_REG, dst, src, 0, 0);
    }

    fn store_imm(&mut self, size: u8, dst: u8, off: i16, imm: i32) {
        self.raw(ST | size | MODE_MEM, dst, 0, off, imm);
    }

    fn call(&mut self, helper: i32) {
        self.raw(JMP | OP_CALL, 0, 0, 0, helper);
    }

    fn jump(&mut self, op: u8, dst: u8, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.raw(JMP | op, dst, 0, 0, imm);
    }

    fn jump32(&mut self, op: u8, dst: u8, imm: u32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.raw(JMP32 | op, dst, 0, 0, imm as i32);
    }

    fn jump_if_registers(&mut self, op: u8, dst: u8, src: u8, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.raw(JMP | op | SOURCE_REG, dst, src, 0, 0);
    }

    fn label(&mut self, label: Label) {
        self.labels.push((label, self.insns.len()));
    }

    fn map(&mut self, dst: u8, fd: i32) {
        self.raw(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }

    /// `bpf_probe_read_kernel(fp + slot, size, base + field)`, leaving the program when it fails.
    fn probe(&mut self, slot: i16, base: u8, field: Field) {
        self.mov(R1, FP);
        self.add_imm(R1, i32::from(slot));
        self.mov_imm(R2, field.size as i32);
        self.mov(R3, base);
        self.add_imm(R3, field.offset as i32);
        self.call(HELPER_PROBE_READ_KERNEL);
        self.jump(OP_JNE, R0, 0, Label::Out);
    }

    fn finish(mut self) -> Vec<u64> {
        for (at, label) in std::mem::take(&mut self.jumps) {
            let target = self.labels.iter().find(|(l, _)| *l == label).map(|(_, at)| *at).unwrap_or(at + 1);
            let off = (target as i64 - at as i64 - 1) as i16;
            let mut bytes = self.insns[at].to_ne_bytes();
            bytes[2..4].copy_from_slice(&off.to_ne_bytes());
            self.insns[at] = u64::from_ne_bytes(bytes);
        }
        self.insns
    }
}

/// The maps of the transition program, shared by every scenario of a process ([`super::Shared`]), by
/// descriptor.
#[derive(Debug, Clone)]
pub struct SharedMaps {
    /// Hash: a namespace's inode number -> [`namespace_entry`] (`bpftool map update ... key <inum>`): the
    /// namespaces whose transitions are kept.
    pub namespaces: i32,
    /// The ring buffers, one per slot (a scenario claims one: [`namespace_entry::SLOT`]), each named in the
    /// program itself: no map of maps, whose every change waits for an RCU grace period in the kernel.
    pub rings: Vec<i32>,
}

/// The most ring slots one program names: the kernel takes at most 64 maps per program, the namespaces' one
/// among them.
pub const SLOTS_MAX: usize = 63;

/// A [`SharedMaps::namespaces`] value: the host's number (`HostId::index()`), who registered it (see
/// [`super::set_owner`]), the count of its records the scenario's ring had no room for, the scenario's ring
/// slot (an index into [`SharedMaps::rings`]) and the token its records carry ([`record::TRANSITION_TOKEN`]).
pub mod namespace_entry {
    pub const HOST: usize = 0;
    pub const OWNER: usize = 4;
    pub const LOST: usize = 8;
    pub const SLOT: usize = 16;
    pub const TOKEN: usize = 24;
    pub const LEN: usize = 32;
}

/// The program's instructions for `layout`, `maps` and which `instance` of the program it is. They hold no
/// scenario's namespaces: each scenario registers its own in `maps` (its hosts' inode numbers, each with its
/// host's number, its scenario's ring slot and token), so one loaded program serves every scenario of a process.
pub fn instructions(layout: &SockLayout, maps: &SharedMaps, instance: Instance) -> Vec<u64> {
    let mut a = Assembler::default();
    let (span_start, span_len) = layout.span();
    let in_span = |field: Field| SLOT_SPAN + (field.offset - span_start) as i16;
    // Raw tracepoint arguments: (struct sock *sk, int oldstate, int newstate).
    a.load(SIZE_DW, R6, R1, 0);
    a.load(SIZE_DW, R7, R1, 8);
    a.load(SIZE_DW, R8, R1, 16);
    // The time first: closest to the transition.
    a.call(HELPER_KTIME_GET_NS);
    a.store(SIZE_DW, FP, SLOT_TIME, R0);
    // `tcp_close` of a socket that never connected "changes" CLOSE to CLOSE: nothing to record.
    a.jump_if_registers(OP_JEQ, R7, R8, Label::Out);
    // One copy of the socket's common part: namespace pointer, family, addresses, ports.
    a.probe(SLOT_SPAN, R6, Field { offset: span_start, size: span_len });
    // IPv4 and IPv6 only (the tracepoint fires for other families too): the cheapest test first, from the copy.
    a.load(SIZE_H, R1, FP, in_span(layout.family));
    a.jump(OP_JEQ, R1, AF_INET, Label::Inet);
    a.jump(OP_JNE, R1, AF_INET6, Label::Out);
    a.label(Label::Inet);
    // The namespace's inode: one a scenario registered, else not ours. Its host's number into R9, its slot and
    // token onto the stack.
    a.load(SIZE_DW, R9, FP, in_span(layout.net));
    a.probe(SLOT_INUM, R9, layout.inum);
    a.lookup(maps.namespaces, SLOT_INUM);
    a.jump(OP_JEQ, R0, 0, Label::Out);
    a.load(SIZE_W, R9, R0, namespace_entry::HOST as i16);
    a.load(SIZE_W, R1, R0, namespace_entry::SLOT as i16);
    a.store(SIZE_W, FP, SLOT_RING, R1);
    a.load(SIZE_DW, R1, R0, namespace_entry::TOKEN as i16);
    a.store(SIZE_DW, FP, SLOT_TOKEN, R1);
    // TCP only (the tracepoint fires for SCTP and MPTCP too).
    a.probe(SLOT_PROTOCOL, R6, layout.protocol);
    a.load(SIZE_H, R1, FP, SLOT_PROTOCOL);
    a.jump(OP_JNE, R1, IPPROTO_TCP, Label::Out);
    // Both sockets' IPv6 address fields, before the record is reserved (a failed read leaves the program,
    // which must not hold a reservation then); user space reads them for an IPv6 socket only.
    a.probe(SLOT_REMOTE6, R6, layout.remote_address6);
    a.probe(SLOT_LOCAL6, R6, layout.local_address6);
    // The scenario's own ring: the one of its slot, named here by descriptor (a slot no ring has: not ours).
    a.load(SIZE_W, R2, FP, SLOT_RING);
    let slots = maps.rings.len().min(SLOTS_MAX);
    for slot in 0..slots {
        a.jump(OP_JEQ, R2, slot as i32, Label::Slot(slot as u16));
    }
    a.jump(OP_JA, 0, 0, Label::Out);
    for (slot, &ring) in maps.rings.iter().take(slots).enumerate() {
        a.label(Label::Slot(slot as u16));
        a.map(R1, ring);
        a.jump(OP_JA, 0, 0, Label::Reserve);
    }
    a.label(Label::Reserve);
    a.reserve_in_r1(record::TRANSITION_LEN, record::TRANSITION);
    a.store(SIZE_DW, R0, record::SOCK as i16, R6);
    a.store(SIZE_W, R0, record::OLD_STATE as i16, R7);
    a.store(SIZE_W, R0, record::NEW_STATE as i16, R8);
    for (size, field, at) in [
        (SIZE_W, layout.remote_address, record::REMOTE_ADDRESS),
        (SIZE_W, layout.local_address, record::LOCAL_ADDRESS),
        (SIZE_H, layout.remote_port, record::REMOTE_PORT),
        (SIZE_H, layout.local_port, record::LOCAL_PORT),
    ] {
        a.load(size, R1, FP, in_span(field));
        a.store(size, R0, at as i16, R1);
    }
    a.load(SIZE_H, R1, FP, in_span(layout.family));
    a.store(SIZE_W, R0, record::FAMILY as i16, R1);
    for (slot, at) in [(SLOT_REMOTE6, record::REMOTE_ADDRESS6), (SLOT_LOCAL6, record::LOCAL_ADDRESS6)] {
        for half in [0, 8] {
            a.load(SIZE_DW, R1, FP, slot + half);
            a.store(SIZE_DW, R0, (at as i16) + half, R1);
        }
    }
    a.store_imm(SIZE_W, R0, record::TRANSITION_INSTANCE as i16, instance.number() as i32);
    a.load(SIZE_DW, R1, FP, SLOT_TOKEN);
    a.store(SIZE_DW, R0, record::TRANSITION_TOKEN as i16, R1);
    a.submit_and_exit(Lost::Namespace(maps.namespaces), 0);
    a.finish()
}

/// Where a program counts a record its ring had no room for.
#[derive(Debug, Clone, Copy)]
enum Lost {
    /// The one u64 of an array map (a scenario's own, [`Maps::lost`]).
    Array(i32),
    /// The namespace's entry in [`SharedMaps::namespaces`] (its inode number at [`SLOT_INUM`]).
    Namespace(i32),
}

/// The drop program's instructions: run at the `skb:kfree_skb` tracepoint (`skb`, `location`, `reason`), it
/// keeps the packets the run's namespaces made (not those they received) that a queueing discipline dropped
/// (the kernel's drop reason QDISC_DROP: a full queue a program added, `tc qdisc add ... tbf`) and hands their first
/// bytes to user space, stamped with the kernel's monotonic clock at the drop. Such a packet never reaches the
/// wire, so no capture has it. The drops of faults are not kept here: a `qdisc-drop` fault's `tc` program
/// ([`tc_drop_marked_instructions`]) and an egress fault's rule ([`netfilter_drop_instructions`]) record each
/// drop they make themselves, because the kernel fires the tracepoint only when it frees the packet's last
/// reference, and under load it freed some of them without firing it.
pub fn drop_instructions(
    sock: &SockLayout,
    skb: &SkbLayout,
    namespaces: &[(u32, u32)],
    maps: Maps,
    instance: Instance,
) -> Vec<u64> {
    let mut a = Assembler::default();
    a.load(SIZE_DW, R6, R1, 0);
    a.load(SIZE_DW, R7, R1, 16);
    a.jump32(OP_JNE, R7, skb.qdisc_drop, Label::Out);
    a.call(HELPER_KTIME_GET_NS);
    a.store(SIZE_DW, FP, SLOT_TIME, R0);
    // Made by the host, not received: an arriving packet early demux gave a socket is the capture's to show.
    a.probe(SLOT_IIF, R6, skb.skb_iif);
    a.load(SIZE_W, R1, FP, SLOT_IIF);
    a.jump(OP_JNE, R1, 0, Label::Out);
    // The packet's socket, its namespace: one of the run's.
    a.probe(SLOT_SOCK, R6, skb.sk);
    a.load(SIZE_DW, R9, FP, SLOT_SOCK);
    a.jump(OP_JEQ, R9, 0, Label::Out);
    a.probe(SLOT_NET_POINTER, R9, sock.net);
    a.load(SIZE_DW, R9, FP, SLOT_NET_POINTER);
    a.host_of_namespace(R9, sock.inum, namespaces);
    // skb->head + skb->network_header: the IPv4 header.
    a.probe(SLOT_HEAD, R6, skb.head);
    a.probe(SLOT_NETWORK_HEADER, R6, skb.network_header);
    a.load(SIZE_DW, R7, FP, SLOT_HEAD);
    a.load(SIZE_H, R1, FP, SLOT_NETWORK_HEADER);
    a.add(R7, R1);
    a.probe(SLOT_PACKET, R7, Field { offset: 0, size: record::PACKET_BYTES as u32 });
    a.reserve(maps.ring, record::DROP_LEN, record::DROP);
    a.store_imm(SIZE_W, R0, record::DROPPED_BY as i16, record::BY_QDISC as i32);
    a.store_imm(SIZE_W, R0, record::DROP_INSTANCE as i16, instance.number() as i32);
    a.store(SIZE_DW, R0, record::SKB as i16, R6);
    a.copy_packet_into_record();
    a.store_token(maps.token);
    a.submit_and_exit(Lost::Array(maps.lost), 0);
    a.finish()
}

/// Where a program in a fault's path (a `qdisc-drop` fault's `tc` program, an egress fault's rule match)
/// records the packets its fault drops: the tracer's maps, and the number of the host whose packets they are
/// (`HostId::index()`).
#[derive(Debug, Clone, Copy)]
pub struct DropRecording {
    pub maps: Maps,
    pub host: u32,
}

/// A `tc` direct-action program (`BPF_PROG_TYPE_SCHED_CLS`, as `tc filter add ... bpf da` loads it): drops the
/// packets whose mark, under `mask`, is `mark`; lets every other packet go on. With `recording`, before it
/// returns TC_ACT_SHOT it writes a [`record::TC_DROP`] record of the packet (see [`Assembler::record_packet`]).
pub fn tc_drop_marked_instructions(mark: u32, mask: u32, recording: Option<DropRecording>) -> Vec<u64> {
    let mut a = Assembler::default();
    a.mov(R6, R1);
    a.load(SIZE_W, R0, R6, SKB_MARK);
    a.raw(ALU32 | OP_AND, R0, 0, 0, mask as i32);
    a.jump32(OP_JNE, R0, mark, Label::Out);
    let Some(recording) = recording else {
        a.mov_imm(R0, TC_ACT_SHOT);
        a.raw(JMP | OP_EXIT, 0, 0, 0, 0);
        a.label(Label::Out);
        a.mov_imm(R0, TC_ACT_OK);
        a.raw(JMP | OP_EXIT, 0, 0, 0, 0);
        return a.finish();
    };
    // A veth's packet at `tc` egress starts with its Ethernet header.
    a.record_packet(ETH_HLEN, record::BY_QDISC, recording, TC_ACT_SHOT);
    a.finish()
}

/// A socket-filter program (`BPF_PROG_TYPE_SOCKET_FILTER`) for an egress fault's rule, where nftables runs it
/// through the `bpf` match of xtables (`iptables -m bpf --object-pinned`, through `nft_compat`) after the
/// fault's own conditions matched and before its counter and verdict: it writes a [`record::TC_DROP`] record
/// of every packet the rule is about to drop or reject, [`record::BY_NETFILTER`], and always matches. The
/// kernel's `skb:kfree_skb` tracepoint, which would show the drop too, fires only when the packet's last
/// reference goes: beside a loaded suite it missed one of four such drops in 9 of 160 runs of
/// egress/netfilter-drop-probes, with neither instance of the drop program run nor skipped for it.
pub fn netfilter_drop_instructions(recording: DropRecording) -> Vec<u64> {
    let mut a = Assembler::default();
    a.mov(R6, R1);
    // At a netfilter hook the packet starts with its IP header.
    a.record_packet(0, record::BY_NETFILTER, recording, XT_MATCH);
    a.finish()
}

/// `__sk_buff`'s `len` and `mark`: what a `tc` or socket-filter program reads of the packet's length and mark.
const SKB_LEN: i16 = 0;
const SKB_MARK: i16 = 8;
/// `TC_ACT_OK` (let the packet go on) and `TC_ACT_SHOT` (drop it; the transmit returns NET_XMIT_DROP).
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// What an xtables `bpf` match program returns for "matches": anything but 0.
const XT_MATCH: i32 = 1;
const ETH_HLEN: i32 = 14;
/// The least a drop record shows of a packet: an IPv4 header without options.
const IPV4_HEADER_BYTES: i32 = 20;
const OP_AND: u8 = 0x50;
const ALU32: u8 = 0x04;

impl Assembler {
    /// The rest of a program that records the packet in its context (`struct __sk_buff`, in R6) as a
    /// [`record::TC_DROP`] record of `recording.host`, dropped by `by`, and returns `verdict`: its first bytes
    /// from its IPv4 header on (at `header_offset` in the packet), stamped with the kernel's monotonic time. A
    /// packet it cannot record (no room in the ring, shorter than an IPv4 header) counts in the tracer's lost
    /// count, which the run reports; the verdict is the same.
    fn record_packet(&mut self, header_offset: i32, by: u32, recording: DropRecording, verdict: i32) {
        self.call(HELPER_KTIME_GET_NS);
        self.store(SIZE_DW, FP, SLOT_TIME, R0);
        // The bytes to copy, from the IPv4 header on: at least its 20, at most what a record holds (the verifier
        // needs both bounds on the length `bpf_skb_load_bytes` is given).
        self.load(SIZE_W, R7, R6, SKB_LEN);
        self.add_imm(R7, -header_offset);
        self.jump(OP_JSLT, R7, IPV4_HEADER_BYTES, Label::Lost);
        self.jump(OP_JSLE, R7, record::PACKET_BYTES as i32, Label::Copy);
        self.mov_imm(R7, record::PACKET_BYTES as i32);
        self.label(Label::Copy);
        // Zeroed first: a short packet's record ends in zeros, as the kfree_skb program's shows what lies past it.
        for word in 0..record::PACKET_BYTES / 8 {
            self.store_imm(SIZE_DW, FP, SLOT_PACKET + 8 * word as i16, 0);
        }
        // bpf_skb_load_bytes(skb, header_offset, fp + SLOT_PACKET, len)
        self.mov(R1, R6);
        self.mov_imm(R2, header_offset);
        self.mov(R3, FP);
        self.add_imm(R3, i32::from(SLOT_PACKET));
        self.mov(R4, R7);
        self.call(HELPER_SKB_LOAD_BYTES);
        self.jump(OP_JNE, R0, 0, Label::Lost);
        self.mov_imm(R9, recording.host as i32);
        self.reserve(recording.maps.ring, record::DROP_LEN, record::TC_DROP);
        self.store_imm(SIZE_W, R0, record::DROPPED_BY as i16, by as i32);
        self.store_imm(SIZE_W, R0, record::DROP_INSTANCE as i16, 0);
        self.store_imm(SIZE_DW, R0, record::SKB as i16, 0);
        self.copy_packet_into_record();
        self.store_token(recording.maps.token);
        self.submit_and_exit(Lost::Array(recording.maps.lost), verdict);
    }

    /// The host whose namespace `net` (a `struct net *` in a register) is, into R9 (the host's number that
    /// `namespaces` pairs with the namespace's inode), read through its inode number field `inum`; the program
    /// leaves through [`Label::Out`] for any other namespace.
    fn host_of_namespace(&mut self, net: u8, inum: Field, namespaces: &[(u32, u32)]) {
        self.probe(SLOT_INUM, net, inum);
        self.load(SIZE_W, R1, FP, SLOT_INUM);
        for &(inode, host) in namespaces {
            self.mov_imm(R9, host as i32);
            self.jump32(OP_JEQ, R1, inode, Label::Ours);
        }
        self.jump(OP_JA, 0, 0, Label::Out);
        self.label(Label::Ours);
    }

    /// `bpf_map_lookup_elem(map, fp + key_at)`: the value of the key on the stack there, or 0, in R0.
    fn lookup(&mut self, map: i32, key_at: i16) {
        self.map(R1, map);
        self.mov(R2, FP);
        self.add_imm(R2, i32::from(key_at));
        self.call(HELPER_MAP_LOOKUP_ELEM);
    }

    /// `bpf_ringbuf_reserve(ring, len)`, the program leaving through [`Label::Lost`] when there is no room; then
    /// the record's kind, host (R9) and time (from [`SLOT_TIME`]). The record is in R0.
    fn reserve(&mut self, ring: i32, len: usize, kind: u32) {
        self.map(R1, ring);
        self.reserve_in_r1(len, kind);
    }

    /// [`Assembler::reserve`] in the ring buffer R1 holds (the slot's, see [`instructions`]).
    fn reserve_in_r1(&mut self, len: usize, kind: u32) {
        self.mov_imm(R2, len as i32);
        self.mov_imm(R3, 0);
        self.call(HELPER_RINGBUF_RESERVE);
        self.jump(OP_JEQ, R0, 0, Label::Lost);
        self.store_imm(SIZE_W, R0, record::KIND as i16, kind as i32);
        self.store(SIZE_W, R0, record::HOST as i16, R9);
        self.load(SIZE_DW, R1, FP, SLOT_TIME);
        self.store(SIZE_DW, R0, record::TIME_NS as i16, R1);
    }

    /// `token` into the drop record in R0, at [`record::DROP_TOKEN`] (two 32-bit halves: an instruction's
    /// immediate is 32 bits).
    fn store_token(&mut self, token: u64) {
        let halves = token.to_ne_bytes();
        for (at, half) in [(0, &halves[..4]), (4, &halves[4..])] {
            let half = i32::from_ne_bytes([half[0], half[1], half[2], half[3]]);
            self.store_imm(SIZE_W, R0, (record::DROP_TOKEN + at) as i16, half);
        }
    }

    /// The packet's bytes from [`SLOT_PACKET`] into the record in R0.
    fn copy_packet_into_record(&mut self) {
        for word in 0..record::PACKET_BYTES / 8 {
            self.load(SIZE_DW, R1, FP, SLOT_PACKET + 8 * word as i16);
            self.store(SIZE_DW, R0, (record::PACKET + 8 * word) as i16, R1);
        }
    }

    /// `bpf_ringbuf_submit(record)` and the program's exits: after the record, or after counting it lost
    /// (`lock *(u64 *)(r0 + 0) += 1` when the ring buffer had no room), it returns `verdict`; through
    /// [`Label::Out`] (nothing to record), where the program has a jump to it, it returns 0 (the verifier
    /// refuses instructions no path reaches).
    fn submit_and_exit(&mut self, lost: Lost, verdict: i32) {
        self.mov(R1, R0);
        self.mov_imm(R2, 0);
        self.call(HELPER_RINGBUF_SUBMIT);
        self.jump(OP_JA, 0, 0, Label::Done);
        self.label(Label::Lost);
        let counter_at = match lost {
            Lost::Array(map) => {
                self.store_imm(SIZE_W, FP, SLOT_ZERO, 0);
                self.lookup(map, SLOT_ZERO);
                0
            }
            Lost::Namespace(map) => {
                self.lookup(map, SLOT_INUM);
                namespace_entry::LOST as i16
            }
        };
        self.jump(OP_JEQ, R0, 0, Label::Done);
        self.mov_imm(R1, 1);
        self.raw(STX | SIZE_DW | MODE_ATOMIC, R0, R1, counter_at, i32::from(OP_ADD));
        self.label(Label::Done);
        self.mov_imm(R0, verdict);
        self.raw(JMP | OP_EXIT, 0, 0, 0, 0);
        if self.jumps.iter().any(|(_, label)| *label == Label::Out) {
            self.label(Label::Out);
            self.mov_imm(R0, 0);
            self.raw(JMP | OP_EXIT, 0, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> SockLayout {
        let field = |offset, size| Field { offset, size };
        SockLayout {
            net: field(48, 8),
            inum: field(200, 4),
            family: field(16, 2),
            protocol: field(520, 2),
            remote_address: field(0, 4),
            local_address: field(4, 4),
            remote_port: field(12, 2),
            local_port: field(14, 2),
            remote_address6: field(56, 16),
            local_address6: field(72, 16),
        }
    }

    fn decode(insn: u64) -> (u8, u8, u8, i16, i32) {
        let bytes = insn.to_ne_bytes();
        let (dst, src) = if cfg!(target_endian = "little") {
            (bytes[1] & 0xf, bytes[1] >> 4)
        } else {
            (bytes[1] >> 4, bytes[1] & 0xf)
        };
        (
            bytes[0],
            dst,
            src,
            i16::from_ne_bytes([bytes[2], bytes[3]]),
            i32::from_ne_bytes(bytes[4..8].try_into().unwrap()),
        )
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_exit() {
        let insns = instructions(&layout(), &SharedMaps { namespaces: 4, rings: vec![5, 6, 7] }, Instance::Second);
        let last = decode(*insns.last().unwrap());
        assert_eq!(last.0, JMP | OP_EXIT);
        for (at, insn) in insns.iter().enumerate() {
            let (code, ..) = decode(*insn);
            if matches!(code & 0x07, JMP | JMP32) && !matches!(code & 0xf0, OP_CALL | OP_EXIT) {
                let target = at as i64 + 1 + i64::from(decode(*insn).3);
                assert!((0..insns.len() as i64).contains(&target), "jump at {at} to {target}");
            }
        }
        let maps: Vec<i32> = insns.iter().map(|i| decode(*i)).filter(|d| d.0 == LD_IMM64).map(|d| d.4).collect();
        assert_eq!(
            maps,
            vec![4, 5, 6, 7, 4],
            "the namespaces, each slot's ring, the namespaces again for a lost record"
        );
        assert!(
            insns.iter().all(|i| decode(*i).0 & 0x07 != JMP32),
            "no namespace is written into the program: it looks each one up"
        );
    }

    #[test]
    fn the_common_part_is_copied_once_and_the_far_fields_apart() {
        let insns = instructions(&layout(), &SharedMaps { namespaces: 4, rings: vec![5] }, Instance::First);
        // Each probe adds its offset to its base just before setting up the call: (size, offset).
        let probes: Vec<(i32, i32)> = insns
            .windows(4)
            .filter(|w| decode(w[3]).0 == JMP | OP_CALL && decode(w[3]).4 == HELPER_PROBE_READ_KERNEL)
            .map(|w| (decode(w[0]).4, decode(w[2]).4))
            .collect();
        assert_eq!(
            probes,
            vec![(56, 0), (4, 200), (2, 520), (16, 56), (16, 72)],
            "span 0..56, net->ns.inum, sk_protocol, skc_v6_daddr, skc_v6_rcv_saddr"
        );
        assert_eq!(layout().span(), (0, 56));
    }

    #[test]
    fn a_layout_travels_as_text() {
        let text = layout().to_string();
        assert_eq!(text, "48:8,200:4,16:2,520:2,0:4,4:4,12:2,14:2,56:16,72:16");
        assert_eq!(SockLayout::parse(&text), Some(layout()));
        assert_eq!(SockLayout::parse("48:8,200:4"), None, "every field");
        assert_eq!(SockLayout::parse("48:8,200:4,16:2,520:2,0:4,4:4,12:2,14:2"), None, "the IPv6 addresses too");
        assert_eq!(
            SockLayout::parse("48:4,200:4,16:2,520:2,0:4,4:4,12:2,14:2,56:16,72:16"),
            None,
            "a pointer is 8 bytes"
        );
        assert_eq!(
            SockLayout::parse("48:8,200:4,16:2,520:2,0:4,4:4,12:2,14:2,56:4,72:16"),
            None,
            "an IPv6 address is 16 bytes"
        );
        assert_eq!(
            SockLayout::parse("4800:8,200:4,16:2,520:2,0:4,4:4,12:2,14:2,56:16,72:16"),
            None,
            "the span is too wide"
        );
        let field = |offset, size| Field { offset, size };
        let skb = SkbLayout {
            sk: field(24, 8),
            head: field(200, 8),
            network_header: field(182, 2),
            skb_iif: field(144, 4),
            qdisc_drop: 41,
        };
        let text = skb.to_string();
        assert_eq!(text, "24:8,200:8,182:2,144:4;41");
        assert_eq!(SkbLayout::parse(&text), Some(skb));
        assert_eq!(SkbLayout::parse("24:8,200:8,182:2,144:4"), None, "the drop reason");
        assert_eq!(SkbLayout::parse("24:8,200:8,182:2,144:4;5,41"), None, "a layout of before netfilter records");
        assert_eq!(SkbLayout::parse("24:8,200:8,182:4,144:4;41"), None, "network_header is 2 bytes");
    }
}

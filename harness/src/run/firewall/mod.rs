//! A host's nftables faults: table `inet netfault` with base chains `input` and `output`, one regular
//! chain and one named counter per fault, and the one-batch rule changes that switch faults on and
//! off mid-connection. Built with libnftnl through `nftnl`; no `nft` binary is run.
//!
//! A fault's match becomes rules as `nft` would write them: `meta l4proto`, `th sport`/`th dport`,
//! `tcp flags & mask == value` (a load of TCP header byte 13), and the TCP payload condition ([`payload`]:
//! through the inner-header payload base `@ih` where the kernel has it, Linux >= 6.2, through the header
//! lengths where it does not). "Payload nonempty" is a condition of the fault's rule; "payload empty" is a
//! first rule that returns from the fault's chain when the payload is not empty. Both encodings are exact for
//! any IP or TCP option length, unlike comparing `ip length` with fixed header sizes.

mod conntrack;
mod expr;
mod matcher;
mod nat;
mod payload;
mod qdisc;
mod socket;
#[cfg(test)]
mod tests;

use std::ffi::{CStr, CString};
use std::thread;

use nftnl::expr::{Bitwise, Cmp, CmpOp, IcmpCode, Immediate, Meta, Register, RejectionType, Verdict};
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

pub use conntrack::{load_conntrack_here, ConntrackTable};
pub use matcher::{matches, selects};
pub use nat::Nat;
pub use payload::{inner_header_loads, PayloadEncoding};
pub use qdisc::install_qdisc_drops;

use expr::{CounterObject, CounterRef, PayloadBase, RawPayload, XtBpfMatch, XT_BPF_REVISION};
use matcher::{Alternative, Selection};
use payload::{add_no_payload_set, add_payload_nonempty, nonempty_text};
use socket::NetfilterSocket;

use crate::error::{Error, Result};
use crate::observe::transitions::bpf::{Program, PROG_TYPE_SOCKET_FILTER};
use crate::observe::transitions::program::{netfilter_drop_instructions, DropRecording};
use crate::run::netns::Netns;
use crate::scenario::plan::{Direction, FaultAction, FaultPlan, HostId, PayloadMatch, Protocol};

/// `table inet netfault`.
const TABLE: &CStr = c"netfault";
const FAMILY: ProtoFamily = ProtoFamily::Inet;
/// `priority filter`.
const PRIORITY_FILTER: i32 = 0;

/// Batches are small (a few rules); a small page keeps each batch's buffer off the mmap path.
const BATCH_PAGE_SIZE: u32 = 4096;

/// A host's fault rules:
/// `nft add table inet netfault`, base chains `input` (`hook input`) and `output` (`hook output`),
/// `priority filter; policy accept`, and for each fault a named counter `fault_<name>` and a regular
/// chain `fault_<name>` that its base chain jumps to. Holds a netfilter socket created inside the
/// host's namespace, so it can be driven from any thread.
pub struct Firewall {
    socket: NetfilterSocket,
    host: HostId,
    /// Sorted by name.
    faults: Vec<InstalledFault>,
    /// The program egress faults' rules run to record the packets they drop; it must outlive their rules'
    /// every activation, which refers to it by descriptor.
    _recorder: Option<Program>,
}

/// What a fault's rule does to the packets it matches.
enum RuleAction {
    /// A verdict (`drop`, `reject with ...`), and how `nft` writes it.
    Verdict(Verdict, &'static str),
    /// `meta mark set <mark>`: the packet goes on, for the host's queueing discipline to drop (`qdisc-drop`).
    Mark(u32),
}

struct InstalledFault {
    name: String,
    /// `fault_<name>`: the chain and its counter.
    chain: CString,
    direction: Direction,
    selection: Selection,
    action: RuleAction,
    /// How its payload condition, if any, is written.
    encoding: PayloadEncoding,
    /// The descriptor of the program its rules run on each packet they are about to drop or reject, to record
    /// it for the timeline ([`netfilter_drop_instructions`]): for the drops and rejects of a client's or
    /// server's own packets, when the run traces drops.
    recorder: Option<i32>,
}

impl InstalledFault {
    fn new(fault: &FaultPlan, mark: u32, encoding: PayloadEncoding) -> Result<InstalledFault> {
        let refused = |why: String| Error::Internal(format!("fault {} (line {}): {why}", fault.name, fault.location));
        let selection = matcher::selection(&fault.matcher, fault.action).map_err(refused)?;
        let chain = CString::new(format!("fault_{}", fault.name))
            .map_err(|_| refused("the name contains a NUL byte".into()))?;
        let action = match fault.action {
            FaultAction::QdiscDrop => RuleAction::Mark(mark),
            action => {
                let (verdict, text) = verdict(action)
                    .ok_or_else(|| refused("an impairment is the wire's to carry out, not a rule".into()))?;
                RuleAction::Verdict(verdict, text)
            }
        };
        Ok(InstalledFault {
            name: fault.name.clone(),
            chain,
            direction: fault.direction,
            selection,
            action,
            encoding,
            recorder: None,
        })
    }

    /// Whether the fault drops packets its own host made (an egress drop or reject of a client or server),
    /// which no capture sees.
    fn drops_own_packets(&self, host: HostId) -> bool {
        self.direction == Direction::Egress && host != HostId::Router && matches!(self.action, RuleAction::Verdict(..))
    }

    fn chain_name(&self) -> String {
        self.chain.to_string_lossy().into_owned()
    }

    /// `fault_<name>_record`, the chain of a recording fault's one lasting rule (see [`fault_batch`]).
    fn record_chain(&self) -> CString {
        let mut name = self.chain.clone().into_bytes();
        name.extend_from_slice(b"_record");
        // The fault's chain name has no NUL byte (checked when it was made), and neither has the suffix.
        CString::new(name).unwrap_or_default()
    }
}

impl Firewall {
    /// `nft add table inet netfault`, its base chains, and for each of `host`'s faults
    /// `nft add counter inet netfault fault_<name>`, `nft add chain inet netfault fault_<name>` and
    /// `nft add rule inet netfault input|output jump fault_<name>`: the table in one batch, then each
    /// fault in one of its own. Every fault starts off (its chain is empty); its batch also adds and
    /// flushes its rules, so the kernel checks them now rather than at their first activation mid-run.
    /// Faults of other hosts in `faults` are skipped. A table left from an earlier install in the
    /// same namespace is replaced. A fault the kernel refuses is an error at its line. With `recording` (the
    /// tracer's maps), the rules of egress drops and rejects of a client or server record every packet they
    /// take into the tracer's ring ([`netfilter_drop_instructions`], through xtables' `bpf` match).
    ///
    /// A router's faults sit in base chain `forward` (`hook forward`), and its NAT (`nat`) in chains
    /// `prerouting` and `postrouting` of the same table, installed with the table.
    pub fn install(
        ns: &Netns,
        host: HostId,
        faults: &[FaultPlan],
        nat: Option<&Nat>,
        recording: Option<DropRecording>,
    ) -> Result<Firewall> {
        let needs_encoding = faults.iter().any(|fault| fault.host == host && fault.matcher.payload.is_some());
        let encoding = if needs_encoding { PayloadEncoding::of_this_kernel() } else { PayloadEncoding::InnerHeader };
        Firewall::install_encoded(ns, host, faults, (nat, recording), |_| encoding)
    }

    /// [`Firewall::install`] with each fault's payload condition written as `encoding` says, whatever the kernel
    /// has: to show both encodings select the same packets.
    pub(crate) fn install_encoded(
        ns: &Netns,
        host: HostId,
        faults: &[FaultPlan],
        (nat, recording): (Option<&Nat>, Option<DropRecording>),
        encoding: impl Fn(&FaultPlan) -> PayloadEncoding,
    ) -> Result<Firewall> {
        let mut own = qdisc::marks(faults)
            .filter(|(fault, _)| fault.host == host)
            .map(|(fault, mark)| Ok((InstalledFault::new(fault, mark, encoding(fault))?, fault.location)))
            .collect::<Result<Vec<_>>>()?;
        own.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
        let recorder = match recording {
            Some(recording) if own.iter().any(|(fault, _)| fault.drops_own_packets(host)) => {
                Some(drop_recorder(recording)?)
            }
            _ => None,
        };
        if let Some(program) = &recorder {
            for (fault, _) in own.iter_mut().filter(|(fault, _)| fault.drops_own_packets(host)) {
                fault.recorder = Some(program.fd());
            }
        }
        if let Some(pair) = own.windows(2).find(|pair| pair[0].0.name == pair[1].0.name) {
            return Err(Error::Internal(format!("two faults named {} on host {host}", pair[0].0.name)));
        }
        let mut socket = NetfilterSocket::open(ns)?;
        if recorder.is_some() {
            socket.load_xt_match(c"bpf", XT_BPF_REVISION).map_err(|e| Error::Missing {
                what: format!("xtables' bpf match for the egress faults of {host} to record what they drop ({e})"),
                hint: "a kernel with nft_compat and xt_bpf (CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_MATCH_BPF): \
                       modprobe nft_compat xt_bpf"
                    .into(),
            })?;
        }
        let forwards = own.iter().any(|(fault, _)| fault.direction == Direction::Forward);
        let lengths = own
            .iter()
            .any(|(fault, _)| fault.selection.payload.is_some() && fault.encoding == PayloadEncoding::HeaderLengths);
        socket.apply(&table_batch(forwards, nat, lengths)).map_err(|e| {
            let nat_rules: String =
                nat.map(Nat::text).unwrap_or_default().iter().map(|rule| format!("; {rule}")).collect();
            Error::sys(
                format!(
                    "install the fault table of {host} (nft add table inet netfault; nft add chain inet netfault \
                     input {{ type filter hook input priority filter; policy accept; }}; ...{nat_rules})"
                ),
                e,
            )
        })?;
        // One batch per fault: the kernel acknowledges every message of a batch, and the acknowledgements of
        // dozens of faults at once overflow the socket's receive buffer (ENOBUFS); a fault the kernel refuses is
        // then also named with its line.
        for (fault, location) in &own {
            socket.apply(&fault_batch(fault)).map_err(|e| {
                let what = format!(
                    "install fault {} on {host} (nft add chain inet netfault {}; {})",
                    fault.name,
                    fault.chain_name(),
                    rule_text(fault).join("; ")
                );
                Error::sys(what, e).at(*location)
            })?;
        }
        Ok(Firewall { socket, host, faults: own.into_iter().map(|(fault, _)| fault).collect(), _recorder: recorder })
    }

    /// `nft add rule inet netfault fault_<name> <match> counter name fault_<name> <action>` (a recording
    /// fault's rules `jump fault_<name>_record` instead), in one batch that first flushes the chain: switches
    /// the fault on, and is idempotent.
    pub fn activate(&mut self, fault: &str) -> Result<()> {
        let installed = find(&self.faults, self.host, fault)?;
        self.socket.apply(&switch_batch(installed, true)).map_err(|e| {
            let chain = installed.chain_name();
            let rules = rule_text(installed).join("; ");
            Error::sys(format!("switch fault {fault} on (nft flush chain inet netfault {chain}; {rules})"), e)
        })
    }

    /// `nft flush chain inet netfault fault_<name>`: switches the fault off (idempotent).
    pub fn deactivate(&mut self, fault: &str) -> Result<()> {
        let installed = find(&self.faults, self.host, fault)?;
        let chain = installed.chain_name();
        self.socket
            .apply(&switch_batch(installed, false))
            .map_err(|e| Error::sys(format!("switch fault {fault} off (nft flush chain inet netfault {chain})"), e))
    }

    /// Closes the netfilter socket (the table goes with its namespace) on a thread of its own. Closing it makes
    /// nf_tables first finish the destroy work of recent rule changes (its NETLINK_URELEASE handler flushes
    /// that work, which waits for an RCU grace period): measured 7 ms median right after a fault switch, time
    /// the run has no reason to wait for.
    pub fn close_in_background(self) {
        let name = format!("nft-close-{}", self.host);
        // If no thread can be started, the closure and the socket in it are dropped here: closed inline.
        let _ = thread::Builder::new().name(name).spawn(move || drop(self));
    }

    /// Packets each fault's rules have hit so far, across every time it was on
    /// (`nft list counters table inet netfault`), sorted by fault name.
    pub fn counters(&mut self) -> Result<Vec<(String, u64)>> {
        let values = self.socket.counters(FAMILY, TABLE).map_err(|e| {
            Error::sys(format!("read fault counters of {} (nft list counters table inet netfault)", self.host), e)
        })?;
        self.faults
            .iter()
            .map(|fault| {
                let chain = fault.chain.to_string_lossy();
                values
                    .iter()
                    .find(|value| value.name == chain)
                    .map(|value| (fault.name.clone(), value.packets))
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "counter {chain} of host {} is missing from table inet netfault",
                            self.host
                        ))
                    })
            })
            .collect()
    }
}

/// The program that records the packets egress faults drop ([`netfilter_drop_instructions`]), loaded.
fn drop_recorder(recording: DropRecording) -> Result<Program> {
    let insns = netfilter_drop_instructions(recording);
    Program::load(PROG_TYPE_SOCKET_FILTER, "netfault_nfdrop", &insns, c"Dual MIT/GPL").map_err(|refusal| {
        let log: String = refusal.log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        Error::sys(
            format!("load the program that records the packets egress faults drop (verifier: {log})"),
            refusal.error,
        )
    })
}

fn find<'a>(faults: &'a [InstalledFault], host: HostId, fault: &str) -> Result<&'a InstalledFault> {
    faults
        .iter()
        .find(|installed| installed.name == fault)
        .ok_or_else(|| Error::Internal(format!("host {host} has no fault named {fault}")))
}

fn base_chain<'a>(table: &'a Table, name: &CStr, hook: Hook) -> Chain<'a> {
    let mut chain = Chain::new(name, table);
    chain.set_hook(hook, PRIORITY_FILTER);
    chain.set_type(ChainType::Filter);
    chain.set_policy(Policy::Accept);
    chain
}

/// The table and its base chains (`forward` when the host has faults on forwarded packets) and the host's NAT,
/// replacing a table left from an earlier install.
fn table_batch(forwards: bool, nat: Option<&Nat>, no_payload_set: bool) -> FinalizedBatch {
    let table = Table::new(TABLE, FAMILY);
    let mut batch = Batch::with_page_size(BATCH_PAGE_SIZE);
    // `add table; delete table; add table` replaces a leftover table and never fails on a fresh one.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    batch.add(&base_chain(&table, c"input", Hook::In), MsgType::Add);
    batch.add(&base_chain(&table, c"output", Hook::Out), MsgType::Add);
    if forwards {
        batch.add(&base_chain(&table, c"forward", Hook::Forward), MsgType::Add);
    }
    if let Some(nat) = nat {
        nat.add_to(&mut batch, &table);
    }
    if no_payload_set {
        add_no_payload_set(&mut batch, &table);
    }
    batch.finalize()
}

/// One fault, off: its counter, its chain and the base chain's jump to it; its rules are added and flushed
/// again, so that the kernel checks them now rather than at their first activation mid-run.
///
/// A fault that records what it drops (xtables' `bpf` match) keeps that match out of the rules it switches: its
/// chain's rules end in `jump fault_<name>_record`, a chain made here whose one rule (the match, the counter, the
/// verdict) stays for the whole run. Adding a rule with an xtables match first waits for nf_tables' pending
/// destroy work of every namespace (`nft_compat_wait_for_destructors`), an RCU grace period: 11-15 ms on an idle
/// machine and seconds with a suite running, which switched egress/netfilter-drop-probes' fault on after the
/// probes it was to drop. A jump to an existing chain waits for nothing.
fn fault_batch(fault: &InstalledFault) -> FinalizedBatch {
    let table = Table::new(TABLE, FAMILY);
    let base = Chain::new(
        match fault.direction {
            Direction::Ingress => c"input",
            Direction::Egress => c"output",
            Direction::Forward => c"forward",
        },
        &table,
    );
    let mut batch = Batch::with_page_size(BATCH_PAGE_SIZE);
    batch.add(&CounterObject::new(FAMILY, TABLE, &fault.chain), MsgType::Add);
    batch.add(&Chain::new(&fault.chain, &table), MsgType::Add);
    if let Some(program_fd) = fault.recorder {
        let record_chain = fault.record_chain();
        let record = Chain::new(&record_chain, &table);
        batch.add(&record, MsgType::Add);
        let mut rule = Rule::new(&record);
        rule.add_expr(&XtBpfMatch { program_fd });
        add_count_and_action(&mut rule, fault);
        batch.add(&rule, MsgType::Add);
    }
    let mut jump = Rule::new(&base);
    jump.add_expr(&Verdict::Jump { chain: fault.chain.clone() });
    batch.add(&jump, MsgType::Add);
    let chain = Chain::new(&fault.chain, &table);
    add_fault_rules(&mut batch, &chain, fault);
    flush(&mut batch, &chain);
    batch.finalize()
}

/// Flushes the fault's chain and, when `on`, adds its rules: one batch, applied atomically.
fn switch_batch(fault: &InstalledFault, on: bool) -> FinalizedBatch {
    let table = Table::new(TABLE, FAMILY);
    let chain = Chain::new(&fault.chain, &table);
    let mut batch = Batch::with_page_size(BATCH_PAGE_SIZE);
    flush(&mut batch, &chain);
    if on {
        add_fault_rules(&mut batch, &chain, fault);
    }
    batch.finalize()
}

/// `nft flush chain`: a rule deletion without a handle deletes every rule of the chain.
fn flush(batch: &mut Batch, chain: &Chain) {
    batch.add(&Rule::new(chain), MsgType::Del);
}

fn add_fault_rules(batch: &mut Batch, chain: &Chain, fault: &InstalledFault) {
    if fault.selection.payload == Some(PayloadMatch::Empty) {
        let mut skip_data = Rule::new(chain);
        add_protocol(&mut skip_data, Protocol::Tcp.number());
        add_payload_nonempty(&mut skip_data, fault.encoding);
        skip_data.add_expr(&Verdict::Return);
        // A constant far below NFTNL_UDATA_COMMENT_MAXLEN (128 bytes): it always fits.
        let _ = skip_data.set_comment(c"tcp payload not empty: not this fault's packet");
        batch.add(&skip_data, MsgType::Add);
    }
    for alternative in &fault.selection.alternatives {
        let mut rule = Rule::new(chain);
        add_alternative(&mut rule, alternative);
        if fault.selection.payload == Some(PayloadMatch::NonEmpty) {
            add_payload_nonempty(&mut rule, fault.encoding);
        }
        if fault.recorder.is_some() {
            rule.add_expr(&Verdict::Jump { chain: fault.record_chain() });
        } else {
            add_count_and_action(&mut rule, fault);
        }
        batch.add(&rule, MsgType::Add);
    }
}

/// `counter name fault_<name>` and the fault's action.
fn add_count_and_action(rule: &mut Rule, fault: &InstalledFault) {
    rule.add_expr(&CounterRef { name: &fault.chain });
    match &fault.action {
        RuleAction::Verdict(verdict, _) => rule.add_expr(verdict),
        // `meta mark set <mark>`, no verdict: the packet goes on, to be dropped by the queueing discipline.
        RuleAction::Mark(mark) => {
            rule.add_expr(&Immediate::new(*mark, Register::Reg1));
            rule.add_expr(&Meta::Mark { set: true });
        }
    }
}

/// TCP header byte 13 holds the flags (FIN=0x01 ... CWR=0x80).
const TCP_FLAGS_BYTE: u32 = 13;

fn add_protocol(rule: &mut Rule, number: u8) {
    rule.add_expr(&Meta::L4Proto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, number));
}

fn add_alternative(rule: &mut Rule, alternative: &Alternative) {
    if let Some(protocol) = alternative.protocol {
        add_protocol(rule, protocol.number());
    }
    for (offset, port) in [(0, alternative.sport), (2, alternative.dport)] {
        if let Some(port) = port {
            rule.add_expr(&RawPayload { base: PayloadBase::Transport, offset, len: 2 });
            rule.add_expr(&Cmp::new(CmpOp::Eq, &port.to_be_bytes()[..]));
        }
    }
    if let Some(flags) = alternative.tcp_flags {
        rule.add_expr(&RawPayload { base: PayloadBase::Transport, offset: TCP_FLAGS_BYTE, len: 1 });
        if flags.mask != u8::MAX {
            rule.add_expr(&Bitwise::new(flags.mask, 0u8));
        }
        rule.add_expr(&Cmp::new(CmpOp::Eq, flags.value));
    }
}

/// `drop`, `reject with tcp reset`, or `reject with icmpx <code>`, and how `nft` writes it: the inet family's
/// ICMPX codes become ICMP net-unreachable (code 0), host-unreachable (1), port-unreachable (3) and
/// communication administratively prohibited (13) for IPv4. `None` for a conntrack flush or an impairment,
/// which no rule carries out, and for `qdisc-drop`, whose rule marks the packet instead.
fn verdict(action: FaultAction) -> Option<(Verdict, &'static str)> {
    Some(match action {
        FaultAction::Drop => (Verdict::Drop, "drop"),
        FaultAction::RejectTcpReset => (Verdict::Reject(RejectionType::TcpRst), "reject with tcp reset"),
        FaultAction::RejectIcmpPortUnreachable => {
            (Verdict::Reject(RejectionType::Icmp(IcmpCode::PortUnreach)), "reject with icmpx port-unreachable")
        }
        FaultAction::RejectIcmpHostUnreachable => {
            (Verdict::Reject(RejectionType::Icmp(IcmpCode::HostUnreach)), "reject with icmpx host-unreachable")
        }
        FaultAction::RejectIcmpNetUnreachable => {
            (Verdict::Reject(RejectionType::Icmp(IcmpCode::NoRoute)), "reject with icmpx no-route")
        }
        FaultAction::RejectIcmpAdminProhibited => {
            (Verdict::Reject(RejectionType::Icmp(IcmpCode::AdminProhibited)), "reject with icmpx admin-prohibited")
        }
        FaultAction::FlushConntrack | FaultAction::QdiscDrop | FaultAction::Impair(_) => return None,
    })
}

/// The fault's rules as `nft add rule` commands, for messages.
fn rule_text(fault: &InstalledFault) -> Vec<String> {
    let count_and_action = format!(
        "counter name {} {}",
        fault.chain_name(),
        match &fault.action {
            RuleAction::Verdict(_, text) => text.to_string(),
            RuleAction::Mark(mark) => format!("meta mark set {mark:#x}"),
        }
    );
    let record_chain = fault.record_chain().to_string_lossy().into_owned();
    let mut rules = Vec::new();
    if fault.recorder.is_some() {
        rules.push(format!(
            "nft add rule inet netfault {record_chain} bpf-match <records the packet for the timeline> \
             {count_and_action}"
        ));
    }
    if fault.selection.payload == Some(PayloadMatch::Empty) {
        rules.push(format!(
            "nft add rule inet netfault {} meta l4proto tcp {} return",
            fault.chain_name(),
            nonempty_text(fault.encoding)
        ));
    }
    for alternative in &fault.selection.alternatives {
        let mut parts = vec![format!("nft add rule inet netfault {}", fault.chain_name())];
        if let Some(protocol) = alternative.protocol {
            parts.push(format!("meta l4proto {}", protocol.name()));
        }
        if let Some(port) = alternative.sport {
            parts.push(format!("th sport {port}"));
        }
        if let Some(port) = alternative.dport {
            parts.push(format!("th dport {port}"));
        }
        if let Some(flags) = alternative.tcp_flags {
            parts.push(format!("tcp flags & {:#04x} == {:#04x}", flags.mask, flags.value));
        }
        if fault.selection.payload == Some(PayloadMatch::NonEmpty) {
            parts.push(nonempty_text(fault.encoding));
        }
        parts.push(if fault.recorder.is_some() { format!("jump {record_chain}") } else { count_and_action.clone() });
        rules.push(parts.join(" "));
    }
    rules
}

//! `qdisc-drop` faults: the host's own packets dropped on their way out by its queueing discipline, so that
//! TCP sees local congestion (the transmit returns NET_XMIT_DROP) rather than a refusal. An nftables egress
//! `drop` makes the transmit fail with EPERM, which TCP treats as a lost packet and retransmits with its usual
//! exponential backoff; a queueing discipline that drops makes it retry at TCP_RESOURCE_PROBE_INTERVAL (500 ms)
//! for window probes, and enter CWR. packetdrill reaches the same path through its tun device's queue.
//!
//! The fault's nftables rule marks the packets it matches (`meta mark set`) while it is on; a `clsact` queueing
//! discipline on the host's veth end runs a `tc` program that drops every packet carrying a `qdisc-drop` mark
//! (`tc qdisc add dev <veth> clsact; tc filter add dev <veth> egress bpf da obj drop-marked.o`). Switching the
//! fault is switching its rule, as for any fault. Loading the program needs CAP_BPF and CAP_NET_ADMIN in the
//! initial user namespace: rootless runs refuse the action.
//!
//! The program records every packet it drops into the transition tracer's ring buffer itself, as it drops it
//! ([`tc_drop_marked_instructions`]): the kernel's `skb:kfree_skb` tracepoint, which shows the run's other
//! drops, fires only when the packet's last reference goes, and measured beside a loaded suite it missed one of
//! these drops in 7 of 60 runs (the clsact counted 7 drops, `perf record -e skb:kfree_skb` and the tracer 6).

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::observe::transitions::bpf::{Program, PROG_TYPE_SCHED_CLS};
use crate::observe::transitions::program::{tc_drop_marked_instructions, DropRecording};
use crate::observe::transitions::RingMaps;
use crate::run::topology::rtnl::{Request, Rtnl};
use crate::scenario::plan::{FaultAction, FaultPlan, HostId};

/// The marks of `qdisc-drop` faults: this base plus the fault's position in the plan (unique in the run).
const MARK_BASE: u32 = 0x6e66_0000;
const MARK_MASK: u32 = 0xffff_0000;
/// `cls_bpf` options: the program's descriptor and name, and its flags (`TCA_BPF_FLAG_ACT_DIRECT`: the
/// program's return value is the action).
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `ETH_P_ALL` in network byte order, and the filter's priority, in `tcm_info`.
const ETH_P_ALL: u16 = 0x0003;
const FILTER_PRIORITY: u32 = 1;
const PROGRAM_NAME: &str = "netfault_qdrop";

/// Every fault of the plan with the mark its rule would set (used by `qdisc-drop` faults only).
pub(super) fn marks(faults: &[FaultPlan]) -> impl Iterator<Item = (&FaultPlan, u32)> {
    faults.iter().enumerate().map(|(index, fault)| (fault, MARK_BASE | (index as u32 & 0xffff)))
}

/// The `tc` program that drops marked packets, loaded; with `recording`, it records each drop.
fn drop_program(recording: Option<DropRecording>) -> Result<Program> {
    let insns = tc_drop_marked_instructions(MARK_BASE, MARK_MASK, recording);
    Program::load(PROG_TYPE_SCHED_CLS, PROGRAM_NAME, &insns, c"Dual MIT/GPL").map_err(|refusal| {
        if refusal.error.raw_os_error() == Some(libc::EPERM) {
            Error::Missing {
                what: "the tc program that drops the packets of qdisc-drop faults could not be loaded".into(),
                hint: "loading a BPF program needs CAP_BPF and CAP_NET_ADMIN in the initial user namespace: run \
                       scenarios with qdisc-drop faults as root (a rootless run cannot)"
                    .into(),
            }
        } else {
            let log: String = refusal.log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            Error::sys(format!("load the tc program that drops qdisc-drop packets (verifier: {log})"), refusal.error)
        }
    })
}

/// On the calling thread's namespace (the host's): a `clsact` queueing discipline on the veth end `ifindex`
/// and a `bpf` filter on its egress dropping the packets `qdisc-drop` rules mark, each drop recorded into
/// `tracer`'s ring when there is one (none without the tracer's maps: rootless mode, where loading the program
/// is refused too). Nothing when `host` has no `qdisc-drop` fault. Refused: an error at the first such fault's
/// line.
pub fn install_qdisc_drops(host: HostId, ifindex: u32, faults: &[FaultPlan], tracer: Option<&RingMaps>) -> Result<()> {
    let Some(first) = faults.iter().find(|fault| fault.host == host && fault.action == FaultAction::QdiscDrop) else {
        return Ok(());
    };
    let recording = tracer.map(|maps| DropRecording { maps: maps.fds(), host: host.index() as u32 });
    install(host, ifindex, recording).map_err(|e| e.at(first.location))
}

fn install(host: HostId, ifindex: u32, recording: Option<DropRecording>) -> Result<()> {
    let program = drop_program(recording)?;
    let index = i32::try_from(ifindex).unwrap_or(i32::MAX);
    let mut rtnl = Rtnl::open()?;
    let mut clsact = TcMessage::with_index(index);
    clsact.header.handle = TcHandle { major: 0xffff, minor: 0 };
    clsact.header.parent = TcHandle::CLSACT;
    clsact.attributes.push(TcAttribute::Kind("clsact".into()));
    let create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
    let header = TcHeader {
        index,
        handle: TcHandle::from(1u32),
        parent: TcHandle { major: TcHandle::CLSACT.major, minor: TcHandle::MIN_EGRESS },
        info: (FILTER_PRIORITY << 16) | u32::from(ETH_P_ALL.to_be()),
        ..TcHeader::default()
    };
    let mut name = PROGRAM_NAME.as_bytes().to_vec();
    name.push(0);
    let options = vec![
        TcOption::Other(DefaultNla::new(TCA_BPF_FD, (program.fd() as u32).to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name)),
        TcOption::Other(DefaultNla::new(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec())),
    ];
    let filter = TcMessage::from_parts(header, vec![TcAttribute::Kind("bpf".into()), TcAttribute::Options(options)]);
    rtnl.execute(vec![
        Request::new(
            RouteNetlinkMessage::NewQueueDiscipline(clsact),
            create,
            format!("add the clsact queueing discipline of {host} (tc qdisc add dev <veth> clsact)"),
        ),
        Request::new(
            RouteNetlinkMessage::NewTrafficFilter(filter),
            create,
            format!(
                "drop the packets qdisc-drop faults mark, on {host}'s way out (tc filter add dev <veth> egress \
                 protocol all prio 1 handle 1 bpf da: mark & {MARK_MASK:#x} == {MARK_BASE:#x})"
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet header and an IPv4 header's start: the least `BPF_PROG_TEST_RUN` takes for a `tc` program.
    const PACKET: [u8; 34] = [0; 34];

    /// `struct __sk_buff` with only its mark (at byte 8) set: the one field the program reads.
    fn context(mark: u32) -> Vec<u8> {
        let mut skb = vec![0u8; 192];
        skb[8..12].copy_from_slice(&mark.to_ne_bytes());
        skb
    }

    #[test]
    fn the_tc_program_drops_exactly_the_packets_a_qdisc_drop_rule_marked() {
        let program = drop_program(None).unwrap();
        let run = |mark: u32| program.test_run(&PACKET, &context(mark)).unwrap();
        assert_eq!(run(MARK_BASE), 2, "TC_ACT_SHOT for the first fault's mark");
        assert_eq!(run(MARK_BASE | 49), 2, "and the fiftieth's");
        assert_eq!(run(0), 0, "TC_ACT_OK for an unmarked packet");
        assert_eq!(run(0x6e65_0001), 0, "and for another mark");
        assert_eq!(run(MARK_BASE << 1), 0);
    }
}

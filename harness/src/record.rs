//! The run record: what one run produced, as plain data (`Serialize`, no handles): the timeline, the capture
//! and observer figures, fault counters and harness errors. The engine fills it in; the verdict and the report
//! read only this, never the engine, capture or observer that made it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::scenario::plan::HostId;
use crate::timeline::{Decision, Timeline};

/// What a run produced, before judging: the timeline and the harness's own figures, as plain data.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub timeline: Timeline,
    /// t0 on the wall clock, the pcaps' time base (`None` when the programs never started).
    pub t0_wall: Option<SystemTime>,
    /// Every captured interface: both ends of each link, in the plan's link order.
    pub interfaces: Vec<CapturedInterface>,
    /// Time from t0 to the end of the programs (or the deadline).
    pub duration: Duration,
    /// Namespaces, veth, addresses, nftables and capture set up, then torn down.
    pub setup: Duration,
    /// Whether the namespaces and their link were made before the scenario asked (`netfault run`'s pool of
    /// hosts): `setup` then leaves out making them.
    pub hosts_made_ahead: bool,
    pub teardown: Duration,
    pub deadline_hit: bool,
    /// Each host's TCP sysctls in force during the run, by name, one per host in the wire's order.
    pub sysctls: Vec<(HostId, BTreeMap<String, String>)>,
    /// One per captured interface, in `interfaces` order.
    pub capture: Vec<CaptureStats>,
    /// One per host, in the wire's order.
    pub observer: Vec<(HostId, ObserverStats)>,
    /// Where the socket states came from: the kernel's transitions, or only samples (and why).
    pub states: StateSource,
    /// Packets each fault's rule matched (the packets an impairment selected), per fault name.
    pub fault_hits: Vec<(String, u64)>,
    /// The seed every impairment's decisions came from.
    pub seed: u64,
    /// What the wire did, toward the client and toward the server (`None` without impairments).
    pub wire: Option<[WireStats; 2]>,
    /// Every decision of the impairments, sorted by fault and packet number: the same seed gives the same list
    /// for the same packets. Each is also on the timeline, with its time and packet, as an impairment event.
    pub decisions: Vec<Decision>,
    /// What went wrong inside the harness, not by the kernel's doing: a host program that failed (an error or
    /// a panic), a capture that lost frames. The run is a harness error; its timeline and captures are still
    /// reported.
    pub harness_errors: Vec<String>,
    /// CPU time the harness's threads spent real-time, by role (`run::priority::realtime_cpu`).
    pub realtime_cpu: BTreeMap<String, Duration>,
}

/// One captured interface: a host's end of the veth and the pcap its capture wrote into the report folder
/// (`tcpdump -i <ifname> -s <snaplen> -w <pcap>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapturedInterface {
    /// The link it is an end of: its index in the plan's links.
    pub link: usize,
    pub host: HostId,
    pub ifname: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    /// `ip -6 addr`: its IPv6 address, when the link has IPv6.
    pub address6: Option<std::net::Ipv6Addr>,
    /// The pcap's file name in the report folder.
    pub pcap: String,
    pub snaplen: u32,
}

/// What one capture saw, as tcpdump reports when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CaptureStats {
    /// Frames written to the pcap (`N packets captured`).
    pub packets: u64,
    /// Their length on the wire, summed.
    pub bytes: u64,
    /// Frames the kernel dropped because the queue or ring was full (`N packets dropped by kernel`), summed
    /// over the run from PACKET_STATISTICS.
    pub kernel_drops: u64,
    /// Frames the interface itself counted from the start of the capture to the stop (rx + tx packets,
    /// `ip -s link show`): every one of them should be in the pcap.
    pub interface_frames: u64,
}

impl CaptureStats {
    /// Frames the interface counted that are not in the pcap: dropped by the kernel, or never seen.
    pub fn lost(&self) -> u64 {
        self.interface_frames.saturating_sub(self.packets).max(self.kernel_drops)
    }
}

/// What a tracer recorded, and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TracerStats {
    /// Transitions recorded.
    pub transitions: u64,
    /// Packets the sending host dropped before they left (by netfilter or its queueing discipline), shown on
    /// the timeline though no capture has them.
    pub dropped_packets: u64,
    /// Why the packets a queueing discipline dropped of itself (a rate impairment's full queue) cannot be shown,
    /// if they cannot (a kernel without drop reasons); the drops of faults are recorded by the faults' own
    /// programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops_untraced: Option<String>,
    /// Records the ring buffer had no room for, transitions or dropped packets (and a packet a `qdisc-drop`
    /// fault dropped that was too short to show); a harness error when not zero.
    pub lost: u64,
    /// Runs of one of the two instances of the transition program that the kernel skipped, because the
    /// transition came in an interrupt of that instance's run on the same CPU: the other instance recorded
    /// those transitions (not losses).
    pub skipped_runs: u64,
    /// The same for the two instances of the drop program (`skb:kfree_skb`, which fires for every packet the
    /// machine frees, so it is interrupted by itself far more often).
    pub drop_skipped_runs: u64,
    /// From the kernel's transition to the reader holding it, in microseconds: median and largest.
    pub median_latency_us: f64,
    pub max_latency_us: f64,
}

/// Where a run's socket states came from.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum StateSource {
    /// Every transition from the kernel's tracepoint; sock_diag samples for timers, queues, request and
    /// TIME-WAIT sockets.
    Traced(TracerStats),
    /// Only sock_diag samples: states are seen when sampled, short ones may be missed.
    Sampled { reason: String },
}

impl StateSource {
    /// A harness error when the tracer lost transitions: the states would be judged on part of them.
    pub fn losses(&self) -> Option<String> {
        match self {
            StateSource::Traced(stats) if stats.lost > 0 => Some(format!(
                "the transition tracer lost {} of {} records (its ring buffer was full): the socket states or the \
                 packets dropped before they left are incomplete",
                stats.lost,
                stats.lost + stats.transitions + stats.dropped_packets
            )),
            _ => None,
        }
    }

    /// One line for timeline.txt.
    pub fn describe(&self) -> String {
        match self {
            StateSource::Traced(stats) => {
                let drops = match &stats.drops_untraced {
                    None => format!("; {} packets dropped by their sender before they left", stats.dropped_packets),
                    Some(reason) => format!(
                        "; {} packets dropped by their sender's faults before they left; a full queue's drops not \
                         shown: {reason}",
                        stats.dropped_packets
                    ),
                };
                format!(
                    "socket states: {} transitions from the kernel's tracepoint sock:inet_sock_set_state (kernel \
                     timestamps; read {:.0} us after them, median), timers and queues sampled{drops}",
                    stats.transitions, stats.median_latency_us
                )
            }
            StateSource::Sampled { reason } => {
                format!(
                    "socket states: sampled only (sock_diag), the kernel's transitions could not be traced: {reason}"
                )
            }
        }
    }
}

/// What an observer did: how many dumps, and what one cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObserverStats {
    pub samples: u64,
    /// Mean wall time of one dump (request, receive, decode), without the comparison with the previous sample.
    pub mean_dump_time: Duration,
    pub max_dump_time: Duration,
    /// Samples asked for at once (a step's end, a SYN, FIN or RST) and taken more than
    /// `observe::sockets::LATE_ANSWER` later: the observer's thread waited for a CPU, and
    /// what it would have seen meanwhile may be missing.
    pub late_answers: u64,
    /// The longest such wait, and the scenario time of the ask.
    pub max_answer_delay: Duration,
    pub max_answer_delay_asked_at: Duration,
}

/// What one direction of the wire did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WireStats {
    /// Frames taken from the sending side.
    pub frames_in: u64,
    /// Frames put on the receiving side (duplicates and forged segments included).
    pub frames_out: u64,
    /// Frames lost by a fault's decision or a full rate queue.
    pub dropped: u64,
    /// Frames still held when the wire stopped (discarded).
    pub held_at_stop: u64,
    /// Frames the kernel dropped before the wire could take them (its socket's buffer was full): losses nobody
    /// asked for, reported as a harness error.
    pub kernel_drops: u64,
    /// Sends the kernel refused: also a harness error.
    pub send_errors: u64,
    /// Frames that left more than 10 ms ([`WIRE_LATE_US`]) after their time (the kernel's receive timestamp, plus the
    /// delay or link time a fault gave them): the wire thread had no CPU then, and the network was slower than
    /// the scenario says. A failed verdict with late frames is reported as a harness error.
    pub late_frames: u64,
    /// How late the latest frame left, in microseconds.
    pub max_late_us: u64,
}

impl WireStats {
    /// Counts one frame that left `late` after its time.
    pub fn count_lateness(&mut self, late: Duration) {
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.max_late_us = self.max_late_us.max(micros);
        if micros > WIRE_LATE_US {
            self.late_frames += 1;
        }
    }
}

/// How late a frame may leave the wire before it counts as late: a wire thread's wake-up on a busy emulated
/// (TCG) machine, far below the 20 ms the scenarios allow an answer "at once" and the 52 ms a 64 KiB queue
/// holds at 10 Mbit/s.
pub const WIRE_LATE_US: u64 = 10_000;

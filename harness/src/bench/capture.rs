//! `netfault bench capture`: a bulk TCP transfer over a scenario's veth with no capture, with netfault's
//! capture on both ends, and with `tcpdump -w` on both ends, whole frames and cut to a snap length
//! (`capture: { snaplen }`, `tcpdump -s`), alternating in one run on the same interfaces: throughput, and
//! frames written to the pcaps against the interfaces' own packet counters.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pcap_file::pcap::PcapReader;
use serde_json::json;

use super::recipe::{Tcpdump, TcpdumpStats};
use super::{fixture_plan, interrupted, Comparison, Distribution, Report, ScratchDir};
use crate::error::{Context, Error, Result};
use crate::observe::capture::{rx_tx_packets, Capture, CaptureBuffer, CaptureSettings, Decoding};
use crate::record::CaptureStats;
use crate::run::clock::{Clock, EventSink};
use crate::run::netns::Netns;
use crate::run::topology::{self, Topology, LINK_NAME};
use crate::scenario::plan::HostId;

/// What `netfault bench capture` transfers.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Bytes the client sends in each transfer.
    pub bytes: u64,
    /// Rounds of (no capture, netfault's default queue, netfault's 64 MiB ring, tcpdump, tcpdump -B 65536, with
    /// a snap length: netfault's queue, netfault's ring, tcpdump -s; and netfault's ring decoded after the stop,
    /// whole and cut).
    pub runs: usize,
    /// Only the arrangements whose label contains this (`--only`), e.g. to profile one of them.
    pub only: Option<String>,
}

pub(super) const PORT: u16 = 5001;
const CHUNK: usize = 1 << 20;
/// Longest a bulk socket call may block; a stalled transfer fails instead of hanging the benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// After the transfer, time for the last ACKs and FINs before the counters are read.
const SETTLE: Duration = Duration::from_millis(100);
/// The ring a bulk scenario asks for (`capture: { ring: 64MiB }`) ...
const BULK_RING_BYTES: u64 = 64 << 20;
/// ... and tcpdump's `-B` (KiB) matching it, for the second tcpdump variant.
const TCPDUMP_LARGE_BUFFER_KIB: &str = "65536";
/// The snap length of the cut variants (`capture: { snaplen: 160B }`, `tcpdump -s 160`): every header the
/// timeline decodes, with room to spare.
const CUT_SNAPLEN: u32 = 160;

/// The capture arrangements compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrangement {
    None,
    /// What a scenario gets by default: the socket's own queue.
    NetfaultQueue,
    /// What `capture: { ring: 64MiB }` gives.
    NetfaultRing,
    Tcpdump,
    TcpdumpLargeBuffer,
    /// `capture: { snaplen: 160B }`.
    NetfaultQueueCut,
    /// `capture: { ring: 64MiB, snaplen: 160B }`.
    NetfaultRingCut,
    /// `tcpdump -s 160 -w`.
    TcpdumpCut,
    /// The ring, its frames decoded into timeline events after the capture stopped ([`Decoding::AfterStop`]).
    NetfaultRingAfterStop,
    /// The ring cut to the snap length, decoded after the capture stopped.
    NetfaultRingCutAfterStop,
    /// A packet socket on each end that keeps nothing: the kernel's share of any AF_PACKET capture alone.
    KernelTap,
}

impl Arrangement {
    const ALL: [Arrangement; 11] = [
        Arrangement::None,
        Arrangement::NetfaultQueue,
        Arrangement::NetfaultRing,
        Arrangement::Tcpdump,
        Arrangement::TcpdumpLargeBuffer,
        Arrangement::NetfaultQueueCut,
        Arrangement::NetfaultRingCut,
        Arrangement::TcpdumpCut,
        Arrangement::NetfaultRingAfterStop,
        Arrangement::NetfaultRingCutAfterStop,
        Arrangement::KernelTap,
    ];

    fn label(self) -> &'static str {
        match self {
            Arrangement::None => "no capture",
            Arrangement::NetfaultQueue => "netfault Capture x2, default queue",
            Arrangement::NetfaultRing => "netfault Capture x2, ring: 64MiB",
            Arrangement::Tcpdump => "tcpdump -w x2 (default -B 2 MiB)",
            Arrangement::TcpdumpLargeBuffer => "tcpdump -w -B 65536 x2",
            Arrangement::NetfaultQueueCut => "netfault Capture x2, snaplen: 160B",
            Arrangement::NetfaultRingCut => "netfault Capture x2, ring: 64MiB, snaplen: 160B",
            Arrangement::TcpdumpCut => "tcpdump -s 160 -w x2",
            Arrangement::NetfaultRingAfterStop => "netfault Capture x2, ring: 64MiB, decoded after stop",
            Arrangement::NetfaultRingCutAfterStop => {
                "netfault Capture x2, ring: 64MiB, snaplen: 160B, decoded after stop"
            }
            Arrangement::KernelTap => "packet socket x2 keeping nothing (filter ret #0): the kernel's tap alone",
        }
    }

    /// What netfault's capture is given, for its arrangements.
    fn netfault_settings(self) -> Option<CaptureSettings> {
        let ring = CaptureBuffer::ring_of(BULK_RING_BYTES);
        let (buffer, snaplen, decoding) = match self {
            Arrangement::NetfaultQueue => (CaptureBuffer::DEFAULT, None, Decoding::Live),
            Arrangement::NetfaultRing => (ring, None, Decoding::Live),
            Arrangement::NetfaultQueueCut => (CaptureBuffer::DEFAULT, Some(CUT_SNAPLEN), Decoding::Live),
            Arrangement::NetfaultRingCut => (ring, Some(CUT_SNAPLEN), Decoding::Live),
            Arrangement::NetfaultRingAfterStop => (ring, None, Decoding::AfterStop),
            Arrangement::NetfaultRingCutAfterStop => (ring, Some(CUT_SNAPLEN), Decoding::AfterStop),
            Arrangement::None
            | Arrangement::Tcpdump
            | Arrangement::TcpdumpLargeBuffer
            | Arrangement::TcpdumpCut
            | Arrangement::KernelTap => return None,
        };
        Some(CaptureSettings { buffer, snaplen, decoding })
    }

    /// Whether it writes a pcap (and so has a stop time and frames to count).
    fn writes_pcap(self) -> bool {
        !matches!(self, Arrangement::None | Arrangement::KernelTap)
    }

    /// tcpdump's own options, for its arrangements.
    fn tcpdump_options(self) -> Option<Vec<String>> {
        match self {
            Arrangement::Tcpdump => Some(Vec::new()),
            Arrangement::TcpdumpLargeBuffer => Some(vec!["-B".into(), TCPDUMP_LARGE_BUFFER_KIB.into()]),
            Arrangement::TcpdumpCut => Some(vec!["-s".into(), CUT_SNAPLEN.to_string()]),
            _ => None,
        }
    }
}

/// One end's frames: written to the pcap (as read back), the tool's own count, kernel drops, and what the
/// interface counted in the same window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct EndFigures {
    in_pcap: u64,
    tool_count: u64,
    tool_drops: u64,
    interface_packets: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    run: usize,
    arrangement: &'static str,
    seconds: f64,
    gbit_per_s: f64,
    /// Client end, server end; absent without capture.
    ends: Option<[EndFigures; 2]>,
    /// From the stop request (100 ms after the transfer) until both captures had every frame written out
    /// (and, for netfault, decoded into the timeline); absent without capture.
    stop_ms: Option<f64>,
    timeline_events: Option<u64>,
}

/// `runs` rounds of the eight arrangements on one veth pair: throughput and frames lost by each capture.
pub fn bench_capture(options: &CaptureOptions) -> Result<Report> {
    let mut report = Report::new(&format!("capture ({} MiB per transfer)", options.bytes >> 20));
    let scratch = ScratchDir::new("capture")?;
    let plan = fixture_plan(&scratch.path().join("fixture.yaml"))?;
    let namespaces = [Netns::new_anonymous()?, Netns::new_anonymous()?];
    let topology = topology::build(&plan, &[&namespaces[0], &namespaces[1]], None)?;
    let mut rounds: Vec<Round> = Vec::new();
    'runs: for run in 0..options.runs {
        for arrangement in Arrangement::ALL {
            if interrupted() {
                break 'runs;
            }
            if options.only.as_ref().is_some_and(|only| !arrangement.label().contains(only.as_str())) {
                continue;
            }
            rounds.push(round(run, arrangement, &namespaces, &topology, options.bytes, scratch.path())?);
        }
    }

    let of = |arrangement: Arrangement| rounds.iter().filter(move |r| r.arrangement == arrangement.label());
    for arrangement in Arrangement::ALL {
        let throughput: Vec<f64> = of(arrangement).map(|r| r.gbit_per_s).collect();
        report.row(format!("throughput, {}", arrangement.label()), "Gb/s", &throughput);
    }
    for arrangement in Arrangement::ALL.iter().filter(|arrangement| arrangement.writes_pcap()) {
        let stop: Vec<f64> = of(*arrangement).filter_map(|r| r.stop_ms).collect();
        report.row(format!("stop after the transfer, {}", arrangement.label()), "ms", &stop);
    }
    for arrangement in Arrangement::ALL.iter().filter(|arrangement| arrangement.writes_pcap()) {
        for (end, host) in HostId::ALL.iter().enumerate() {
            let lost: Vec<f64> = of(*arrangement)
                .filter_map(|r| r.ends.map(|ends| ends[end].interface_packets as f64 - ends[end].in_pcap as f64))
                .collect();
            report.row(format!("frames missing from pcap, {host}, {}", arrangement.label()), "pkts", &lost);
        }
    }
    for round in &rounds {
        if let Some(ends) = round.ends {
            for (host, end) in HostId::ALL.iter().zip(ends) {
                report.note(
                    format!("round {} {} {host}", round.run + 1, round.arrangement),
                    format!(
                        "interface {} frames, pcap {} ({} by the tool's count), kernel drops {}",
                        end.interface_packets, end.in_pcap, end.tool_count, end.tool_drops
                    ),
                );
            }
        }
    }
    let median = |arrangement: Arrangement| {
        Distribution::of(&of(arrangement).map(|r| r.gbit_per_s).collect::<Vec<_>>()).map_or(f64::NAN, |d| d.median)
    };
    let missing = |arrangement: Arrangement| -> u64 {
        of(arrangement)
            .filter_map(|r| r.ends)
            .flat_map(|ends| ends.into_iter())
            .map(|end| end.interface_packets.saturating_sub(end.in_pcap))
            .sum()
    };
    let (none, ours, theirs) =
        (median(Arrangement::None), median(Arrangement::NetfaultRing), median(Arrangement::Tcpdump));
    let (ours_cut, ours_queue_cut, theirs_cut) =
        (median(Arrangement::NetfaultRingCut), median(Arrangement::NetfaultQueueCut), median(Arrangement::TcpdumpCut));
    report.compare(Comparison {
        what: "frames lost by the capture over all rounds (both ends), with the bulk ring".into(),
        netfault: missing(Arrangement::NetfaultRing).to_string(),
        alternative: format!(
            "{} (tcpdump), {} (tcpdump -B 65536)",
            missing(Arrangement::Tcpdump),
            missing(Arrangement::TcpdumpLargeBuffer)
        ),
        ratio: None,
        target: "0".into(),
        met: missing(Arrangement::NetfaultRing) == 0,
    });
    report.note(
        "default queue",
        format!(
            "frames lost over all rounds with the default capture (the socket's own queue, no ring): {}; a scenario \
             that moves this much data asks for `capture: {{ ring: 64MiB }}`, and a run whose capture loses frames \
             is a harness error",
            missing(Arrangement::NetfaultQueue)
        ),
    );
    report.compare(Comparison {
        what: "throughput with capture on both ends (median)".into(),
        netfault: format!("{ours:.2} Gb/s ({:.0}% of {none:.2} without capture)", ours / none * 100.0),
        alternative: format!("{theirs:.2} Gb/s with tcpdump ({:.0}%)", theirs / none * 100.0),
        ratio: Some(ours / theirs),
        target: "netfault / tcpdump >= 1".into(),
        met: ours >= theirs,
    });
    report.compare(Comparison {
        what: format!("frames lost by the capture over all rounds (both ends), snap length {CUT_SNAPLEN}"),
        netfault: format!(
            "{} (ring), {} (default queue)",
            missing(Arrangement::NetfaultRingCut),
            missing(Arrangement::NetfaultQueueCut)
        ),
        alternative: format!("{} (tcpdump -s {CUT_SNAPLEN})", missing(Arrangement::TcpdumpCut)),
        ratio: None,
        target: "0".into(),
        met: missing(Arrangement::NetfaultRingCut) == 0,
    });
    report.compare(Comparison {
        what: format!("throughput with capture on both ends cut to {CUT_SNAPLEN} bytes (median)"),
        netfault: format!(
            "{ours_cut:.2} Gb/s with the ring ({:.0}% of {none:.2} without capture), {ours_queue_cut:.2} with the \
             default queue ({:.0}%)",
            ours_cut / none * 100.0,
            ours_queue_cut / none * 100.0
        ),
        alternative: format!("{theirs_cut:.2} Gb/s with tcpdump -s {CUT_SNAPLEN} ({:.0}%)", theirs_cut / none * 100.0),
        ratio: Some(ours_cut / theirs_cut),
        target: "issue 17: >= 90% of uncaptured, netfault / tcpdump > 1".into(),
        met: ours_cut >= 0.9 * none && ours_cut > theirs_cut,
    });
    let (after, after_cut) =
        (median(Arrangement::NetfaultRingAfterStop), median(Arrangement::NetfaultRingCutAfterStop));
    report.compare(Comparison {
        what: "frames lost over all rounds (both ends), ring, decoded after stop, whole and cut".into(),
        netfault: format!(
            "{} (whole), {} (snap length {CUT_SNAPLEN})",
            missing(Arrangement::NetfaultRingAfterStop),
            missing(Arrangement::NetfaultRingCutAfterStop)
        ),
        alternative: format!(
            "{} (tcpdump), {} (tcpdump -s {CUT_SNAPLEN})",
            missing(Arrangement::Tcpdump),
            missing(Arrangement::TcpdumpCut)
        ),
        ratio: None,
        target: "0".into(),
        met: missing(Arrangement::NetfaultRingAfterStop) + missing(Arrangement::NetfaultRingCutAfterStop) == 0,
    });
    // Issue 17's test of a throughput `ours` (Gb/s) against the uncaptured one and `tool`'s `theirs`.
    let against_uncaptured = |what: String, ours: f64, tool: String, theirs: f64| Comparison {
        what,
        netfault: format!("{ours:.2} Gb/s ({:.0}% of {none:.2} without capture)", ours / none * 100.0),
        alternative: format!("{theirs:.2} Gb/s with {tool} ({:.0}%)", theirs / none * 100.0),
        ratio: Some(ours / theirs),
        target: "issue 17: >= 90% of uncaptured, netfault / tcpdump > 1".into(),
        met: ours >= 0.9 * none && ours > theirs,
    };
    report.compare(against_uncaptured(
        "throughput with capture on both ends, ring, decoded after stop (median)".into(),
        after,
        "tcpdump".into(),
        theirs,
    ));
    report.compare(against_uncaptured(
        format!("throughput, ring cut to {CUT_SNAPLEN} bytes, decoded after stop (median)"),
        after_cut,
        format!("tcpdump -s {CUT_SNAPLEN}"),
        theirs_cut,
    ));
    let tap = median(Arrangement::KernelTap);
    report.note(
        "the kernel's tap alone",
        format!(
            "{tap:.2} Gb/s ({:.0}% of {none:.2} without capture): a packet socket on each end whose filter keeps no \
             frame, so the kernel only clones each transmitted frame for it and runs the filter; every AF_PACKET \
             capture (netfault's, tcpdump's) pays this before its own work, and none can be faster",
            tap / none * 100.0
        ),
    );
    report.note(
        "method",
        "one veth pair (MTU 1500, offloads off, as every scenario has) between two namespaces; a client thread \
         writes the bytes in 1 MiB writes, the time runs from connect to the server's EOF; pcaps go to the \
         system temp dir; interface frames are rx+tx packets of nf0 from /proc/thread-self/net/dev inside the \
         namespace, read after the capture started and before it stopped; tcpdump runs through nsenter --net; the stop \
         time runs from the stop request until every frame is written out (netfault: and decoded into timeline \
         events, counted by an ordinary thread as the engine's hub would take them: live, or read back from the \
         pcap after the stop)",
    );
    report.extra = json!({ "rounds": rounds });
    drop(namespaces);
    Ok(report.finish())
}

/// One transfer under one capture arrangement.
fn round(
    run: usize,
    arrangement: Arrangement,
    ns: &[Netns; 2],
    topology: &Topology,
    bytes: u64,
    dir: &Path,
) -> Result<Round> {
    let pcaps = HostId::ALL.map(|host| dir.join(format!("{host}.pcap")));
    let mut figures = [EndFigures::default(); 2];
    let mut timeline_events = None;
    let mut stop_ms = None;
    let (seconds, counted) = match arrangement {
        Arrangement::None => (transfer(ns, topology, bytes)?, None),
        Arrangement::KernelTap => {
            let mut taps = Vec::with_capacity(2);
            for host in HostId::ALL {
                let ifindex = topology.link(host).ok_or_else(|| Error::Internal(format!("no {host} end")))?.ifindex;
                taps.push(crate::observe::capture::tap_only(&ns[host.index()], ifindex)?);
            }
            let seconds = transfer(ns, topology, bytes)?;
            drop(taps);
            (seconds, None)
        }
        Arrangement::NetfaultQueue
        | Arrangement::NetfaultRing
        | Arrangement::NetfaultQueueCut
        | Arrangement::NetfaultRingCut
        | Arrangement::NetfaultRingAfterStop
        | Arrangement::NetfaultRingCutAfterStop => {
            let settings = arrangement.netfault_settings().ok_or_else(|| Error::Internal("no settings".into()))?;
            let (sink, events) = EventSink::new(Clock::started());
            let counter = count_in_background(events);
            let mut captures = Vec::with_capacity(2);
            for host in HostId::ALL {
                let ifindex = topology.link(host).ok_or_else(|| Error::Internal(format!("no {host} end")))?.ifindex;
                let pcap = &pcaps[host.index()];
                captures.push(Capture::start(&ns[host.index()], host, ifindex, pcap, sink.clone(), settings)?);
            }
            drop(sink);
            let before = interface_frames(ns)?;
            let seconds = transfer(ns, topology, bytes)?;
            thread::sleep(SETTLE);
            let after = interface_frames(ns)?;
            let stopping = Instant::now();
            let mut stats: Vec<CaptureStats> = Vec::with_capacity(2);
            for capture in captures {
                stats.push(capture.stop()?);
            }
            stop_ms = Some(stopping.elapsed().as_secs_f64() * 1e3);
            for (end, stat) in figures.iter_mut().zip(&stats) {
                end.tool_count = stat.packets;
                end.tool_drops = stat.kernel_drops;
            }
            timeline_events = counter.recv_timeout(IO_TIMEOUT).ok();
            (seconds, Some((before, after)))
        }
        Arrangement::Tcpdump | Arrangement::TcpdumpLargeBuffer | Arrangement::TcpdumpCut => {
            let options = arrangement.tcpdump_options().ok_or_else(|| Error::Internal("no tcpdump options".into()))?;
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            let mut tcpdumps = Vec::with_capacity(2);
            for host in HostId::ALL {
                let net = format!("--net=/proc/{}/fd/{}", std::process::id(), ns[host.index()].raw_fd());
                tcpdumps.push(Tcpdump::start_with(&["nsenter", &net], &options, LINK_NAME, &pcaps[host.index()])?);
            }
            let before = interface_frames(ns)?;
            let seconds = transfer(ns, topology, bytes)?;
            thread::sleep(SETTLE);
            let after = interface_frames(ns)?;
            let stopping = Instant::now();
            let mut stats: Vec<TcpdumpStats> = Vec::with_capacity(2);
            for tcpdump in tcpdumps {
                stats.push(tcpdump.stop()?);
            }
            stop_ms = Some(stopping.elapsed().as_secs_f64() * 1e3);
            for (end, stat) in figures.iter_mut().zip(&stats) {
                end.tool_count = stat.captured;
                end.tool_drops = stat.dropped;
            }
            (seconds, Some((before, after)))
        }
    };
    let ends = match counted {
        None => None,
        Some((before, after)) => {
            for (index, end) in figures.iter_mut().enumerate() {
                end.interface_packets = after[index] - before[index];
                end.in_pcap = frames_in_pcap(&pcaps[index])?;
                std::fs::remove_file(&pcaps[index]).context(|| format!("rm {}", pcaps[index].display()))?;
            }
            Some(figures)
        }
    };
    Ok(Round {
        run,
        arrangement: arrangement.label(),
        seconds,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
        ends,
        stop_ms,
        timeline_events,
    })
}

/// Counts the timeline events the captures emit (as the engine's hub would receive them), until every sender
/// is gone; sends the count.
fn count_in_background(events: crate::run::handoff::Receiver<crate::timeline::Event>) -> mpsc::Receiver<u64> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut count = 0u64;
        loop {
            match events.recv_timeout(IO_TIMEOUT) {
                Ok(_) => count += 1,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => return,
            }
        }
        let _ = tx.send(count);
    });
    rx
}

/// rx + tx packets of nf0 in each namespace (`ip -n <ns> -s link show nf0`), from /proc/thread-self/net/dev
/// read by a thread inside the namespace.
fn interface_frames(ns: &[Netns; 2]) -> Result<[u64; 2]> {
    let mut frames = [0u64; 2];
    for (index, netns) in ns.iter().enumerate() {
        let text = netns.run(|| {
            std::fs::read_to_string("/proc/thread-self/net/dev").context(|| "cat /proc/thread-self/net/dev".into())
        })?;
        frames[index] = rx_tx_packets(&text, LINK_NAME)
            .ok_or_else(|| Error::Internal(format!("{LINK_NAME} missing from /proc/net/dev: {text}")))?;
    }
    Ok(frames)
}

/// Frames in a pcap file, read back record by record.
fn frames_in_pcap(path: &Path) -> Result<u64> {
    let file = File::open(path).context(|| format!("open {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| Error::Internal(format!("read pcap header of {}: {e}", path.display())))?;
    let mut frames = 0;
    while let Some(packet) = reader.next_raw_packet() {
        packet.map_err(|e| Error::Internal(format!("read {} after {frames} frames: {e}", path.display())))?;
        frames += 1;
    }
    Ok(frames)
}

/// Sends `bytes` from the client to the server over the veth; the seconds from connect to the server's EOF.
fn transfer(ns: &[Netns; 2], topology: &Topology, bytes: u64) -> Result<f64> {
    transfer_paced(ns, topology, bytes, None)
}

/// [`transfer`] with the client's socket paced to `pacing` bytes per second (`SO_MAX_PACING_RATE`: the
/// kernel's own TCP pacing, which needs no qdisc).
pub(super) fn transfer_paced(ns: &[Netns; 2], topology: &Topology, bytes: u64, pacing: Option<u64>) -> Result<f64> {
    let server_address = SocketAddrV4::new(
        topology.link(HostId::Server).ok_or_else(|| Error::Internal("no server end".into()))?.address,
        PORT,
    );
    let listener = ns[HostId::Server.index()]
        .run(|| TcpListener::bind(server_address).context(|| format!("listen on {server_address} in server")))?;
    let receiver = thread::spawn(move || -> Result<(u64, Instant)> {
        let mut stream = accept_bounded(&listener)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).context(|| "set SO_RCVTIMEO".into())?;
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            let n = stream.read(&mut buffer).context(|| "receive the bulk transfer in server".into())?;
            if n == 0 {
                return Ok((received, Instant::now()));
            }
            received += n as u64;
        }
    });
    let started = Instant::now();
    let sender = ns[HostId::Client.index()].spawn("bulk-client", move || -> Result<()> {
        let mut stream = TcpStream::connect_timeout(&server_address.into(), IO_TIMEOUT)
            .context(|| format!("connect to {server_address} from client"))?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).context(|| "set SO_SNDTIMEO".into())?;
        if let Some(rate) = pacing {
            let rate = rate as libc::c_uint;
            crate::observe::capture::set_option(&stream, libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, &rate)
                .context(|| "setsockopt(SO_MAX_PACING_RATE) in client".into())?;
        }
        let chunk = vec![0x5au8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.write_all(&chunk[..n]).context(|| "send the bulk transfer from client".into())?;
            left -= n as u64;
        }
        stream.shutdown(Shutdown::Write).context(|| "shutdown(SHUT_WR) in client".into())?;
        Ok(())
    })?;
    let sent = sender.join().map_err(|_| Error::Internal("bulk client thread panicked".into()))?;
    let received = receiver.join().map_err(|_| Error::Internal("bulk server thread panicked".into()))?;
    sent?;
    let (received, finished) = received?;
    if received != bytes {
        return Err(Error::Internal(format!("server received {received} of {bytes} bytes")));
    }
    Ok(finished.duration_since(started).as_secs_f64())
}

fn accept_bounded(listener: &TcpListener) -> Result<TcpStream> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let millis = u16::try_from(IO_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    let ready = poll(&mut fds, PollTimeout::from(millis)).context(|| "wait for the bulk connection: poll".into())?;
    if ready == 0 {
        return Err(Error::Internal(format!("no bulk connection within {IO_TIMEOUT:?}")));
    }
    let (stream, _) = listener.accept().context(|| "accept the bulk connection".into())?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_counters_add_rx_and_tx_packets() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
   nf0: 1523456    1001    0    0    0     0          0         0 99999999   70002    0    0    0     0       0          0
";
        assert_eq!(rx_tx_packets(text, "nf0"), Some(71003));
        assert_eq!(rx_tx_packets(text, "lo"), Some(0));
        assert_eq!(rx_tx_packets(text, "eth0"), None);
    }

    #[test]
    fn a_bulk_transfer_is_counted_on_both_interfaces() {
        let plan = fixture_plan(Path::new("fixture.yaml")).unwrap();
        let ns = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
        let topology = topology::build(&plan, &[&ns[0], &ns[1]], None).unwrap();
        let before = interface_frames(&ns).unwrap();
        let seconds = transfer(&ns, &topology, 8 << 20).unwrap();
        let after = interface_frames(&ns).unwrap();
        assert!(seconds > 0.0);
        // 8 MiB in segments of at most 1448 bytes: at least 5794 data frames, each end sees them all.
        for end in 0..2 {
            assert!(after[end] - before[end] > 5794, "end {end}: {before:?} -> {after:?}");
        }
    }
}

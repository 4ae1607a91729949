//! `netfault bench impair`: how exactly and how cheaply the impairments do what they are asked, against the
//! alternatives this kernel offers, alternating in one run on the same three namespaces (client, middle,
//! server; both hosts captured on their own veth ends, as in a scenario):
//!
//! - the wire (`impair::Wire`: AF_PACKET forwarding by two real-time threads in the middle namespace);
//! - a kernel bridge in the middle, alone (the cost floor), with an `iptables -j NFQUEUE` rule (br_netfilter,
//!   nft's xt compatibility layer) whose userspace holder accepts each packet once its delay has passed, with a
//!   `tc tbf` rate limit on its egress, or with an `nft ... numgen random` drop rule;
//! - the same NFQUEUE holder on the sender's own output hook, to show what impairing at the sender does.
//!
//! Delays are measured between the captures: the receiver's kernel timestamp of a frame minus the sender's.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::net::{SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use pcap_file::pcap::PcapReader;
use serde::Serialize;
use serde_json::json;

use super::capture::transfer_paced;
use super::nfqueue::DelayQueue;
use super::recipe;
use super::{fixture_plan, interrupted, Comparison, Distribution, Report, ScratchDir};
use crate::error::{Context, Error, Result};
use crate::observe::capture::{Capture, CaptureBuffer};
use crate::record::WireStats;
use crate::run::clock::{Clock, EventSink};
use crate::run::impair::frame::TcpSegment;
use crate::run::impair::{Wire, WireFault};
use crate::run::netns::Netns;
use crate::run::topology::{self, wire_end_name, Topology};
use crate::scenario::impairment::{Distribution as Jitter, Impairment, LossModel};
use crate::scenario::plan::{HostId, PacketMatch};

/// What `netfault bench impair` runs.
#[derive(Debug, Clone)]
pub struct ImpairOptions {
    /// Rounds of every measurement.
    pub runs: usize,
    /// Seconds of traffic per delay and rate measurement.
    pub seconds: u64,
    /// Datagrams per loss measurement.
    pub datagrams: u64,
    /// Only the measurements whose name contains this ("forwarding latency", "delay accuracy", "delay
    /// placement", "rate accuracy", "loss", "throughput").
    pub only: Option<String>,
}

/// The delay asked for in the accuracy and placement measurements.
const DELAY: Duration = Duration::from_millis(10);
/// The pace of the delay measurement's sender: 100 Mb/s.
const PACE_BYTES_PER_SECOND: u64 = 100_000_000 / 8;
/// Rates measured, bits per second.
const RATES: [u64; 3] = [10_000_000, 100_000_000, 1_000_000_000];
/// Queue of the rate limits (both mechanisms).
const RATE_QUEUE_BYTES: u64 = 256 << 10;
/// Loss probability of the loss measurement.
const LOSS: f64 = 0.01;
/// Bytes of the throughput measurement.
const THROUGHPUT_BYTES: u64 = 512 << 20;
const UDP_PORT: u16 = 5002;
/// Datagrams per second of the loss measurement (well below what either side can take).
const DATAGRAM_RATE: u64 = 20_000;
/// Rate measurements leave out the first part of the transfer (slow start, the queue filling).
const RATE_WARM_UP: Duration = Duration::from_millis(500);
/// The seed of round `run` is `SEED + run`: each round draws fresh decisions, and the two loss measurements of
/// a round draw the same ones.
const SEED: u64 = 15;
const NFQUEUE_NUMBER: u16 = 7;

/// What sits between the hosts (or on the sender) for one measurement.
#[derive(Debug, Clone, PartialEq)]
enum Middle {
    /// The wire with these faults on.
    Wire(Vec<Impairment>),
    /// `ip link add br0 type bridge`, both middle ends enslaved.
    Bridge,
    /// The bridge with `iptables -A FORWARD -j NFQUEUE` (br_netfilter) and the holder accepting after a delay.
    BridgeQueue(Duration),
    /// The bridge with `tc qdisc add dev to-server root tbf rate R burst 32k limit Q`.
    BridgeTbf(u64),
    /// The bridge with `nft add rule bridge t forward udp dport P numgen random mod 1000000 < p*1e6 drop`.
    BridgeNumgen(f64),
    /// The bridge, and `iptables -A OUTPUT -j NFQUEUE` on the client with the holder there.
    SenderQueue(Duration),
}

impl Middle {
    fn label(&self) -> String {
        match self {
            Middle::Wire(faults) if faults.is_empty() => "wire, no fault".into(),
            Middle::Wire(faults) => format!("wire, {}", faults.iter().map(describe).collect::<Vec<_>>().join(" + ")),
            Middle::Bridge => "bridge".into(),
            Middle::BridgeQueue(delay) => format!("bridge + NFQUEUE holder {}ms", delay.as_millis()),
            Middle::BridgeTbf(rate) => format!("bridge + tc tbf {} Mb/s", rate / 1_000_000),
            Middle::BridgeNumgen(p) => format!("bridge + nft numgen drop {}%", p * 100.0),
            Middle::SenderQueue(delay) => format!("client OUTPUT NFQUEUE holder {}ms", delay.as_millis()),
        }
    }
}

fn describe(impairment: &Impairment) -> String {
    match impairment {
        Impairment::Delay { delay, .. } => format!("delay {}ms", delay.as_millis()),
        Impairment::Rate { bits_per_second, .. } => format!("rate {} Mb/s", bits_per_second / 1_000_000),
        Impairment::Loss(LossModel::Random { probability }) => format!("loss {}%", probability * 100.0),
        other => other.kind().to_string(),
    }
}

/// The three namespaces and what runs in the middle.
struct Rig {
    hosts: [Netns; 2],
    middle: Netns,
    topology: Topology,
    /// The ifindex of the middle's end facing each host, by `HostId::index()`.
    facing: [u32; 2],
}

/// What a [`Middle`] installed, removed by [`Installed::remove`].
struct Installed {
    wire: Option<Wire>,
    queue: Option<DelayQueue>,
    /// Commands (in their namespace) that undo the set-up, run in order.
    undo: Vec<(usize, Vec<String>)>,
}

/// Namespace slots for [`Rig::exec`].
const CLIENT: usize = 0;
const SERVER: usize = 1;
const MIDDLE: usize = 2;

impl Rig {
    fn ns(&self, slot: usize) -> &Netns {
        match slot {
            CLIENT | SERVER => &self.hosts[slot],
            _ => &self.middle,
        }
    }

    /// `nsenter --net=<namespace> program args...`.
    fn exec(&self, slot: usize, command: &[&str]) -> Result<()> {
        let net = format!("--net=/proc/{}/fd/{}", std::process::id(), self.ns(slot).raw_fd());
        let mut args = vec![net.as_str()];
        args.extend_from_slice(command);
        recipe::run("nsenter", &args)
    }

    fn sysctl(&self, slot: usize, name: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        self.ns(slot).run(|| std::fs::write(&path, value).context(|| format!("sysctl -w {name}={value}")))
    }

    fn install(&self, middle: &Middle, seed: u64) -> Result<Installed> {
        let mut installed = Installed { wire: None, queue: None, undo: Vec::new() };
        if let Middle::Wire(impairments) = middle {
            let faults: Vec<WireFault> = impairments
                .iter()
                .enumerate()
                .map(|(i, impairment)| WireFault {
                    name: format!("bench-{i}"),
                    toward: HostId::Server,
                    matcher: PacketMatch::default(),
                    impairment: *impairment,
                })
                .collect();
            let wire = Wire::start(&self.middle, self.facing, faults.clone(), seed, None)?;
            for fault in &faults {
                wire.switch(&fault.name, true)?;
            }
            installed.wire = Some(wire);
            return Ok(installed);
        }
        self.exec(MIDDLE, &["ip", "link", "add", "br0", "type", "bridge"])?;
        installed.undo.push((MIDDLE, strings(&["ip", "link", "del", "br0"])));
        for host in HostId::ALL {
            self.exec(MIDDLE, &["ip", "link", "set", &wire_end_name(host), "master", "br0"])?;
        }
        self.exec(MIDDLE, &["ip", "link", "set", "br0", "up"])?;
        let queued = matches!(middle, Middle::BridgeQueue(_));
        self.sysctl(MIDDLE, "net.bridge.bridge-nf-call-iptables", if queued { "1" } else { "0" })?;
        let queue_rule = ["-j", "NFQUEUE", "--queue-num", "7"];
        debug_assert_eq!(queue_rule[3], NFQUEUE_NUMBER.to_string());
        match middle {
            Middle::BridgeQueue(delay) => {
                self.exec(MIDDLE, &[&["iptables", "-A", "FORWARD"][..], &queue_rule].concat())?;
                installed.undo.insert(0, (MIDDLE, strings(&["iptables", "-F", "FORWARD"])));
                installed.queue = Some(DelayQueue::start(&self.middle, NFQUEUE_NUMBER, *delay)?);
            }
            Middle::SenderQueue(delay) => {
                self.exec(CLIENT, &[&["iptables", "-A", "OUTPUT", "-p", "tcp"][..], &queue_rule].concat())?;
                installed.undo.insert(0, (CLIENT, strings(&["iptables", "-F", "OUTPUT"])));
                installed.queue = Some(DelayQueue::start(&self.hosts[CLIENT], NFQUEUE_NUMBER, *delay)?);
            }
            Middle::BridgeTbf(rate) => {
                let (rate, limit) = (format!("{rate}bit"), RATE_QUEUE_BYTES.to_string());
                let end = &wire_end_name(HostId::Server);
                self.exec(
                    MIDDLE,
                    &["tc", "qdisc", "add", "dev", end, "root", "tbf", "rate", &rate, "burst", "32k", "limit", &limit],
                )?;
                installed.undo.insert(0, (MIDDLE, strings(&["tc", "qdisc", "del", "dev", end, "root"])));
            }
            Middle::BridgeNumgen(p) => {
                let below = ((p * 1e6).round() as u64).to_string();
                self.exec(MIDDLE, &["nft", "add", "table", "bridge", "bench"])?;
                installed.undo.insert(0, (MIDDLE, strings(&["nft", "delete", "table", "bridge", "bench"])));
                self.exec(MIDDLE, &["nft", "add chain bridge bench forward { type filter hook forward priority 0; }"])?;
                let rule = format!(
                    "add rule bridge bench forward udp dport {UDP_PORT} numgen random mod 1000000 < {below} drop"
                );
                self.exec(MIDDLE, &["nft", &rule])?;
            }
            Middle::Wire(_) | Middle::Bridge => {}
        }
        Ok(installed)
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Installed {
    fn remove(self, rig: &Rig) -> Result<Option<[WireStats; 2]>> {
        let stats = self.wire.map(Wire::stop).transpose()?.map(|stopped| stopped.stats);
        if let Some(queue) = self.queue {
            queue.stop()?;
        }
        for (slot, command) in &self.undo {
            let words: Vec<&str> = command.iter().map(String::as_str).collect();
            rig.exec(*slot, &words)?;
        }
        Ok(stats)
    }
}

/// One measurement's figures.
#[derive(Debug, Clone, Default, Serialize)]
struct Round {
    run: usize,
    what: String,
    middle: String,
    /// Delay seen between the captures minus the delay asked, per data frame (microseconds). Left out of the
    /// JSON (a run has half a million of them): `delay_error` summarizes them.
    #[serde(skip)]
    delay_error_us: Vec<f64>,
    /// The round's delay errors: how many, median, 99th percentile and maximum (microseconds).
    delay_error: Option<DelayError>,
    /// Frames the sender's capture saw that the receiver's did not.
    unmatched: u64,
    /// Bits per second of Ethernet frames arriving at the server after the warm-up.
    rate_bps: Option<f64>,
    throughput_gbps: Option<f64>,
    /// Loss: datagrams sent, received, and which were lost.
    sent: u64,
    received: u64,
    lost: Vec<u64>,
    udp_receive_errors: u64,
    wire: Option<[WireStats; 2]>,
}

/// One round's delay errors, for the JSON.
#[derive(Debug, Clone, Copy, Serialize)]
struct DelayError {
    frames: usize,
    median_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl DelayError {
    fn of(errors_us: &[f64]) -> Option<DelayError> {
        let median_us = Distribution::of(errors_us)?.median;
        Some(DelayError {
            frames: errors_us.len(),
            median_us,
            p99_us: p99(errors_us),
            max_us: errors_us.iter().copied().fold(f64::NAN, f64::max),
        })
    }
}

/// `runs` rounds of: delay accuracy at 100 Mb/s, rate accuracy, loss over `datagrams` datagrams, throughput
/// cost, and delay placed on the sender.
pub fn bench_impair(options: &ImpairOptions) -> Result<Report> {
    let mut report = Report::new("impair");
    let scratch = ScratchDir::new("impair")?;
    let plan = fixture_plan(&scratch.path().join("fixture.yaml"))?;
    // The fixture's link through the wire's namespace, as a scenario with impairments has it; the bridge and
    // queue alternatives join the same two ends there instead of the wire.
    let mut through_wire = plan.clone();
    through_wire.links.iter_mut().for_each(|link| link.wire = true);
    let hosts = [Netns::new_anonymous()?, Netns::new_anonymous()?];
    let middle = topology::wire_namespace()?;
    let topology = topology::build(&through_wire, &[&hosts[0], &hosts[1]], Some(&middle))?;
    let facing = topology::wire_ends(&middle)?;
    let rig = Rig { hosts, middle, topology, facing };
    let fixed_delay =
        Impairment::Delay { delay: DELAY, jitter: Duration::ZERO, distribution: Jitter::Uniform, in_order: true };
    let mut rounds: Vec<Round> = Vec::new();
    'runs: for run in 0..options.runs {
        let mut measurements: Vec<(&str, Middle)> = vec![
            ("forwarding latency", Middle::Wire(Vec::new())),
            ("forwarding latency", Middle::Bridge),
            ("delay accuracy", Middle::Wire(vec![fixed_delay])),
            ("delay accuracy", Middle::BridgeQueue(DELAY)),
            ("delay placement", Middle::Wire(vec![fixed_delay])),
            ("delay placement", Middle::BridgeQueue(DELAY)),
            ("delay placement", Middle::SenderQueue(DELAY)),
        ];
        for rate in RATES {
            let limit = Impairment::Rate { bits_per_second: rate, queue_bytes: RATE_QUEUE_BYTES };
            measurements.push(("rate accuracy", Middle::Wire(vec![limit])));
            measurements.push(("rate accuracy", Middle::BridgeTbf(rate)));
        }
        let loss = Impairment::Loss(LossModel::Random { probability: LOSS });
        measurements.push(("loss", Middle::Wire(vec![loss])));
        measurements.push(("loss", Middle::Wire(vec![loss])));
        measurements.push(("loss", Middle::BridgeNumgen(LOSS)));
        for middle in [Middle::Wire(Vec::new()), Middle::Bridge, Middle::BridgeQueue(Duration::ZERO)] {
            measurements.push(("throughput", middle));
        }
        for (what, middle) in measurements {
            if interrupted() {
                break 'runs;
            }
            if options.only.as_ref().is_some_and(|only| !what.contains(only.as_str())) {
                continue;
            }
            eprintln!("netfault bench impair: run {} {what}: {}", run + 1, middle.label());
            let mut round = Round { run, what: what.into(), middle: middle.label(), ..Round::default() };
            let installed = rig.install(&middle, SEED + run as u64)?;
            let measured = measure(&rig, what, &middle, options, scratch.path(), &mut round);
            round.wire = installed.remove(&rig)?;
            measured?;
            round.delay_error = DelayError::of(&round.delay_error_us);
            rounds.push(round);
        }
    }
    let mut direct_throughput = Vec::new();
    let direct_ns = [Netns::new_anonymous()?, Netns::new_anonymous()?];
    let direct = topology::build(&plan, &[&direct_ns[0], &direct_ns[1]], None)?;
    for _ in 0..options.runs {
        let seconds = transfer_paced(&direct_ns, &direct, THROUGHPUT_BYTES, None)?;
        direct_throughput.push(THROUGHPUT_BYTES as f64 * 8.0 / seconds / 1e9);
    }
    summarize(&mut report, &rounds, &direct_throughput, options);
    report.extra = json!({ "rounds": rounds, "direct_veth_gbps": direct_throughput });
    Ok(report.finish())
}

fn measure(
    rig: &Rig,
    what: &str,
    middle: &Middle,
    options: &ImpairOptions,
    dir: &Path,
    round: &mut Round,
) -> Result<()> {
    match what {
        "forwarding latency" | "delay accuracy" => {
            let asked = if what == "delay accuracy" { DELAY } else { Duration::ZERO };
            let bytes = PACE_BYTES_PER_SECOND * options.seconds;
            let pcaps = captured(rig, dir, || {
                transfer_paced(&rig.hosts, &rig.topology, bytes, Some(PACE_BYTES_PER_SECOND)).map(drop)
            })?;
            (round.delay_error_us, round.unmatched) = delay_errors(&pcaps, asked)?;
        }
        "delay placement" => {
            let bytes = 64 << 20;
            let mut seconds = 0.0;
            let pcaps = captured(rig, dir, || {
                seconds = transfer_paced(&rig.hosts, &rig.topology, bytes, None)?;
                Ok(())
            })?;
            (round.delay_error_us, round.unmatched) = delay_errors(&pcaps, DELAY)?;
            round.throughput_gbps = Some(bytes as f64 * 8.0 / seconds / 1e9);
        }
        "rate accuracy" => {
            let rate = match middle {
                Middle::BridgeTbf(rate) => *rate,
                Middle::Wire(faults) => match faults.first() {
                    Some(Impairment::Rate { bits_per_second, .. }) => *bits_per_second,
                    _ => return Err(Error::Internal("rate measurement without a rate".into())),
                },
                _ => return Err(Error::Internal("rate measurement without a rate".into())),
            };
            let bytes = rate / 8 * options.seconds;
            let pcaps = captured(rig, dir, || transfer_paced(&rig.hosts, &rig.topology, bytes, None).map(drop))?;
            round.rate_bps = Some(arrival_rate(&pcaps[HostId::Server.index()])?);
        }
        "loss" => {
            let before = udp_receive_errors(rig)?;
            let (sent, received) = datagrams(rig, options.datagrams)?;
            round.udp_receive_errors = udp_receive_errors(rig)? - before;
            round.sent = sent;
            round.received = received.len() as u64;
            round.lost = (0..sent).filter(|i| !received.contains(i)).collect();
        }
        "throughput" => {
            let seconds = transfer_paced(&rig.hosts, &rig.topology, THROUGHPUT_BYTES, None)?;
            round.throughput_gbps = Some(THROUGHPUT_BYTES as f64 * 8.0 / seconds / 1e9);
        }
        other => return Err(Error::Internal(format!("unknown measurement {other}"))),
    }
    Ok(())
}

/// Runs `traffic` with both hosts captured into `dir`; returns the two pcaps (client, server).
fn captured(rig: &Rig, dir: &Path, traffic: impl FnOnce() -> Result<()>) -> Result<[PathBuf; 2]> {
    let pcaps = HostId::ALL.map(|host| dir.join(format!("{host}.pcap")));
    let (sink, events) = EventSink::new(Clock::started());
    let drain = thread::spawn(move || events.iter().count());
    let mut captures = Vec::with_capacity(2);
    for host in HostId::ALL {
        let ifindex = rig.topology.link(host).ok_or_else(|| Error::Internal(format!("no {host} end")))?.ifindex;
        let ring = CaptureBuffer::ring_of(64 << 20);
        captures.push(Capture::start(
            &rig.hosts[host.index()],
            host,
            ifindex,
            &pcaps[host.index()],
            sink.clone(),
            ring,
        )?);
    }
    drop(sink);
    let result = traffic();
    thread::sleep(Duration::from_millis(100));
    for capture in captures {
        let stats = capture.stop()?;
        if stats.lost() > 0 {
            return Err(Error::Internal(format!("a capture lost {} frames: the figures would be wrong", stats.lost())));
        }
    }
    let _ = drain.join();
    result?;
    Ok(pcaps)
}

/// Every frame of a pcap: kernel timestamp and bytes.
fn read_pcap(path: &Path) -> Result<Vec<(Duration, u32, Vec<u8>)>> {
    let file = File::open(path).context(|| format!("open {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| Error::Internal(format!("read pcap header of {}: {e}", path.display())))?;
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))?;
        frames.push((packet.timestamp, packet.orig_len, packet.data.into_owned()));
    }
    Ok(frames)
}

/// Client-to-server TCP data segments by (seq, length, IP id): each frame's identity on both captures.
fn data_frames(path: &Path) -> Result<HashMap<(u32, u32, u16), Duration>> {
    let mut frames = HashMap::new();
    for (at, _, data) in read_pcap(path)? {
        let Some(segment) = TcpSegment::parse(&data) else { continue };
        if segment.payload_len == 0 || segment.dport != super::capture::PORT {
            continue;
        }
        let ip_id = u16::from_be_bytes([data[18], data[19]]);
        frames.entry((segment.seq, segment.payload_len, ip_id)).or_insert(at);
    }
    Ok(frames)
}

/// For each data frame both captures saw: (arrival - departure - asked) in microseconds; and how many the
/// sender sent that never arrived.
fn delay_errors(pcaps: &[PathBuf; 2], asked: Duration) -> Result<(Vec<f64>, u64)> {
    let sent = data_frames(&pcaps[HostId::Client.index()])?;
    let arrived = data_frames(&pcaps[HostId::Server.index()])?;
    let mut errors = Vec::with_capacity(sent.len());
    let mut unmatched = 0;
    for (key, departure) in &sent {
        match arrived.get(key) {
            Some(arrival) => {
                let seen = arrival.as_secs_f64() - departure.as_secs_f64();
                errors.push((seen - asked.as_secs_f64()) * 1e6);
            }
            None => unmatched += 1,
        }
    }
    Ok((errors, unmatched))
}

/// Bits per second of the client's frames (Ethernet header included) arriving at the server, after the warm-up.
fn arrival_rate(pcap: &Path) -> Result<f64> {
    let frames: Vec<(Duration, u32)> = read_pcap(pcap)?
        .into_iter()
        .filter(|(_, _, data)| TcpSegment::parse(data).is_some_and(|s| s.dport == super::capture::PORT))
        .map(|(at, len, _)| (at, len))
        .collect();
    let first = frames.first().map(|(at, _)| *at).ok_or_else(|| Error::Internal("no frame arrived".into()))?;
    let counted: Vec<&(Duration, u32)> = frames.iter().filter(|(at, _)| *at >= first + RATE_WARM_UP).collect();
    let (Some(start), Some(end)) = (counted.first(), counted.last()) else {
        return Err(Error::Internal("the transfer ended within its warm-up; give it more --seconds".into()));
    };
    // Bits from the second counted frame on, over the time since the first: each frame's bits arrive in the
    // interval that ends with it.
    let bits: u64 = counted[1..].iter().map(|(_, len)| u64::from(*len) * 8).sum();
    Ok(bits as f64 / (end.0 - start.0).as_secs_f64())
}

/// `Udp: RcvbufErrors + InErrors` of the server (`nstat`): datagrams its socket dropped, not the network.
fn udp_receive_errors(rig: &Rig) -> Result<u64> {
    let text = rig.hosts[SERVER]
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").context(|| "cat /proc/net/snmp".into()))?;
    let mut lines = text.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(Error::Internal("no Udp lines in /proc/net/snmp".into()));
    };
    let value = |wanted: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == wanted)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(value("InErrors") + value("RcvbufErrors"))
}

/// Sends `count` numbered datagrams from the client to the server at `DATAGRAM_RATE`; returns how many were
/// sent and the numbers that arrived.
fn datagrams(rig: &Rig, count: u64) -> Result<(u64, BTreeSet<u64>)> {
    let server = SocketAddrV4::new(
        rig.topology.link(HostId::Server).ok_or_else(|| Error::Internal("no server end".into()))?.address,
        UDP_PORT,
    );
    let receiver = rig.hosts[SERVER].run(|| {
        let socket = UdpSocket::bind(server).context(|| format!("bind {server} in server"))?;
        let big: libc::c_int = 16 << 20;
        crate::observe::capture::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big)
            .context(|| "setsockopt(SO_RCVBUFFORCE)".into())?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).context(|| "set SO_RCVTIMEO".into())?;
        Ok(socket)
    })?;
    let collector = thread::spawn(move || {
        let mut received = BTreeSet::new();
        let mut buffer = [0u8; 64];
        while let Ok(n) = receiver.recv(&mut buffer) {
            if n >= 8 {
                received.insert(u64::from_be_bytes(buffer[..8].try_into().unwrap_or_default()));
            }
        }
        received
    });
    let sender = rig.hosts[CLIENT].spawn("udp-sender", move || -> Result<u64> {
        let socket = UdpSocket::bind("0.0.0.0:0").context(|| "bind a UDP socket in client".into())?;
        let started = Instant::now();
        let mut payload = [0u8; 32];
        for i in 0..count {
            let due = started + Duration::from_secs_f64(i as f64 / DATAGRAM_RATE as f64);
            while Instant::now() < due {
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            payload[..8].copy_from_slice(&i.to_be_bytes());
            socket.send_to(&payload, server).context(|| "send a datagram from client".into())?;
        }
        Ok(count)
    })?;
    let sent = sender.join().map_err(|_| Error::Internal("UDP sender panicked".into()))??;
    let received = collector.join().map_err(|_| Error::Internal("UDP receiver panicked".into()))?;
    Ok((sent, received))
}

/// The 99th percentile (linear interpolation).
fn p99(samples: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = 0.99 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

fn summarize(report: &mut Report, rounds: &[Round], direct: &[f64], options: &ImpairOptions) {
    let of = |what: &str, middle: &str| -> Vec<&Round> {
        rounds.iter().filter(|r| r.what == what && r.middle == middle).collect()
    };
    let mut middles: Vec<(String, String)> = rounds.iter().map(|r| (r.what.clone(), r.middle.clone())).collect();
    middles.dedup();
    middles.sort();
    middles.dedup();
    let delay_figures = |what: &str, middle: &str| -> (f64, f64, f64, u64) {
        let errors: Vec<f64> = of(what, middle).iter().flat_map(|r| r.delay_error_us.iter().copied()).collect();
        let unmatched = of(what, middle).iter().map(|r| r.unmatched).sum();
        let median = Distribution::of(&errors).map_or(f64::NAN, |d| d.median);
        let max = errors.iter().copied().fold(f64::NAN, f64::max);
        (median, p99(&errors), max, unmatched)
    };
    for (what, middle) in &middles {
        let group = of(what, middle);
        if what.contains("delay") || what.contains("latency") {
            let errors: Vec<f64> = group.iter().flat_map(|r| r.delay_error_us.iter().copied()).collect();
            report.row(format!("{what}: seen - asked, {middle}"), "us", &errors);
            let (_, p99, _, unmatched) = delay_figures(what, middle);
            report.note(
                format!("{what}: {middle}"),
                format!("p99 {p99:.1} us over {} frames, {unmatched} never arrived", errors.len()),
            );
        }
        if what == "rate accuracy" {
            let rates: Vec<f64> = group.iter().filter_map(|r| r.rate_bps).map(|bps| bps / 1e6).collect();
            report.row(format!("rate: arriving, {middle}"), "Mb/s", &rates);
        }
        if what == "throughput" || what == "delay placement" {
            let throughput: Vec<f64> = group.iter().filter_map(|r| r.throughput_gbps).collect();
            report.row(format!("{what}: throughput, {middle}"), "Gb/s", &throughput);
        }
        if what == "loss" {
            let rates: Vec<f64> =
                group.iter().map(|r| (r.sent - r.received) as f64 / r.sent.max(1) as f64 * 100.0).collect();
            report.row(format!("loss: measured, {middle}"), "%", &rates);
        }
    }
    report.row("throughput: direct veth (no middle)", "Gb/s", direct);

    let measured = |what: &str| rounds.iter().any(|r| r.what == what);
    if measured("delay accuracy") {
        let (wire_median, wire_p99, wire_max, _) = delay_figures(
            "delay accuracy",
            &Middle::Wire(vec![Impairment::Delay {
                delay: DELAY,
                jitter: Duration::ZERO,
                distribution: Jitter::Uniform,
                in_order: true,
            }])
            .label(),
        );
        let (queue_median, queue_p99, _, _) = delay_figures("delay accuracy", &Middle::BridgeQueue(DELAY).label());
        report.compare(Comparison {
            what: format!(
                "delay {}ms at 100 Mb/s, seen between the captures minus asked: median / p99 (max)",
                DELAY.as_millis()
            ),
            netfault: format!("{wire_median:.1} / {wire_p99:.1} us ({wire_max:.0})"),
            alternative: format!("{queue_median:.1} / {queue_p99:.1} us (bridge + NFQUEUE holder)"),
            ratio: Some(queue_p99 / wire_p99),
            target: "p99 error <= 200 us".into(),
            met: wire_p99.abs() <= 200.0,
        });
    }
    if measured("rate accuracy") {
        for rate in RATES {
            let arriving = |middle: Middle| {
                Distribution::of(
                    &of("rate accuracy", &middle.label()).iter().filter_map(|r| r.rate_bps).collect::<Vec<_>>(),
                )
                .map_or(f64::NAN, |d| d.median)
            };
            let wire =
                arriving(Middle::Wire(vec![Impairment::Rate { bits_per_second: rate, queue_bytes: RATE_QUEUE_BYTES }]));
            let tbf = arriving(Middle::BridgeTbf(rate));
            let error = |measured: f64| (measured / rate as f64 - 1.0) * 100.0;
            report.compare(Comparison {
                what: format!("rate {} Mb/s: arriving frames (median), error", rate / 1_000_000),
                netfault: format!("{:.2} Mb/s ({:+.2}%)", wire / 1e6, error(wire)),
                alternative: format!("{:.2} Mb/s ({:+.2}%) tc tbf", tbf / 1e6, error(tbf)),
                ratio: None,
                target: "within 5 %".into(),
                met: error(wire).abs() <= 5.0,
            });
        }
    }
    if measured("loss") {
        let wire_loss =
            of("loss", &Middle::Wire(vec![Impairment::Loss(LossModel::Random { probability: LOSS })]).label());
        let numgen = of("loss", &Middle::BridgeNumgen(LOSS).label());
        let rate = |group: &[&Round]| {
            let (sent, received): (u64, u64) =
                group.iter().fold((0, 0), |(s, r), round| (s + round.sent, r + round.received));
            (sent, (sent - received) as f64 / sent.max(1) as f64)
        };
        // The second measurement of each round repeats the first one's draws: only the first ones are samples.
        let first_of_round: Vec<&Round> = wire_loss.chunks(2).map(|pair| pair[0]).collect();
        let (sent, measured) = rate(&first_of_round);
        let (numgen_sent, numgen_measured) = rate(&numgen);
        // Binomial standard deviation of the measured rate.
        let sigma = (LOSS * (1.0 - LOSS) / sent.max(1) as f64).sqrt();
        let repeatable = wire_loss.chunks(2).all(|pair| pair.len() < 2 || pair[0].lost == pair[1].lost);
        let rounds_seeded = first_of_round.len();
        report.compare(Comparison {
            what: format!(
                "loss {}% over {sent} datagrams ({rounds_seeded} rounds, seeds {SEED}..; each round run twice with its seed)",
                LOSS * 100.0
            ),
            netfault: format!(
                "{:.3}% ({:+.1} sigma); same seed, same datagrams lost: {}",
                measured * 100.0,
                (measured - LOSS) / sigma,
                if repeatable { "yes" } else { "NO" }
            ),
            alternative: format!(
                "{:.3}% over {numgen_sent} (nft numgen random: not reproducible)",
                numgen_measured * 100.0
            ),
            ratio: None,
            target: "within 3 sigma of the asked probability; reproducible".into(),
            met: ((measured - LOSS) / sigma).abs() <= 3.0 && repeatable,
        });
    }
    if measured("throughput") {
        let throughput = |middle: Middle| {
            Distribution::of(
                &of("throughput", &middle.label()).iter().filter_map(|r| r.throughput_gbps).collect::<Vec<_>>(),
            )
            .map_or(f64::NAN, |d| d.median)
        };
        let (wire, bridge, queue) = (
            throughput(Middle::Wire(Vec::new())),
            throughput(Middle::Bridge),
            throughput(Middle::BridgeQueue(Duration::ZERO)),
        );
        let veth = Distribution::of(direct).map_or(f64::NAN, |d| d.median);
        report.compare(Comparison {
            what: "bulk TCP throughput through the middle (no capture)".into(),
            netfault: format!("wire {wire:.2} Gb/s"),
            alternative: format!("bridge {bridge:.2}, bridge + NFQUEUE {queue:.2}, direct veth {veth:.2} Gb/s"),
            ratio: Some(wire / queue),
            target: "wire >= NFQUEUE".into(),
            met: wire >= queue,
        });
    }
    if measured("delay placement") {
        let placed = |middle: Middle| {
            let group = of("delay placement", &middle.label());
            let errors: Vec<f64> = group.iter().flat_map(|r| r.delay_error_us.iter().copied()).collect();
            let throughput = Distribution::of(&group.iter().filter_map(|r| r.throughput_gbps).collect::<Vec<_>>())
                .map_or(f64::NAN, |d| d.median);
            (Distribution::of(&errors).map_or(f64::NAN, |d| d.median) / 1e3 + DELAY.as_secs_f64() * 1e3, throughput)
        };
        let (wire_seen, wire_throughput) = placed(Middle::Wire(vec![Impairment::Delay {
            delay: DELAY,
            jitter: Duration::ZERO,
            distribution: Jitter::Uniform,
            in_order: true,
        }]));
        let (sender_seen, sender_throughput) = placed(Middle::SenderQueue(DELAY));
        let (queue_seen, queue_throughput) = placed(Middle::BridgeQueue(DELAY));
        report.compare(Comparison {
            what: format!("{}ms delay, where it is held: delay seen between the captures, bulk throughput", DELAY.as_millis()),
            netfault: format!("wire: {wire_seen:.2} ms, {:.0} Mb/s", wire_throughput * 1e3),
            alternative: format!(
                "NFQUEUE in the middle: {queue_seen:.2} ms, {:.0} Mb/s; on the client's output hook: {sender_seen:.2} ms, {:.0} Mb/s",
                queue_throughput * 1e3,
                sender_throughput * 1e3
            ),
            ratio: None,
            target: "the asked delay is visible between the captures (seen >= asked)".into(),
            met: wire_seen >= DELAY.as_secs_f64() * 1e3,
        });
    }
    report.note(
        "method",
        format!(
            "{} round(s); client -> middle -> server, veth pairs, MTU 1500, offloads off, both hosts captured \
             (64 MiB rings) on their own ends; delay: TCP paced at 100 Mb/s (SO_MAX_PACING_RATE) for {} s, each \
             data frame matched by (seq, length, IP id) between the captures; rate: unpaced TCP for {} s at the \
             rate, frames arriving at the server after the first {} ms; loss: {} numbered UDP datagrams at {}/s \
             (and the server's Udp InErrors+RcvbufErrors, to tell socket drops apart); throughput: {} MiB of TCP \
             without capture; placement: 64 MiB of unpaced TCP with the delay on the wire or held by an NFQUEUE \
             holder on the client's output hook",
            options.runs,
            options.seconds,
            options.seconds,
            RATE_WARM_UP.as_millis(),
            options.datagrams,
            DATAGRAM_RATE,
            THROUGHPUT_BYTES >> 20
        ),
    );
    for round in rounds {
        if round.udp_receive_errors > 0 {
            report.note(
                format!("run {} {}", round.run + 1, round.middle),
                format!("{} datagrams dropped by the server's socket", round.udp_receive_errors),
            );
        }
        if let Some(stats) = round.wire {
            if stats.iter().any(|s| s.kernel_drops > 0 || s.send_errors > 0) {
                report.note(
                    format!("run {} {} {}", round.run + 1, round.what, round.middle),
                    format!("wire trouble: {stats:?}"),
                );
            }
        }
    }
}

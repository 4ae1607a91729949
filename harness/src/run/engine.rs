//! One scenario run inside the child process: set up, start the programs, switch faults on their triggers,
//! stop at the end or the deadline, and hand back the timeline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::observe::capture::{Capture, CaptureBuffer};
use crate::observe::sockets::{DiagSocket, Observer};
use crate::observe::transitions::Tracer;
use crate::record::{CaptureStats, CapturedInterface, ObserverStats, RunRecord, StateSource};
use crate::run::actors::{self, ActorContext, ProcessRegistry, StepBoard};
use crate::run::clock::{Clock, EventSink};
use crate::run::faults::HostFaults;
use crate::run::firewall;
use crate::run::netns::Netns;
use crate::run::priority;
use crate::run::supervise::SETUP_LIMIT;
use crate::run::switchboard::Switchboard;
use crate::run::topology::{self, HostWire};
use crate::scenario::plan::{Direction, HostId, HostPlan, Plan};
use crate::timeline::query::{self, StepRecords};
use crate::timeline::{Event, EventKind, PacketDirection, Timeline};

/// How often the hub wakes to look at time triggers and the programs when nothing happens.
const IDLE_TICK: Duration = Duration::from_millis(5);
/// How long a host's program may wait to be told to start once its host is set up (measured: up to 0.7 s to
/// start a thread with 200 scenarios at once on 2 cores). The set-up itself is bounded by [`SETUP_LIMIT`].
const PROGRAM_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `plan`, writing the pcaps into `report_dir`. Returns harness errors only; the verdict comes later.
/// `on_start` is called once the programs have been told to start (t0), after the set-up.
pub fn run(plan: &Plan, report_dir: &Path, on_start: impl FnOnce()) -> Result<RunRecord> {
    let setup_started = Instant::now();
    let clock = Clock::unstarted();
    let (sink, events) = EventSink::new(clock.clone());
    // Each host's thread sets its host up and then runs its program there, waiting at its gate in between:
    // t0 is taken once both are ready, so the set-up, and a busy machine's delay in scheduling a woken
    // thread, never count as scenario time.
    let board = StepBoard::new();
    let processes = ProcessRegistry::new();
    let mut gates: Vec<mpsc::Sender<Gate>> = Vec::with_capacity(2);
    let programs = HostId::ALL.map(|host| {
        let (gate, waiting) = mpsc::channel();
        gates.push(gate);
        Program {
            plan: plan.host(host).clone(),
            board: Arc::clone(&board),
            processes: Arc::clone(&processes),
            report_dir: report_dir.to_path_buf(),
            clock: clock.clone(),
            gate: waiting,
        }
    });
    let (rig, threads) = start_hosts(plan, report_dir, &sink, programs.map(Some))?;
    let Rig { namespaces, interfaces, faults, captures, observers, listen_watchers, tracer } = rig;
    let setup = setup_started.elapsed();
    let switches = Arc::new(Switchboard::new(plan, faults, clock.clone()));
    // Each host's program until it ends and is joined.
    let mut programs: Vec<(HostId, Option<JoinHandle<Result<()>>>)> =
        HostId::ALL.into_iter().zip(threads.into_iter().map(Some)).collect();

    // Faults due at t0 are on before either program makes its first call. They are switched before t0 is
    // taken (their events read 0 s): an nftables commit can take tens of ms on a busy machine.
    switches.switch_due()?;
    // The hub too reacts to events in time (fault triggers); it goes back to ordinary before the teardown.
    let _ = priority::raise_current_thread();
    // t0 is the moment the programs start (scenario times read as the seed scripts' times): the first program
    // thread to run takes it. The deadline counts from the start signal, a little before.
    let deadline = Instant::now() + plan.deadline;
    for (gate, sock_diag) in gates.iter().zip(listen_watchers) {
        // A program thread that is gone already reports its own error when joined.
        let _ = gate.send(Gate { deadline, sock_diag, switches: Arc::clone(&switches) });
    }
    drop(sink);
    on_start();

    let mut collected: Vec<Event> = Vec::new();
    let mut deadline_hit = false;
    let mut harness_errors = Vec::new();
    loop {
        let now = clock.now();
        harness_errors.extend(join_finished(&mut programs));
        // A program that failed inside the harness ends the run at once: the other one may wait for it forever.
        if !harness_errors.is_empty() || programs.iter().all(|(_, program)| program.is_none()) {
            break;
        }
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        let wake = switches.next_due().map_or(IDLE_TICK, |due| due.saturating_sub(now).min(IDLE_TICK));
        match events.recv_timeout(wake) {
            Ok(event) => {
                // Only the host that saw the packet or ran the step: a packet changes the sender's socket when
                // it leaves and the receiver's when it arrives, and each capture reports its own side.
                if wants_fresh_sample(&event) {
                    if let Some(observer) = observers.get(event.host.index()) {
                        observer.poke();
                    }
                }
                // A program has switched what its own steps trigger already; this arms the rest.
                switches.observe(&event)?;
                collected.push(event);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        switches.switch_due()?;
    }
    let duration = clock.now();
    let _ = priority::lower_current_thread();
    // Read once the programs are done, off the set-up and teardown figures.
    let mut sysctls = [BTreeMap::new(), BTreeMap::new()];
    for host in HostId::ALL {
        match namespaces[host.index()].run(|| topology::effective_sysctls(&plan.host(host).sysctls)) {
            Ok(values) => sysctls[host.index()] = values,
            Err(e) => harness_errors.push(format!("{host} sysctls: {e}")),
        }
    }

    let teardown_started = Instant::now();
    board.close();
    processes.kill_all();
    // A part that fails to stop (on a starved machine: not within its bounded wait) is a harness error of this
    // run, not the end of it: what the others recorded still makes the report, timeline and pcaps included.
    // Every observer and capture is told at once, then each is waited for: their last samples and frames
    // overlap.
    observers.iter().for_each(Observer::request_stop);
    captures.iter().for_each(Capture::request_stop);
    let mut observer_stats = Vec::with_capacity(2);
    for observer in observers {
        observer_stats.push(observer.stop().unwrap_or_else(|e| {
            harness_errors.push(e.to_string());
            ObserverStats::default()
        }));
    }
    let states = match tracer {
        Ok(tracer) => tracer.stop().map(StateSource::Traced).unwrap_or_else(|e| {
            harness_errors.push(e.to_string());
            StateSource::Sampled { reason: format!("the transition tracer failed to stop: {e}") }
        }),
        Err(reason) => StateSource::Sampled { reason },
    };
    harness_errors.extend(states.losses());
    let capture_stats = stop_captures(captures).unwrap_or_else(|e| {
        harness_errors.push(e.to_string());
        vec![CaptureStats::default(); 2]
    });
    harness_errors.extend(capture_losses(&capture_stats));
    let (mut faults, fault_events) = switches.finish();
    let mut fault_hits = Vec::new();
    for host_faults in &mut faults {
        match host_faults.hits() {
            Ok(hits) => fault_hits.extend(hits),
            Err(e) => harness_errors.push(e.to_string()),
        }
    }
    fault_hits.sort();
    harness_errors.extend(join_finished(&mut programs));
    // Everything else is still queued in the channel: packets decoded during stop, last samples.
    collected.extend(events.try_iter());
    collected.extend(fault_events);
    // The deadline is the instant the programs were given, not when the hub noticed it: a step that ended
    // between the two ran past it too, and so did one whose program ended just after it, before the hub looked.
    let deadline_t = clock.at(deadline);
    deadline_hit |= collected.iter().any(|e| matches!(e.kind, EventKind::StepEnd { .. }) && e.t >= deadline_t);
    if deadline_hit {
        collected.push(Event { t: deadline_t, host: HostId::Client, kind: EventKind::Deadline { step: None } });
    }
    let mut timeline = Timeline::new(collected);
    if deadline_hit {
        mark_running_steps(&mut timeline, plan);
    }
    annotate_faults(&mut timeline, plan);
    faults.into_iter().for_each(HostFaults::close);
    drop(namespaces);
    let teardown = teardown_started.elapsed();
    let [capture_client, capture_server] = into_pair(capture_stats)?;
    let [observer_client, observer_server] = into_pair(observer_stats)?;
    Ok(RunRecord {
        timeline,
        interfaces,
        t0_wall: clock.t0_wall(),
        duration,
        setup,
        teardown,
        deadline_hit,
        sysctls,
        capture: [capture_client, capture_server],
        observer: [observer_client, observer_server],
        states,
        fault_hits,
        harness_errors,
    })
}

/// Packets that change TCP states (SYN, FIN, RST) and step ends: worth a socket sample of their host at once.
fn wants_fresh_sample(event: &Event) -> bool {
    const STATE_CHANGING_FLAGS: u8 = 0x01 | 0x02 | 0x04;
    match &event.kind {
        EventKind::Packet(packet) => packet.flags & STATE_CHANGING_FLAGS != 0,
        EventKind::StepEnd { .. } => true,
        _ => false,
    }
}

/// Joins the programs that have ended; returns how those that failed failed. A program still blocked in a
/// call stays unjoined: it dies with the process.
fn join_finished(programs: &mut [(HostId, Option<JoinHandle<Result<()>>>)]) -> Vec<String> {
    let mut errors = Vec::new();
    for (host, slot) in programs.iter_mut() {
        if !slot.as_ref().is_some_and(JoinHandle::is_finished) {
            continue;
        }
        match slot.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => errors.push(format!("{host} program: {e}")),
            Some(Err(payload)) => errors.push(format!("{host} program panicked: {}", panic_text(&*payload))),
            Some(Ok(Ok(()))) | None => {}
        }
    }
    errors
}

/// The message a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What a run sets up before t0, one of each per host (indexed by `HostId::index()`).
pub struct Rig {
    pub namespaces: [Netns; 2],
    /// The captured interfaces, as the run record names them.
    pub interfaces: Vec<CapturedInterface>,
    pub faults: Vec<HostFaults>,
    pub captures: Vec<Capture>,
    pub observers: Vec<Observer>,
    /// For each host's program, a sock_diag socket in each host's namespace its `wait: { listening }` steps
    /// name (see [`actors::listening_hosts`]).
    pub listen_watchers: [[Option<DiagSocket>; 2]; 2],
    /// The kernel's state transitions in both namespaces, or why they cannot be traced here.
    pub tracer: std::result::Result<Tracer, String>,
}

/// Namespaces, the wire, the faults (all off), a capture (into `report_dir/<host>.pcap`) and an observer per
/// host, all sending their events to `sink`: [`start_hosts`] without programs (what `netfault bench setup`
/// times).
#[cfg(feature = "bench")]
pub fn set_up(plan: &Plan, report_dir: &Path, sink: &EventSink) -> Result<Rig> {
    let (rig, threads) = start_hosts(plan, report_dir, sink, [None, None])?;
    for thread in threads {
        thread.join().map_err(|_| Error::Internal("host set-up thread panicked".into()))??;
    }
    Ok(rig)
}

/// A host's program, handed to the host's thread to run once its host is set up and the engine opens the gate.
struct Program {
    plan: HostPlan,
    board: Arc<StepBoard>,
    processes: Arc<ProcessRegistry>,
    report_dir: PathBuf,
    clock: Clock,
    gate: mpsc::Receiver<Gate>,
}

/// What opens a program's gate: its deadline, its sock_diag sockets for `wait: { listening }` steps, and the
/// switchboard through which it switches the faults its own steps trigger.
struct Gate {
    deadline: Instant,
    sock_diag: [Option<DiagSocket>; 2],
    switches: Arc<Switchboard>,
}

/// What one host's thread set up in its namespace.
struct HostRig {
    namespace: Netns,
    /// This host's captured interface, as the run record names it.
    interface: CapturedInterface,
    faults: HostFaults,
    capture: Capture,
    observer: Observer,
    /// By the program's host: a sock_diag socket in this namespace for the programs that wait for it to listen.
    listen_watchers: [Option<DiagSocket>; 2],
}

/// How the two hosts' threads meet to create the veth pair: the server hands the client its namespace, and
/// the client tells the server once the pair exists.
enum WireMeeting {
    Client { server: mpsc::Receiver<Netns>, created: mpsc::Sender<()> },
    Server { namespace: mpsc::Sender<Netns>, created: mpsc::Receiver<()> },
}

/// Starts one thread per host, each of which creates its host's namespace (`unshare(CLONE_NEWNET)`, so the
/// two namespaces are created at once) and sets it up from inside: sysctls and `lo`, its end of the veth pair
/// (the client creates the pair), its faults, its capture and its observer. Returns what they set up, once
/// both are done, and their threads: with a program, each thread then waits at its gate and runs the program
/// in its namespace (its result is the thread's); without, it ends.
///
/// A scenario that asks for a capture ring waits for one RCU grace period (`setsockopt(PACKET_RX_RING)` calls
/// `synchronize_net`, 10-30 ms on a busy machine) instead of two.
fn start_hosts(
    plan: &Plan,
    report_dir: &Path,
    sink: &EventSink,
    programs: [Option<Program>; 2],
) -> Result<(Rig, Vec<JoinHandle<Result<()>>>)> {
    let shared = Arc::new(plan.clone());
    let (namespace_tx, namespace_rx) = mpsc::channel();
    let (created_tx, created_rx) = mpsc::channel();
    let meetings = [
        WireMeeting::Client { server: namespace_rx, created: created_tx },
        WireMeeting::Server { namespace: namespace_tx, created: created_rx },
    ];
    let (ready_tx, ready_rx) = mpsc::channel::<(HostId, Result<HostRig>)>();
    let mut threads = Vec::with_capacity(2);
    for ((host, meeting), program) in HostId::ALL.into_iter().zip(meetings).zip(programs) {
        let plan = Arc::clone(&shared);
        let pcap = report_dir.join(pcap_name(host));
        let sink = sink.clone();
        let ready = ready_tx.clone();
        let thread = thread::Builder::new()
            .name(format!("host-{host}"))
            .spawn(move || host_thread(&plan, host, &pcap, sink, meeting, ready, program))
            .map_err(|e| Error::sys(format!("spawn the thread of host {host}"), e))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut rigs: [Option<HostRig>; 2] = [None, None];
    let mut failures = Vec::new();
    // A set-up step the scenario caused to fail (a sysctl the kernel refuses) is the error to report, at its
    // line: the other host's failure then only follows from it.
    let mut caused_by_scenario = None;
    for _ in HostId::ALL {
        match ready_rx.recv_timeout(SETUP_LIMIT) {
            Ok((host, Ok(rig))) => rigs[host.index()] = Some(rig),
            Ok((_, Err(e @ Error::Located { .. }))) if caused_by_scenario.is_none() => caused_by_scenario = Some(e),
            Ok((host, Err(e))) => failures.push(format!("set-up of {host}: {e}")),
            Err(_) => failures
                .push(format!("the hosts were not set up {}s after their threads started", SETUP_LIMIT.as_secs())),
        }
    }
    match rigs {
        [Some(client), Some(server)] if failures.is_empty() => {
            let namespaces = [client.namespace, server.namespace];
            // The tracer watches both namespaces from outside them.
            let tracer = Tracer::start(&namespaces, sink.clone()).map_err(|e| e.to_string());
            let rig = Rig {
                namespaces,
                interfaces: vec![client.interface, server.interface],
                faults: vec![client.faults, server.faults],
                captures: vec![client.capture, server.capture],
                observers: vec![client.observer, server.observer],
                listen_watchers: by_program(client.listen_watchers, server.listen_watchers),
                tracer,
            };
            Ok((rig, threads))
        }
        // A thread waiting at its gate gives up when the gates go with the caller's `Program`s.
        _ => Err(caused_by_scenario.unwrap_or_else(|| Error::Internal(failures.join("; ")))),
    }
}

/// The sock_diag sockets each host opened, by the host they were opened in, regrouped by the program that uses
/// them.
fn by_program(client: [Option<DiagSocket>; 2], server: [Option<DiagSocket>; 2]) -> [[Option<DiagSocket>; 2]; 2] {
    let [client_for_client, client_for_server] = client;
    let [server_for_client, server_for_server] = server;
    [[client_for_client, server_for_client], [client_for_server, server_for_server]]
}

/// The body of one host's thread (see [`start_hosts`]): set-up, report, then the program if there is one.
fn host_thread(
    plan: &Plan,
    host: HostId,
    pcap: &Path,
    sink: EventSink,
    meeting: WireMeeting,
    ready: mpsc::Sender<(HostId, Result<HostRig>)>,
    program: Option<Program>,
) -> Result<()> {
    let rig = set_up_host(plan, host, pcap, sink.clone(), meeting);
    let Some(program) = program else {
        // The engine is gone only when it gave up waiting; then nobody needs the rig.
        let _ = ready.send((host, rig));
        return Ok(());
    };
    if rig.is_ok() {
        // Best effort: without the privilege the thread stays ordinary and its times are less exact. Raised
        // before the engine hears of it, so the start signal wakes it at once.
        let _ = priority::raise_current_thread();
    }
    if ready.send((host, rig)).is_err() {
        return Ok(());
    }
    drop(ready);
    let gate = program
        .gate
        .recv_timeout(PROGRAM_START_TIMEOUT)
        .map_err(|_| Error::Internal(format!("{host} program was never told to start")))?;
    // t0 is taken by the first program thread to run (the clock keeps the first start), not by the engine:
    // on a busy machine the woken threads may wait tens of ms for a CPU.
    program.clock.start();
    let ctx = ActorContext {
        host,
        own_address: program.plan.address,
        board: program.board,
        processes: program.processes,
        sink,
        switches: gate.switches,
        deadline: gate.deadline,
        sock_diag: gate.sock_diag,
        report_dir: program.report_dir,
    };
    actors::run_host(&program.plan, ctx)
}

/// One host's set-up, on its own thread, which stays in the namespace it creates.
fn set_up_host(plan: &Plan, host: HostId, pcap: &Path, sink: EventSink, meeting: WireMeeting) -> Result<HostRig> {
    let namespace = Netns::unshare_current_thread()?;
    let mut wire = HostWire::prepare(plan, host)?;
    let peer_failed = |what: &str| Error::Internal(format!("{what} (the other host's set-up failed)"));
    match meeting {
        WireMeeting::Client { server, created } => {
            let server =
                server.recv_timeout(SETUP_LIMIT).map_err(|_| peer_failed("the server's namespace never came"))?;
            wire.create_veth_pair(plan.link.mtu, &server)?;
            // The server is gone only when its set-up failed, which it reports itself.
            let _ = created.send(());
        }
        WireMeeting::Server { namespace: to_client, created } => {
            // The client is gone only when its set-up failed, which it reports itself.
            let _ = to_client.send(namespace.try_clone()?);
            created.recv_timeout(SETUP_LIMIT).map_err(|_| peer_failed("the veth pair was never created"))?;
        }
    }
    let link = wire.configure(plan.host(host))?;
    wire.wait_operational()?;
    let faults = HostFaults::install(&namespace, host, &plan.faults)?;
    firewall::install_qdisc_drops(host, link.ifindex, &plan.faults)?;
    let capture = Capture::start(&namespace, host, link.ifindex, pcap, sink.clone(), capture_buffer(plan))?;
    let observer = Observer::start(&namespace, host, plan.sample_interval, sink)?;
    let mut listen_watchers = [None, None];
    for (program, watcher) in HostId::ALL.into_iter().zip(&mut listen_watchers) {
        if actors::listening_hosts(plan.host(program))[host.index()] {
            *watcher = Some(DiagSocket::open_in(&namespace)?);
        }
    }
    let interface = CapturedInterface {
        host,
        ifname: link.ifname,
        mac: link.mac,
        address: link.address,
        pcap: pcap_name(host),
        snaplen: crate::observe::capture::SNAPLEN,
    };
    Ok(HostRig { namespace, interface, faults, capture, observer, listen_watchers })
}

/// The pcap a host's capture writes in the report folder.
fn pcap_name(host: HostId) -> String {
    format!("{host}.pcap")
}

/// `tcpdump -B` for the plan: the socket's own queue unless the scenario asks for a ring.
fn capture_buffer(plan: &Plan) -> CaptureBuffer {
    plan.capture.ring_bytes.map_or(CaptureBuffer::DEFAULT, CaptureBuffer::ring_of)
}

/// A capture that lost frames makes the timeline incomplete: every packet expectation and packet trigger
/// would be judged on part of the traffic, so the run cannot be trusted either way.
fn capture_losses(stats: &[CaptureStats]) -> Vec<String> {
    HostId::ALL
        .into_iter()
        .zip(stats)
        .filter(|(_, stats)| stats.lost() > 0)
        .map(|(host, stats)| {
            format!(
                "capture of {host} lost {} of the {} frames its interface counted ({} dropped by the kernel): the \
                 timeline is incomplete; give the scenario a larger buffer, e.g. `capture: {{ ring: 64MiB }}`",
                stats.lost(),
                stats.interface_frames,
                stats.kernel_drops
            )
        })
        .collect()
}

/// `Capture::stop` on every capture at once: each takes the frames its interface counted that are still on
/// their way (a ring's last block comes within its 4 ms retire timeout), and those waits overlap.
pub fn stop_captures(captures: Vec<Capture>) -> Result<Vec<CaptureStats>> {
    captures.iter().for_each(Capture::request_stop);
    // Every capture is waited for before the first error (if any) is returned.
    let stopped: Vec<Result<CaptureStats>> = captures.into_iter().map(Capture::stop).collect();
    stopped.into_iter().collect()
}

fn into_pair<T>(items: Vec<T>) -> Result<[T; 2]> {
    items.try_into().map_err(|_| Error::Internal("expected one item per host".into()))
}

/// Names, in the deadline event, the steps that were still running when the run reached it (see
/// [`query::ran_into_deadline`]).
fn mark_running_steps(timeline: &mut Timeline, plan: &Plan) {
    let deadline = query::deadline_of(timeline);
    let records = StepRecords::of(plan, timeline);
    let mut running: Vec<String> = Vec::new();
    for host in HostId::ALL {
        for step in &plan.host(host).steps {
            if records.get(host, step.index).is_some_and(|record| query::ran_into_deadline(record, deadline)) {
                running.push(format!("{host} step {}", step.label()));
            }
        }
    }
    for event in &mut timeline.events {
        if let EventKind::Deadline { step } = &mut event.kind {
            *step = (!running.is_empty()).then(|| running.join(", "));
        }
    }
}

/// Marks each captured packet that an active ingress fault's rule matched on arrival, and the sender's copy of it
/// (the last packet that host sent with the same IP id, addresses, flags and length), and each packet dropped
/// before it left with the host's active egress fault that matches it, in one pass.
pub fn annotate_faults(timeline: &mut Timeline, plan: &Plan) {
    type Key = (HostId, u16, std::net::Ipv4Addr, std::net::Ipv4Addr, u8, u32);
    let mut active: HashMap<&str, bool> = HashMap::new();
    let mut last_sent: HashMap<Key, usize> = HashMap::new();
    let mut hits: Vec<(usize, String)> = Vec::new();
    for (index, event) in timeline.events.iter().enumerate() {
        match &event.kind {
            EventKind::FaultOn { fault } => {
                active.insert(fault.as_str(), true);
            }
            EventKind::FaultOff { fault } => {
                active.insert(fault.as_str(), false);
            }
            // Dropped before it left: the host's own egress fault took it.
            EventKind::Packet(packet) if packet.dropped.is_some() => {
                let hit = plan.faults.iter().find(|fault| {
                    fault.host == event.host
                        && fault.direction == Direction::Egress
                        && active.get(fault.name.as_str()).copied().unwrap_or(false)
                        && firewall::matches(fault, event.host, packet)
                });
                if let Some(fault) = hit {
                    hits.push((index, fault.name.clone()));
                }
            }
            EventKind::Packet(packet) if packet.direction == PacketDirection::Out => {
                last_sent.insert((event.host, packet.ip_id, packet.src, packet.dst, packet.flags, packet.len), index);
            }
            EventKind::Packet(packet) => {
                let hit = plan.faults.iter().find(|fault| {
                    fault.host == event.host
                        && fault.direction == Direction::Ingress
                        && active.get(fault.name.as_str()).copied().unwrap_or(false)
                        && firewall::matches(fault, event.host, packet)
                });
                if let Some(fault) = hit {
                    hits.push((index, fault.name.clone()));
                    let key = (event.host.peer(), packet.ip_id, packet.src, packet.dst, packet.flags, packet.len);
                    if let Some(sent) = last_sent.get(&key) {
                        hits.push((*sent, fault.name.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    for (index, fault) in hits {
        if let EventKind::Packet(packet) = &mut timeline.events[index].kind {
            packet.fault = Some(fault);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::switchboard::tests::{ack, ms, plan};

    /// The fault mark of each packet of the timeline, in order.
    fn fault_marks(timeline: &Timeline) -> Vec<Option<&str>> {
        timeline
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Packet(p) => Some(p.fault.as_deref()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn packets_taken_by_an_active_ingress_fault_are_marked_on_both_copies() {
        let plan = plan();
        let mut timeline = Timeline::new(vec![
            ack(ms(10), HostId::Client, PacketDirection::Out),
            ack(ms(10), HostId::Server, PacketDirection::In),
            Event { t: ms(600), host: HostId::Server, kind: EventKind::FaultOn { fault: "after-connect".into() } },
            ack(ms(700), HostId::Client, PacketDirection::Out),
            ack(ms(700), HostId::Server, PacketDirection::In),
        ]);
        annotate_faults(&mut timeline, &plan);
        let marks = fault_marks(&timeline);
        assert_eq!(marks, vec![None, None, Some("after-connect"), Some("after-connect")]);
    }

    #[test]
    fn a_packet_dropped_before_it_left_is_marked_with_the_active_egress_fault_that_matches_it() {
        let plan = crate::scenario::parse(
            "egress",
            Path::new("egress.yaml"),
            "description: d\nfaults:\n  - { name: local, at: client, match: { dport: 9000 }, action: qdisc-drop, from: 1s }\n  \
             - { name: other-port, at: client, direction: egress, match: { dport: 9001 }, action: drop }\nclient:\n  \
             - sleep: 2s\n",
        )
        .unwrap();
        let dropped = |t: u64| {
            let mut event = ack(ms(t), HostId::Client, PacketDirection::Out);
            if let EventKind::Packet(packet) = &mut event.kind {
                packet.dropped = Some(crate::timeline::DroppedBy::Qdisc);
            }
            event
        };
        let mut timeline = Timeline::new(vec![
            Event { t: ms(0), host: HostId::Client, kind: EventKind::FaultOn { fault: "other-port".into() } },
            // Before `local` is on: dropped, but by no fault of the plan that was on.
            dropped(500),
            Event { t: ms(1000), host: HostId::Client, kind: EventKind::FaultOn { fault: "local".into() } },
            dropped(1200),
            // One that left is not the egress fault's, even while it is on.
            ack(ms(1300), HostId::Client, PacketDirection::Out),
            ack(ms(1300), HostId::Server, PacketDirection::In),
        ]);
        annotate_faults(&mut timeline, &plan);
        let marks = fault_marks(&timeline);
        assert_eq!(marks, vec![None, Some("local"), None, None]);
    }

    #[test]
    fn a_capture_that_lost_frames_is_a_harness_error_naming_its_host() {
        let whole = CaptureStats { packets: 40, bytes: 4000, kernel_drops: 0, interface_frames: 40 };
        let dropped = CaptureStats { packets: 37, bytes: 3700, kernel_drops: 3, interface_frames: 40 };
        let unseen = CaptureStats { packets: 38, bytes: 3800, kernel_drops: 0, interface_frames: 40 };
        assert!(capture_losses(&[whole, whole]).is_empty());
        let errors = capture_losses(&[whole, dropped]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("capture of server lost 3 of the 40 frames"), "{}", errors[0]);
        assert!(errors[0].contains("(3 dropped by the kernel)") && errors[0].contains("ring: 64MiB"), "{}", errors[0]);
        let errors = capture_losses(&[unseen, whole]);
        assert!(errors[0].starts_with("capture of client lost 2 of the 40 frames"), "{}", errors[0]);
    }
}

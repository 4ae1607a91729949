//! One scenario run inside the child process: set up, start the programs, switch faults on their triggers,
//! stop at the end or the deadline, and hand back the timeline.

use crate::run::handoff::{self, RecvTimeoutError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::observe::capture::{Capture, CaptureBuffer, CaptureSettings, Decoding};
use crate::observe::counters::CounterFiles;
use crate::observe::decode::STATE_CHANGING_FLAGS;
use crate::observe::sockets::{DiagSocket, Observer, LATE_ANSWER};
use crate::observe::transitions::program::DropRecording;
use crate::observe::transitions::{QueueDrops, RingMaps, Tracer};
use crate::record::{CaptureStats, CapturedInterface, ObserverStats, RunRecord, StateSource, WireStats, WIRE_LATE_US};
use crate::report::verdict::Verdict;
use crate::run::actors::{self, ActorContext, ProcessRegistry, StepBoard};
use crate::run::clock::{Clock, EventSink};
use crate::run::confine::Confinement;
use crate::run::faults::HostFaults;
use crate::run::firewall::{self, Nat};
use crate::run::impair::{Wire, WireFault};
use crate::run::netns::Netns;
use crate::run::partial::{Progress, Stage};
use crate::run::pool::{self, PooledHost};
use crate::run::priority::{self, Background};
use crate::run::runaway;
use crate::run::supervise::SETUP_LIMIT;
use crate::run::switchboard::Switchboard;
use crate::run::topology::{self, HostWire};
use crate::scenario::plan::{Action, Direction, FaultAction, FaultPlan, HostId, HostPlan, Plan, Trigger};
use crate::timeline::query::{self, StepRecords};
use crate::timeline::{
    format_secs, Decision, DecisionKind, DroppedBy, Event, EventKind, PacketDirection, PacketEvent, Timeline,
};

/// How often the hub wakes to look at time triggers and the programs when nothing happens.
const IDLE_TICK: Duration = Duration::from_millis(5);
/// How long a host's program may wait to be told to start once the engine has every host set up (measured: up
/// to 0.7 s to start a thread with 200 scenarios at once on 2 cores). Its own host may be set up long before
/// the others: the wait is [`SETUP_LIMIT`] (the bound of every host's set-up) plus this. With 56 scenarios at
/// once in the 6.12 TCG VM, a router's set-up took more than 30 s past its client's, and the client's program,
/// waiting 30 s in all, gave up ("never told to start") as the engine was about to start it.
const PROGRAM_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the teardown waits for the programs to end once their processes are killed: the step a kill ended
/// (`killed (SIGKILL) at the scenario deadline`) belongs in the record, and on a busy machine its thread may not
/// have run yet when the recording is collected.
const PROGRAM_END_LIMIT: Duration = Duration::from_secs(1);

/// Runs `plan`, writing the pcaps into `report_dir`; the impairments' random decisions come from `seed`. Returns
/// harness errors only; the verdict comes later. `on_start` is called once the programs have been told to
/// start (t0), after the set-up. What the run records, and what it is doing, goes into `progress` as it goes,
/// for a partial report if the run does not finish.
pub fn run(
    plan: &Plan,
    report_dir: &Path,
    seed: u64,
    progress: &Progress,
    on_start: impl FnOnce(),
) -> Result<RunRecord> {
    // Before any thread of the run is real-time.
    runaway::install();
    let setup_started = Instant::now();
    let clock = Clock::unstarted();
    let (sink, events) = EventSink::new(clock.clone());
    // Each host's thread sets its host up and then runs its program there, waiting at its gate in between:
    // t0 is taken once both are ready, so the set-up, and a busy machine's delay in scheduling a woken
    // thread, never count as scenario time.
    let board = StepBoard::new();
    let processes = ProcessRegistry::new();
    let mut gates: Vec<handoff::Sender<Gate>> = Vec::with_capacity(2);
    let programs = HostId::ALL.map(|host| {
        let (gate, waiting) = handoff::channel();
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
    let [mut client, mut server] = programs.map(Some);
    let programs = plan.hosts.iter().map(|host| match host.id {
        HostId::Client => client.take(),
        HostId::Server => server.take(),
        HostId::Router => None,
    });
    // A link with impairments goes through the wire's namespace, whose ends the hosts' threads create with
    // their own.
    let wire_namespace = plan.links.iter().any(|link| link.wire).then(topology::wire_namespace).transpose()?;
    // The TCP sysctls a fresh namespace of the scenario starts with (what one host reads for all, see below):
    // about 90 /proc/sys files, 1-2 ms of CPU. Read from the first host's namespace as soon as it exists, by a
    // thread that runs only on a CPU the set-up leaves idle (its threads wait on the kernel and on each other)
    // until t0, when it becomes ordinary. Started at t0 instead, it was still reading when a short scenario's
    // teardown was done, and the report waited for it. The scenario's own sysctls, written during the set-up,
    // may come before or after this reading: every host reads those of its own again after t0.
    let mut common_reader = None;
    let started = start_hosts(
        plan,
        report_dir,
        &sink,
        programs.collect(),
        wire_namespace.as_ref(),
        &mut |position, namespace| {
            if position == 0 && common_reader.is_none() {
                common_reader = Some(spawn_common_reader(namespace));
            }
        },
    );
    // A set-up that failed is reported at the ordinary priority, as a teardown is.
    let (rig, threads) = started.inspect_err(|_| {
        let _ = priority::lower_current_thread();
    })?;
    let Rig {
        namespaces,
        interfaces,
        faults,
        captures,
        observers,
        listen_watchers,
        tracer,
        counters,
        hosts_made_ahead,
    } = rig;
    // Every impairment starts off; its decisions come from `seed`.
    let wire = match &wire_namespace {
        Some(namespace) => {
            let facing = topology::wire_ends(namespace)?;
            Some(Wire::start(namespace, facing, wire_faults(plan), seed, Some(sink.clone()))?)
        }
        None => None,
    };
    let setup = setup_started.elapsed();
    let switches = Arc::new(Switchboard::new(plan, faults, wire, clock.clone()));
    // Each host's thread until it ends and is joined: the program's, or the router's, which ends after its
    // set-up.
    let mut programs: Vec<(HostId, Option<JoinHandle<Result<()>>>)> =
        plan.hosts.iter().map(|host| host.id).zip(threads.into_iter().map(Some)).collect();

    // Faults due at t0 are on before either program makes its first call. They are switched before t0 is
    // taken (their events read 0 s): an nftables commit can take tens of ms on a busy machine.
    switches.switch_due()?;
    // Each host's sysctls in force, for the report: read while the scenario runs, by a thread per host at the
    // ordinary priority (so never ahead of the scenario's own threads), and joined after it. Reading them
    // after the programs ended put 1.2 ms of opening /proc/sys files into every run's teardown. The values
    // cannot change during the run: netfault wrote its own before this, and exec programs run without the
    // capabilities to write any. The first host's namespace gives every TCP sysctl, for all (its reader started
    // during the set-up, ordinary from here on); each host reads those that can differ between the scenario's
    // namespaces (see `topology::differing_sysctls`): opening a /proc/sys file in a namespace makes the kernel
    // build its entry there, about 90 files per host.
    let common_reader = match common_reader.or_else(|| namespaces.first().map(spawn_common_reader)) {
        Some((background, reader)) => {
            if let Ok(thread) = &reader {
                background.want(thread);
            }
            reader
        }
        // Without the tracer's ring (rootless) no namespace was shown before the set-up was done; a plan has
        // hosts.
        None => Err(Error::Internal("a scenario without hosts".into())),
    };
    let set_in_any_host: Vec<_> = plan.hosts.iter().flat_map(|host| host.sysctls.iter().cloned()).collect();
    let readers: Vec<_> = plan
        .hosts
        .iter()
        .zip(&namespaces)
        .map(|(host, namespace)| {
            let (own, set_in_any_host) = (host.sysctls.clone(), set_in_any_host.clone());
            namespace.spawn(&format!("sysctls-{}", host.id), move || {
                topology::differing_sysctls(&own, &set_in_any_host, topology::tcp_sysctl_files()?)
            })
        })
        .collect();
    // The hub, real-time since the set-up, reacts to events in time (fault triggers); it goes back to ordinary
    // before the teardown.
    // t0 is the moment the programs start (scenario times read as the seed scripts' times): the first program
    // thread to run takes it. The deadline counts from the start signal, a little before.
    let deadline = Instant::now() + plan.deadline;
    for (gate, sock_diag) in gates.iter().zip(listen_watchers) {
        // A program thread that is gone already reports its own error when joined.
        let _ = gate.send(Gate { deadline, sock_diag, switches: Arc::clone(&switches) });
    }
    drop(sink);
    progress.started(&clock, deadline);
    on_start();

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
                if let Some(observer) = plan.position(event.host).and_then(|position| observers.get(position)) {
                    match fresh_sample(&event) {
                        Some(Urgency::AtOnce) => observer.poke(),
                        Some(Urgency::WithinBudget) => observer.poke_packet(),
                        None => {}
                    }
                }
                // A program has switched what its own steps trigger already; this arms the rest.
                switches.observe(&event)?;
                progress.record(event);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        switches.switch_due()?;
    }
    let duration = clock.now();
    // The recording ends with the run: every observer and capture is told at once, while this thread still
    // runs real-time (their last samples and frames overlap). Told after the teardown's first steps, at the
    // ordinary priority, they went on recording for 5 s in a starved TCG VM, and a retransmission the client
    // sent then, answered with a RST by the server's closed port, failed a scenario that expects no RST.
    observers.iter().for_each(Observer::request_stop);
    captures.iter().for_each(Capture::request_stop);
    progress.stage(Stage::ReadingCounters);
    // Read once the programs are done, before anything is torn down: what the run made each host's kernel
    // count (`nstat`), from the files each host opened in its namespace, by this thread while it still runs
    // real-time (the sysctl readers, ordinary, may still be at it). A thread per host entering its namespace
    // did it before, between the scenario's end and its teardown: two threads made, moved and joined.
    for (host, files) in plan.hosts.iter().zip(&counters) {
        match files.read() {
            Ok(counters) => {
                progress.record(Event { t: duration, host: host.id, kind: EventKind::Counters { counters } })
            }
            Err(e) => harness_errors.push(e.to_string()),
        }
    }
    drop(counters);
    let _ = priority::lower_current_thread();

    let teardown_started = Instant::now();
    board.close();
    processes.kill_all();
    let (mut faults, wire, fault_events) = switches.finish();
    // The faults' counters are read before the tracer's last pass, so every drop they count was recorded by
    // then (the record is written in the same kernel call path, just after the rule counted the packet), and
    // the drops recorded are compared with them up to the instant after the reading (`drop_gaps`).
    let mut fault_hits = Vec::new();
    for host_faults in &mut faults {
        match host_faults.hits() {
            Ok(hits) => fault_hits.extend(hits),
            Err(e) => harness_errors.push(e.to_string()),
        }
    }
    let hits_counted_at = clock.now();
    progress.stage(Stage::StoppingWire);
    let (wire_stats, wire_hits) = match wire.map(Wire::stop) {
        Some(Ok(stopped)) => {
            harness_errors.extend(stopped.errors);
            harness_errors.extend(wire_losses(&stopped.stats));
            (Some(stopped.stats), stopped.selected)
        }
        Some(Err(e)) => {
            harness_errors.push(e.to_string());
            (None, Vec::new())
        }
        None => (None, Vec::new()),
    };
    // A part that fails to stop (on a starved machine: not within its bounded wait) is a harness error of this
    // run, not the end of it: what the others recorded still makes the report, timeline and pcaps included.
    progress.stage(Stage::StoppingObservers);
    let mut observer_stats = Vec::with_capacity(observers.len());
    for observer in observers {
        observer_stats.push(observer.stop().unwrap_or_else(|e| {
            harness_errors.push(e.to_string());
            ObserverStats::default()
        }));
    }
    progress.stage(Stage::StoppingTracer);
    let states = match tracer {
        Ok(tracer) => tracer.stop().map(StateSource::Traced).unwrap_or_else(|e| {
            harness_errors.push(e.to_string());
            StateSource::Sampled { reason: format!("the transition tracer failed to stop: {e}") }
        }),
        Err(reason) => StateSource::Sampled { reason },
    };
    harness_errors.extend(states.losses());
    progress.stage(Stage::StoppingCaptures);
    let capture_stats = stop_captures(captures).unwrap_or_else(|e| {
        harness_errors.push(e.to_string());
        vec![CaptureStats::default(); interfaces.len()]
    });
    harness_errors.extend(capture_losses(&interfaces, &capture_stats));
    harness_errors.extend(runaway::report());
    fault_hits.extend(wire_hits);
    fault_hits.sort();
    progress.stage(Stage::EndingPrograms);
    wait_for_programs(&programs, PROGRAM_END_LIMIT);
    harness_errors.extend(join_finished(&mut programs));
    // Everything else is still queued in the channel: packets decoded during stop, last samples.
    progress.record_all(events.try_iter());
    progress.record_all(fault_events);
    let mut collected = progress.take_events();
    progress.stage(Stage::Annotating);
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
    harness_errors.extend(drop_gaps(&timeline, plan, &fault_hits, hits_counted_at, &states));
    annotate_impairments(&mut timeline);
    let decisions = decisions(&timeline);
    progress.stage(Stage::ClosingFaults);
    faults.into_iter().for_each(HostFaults::close);
    progress.stage(Stage::ClosingNamespaces);
    drop(namespaces);
    drop(wire_namespace);
    let teardown = teardown_started.elapsed();
    // The sysctl readers run at the ordinary priority and may still be at it when a short scenario ends: they
    // are waited for last, so that the teardown overlaps them instead of coming after them.
    progress.stage(Stage::ReadingSysctls);
    let common = joined(common_reader, "the sysctls")
        .map_err(|e| harness_errors.push(format!("{} sysctls: {e}", plan.hosts[0].id)))
        .ok();
    let mut differing = Vec::with_capacity(plan.hosts.len());
    for (host, reader) in plan.hosts.iter().zip(readers) {
        match joined(reader, "the sysctls") {
            Ok(own) => differing.push((host.id, own)),
            Err(e) => harness_errors.push(format!("{} sysctls: {e}", host.id)),
        }
    }
    let sysctls = match common {
        Some(common) => differing.into_iter().map(|(host, own)| (host, topology::host_sysctls(&common, own))).collect(),
        None => Vec::new(),
    };
    Ok(RunRecord {
        timeline,
        interfaces,
        t0_wall: clock.t0_wall(),
        duration,
        setup,
        hosts_made_ahead,
        teardown,
        deadline_hit,
        sysctls,
        capture: capture_stats,
        observer: plan.hosts.iter().map(|host| host.id).zip(observer_stats).collect(),
        states,
        fault_hits,
        seed,
        wire: wire_stats,
        decisions,
        harness_errors,
        realtime_cpu: priority::realtime_cpu(),
    })
}

/// How soon an event asks for a socket sample of its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// Packets that change TCP states (SYN, FIN, RST) and step ends: at once.
    AtOnce,
    /// Every other packet (it changes a queue, a window, a timer's count): as soon as the observer's CPU
    /// budget allows.
    WithinBudget,
}

fn fresh_sample(event: &Event) -> Option<Urgency> {
    match &event.kind {
        EventKind::Packet(packet) if packet.flags & STATE_CHANGING_FLAGS != 0 => Some(Urgency::AtOnce),
        EventKind::Packet(_) => Some(Urgency::WithinBudget),
        EventKind::StepEnd { .. } => Some(Urgency::AtOnce),
        _ => None,
    }
}

/// A thread reading the TCP sysctls every namespace of the scenario starts with (`topology::common_sysctls`) in
/// `namespace`, idle until wanted ([`Background`], see [`run`]). It lists the names for every reader:
/// listing builds the directory's 200-odd entries.
fn spawn_common_reader(namespace: &Netns) -> CommonReader {
    let background = Arc::new(Background::default());
    let idle = Arc::clone(&background);
    let reader = namespace.spawn("sysctls", move || {
        idle.start_idle();
        topology::common_sysctls(topology::tcp_sysctl_files()?)
    });
    (background, reader)
}

/// The thread reading the common sysctls, and how to want its result.
type CommonReader = (Arc<Background>, Result<JoinHandle<Result<BTreeMap<String, String>>>>);

/// What a thread started by [`Netns::spawn`] to read `what` returned, once it has ended.
fn joined<T>(reader: Result<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    reader?.join().map_err(|_| Error::Internal(format!("the thread reading {what} panicked")))?
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

/// Waits, at most `limit`, until every program thread has ended.
fn wait_for_programs(programs: &[(HostId, Option<JoinHandle<Result<()>>>)], limit: Duration) {
    let until = Instant::now() + limit;
    let running = || programs.iter().any(|(_, slot)| slot.as_ref().is_some_and(|thread| !thread.is_finished()));
    while running() && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
}

/// The message a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What a run sets up before t0, one of each per host in `plan.hosts` order (client, the router if there is
/// one, server), and one capture per interface in `interfaces` order.
pub struct Rig {
    pub namespaces: Vec<Netns>,
    /// The captured interfaces, as the run record names them: each link's two ends, in link order.
    pub interfaces: Vec<CapturedInterface>,
    pub faults: Vec<HostFaults>,
    pub captures: Vec<Capture>,
    pub observers: Vec<Observer>,
    /// For each program host's program (client, server), a sock_diag socket in each program host's namespace
    /// its `wait: { listening }` steps name (see [`actors::listening_hosts`]).
    pub listen_watchers: [[Option<DiagSocket>; 2]; 2],
    /// The kernel's state transitions in every host's namespace, or why they cannot be traced here.
    pub tracer: std::result::Result<Tracer, String>,
    /// Each host's counter files (`nstat`), in `plan.hosts` order.
    pub counters: Vec<CounterFiles>,
    /// Whether the hosts' namespaces and link were made before the scenario asked ([`pool`]).
    pub hosts_made_ahead: bool,
}

/// Namespaces, the wire, the faults (all off), a capture per interface and an observer per host, all sending
/// their events to `sink`: [`start_hosts`] without programs (what `netfault bench setup` times).
#[cfg(feature = "bench")]
pub fn set_up(plan: &Plan, report_dir: &Path, sink: &EventSink) -> Result<Rig> {
    if plan.has_impairments() {
        return Err(Error::Internal("the set-up benchmark times scenarios without impairments".into()));
    }
    let hosts = plan.hosts.iter().map(|_| None).collect();
    let started = start_hosts(plan, report_dir, sink, hosts, None, &mut |_, _| {});
    let (rig, threads) = started.inspect_err(|_| {
        let _ = priority::lower_current_thread();
    })?;
    for thread in threads {
        thread.join().map_err(|_| Error::Internal("host set-up thread panicked".into()))??;
    }
    // As a run's hub before its teardown.
    let _ = priority::lower_current_thread();
    Ok(rig)
}

/// A host's program, handed to the host's thread to run once its host is set up and the engine opens the gate.
struct Program {
    plan: HostPlan,
    board: Arc<StepBoard>,
    processes: Arc<ProcessRegistry>,
    report_dir: PathBuf,
    clock: Clock,
    gate: handoff::Receiver<Gate>,
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
    /// This host's captured interfaces (one, or the router's two), each with its place in `Rig::interfaces`.
    interfaces: Vec<(usize, CapturedInterface, Capture)>,
    faults: HostFaults,
    observer: Observer,
    /// By the program's host: a sock_diag socket in this namespace for the programs that wait for it to listen.
    listen_watchers: [Option<DiagSocket>; 2],
    /// The kernel's counters of this namespace, opened here and read after the scenario.
    counters: CounterFiles,
}

/// How the two hosts of one link meet to create its veth pair: the link's second host hands the first its
/// namespace, and the first tells the second once the pair exists. On a link through the impairment wire each
/// host instead creates its own pair into the wire's namespace, which it is handed at once.
enum WireMeeting {
    Creates { link: usize, far: handoff::Receiver<Netns>, created: handoff::Sender<()> },
    Joins { namespace: handoff::Sender<Netns>, created: handoff::Receiver<()> },
    ToWire { link: usize, end: usize, wire: Netns },
}

/// Each host's meetings, in `plan.hosts` order: one per link it is an end of.
fn wire_meetings(plan: &Plan, wire: Option<&Netns>) -> Result<Vec<Vec<WireMeeting>>> {
    let mut meetings: Vec<Vec<WireMeeting>> = plan.hosts.iter().map(|_| Vec::new()).collect();
    for (link, pair) in plan.links.iter().enumerate() {
        let [near, far_end] = &pair.ends;
        let (Some(near), Some(far_end)) = (plan.position(near.host), plan.position(far_end.host)) else { continue };
        if pair.wire {
            let wire = wire.ok_or_else(|| Error::Internal("a link through the wire, but no wire namespace".into()))?;
            for (end, position) in [near, far_end].into_iter().enumerate() {
                meetings[position].push(WireMeeting::ToWire { link, end, wire: wire.try_clone()? });
            }
            continue;
        }
        let (namespace, far) = handoff::channel();
        let (created, joined) = handoff::channel();
        meetings[near].push(WireMeeting::Creates { link, far, created });
        meetings[far_end].push(WireMeeting::Joins { namespace, created: joined });
    }
    Ok(meetings)
}

/// Starts one thread per host, each of which creates its host's namespace (`unshare(CLONE_NEWNET)`, so the
/// namespaces are created at once) and sets it up from inside: sysctls and `lo`, its ends of the veth pairs
/// (a link's first host creates its pair), its routes, its faults (and the router's NAT), a capture per
/// interface and its observer. Returns what they set up, once all are done, and their threads in `plan.hosts`
/// order: with a program (`programs`, in the same order), each thread then waits at its gate and runs the
/// program in its namespace (its result is the thread's); without, it ends.
///
/// A scenario that asks for a capture ring waits for one RCU grace period (`setsockopt(PACKET_RX_RING)` calls
/// `synchronize_net`, 10-30 ms on a busy machine) per host instead of one per interface.
fn start_hosts(
    plan: &Plan,
    report_dir: &Path,
    sink: &EventSink,
    programs: Vec<Option<Program>>,
    wire: Option<&Netns>,
    on_namespace: &mut dyn FnMut(usize, &Netns),
) -> Result<(Rig, Vec<JoinHandle<Result<()>>>)> {
    let shared = Arc::new(plan.clone());
    // The set-up is real-time, the hub (this thread, which loads the tracer's programs) and each host's thread
    // from its first run: on a machine busy with other work, an ordinary thread woken or started during the
    // set-up waits for a CPU behind it (ftrace, another session's build on both CPUs: a host's thread first ran
    // 1.1-3.9 ms after it was started, the two namespaces then made one after the other). The set-up takes a
    // few ms of CPU, blocking in the kernel for most of it; the CPU gate lets at most one per CPU run at once.
    // The hub stays real-time until the teardown; refused without CAP_SYS_NICE, everything stays ordinary.
    let _ = priority::raise_current_thread();
    // The tracer's ring exists before any host is set up: the `tc` programs of qdisc-drop faults, loaded in
    // the set-up, record their drops into it. Without it (rootless mode) nothing is traced, and the tracer says
    // why.
    let ring_maps = RingMaps::create();
    let (ready_tx, ready_rx) = handoff::channel::<(usize, Result<HostRig>)>();
    let (namespace_tx, namespace_rx) = handoff::channel::<(usize, Netns)>();
    let mut threads = Vec::with_capacity(plan.hosts.len());
    // Hosts made ahead (`pool`), when this process was handed a pair that fits: their link exists already.
    let (pooled, meetings): (Vec<Option<PooledHost>>, _) = match pool::take_for(plan) {
        Some(pooled) => (pooled.into_iter().map(Some).collect(), plan.hosts.iter().map(|_| Vec::new()).collect()),
        None => (plan.hosts.iter().map(|_| None).collect(), wire_meetings(plan, wire)?),
    };
    let hosts_made_ahead = pooled.iter().any(Option::is_some);
    for (position, ((meetings, program), pooled)) in meetings.into_iter().zip(programs).zip(pooled).enumerate() {
        let plan = Arc::clone(&shared);
        let host = plan.hosts[position].id;
        let report_dir = report_dir.to_path_buf();
        let sink = sink.clone();
        let ready = ready_tx.clone();
        let namespace = (position, namespace_tx.clone());
        let drops_to = ring_maps.as_ref().ok().map(RingMaps::try_clone).transpose()?;
        let thread = thread::Builder::new()
            .name(format!("host-{host}"))
            .spawn(move || {
                let rig =
                    set_up_host(&plan, host, &report_dir, (sink.clone(), drops_to), (meetings, pooled), namespace);
                host_thread(host, rig, sink, (position, ready), program)
            })
            .map_err(|e| Error::sys(format!("spawn the thread of host {host}"), e))?;
        let _ = priority::raise_spawned(&thread);
        threads.push(thread);
    }
    drop((ready_tx, namespace_tx));
    // The tracer loads its programs while the hosts set themselves up: it needs only their namespaces.
    let tracer = ring_maps
        .map_err(|e| e.to_string())
        .and_then(|maps| start_tracer(plan, &namespace_rx, maps, sink, on_namespace));
    let mut rigs: Vec<Option<HostRig>> = plan.hosts.iter().map(|_| None).collect();
    let mut failures = Vec::new();
    // A set-up step the scenario caused to fail (a sysctl the kernel refuses) is the error to report, at its
    // line: the other hosts' failures then only follow from it.
    let mut caused_by_scenario = None;
    for _ in &plan.hosts {
        match ready_rx.recv_timeout(SETUP_LIMIT) {
            Ok((position, Ok(rig))) => rigs[position] = Some(rig),
            Ok((_, Err(e @ Error::Located { .. }))) if caused_by_scenario.is_none() => caused_by_scenario = Some(e),
            Ok((position, Err(e))) => failures.push(format!("set-up of {}: {e}", plan.hosts[position].id)),
            Err(_) => failures
                .push(format!("the hosts were not set up {}s after their threads started", SETUP_LIMIT.as_secs())),
        }
    }
    // A thread waiting at its gate gives up when the gates go with the caller's `Program`s.
    let rigs: Vec<HostRig> = match rigs.into_iter().collect::<Option<Vec<_>>>() {
        Some(rigs) if failures.is_empty() => rigs,
        _ => return Err(caused_by_scenario.unwrap_or_else(|| Error::Internal(failures.join("; ")))),
    };
    let mut rig = Rig {
        namespaces: Vec::new(),
        interfaces: Vec::new(),
        faults: Vec::new(),
        captures: Vec::new(),
        observers: Vec::new(),
        listen_watchers: [[None, None], [None, None]],
        tracer,
        counters: Vec::new(),
        hosts_made_ahead,
    };
    let mut interfaces = Vec::new();
    for (host, host_rig) in plan.hosts.iter().zip(rigs) {
        rig.namespaces.push(host_rig.namespace);
        rig.faults.push(host_rig.faults);
        rig.observers.push(host_rig.observer);
        rig.counters.push(host_rig.counters);
        interfaces.extend(host_rig.interfaces);
        // Regrouped by the program that uses them.
        if let Some(opened_in) = HostId::ALL.iter().position(|&id| id == host.id) {
            for (program, watcher) in host_rig.listen_watchers.into_iter().enumerate() {
                rig.listen_watchers[program][opened_in] = watcher;
            }
        }
    }
    interfaces.sort_by_key(|(place, _, _)| *place);
    for (_, interface, capture) in interfaces {
        rig.interfaces.push(interface);
        rig.captures.push(capture);
    }
    Ok((rig, threads))
}

/// The transition tracer of every host's namespace, the router's too (watched from outside them), started as
/// soon as each host's thread has made its namespace; `Err` says why the run's states are only sampled. Each
/// namespace is shown to `on_namespace` (with the host's position) as it comes.
fn start_tracer(
    plan: &Plan,
    namespaces: &handoff::Receiver<(usize, Netns)>,
    maps: RingMaps,
    sink: &EventSink,
    on_namespace: &mut dyn FnMut(usize, &Netns),
) -> std::result::Result<Tracer, String> {
    let mut received: Vec<Option<Netns>> = plan.hosts.iter().map(|_| None).collect();
    for _ in &plan.hosts {
        // A host whose set-up failed before its namespace existed sends none; its failure is the run's error.
        let (position, namespace) = namespaces
            .recv_timeout(SETUP_LIMIT)
            .map_err(|_| "a host's namespace never came (its set-up failed)".to_string())?;
        on_namespace(position, &namespace);
        received[position] = Some(namespace);
    }
    let namespaces: Vec<(HostId, &Netns)> =
        plan.hosts.iter().zip(&received).filter_map(|(host, ns)| Some((host.id, ns.as_ref()?))).collect();
    Tracer::start(namespaces, maps, sink.clone(), QueueDrops::of(plan)).map_err(|e| e.to_string())
}

/// The rest of one host's thread (see [`start_hosts`]) once its host is set up: report, then the program if
/// there is one.
fn host_thread(
    host: HostId,
    mut rig: Result<HostRig>,
    sink: EventSink,
    (position, ready): (usize, handoff::Sender<(usize, Result<HostRig>)>),
    program: Option<Program>,
) -> Result<()> {
    let Some(program) = program else {
        // The engine is gone only when it gave up waiting; then nobody needs the rig.
        let _ = ready.send((position, rig));
        return Ok(());
    };
    // What the program's exec steps run in is part of the set-up: made before t0.
    let mut confinement = None;
    if let Ok(made) = &rig {
        match exec_confinement(&program.plan, &made.namespace) {
            Ok(made) => confinement = made,
            Err(e) => rig = Err(e),
        }
    }
    if rig.is_ok() {
        // Best effort: without the privilege the thread stays ordinary and its times are less exact. Raised
        // before the engine hears of it, so the start signal wakes it at once.
        let _ = priority::raise_current_thread();
    }
    if ready.send((position, rig)).is_err() {
        return Ok(());
    }
    drop(ready);
    let gate = program
        .gate
        .recv_timeout(SETUP_LIMIT + PROGRAM_START_TIMEOUT)
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
        confinement,
    };
    actors::run_host(&program.plan, ctx)
}

/// The confinement of a program's `exec` steps in its host's namespace; `None` for a program without any.
fn exec_confinement(program: &HostPlan, namespace: &Netns) -> Result<Option<Arc<Confinement>>> {
    if !program.steps.iter().any(|step| matches!(step.action, Action::Exec(_))) {
        return Ok(None);
    }
    Ok(Some(Arc::new(Confinement::new(namespace, program.id.name())?)))
}

/// One host's set-up, on its own thread, which stays in the namespace it creates, or enters the pooled host's
/// (`pool`), whose link is made already: then only the host's sysctls are written before its faults. Its
/// `qdisc-drop` faults record their drops into `drops_to`, the tracer's maps.
fn set_up_host(
    plan: &Plan,
    host: HostId,
    report_dir: &Path,
    (sink, drops_to): (EventSink, Option<RingMaps>),
    (meetings, pooled): (Vec<WireMeeting>, Option<PooledHost>),
    (position, to_tracer): (usize, handoff::Sender<(usize, Netns)>),
) -> Result<HostRig> {
    let (namespace, pooled_link) = match pooled {
        Some(PooledHost { namespace, link }) => {
            namespace.enter()?;
            (namespace, Some(link))
        }
        None => (Netns::unshare_current_thread()?, None),
    };
    // The engine is gone only when it gave up waiting.
    let _ = to_tracer.send((position, namespace.try_clone()?));
    drop(to_tracer);
    let links = match pooled_link {
        Some(link) => {
            topology::write_host_sysctls(plan, host)?;
            vec![link]
        }
        None => build_host_wire(plan, host, &namespace, meetings)?,
    };
    let nat = router_nat(plan).filter(|_| host == HostId::Router);
    let recording = drops_to.as_ref().map(|maps| DropRecording { maps: maps.fds(), host: host.index() as u32 });
    let faults = HostFaults::install(&namespace, host, &plan.faults, nat.as_ref(), recording)?;
    for link in &links {
        firewall::install_qdisc_drops(host, link.ifindex, &plan.faults, drops_to.as_ref())?;
    }
    let observer = Observer::start(&namespace, host, plan.sample_interval, sink.clone())?;
    let counters = CounterFiles::open()?;
    let mut listen_watchers = [None, None];
    for (program, watcher) in HostId::ALL.into_iter().zip(&mut listen_watchers) {
        if actors::listening_hosts(plan.host(program)).get(host.index()) == Some(&true) {
            *watcher = Some(DiagSocket::open_in(&namespace)?);
        }
    }
    let mut interfaces = Vec::with_capacity(links.len());
    for link in links {
        let place = plan.link_ends().position(|(_, end)| end.host == host && end.ifname == link.ifname);
        let (place, (link_index, _)) = place
            .and_then(|place| plan.link_ends().nth(place).map(|end| (place, end)))
            .ok_or_else(|| Error::Internal(format!("{host} {} is on no link of the plan", link.ifname)))?;
        let pcap = pcap_name(host, &link.ifname, plan.link_ends().filter(|(_, end)| end.host == host).count());
        let capture = Capture::start(
            &namespace,
            host,
            link.ifindex,
            &report_dir.join(&pcap),
            sink.clone(),
            capture_settings(plan),
        )?;
        let address6 = plan
            .link_ends()
            .find(|(_, end)| end.host == host && end.ifname == link.ifname)
            .and_then(|(_, end)| end.address6);
        let interface = CapturedInterface {
            link: link_index,
            address6,
            host,
            ifname: link.ifname,
            mac: link.mac,
            address: link.address,
            pcap,
            snaplen: plan.capture.snaplen.unwrap_or(crate::observe::capture::SNAPLEN),
        };
        interfaces.push((place, interface, capture));
    }
    Ok(HostRig { namespace, interfaces, faults, observer, listen_watchers, counters })
}

/// This host's side of the wire, made on its thread inside its new namespace: sysctls and `lo`, the veth pairs
/// it meets the other hosts for (see [`WireMeeting`]), addresses and links up, until operational.
fn build_host_wire(
    plan: &Plan,
    host: HostId,
    namespace: &Netns,
    meetings: Vec<WireMeeting>,
) -> Result<Vec<topology::HostLink>> {
    let mut wire = HostWire::prepare(plan, host)?;
    let peer_failed = |what: &str| Error::Internal(format!("{what} (the other host's set-up failed)"));
    // Every namespace is handed over before any pair is created, so no host waits for one that waits too.
    for meeting in &meetings {
        if let WireMeeting::Joins { namespace: to_creator, .. } = meeting {
            // The creator is gone only when its set-up failed, which it reports itself.
            let _ = to_creator.send(namespace.try_clone()?);
        }
    }
    for meeting in &meetings {
        match meeting {
            WireMeeting::Creates { link, far, created } => {
                let far = far.recv_timeout(SETUP_LIMIT).map_err(|_| peer_failed("the other namespace never came"))?;
                wire.create_veth_pair(plan, &plan.links[*link], &far)?;
                // The other host is gone only when its set-up failed, which it reports itself.
                let _ = created.send(());
            }
            WireMeeting::ToWire { link, end, wire: impairment_wire } => {
                wire.create_veth_to_wire(plan, &plan.links[*link].ends[*end], impairment_wire)?;
            }
            WireMeeting::Joins { .. } => {}
        }
    }
    for meeting in &meetings {
        if let WireMeeting::Joins { created, .. } = meeting {
            created.recv_timeout(SETUP_LIMIT).map_err(|_| peer_failed("the veth pair was never created"))?;
        }
    }
    let links = wire.configure(plan)?;
    wire.wait_operational(plan)?;
    Ok(links)
}

/// The router's NAT rules, when the plan has a router: its interface towards the client and towards the
/// server, and the server's address for port forwards.
fn router_nat(plan: &Plan) -> Option<Nat> {
    let router = plan.router.as_ref()?;
    let side = |peer: HostId| {
        plan.links
            .iter()
            .find(|link| link.ends.iter().any(|end| end.host == peer))
            .and_then(|link| link.ends.iter().find(|end| end.host == HostId::Router))
            .map(|end| end.ifname.clone())
    };
    Some(Nat {
        client_side: side(HostId::Client)?,
        server_side: side(HostId::Server)?,
        server: plan.host(HostId::Server).address,
        masquerade: router.masquerade,
        forwards: router.dnat.clone(),
    })
}

/// The pcap of one interface in the report folder: `<host>.pcap` for a host with one interface,
/// `<host>-<ifname>.pcap` for the router's two.
fn pcap_name(host: HostId, ifname: &str, interfaces_of_host: usize) -> String {
    if interfaces_of_host == 1 {
        format!("{host}.pcap")
    } else {
        format!("{host}-{ifname}.pcap")
    }
}

/// `tcpdump -B -s` for the plan: the socket's own queue unless the scenario asks for a ring, whole frames
/// unless it asks for a snap length.
/// The captures decode their frames into timeline events after they stop, unless a fault switches on packets
/// or bytes: the switchboard must then see every packet as it passes. Nothing else during the run reads
/// packet events but the socket observers' pokes (`fresh_sample`), which the packets a capture announces at
/// once (every SYN, FIN and RST, and the first of each batch it takes) still give.
fn capture_settings(plan: &Plan) -> CaptureSettings {
    let on_packets = |trigger: &Trigger| matches!(trigger, Trigger::Packet { .. } | Trigger::Bytes { .. });
    let switched_on_packets =
        plan.faults.iter().any(|fault| on_packets(&fault.from) || fault.until.as_ref().is_some_and(on_packets));
    CaptureSettings {
        buffer: plan.capture.ring_bytes.map_or(CaptureBuffer::DEFAULT, CaptureBuffer::ring_of),
        snaplen: plan.capture.snaplen,
        decoding: if switched_on_packets { Decoding::Live } else { Decoding::AfterStop },
    }
}

/// A capture that lost frames makes the timeline incomplete: every packet expectation and packet trigger
/// would be judged on part of the traffic, so the run cannot be trusted either way.
fn capture_losses(interfaces: &[CapturedInterface], stats: &[CaptureStats]) -> Vec<String> {
    interfaces
        .iter()
        .zip(stats)
        .filter(|(_, stats)| stats.lost() > 0)
        .map(|(interface, stats)| {
            format!(
                "capture of {} {} lost {} of the {} frames its interface counted ({} dropped by the kernel): the \
                 timeline is incomplete; give the scenario a larger buffer, e.g. `capture: {{ ring: 64MiB }}`",
                interface.host,
                interface.ifname,
                stats.lost(),
                stats.interface_frames,
                stats.kernel_drops
            )
        })
        .collect()
}

/// The plan's impairments as the wire applies them.
fn wire_faults(plan: &Plan) -> Vec<WireFault> {
    plan.faults
        .iter()
        .filter_map(|fault| {
            fault.action.impairment().map(|impairment| WireFault {
                name: fault.name.clone(),
                toward: fault.toward(),
                matcher: fault.matcher.clone(),
                impairment: *impairment,
            })
        })
        .collect()
}

/// Frames the wire lost without being asked to (its socket's buffer overflowed, or the kernel refused a send):
/// the scenario would be judged on a network that misbehaved more than it says.
fn wire_losses(stats: &[WireStats; 2]) -> Vec<String> {
    HostId::ALL
        .into_iter()
        .zip(stats)
        .filter(|(_, stats)| stats.kernel_drops > 0 || stats.send_errors > 0)
        .map(|(toward, stats)| {
            format!(
                "the wire toward {toward} lost {} frames it was not asked to lose ({} dropped by the kernel before \
                 the wire took them, {} sends refused): the network misbehaved more than the scenario says",
                stats.kernel_drops + stats.send_errors,
                stats.kernel_drops,
                stats.send_errors
            )
        })
        .collect()
}

/// When a run failed its verdict and its wire forwarded frames late (its thread without a CPU when they were
/// due): a harness error naming that, since the network was slower than the scenario says (a 10 Mbit/s link
/// idle while its queue waited for the thread) and the failures may be this machine's load rather than the
/// kernel's behaviour. A run that passed keeps its verdict: late frames only ever make a network worse.
pub fn blame_late_wire(record: &mut RunRecord, passed: bool) {
    record.harness_errors.extend(late_wire(record.wire, passed));
}

fn late_wire(wire: Option<[WireStats; 2]>, passed: bool) -> Vec<String> {
    let Some(stats) = wire.filter(|_| !passed) else { return Vec::new() };
    HostId::ALL
        .into_iter()
        .zip(stats)
        .filter(|(_, stats)| stats.late_frames > 0)
        .map(|(toward, stats)| {
            format!(
                "the wire toward {toward} fell behind: {} of its {} frames left more than {} ms after their time, \
                 the latest {:.1} ms late (its thread had no CPU: the machine is too busy); the network was slower \
                 than the scenario says, so the failures below may be this machine's, not the kernel's",
                stats.late_frames,
                stats.frames_out,
                WIRE_LATE_US / 1000,
                stats.max_late_us as f64 / 1000.0
            )
        })
        .collect()
}

/// When a run failed a check that reads a host's socket samples (states, timers, queues) and that host's
/// observer took a sample asked for at once more than [`LATE_ANSWER`] late (its thread had no CPU): a harness
/// error naming that, since a value that lasted less than the wait may be missing from the samples for this
/// machine's load rather than the kernel's behaviour. A run that passed keeps its verdict, and so does a failure
/// of a check that does not read samples.
pub fn blame_late_observers(record: &mut RunRecord, verdict: &Verdict) {
    record.harness_errors.extend(late_observers(&record.observer, &verdict.sampled_failures));
}

fn late_observers(observers: &[(HostId, ObserverStats)], sampled_failures: &[HostId]) -> Vec<String> {
    observers
        .iter()
        .filter(|(host, stats)| stats.late_answers > 0 && sampled_failures.contains(host))
        .map(|(host, stats)| {
            format!(
                "the socket observer of {host} fell behind: {} a sample asked for at once was taken more than {} ms \
                 later, the latest asked at {}s and taken {:.1} ms later (its thread had no CPU: the machine is too \
                 busy); a queue, timer or state that lasted less may be missing from its samples, so the failures \
                 below about {host}'s sockets may be this machine's, not the kernel's",
                match stats.late_answers {
                    1 => "once".to_string(),
                    times => format!("{times} times"),
                },
                LATE_ANSWER.as_millis(),
                format_secs(stats.max_answer_delay_asked_at),
                stats.max_answer_delay.as_secs_f64() * 1e3
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

/// The first fault of `host` in `direction`, switched on at this point of the timeline, whose rule matches `packet`.
fn active_fault<'p>(
    plan: &'p Plan,
    active: &HashMap<&str, bool>,
    direction: Direction,
    host: HostId,
    packet: &PacketEvent,
) -> Option<&'p FaultPlan> {
    plan.faults.iter().find(|fault| {
        fault.host == host
            && fault.direction == direction
            && active.get(fault.name.as_str()).copied().unwrap_or(false)
            && firewall::matches(fault, host, packet)
    })
}

/// Each host's drops before the wire that its egress faults' counters count and the timeline lacks: a harness
/// error for each host and dropper with any, so that a drop the run did not record is never a silent hole in
/// the timeline. Counted: the packets of `qdisc-drop` faults and those netfilter dropped for egress `drop` and
/// `reject` faults of the client and server (a router's dropped packets were received, which the captures
/// show), each recorded by a program in the fault's own path (its `tc` program, its rule's `bpf` match) into
/// the tracer's ring. Compared: the counters, read at `counted_at`, with the packets the timeline shows the
/// host's queueing discipline or netfilter dropped by then (nothing else drops a client's or server's own
/// packets before they leave; a fault's name is not what is compared, since a drop just before the fault's
/// `on` event is stamped has none).
///
/// The kernel's `skb:kfree_skb` tracepoint recorded these drops before, and under load it missed some: it
/// fires only when the packet's last reference goes. A recording program skips nothing, so a gap now means
/// records were lost (also reported on its own) or a fault's rule ran without its recorder.
fn drop_gaps(
    timeline: &Timeline,
    plan: &Plan,
    fault_hits: &[(String, u64)],
    counted_at: Duration,
    states: &StateSource,
) -> Vec<String> {
    // With IPv6 on the link, a fault may also drop the hosts' own IPv6 housekeeping (their MLD reports), which
    // the timeline leaves out as it leaves out ARP: counted and never shown, they would look like gaps.
    let StateSource::Traced(_) = states else { return Vec::new() };
    if plan.link.ipv6 {
        return Vec::new();
    }
    let dropper = |fault: &FaultPlan| {
        if fault.direction != Direction::Egress {
            return None;
        }
        match fault.action {
            FaultAction::QdiscDrop => Some(DroppedBy::Qdisc),
            FaultAction::Drop
            | FaultAction::RejectTcpReset
            | FaultAction::RejectIcmpPortUnreachable
            | FaultAction::RejectIcmpHostUnreachable
            | FaultAction::RejectIcmpNetUnreachable
            | FaultAction::RejectIcmpAdminProhibited => (fault.host != HostId::Router).then_some(DroppedBy::Netfilter),
            FaultAction::FlushConntrack | FaultAction::Impair(_) => None,
        }
    };
    let mut gaps = Vec::new();
    for host in HostId::EVERY {
        for by in [DroppedBy::Netfilter, DroppedBy::Qdisc] {
            let faults: Vec<&str> = plan
                .faults
                .iter()
                .filter(|fault| fault.host == host && dropper(fault) == Some(by))
                .map(|fault| fault.name.as_str())
                .collect();
            if faults.is_empty() {
                continue;
            }
            let hits: u64 =
                fault_hits.iter().filter(|(name, _)| faults.contains(&name.as_str())).map(|(_, hits)| hits).sum();
            let recorded = timeline
                .events
                .iter()
                .filter(|event| event.host == host && event.t <= counted_at)
                .filter(|event| matches!(&event.kind, EventKind::Packet(packet) if packet.dropped == Some(by)))
                .count() as u64;
            if recorded < hits {
                gaps.push(format!(
                    "{host}'s faults {} made {} drop {hits} packets before they left (their nftables counters), \
                     but the timeline shows {recorded}: the drop tracer did not record {} of them",
                    faults.join(", "),
                    by.name(),
                    hits - recorded
                ));
            }
        }
    }
    gaps
}

/// Marks each captured packet that an active ingress fault's rule matched on arrival, and the sender's copy of it,
/// and each packet dropped before it left with the host's active egress fault that matches it, in one pass.
///
/// A received packet's copy is the oldest packet its sender sent with the same addresses, IP id, flags, length,
/// sequence and acknowledgement numbers, window and options that no earlier arrival took: a link delivers in
/// order. Request sockets send every SYN-ACK with IP id 0, and under load a retransmitted SYN-ACK left before
/// the previous one arrived: "the last one sent" then named the newer copy twice and the older one never.
pub fn annotate_faults(timeline: &mut Timeline, plan: &Plan) {
    let mut active: HashMap<&str, bool> = HashMap::new();
    let mut unreceived: HashMap<CopyKey, VecDeque<usize>> = HashMap::new();
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
                if let Some(fault) = active_fault(plan, &active, Direction::Egress, event.host, packet) {
                    hits.push((index, fault.name.clone()));
                }
            }
            EventKind::Packet(packet) if packet.direction == PacketDirection::Out => {
                unreceived.entry(CopyKey::of(event.host, packet)).or_default().push_back(index);
            }
            EventKind::Packet(packet) => {
                let sent = unreceived.get_mut(&CopyKey::of(event.host.peer(), packet)).and_then(VecDeque::pop_front);
                if let Some(fault) = active_fault(plan, &active, Direction::Ingress, event.host, packet) {
                    hits.push((index, fault.name.clone()));
                    if let Some(sent) = sent {
                        hits.push((sent, fault.name.clone()));
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

/// What a packet's two captured copies (the sender's and the receiver's) have in common: its sender and every
/// header field both captures decode alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CopyKey {
    sender: HostId,
    ip_id: u16,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    flags: u8,
    len: u32,
    seq: u32,
    ack: u32,
    window: u16,
    options: String,
}

impl CopyKey {
    fn of(sender: HostId, packet: &PacketEvent) -> CopyKey {
        CopyKey {
            sender,
            ip_id: packet.ip_id,
            src: packet.src,
            dst: packet.dst,
            flags: packet.flags,
            len: packet.len,
            seq: packet.seq,
            ack: packet.ack,
            window: packet.window,
            options: packet.options.clone(),
        }
    }
}

/// Marks the captured copies of each packet the wire decided about with the decision: the sender's copy (it
/// left) and every copy the receiver's capture saw (none when lost, two when duplicated, the forged segment of
/// an injection). A packet is known by its addresses, IP id, flags, sequence number and length, as both
/// captures decode it; its sender's copy is the last one seen before the wire took it, the receiver's are
/// those seen after.
pub fn annotate_impairments(timeline: &mut Timeline) {
    type Key = (std::net::IpAddr, std::net::IpAddr, u16, u8, u32, u32);
    let key = |p: &PacketEvent| (p.src, p.dst, p.ip_id, p.flags, p.seq, p.len);
    let mut marks: Vec<(usize, String)> = Vec::new();
    for event in &timeline.events {
        let EventKind::Impairment(impairment) = &event.kind else { continue };
        let Some(packet) = &impairment.packet else { continue };
        let wanted: Key = key(packet);
        let label = format!("{} #{}: {}", impairment.decision.fault, impairment.n, impairment.decision.kind);
        let sender = impairment.toward.peer();
        let is_copy = |e: &Event, host: HostId, direction: PacketDirection| {
            e.host == host && matches!(&e.kind, EventKind::Packet(p) if p.direction == direction && key(p) == wanted)
        };
        // The sender's capture stamps a frame a few microseconds before the wire does; a little slack covers
        // frames stamped in the other order.
        let slack = Duration::from_millis(1);
        let sent =
            timeline.events.iter().rposition(|e| e.t <= event.t + slack && is_copy(e, sender, PacketDirection::Out));
        if !matches!(impairment.decision.kind, DecisionKind::Injected { .. }) {
            marks.extend(sent.map(|position| (position, label.clone())));
        }
        let start = timeline.events.partition_point(|e| e.t + slack < event.t);
        let arrivals = (start..timeline.events.len())
            .filter(|&position| is_copy(&timeline.events[position], impairment.toward, PacketDirection::In));
        let copies = match impairment.decision.kind {
            DecisionKind::Lost | DecisionKind::QueueFull => 0,
            DecisionKind::Duplicated => 2,
            _ => 1,
        };
        marks.extend(arrivals.take(copies).map(|position| (position, label.clone())));
    }
    for (position, label) in marks {
        if let EventKind::Packet(packet) = &mut timeline.events[position].kind {
            packet.impairments.push(label);
        }
    }
}

/// The impairments' decisions of a timeline, sorted by fault and packet key: two runs that sent the same
/// packets list the same decisions in the same order.
fn decisions(timeline: &Timeline) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = timeline
        .events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Impairment(impairment) => Some(impairment.decision.clone()),
            _ => None,
        })
        .collect();
    decisions.sort_by(|a, b| (&a.fault, a.key).cmp(&(&b.fault, b.key)));
    decisions
}

#[cfg(test)]
mod tests;

//! One scenario run inside the child process: set up, start the programs, switch faults on their triggers,
//! stop at the end or the deadline, and hand back the timeline.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::actors::{self, ActorContext, ProcessRegistry, StepBoard};
use crate::capture::{Capture, CaptureStats};
use crate::clock::{Clock, EventSink};
use crate::error::{Error, Result};
use crate::firewall::{self, Firewall};
use crate::netns::Netns;
use crate::observe::{Observer, ObserverStats};
use crate::priority;
use crate::scenario::plan::{Direction, FaultPlan, HostId, Plan, StepEdge, Trigger};
use crate::timeline::{Event, EventKind, PacketDirection, Timeline};
use crate::topology;

/// What a run produced, before judging.
#[derive(Debug)]
pub struct RunOutput {
    pub timeline: Timeline,
    /// Time from t0 to the end of the programs (or the deadline).
    pub duration: Duration,
    /// Namespaces, veth, addresses, nftables and capture set up, then torn down.
    pub setup: Duration,
    pub teardown: Duration,
    pub deadline_hit: bool,
    pub capture: [CaptureStats; 2],
    pub observer: [ObserverStats; 2],
    /// Packets each fault's rule matched, per fault name.
    pub fault_hits: Vec<(String, u64)>,
    /// A host program that failed inside the harness (an error or a panic), not by the kernel's doing: the
    /// run is a harness error, its timeline and captures are still reported.
    pub program_errors: Vec<String>,
}

/// How often the hub wakes to look at time triggers and the programs when nothing happens.
const IDLE_TICK: Duration = Duration::from_millis(5);

/// How long the program threads may take to start and enter their namespaces.
const PROGRAM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `plan`, writing the pcaps into `report_dir`. Returns harness errors only; the verdict comes later.
pub fn run(plan: &Plan, report_dir: &Path) -> Result<RunOutput> {
    let setup_started = Instant::now();
    let namespaces = [Netns::new_anonymous()?, Netns::new_anonymous()?];
    let topology = topology::build(plan, &namespaces[0], &namespaces[1])?;
    let mut firewalls = Vec::with_capacity(2);
    for host in HostId::ALL {
        firewalls.push(Firewall::install(&namespaces[host.index()], host, &plan.faults)?);
    }
    let clock = Clock::unstarted();
    let (sink, events) = EventSink::new(clock.clone());
    let mut captures = Vec::with_capacity(2);
    let mut observers = Vec::with_capacity(2);
    for host in HostId::ALL {
        let ns = &namespaces[host.index()];
        let pcap = report_dir.join(format!("{host}.pcap"));
        captures.push(Capture::start(ns, host, topology.link(host).ifindex, &pcap, sink.clone())?);
        observers.push(Observer::start(ns, host, plan.sample_interval, sink.clone())?);
    }
    let board = StepBoard::new();
    let processes = ProcessRegistry::new();
    // The program threads start and enter their namespaces first, then wait for t0: on a loaded machine
    // starting a thread was measured to take up to 0.7 s, which must not count as scenario time.
    let (ready_tx, ready) = mpsc::channel::<()>();
    let mut starts = Vec::with_capacity(2);
    // Each host's program until it ends and is joined.
    let mut programs: Vec<(HostId, Option<JoinHandle<Result<()>>>)> = Vec::with_capacity(2);
    for host in HostId::ALL {
        let host_plan = plan.host(host).clone();
        let mut ctx = ActorContext {
            host,
            own_address: plan.host(host).address,
            peer_address: plan.host(host.peer()).address,
            board: Arc::clone(&board),
            processes: Arc::clone(&processes),
            sink: sink.clone(),
            deadline: Instant::now() + plan.deadline,
            plan: plan.clone(),
        };
        let (start_tx, start) = mpsc::channel::<Instant>();
        let ready_tx = ready_tx.clone();
        let program = namespaces[host.index()].spawn(&format!("{host}-program"), move || {
            // Best effort: without the privilege the thread stays ordinary and its times are less exact.
            let _ = priority::raise_current_thread();
            let _ = ready_tx.send(());
            // The deadline comes with the start; a hub that gave up before (a setup error) sends none.
            match start.recv_timeout(PROGRAM_READY_TIMEOUT) {
                Ok(deadline) => {
                    ctx.deadline = deadline;
                    actors::run_host(&host_plan, ctx)
                }
                Err(_) => Ok(()),
            }
        })?;
        programs.push((host, Some(program)));
        starts.push(start_tx);
    }
    drop(ready_tx);
    drop(sink);
    for _ in HostId::ALL {
        ready.recv_timeout(PROGRAM_READY_TIMEOUT).map_err(|_| {
            Error::Internal(format!("the program threads did not start within {}s", PROGRAM_READY_TIMEOUT.as_secs()))
        })?;
    }
    let setup = setup_started.elapsed();
    // The hub too reacts to events in time (fault triggers); it goes back to ordinary before the teardown.
    let _ = priority::raise_current_thread();
    // t0 is the moment the programs start: scenario times read as the seed scripts' times.
    clock.start();

    // Faults due at t0 are on before either program makes its first call.
    let mut schedule = FaultSchedule::new(&plan.faults);
    let mut fault_events = Vec::new();
    apply_due(&mut schedule, &mut firewalls, &clock, &mut fault_events)?;
    let deadline = clock.t0().unwrap_or_else(Instant::now) + plan.deadline;
    for start in starts {
        // A thread that is gone has failed; the hub's join reports it.
        let _ = start.send(deadline);
    }

    let mut collected: Vec<Event> = Vec::new();
    let mut deadline_hit = false;
    let mut program_errors = Vec::new();
    loop {
        let now = clock.now();
        program_errors.extend(join_finished(&mut programs));
        // A program that failed inside the harness ends the run at once: the other one may wait for it forever.
        if !program_errors.is_empty() || programs.iter().all(|(_, program)| program.is_none()) {
            break;
        }
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        let wake = schedule.next_due().map_or(IDLE_TICK, |due| due.saturating_sub(now).min(IDLE_TICK));
        match events.recv_timeout(wake) {
            Ok(event) => {
                schedule.observe(plan, &event);
                collected.push(event);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        apply_due(&mut schedule, &mut firewalls, &clock, &mut fault_events)?;
    }
    let duration = clock.now();
    let _ = priority::lower_current_thread();

    let teardown_started = Instant::now();
    board.close();
    processes.kill_all();
    if deadline_hit {
        collected.push(Event { t: duration, host: HostId::Client, kind: EventKind::Deadline { step: None } });
    }
    let mut observer_stats = Vec::with_capacity(2);
    for observer in observers {
        observer_stats.push(observer.stop()?);
    }
    let mut capture_stats = Vec::with_capacity(2);
    for capture in captures {
        capture_stats.push(capture.stop()?);
    }
    let mut fault_hits = Vec::new();
    for firewall in &mut firewalls {
        fault_hits.extend(firewall.counters()?);
    }
    fault_hits.sort();
    program_errors.extend(join_finished(&mut programs));
    // Everything else is still queued in the channel: packets decoded during stop, last samples.
    collected.extend(events.try_iter());
    collected.extend(fault_events);
    let mut timeline = Timeline::new(collected);
    if deadline_hit {
        mark_running_steps(&mut timeline, plan);
    }
    annotate_faults(&mut timeline, plan);
    drop(firewalls);
    drop(namespaces);
    let teardown = teardown_started.elapsed();
    let [capture_client, capture_server] = into_pair(capture_stats)?;
    let [observer_client, observer_server] = into_pair(observer_stats)?;
    Ok(RunOutput {
        timeline,
        duration,
        setup,
        teardown,
        deadline_hit,
        capture: [capture_client, capture_server],
        observer: [observer_client, observer_server],
        fault_hits,
        program_errors,
    })
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

/// Switches the faults that are due now and records each switch on the timeline.
fn apply_due(
    schedule: &mut FaultSchedule<'_>,
    firewalls: &mut [Firewall],
    clock: &Clock,
    events: &mut Vec<Event>,
) -> Result<()> {
    for (fault, on) in schedule.due(clock.now()) {
        let firewall = &mut firewalls[fault.host.index()];
        let kind = if on {
            firewall.activate(&fault.name)?;
            EventKind::FaultOn { fault: fault.name.clone() }
        } else {
            firewall.deactivate(&fault.name)?;
            EventKind::FaultOff { fault: fault.name.clone() }
        };
        events.push(Event { t: clock.now(), host: fault.host, kind });
    }
    Ok(())
}

fn into_pair<T>(items: Vec<T>) -> Result<[T; 2]> {
    items.try_into().map_err(|_| Error::Internal("expected one item per host".into()))
}

/// Names, in the deadline event, the steps that were still running: not ended, or ended only as the run
/// stopped them (an exec killed by `kill_all` ends after the deadline event; one the actor's own bounded wait
/// cut ends `unfinished`).
fn mark_running_steps(timeline: &mut Timeline, plan: &Plan) {
    let deadline_at = timeline.events.iter().find_map(|e| matches!(e.kind, EventKind::Deadline { .. }).then_some(e.t));
    let mut running: Vec<String> = Vec::new();
    for host in HostId::ALL {
        for step in &plan.host(host).steps {
            let record = crate::verdict::step_record(timeline, host, step.index);
            let cut = match (record.end, &record.outcome) {
                (None, _) => true,
                (Some(_), Some(crate::timeline::Outcome::Unfinished)) => true,
                (Some(end), _) => deadline_at.is_some_and(|deadline| end >= deadline),
            };
            if record.start.is_some() && cut {
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

/// Marks each captured packet that an active ingress fault's rule matched on arrival, and the sender's copy of it.
pub fn annotate_faults(timeline: &mut Timeline, plan: &Plan) {
    let mut active: HashMap<&str, bool> = HashMap::new();
    let mut hits: Vec<(usize, String)> = Vec::new();
    for (index, event) in timeline.events.iter().enumerate() {
        match &event.kind {
            EventKind::FaultOn { fault } => {
                active.insert(fault.as_str(), true);
            }
            EventKind::FaultOff { fault } => {
                active.insert(fault.as_str(), false);
            }
            EventKind::Packet(packet) if packet.direction == PacketDirection::In => {
                let hit = plan.faults.iter().find(|fault| {
                    fault.host == event.host
                        && fault.direction == Direction::Ingress
                        && active.get(fault.name.as_str()).copied().unwrap_or(false)
                        && firewall::matches(fault, event.host, packet)
                });
                if let Some(fault) = hit {
                    hits.push((index, fault.name.clone()));
                }
            }
            _ => {}
        }
    }
    for (index, fault) in hits {
        let event = &timeline.events[index];
        let EventKind::Packet(arrived) = &event.kind else { continue };
        let sender = event.host.peer();
        let key = (arrived.ip_id, arrived.src, arrived.dst, arrived.flags, arrived.len);
        let sent = timeline.events[..index].iter().rposition(|e| {
            e.host == sender
                && matches!(&e.kind, EventKind::Packet(p)
                    if p.direction == PacketDirection::Out && (p.ip_id, p.src, p.dst, p.flags, p.len) == key)
        });
        for position in [Some(index), sent].into_iter().flatten() {
            if let EventKind::Packet(packet) = &mut timeline.events[position].kind {
                packet.fault = Some(fault.clone());
            }
        }
    }
}

/// One side (on or off) of a fault's schedule.
#[derive(Debug, Clone, PartialEq)]
enum Arm {
    Waiting,
    Due(Duration),
    Done,
}

/// The faults' triggers: armed by events, due at a time, applied once.
struct FaultSchedule<'a> {
    faults: Vec<(&'a FaultPlan, Arm, Arm, u64)>,
}

impl<'a> FaultSchedule<'a> {
    fn new(faults: &'a [FaultPlan]) -> FaultSchedule<'a> {
        let arm = |trigger: Option<&Trigger>| match trigger {
            Some(Trigger::At(t)) => Arm::Due(*t),
            Some(_) => Arm::Waiting,
            None => Arm::Done,
        };
        FaultSchedule {
            faults: faults.iter().map(|f| (f, arm(Some(&f.from)), arm(f.until.as_ref()), 0)).collect(),
        }
    }

    /// Arms the triggers that `event` satisfies.
    fn observe(&mut self, plan: &Plan, event: &Event) {
        for (fault, on, off, counter) in &mut self.faults {
            for (trigger, arm) in [(Some(&fault.from), &mut *on), (fault.until.as_ref(), &mut *off)] {
                let Some(trigger) = trigger else { continue };
                if *arm != Arm::Waiting {
                    continue;
                }
                if let Some(delay) = fires_on(plan, trigger, event, counter) {
                    *arm = Arm::Due(event.t + delay);
                }
            }
        }
    }

    fn next_due(&self) -> Option<Duration> {
        self.faults
            .iter()
            .flat_map(|(_, on, off, _)| [on, off])
            .filter_map(|arm| match arm {
                Arm::Due(t) => Some(*t),
                _ => None,
            })
            .min()
    }

    /// Switches due now, in fault order: `(fault, true)` to switch on, `(fault, false)` to switch off.
    fn due(&mut self, now: Duration) -> Vec<(&'a FaultPlan, bool)> {
        let mut switches = Vec::new();
        for (fault, on, off, _) in &mut self.faults {
            if matches!(on, Arm::Due(t) if *t <= now) {
                *on = Arm::Done;
                switches.push((*fault, true));
            }
            // A fault switches off only after it was on; an `until` that fires first cancels it.
            if matches!(off, Arm::Due(t) if *t <= now) {
                let was_on = *on == Arm::Done;
                *off = Arm::Done;
                if was_on {
                    switches.push((*fault, false));
                } else {
                    *on = Arm::Done;
                }
            }
        }
        switches
    }
}

/// Whether `event` fires `trigger`; returns the trigger's delay. `counter` counts packets or bytes seen so far.
fn fires_on(plan: &Plan, trigger: &Trigger, event: &Event, counter: &mut u64) -> Option<Duration> {
    match (trigger, &event.kind) {
        (Trigger::Step { host, step, edge, delay }, EventKind::StepStart { step: index, .. })
            if *edge == StepEdge::Started && event.host == *host && plan.step(*host, step)?.index == *index =>
        {
            Some(*delay)
        }
        (Trigger::Step { host, step, edge, delay }, EventKind::StepEnd { step: index, .. })
            if *edge == StepEdge::Finished && event.host == *host && plan.step(*host, step)?.index == *index =>
        {
            Some(*delay)
        }
        (Trigger::State { host, state, delay }, EventKind::Socket(socket))
            if event.host == *host && socket.state == *state =>
        {
            Some(*delay)
        }
        (Trigger::Packet { host, filter, nth, delay }, EventKind::Packet(packet))
            if event.host == *host
                && packet.protocol == "tcp"
                && (filter.from.is_none_or(|from| (from == event.host) == (packet.direction == PacketDirection::Out)))
                && filter.flags.is_none_or(|flags| flags == packet.flags)
                && filter.len.is_none_or(|len| len == packet.len) =>
        {
            *counter += 1;
            (*counter >= u64::from(*nth)).then_some(*delay)
        }
        (Trigger::Bytes { host, bytes, delay }, EventKind::Packet(packet))
            if event.host == *host && packet.direction == PacketDirection::Out && packet.protocol == "tcp" =>
        {
            *counter += u64::from(packet.len);
            (*counter >= *bytes).then_some(*delay)
        }
        _ => None,
    }
}

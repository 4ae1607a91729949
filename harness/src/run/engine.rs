//! One scenario run inside the child process: set up, start the programs, switch faults on their triggers,
//! stop at the end or the deadline, and hand back the timeline.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{joined, Error, Result};
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
use crate::run::switchboard::Switchboard;
use crate::run::topology;
use crate::scenario::plan::{Direction, HostId, Plan};
use crate::timeline::query::{self, StepRecords};
use crate::timeline::{Event, EventKind, PacketDirection, Timeline};

/// How often the hub wakes to look at time triggers and the programs when nothing happens.
const IDLE_TICK: Duration = Duration::from_millis(5);
/// How long program threads may take to be running in their namespaces, and then to be told to start
/// (measured: up to 0.7 s to start a thread with 200 scenarios at once on 2 cores).
const PROGRAM_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `plan`, writing the pcaps into `report_dir`. Returns harness errors only; the verdict comes later.
/// `on_start` is called once the programs have been told to start (t0), after the set-up.
pub fn run(plan: &Plan, report_dir: &Path, on_start: impl FnOnce()) -> Result<RunRecord> {
    let setup_started = Instant::now();
    let clock = Clock::unstarted();
    let (sink, events) = EventSink::new(clock.clone());
    let Rig { namespaces, interfaces, faults, captures, observers, tracer } = set_up(plan, report_dir, &sink)?;
    let setup = setup_started.elapsed();
    let switches = Arc::new(Switchboard::new(plan, faults, clock.clone()));

    // Both program threads are spawned, inside their namespaces and waiting before t0 is taken: creating and
    // scheduling a thread on a busy machine can take a few hundred ms, and that must not count as scenario time.
    let board = StepBoard::new();
    let processes = ProcessRegistry::new();
    let (ready_tx, ready_rx) = mpsc::channel::<HostId>();
    let mut gates: Vec<mpsc::Sender<Instant>> = Vec::with_capacity(2);
    // Each host's program until it ends and is joined.
    let mut programs: Vec<(HostId, Option<JoinHandle<Result<()>>>)> = Vec::with_capacity(2);
    for host in HostId::ALL {
        let host_plan = plan.host(host).clone();
        let mut sock_diag = [None, None];
        for (target, named) in HostId::ALL.into_iter().zip(actors::listening_hosts(&host_plan)) {
            if named {
                sock_diag[target.index()] = Some(DiagSocket::open_in(&namespaces[target.index()])?);
            }
        }
        let mut ctx = ActorContext {
            host,
            own_address: plan.host(host).address,
            board: Arc::clone(&board),
            processes: Arc::clone(&processes),
            sink: sink.clone(),
            switches: Arc::clone(&switches),
            deadline: Instant::now() + plan.deadline,
            sock_diag,
            report_dir: report_dir.to_path_buf(),
        };
        let (gate_tx, gate_rx) = mpsc::channel::<Instant>();
        gates.push(gate_tx);
        let ready = ready_tx.clone();
        let start_clock = clock.clone();
        let program = namespaces[host.index()].spawn(&format!("{host}-program"), move || {
            // Best effort: without the privilege the thread stays ordinary and its times are less exact.
            let _ = priority::raise_current_thread();
            // The engine may be gone (a failed start): then there is nothing to run.
            let _ = ready.send(host);
            ctx.deadline = gate_rx
                .recv_timeout(PROGRAM_START_TIMEOUT)
                .map_err(|_| Error::Internal(format!("{host} program was never told to start")))?;
            // t0 is taken by the first program thread to run (the clock keeps the first start), not by the
            // engine: on a busy machine the woken threads may wait tens of ms for a CPU.
            start_clock.start();
            actors::run_host(&host_plan, ctx)
        })?;
        programs.push((host, Some(program)));
    }
    drop(ready_tx);
    for _ in HostId::ALL {
        if ready_rx.recv_timeout(PROGRAM_START_TIMEOUT).is_err() {
            return Err(Error::Internal(format!(
                "the program threads were not running {}s after their start (spawn in namespace)",
                PROGRAM_START_TIMEOUT.as_secs()
            )));
        }
    }

    // Faults due at t0 are on before either program makes its first call. They are switched before t0 is
    // taken (their events read 0 s): an nftables commit can take tens of ms on a busy machine.
    switches.switch_due()?;
    // The hub too reacts to events in time (fault triggers); it goes back to ordinary before the teardown.
    let _ = priority::raise_current_thread();
    // t0 is the moment the programs start (scenario times read as the seed scripts' times): the first program
    // thread to run takes it. The deadline counts from the start signal, a little before.
    let deadline = Instant::now() + plan.deadline;
    for gate in &gates {
        // A program thread that is gone already reports its own error when joined.
        let _ = gate.send(deadline);
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
    /// The kernel's state transitions in both namespaces, or why they cannot be traced here.
    pub tracer: std::result::Result<Tracer, String>,
}

/// Namespaces, the wire, the faults (all off), a capture (into `report_dir/<host>.pcap`) and an observer per
/// host, all sending their events to `sink`.
///
/// Each host's faults, capture and observer are started by a thread of its own that has entered the host's
/// namespace, so they open their sockets right there, and the two hosts proceed at once. A scenario that asks
/// for a capture ring then waits for one RCU grace period (`setsockopt(PACKET_RX_RING)` calls
/// `synchronize_net`, 10-30 ms on a busy machine) instead of two.
pub fn set_up(plan: &Plan, report_dir: &Path, sink: &EventSink) -> Result<Rig> {
    let (namespaces, topology) = topology::build_in_new_namespaces(plan)?;
    let ([client, server], tracer) = thread::scope(|scope| {
        let starting = HostId::ALL.map(|host| {
            let ns = &namespaces[host.index()];
            let ifindex = topology.link(host).ifindex;
            let pcap = report_dir.join(pcap_name(host));
            let sink = sink.clone();
            thread::Builder::new().name(format!("set-up-{host}")).spawn_scoped(scope, move || {
                ns.enter()?;
                let faults = HostFaults::install(ns, host, &plan.faults)?;
                firewall::install_qdisc_drops(host, ifindex, &plan.faults)?;
                let capture = Capture::start(ns, host, ifindex, &pcap, sink.clone(), capture_buffer(plan))?;
                let observer = Observer::start(ns, host, plan.sample_interval, sink)?;
                Ok::<_, Error>((faults, capture, observer))
            })
        });
        // Meanwhile, on this thread: the tracer watches both namespaces from outside them.
        let tracer = Tracer::start(&namespaces, sink.clone()).map_err(|e| e.to_string());
        (starting.map(|spawned| joined(spawned, "host set-up")), tracer)
    });
    let ((client_faults, client_capture, client_observer), (server_faults, server_capture, server_observer)) =
        (client?, server?);
    let interfaces = HostId::ALL
        .iter()
        .map(|&host| {
            let link = topology.link(host);
            CapturedInterface {
                host,
                ifname: link.ifname.clone(),
                mac: link.mac,
                address: link.address,
                pcap: pcap_name(host),
                snaplen: crate::observe::capture::SNAPLEN,
            }
        })
        .collect();
    Ok(Rig {
        namespaces,
        interfaces,
        faults: vec![client_faults, server_faults],
        captures: vec![client_capture, server_capture],
        observers: vec![client_observer, server_observer],
        tracer,
    })
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
    thread::scope(|scope| {
        let stopping: Vec<_> = captures.into_iter().map(|capture| scope.spawn(move || capture.stop())).collect();
        join_all(stopping, "capture stop")
    })
}

/// Joins scoped threads in order; the first error (or panic) wins, after every thread has been joined.
fn join_all<T>(handles: Vec<thread::ScopedJoinHandle<'_, Result<T>>>, what: &str) -> Result<Vec<T>> {
    let results: Vec<Result<T>> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap_or_else(|_| Err(Error::Internal(format!("{what} thread panicked")))))
        .collect();
    results.into_iter().collect()
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

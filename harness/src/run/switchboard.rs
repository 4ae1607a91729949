//! Fault switches: each fault's triggers and the hosts' faults they switch (`nft add rule` / `nft flush chain`),
//! shared by the hub, which switches on times, packets and socket states, and by the host programs, which
//! switch what their own steps trigger before they go on. A fault that a host's step turns on is so in force
//! before that host's next step starts, and one its step's start turns on before the step's call is made.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::run::clock::Clock;
use crate::run::faults::{Backend, HostFaults};
use crate::run::impair::Wire;
use crate::scenario::plan::{FaultPlan, Plan, Protocol, StepEdge, Trigger};
use crate::timeline::query;
use crate::timeline::{Event, EventKind, IpProtocol, PacketDirection};

/// The faults of one run and those installed on its hosts, behind one lock: a switch is
/// one nftables batch (tens of microseconds), and whoever fires a trigger applies it at once.
pub struct Switchboard {
    state: Mutex<State>,
    clock: Clock,
}

impl fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Switchboard")
            .field("faults", &state.schedule.entries.len())
            .field("switched", &state.events.len())
            .finish()
    }
}

struct State {
    schedule: FaultSchedule,
    /// Taken back by [`Switchboard::finish`]; nothing is switched after that.
    installed: Option<Vec<HostFaults>>,
    /// The impairment wire of a link with impairments; taken back by [`Switchboard::finish`].
    wire: Option<Wire>,
    /// Every switch made, as timeline events.
    events: Vec<Event>,
}

impl Switchboard {
    /// `installed` holds each host's faults, with `plan`'s faults installed and off; `wire` carries out its
    /// impairments.
    pub fn new(plan: &Plan, installed: Vec<HostFaults>, wire: Option<Wire>, clock: Clock) -> Switchboard {
        let state = State { schedule: FaultSchedule::new(plan), installed: Some(installed), wire, events: Vec::new() };
        Switchboard { state: Mutex::new(state), clock }
    }

    /// A run without faults: a host program's steps switch nothing.
    #[cfg(test)]
    pub fn without_faults(clock: Clock) -> Switchboard {
        let schedule = FaultSchedule { entries: Vec::new() };
        Switchboard { state: Mutex::new(State { schedule, installed: None, wire: None, events: Vec::new() }), clock }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A switch that panicked left at worst one fault unswitched; the schedule itself stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms the triggers `event` fires and switches every fault due by now, its own included when its delay is
    /// zero. A host program calls this with its step's start and end before it goes on; the hub with every
    /// event it receives.
    pub fn observe(&self, event: &Event) -> Result<()> {
        let mut state = self.lock();
        state.schedule.observe(event);
        self.switch(&mut state)
    }

    /// Switches every fault due by now (time triggers, and delays of fired ones).
    pub fn switch_due(&self) -> Result<()> {
        let mut state = self.lock();
        self.switch(&mut state)
    }

    /// When the next armed switch is due, if one is.
    pub fn next_due(&self) -> Option<Duration> {
        self.lock().schedule.next_due()
    }

    /// Ends the switching: hands back the hosts' faults (to read their counters), the wire (to stop it) and the
    /// switch events.
    pub fn finish(&self) -> (Vec<HostFaults>, Option<Wire>, Vec<Event>) {
        let mut state = self.lock();
        (state.installed.take().unwrap_or_default(), state.wire.take(), std::mem::take(&mut state.events))
    }

    fn switch(&self, state: &mut State) -> Result<()> {
        let State { schedule, installed, wire, events } = state;
        let Some(installed) = installed else { return Ok(()) };
        for (fault, on) in schedule.due(self.clock.now()) {
            if Backend::of(fault) == Backend::Wire {
                let wire = wire
                    .as_ref()
                    .ok_or_else(|| Error::Internal(format!("impairment {} has no wire to run on", fault.name)))?;
                wire.switch(&fault.name, on).map_err(|e| e.at(fault.location))?;
            } else {
                let host_faults =
                    installed.iter_mut().find(|host_faults| host_faults.host() == fault.host).ok_or_else(|| {
                        Error::Internal(format!(
                            "fault {} is at {}, which has no faults installed",
                            fault.name, fault.host
                        ))
                    })?;
                host_faults.switch(fault, on).map_err(|e| e.at(fault.location))?;
            }
            let kind = if on {
                EventKind::FaultOn { fault: fault.name.clone() }
            } else {
                EventKind::FaultOff { fault: fault.name.clone() }
            };
            events.push(Event { t: self.clock.now(), host: fault.host, kind });
        }
        Ok(())
    }
}

/// One side (on or off) of a fault's schedule.
#[derive(Debug, Clone, PartialEq)]
enum Arm {
    Waiting,
    Due(Duration),
    Done,
}

/// One fault's two triggers and where each stands.
struct Entry {
    fault: FaultPlan,
    on: Arm,
    off: Arm,
    /// Packets or bytes seen so far by the `from` trigger, if it counts them.
    on_counter: u64,
    /// The same for the `until` trigger: each trigger counts its own, so that `until: { packet, nth: 2 }` is
    /// the second matching packet, not the first counted again.
    off_counter: u64,
}

/// The faults' triggers: armed by events, due at a time, applied once.
struct FaultSchedule {
    entries: Vec<Entry>,
}

impl FaultSchedule {
    fn new(plan: &Plan) -> FaultSchedule {
        let arm = |trigger: Option<&Trigger>| match trigger {
            Some(Trigger::At(t)) => Arm::Due(*t),
            Some(_) => Arm::Waiting,
            None => Arm::Done,
        };
        let entries = plan
            .faults
            .iter()
            .map(|fault| Entry {
                fault: fault.clone(),
                on: arm(Some(&fault.from)),
                off: arm(fault.until.as_ref()),
                on_counter: 0,
                off_counter: 0,
            })
            .collect();
        FaultSchedule { entries }
    }

    /// Arms the triggers that `event` satisfies.
    fn observe(&mut self, event: &Event) {
        for Entry { fault, on, off, on_counter, off_counter } in &mut self.entries {
            let triggers = [(Some(&fault.from), &mut *on, on_counter), (fault.until.as_ref(), &mut *off, off_counter)];
            for (trigger, arm, counter) in triggers {
                let Some(trigger) = trigger else { continue };
                if *arm != Arm::Waiting {
                    continue;
                }
                if let Some(delay) = fires_on(trigger, event, counter) {
                    *arm = Arm::Due(event.t + delay);
                }
            }
        }
    }

    fn next_due(&self) -> Option<Duration> {
        self.entries
            .iter()
            .flat_map(|entry| [&entry.on, &entry.off])
            .filter_map(|arm| match arm {
                Arm::Due(t) => Some(*t),
                _ => None,
            })
            .min()
    }

    /// Switches due now, in fault order: `(fault, true)` to switch on, `(fault, false)` to switch off.
    fn due(&mut self, now: Duration) -> Vec<(&FaultPlan, bool)> {
        let mut switches = Vec::new();
        for Entry { fault, on, off, .. } in &mut self.entries {
            if matches!(on, Arm::Due(t) if *t <= now) {
                *on = Arm::Done;
                switches.push((&*fault, true));
            }
            // A fault switches off only after it was on; an `until` that fires first cancels it.
            if matches!(off, Arm::Due(t) if *t <= now) {
                let was_on = *on == Arm::Done;
                *off = Arm::Done;
                if was_on {
                    switches.push((&*fault, false));
                } else {
                    *on = Arm::Done;
                }
            }
        }
        switches
    }
}

/// Whether `event` fires `trigger`; returns the trigger's delay. `counter` counts packets or bytes seen so far.
fn fires_on(trigger: &Trigger, event: &Event, counter: &mut u64) -> Option<Duration> {
    match (trigger, &event.kind) {
        (Trigger::Step { step, edge, delay }, EventKind::StepStart { step: index, .. })
            if *edge == StepEdge::Started && event.host == step.host && step.index == *index =>
        {
            Some(*delay)
        }
        (Trigger::Step { step, edge, delay }, EventKind::StepEnd { step: index, .. })
            if *edge == StepEdge::Finished && event.host == step.host && step.index == *index =>
        {
            Some(*delay)
        }
        (Trigger::State { host, state, delay }, EventKind::Socket(socket))
            if event.host == *host && socket.state == *state =>
        {
            Some(*delay)
        }
        (Trigger::State { host, state, delay }, EventKind::Transition(transition))
            if event.host == *host && transition.to == *state =>
        {
            Some(*delay)
        }
        (Trigger::Packet { host, filter, nth, delay }, EventKind::Packet(packet))
            if event.host == *host
                && (filter
                    .from
                    .is_none_or(|from| (from == event.host) == (packet.direction == PacketDirection::Out)))
                && query::packet_matches(filter, packet) =>
        {
            *counter += 1;
            (*counter >= u64::from(*nth)).then_some(*delay)
        }
        (Trigger::Bytes { host, bytes, delay }, EventKind::Packet(packet))
            if event.host == *host
                && packet.direction == PacketDirection::Out
                && packet.dropped.is_none()
                && packet.protocol == IpProtocol::Known(Protocol::Tcp) =>
        {
            *counter += u64::from(packet.len);
            (*counter >= *bytes).then_some(*delay)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::run::netns::Netns;
    use crate::scenario::plan::HostId;
    use crate::timeline::{Outcome, PacketEvent};

    const SCENARIO: &str = r#"
description: schedule test
faults:
  - name: at-two
    at: server
    action: drop
    from: 2s
    until: 3s
  - name: after-connect
    at: server
    match: { flags: "." }
    action: drop
    from: { after: client.connect, delay: 500ms }
  - name: third-ack
    at: client
    action: drop
    from: { packet: { from: client, flags: "." }, nth: 3 }
  - name: right-after-connect
    at: server
    match: { payload: nonempty }
    action: drop
    from: client.connect
  - name: second-ack-only
    at: server
    action: drop
    from: { packet: { from: client, flags: "." }, nth: 1 }
    until: { packet: { from: client, flags: "." }, nth: 2 }
server:
  - listen: { port: 9000 }
client:
  - connect: { to: server, port: 9000 }
    name: connect
"#;

    pub(crate) fn plan() -> Plan {
        crate::scenario::parse("schedule", Path::new("schedule.yaml"), SCENARIO).unwrap()
    }

    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(crate) fn ack(t: Duration, host: HostId, direction: PacketDirection) -> Event {
        Event {
            t,
            host,
            kind: EventKind::Packet(PacketEvent {
                direction,
                ip_id: t.as_millis() as u16,
                seq: 1,
                ack: 1,
                window: 63,
                ..PacketEvent::test_segment(0x10, 0)
            }),
        }
    }

    /// The end of the client's step `connect` at `t`.
    fn connect_end(t: Duration) -> Event {
        let kind = EventKind::StepEnd {
            step: 0,
            label: "connect".into(),
            outcome: Outcome::Ok,
            detail: None,
            unmatched: Vec::new(),
        };
        Event { t, host: HostId::Client, kind }
    }

    fn names(switches: Vec<(&FaultPlan, bool)>) -> Vec<(String, bool)> {
        switches.into_iter().map(|(f, on)| (f.name.clone(), on)).collect()
    }

    #[test]
    fn timed_faults_switch_on_and_off_at_their_times() {
        let plan = plan();
        let mut schedule = FaultSchedule::new(&plan);
        assert_eq!(schedule.next_due(), Some(ms(2000)));
        assert!(schedule.due(ms(1999)).is_empty());
        assert_eq!(names(schedule.due(ms(2000))), vec![("at-two".to_string(), true)]);
        assert_eq!(schedule.next_due(), Some(ms(3000)));
        assert_eq!(names(schedule.due(ms(3000))), vec![("at-two".to_string(), false)]);
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn a_step_trigger_fires_after_its_delay() {
        let plan = plan();
        let mut schedule = FaultSchedule::new(&plan);
        let end = connect_end(ms(100));
        schedule.observe(&end);
        assert!(schedule.due(ms(599)).iter().all(|(f, _)| f.name != "after-connect"));
        assert_eq!(names(schedule.due(ms(600))), vec![("after-connect".to_string(), true)]);
    }

    #[test]
    fn a_packet_trigger_counts_matching_packets_from_the_sender() {
        let plan = plan();
        let mut schedule = FaultSchedule::new(&plan);
        for t in [10, 20] {
            schedule.observe(&ack(ms(t), HostId::Client, PacketDirection::Out));
            // The receiver's copy of the same packet is not counted twice.
            schedule.observe(&ack(ms(t), HostId::Server, PacketDirection::In));
        }
        let third_ack = |switches: Vec<(&FaultPlan, bool)>| {
            names(switches).into_iter().filter(|(name, _)| name == "third-ack").collect::<Vec<_>>()
        };
        assert!(third_ack(schedule.due(ms(25))).is_empty());
        schedule.observe(&ack(ms(30), HostId::Client, PacketDirection::Out));
        assert_eq!(third_ack(schedule.due(ms(30))), vec![("third-ack".to_string(), true)]);
    }

    #[test]
    fn from_and_until_count_their_packets_each() {
        let plan = plan();
        let mut schedule = FaultSchedule::new(&plan);
        let second_ack_only = |switches: Vec<(&FaultPlan, bool)>| {
            names(switches).into_iter().filter(|(name, _)| name == "second-ack-only").collect::<Vec<_>>()
        };
        schedule.observe(&ack(ms(10), HostId::Client, PacketDirection::Out));
        assert_eq!(second_ack_only(schedule.due(ms(10))), vec![("second-ack-only".to_string(), true)]);
        schedule.observe(&ack(ms(20), HostId::Client, PacketDirection::Out));
        assert_eq!(second_ack_only(schedule.due(ms(20))), vec![("second-ack-only".to_string(), false)]);
    }

    #[test]
    fn a_host_program_switches_what_its_step_triggers_before_it_goes_on() {
        // Found by the issue-12 campaign: the hub switched a step's fault 0.1 to 0.6 ms after the step ended,
        // when the host's next step had already sent its segment. The program's own call switches it now.
        let plan = plan();
        let namespaces = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
        let installed = HostId::ALL
            .iter()
            .map(|host| HostFaults::install(&namespaces[host.index()], *host, &plan.faults, None, None).unwrap())
            .collect();
        let clock = Clock::started();
        let board = Switchboard::new(&plan, installed, None, clock.clone());
        let end = connect_end(clock.now());
        board.observe(&end).unwrap();
        let (_, _, events) = board.finish();
        let switched: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
        assert_eq!(switched, vec![&EventKind::FaultOn { fault: "right-after-connect".into() }]);
        assert!(events[0].t >= end.t, "switched after the step's end, before observe returned");
        assert!(board.observe(&end).is_ok(), "after finish nothing is switched");
    }
}

//! Fuzz target over scenario parsing and validation (`netfault::scenario::parse_bytes`, which is `parse` after
//! the size and UTF-8 checks `load` makes): it must never panic, never hang, and must keep its promises.
//!
//! On error: a non-empty message without control characters about the given file, at a position inside the
//! text (line >= 1, column >= 1, line at most one past the last line, column at most one past the end of its
//! line). On success: a plan whose every number is in the range FORMAT.md allows, whose names are unique and
//! resolved, and whose lists are sorted where plan.rs says so. Both ways: the same input gives the same answer
//! twice, and a plan serializes to JSON.

#![no_main]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netfault::error::ScenarioError;
use netfault::scenario::duration::MAX_DURATION;
use netfault::scenario::parse_bytes;
use netfault::scenario::plan::*;
use netfault::scenario::validate::{allowed_sysctls, MAX_BUFFER, MAX_SAMPLE, MIN_SAMPLE};
use netfault::scenario::variables::Variables;

const NAME: &str = "fuzz";
const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let file = Path::new(FILE);
    let first = parse_bytes(NAME, file, data, &Variables::default());
    let second = parse_bytes(NAME, file, data, &Variables::default());
    assert_eq!(format!("{first:?}"), format!("{second:?}"), "the same input gave two answers");
    let lines = Lines::of(data);
    match first {
        Err(error) => check_error(&error, &lines),
        Ok(plan) => check_plan(&plan, &lines),
    }
}

/// Character counts of the lines of the input, as an editor shows them (split at `\n`).
struct Lines {
    chars: Vec<usize>,
}

impl Lines {
    fn of(data: &[u8]) -> Lines {
        Lines { chars: data.split(|b| *b == b'\n').map(|line| String::from_utf8_lossy(line).chars().count()).collect() }
    }

    fn contains(&self, at: Location) -> bool {
        if at.line == 0 || at.column == 0 {
            return false;
        }
        match self.chars.get(at.line - 1) {
            Some(chars) => at.column <= chars + 1,
            // Just past the last line: where "unexpected end of file" is shown.
            None => at.line == self.chars.len() + 1 && at.column == 1,
        }
    }
}

fn check_error(error: &ScenarioError, lines: &Lines) {
    assert!(!error.message.trim().is_empty(), "empty error message: {error:?}");
    assert!(!error.message.contains(char::is_control), "control character in the message: {error:?}");
    // libyaml's reader errors give a byte offset ("at position 153") instead of a line and column.
    assert!(!error.message.contains(" at position "), "position not turned into line:column: {error:?}");
    assert_eq!(error.file, Path::new(FILE), "error names another file: {error:?}");
    if let Some(at) = error.location {
        assert!(lines.contains(at), "error at {at}, outside the text ({} lines): {error}", lines.chars.len());
    }
    let shown = error.to_string();
    assert!(shown.starts_with(&format!("{FILE}:")), "shown as {shown:?}");
}

fn check_plan(plan: &Plan, lines: &Lines) {
    assert_eq!(plan.name, NAME);
    assert_eq!(plan.file, Path::new(FILE));
    assert!(!plan.description.trim().is_empty(), "empty description");
    let deadline = plan.deadline;
    assert!(!deadline.is_zero() && deadline <= MAX_DURATION, "deadline {deadline:?}");
    check_tolerance(plan.tolerance, deadline);
    assert!((MIN_SAMPLE..=MAX_SAMPLE).contains(&plan.sample_interval), "sample {:?}", plan.sample_interval);
    assert!((68..=65535).contains(&plan.link.mtu), "mtu {}", plan.link.mtu);
    check_hosts(plan);
    for host in HostId::ALL {
        check_program(plan, host, lines);
    }
    check_faults(plan, lines);
    check_expectations(plan, lines);
    if let Err(e) = serde_json::to_string(plan) {
        panic!("plan does not serialize: {e}");
    }
}

/// A step reference points at the step of that name, by index.
fn check_step_ref(plan: &Plan, step: &StepRef) {
    let target = plan.host(step.host).steps.get(step.index);
    assert!(
        target.is_some_and(|target| target.name.as_deref() == Some(step.name.as_str())),
        "reference {step} at index {} points elsewhere",
        step.index
    );
}

fn check_since(plan: &Plan, since: Option<&Since>) {
    if let Some(Since::Step(step)) = since {
        check_step_ref(plan, step);
    }
}

fn check_tolerance(tolerance: Tolerance, deadline: Duration) {
    assert!(
        !tolerance.late.is_zero() && tolerance.late <= deadline && tolerance.early <= deadline,
        "tolerance {tolerance:?} with deadline {deadline:?}"
    );
}

fn within_run(what: &str, time: Duration, deadline: Duration) {
    assert!(time <= deadline, "{what} {time:?} beyond the deadline {deadline:?}");
}

fn check_hosts(plan: &Plan) {
    let network = |address: Ipv4Addr, len: u8| u32::from(address) & (u32::MAX << (32 - u32::from(len)));
    let order: Vec<HostId> = plan.hosts.iter().map(|host| host.id).collect();
    assert!(
        order == [HostId::Client, HostId::Server] || order == [HostId::Client, HostId::Router, HostId::Server],
        "hosts out of the wire's order: {order:?}"
    );
    assert_eq!(plan.router.is_some(), order.len() == 3, "a router plan without a router host or the reverse");
    assert_eq!(plan.links.len(), order.len() - 1, "links do not chain the hosts");
    for host in &plan.hosts {
        assert!((8..=30).contains(&host.prefix_len), "prefix /{}", host.prefix_len);
        let host_bits = u32::from(host.address) & (u32::MAX >> host.prefix_len);
        assert!(host_bits != 0 && host_bits != u32::MAX >> host.prefix_len, "{} not a host address", host.address);
        for pair in host.sysctls.windows(2) {
            assert!(pair[0].name < pair[1].name, "sysctls not sorted or not unique: {pair:?}");
        }
        for sysctl in &host.sysctls {
            assert!(allowed_sysctls().any(|name| name == sysctl.name), "sysctl {} not allowed", sysctl.name);
            assert!(!sysctl.value.trim().is_empty(), "sysctl {} empty", sysctl.name);
            assert!(!sysctl.value.contains(|c: char| c.is_control() && c != '\t'), "sysctl {:?}", sysctl.value);
        }
    }
    for link in &plan.links {
        let [a, b] = &link.ends;
        assert_ne!(a.host, b.host, "a link from {} to itself", a.host);
        assert_ne!(a.address, b.address, "same address twice on a link");
        assert_eq!(network(a.address, a.prefix_len), network(b.address, a.prefix_len), "a link across two subnets");
    }
    for host in &plan.hosts {
        let first = plan.link_ends().map(|(_, end)| end).find(|end| end.host == host.id);
        assert_eq!(first.map(|end| end.address), Some(host.address), "{} reached at an address it lacks", host.id);
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_program(plan: &Plan, host: HostId, lines: &Lines) {
    let deadline = plan.deadline;
    let steps = &plan.host(host).steps;
    let mut sockets: Vec<&str> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.index, i, "step index");
        assert!(lines.contains(step.location), "step at {} outside the text", step.location);
        if let Some(name) = &step.name {
            assert!(is_name(name), "step name {name:?}");
            let first = steps.iter().position(|s| s.name.as_ref() == Some(name));
            assert_eq!(first, Some(i), "step name {name} twice on {host}");
        }
        if let Some(socket) = &step.socket {
            assert!(sockets.contains(&socket.as_str()), "step {i} acts on socket {socket} not named before it");
        }
        match &step.action {
            Action::Socket { name: Some(name), .. } | Action::Accept { name: Some(name) } => {
                assert!(is_name(name) && !sockets.contains(&name.as_str()), "socket name {name:?}");
                sockets.push(name);
            }
            Action::Poll { events, timeout } => {
                assert!(!events.is_empty(), "poll without events");
                within_run("poll timeout", *timeout, deadline);
            }
            Action::Send { bytes, repeat, every, until } => {
                assert!((1..=MAX_BUFFER).contains(bytes), "send of {bytes} bytes");
                match repeat {
                    SendRepeat::Times(times) => assert!(*times >= 1, "send repeated {times} times"),
                    SendRepeat::Forever => assert!(until.is_some(), "send forever without until"),
                }
                if let Some(every) = every {
                    within_run("send every", *every, deadline);
                }
            }
            Action::Recv { max, .. } => assert!((1..=MAX_BUFFER).contains(max), "recv of {max} bytes"),
            Action::Sleep { duration } => {
                assert!(!duration.is_zero(), "sleep 0s");
                within_run("sleep", *duration, deadline);
            }
            Action::Wait { step: target, .. } => {
                assert_ne!(target.host, host, "{host} waits for itself");
                check_step_ref(plan, target);
            }
            Action::Exec(exec) => {
                assert!(!exec.program.is_empty(), "exec without program");
                let strings = exec.args.iter().chain(exec.env.iter().map(|(_, value)| value));
                for text in std::iter::once(&exec.program).chain(strings) {
                    assert!(!text.contains('\0'), "NUL in exec: {exec:?}");
                }
                assert!(!exec.timeout.is_zero(), "exec timeout 0s");
                within_run("exec timeout", exec.timeout, deadline);
                for pair in exec.env.windows(2) {
                    assert!(pair[0].0 < pair[1].0, "env not sorted or not unique: {pair:?}");
                }
            }
            _ => {}
        }
        check_tolerance(step.expect.tolerance, deadline);
        for time in [step.expect.after, step.expect.at].into_iter().flatten() {
            within_run("step expectation", time, deadline);
        }
    }
}

fn check_trigger(plan: &Plan, trigger: &Trigger) {
    let deadline = plan.deadline;
    match trigger {
        Trigger::At(time) => within_run("trigger at", *time, deadline),
        Trigger::Step { step, delay, .. } => {
            check_step_ref(plan, step);
            within_run("trigger delay", *delay, deadline);
        }
        Trigger::Packet { filter, nth, delay, .. } => {
            check_flags(filter.flags);
            assert!(*nth >= 1, "nth {nth}");
            within_run("trigger delay", *delay, deadline);
        }
        Trigger::State { delay, .. } | Trigger::Bytes { delay, .. } => within_run("trigger delay", *delay, deadline),
    }
}

/// A flag value outside its mask never matches: validation refuses it, in faults, expectations and triggers.
fn check_flags(flags: Option<TcpFlagsMatch>) {
    if let Some(flags) = flags {
        assert_eq!(flags.value & !flags.mask, 0, "flag value {flags:?} outside its mask never matches");
    }
}

fn check_faults(plan: &Plan, lines: &Lines) {
    for pair in plan.faults.windows(2) {
        assert!(pair[0].name < pair[1].name, "faults not sorted or not unique: {} {}", pair[0].name, pair[1].name);
    }
    for fault in &plan.faults {
        assert!(
            !fault.name.is_empty()
                && fault.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
            "fault name {:?}",
            fault.name
        );
        assert!(lines.contains(fault.location), "fault at {} outside the text", fault.location);
        let matcher = &fault.matcher;
        for port in [matcher.sport, matcher.dport].into_iter().flatten() {
            assert!(port >= 1, "port 0");
            assert_ne!(matcher.protocol, Some(Protocol::Icmp), "ports on icmp");
        }
        if matcher.tcp_flags.is_some() || matcher.payload.is_some() || fault.action == FaultAction::RejectTcpReset {
            assert_eq!(matcher.protocol, Some(Protocol::Tcp), "TCP-only match or action without protocol tcp");
        }
        check_flags(matcher.tcp_flags);
        check_trigger(plan, &fault.from);
        if let Some(until) = &fault.until {
            check_trigger(plan, until);
            if let (Trigger::At(from), Trigger::At(until)) = (&fault.from, until) {
                assert!(until > from, "until {until:?} not after from {from:?}");
            }
        }
    }
}

fn check_expectations(plan: &Plan, lines: &Lines) {
    let deadline = plan.deadline;
    for packets in &plan.expect.packets {
        assert!(lines.contains(packets.location), "packet expectation at {} outside the text", packets.location);
        check_tolerance(packets.tolerance, deadline);
        check_since(plan, packets.since.as_ref());
        check_flags(packets.filter.flags);
        assert!(packets.count.is_some() || !packets.at.is_empty(), "packet expectation with neither count nor at");
        for pair in packets.at.windows(2) {
            assert!(pair[0] <= pair[1], "packet times out of order: {:?}", packets.at);
        }
        if !packets.at.is_empty() {
            assert_eq!(packets.count, Some(packets.at.len() as u32), "count disagrees with at");
        }
        for time in &packets.at {
            within_run("packet at", *time, deadline);
        }
        if let Some((start, end)) = packets.window {
            assert!(start <= end, "window {start:?}..{end:?}");
            within_run("window end", end, deadline);
        }
    }
    for states in &plan.expect.states {
        assert!(lines.contains(states.location), "state expectation at {} outside the text", states.location);
        check_tolerance(states.tolerance, deadline);
        check_since(plan, states.since.as_ref());
        assert!(!states.sequence.is_empty(), "empty state sequence");
        for step in &states.sequence {
            if let Some(at) = step.at {
                within_run("state at", at, deadline);
            }
        }
    }
    for timers in &plan.expect.timers {
        assert!(lines.contains(timers.location), "timer expectation at {} outside the text", timers.location);
    }
}

//! The verdict: a pure function of the plan's expectations and the run's timeline.
//!
//! A verdict failure means the kernel behaved otherwise than the scenario says; it is not a harness error.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::scenario::plan::{
    CounterExpectation, DurationRange, ExpectedOutcome, HostId, Location, PacketExpectation, PacketFilter, Plan,
    Protocol, QueueExpectation, QueueKind, Since, StateExpectation, StepExpectation, StepPlan, TcpFlagsMatch,
    TcpInfoExpectation, TcpState, TimerExpectation,
};
use crate::timeline::{format_secs, Event, EventKind, Outcome, PacketDirection, PacketEvent, SocketEvent, Timeline};

/// One expectation the run did not meet.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// Where the expectation is written in the scenario file.
    pub location: Location,
    /// What was checked, e.g. `client step read (recv)`.
    pub subject: String,
    pub expected: String,
    pub actual: String,
    /// Scenario time the failure is about, to show the timeline around it.
    #[serde(skip)]
    pub around: Option<Duration>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: expected {}, got {}", self.location.line, self.subject, self.expected, self.actual)
    }
}

/// Every expectation checked, and those that failed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Verdict {
    pub checks: usize,
    pub failures: Vec<Failure>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn check(&mut self, result: Result<(), Failure>) {
        self.checks += 1;
        if let Err(failure) = result {
            self.failures.push(failure);
        }
    }
}

/// The start and end of one step as the timeline recorded them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub host: HostId,
    pub index: usize,
    #[serde(serialize_with = "secs_opt")]
    pub start: Option<Duration>,
    #[serde(serialize_with = "secs_opt")]
    pub end: Option<Duration>,
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
}

impl StepRecord {
    pub fn elapsed(&self) -> Option<Duration> {
        Some(self.end?.saturating_sub(self.start?))
    }
}

/// Finds the start and end events of a host's step.
pub fn step_record(timeline: &Timeline, host: HostId, index: usize) -> StepRecord {
    let mut record = StepRecord { host, index, start: None, end: None, outcome: None, detail: None };
    for event in timeline.events.iter().filter(|e| e.host == host) {
        match &event.kind {
            EventKind::StepStart { step, .. } if *step == index => record.start = Some(event.t),
            EventKind::StepEnd { step, outcome, detail, .. } if *step == index => {
                record.end = Some(event.t);
                record.outcome = Some(outcome.clone());
                record.detail.clone_from(detail);
            }
            _ => {}
        }
    }
    record
}

/// Judges a run: every step expectation, then every whole-run expectation.
pub fn judge(plan: &Plan, timeline: &Timeline) -> Verdict {
    let mut verdict = Verdict::default();
    for host in &plan.hosts {
        for step in &host.steps {
            let record = step_record(timeline, host.id, step.index);
            judge_step(&mut verdict, host.id, step, &record);
        }
    }
    judge_deadline(&mut verdict, plan, timeline);
    for expectation in &plan.expect.packets {
        let anchor = resolve_anchor(plan, timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_packets(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.states {
        let anchor = resolve_anchor(plan, timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_states(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.timers {
        verdict.check(judge_timer(expectation, timeline));
    }
    for expectation in &plan.expect.queues {
        let anchor = resolve_anchor(plan, timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_queue(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.counters {
        verdict.check(judge_counter(expectation, timeline));
    }
    for expectation in &plan.expect.tcp_info {
        verdict.check(judge_tcp_info(expectation, timeline));
    }
    verdict
}

/// The zero of an expectation's times: t0, or the end of its `since` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    /// Scenario time of the zero.
    pub t: Duration,
    /// ` since client.connect (0.039000s)`, or empty for t0.
    pub label: String,
}

impl Anchor {
    pub fn t0() -> Anchor {
        Anchor { t: Duration::ZERO, label: String::new() }
    }
}

/// Finds when the `since` step ended or its packet left; a step that never ended, or a packet never seen,
/// fails the expectation that counts from it.
pub fn resolve_anchor(
    plan: &Plan,
    timeline: &Timeline,
    since: Option<&Since>,
    location: Location,
) -> Result<Anchor, Failure> {
    let (name, t, missing) = match since {
        None => return Ok(Anchor::t0()),
        Some(Since::Step { host, step }) => {
            let name = format!("{host}.{step}");
            let end = plan.step(*host, step).and_then(|step| step_record(timeline, *host, step.index).end);
            (name.clone(), end, (format!("{name} to finish"), "it never finished".to_string()))
        }
        Some(Since::Packet { filter, nth }) => {
            let name = format!("the {} of the {}", ordinal(*nth), describe_filter(filter));
            let seen: Vec<Duration> = sent_packets(timeline, filter).map(|(t, _)| t).collect();
            let t = seen.get(*nth as usize - 1).copied();
            (name.clone(), t, (format!("{name} to be sent"), format!("{} such packets", seen.len())))
        }
    };
    match t {
        Some(t) => Ok(Anchor { t, label: format!(" since {name} ({}s)", format_secs(t)) }),
        None => Err(Failure {
            location,
            subject: format!("times since {name}"),
            expected: missing.0,
            actual: missing.1,
            around: None,
        }),
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, ... `11th`, `21st`.
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn judge_step(verdict: &mut Verdict, host: HostId, step: &StepPlan, record: &StepRecord) {
    let expect = &step.expect;
    let subject = format!("{host} step {}", step.label());
    let failure = |expected: String, actual: String, around: Option<Duration>| Failure {
        location: expect.location,
        subject: subject.clone(),
        expected,
        actual,
        around,
    };
    if let Some(detail) = record.detail.as_deref().filter(|d| d.starts_with(PATTERN_MISSING)) {
        verdict.check(Err(failure("output matching every pattern".into(), detail.to_string(), record.end)));
    }
    let has_expectation = expect.outcome.is_some() || expect.after.is_some() || expect.at.is_some();
    if !has_expectation {
        return;
    }
    let (Some(end), Some(outcome)) = (record.end, record.outcome.as_ref()) else {
        let actual = match record.start {
            Some(start) => format!("still running at the end of the run (started at {}s)", format_secs(start)),
            None => "never started".to_string(),
        };
        verdict.check(Err(failure(describe_expectation(expect), actual, record.start)));
        return;
    };
    if *outcome == Outcome::Unfinished {
        verdict.check(Err(failure(describe_expectation(expect), "unfinished at the deadline".into(), Some(end))));
        return;
    }
    if let Some(expected) = &expect.outcome {
        let result = if outcome_matches(expected, outcome) {
            Ok(())
        } else {
            Err(failure(describe_outcome(expected), outcome.to_string(), Some(end)))
        };
        verdict.check(result);
    }
    if let (Some(after), Some(elapsed)) = (expect.after, record.elapsed()) {
        verdict.check(judge_time("after", after, elapsed, expect, outcome).map_err(|(e, a)| failure(e, a, Some(end))));
    }
    if let Some(at) = expect.at {
        verdict.check(judge_time("at", at, end, expect, outcome).map_err(|(e, a)| failure(e, a, Some(end))));
    }
}

/// A step's end `after` its start or `at` a scenario time: `(expected, actual)` texts when out of tolerance.
fn judge_time(
    word: &str,
    expected: Duration,
    actual: Duration,
    expect: &StepExpectation,
    outcome: &Outcome,
) -> Result<(), (String, String)> {
    if within(actual, expected, expect.tolerance, expect.early_tolerance) {
        return Ok(());
    }
    Err((
        format!(
            "to end {word} {}s {}",
            format_secs(expected),
            describe_tolerance(expect.tolerance, expect.early_tolerance)
        ),
        format!("{outcome} {word} {}s", format_secs(actual)),
    ))
}

/// A run must end by itself: a step the scenario deadline cut (still running then, or ended `unfinished` by
/// it) fails the run, named at its line, even when it expects nothing. A step with an expectation has already
/// failed on it in [`judge_step`].
fn judge_deadline(verdict: &mut Verdict, plan: &Plan, timeline: &Timeline) {
    let deadline_at = timeline.events.iter().find_map(|e| matches!(e.kind, EventKind::Deadline { .. }).then_some(e.t));
    for host in &plan.hosts {
        for step in &host.steps {
            let expect = &step.expect;
            if expect.outcome.is_some() || expect.after.is_some() || expect.at.is_some() {
                continue;
            }
            let record = step_record(timeline, host.id, step.index);
            let Some(start) = record.start else { continue };
            let actual = match (record.end, &record.outcome) {
                // Without a deadline a step can only be left unended by a program that failed in the harness,
                // which the run reports as a harness error.
                (None, _) if deadline_at.is_none() => continue,
                (None, _) => format!("still running at the deadline (started at {}s)", format_secs(start)),
                (Some(end), Some(Outcome::Unfinished)) => match &record.detail {
                    Some(detail) => format!("unfinished at {}s: {detail}", format_secs(end)),
                    None => format!("unfinished at {}s", format_secs(end)),
                },
                _ => continue,
            };
            verdict.check(Err(Failure {
                location: step.location,
                subject: format!("{} step {}", host.id, step.label()),
                expected: format!("to end before the scenario deadline ({}s)", format_secs(plan.deadline)),
                actual,
                around: deadline_at.or(record.end).or(Some(start)),
            }));
        }
    }
}

/// Prefix of a step detail saying that an exec'd program's output lacked a required pattern.
pub const PATTERN_MISSING: &str = "pattern not found";

/// `actual` is at most `late` after `expected` and at most `early` (by default `late`) before it.
fn within(actual: Duration, expected: Duration, late: Duration, early: Option<Duration>) -> bool {
    if actual >= expected {
        actual - expected <= late
    } else {
        expected - actual <= early.unwrap_or(late)
    }
}

/// `± 0.250000s`, or `-0.000000s/+0.500000s` when earliness and lateness differ.
pub fn describe_tolerance(late: Duration, early: Option<Duration>) -> String {
    match early {
        Some(early) if early != late => format!("-{}s/+{}s", format_secs(early), format_secs(late)),
        _ => format!("± {}s", format_secs(late)),
    }
}

fn outcome_matches(expected: &ExpectedOutcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (ExpectedOutcome::Ok, Outcome::Ok) => true,
        (ExpectedOutcome::Bytes(n), Outcome::Bytes(m)) => n == m,
        (ExpectedOutcome::Eof, Outcome::Eof) => true,
        (ExpectedOutcome::Error(errno), Outcome::Error(name)) => errno.name() == *name,
        (ExpectedOutcome::Events(events), Outcome::Events(names)) => {
            let mut expected: Vec<&str> = events.iter().map(|e| e.name()).collect();
            let mut actual: Vec<&str> = names.iter().map(String::as_str).collect();
            expected.sort_unstable();
            actual.sort_unstable();
            expected == actual
        }
        (ExpectedOutcome::Timeout, Outcome::Timeout) => true,
        (ExpectedOutcome::Exit(code), Outcome::Exit { code: Some(actual), .. }) => code == actual,
        _ => false,
    }
}

pub fn describe_outcome(expected: &ExpectedOutcome) -> String {
    match expected {
        ExpectedOutcome::Ok => "ok".into(),
        ExpectedOutcome::Bytes(n) => format!("{n} bytes"),
        ExpectedOutcome::Eof => "EOF".into(),
        ExpectedOutcome::Error(errno) => errno.name(),
        ExpectedOutcome::Events(events) => events.iter().map(|e| e.name()).collect::<Vec<_>>().join("|"),
        ExpectedOutcome::Timeout => "timeout".into(),
        ExpectedOutcome::Exit(code) => format!("exit {code}"),
    }
}

/// The whole expectation of a step in words, e.g. `ETIMEDOUT after 14.000000s ± 0.300000s`.
pub fn describe_expectation(expect: &StepExpectation) -> String {
    let mut parts = Vec::new();
    if let Some(outcome) = &expect.outcome {
        parts.push(describe_outcome(outcome));
    }
    if let Some(after) = expect.after {
        parts.push(format!(
            "after {}s {}",
            format_secs(after),
            describe_tolerance(expect.tolerance, expect.early_tolerance)
        ));
    }
    if let Some(at) = expect.at {
        parts.push(format!("at {}s {}", format_secs(at), describe_tolerance(expect.tolerance, expect.early_tolerance)));
    }
    parts.join(" ")
}

/// Packets sent by a host as its own capture saw them leave (each packet once).
pub fn sent_packets<'a>(
    timeline: &'a Timeline,
    filter: &'a PacketFilter,
) -> impl Iterator<Item = (Duration, &'a PacketEvent)> + 'a {
    timeline.events.iter().filter_map(move |event| match &event.kind {
        EventKind::Packet(packet)
            if packet.direction == PacketDirection::Out
                && filter.from.is_none_or(|from| from == event.host)
                && packet_matches(filter, packet) =>
        {
            Some((event.t, packet))
        }
        _ => None,
    })
}

/// Whether a packet has the filter's protocol (TCP unless it says otherwise), flags, payload length and window;
/// `from` is left to the caller, which knows the capturing host.
pub fn packet_matches(filter: &PacketFilter, packet: &PacketEvent) -> bool {
    let protocol = match filter.protocol {
        None | Some(Protocol::Tcp) => "tcp",
        Some(Protocol::Udp) => "udp",
        Some(Protocol::Icmp) => "icmp",
    };
    packet.protocol == protocol
        && filter.flags.is_none_or(|flags| flags.matches(packet.flags))
        && filter.len.is_none_or(|len| len == packet.len)
        && filter.window.is_none_or(|window| window == packet.window)
}

/// `[F.]` for exactly these flags (as tcpdump prints them); `[F of FR]` for the flags a mask looks at.
fn describe_flags(flags: TcpFlagsMatch) -> String {
    let letters = crate::timeline::format_tcp_flags;
    if flags.mask == 0xff {
        return format!("[{}]", letters(flags.value));
    }
    let value = if flags.value == 0 { "none".to_string() } else { letters(flags.value) };
    format!("[{value} of {}]", letters(flags.mask))
}

pub fn describe_filter(filter: &PacketFilter) -> String {
    let mut parts = vec!["packets".to_string()];
    if let Some(from) = filter.from {
        parts.push(format!("from {from}"));
    }
    if let Some(flags) = filter.flags {
        parts.push(describe_flags(flags));
    }
    if let Some(len) = filter.len {
        parts.push(format!("length {len}"));
    }
    if let Some(window) = filter.window {
        parts.push(format!("win {window}"));
    }
    if let Some(protocol) = filter.protocol.filter(|p| *p != Protocol::Tcp) {
        parts.push(format!(
            "({})",
            match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
            }
        ));
    }
    parts.join(" ")
}

fn judge_packets(expectation: &PacketExpectation, anchor: Anchor, timeline: &Timeline) -> Result<(), Failure> {
    // Times relative to the anchor; packets before it do not count.
    let times: Vec<Duration> = sent_packets(timeline, &expectation.filter)
        .filter_map(|(t, _)| t.checked_sub(anchor.t))
        .filter(|t| expectation.window.is_none_or(|(start, end)| *t >= start && *t <= end))
        .collect();
    let mut subject = describe_filter(&expectation.filter);
    if let Some((start, end)) = expectation.window {
        subject.push_str(&format!(" within [{}s, {}s]", format_secs(start), format_secs(end)));
    }
    subject.push_str(&anchor.label);
    let list = |ts: &[Duration]| {
        if ts.is_empty() {
            "none".to_string()
        } else {
            ts.iter().map(|t| format!("{}s", format_secs(*t))).collect::<Vec<_>>().join(", ")
        }
    };
    let fail = |expected: String, around: Option<Duration>| Failure {
        location: expectation.location,
        subject: subject.clone(),
        expected,
        actual: format!("{} at {}", times.len(), list(&times)),
        around: around.map(|t| t + anchor.t),
    };
    if let Some(count) = expectation.count {
        if times.len() != count as usize {
            return Err(fail(format!("{count}"), times.first().copied()));
        }
    }
    if !expectation.at.is_empty() {
        let expected = format!(
            "at {} {}",
            list(&expectation.at),
            describe_tolerance(expectation.tolerance, expectation.early_tolerance)
        );
        if times.len() != expectation.at.len() {
            return Err(fail(expected, times.first().copied().or(expectation.at.first().copied())));
        }
        for (actual, wanted) in times.iter().zip(&expectation.at) {
            if !within(*actual, *wanted, expectation.tolerance, expectation.early_tolerance) {
                return Err(fail(expected, Some(*wanted)));
            }
        }
    }
    Ok(())
}

/// `value@t` when a time is expected, else just the value, as failure messages show a sequence entry.
fn at_text(value: &dyn fmt::Display, at: Option<Duration>) -> String {
    match at {
        Some(at) => format!("{value}@{}s", format_secs(at)),
        None => value.to_string(),
    }
}

/// Appends `value` at `t` to the history of `socket` (created on first sight) when it differs from the last.
fn record_change<T: PartialEq>(histories: &mut Vec<(String, Vec<(T, Duration)>)>, socket: &str, value: T, t: Duration) {
    let position = match histories.iter().position(|(name, _)| name == socket) {
        Some(position) => position,
        None => {
            histories.push((socket.to_string(), Vec::new()));
            histories.len() - 1
        }
    };
    let history = &mut histories[position].1;
    if history.last().map(|(last, _)| last) != Some(&value) {
        history.push((value, t));
    }
}

/// Each socket's consecutive distinct states with the time it entered them, in first-seen order.
pub fn socket_histories(timeline: &Timeline, host: HostId) -> Vec<(String, Vec<(TcpState, Duration)>)> {
    let mut histories: Vec<(String, Vec<(TcpState, Duration)>)> = Vec::new();
    for event in timeline.events.iter().filter(|e| e.host == host) {
        let EventKind::Socket(socket) = &event.kind else { continue };
        record_change(&mut histories, &socket.socket, socket.state, event.t);
    }
    histories
}

fn socket_selected(socket: &str, events: &[&SocketEvent], port: Option<u16>, listeners: bool) -> bool {
    let is_listener = socket.ends_with("*:*");
    if is_listener && !listeners {
        return false;
    }
    port.is_none_or(|port| events.iter().any(|e| e.local_port == port || e.remote_port == port))
}

fn judge_states(expectation: &StateExpectation, anchor: Anchor, timeline: &Timeline) -> Result<(), Failure> {
    let wants_listener = expectation.sequence.iter().any(|s| s.state == TcpState::Listen);
    let mut seen = Vec::new();
    for (socket, history) in socket_histories(timeline, expectation.host) {
        let events: Vec<&SocketEvent> = socket_events(timeline, expectation.host, &socket).collect();
        if !socket_selected(&socket, &events, expectation.port, wants_listener) {
            continue;
        }
        if history_matches(&history, expectation, anchor.t) {
            return Ok(());
        }
        let states: Vec<String> = history.iter().map(|(state, t)| format!("{state}@{}s", format_secs(*t))).collect();
        seen.push(format!("{socket}: {}", states.join(" ")));
    }
    let mut subject = format!("{} socket states", expectation.host);
    if let Some(port) = expectation.port {
        subject.push_str(&format!(" (port {port})"));
    }
    let steps: Vec<(&dyn fmt::Display, Option<Duration>)> =
        expectation.sequence.iter().map(|step| (&step.state as &dyn fmt::Display, step.at)).collect();
    Err(sequence_failure(
        (expectation.location, subject),
        &steps,
        (expectation.tolerance, expectation.early_tolerance),
        &anchor,
        if seen.is_empty() { "no such socket observed".into() } else { seen.join("; ") },
    ))
}

/// How a sequence expectation (socket states, queue values) failed: `subject` at `location`, the expected steps
/// in order with their times and tolerance (late, early) counted from `anchor`, and what was seen instead.
fn sequence_failure(
    (location, subject): (Location, String),
    steps: &[(&dyn fmt::Display, Option<Duration>)],
    (late, early): (Duration, Option<Duration>),
    anchor: &Anchor,
    actual: String,
) -> Failure {
    let expected: Vec<String> = steps.iter().map(|(value, at)| at_text(*value, *at)).collect();
    Failure {
        location,
        subject,
        expected: format!("{} ({}){}", expected.join(" then "), describe_tolerance(late, early), anchor.label),
        actual,
        around: steps.iter().find_map(|(_, at)| *at).map(|at| at + anchor.t),
    }
}

fn socket_events<'a>(timeline: &'a Timeline, host: HostId, socket: &'a str) -> impl Iterator<Item = &'a SocketEvent> {
    timeline.events.iter().filter_map(move |e: &Event| match &e.kind {
        EventKind::Socket(s) if e.host == host && s.socket == socket => Some(s),
        _ => None,
    })
}

/// The expected states appear in the history in order (others may come between), each at its time (counted
/// from `anchor`) if given.
fn history_matches(history: &[(TcpState, Duration)], expectation: &StateExpectation, anchor: Duration) -> bool {
    let mut remaining = history.iter();
    expectation.sequence.iter().all(|wanted| {
        remaining.any(|(state, t)| {
            *state == wanted.state
                && wanted
                    .at
                    .is_none_or(|at| within(*t, anchor + at, expectation.tolerance, expectation.early_tolerance))
        })
    })
}

fn judge_timer(expectation: &TimerExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let mut best: Option<(u32, Duration)> = None;
    for event in timeline.events.iter().filter(|e| e.host == expectation.host) {
        let EventKind::Socket(socket) = &event.kind else { continue };
        if expectation.port.is_some_and(|port| socket.local_port != port && socket.remote_port != port) {
            continue;
        }
        if socket.timer != Some(expectation.timer) || expectation.state.is_some_and(|s| s != socket.state) {
            continue;
        }
        if best.is_none_or(|(retrans, _)| socket.retrans > retrans) {
            best = Some((socket.retrans, event.t));
        }
        if expectation.retrans.is_none_or(|wanted| socket.retrans >= wanted) {
            return Ok(());
        }
    }
    let mut subject = format!("{} timer {}", expectation.host, expectation.timer);
    if let Some(state) = expectation.state {
        subject.push_str(&format!(" in {state}"));
    }
    Err(Failure {
        location: expectation.location,
        subject,
        expected: match expectation.retrans {
            Some(n) => format!("the timer with its count reaching {n}"),
            None => "the timer to be seen".into(),
        },
        actual: match best {
            Some((retrans, t)) => format!("count at most {retrans} (last rise at {}s)", format_secs(t)),
            None => "never seen".into(),
        },
        around: best.map(|(_, t)| t),
    })
}

/// Each selected socket's consecutive distinct values of one queue with the time it took them, in first-seen
/// order; a socket's history ends when it is gone.
pub fn queue_histories(timeline: &Timeline, expectation: &QueueExpectation) -> Vec<(String, Vec<(u32, Duration)>)> {
    let mut histories: Vec<(String, Vec<(u32, Duration)>)> = Vec::new();
    for event in timeline.events.iter().filter(|e| e.host == expectation.host) {
        let EventKind::Socket(socket) = &event.kind else { continue };
        let is_listener = socket.socket.ends_with("*:*");
        if socket.state == TcpState::Gone
            || is_listener != expectation.listener
            || expectation.port.is_some_and(|port| socket.local_port != port && socket.remote_port != port)
        {
            continue;
        }
        let value = match expectation.queue {
            QueueKind::Recv => socket.recv_q,
            QueueKind::Send => socket.send_q,
        };
        record_change(&mut histories, &socket.socket, value, event.t);
    }
    histories
}

fn judge_queue(expectation: &QueueExpectation, anchor: Anchor, timeline: &Timeline) -> Result<(), Failure> {
    let histories = queue_histories(timeline, expectation);
    let mut subject = format!(
        "{} {}{} {}",
        expectation.host,
        if expectation.listener { "listener " } else { "" },
        match expectation.port {
            Some(port) => format!("(port {port})"),
            None => "(any port)".to_string(),
        },
        expectation.queue.name()
    );
    let describe = |history: &[(u32, Duration)]| {
        history.iter().map(|(v, t)| format!("{v}@{}s", format_secs(*t))).collect::<Vec<_>>().join(" ")
    };
    let seen = || {
        if histories.is_empty() {
            "no such socket observed".to_string()
        } else {
            histories.iter().map(|(socket, h)| format!("{socket}: {}", describe(h))).collect::<Vec<_>>().join("; ")
        }
    };
    if let Some(max) = expectation.max {
        let over = histories.iter().flat_map(|(_, history)| history.iter()).find(|(value, _)| *value > max);
        if let Some((value, t)) = over {
            return Err(Failure {
                location: expectation.location,
                subject,
                expected: format!("never more than {max}"),
                actual: format!("{value} at {}s ({})", format_secs(*t), seen()),
                around: Some(*t),
            });
        }
        if histories.is_empty() {
            return Err(Failure {
                location: expectation.location,
                subject,
                expected: format!("a socket to observe, never more than {max}"),
                actual: seen(),
                around: None,
            });
        }
    }
    if let Some(reaches) = expectation.reaches {
        let peak = histories.iter().flat_map(|(_, history)| history.iter()).max_by_key(|(value, _)| *value);
        if peak.is_none_or(|(value, _)| *value < reaches) {
            return Err(Failure {
                location: expectation.location,
                subject,
                expected: format!("at least {reaches} at some time"),
                actual: match peak {
                    Some((value, t)) => format!("at most {value} (at {}s)", format_secs(*t)),
                    None => seen(),
                },
                around: peak.map(|(_, t)| *t),
            });
        }
    }
    if expectation.sequence.is_empty() {
        return Ok(());
    }
    let matches = |history: &[(u32, Duration)]| {
        let mut remaining = history.iter();
        expectation.sequence.iter().all(|wanted| {
            remaining.any(|(value, t)| {
                *value == wanted.value
                    && wanted
                        .at
                        .is_none_or(|at| within(*t, anchor.t + at, expectation.tolerance, expectation.early_tolerance))
            })
        })
    };
    if histories.iter().any(|(_, history)| matches(history)) {
        return Ok(());
    }
    subject.push_str(" values");
    let steps: Vec<(&dyn fmt::Display, Option<Duration>)> =
        expectation.sequence.iter().map(|step| (&step.value as &dyn fmt::Display, step.at)).collect();
    Err(sequence_failure(
        (expectation.location, subject),
        &steps,
        (expectation.tolerance, expectation.early_tolerance),
        &anchor,
        seen(),
    ))
}

/// `min <= value <= max` for a counter, as `at least 1`, `at most 3` or `1..3`.
fn describe_bounds(min: Option<u64>, max: Option<u64>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min}..{max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any value".into(),
    }
}

fn judge_counter(expectation: &CounterExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let subject = format!("{} counter {}", expectation.host, expectation.counter);
    let expected = describe_bounds(expectation.min, expectation.max);
    let reading = timeline.events.iter().rev().find_map(|event| match &event.kind {
        EventKind::Counters { counters } if event.host == expectation.host => Some((event.t, counters)),
        _ => None,
    });
    let Some((t, counters)) = reading else {
        return Err(Failure {
            location: expectation.location,
            subject,
            expected,
            actual: "no reading of the host's counters (the run ended before they were read)".into(),
            around: None,
        });
    };
    // A counter the kernel knows but never incremented is left out of the reading: it is zero.
    let value = counters.get(&expectation.counter).copied().unwrap_or(0);
    if expectation.min.is_none_or(|min| value >= min) && expectation.max.is_none_or(|max| value <= max) {
        return Ok(());
    }
    Err(Failure { location: expectation.location, subject, expected, actual: value.to_string(), around: Some(t) })
}

fn describe_range(range: &DurationRange) -> String {
    let millis = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1e3);
    match (range.min, range.max) {
        (Some(min), Some(max)) => format!("{}..{}", millis(min), millis(max)),
        (Some(min), None) => format!("at least {}", millis(min)),
        (None, Some(max)) => format!("at most {}", millis(max)),
        (None, None) => "any".into(),
    }
}

fn judge_tcp_info(expectation: &TcpInfoExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let last = timeline.events.iter().rev().find_map(|event| match &event.kind {
        EventKind::Socket(socket)
            if event.host == expectation.host
                && socket.rtt.is_some()
                && expectation.port.is_none_or(|port| socket.local_port == port || socket.remote_port == port) =>
        {
            Some((event.t, socket))
        }
        _ => None,
    });
    let mut expected = Vec::new();
    for (name, range) in [("rtt", &expectation.rtt), ("rto", &expectation.rto)] {
        if let Some(range) = range {
            expected.push(format!("{name} {}", describe_range(range)));
        }
    }
    let expected = expected.join(", ");
    let Some((t, socket)) = last else {
        return Err(Failure {
            location: expectation.location,
            subject: format!("{} tcp_info", expectation.host),
            expected,
            actual: "no tcp_info sample of such a connection".into(),
            around: None,
        });
    };
    let millis = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3));
    let fits = |range: &Option<DurationRange>, value: Option<Duration>| {
        range.is_none_or(|range| value.is_some_and(|value| range.contains(value)))
    };
    if fits(&expectation.rtt, socket.rtt) && fits(&expectation.rto, socket.rto) {
        return Ok(());
    }
    Err(Failure {
        location: expectation.location,
        subject: format!("{} tcp_info of {}", expectation.host, socket.socket),
        expected,
        actual: format!(
            "rtt {}, rto {} in its last sample at {}s",
            millis(socket.rtt),
            millis(socket.rto),
            format_secs(t)
        ),
        around: Some(t),
    })
}

fn secs_opt<S: serde::Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use super::*;
    use crate::timeline::SocketEvent;

    const SCENARIO: &str = r#"
description: verdict test
tolerance: 100ms
server:
  - listen: { port: 9000 }
client:
  - connect: { to: server, port: 9000 }
    expect: { result: ETIMEDOUT, after: 7s }
  - send: { bytes: 11 }
expect:
  packets:
    - { from: client, flags: "S", at: [0s, 1s, 3s] }
    - { from: client, flags: "R.", count: 0 }
  states:
    - { host: client, port: 9000, sequence: [SYN-SENT, { state: GONE, at: 7s }] }
  timers:
    - { host: client, timer: "on", retrans: 2 }
"#;

    fn plan() -> Plan {
        crate::scenario::parse("verdict", Path::new("verdict.yaml"), SCENARIO).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn syn(t: Duration) -> Event {
        Event {
            t,
            host: HostId::Client,
            kind: EventKind::Packet(PacketEvent {
                direction: PacketDirection::Out,
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(10, 0, 0, 2),
                protocol: "tcp".into(),
                ip_id: 0,
                sport: 40000,
                dport: 9000,
                flags: 0x02,
                seq: 0,
                ack: 0,
                window: 64240,
                len: 0,
                options: String::new(),
                fault: None,
            }),
        }
    }

    fn socket(t: Duration, state: TcpState, retrans: u32) -> Event {
        Event {
            t,
            host: HostId::Client,
            kind: EventKind::Socket(SocketEvent {
                socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
                local_port: 40000,
                remote_port: 9000,
                state,
                timer: (state == TcpState::SynSent).then_some(crate::scenario::plan::TimerKind::On),
                expires: None,
                retrans,
                recv_q: 0,
                send_q: 1,
                rtt: None,
                rto: None,
            }),
        }
    }

    fn step(t: Duration, index: usize, end: Option<Outcome>) -> Event {
        let label = format!("#{}", index + 1);
        let kind = match end {
            Some(outcome) => EventKind::StepEnd { step: index, label, outcome, detail: None },
            None => EventKind::StepStart { step: index, label },
        };
        Event { t, host: HostId::Client, kind }
    }

    /// What the kernel does with tcp_syn_retries 2 and exponential backoff.
    fn kernel_run(timeout_at: Duration, outcome: Outcome) -> Timeline {
        Timeline::new(vec![
            step(ms(0), 0, None),
            syn(ms(1)),
            socket(ms(5), TcpState::SynSent, 0),
            syn(ms(1010)),
            socket(ms(1015), TcpState::SynSent, 1),
            syn(ms(3030)),
            socket(ms(3035), TcpState::SynSent, 2),
            socket(timeout_at, TcpState::Gone, 0),
            step(timeout_at, 0, Some(outcome)),
            step(timeout_at, 1, None),
            step(timeout_at, 1, Some(Outcome::Error("EPIPE".into()))),
        ])
    }

    #[test]
    fn the_expected_run_passes_every_check() {
        let verdict = judge(&plan(), &kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into())));
        assert_eq!(verdict.failures, vec![]);
        // outcome + after of the connect, two packet, one state, one timer expectations.
        assert_eq!(verdict.checks, 6);
    }

    #[test]
    fn a_different_errno_fails_with_both_names_and_the_line() {
        let verdict = judge(&plan(), &kernel_run(ms(7040), Outcome::Error("ECONNREFUSED".into())));
        assert_eq!(verdict.failures.len(), 1);
        let failure = &verdict.failures[0];
        assert_eq!((failure.expected.as_str(), failure.actual.as_str()), ("ETIMEDOUT", "ECONNREFUSED"));
        assert_eq!(failure.location.line, 8);
        assert!(failure.to_string().contains("client step #1 connect"), "{failure}");
    }

    #[test]
    fn a_time_outside_the_tolerance_fails_and_one_inside_passes() {
        let late = judge(&plan(), &kernel_run(ms(7101), Outcome::Error("ETIMEDOUT".into())));
        let subjects: Vec<&str> = late.failures.iter().map(|f| f.expected.as_str()).collect();
        assert!(subjects.contains(&"to end after 7.000000s ± 0.100000s"), "{late:?}");
        assert!(late.failures.iter().any(|f| f.subject.contains("socket states")), "GONE at 7.101 is late too");
        let in_time = judge(&plan(), &kernel_run(ms(7099), Outcome::Error("ETIMEDOUT".into())));
        assert!(in_time.passed(), "{:?}", in_time.failures);
    }

    #[test]
    fn a_step_that_never_ended_is_reported_as_still_running() {
        let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
        timeline.events.retain(|e| !matches!(e.kind, EventKind::StepEnd { step: 0, .. }));
        let verdict = judge(&plan(), &timeline);
        assert!(verdict.failures[0].actual.starts_with("still running at the end of the run"), "{verdict:?}");
    }

    #[test]
    fn packet_counts_and_times_are_checked() {
        let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
        timeline.events.retain(|e| e.t != ms(3030));
        let verdict = judge(&plan(), &timeline);
        let packets = verdict.failures.iter().find(|f| f.subject == "packets from client [S]").unwrap();
        assert_eq!(packets.actual, "2 at 0.001000s, 1.010000s");
    }

    #[test]
    fn a_timer_count_that_never_reaches_n_fails() {
        let mut timeline = kernel_run(ms(7040), Outcome::Error("ETIMEDOUT".into()));
        timeline.events.retain(|e| e.t != ms(3035));
        let verdict = judge(&plan(), &timeline);
        let timer = verdict.failures.iter().find(|f| f.subject.starts_with("client timer on")).unwrap();
        assert_eq!(timer.actual, "count at most 1 (last rise at 1.015000s)");
    }

    #[test]
    fn states_must_come_in_order() {
        let history = vec![(TcpState::Gone, ms(1)), (TcpState::SynSent, ms(2))];
        let expectation = &plan().expect.states[0];
        assert!(!history_matches(&history, expectation, Duration::ZERO));
        let history = vec![(TcpState::SynSent, ms(1)), (TcpState::Established, ms(2)), (TcpState::Gone, ms(7000))];
        assert!(history_matches(&history, expectation, Duration::ZERO));
    }
}

#[cfg(test)]
mod queue_and_filter_tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::scenario::plan::QueueStep;
    use crate::timeline::{Event, Outcome, SocketEvent};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn socket(t: u64, label: &str, remote_port: u16, state: TcpState, recv_q: u32, send_q: u32) -> Event {
        Event {
            t: ms(t),
            host: HostId::Server,
            kind: EventKind::Socket(SocketEvent {
                socket: label.to_string(),
                local_port: 9000,
                remote_port,
                state,
                timer: None,
                expires: None,
                retrans: 0,
                recv_q,
                send_q,
                rtt: None,
                rto: None,
            }),
        }
    }

    fn packet(t: u64, host: HostId, protocol: &str, flags: u8, window: u16, len: u32) -> Event {
        Event {
            t: ms(t),
            host,
            kind: EventKind::Packet(PacketEvent {
                direction: PacketDirection::Out,
                src: Ipv4Addr::new(10, 0, 0, 2),
                dst: Ipv4Addr::new(10, 0, 0, 1),
                protocol: protocol.to_string(),
                ip_id: 0,
                sport: 9000,
                dport: 40000,
                flags,
                seq: 0,
                ack: 0,
                window,
                len,
                options: String::new(),
                fault: None,
            }),
        }
    }

    const LISTENER: &str = "10.0.0.2:9000 -> *:*";
    const CONNECTION: &str = "10.0.0.2:9000 -> 10.0.0.1:40000";

    /// A listener whose accept queue goes 0 -> 1 at 8 s, and a connection with 11 unread bytes at 8 s.
    fn accept_queue_timeline() -> Timeline {
        Timeline::new(vec![
            socket(1, LISTENER, 0, TcpState::Listen, 0, 128),
            socket(2, CONNECTION, 40000, TcpState::SynRecv, 0, 0),
            socket(8000, LISTENER, 0, TcpState::Listen, 1, 128),
            socket(8000, CONNECTION, 40000, TcpState::Established, 11, 0),
            socket(10000, CONNECTION, 40000, TcpState::Gone, 0, 0),
        ])
    }

    fn queue(listener: bool, sequence: &[(u32, Option<u64>)], max: Option<u32>) -> QueueExpectation {
        QueueExpectation {
            host: HostId::Server,
            port: Some(9000),
            listener,
            queue: QueueKind::Recv,
            sequence: sequence.iter().map(|(value, at)| QueueStep { value: *value, at: at.map(ms) }).collect(),
            max,
            reaches: None,
            tolerance: ms(100),
            early_tolerance: None,
            since: None,
            location: Location { line: 3, column: 7 },
        }
    }

    fn judge_queue_t0(expectation: &QueueExpectation, timeline: &Timeline) -> Result<(), Failure> {
        judge_queue(expectation, Anchor::t0(), timeline)
    }

    #[test]
    fn listener_recv_q_sequence_with_times() {
        let timeline = accept_queue_timeline();
        assert_eq!(judge_queue_t0(&queue(true, &[(0, None), (1, Some(8000))], Some(1)), &timeline), Ok(()));
        let late = judge_queue_t0(&queue(true, &[(0, None), (1, Some(7000))], None), &timeline).unwrap_err();
        assert_eq!(late.subject, "server listener (port 9000) Recv-Q values");
        assert_eq!(late.expected, "0 then 1@7.000000s (± 0.100000s)");
        assert_eq!(late.actual, "10.0.0.2:9000 -> *:*: 0@0.001000s 1@8.000000s");
        assert_eq!(late.around, Some(ms(7000)));
        let out_of_order = judge_queue_t0(&queue(true, &[(1, None), (0, None)], None), &timeline);
        assert!(out_of_order.is_err(), "values must come in the given order");
    }

    #[test]
    fn listener_and_connection_queues_are_apart() {
        let timeline = accept_queue_timeline();
        assert_eq!(judge_queue_t0(&queue(false, &[(0, None), (11, Some(8000))], Some(11)), &timeline), Ok(()));
        assert!(judge_queue_t0(&queue(false, &[(1, None)], None), &timeline).is_err(), "1 is the listener's value");
        let over = judge_queue_t0(&queue(false, &[], Some(10)), &timeline).unwrap_err();
        assert_eq!(over.expected, "never more than 10");
        assert!(over.actual.starts_with("11 at 8.000000s"), "{}", over.actual);
        assert_eq!(over.around, Some(ms(8000)));
    }

    #[test]
    fn gone_sockets_end_their_history_and_unseen_sockets_fail() {
        let timeline = accept_queue_timeline();
        assert_eq!(judge_queue_t0(&queue(false, &[(11, None)], Some(11)), &timeline), Ok(()), "GONE's 0 is no value");
        let mut elsewhere = queue(true, &[], Some(5));
        elsewhere.port = Some(8080);
        let unseen = judge_queue_t0(&elsewhere, &timeline).unwrap_err();
        assert_eq!(unseen.actual, "no such socket observed");
    }

    #[test]
    fn packet_filter_by_flag_mask_and_its_description() {
        let timeline = Timeline::new(vec![
            packet(1, HostId::Client, "tcp", 0x11, 0, 100),
            packet(2, HostId::Client, "tcp", 0x19, 40, 100),
            packet(3, HostId::Client, "tcp", 0x14, 0, 100),
            packet(4, HostId::Client, "tcp", 0x10, 0, 100),
        ]);
        let count = |flags: TcpFlagsMatch| {
            sent_packets(&timeline, &PacketFilter { flags: Some(flags), ..PacketFilter::default() }).count()
        };
        let fin_without_rst = TcpFlagsMatch { mask: 0x01 | 0x04, value: 0x01 };
        assert_eq!(count(fin_without_rst), 2, "F. and FP. alike");
        assert_eq!(count(TcpFlagsMatch::exactly(0x11)), 1, "F. only");
        assert_eq!(count(TcpFlagsMatch { mask: 0x04, value: 0x04 }), 1, "any RST");
        assert_eq!(count(TcpFlagsMatch { mask: 0x01 | 0x04, value: 0 }), 1, "neither FIN nor RST");
        let described = |flags| describe_filter(&PacketFilter { flags: Some(flags), ..PacketFilter::default() });
        assert_eq!(described(TcpFlagsMatch::exactly(0x11)), "packets [F.]");
        assert_eq!(described(fin_without_rst), "packets [F of FR]");
        assert_eq!(described(TcpFlagsMatch { mask: 0x01 | 0x04, value: 0 }), "packets [none of FR]");
    }

    #[test]
    fn packet_filter_by_window_and_protocol() {
        let timeline = Timeline::new(vec![
            packet(1, HostId::Server, "tcp", 0x10, 0, 0),
            packet(2, HostId::Server, "tcp", 0x10, 576, 0),
            packet(3, HostId::Server, "icmp", 0, 0, 0),
        ]);
        let count = |filter: PacketFilter| sent_packets(&timeline, &filter).count();
        let zero_window =
            PacketFilter { flags: Some(TcpFlagsMatch::exactly(0x10)), window: Some(0), ..PacketFilter::default() };
        assert_eq!(count(zero_window.clone()), 1);
        assert_eq!(count(PacketFilter { window: Some(576), ..PacketFilter::default() }), 1);
        assert_eq!(count(PacketFilter::default()), 2, "no protocol means TCP only");
        let icmp =
            PacketFilter { from: Some(HostId::Server), protocol: Some(Protocol::Icmp), ..PacketFilter::default() };
        assert_eq!(count(icmp.clone()), 1);
        assert_eq!(count(PacketFilter { from: Some(HostId::Client), ..icmp.clone() }), 0);
        assert_eq!(describe_filter(&zero_window), "packets [.] win 0");
        assert_eq!(describe_filter(&icmp), "packets from server (icmp)");
    }

    fn step_event(t: u64, host: HostId, step: usize, end: bool) -> Event {
        let label = format!("#{}", step + 1);
        let kind = if end {
            EventKind::StepEnd { step, label, outcome: Outcome::Ok, detail: None }
        } else {
            EventKind::StepStart { step, label }
        };
        Event { t: ms(t), host, kind }
    }

    #[test]
    fn times_since_a_step_count_from_its_end() {
        let plan = crate::scenario::parse(
            "anchor",
            std::path::Path::new("anchor.yaml"),
            "description: d\nclient:\n  - sleep: 1s\n    name: warmup\n  - connect: { port: 9000 }\n    name: connect\n\
             expect:\n  packets:\n    - { from: server, flags: \".\", at: [5s], since: client.connect, tolerance: 50ms }\n\
             \x20   - { from: server, flags: \".\", within: [0s, 1s], count: 0, since: client.connect }\n\
             \x20 states:\n    - { host: server, port: 9000, sequence: [{ state: SYN-RECV, at: 6s }], since: client.warmup }\n\
             \x20 queues:\n    - { host: server, listener: true, queue: recv, sequence: [{ value: 1, at: 5s }], since: client.connect }\n",
        )
        .unwrap();
        assert_eq!(plan.expect.packets[0].since, Some(Since::Step { host: HostId::Client, step: "connect".into() }));
        let mut events = vec![
            step_event(0, HostId::Client, 0, false),
            step_event(1000, HostId::Client, 0, true),
            step_event(1000, HostId::Client, 1, false),
            step_event(1500, HostId::Client, 1, true),
            // Before the anchor: not counted by the `within: [0s, 1s]` expectation.
            packet(1200, HostId::Server, "tcp", 0x10, 64, 0),
            packet(6520, HostId::Server, "tcp", 0x10, 64, 0),
            socket(7000, LISTENER, 0, TcpState::Listen, 0, 128),
        ];
        events.push(socket(6500, LISTENER, 0, TcpState::Listen, 1, 128));
        events.push(socket(7000, CONNECTION, 40000, TcpState::SynRecv, 0, 0));
        let verdict = judge(&plan, &Timeline::new(events.clone()));
        assert_eq!(verdict.failures, vec![], "5 s after connect is 6.5 s");

        // The same packet 5 s after t0 is not 5 s after the connect.
        events.retain(|e| !matches!(e.kind, EventKind::Packet(_)) || e.t != ms(6520));
        events.push(packet(5000, HostId::Server, "tcp", 0x10, 64, 0));
        let verdict = judge(&plan, &Timeline::new(events));
        assert_eq!(verdict.failures.len(), 1);
        let failure = &verdict.failures[0];
        assert_eq!(failure.subject, "packets from server [.] since client.connect (1.500000s)");
        assert_eq!(failure.actual, "1 at 3.500000s");
        assert_eq!(failure.around, Some(ms(6500)));
    }

    #[test]
    fn an_anchor_step_that_never_ended_fails_its_expectations() {
        let plan = crate::scenario::parse(
            "anchor",
            std::path::Path::new("anchor.yaml"),
            "description: d\nclient:\n  - connect: { port: 9000 }\n    name: connect\n\
             expect:\n  packets:\n    - { from: client, count: 0, since: client.connect }\n",
        )
        .unwrap();
        let verdict = judge(&plan, &Timeline::new(vec![step_event(0, HostId::Client, 0, false)]));
        assert_eq!(verdict.failures.len(), 1);
        assert_eq!(verdict.failures[0].expected, "client.connect to finish");
        assert_eq!(verdict.failures[0].actual, "it never finished");
    }

    #[test]
    fn tolerances_bound_each_side() {
        assert!(within(ms(1300), ms(1000), ms(300), Some(ms(0))));
        assert!(!within(ms(1301), ms(1000), ms(300), Some(ms(0))));
        assert!(!within(ms(999), ms(1000), ms(300), Some(ms(0))), "no earliness allowed");
        assert!(within(ms(990), ms(1000), ms(300), Some(ms(10))));
        assert!(within(ms(700), ms(1000), ms(300), None), "symmetric by default");
        assert!(!within(ms(699), ms(1000), ms(300), None));
        assert_eq!(describe_tolerance(ms(300), None), "± 0.300000s");
        assert_eq!(describe_tolerance(ms(300), Some(ms(300))), "± 0.300000s");
        assert_eq!(describe_tolerance(ms(300), Some(ms(0))), "-0.000000s/+0.300000s");
    }

    #[test]
    fn times_since_a_packet_count_from_its_kernel_timestamp() {
        let plan = crate::scenario::parse(
            "anchor",
            std::path::Path::new("anchor.yaml"),
            "description: d\nexpect:\n  packets:\n\
             \x20   - { from: server, flags: \".\", window: 64, at: [0.2s, 0.6s], since: { packet: { from: server, window: 0 } }, tolerance: 10ms }\n\
             \x20   - { from: server, count: 2, since: { packet: { from: server, window: 0 }, nth: 2 } }\n\
             \x20   - { from: server, count: 0, since: { packet: { from: client } } }\n",
        )
        .unwrap();
        assert_eq!(
            plan.expect.packets[1].since,
            Some(Since::Packet {
                filter: PacketFilter { from: Some(HostId::Server), window: Some(0), ..PacketFilter::default() },
                nth: 2
            })
        );
        let timeline = Timeline::new(vec![
            packet(100, HostId::Server, "tcp", 0x10, 64, 0),
            packet(1000, HostId::Server, "tcp", 0x10, 0, 0),
            packet(1200, HostId::Server, "tcp", 0x10, 64, 0),
            packet(1500, HostId::Server, "tcp", 0x10, 0, 0),
            packet(1600, HostId::Server, "tcp", 0x10, 64, 0),
        ]);
        let verdict = judge(&plan, &timeline);
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        let failure = &verdict.failures[0];
        assert_eq!(failure.subject, "times since the 1st of the packets from client");
        assert_eq!(failure.expected, "the 1st of the packets from client to be sent");
        assert_eq!(failure.actual, "0 such packets");
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(13), "13th");
        assert_eq!(ordinal(23), "23rd");
    }
}

//! The verdict: a pure function of the plan's expectations and the run's timeline.
//!
//! A verdict failure means the kernel behaved otherwise than the scenario says; it is not a harness error.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::scenario::plan::{
    Action, ExpectedOutcome, HostId, Location, PacketExpectation, PacketFilter, Plan, Protocol, QueueExpectation,
    QueueKind, Since, StateExpectation, StepExpectation, StepPlan, TcpFlagsMatch, TcpState, TimerExpectation,
};
use crate::timeline::{format_secs, EventKind, Outcome, PacketDirection, PacketEvent, SocketEvent, Timeline};

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

/// Every step's record, indexed by host and step, found in one pass over the timeline.
#[derive(Debug, Clone)]
pub struct StepRecords {
    /// By `HostId::index()`, then by step index.
    by_host: [Vec<StepRecord>; 2],
}

impl StepRecords {
    pub fn of(plan: &Plan, timeline: &Timeline) -> StepRecords {
        let mut by_host = HostId::ALL.map(|host| {
            (0..plan.host(host).steps.len())
                .map(|index| StepRecord { host, index, start: None, end: None, outcome: None, detail: None })
                .collect::<Vec<_>>()
        });
        for event in &timeline.events {
            let records = &mut by_host[event.host.index()];
            match &event.kind {
                EventKind::StepStart { step, .. } => {
                    if let Some(record) = records.get_mut(*step) {
                        record.start = Some(event.t);
                    }
                }
                EventKind::StepEnd { step, outcome, detail, .. } => {
                    if let Some(record) = records.get_mut(*step) {
                        record.end = Some(event.t);
                        record.outcome = Some(outcome.clone());
                        record.detail.clone_from(detail);
                    }
                }
                _ => {}
            }
        }
        StepRecords { by_host }
    }

    /// The record of `host`'s step `index` (an empty one for a step the plan does not have).
    pub fn get(&self, host: HostId, index: usize) -> StepRecord {
        self.by_host[host.index()].get(index).cloned().unwrap_or(StepRecord {
            host,
            index,
            start: None,
            end: None,
            outcome: None,
            detail: None,
        })
    }

    fn of_step(&self, host: HostId, index: usize) -> Option<&StepRecord> {
        self.by_host[host.index()].get(index)
    }
}

/// When the run was cut at its deadline (scenario time), if it was.
pub fn deadline_of(timeline: &Timeline) -> Option<Duration> {
    timeline.events.iter().find_map(|e| matches!(e.kind, EventKind::Deadline { .. }).then_some(e.t))
}

/// Whether a step was still running when the run reached its `deadline`: it started and had not ended by then
/// (it never ended, the deadline cut it `unfinished`, or it ended only afterwards, as when the run stopped the
/// peer program it was blocked on).
pub fn ran_into_deadline(record: &StepRecord, deadline: Option<Duration>) -> bool {
    let Some(deadline) = deadline else { return false };
    record.start.is_some()
        && match (record.end, &record.outcome) {
            (None, _) | (_, Some(Outcome::Unfinished)) => true,
            (Some(end), _) => end >= deadline,
        }
}

/// Judges a run: every step expectation, then every whole-run expectation. Each check reads the timeline
/// sorted once into steps, sent packets and socket events, so a run of tens of thousands of steps is judged in
/// time linear in its events.
pub fn judge(plan: &Plan, timeline: &Timeline) -> Verdict {
    let mut verdict = Verdict::default();
    let facts = Facts::of(plan, timeline);
    for host in &plan.hosts {
        for step in &host.steps {
            let record = facts.steps.of_step(host.id, step.index);
            if let Some(record) = record {
                judge_step(&mut verdict, host.id, step, record, facts.deadline, plan.deadline);
            }
        }
    }
    for expectation in &plan.expect.packets {
        let anchor = resolve_anchor(plan, &facts, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_packets(expectation, anchor, &facts.sent)));
    }
    for expectation in &plan.expect.states {
        let anchor = resolve_anchor(plan, &facts, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_states(expectation, anchor, &facts)));
    }
    for expectation in &plan.expect.timers {
        verdict.check(judge_timer(expectation, &facts.sockets[expectation.host.index()]));
    }
    for expectation in &plan.expect.queues {
        let anchor = resolve_anchor(plan, &facts, expectation.since.as_ref(), expectation.location);
        verdict.check(
            anchor.and_then(|anchor| judge_queue(expectation, anchor, &facts.sockets[expectation.host.index()])),
        );
    }
    verdict
}

/// A packet one host sent, as its own capture saw it leave: time and sender.
type Sent<'a> = (Duration, HostId, &'a PacketEvent);

/// The timeline sorted into what the checks read, in one pass.
struct Facts<'a> {
    steps: StepRecords,
    deadline: Option<Duration>,
    /// Every packet as its sender's capture saw it leave, in time order.
    sent: Vec<Sent<'a>>,
    /// Each host's socket events (by `HostId::index()`), in time order.
    sockets: [Vec<(Duration, &'a SocketEvent)>; 2],
    /// Each host's socket state histories (by `HostId::index()`).
    histories: [Vec<SocketHistory>; 2],
}

impl<'a> Facts<'a> {
    fn of(plan: &Plan, timeline: &'a Timeline) -> Facts<'a> {
        let mut sent = Vec::new();
        let mut sockets: [Vec<(Duration, &SocketEvent)>; 2] = [Vec::new(), Vec::new()];
        for event in &timeline.events {
            match &event.kind {
                EventKind::Packet(packet) if packet.direction == PacketDirection::Out => {
                    sent.push((event.t, event.host, packet));
                }
                EventKind::Socket(socket) => sockets[event.host.index()].push((event.t, socket)),
                _ => {}
            }
        }
        let histories = HostId::ALL.map(|host| socket_histories(&sockets[host.index()]));
        Facts { steps: StepRecords::of(plan, timeline), deadline: deadline_of(timeline), sent, sockets, histories }
    }
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
fn resolve_anchor(
    plan: &Plan,
    facts: &Facts<'_>,
    since: Option<&Since>,
    location: Location,
) -> Result<Anchor, Failure> {
    let (name, t, missing) = match since {
        None => return Ok(Anchor::t0()),
        Some(Since::Step { host, step }) => {
            let name = format!("{host}.{step}");
            let end = plan.step(*host, step).and_then(|step| facts.steps.of_step(*host, step.index)?.end);
            (name.clone(), end, (format!("{name} to finish"), "it never finished".to_string()))
        }
        Some(Since::Packet { filter, nth }) => {
            let name = format!("the {} of the {}", ordinal(*nth), describe_filter(filter));
            let seen: Vec<Duration> = sent_packets(&facts.sent, filter).map(|(t, _)| t).collect();
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

/// A step's expectation, and the deadline: a step still running when the run reached its deadline fails the
/// run, named at its line, with or without an expectation, whatever it ended with afterwards.
fn judge_step(
    verdict: &mut Verdict,
    host: HostId,
    step: &StepPlan,
    record: &StepRecord,
    deadline: Option<Duration>,
    scenario_deadline: Duration,
) {
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
    if ran_into_deadline(record, deadline) {
        let expected = if has_expectation {
            describe_expectation(expect)
        } else {
            format!("to end before the scenario deadline ({}s)", format_secs(scenario_deadline))
        };
        let actual = cut_by_deadline(record, has_expectation);
        verdict.check(Err(failure(expected, actual, deadline.or(record.end).or(record.start))));
        return;
    }
    // A program that cannot start (missing, not executable, a folder) is no test of the kernel: the step fails
    // unless the scenario expects exactly that errno.
    if let (Action::Exec(_), Some(Outcome::Error(errno))) = (&step.action, &record.outcome) {
        if !matches!(expect.outcome, Some(ExpectedOutcome::Error(_))) {
            let detail = record.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            verdict.check(Err(failure("the program to start".into(), format!("{errno}{detail}"), record.end)));
            return;
        }
    }
    if !has_expectation {
        return;
    }
    let (Some(end), Some(outcome)) = (record.end, record.outcome.as_ref()) else {
        // Without a deadline a step is left unended only by a program that failed in the harness, which the run
        // reports as a harness error.
        let actual = match record.start {
            Some(start) => format!("still running at the end of the run (started at {}s)", format_secs(start)),
            None => "never started".to_string(),
        };
        verdict.check(Err(failure(describe_expectation(expect), actual, record.start)));
        return;
    };
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

/// What a step the deadline cut did, in words: still blocked, cut by its own bounded wait, or ended only after
/// the deadline (when the run killed the programs it was blocked on).
fn cut_by_deadline(record: &StepRecord, has_expectation: bool) -> String {
    let started = record.start.map(format_secs).unwrap_or_default();
    match (record.end, &record.outcome) {
        (Some(end), Some(Outcome::Unfinished)) => match (&record.detail, has_expectation) {
            (_, true) => "unfinished at the deadline".to_string(),
            (Some(detail), false) => format!("unfinished at {}s: {detail}", format_secs(end)),
            (None, false) => format!("unfinished at {}s", format_secs(end)),
        },
        (Some(end), Some(outcome)) => format!(
            "still running at the deadline (started at {started}s; it ended only after it, {outcome} at {}s, when \
             the run stopped)",
            format_secs(end)
        ),
        _ => format!("still running at the deadline (started at {started}s)"),
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

/// Packets sent by a host as its own capture saw them leave (each packet once) that match `filter`.
fn sent_packets<'a>(
    sent: &'a [Sent<'a>],
    filter: &'a PacketFilter,
) -> impl Iterator<Item = (Duration, &'a PacketEvent)> + 'a {
    sent.iter()
        .filter(move |(_, host, packet)| filter.from.is_none_or(|from| from == *host) && packet_matches(filter, packet))
        .map(|(t, _, packet)| (*t, *packet))
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

fn judge_packets(expectation: &PacketExpectation, anchor: Anchor, sent: &[Sent<'_>]) -> Result<(), Failure> {
    // Times relative to the anchor; packets before it do not count.
    let times: Vec<Duration> = sent_packets(sent, &expectation.filter)
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

/// Consecutive distinct values of something per socket, in first-seen order: one entry per socket label.
struct Histories<'a, T> {
    entries: Vec<(&'a SocketEvent, Vec<(T, Duration)>)>,
    position: HashMap<&'a str, usize>,
}

impl<'a, T: PartialEq> Histories<'a, T> {
    fn new() -> Histories<'a, T> {
        Histories { entries: Vec::new(), position: HashMap::new() }
    }

    /// Appends `value` at `t` to the history of `socket` (created on first sight) when it differs from the last.
    fn record(&mut self, socket: &'a SocketEvent, value: T, t: Duration) {
        let entries = &mut self.entries;
        let position = *self.position.entry(socket.socket.as_str()).or_insert_with(|| {
            entries.push((socket, Vec::new()));
            entries.len() - 1
        });
        let history = &mut self.entries[position].1;
        if history.last().map(|(last, _)| last) != Some(&value) {
            history.push((value, t));
        }
    }
}

/// One socket's consecutive distinct states with the time it entered them, and its ports.
struct SocketHistory {
    socket: String,
    local_port: u16,
    remote_port: u16,
    states: Vec<(TcpState, Duration)>,
}

/// Each socket's consecutive distinct states, in first-seen order.
fn socket_histories(events: &[(Duration, &SocketEvent)]) -> Vec<SocketHistory> {
    let mut histories = Histories::new();
    for (t, socket) in events {
        histories.record(socket, socket.state, *t);
    }
    histories
        .entries
        .into_iter()
        .map(|(first, states)| SocketHistory {
            socket: first.socket.clone(),
            local_port: first.local_port,
            remote_port: first.remote_port,
            states,
        })
        .collect()
}

fn judge_states(expectation: &StateExpectation, anchor: Anchor, facts: &Facts<'_>) -> Result<(), Failure> {
    let wants_listener = expectation.sequence.iter().any(|s| s.state == TcpState::Listen);
    let mut seen = Vec::new();
    for history in &facts.histories[expectation.host.index()] {
        let is_listener = history.socket.ends_with("*:*");
        if (is_listener && !wants_listener)
            || expectation.port.is_some_and(|port| history.local_port != port && history.remote_port != port)
        {
            continue;
        }
        if history_matches(&history.states, expectation, anchor.t) {
            return Ok(());
        }
        let states: Vec<String> =
            history.states.iter().map(|(state, t)| format!("{state}@{}s", format_secs(*t))).collect();
        seen.push(format!("{}: {}", history.socket, states.join(" ")));
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

fn judge_timer(expectation: &TimerExpectation, events: &[(Duration, &SocketEvent)]) -> Result<(), Failure> {
    let mut best: Option<(u32, Duration)> = None;
    for (t, socket) in events {
        if expectation.port.is_some_and(|port| socket.local_port != port && socket.remote_port != port) {
            continue;
        }
        if socket.timer != Some(expectation.timer) || expectation.state.is_some_and(|s| s != socket.state) {
            continue;
        }
        if best.is_none_or(|(retrans, _)| socket.retrans > retrans) {
            best = Some((socket.retrans, *t));
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
fn queue_histories(
    events: &[(Duration, &SocketEvent)],
    expectation: &QueueExpectation,
) -> Vec<(String, Vec<(u32, Duration)>)> {
    let mut histories = Histories::new();
    for (t, socket) in events {
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
        histories.record(socket, value, *t);
    }
    histories.entries.into_iter().map(|(first, values)| (first.socket.clone(), values)).collect()
}

fn judge_queue(
    expectation: &QueueExpectation,
    anchor: Anchor,
    events: &[(Duration, &SocketEvent)],
) -> Result<(), Failure> {
    let histories = queue_histories(events, expectation);
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
    use crate::scenario::plan::Errno;
    use crate::timeline::{Event, SocketEvent};

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

    fn deadline(t: Duration) -> Event {
        Event { t, host: HostId::Client, kind: EventKind::Deadline { step: None } }
    }

    #[test]
    fn a_step_that_ends_only_after_the_deadline_fails_with_or_without_an_expectation() {
        // Found by the issue-12 campaign: a read blocked at the deadline ended with ECONNRESET or EOF when the run
        // killed the peer's program, and passed (only "recorded", or meeting an `eof` expectation).
        let plan = crate::scenario::parse(
            "deadline",
            Path::new("deadline.yaml"),
            "description: d\ntimeout: 2s\nclient:\n  - recv: { max: 10 }\n    name: blocked\n  - recv: { max: 10 }\n\
             \x20   expect: eof\n  - close: {}\n",
        )
        .unwrap();
        let timeline = Timeline::new(vec![
            step(ms(0), 0, None),
            deadline(ms(2000)),
            step(ms(2003), 0, Some(Outcome::Error("ECONNRESET".into()))),
        ]);
        let verdict = judge(&plan, &timeline);
        assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
        assert_eq!(verdict.failures[1].actual, "never started", "the expectation of the step the deadline left out");
        let failure = &verdict.failures[0];
        assert_eq!(failure.location.line, 4, "named at the step");
        assert_eq!(failure.expected, "to end before the scenario deadline (2.000000s)");
        assert_eq!(
            failure.actual,
            "still running at the deadline (started at 0.000000s; it ended only after it, ECONNRESET at 2.003000s, \
             when the run stopped)"
        );

        let timeline = Timeline::new(vec![
            step(ms(0), 0, None),
            step(ms(5), 0, Some(Outcome::Bytes(10))),
            step(ms(5), 1, None),
            deadline(ms(2000)),
            step(ms(2000), 1, Some(Outcome::Eof)),
        ]);
        let verdict = judge(&plan, &timeline);
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert_eq!(verdict.failures[0].location.line, 7, "named at its expectation");
        assert_eq!(verdict.failures[0].expected, "EOF");
        assert!(verdict.failures[0].actual.starts_with("still running at the deadline"), "{:?}", verdict.failures);

        // Ended just before the deadline: judged as usual; never started: nothing to say.
        let timeline = Timeline::new(vec![
            step(ms(0), 0, None),
            step(ms(5), 0, Some(Outcome::Bytes(10))),
            step(ms(5), 1, None),
            step(ms(1999), 1, Some(Outcome::Eof)),
            deadline(ms(2000)),
        ]);
        assert!(judge(&plan, &timeline).passed());
    }

    #[test]
    fn an_exec_whose_program_cannot_start_fails_unless_that_errno_is_expected() {
        // Found by the issue-12 campaign: a missing program, a relative path or a folder passed as "recorded".
        let plan = crate::scenario::parse(
            "exec",
            Path::new("exec.yaml"),
            "description: d\nclient:\n  - exec: { program: /nonexistent }\n  - exec: { program: /tmp }\n\
             \x20   expect: { after: 0s }\n  - exec: { program: /nonexistent }\n    expect: ENOENT\n\
             \x20 - exec: { program: /usr/bin/true }\n",
        )
        .unwrap();
        let cannot = |errno: &str, program: &str| {
            Some(Outcome::Error(errno.into())).map(|outcome| (outcome, format!("cannot run {program}: ...")))
        };
        let mut events = Vec::new();
        for (index, result) in [
            cannot("ENOENT", "/nonexistent"),
            cannot("EACCES", "/tmp"),
            cannot("ENOENT", "/nonexistent"),
            Some((Outcome::Exit { code: Some(0), signal: None }, String::new())),
        ]
        .into_iter()
        .enumerate()
        {
            let (outcome, detail) = result.unwrap();
            events.push(step(ms(index as u64), index, None));
            let label = format!("#{}", index + 1);
            let detail = (!detail.is_empty()).then_some(detail);
            events.push(Event {
                t: ms(index as u64),
                host: HostId::Client,
                kind: EventKind::StepEnd { step: index, label, outcome, detail },
            });
        }
        let verdict = judge(&plan, &Timeline::new(events));
        let failed: Vec<(usize, &str, &str)> =
            verdict.failures.iter().map(|f| (f.location.line, f.expected.as_str(), f.actual.as_str())).collect();
        assert_eq!(
            failed,
            vec![
                (3, "the program to start", "ENOENT (cannot run /nonexistent: ...)"),
                (5, "the program to start", "EACCES (cannot run /tmp: ...)"),
            ]
        );
        assert_eq!(Errno(libc::E2BIG).name(), "E2BIG", "found by the issue-12 campaign: it printed as errno 7");
        assert_eq!(Errno::parse("EWOULDBLOCK"), Some(Errno(libc::EAGAIN)));
        assert_eq!(Errno(libc::EWOULDBLOCK).name(), "EAGAIN");
    }

    #[test]
    fn fifty_thousand_steps_are_judged_in_linear_time() {
        // Found by the issue-12 campaign: each step searched the whole timeline, 15 s for 30000 steps (release
        // build), which ran the verdict past the child's grace. Here every step fails (each ran into the
        // deadline), the worst case.
        const STEPS: usize = 50_000;
        let program: String = (0..STEPS).map(|_| "  - close: {}\n").collect();
        let plan =
            crate::scenario::parse("many", Path::new("many.yaml"), &format!("description: d\nclient:\n{program}"))
                .unwrap();
        let mut events = Vec::with_capacity(2 * STEPS + 1);
        for index in 0..STEPS {
            events.push(step(ms(index as u64), index, None));
            events.push(step(ms(60_000), index, Some(Outcome::Error("EBADF".into()))));
        }
        events.push(deadline(ms(59_000)));
        let timeline = Timeline::new(events);
        let started = thread_cpu_time();
        let verdict = judge(&plan, &timeline);
        let spent = thread_cpu_time() - started;
        assert_eq!(verdict.failures.len(), STEPS);
        // Linear: about 0.3 s of CPU unoptimized; the quadratic search took minutes.
        assert!(spent < Duration::from_secs(10), "{spent:?}");
    }

    /// CPU time of the calling thread: unlike wall time, not stretched by other work on the machine.
    fn thread_cpu_time() -> Duration {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec into the valid one given.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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
            tolerance: ms(100),
            early_tolerance: None,
            since: None,
            location: Location { line: 3, column: 7 },
        }
    }

    fn judge_queue_t0(expectation: &QueueExpectation, timeline: &Timeline) -> Result<(), Failure> {
        let events: Vec<(Duration, &SocketEvent)> = timeline
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Socket(socket) if e.host == expectation.host => Some((e.t, socket)),
                _ => None,
            })
            .collect();
        judge_queue(expectation, Anchor::t0(), &events)
    }

    /// The packets of the timeline as their senders' captures saw them leave.
    fn sent_of(timeline: &Timeline) -> Vec<Sent<'_>> {
        timeline
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Packet(p) if p.direction == PacketDirection::Out => Some((e.t, e.host, p)),
                _ => None,
            })
            .collect()
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
        let sent = sent_of(&timeline);
        let count = |flags: TcpFlagsMatch| {
            sent_packets(&sent, &PacketFilter { flags: Some(flags), ..PacketFilter::default() }).count()
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
        let sent = sent_of(&timeline);
        let count = |filter: PacketFilter| sent_packets(&sent, &filter).count();
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

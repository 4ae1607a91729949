//! The verdict: a pure function of the plan's expectations and the run's timeline.
//!
//! A verdict failure means the kernel behaved otherwise than the scenario says; it is not a harness error.

mod describe;
mod kernel;

use describe::{at_text, ordinal};
pub use describe::{describe_errors, describe_expectation, describe_filter, describe_outcome};

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::scenario::plan::{
    Action, ErrorExpectation, ExpectedOutcome, HostId, Location, PacketExpectation, Plan, QueueExpectation, Since,
    StateExpectation, StepExpectation, StepPlan, TcpState, TimerExpectation, Tolerance,
};
use crate::timeline::query::{
    deadline_of, errno_events, queue_histories, ran_into_deadline, sent_by_all, sent_packets, socket_events_by_host,
    socket_histories, transitions_by_host, SentPacket, SocketEvents, SocketHistory, StepRecord, StepRecords,
    UntracedState,
};
use crate::timeline::{format_secs, Outcome, SocketEvent, Timeline};

/// One expectation the run did not meet.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
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
    /// States of traced sockets that only their samples showed (the tracer recorded no transition into them),
    /// judged at the samples' times.
    pub untraced: Vec<UntracedState>,
    /// Each step's own judgement, in plan order (hosts in order, steps in order).
    pub steps: Vec<StepVerdict>,
    /// The hosts with a failed check that read their socket samples (states, timers, queues), in the order
    /// failed: a late sample there may be the machine's load rather than the kernel (see
    /// `engine::blame_late_observers`).
    #[serde(skip)]
    pub sampled_failures: Vec<HostId>,
}

/// How one step fared.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StepVerdict {
    pub host: HostId,
    pub index: usize,
    pub judgement: StepJudgement,
}

/// A step's verdict.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepJudgement {
    /// Nothing was expected of it; its outcome is on record.
    Recorded,
    Pass,
    Fail,
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

    /// [`Verdict::check`] of a check that read `host`'s socket samples.
    fn check_sampled(&mut self, host: HostId, result: Result<(), Failure>) {
        if result.is_err() && !self.sampled_failures.contains(&host) {
            self.sampled_failures.push(host);
        }
        self.check(result);
    }
}

/// Judges a run: every step expectation, then every whole-run expectation. Each check reads the timeline
/// sorted once into steps, sent packets and socket events, so a run of tens of thousands of steps is judged in
/// time linear in its events.
pub fn judge(plan: &Plan, timeline: &Timeline) -> Verdict {
    let mut verdict = Verdict::default();
    let facts = Facts::of(plan, timeline);
    verdict.untraced = facts.histories.iter().flatten().flat_map(|history| history.untraced.iter().cloned()).collect();
    for host in &plan.hosts {
        for step in &host.steps {
            let Some(record) = facts.steps.get(host.id, step.index) else { continue };
            let failures_before = verdict.failures.len();
            judge_step(&mut verdict, &facts, host.id, step, record, plan.deadline);
            let judgement = match (step.expect.is_set(), verdict.failures.len() > failures_before) {
                (false, false) => StepJudgement::Recorded,
                (_, true) => StepJudgement::Fail,
                (true, false) => StepJudgement::Pass,
            };
            verdict.steps.push(StepVerdict { host: host.id, index: step.index, judgement });
        }
    }
    for expectation in &plan.expect.packets {
        let anchor = resolve_anchor(&facts, expectation.since.as_ref(), expectation.location);
        let failed = anchor.and_then(|anchor| judge_packets(expectation, anchor, &facts.sent));
        verdict.check(failed.map_err(|mut failure| {
            if expectation.filter.dropped && !facts.traced {
                failure.actual.push_str(
                    " (packets dropped before they left are seen by the transition tracer only, which this run did \
                     not have; timeline.txt says why)",
                );
            }
            failure
        }));
    }
    for expectation in &plan.expect.states {
        let anchor = resolve_anchor(&facts, expectation.since.as_ref(), expectation.location);
        let histories = &facts.histories[expectation.host.index()];
        let failed = anchor.and_then(|anchor| judge_states(expectation, anchor, histories));
        verdict.check_sampled(
            expectation.host,
            failed.map_err(|mut failure| {
                if !facts.traced {
                    failure.actual.push_str(
                    " (states sampled only: the run recorded none of the kernel's transitions; timeline.txt says why)",
                );
                }
                failure
            }),
        );
    }
    for expectation in &plan.expect.timers {
        verdict.check_sampled(expectation.host, judge_timer(expectation, &facts.sockets[expectation.host.index()]));
    }
    for expectation in &plan.expect.queues {
        let anchor = resolve_anchor(&facts, expectation.since.as_ref(), expectation.location);
        let events = &facts.sockets[expectation.host.index()];
        verdict.check_sampled(expectation.host, anchor.and_then(|anchor| judge_queue(expectation, anchor, events)));
    }
    for expectation in &plan.expect.counters {
        verdict.check(kernel::judge_counter(expectation, timeline));
    }
    for expectation in &plan.expect.tcp_info {
        verdict.check(kernel::judge_tcp_info(expectation, timeline));
    }
    for expectation in &plan.expect.errors {
        let anchor = resolve_anchor(&facts, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_errors(expectation, anchor, timeline)));
    }
    verdict
}

/// The timeline sorted into what the checks read, each part in one pass.
struct Facts<'a> {
    steps: StepRecords,
    deadline: Option<Duration>,
    sent: Vec<SentPacket<'a>>,
    /// By `HostId::index()`.
    sockets: [SocketEvents<'a>; 3],
    /// By `HostId::index()`.
    histories: [Vec<SocketHistory>; 3],
    /// Whether the kernel's transitions were recorded (else states come from samples only).
    traced: bool,
}

impl<'a> Facts<'a> {
    fn of(plan: &Plan, timeline: &'a Timeline) -> Facts<'a> {
        let sockets = socket_events_by_host(timeline);
        let transitions = transitions_by_host(timeline);
        let histories =
            HostId::EVERY.map(|host| socket_histories(host, &sockets[host.index()], &transitions[host.index()]));
        let traced = transitions.iter().any(|host| !host.is_empty());
        Facts {
            steps: StepRecords::of(plan, timeline),
            deadline: deadline_of(timeline),
            sent: sent_by_all(timeline),
            sockets,
            histories,
            traced,
        }
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
fn resolve_anchor(facts: &Facts<'_>, since: Option<&Since>, location: Location) -> Result<Anchor, Failure> {
    let (name, t, missing) = match since {
        None => return Ok(Anchor::t0()),
        Some(Since::Step(step)) => {
            let name = step.to_string();
            let end = facts.steps.get(step.host, step.index).and_then(|record| record.end);
            (name.clone(), end, (format!("{name} to finish"), "it never finished".to_string()))
        }
        Some(Since::Started(step)) => {
            let name = format!("the start of {step}");
            let start = facts.steps.get(step.host, step.index).and_then(|record| record.start);
            (name, start, (format!("{step} to start"), "it never started".to_string()))
        }
        Some(Since::Packet { filter, nth }) => {
            let name = format!("the {} of the {}", ordinal(*nth), describe_filter(filter));
            let seen: Vec<Duration> = sent_packets(&facts.sent, filter).map(|(t, _)| t).collect();
            let t = seen.get(*nth as usize - 1).copied();
            (name.clone(), t, (format!("{name} to be sent"), format!("{} such packets", seen.len())))
        }
        Some(Since::NextRetransmission { filter }) => {
            let seen: Vec<Duration> = sent_packets(&facts.sent, filter).map(|(t, _)| t).collect();
            let name = format!("the next retransmission of the {}", describe_filter(filter));
            let t = match seen.as_slice() {
                [.., before, last] => Some(*last + 2 * (*last - *before)),
                _ => None,
            };
            let missing = (
                format!("at least 2 {} (the timer's last interval)", describe_filter(filter)),
                format!("{} such packets", seen.len()),
            );
            (name, t, missing)
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

/// A step's expectation, and the deadline: a step still running when the run reached its deadline fails the
/// run, named at its line, with or without an expectation, whatever it ended with afterwards.
fn judge_step(
    verdict: &mut Verdict,
    facts: &Facts<'_>,
    host: HostId,
    step: &StepPlan,
    record: &StepRecord,
    scenario_deadline: Duration,
) {
    let deadline = facts.deadline;
    let expect = &step.expect;
    let subject = format!("{host} step {}", step.label());
    let failure = |expected: String, actual: String, around: Option<Duration>| Failure {
        location: expect.location,
        subject: subject.clone(),
        expected,
        actual,
        around,
    };
    if !record.unmatched.is_empty() {
        let actual = format!("no match for {}", record.unmatched.join(", "));
        verdict.check(Err(failure("output matching every pattern".into(), actual, record.end)));
    }
    if ran_into_deadline(record, deadline) {
        let expected = if expect.is_set() {
            describe_expectation(expect)
        } else {
            format!("to end before the scenario deadline ({}s)", format_secs(scenario_deadline))
        };
        let actual = cut_by_deadline(record, expect.is_set());
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
    if !expect.is_set() {
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
            Err(failure(describe_outcome(expected), describe_actual(expected, outcome), Some(end)))
        };
        verdict.check(result);
    }
    if let (Some(after), Some(elapsed)) = (expect.after, record.elapsed()) {
        verdict.check(judge_time("after", after, elapsed, expect, outcome).map_err(|(e, a)| failure(e, a, Some(end))));
    }
    if let Some(at) = expect.at {
        let judged = match resolve_anchor(facts, expect.since.as_ref(), expect.location) {
            Ok(anchor) => judge_time("at", at, end.saturating_sub(anchor.t), expect, outcome)
                .map_err(|(e, a)| failure(format!("{e}{}", anchor.label), a, Some(end))),
            Err(missing) => Err(missing),
        };
        verdict.check(judged);
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
    if expect.tolerance.admits(actual, expected) {
        return Ok(());
    }
    Err((
        format!("to end {word} {}s {}", format_secs(expected), expect.tolerance),
        format!("{outcome} {word} {}s", format_secs(actual)),
    ))
}

/// What a step gave, for a failure: a `tcp_info` read by the fields the expectation names that missed.
fn describe_actual(expected: &ExpectedOutcome, actual: &Outcome) -> String {
    match (expected, actual) {
        (ExpectedOutcome::TcpInfo(bounds), Outcome::TcpInfo(read)) => format!(
            "tcp_info {}",
            bounds.iter().filter_map(|bound| bound.judge(read).err()).collect::<Vec<_>>().join(", ")
        ),
        _ => actual.to_string(),
    }
}

fn outcome_matches(expected: &ExpectedOutcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        // A getsockopt that read a value succeeded.
        (ExpectedOutcome::Ok, Outcome::Ok | Outcome::Value(_) | Outcome::TcpInfo(_)) => true,
        (ExpectedOutcome::TcpInfo(bounds), Outcome::TcpInfo(read)) => {
            bounds.iter().all(|bound| bound.judge(read).is_ok())
        }
        (ExpectedOutcome::Value(expected), Outcome::Value(read)) => expected.to_string() == *read,
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
        (ExpectedOutcome::EventsInclude(events), Outcome::Events(names)) => {
            events.iter().all(|event| names.iter().any(|name| name == event.name()))
        }
        (ExpectedOutcome::Timeout, Outcome::Timeout) => true,
        (ExpectedOutcome::Exit(code), Outcome::Exit { code: Some(actual), .. }) => code == actual,
        _ => false,
    }
}

fn judge_packets(expectation: &PacketExpectation, anchor: Anchor, sent: &[SentPacket<'_>]) -> Result<(), Failure> {
    let times = sent_packets(sent, &expectation.filter).map(|(t, _)| t);
    let subject = describe_filter(&expectation.filter);
    let wanted = EventTimes {
        count: expectation.count,
        at: &expectation.at,
        window: expectation.window,
        tolerance: expectation.tolerance,
        location: expectation.location,
    };
    let times: Vec<Duration> = times.collect();
    judge_times(times.iter().copied(), &wanted, subject.clone(), &anchor)?;
    match expectation.doubling {
        Some(doubling) => {
            let selected = selected_times(times.into_iter(), expectation.window, &anchor);
            judge_doubling(&selected, doubling, expectation, subject + &anchor.label)
                .map_err(|failure| Failure { around: failure.around.map(|t| t + anchor.t), ..failure })
        }
        None => Ok(()),
    }
}

/// The last `doubling` intervals between the packets (those the count and window selected, from the anchor on)
/// each last twice the interval before, within the tolerance.
fn judge_doubling(
    times: &[Duration],
    doubling: u32,
    expectation: &PacketExpectation,
    subject: String,
) -> Result<(), Failure> {
    let intervals: Vec<Duration> = times.windows(2).map(|pair| pair[1].saturating_sub(pair[0])).collect();
    let compared = &intervals[intervals.len().saturating_sub(doubling as usize + 1)..];
    let list = |ts: &[Duration]| ts.iter().map(|t| format!("{}s", format_secs(*t))).collect::<Vec<_>>().join(", ");
    let fail = |around: Option<Duration>| Failure {
        location: expectation.location,
        subject: format!("{subject}: intervals between them"),
        expected: format!("the last {doubling} each twice the one before {}", expectation.tolerance),
        actual: list(&intervals),
        around,
    };
    if compared.len() < doubling as usize + 1 {
        return Err(fail(times.first().copied()));
    }
    let first = times.len() - compared.len();
    for (i, pair) in compared.windows(2).enumerate() {
        if !expectation.tolerance.admits(pair[1], 2 * pair[0]) {
            return Err(fail(times.get(first + i + 1).copied()));
        }
    }
    Ok(())
}

fn judge_errors(expectation: &ErrorExpectation, anchor: Anchor, timeline: &Timeline) -> Result<(), Failure> {
    let times = errno_events(timeline, expectation).map(|(t, _)| t);
    let wanted = EventTimes {
        count: expectation.count,
        at: &expectation.at,
        window: expectation.window,
        tolerance: expectation.tolerance,
        location: expectation.location,
    };
    judge_times(times, &wanted, describe_errors(expectation), &anchor)
}

/// How many events of a kind an expectation wants, and when.
struct EventTimes<'a> {
    count: Option<u32>,
    at: &'a [Duration],
    window: Option<(Duration, Duration)>,
    tolerance: Tolerance,
    location: Location,
}

/// The times (scenario time) from the anchor on, counted from it, that fall in the window.
fn selected_times(
    times: impl Iterator<Item = Duration>,
    window: Option<(Duration, Duration)>,
    anchor: &Anchor,
) -> Vec<Duration> {
    times
        .filter_map(|t| t.checked_sub(anchor.t))
        .filter(|t| window.is_none_or(|(start, end)| *t >= start && *t <= end))
        .collect()
}

/// Checks the times events were seen (`times`, scenario time) against the count and times wanted, counted from
/// the anchor: events before it do not count.
fn judge_times(
    times: impl Iterator<Item = Duration>,
    wanted: &EventTimes,
    mut subject: String,
    anchor: &Anchor,
) -> Result<(), Failure> {
    let times = selected_times(times, wanted.window, anchor);
    if let Some((start, end)) = wanted.window {
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
        location: wanted.location,
        subject: subject.clone(),
        expected,
        actual: format!("{} at {}", times.len(), list(&times)),
        around: around.map(|t| t + anchor.t),
    };
    if let Some(count) = wanted.count {
        if times.len() != count as usize {
            return Err(fail(format!("{count}"), times.first().copied()));
        }
    }
    if !wanted.at.is_empty() {
        let expected = format!("at {} {}", list(wanted.at), wanted.tolerance);
        if times.len() != wanted.at.len() {
            return Err(fail(expected, times.first().copied().or(wanted.at.first().copied())));
        }
        for (actual, at) in times.iter().zip(wanted.at) {
            if !wanted.tolerance.admits(*actual, *at) {
                return Err(fail(expected, Some(*at)));
            }
        }
    }
    Ok(())
}

fn judge_states(expectation: &StateExpectation, anchor: Anchor, histories: &[SocketHistory]) -> Result<(), Failure> {
    let wants_listener = expectation.sequence.iter().any(|s| s.state == TcpState::Listen);
    let mut seen = Vec::new();
    for history in histories {
        if (history.is_listener() && !wants_listener)
            || expectation.port.is_some_and(|port| history.local_port != port && history.remote_port != port)
        {
            continue;
        }
        if history_matches(&history.states, expectation, anchor.t) {
            return Ok(());
        }
        let states: Vec<String> = history
            .states
            .iter()
            .map(|(state, t)| {
                let sampled = history.untraced.iter().any(|u| u.state == *state && u.sampled_at == *t);
                format!("{state}@{}s{}", format_secs(*t), if sampled { "(sampled, untraced)" } else { "" })
            })
            .collect();
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
        expectation.tolerance,
        &anchor,
        if seen.is_empty() { "no such socket observed".into() } else { seen.join("; ") },
    ))
}

/// How a sequence expectation (socket states, queue values) failed: `subject` at `location`, the expected steps
/// in order with their times and tolerance counted from `anchor`, and what was seen instead.
fn sequence_failure(
    (location, subject): (Location, String),
    steps: &[(&dyn fmt::Display, Option<Duration>)],
    tolerance: Tolerance,
    anchor: &Anchor,
    actual: String,
) -> Failure {
    let expected: Vec<String> = steps.iter().map(|(value, at)| at_text(*value, *at)).collect();
    Failure {
        location,
        subject,
        expected: format!("{} ({}){}", expected.join(" then "), tolerance, anchor.label),
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
            *state == wanted.state && wanted.at.is_none_or(|at| expectation.tolerance.admits(*t, anchor + at))
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
                *value == wanted.value && wanted.at.is_none_or(|at| expectation.tolerance.admits(*t, anchor.t + at))
            })
        })
    };
    if histories.iter().any(|(_, history)| matches(history)) {
        return Ok(());
    }
    subject.push_str(" values");
    let steps: Vec<(&dyn fmt::Display, Option<Duration>)> =
        expectation.sequence.iter().map(|step| (&step.value as &dyn fmt::Display, step.at)).collect();
    Err(sequence_failure((expectation.location, subject), &steps, expectation.tolerance, &anchor, seen()))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod errors_tests;
#[cfg(test)]
mod queue_and_filter_tests;

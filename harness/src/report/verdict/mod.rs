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
    ErrorExpectation, ExpectedOutcome, HostId, Location, PacketExpectation, Plan, QueueExpectation, Since,
    StateExpectation, StepExpectation, StepPlan, TcpState, TimerExpectation, Tolerance,
};
use crate::timeline::query::{
    errno_events, queue_histories, sent_packets, socket_events, socket_histories, step_record, StepRecord,
};
use crate::timeline::{format_secs, EventKind, Outcome, SocketEvent, Timeline};

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
    /// Each step's own judgement, in plan order (hosts in order, steps in order).
    pub steps: Vec<StepVerdict>,
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
}

/// Judges a run: every step expectation, then every whole-run expectation.
pub fn judge(plan: &Plan, timeline: &Timeline) -> Verdict {
    let mut verdict = Verdict::default();
    for host in &plan.hosts {
        for step in &host.steps {
            let record = step_record(timeline, host.id, step.index);
            let failures_before = verdict.failures.len();
            judge_step(&mut verdict, timeline, host.id, step, &record);
            let judgement = match (step.expect.is_set(), verdict.failures.len() > failures_before) {
                (false, false) => StepJudgement::Recorded,
                (_, true) => StepJudgement::Fail,
                (true, false) => StepJudgement::Pass,
            };
            verdict.steps.push(StepVerdict { host: host.id, index: step.index, judgement });
        }
    }
    judge_deadline(&mut verdict, plan, timeline);
    for expectation in &plan.expect.packets {
        let anchor = resolve_anchor(timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_packets(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.states {
        let anchor = resolve_anchor(timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_states(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.timers {
        verdict.check(judge_timer(expectation, timeline));
    }
    for expectation in &plan.expect.queues {
        let anchor = resolve_anchor(timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_queue(expectation, anchor, timeline)));
    }
    for expectation in &plan.expect.counters {
        verdict.check(kernel::judge_counter(expectation, timeline));
    }
    for expectation in &plan.expect.tcp_info {
        verdict.check(kernel::judge_tcp_info(expectation, timeline));
    }
    for expectation in &plan.expect.errors {
        let anchor = resolve_anchor(timeline, expectation.since.as_ref(), expectation.location);
        verdict.check(anchor.and_then(|anchor| judge_errors(expectation, anchor, timeline)));
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
pub fn resolve_anchor(timeline: &Timeline, since: Option<&Since>, location: Location) -> Result<Anchor, Failure> {
    let (name, t, missing) = match since {
        None => return Ok(Anchor::t0()),
        Some(Since::Step(step)) => {
            let name = step.to_string();
            let end = step_record(timeline, step.host, step.index).end;
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

fn judge_step(verdict: &mut Verdict, timeline: &Timeline, host: HostId, step: &StepPlan, record: &StepRecord) {
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
    if !expect.is_set() {
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
        let judged = match resolve_anchor(timeline, expect.since.as_ref(), expect.location) {
            Ok(anchor) => judge_time("at", at, end.saturating_sub(anchor.t), expect, outcome)
                .map_err(|(e, a)| failure(format!("{e}{}", anchor.label), a, Some(end))),
            Err(missing) => Err(missing),
        };
        verdict.check(judged);
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

/// A run must end by itself: a step the scenario deadline cut (still running then, or ended `unfinished` by
/// it) fails the run, named at its line, even when it expects nothing. A step with an expectation has already
/// failed on it in [`judge_step`].
fn judge_deadline(verdict: &mut Verdict, plan: &Plan, timeline: &Timeline) {
    let deadline_at = timeline.events.iter().find_map(|e| matches!(e.kind, EventKind::Deadline { .. }).then_some(e.t));
    for host in &plan.hosts {
        for step in &host.steps {
            let expect = &step.expect;
            if expect.is_set() {
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

fn judge_packets(expectation: &PacketExpectation, anchor: Anchor, timeline: &Timeline) -> Result<(), Failure> {
    let times = sent_packets(timeline, &expectation.filter).map(|(t, _)| t);
    let subject = describe_filter(&expectation.filter);
    let wanted = EventTimes {
        count: expectation.count,
        at: &expectation.at,
        window: expectation.window,
        tolerance: expectation.tolerance,
        location: expectation.location,
    };
    judge_times(times, &wanted, subject, &anchor)
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

/// Checks the times events were seen (`times`, scenario time) against the count and times wanted, counted from
/// the anchor: events before it do not count.
fn judge_times(
    times: impl Iterator<Item = Duration>,
    wanted: &EventTimes,
    mut subject: String,
    anchor: &Anchor,
) -> Result<(), Failure> {
    let times: Vec<Duration> = times
        .filter_map(|t| t.checked_sub(anchor.t))
        .filter(|t| wanted.window.is_none_or(|(start, end)| *t >= start && *t <= end))
        .collect();
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

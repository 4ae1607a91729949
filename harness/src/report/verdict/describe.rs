//! Expectations in words, as failure messages and reports show them: outcomes, tolerances, packet filters.

use std::fmt;
use std::time::Duration;

use crate::scenario::plan::{
    ErrorExpectation, ExpectedOutcome, PacketFilter, Protocol, StepExpectation, TcpFlagsMatch,
};
use crate::timeline::format_secs;

/// `1st`, `2nd`, `3rd`, `4th`, ... `11th`, `21st`.
pub(super) fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

pub fn describe_outcome(expected: &ExpectedOutcome) -> String {
    match expected {
        ExpectedOutcome::Ok => "ok".into(),
        ExpectedOutcome::Bytes(n) => format!("{n} bytes"),
        ExpectedOutcome::Value(value) => format!("value {value}"),
        ExpectedOutcome::TcpInfo(bounds) => {
            format!("tcp_info {}", bounds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        }
        ExpectedOutcome::Eof => "EOF".into(),
        ExpectedOutcome::Error(errno) => errno.name(),
        ExpectedOutcome::Events(events) => events.iter().map(|e| e.name()).collect::<Vec<_>>().join("|"),
        ExpectedOutcome::EventsInclude(events) => {
            format!("at least {}", events.iter().map(|e| e.name()).collect::<Vec<_>>().join("|"))
        }
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
        parts.push(format!("after {}s {}", format_secs(after), expect.tolerance));
    }
    if let Some(at) = expect.at {
        parts.push(format!("at {}s {}", format_secs(at), expect.tolerance));
    }
    parts.join(" ")
}

/// `[F.]` for exactly these flags (as tcpdump prints them); `[F of FR]` for the flags a mask looks at.
pub(super) fn describe_flags(flags: TcpFlagsMatch) -> String {
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
        parts.push(format!("({protocol})"));
    }
    if filter.dropped {
        parts.push("dropped before they left".into());
    }
    parts.join(" ")
}
/// `errno events of client's traced programs on port 7000: recvfrom EAGAIN`.
pub fn describe_errors(expectation: &ErrorExpectation) -> String {
    let mut text = format!("errno events of {}'s traced programs", expectation.host);
    if let Some(port) = expectation.port {
        text.push_str(&format!(" on port {port}"));
    }
    let what: Vec<String> =
        expectation.call.iter().cloned().chain(expectation.errno.map(|errno| errno.name())).collect();
    if !what.is_empty() {
        text.push_str(&format!(": {}", what.join(" ")));
    }
    text
}

/// `value@t` when a time is expected, else just the value, as failure messages show a sequence entry.
pub(super) fn at_text(value: &dyn fmt::Display, at: Option<Duration>) -> String {
    match at {
        Some(at) => format!("{value}@{}s", format_secs(at)),
        None => value.to_string(),
    }
}

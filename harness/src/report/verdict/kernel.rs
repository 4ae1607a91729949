//! Judging what the kernel kept: its counters at the end of the run (`nstat`) and a connection's last
//! `tcp_info` (`ss -i`).

use std::time::Duration;

use super::Failure;
use crate::scenario::plan::{CounterBound, CounterExpectation, DurationRange, TcpInfoExpectation};
use crate::timeline::query::{counters, decisions_of, last_tcp_info};
use crate::timeline::{format_secs, Timeline};

/// A bound's value in this run: a number, or how many decisions the impairment made, said with its source
/// (`14 (the decisions of bitrot)`).
fn resolve(bound: &Option<CounterBound>, timeline: &Timeline) -> Option<(u64, String)> {
    match bound.as_ref()? {
        CounterBound::Count(n) => Some((*n, n.to_string())),
        CounterBound::Decisions(fault) => {
            let n = decisions_of(timeline, fault);
            Some((n, format!("{n} (the decisions of {fault})")))
        }
    }
}

/// `min <= value <= max` for a counter, as `at least 1`, `at most 3`, `1..3` or `exactly 14 (the decisions of
/// bitrot)`.
fn describe_bounds(min: &Option<(u64, String)>, max: &Option<(u64, String)>) -> String {
    match (min, max) {
        (Some((low, min)), Some((high, _))) if low == high => format!("exactly {min}"),
        (Some((_, min)), Some((_, max))) => format!("{min}..{max}"),
        (Some((_, min)), None) => format!("at least {min}"),
        (None, Some((_, max))) => format!("at most {max}"),
        (None, None) => "any value".into(),
    }
}

pub(super) fn judge_counter(expectation: &CounterExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let subject = match expectation.counters.as_slice() {
        [one] => format!("{} counter {one}", expectation.host),
        several => format!("{} counters {}", expectation.host, several.join(" + ")),
    };
    let (min, max) = (resolve(&expectation.min, timeline), resolve(&expectation.max, timeline));
    let expected = describe_bounds(&min, &max);
    let Some((t, counters)) = counters(timeline, expectation.host) else {
        return Err(Failure {
            location: expectation.location,
            subject,
            expected,
            actual: "no reading of the host's counters (the run ended before they were read)".into(),
            around: None,
        });
    };
    // A counter the kernel knows but never incremented is left out of the reading: it is zero.
    let value: u64 = expectation.counters.iter().map(|name| counters.get(name).copied().unwrap_or(0)).sum();
    if min.is_none_or(|(min, _)| value >= min) && max.is_none_or(|(max, _)| value <= max) {
        return Ok(());
    }
    Err(Failure { location: expectation.location, subject, expected, actual: value.to_string(), around: Some(t) })
}

fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn describe_range(range: &DurationRange) -> String {
    match (range.min, range.max) {
        (Some(min), Some(max)) => format!("{}..{}", millis(min), millis(max)),
        (Some(min), None) => format!("at least {}", millis(min)),
        (None, Some(max)) => format!("at most {}", millis(max)),
        (None, None) => "any".into(),
    }
}

pub(super) fn judge_tcp_info(expectation: &TcpInfoExpectation, timeline: &Timeline) -> Result<(), Failure> {
    let expected = [("rtt", &expectation.rtt), ("rto", &expectation.rto)]
        .iter()
        .filter_map(|(name, range)| range.map(|range| format!("{name} {}", describe_range(&range))))
        .collect::<Vec<_>>()
        .join(", ");
    let Some((t, socket)) = last_tcp_info(timeline, expectation.host, expectation.port) else {
        return Err(Failure {
            location: expectation.location,
            subject: format!("{} tcp_info", expectation.host),
            expected,
            actual: "no tcp_info sample of such a connection".into(),
            around: None,
        });
    };
    let fits = |range: &Option<DurationRange>, value: Option<Duration>| {
        range.is_none_or(|range| value.is_some_and(|value| range.contains(value)))
    };
    if fits(&expectation.rtt, socket.rtt) && fits(&expectation.rto, socket.rto) {
        return Ok(());
    }
    let shown = |value: Option<Duration>| value.map_or("-".to_string(), millis);
    Err(Failure {
        location: expectation.location,
        subject: format!("{} tcp_info of {}", expectation.host, socket.socket),
        expected,
        actual: format!(
            "rtt {}, rto {} in its last sample at {}s",
            shown(socket.rtt),
            shown(socket.rto),
            format_secs(t)
        ),
        around: Some(t),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::scenario::plan::{HostId, Location, TcpState};
    use crate::timeline::{Decision, DecisionKind, Event, EventKind, ImpairmentEvent, PacketKey, SocketEvent};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn counters_at(t: Duration, host: HostId, values: &[(&str, u64)]) -> Event {
        let counters: BTreeMap<String, u64> = values.iter().map(|(name, value)| (name.to_string(), *value)).collect();
        Event { t, host, kind: EventKind::Counters { counters } }
    }

    fn counter(host: HostId, name: &str, min: Option<u64>, max: Option<u64>) -> CounterExpectation {
        let counters = name.split('+').map(|name| name.trim().to_string()).collect();
        let (min, max) = (min.map(CounterBound::Count), max.map(CounterBound::Count));
        CounterExpectation { host, counters, min, max, location: Location { line: 9, column: 7 } }
    }

    #[test]
    fn a_counter_is_judged_on_its_host_s_last_reading_and_an_absent_one_is_zero() {
        let timeline = Timeline::new(vec![
            counters_at(ms(900), HostId::Client, &[("TcpRetransSegs", 3)]),
            counters_at(ms(1000), HostId::Client, &[("TcpRetransSegs", 5)]),
            counters_at(ms(1000), HostId::Server, &[("TcpInCsumErrors", 2)]),
        ]);
        assert!(judge_counter(&counter(HostId::Client, "TcpRetransSegs", Some(4), Some(5)), &timeline).is_ok());
        let failure = judge_counter(&counter(HostId::Client, "TcpRetransSegs", None, Some(4)), &timeline).unwrap_err();
        assert_eq!((failure.expected.as_str(), failure.actual.as_str()), ("at most 4", "5"));
        assert!(judge_counter(&counter(HostId::Server, "TcpRetransSegs", None, Some(0)), &timeline).is_ok());
        let failure = judge_counter(&counter(HostId::Server, "TcpRetransSegs", Some(1), None), &timeline).unwrap_err();
        assert_eq!(failure.actual, "0");
        let sum = counter(HostId::Server, "TcpInCsumErrors + TcpRetransSegs", Some(2), Some(2));
        assert!(judge_counter(&sum, &timeline).is_ok(), "2 + 0");
        let failure = judge_counter(&counter(HostId::Server, "TcpInCsumErrors + TcpInErrs", Some(3), None), &timeline)
            .unwrap_err();
        assert_eq!(failure.subject, "server counters TcpInCsumErrors + TcpInErrs");
        let failure =
            judge_counter(&counter(HostId::Client, "X", Some(1), None), &Timeline::new(Vec::new())).unwrap_err();
        assert!(failure.actual.contains("no reading"), "{failure}");
    }

    fn decision(t: Duration, fault: &str, n: u64) -> Event {
        let key = PacketKey::Forged { number: n };
        let decision = Decision { fault: fault.into(), key, kind: DecisionKind::Corrupted { byte: 40, bit: 7 } };
        Event {
            t,
            host: HostId::Server,
            kind: EventKind::Impairment(ImpairmentEvent { toward: HostId::Server, n, decision, packet: None }),
        }
    }

    #[test]
    fn a_bound_may_be_the_number_of_an_impairment_s_decisions() {
        let timeline = Timeline::new(vec![
            decision(ms(10), "bitrot", 1),
            decision(ms(20), "bitrot", 2),
            decision(ms(30), "other", 1),
            counters_at(ms(1000), HostId::Server, &[("TcpInErrs", 2), ("TcpInCsumErrors", 1)]),
        ]);
        let exactly = |name: &str| CounterExpectation {
            min: Some(CounterBound::Decisions("bitrot".into())),
            max: Some(CounterBound::Decisions("bitrot".into())),
            ..counter(HostId::Server, name, None, None)
        };
        assert!(judge_counter(&exactly("TcpInErrs"), &timeline).is_ok());
        let failure = judge_counter(&exactly("TcpInCsumErrors"), &timeline).unwrap_err();
        assert_eq!((failure.expected.as_str(), failure.actual.as_str()), ("exactly 2 (the decisions of bitrot)", "1"));
        let at_most = CounterExpectation {
            min: Some(CounterBound::Count(1)),
            max: Some(CounterBound::Decisions("bitrot".into())),
            ..counter(HostId::Server, "TcpInCsumErrors", None, None)
        };
        assert!(judge_counter(&at_most, &timeline).is_ok());
        let none = CounterExpectation {
            min: Some(CounterBound::Decisions("missing".into())),
            ..counter(HostId::Server, "TcpInErrs", None, None)
        };
        assert!(judge_counter(&none, &timeline).is_ok(), "an impairment that decided nothing counts 0");
    }

    fn sample(t: Duration, remote_port: u16, rtt: Option<u64>, rto: Option<u64>) -> Event {
        Event {
            t,
            host: HostId::Client,
            kind: EventKind::Socket(SocketEvent {
                socket: format!("10.0.0.1:40000 -> 10.0.0.2:{remote_port}"),
                local_port: 40000,
                remote_port,
                state: TcpState::Established,
                timer: None,
                expires: None,
                retrans: 0,
                recv_q: 0,
                send_q: 0,
                rtt: rtt.map(ms),
                rto: rto.map(ms),
            }),
        }
    }

    fn tcp_info(port: Option<u16>, rtt: Option<(u64, u64)>, rto_min: Option<u64>) -> TcpInfoExpectation {
        TcpInfoExpectation {
            host: HostId::Client,
            port,
            rtt: rtt.map(|(min, max)| DurationRange { min: Some(ms(min)), max: Some(ms(max)) }),
            rto: rto_min.map(|min| DurationRange { min: Some(ms(min)), max: None }),
            location: Location { line: 3, column: 5 },
        }
    }

    #[test]
    fn tcp_info_is_judged_on_the_last_sample_of_the_selected_connection() {
        let timeline = Timeline::new(vec![
            sample(ms(10), 9000, Some(150), Some(350)),
            sample(ms(20), 9000, Some(101), Some(304)),
            sample(ms(30), 9000, None, None),
            sample(ms(40), 8000, Some(1), Some(204)),
        ]);
        assert!(judge_tcp_info(&tcp_info(Some(9000), Some((90, 120)), Some(300)), &timeline).is_ok());
        let failure = judge_tcp_info(&tcp_info(None, Some((90, 120)), None), &timeline).unwrap_err();
        assert!(failure.actual.starts_with("rtt 1.0ms, rto 204.0ms"), "{failure}");
        let failure = judge_tcp_info(&tcp_info(Some(9000), None, Some(310)), &timeline).unwrap_err();
        assert_eq!(failure.expected, "rto at least 310.0ms");
        let failure = judge_tcp_info(&tcp_info(Some(7000), None, Some(1)), &timeline).unwrap_err();
        assert!(failure.actual.contains("no tcp_info sample"), "{failure}");
    }
}

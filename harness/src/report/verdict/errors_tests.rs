//! Verdict tests of errno expectations (`errors:`) on hand-built timelines.

use super::*;
use crate::timeline::{ErrnoEvent, Event, EventKind};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn errno(t: u64, host: HostId, call: &str, errno: &str, local_port: u16, remote_port: u16) -> Event {
    Event {
        t: ms(t),
        host,
        kind: EventKind::Errno(ErrnoEvent {
            step: 1,
            pid: 17,
            call: call.into(),
            errno: errno.into(),
            socket: format!("10.0.0.1:{local_port} -> 10.0.0.2:{remote_port}"),
            local_port,
            remote_port,
            took: ms(t),
        }),
    }
}

fn plan(errors: &str) -> Plan {
    crate::scenario::parse(
        "errors",
        std::path::Path::new("errors.yaml"),
        &format!(
            "description: d\nclient:\n  - exec: {{ program: fetch, trace: true }}\n    name: fetch\n\
             expect:\n  errors:\n{errors}"
        ),
    )
    .unwrap()
}

/// A refused connect (EINPROGRESS, then ECONNREFUSED by SO_ERROR) and its retry, a read timeout at 2 s on
/// another port, and the server's own error.
fn timeline() -> Timeline {
    Timeline::new(vec![
        errno(10, HostId::Client, "connect", "EINPROGRESS", 0, 7000),
        errno(11, HostId::Client, "getsockopt SO_ERROR", "ECONNREFUSED", 0, 7000),
        errno(510, HostId::Client, "connect", "EINPROGRESS", 0, 7000),
        errno(512, HostId::Client, "getsockopt SO_ERROR", "ECONNREFUSED", 0, 7000),
        errno(2030, HostId::Client, "recvfrom", "EAGAIN", 41234, 8000),
        errno(3000, HostId::Server, "recvfrom", "ETIMEDOUT", 7000, 41234),
    ])
}

#[test]
fn errno_events_are_selected_by_host_port_errno_and_call_and_counted_or_timed() {
    let plan = plan(
        "    - { host: client, port: 7000, errno: ECONNREFUSED, at: [0s, 500ms], tolerance: 10ms }\n\
         \x20   - { host: client, port: 7000, call: connect, errno: EINPROGRESS, count: 2 }\n\
         \x20   - { host: client, call: recvfrom, errno: EAGAIN, at: [2s], tolerance: { early: 10ms, late: 50ms } }\n\
         \x20   - { host: client, errno: ETIMEDOUT, count: 0 }\n\
         \x20   - { host: client, port: 8000, count: 1, within: [1s, 3s] }\n",
    );
    let verdict = judge(&plan, &Timeline { events: timeline().events.into_iter().map(shift_by_11ms).collect() });
    assert_eq!(verdict.failures, vec![]);
    assert_eq!(verdict.checks, 5);
}

/// The first refusal at 0 s: the events as they would be if the run had started 11 ms later.
fn shift_by_11ms(mut event: Event) -> Event {
    event.t = event.t.saturating_sub(ms(11));
    event
}

#[test]
fn a_missing_or_late_errno_fails_naming_what_was_selected_and_what_came() {
    let plan = plan(
        "    - { host: client, call: recvfrom, errno: EAGAIN, at: [2s], tolerance: { early: 10ms, late: 20ms } }\n\
         \x20   - { host: client, port: 7000, errno: ECONNREFUSED, count: 1, since: client.fetch }\n",
    );
    let mut events = timeline().events;
    events.push(Event {
        t: ms(0),
        host: HostId::Client,
        kind: EventKind::StepEnd {
            step: 0,
            label: "fetch (exec)".into(),
            outcome: Outcome::Exit { code: Some(3), signal: None },
            detail: None,
            unmatched: vec![],
        },
    });
    let verdict = judge(&plan, &Timeline::new(events));
    assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
    let late = &verdict.failures[0];
    assert_eq!(late.subject, "errno events of client's traced programs: recvfrom EAGAIN");
    assert_eq!(late.expected, "at 2.000000s -0.010000s/+0.020000s");
    assert_eq!(late.actual, "1 at 2.030000s");
    let counted = &verdict.failures[1];
    assert_eq!(
        counted.subject,
        "errno events of client's traced programs on port 7000: ECONNREFUSED since client.fetch (0.000000s)"
    );
    assert_eq!((counted.expected.as_str(), counted.actual.as_str()), ("1", "2 at 0.011000s, 0.512000s"));
}

//! Unit tests of the scenario loader: good files to plans, every syntax form, bad inputs to positioned messages.
//! The corpus of bad files with their expected errors is tests/bad-scenarios/ (checked by tests/bad_scenarios.rs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::plan::*;
use super::variables::Variables;
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn at(line: usize, column: usize) -> Location {
    Location { line, column }
}

fn parse_text(text: &str) -> Result<Plan, ScenarioError> {
    parse("test", Path::new("test.yaml"), text)
}

fn plan(text: &str) -> Plan {
    match parse_text(text) {
        Ok(plan) => plan,
        Err(e) => panic!("{e}\n--- in ---\n{text}"),
    }
}

/// Parses `text`, which must fail at `line:column` with a message containing `part`; says how it differs.
fn mismatch(text: &str, line: usize, column: usize, part: &str) -> Option<String> {
    let error = match parse_text(text) {
        Ok(_) => return Some(format!("accepted, expected {line}:{column}: {part}\n--- in ---\n{text}")),
        Err(error) => error,
    };
    let position_ok = error.location == Some(at(line, column)) && error.file == Path::new("test.yaml");
    if position_ok && error.message.contains(part) {
        return None;
    }
    Some(format!("expected {line}:{column}: ...{part}...\n     got {error}\n--- in ---\n{text}"))
}

/// Parses `text`, which must fail at `line:column` with a message containing `part`.
fn refused(text: &str, line: usize, column: usize, part: &str) {
    if let Some(problem) = mismatch(text, line, column, part) {
        panic!("{problem}");
    }
}

/// The steps of `host` in a scenario that has only `description` and the given program text.
fn steps(program: &str) -> Vec<StepPlan> {
    let plan = plan(&format!("description: d\n{program}"));
    let mut steps = plan.hosts[0].steps.clone();
    steps.extend(plan.hosts[1].steps.clone());
    steps
}

fn actions(program: &str) -> Vec<Action> {
    steps(program).into_iter().map(|s| s.action).collect()
}

fn good_file() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good-scenarios");
    let file = root.join("complete.yaml");
    (root, file)
}

#[test]
fn complete_scenario_becomes_the_expected_plan() {
    let (root, file) = good_file();
    let plan = load(&root, &file, &Variables::default()).unwrap();
    assert_eq!(plan.name, "complete");
    assert_eq!(plan.file, file);
    assert!(plan.description.starts_with("Client enables keepalive 5/3/3."));
    assert!(plan.description.ends_with("read fails with ETIMEDOUT.\n"));
    assert_eq!(plan.source.as_deref(), Some("seed 000, test_idle.py"));
    assert!(!plan.slow);
    assert_eq!(plan.deadline, secs(40));
    assert_eq!(plan.tolerance, Tolerance::either_side(ms(300)));
    assert_eq!(plan.sample_interval, ms(10));
    assert_eq!(plan.link.mtu, 1500);
    assert!(!plan.link.ipv6);

    let client = plan.host(HostId::Client);
    assert_eq!(client.id, HostId::Client);
    assert_eq!(client.address.to_string(), "10.0.0.1");
    assert_eq!(client.prefix_len, 24);
    assert_eq!(
        client.sysctls,
        vec![
            Sysctl {
                name: "net.ipv4.tcp_rmem".into(),
                value: "4096 131072 6291456".into(),
                location: Some(at(15, 61))
            },
            Sysctl { name: "net.ipv4.tcp_syn_retries".into(), value: "2".into(), location: Some(at(15, 39)) },
        ]
    );
    let server = plan.host(HostId::Server);
    assert_eq!(server.address.to_string(), "10.0.0.2");
    assert_eq!(
        server.sysctls,
        vec![Sysctl { name: "net.core.somaxconn".into(), value: "64".into(), location: Some(at(17, 25)) }]
    );

    assert_eq!(client.steps.len(), 5);
    let socket = &client.steps[0];
    assert_eq!(socket.index, 0);
    assert_eq!(socket.location, at(41, 5));
    match &socket.action {
        Action::Socket { name, options, nonblocking, .. } => {
            assert_eq!(name.as_deref(), Some("main"));
            assert!(!nonblocking);
            assert_eq!(
                options,
                &vec![
                    SockOpt { name: SockOptName::SO_KEEPALIVE, value: SockOptValue::Int(1) },
                    SockOpt { name: SockOptName::TCP_KEEPIDLE, value: SockOptValue::Int(5) },
                    SockOpt { name: SockOptName::TCP_KEEPINTVL, value: SockOptValue::Int(3) },
                    SockOpt { name: SockOptName::TCP_KEEPCNT, value: SockOptValue::Int(3) },
                    SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: true, seconds: 0 } },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &client.steps[1].action,
        Action::Wait { step, edge: StepEdge::Finished } if *step == StepRef { host: HostId::Server, index: 0, name: "listen".into() }
    ));
    let connect = plan.step(HostId::Client, "connect").unwrap();
    assert_eq!(connect.index, 2);
    assert_eq!(connect.label(), "connect (connect)");
    assert!(matches!(connect.action, Action::Connect { to: Some(HostId::Server), port: 9000, nonblocking: false, .. }));
    assert_eq!(connect.expect.outcome, Some(ExpectedOutcome::Ok));
    assert_eq!(connect.expect.after, Some(Duration::ZERO));
    assert_eq!(connect.expect.tolerance, Tolerance::either_side(ms(50)));
    assert_eq!(connect.expect.location, at(46, 13));
    assert_eq!(connect.location, at(44, 5));
    let read = &client.steps[3];
    assert_eq!(read.socket.as_deref(), Some("main"));
    assert!(
        matches!(&read.action, Action::Recv { max: 10, until_eof: false, nonblocking: false, flags } if flags.is_empty())
    );
    assert_eq!(read.expect.outcome, Some(ExpectedOutcome::Error(Errno(libc::ETIMEDOUT))));
    assert_eq!(read.expect.after, Some(secs(14)));
    assert_eq!(read.expect.tolerance, Tolerance::either_side(ms(300)));
    assert_eq!(read.label(), "#4 recv");
    assert!(matches!(client.steps[4].action, Action::Close));
    assert_eq!(client.steps[4].expect.location, client.steps[4].location);

    assert_eq!(server.steps.len(), 3);
    assert!(matches!(server.steps[0].action, Action::Listen { port: Some(9000), backlog: 16, .. }));
    assert!(matches!(&server.steps[1].action, Action::Accept { name: Some(n), nonblocking: false } if n == "conn"));
    assert_eq!(server.steps[2].socket.as_deref(), Some("conn"));

    let names: Vec<&str> = plan.faults.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["ack-reset", "blackhole"], "faults are sorted by name");
    let ack_reset = &plan.faults[0];
    assert_eq!(ack_reset.host, HostId::Client);
    assert_eq!(ack_reset.direction, Direction::Egress);
    assert_eq!(
        ack_reset.matcher,
        PacketMatch {
            protocol: Some(Protocol::Tcp),
            sport: Some(1234),
            dport: None,
            tcp_flags: Some(TcpFlagsMatch { mask: 0x02 | 0x10 | 0x01 | 0x04, value: 0x10 }),
            payload: Some(PayloadMatch::Empty),
        }
    );
    assert_eq!(ack_reset.action, FaultAction::RejectTcpReset);
    assert_eq!(
        ack_reset.from,
        Trigger::Packet {
            host: HostId::Client,
            filter: PacketFilter {
                from: Some(HostId::Client),
                flags: Some(TcpFlagsMatch::exactly(0x10)),
                len: Some(0),
                ..PacketFilter::default()
            },
            nth: 3,
            delay: ms(100),
        }
    );
    assert_eq!(ack_reset.until, None);
    assert_eq!(ack_reset.location, at(26, 5));
    let blackhole = &plan.faults[1];
    assert_eq!(blackhole.host, HostId::Server);
    assert_eq!(blackhole.direction, Direction::Ingress);
    assert_eq!(
        blackhole.matcher,
        PacketMatch { protocol: Some(Protocol::Tcp), dport: Some(9000), ..PacketMatch::default() }
    );
    assert_eq!(blackhole.action, FaultAction::Drop);
    assert_eq!(
        blackhole.from,
        Trigger::Step {
            step: StepRef { host: HostId::Client, index: 2, name: "connect".into() },
            edge: StepEdge::Finished,
            delay: Duration::ZERO
        }
    );
    assert_eq!(blackhole.until, Some(Trigger::At(secs(30))));

    let packets = &plan.expect.packets;
    assert_eq!(packets.len(), 3);
    assert_eq!(
        packets[0].filter,
        PacketFilter {
            from: Some(HostId::Client),
            flags: Some(TcpFlagsMatch::exactly(0x10)),
            len: Some(0),
            ..PacketFilter::default()
        }
    );
    assert_eq!(packets[0].at, vec![secs(5), secs(8), secs(11)]);
    assert_eq!(packets[0].count, Some(3));
    assert_eq!(packets[0].window, None);
    assert_eq!(packets[0].tolerance, Tolerance::either_side(ms(300)));
    assert_eq!(packets[0].location, at(53, 7));
    assert_eq!(packets[1].filter.flags, Some(TcpFlagsMatch::exactly(0x04)));
    assert_eq!(packets[1].count, Some(1));
    assert_eq!(packets[1].window, Some((secs(13), secs(15))));
    assert_eq!(packets[2].filter.flags, Some(TcpFlagsMatch::exactly(0x01 | 0x10)));
    assert_eq!(packets[2].count, Some(0));

    let state = &plan.expect.states[0];
    assert_eq!(state.host, HostId::Server);
    assert_eq!(state.port, Some(9000));
    assert_eq!(state.tolerance, Tolerance::either_side(ms(500)));
    assert_eq!(state.sequence.len(), 2);
    assert_eq!(state.sequence[0].state, TcpState::SynRecv);
    assert_eq!(state.sequence[0].at, None);
    assert_eq!(state.sequence[1].state, TcpState::Gone);
    assert_eq!(state.sequence[1].at, Some(secs(7)));

    let timer = &plan.expect.timers[0];
    assert_eq!(timer.host, HostId::Client);
    assert_eq!(timer.timer, TimerKind::Keepalive);
    assert_eq!(timer.retrans, Some(2));
    assert_eq!(timer.state, Some(TcpState::Established));
    assert_eq!(timer.port, Some(9000));
}

#[test]
fn defaults_fill_a_minimal_scenario() {
    let plan = plan("description: nothing happens\n");
    assert_eq!(plan.name, "test");
    assert_eq!(plan.description, "nothing happens");
    assert_eq!(plan.source, None);
    assert!(!plan.slow);
    assert_eq!(plan.deadline, secs(60));
    assert_eq!(plan.tolerance, Tolerance::either_side(ms(250)));
    assert_eq!(plan.sample_interval, ms(10));
    assert_eq!(plan.link.mtu, 1500);
    assert!(!plan.link.ipv6);
    assert_eq!(plan.hosts[0].id, HostId::Client);
    assert_eq!(plan.hosts[0].address.to_string(), "10.0.0.1");
    assert_eq!(plan.hosts[1].id, HostId::Server);
    assert_eq!(plan.hosts[1].address.to_string(), "10.0.0.2");
    assert_eq!(plan.hosts[1].prefix_len, 24);
    assert!(plan.hosts.iter().all(|h| h.steps.is_empty() && h.sysctls.is_empty()));
    assert!(plan.faults.is_empty());
    assert!(plan.expect.packets.is_empty() && plan.expect.states.is_empty() && plan.expect.timers.is_empty());
}

#[test]
fn top_level_settings() {
    let plan = plan(
        "description: d\nslow: true\ntimeout: 2m\ntolerance: 1.5s\nsample: 1ms\n\
         hosts:\n  client: { address: 192.168.7.9/16 }\n  server: { address: 192.168.200.1/16 }\n\
         link: { mtu: 9000, ipv6: true }\n",
    );
    assert!(plan.slow);
    assert_eq!(plan.deadline, secs(120));
    assert_eq!(plan.tolerance, Tolerance::either_side(ms(1500)));
    assert_eq!(plan.sample_interval, ms(1));
    assert_eq!(plan.hosts[0].address.to_string(), "192.168.7.9");
    assert_eq!(plan.hosts[0].prefix_len, 16);
    assert_eq!(plan.hosts[1].address.to_string(), "192.168.200.1");
    assert_eq!(plan.link.mtu, 9000);
    assert!(plan.link.ipv6);
    let only_server = self::plan("description: d\nhosts:\n  server: { address: 10.0.0.9/24 }\n");
    assert_eq!(only_server.hosts[0].address.to_string(), "10.0.0.1");
    assert_eq!(only_server.hosts[1].address.to_string(), "10.0.0.9");
}

/// `capture: { snaplen }` takes any size from what the decoder reads of a frame to the link's longest frame:
/// 150 bytes to MTU + 18, at the default MTU and at a jumbo one.
#[test]
fn capture_snap_lengths_from_the_headers_to_the_longest_frame() {
    let capture = |text: &str| plan(&format!("description: d\n{text}")).capture;
    assert_eq!(capture(""), CapturePlan { ring_bytes: None, snaplen: None });
    assert_eq!(
        capture("capture: { ring: 16MiB, snaplen: 160B }\n"),
        CapturePlan { ring_bytes: Some(16 << 20), snaplen: Some(160) }
    );
    assert_eq!(capture("capture: { snaplen: 150B }\n").snaplen, Some(150));
    assert_eq!(capture("capture: { snaplen: 1518B }\n").snaplen, Some(1518));
    assert_eq!(capture("link: { mtu: 9000 }\ncapture: { snaplen: 8KiB }\n").snaplen, Some(8192));
    assert_eq!(capture("link: { mtu: 9000 }\ncapture: { snaplen: 9018B }\n").snaplen, Some(9018));
    refused("description: d\ncapture: { snaplen: 149B }\n", 2, 21, "less than the timeline's decoding reads");
    refused("description: d\ncapture: { snaplen: 1519B }\n", 2, 21, "allowed: 150B..1518B");
    refused("description: d\nlink: { mtu: 9000 }\ncapture: { snaplen: 9019B }\n", 3, 21, "150B..9018B");
    refused("description: d\ncapture: { snaplen: 0B }\n", 2, 21, "allowed: 150B..1518B");
    refused("description: d\ncapture: { snaplen: true }\n", 2, 21, "capture snaplen must be a size like \"160B\"");
    // Any impairment but corruption goes with a snap length.
    let faults = |action: &str| {
        format!(
            "description: d\ncapture: {{ snaplen: 160B }}\nfaults:\n  - name: f\n    at: server\n    \
             match: {{ protocol: tcp }}\n    action: {action}\n"
        )
    };
    assert_eq!(plan(&faults("{ loss: 1% }")).capture.snaplen, Some(160));
    assert_eq!(plan(&faults("{ duplicate: 1% }")).capture.snaplen, Some(160));
    refused(&faults("{ corrupt: 1% }"), 2, 21, "cannot go with fault f's corrupt impairment");
}

#[test]
fn bare_steps_and_empty_parameters() {
    let got = actions(
        "server:\n  - socket\n  - listen\n  - accept\n  - read\n  - recv\n  - close\n  - accept: {}\n  - close: {}\n  - close:\n",
    );
    assert!(matches!(got[0], Action::Socket { name: None, ref options, nonblocking: false, .. } if options.is_empty()));
    assert!(matches!(got[1], Action::Listen { port: None, backlog: 128, .. }));
    assert!(matches!(got[2], Action::Accept { name: None, nonblocking: false }));
    assert!(
        matches!(&got[3], Action::Recv { max: 65536, until_eof: false, nonblocking: false, flags } if flags.is_empty())
    );
    assert!(
        matches!(&got[4], Action::Recv { max: 65536, until_eof: false, nonblocking: false, flags } if flags.is_empty())
    );
    assert!(matches!(got[5], Action::Close));
    assert!(matches!(got[6], Action::Accept { name: None, nonblocking: false }));
    assert!(matches!(got[7], Action::Close));
    assert!(matches!(got[8], Action::Close));
}

#[test]
fn a_nonblocking_accept_and_a_poll_for_errors_only() {
    // Found by the issue-12 cases: neither could be written.
    let got = actions(
        "server:\n  - listen: { port: 9000 }\n  - accept: { nonblocking: true }\n  - accept: { nonblocking: false }\n  \
         - poll: { events: [], timeout: 1s }\n",
    );
    assert!(matches!(got[1], Action::Accept { name: None, nonblocking: true }));
    assert!(matches!(got[2], Action::Accept { name: None, nonblocking: false }));
    assert!(matches!(&got[3], Action::Poll { events, .. } if events.is_empty()));
}

#[test]
fn socket_options_in_every_form() {
    let got = actions(
        "client:\n  - socket: { SO_KEEPALIVE: true, TCP_NODELAY: false, SO_LINGER: 5, SO_RCVBUF: 65536 }\n\
         \x20 - socket: {}\n  - setsockopt: { TCP_USER_TIMEOUT: 5000, SO_LINGER: { on: false } }\n  - getsockopt: SO_ERROR\n  - getsockopt: TCP_MAXSEG\n",
    );
    match &got[0] {
        Action::Socket { options, .. } => assert_eq!(
            options,
            &vec![
                SockOpt { name: SockOptName::SO_KEEPALIVE, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::TCP_NODELAY, value: SockOptValue::Int(0) },
                SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: true, seconds: 5 } },
                SockOpt { name: SockOptName::SO_RCVBUF, value: SockOptValue::Int(65536) },
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(&got[1], Action::Socket { options, .. } if options.is_empty()));
    match &got[2] {
        Action::SetOpt { options } => assert_eq!(
            options,
            &vec![
                SockOpt { name: SockOptName::TCP_USER_TIMEOUT, value: SockOptValue::Int(5000) },
                SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: false, seconds: 0 } },
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(got[3], Action::GetOpt { option: SockOptName::SO_ERROR }));
    assert!(matches!(got[4], Action::GetOpt { option: SockOptName::TCP_MAXSEG }));
}

#[test]
fn timeouts_flags_and_nonblocking_reads() {
    let got = actions(
        "client:\n  - socket: { SO_RCVTIMEO: 500ms, SO_SNDTIMEO: 0s, TCP_CORK: true, IP_TOS: 16 }\n\
         \x20 - recv: { max: 10, nonblocking: true }\n  - recv: { nonblocking: false }\n",
    );
    match &got[0] {
        Action::Socket { options, .. } => assert_eq!(
            options,
            &vec![
                SockOpt { name: SockOptName::SO_RCVTIMEO, value: SockOptValue::Timeout(Duration::from_millis(500)) },
                SockOpt { name: SockOptName::SO_SNDTIMEO, value: SockOptValue::Timeout(Duration::ZERO) },
                SockOpt { name: SockOptName::TCP_CORK, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::IP_TOS, value: SockOptValue::Int(16) },
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&got[1], Action::Recv { max: 10, until_eof: false, nonblocking: true, flags } if flags.is_empty())
    );
    assert!(
        matches!(&got[2], Action::Recv { max: 65536, until_eof: false, nonblocking: false, flags } if flags.is_empty())
    );
    refused("description: d\nclient:\n  - socket: { SO_RCVTIMEO: 5 }\n", 3, 28, "SO_RCVTIMEO: ");
    refused("description: d\nclient:\n  - socket: { IP_TOS: 256 }\n", 3, 23, "IP_TOS");
    refused("description: d\nclient:\n  - socket: { IP_TTL: 0 }\n", 3, 23, "IP_TTL");
    let info = steps(
        "client:\n  - getsockopt: TCP_INFO\n    expect: { tcp_info: { snd_cwnd: 10, rto: { min: 200ms }, total_retrans: { max: 3 } } }\n",
    );
    assert!(matches!(info[0].action, Action::GetTcpInfo));
    assert_eq!(
        info[0].expect.outcome,
        Some(ExpectedOutcome::TcpInfo(vec![
            tcp_info::Bound { field: "snd_cwnd", min: Some(10), max: Some(10) },
            tcp_info::Bound { field: "rto", min: Some(200_000), max: None },
            tcp_info::Bound { field: "total_retrans", min: None, max: Some(3) },
        ]))
    );
    let getsockopt = "description: d\nclient:\n  - getsockopt: TCP_INFO\n    expect: ";
    refused(&format!("{getsockopt}{{ tcp_info: {{ snd_cwd: 10 }} }}\n"), 4, 27, "did you mean snd_cwnd?");
    refused(&format!("{getsockopt}{{ tcp_info: {{ rto: 5 }} }}\n"), 4, 32, "tcp_info rto");
    refused(&format!("{getsockopt}{{ tcp_info: {{ lost: {{ min: 3, max: 1 }} }} }}\n"), 4, 48, "max is below min");
    refused(&format!("{getsockopt}{{ value: 3 }}\n"), 4, 15, "TCP_INFO reads as fields");
    refused(
        "description: d\nclient:\n  - getsockopt: TCP_MAXSEG\n    expect: { tcp_info: { lost: 0 } }\n",
        4,
        15,
        "only fits `getsockopt: TCP_INFO`",
    );
    refused("description: d\nclient:\n  - getsockopt: TCP_INFOS\n", 3, 17, "and TCP_INFO");
    match &actions("client:\n  - socket: { IP_RECVERR: true, SO_OOBINLINE: 1, IP_TTL: 64 }\n")[0] {
        Action::Socket { options, .. } => assert_eq!(
            options,
            &vec![
                SockOpt { name: SockOptName::IP_RECVERR, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::SO_OOBINLINE, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::IP_TTL, value: SockOptValue::Int(64) },
            ]
        ),
        other => panic!("{other:?}"),
    }
    let flagged = actions(
        "client:\n  - send: { bytes: 1, flags: [MSG_MORE, MSG_OOB, MSG_MORE] }\n  - recv: { flags: MSG_PEEK }\n",
    );
    assert!(matches!(&flagged[0], Action::Send { flags, .. } if flags == &vec![MsgFlag::Oob, MsgFlag::More]));
    assert!(matches!(&flagged[1], Action::Recv { flags, .. } if flags == &vec![MsgFlag::Peek]));
    refused(
        "description: d\nclient:\n  - send: { bytes: 1, flags: [MSG_OOB, MSG_PEEK] }\n",
        3,
        40,
        "unknown send flag \"MSG_PEEK\"; allowed: MSG_OOB, MSG_MORE",
    );
    refused(
        "description: d\nclient:\n  - recv: { until: eof, flags: MSG_PEEK }\n",
        3,
        32,
        "MSG_PEEK cannot read `until: eof`",
    );
    let addressed =
        actions("client:\n  - connect: { to: 10.0.0.9, port: 9000 }\n  - connect: { to: 10.0.0.2, port: 9000 }\n");
    assert!(matches!(&addressed[0], Action::Connect { to: None, address, .. } if address.to_string() == "10.0.0.9"));
    assert!(matches!(&addressed[1], Action::Connect { to: Some(HostId::Server), .. }));
    refused(
        "description: d\nclient:\n  - connect: { to: 10.0.0.256, port: 9000 }\n",
        3,
        20,
        "unknown host \"10.0.0.256\"; hosts are: client, server; or an IPv4 or IPv6 address",
    );
    let plan = plan(
        "description: d\nclient:\n  - getsockopt: SO_RCVBUF\n    expect: { value: 131072 }\n  - getsockopt: SO_RCVTIMEO\n    expect: { value: 1500ms }\n",
    );
    let values: Vec<_> = plan.hosts[0].steps.iter().map(|step| step.expect.outcome.clone()).collect();
    assert_eq!(
        values,
        [
            Some(ExpectedOutcome::Value(SockOptValue::Int(131072))),
            Some(ExpectedOutcome::Value(SockOptValue::Timeout(Duration::from_millis(1500))))
        ]
    );
    refused(
        "description: d\nclient:\n  - getsockopt: SO_ERROR\n    expect: { value: 0 }\n",
        4,
        15,
        "SO_ERROR reads as a result",
    );
    refused(
        "description: d\nclient:\n  - read: { max: 10 }\n    expect: { value: 10 }\n",
        4,
        15,
        "`value` only fits getsockopt steps; this is a recv step",
    );
    refused("description: d\nclient:\n  - getsockopt: TCP_KEEPIDLE\n    expect: { value: 0 }\n", 4, 22, "TCP_KEEPIDLE");
    let congestion = actions("client:\n  - setsockopt: { TCP_CONGESTION: reno }\n");
    let reno = SockOpt { name: SockOptName::TCP_CONGESTION, value: SockOptValue::Algorithm("reno") };
    assert!(matches!(&congestion[0], Action::SetOpt { options } if options == &vec![reno]));
    refused(
        "description: d\nclient:\n  - setsockopt: { TCP_CONGESTION: cubik }\n",
        3,
        35,
        "unknown congestion control \"cubik\"; did you mean cubic? allowed: bbr, bic,",
    );
    refused(
        "description: d\nclient:\n  - recv: { until: eof, nonblocking: true }\n",
        3,
        38,
        "a nonblocking recv cannot read `until: eof`",
    );
}

#[test]
fn connect_bind_listen_poll() {
    let got = actions(
        "client:\n  - bind: { port: 5555 }\n  - connect: { port: \"9000\", nonblocking: true }\n\
         \x20 - poll: { events: [POLLOUT, POLLERR, POLLOUT], timeout: 0s }\n  - poll: { events: POLLIN, timeout: 3s }\n\
         server:\n  - listen: { port: 9000 }\n  - connect: { to: server, port: 22 }\n",
    );
    assert!(matches!(got[0], Action::Bind { port: 5555, .. }));
    assert!(matches!(got[1], Action::Connect { to: Some(HostId::Server), port: 9000, nonblocking: true, .. }));
    match &got[2] {
        Action::Poll { events, timeout } => {
            assert_eq!(events, &vec![PollEvent::Out, PollEvent::Err]);
            assert_eq!(*timeout, Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&got[3], Action::Poll { events, timeout } if events == &vec![PollEvent::In] && *timeout == secs(3))
    );
    assert!(matches!(got[4], Action::Listen { port: Some(9000), backlog: 128, .. }));
    assert!(matches!(got[5], Action::Connect { to: Some(HostId::Server), port: 22, nonblocking: false, .. }));
}

#[test]
fn connect_defaults_to_the_peer() {
    let got = actions("server:\n  - connect: { port: 9000 }\nclient:\n  - connect: { port: 9000 }\n");
    assert!(matches!(got[0], Action::Connect { to: Some(HostId::Server), .. }), "client connects to server");
    assert!(matches!(got[1], Action::Connect { to: Some(HostId::Client), .. }), "server connects to client");
}

#[test]
fn send_and_recv_forms() {
    let got = actions(
        "client:\n  - send: { bytes: 1000 }\n  - write: { bytes: 10, repeat: 5, every: 200ms }\n\
         \x20 - send: { bytes: 65536, repeat: forever, until: would-block }\n  - write: { bytes: 1, until: error }\n\
         \x20 - read: { max: 10 }\n  - recv: { until: eof }\n",
    );
    assert!(matches!(got[0], Action::Send { bytes: 1000, repeat: SendRepeat::Times(1), every: None, until: None, .. }));
    assert!(
        matches!(got[1], Action::Send { bytes: 10, repeat: SendRepeat::Times(5), every: Some(d), until: None, .. } if d == ms(200))
    );
    assert!(matches!(
        got[2],
        Action::Send { bytes: 65536, repeat: SendRepeat::Forever, every: None, until: Some(SendUntil::WouldBlock), .. }
    ));
    assert!(matches!(
        got[3],
        Action::Send { bytes: 1, repeat: SendRepeat::Times(1), until: Some(SendUntil::Error), .. }
    ));
    assert!(
        matches!(&got[4], Action::Recv { max: 10, until_eof: false, nonblocking: false, flags } if flags.is_empty())
    );
    assert!(
        matches!(&got[5], Action::Recv { max: 65536, until_eof: true, nonblocking: false, flags } if flags.is_empty())
    );
}

#[test]
fn waits_for_a_listening_port() {
    let got = actions(
        "client:\n  - wait: { listening: 7000 }\n  - wait: { listening: 7001, host: client }\n\
         server:\n  - wait: { listening: 9, host: server }\n",
    );
    assert!(matches!(got[0], Action::WaitListening { host: HostId::Server, port: 7000 }), "the peer by default");
    assert!(matches!(got[1], Action::WaitListening { host: HostId::Client, port: 7001 }), "its own host");
    assert!(matches!(got[2], Action::WaitListening { host: HostId::Server, port: 9 }));
    let text = |wait: &str| {
        format!("description: d\nclient:\n  - wait: {wait}\nserver:\n  - listen: {{ port: 1 }}\n    name: l\n")
    };
    refused(&text("{ listening: 7000, for: server.l }"), 3, 30, "not both: move `for` into a wait step of its own");
    refused(&text("{ edge: started, listening: 7000 }"), 3, 13, "not both: move `edge`");
    refused(&text("{ host: server }"), 3, 13, "\"host\" goes with `listening`");
    refused(&text("{ listening: 0 }"), 3, 24, "listening port");
    refused(&text("{ listening: 7000, host: sever }"), 3, 36, "unknown host \"sever\"; did you mean server?");
    refused(&text("{}"), 3, 11, "(or `listening: PORT`, a port to wait for)");
}

#[test]
fn errors_expectations_need_a_traced_exec_on_their_host() {
    let text = |exec: &str, errors: &str| {
        format!("description: d\nclient:\n  - exec: {exec}\n    name: fetch\nexpect:\n  errors:\n    - {errors}\n")
    };
    let traced = plan(&text(
        "{ program: fetch, trace: true }",
        "{ host: client, port: 7000, errno: EAGAIN, call: recvfrom, at: [2s], within: [1s, 3s], since: client.fetch }",
    ));
    let errors = &traced.expect.errors[0];
    assert_eq!(
        (errors.host, errors.port, errors.errno, errors.call.as_deref()),
        (HostId::Client, Some(7000), Some(Errno(libc::EAGAIN)), Some("recvfrom"))
    );
    assert_eq!((errors.count, errors.at.clone(), errors.window), (Some(1), vec![secs(2)], Some((secs(1), secs(3)))));
    assert!(matches!(&traced.hosts[0].steps[0].action, Action::Exec(exec) if exec.trace));
    let so_error =
        plan(&text("{ program: fetch, trace: true }", "{ host: client, call: getsockopt SO_ERROR, count: 2 }"));
    assert_eq!(so_error.expect.errors[0].call.as_deref(), Some("getsockopt SO_ERROR"));

    refused(&text("{ program: fetch }", "{ host: client, count: 1 }"), 7, 15, "client has none: add `trace: true`");
    refused(&text("{ program: fetch, trace: true }", "{ host: server, count: 1 }"), 7, 15, "server has none");
    refused(&text("{ program: fetch, trace: true }", "{ host: client }"), 7, 7, "an errors expectation needs `count`");
    refused(
        &text("{ program: fetch, trace: true }", "{ host: client, errno: EAGIAN, count: 1 }"),
        7,
        30,
        "did you mean EAGAIN?",
    );
    refused(
        &text("{ program: fetch, trace: true }", "{ host: client, call: \"read()\", count: 1 }"),
        7,
        29,
        "not a system call name",
    );
    refused(
        &text("{ program: fetch, trace: true, background: true }", "{ host: client, count: 1 }"),
        3,
        29,
        "`trace: true` needs a foreground exec",
    );
    refused(
        &text("{ program: fetch, trace: yes }", "{ host: client, count: 1 }"),
        3,
        36,
        "trace must be true or false",
    );
}

#[test]
fn shutdown_sleep_and_wait_forms() {
    let got = actions(
        "client:\n  - shutdown: RD\n  - shutdown: SHUT_WR\n  - shutdown: RDWR\n  - sleep: 8s\n\
         \x20 - wait: server.accept\n  - wait: { for: server.accept, edge: started }\n  - wait: { for: server.accept }\n\
         server:\n  - listen: { port: 1 }\n  - accept: {}\n    name: accept\n",
    );
    assert!(matches!(got[0], Action::Shutdown { how: ShutdownHow::Rd }));
    assert!(matches!(got[1], Action::Shutdown { how: ShutdownHow::Wr }));
    assert!(matches!(got[2], Action::Shutdown { how: ShutdownHow::Rdwr }));
    assert!(matches!(got[3], Action::Sleep { duration } if duration == secs(8)));
    assert!(
        matches!(&got[4], Action::Wait { step, edge: StepEdge::Finished } if *step == StepRef { host: HostId::Server, index: 1, name: "accept".into() })
    );
    assert!(matches!(&got[5], Action::Wait { step, edge: StepEdge::Started } if step.host == HostId::Server));
    assert!(matches!(&got[6], Action::Wait { edge: StepEdge::Finished, .. }));
}

#[test]
fn exec_with_everything() {
    let got = actions(
        "timeout: 50s\nclient:\n  - exec:\n      program: curl\n      args: [\"-s\", 3, http://10.0.0.2:9000/]\n\
         \x20     env: { ZED: z, LANG: C }\n      stdin: hello\n      timeout: 30s\n      background: true\n\
         \x20     stdout: [\"^HTTP/1\\\\.1 200\", ok]\n      stderr: refused\n    expect: { exit: 7 }\n\
         \x20 - exec: { program: true }\n",
    );
    match &got[0] {
        Action::Exec(exec) => {
            assert_eq!(exec.program, "curl");
            assert_eq!(exec.args, vec!["-s", "3", "http://10.0.0.2:9000/"]);
            assert_eq!(exec.env, vec![("LANG".into(), "C".into()), ("ZED".into(), "z".into())]);
            assert_eq!(exec.stdin.as_deref(), Some("hello"));
            assert_eq!(exec.timeout, secs(30));
            assert!(exec.background);
            assert_eq!(exec.stdout, vec!["^HTTP/1\\.1 200", "ok"]);
            assert_eq!(exec.stderr, vec!["refused"]);
        }
        other => panic!("{other:?}"),
    }
    match &got[1] {
        Action::Exec(exec) => {
            assert_eq!(exec.program, "true");
            assert_eq!(exec.timeout, secs(50), "defaults to the scenario timeout");
            assert!(!exec.background && exec.args.is_empty() && exec.env.is_empty() && exec.stdin.is_none());
        }
        other => panic!("{other:?}"),
    }
    let steps = steps("client:\n  - exec: { program: sh }\n    expect: { exit: 7 }\n");
    assert_eq!(steps[0].expect.outcome, Some(ExpectedOutcome::Exit(7)));
}

/// The first exec step of `text` parsed with `variables` set, from the file /s/demo/x.yaml.
fn exec_with(text: &str, variables: &Variables) -> Result<ExecPlan, ScenarioError> {
    let plan = parse_with("x", Path::new("/s/demo/x.yaml"), text, variables)?;
    match &plan.hosts[0].steps[0].action {
        Action::Exec(exec) => Ok(exec.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exec_variables_resolve_in_program_args_env_and_stdin() {
    let variables = Variables::default().bin("fetch", "/t/debug/fetch").env("PORT", "7000");
    let exec = exec_with(
        "description: d\nclient:\n  - exec:\n      program: ${CARGO_BIN_EXE_fetch}\n\
         \x20     args: [\"10.0.0.2:${env:PORT}\", '${scenario_dir}/req.txt', \"$${HOME}\"]\n\
         \x20     env: { DATA: \"${scenario_dir}\" }\n      stdin: |\n        port ${env:PORT}\n\
         \x20     stdout: '\\$\\{env:PORT\\}'\n",
        &variables,
    )
    .unwrap();
    assert_eq!(exec.program, "/t/debug/fetch");
    assert_eq!(exec.args, vec!["10.0.0.2:7000", "/s/demo/req.txt", "${HOME}"]);
    assert_eq!(exec.env, vec![("DATA".into(), "/s/demo".into())]);
    assert_eq!(exec.stdin.as_deref(), Some("port 7000\n"));
    assert_eq!(exec.stdout, vec!["\\$\\{env:PORT\\}"], "patterns are regular expressions, not substituted");
}

#[test]
fn an_unresolved_variable_is_pointed_at_inside_its_string() {
    let variables = Variables::default().bin("fetch", "/t/debug/fetch").env("PORT", "7000");
    let error_at = |text: &str| {
        let error = exec_with(&format!("description: d\nclient:\n  - exec:\n{text}"), &variables).unwrap_err();
        (error.location.map(|l| (l.line, l.column)), error.message)
    };
    let (location, message) = error_at("      program: ${CARGO_BIN_EXE_fecth}\n");
    assert_eq!(location, Some((4, 16)));
    assert!(message.contains("no binary \"fecth\" is set; did you mean ${CARGO_BIN_EXE_fetch}?"), "{message}");
    assert!(
        message.contains("variables set: ${scenario_dir}, ${CARGO_BIN_EXE_fetch}, ${env:NAME} for the 1"),
        "{message}"
    );
    let (location, message) =
        error_at("      program: sh\n      args: [\"-c\", \"echo ${env:PORT} ${env:PORT} ${env:NOPE}\"]\n");
    assert_eq!(location, Some((5, 50)), "the third variable of the second argument: {message}");
    assert!(message.starts_with("environment variable NOPE is not set (${env:NOPE})"), "{message}");
    let (location, _) = error_at("      program: sh\n      env: { A: 'x ${env:PORT} ${nope}' }\n");
    assert_eq!(location, Some((5, 32)));
    let (location, message) = error_at("      program: cat\n      stdin: |\n        one\n        two ${env:PORT\n");
    assert_eq!(location, Some((7, 13)));
    assert!(message.contains("no `}` closes"), "{message}");
    let (location, _) = error_at("      program: cat\n      args: \"\\x24{nope}\"\n");
    assert_eq!(location, Some((5, 13)), "written with an escape: the string itself");
    let (_, message) = error_at("      program: ${env:EMPTY}\n");
    assert!(message.contains("EMPTY is not set"), "{message}");
    let empty = Variables::default().env("EMPTY", "");
    let error = exec_with("description: d\nclient:\n  - exec: { program: \"${env:EMPTY}\" }\n", &empty).unwrap_err();
    assert_eq!(error.location, Some(at(3, 22)));
    assert!(error.message.contains("program is empty once its variables are resolved"), "{error}");
}

#[test]
fn step_expectations_in_every_form() {
    let steps = steps(
        "tolerance: 100ms\nclient:\n  - connect: { port: 1 }\n    expect: ok\n  - connect: { port: 1 }\n    expect: ECONNREFUSED\n\
         \x20 - read: { max: 5 }\n    expect: eof\n  - read: { max: 5 }\n    expect: 5\n\
         \x20 - poll: { events: [POLLIN], timeout: 1s }\n    expect: timeout\n\
         \x20 - poll: { events: [POLLIN], timeout: 1s }\n    expect: { events: [POLLIN, POLLRDHUP], at: 3s }\n\
         \x20 - poll: { events: [POLLOUT], timeout: 9s }\n    expect: { events_include: [POLLHUP, POLLERR] }\n\
         \x20 - send: { bytes: 10 }\n    expect: { result: 10, after: 2s, tolerance: 1s }\n  - close: {}\n    expect: { at: 4s }\n",
    );
    let outcomes: Vec<_> = steps.iter().map(|s| s.expect.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        vec![
            Some(ExpectedOutcome::Ok),
            Some(ExpectedOutcome::Error(Errno(libc::ECONNREFUSED))),
            Some(ExpectedOutcome::Eof),
            Some(ExpectedOutcome::Bytes(5)),
            Some(ExpectedOutcome::Timeout),
            Some(ExpectedOutcome::Events(vec![PollEvent::In, PollEvent::RdHup])),
            Some(ExpectedOutcome::EventsInclude(vec![PollEvent::Err, PollEvent::Hup])),
            Some(ExpectedOutcome::Bytes(10)),
            None,
        ]
    );
    assert_eq!(steps[5].expect.at, Some(secs(3)));
    assert_eq!(steps[5].expect.tolerance, Tolerance::either_side(ms(100)));
    assert_eq!(steps[7].expect.after, Some(secs(2)));
    assert_eq!(steps[7].expect.tolerance, Tolerance::either_side(secs(1)));
    assert_eq!(steps[8].expect.at, Some(secs(4)));
    assert_eq!(steps[1].expect.location, at(7, 13));
}

#[test]
fn triggers_in_every_form() {
    let plan = plan(
        "description: d\nclient:\n  - connect: { port: 9000 }\n    name: connect\nfaults:\n\
         \x20 - { name: a, at: server, action: drop, from: 2s, until: client.connect }\n\
         \x20 - { name: b, at: server, action: drop, from: { at: 1.5s }, until: { after: client.connect, delay: 1s } }\n\
         \x20 - { name: c, at: server, action: drop, from: { started: client.connect } }\n\
         \x20 - { name: d, at: server, action: drop, from: { state: ESTAB, host: client, delay: 10ms } }\n\
         \x20 - { name: e, at: server, action: drop, from: { packet: { from: server, flags: SA }, host: client } }\n\
         \x20 - { name: f, at: server, action: drop, from: { packet: { flags: R, from: client } } }\n\
         \x20 - { name: g, at: server, action: drop, from: { bytes: 1000, host: client, delay: 0s } }\n",
    );
    let trigger = |i: usize| (plan.faults[i].from.clone(), plan.faults[i].until.clone());
    let connect = |edge, delay| Trigger::Step {
        step: StepRef { host: HostId::Client, index: 0, name: "connect".into() },
        edge,
        delay,
    };
    assert_eq!(trigger(0), (Trigger::At(secs(2)), Some(connect(StepEdge::Finished, Duration::ZERO))));
    assert_eq!(trigger(1), (Trigger::At(ms(1500)), Some(connect(StepEdge::Finished, secs(1)))));
    assert_eq!(trigger(2), (connect(StepEdge::Started, Duration::ZERO), None));
    assert_eq!(trigger(3).0, Trigger::State { host: HostId::Client, state: TcpState::Established, delay: ms(10) });
    assert_eq!(
        trigger(4).0,
        Trigger::Packet {
            host: HostId::Client,
            filter: PacketFilter {
                from: Some(HostId::Server),
                flags: Some(TcpFlagsMatch::exactly(0x12)),
                len: None,
                ..PacketFilter::default()
            },
            nth: 1,
            delay: Duration::ZERO
        }
    );
    assert!(
        matches!(trigger(5).0, Trigger::Packet { host: HostId::Client, nth: 1, .. }),
        "host defaults to packet.from"
    );
    assert_eq!(trigger(6).0, Trigger::Bytes { host: HostId::Client, bytes: 1000, delay: Duration::ZERO });
}

#[test]
fn fault_actions_and_matches() {
    let plan = plan(
        "description: d\nfaults:\n  - { name: a, at: client, action: drop }\n\
         \x20 - { name: b, at: client, action: { reject: icmp-port-unreachable } }\n\
         \x20 - { name: c, at: client, action: { reject: icmp-host-unreachable }, match: { protocol: udp, dport: 53 } }\n\
         \x20 - { name: d, at: client, action: { reject: icmp-net-unreachable }, match: { protocol: icmp } }\n\
         \x20 - { name: e, at: client, action: { reject: icmp-admin-prohibited }, match: { flags: { mask: SF, value: S } } }\n\
         \x20 - { name: f, at: client, action: reject-tcp-reset, match: { payload: nonempty } }\n\
         \x20 - { name: g, at: client, action: reject-icmp-port-unreachable, direction: egress }\n",
    );
    let actions: Vec<FaultAction> = plan.faults.iter().map(|f| f.action).collect();
    assert_eq!(
        actions,
        vec![
            FaultAction::Drop,
            FaultAction::RejectIcmpPortUnreachable,
            FaultAction::RejectIcmpHostUnreachable,
            FaultAction::RejectIcmpNetUnreachable,
            FaultAction::RejectIcmpAdminProhibited,
            FaultAction::RejectTcpReset,
            FaultAction::RejectIcmpPortUnreachable,
        ]
    );
    assert_eq!(plan.faults[0].matcher, PacketMatch::default());
    assert_eq!(plan.faults[0].from, Trigger::At(Duration::ZERO), "faults are on from the start by default");
    assert_eq!(
        plan.faults[2].matcher,
        PacketMatch { protocol: Some(Protocol::Udp), dport: Some(53), ..PacketMatch::default() }
    );
    assert_eq!(plan.faults[3].matcher.protocol, Some(Protocol::Icmp));
    assert_eq!(plan.faults[4].matcher.tcp_flags, Some(TcpFlagsMatch { mask: 0x03, value: 0x02 }));
    assert_eq!(plan.faults[4].matcher.protocol, Some(Protocol::Tcp), "flags imply tcp");
    assert_eq!(plan.faults[5].matcher.payload, Some(PayloadMatch::NonEmpty));
    assert_eq!(plan.faults[5].matcher.protocol, Some(Protocol::Tcp));
    assert_eq!(plan.faults[6].direction, Direction::Egress);
}

#[test]
fn packet_flags_with_a_mask_in_expectations_and_triggers() {
    let plan = plan(
        "description: d\nfaults:\n  - name: f\n    at: server\n    action: drop\n    from: { packet: { from: client, \
         flags: { mask: FR, value: F } } }\nexpect:\n  packets:\n    - { from: client, flags: { mask: FR, value: F }, \
         count: 1 }\n",
    );
    let fin_without_rst = Some(TcpFlagsMatch { mask: 0x01 | 0x04, value: 0x01 });
    assert_eq!(plan.expect.packets[0].filter.flags, fin_without_rst);
    match &plan.faults[0].from {
        Trigger::Packet { filter, .. } => assert_eq!(filter.flags, fin_without_rst),
        other => panic!("expected a packet trigger, got {other:?}"),
    }
}

#[test]
fn a_run_shorter_than_the_default_tolerance_gets_its_length_as_tolerance() {
    // Found by fuzzing: `timeout: 10ms` left the default 250 ms tolerance longer than the whole run.
    assert_eq!(plan("description: d\ntimeout: 10ms\n").tolerance, Tolerance::either_side(Duration::from_millis(10)));
    assert_eq!(
        plan("description: d\n").tolerance,
        Tolerance::either_side(crate::scenario::validate::DEFAULT_TOLERANCE)
    );
}

#[test]
fn tcp_flag_letters() {
    let plan = plan(
        "description: d\nexpect:\n  packets:\n    - { flags: S, count: 1 }\n    - { flags: SA, count: 1 }\n\
         \x20   - { flags: S., count: 1 }\n    - { flags: P., count: 1 }\n    - { flags: FUEWR, count: 1 }\n",
    );
    let flags: Vec<Option<TcpFlagsMatch>> = plan.expect.packets.iter().map(|p| p.filter.flags).collect();
    let exactly = |bits| Some(TcpFlagsMatch::exactly(bits));
    assert_eq!(
        flags,
        vec![exactly(0x02), exactly(0x12), exactly(0x12), exactly(0x18), exactly(0x01 | 0x20 | 0x40 | 0x80 | 0x04)]
    );
}

#[test]
fn run_expectations_forms() {
    let plan = plan(
        "description: d\ntolerance: 100ms\nexpect:\n  packets:\n    - { from: client, flags: R, at: 14s, tolerance: 1s }\n\
         \x20   - { count: 2, within: [1s, 1s] }\n  states:\n    - host: client\n      sequence: [ESTABLISHED, fin-wait-1, CLOSE]\n\
         \x20 timers:\n    - { host: server, timer: on }\n    - { host: client, timer: persist, retrans: 0 }\n",
    );
    let packets = &plan.expect.packets;
    assert_eq!(packets[0].at, vec![secs(14)]);
    assert_eq!(packets[0].count, Some(1));
    assert_eq!(packets[0].tolerance, Tolerance::either_side(secs(1)));
    assert_eq!(packets[1].filter, PacketFilter::default());
    assert_eq!(packets[1].window, Some((secs(1), secs(1))));
    assert_eq!(packets[1].tolerance, Tolerance::either_side(ms(100)));
    let states: Vec<TcpState> = plan.expect.states[0].sequence.iter().map(|s| s.state).collect();
    assert_eq!(states, vec![TcpState::Established, TcpState::FinWait1, TcpState::Close]);
    assert_eq!(plan.expect.states[0].port, None);
    assert_eq!(plan.expect.states[0].tolerance, Tolerance::either_side(ms(100)));
    assert_eq!(plan.expect.timers[0].timer, TimerKind::On);
    assert_eq!(plan.expect.timers[0].retrans, None);
    assert_eq!(plan.expect.timers[1].retrans, Some(0));
    assert_eq!(plan.expect.timers[1].location, at(12, 7));
}

#[test]
fn aliases_are_expanded() {
    let plan = plan(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, match: &web { protocol: tcp, dport: 80 } }\n\
         \x20 - { name: b, at: client, action: drop, match: *web }\n",
    );
    assert_eq!(plan.faults[1].matcher.dport, Some(80));
}

#[test]
fn sysctls_are_sorted_scalars() {
    let plan = plan(
        "description: d\nsysctl:\n  server:\n    net.ipv4.tcp_retries2: 3\n    net.core.somaxconn: \"16\"\n    net.ipv4.conf.all.rp_filter: 0\n",
    );
    let names: Vec<(&str, &str)> = plan.hosts[1].sysctls.iter().map(|s| (s.name.as_str(), s.value.as_str())).collect();
    assert_eq!(
        names,
        vec![("net.core.somaxconn", "16"), ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.tcp_retries2", "3")]
    );
    assert_eq!(plan.hosts[1].sysctls[2].proc_path(), PathBuf::from("/proc/sys/net/ipv4/tcp_retries2"));
}

#[test]
fn sysctl_allowlist_is_per_namespace_only() {
    let allowed: Vec<&str> = validate::allowed_sysctls().collect();
    assert!(allowed.len() > 300, "{} entries", allowed.len());
    for name in [
        "net.ipv4.tcp_syn_retries",
        "net.ipv4.tcp_keepalive_time",
        "net.core.somaxconn",
        "net.ipv4.conf.default.rp_filter",
    ] {
        assert!(allowed.contains(&name), "{name} missing");
    }
    for entry in &allowed {
        let allowed_prefix =
            ["net.ipv4.", "net.ipv6.", "net.core.", "net.netfilter."].iter().any(|p| entry.starts_with(p));
        assert!(allowed_prefix, "{entry}");
        for tree in ["net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh."] {
            if let Some(rest) = entry.strip_prefix(tree) {
                assert!(rest.starts_with("all.") || rest.starts_with("default."), "per-interface entry {entry}");
            }
        }
    }
}

#[test]
fn names_come_from_the_path_under_root() {
    let root = Path::new("/s");
    assert_eq!(scenario_name(root, Path::new("/s/keepalive/idle.yaml")), "keepalive/idle");
    assert_eq!(scenario_name(root, Path::new("/s/a/b/c.yml")), "a/b/c");
    assert_eq!(scenario_name(root, Path::new("/s/top.yaml")), "top");
    assert_eq!(scenario_name(root, Path::new("/elsewhere/x/other.yaml")), "other");
    assert_eq!(scenario_name(Path::new("/s/top.yaml"), Path::new("/s/top.yaml")), "top");
    assert_eq!(scenario_name(root, Path::new("/s/keepalive/../keepalive/./idle.yaml")), "keepalive/idle");
    assert_eq!(scenario_name(root, Path::new("/s/a/../top.yaml")), "top");
    // A `..` that leaves the root stays, for the report folder to refuse.
    assert_eq!(scenario_name(root, Path::new("/s/../x/other.yaml")), "../x/other");
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("netfault-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn discover_finds_yaml_files_sorted() {
    let dir = TempDir::new("discover");
    for file in ["b/z.yaml", "b/a.yml", "a.yaml", "notes.txt", "c/d/e.yaml", "c/README.md"] {
        let path = dir.0.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "description: d\n").unwrap();
    }
    let found: Vec<String> = discover(&dir.0)
        .unwrap()
        .files
        .iter()
        .map(|p| p.strip_prefix(&dir.0).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(found, ["a.yaml", "b/a.yml", "b/z.yaml", "c/d/e.yaml"]);
    let single = dir.0.join("a.yaml");
    assert_eq!(discover(&single).unwrap().files, vec![single.clone()]);
    assert!(discover(&dir.0.join("missing")).is_err());

    let plan = load(&dir.0, &dir.0.join("c/d/e.yaml"), &Variables::default()).unwrap();
    assert_eq!(plan.name, "c/d/e");
    assert_eq!(plan.file, dir.0.join("c/d/e.yaml"));
}

#[test]
fn discover_searches_each_folder_once_and_skips_what_is_not_a_file() {
    // Found by the issue-12 campaign: two symlink loops made the search run forever (2^40 paths), one loop ran
    // the same file 41 times, and a FIFO named x.yaml blocked the run reading it.
    let dir = TempDir::new("discover-loops");
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    std::fs::write(dir.0.join("sub/a.yaml"), "description: d\n").unwrap();
    std::os::unix::fs::symlink("..", dir.0.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(".", dir.0.join("sub/here")).unwrap();
    std::os::unix::fs::symlink("sub", dir.0.join("again")).unwrap();
    let fifo = dir.0.join("x.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let root = dir.0.clone();
    std::thread::spawn(move || done.send(discover(&root).unwrap()));
    let found = finished.recv_timeout(secs(10)).expect("the search ends");
    let relative: Vec<String> =
        found.files.iter().map(|p| p.strip_prefix(&dir.0).unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(relative.len(), 1, "one file, found once: {relative:?}");
    assert!(relative[0].ends_with("a.yaml"), "{relative:?}");
    assert_eq!(found.skipped.len(), 4, "{:?}", found.skipped);
    assert!(
        found.skipped.iter().any(|s| s.contains("x.yaml: skipped: not a regular file (a FIFO)")),
        "{:?}",
        found.skipped
    );
    let repeated = found.skipped.iter().filter(|s| s.contains("skipped: the same folder as")).count();
    assert_eq!(repeated, 3, "sub/up, sub/here and one of again / sub: {:?}", found.skipped);

    // Named directly, the FIFO is refused at once rather than waited on.
    let (done, finished) = std::sync::mpsc::channel();
    let root = dir.0.clone();
    std::thread::spawn(move || done.send(load(&root, &fifo, &Variables::default()).map(|_| ())));
    let error = finished.recv_timeout(secs(10)).expect("loading a FIFO does not block").unwrap_err();
    assert_eq!(error.message, "not a regular file (a FIFO): a scenario is a YAML file");
}

#[test]
fn control_characters_in_file_names_are_escaped_in_messages() {
    // Found by the issue-12 campaign: a file name holding a line break and `PASS` printed a forged result line.
    let dir = TempDir::new("control-name");
    let file = dir.0.join("x\nPASS  forged\u{1b}[2K.yaml");
    std::fs::write(&file, "description: d\nbogus: 1\n").unwrap();
    let shown = load(&dir.0, &file, &Variables::default()).unwrap_err().to_string();
    assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown:?}");
    assert!(shown.contains("x\\nPASS  forged\\u{1b}[2K.yaml:2:1: unknown key"), "{shown}");
}

#[test]
fn load_reports_unreadable_and_oversized_files() {
    let dir = TempDir::new("load");
    let missing = dir.0.join("missing.yaml");
    let error = load(&dir.0, &missing, &Variables::default()).unwrap_err();
    assert_eq!(error.file, missing);
    assert!(error.message.contains("cannot read the scenario file"), "{}", error.message);

    let big = dir.0.join("big.yaml");
    let mut text = String::from("description: d\n");
    while text.len() <= MAX_FILE_SIZE {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    let error = load(&dir.0, &big, &Variables::default()).unwrap_err();
    assert_eq!(error.location, Some(at(1, 1)));
    assert!(error.message.contains("larger than 1 MiB"), "{}", error.message);
}

#[test]
fn billion_laughs_fails_fast() {
    let mut text = String::from("description: d\nexpect:\n  packets:\n    - &p0 { count: 1 }\n");
    for level in 1..12 {
        let items = vec![format!("*p{}", level - 1); 9].join(", ");
        text.push_str(&format!("    - &p{level} [{items}]\n"));
    }
    let started = Instant::now();
    let error = parse_text(&text).unwrap_err();
    assert!(started.elapsed() < secs(1), "took {:?}", started.elapsed());
    assert!(error.message.contains("aliases (*name) expand this file to more than 100000 values"), "{}", error.message);
    assert_eq!(error.location.map(|l| l.line), Some(9), "level 5 is the first to pass 100000 values");
}

#[test]
fn wide_alias_bomb_fails_fast() {
    // One long list referenced from many places: few jumps for serde's own limit, but billions of values.
    let times = vec!["1s"; 30_000].join(", ");
    let mut text = format!("description: d\nexpect:\n  packets:\n    - {{ count: 1, at: &t [{times}] }}\n");
    for _ in 0..30_000 {
        text.push_str("    - { at: *t }\n");
    }
    assert!(text.len() < MAX_FILE_SIZE);
    let started = Instant::now();
    let error = parse_text(&text).unwrap_err();
    assert!(started.elapsed() < secs(2), "took {:?}", started.elapsed());
    assert!(error.message.contains("expand this file"), "{}", error.message);
    assert_eq!(error.location, Some(at(7, 13)), "the third copy passes 100000 values");
}

#[test]
fn an_alias_bomb_of_long_strings_fails_before_expanding() {
    // Found by the issue-12 campaign: few aliases of a long string pass the node limit; serde aborted on out of
    // memory expanding 90000 copies of 400 KB.
    let text = format!(
        "description: &a \"{}\"\nclient:\n  - exec: {{ program: true, args: [{}] }}\n",
        "x".repeat(400_000),
        vec!["*a"; 90_000].join(", ")
    );
    assert!(text.len() < MAX_FILE_SIZE);
    let started = Instant::now();
    let error = parse_text(&text).unwrap_err();
    assert!(started.elapsed() < secs(2), "took {:?}", started.elapsed());
    assert!(error.message.contains("expand this file to more than 4 MiB of text"), "{}", error.message);
    assert_eq!(error.location, Some(at(3, 35 + 4 * 9)), "the tenth copy passes 4 MiB");
}

#[test]
fn an_alias_bomb_of_slow_patterns_compiles_each_pattern_once() {
    // Found by the issue-12 campaign: 15000 aliases of one pattern that takes milliseconds to compile hung
    // `check` (over 100 s); each distinct pattern is compiled once.
    let pattern = format!("{}{}", "(a+)+".repeat(20), "[a-z]{1,100}".repeat(10));
    let text = format!(
        "description: d\nclient:\n  - exec: {{ program: true, stdout: [&p \"{pattern}\", {}] }}\n",
        vec!["*p"; 15_000].join(", ")
    );
    let started = Instant::now();
    let plan = parse_text(&text).unwrap();
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    let Action::Exec(exec) = &plan.host(HostId::Client).steps[0].action else { panic!("an exec step") };
    assert_eq!(exec.stdout.len(), 15_001);
}

/// Fuzz finding: after a lone `\r` libyaml counted lines the file does not have (error at 56:3 of 8 lines).
#[test]
fn line_breaks_other_than_lf_are_refused_where_they_are() {
    for (line_break, what) in [
        ("\r", "a carriage return (\\r) without a line feed"),
        ("\u{85}", "a next-line character (U+0085)"),
        ("\u{2028}", "a line separator (U+2028)"),
        ("\u{2029}", "a paragraph separator (U+2029)"),
    ] {
        let text = format!("description: d\nhosts:\n  cl{line_break}{line_break}ient: {{ address: 10.0.0.1/24 }}\n");
        refused(&text, 3, 5, what);
    }
    refused("description: d\r\nclient:\r\n  - clos\r", 3, 9, "carriage return");
    let plan = plan("description: d\r\nclient:\r\n  - close\r\n");
    assert!(matches!(plan.hosts[0].steps[0].action, Action::Close));
}

/// A step of a generated program for the deadlock check: a plain step, or a wait for a step of the peer.
#[derive(Clone, Copy, Debug)]
enum WaitStep {
    Close,
    Wait(usize, StepEdge),
}

/// The pairwise definition the deadlock check implements in O(n log n): the first wait (client's first, in step
/// order) whose target lies beyond a wait of the peer that in turn waits for a step beyond it.
fn first_deadlock(programs: &[Vec<WaitStep>; 2]) -> Option<(usize, usize, usize, usize, usize)> {
    let blocks = |blocker: usize, target: usize, edge: StepEdge| {
        blocker < target || (blocker == target && edge == StepEdge::Finished)
    };
    for host in 0..2 {
        for (index, step) in programs[host].iter().enumerate() {
            let WaitStep::Wait(target, edge) = *step else {
                continue;
            };
            for (other_index, other) in programs[1 - host].iter().enumerate() {
                let WaitStep::Wait(other_target, other_edge) = *other else {
                    continue;
                };
                if blocks(other_index, target, edge) && blocks(index, other_target, other_edge) {
                    return Some((host, index, target, other_index, other_target));
                }
            }
        }
    }
    None
}

#[test]
fn deadlock_check_finds_the_first_pairwise_deadlock() {
    let options: Vec<WaitStep> = std::iter::once(WaitStep::Close)
        .chain((0..3).flat_map(|t| [StepEdge::Started, StepEdge::Finished].map(move |edge| WaitStep::Wait(t, edge))))
        .collect();
    let hosts = ["client", "server"];
    let mut deadlocks = 0;
    // Pairs of 3-step programs from 7 kinds of step: 117649 scenarios, of which a prime stride keeps 1929.
    for combination in (0..7usize.pow(6)).step_by(61) {
        let mut code = combination;
        let mut programs: [Vec<WaitStep>; 2] = [Vec::new(), Vec::new()];
        for program in &mut programs {
            for _ in 0..3 {
                program.push(options[code % 7]);
                code /= 7;
            }
        }
        let mut text = String::from("description: d\n");
        for (host, program) in programs.iter().enumerate() {
            text.push_str(&format!("{}:\n", hosts[host]));
            for (i, step) in program.iter().enumerate() {
                let name = format!("{}{i}", &hosts[host][..1]);
                match step {
                    WaitStep::Close => text.push_str(&format!("  - {{ close: {{}}, name: {name} }}\n")),
                    WaitStep::Wait(target, edge) => text.push_str(&format!(
                        "  - {{ wait: {{ for: {}.{}{target}, edge: {} }}, name: {name} }}\n",
                        hosts[1 - host],
                        &hosts[1 - host][..1],
                        if *edge == StepEdge::Started { "started" } else { "finished" }
                    )),
                }
            }
        }
        match (first_deadlock(&programs), parse_text(&text)) {
            (None, Ok(_)) => {}
            (Some((host, index, target, other_index, other_target)), Err(error)) => {
                deadlocks += 1;
                let (own, peer) = (&hosts[host][..1], &hosts[1 - host][..1]);
                let message = format!(
                    "deadlock: this step waits for {}.{peer}{target}, but {} reaches that step only after its step \
                     {peer}{other_index} (wait), which waits for {}.{own}{other_target},",
                    hosts[1 - host],
                    hosts[1 - host],
                    hosts[host]
                );
                let line = 3 + host * 4 + index;
                assert_eq!(error.location, Some(at(line, 5)), "{error}\n{text}");
                assert!(error.message.starts_with(&message), "{error}\nexpected {message}\n{text}");
            }
            (expected, got) => panic!("expected deadlock {expected:?}, got {got:?}\n{text}"),
        }
    }
    assert!(deadlocks > 1000, "only {deadlocks} deadlocks among the programs");
}

/// Fuzz finding: libyaml refused a control character "at position 153" while the error said 1:1.
#[test]
fn characters_yaml_refuses_are_shown_where_they_are() {
    refused(
        "description: d\nclient:\n  - clo\u{e}se\n",
        3,
        8,
        "character U+000E is not allowed in YAML: remove it, or write it as the escape \"\\x0e\"",
    );
    refused("description: \"a\u{7f}\"\n", 1, 16, "character U+007F");
    refused("description: a\u{9b}\n", 1, 15, "character U+009B");
    refused(
        "description: a\u{ffff}\n",
        1,
        15,
        "character U+FFFF is not allowed in YAML: remove it, or write it as the escape \"\\uffff\"",
    );
    let plan = plan("description: \"tab\\there\\x0e\"\n");
    assert_eq!(plan.description, "tab\there\u{e}");
}

#[test]
fn deep_nesting_after_a_syntax_error_fails_fast() {
    // Found probing 1 MiB files: after an error only yaml-rust2 sees, libyaml (asked for a better message) took
    // 9 s on 20000 nested `{a: ` (minutes on a megabyte).
    let text = format!("description: \"x\ny\"\n{}", "{a: ".repeat(20_000));
    let started = Instant::now();
    let error = parse_text(&text).unwrap_err();
    assert!(started.elapsed() < secs(2), "took {:?}", started.elapsed());
    assert_eq!(error.location, Some(at(1, 14)));
    assert!(error.message.contains("invalid indentation in quoted scalar"), "{}", error.message);
}

/// Fuzz finding: yaml-rust2 placed an error at the end of the file one column past the last character (7:38 on a
/// line of 36 characters); minimized, it is 4:6 on a line of 4.
#[test]
fn positions_past_the_end_of_a_line_are_moved_back() {
    refused("&E\n -\n |\n  v\u{671}", 4, 5, "simple key expect ':'");
}

#[test]
fn tabs_get_a_hint() {
    refused("description: d\nclient:\n\t- close\n", 3, 1, "not tabs");
}

#[test]
fn keys_under_a_bare_step_get_a_hint() {
    refused(
        "description: d\nclient:\n  - close\n    expect: ok\n",
        4,
        11,
        "a bare step like `- close` cannot take keys: write it as a map, `- close: {}`",
    );
}

#[test]
fn messages_escape_control_characters_of_the_file() {
    refused(
        "description: d\nclient:\n  - connect: { port: \"90\\e[31m00\" }\n",
        3,
        22,
        "port must be a whole number 1..65535, not \"90\\u{1b}[31m00\"",
    );
    refused("description: d\n\"a\\tb\\u202e\": 1\n", 2, 1, "unknown key \"a\\tb\\u{202e}\" in the top level");
}

#[test]
fn exec_strings_and_sysctl_values_that_cannot_be_used_are_refused() {
    let exec = |params: &str| format!("description: d\nclient:\n  - exec: {{ {params} }}\n");
    refused(&exec("program: \"a\\0b\""), 3, 22, "the program of exec holds a NUL character");
    refused(&exec("program: a, args: [x, \"\\0\"]"), 3, 35, "an argument of exec holds a NUL");
    refused(&exec("program: a, args: \"\\0\""), 3, 31, "an argument of exec holds a NUL");
    refused(&exec("program: a, env: { A: \"\\0\" }"), 3, 35, "an environment variable of exec holds a NUL");
    refused(
        "description: d\nsysctl:\n  client: { net.ipv4.tcp_congestion_control: \"reno\\ncubic\" }\n",
        3,
        46,
        "sysctl net.ipv4.tcp_congestion_control is set to \"reno\\ncubic\", which holds a line break",
    );
    let plan = plan("description: d\nsysctl:\n  client: { net.ipv4.tcp_rmem: \"4096\\t131072 6291456\" }\n");
    assert_eq!(plan.hosts[0].sysctls[0].value, "4096\t131072 6291456");
}

#[test]
fn floats_show_as_written() {
    refused(
        "description: d\nclient:\n  - connect: { port: 9000.0 }\n",
        3,
        22,
        "port must be a whole number 1..65535, not 9000.0",
    );
}

#[test]
fn unknown_anchors_are_named() {
    refused(
        "description: d\nclient:\n  - connect: *nowhere\n",
        3,
        14,
        "unknown anchor: the alias *nowhere refers to no `&nowhere` given before it in the file",
    );
}

#[test]
fn only_lines_under_a_bare_step_get_its_hint() {
    let error = parse_text("description: \"open\nclient:\n  - close\n").unwrap_err();
    assert!(error.message.contains("quoted scalar"), "{}", error.message);
    assert!(!error.message.contains("bare step"), "{}", error.message);
    let error = parse_text("description: d\nclient:\n  - close\nserver: [\n").unwrap_err();
    assert!(!error.message.contains("bare step"), "{}", error.message);
}

#[test]
fn more_bad_inputs_with_positions() {
    let mut problems = Vec::new();
    let mut refused = |text: &str, line: usize, column: usize, part: &str| {
        problems.extend(mismatch(text, line, column, part));
    };
    refused("description: d\nfaults: { name: x }\n", 2, 9, "wrong type for `faults`: found map, expected a sequence");
    refused("description: d\nclient: close\n", 2, 9, "wrong type for `client`");
    refused("description: d\nclient:\n  - 42\n", 3, 5, "a step is an action name like `close`");
    refused(
        "description: d\nclient:\n  - accept: { backlog: 3 }\n",
        3,
        15,
        "unknown key \"backlog\" in accept `client[0].accept`; allowed: nonblocking",
    );
    refused(
        "description: d\nclient:\n  - listen: { port: 1 }\n  - accept: {}\n    as: 9\n",
        5,
        9,
        "socket name 9 is not allowed",
    );
    refused(
        "description: d\nclient:\n  - socket\n  - socket: {}\n    as: a\n  - socket: {}\n    as: a\n",
        7,
        9,
        "socket name \"a\" is already given",
    );
    refused("description: d\nclient:\n  - sleep: 0s\n", 3, 12, "sleep must be more than 0s");
    refused(
        "description: d\ntimeout: 10s\nclient:\n  - sleep: 11s\n",
        4,
        12,
        "sleep 11s is beyond the scenario timeout 10s",
    );
    refused("description: d\ntolerance: 0s\n", 2, 12, "tolerance must be more than 0s");
    refused("description: d\ntolerance: 2m\n", 2, 12, "tolerance 120s is longer than the scenario timeout 60s");
    refused("description: d\nslow: maybe\n", 2, 7, "slow must be true or false, not \"maybe\"");
    refused(
        "description: d\nclient:\n  - send: { bytes: 0 }\n",
        3,
        20,
        "bytes 0 is out of range; allowed: 1..16777216",
    );
    refused(
        "description: d\nclient:\n  - send: { bytes: 1, repeat: 0 }\n",
        3,
        31,
        "repeat must be a count 1..4294967295 or `forever`",
    );
    refused(
        "description: d\nclient:\n  - send: { bytes: 1, until: full }\n",
        3,
        30,
        "unknown send until \"full\"; allowed: error, would-block",
    );
    refused(
        "description: d\nclient:\n  - read: { until: close }\n",
        3,
        20,
        "unknown recv until \"close\"; allowed: eof",
    );
    refused(
        "description: d\nclient:\n  - send: { bytes: 1 }\n    expect: eof\n",
        4,
        13,
        "`eof` only fits recv/read steps",
    );
    refused(
        "description: d\nclient:\n  - connect: { port: 1 }\n    expect: 5\n",
        4,
        13,
        "`a byte count` only fits send and recv steps",
    );
    refused(
        "description: d\nclient:\n  - connect: { port: 1 }\n    expect: { exit: 1 }\n",
        4,
        15,
        "`exit` only fits exec steps",
    );
    refused(
        "description: d\nclient:\n  - exec: { program: x }\n    expect: { result: ok, exit: 1 }\n",
        4,
        27,
        "give only one of result, events, events_include, exit",
    );
    refused(
        "description: d\nclient:\n  - poll: { events: [POLLIN], timeout: 1s }\n    expect: { events: [POLLIN], events_include: [POLLIN] }\n",
        4,
        33,
        "give only one of result, events, events_include, exit",
    );
    refused(
        "description: d\nclient:\n  - recv: { max: 1 }\n    expect: { events_include: [POLLERR] }\n",
        4,
        15,
        "`events_include` only fits poll steps; this is a recv step",
    );
    refused(
        "description: d\nclient:\n  - poll: { events: [POLLIN], timeout: 1s }\n    expect: { events_include: [] }\n",
        4,
        15,
        "`events_include: []` asks nothing",
    );
    refused(
        "description: d\nclient:\n  - poll: { events: [POLLIN], timeout: 1s }\n    expect: { events_include: [POLLER] }\n",
        4,
        32,
        "unknown poll event \"POLLER\"; did you mean POLLERR?",
    );
    refused(
        "description: d\nclient:\n  - connect: { port: 1 }\n    expect: { at: 61s }\n",
        4,
        19,
        "at 61s is beyond the scenario timeout 60s",
    );
    refused(
        "description: d\nclient:\n  - exec: { program: x }\n    expect: { exit: 1, since: server.accept }\n",
        4,
        24,
        "`since` says what `at` counts from; give `at` too",
    );
    refused(
        "description: d\nclient:\n  - exec: { program: x, env: { 1X: y } }\n",
        3,
        32,
        "environment variable name \"1X\" is not allowed",
    );
    refused("description: d\nclient:\n  - exec: { args: [a] }\n", 3, 11, "exec needs \"program\"");
    refused(
        "description: d\nclient:\n  - wait: connect\n",
        3,
        11,
        "\"connect\" is not a step reference; write host.step",
    );
    refused(
        "description: d\nclient:\n  - wait: cleint.connect\n",
        3,
        11,
        "unknown host \"cleint\" in step reference \"cleint.connect\"; did you mean client?",
    );
    refused(
        "description: d\nclient:\n  - wait: server.accept\n",
        3,
        11,
        "server has no named steps; name one with `name: accept`",
    );
    refused(
        "description: d\nclient:\n  - wait: { for: server.x, edge: ended }\n",
        3,
        34,
        "unknown edge \"ended\"; allowed: started, finished",
    );
    refused("description: d\nclient:\n  - socket: { SO_LINGER: { seconds: 3 } }\n", 3, 26, "SO_LINGER needs \"on\"");
    refused(
        "description: d\nclient:\n  - socket: { TCP_NODELAY: { on: true } }\n",
        3,
        28,
        "TCP_NODELAY takes a number, not a map",
    );
    refused(
        "description: d\nclient:\n  - socket: { TCP_KEEPCNT: 0 }\n",
        3,
        28,
        "TCP_KEEPCNT 0 is out of range; allowed: 1..127",
    );
    refused(
        "description: d\nclient:\n  - socket: { SO_KEEPALIVE: 2 }\n",
        3,
        29,
        "SO_KEEPALIVE 2 is out of range; allowed: 0..1",
    );
    refused("description: d\nclient:\n  - setsockopt: {}\n", 3, 17, "setsockopt needs at least one option");
    refused(
        "description: d\nserver:\n  - listen\n  - accept: { nonblocking: 2 }\n",
        4,
        28,
        "nonblocking must be true or false, not 2",
    );
    refused("description: d\nclient:\n  - poll: { events: [POLLIN] }\n", 3, 11, "poll needs \"timeout\"");
    refused("description: d\nclient:\n  - close: {}\n    name: 'a b'\n", 4, 11, "step name \"a b\" is not allowed");
    refused(
        "description: d\nclient:\n  - close: {}\n    on: x\n    name: n\n",
        4,
        9,
        "no socket named \"x\" on client",
    );
    refused(
        "description: d\nclient:\n  - sleep: 1s\n    on: x\n",
        4,
        5,
        "\"on\" picks the socket a step acts on; a sleep step acts on no existing socket",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, from: 5s, until: 5s }\n",
        3,
        59,
        "until 5s is not after from 5s",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, from: 61s }\n",
        3,
        48,
        "from 61s is beyond the scenario timeout 60s",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, from: { at: 1s, delay: 1s } }\n",
        3,
        58,
        "`delay` does not go with `at` in a trigger",
    );
    refused("description: d\nfaults:\n  - { name: a, at: server, action: drop, from: { bytes: 10, nth: 2, host: client } }\n", 3, 61, "`nth` does not go with `bytes`");
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, from: { packet: { flags: S } } }\n",
        3,
        48,
        "a packet trigger needs `host`",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, from: {} }\n",
        3,
        48,
        "from trigger needs one of: at, after, started, state, packet, bytes",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: reject }\n",
        3,
        36,
        "unknown fault action \"reject\"",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: { reject: icmp-unreachable } }\n",
        3,
        46,
        "unknown reject kind \"icmp-unreachable\"",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, match: { protocol: icmp, dport: 1 } }\n",
        3,
        67,
        "icmp has no ports",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, match: { protocol: udp, flags: S } }\n",
        3,
        66,
        "`flags` only matches TCP packets",
    );
    refused("description: d\nfaults:\n  - { name: a, at: server, action: drop, match: { flags: { mask: S, value: SA } } }\n", 3, 76, "value sets flags that the mask leaves out");
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, match: { payload: some } }\n",
        3,
        60,
        "unknown payload \"some\"; allowed: empty, nonempty",
    );
    refused(
        "description: d\nfaults:\n  - { name: a, at: server, action: drop, direction: in }\n",
        3,
        53,
        "unknown direction \"in\"; allowed: ingress, egress",
    );
    refused(
        "description: d\nexpect:\n  packets:\n    - { from: client }\n",
        4,
        7,
        "a packet expectation needs `count`",
    );
    refused(
        "description: d\nexpect:\n  packets:\n    - { count: 1, within: [1s] }\n",
        4,
        27,
        "within must be a window [start, end]",
    );
    refused("description: d\nexpect:\n  packets:\n    - { at: [2s, 1s] }\n", 4, 18, "increasing order");
    refused(
        "description: d\nexpect:\n  states:\n    - { host: client, sequence: [] }\n",
        4,
        33,
        "sequence needs at least one state",
    );
    refused(
        "description: d\nexpect:\n  states:\n    - { sequence: [LISTEN] }\n",
        4,
        7,
        "state expectation needs \"host\"",
    );
    refused("description: d\nexpect:\n  timers:\n    - { host: client }\n", 4, 7, "timer expectation needs \"timer\"");
    refused(
        "description: d\nexpect:\n  timers:\n    - { host: client, timer: on, state: SYN_SNET }\n",
        4,
        41,
        "unknown TCP state \"SYN_SNET\"; did you mean SYN-SENT?",
    );
    refused("description: d\nhosts:\n  client: { address: 10.0.0.0/24 }\n", 3, 22, "network or broadcast address");
    refused("description: d\nhosts:\n  client: { address: 127.0.0.1/8 }\n", 3, 22, "not a unicast host address");
    refused("description: d\nhosts:\n  client: { address: 10.0.0.300/24 }\n", 3, 22, "not an IPv4 address with prefix");
    refused("description: d\nhosts:\n  client: {}\n", 3, 11, "host client needs \"address\"");
    refused("description: d\nlink: { ipv6: 2 }\n", 2, 15, "ipv6 must be true or false, not 2");
    refused(
        "description: d\nsysctl:\n  client: { net.ipv4.tcp_syn_retries: true }\n",
        3,
        39,
        "must be set to a number or text",
    );
    refused(
        "description: d\nsysctl:\n  router: {}\n",
        3,
        3,
        "sysctls for the router, but the scenario has no router; declare one with `hosts: { router: { nat: masquerade } }`",
    );
    refused("description:\n", 1, 1, "missing \"description\"");
    refused("description: d\ntimeout: !x 5s\n", 2, 10, "found a YAML tag (!name)");
    refused(
        "description: d\nfaults:\n  - &f { name: a, at: server, action: drop }\n  - { <<: *f, name: b }\n",
        4,
        7,
        "unknown key \"<<\" in fault `faults[1]`; allowed: name, at, direction, match, action, from, until (merge keys",
    );
    refused("description: d\nclient:\n  - ~\n", 3, 5, "a step is an action name like `close`");
    refused(
        "description: d\nclient:\n  - connect: { port: 90.5 }\n",
        3,
        22,
        "port must be a whole number 1..65535, not 90.5",
    );
    refused(
        "- description: d\n",
        1,
        1,
        "wrong type for the top level: found sequence, expected a map with keys description",
    );
    assert!(problems.is_empty(), "{} bad inputs differ:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn format_reference_examples_are_valid() {
    let reference = include_str!("FORMAT.md");
    let mut checked = 0;
    for block in reference.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap_or("");
        let text = if yaml.starts_with("description:") {
            yaml.to_string()
        } else if yaml.starts_with("client:") {
            format!("description: d\n{yaml}")
        } else if yaml.starts_with("  - ") || yaml.starts_with("    expect:") {
            continue;
        } else {
            // A step to anchor times to, and a traced program for `errors`.
            format!(
                "description: d\nclient:\n  - connect: {{ port: 9000 }}\n    name: connect\n\
                 \x20 - exec: {{ program: fetch, trace: true }}\n    name: request\n{yaml}"
            )
        };
        // What the variables example names.
        let variables = Variables::default().bin("fetch", "/t/debug/fetch").env("FETCH_PORT", "7000");
        if let Err(e) = parse_with("test", Path::new("test.yaml"), &text, &variables) {
            panic!("FORMAT.md example does not load: {e}\n{text}");
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} examples checked");
}

#[test]
fn queue_expectations_and_packet_windows() {
    let plan = plan(
        "description: d\ntolerance: 100ms\nexpect:\n  packets:\n    - { from: server, flags: \".\", window: 0, count: 1 }\n\
         \x20   - { from: server, protocol: icmp, count: 2 }\n    - { from: client, protocol: tcp, flags: S, count: 1 }\n\
         \x20 queues:\n    - { host: server, port: 9000, listener: true, queue: recv, sequence: [0, { value: 1, at: 8s }], max: 1 }\n\
         \x20   - { host: client, queue: send, max: 40, tolerance: 1s }\n",
    );
    let packets = &plan.expect.packets;
    assert_eq!(
        packets[0].filter,
        PacketFilter {
            from: Some(HostId::Server),
            flags: Some(TcpFlagsMatch::exactly(0x10)),
            window: Some(0),
            ..PacketFilter::default()
        }
    );
    assert_eq!(packets[1].filter.protocol, Some(Protocol::Icmp));
    assert_eq!(packets[2].filter.protocol, None, "tcp is the default and is stored as such");
    let queues = &plan.expect.queues;
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[0].host, HostId::Server);
    assert_eq!(queues[0].port, Some(9000));
    assert!(queues[0].listener);
    assert_eq!(queues[0].queue, QueueKind::Recv);
    let values: Vec<(u32, Option<Duration>)> = queues[0].sequence.iter().map(|s| (s.value, s.at)).collect();
    assert_eq!(values, vec![(0, None), (1, Some(secs(8)))]);
    assert_eq!(queues[0].max, Some(1));
    assert_eq!(queues[0].tolerance, Tolerance::either_side(ms(100)));
    assert_eq!(queues[0].location, at(9, 7));
    assert!(!queues[1].listener);
    assert_eq!(queues[1].queue, QueueKind::Send);
    assert!(queues[1].sequence.is_empty());
    assert_eq!(queues[1].tolerance, Tolerance::either_side(secs(1)));
}

#[test]
fn bad_queue_expectations_and_packet_filters() {
    let head = "description: d\nexpect:\n";
    refused(&format!("{head}  queues:\n    - {{ host: server, queue: recv }}\n"), 4, 7, "needs a `sequence`");
    refused(&format!("{head}  queues:\n    - {{ host: server, sequence: [1] }}\n"), 4, 7, "queue");
    refused(&format!("{head}  queues:\n    - {{ host: server, queue: rcv, max: 1 }}\n"), 4, 30, "unknown queue");
    refused(&format!("{head}  queues:\n    - {{ queue: recv, max: 1 }}\n"), 4, 7, "host");
    refused(&format!("{head}  queues:\n    - {{ host: server, queue: recv, sequence: [-1] }}\n"), 4, 47, "queue value");
    refused(
        &format!("{head}  queues:\n    - {{ host: server, queue: recv, sequence: [{{ at: 1s }}] }}\n"),
        4,
        47,
        "value",
    );
    refused(
        &format!("{head}  queues:\n    - {{ host: server, queue: recv, max: 1, listener: maybe }}\n"),
        4,
        54,
        "listener",
    );
    refused(&format!("{head}  packets:\n    - {{ window: 70000, count: 1 }}\n"), 4, 17, "window");
    refused(
        &format!("{head}  packets:\n    - {{ protocol: icmp, flags: R, count: 1 }}\n"),
        4,
        25,
        "selects TCP segments",
    );
    refused(&format!("{head}  packets:\n    - {{ protocol: sctp, count: 1 }}\n"), 4, 19, "unknown protocol");
    refused(
        &format!("{head}  packets:\n    - {{ count: 1, since: client.nope }}\n"),
        4,
        26,
        "no step named \"nope\" on client",
    );
    refused(
        &format!("{head}  states:\n    - {{ host: client, sequence: [GONE], since: connect }}\n"),
        4,
        48,
        "not a step reference",
    );
    refused(&format!("{head}  packets:\n    - {{ count: 1, since: {{ nth: 2 }} }}\n"), 4, 26, "since needs \"packet\"");
    refused(
        &format!("{head}  packets:\n    - {{ count: 1, since: {{ packet: {{}}, nth: 0 }} }}\n"),
        4,
        45,
        "nth 0 is out of range",
    );
    refused(
        &format!("{head}  packets:\n    - {{ count: 1, since: {{ packet: {{ flags: Q }} }} }}\n"),
        4,
        45,
        "unknown TCP flag",
    );
}

#[test]
fn tolerances_may_differ_early_and_late() {
    let plan = plan(
        "description: d\ntolerance: { early: 0s, late: 300ms }\nclient:\n  - sleep: 1s\n    expect: { result: ok, after: 1s }\n\
         \x20 - sleep: 1s\n    expect: { after: 1s, tolerance: 50ms }\n\
         expect:\n  packets:\n    - { count: 1, at: 2s, tolerance: { early: 10ms, late: 1s } }\n\
         \x20 states:\n    - { host: client, sequence: [GONE] }\n",
    );
    assert_eq!(plan.tolerance, Tolerance { early: Duration::ZERO, late: ms(300) });
    let client = &plan.host(HostId::Client).steps;
    assert_eq!(client[0].expect.tolerance, Tolerance { early: Duration::ZERO, late: ms(300) });
    assert_eq!(client[1].expect.tolerance, Tolerance::either_side(ms(50)));
    let packets = &plan.expect.packets[0];
    assert_eq!(packets.tolerance, Tolerance { early: ms(10), late: secs(1) });
    let states = &plan.expect.states[0];
    assert_eq!(states.tolerance, Tolerance { early: Duration::ZERO, late: ms(300) });

    let head = "description: d\n";
    refused(&format!("{head}tolerance: {{ early: 0s }}\n"), 2, 12, "tolerance needs \"late\"");
    refused(&format!("{head}tolerance: {{ late: 1s }}\n"), 2, 12, "tolerance needs \"early\"");
    refused(&format!("{head}tolerance: {{ early: 0s, late: 0s }}\n"), 2, 31, "more than 0s");
    refused(&format!("{head}tolerance: {{ early: 2m, late: 1s }}\n"), 2, 21, "longer than the scenario timeout");
    refused(&format!("{head}tolerance: {{ early: 0s, late: 1s, both: 1s }}\n"), 2, 35, "unknown key \"both\"");
}

#[test]
fn a_connect_waits_for_the_peers_startup_listen_on_its_port() {
    let awaited = |client: &str, server: &str| {
        let plan = plan(&format!("description: d\nclient:\n{client}server:\n{server}"));
        match &plan.host(HostId::Client).steps.last().unwrap().action {
            Action::Connect { address, after_listen, .. } => {
                assert_eq!(*address, plan.host(HostId::Server).address);
                after_listen.as_ref().map(|listen| (listen.host, listen.index))
            }
            other => panic!("{other:?}"),
        }
    };
    let connect = "  - connect: { port: 9000 }\n";
    assert_eq!(awaited(connect, "  - listen: { port: 9000 }\n"), Some((HostId::Server, 0)));
    assert_eq!(awaited(connect, "  - bind: { port: 9000 }\n  - listen: {}\n"), Some((HostId::Server, 1)));
    assert_eq!(
        awaited(connect, "  - listen: { port: 9001 }\n  - socket: {}\n  - listen: { port: 9000 }\n"),
        Some((HostId::Server, 2))
    );
    assert_eq!(awaited(connect, "  - sleep: 1s\n  - listen: { port: 9000 }\n"), None, "a listen after the setup");
    assert_eq!(awaited(connect, "  - listen: { port: 9001 }\n"), None, "another port");
    assert_eq!(awaited(connect, "  - sleep: 1s\n"), None, "no listen");
}

#[test]
fn a_payload_condition_requires_nothing_of_the_kernel_and_inner_payload_can_still_be_stated() {
    // Without `@ih` the firewall writes it through the header lengths (run::firewall::payload).
    let fault = "faults:\n  - { name: acks, at: server, match: { payload: empty }, action: drop }\n";
    let implied = plan(&format!("description: d\n{fault}"));
    assert!(implied.requires.items.is_empty());
    let stated = plan(&format!("description: d\nrequires: {{ nftables: [inner-payload] }}\n{fault}"));
    assert_eq!(stated.requires.items, vec![Requirement::Nftables(NftFeature::InnerPayload)]);
    assert_eq!(stated.requires.location.map(|l| l.line), Some(2));
}

#[test]
fn a_router_stands_between_client_and_server_on_two_links() {
    let plan = plan(
        "description: d\nhosts:\n  router:\n    nat: { masquerade: true, forward: [{ port: 8080, to: 9000 }] }\n\
         \x20   conntrack: { loose: false, timeouts: { established: 5s, time-wait: 10s } }\n\
         sysctl:\n  router: { net.ipv4.tcp_syn_retries: 2 }\n\
         faults:\n  - { name: gone, at: router, action: flush-conntrack, from: 2s }\n\
         \x20 - { name: cut, at: router, action: drop, match: { protocol: tcp, dport: 9000 } }\n\
         client:\n  - connect: { to: router, port: 8080 }\nserver:\n  - listen: { port: 9000 }\n",
    );
    let order: Vec<HostId> = plan.hosts.iter().map(|host| host.id).collect();
    assert_eq!(order, [HostId::Client, HostId::Router, HostId::Server]);
    let address = |host: HostId| plan.host(host).address.to_string();
    assert_eq!(
        (address(HostId::Client), address(HostId::Router), address(HostId::Server)),
        ("10.0.1.2".into(), "10.0.1.1".into(), "10.0.2.2".into())
    );
    assert_eq!(plan.host(HostId::Client).gateway, Some(std::net::Ipv4Addr::new(10, 0, 1, 1)));
    assert_eq!(plan.host(HostId::Server).gateway, Some(std::net::Ipv4Addr::new(10, 0, 2, 1)));
    assert_eq!(plan.host(HostId::Router).gateway, None);
    let ends: Vec<(HostId, &str, String)> = plan
        .link_ends()
        .map(|(_, end)| (end.host, end.ifname.as_str(), format!("{}/{}", end.address, end.prefix_len)))
        .collect();
    assert_eq!(
        ends,
        [
            (HostId::Client, "nf0", "10.0.1.2/24".to_string()),
            (HostId::Router, "nf0", "10.0.1.1/24".to_string()),
            (HostId::Router, "nf1", "10.0.2.1/24".to_string()),
            (HostId::Server, "nf0", "10.0.2.2/24".to_string()),
        ]
    );
    assert_eq!(
        plan.router,
        Some(RouterPlan { masquerade: true, dnat: vec![PortForward { port: 8080, to_port: 9000 }] })
    );
    let sysctls: Vec<(&str, &str)> =
        plan.host(HostId::Router).sysctls.iter().map(|s| (s.name.as_str(), s.value.as_str())).collect();
    assert_eq!(
        sysctls,
        [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.tcp_syn_retries", "2"),
            ("net.netfilter.nf_conntrack_tcp_loose", "0"),
            ("net.netfilter.nf_conntrack_tcp_timeout_established", "5"),
            ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "10"),
        ]
    );
    assert_eq!((plan.faults[0].name.as_str(), plan.faults[0].direction), ("cut", Direction::Forward));
    assert_eq!(plan.faults[1].action, FaultAction::FlushConntrack);
    // A connect to a port the router forwards waits for the server's listen on the port it goes to.
    match &plan.host(HostId::Client).steps[0].action {
        Action::Connect { to, address, after_listen, .. } => {
            assert_eq!((*to, address.to_string()), (Some(HostId::Router), "10.0.1.1".to_string()));
            assert_eq!(after_listen.as_ref().map(|listen| (listen.host, listen.index)), Some((HostId::Server, 0)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_a_router_the_default_wire_is_one_link() {
    let plan = plan("description: d\n");
    assert_eq!(plan.hosts.len(), 2);
    assert_eq!(plan.links.len(), 1);
    assert_eq!(plan.router, None);
    assert!(plan.hosts.iter().all(|host| host.gateway.is_none()));
}

#[test]
fn a_bulk_transfer_through_the_wire_is_a_mebibyte_or_more_sent_across_impairments() {
    let scenario = |action: &str, repeat: u32| {
        plan(&format!(
            "description: d\nfaults:\n  - {{ name: f, at: server, action: {action} }}\nserver:\n  - listen: {{ port: 9000 }}\n  - accept\n  - recv: {{ until: eof }}\nclient:\n  - connect: {{ to: server, port: 9000 }}\n  - send: {{ bytes: 65536, repeat: {repeat} }}\n  - shutdown: WR\n"
        ))
    };
    assert!(scenario("{ rate: { bandwidth: 10mbit, queue: 64KiB } }", 64).bulk_through_wire(), "4 MiB through a wire");
    assert!(scenario("{ duplicate: 5% }", 16).bulk_through_wire(), "1 MiB through a wire");
    assert!(!scenario("{ duplicate: 5% }", 15).bulk_through_wire(), "960 KiB");
    assert!(!scenario("drop", 64).bulk_through_wire(), "a fault in nftables: no wire");
}

#[test]
fn ipv6_sockets_get_ipv6_on_the_link_and_the_hosts_their_ula_addresses() {
    let ipv4 = plan("description: d\nclient:\n  - connect: { port: 9000 }\n");
    assert!(!ipv4.link.ipv6);
    assert!(ipv4.hosts.iter().all(|host| host.address6.is_none()));
    let text = "description: d\nserver:\n  - socket: { family: ipv6, IPV6_V6ONLY: 1 }\n  - listen: { port: 9000 }\n\
                client:\n  - connect: { to: server, port: 9000, family: ipv6 }\n  - connect: { to: \"fd00::9\", port: 1 }\n\
                \x20 - connect: { to: \"::ffff:10.0.0.2\", port: 9000 }\n";
    let v6 = plan(text);
    assert!(v6.link.ipv6);
    let address6 = |host: HostId| v6.host(host).address6.map(|a| a.to_string());
    assert_eq!(address6(HostId::Client).as_deref(), Some("fd00::1"));
    assert_eq!(address6(HostId::Server).as_deref(), Some("fd00::2"));
    assert!(v6.links[0].ends.iter().all(|end| end.address6.is_some()));
    let server = &v6.host(HostId::Server).steps;
    match &server[0].action {
        Action::Socket { family, options, .. } => {
            assert_eq!(*family, Family::Ipv6);
            assert_eq!(options, &vec![SockOpt { name: SockOptName::IPV6_V6ONLY, value: SockOptValue::Int(1) }]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(server[1].action, Action::Listen { family: Family::Ipv6, .. }), "the socket's family");
    let client: Vec<String> = v6
        .host(HostId::Client)
        .steps
        .iter()
        .map(|step| match &step.action {
            Action::Connect { to, address, after_listen, .. } => {
                format!("{to:?} {address} {}", after_listen.is_some())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(client, ["Some(Server) fd00::2 true", "None fd00::9 false", "None ::ffff:10.0.0.2 false"]);
    // An IPv6 address implies the family; an IPv4 step leaves the link as it was written.
    assert!(plan("description: d\nclient:\n  - connect: { to: \"fd00::2\", port: 9000 }\n").link.ipv6);
    assert!(plan("description: d\nlink: { ipv6: true }\nclient:\n  - connect: { port: 9000 }\n").hosts[0]
        .address6
        .is_some());
}

#[test]
fn ipv6_that_cannot_be_run_is_refused_where_it_is_written() {
    refused(
        "description: d\nlink: { ipv6: false }\nclient:\n  - connect: { port: 9000, family: ipv6 }\n",
        2,
        15,
        "ipv6: false, and the step at line 4 makes an IPv6 socket",
    );
    refused("description: d\nclient:\n  - socket: { family: ipv7 }\n", 3, 23, "allowed: ipv4, ipv6");
    refused(
        "description: d\nclient:\n  - socket: { family: ipv6 }\n  - connect: { port: 9000, family: ipv4 }\n",
        4,
        36,
        "family ipv4: this connect acts on an ipv6 socket made by an earlier step",
    );
    refused(
        "description: d\nclient:\n  - socket: {}\n  - connect: { to: \"fd00::2\", port: 9000 }\n",
        4,
        20,
        "an ipv6 address, and the socket is ipv4",
    );
    refused(
        "description: d\nclient:\n  - connect: { to: \"10.0.0.2\", port: 9000, family: ipv6 }\n",
        3,
        20,
        "an ipv4 address, and the socket is ipv6",
    );
    refused(
        "description: d\nhosts:\n  router: {}\nclient:\n  - connect: { to: server, port: 9000, family: ipv6 }\n",
        3,
        3,
        "IPv6 is not supported with a router yet (the step at line 5 makes an IPv6 socket)",
    );
    refused(
        "description: d\nfaults:\n  - { name: lossy, at: server, action: { loss: 1% } }\n\
         client:\n  - connect: { to: server, port: 9000, family: ipv6 }\n",
        3,
        32,
        "fault lossy: impairments (loss, delay, reorder, duplicate, corrupt, rate, inject) act on IPv4 frames only",
    );
    let payload =
        "description: d\nfaults:\n  - { name: data, at: server, match: { payload: nonempty }, action: drop }\n\
                   client:\n  - connect: { to: server, port: 9000, family: ipv6 }\n";
    refused(payload, 3, 40, "add `requires: { nftables: [inner-payload] }`");
    assert!(parse_text(&format!("{payload}requires: {{ nftables: [inner-payload] }}\n")).is_ok());
    refused(
        "description: d\nfaults:\n  - { name: icmp6, at: server, match: { protocol: icmpv6, dport: 1 }, action: drop }\n",
        3,
        59,
        "icmpv6 has no ports",
    );
}

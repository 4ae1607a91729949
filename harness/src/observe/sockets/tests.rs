//! Unit tests of the sock_diag codec on hand-made datagrams and of the change tracker on sample sequences.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_sock_diag::constants::{AF_INET, INET_DIAG_INFO, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};

use super::changes::*;
use super::diag::*;
use super::*;
use crate::scenario::plan::{TcpState, TimerKind};
use crate::timeline::SocketEvent;

fn sample(local: &str, remote: &str, state: TcpState) -> SocketSample {
    SocketSample {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state,
        timer: None,
        expires: None,
        retrans: 0,
        recv_q: 0,
        send_q: 0,
        inode: 0,
        tcpi: None,
    }
}

fn changes(tracker: &mut ChangeTracker, samples: &[SocketSample]) -> Vec<SocketEvent> {
    let mut events = Vec::new();
    tracker.update(samples, |event| events.push(event));
    events
}

struct DiagRow {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    local: SocketAddr,
    remote: SocketAddr,
    expires: u32,
    recv_q: u32,
    send_q: u32,
    inode: u32,
}

fn diag_row(state: u8, local: &str, remote: &str) -> DiagRow {
    DiagRow {
        family: AF_INET,
        state,
        timer: 0,
        retrans: 0,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        expires: 0,
        recv_q: 0,
        send_q: 0,
        inode: 0,
    }
}

/// A SOCK_DIAG_BY_FAMILY netlink message as the kernel lays it out, with optional attributes.
fn diag_message(seq: u32, row: &DiagRow, attributes: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![row.family, row.state, row.timer, row.retrans];
    body.extend_from_slice(&row.local.port().to_be_bytes());
    body.extend_from_slice(&row.remote.port().to_be_bytes());
    // Four 32-bit words per address: an IPv4 address in the first, an IPv6 address in all four.
    for address in [row.local.ip(), row.remote.ip()] {
        match address {
            IpAddr::V4(v4) => {
                body.extend_from_slice(&v4.octets());
                body.extend_from_slice(&[0; 12]);
            }
            IpAddr::V6(v6) => body.extend_from_slice(&v6.octets()),
        }
    }
    body.extend_from_slice(&[0; 12]); // interface, cookie
    for word in [row.expires, row.recv_q, row.send_q, 0, row.inode] {
        body.extend_from_slice(&word.to_ne_bytes());
    }
    assert_eq!(body.len(), INET_DIAG_MSG_LEN);
    for (kind, payload) in attributes {
        body.extend_from_slice(&((ATTRIBUTE_HEADER_LEN + payload.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(align4(body.len()), 0);
    }
    netlink_message(SOCK_DIAG_BY_FAMILY, seq, &body)
}

fn netlink_message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&((NLMSG_HEADER_LEN + payload.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(libc::NLM_F_MULTI as u16).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(payload);
    message.resize(align4(message.len()), 0);
    message
}

fn done(seq: u32, code: i32) -> Vec<u8> {
    netlink_message(libc::NLMSG_DONE as u16, seq, &code.to_ne_bytes())
}

/// A `struct tcp_info` of this kernel's size with the summarized fields set.
fn tcp_info(rto_us: u32, retransmits: u8, probes: u8, backoff: u8, unacked: u32, notsent: u32) -> Vec<u8> {
    let mut info = vec![0u8; 280];
    info[2] = retransmits;
    info[3] = probes;
    info[4] = backoff;
    info[8..12].copy_from_slice(&rto_us.to_ne_bytes());
    info[24..28].copy_from_slice(&unacked.to_ne_bytes());
    info[144..148].copy_from_slice(&notsent.to_ne_bytes());
    info
}

#[test]
fn sockets_and_observers_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<DiagSocket>();
    assert_send::<Observer>();
}

#[test]
fn request_asks_for_every_ipv4_tcp_socket_with_tcp_info() {
    let request = encode_request(7, AF_INET);
    assert_eq!(read_u32(&request, 0), 72);
    assert_eq!(u16::from_ne_bytes([request[4], request[5]]), 20);
    assert_eq!(u16::from_ne_bytes([request[6], request[7]]), 0x301);
    assert_eq!(read_u32(&request, 8), 7);
    assert_eq!(&request[16..20], &[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 1 << 1, 0]);
    let states = read_u32(&request, 20);
    assert_eq!(states, 0b1_1111_1111_1110, "ESTABLISHED (1) ..= NEW_SYN_RECV (12)");
    assert!(request[24..].iter().all(|&b| b == 0), "no socket filter");
}

#[test]
fn keepalive_row_keeps_probe_count_and_expiry() {
    let mut row = diag_row(1, "10.0.0.1:40000", "10.0.0.2:9000");
    (row.timer, row.retrans, row.expires, row.recv_q, row.send_q, row.inode) = (2, 3, 1500, 5, 7, 42);
    let info = tcp_info(204_000, 0, 3, 0, 1, 11);
    let mut datagram = diag_message(9, &row, &[(INET_DIAG_INFO, info), (99, vec![1, 2, 3])]);
    datagram.extend(done(9, 0));
    let mut samples = Vec::new();
    assert_eq!(parse_datagram(&datagram, 9, &mut samples).unwrap(), Progress::Done);
    assert_eq!(
        samples,
        vec![SocketSample {
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:9000".parse().unwrap(),
            state: TcpState::Established,
            timer: Some(TimerKind::Keepalive),
            expires: Some(Duration::from_millis(1500)),
            retrans: 3,
            recv_q: 5,
            send_q: 7,
            inode: 42,
            tcpi: Some(TcpInfoSummary {
                rto: Duration::from_millis(204),
                rtt: Duration::ZERO,
                retransmits: 0,
                probes: 3,
                backoff: 0,
                unacked: 1,
                notsent_bytes: 11,
            }),
        }]
    );
}

#[test]
fn request_socket_and_time_wait_rows_have_timers_but_no_tcp_info() {
    let mut request_sock = diag_row(12, "10.0.0.2:9000", "10.0.0.1:40000");
    (request_sock.timer, request_sock.retrans, request_sock.expires) = (1, 2, 800);
    let mut time_wait = diag_row(6, "10.0.0.1:40001", "10.0.0.2:9000");
    (time_wait.timer, time_wait.expires) = (3, 59_000);
    let mut datagram = diag_message(1, &request_sock, &[]);
    datagram.extend(diag_message(1, &time_wait, &[]));
    let mut samples = Vec::new();
    assert_eq!(parse_datagram(&datagram, 1, &mut samples).unwrap(), Progress::More);
    assert_eq!(samples.len(), 2);
    assert_eq!(
        (samples[0].state, samples[0].timer, samples[0].retrans, samples[0].expires),
        (TcpState::SynRecv, Some(TimerKind::On), 2, Some(Duration::from_millis(800)))
    );
    assert_eq!(
        (samples[1].state, samples[1].timer, samples[1].expires),
        (TcpState::TimeWait, Some(TimerKind::Timewait), Some(Duration::from_secs(59)))
    );
    assert!(samples.iter().all(|s| s.tcpi.is_none()));
}

#[test]
fn rows_of_other_dumps_families_and_states_are_skipped() {
    let mut datagram = diag_message(3, &diag_row(1, "10.0.0.1:1", "10.0.0.2:2"), &[]);
    let mut unix = diag_row(1, "10.0.0.1:3", "10.0.0.2:4");
    unix.family = libc::AF_UNIX as u8;
    datagram.extend(diag_message(4, &unix, &[]));
    datagram.extend(diag_message(4, &diag_row(13, "10.0.0.1:5", "0.0.0.0:0"), &[]));
    datagram.extend(diag_message(4, &diag_row(10, "10.0.0.1:6", "0.0.0.0:0"), &[]));
    datagram.extend(done(3, 0));
    datagram.extend(done(4, 0));
    let mut samples = Vec::new();
    assert_eq!(parse_datagram(&datagram, 4, &mut samples).unwrap(), Progress::Done);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].label(), "10.0.0.1:6 -> *:*");
    assert!(samples[0].is_listener());
}

#[test]
fn ipv6_rows_read_all_four_words_of_each_address() {
    let mut established = diag_row(1, "[fd00::1]:40000", "[fd00::2]:9000");
    established.family = libc::AF_INET6 as u8;
    let mut mapped = diag_row(1, "[::ffff:10.0.0.2]:9000", "[::ffff:10.0.0.1]:40001");
    mapped.family = libc::AF_INET6 as u8;
    let mut listener = diag_row(10, "[::]:9000", "[::]:0");
    listener.family = libc::AF_INET6 as u8;
    let mut datagram = Vec::new();
    for row in [&established, &mapped, &listener] {
        datagram.extend(diag_message(5, row, &[]));
    }
    datagram.extend(done(5, 0));
    let mut samples = Vec::new();
    assert_eq!(parse_datagram(&datagram, 5, &mut samples).unwrap(), Progress::Done);
    let labels: Vec<String> = samples.iter().map(|s| s.label()).collect();
    assert_eq!(
        labels,
        ["[fd00::1]:40000 -> [fd00::2]:9000", "[::ffff:10.0.0.2]:9000 -> [::ffff:10.0.0.1]:40001", "[::]:9000 -> *:*"]
    );
    assert!(samples[2].is_listener());
}

#[test]
fn a_request_asks_for_the_family_given() {
    let request = encode_request(9, AF_INET6);
    assert_eq!(request[16], libc::AF_INET6 as u8, "inet_diag_req_v2.sdiag_family");
    assert_eq!(request[17], IPPROTO_TCP);
}

#[test]
fn kernel_errors_and_malformed_messages_fail_the_dump() {
    let mut error = netlink_message(libc::NLMSG_ERROR as u16, 5, &(-libc::EBUSY).to_ne_bytes());
    error.extend_from_slice(&[0; 16]);
    match parse_datagram(&error, 5, &mut Vec::new()) {
        Err(Error::Sys { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EBUSY)),
        other => panic!("expected EBUSY, got {other:?}"),
    }
    match parse_datagram(&done(5, -libc::ENOMEM), 5, &mut Vec::new()) {
        Err(Error::Sys { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::ENOMEM)),
        other => panic!("expected ENOMEM, got {other:?}"),
    }
    let short = netlink_message(SOCK_DIAG_BY_FAMILY, 5, &[libc::AF_INET as u8; 40]);
    assert!(matches!(parse_datagram(&short, 5, &mut Vec::new()), Err(Error::Internal(_))));
    let mut overlong = done(5, 0);
    overlong[0..4].copy_from_slice(&200u32.to_ne_bytes());
    assert!(matches!(parse_datagram(&overlong, 5, &mut Vec::new()), Err(Error::Internal(_))));
}

#[test]
fn first_sample_reports_every_socket_and_an_unchanged_one_nothing() {
    let mut tracker = ChangeTracker::default();
    let listener = sample("10.0.0.2:9000", "0.0.0.0:0", TcpState::Listen);
    let mut connection = sample("10.0.0.2:9000", "10.0.0.1:40000", TcpState::Established);
    connection.timer = Some(TimerKind::Keepalive);
    connection.expires = Some(Duration::from_secs(7));
    let events = changes(&mut tracker, &[connection.clone(), listener.clone()]);
    let labels: Vec<_> = events.iter().map(|e| e.socket.as_str()).collect();
    assert_eq!(labels, ["10.0.0.2:9000 -> *:*", "10.0.0.2:9000 -> 10.0.0.1:40000"]);
    assert_eq!((events[0].local_port, events[0].remote_port), (9000, 0));
    assert_eq!(events[1].expires, Some(Duration::from_secs(7)));
    connection.expires = Some(Duration::from_secs(6));
    assert!(changes(&mut tracker, &[listener, connection]).is_empty(), "expires counting down is no change");
}

#[test]
fn state_timer_retrans_and_queue_changes_are_each_reported() {
    let mut tracker = ChangeTracker::default();
    let mut socket = sample("10.0.0.1:40000", "10.0.0.2:9000", TcpState::Established);
    changes(&mut tracker, std::slice::from_ref(&socket));
    let edits: [fn(&mut SocketSample); 6] = [
        |s| s.timer = Some(TimerKind::On),
        |s| s.retrans = 1,
        |s| s.send_q = 100,
        |s| s.recv_q = 3,
        |s| s.timer = None,
        |s| s.state = TcpState::FinWait1,
    ];
    for edit in edits {
        edit(&mut socket);
        let events = changes(&mut tracker, std::slice::from_ref(&socket));
        assert_eq!(events, vec![socket.event()]);
    }
}

#[test]
fn request_socket_becoming_established_is_one_socket_and_a_vanished_one_is_gone() {
    let mut tracker = ChangeTracker::default();
    let listener = sample("10.0.0.2:9000", "0.0.0.0:0", TcpState::Listen);
    let mut server = sample("10.0.0.2:9000", "10.0.0.1:40000", TcpState::SynRecv);
    server.timer = Some(TimerKind::On);
    changes(&mut tracker, &[listener.clone(), server.clone()]);
    server.state = TcpState::Established;
    server.timer = None;
    server.inode = 77;
    let events = changes(&mut tracker, &[listener.clone(), server.clone()]);
    assert_eq!(events.iter().map(|e| e.state).collect::<Vec<_>>(), [TcpState::Established]);
    let events = changes(&mut tracker, &[listener]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].socket, "10.0.0.2:9000 -> 10.0.0.1:40000");
    assert_eq!(events[0].state, TcpState::Gone);
    assert_eq!((events[0].timer, events[0].retrans, events[0].recv_q), (None, 0, 0));
    assert!(changes(&mut tracker, &[]).iter().all(|e| e.state == TcpState::Gone && e.socket.ends_with("*:*")));
}

#[test]
fn reuseport_listeners_on_one_port_stay_apart() {
    let mut tracker = ChangeTracker::default();
    let mut first = sample("0.0.0.0:9000", "0.0.0.0:0", TcpState::Listen);
    first.inode = 1;
    let mut second = first.clone();
    second.inode = 2;
    second.recv_q = 1;
    assert_eq!(changes(&mut tracker, &[first.clone(), second.clone()]).len(), 2);
    assert!(changes(&mut tracker, &[second, first]).is_empty());
}

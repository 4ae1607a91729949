//! Real sockets in namespaces made for each test (root needed; these fail, not skip, without it). Client and
//! server talk over `lo` inside one namespace; `ss` is the reference.

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use nix::sys::socket::{
    bind, connect, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
};

use super::diag::*;
use super::*;
use crate::run::clock::Clock;
use crate::scenario::plan::{TcpState, TimerKind};
use crate::timeline::{Event, SocketEvent};

const PORT: u16 = 9000;

/// `ip link set lo up|down` in the calling thread's namespace.
fn set_loopback(up: bool) -> Result<()> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write the ifreq passed by pointer, which outlives the call.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(Error::last_os("ip link show lo (SIOCGIFFLAGS)"));
        }
        let flags = request.ifr_ifru.ifru_flags;
        let up_flag = libc::IFF_UP as libc::c_short;
        request.ifr_ifru.ifru_flags = if up { flags | up_flag } else { flags & !up_flag };
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(Error::last_os("ip link set lo up/down (SIOCSIFFLAGS)"));
        }
    }
    Ok(())
}

fn namespace_with_loopback() -> Netns {
    let ns = Netns::new_anonymous().unwrap();
    ns.run(|| set_loopback(true)).unwrap();
    ns
}

fn loopback(port: u16) -> SockaddrIn {
    SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// `listen(backlog)` on 127.0.0.1:9000 in `ns`, optionally with TCP_DEFER_ACCEPT (seconds).
fn listener(ns: &Netns, backlog: i32, defer_accept_secs: Option<libc::c_int>) -> TcpListener {
    ns.run(|| {
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        if let Some(secs) = defer_accept_secs {
            // SAFETY: setsockopt reads an int from a pointer valid for the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&secs as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(Error::last_os("setsockopt TCP_DEFER_ACCEPT"));
            }
        }
        bind(fd.as_raw_fd(), &loopback(PORT))?;
        listen(&fd, Backlog::new(backlog)?)?;
        Ok(TcpListener::from(fd))
    })
    .unwrap()
}

fn connect_in(ns: &Netns) -> TcpStream {
    ns.run(|| TcpStream::connect((Ipv4Addr::LOCALHOST, PORT)).context(|| "connect".into())).unwrap()
}

/// A connect(2) that does not wait for the handshake.
fn connect_nonblocking(ns: &Netns) -> OwnedFd {
    ns.run(|| {
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK, None)?;
        match connect(fd.as_raw_fd(), &loopback(PORT)) {
            Ok(()) | Err(nix::Error::EINPROGRESS) => Ok(fd),
            Err(e) => Err(e.into()),
        }
    })
    .unwrap()
}

/// Dumps until `done` holds for the sample (every 10 ms, at most 8 s).
fn wait_for(socket: &mut DiagSocket, what: &str, done: impl Fn(&[SocketSample]) -> bool) -> Vec<SocketSample> {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let samples = dump(socket).unwrap();
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last sample: {samples:#?}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn find<'a>(samples: &'a [SocketSample], label: &str) -> Option<&'a SocketSample> {
    samples.iter().find(|s| s.label() == label)
}

fn server_side(port: u16) -> String {
    format!("127.0.0.1:{PORT} -> 127.0.0.1:{port}")
}

fn client_side(port: u16) -> String {
    format!("127.0.0.1:{port} -> 127.0.0.1:{PORT}")
}

const LISTENER: &str = "127.0.0.1:9000 -> *:*";

/// One socket line of `ss -tanoi`.
#[derive(Debug)]
struct SsRow {
    state: TcpState,
    recv_q: u32,
    send_q: u32,
    local: String,
    peer: String,
    /// Timer name and its third field.
    timer: Option<(String, u32)>,
}

/// `ip netns exec <ns> ss -tanoi`, through the namespace descriptor this process holds.
fn ss(ns: &Netns) -> Vec<SsRow> {
    let output = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/fd/{}", std::process::id(), ns.raw_fd()))
        .args(["ss", "-tanoi"])
        .output()
        .unwrap();
    assert!(output.status.success(), "ss failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .skip(1)
        .filter(|line| !line.starts_with(char::is_whitespace))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let timer = fields.iter().find_map(|f| f.strip_prefix("timer:(")).map(|t| {
                let parts: Vec<&str> = t.trim_end_matches(')').split(',').collect();
                (parts[0].to_string(), parts[2].parse().unwrap())
            });
            SsRow {
                state: TcpState::parse(fields[0]).unwrap_or_else(|| panic!("ss state in {line:?}")),
                recv_q: fields[1].parse().unwrap(),
                send_q: fields[2].parse().unwrap(),
                local: fields[3].to_string(),
                peer: fields[4].to_string(),
                timer,
            }
        })
        .collect()
}

/// The same sockets with the same state, queues and timer name as `ss`; the timer's third field too when
/// `compare_retrans`.
fn assert_same_as_ss(samples: &[SocketSample], rows: &[SsRow], compare_retrans: bool) {
    assert_eq!(samples.len(), rows.len(), "dump {samples:#?}\nss {rows:#?}");
    for sample in samples {
        // ss prints a dual-stack wildcard listener ([::] without IPV6_V6ONLY) as `*:9000`, peer `*:*`.
        let (local, peer) = match (sample.local, sample.remote) {
            (std::net::SocketAddr::V6(local), _) if sample.is_listener() && local.ip().is_unspecified() => {
                (format!("*:{}", local.port()), "*:*".to_string())
            }
            (local, std::net::SocketAddr::V6(remote)) if sample.is_listener() => {
                (local.to_string(), format!("[{}]:*", remote.ip()))
            }
            (local, remote) if sample.is_listener() => (local.to_string(), format!("{}:*", remote.ip())),
            (local, remote) => (local.to_string(), remote.to_string()),
        };
        let row = rows
            .iter()
            .find(|r| r.local == local && r.peer == peer)
            .unwrap_or_else(|| panic!("{} missing from ss {rows:#?}", sample.label()));
        assert_eq!((row.state, row.recv_q, row.send_q), (sample.state, sample.recv_q, sample.send_q), "{row:?}");
        let timer = row.timer.as_ref().map(|(name, _)| name.as_str());
        assert_eq!(timer, sample.timer.map(TimerKind::name), "{row:?} vs {sample:?}");
        if compare_retrans {
            assert_eq!(row.timer.as_ref().map(|(_, n)| *n), sample.timer.map(|_| sample.retrans), "{row:?}");
        }
    }
}

fn socket_events(rx: &crate::run::handoff::Receiver<Event>, host: HostId) -> Vec<SocketEvent> {
    rx.try_iter()
        .filter(|event| event.host == host)
        .filter_map(|event| match event.kind {
            EventKind::Socket(socket) => Some(socket),
            _ => None,
        })
        .collect()
}

fn states_of(events: &[SocketEvent], label: &str) -> Vec<TcpState> {
    events.iter().filter(|e| e.socket == label).map(|e| e.state).collect()
}

/// `expected` appears in `seen` in this order, other states allowed between.
fn assert_passes_through(seen: &[TcpState], expected: &[TcpState]) {
    let mut rest = seen.iter();
    for state in expected {
        assert!(rest.any(|s| s == state), "{seen:?} does not pass through {expected:?}");
    }
}

#[test]
fn listener_queues_and_established_pairs_match_ss() {
    let ns = namespace_with_loopback();
    let _listener = listener(&ns, 8, None);
    let mut first = connect_in(&ns);
    let second = connect_in(&ns);
    first.write_all(&[7; 100]).unwrap();
    let (first_port, second_port) = (first.local_addr().unwrap().port(), second.local_addr().unwrap().port());
    let mut diag = DiagSocket::open_in(&ns).unwrap();
    let samples = wait_for(&mut diag, "100 bytes queued on the server side", |s| {
        find(s, &server_side(first_port)).is_some_and(|server| server.recv_q == 100)
            && find(s, &client_side(first_port)).is_some_and(|client| client.send_q == 0 && client.timer.is_none())
    });
    let rows = ss(&ns);
    assert_same_as_ss(&samples, &rows, true);
    assert_eq!(samples.len(), 5);
    let listen = find(&samples, LISTENER).unwrap();
    assert_eq!((listen.state, listen.recv_q, listen.send_q), (TcpState::Listen, 2, 8), "accept queue / backlog");
    assert!(listen.inode != 0);
    for label in [client_side(first_port), server_side(first_port), client_side(second_port), server_side(second_port)]
    {
        let socket = find(&samples, &label).unwrap_or_else(|| panic!("{label} not in {samples:#?}"));
        assert_eq!(socket.state, TcpState::Established, "{label}");
        let tcpi = socket.tcpi.unwrap_or_else(|| panic!("no tcp_info for {label}"));
        assert!(tcpi.rto >= Duration::from_millis(200), "{label}: rto {:?}", tcpi.rto);
    }
    assert_eq!(find(&samples, &server_side(second_port)).unwrap().recv_q, 0);
}

#[test]
fn ipv6_and_v4_mapped_sockets_are_dumped_as_ss_lists_them() {
    let ns = namespace_with_loopback();
    let (listener, v6, v4) = ns
        .run(|| {
            // A dual-stack listener (IPV6_V6ONLY off, the namespace's default), one IPv6 and one IPv4 client.
            let listener = TcpListener::bind("[::]:9000").map_err(|e| Error::sys("bind [::]:9000", e))?;
            let v6 = TcpStream::connect("[::1]:9000").map_err(|e| Error::sys("connect [::1]:9000", e))?;
            let v4 = TcpStream::connect("127.0.0.1:9000").map_err(|e| Error::sys("connect 127.0.0.1:9000", e))?;
            Ok((listener, v6, v4))
        })
        .unwrap();
    let (v6_port, v4_port) = (v6.local_addr().unwrap().port(), v4.local_addr().unwrap().port());
    let mut diag = DiagSocket::open_in(&ns).unwrap();
    let samples = wait_for(&mut diag, "both connections established", |s| s.len() == 5);
    assert_same_as_ss(&samples, &ss(&ns), true);
    let labels: Vec<String> = samples.iter().map(SocketSample::label).collect();
    for label in [
        "[::]:9000 -> *:*".to_string(),
        format!("[::1]:{v6_port} -> [::1]:9000"),
        format!("[::1]:9000 -> [::1]:{v6_port}"),
        format!("127.0.0.1:{v4_port} -> 127.0.0.1:9000"),
        format!("[::ffff:127.0.0.1]:9000 -> [::ffff:127.0.0.1]:{v4_port}"),
    ] {
        assert!(labels.contains(&label), "{label} not in {labels:?}");
    }
    drop((listener, v6, v4));
}

#[test]
fn deferred_accept_shows_syn_recv_until_data_arrives() {
    let ns = namespace_with_loopback();
    let _listener = listener(&ns, 8, Some(10));
    let (sink, events) = EventSink::new(Clock::started());
    let observer = Observer::start(&ns, HostId::Server, Duration::from_millis(10), sink).unwrap();
    let mut client = connect_in(&ns);
    let port = client.local_addr().unwrap().port();
    let mut diag = DiagSocket::open_in(&ns).unwrap();
    let samples = wait_for(&mut diag, "the request socket", |s| find(s, &server_side(port)).is_some());
    let request = find(&samples, &server_side(port)).unwrap();
    assert_eq!((request.state, request.timer, request.inode), (TcpState::SynRecv, Some(TimerKind::On), 0));
    assert!(request.tcpi.is_none());
    assert_eq!(find(&samples, &client_side(port)).unwrap().state, TcpState::Established);
    assert_same_as_ss(&samples, &ss(&ns), true);

    // Hold SYN-RECV for several sampling intervals so the observer sees it too.
    thread::sleep(Duration::from_millis(50));
    client.write_all(b"hello").unwrap();
    let samples = wait_for(&mut diag, "the accepted connection", |s| {
        find(s, &server_side(port)).is_some_and(|server| server.state == TcpState::Established)
    });
    let server = find(&samples, &server_side(port)).unwrap();
    assert_eq!((server.recv_q, server.timer), (5, None));
    assert_eq!(find(&samples, LISTENER).unwrap().recv_q, 1);
    assert_same_as_ss(&samples, &ss(&ns), true);

    let stats = observer.stop().unwrap();
    assert!(stats.samples >= 2, "{stats:?}");
    let events = socket_events(&events, HostId::Server);
    let server_events: Vec<_> = events.iter().filter(|e| e.socket == server_side(port)).collect();
    assert_eq!(
        server_events.iter().map(|e| (e.state, e.timer)).collect::<Vec<_>>(),
        [(TcpState::SynRecv, Some(TimerKind::On)), (TcpState::Established, None)],
        "{events:#?}"
    );
    assert_eq!(server_events[1].recv_q, 5);
    assert_eq!(states_of(&events, LISTENER), [TcpState::Listen, TcpState::Listen], "accept queue 0 -> 1");
}

#[test]
fn keepalive_timer_and_unanswered_probe_count_match_ss() {
    let ns = namespace_with_loopback();
    let listener = listener(&ns, 8, None);
    let client = connect_in(&ns);
    let (_server, _) = listener.accept().unwrap();
    setsockopt(&client, sockopt::KeepAlive, &true).unwrap();
    setsockopt(&client, sockopt::TcpKeepIdle, &1).unwrap();
    setsockopt(&client, sockopt::TcpKeepInterval, &1).unwrap();
    setsockopt(&client, sockopt::TcpKeepCount, &30).unwrap();
    let label = client_side(client.local_addr().unwrap().port());
    let mut diag = DiagSocket::open_in(&ns).unwrap();
    let samples = wait_for(&mut diag, "a keepalive timer", |s| {
        find(s, &label).is_some_and(|c| c.timer == Some(TimerKind::Keepalive))
    });
    assert_eq!(find(&samples, &label).unwrap().retrans, 0);
    assert_same_as_ss(&samples, &ss(&ns), true);

    // With lo down every probe fails to leave the host, so none is answered and the count climbs.
    ns.run(|| set_loopback(false)).unwrap();
    wait_for(&mut diag, "two unanswered keepalive probes", |s| find(s, &label).is_some_and(|c| c.retrans >= 2));
    let mut compared = false;
    for _ in 0..5 {
        // A probe may fire between the dump and ss; compare only when the dumps on both sides agree.
        let before = dump(&mut diag).unwrap();
        let rows = ss(&ns);
        let after = dump(&mut diag).unwrap();
        let (b, a) = (find(&before, &label).unwrap(), find(&after, &label).unwrap());
        if (b.timer, b.retrans) == (a.timer, a.retrans) {
            assert_same_as_ss(&before, &rows, true);
            assert_eq!(b.timer, Some(TimerKind::Keepalive));
            assert_eq!(b.tcpi.unwrap().probes as u32, b.retrans, "tcpi_probes is the ss probe count");
            compared = true;
            break;
        }
    }
    assert!(compared, "the probe count kept changing under ss");
}

#[test]
fn syn_retransmissions_to_a_full_accept_queue_count_up_without_countdown_events() {
    let ns = namespace_with_loopback();
    // Backlog 0 holds one connection; the next SYN finds the accept queue full and is dropped.
    let _listener = listener(&ns, 0, None);
    let _queued = connect_in(&ns);
    let (sink, events) = EventSink::new(Clock::started());
    let observer = Observer::start(&ns, HostId::Client, Duration::from_millis(10), sink).unwrap();
    let syn_sent = connect_nonblocking(&ns);
    let port = nix::sys::socket::getsockname::<SockaddrIn>(syn_sent.as_raw_fd()).unwrap().port();
    let mut diag = DiagSocket::open_in(&ns).unwrap();
    let samples = wait_for(&mut diag, "the first SYN retransmission", |s| {
        find(s, &client_side(port)).is_some_and(|c| c.retrans == 1)
    });
    let client = find(&samples, &client_side(port)).unwrap();
    assert_eq!((client.state, client.timer), (TcpState::SynSent, Some(TimerKind::On)));
    assert_same_as_ss(&samples, &ss(&ns), false);
    thread::sleep(Duration::from_millis(50));
    let stats = observer.stop().unwrap();
    // About 100 samples at 10 ms while the SYN timer counts down for 1 s; under a loaded CI run periodic samples
    // are ordinary priority and 41 came (dumps of up to 55 ms), under a loaded nextest run 18 (dumps of up to
    // 100 ms). Ten countdown readings without an event still show that the countdown is not reported.
    assert!(stats.samples >= 10, "{stats:?}");
    let events: Vec<_> =
        socket_events(&events, HostId::Client).into_iter().filter(|e| e.socket == client_side(port)).collect();
    assert_eq!(
        events.iter().map(|e| (e.state, e.timer, e.retrans)).collect::<Vec<_>>(),
        [(TcpState::SynSent, Some(TimerKind::On), 0), (TcpState::SynSent, Some(TimerKind::On), 1)],
        "one event per retransmission, none for the countdown: {events:#?}"
    );
}

#[test]
fn orderly_close_goes_through_fin_wait_2_and_time_wait_and_closed_sockets_are_gone() {
    let ns = namespace_with_loopback();
    let listener = listener(&ns, 8, None);
    let client = connect_in(&ns);
    let (server, _) = listener.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    let (sink, events) = EventSink::new(Clock::started());
    let observer = Observer::start(&ns, HostId::Client, Duration::from_millis(5), sink).unwrap();
    let mut diag = DiagSocket::open_in(&ns).unwrap();

    client.shutdown(Shutdown::Write).unwrap();
    wait_for(&mut diag, "FIN-WAIT-2 / CLOSE-WAIT", |s| {
        find(s, &client_side(port)).is_some_and(|c| c.state == TcpState::FinWait2)
            && find(s, &server_side(port)).is_some_and(|c| c.state == TcpState::CloseWait)
    });
    // Hold the half-closed state for several sampling intervals so the observer sees it too.
    thread::sleep(Duration::from_millis(50));
    drop(server);
    let samples = wait_for(&mut diag, "TIME-WAIT", |s| {
        find(s, &client_side(port)).is_some_and(|c| c.state == TcpState::TimeWait)
            && find(s, &server_side(port)).is_none()
    });
    let time_wait = find(&samples, &client_side(port)).unwrap();
    assert_eq!(time_wait.timer, Some(TimerKind::Timewait));
    assert!(time_wait.expires.unwrap() > Duration::from_secs(50), "{time_wait:?}");
    assert_same_as_ss(&samples, &ss(&ns), true);
    drop(listener);
    wait_for(&mut diag, "the listener to close", |s| find(s, LISTENER).is_none());
    thread::sleep(Duration::from_millis(20));
    let stats = observer.stop().unwrap();
    assert!(stats.mean_dump_time > Duration::ZERO && stats.max_dump_time >= stats.mean_dump_time);

    let events = socket_events(&events, HostId::Client);
    let client_states = states_of(&events, &client_side(port));
    assert_passes_through(&client_states, &[TcpState::Established, TcpState::FinWait2, TcpState::TimeWait]);
    assert_eq!(client_states.last(), Some(&TcpState::TimeWait));
    let server_states = states_of(&events, &server_side(port));
    assert_passes_through(&server_states, &[TcpState::Established, TcpState::CloseWait, TcpState::Gone]);
    assert_eq!(server_states.last(), Some(&TcpState::Gone));
    assert_eq!(states_of(&events, LISTENER), [TcpState::Listen, TcpState::Gone]);
    let gone = events.iter().find(|e| e.state == TcpState::Gone).unwrap();
    assert_eq!((gone.timer, gone.expires), (None, None));
}

/// Median of 1000 dumps of five sockets, printed (`cargo test --lib dump_time -- --nocapture`).
fn median_dump_time(ns: &Netns) -> Duration {
    let listener = listener(ns, 8, None);
    let _clients = [connect_in(ns), connect_in(ns)];
    let _servers = [listener.accept().unwrap(), listener.accept().unwrap()];
    let mut diag = DiagSocket::open_in(ns).unwrap();
    let mut samples = Vec::new();
    let mut times: Vec<Duration> = (0..1000)
        .map(|_| {
            let started = Instant::now();
            dump_into(&mut diag, &mut samples).unwrap();
            let took = started.elapsed();
            assert_eq!(samples.len(), 5);
            took
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ehash_entries(ns: &Netns) -> i64 {
    ns.run(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries")
            .context(|| "read tcp_ehash_entries".into())?;
        Ok(text.trim().parse().unwrap())
    })
    .unwrap()
}

#[test]
fn dump_time_median_of_1000() {
    let shared = namespace_with_loopback();
    let shared_median = median_dump_time(&shared);
    let shared_entries = ehash_entries(&shared);
    assert!(shared_entries < 0, "a namespace made from the host's shares its established hash table");

    // A namespace created from inside one whose tcp_child_ehash_entries is set gets a private, small table,
    // and a dump walks only that.
    let parent = Netns::new_anonymous().unwrap();
    parent
        .run(|| {
            std::fs::write("/proc/sys/net/ipv4/tcp_child_ehash_entries", "1024")
                .context(|| "sysctl -w net.ipv4.tcp_child_ehash_entries=1024".into())
        })
        .unwrap();
    let private = parent.run(Netns::new_anonymous).unwrap();
    private.run(|| set_loopback(true)).unwrap();
    assert_eq!(ehash_entries(&private), 1024);
    let private_median = median_dump_time(&private);
    println!(
        "sock_diag dump of 5 sockets, median of 1000: {shared_median:?} with the shared established hash \
         ({} buckets), {private_median:?} with a private one (1024 buckets)",
        -shared_entries
    );
}

#[test]
fn a_sample_asked_for_while_a_real_time_thread_holds_the_cpu_is_counted_late() {
    use crate::run::priority::{lower_current_thread, pin_current_thread, raise_current_thread};
    use crate::run::userns::{test_privilege, Privilege};
    let ns = namespace_with_loopback();
    let (sink, _events) = EventSink::new(Clock::started());
    let hold = Duration::from_millis(150);
    // On a thread of its own: pinned, with the observer it starts pinned to the same CPU (the affinity is
    // inherited), then real-time at the observer's priority. The kernel does not preempt a SCHED_FIFO thread for
    // another of the same priority, so the observer woken by the poke waits until this one stops spinning: what
    // another scenario's busy bulk transfer does to it on a loaded machine.
    let stats = thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread().unwrap();
                let observer = Observer::start(&ns, HostId::Server, Duration::from_secs(10), sink).unwrap();
                // The observer's first run: it waits for signals from then on.
                thread::sleep(Duration::from_millis(20));
                if !raise_current_thread().unwrap() {
                    assert_eq!(test_privilege(), Privilege::Rootless, "only rootless refuses SCHED_FIFO");
                    return None;
                }
                observer.poke();
                let spinning = Instant::now();
                let mut spins = 0u64;
                while spinning.elapsed() < hold {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                lower_current_thread().unwrap();
                Some(observer.stop().unwrap())
            })
            .join()
            .unwrap()
    });
    let Some(stats) = stats else { return };
    assert_eq!(stats.late_answers, 1, "{stats:?}");
    assert!(stats.max_answer_delay >= hold, "{stats:?}");
    assert!(stats.max_answer_delay_asked_at >= Duration::from_millis(20), "{stats:?}");
}

//! The socket-state sampler of a host: `ss -tanoi` read through sock_diag (NETLINK_SOCK_DIAG), and the thread
//! that turns successive samples into `EventKind::Socket` timeline events.
//!
//! The request and `struct inet_diag_msg` are encoded and decoded here rather than through
//! netlink-packet-sock-diag's `InetResponseHeader`, which keeps `idiag_retrans` only for the retransmission
//! timer: for keepalive and zero-window-probe timers it drops the probe count `ss -o` shows as the third timer
//! field, and for TIME-WAIT it drops `idiag_expires`, and those are what the scenarios are about. The crate is
//! also built on netlink-packet-core 0.9 while this crate's netlink stack is on 0.8, so its `NetlinkMessage`
//! would need a second core version. It still supplies the sock_diag constants and the `struct tcp_info`
//! layout (`TcpInfo`, feature `rich_nlas`).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use netlink_packet_sock_diag::constants::{AF_INET, INET_DIAG_INFO, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};
use netlink_packet_sock_diag::inet::nlas::TcpInfo;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::clock::EventSink;
use crate::error::{Context, Error, Result};
use crate::netns::Netns;
use crate::scenario::plan::{HostId, TcpState, TimerKind};
use crate::timeline::{EventKind, SocketEvent};

/// `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const INET_DIAG_REQ_V2_LEN: usize = 56;
const REQUEST_LEN: usize = NLMSG_HEADER_LEN + INET_DIAG_REQ_V2_LEN;
/// `struct inet_diag_msg`.
const INET_DIAG_MSG_LEN: usize = 72;
/// `struct rtattr`.
const ATTRIBUTE_HEADER_LEN: usize = 4;
/// Bits TCP_ESTABLISHED (1) to TCP_NEW_SYN_RECV (12): every state `ss -ta` lists, request sockets included.
/// TCP_BOUND_INACTIVE (13, bound but neither listening nor connected) is left out, as `ss -ta` leaves it out.
const ALL_TCP_STATES: u32 = ((1 << 13) - 1) & !1;
/// A netlink dump never puts more than 32 KiB into one datagram, so one buffer this size takes any of them.
const RECEIVE_BUFFER_LEN: usize = 32 * 1024;
/// The kernel answers a dump of one namespace in microseconds; a second means the socket is broken.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// `stop` waits this long for the final sample (which may itself wait `RECEIVE_TIMEOUT`).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A few `struct tcp_info` fields (`ss -i`), for full sockets only (not request or TIME-WAIT sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfoSummary {
    /// `tcpi_rto` (`ss -i` `rto:`).
    pub rto: Duration,
    /// `tcpi_rtt` (`ss -i` `rtt:`, the smoothed round-trip time).
    pub rtt: Duration,
    /// `tcpi_retransmits`: retransmission timeouts in a row for the oldest unacknowledged segment.
    pub retransmits: u8,
    /// `tcpi_probes`: unanswered keepalive or zero-window probes.
    pub probes: u8,
    /// `tcpi_backoff` (`ss -i` `backoff:`): exponential backoff of the retransmission timer.
    pub backoff: u8,
    /// `tcpi_unacked` (`ss -i` `unacked:`): segments in flight.
    pub unacked: u32,
    /// `tcpi_notsent_bytes` (`ss -i` `notsent:`): bytes in the send queue never sent yet.
    pub notsent_bytes: u32,
}

/// One row of `ss -tanoi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSample {
    pub local: SocketAddrV4,
    /// `0.0.0.0:0` for a listener (`ss` prints `0.0.0.0:*`).
    pub remote: SocketAddrV4,
    pub state: TcpState,
    /// `ss -o` `timer:(<kind>,...)`.
    pub timer: Option<TimerKind>,
    /// `ss -o` second timer field: time until the timer fires (`idiag_expires`); `None` without a timer.
    pub expires: Option<Duration>,
    /// `ss -o` third timer field (`idiag_retrans`): retransmissions for `on`, unanswered probes for
    /// `keepalive` and `persist`, SYN-ACK retransmissions for a request socket.
    pub retrans: u32,
    /// `Recv-Q`: unread bytes; for a listener, connections waiting in the accept queue.
    pub recv_q: u32,
    /// `Send-Q`: unacknowledged and unsent bytes; for a listener, the accept queue's length limit (backlog).
    pub send_q: u32,
    /// `ss -e` `ino:`; 0 for request and TIME-WAIT sockets, which have no file.
    pub inode: u32,
    /// `ss -i`: `None` for request and TIME-WAIT sockets.
    pub tcpi: Option<TcpInfoSummary>,
}

impl SocketSample {
    pub fn is_listener(&self) -> bool {
        self.state == TcpState::Listen
    }

    /// `10.0.0.1:40000 -> 10.0.0.2:9000`, or `10.0.0.2:9000 -> *:*` for a listener.
    pub fn label(&self) -> String {
        self.key().label()
    }

    /// This row as a timeline event.
    pub fn event(&self) -> SocketEvent {
        SocketEvent {
            socket: self.label(),
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            state: self.state,
            timer: self.timer,
            expires: self.expires,
            retrans: self.retrans,
            recv_q: self.recv_q,
            send_q: self.send_q,
            rtt: self.tcpi.map(|info| info.rtt),
            rto: self.tcpi.map(|info| info.rto),
        }
    }

    fn key(&self) -> SocketKey {
        SocketKey { local: self.local, remote: self.remote, listener_inode: self.is_listener().then_some(self.inode) }
    }

    fn observed(&self) -> Observed {
        Observed {
            state: self.state,
            timer: self.timer,
            retrans: self.retrans,
            recv_q: self.recv_q,
            send_q: self.send_q,
        }
    }
}

/// A NETLINK_SOCK_DIAG socket of one namespace (what `ss` opens), with its receive buffer kept for reuse
/// between dumps.
#[derive(Debug)]
pub struct DiagSocket {
    socket: Socket,
    buffer: Vec<u8>,
    seq: u32,
}

impl DiagSocket {
    /// Opens the socket on a thread inside `ns`, so that it dumps that namespace's sockets (`ip netns exec`).
    pub fn open_in(ns: &Netns) -> Result<DiagSocket> {
        ns.run(DiagSocket::open_in_current_namespace)
    }

    fn open_in_current_namespace() -> Result<DiagSocket> {
        let socket = Socket::new(NETLINK_SOCK_DIAG)
            .context(|| "open sock_diag socket (ss -tan: socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG))".into())?;
        socket.connect(&SocketAddr::new(0, 0)).context(|| "connect sock_diag socket to the kernel (ss -tan)".into())?;
        let timeout = TimeVal::milliseconds(RECEIVE_TIMEOUT.as_millis() as i64);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .context(|| "set SO_RCVTIMEO on the sock_diag socket".into())?;
        Ok(DiagSocket { socket, buffer: vec![0; RECEIVE_BUFFER_LEN], seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

/// `ss -tanoi` once: every IPv4 TCP socket of the namespace `socket` was opened in, request (SYN-RECV) and
/// TIME-WAIT sockets included, in the kernel's hash-table order.
pub fn dump(socket: &mut DiagSocket) -> Result<Vec<SocketSample>> {
    let mut samples = Vec::new();
    dump_into(socket, &mut samples)?;
    Ok(samples)
}

/// `ss -tanoi` once, into `samples` (cleared first), so that a sampler reuses one vector.
pub fn dump_into(socket: &mut DiagSocket, samples: &mut Vec<SocketSample>) -> Result<()> {
    samples.clear();
    let seq = socket.next_seq();
    let sent =
        socket.socket.send(&encode_request(seq), 0).context(|| "send sock_diag dump request (ss -tan)".into())?;
    if sent != REQUEST_LEN {
        return Err(Error::Internal(format!("sock_diag dump request (ss -tan): sent {sent} of {REQUEST_LEN} bytes")));
    }
    loop {
        let mut free: &mut [u8] = &mut socket.buffer[..];
        // MSG_TRUNC makes recv return the datagram's full length, so a truncated one is detected, not parsed.
        let len = match socket.socket.recv(&mut free, libc::MSG_TRUNC) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(receive_error(e)),
        };
        if len > socket.buffer.len() {
            return Err(Error::Internal(format!(
                "sock_diag dump (ss -tan): a {len}-byte datagram does not fit the {}-byte buffer",
                socket.buffer.len()
            )));
        }
        if parse_datagram(&socket.buffer[..len], seq, samples)? == Progress::Done {
            return Ok(());
        }
    }
}

fn receive_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        let what = format!("receive sock_diag dump (ss -tan): no answer within {RECEIVE_TIMEOUT:?}");
        Error::sys(what, e)
    } else {
        Error::sys("receive sock_diag dump (ss -tan)", e)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// `nlmsghdr` + `inet_diag_req_v2`: dump all AF_INET TCP sockets in every state, with `INET_DIAG_INFO`.
fn encode_request(seq: u32) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0 (the kernel), then inet_diag_req_v2; its inet_diag_sockid stays all zero: no filter.
    let diag = &mut request[NLMSG_HEADER_LEN..];
    diag[0] = AF_INET;
    diag[1] = IPPROTO_TCP;
    diag[2] = 1 << (INET_DIAG_INFO - 1);
    diag[4..8].copy_from_slice(&ALL_TCP_STATES.to_ne_bytes());
    request
}

/// Walks the netlink messages of one datagram, appending the sockets of the dump numbered `seq`.
/// Messages with another sequence number are the rest of an earlier dump that failed halfway; they are skipped.
fn parse_datagram(datagram: &[u8], seq: u32, samples: &mut Vec<SocketSample>) -> Result<Progress> {
    let mut offset = 0;
    while datagram.len() - offset >= NLMSG_HEADER_LEN {
        let header = &datagram[offset..offset + NLMSG_HEADER_LEN];
        let len = read_u32(header, 0) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let message_seq = read_u32(header, 8);
        if len < NLMSG_HEADER_LEN || len > datagram.len() - offset {
            return Err(Error::Internal(format!(
                "sock_diag dump (ss -tan): malformed netlink message of length {len} at offset {offset} of a \
                 {}-byte datagram",
                datagram.len()
            )));
        }
        let payload = &datagram[offset + NLMSG_HEADER_LEN..offset + len];
        offset = (offset + align4(len)).min(datagram.len());
        if message_seq != seq {
            continue;
        }
        match i32::from(kind) {
            libc::NLMSG_DONE => {
                // A dump that failed inside the kernel ends with a negative errno in NLMSG_DONE.
                let code = if payload.len() >= 4 { read_i32(payload, 0) } else { 0 };
                if code < 0 {
                    return Err(Error::sys("sock_diag dump (ss -tan)", io::Error::from_raw_os_error(-code)));
                }
                return Ok(Progress::Done);
            }
            libc::NLMSG_ERROR => {
                let code = if payload.len() >= 4 { read_i32(payload, 0) } else { -libc::EPROTO };
                if code != 0 {
                    return Err(Error::sys("sock_diag dump request (ss -tan)", io::Error::from_raw_os_error(-code)));
                }
            }
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                if let Some(sample) = parse_inet_diag_msg(payload)? {
                    samples.push(sample);
                }
            }
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// One `struct inet_diag_msg` and its attributes; `None` for what `ss -4 -t` would not list.
fn parse_inet_diag_msg(message: &[u8]) -> Result<Option<SocketSample>> {
    if message.len() < INET_DIAG_MSG_LEN {
        return Err(Error::Internal(format!(
            "sock_diag dump (ss -tan): a {}-byte message is shorter than struct inet_diag_msg ({INET_DIAG_MSG_LEN})",
            message.len()
        )));
    }
    if message[0] != AF_INET {
        return Ok(None);
    }
    let Some(state) = TcpState::from_kernel(message[1]) else {
        return Ok(None);
    };
    let timer = TimerKind::from_kernel(message[2]);
    // inet_diag_sockid: sport, dport (big endian), src[4], dst[4] (an IPv4 address in the first word), if, cookie.
    let local = SocketAddrV4::new(ipv4_at(message, 8), u16::from_be_bytes([message[4], message[5]]));
    let remote = SocketAddrV4::new(ipv4_at(message, 24), u16::from_be_bytes([message[6], message[7]]));
    let mut tcpi = None;
    let mut attributes = &message[INET_DIAG_MSG_LEN..];
    while attributes.len() >= ATTRIBUTE_HEADER_LEN {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if len < ATTRIBUTE_HEADER_LEN || len > attributes.len() {
            return Err(Error::Internal(format!(
                "sock_diag dump (ss -tan): malformed attribute of length {len} for {local} -> {remote}"
            )));
        }
        if kind == INET_DIAG_INFO {
            tcpi = summarize_tcp_info(&attributes[ATTRIBUTE_HEADER_LEN..len]);
        }
        attributes = &attributes[align4(len).min(attributes.len())..];
    }
    Ok(Some(SocketSample {
        local,
        remote,
        state,
        timer,
        expires: timer.map(|_| Duration::from_millis(u64::from(read_u32(message, 52)))),
        retrans: u32::from(message[3]),
        recv_q: read_u32(message, 56),
        send_q: read_u32(message, 60),
        inode: read_u32(message, 68),
        tcpi,
    }))
}

/// `None` when the kernel's `struct tcp_info` is shorter than the one netlink-packet-sock-diag knows (older
/// kernels, without `tcpi_snd_wnd`): the summary is extra detail, not worth failing a dump for.
fn summarize_tcp_info(payload: &[u8]) -> Option<TcpInfoSummary> {
    let info = TcpInfo::parse(payload).ok()?;
    Some(TcpInfoSummary {
        rto: Duration::from_micros(u64::from(info.rto)),
        rtt: Duration::from_micros(u64::from(info.rtt)),
        retransmits: info.retransmits,
        probes: info.probes,
        backoff: info.backoff,
        unacked: info.unacked,
        notsent_bytes: info.notsent_bytes,
    })
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

/// Which socket a row is, across samples: the 4-tuple, plus the inode for a listener so that several
/// SO_REUSEPORT listeners on one port stay apart. A request socket (SYN-RECV) and the full socket that replaces
/// it share the 4-tuple and so are one socket changing state; so are a socket and its TIME-WAIT successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SocketKey {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    listener_inode: Option<u32>,
}

impl SocketKey {
    fn label(&self) -> String {
        match self.listener_inode {
            Some(_) => format!("{} -> *:*", self.local),
            None => format!("{} -> {}", self.local, self.remote),
        }
    }

    fn gone(&self) -> SocketEvent {
        SocketEvent {
            socket: self.label(),
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            state: TcpState::Gone,
            timer: None,
            expires: None,
            retrans: 0,
            recv_q: 0,
            send_q: 0,
            rtt: None,
            rto: None,
        }
    }
}

/// What is compared between samples. `expires` is left out: a timer counting down is no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observed {
    state: TcpState,
    timer: Option<TimerKind>,
    retrans: u32,
    recv_q: u32,
    send_q: u32,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    key: SocketKey,
    observed: Observed,
    /// Index into the sample slice this entry came from (meaningful for the current sample only).
    row: usize,
}

/// The previous sample, sorted by key, and the change events between it and the next one.
#[derive(Debug, Default)]
struct ChangeTracker {
    previous: Vec<Tracked>,
    current: Vec<Tracked>,
}

impl ChangeTracker {
    /// Calls `emit` for every socket of `samples` that is new or whose (state, timer, retrans, recv_q, send_q)
    /// changed, and with a `Gone` event for every socket no longer there, in key order. Should a key appear twice
    /// in one sample, the first row counts.
    fn update(&mut self, samples: &[SocketSample], mut emit: impl FnMut(SocketEvent)) {
        self.current.clear();
        self.current.extend(samples.iter().enumerate().map(|(row, sample)| Tracked {
            key: sample.key(),
            observed: sample.observed(),
            row,
        }));
        self.current.sort_by_key(|tracked| tracked.key);
        self.current.dedup_by_key(|tracked| tracked.key);
        let (mut old, mut new) = (0, 0);
        loop {
            match (self.previous.get(old), self.current.get(new)) {
                (None, None) => break,
                (Some(before), Some(now)) if before.key == now.key => {
                    if before.observed != now.observed {
                        emit(samples[now.row].event());
                    }
                    old += 1;
                    new += 1;
                }
                (Some(before), Some(now)) if before.key < now.key => {
                    emit(before.key.gone());
                    old += 1;
                }
                (Some(before), None) => {
                    emit(before.key.gone());
                    old += 1;
                }
                (_, Some(now)) => {
                    emit(samples[now.row].event());
                    new += 1;
                }
            }
        }
        std::mem::swap(&mut self.previous, &mut self.current);
    }
}

/// What an observer did: how many dumps, and what one cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ObserverStats {
    pub samples: u64,
    /// Mean wall time of one dump (request, receive, decode), without the comparison with the previous sample.
    pub mean_dump_time: Duration,
    pub max_dump_time: Duration,
}

struct Sampler {
    socket: DiagSocket,
    host: HostId,
    sink: EventSink,
    samples: Vec<SocketSample>,
    tracker: ChangeTracker,
    count: u64,
    total_dump_time: Duration,
    max_dump_time: Duration,
}

impl Sampler {
    /// One dump, and its changes as events stamped with the time the dump was requested: the kernel walks its
    /// socket table after that instant, so a change seen at `t` happened before `t` + the dump time (20 to 200
    /// microseconds, see `ObserverStats`) and after the previous sample's `t`.
    fn sample(&mut self) -> Result<()> {
        let requested = Instant::now();
        let t = self.sink.clock().at(requested);
        dump_into(&mut self.socket, &mut self.samples)?;
        let took = requested.elapsed();
        self.count += 1;
        self.total_dump_time += took;
        self.max_dump_time = self.max_dump_time.max(took);
        let (sink, host) = (&self.sink, self.host);
        self.tracker.update(&self.samples, |event| sink.emit_at(t, host, EventKind::Socket(event)));
        Ok(())
    }

    fn stats(&self) -> ObserverStats {
        let mean_nanos = self.total_dump_time.as_nanos() / u128::from(self.count.max(1));
        ObserverStats {
            samples: self.count,
            mean_dump_time: Duration::from_nanos(u64::try_from(mean_nanos).unwrap_or(u64::MAX)),
            max_dump_time: self.max_dump_time,
        }
    }

    /// Samples every `interval`, and at once when poked, until told to stop (or the `Observer` is dropped),
    /// then once more.
    fn run(mut self, interval: Duration, signals: mpsc::Receiver<Signal>) -> Result<ObserverStats> {
        let mut next = Instant::now() + interval;
        loop {
            match signals.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Signal::SampleNow) => {
                    self.sample()?;
                    continue;
                }
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.sample()?;
                    return Ok(self.stats());
                }
            }
            self.sample()?;
            next += interval;
            let now = Instant::now();
            if next <= now {
                // Late (a loaded machine): keep the interval from now rather than firing a burst to catch up.
                next = now + interval;
            }
        }
    }
}

/// What the owner of an observer tells its thread.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// Something just happened (a SYN, FIN or RST, a step's end): sample now rather than at the next tick.
    SampleNow,
    Stop,
}

/// `watch -n <interval> ss -tanoi` inside one host's namespace, as timeline events.
#[derive(Debug)]
pub struct Observer {
    host: HostId,
    stop: mpsc::Sender<Signal>,
    finished: mpsc::Receiver<Result<ObserverStats>>,
    thread: thread::JoinHandle<()>,
}

impl Observer {
    /// `watch -n <interval> ss -tanoi` inside `ns`: a thread samples every `interval` and emits an
    /// `EventKind::Socket` event for every socket whose (state, timer kind, retrans, recv_q, send_q) changed
    /// since the previous sample, and a `state: Gone` event when a socket disappears. Sockets are keyed by
    /// (local, remote) 4-tuple plus whether it is a listener; a SYN-RECV request socket turning into ESTABLISHED
    /// with the same 4-tuple is the same socket changing state.
    ///
    /// The first sample is taken before this returns, so a namespace without sock_diag fails here. Events are
    /// stamped with the time their dump was requested.
    pub fn start(ns: &Netns, host: HostId, interval: Duration, sink: EventSink) -> Result<Observer> {
        if interval.is_zero() {
            return Err(Error::Internal(format!("observer of {host}: the sampling interval must not be zero")));
        }
        let mut sampler = Sampler {
            socket: DiagSocket::open_in(ns)?,
            host,
            sink,
            samples: Vec::new(),
            tracker: ChangeTracker::default(),
            count: 0,
            total_dump_time: Duration::ZERO,
            max_dump_time: Duration::ZERO,
        };
        sampler.sample()?;
        let (stop, stop_rx) = mpsc::channel();
        let (finished_tx, finished) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("observe-{host}"))
            .spawn(move || {
                // A sample is stamped when it is requested: on a loaded machine an ordinary thread was seen to
                // miss short-lived states entirely (no sample for hundreds of ms). Best effort, as for the
                // program threads; a dump costs tens of microseconds, so the real-time thread takes little.
                let _ = crate::priority::raise_current_thread();
                // Nobody waits for the result only when `stop` already gave up on this thread.
                let _ = finished_tx.send(sampler.run(interval, stop_rx));
            })
            .context(|| format!("spawn the socket observer thread of {host}"))?;
        Ok(Observer { host, stop, finished, thread })
    }

    /// `ss -tanoi` right now: asks for a sample between ticks, so short-lived states (a handshake, a FIN
    /// exchange) are seen even when they last less than the sampling interval.
    pub fn poke(&self) {
        // A stopped thread needs no sample.
        let _ = self.stop.send(Signal::SampleNow);
    }

    /// Takes one last sample, stops the thread (bounded), returns the number of samples taken and the mean dump
    /// time. A dump that failed while running ends the sampling early and is reported here.
    pub fn stop(self) -> Result<ObserverStats> {
        // The thread is gone already if a dump failed; its result waits in `finished`.
        let _ = self.stop.send(Signal::Stop);
        match self.finished.recv_timeout(STOP_TIMEOUT) {
            Ok(result) => {
                self.thread
                    .join()
                    .map_err(|_| Error::Internal(format!("socket observer thread of {} panicked", self.host)))?;
                result
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::Internal(format!("socket observer of {} did not stop within {STOP_TIMEOUT:?}", self.host)))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Internal(format!("socket observer thread of {} panicked", self.host)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        local: SocketAddrV4,
        remote: SocketAddrV4,
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
        body.extend_from_slice(&row.local.ip().octets());
        body.extend_from_slice(&[0; 12]);
        body.extend_from_slice(&row.remote.ip().octets());
        body.extend_from_slice(&[0; 12]);
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
        let request = encode_request(7);
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
        let mut ipv6 = diag_row(1, "10.0.0.1:3", "10.0.0.2:4");
        ipv6.family = libc::AF_INET6 as u8;
        datagram.extend(diag_message(4, &ipv6, &[]));
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
}

/// Real sockets in namespaces made for each test (root needed; these fail, not skip, without it). Client and
/// server talk over `lo` inside one namespace; `ss` is the reference.
#[cfg(test)]
mod kernel_tests {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::process::Command;

    use nix::sys::socket::{bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

    use super::*;
    use crate::clock::Clock;
    use crate::timeline::Event;

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
            let peer =
                if sample.is_listener() { format!("{}:*", sample.remote.ip()) } else { sample.remote.to_string() };
            let row = rows
                .iter()
                .find(|r| r.local == sample.local.to_string() && r.peer == peer)
                .unwrap_or_else(|| panic!("{} missing from ss {rows:#?}", sample.label()));
            assert_eq!((row.state, row.recv_q, row.send_q), (sample.state, sample.recv_q, sample.send_q), "{row:?}");
            let timer = row.timer.as_ref().map(|(name, _)| name.as_str());
            assert_eq!(timer, sample.timer.map(TimerKind::name), "{row:?} vs {sample:?}");
            if compare_retrans {
                assert_eq!(row.timer.as_ref().map(|(_, n)| *n), sample.timer.map(|_| sample.retrans), "{row:?}");
            }
        }
    }

    fn socket_events(rx: &mpsc::Receiver<Event>, host: HostId) -> Vec<SocketEvent> {
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
        for label in
            [client_side(first_port), server_side(first_port), client_side(second_port), server_side(second_port)]
        {
            let socket = find(&samples, &label).unwrap_or_else(|| panic!("{label} not in {samples:#?}"));
            assert_eq!(socket.state, TcpState::Established, "{label}");
            let tcpi = socket.tcpi.unwrap_or_else(|| panic!("no tcp_info for {label}"));
            assert!(tcpi.rto >= Duration::from_millis(200), "{label}: rto {:?}", tcpi.rto);
        }
        assert_eq!(find(&samples, &server_side(second_port)).unwrap().recv_q, 0);
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
        assert!(stats.samples >= 50, "{stats:?}");
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
}

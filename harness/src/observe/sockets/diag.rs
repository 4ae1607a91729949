//! sock_diag (NETLINK_SOCK_DIAG) as `ss -tanoi` uses it: the dump request, and each `struct inet_diag_msg`
//! with its `tcp_info` decoded into a [`SocketSample`].
//!
//! The request and `struct inet_diag_msg` are encoded and decoded here rather than through
//! netlink-packet-sock-diag's `InetResponseHeader`, which keeps `idiag_retrans` only for the retransmission
//! timer: for keepalive and zero-window-probe timers it drops the probe count `ss -o` shows as the third timer
//! field, and for TIME-WAIT it drops `idiag_expires`, and those are what the scenarios are about. The crate is
//! also built on netlink-packet-core 0.9 while this crate's netlink stack is on 0.8, so its `NetlinkMessage`
//! would need a second core version. It still supplies the sock_diag constants and the `struct tcp_info`
//! layout (`TcpInfo`, feature `rich_nlas`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr as InetAddr};
use std::time::Duration;

use netlink_packet_sock_diag::constants::{AF_INET, INET_DIAG_INFO, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};
use netlink_packet_sock_diag::inet::nlas::TcpInfo;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;
use crate::scenario::plan::{TcpState, TimerKind};
use crate::timeline::SocketEvent;

/// `struct nlmsghdr`.
pub(super) const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
pub(super) const INET_DIAG_REQ_V2_LEN: usize = 56;
pub(super) const REQUEST_LEN: usize = NLMSG_HEADER_LEN + INET_DIAG_REQ_V2_LEN;
/// `struct inet_diag_msg`.
pub(super) const INET_DIAG_MSG_LEN: usize = 72;
/// `struct rtattr`.
pub(super) const ATTRIBUTE_HEADER_LEN: usize = 4;
/// Bits TCP_ESTABLISHED (1) to TCP_NEW_SYN_RECV (12): every state `ss -ta` lists, request sockets included.
/// TCP_BOUND_INACTIVE (13, bound but neither listening nor connected) is left out, as `ss -ta` leaves it out.
pub(super) const ALL_TCP_STATES: u32 = ((1 << 13) - 1) & !1;
/// A netlink dump never puts more than 32 KiB into one datagram, so one buffer this size takes any of them.
pub(super) const RECEIVE_BUFFER_LEN: usize = 32 * 1024;
/// The kernel answers a dump of one namespace in microseconds; a second means the socket is broken.
pub(super) const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);
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
    /// An IPv4 or IPv6 address and port, as `ss` prints them (`10.0.0.1:9000`, `[fd00::1]:9000`; a dual-stack
    /// socket's IPv4 peer as `[::ffff:10.0.0.1]:40000`).
    pub local: InetAddr,
    /// `0.0.0.0:0` (`[::]:0`) for a listener (`ss` prints `0.0.0.0:*`).
    pub remote: InetAddr,
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
}

/// A NETLINK_SOCK_DIAG socket of one namespace (what `ss` opens), with its receive buffer kept for reuse
/// between dumps.
#[derive(Debug)]
pub struct DiagSocket {
    socket: Socket,
    buffer: Vec<u8>,
    seq: u32,
    /// Whether the namespace has IPv6 (not `disable_ipv6`): each dump then asks for AF_INET6 sockets too
    /// (`ss -tanoi` without `-4`), where a namespace without IPv6 takes one request, not two.
    ipv6: bool,
}

impl DiagSocket {
    /// Opens the socket on a thread inside `ns`, so that it dumps that namespace's sockets (`ip netns exec`).
    pub fn open_in(ns: &Netns) -> Result<DiagSocket> {
        ns.run(DiagSocket::open_in_current_namespace)
    }

    pub(super) fn open_in_current_namespace() -> Result<DiagSocket> {
        let socket = Socket::new(NETLINK_SOCK_DIAG)
            .context(|| "open sock_diag socket (ss -tan: socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG))".into())?;
        socket.connect(&SocketAddr::new(0, 0)).context(|| "connect sock_diag socket to the kernel (ss -tan)".into())?;
        let timeout = TimeVal::milliseconds(RECEIVE_TIMEOUT.as_millis() as i64);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .context(|| "set SO_RCVTIMEO on the sock_diag socket".into())?;
        // /proc/sys/net is the calling thread's namespace's: IPv6 sockets are dumped where IPv6 is on.
        let ipv6 = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.trim() == "0");
        Ok(DiagSocket { socket, buffer: vec![0; RECEIVE_BUFFER_LEN], seq: 0, ipv6 })
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

/// `ss -tanoi` once: every IPv4 TCP socket of the namespace `socket` was opened in, request (SYN-RECV) and
/// TIME-WAIT sockets included, in the kernel's hash-table order.
#[cfg(test)]
pub fn dump(socket: &mut DiagSocket) -> Result<Vec<SocketSample>> {
    let mut samples = Vec::new();
    dump_into(socket, &mut samples)?;
    Ok(samples)
}

/// `ss -tanoi` once, into `samples` (cleared first), so that a sampler reuses one vector: the IPv4 sockets, then
/// the IPv6 ones where the namespace has IPv6 (one dump request per family, as `ss` makes them).
pub fn dump_into(socket: &mut DiagSocket, samples: &mut Vec<SocketSample>) -> Result<()> {
    samples.clear();
    dump_family(socket, AF_INET, samples)?;
    if socket.ipv6 {
        dump_family(socket, AF_INET6, samples)?;
    }
    Ok(())
}

fn dump_family(socket: &mut DiagSocket, family: u8, samples: &mut Vec<SocketSample>) -> Result<()> {
    let seq = socket.next_seq();
    let sent = socket
        .socket
        .send(&encode_request(seq, family), 0)
        .context(|| "send sock_diag dump request (ss -tan)".into())?;
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

pub(super) fn receive_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        let what = format!("receive sock_diag dump (ss -tan): no answer within {RECEIVE_TIMEOUT:?}");
        Error::sys(what, e)
    } else {
        Error::sys("receive sock_diag dump (ss -tan)", e)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    More,
    Done,
}

/// `AF_INET6`, as `inet_diag_req_v2.sdiag_family` takes it.
pub(super) const AF_INET6: u8 = libc::AF_INET6 as u8;

/// `nlmsghdr` + `inet_diag_req_v2`: dump all TCP sockets of `family` (AF_INET or AF_INET6) in every state, with
/// `INET_DIAG_INFO`.
pub(super) fn encode_request(seq: u32, family: u8) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0 (the kernel), then inet_diag_req_v2; its inet_diag_sockid stays all zero: no filter.
    let diag = &mut request[NLMSG_HEADER_LEN..];
    diag[0] = family;
    diag[1] = IPPROTO_TCP;
    diag[2] = 1 << (INET_DIAG_INFO - 1);
    diag[4..8].copy_from_slice(&ALL_TCP_STATES.to_ne_bytes());
    request
}

/// Walks the netlink messages of one datagram, appending the sockets of the dump numbered `seq`.
/// Messages with another sequence number are the rest of an earlier dump that failed halfway; they are skipped.
pub(super) fn parse_datagram(datagram: &[u8], seq: u32, samples: &mut Vec<SocketSample>) -> Result<Progress> {
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
pub(super) fn parse_inet_diag_msg(message: &[u8]) -> Result<Option<SocketSample>> {
    if message.len() < INET_DIAG_MSG_LEN {
        return Err(Error::Internal(format!(
            "sock_diag dump (ss -tan): a {}-byte message is shorter than struct inet_diag_msg ({INET_DIAG_MSG_LEN})",
            message.len()
        )));
    }
    let family = message[0];
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let Some(state) = TcpState::from_kernel(message[1]) else {
        return Ok(None);
    };
    let timer = TimerKind::from_kernel(message[2]);
    // inet_diag_sockid: sport, dport (big endian), src[4], dst[4] (32-bit words: an IPv4 address in the first
    // one, an IPv6 address in all four), if, cookie.
    let address = |at: usize| -> IpAddr {
        if family == AF_INET6 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&message[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            IpAddr::V4(ipv4_at(message, at))
        }
    };
    let local = InetAddr::new(address(8), u16::from_be_bytes([message[4], message[5]]));
    let remote = InetAddr::new(address(24), u16::from_be_bytes([message[6], message[7]]));
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
pub(super) fn summarize_tcp_info(payload: &[u8]) -> Option<TcpInfoSummary> {
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

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(super) fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(super) fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

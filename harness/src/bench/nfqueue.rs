//! The userspace-queue alternative of `netfault bench impair`: packets an `iptables -j NFQUEUE` rule (nft's xt
//! compatibility layer; this kernel has no native `nft queue`) hands to a netlink socket, each accepted once its
//! delay has passed (`libnetfilter_queue` does the same through libmnl). Written here on the raw
//! nfnetlink_queue protocol, with the same real-time thread and nanosecond sleeps as the wire, so the
//! comparison is between the two mechanisms and not between two programs' care.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::run::netns::Netns;
use crate::run::priority;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_TIMESTAMP: u16 = 4;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NF_ACCEPT: u32 = 1;
const NETLINK_NO_ENOBUFS: libc::c_int = 5;
/// Headers are all the queue needs to see.
const COPY_RANGE: u32 = 128;
const QUEUE_MAXLEN: u32 = 1 << 16;
const RECEIVE_BUFFER: libc::c_int = 16 << 20;
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A thread holding every packet of queue `queue` for `delay`, then accepting it.
pub struct DelayQueue {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

impl DelayQueue {
    /// Binds queue `queue` in `ns` (where the NFQUEUE rule is) and starts holding.
    pub fn start(ns: &Netns, queue: u16, delay: Duration) -> Result<DelayQueue> {
        let socket = ns.run(|| open(queue))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("nfqueue-delay".into())
            .spawn(move || hold(&socket, queue, delay, &stopping))
            .map_err(|e| Error::sys("spawn the NFQUEUE thread", e))?;
        Ok(DelayQueue { stop, thread })
    }

    /// Stops holding; returns how many packets were accepted.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| Error::Internal("NFQUEUE thread panicked".into()))?
    }
}

fn sys(what: &str) -> Error {
    Error::sys(format!("NFQUEUE: {what}"), io::Error::last_os_error())
}

/// A NETLINK_NETFILTER socket bound to `queue`, copying packet headers, in the calling thread's namespace.
fn open(queue: u16) -> Result<OwnedFd> {
    // SAFETY: plain system call without memory arguments.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(sys("socket(AF_NETLINK, NETLINK_NETFILTER)"));
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::observe::capture::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RECEIVE_BUFFER)
        .map_err(|e| Error::sys("NFQUEUE: setsockopt(SO_RCVBUFFORCE)", e))?;
    // Best effort: without it a burst beyond the buffer makes recv fail with ENOBUFS once, and then goes on.
    let _ = crate::observe::capture::set_option(&socket, libc::SOL_NETLINK, NETLINK_NO_ENOBUFS, &(1 as libc::c_int));
    let mut bind = message(NFQNL_MSG_CONFIG, queue, libc::NLM_F_ACK as u16);
    attribute(&mut bind, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8]);
    send(&socket, bind)?;
    expect_ack(&socket)?;
    let mut params = message(NFQNL_MSG_CONFIG, queue, libc::NLM_F_ACK as u16);
    let mut copy = COPY_RANGE.to_be_bytes().to_vec();
    copy.push(NFQNL_COPY_PACKET);
    attribute(&mut params, NFQA_CFG_PARAMS, &copy);
    attribute(&mut params, NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes());
    send(&socket, params)?;
    expect_ack(&socket)?;
    Ok(socket)
}

/// An nfnetlink message header for queue `queue`: nlmsghdr, then nfgenmsg (family, version 0, res_id).
fn message(kind: u16, queue: u16, flags: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    bytes.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    bytes.extend_from_slice(&queue.to_be_bytes());
    bytes
}

fn attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    message.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(payload);
    message.resize(message.len().next_multiple_of(4), 0);
}

fn send(socket: &OwnedFd, mut message: Vec<u8>) -> Result<()> {
    let len = message.len() as u32;
    message[..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: message is a live buffer of the given length; a connected netlink socket sends to the kernel.
    let sent = unsafe { libc::send(socket.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
    if sent < 0 {
        return Err(sys("send"));
    }
    Ok(())
}

fn expect_ack(socket: &OwnedFd) -> Result<()> {
    let mut buffer = [0u8; 4096];
    let mut fds = [libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: fds is live for the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) } <= 0 {
        return Err(Error::Internal("NFQUEUE: no answer to a configuration request within 2 s".into()));
    }
    // SAFETY: buffer is writable for its length.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    if n < 20 {
        return Err(sys("recv the acknowledgement"));
    }
    let code = i32::from_ne_bytes([buffer[16], buffer[17], buffer[18], buffer[19]]);
    if code != 0 {
        return Err(Error::sys("NFQUEUE: configure the queue", io::Error::from_raw_os_error(-code)));
    }
    Ok(())
}

fn wall_now() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// Receives queued packets and accepts each `delay` after its kernel timestamp (its arrival when the kernel
/// gave none), until `stop`.
fn hold(socket: &OwnedFd, queue: u16, delay: Duration, stop: &AtomicBool) -> Result<u64> {
    let _ = priority::raise_current_thread();
    let mut due: BinaryHeap<Reverse<(Duration, u32)>> = BinaryHeap::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut accepted = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = wall_now();
        while due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((_, id))) = due.pop() else { break };
            let mut verdict = message(NFQNL_MSG_VERDICT, queue, 0);
            let mut header = NF_ACCEPT.to_be_bytes().to_vec();
            header.extend_from_slice(&id.to_be_bytes());
            attribute(&mut verdict, NFQA_VERDICT_HDR, &header);
            send(socket, verdict)?;
            accepted += 1;
        }
        let timeout = due.peek().map_or(IDLE_WAIT, |Reverse((at, _))| at.saturating_sub(wall_now()).min(IDLE_WAIT));
        let mut fds = [libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        let timespec = libc::timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
        // SAFETY: fds and timespec are live for the call.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &timespec, std::ptr::null()) };
        loop {
            // SAFETY: buffer is writable for its length.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            for (id, stamp) in packets(&buffer[..n as usize]) {
                due.push(Reverse((stamp.unwrap_or_else(wall_now) + delay, id)));
            }
        }
    }
    Ok(accepted)
}

/// The packet ids and kernel timestamps of the NFQNL_MSG_PACKET messages in one datagram.
fn packets(datagram: &[u8]) -> Vec<(u32, Option<Duration>)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset + 16 <= datagram.len() {
        let len = u32::from_ne_bytes(datagram[offset..offset + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
        if len < 16 || offset + len > datagram.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let (mut id, mut stamp) = (None, None);
            let mut at = offset + 20;
            while at + 4 <= offset + len {
                let attr_len = u16::from_ne_bytes([datagram[at], datagram[at + 1]]) as usize;
                let attr_kind = u16::from_ne_bytes([datagram[at + 2], datagram[at + 3]]) & 0x3fff;
                if attr_len < 4 || at + attr_len > offset + len {
                    break;
                }
                let value = &datagram[at + 4..at + attr_len];
                match attr_kind {
                    NFQA_PACKET_HDR if value.len() >= 4 => {
                        id = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
                    }
                    NFQA_TIMESTAMP if value.len() >= 16 => {
                        let seconds = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
                        let micros = u64::from_be_bytes(value[8..16].try_into().unwrap_or_default());
                        stamp = Some(Duration::from_secs(seconds) + Duration::from_micros(micros));
                    }
                    _ => {}
                }
                at += attr_len.next_multiple_of(4);
            }
            if let Some(id) = id {
                found.push((id, stamp));
            }
        }
        offset += len.next_multiple_of(4);
    }
    found
}

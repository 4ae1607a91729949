//! The nftables netlink socket of one namespace: sends rule batches and waits for their acks, and
//! dumps counters; created inside the namespace, then usable from any thread.

use std::ffi::CStr;
use std::io;
use std::mem;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mnl::NlMessages;
use nftnl::{FinalizedBatch, ProtoFamily};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::stat::fstat;
use nix::sys::time::TimeVal;

use super::expr::{parse_counter, write_counter_dump_request, CounterValue};
use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;

/// How long the kernel may take to answer one request before we call it stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Dump requests count from here so that they never share a sequence number with batch messages,
/// which nftnl numbers from 1.
const FIRST_DUMP_SEQ: u32 = 1 << 31;

/// A `NETLINK_NETFILTER` socket bound to the namespace it was created in.
pub(super) struct NetfilterSocket {
    socket: mnl::Socket,
    /// Receive buffer; `u64` cells keep it aligned for `nlmsghdr`.
    buffer: Vec<u64>,
    dump_seq: u32,
}

// SAFETY: an mnl socket is a file descriptor plus the address it is bound to; libmnl keeps no
// thread-bound state, and every use goes through `&mut self`.
unsafe impl Send for NetfilterSocket {}

impl NetfilterSocket {
    /// Opens the socket on a thread inside `ns` and checks that it belongs to `ns`.
    pub fn open(ns: &Netns) -> Result<NetfilterSocket> {
        let socket = ns.run(NetfilterSocket::here)?;
        if !socket.belongs_to(ns)? {
            return Err(Error::Internal(
                "the nftables socket created inside the host namespace belongs to another namespace".into(),
            ));
        }
        Ok(socket)
    }

    /// Opens the socket in the calling thread's namespace.
    pub fn here() -> Result<NetfilterSocket> {
        let socket = mnl::Socket::new(mnl::Bus::Netfilter)
            .context(|| "open netlink socket NETLINK_NETFILTER (nft)".to_string())?;
        let socket = NetfilterSocket {
            socket,
            buffer: vec![0; nftnl::nft_nlmsg_maxsize().div_ceil(8) as usize],
            dump_seq: FIRST_DUMP_SEQ,
        };
        setsockopt(
            &socket.fd(),
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc::timeval { tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 }),
        )
        .context(|| "setsockopt(SO_RCVTIMEO) on the nftables socket".to_string())?;
        Ok(socket)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open as long as `self.socket`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }

    /// Whether the socket talks to `ns` (`ioctl(SIOCGSKNS)` gives the socket's namespace).
    pub fn belongs_to(&self, ns: &Netns) -> Result<bool> {
        // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor or -1.
        let raw = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCGSKNS as _) };
        if raw < 0 {
            return Err(Error::last_os("ioctl(SIOCGSKNS) on the nftables socket"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let socket_ns = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket_ns = fstat(&socket_ns).context(|| "fstat socket namespace".to_string())?;
        let host_ns = fstat(ns.fd()).context(|| "fstat host namespace".to_string())?;
        Ok(socket_ns.st_dev == host_ns.st_dev && socket_ns.st_ino == host_ns.st_ino)
    }

    /// Sends a batch in one `sendmsg` (the kernel applies a batch only if it arrives whole) and
    /// waits for every ack; the first error the kernel reports fails the whole batch.
    pub fn apply(&mut self, batch: &FinalizedBatch) -> io::Result<()> {
        let iovecs: Vec<libc::iovec> = batch
            .iter()
            .map(|page| libc::iovec { iov_base: page.as_ptr().cast_mut().cast(), iov_len: page.len() })
            .collect();
        let total: usize = iovecs.iter().map(|iov| iov.iov_len).sum();
        // SAFETY: an all-zero sockaddr_nl with its family set is the kernel's address.
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: all-zero is a valid msghdr (no name, no iovecs, no control data).
        let mut message: libc::msghdr = unsafe { mem::zeroed() };
        message.msg_name = (&raw mut kernel).cast();
        message.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        message.msg_iov = iovecs.as_ptr().cast_mut();
        message.msg_iovlen = iovecs.len() as _;
        // SAFETY: `message` points at `kernel` and at `iovecs`, whose pages `batch` keeps alive.
        let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &message, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != total {
            return Err(io::Error::other(format!("sent {sent} of {total} bytes of the batch")));
        }
        let result = self.wait_for_acks(batch.sequence_numbers());
        if result.is_err() {
            self.drain();
        }
        result
    }

    fn wait_for_acks(&mut self, expected: Range<u32>) -> io::Result<()> {
        let mut acked = vec![false; expected.len()];
        let mut missing = acked.len();
        while missing > 0 {
            let received = self.receive()?;
            for message in NlMessages::new(received) {
                let message = message?;
                let header = header(message);
                if header.nlmsg_type == libc::NLMSG_ERROR as u16 {
                    error_code(message)?;
                }
                if expected.contains(&header.nlmsg_seq) {
                    let slot = &mut acked[(header.nlmsg_seq - expected.start) as usize];
                    if !*slot {
                        *slot = true;
                        missing -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// `nft list counters table <family> <table>`: every counter object of the table.
    pub fn counters(&mut self, family: ProtoFamily, table: &CStr) -> io::Result<Vec<CounterValue>> {
        self.dump_seq = self.dump_seq.wrapping_add(1).max(FIRST_DUMP_SEQ);
        let seq = self.dump_seq;
        let mut request = vec![0u64; 512];
        let len = write_counter_dump_request(bytes_mut(&mut request), family, table, seq);
        let sent = self.socket.send(&bytes_mut(&mut request)[..len])?;
        if sent != len {
            return Err(io::Error::other(format!("sent {sent} of {len} bytes of the counter dump request")));
        }
        let result = self.collect_dump(seq, table);
        if result.is_err() {
            self.drain();
        }
        result
    }

    /// `conntrack -F`: an IPCTNL_MSG_CT_DELETE of ctnetlink without a tuple, which deletes every IPv4 entry of
    /// the namespace; waits for the kernel's ack.
    pub fn flush_conntrack(&mut self) -> io::Result<()> {
        const NFNL_SUBSYS_CTNETLINK: u16 = 1;
        const IPCTNL_MSG_CT_DELETE: u16 = 2;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        self.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, flags, &[], "conntrack flush")
    }

    /// What `iptables -m <name>` does before it adds a rule: asks nft_compat for the newest revision of the
    /// xtables match `name` (at least `revision`) for IPv4 (NFNL_MSG_COMPAT_GET). The kernel loads nft_compat
    /// and the match's module (`ipt_<name>`) for the question if they are not loaded; a rule of an `inet`
    /// table cannot make it load them.
    pub fn load_xt_match(&mut self, name: &CStr, revision: u32) -> io::Result<()> {
        const NFNL_SUBSYS_NFT_COMPAT: u16 = 11;
        const NFNL_MSG_COMPAT_GET: u16 = 0;
        const NFTA_COMPAT_NAME: u16 = 1;
        const NFTA_COMPAT_REV: u16 = 2;
        const NFTA_COMPAT_TYPE: u16 = 3;
        const COMPAT_TYPE_MATCH: u32 = 0;
        // The name with its NUL, the revision and the type in network byte order. No NLM_F_ACK: the kernel
        // answers with the revision, or with an error.
        let attributes: [(u16, &[u8]); 3] = [
            (NFTA_COMPAT_NAME, name.to_bytes_with_nul()),
            (NFTA_COMPAT_REV, &revision.to_be_bytes()),
            (NFTA_COMPAT_TYPE, &COMPAT_TYPE_MATCH.to_be_bytes()),
        ];
        let message_type = (NFNL_SUBSYS_NFT_COMPAT << 8) | NFNL_MSG_COMPAT_GET;
        self.request(message_type, libc::NLM_F_REQUEST as u16, &attributes, "match query")
    }

    /// Sends one nfnetlink request of `message_type` (subsystem << 8 | message) with `flags`, for the IPv4
    /// family, carrying `attributes` (each padded to 4 bytes), and waits for the kernel's first answer to it
    /// (its ack or its reply; an error fails). `what` names the request in a short send's error.
    fn request(&mut self, message_type: u16, flags: u16, attributes: &[(u16, &[u8])], what: &str) -> io::Result<()> {
        self.dump_seq = self.dump_seq.wrapping_add(1).max(FIRST_DUMP_SEQ);
        let seq = self.dump_seq;
        let header_len = mem::size_of::<libc::nlmsghdr>();
        // nlmsghdr, then nfgenmsg: family, version (NFNETLINK_V0), resource id (0, big-endian).
        let mut message = vec![0u8; header_len + 4];
        message[header_len] = libc::AF_INET as u8;
        for (kind, value) in attributes {
            message.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            message.extend_from_slice(&kind.to_ne_bytes());
            message.extend_from_slice(value);
            message.resize(message.len().next_multiple_of(4), 0);
        }
        let len = message.len() as u32;
        message[0..4].copy_from_slice(&len.to_ne_bytes());
        message[4..6].copy_from_slice(&message_type.to_ne_bytes());
        message[6..8].copy_from_slice(&flags.to_ne_bytes());
        message[8..12].copy_from_slice(&seq.to_ne_bytes());
        let sent = self.socket.send(&message)?;
        if sent != message.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes of the {what}", message.len())));
        }
        let result = self.wait_for_acks(seq..seq + 1);
        if result.is_err() {
            self.drain();
        }
        result
    }

    fn collect_dump(&mut self, seq: u32, table: &CStr) -> io::Result<Vec<CounterValue>> {
        let table = table.to_string_lossy();
        let mut counters = Vec::new();
        loop {
            let received = self.receive()?;
            for message in NlMessages::new(received) {
                let message = message?;
                let header = header(message);
                if header.nlmsg_seq != seq {
                    continue;
                }
                match i32::from(header.nlmsg_type) {
                    libc::NLMSG_DONE => return Ok(counters),
                    libc::NLMSG_ERROR => error_code(message)?,
                    _ => {
                        let counter = parse_counter(header)
                            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable counter object"))?;
                        if counter.table == table {
                            counters.push(counter);
                        }
                    }
                }
            }
        }
    }

    fn receive(&mut self) -> io::Result<&[u8]> {
        let buffer = bytes_mut(&mut self.buffer);
        match self.socket.recv_raw(buffer) {
            Ok(n) => Ok(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from nftables within {REPLY_TIMEOUT:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Throws away replies still queued after a failed request, so the next request starts clean.
    fn drain(&mut self) {
        let buffer = bytes_mut(&mut self.buffer);
        for _ in 0..1024 {
            // SAFETY: `buffer` is writable for its whole length.
            let n = unsafe {
                libc::recv(self.socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT)
            };
            if n <= 0 {
                return;
            }
        }
    }
}

fn bytes_mut(cells: &mut [u64]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u8 and the length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts_mut(cells.as_mut_ptr().cast(), mem::size_of_val(cells)) }
}

/// The header of a message that `NlMessages` has checked to be whole and aligned.
fn header(message: &[u8]) -> &libc::nlmsghdr {
    // SAFETY: NlMessages yields only aligned messages at least a header long.
    unsafe { &*message.as_ptr().cast::<libc::nlmsghdr>() }
}

/// The errno of an `NLMSG_ERROR` message: `Ok` for an ack, `Err` for a refusal.
fn error_code(message: &[u8]) -> io::Result<()> {
    let at = mem::size_of::<libc::nlmsghdr>();
    let code = message
        .get(at..at + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated NLMSG_ERROR"))?;
    match code {
        0 => Ok(()),
        negative => Err(io::Error::from_raw_os_error(-negative)),
    }
}

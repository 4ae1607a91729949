//! A synchronous rtnetlink client (`ip link`, `ip addr`): batches of requests on one socket of a namespace,
//! every answer awaited with a bounded receive, NACKs turned into errors with the kernel's explanation.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::net::Ipv6Addr;

use crate::error::{Context, Error, Result};

/// Longest wait for one netlink answer. Generous because namespace teardown elsewhere can hold the RTNL lock.
pub(super) const NETLINK_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Large enough for any single answer we ask for (a link message is about 1.5 KiB).
pub(super) const NETLINK_RECV_BUFFER: usize = 64 * 1024;
/// One request of a batch, with what it does in `ip` terms for the error message.
pub(crate) struct Request {
    message: RouteNetlinkMessage,
    flags: u16,
    what: String,
}

impl Request {
    pub(crate) fn new(message: RouteNetlinkMessage, flags: u16, what: String) -> Request {
        Request { message, flags, what }
    }
}

/// A synchronous rtnetlink socket of one namespace: requests go out in batches, every answer is awaited with
/// a bounded receive.
pub(crate) struct Rtnl {
    socket: Socket,
    next_sequence: u32,
    buffer: Vec<u8>,
}

impl Rtnl {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)` in the calling thread's namespace.
    pub(crate) fn open() -> Result<Rtnl> {
        let what = || "open rtnetlink socket (socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE))".to_string();
        let mut socket = Socket::new(NETLINK_ROUTE).context(what)?;
        socket.bind_auto().context(what)?;
        socket.connect(&SocketAddr::new(0, 0)).context(what)?;
        // Errors then carry only the request's header back, plus the kernel's explanation.
        socket.set_cap_ack(true).context(what)?;
        socket.set_ext_ack(true).context(what)?;
        let timeout = TimeVal::new(NETLINK_REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .context(|| "bound netlink receives (setsockopt SO_RCVTIMEO)".to_string())?;
        Ok(Rtnl { socket, next_sequence: 1, buffer: Vec::with_capacity(NETLINK_RECV_BUFFER) })
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends every request in one datagram and waits for all their ACKs; the first NACK is the error.
    pub(crate) fn execute(&mut self, requests: Vec<Request>) -> Result<()> {
        let first_sequence = self.next_sequence;
        let mut whats = Vec::with_capacity(requests.len());
        let mut datagram = Vec::new();
        for request in requests {
            let sequence = self.take_sequence();
            append_message(&mut datagram, request.message, request.flags | NLM_F_ACK, sequence);
            whats.push(request.what);
        }
        let batch_what = whats.join("; ");
        self.send(&datagram, &batch_what)?;

        let deadline = Instant::now() + NETLINK_REPLY_TIMEOUT;
        let mut acked = vec![false; whats.len()];
        while acked.iter().any(|done| !done) {
            for message in self.receive(&batch_what, deadline)? {
                let index = message.header.sequence_number.wrapping_sub(first_sequence);
                let Some(slot) = acked.get_mut(index as usize) else {
                    continue;
                };
                if let NetlinkPayload::Error(error) = &message.payload {
                    if error.code.is_some() {
                        return Err(nack_error(&whats[index as usize], &message.header, error));
                    }
                    *slot = true;
                }
            }
        }
        Ok(())
    }

    /// `ip link show <name>`: the link's header and attributes.
    pub(super) fn get_link(&mut self, name: &str, what: &str) -> Result<LinkMessage> {
        let mut query = LinkMessage::default();
        query.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.request(RouteNetlinkMessage::GetLink(query), 0, what, |message| match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Some(Ok(link.clone())),
            NetlinkPayload::Error(error) if error.code.is_some() => Some(Err(nack_error(what, &message.header, error))),
            _ => None,
        })
    }

    /// `ip -6 addr show dev <ifindex> tentative`: whether an IPv6 address of the interface is still tentative
    /// (not yet usable: it neither receives nor sends until the interface is ready, even with `nodad`).
    pub(super) fn has_tentative_ipv6(&mut self, ifindex: u32, what: &str) -> Result<bool> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet6;
        let mut tentative = false;
        self.request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP, what, |message| match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address))
                if address.header.index == ifindex =>
            {
                tentative |= address.header.flags.contains(AddressHeaderFlags::Tentative)
                    || address.attributes.iter().any(|attribute| {
                        matches!(attribute, AddressAttribute::Flags(flags) if flags.contains(AddressFlags::Tentative))
                    });
                None
            }
            NetlinkPayload::Done(_) => Some(Ok(tentative)),
            NetlinkPayload::Error(error) if error.code.is_some() => Some(Err(nack_error(what, &message.header, error))),
            _ => None,
        })
    }

    /// `ip -6 route get <address>`: whether the kernel delivers packets to `address` locally (route type
    /// `local`), which it does once the address is usable: its local route goes in after the address leaves
    /// the tentative state.
    pub(super) fn is_local_ipv6(&mut self, address: Ipv6Addr, what: &str) -> Result<bool> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet6;
        query.header.destination_prefix_length = 128;
        query.attributes.push(RouteAttribute::Destination(RouteAddress::Inet6(address)));
        self.request(RouteNetlinkMessage::GetRoute(query), 0, what, |message| match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                Some(Ok(route.header.kind == RouteType::Local))
            }
            // No route to it at all yet (ENETUNREACH, EHOSTUNREACH): not local either.
            NetlinkPayload::Error(error) if error.code.is_some() => Some(Ok(false)),
            _ => None,
        })
    }

    /// One request and its answer: each message of the answer goes to `answer` until it gives the result;
    /// bounded by [`NETLINK_REPLY_TIMEOUT`].
    fn request<T>(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
        what: &str,
        mut answer: impl FnMut(&NetlinkMessage<RouteNetlinkMessage>) -> Option<Result<T>>,
    ) -> Result<T> {
        let sequence = self.take_sequence();
        let mut datagram = Vec::new();
        append_message(&mut datagram, request, flags, sequence);
        self.send(&datagram, what)?;
        let deadline = Instant::now() + NETLINK_REPLY_TIMEOUT;
        loop {
            for message in self.receive(what, deadline)? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                if let Some(result) = answer(&message) {
                    return result;
                }
            }
        }
    }

    /// `ip monitor link`: the socket also receives a notification for every link change of its namespace
    /// (the answers to requests are told apart by their sequence numbers).
    pub(super) fn watch_links(&self) -> io::Result<()> {
        const RTNLGRP_LINK: u32 = 1;
        // `ip monitor address route` for IPv6: an address leaving the tentative state, and its local route
        // going in, are announced there.
        const RTNLGRP_IPV6_IFADDR: u32 = 9;
        const RTNLGRP_IPV6_ROUTE: u32 = 11;
        self.socket.add_membership(RTNLGRP_LINK)?;
        self.socket.add_membership(RTNLGRP_IPV6_IFADDR)?;
        self.socket.add_membership(RTNLGRP_IPV6_ROUTE)
    }

    /// Waits at most `timeout` for a notification (or anything else) to arrive, and drops what came.
    pub(super) fn wait_for_notification(&mut self, timeout: Duration, what: &str) -> Result<()> {
        let millis = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(Error::sys(format!("{what}: wait for a link notification (poll)"), e)),
        }
        loop {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, libc::MSG_DONTWAIT) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Error::sys(format!("{what}: receive link notification"), e)),
            }
        }
    }

    pub(super) fn take_sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    pub(super) fn send(&self, datagram: &[u8], what: &str) -> Result<()> {
        let sent = self.socket.send(datagram, 0).context(|| format!("{what}: send netlink request"))?;
        if sent != datagram.len() {
            return Err(Error::Internal(format!(
                "{what}: netlink request truncated ({sent} of {} bytes)",
                datagram.len()
            )));
        }
        Ok(())
    }

    /// One datagram from the kernel, split into its messages. Each receive waits at most
    /// [`NETLINK_REPLY_TIMEOUT`], and none starts after `deadline`.
    pub(super) fn receive(
        &mut self,
        what: &str,
        deadline: Instant,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let timed_out = || {
            Error::sys(
                format!("{what}: no netlink answer within {NETLINK_REPLY_TIMEOUT:?}"),
                io::Error::from(io::ErrorKind::TimedOut),
            )
        };
        let length = loop {
            if Instant::now() > deadline {
                return Err(timed_out());
            }
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, libc::MSG_TRUNC) {
                Ok(length) => break length,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(Error::sys(format!("{what}: receive netlink answer"), e)),
            }
        };
        if length > self.buffer.len() {
            return Err(Error::Internal(format!(
                "{what}: netlink answer of {length} bytes does not fit in {} bytes",
                self.buffer.len()
            )));
        }
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < length {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..length])
                .map_err(|e| Error::Internal(format!("{what}: undecodable netlink answer: {e}")))?;
            let message_length = message.header.length as usize;
            if message_length == 0 {
                return Err(Error::Internal(format!("{what}: netlink answer with a zero-length message")));
            }
            offset += (message_length + 3) & !3;
            messages.push(message);
        }
        Ok(messages)
    }
}

pub(super) fn append_message(datagram: &mut Vec<u8>, message: RouteNetlinkMessage, flags: u16, sequence: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = datagram.len();
    datagram.resize(start + message.buffer_len(), 0);
    message.serialize(&mut datagram[start..]);
}

/// The errno of a NACK, with the kernel's extended-ACK explanation (e.g. "Invalid MTU") added to `what`.
pub(super) fn nack_error(what: &str, header: &NetlinkHeader, error: &netlink_packet_core::ErrorMessage) -> Error {
    match extended_ack_message(header, &error.header) {
        Some(explanation) => Error::sys(format!("{what} [kernel: {explanation}]"), error.to_io()),
        None => Error::sys(what.to_string(), error.to_io()),
    }
}

/// NLMSGERR_ATTR_MSG from the attributes that follow the echoed request (only its header when capped).
pub(super) fn extended_ack_message(header: &NetlinkHeader, payload: &[u8]) -> Option<String> {
    const NETLINK_HEADER_LEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if header.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if header.flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize
    };
    let mut attributes = payload.get((echoed + 3) & !3..)?;
    while attributes.len() >= 4 {
        let length = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 || length > attributes.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attributes[4..length];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attributes = attributes.get((length + 3) & !3..).unwrap_or_default();
    }
    None
}

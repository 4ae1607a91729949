//! The sockets one host's program holds (by name, and which one is current), and the plain blocking socket
//! calls its steps make, each giving the kernel's answer as an `io::Result`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use crate::scenario::plan::{Family, ShutdownHow};

/// The descriptor number given to calls on a socket that is closed or was never made: the kernel answers
/// EBADF, as it would for the stale number, without the risk of hitting a descriptor another thread has
/// been given since.
pub const NO_SOCKET: RawFd = -1;

/// The sockets a host's program made, open or closed by a step; dropping it closes those still open.
#[derive(Debug, Default)]
pub struct HostSockets {
    entries: Vec<Entry>,
    /// Index into `entries` of the socket made last (by `socket`, `accept` or an implicit creation).
    current: Option<usize>,
}

#[derive(Debug)]
struct Entry {
    name: Option<String>,
    /// `None` once a `close` step closed it.
    fd: Option<OwnedFd>,
}

/// What a step's socket reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Open(RawFd),
    /// Closed by an earlier `close` step.
    Closed,
    /// No socket by that name, or none made yet.
    Missing,
}

impl Lookup {
    /// The number to hand to the kernel.
    pub fn fd(self) -> RawFd {
        match self {
            Lookup::Open(fd) => fd,
            Lookup::Closed | Lookup::Missing => NO_SOCKET,
        }
    }
}

impl HostSockets {
    /// The named socket (the last one given that name), or the current one.
    pub fn lookup(&self, name: Option<&str>) -> Lookup {
        let index = match name {
            Some(name) => self.entries.iter().rposition(|e| e.name.as_deref() == Some(name)),
            None => self.current,
        };
        match index.map(|i| &self.entries[i]) {
            Some(Entry { fd: Some(fd), .. }) => Lookup::Open(fd.as_raw_fd()),
            Some(Entry { fd: None, .. }) => Lookup::Closed,
            None => Lookup::Missing,
        }
    }

    /// Keeps `fd` under `name`, as the new current socket.
    pub fn add(&mut self, name: Option<String>, fd: OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        self.entries.push(Entry { name, fd: Some(fd) });
        self.current = Some(self.entries.len() - 1);
        raw
    }

    /// Takes the named (or current) socket out for closing; it stays known as closed.
    pub fn take(&mut self, name: Option<&str>) -> Option<OwnedFd> {
        let index = match name {
            Some(name) => self.entries.iter().rposition(|e| e.name.as_deref() == Some(name)),
            None => self.current,
        }?;
        self.entries[index].fd.take()
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// `addr` as the kernel takes it: a `sockaddr_in` or a `sockaddr_in6`.
fn sockaddr(addr: SocketAddr) -> SockaddrStorage {
    SockaddrStorage::from(addr)
}

/// The address the kernel wrote into `raw`, `len` bytes of it (AF_INET or AF_INET6; anything else reads as
/// `0.0.0.0:0`).
fn from_sockaddr(raw: &libc::sockaddr_storage, len: libc::socklen_t) -> SocketAddr {
    // SAFETY: the kernel filled `raw` and said how much of it in `len`.
    let storage = unsafe { SockaddrStorage::from_raw((raw as *const libc::sockaddr_storage).cast(), Some(len)) };
    let Some(storage) = storage else { return UNSPECIFIED };
    if let Some(v6) = storage.as_sockaddr_in6() {
        return SocketAddr::V6(SocketAddrV6::from(*v6));
    }
    storage.as_sockaddr_in().map_or(UNSPECIFIED, |v4| SocketAddr::V4(SocketAddrV4::from(*v4)))
}

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

fn empty_sockaddr() -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
    (unsafe { mem::zeroed() }, mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t)
}

/// `socket(AF_INET or AF_INET6, SOCK_STREAM | SOCK_CLOEXEC [| SOCK_NONBLOCK], 0)`.
pub fn tcp_socket(family: Family, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let domain = match family {
        Family::Ipv4 => libc::AF_INET,
        Family::Ipv6 => libc::AF_INET6,
    };
    // SAFETY: plain system call; a non-negative result is a new descriptor owned by no one else.
    let fd = check(unsafe { libc::socket(domain, flags, 0) })?;
    // SAFETY: `fd` was just returned by socket(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `getsockopt(fd, SOL_SOCKET, SO_DOMAIN)`: whether the socket is IPv4 or IPv6.
pub fn family(fd: RawFd) -> io::Result<Family> {
    let mut domain: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` is a writable int and `len` its size.
    check(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut domain as *mut libc::c_int).cast(), &mut len)
    })?;
    Ok(if domain == libc::AF_INET6 { Family::Ipv6 } else { Family::Ipv4 })
}

/// `bind(fd, addr)`.
pub fn bind(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let raw = sockaddr(addr);
    // SAFETY: `raw` holds a valid sockaddr of the length passed.
    check(unsafe { libc::bind(fd, raw.as_ptr(), raw.len()) }).map(drop)
}

/// `listen(fd, backlog)`.
pub fn listen(fd: RawFd, backlog: u32) -> io::Result<()> {
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain system call on a number.
    check(unsafe { libc::listen(fd, backlog) }).map(drop)
}

/// `accept4(fd, &peer, SOCK_CLOEXEC)`: blocks until a connection is queued, unless `fd` is nonblocking or
/// `nonblocking` asks for this call alone not to block (EAGAIN when the accept queue is empty).
pub fn accept(fd: RawFd, nonblocking: bool) -> io::Result<(OwnedFd, SocketAddr)> {
    let (mut peer, mut len) = empty_sockaddr();
    let new_fd = without_blocking_if(fd, nonblocking, || {
        // SAFETY: `peer` is a writable sockaddr_storage and `len` its size.
        check(unsafe {
            libc::accept4(fd, (&mut peer as *mut libc::sockaddr_storage).cast(), &mut len, libc::SOCK_CLOEXEC)
        })
    })?;
    // SAFETY: `new_fd` was just returned by accept4(2).
    Ok((unsafe { OwnedFd::from_raw_fd(new_fd) }, from_sockaddr(&peer, len)))
}

/// `connect(fd, addr)`. With `nonblocking`, O_NONBLOCK is set just for this call (so it returns EINPROGRESS
/// at once) and the descriptor's previous mode is restored afterwards, whatever the outcome, so that later
/// steps block as written.
pub fn connect(fd: RawFd, addr: SocketAddr, nonblocking: bool) -> io::Result<()> {
    let raw = sockaddr(addr);
    without_blocking_if(fd, nonblocking, || {
        // SAFETY: `raw` holds a valid sockaddr of the length passed.
        check(unsafe { libc::connect(fd, raw.as_ptr(), raw.len()) }).map(drop)
    })
}

/// Runs `call` on `fd`, with O_NONBLOCK set for it alone when `nonblocking` (`fcntl(fd, F_SETFL, flags |
/// O_NONBLOCK)` before, the previous flags after, whatever the outcome).
fn without_blocking_if<T>(fd: RawFd, nonblocking: bool, call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if !nonblocking {
        return call();
    }
    let flags = fcntl_getfl(fd)?;
    if flags & libc::O_NONBLOCK != 0 {
        return call();
    }
    fcntl_setfl(fd, flags | libc::O_NONBLOCK)?;
    let result = call();
    fcntl_setfl(fd, flags)?;
    result
}

/// `fcntl(fd, F_GETFL)`.
pub fn fcntl_getfl(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: plain system call on a number.
    check(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

fn fcntl_setfl(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain system call on a number.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// `getsockname(fd)`.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let (mut local, mut len) = empty_sockaddr();
    // SAFETY: `local` is a writable sockaddr_storage and `len` its size.
    check(unsafe { libc::getsockname(fd, (&mut local as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    Ok(from_sockaddr(&local, len))
}

/// `send(fd, buf, len, flags)`: the bytes the kernel took (possibly fewer than `buf.len()`).
pub fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    check_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) })
}

/// `recv(fd, buf, len, flags)`: 0 means the peer's FIN (end of file).
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// `shutdown(fd, SHUT_RD | SHUT_WR | SHUT_RDWR)`.
pub fn shutdown(fd: RawFd, how: ShutdownHow) -> io::Result<()> {
    let how = match how {
        ShutdownHow::Rd => libc::SHUT_RD,
        ShutdownHow::Wr => libc::SHUT_WR,
        ShutdownHow::Rdwr => libc::SHUT_RDWR,
    };
    // SAFETY: plain system call on a number.
    check(unsafe { libc::shutdown(fd, how) }).map(drop)
}

/// `close(fd)`, with its result (a lingering close can block and report).
pub fn close(fd: OwnedFd) -> io::Result<()> {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` came out of an OwnedFd, so it is open and closed exactly once here.
    check(unsafe { libc::close(raw) }).map(drop)
}

/// `close(-1)`: a `close` step on a socket already closed or never made; the kernel answers EBADF.
pub fn close_no_socket() -> io::Result<()> {
    // SAFETY: -1 is never an open descriptor, so nothing is closed.
    check(unsafe { libc::close(NO_SOCKET) }).map(drop)
}

/// `poll([{fd, events}], 1, timeout)`: the returned events, or `None` on timeout.
pub fn poll(fd: RawFd, events: i16, timeout: Duration) -> io::Result<Option<i16>> {
    let mut pollfd = libc::pollfd { fd, events, revents: 0 };
    let millis = libc::c_int::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is one valid, writable pollfd.
    let ready = check(unsafe { libc::poll(&mut pollfd, 1, millis) })?;
    Ok((ready > 0).then_some(pollfd.revents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::netns::Netns;

    #[test]
    fn lookup_by_name_current_and_closed() {
        let netns = Netns::new_anonymous().unwrap();
        netns
            .run(|| {
                let mut sockets = HostSockets::default();
                assert_eq!(sockets.lookup(None), Lookup::Missing);
                assert_eq!(Lookup::Missing.fd(), NO_SOCKET);
                let first = sockets.add(Some("a".into()), tcp_socket(Family::Ipv4, false).unwrap());
                let second = sockets.add(None, tcp_socket(Family::Ipv4, false).unwrap());
                assert_eq!(sockets.lookup(None), Lookup::Open(second));
                assert_eq!(sockets.lookup(Some("a")), Lookup::Open(first));
                assert_eq!(sockets.lookup(Some("b")), Lookup::Missing);
                close(sockets.take(Some("a")).unwrap()).unwrap();
                assert_eq!(sockets.lookup(Some("a")), Lookup::Closed);
                assert!(sockets.take(Some("a")).is_none());
                assert_eq!(sockets.lookup(None), Lookup::Open(second));
                assert_eq!(send(NO_SOCKET, b"x", 0).unwrap_err().raw_os_error(), Some(libc::EBADF));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn nonblocking_connect_restores_blocking_mode() {
        let netns = Netns::new_anonymous().unwrap();
        netns
            .run(|| {
                let socket = tcp_socket(Family::Ipv4, false).unwrap();
                let fd = socket.as_raw_fd();
                // `lo` is down in a new namespace: the kernel refuses at once, still through the O_NONBLOCK path.
                let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
                let err = connect(fd, target, true).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
                assert_eq!(fcntl_getfl(fd).unwrap() & libc::O_NONBLOCK, 0);
                let nonblocking = tcp_socket(Family::Ipv4, true).unwrap();
                let _ = connect(nonblocking.as_raw_fd(), target, true);
                assert_ne!(fcntl_getfl(nonblocking.as_raw_fd()).unwrap() & libc::O_NONBLOCK, 0);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn poll_returns_ready_events_before_the_timeout() {
        let netns = Netns::new_anonymous().unwrap();
        netns
            .run(|| {
                let socket = tcp_socket(Family::Ipv4, false).unwrap();
                let start = std::time::Instant::now();
                // An unconnected TCP socket (state CLOSE) reports POLLHUP at once, whatever the timeout.
                let revents = poll(socket.as_raw_fd(), libc::POLLIN, Duration::from_secs(5)).unwrap();
                assert_eq!(revents, Some(libc::POLLHUP));
                assert!(start.elapsed() < Duration::from_secs(1));
                Ok(())
            })
            .unwrap();
    }
}

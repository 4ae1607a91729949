//! The AF_PACKET socket of a capture and the interface it watches: open, bind, options, the kernel's drop
//! count, and the interface's own frame counters (`ip -s link show`).

use super::*;

/// `ip link show` name of `ifindex` in the calling thread's namespace.
pub(crate) fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0u8; libc::IF_NAMESIZE];
    // SAFETY: name has the IF_NAMESIZE bytes if_indextoname may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr().cast()) };
    if found.is_null() {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// `ip link show <ifname>`'s `mtu`, asked through any socket of the interface's namespace.
pub(crate) fn interface_mtu(socket: &OwnedFd, ifname: &str) -> io::Result<usize> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes().take(libc::IF_NAMESIZE - 1)) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: request is a live ifreq with a NUL-terminated name; SIOCGIFMTU writes only its ifru_mtu.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled in ifru_mtu.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).map_err(|_| io::Error::other(format!("negative MTU {mtu}")))
}

pub(crate) fn new_eventfd(command: &str) -> Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!("create stop signal for {command}: eventfd")));
    }
    // SAFETY: fd was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn signal(eventfd: &OwnedFd) {
    // Writing can only fail if the counter would overflow, which a few signals never do.
    // SAFETY: eventfd is a valid eventfd descriptor.
    unsafe { libc::eventfd_write(eventfd.as_raw_fd(), 1) };
}

/// An AF_PACKET socket that receives nothing yet: must run inside the interface's namespace.
pub(crate) fn open_socket(command: &str) -> Result<OwnedFd> {
    // Protocol 0 until bind: the socket receives nothing before it is bound to the one interface.
    // SAFETY: plain system call without memory arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            return Err(Error::Missing {
                what: format!("CAP_NET_RAW to capture packets ({command})"),
                hint: "run as root, or inside a user namespace that owns the network namespace".into(),
            });
        }
        return Err(Error::sys(format!("open packet socket ({command}): socket(AF_PACKET, SOCK_RAW)"), err));
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds the socket to every protocol on `ifindex`: from here on it receives the interface's frames.
pub(crate) fn bind(socket: &OwnedFd, ifindex: u32, command: &str) -> Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    address.sll_ifindex = ifindex as c_int;
    // SAFETY: address is a valid sockaddr_ll and the length passed is its size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(Error::last_os(format!("bind packet socket to interface index {ifindex} ({command})")));
    }
    Ok(())
}

pub(crate) fn set_option<T>(socket: &impl AsRawFd, level: c_int, option: c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T and the length passed is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PACKET_STATISTICS`: frames dropped since the previous call (the kernel resets the counters on read).
/// The ring's `tpacket_stats_v3` starts with the same two counters as a queue socket's `tpacket_stats`.
pub(crate) fn take_kernel_drops(socket: &OwnedFd) -> io::Result<u64> {
    // SAFETY: tpacket_stats_v3 is plain old data; all-zero is a valid value.
    let mut stats: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: stats and len are live and len holds the size of stats.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(stats.tp_drops))
}

/// The interface's own frame counters (`ip -s link show <ifname>`), from a /proc/net/dev opened inside its
/// namespace: the file stays bound to that namespace, and each read from offset 0 is a fresh snapshot.
pub(super) struct InterfaceCounters {
    file: File,
    pub(super) ifname: String,
    at_start: u64,
}

impl InterfaceCounters {
    /// Must run inside the interface's namespace.
    pub(super) fn open(ifname: String) -> io::Result<InterfaceCounters> {
        let file = File::open("/proc/thread-self/net/dev")?;
        let mut counters = InterfaceCounters { file, ifname, at_start: 0 };
        counters.at_start = counters.frames()?;
        Ok(counters)
    }

    /// rx + tx packets of the interface now.
    pub(super) fn frames(&self) -> io::Result<u64> {
        let mut text = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let read = self.file.read_at(&mut chunk, text.len() as u64)?;
            if read == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..read]);
        }
        let text = String::from_utf8_lossy(&text);
        rx_tx_packets(&text, &self.ifname).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} missing from /proc/net/dev", self.ifname))
        })
    }

    pub(super) fn since_start(&self) -> io::Result<u64> {
        Ok(self.frames()?.saturating_sub(self.at_start))
    }
}

/// rx packets + tx packets of `ifname` in a /proc/net/dev text.
pub(crate) fn rx_tx_packets(text: &str, ifname: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{ifname}:")))?;
    let fields: Vec<u64> = line.split_once(':')?.1.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    Some(fields.get(1)? + fields.get(9)?)
}

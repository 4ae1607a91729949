//! Hosts made ahead of their scenario: two fresh namespaces joined by their veth pair, set up as a scenario's
//! set-up would have (IPv6 off, `lo` up, the pair with one queue each, receives steered, offloads off,
//! addresses, permanent neighbours, both ends operational), each pair handed to exactly one scenario and never
//! made again or reused.
//!
//! The kernel's share of a set-up is mostly making the two namespaces (`lo` registered with its IPv4 and IPv6
//! sysctl tables) and the veth pair (`register_netdevice` of both ends), about 2.5 ms of CPU, most of it under
//! the RTNL lock. Made by whoever forks the scenario processes, before the scenario asks, it leaves the
//! scenario's set-up to enter the namespaces and do what is its own: its sysctls, faults, captures, observers
//! and the tracer. Only scenarios of one shape fit ([`Shape`]): two hosts on one plain link (no router, no
//! impairment wire, no IPv6) and no sysctl a new interface would copy at its creation; the others make their
//! hosts as before.
//!
//! Nothing outlives its holder: a pair is held by its namespaces' descriptors alone, in the maker until sent,
//! in the socket while it travels, in the fork server until it forks the scenario process that takes it. A
//! maker or server that dies (the runner died) takes what it holds with it; the maker dies with the server
//! (`PR_SET_PDEATHSIG`). Nothing is bind-mounted.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use nix::unistd::{fork, ForkResult};

use crate::error::{Error, Result};
use crate::run::forkserver;
use crate::run::netns::Netns;
use crate::run::topology::{HostLink, HostWire};
use crate::scenario::plan::{HostId, LinkEnd, Plan};

/// What a pooled pair was made for: the link's MTU and both ends (names, addresses, prefixes). A plan fits the
/// pool when it has the same, two hosts, client first, on one plain link, no IPv6, no router, and none of its
/// sysctls is copied by an interface at its creation (`net.ipv4.conf.*`, `net.ipv6.conf.*`, `*.neigh.*`):
/// those are written before a scenario's interfaces exist, and a pooled interface exists already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    mtu: u32,
    ends: [LinkEnd; 2],
}

/// Sysctls an interface takes a copy of when it is made; a plan that writes one makes its own hosts.
const PER_INTERFACE_SYSCTLS: [&str; 3] = ["net.ipv4.conf.", "net.ipv6.conf.", ".neigh."];

impl Shape {
    /// The shape of `plan`'s hosts, when a pooled pair can serve it.
    pub fn of(plan: &Plan) -> Option<Shape> {
        let [link] = plan.links.as_slice() else { return None };
        let hosts: Vec<HostId> = plan.hosts.iter().map(|host| host.id).collect();
        let plain = plan.router.is_none()
            && !plan.link.ipv6
            && !link.wire
            && hosts == HostId::ALL
            && link.ends.iter().map(|end| end.host).eq(HostId::ALL)
            && plan.hosts.iter().all(|host| host.gateway.is_none() && host.address6.is_none())
            && !plan
                .hosts
                .iter()
                .flat_map(|host| &host.sysctls)
                .any(|sysctl| PER_INTERFACE_SYSCTLS.iter().any(|family| sysctl.name.contains(family)));
        plain.then(|| Shape { mtu: plan.link.mtu, ends: link.ends.clone() })
    }
}

/// What the pool makes hosts of: `plan` without what is the scenario's own (sysctls, steps, faults), when it
/// fits ([`Shape::of`]).
pub fn template(plan: &Plan) -> Option<Plan> {
    Shape::of(plan)?;
    let mut template = plan.clone();
    for host in &mut template.hosts {
        host.sysctls.clear();
        host.steps.clear();
    }
    template.faults.clear();
    Some(template)
}

/// One pooled host: its namespace and its end of the link.
#[derive(Debug)]
pub struct PooledHost {
    pub namespace: Netns,
    pub link: HostLink,
}

/// A client and a server made for one scenario, in `HostId::ALL` order.
#[derive(Debug)]
pub struct Hosts {
    shape: Shape,
    hosts: [PooledHost; 2],
}

/// Makes a pair for `template` ([`template`]) on the calling thread, which makes each namespace by moving into
/// it (`unshare(CLONE_NEWNET)`) and then goes back to `parent`, the namespace it is in (the runner's private
/// parent: a scenario namespace made from it has its small TCP hash table). In command-line terms, what a
/// set-up does before its sysctls and faults ([`crate::run::topology::build`]):
///
/// ```text
/// each host:  ip netns add; sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1; ip link set lo up
/// the link:   ip link add nf0 ... numtxqueues 1 numrxqueues 1 type veth peer name nf0 netns <server> ...
/// each end:   rps_cpus; ethtool -K nf0 ... off; ip addr add; ip link set nf0 up; ip neigh add ... permanent
///             until ip link show nf0 says state UP
/// ```
pub fn make(template: &Plan, parent: &Netns) -> Result<Hosts> {
    let shape =
        Shape::of(template).ok_or_else(|| Error::Internal(format!("{} does not fit the pool", template.name)))?;
    let mut made = Vec::with_capacity(2);
    for host in HostId::ALL {
        let here = Netns::unshare_current_thread().and_then(|ns| Ok((ns, HostWire::prepare(template, host)?)));
        // Back before anything else: the next namespace is made from the parent, never from this one.
        parent.enter()?;
        made.push(here?);
    }
    let [(client_ns, mut client), (server_ns, mut server)]: [(Netns, HostWire); 2] =
        made.try_into().map_err(|_| Error::Internal("a pooled pair of other than two hosts".into()))?;
    client.create_veth_pair(template, &template.links[0], &server_ns)?;
    let client_links = client.configure(template)?;
    let server_links = server.configure(template)?;
    client.wait_operational(template)?;
    server.wait_operational(template)?;
    let [Some(client_link), Some(server_link)] = [client_links, server_links].map(|links| links.into_iter().next())
    else {
        return Err(Error::Internal("a pooled host without its end of the link".into()));
    };
    Ok(Hosts {
        shape,
        hosts: [
            PooledHost { namespace: client_ns, link: client_link },
            PooledHost { namespace: server_ns, link: server_link },
        ],
    })
}

/// The pair handed to this process for its scenario ([`hand_over`]), until its set-up takes it.
static HANDED: Mutex<Option<Hosts>> = Mutex::new(None);

/// Gives this process's next set-up `hosts` instead of making its own (a forked scenario process, from the fork
/// server; the set-up benchmark, from its own maker).
pub fn hand_over(hosts: Hosts) {
    if let Ok(mut handed) = HANDED.lock() {
        *handed = Some(hosts);
    }
}

/// The handed pair, in `plan.hosts` order, when `plan` fits it; a pair that does not fit is dropped (the
/// scenario makes its own hosts).
pub(crate) fn take_for(plan: &Plan) -> Option<[PooledHost; 2]> {
    let hosts = HANDED.lock().ok()?.take()?;
    (Shape::of(plan).as_ref() == Some(&hosts.shape)).then_some(hosts.hosts)
}

/// Whether a pair handed over ([`hand_over`]) is still there: no set-up took it.
#[cfg(feature = "bench")]
pub(crate) fn still_handed() -> bool {
    HANDED.lock().map(|handed| handed.is_some()).unwrap_or(false)
}

/// Pairs the maker keeps ready for the fork server.
const DEPTH: usize = 2;

/// How long the maker waits after a pair was taken before it makes the next: the scenario that took it is then
/// setting itself up (its faults, captures, observers, the tracer), some of it under the RTNL lock the making
/// of a namespace holds too, on the same CPUs, and a short one writes its report.
const REFILL_PAUSE: Duration = Duration::from_millis(20);

/// Credits from the server to the maker: make a pair now (the first [`DEPTH`]), or after [`REFILL_PAUSE`].
const FILL: u8 = b'F';
const REFILL: u8 = b'R';
/// The maker's message: a pair (then each host's ifindex and MAC; the namespaces ride along).
const PAIR: u8 = b'H';
const PAIR_BYTES: usize = 1 + 2 * (4 + 6);

/// The fork server's stock: pairs its maker made, and the socket to the maker, a process it forked which makes
/// a pair for every credit the server sends (one per pair taken).
pub(crate) struct Stock {
    socket: OwnedFd,
    maker: nix::unistd::Pid,
    shape: Shape,
    ready: VecDeque<Hosts>,
    /// Pairs asked for and not received yet.
    ordered: usize,
}

impl Stock {
    /// Forks the maker for the shape most of `plans` have (none fitting: no stock), from a single-threaded
    /// process (the fork server, in the runner's private parent) whose descriptors `close_in_maker` the maker
    /// must not hold. Without the privilege to make namespaces (rootless) there is none either, nor for a run of a single scenario file:
    /// its first scenario would wait for the first pair or make its hosts beside it, and either was slower than
    /// without a pool (`bench run`: 14.6 / 15.1 ms against 14.0 / 14.2, waiting for the pair).
    pub(crate) fn start<'p>(plans: impl Iterator<Item = &'p Plan>, close_in_maker: &[RawFd]) -> Option<Stock> {
        // Pairs are made from the runner's private parent, as the scenario processes' own hosts are; a server
        // outside it (the runner could not make it) has no pool.
        if !nix::unistd::geteuid().is_root() || crate::run::netns::private_parent_for_children().is_none() {
            return None;
        }
        let plans: Vec<&Plan> = plans.collect();
        if plans.len() < 2 {
            return None;
        }
        // Per shape: its first plan and how many plans have it.
        let mut shapes: Vec<(Shape, &Plan, usize)> = Vec::new();
        for plan in plans {
            let Some(shape) = Shape::of(plan) else { continue };
            match shapes.iter_mut().find(|(known, _, _)| *known == shape) {
                Some((_, _, count)) => *count += 1,
                None => shapes.push((shape, plan, 1)),
            }
        }
        let (shape, plan, fitting) = shapes.into_iter().max_by_key(|(_, _, count)| *count)?;
        let template = template(plan)?;
        let parent = Netns::current().ok()?;
        let (server_end, maker_end) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).ok()?;
        let server = std::process::id();
        // SAFETY: the caller is single-threaded (the fork server): the child may run any code after the fork.
        match unsafe { fork() }.ok()? {
            ForkResult::Child => {
                for fd in close_in_maker.iter().copied().chain([server_end.as_raw_fd()]) {
                    // SAFETY: descriptors of this forked process that nothing in it uses; their owners are never
                    // dropped, since the maker ends in `exit`.
                    unsafe { libc::close(fd) };
                }
                maker(maker_end, &template, &parent, server)
            }
            ForkResult::Parent { child } => {
                drop(maker_end);
                let mut stock = Stock { socket: server_end, maker: child, shape, ready: VecDeque::new(), ordered: 0 };
                // One pair at once, the others after a pause: a run of one scenario takes the first while the
                // second would still be made beside its set-up (measured: `bench run` 1-4 ms slower with both
                // made at once).
                stock.order(FILL);
                for _ in 1..DEPTH.min(fitting) {
                    stock.order(REFILL);
                }
                Some(stock)
            }
        }
    }

    /// The maker's socket while a pair is on its way: readable when it has come (or the maker is gone). `None`
    /// when nothing is awaited (a socket closed by a dead maker would otherwise always be readable).
    pub(crate) fn awaited(&self) -> Option<BorrowedFd<'_>> {
        (self.ordered > 0).then(|| self.socket.as_fd())
    }

    /// Every descriptor the stock holds: a scenario process forked beside it closes them.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        let namespaces = self.ready.iter().flat_map(|hosts| hosts.hosts.iter().map(|host| host.namespace.raw_fd()));
        namespaces.chain([self.socket.as_raw_fd()]).collect()
    }

    /// Takes in every pair that has come, without waiting.
    pub(crate) fn receive(&mut self) {
        while self.ordered > 0 {
            match self.receive_one(MsgFlags::MSG_DONTWAIT) {
                Ok(hosts) => {
                    self.ordered -= 1;
                    self.ready.push_back(hosts);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => return,
                // The maker is gone (it failed, or was killed): no more pairs. Its socket closed as it exited;
                // it is reaped here, not left a zombie until the server's own exit.
                Err(_) => {
                    self.ordered = 0;
                    let _ = nix::sys::signal::kill(self.maker, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(self.maker, None);
                    return;
                }
            }
        }
    }

    /// A pair for `plan` if it fits the stock's shape and one is ready (none is waited for); each pair taken is
    /// ordered again.
    pub(crate) fn take(&mut self, plan: &Plan) -> Option<Hosts> {
        if Shape::of(plan).as_ref() != Some(&self.shape) {
            return None;
        }
        self.receive();
        let hosts = self.ready.pop_front()?;
        self.order(REFILL);
        Some(hosts)
    }

    fn order(&mut self, credit: u8) {
        if nix::sys::socket::send(self.socket.as_raw_fd(), &[credit], MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            .is_ok()
        {
            self.ordered += 1;
        }
    }

    fn receive_one(&self, flags: MsgFlags) -> nix::Result<Hosts> {
        let mut bytes = [0u8; PAIR_BYTES];
        let (length, fds) = forkserver::receive(self.socket.as_raw_fd(), &mut bytes, flags)?;
        if length != PAIR_BYTES || bytes[0] != PAIR || fds.len() != 2 {
            return Err(Errno::EPIPE);
        }
        let mut fds = fds.into_iter().map(Netns::from_fd);
        let mut host = |index: usize| -> nix::Result<PooledHost> {
            let at = 1 + index * 10;
            let end = &self.shape.ends[index];
            let ifindex = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bytes[at + 4..at + 10]);
            let link = HostLink { host: end.host, ifindex, ifname: end.ifname.clone(), address: end.address, mac };
            Ok(PooledHost { namespace: fds.next().ok_or(Errno::EPIPE)?, link })
        };
        let hosts = [host(0)?, host(1)?];
        Ok(Hosts { shape: self.shape.clone(), hosts })
    }
}

/// The maker process: one pair per credit, sent with its namespaces; it ends when the server's end closes, when
/// the server dies (`PR_SET_PDEATHSIG`), or at its first failure (the server then has no more pairs, and its
/// scenarios make their own hosts). Single-threaded, at the ordinary priority.
fn maker(socket: OwnedFd, template: &Plan, parent: &Netns, server: u32) -> ! {
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"netfault-pool".as_ptr());
    }
    // The server died before the line above: nobody would kill this process.
    if std::os::unix::process::parent_id() != server {
        std::process::exit(0);
    }
    let _ = crate::run::priority::lower_current_thread();
    loop {
        let mut credit = [0u8; 1];
        match nix::sys::socket::recv(socket.as_raw_fd(), &mut credit, MsgFlags::empty()) {
            Ok(1) => {}
            Err(Errno::EINTR) => continue,
            _ => std::process::exit(0),
        }
        if credit[0] == REFILL {
            std::thread::sleep(REFILL_PAUSE);
        }
        let Ok(hosts) = make(template, parent) else { std::process::exit(1) };
        if send(&socket, &hosts).is_err() {
            std::process::exit(0);
        }
    }
}

/// One pair to the server: each host's ifindex and MAC, and its namespace's descriptor.
fn send(socket: &OwnedFd, hosts: &Hosts) -> nix::Result<()> {
    let mut bytes = [0u8; PAIR_BYTES];
    bytes[0] = PAIR;
    for (index, host) in hosts.hosts.iter().enumerate() {
        let at = 1 + index * 10;
        bytes[at..at + 4].copy_from_slice(&host.link.ifindex.to_le_bytes());
        bytes[at + 4..at + 10].copy_from_slice(&host.link.mac);
    }
    let fds = hosts.hosts.each_ref().map(|host| host.namespace.raw_fd());
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests;

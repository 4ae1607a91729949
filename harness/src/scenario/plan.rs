//! The validated plan: what a scenario will do, with every name resolved and every duration typed.
//!
//! A `Plan` is built only by `scenario::validate` from the wire schema; everything downstream (topology,
//! firewall, actors, observer, verdict, report) reads the plan and never the YAML.

mod expect;
mod fault;
mod requires;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

pub use expect::*;
pub use fault::*;
pub use requires::*;

/// A position in the scenario file, 1-based, as editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema, Default)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A host of a scenario; each is its own network namespace. Client and server are in every scenario and run
/// the programs; a router, when the scenario declares one, sits between them and runs none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostId {
    Client,
    Server,
    Router,
}

impl HostId {
    /// The hosts that run programs, in every scenario.
    pub const ALL: [HostId; 2] = [HostId::Client, HostId::Server];
    /// Every host a scenario can have, in `index()` order.
    pub const EVERY: [HostId; 3] = [HostId::Client, HostId::Server, HostId::Router];

    pub fn name(self) -> &'static str {
        match self {
            HostId::Client => "client",
            HostId::Server => "server",
            HostId::Router => "router",
        }
    }

    /// The other program host; the router, which runs no program, has none but itself.
    pub fn peer(self) -> HostId {
        match self {
            HostId::Client => HostId::Server,
            HostId::Server => HostId::Client,
            HostId::Router => HostId::Router,
        }
    }

    /// Position among the program hosts (`ALL`), and 2 for the router.
    pub fn index(self) -> usize {
        match self {
            HostId::Client => 0,
            HostId::Server => 1,
            HostId::Router => 2,
        }
    }

    pub fn parse(name: &str) -> Option<HostId> {
        match name {
            "client" => Some(HostId::Client),
            "server" => Some(HostId::Server),
            "router" => Some(HostId::Router),
            _ => None,
        }
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How far a measured time may be from the expected one: `late` after it, `early` before it
/// (`tolerance: 250ms` is both; `tolerance: { early: 10ms, late: 420ms }`). Kernel timers are rounded up to
/// their timer-wheel granule and fire late, never early, so the honest window is often one-sided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tolerance {
    pub early: Duration,
    pub late: Duration,
}

impl Tolerance {
    /// The same tolerance on both sides.
    pub const fn either_side(tolerance: Duration) -> Tolerance {
        Tolerance { early: tolerance, late: tolerance }
    }

    /// Whether `actual` is at most `late` after `expected` and at most `early` before it.
    pub fn admits(self, actual: Duration, expected: Duration) -> bool {
        if actual >= expected {
            actual - expected <= self.late
        } else {
            expected - actual <= self.early
        }
    }
}

impl fmt::Display for Tolerance {
    /// `± 0.250000s`, or `-0.000000s/+0.500000s` when earliness and lateness differ.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| format!("{}.{:06}s", d.as_secs(), d.subsec_micros());
        if self.early == self.late {
            write!(f, "± {}", secs(self.late))
        } else {
            write!(f, "-{}/+{}", secs(self.early), secs(self.late))
        }
    }
}

/// A whole scenario, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Path relative to the scenario root without `.yaml`, e.g. `keepalive/idle`; also the report folder.
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub source: Option<String>,
    /// Minutes-long default-sysctl variant: ignored unless asked for.
    pub slow: bool,
    /// Hard deadline for the whole run; the run is ended there whatever is still blocked.
    pub deadline: Duration,
    /// Default tolerance of every timing expectation.
    pub tolerance: Tolerance,
    /// Observer sampling interval (`ss` polling period).
    pub sample_interval: Duration,
    /// Settings of every link.
    pub link: LinkPlan,
    pub capture: CapturePlan,
    /// In the order they stand on the wire: client, the router if there is one, server.
    pub hosts: Vec<HostPlan>,
    /// The veth pairs between them: client-server, or client-router and router-server.
    pub links: Vec<Link>,
    /// What the router does besides forwarding, when there is one.
    pub router: Option<RouterPlan>,
    /// Sorted by name.
    pub faults: Vec<FaultPlan>,
    pub expect: RunExpectations,
    /// `requires:` of the whole scenario: where the running kernel lacks it, the scenario is not applicable.
    pub requires: Requirements,
    /// Expectations that apply only where their own `requires:` holds, in file order.
    pub conditional: Vec<Conditional>,
    /// Expectations left out on the running kernel, each with its line and why (see
    /// `requirements::specialize`); empty in a plan as validated.
    pub not_applicable: Vec<String>,
}

impl Plan {
    /// The host `id`. Client and server are in every plan; asking for the router of a plan without one is a
    /// harness bug, answered with the client so that nothing panics (validation refuses any reference to an
    /// undeclared router).
    pub fn host(&self, id: HostId) -> &HostPlan {
        self.hosts.iter().find(|host| host.id == id).unwrap_or(&self.hosts[0])
    }

    /// Position of host `id` in `hosts` (the wire's order).
    pub fn position(&self, id: HostId) -> Option<usize> {
        self.hosts.iter().position(|host| host.id == id)
    }

    /// Every interface of every link, in the wire's order: `(link index, end)`.
    pub fn link_ends(&self) -> impl Iterator<Item = (usize, &LinkEnd)> {
        self.links.iter().enumerate().flat_map(|(index, link)| link.ends.iter().map(move |end| (index, end)))
    }

    /// Finds a step by host and name.
    pub fn step(&self, host: HostId, name: &str) -> Option<&StepPlan> {
        self.host(host).steps.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// Whether the scenario's hosts send [`BULK_BYTES`] or more through the impairment wire (counting the
    /// `send` steps with a fixed count): its wire threads then need the CPU for most of the run.
    pub fn bulk_through_wire(&self) -> bool {
        let sent: u64 = self
            .hosts
            .iter()
            .flat_map(|host| &host.steps)
            .map(|step| match step.action {
                Action::Send { bytes, repeat: SendRepeat::Times(times), .. } => bytes as u64 * u64::from(times),
                _ => 0,
            })
            .sum();
        self.links.iter().any(|link| link.wire) && sent >= BULK_BYTES
    }
}

/// A bulk transfer ([`Plan::bulk_through_wire`]): the smallest of the impairment scenarios' transfers (1 MiB).
pub const BULK_BYTES: u64 = 1 << 20;

/// `ip link add ... type veth peer ...` with `mtu`: the settings of every link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkPlan {
    pub mtu: u32,
    /// IPv6 on the link: each host gets its [`HostPlan::address6`] (`ip -6 addr add fd00::1/64 dev nf0 nodad`),
    /// with no link-local address, no router solicitation and no duplicate address detection, so that the
    /// capture holds the scenario's own packets. On when a step makes an IPv6 socket or `link: { ipv6: true }`;
    /// otherwise IPv6 is disabled in the hosts' namespaces.
    pub ipv6: bool,
}

/// The address family of a socket a step makes: `socket(AF_INET, ...)` or `socket(AF_INET6, ...)`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    /// As the scenario writes it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family of an address.
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The IPv6 prefix of a two-host scenario's link (a unique local address, RFC 4193): the client is
/// `fd00::1/64`, the server `fd00::2/64`.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// A host's IPv6 address on a two-host link (see [`IPV6_PREFIX_LEN`]).
pub fn ipv6_address_of(host: HostId) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host.index() as u16 + 1)
}

/// One veth pair between two hosts (`ip link add <a> type veth peer name <b> netns <other>`), or, through the
/// impairment wire, two: each end paired with the wire's end facing its host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Link {
    pub ends: [LinkEnd; 2],
    /// Frames between the ends pass through the impairment wire (`run::impair`): a namespace of its own in which
    /// each end's peer (`to-<host>`) lives. Set for the link of a scenario with impairments.
    pub wire: bool,
}

/// One host's end of a link: its interface and address (`ip addr add <address>/<prefix_len> dev <ifname>`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkEnd {
    pub host: HostId,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// `ip -6 addr add <address6>/64 dev <ifname> nodad`, when the link has IPv6.
    pub address6: Option<Ipv6Addr>,
}

/// What the router does to what it forwards (`nft add rule ip nat ...`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RouterPlan {
    /// `oifname <server side> masquerade`: connections from the client side leave with the router's
    /// server-side address.
    pub masquerade: bool,
    /// `iifname <client side> tcp dport <port> dnat to <server>:<to_port>`, port forwards to the server.
    pub dnat: Vec<PortForward>,
}

/// One DNAT port forward: connections to the router's client-side address on `port` go to the server on
/// `to_port`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortForward {
    pub port: u16,
    pub to_port: u16,
}

/// How both ends of the link are captured (`tcpdump -B`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CapturePlan {
    /// A TPACKET_V3 ring of this many bytes instead of the socket's own queue, for bulk transfers.
    pub ring_bytes: Option<u64>,
    /// `tcpdump -s`: each frame cut to this many bytes in the kernel, its full length kept on record; whole
    /// frames when `None`.
    pub snaplen: Option<u32>,
}

/// One host: `ip netns` + `ip addr add` + `ip route add default via` + `sysctl -w` + its socket program.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub id: HostId,
    /// The address the other hosts reach it at (the router's: its client-side one).
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 address, when the link has IPv6 ([`LinkPlan::ipv6`]): an IPv6 socket's `bind`, and a
    /// `connect` to it from one.
    pub address6: Option<Ipv6Addr>,
    /// `ip route add default via <gateway>`: the router, for client and server when there is one.
    pub gateway: Option<Ipv4Addr>,
    /// `sysctl -w name=value` inside the host's namespace, sorted by name.
    pub sysctls: Vec<Sysctl>,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name, e.g. `net.ipv4.tcp_syn_retries`.
    pub name: String,
    pub value: String,
    /// Where the scenario sets it; `None` for the harness's own (IPv6 off).
    pub location: Option<Location>,
}

impl Sysctl {
    /// The file under /proc/sys that holds it.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from("/proc/sys").join(self.name.replace('.', "/"))
    }
}

/// A step of a host's program named in the scenario (`client.connect`), resolved at validation to its
/// position in that host's program; the name stays for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRef {
    pub host: HostId,
    /// 0-based position in the host's program (`StepPlan::index`).
    pub index: usize,
    pub name: String,
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.host, self.name)
    }
}

/// One step of a host's socket program.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    /// 0-based position in the host's program.
    pub index: usize,
    pub name: Option<String>,
    /// Socket the step acts on: a name given by `as:` on socket/accept, or the most recent one.
    pub socket: Option<String>,
    pub action: Action,
    pub expect: StepExpectation,
    pub location: Location,
}

impl StepPlan {
    /// How the step is named in messages: its name, or `#index action`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.action.kind()),
            None => format!("#{} {}", self.index + 1, self.action.kind()),
        }
    }
}

/// What a step does, in terms of the Linux call it makes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `socket(AF_INET or AF_INET6, SOCK_STREAM)` then `setsockopt` for each option; `as` names it.
    Socket { name: Option<String>, family: Family, options: Vec<SockOpt>, nonblocking: bool },
    /// `setsockopt` on the step's socket.
    SetOpt { options: Vec<SockOpt> },
    /// `bind(port)` on the host's address (an IPv6 socket: `[::]`, see [`Action::Listen`]); `family` is that
    /// of the socket it makes when there is no current one.
    Bind { port: u16, family: Family },
    /// `bind` (if a port is given) then `listen(backlog)`. An IPv4 socket binds the host's address; an IPv6
    /// socket binds the wildcard `[::]`, the only address at which it can also take IPv4 connections as
    /// v4-mapped peers (unless IPV6_V6ONLY). `family` as for [`Action::Bind`].
    Listen { port: Option<u16>, backlog: u32, family: Family },
    /// `accept()`; the new socket becomes the current one and may be named.
    /// `nonblocking`: this call alone with O_NONBLOCK (EAGAIN when no connection is queued).
    Accept { name: Option<String>, nonblocking: bool },
    /// `connect(address, port)` to host `to`; nonblocking returns EINPROGRESS at once. `after_listen` is the
    /// peer's start-up `listen` on that port, which the connect waits for so the two programs do not race.
    /// `to` is `None` for an address that is no host's (nothing answers there: the kernel's own errors).
    /// `family` is that of the socket it makes when there is no current one (the address's).
    Connect { to: Option<HostId>, address: IpAddr, port: u16, nonblocking: bool, after_listen: Option<StepRef> },
    /// `poll()` for the given events with a timeout; outcome is the returned events or `timeout`.
    Poll { events: Vec<PollEvent>, timeout: Duration },
    /// `send()` of `bytes` bytes, `repeat` times, `every` apart; `until` stops the loop on a condition.
    /// `flags`: passed to every `send` call, sorted.
    Send { bytes: usize, repeat: SendRepeat, every: Option<Duration>, until: Option<SendUntil>, flags: Vec<MsgFlag> },
    /// `recv(max)`; `until_eof` reads until EOF or an error; `nonblocking`: this call alone with
    /// MSG_DONTWAIT (EAGAIN when nothing is queued); `flags`: passed to every `recv` call, sorted.
    Recv { max: usize, until_eof: bool, nonblocking: bool, flags: Vec<MsgFlag> },
    /// `shutdown(how)`.
    Shutdown { how: ShutdownHow },
    /// `close()`.
    Close,
    /// Does nothing for the given time.
    Sleep { duration: Duration },
    /// `getsockopt(level, name)`; SO_ERROR gives `ok` or the pending errno.
    GetOpt { option: SockOptName },
    /// `getsockopt(IPPROTO_TCP, TCP_INFO)`: the connection's `struct tcp_info` (`ss -ti`), every field of
    /// [`crate::scenario::tcp_info::FIELDS`] the kernel has.
    GetTcpInfo,
    /// Waits until another host's named step has started or finished.
    Wait { step: StepRef, edge: StepEdge },
    /// Waits until a socket of `host` listens on `port` (`until ss -Htln 'sport = :PORT' | grep -q .`), such
    /// as the listener of a program an `exec` started.
    WaitListening { host: HostId, port: u16 },
    /// Runs a real program inside the host's namespace.
    Exec(ExecPlan),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Socket { .. } => "socket",
            Action::SetOpt { .. } => "setsockopt",
            Action::Bind { .. } => "bind",
            Action::Listen { .. } => "listen",
            Action::Accept { .. } => "accept",
            Action::Connect { .. } => "connect",
            Action::Poll { .. } => "poll",
            Action::Send { .. } => "send",
            Action::Recv { .. } => "recv",
            Action::Shutdown { .. } => "shutdown",
            Action::Close => "close",
            Action::Sleep { .. } => "sleep",
            Action::GetOpt { .. } | Action::GetTcpInfo => "getsockopt",
            Action::Wait { .. } | Action::WaitListening { .. } => "wait",
            Action::Exec(_) => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SendRepeat {
    Times(u32),
    /// Until the condition in `until` ends the loop (bounded by the scenario deadline).
    Forever,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SendUntil {
    /// Stop at the first error; the outcome is that error.
    Error,
    /// Stop when the send buffer is full (EAGAIN on a nonblocking send); outcome is the bytes sent.
    WouldBlock,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum ShutdownHow {
    Rd,
    Wr,
    Rdwr,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepEdge {
    Started,
    Finished,
}

/// A flag of `send(2)` / `recv(2)` a step may pass, by its Linux name.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum MsgFlag {
    /// `MSG_OOB`: send one byte as urgent data (the segment carries URG), or read the urgent byte.
    #[serde(rename = "MSG_OOB")]
    Oob,
    /// `MSG_MORE`: more is coming, hold a partial segment back (TCP_CORK for this call).
    #[serde(rename = "MSG_MORE")]
    More,
    /// `MSG_PEEK`: read without taking the data off the queue.
    #[serde(rename = "MSG_PEEK")]
    Peek,
    /// `MSG_WAITALL`: block until `max` bytes came, or EOF, an error or a signal.
    #[serde(rename = "MSG_WAITALL")]
    WaitAll,
    /// `MSG_TRUNC`: on TCP, discard the bytes instead of copying them; the count is what was discarded.
    #[serde(rename = "MSG_TRUNC")]
    Trunc,
}

impl MsgFlag {
    /// The flags `send` takes (MSG_NOSIGNAL is always passed: a write to a reset connection gives EPIPE, never
    /// a signal; MSG_DONTWAIT is `until: would-block`).
    pub const SEND: [MsgFlag; 2] = [MsgFlag::Oob, MsgFlag::More];
    /// The flags `recv` takes (MSG_DONTWAIT is `nonblocking: true`).
    pub const RECV: [MsgFlag; 4] = [MsgFlag::Oob, MsgFlag::Peek, MsgFlag::WaitAll, MsgFlag::Trunc];

    pub fn name(self) -> &'static str {
        match self {
            MsgFlag::Oob => "MSG_OOB",
            MsgFlag::More => "MSG_MORE",
            MsgFlag::Peek => "MSG_PEEK",
            MsgFlag::WaitAll => "MSG_WAITALL",
            MsgFlag::Trunc => "MSG_TRUNC",
        }
    }

    /// The flags as the `flags` argument of the call.
    pub fn bits(flags: &[MsgFlag]) -> i32 {
        flags.iter().fold(0, |bits, flag| {
            bits | match flag {
                MsgFlag::Oob => libc::MSG_OOB,
                MsgFlag::More => libc::MSG_MORE,
                MsgFlag::Peek => libc::MSG_PEEK,
                MsgFlag::WaitAll => libc::MSG_WAITALL,
                MsgFlag::Trunc => libc::MSG_TRUNC,
            }
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum PollEvent {
    #[serde(rename = "POLLIN")]
    In,
    #[serde(rename = "POLLOUT")]
    Out,
    #[serde(rename = "POLLERR")]
    Err,
    #[serde(rename = "POLLHUP")]
    Hup,
    #[serde(rename = "POLLRDHUP")]
    RdHup,
    #[serde(rename = "POLLPRI")]
    Pri,
}

impl PollEvent {
    pub const ALL: [PollEvent; 6] =
        [PollEvent::In, PollEvent::Out, PollEvent::Err, PollEvent::Hup, PollEvent::RdHup, PollEvent::Pri];

    pub fn name(self) -> &'static str {
        match self {
            PollEvent::In => "POLLIN",
            PollEvent::Out => "POLLOUT",
            PollEvent::Err => "POLLERR",
            PollEvent::Hup => "POLLHUP",
            PollEvent::RdHup => "POLLRDHUP",
            PollEvent::Pri => "POLLPRI",
        }
    }

    pub fn bits(self) -> i16 {
        match self {
            PollEvent::In => libc::POLLIN,
            PollEvent::Out => libc::POLLOUT,
            PollEvent::Err => libc::POLLERR,
            PollEvent::Hup => libc::POLLHUP,
            PollEvent::RdHup => libc::POLLRDHUP,
            PollEvent::Pri => libc::POLLPRI,
        }
    }

    pub fn parse(name: &str) -> Option<PollEvent> {
        PollEvent::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A socket option by its Linux name with the level and type it has there.
#[allow(non_camel_case_types)] // named exactly as in <sys/socket.h> and <netinet/tcp.h>, as users write them
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum SockOptName {
    SO_KEEPALIVE,
    SO_RCVBUF,
    SO_SNDBUF,
    SO_LINGER,
    SO_REUSEADDR,
    SO_REUSEPORT,
    SO_ERROR,
    TCP_NODELAY,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_KEEPCNT,
    TCP_USER_TIMEOUT,
    TCP_SYNCNT,
    TCP_DEFER_ACCEPT,
    TCP_LINGER2,
    TCP_MAXSEG,
    TCP_QUICKACK,
    TCP_NOTSENT_LOWAT,
    SO_RCVTIMEO,
    SO_SNDTIMEO,
    SO_RCVLOWAT,
    TCP_CORK,
    TCP_WINDOW_CLAMP,
    TCP_THIN_LINEAR_TIMEOUTS,
    TCP_FASTOPEN,
    TCP_FASTOPEN_CONNECT,
    IP_TOS,
    TCP_CONGESTION,
    IP_RECVERR,
    IP_TTL,
    SO_OOBINLINE,
    IPV6_V6ONLY,
}

/// `setsockopt(level, name, value)`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SockOpt {
    pub name: SockOptName,
    pub value: SockOptValue,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SockOptValue {
    Int(i32),
    /// `struct linger { l_onoff, l_linger }`.
    Linger {
        on: bool,
        seconds: i32,
    },
    /// `struct timeval` (SO_RCVTIMEO, SO_SNDTIMEO); zero means no timeout.
    Timeout(Duration),
    /// A congestion control algorithm's name (TCP_CONGESTION), one of [`CONGESTION_CONTROLS`].
    Algorithm(&'static str),
}

/// The canonical text of a value, as a step's detail and a `getsockopt`'s result show it: `5`, `{on,3}`,
/// `500ms`, `cubic`. Two values are equal exactly when their texts are.
impl fmt::Display for SockOptValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockOptValue::Int(n) => write!(f, "{n}"),
            SockOptValue::Linger { on, seconds } => write!(f, "{{{},{seconds}}}", if *on { "on" } else { "off" }),
            SockOptValue::Timeout(duration) => f.write_str(&crate::scenario::duration::format_duration(*duration)),
            SockOptValue::Algorithm(name) => f.write_str(name),
        }
    }
}

/// The congestion control algorithms of mainline Linux (`net/ipv4/tcp_*.c`), as `TCP_CONGESTION` and
/// `sysctl net.ipv4.tcp_available_congestion_control` name them. Which of them a kernel has is its own affair
/// (`cubic` and `reno` always, the others built in or as modules): one it lacks fails the step with ENOENT.
pub const CONGESTION_CONTROLS: &[&str] = &[
    "bbr",
    "bic",
    "cdg",
    "cubic",
    "dctcp",
    "highspeed",
    "htcp",
    "hybla",
    "illinois",
    "lp",
    "nv",
    "reno",
    "scalable",
    "vegas",
    "veno",
    "westwood",
    "yeah",
];

/// A real program run inside a host's namespace.
#[derive(Debug, Clone, Serialize)]
pub struct ExecPlan {
    pub program: String,
    pub args: Vec<String>,
    /// Sorted by name.
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    /// Killed (SIGKILL) when it runs longer; never longer than the scenario deadline.
    pub timeout: Duration,
    /// Run in the background: the step finishes at once and the program is reaped at the end.
    pub background: bool,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// Run under `strace -f`: its failed socket calls become `errno` events of the timeline.
    pub trace: bool,
}

/// What a step must give, and when.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StepExpectation {
    pub outcome: Option<ExpectedOutcome>,
    /// Elapsed time from the step's start to its end.
    pub after: Option<Duration>,
    /// Scenario time at which the step ends, or time since `since`.
    pub at: Option<Duration>,
    /// What `at` counts from instead of t0: a step's end or a packet (a program's exit counted from the
    /// request it sent, not from its start, which on a slow machine takes seconds).
    pub since: Option<Since>,
    /// Tolerance for `after` / `at`; the scenario default when not given.
    pub tolerance: Tolerance,
    pub location: Location,
}

impl StepExpectation {
    /// Whether the step is expected anything (a result or a time), as opposed to only being recorded.
    pub fn is_set(&self) -> bool {
        self.outcome.is_some() || self.after.is_some() || self.at.is_some()
    }
}

/// The result a step must give.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedOutcome {
    Ok,
    Bytes(u64),
    Eof,
    /// An errno by name, e.g. `ETIMEDOUT`.
    Error(Errno),
    /// Exactly these `poll` events returned.
    Events(Vec<PollEvent>),
    /// At least these `poll` events returned, others allowed: for events the kernel sets at different moments
    /// of one change (before 6.10, a socket's error wakes a poll before the socket is closed: POLLERR comes
    /// first, POLLHUP an instant later).
    EventsInclude(Vec<PollEvent>),
    /// `poll` timed out with no event.
    Timeout,
    /// An exec'd program's exit status.
    Exit(i32),
    /// What a `getsockopt` reads.
    Value(SockOptValue),
    /// Bounds on fields of what a `getsockopt: TCP_INFO` reads.
    TcpInfo(Vec<crate::scenario::tcp_info::Bound>),
}

/// An errno value with its Linux name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Errno(pub i32);

/// Everything a TCP test can meet, by name.
pub const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EINVAL", libc::EINVAL),
    ("EMFILE", libc::EMFILE),
    ("EPIPE", libc::EPIPE),
    ("ENOTSOCK", libc::ENOTSOCK),
    ("EDESTADDRREQ", libc::EDESTADDRREQ),
    ("EMSGSIZE", libc::EMSGSIZE),
    ("EPROTOTYPE", libc::EPROTOTYPE),
    ("ENOPROTOOPT", libc::ENOPROTOOPT),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ENETRESET", libc::ENETRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ECONNRESET", libc::ECONNRESET),
    ("ENOBUFS", libc::ENOBUFS),
    ("EISCONN", libc::EISCONN),
    ("ENOTCONN", libc::ENOTCONN),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EALREADY", libc::EALREADY),
    ("EINPROGRESS", libc::EINPROGRESS),
    ("EPROTO", libc::EPROTO),
    // What an `exec` whose program cannot start gets (execve(2)).
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("ELOOP", libc::ELOOP),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ETXTBSY", libc::ETXTBSY),
    // Another name of EAGAIN (the same number): accepted, printed as EAGAIN.
    ("EWOULDBLOCK", libc::EWOULDBLOCK),
];

impl Errno {
    pub fn parse(name: &str) -> Option<Errno> {
        ERRNO_NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| Errno(*v))
    }

    pub fn name(self) -> String {
        ERRNO_NAMES
            .iter()
            .find(|(_, v)| *v == self.0)
            .map(|(n, _)| (*n).to_string())
            .unwrap_or_else(|| format!("errno {}", self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// TCP states as `ss` prints them, plus `CLOSED` for a socket that is gone.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    /// Not a kernel state: the socket disappeared from sock_diag.
    Gone,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::Gone,
    ];

    /// The kernel's `TCP_*` state number (include/net/tcp_states.h); `Gone` has none.
    pub fn from_kernel(state: u8) -> Option<TcpState> {
        Some(match state {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::SynRecv, // TCP_NEW_SYN_RECV: a request socket, shown by ss as SYN-RECV
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::Gone => "GONE",
        }
    }

    pub fn parse(name: &str) -> Option<TcpState> {
        let upper = name.to_ascii_uppercase().replace('_', "-");
        let upper = if upper == "ESTAB" { "ESTABLISHED".to_string() } else { upper };
        TcpState::ALL.into_iter().find(|s| s.name() == upper)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `ss -o` timer names (`idiag_timer`).
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TimerKind {
    /// Retransmission of SYN, SYN-ACK or data (also the loss probe).
    On,
    Keepalive,
    Timewait,
    /// Zero-window probe.
    Persist,
}

impl TimerKind {
    pub fn from_kernel(timer: u8) -> Option<TimerKind> {
        match timer {
            1 => Some(TimerKind::On),
            2 => Some(TimerKind::Keepalive),
            3 => Some(TimerKind::Timewait),
            4 => Some(TimerKind::Persist),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimerKind::On => "on",
            TimerKind::Keepalive => "keepalive",
            TimerKind::Timewait => "timewait",
            TimerKind::Persist => "persist",
        }
    }

    pub fn parse(name: &str) -> Option<TimerKind> {
        [TimerKind::On, TimerKind::Keepalive, TimerKind::Timewait, TimerKind::Persist]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

impl fmt::Display for TimerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Selects packets in the timeline: who sent them, TCP flags, payload size, advertised window, protocol.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PacketFilter {
    /// Sending host.
    pub from: Option<HostId>,
    /// TCP flags: exactly these (`S`, `S.`, `.`, `P.`, `F.`, `R`, `R.`..., as tcpdump prints them), or those of a
    /// mask (`{ mask: "FR", value: "F" }`).
    pub flags: Option<TcpFlagsMatch>,
    /// Payload length exactly this.
    pub len: Option<u32>,
    /// TCP window field exactly this, unscaled, as tcpdump prints it (`win 0`).
    pub window: Option<u16>,
    /// `None` means TCP; `icmp` selects the ICMP errors a host sends (e.g. from a reject rule).
    pub protocol: Option<Protocol>,
    /// `dropped: true`: the packets the sender's own kernel dropped on their way out (an egress fault's, seen
    /// by the transition tracer) instead of those that left.
    pub dropped: bool,
}

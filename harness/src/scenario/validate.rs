//! Validation: turns the wire schema into a [`Plan`], checking every name, number, duration and reference
//! against what the format allows, and pointing each error at the line and column of the offending node.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::error::ScenarioError;
use crate::observe::capture::{LINK_HEADER_ROOM, MIN_SNAPLEN};
use crate::scenario::duration::{format_duration, parse_duration, DurationError};
use crate::scenario::impairment::Impairment;
use crate::scenario::locate::{location_of_offset, offset_of_location, NodePath, SourceIndex};
use crate::scenario::names::{closest, suggestion, ACTION_KEYS, BARE_ACTIONS, SOCKOPT_NAMES, TCP_FLAG_LETTERS};
use crate::scenario::plan::*;
use crate::scenario::schema::*;
use crate::scenario::size::{parse_size, UNITS};
use crate::scenario::tcp_info;
use crate::scenario::variables::{Scope, Variables};

mod counters;
mod expect;
mod faults;
mod hosts;
mod impair;
mod program;
mod requires;

#[cfg(test)]
pub(crate) use program::link_connects_to_listens;

/// Used when `timeout:` is not given.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Used when `tolerance:` is not given.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_millis(250);
/// Used when `sample:` is not given.
pub const DEFAULT_SAMPLE: Duration = Duration::from_millis(10);
pub const MIN_SAMPLE: Duration = Duration::from_millis(1);
pub const MAX_SAMPLE: Duration = Duration::from_secs(1);
pub const DEFAULT_CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const DEFAULT_SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// With a router: client and the router's client side on 10.0.1.0/24, the router's server side and server on
/// 10.0.2.0/24, the router at .1 of each.
pub const DEFAULT_ROUTED_CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const DEFAULT_ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const DEFAULT_ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const DEFAULT_ROUTED_SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest and largest `capture: { ring }`: one ring block, and more kernel memory than any transfer a
/// scenario can run needs (64 MiB lost nothing at 1 GiB over the veth).
const MIN_CAPTURE_RING: u64 = 1 << 20;
const MAX_CAPTURE_RING: u64 = 1 << 30;
pub const DEFAULT_BACKLOG: u32 = 128;
pub const DEFAULT_RECV_MAX: usize = 65536;
/// Longest fault name: it names an nftables chain and counter (`fault_<name>`, at most 255 bytes in the kernel).
pub const MAX_FAULT_NAME: usize = 64;
/// Largest single send or recv buffer.
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;

const SYSCTL_LIST: &str = include_str!("sysctls.txt");

/// Sysctls a scenario may set: those that exist per network namespace on the kernel the list was made on.
pub fn allowed_sysctls() -> impl Iterator<Item = &'static str> {
    SYSCTL_LIST.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

type Checked<T> = Result<T, ScenarioError>;

/// Checks `wire` (read from `file` holding `text`, positions in `index`) and builds the plan named `name`, the
/// `${...}` of its exec steps resolved against `variables`.
pub fn validate(
    name: &str,
    file: &Path,
    wire: &ScenarioWire,
    index: &SourceIndex,
    text: &str,
    variables: &Variables,
) -> Checked<Plan> {
    let mut v = Validator {
        file,
        index,
        text,
        scope: Scope::new(variables, file),
        deadline: DEFAULT_DEADLINE,
        tolerance: Tolerance::either_side(DEFAULT_TOLERANCE),
        step_names: [Vec::new(), Vec::new()],
        step_index: [HashMap::new(), HashMap::new()],
        addresses: Vec::new(),
        has_router: false,
        impairments: Vec::new(),
        traced: [false, false],
        valid_patterns: RefCell::default(),
    };
    let root = NodePath::root();

    if let Some(timeout) = &wire.timeout {
        let path = root.key("timeout");
        v.deadline = v.duration(&path, timeout, "timeout")?;
        if v.deadline.is_zero() {
            return Err(v.fail(&path, "timeout must be more than 0s: it is the hard deadline of the run, e.g. 40s"));
        }
    }
    match &wire.tolerance {
        Some(tolerance) => {
            let path = root.key("tolerance");
            v.tolerance = v.tolerance(&path, tolerance)?;
        }
        // A run shorter than the default tolerance (found by fuzzing: `timeout: 10ms`) gets its whole length,
        // as an explicit tolerance at most may.
        None => v.tolerance = Tolerance::either_side(DEFAULT_TOLERANCE.min(v.deadline)),
    }
    let sample_interval = match &wire.sample {
        Some(sample) => {
            let path = root.key("sample");
            let interval = v.duration(&path, sample, "sample")?;
            if !(MIN_SAMPLE..=MAX_SAMPLE).contains(&interval) {
                return Err(v.fail(
                    &path,
                    format!(
                        "sample {} is out of range; the sampling interval is 1ms..1s, e.g. 10ms",
                        format_duration(interval)
                    ),
                ));
            }
            interval
        }
        None => DEFAULT_SAMPLE,
    };
    let description = match &wire.description {
        Some(text) if !text.text().trim().is_empty() && !matches!(text, Scalar::Null) => text.text(),
        _ => {
            return Err(v.fail(
                &root.key("description"),
                "missing \"description\": say in a few lines what the scenario does and what the kernel should do",
            ))
        }
    };
    let source = match &wire.source {
        Some(Scalar::Null) | None => None,
        Some(text) => Some(text.text()),
    };
    let slow = match &wire.slow {
        Some(slow) => v.boolean(&root.key("slow"), slow, "slow")?,
        None => false,
    };

    let layout = v.hosts(&root.key("hosts"), wire.hosts.as_ref())?;
    v.addresses = layout.hosts.iter().map(|&(host, address, ..)| (host, address)).collect();
    v.has_router = layout.router.is_some();
    let link = v.link(&root.key("link"), wire.link.as_ref())?;
    let capture = v.capture(&root.key("capture"), wire.capture.as_ref(), link.mtu)?;
    let mut sysctls = v.sysctls(&root.key("sysctl"), wire.sysctl.as_ref())?;
    v.merge_router_sysctls(&root, &mut sysctls[HostId::Router.index()], &layout.router_sysctls)?;

    let programs = [wire.client.as_deref().unwrap_or(&[]), wire.server.as_deref().unwrap_or(&[])];
    for host in HostId::ALL {
        v.collect_step_names(host, programs[host.index()])?;
    }
    let mut steps = [Vec::new(), Vec::new()];
    for host in HostId::ALL {
        steps[host.index()] = v.program(host, programs[host.index()])?;
    }
    v.check_wait_deadlocks(&steps)?;
    let mut link = link;
    link.ipv6 = v.ipv6_on_link(&root.key("link"), wire.link.as_ref(), &steps, link.ipv6)?;
    program::link_connects_to_listens(&mut steps, layout.router.as_ref());
    v.traced = HostId::ALL
        .map(|host| steps[host.index()].iter().any(|step| matches!(&step.action, Action::Exec(exec) if exec.trace)));

    let faults = v.faults(&root.key("faults"), wire.faults.as_deref().unwrap_or(&[]))?;
    v.snaplen_fits_faults(&root.key("capture"), &capture, &faults)?;
    v.impairments =
        faults.iter().filter(|fault| fault.action.impairment().is_some()).map(|fault| fault.name.clone()).collect();
    let expect = v.run_expectations(&root.key("expect"), wire.expect.as_ref())?;
    let requires = v.requirements(&root.key("requires"), wire.requires.as_ref())?;
    if link.ipv6 {
        v.ipv6_payload_needs_inner_header(&root.key("faults"), &faults, &requires)?;
    }
    let conditional = v.conditional_expectations(wire)?;

    // The impairments run on the wire, which then sits on the link between client and server.
    let mut links = layout.links;
    let impaired = faults.iter().any(|fault| fault.action.impairment().is_some());
    links.iter_mut().for_each(|link| link.wire = impaired);
    if link.ipv6 {
        v.ipv6_without_wire(&root.key("faults"), &faults)?;
        for end in links.iter_mut().flat_map(|link| link.ends.iter_mut()) {
            end.address6 = Some(ipv6_address_of(end.host));
        }
    }

    let [client_steps, server_steps] = steps;
    let mut steps = [client_steps, server_steps, Vec::new()];
    let hosts = layout
        .hosts
        .iter()
        .map(|&(id, address, prefix_len, gateway)| HostPlan {
            id,
            address,
            prefix_len,
            address6: link.ipv6.then(|| ipv6_address_of(id)),
            gateway,
            sysctls: std::mem::take(&mut sysctls[id.index()]),
            steps: std::mem::take(&mut steps[id.index()]),
        })
        .collect();
    Ok(Plan {
        name: name.to_string(),
        file: file.to_path_buf(),
        description,
        source,
        slow,
        deadline: v.deadline,
        tolerance: v.tolerance,
        sample_interval,
        link,
        capture,
        hosts,
        links,
        router: layout.router,
        faults,
        expect,
        requires,
        conditional,
        not_applicable: Vec::new(),
    })
}

struct Validator<'a> {
    file: &'a Path,
    index: &'a SourceIndex,
    /// The file's text, to point at a variable inside a value.
    text: &'a str,
    scope: Scope<'a>,
    deadline: Duration,
    tolerance: Tolerance,
    /// Named steps per host (by `HostId::index()`): name and 0-based step index, in program order.
    step_names: [Vec<(String, usize)>; 2],
    /// The same names to their index, so that a program of thousands of named steps is checked in linear time.
    step_index: [HashMap<String, usize>; 2],
    /// Each host's address (the one the others reach it at), known before the programs are read.
    addresses: Vec<(HostId, Ipv4Addr)>,
    /// Whether the scenario declares a router, which faults and packet filters may then name.
    has_router: bool,
    /// Names of the scenario's impairments, whose decisions a counter expectation may count; known once the
    /// faults are read.
    impairments: Vec<String>,
    /// Whether the host runs an exec step with `trace: true` (by `HostId::index()`): `errors` expect one.
    traced: [bool; 2],
    /// Output patterns already compiled: `*aliases` can repeat one slow pattern thousands of times.
    valid_patterns: RefCell<HashSet<String>>,
}

/// What a step acts with, known while walking one host's program in order.
#[derive(Default)]
struct ProgramState {
    /// In the order they are named, for messages.
    sockets: Vec<String>,
    socket_set: HashSet<String>,
    listening: bool,
    /// The family of the current socket, while one is known to be open (a step without `on:` acts on it).
    current: Option<Family>,
    /// The family of each named socket.
    families: HashMap<String, Family>,
    /// The family of the most recent listener: an accepted socket has it.
    listener: Option<Family>,
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names.into_iter().map(|n| n.as_ref().to_string()).collect::<Vec<_>>().join(", ")
}

fn errno_names() -> impl Iterator<Item = &'static str> {
    ERRNO_NAMES.iter().map(|(name, _)| *name)
}

fn state_names() -> impl Iterator<Item = &'static str> {
    TcpState::ALL.into_iter().map(TcpState::name)
}

const TIMER_NAMES: [&str; 4] = ["on", "keepalive", "timewait", "persist"];
/// `queue:` of a queue expectation.
const QUEUES: &[(&str, QueueKind)] = &[("recv", QueueKind::Recv), ("send", QueueKind::Send)];

const PROTOCOLS: &[(&str, Protocol)] =
    &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp), ("icmp", Protocol::Icmp), ("icmpv6", Protocol::Icmpv6)];
const DIRECTIONS: &[(&str, Direction)] = &[("ingress", Direction::Ingress), ("egress", Direction::Egress)];
const PAYLOADS: &[(&str, PayloadMatch)] = &[("empty", PayloadMatch::Empty), ("nonempty", PayloadMatch::NonEmpty)];
const EDGES: &[(&str, StepEdge)] = &[("started", StepEdge::Started), ("finished", StepEdge::Finished)];
const SEND_UNTIL: &[(&str, SendUntil)] = &[("error", SendUntil::Error), ("would-block", SendUntil::WouldBlock)];
const SHUTDOWN_HOW: &[(&str, ShutdownHow)] = &[
    ("RD", ShutdownHow::Rd),
    ("WR", ShutdownHow::Wr),
    ("RDWR", ShutdownHow::Rdwr),
    ("SHUT_RD", ShutdownHow::Rd),
    ("SHUT_WR", ShutdownHow::Wr),
    ("SHUT_RDWR", ShutdownHow::Rdwr),
];
const REJECTS: &[(&str, FaultAction)] = &[
    ("tcp-reset", FaultAction::RejectTcpReset),
    ("icmp-port-unreachable", FaultAction::RejectIcmpPortUnreachable),
    ("icmp-host-unreachable", FaultAction::RejectIcmpHostUnreachable),
    ("icmp-net-unreachable", FaultAction::RejectIcmpNetUnreachable),
    ("icmp-admin-prohibited", FaultAction::RejectIcmpAdminProhibited),
];
const FAULT_ACTIONS: &[(&str, FaultAction)] = &[
    ("drop", FaultAction::Drop),
    ("qdisc-drop", FaultAction::QdiscDrop),
    ("reject-tcp-reset", FaultAction::RejectTcpReset),
    ("reject-icmp-port-unreachable", FaultAction::RejectIcmpPortUnreachable),
    ("reject-icmp-host-unreachable", FaultAction::RejectIcmpHostUnreachable),
    ("reject-icmp-net-unreachable", FaultAction::RejectIcmpNetUnreachable),
    ("reject-icmp-admin-prohibited", FaultAction::RejectIcmpAdminProhibited),
    ("flush-conntrack", FaultAction::FlushConntrack),
];

fn is_name(text: &str, upper_allowed: bool) -> bool {
    !text.is_empty()
        && text.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '_'
                || c == '-'
                || (upper_allowed && c.is_ascii_uppercase())
        })
}

impl Validator<'_> {
    fn fail(&self, path: &NodePath, message: impl Into<String>) -> ScenarioError {
        ScenarioError::new(self.file, Some(self.index.value(path)), message)
    }

    fn fail_key(&self, path: &NodePath, message: impl Into<String>) -> ScenarioError {
        ScenarioError::new(self.file, Some(self.index.key(path)), message)
    }

    /// `value` (the text of the node at `path`) with its `${...}` resolved, or an error at the variable that
    /// cannot be.
    fn resolve(&self, path: &NodePath, value: &str) -> Checked<String> {
        self.scope.substitute(value).map_err(|unresolved| {
            let node = self.index.value(path);
            // The n-th `${` of the value is the n-th in the file from the node on, unless an escape sequence of a
            // double-quoted string wrote it: then the node itself is the closest place to show.
            let nth = value[..unresolved.offset].matches("${").count();
            let at = offset_of_location(self.text, node)
                .and_then(|start| {
                    let (found, _) = self.text[start..].match_indices("${").nth(nth)?;
                    let reference = unresolved.reference.lines().next().unwrap_or("${");
                    self.text[start + found..].starts_with(reference).then_some(start + found)
                })
                .map_or(node, |offset| location_of_offset(self.text.as_bytes(), offset));
            ScenarioError::new(self.file, Some(at), unresolved.message)
        })
    }

    /// `value` or an error at `parent` saying what the missing key takes.
    fn required<'w, T>(
        &self,
        value: &'w Option<T>,
        parent: &NodePath,
        what: &str,
        key: &str,
        hint: &str,
    ) -> Checked<&'w T> {
        value.as_ref().ok_or_else(|| self.fail(parent, format!("{what} needs \"{key}\": {hint}")))
    }

    fn text(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<String> {
        match value {
            Scalar::Null => Err(self.fail(path, format!("{what} is empty; give it a value"))),
            Scalar::Str(text) if text.is_empty() => Err(self.fail(path, format!("{what} is empty; give it a value"))),
            other => Ok(other.text()),
        }
    }

    fn duration(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<Duration> {
        let text = match value {
            Scalar::Str(text) => text.clone(),
            Scalar::Int(_) | Scalar::Float(_) => {
                return Err(self.fail(path, format!("{what}: {}", DurationError::NoUnit.message(&value.text()))))
            }
            Scalar::Null => {
                return Err(self.fail(path, format!("{what} is empty; give a duration with a unit, e.g. 5s or 250ms")))
            }
            Scalar::Bool(_) => {
                return Err(
                    self.fail(path, format!("{what} must be a duration with a unit, e.g. 5s or 250ms, not {value}"))
                )
            }
        };
        parse_duration(&text).map_err(|e| self.fail(path, format!("{what}: {}", e.message(&text))))
    }

    /// A duration that must fall inside the run (`at`, `after`, `delay`, step timeouts).
    fn run_time(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<Duration> {
        let duration = self.duration(path, value, what)?;
        if duration > self.deadline {
            return Err(self.fail(
                path,
                format!(
                    "{what} {} is beyond the scenario timeout {}; raise `timeout:` (at most 120m) or shorten it",
                    format_duration(duration),
                    format_duration(self.deadline)
                ),
            ));
        }
        Ok(duration)
    }

    /// `tolerance: 250ms` (either way) or `tolerance: { early: 0s, late: 500ms }`: the allowed lateness, and
    /// the allowed earliness when it differs.
    fn tolerance(&self, path: &NodePath, value: &ScalarOr<ToleranceWire>) -> Checked<Tolerance> {
        let map = match value {
            ScalarOr::Scalar(scalar) => return Ok(Tolerance::either_side(self.tolerance_bound(path, scalar)?)),
            ScalarOr::Map(map) => map,
        };
        let example = "e.g. { early: 0s, late: 500ms }";
        let late = self.required(&map.late, path, "tolerance", "late", example)?;
        let late = self.tolerance_bound(&path.key("late"), late)?;
        let early = self.required(&map.early, path, "tolerance", "early", example)?;
        let early_path = path.key("early");
        let early = self.duration(&early_path, early, "early tolerance")?;
        if early > self.deadline {
            return Err(self.fail(
                &early_path,
                format!(
                    "early tolerance {} is longer than the scenario timeout {}",
                    format_duration(early),
                    format_duration(self.deadline)
                ),
            ));
        }
        Ok(Tolerance { early, late })
    }

    fn tolerance_bound(&self, path: &NodePath, value: &Scalar) -> Checked<Duration> {
        let tolerance = self.duration(path, value, "tolerance")?;
        if tolerance.is_zero() {
            return Err(self.fail(path, "tolerance must be more than 0s: no timing is exact; e.g. 250ms"));
        }
        if tolerance > self.deadline {
            return Err(self.fail(
                path,
                format!(
                    "tolerance {} is longer than the scenario timeout {}; use a tolerance of a fraction of it, e.g. 250ms",
                    format_duration(tolerance),
                    format_duration(self.deadline)
                ),
            ));
        }
        Ok(tolerance)
    }

    fn int(&self, path: &NodePath, value: &Scalar, what: &str, min: i128, max: i128) -> Checked<i128> {
        let number = match value {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(text) => text.trim().parse::<i128>().ok(),
            _ => None,
        };
        match number {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.fail(path, format!("{what} {n} is out of range; allowed: {min}..{max}"))),
            None => Err(self.fail(path, format!("{what} must be a whole number {min}..{max}, not {value}"))),
        }
    }

    fn boolean(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<bool> {
        match value {
            Scalar::Bool(b) => Ok(*b),
            Scalar::Int(0) => Ok(false),
            Scalar::Int(1) => Ok(true),
            _ => Err(self.fail(path, format!("{what} must be true or false, not {value}"))),
        }
    }

    fn port(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<u16> {
        let port = self.int(path, value, what, 1, 65535)?;
        u16::try_from(port).map_err(|_| self.fail(path, format!("{what} must be 1..65535")))
    }

    /// A name from `table`, or an error listing the table.
    fn pick<T: Copy>(&self, path: &NodePath, value: &Scalar, table: &[(&str, T)], what: &str) -> Checked<T> {
        let names = || table.iter().map(|(name, _)| *name);
        if let Scalar::Str(text) = value {
            if let Some((_, found)) = table.iter().find(|(name, _)| name == text) {
                return Ok(*found);
            }
        }
        let given = value.text();
        Err(self.fail(path, format!("unknown {what} {value}{}allowed: {}", suggestion(&given, names()), list(names()))))
    }

    /// A host by name: client, server, or the router when the scenario declares one.
    fn host(&self, path: &NodePath, value: &Scalar) -> Checked<HostId> {
        let names: &[&str] = if self.has_router { &["client", "router", "server"] } else { &["client", "server"] };
        if let Scalar::Str(text) = value {
            match HostId::parse(text) {
                Some(HostId::Router) if !self.has_router => return Err(self.fail(path, self.no_router("router named"))),
                Some(host) => return Ok(host),
                None => {}
            }
        }
        Err(self.fail(
            path,
            format!(
                "unknown host {value}{}hosts are: {}",
                suggestion(&value.text(), names.iter().copied()),
                names.join(", ")
            ),
        ))
    }

    /// The address the other hosts reach `host` at (`host` was checked to exist).
    fn address_of(&self, host: HostId) -> Ipv4Addr {
        self.addresses.iter().find(|(id, _)| *id == host).map_or(Ipv4Addr::UNSPECIFIED, |(_, address)| *address)
    }

    /// A host that runs a program (client or server): the router has no program and no sockets of its own.
    fn program_host(&self, path: &NodePath, value: &Scalar) -> Checked<HostId> {
        match self.host(path, value)? {
            HostId::Router => {
                Err(self
                    .fail(path, "the router runs no program and has no sockets of its own; name client or server here"))
            }
            host => Ok(host),
        }
    }

    fn tcp_state(&self, path: &NodePath, value: &Scalar) -> Checked<TcpState> {
        if let Scalar::Str(text) = value {
            if let Some(state) = TcpState::parse(text) {
                return Ok(state);
            }
        }
        Err(self.fail(
            path,
            format!(
                "unknown TCP state {value}{}allowed (as ss prints them): ESTAB, {}",
                suggestion(&value.text(), state_names()),
                list(state_names())
            ),
        ))
    }

    fn timer(&self, path: &NodePath, value: &Scalar) -> Checked<TimerKind> {
        if let Scalar::Str(text) = value {
            if let Some(timer) = TimerKind::parse(text) {
                return Ok(timer);
            }
        }
        Err(self.fail(
            path,
            format!(
                "unknown timer {value}{}allowed (as ss -o prints them): {}",
                suggestion(&value.text(), TIMER_NAMES),
                list(TIMER_NAMES)
            ),
        ))
    }

    /// tcpdump flag letters (`S`, `F.`, `R`) as TCP header bits.
    fn tcp_flags(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<u8> {
        let text = match value {
            Scalar::Str(text) if !text.is_empty() => text,
            _ => {
                return Err(self.fail(
                    path,
                    format!("{what} must be tcpdump flag letters, e.g. \"S\", \"S.\", \"F.\", \"R\", not {value}"),
                ))
            }
        };
        let mut bits = 0u8;
        for letter in text.chars() {
            match TCP_FLAG_LETTERS.iter().find(|(l, _)| *l == letter) {
                Some((_, bit)) => bits |= bit,
                None => {
                    return Err(self.fail(
                        path,
                        format!(
                        "unknown TCP flag '{letter}' in {what} \"{text}\"; allowed letters (as tcpdump prints them): \
                             S (SYN), F (FIN), R (RST), P (PSH), U (URG), E (ECE), W (CWR), . or A (ACK)"
                    ),
                    ))
                }
            }
        }
        Ok(bits)
    }

    fn errno(&self, path: &NodePath, value: &Scalar) -> Checked<Errno> {
        if let Scalar::Str(text) = value {
            if let Some(errno) = Errno::parse(text) {
                return Ok(errno);
            }
        }
        Err(self.fail(
            path,
            format!(
                "unknown errno {value}{}allowed: {}",
                suggestion(&value.text(), errno_names()),
                list(errno_names())
            ),
        ))
    }

    fn link(&self, path: &NodePath, link: Option<&LinkWire>) -> Checked<LinkPlan> {
        let Some(link) = link else {
            return Ok(LinkPlan { mtu: DEFAULT_MTU, ipv6: false });
        };
        let mtu = match &link.mtu {
            Some(mtu) => self.int(&path.key("mtu"), mtu, "mtu", 68, 65535)? as u32,
            None => DEFAULT_MTU,
        };
        let ipv6 = match &link.ipv6 {
            Some(ipv6) => self.boolean(&path.key("ipv6"), ipv6, "ipv6")?,
            None => false,
        };
        Ok(LinkPlan { mtu, ipv6 })
    }

    /// Whether the link has IPv6: as `link: { ipv6 }` says, else when a step makes an IPv6 socket. A step that
    /// makes one on a link whose `ipv6: false` was written is refused, and so is IPv6 with a router (not
    /// supported yet).
    fn ipv6_on_link(
        &self,
        path: &NodePath,
        link: Option<&LinkWire>,
        steps: &[Vec<StepPlan>; 2],
        written: bool,
    ) -> Checked<bool> {
        let first_ipv6 = steps
            .iter()
            .flatten()
            .filter(|step| step_family(&step.action) == Some(Family::Ipv6))
            .min_by_key(|step| step.location);
        let explicit = link.and_then(|link| link.ipv6.as_ref()).is_some();
        if let Some(step) = first_ipv6 {
            if explicit && !written {
                return Err(self.fail(
                    &path.key("ipv6"),
                    format!(
                        "ipv6: false, and the step at line {} makes an IPv6 socket; drop `ipv6: false` (a scenario \
                         with IPv6 sockets gets IPv6 on its link: fd00::1/64 client, fd00::2/64 server) or make that \
                         socket `family: ipv4`",
                        step.location.line
                    ),
                ));
            }
        }
        let ipv6 = if explicit { written } else { first_ipv6.is_some() };
        if ipv6 && self.has_router {
            let at = match first_ipv6 {
                Some(step) => format!("the step at line {} makes an IPv6 socket", step.location.line),
                None => "`link: { ipv6: true }`".to_string(),
            };
            let router_path = NodePath::root().key("hosts").key("router");
            return Err(self.fail_key(
                &router_path,
                format!(
                    "IPv6 is not supported with a router yet ({at}); supported: IPv6 sockets between client and \
                     server on one link (no router), or IPv4 with a router"
                ),
            ));
        }
        Ok(ipv6)
    }

    /// A fault's `payload:` condition matches IPv6 packets only when written as a load after the transport
    /// header (`@ih`); the other encoding, kept for kernels without it, reads IPv4 header lengths. With IPv6
    /// on the link such a fault needs the scenario to require the feature (not applicable elsewhere).
    fn ipv6_payload_needs_inner_header(
        &self,
        path: &NodePath,
        faults: &[FaultPlan],
        requires: &Requirements,
    ) -> Checked<()> {
        if requires.items.contains(&Requirement::Nftables(NftFeature::InnerPayload)) {
            return Ok(());
        }
        let Some(i) = faults.iter().position(|fault| fault.matcher.payload.is_some()) else { return Ok(()) };
        Err(self.fail_key(
            &path.index(i).key("match").key("payload"),
            "a payload condition matches IPv6 packets only through nftables' inner-header loads (@ih, Linux >= \
             6.2); with IPv6 on the link, add `requires: { nftables: [inner-payload] }` (the scenario is then not \
             applicable where the kernel lacks them) or drop `payload`",
        ))
    }

    /// The wire's impairments read IPv4 frames only (others pass untouched): with IPv6 on the link they would
    /// leave the IPv6 packets alone, so they are refused.
    fn ipv6_without_wire(&self, path: &NodePath, faults: &[FaultPlan]) -> Checked<()> {
        let Some((i, fault)) = faults.iter().enumerate().find(|(_, fault)| fault.action.impairment().is_some()) else {
            return Ok(());
        };
        Err(self.fail_key(
            &path.index(i).key("action"),
            format!(
                "fault {}: impairments (loss, delay, reorder, duplicate, corrupt, rate, inject) act on IPv4 frames \
                 only and are not supported with IPv6 on the link yet; supported with IPv6: drop, qdisc-drop and \
                 reject rules",
                fault.name
            ),
        ))
    }

    fn capture(&self, path: &NodePath, capture: Option<&CaptureWire>, mtu: u32) -> Checked<CapturePlan> {
        let Some(capture) = capture else {
            return Ok(CapturePlan::default());
        };
        let ring_bytes = match &capture.ring {
            Some(ring) => {
                let path = path.key("ring");
                let (text, bytes) = self.size(&path, ring, "capture ring", "64MiB")?;
                if !(MIN_CAPTURE_RING..=MAX_CAPTURE_RING).contains(&bytes) {
                    return Err(self.fail(
                        &path,
                        format!("capture ring {text} is out of range; allowed: 1MiB..1GiB (rounded up to whole MiB)"),
                    ));
                }
                Some(bytes)
            }
            None => None,
        };
        let snaplen = match &capture.snaplen {
            Some(snaplen) => {
                let path = path.key("snaplen");
                let (text, bytes) = self.size(&path, snaplen, "capture snaplen", "160B")?;
                let longest = u64::from(mtu) + LINK_HEADER_ROOM as u64;
                let allowed = format!("allowed: {MIN_SNAPLEN}B..{longest}B");
                if bytes < u64::from(MIN_SNAPLEN) {
                    return Err(self.fail(
                        &path,
                        format!(
                            "capture snaplen {text} is less than the timeline's decoding reads of a frame: \
                             {MIN_SNAPLEN} bytes (Ethernet 14 + IPv4 header with options 60 + ICMP 8 + the IPv4 \
                             header an ICMP error quotes 60 + its ports 8; a TCP segment's headers with options \
                             take 134); {allowed}"
                        ),
                    ));
                }
                if bytes > longest {
                    return Err(self.fail(
                        &path,
                        format!(
                            "capture snaplen {text} is more than the longest frame of the link ({longest} bytes: mtu \
                             {mtu} + {LINK_HEADER_ROOM} of Ethernet header and VLAN tag); {allowed}, or leave snaplen \
                             out to capture whole frames"
                        ),
                    ));
                }
                // Within the link's longest frame, so it fits a u32.
                Some(bytes as u32)
            }
            None => None,
        };
        Ok(CapturePlan { ring_bytes, snaplen })
    }

    /// A size (`64MiB`, `160B`) in bytes, with the text it was written as; `example` is one in the unit the
    /// setting is usually given in, which a bare number is pointed to.
    fn size(&self, path: &NodePath, value: &Scalar, what: &str, example: &str) -> Checked<(String, u64)> {
        let text = match value {
            Scalar::Str(text) => text.trim().to_string(),
            Scalar::Int(n) => {
                let unit = example.trim_start_matches(|c: char| c.is_ascii_digit());
                let units: Vec<&str> = UNITS.iter().map(|(unit, _)| *unit).collect();
                return Err(
                    self.fail(path, format!("size \"{n}\" needs a unit ({}), e.g. \"{n}{unit}\"", units.join(", ")))
                );
            }
            other => return Err(self.fail(path, format!("{what} must be a size like \"{example}\", not {other}"))),
        };
        let bytes = parse_size(&text).map_err(|message| self.fail(path, message))?;
        Ok((text, bytes))
    }

    /// The report pairs each packet's copies at the two ends of a link by their captured bytes; a bit the wire
    /// flipped past the snap length is in neither copy, so the two would pass for the same bytes.
    fn snaplen_fits_faults(&self, path: &NodePath, capture: &CapturePlan, faults: &[FaultPlan]) -> Checked<()> {
        let Some(snaplen) = capture.snaplen else { return Ok(()) };
        let corrupting = faults.iter().find(|f| matches!(f.action.impairment(), Some(Impairment::Corrupt { .. })));
        match corrupting {
            Some(fault) => Err(self.fail(
                &path.key("snaplen"),
                format!(
                    "capture snaplen {snaplen}B cannot go with fault {}'s corrupt impairment: the report tells a \
                     corrupted copy from the one sent by its bytes, and the flipped bit may lie past the snap \
                     length; leave snaplen out to capture whole frames",
                    fault.name
                ),
            )),
            None => Ok(()),
        }
    }

    /// Each host's sysctls, by `HostId::index()` (client, server, router).
    fn sysctls(&self, path: &NodePath, wire: Option<&SysctlWire>) -> Checked<[Vec<Sysctl>; 3]> {
        let mut result = [Vec::new(), Vec::new(), Vec::new()];
        let Some(wire) = wire else { return Ok(result) };
        for (host, entries) in
            [(HostId::Client, &wire.client), (HostId::Server, &wire.server), (HostId::Router, &wire.router)]
        {
            let Some(entries) = entries else { continue };
            let host_path = path.key(host.name());
            if host == HostId::Router && !self.has_router {
                return Err(self.fail_key(&host_path, self.no_router("sysctls for the router")));
            }
            for (name, value) in &entries.0 {
                let entry_path = host_path.key(name);
                if !allowed_sysctls().any(|allowed| allowed == name) {
                    let message = match closest(name, allowed_sysctls()) {
                        Some(near) => format!(
                            "unknown sysctl \"{name}\"; did you mean {near}? allowed are net.ipv4.*, net.ipv6.*, \
                             net.core.* and net.netfilter.* entries that exist per network namespace"
                        ),
                        None => format!(
                            "\"{name}\" is not a per-namespace sysctl: setting it would change the host; allowed are \
                             net.ipv4.* and net.core.* entries that exist per network namespace, e.g. \
                             net.ipv4.tcp_syn_retries, net.ipv4.tcp_retries2, net.ipv4.tcp_keepalive_time, \
                             net.core.somaxconn"
                        ),
                    };
                    return Err(self.fail_key(&entry_path, message));
                }
                let value = match value {
                    Scalar::Int(n) => n.to_string(),
                    Scalar::Str(text) if text.contains(|c: char| c.is_control() && c != '\t') => {
                        return Err(self.fail(
                            &entry_path,
                            format!(
                                "sysctl {name} is set to {value}, which holds a line break or control character; \
                                 a sysctl value is one line, e.g. \"4096 131072 6291456\""
                            ),
                        ))
                    }
                    Scalar::Str(text) if !text.trim().is_empty() => text.clone(),
                    other => {
                        return Err(self.fail(
                            &entry_path,
                            format!(
                                "sysctl {name} must be set to a number or text as `sysctl -w` takes it, not {other}"
                            ),
                        ))
                    }
                };
                result[host.index()].push(Sysctl {
                    name: name.clone(),
                    value,
                    location: Some(self.index.value(&entry_path)),
                });
            }
            result[host.index()].sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(result)
    }

    /// Adds what the router's settings mean as sysctls to those the scenario gives the router; one sysctl set
    /// both ways is refused.
    fn merge_router_sysctls(&self, root: &NodePath, given: &mut Vec<Sysctl>, implied: &[Sysctl]) -> Checked<()> {
        for sysctl in implied {
            if let Some(twice) = given.iter().find(|g| g.name == sysctl.name) {
                return Err(self.fail_key(
                    &root.key("sysctl").key("router").key(&twice.name),
                    format!(
                        "sysctl {} is already set by the router's settings (hosts: router: ... gives {}); set it in one place",
                        twice.name, sysctl.value
                    ),
                ));
            }
        }
        given.extend(implied.iter().cloned());
        given.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Why a scenario without a router cannot mention one.
    fn no_router(&self, what: &str) -> String {
        format!("{what}, but the scenario has no router; declare one with `hosts: {{ router: {{ nat: masquerade }} }}`")
    }
}

/// The family of the socket a step makes or names by its address, if it makes or addresses one.
fn step_family(action: &Action) -> Option<Family> {
    match action {
        Action::Socket { family, .. } | Action::Bind { family, .. } | Action::Listen { family, .. } => Some(*family),
        Action::Connect { address, .. } => Some(Family::of(*address)),
        _ => None,
    }
}

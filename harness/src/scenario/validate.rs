//! Validation: turns the wire schema into a [`Plan`], checking every name, number, duration and reference
//! against what the format allows, and pointing each error at the line and column of the offending node.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::error::ScenarioError;
use crate::scenario::duration::{format_duration, parse_duration, DurationError};
use crate::scenario::locate::{NodePath, SourceIndex};
use crate::scenario::names::{
    closest, suggestion, ACTION_KEYS, BARE_ACTIONS, SOCKOPT_NAMES, TCP_FLAG_LETTERS,
};
use crate::scenario::plan::*;
use crate::scenario::schema::*;

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
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_BACKLOG: u32 = 128;
pub const DEFAULT_RECV_MAX: usize = 65536;
/// Largest single send or recv buffer.
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;

const SYSCTL_LIST: &str = include_str!("sysctls.txt");

/// Sysctls a scenario may set: those that exist per network namespace on the kernel the list was made on.
pub fn allowed_sysctls() -> impl Iterator<Item = &'static str> {
    SYSCTL_LIST
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

type Checked<T> = Result<T, ScenarioError>;

/// Checks `wire` (read from `file`, positions in `index`) and builds the plan named `name`.
pub fn validate(
    name: &str,
    file: &Path,
    wire: &ScenarioWire,
    index: &SourceIndex,
) -> Checked<Plan> {
    let mut v = Validator {
        file,
        index,
        deadline: DEFAULT_DEADLINE,
        tolerance: DEFAULT_TOLERANCE,
        step_names: [Vec::new(), Vec::new()],
    };
    let root = NodePath::root();

    if let Some(timeout) = &wire.timeout {
        let path = root.key("timeout");
        v.deadline = v.duration(&path, timeout, "timeout")?;
        if v.deadline.is_zero() {
            return Err(v.fail(
                &path,
                "timeout must be more than 0s: it is the hard deadline of the run, e.g. 40s",
            ));
        }
    }
    if let Some(tolerance) = &wire.tolerance {
        let path = root.key("tolerance");
        v.tolerance = v.tolerance(&path, tolerance)?;
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

    let addresses = v.hosts(&root.key("hosts"), wire.hosts.as_ref())?;
    let link = v.link(&root.key("link"), wire.link.as_ref())?;
    let sysctls = v.sysctls(&root.key("sysctl"), wire.sysctl.as_ref())?;

    let programs = [
        wire.client.as_deref().unwrap_or(&[]),
        wire.server.as_deref().unwrap_or(&[]),
    ];
    for host in HostId::ALL {
        v.collect_step_names(host, programs[host.index()])?;
    }
    let mut steps = [Vec::new(), Vec::new()];
    for host in HostId::ALL {
        steps[host.index()] = v.program(host, programs[host.index()])?;
    }
    v.check_wait_deadlocks(&steps)?;

    let faults = v.faults(&root.key("faults"), wire.faults.as_deref().unwrap_or(&[]))?;
    let expect = v.run_expectations(&root.key("expect"), wire.expect.as_ref())?;

    let [client_steps, server_steps] = steps;
    let [client_sysctls, server_sysctls] = sysctls;
    let [(client_address, client_prefix), (server_address, server_prefix)] = addresses;
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
        hosts: [
            HostPlan {
                id: HostId::Client,
                address: client_address,
                prefix_len: client_prefix,
                sysctls: client_sysctls,
                steps: client_steps,
            },
            HostPlan {
                id: HostId::Server,
                address: server_address,
                prefix_len: server_prefix,
                sysctls: server_sysctls,
                steps: server_steps,
            },
        ],
        faults,
        expect,
    })
}

struct Validator<'a> {
    file: &'a Path,
    index: &'a SourceIndex,
    deadline: Duration,
    tolerance: Duration,
    /// Named steps per host (by `HostId::index()`): name and 0-based step index.
    step_names: [Vec<(String, usize)>; 2],
}

/// What a step acts with, known while walking one host's program in order.
#[derive(Default)]
struct ProgramState {
    sockets: Vec<String>,
    listening: bool,
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| n.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn errno_names() -> impl Iterator<Item = &'static str> {
    ERRNO_NAMES.iter().map(|(name, _)| *name)
}

fn state_names() -> impl Iterator<Item = &'static str> {
    TcpState::ALL.into_iter().map(TcpState::name)
}

const TIMER_NAMES: [&str; 4] = ["on", "keepalive", "timewait", "persist"];
const PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("icmp", Protocol::Icmp),
];
const DIRECTIONS: &[(&str, Direction)] = &[
    ("ingress", Direction::Ingress),
    ("egress", Direction::Egress),
];
const PAYLOADS: &[(&str, PayloadMatch)] = &[
    ("empty", PayloadMatch::Empty),
    ("nonempty", PayloadMatch::NonEmpty),
];
const EDGES: &[(&str, StepEdge)] = &[
    ("started", StepEdge::Started),
    ("finished", StepEdge::Finished),
];
const SEND_UNTIL: &[(&str, SendUntil)] = &[
    ("error", SendUntil::Error),
    ("would-block", SendUntil::WouldBlock),
];
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
    (
        "icmp-port-unreachable",
        FaultAction::RejectIcmpPortUnreachable,
    ),
    (
        "icmp-host-unreachable",
        FaultAction::RejectIcmpHostUnreachable,
    ),
    (
        "icmp-net-unreachable",
        FaultAction::RejectIcmpNetUnreachable,
    ),
    (
        "icmp-admin-prohibited",
        FaultAction::RejectIcmpAdminProhibited,
    ),
];
const FAULT_ACTIONS: &[(&str, FaultAction)] = &[
    ("drop", FaultAction::Drop),
    ("reject-tcp-reset", FaultAction::RejectTcpReset),
    (
        "reject-icmp-port-unreachable",
        FaultAction::RejectIcmpPortUnreachable,
    ),
    (
        "reject-icmp-host-unreachable",
        FaultAction::RejectIcmpHostUnreachable,
    ),
    (
        "reject-icmp-net-unreachable",
        FaultAction::RejectIcmpNetUnreachable,
    ),
    (
        "reject-icmp-admin-prohibited",
        FaultAction::RejectIcmpAdminProhibited,
    ),
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

    /// `value` or an error at `parent` saying what the missing key takes.
    fn required<'w, T>(
        &self,
        value: &'w Option<T>,
        parent: &NodePath,
        what: &str,
        key: &str,
        hint: &str,
    ) -> Checked<&'w T> {
        value
            .as_ref()
            .ok_or_else(|| self.fail(parent, format!("{what} needs \"{key}\": {hint}")))
    }

    fn text(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<String> {
        match value {
            Scalar::Null => Err(self.fail(path, format!("{what} is empty; give it a value"))),
            Scalar::Str(text) if text.is_empty() => {
                Err(self.fail(path, format!("{what} is empty; give it a value")))
            }
            other => Ok(other.text()),
        }
    }

    fn duration(&self, path: &NodePath, value: &Scalar, what: &str) -> Checked<Duration> {
        let text = match value {
            Scalar::Str(text) => text.clone(),
            Scalar::Int(_) | Scalar::Float(_) => {
                return Err(self.fail(
                    path,
                    format!("{what}: {}", DurationError::NoUnit.message(&value.text())),
                ))
            }
            Scalar::Null => {
                return Err(self.fail(
                    path,
                    format!("{what} is empty; give a duration with a unit, e.g. 5s or 250ms"),
                ))
            }
            Scalar::Bool(_) => {
                return Err(self.fail(
                    path,
                    format!("{what} must be a duration with a unit, e.g. 5s or 250ms, not {value}"),
                ))
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

    fn tolerance(&self, path: &NodePath, value: &Scalar) -> Checked<Duration> {
        let tolerance = self.duration(path, value, "tolerance")?;
        if tolerance.is_zero() {
            return Err(self.fail(
                path,
                "tolerance must be more than 0s: no timing is exact; e.g. 250ms",
            ));
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

    fn int(
        &self,
        path: &NodePath,
        value: &Scalar,
        what: &str,
        min: i128,
        max: i128,
    ) -> Checked<i128> {
        let number = match value {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(text) => text.trim().parse::<i128>().ok(),
            _ => None,
        };
        match number {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.fail(
                path,
                format!("{what} {n} is out of range; allowed: {min}..{max}"),
            )),
            None => Err(self.fail(
                path,
                format!("{what} must be a whole number {min}..{max}, not {value}"),
            )),
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
    fn pick<T: Copy>(
        &self,
        path: &NodePath,
        value: &Scalar,
        table: &[(&str, T)],
        what: &str,
    ) -> Checked<T> {
        let names = || table.iter().map(|(name, _)| *name);
        if let Scalar::Str(text) = value {
            if let Some((_, found)) = table.iter().find(|(name, _)| name == text) {
                return Ok(*found);
            }
        }
        let given = value.text();
        Err(self.fail(
            path,
            format!(
                "unknown {what} {value}{}allowed: {}",
                suggestion(&given, names()),
                list(names())
            ),
        ))
    }

    fn host(&self, path: &NodePath, value: &Scalar) -> Checked<HostId> {
        if let Scalar::Str(text) = value {
            if let Some(host) = HostId::parse(text) {
                return Ok(host);
            }
        }
        Err(self.fail(
            path,
            format!(
                "unknown host {value}{}hosts are: client, server",
                suggestion(&value.text(), ["client", "server"])
            ),
        ))
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

    fn hosts(&self, path: &NodePath, hosts: Option<&HostsWire>) -> Checked<[(Ipv4Addr, u8); 2]> {
        let defaults = [
            (DEFAULT_CLIENT_ADDRESS, DEFAULT_PREFIX_LEN),
            (DEFAULT_SERVER_ADDRESS, DEFAULT_PREFIX_LEN),
        ];
        let Some(hosts) = hosts else {
            return Ok(defaults);
        };
        let mut addresses = defaults;
        let mut given = [None, None];
        for (host, wire) in [
            (HostId::Client, &hosts.client),
            (HostId::Server, &hosts.server),
        ] {
            let Some(wire) = wire else { continue };
            let host_path = path.key(host.name());
            let address = self.required(
                &wire.address,
                &host_path,
                &format!("host {host}"),
                "address",
                "e.g. 10.0.0.1/24",
            )?;
            let address_path = host_path.key("address");
            addresses[host.index()] = self.address(&address_path, address)?;
            given[host.index()] = Some(address_path);
        }
        let blame = given[1]
            .clone()
            .or(given[0].clone())
            .unwrap_or_else(|| path.clone());
        let [(client, client_len), (server, server_len)] = addresses;
        if client == server {
            return Err(self.fail(
                &blame,
                format!("client and server have the same address {client}; give each its own"),
            ));
        }
        let network = |addr: Ipv4Addr, len: u8| {
            Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - u32::from(len))))
        };
        if network(server, client_len) != network(client, client_len)
            || network(client, server_len) != network(server, server_len)
        {
            return Err(self.fail(
                &blame,
                format!(
                    "client {client}/{client_len} and server {server}/{server_len} are not in the same subnet; the veth \
                     link has no router, so both addresses must share one subnet, e.g. 10.0.0.1/24 and 10.0.0.2/24"
                ),
            ));
        }
        Ok(addresses)
    }

    fn address(&self, path: &NodePath, value: &Scalar) -> Checked<(Ipv4Addr, u8)> {
        let text = value.text();
        let Some((address, prefix)) = text.split_once('/') else {
            return Err(self.fail(
                path,
                format!("address {value} needs a prefix length 8..30, e.g. \"{text}/24\""),
            ));
        };
        let address: Ipv4Addr = address.parse().map_err(|_| {
            self.fail(
                path,
                format!("{value} is not an IPv4 address with prefix, e.g. 10.0.0.1/24"),
            )
        })?;
        let prefix_len = match prefix.parse::<u8>() {
            Ok(len) if (8..=30).contains(&len) => len,
            _ => {
                return Err(self.fail(
                    path,
                    format!(
                        "prefix length \"{prefix}\" of {value} is not allowed; use 8..30, e.g. /24"
                    ),
                ))
            }
        };
        if address.is_loopback()
            || address.is_multicast()
            || address.is_unspecified()
            || address.is_broadcast()
        {
            return Err(self.fail(
                path,
                format!("{address} is not a unicast host address; use e.g. 10.0.0.1/24"),
            ));
        }
        let host_bits = u32::from(address) & (u32::MAX >> prefix_len);
        if host_bits == 0 || host_bits == u32::MAX >> prefix_len {
            return Err(self.fail(
                path,
                format!("{text} is the network or broadcast address of its subnet; use a host address such as .1 or .2"),
            ));
        }
        Ok((address, prefix_len))
    }

    fn link(&self, path: &NodePath, link: Option<&LinkWire>) -> Checked<LinkPlan> {
        let Some(link) = link else {
            return Ok(LinkPlan {
                mtu: DEFAULT_MTU,
                ipv6: false,
            });
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

    fn sysctls(&self, path: &NodePath, wire: Option<&SysctlWire>) -> Checked<[Vec<Sysctl>; 2]> {
        let mut result = [Vec::new(), Vec::new()];
        let Some(wire) = wire else { return Ok(result) };
        for (host, entries) in [
            (HostId::Client, &wire.client),
            (HostId::Server, &wire.server),
        ] {
            let Some(entries) = entries else { continue };
            let host_path = path.key(host.name());
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
                    Scalar::Str(text) if !text.trim().is_empty() => text.clone(),
                    other => {
                        return Err(self.fail(
                            &entry_path,
                            format!("sysctl {name} must be set to a number or text as `sysctl -w` takes it, not {other}"),
                        ))
                    }
                };
                result[host.index()].push(Sysctl {
                    name: name.clone(),
                    value,
                });
            }
            result[host.index()].sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(result)
    }

    fn collect_step_names(&mut self, host: HostId, program: &[StepWire]) -> Checked<()> {
        let program_path = NodePath::root().key(host.name());
        let mut names: Vec<(String, usize)> = Vec::new();
        for (i, step) in program.iter().enumerate() {
            let ScalarOr::Map(step) = step else { continue };
            let Some(name) = &step.name else { continue };
            let path = program_path.index(i).key("name");
            let name = match name {
                Scalar::Str(text) if is_name(text, true) => text.clone(),
                other => {
                    return Err(self.fail(
                        &path,
                        format!("step name {other} is not allowed; use letters, digits, _ and -, e.g. connect"),
                    ))
                }
            };
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                let first_at = self.index.value(&program_path.index(*first).key("name"));
                return Err(self.fail(
                    &path,
                    format!("duplicate step name \"{name}\" on {host} (first at {first_at}); step names are unique per host"),
                ));
            }
            names.push((name, i));
        }
        self.step_names[host.index()] = names;
        Ok(())
    }

    fn program(&self, host: HostId, program: &[StepWire]) -> Checked<Vec<StepPlan>> {
        let program_path = NodePath::root().key(host.name());
        let mut state = ProgramState::default();
        let mut steps = Vec::with_capacity(program.len());
        for (i, step) in program.iter().enumerate() {
            steps.push(self.step(host, i, &program_path.index(i), step, &mut state)?);
        }
        Ok(steps)
    }

    fn step(
        &self,
        host: HostId,
        index: usize,
        path: &NodePath,
        wire: &StepWire,
        state: &mut ProgramState,
    ) -> Checked<StepPlan> {
        let location = self.index.value(path);
        let map = match wire {
            ScalarOr::Scalar(Scalar::Str(name)) => {
                let action = self.bare_action(path, name, state)?;
                return Ok(StepPlan {
                    index,
                    name: None,
                    socket: None,
                    action,
                    expect: StepExpectation { tolerance: self.tolerance, location, ..StepExpectation::default() },
                    location,
                });
            }
            ScalarOr::Scalar(other) => {
                return Err(self.fail(
                    path,
                    format!(
                        "a step is an action name like `close` or a map with one action like `connect: {{ port: 9000 }}`, \
                         not {other}; actions: {}",
                        list(ACTION_KEYS)
                    ),
                ))
            }
            ScalarOr::Map(map) => map,
        };

        let present = self.present_actions(path, map);
        let (key, action_path) = match present.as_slice() {
            [] => {
                return Err(self.fail(
                    path,
                    format!(
                        "step has no action; give exactly one of: {} (with optional name, on, as, expect)",
                        list(ACTION_KEYS)
                    ),
                ))
            }
            [one] => one.clone(),
            [..] => {
                let mut by_position = present.clone();
                by_position.sort_by_key(|(_, p)| self.index.key(p));
                let names: Vec<&str> = by_position.iter().map(|(k, _)| *k).collect();
                let (second, second_path) = &by_position[1];
                return Err(self.fail_key(
                    second_path,
                    format!(
                        "step has {} actions ({}); a step does exactly one thing: move `{second}` into a step of its own",
                        names.len(),
                        list(&names)
                    ),
                ));
            }
        };

        let as_name = match &map.as_name {
            Some(value) => {
                let as_path = path.key("as");
                if !matches!(key, "socket" | "accept") {
                    return Err(self.fail_key(
                        &as_path,
                        format!("\"as\" names the new socket of a socket or accept step; a {key} step makes no socket"),
                    ));
                }
                let name = match value {
                    Scalar::Str(text) if is_name(text, true) => text.clone(),
                    other => {
                        return Err(self.fail(
                            &as_path,
                            format!("socket name {other} is not allowed; use letters, digits, _ and -, e.g. conn"),
                        ))
                    }
                };
                if state.sockets.contains(&name) {
                    return Err(self.fail(
                        &as_path,
                        format!("socket name \"{name}\" is already given by an earlier step on {host}; pick another"),
                    ));
                }
                Some(name)
            }
            None => None,
        };
        let socket = match &map.on {
            Some(value) => {
                let on_path = path.key("on");
                if matches!(key, "socket" | "sleep" | "wait" | "exec") {
                    return Err(self.fail_key(
                        &on_path,
                        format!("\"on\" picks the socket a step acts on; a {key} step acts on no existing socket"),
                    ));
                }
                let name = value.text();
                if !state.sockets.contains(&name) {
                    let known = if state.sockets.is_empty() {
                        "no socket is named before this step; name one with `as:` on a socket or accept step".to_string()
                    } else {
                        format!("named so far: {}", list(&state.sockets))
                    };
                    return Err(self.fail(
                        &on_path,
                        format!(
                            "no socket named {value} on {host}{}{known}",
                            suggestion(&name, state.sockets.iter().map(String::as_str))
                        ),
                    ));
                }
                Some(name)
            }
            None => None,
        };

        let action = self.action(host, key, &action_path, map, as_name.clone(), state)?;
        if let Some(name) = as_name {
            state.sockets.push(name);
        }
        let name = map.name.as_ref().map(Scalar::text);
        let expect =
            self.step_expectation(&path.key("expect"), map.expect.as_ref(), &action, location)?;
        Ok(StepPlan {
            index,
            name,
            socket,
            action,
            expect,
            location,
        })
    }

    /// The action keys present in a step map, with their paths as written (`write` stays `write`).
    fn present_actions(&self, path: &NodePath, map: &StepMapWire) -> Vec<(&'static str, NodePath)> {
        let aliased = |canonical: &'static str, alias: &'static str| {
            let alias_path = path.key(alias);
            if self.index.contains(&alias_path) {
                (alias, alias_path)
            } else {
                (canonical, path.key(canonical))
            }
        };
        let flags = [
            (map.socket.is_some(), "socket"),
            (map.setsockopt.is_some(), "setsockopt"),
            (map.bind.is_some(), "bind"),
            (map.listen.is_some(), "listen"),
            (map.accept.is_some(), "accept"),
            (map.connect.is_some(), "connect"),
            (map.poll.is_some(), "poll"),
            (map.send.is_some(), "send"),
            (map.recv.is_some(), "recv"),
            (map.shutdown.is_some(), "shutdown"),
            (map.close.is_some(), "close"),
            (map.sleep.is_some(), "sleep"),
            (map.getsockopt.is_some(), "getsockopt"),
            (map.wait.is_some(), "wait"),
            (map.exec.is_some(), "exec"),
        ];
        flags
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, key)| match key {
                "send" => aliased("send", "write"),
                "recv" => aliased("recv", "read"),
                _ => (key, path.key(key)),
            })
            .collect()
    }

    fn bare_action(
        &self,
        path: &NodePath,
        name: &str,
        state: &mut ProgramState,
    ) -> Checked<Action> {
        match name {
            "socket" => Ok(Action::Socket {
                name: None,
                options: Vec::new(),
                nonblocking: false,
            }),
            "listen" => {
                state.listening = true;
                Ok(Action::Listen {
                    port: None,
                    backlog: DEFAULT_BACKLOG,
                })
            }
            "accept" => {
                self.require_listener(path, state)?;
                Ok(Action::Accept { name: None })
            }
            "recv" | "read" => Ok(Action::Recv {
                max: DEFAULT_RECV_MAX,
                until_eof: false,
            }),
            "close" => Ok(Action::Close),
            known if ACTION_KEYS.contains(&known) => Err(self.fail(
                path,
                format!(
                    "`{known}` needs parameters, e.g. `- {}`; only {} may be written bare",
                    example_of(known),
                    list(BARE_ACTIONS)
                ),
            )),
            unknown => Err(self.fail(
                path,
                format!(
                    "unknown action \"{unknown}\"{}actions: {}",
                    suggestion(unknown, ACTION_KEYS.iter().copied()),
                    list(ACTION_KEYS)
                ),
            )),
        }
    }

    fn require_listener(&self, path: &NodePath, state: &ProgramState) -> Checked<()> {
        if state.listening {
            return Ok(());
        }
        Err(self.fail(
            path,
            "accept needs a listening socket first: add `- listen: { port: 9000 }` before it",
        ))
    }

    fn action(
        &self,
        host: HostId,
        key: &str,
        path: &NodePath,
        map: &StepMapWire,
        as_name: Option<String>,
        state: &mut ProgramState,
    ) -> Checked<Action> {
        if let Some(options) = &map.socket {
            return Ok(Action::Socket {
                name: as_name,
                options: self.sockopts(path, options)?,
                nonblocking: false,
            });
        }
        if let Some(options) = &map.setsockopt {
            if options.0.is_empty() {
                return Err(self.fail(path, "setsockopt needs at least one option, e.g. `setsockopt: { TCP_USER_TIMEOUT: 5000 }`"));
            }
            return Ok(Action::SetOpt {
                options: self.sockopts(path, options)?,
            });
        }
        if let Some(bind) = &map.bind {
            let port = self.required(
                &bind.port,
                path,
                "bind",
                "port",
                "the local port, e.g. `bind: { port: 9000 }`",
            )?;
            return Ok(Action::Bind {
                port: self.port(&path.key("port"), port, "port")?,
            });
        }
        if let Some(listen) = &map.listen {
            let port = match &listen.port {
                Some(port) => Some(self.port(&path.key("port"), port, "port")?),
                None => None,
            };
            let backlog = match &listen.backlog {
                Some(backlog) => {
                    self.int(&path.key("backlog"), backlog, "backlog", 0, 65535)? as u32
                }
                None => DEFAULT_BACKLOG,
            };
            state.listening = true;
            return Ok(Action::Listen { port, backlog });
        }
        if map.accept.is_some() {
            self.require_listener(path, state)?;
            return Ok(Action::Accept { name: as_name });
        }
        if let Some(connect) = &map.connect {
            let to = match &connect.to {
                Some(to) => self.host(&path.key("to"), to)?,
                None => host.peer(),
            };
            let port = self.required(
                &connect.port,
                path,
                "connect",
                "port",
                "the peer's port, e.g. `connect: { port: 9000 }`",
            )?;
            let port = self.port(&path.key("port"), port, "port")?;
            let nonblocking = match &connect.nonblocking {
                Some(value) => self.boolean(&path.key("nonblocking"), value, "nonblocking")?,
                None => false,
            };
            return Ok(Action::Connect {
                to,
                port,
                nonblocking,
            });
        }
        if let Some(poll) = &map.poll {
            let events_wire = self.required(
                &poll.events,
                path,
                "poll",
                "events",
                "e.g. `events: [POLLIN, POLLOUT]`",
            )?;
            let events = self.poll_events(&path.key("events"), events_wire)?;
            if events.is_empty() {
                return Err(self.fail(
                    &path.key("events"),
                    "poll needs at least one event, e.g. [POLLIN]",
                ));
            }
            let timeout = self.required(
                &poll.timeout,
                path,
                "poll",
                "timeout",
                "how long poll waits, e.g. `timeout: 5s`",
            )?;
            let timeout = self.run_time(&path.key("timeout"), timeout, "poll timeout")?;
            return Ok(Action::Poll { events, timeout });
        }
        if let Some(send) = &map.send {
            return self.send(path, send);
        }
        if let Some(recv) = &map.recv {
            let max = match &recv.max {
                Some(max) => {
                    self.int(&path.key("max"), max, "max", 1, MAX_BUFFER as i128)? as usize
                }
                None => DEFAULT_RECV_MAX,
            };
            let until_eof = match &recv.until {
                Some(until) => {
                    if until != &Scalar::Str("eof".into()) {
                        return Err(self.fail(
                            &path.key("until"),
                            format!("unknown recv until {until}; allowed: eof"),
                        ));
                    }
                    true
                }
                None => false,
            };
            return Ok(Action::Recv { max, until_eof });
        }
        if let Some(how) = &map.shutdown {
            return Ok(Action::Shutdown {
                how: self.pick(path, how, SHUTDOWN_HOW, "shutdown mode")?,
            });
        }
        if map.close.is_some() {
            return Ok(Action::Close);
        }
        if let Some(duration) = &map.sleep {
            let duration = self.run_time(path, duration, "sleep")?;
            if duration.is_zero() {
                return Err(self.fail(path, "sleep must be more than 0s, e.g. `sleep: 8s`"));
            }
            return Ok(Action::Sleep { duration });
        }
        if let Some(option) = &map.getsockopt {
            return Ok(Action::GetOpt {
                option: self.pick(path, option, SOCKOPT_NAMES, "socket option")?,
            });
        }
        if let Some(wait) = &map.wait {
            return self.wait(host, path, wait);
        }
        if let Some(exec) = &map.exec {
            return self.exec(path, exec);
        }
        Err(self.fail(path, format!("step action `{key}` is not handled")))
    }

    fn sockopts(
        &self,
        path: &NodePath,
        options: &Entries<ScalarOr<LingerWire>>,
    ) -> Checked<Vec<SockOpt>> {
        let mut result = Vec::with_capacity(options.0.len());
        for (name, value) in &options.0 {
            let option_path = path.key(name);
            let Some((_, option)) = SOCKOPT_NAMES.iter().find(|(n, _)| n == name) else {
                let names = SOCKOPT_NAMES.iter().map(|(n, _)| *n);
                return Err(self.fail_key(
                    &option_path,
                    format!(
                        "unknown socket option \"{name}\"{}allowed: {}",
                        suggestion(name, names.clone()),
                        list(names)
                    ),
                ));
            };
            let value = self.sockopt_value(&option_path, *option, name, value)?;
            result.push(SockOpt {
                name: *option,
                value,
            });
        }
        Ok(result)
    }

    fn sockopt_value(
        &self,
        path: &NodePath,
        option: SockOptName,
        name: &str,
        value: &ScalarOr<LingerWire>,
    ) -> Checked<SockOptValue> {
        use SockOptName::*;
        let scalar = match value {
            ScalarOr::Map(linger) if option == SO_LINGER => {
                let on = self.required(&linger.on, path, "SO_LINGER", "on", "true or false")?;
                let on = self.boolean(&path.key("on"), on, "SO_LINGER on")?;
                let seconds = match &linger.seconds {
                    Some(seconds) => self.int(
                        &path.key("seconds"),
                        seconds,
                        "SO_LINGER seconds",
                        0,
                        i128::from(i32::MAX),
                    )? as i32,
                    None => 0,
                };
                return Ok(SockOptValue::Linger { on, seconds });
            }
            ScalarOr::Map(_) => {
                return Err(self.fail(
                    path,
                    format!(
                        "{name} takes a number, not a map; only SO_LINGER takes {{ on, seconds }}"
                    ),
                ))
            }
            ScalarOr::Scalar(scalar) => scalar,
        };
        if option == SO_ERROR {
            return Err(self.fail_key(
                path,
                "SO_ERROR is read-only; read it with `getsockopt: SO_ERROR`",
            ));
        }
        if option == SO_LINGER {
            let seconds =
                self.int(path, scalar, "SO_LINGER seconds", 0, i128::from(i32::MAX))? as i32;
            return Ok(SockOptValue::Linger { on: true, seconds });
        }
        let (min, max) = match option {
            SO_KEEPALIVE | SO_REUSEADDR | SO_REUSEPORT | TCP_NODELAY | TCP_QUICKACK => {
                if let Scalar::Bool(b) = scalar {
                    return Ok(SockOptValue::Int(i32::from(*b)));
                }
                (0, 1)
            }
            TCP_KEEPIDLE | TCP_KEEPINTVL => (1, 32767),
            TCP_KEEPCNT | TCP_SYNCNT => (1, 127),
            _ => (0, i128::from(i32::MAX)),
        };
        Ok(SockOptValue::Int(
            self.int(path, scalar, name, min, max)? as i32
        ))
    }

    fn poll_events(&self, path: &NodePath, events: &ScalarList) -> Checked<Vec<PollEvent>> {
        let mut result = BTreeSet::new();
        for (i, event) in events.items.iter().enumerate() {
            let event_path = if events.list {
                path.index(i)
            } else {
                path.clone()
            };
            let names = PollEvent::ALL.map(PollEvent::name);
            let parsed = match event {
                Scalar::Str(text) => PollEvent::parse(text),
                _ => None,
            };
            match parsed {
                Some(parsed) => {
                    result.insert(parsed);
                }
                None => {
                    return Err(self.fail(
                        &event_path,
                        format!(
                            "unknown poll event {event}{}allowed: {}",
                            suggestion(&event.text(), names),
                            list(names)
                        ),
                    ))
                }
            }
        }
        Ok(result.into_iter().collect())
    }

    fn send(&self, path: &NodePath, send: &SendWire) -> Checked<Action> {
        let bytes = self.required(
            &send.bytes,
            path,
            "send",
            "bytes",
            "how many bytes each send() writes, e.g. `bytes: 1000`",
        )?;
        let bytes = self.int(&path.key("bytes"), bytes, "bytes", 1, MAX_BUFFER as i128)? as usize;
        let repeat = match &send.repeat {
            Some(Scalar::Str(text)) if text == "forever" => SendRepeat::Forever,
            Some(repeat) => {
                let repeat_path = path.key("repeat");
                match self.int(&repeat_path, repeat, "repeat", 1, i128::from(u32::MAX)) {
                    Ok(n) => SendRepeat::Times(n as u32),
                    Err(_) => {
                        return Err(self.fail(
                            &repeat_path,
                            format!(
                                "repeat must be a count 1..{} or `forever`, not {repeat}",
                                u32::MAX
                            ),
                        ))
                    }
                }
            }
            None => SendRepeat::Times(1),
        };
        let every = match &send.every {
            Some(every) => {
                let every_path = path.key("every");
                let every = self.run_time(&every_path, every, "every")?;
                if every.is_zero() {
                    return Err(self.fail(
                        &every_path,
                        "every must be more than 0s; leave it out to send back to back",
                    ));
                }
                Some(every)
            }
            None => None,
        };
        let until = match &send.until {
            Some(until) => Some(self.pick(&path.key("until"), until, SEND_UNTIL, "send until")?),
            None => None,
        };
        if repeat == SendRepeat::Forever && until.is_none() {
            return Err(self.fail(
                &path.key("repeat"),
                "`repeat: forever` needs `until: error` or `until: would-block` to end the loop",
            ));
        }
        Ok(Action::Send {
            bytes,
            repeat,
            every,
            until,
        })
    }

    /// `client.connect` as host and step name, checked against the named steps.
    fn step_ref(&self, path: &NodePath, value: &Scalar) -> Checked<(HostId, String)> {
        let text = value.text();
        let Some((host_name, step)) = text.split_once('.') else {
            return Err(self.fail(
                path,
                format!("{value} is not a step reference; write host.step, e.g. client.connect"),
            ));
        };
        let Some(host) = HostId::parse(host_name) else {
            return Err(self.fail(
                path,
                format!(
                    "unknown host \"{host_name}\" in step reference {value}{}hosts are: client, server",
                    suggestion(host_name, ["client", "server"])
                ),
            ));
        };
        let names = &self.step_names[host.index()];
        if !names.iter().any(|(n, _)| n == step) {
            let known = if names.is_empty() {
                format!("{host} has no named steps; name one with `name: {step}`")
            } else {
                format!(
                    "named steps on {host}: {}",
                    list(names.iter().map(|(n, _)| n))
                )
            };
            return Err(self.fail(
                path,
                format!(
                    "no step named \"{step}\" on {host}{}{known}",
                    suggestion(step, names.iter().map(|(n, _)| n.as_str()))
                ),
            ));
        }
        Ok((host, step.to_string()))
    }

    fn wait(&self, host: HostId, path: &NodePath, wait: &ScalarOr<WaitWire>) -> Checked<Action> {
        let (target_path, target, edge) = match wait {
            ScalarOr::Scalar(target) => (path.clone(), target, StepEdge::Finished),
            ScalarOr::Map(map) => {
                let target = self.required(
                    &map.target,
                    path,
                    "wait",
                    "for",
                    "the step to wait for, e.g. `for: server.accept`",
                )?;
                let edge = match &map.edge {
                    Some(edge) => self.pick(&path.key("edge"), edge, EDGES, "edge")?,
                    None => StepEdge::Finished,
                };
                (path.key("for"), target, edge)
            }
        };
        let (target_host, step) = self.step_ref(&target_path, target)?;
        if target_host == host {
            return Err(self.fail(
                &target_path,
                format!(
                    "{host} cannot wait for its own step {}: steps of one host already run in order; wait for a step of {}",
                    target.text(),
                    host.peer()
                ),
            ));
        }
        Ok(Action::Wait {
            host: target_host,
            step,
            edge,
        })
    }

    fn exec(&self, path: &NodePath, exec: &ExecWire) -> Checked<Action> {
        let program = self.required(
            &exec.program,
            path,
            "exec",
            "program",
            "the program to run, e.g. `program: curl`",
        )?;
        let program = self.text(&path.key("program"), program, "program")?;
        let args = match &exec.args {
            Some(args) => args.items.iter().map(Scalar::text).collect(),
            None => Vec::new(),
        };
        let mut env = Vec::new();
        if let Some(entries) = &exec.env {
            for (name, value) in &entries.0 {
                let env_path = path.key("env").key(name);
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(self.fail_key(
                        &env_path,
                        format!("environment variable name \"{name}\" is not allowed; use letters, digits and _, e.g. LANG"),
                    ));
                }
                env.push((name.clone(), value.text()));
            }
        }
        env.sort();
        let stdin = exec.stdin.as_ref().map(Scalar::text);
        let timeout = match &exec.timeout {
            Some(timeout) => {
                let timeout_path = path.key("timeout");
                let timeout = self.run_time(&timeout_path, timeout, "exec timeout")?;
                if timeout.is_zero() {
                    return Err(
                        self.fail(&timeout_path, "exec timeout must be more than 0s, e.g. 30s")
                    );
                }
                timeout
            }
            None => self.deadline,
        };
        let background = match &exec.background {
            Some(value) => self.boolean(&path.key("background"), value, "background")?,
            None => false,
        };
        let stdout = self.patterns(&path.key("stdout"), exec.stdout.as_ref(), "stdout")?;
        let stderr = self.patterns(&path.key("stderr"), exec.stderr.as_ref(), "stderr")?;
        Ok(Action::Exec(ExecPlan {
            program,
            args,
            env,
            stdin,
            timeout,
            background,
            stdout,
            stderr,
        }))
    }

    fn patterns(
        &self,
        path: &NodePath,
        patterns: Option<&ScalarList>,
        what: &str,
    ) -> Checked<Vec<String>> {
        let Some(patterns) = patterns else {
            return Ok(Vec::new());
        };
        let mut result = Vec::with_capacity(patterns.items.len());
        for (i, pattern) in patterns.items.iter().enumerate() {
            let pattern_path = if patterns.list {
                path.index(i)
            } else {
                path.clone()
            };
            let text = pattern.text();
            if let Err(e) = Regex::new(&text) {
                let reason = e.to_string();
                let reason = reason
                    .lines()
                    .find_map(|line| line.strip_prefix("error: "))
                    .unwrap_or(reason.lines().last().unwrap_or("invalid"))
                    .to_string();
                return Err(self.fail(
                    &pattern_path,
                    format!("{what} pattern \"{text}\" is not a valid regular expression: {reason} (syntax: Rust regex crate)"),
                ));
            }
            result.push(text);
        }
        Ok(result)
    }

    fn step_expectation(
        &self,
        path: &NodePath,
        wire: Option<&ScalarOr<StepExpectWire>>,
        action: &Action,
        step_location: Location,
    ) -> Checked<StepExpectation> {
        let mut expect = StepExpectation {
            tolerance: self.tolerance,
            location: step_location,
            ..StepExpectation::default()
        };
        let Some(wire) = wire else { return Ok(expect) };
        expect.location = self.index.value(path);
        let map = match wire {
            ScalarOr::Scalar(result) => {
                expect.outcome = Some(self.outcome(path, result, action)?);
                return Ok(expect);
            }
            ScalarOr::Map(map) => map,
        };
        let mut given: Vec<(&str, NodePath)> = Vec::new();
        if let Some(result) = &map.result {
            given.push(("result", path.key("result")));
            expect.outcome = Some(self.outcome(&path.key("result"), result, action)?);
        }
        if let Some(events) = &map.events {
            let events_path = path.key("events");
            given.push(("events", events_path.clone()));
            if !matches!(action, Action::Poll { .. }) {
                return Err(self.fail_key(
                    &events_path,
                    format!(
                        "`events` only fits poll steps; this is a {} step",
                        action.kind()
                    ),
                ));
            }
            expect.outcome = Some(ExpectedOutcome::Events(
                self.poll_events(&events_path, events)?,
            ));
        }
        if let Some(exit) = &map.exit {
            let exit_path = path.key("exit");
            given.push(("exit", exit_path.clone()));
            if !matches!(action, Action::Exec(_)) {
                return Err(self.fail_key(
                    &exit_path,
                    format!(
                        "`exit` only fits exec steps; this is a {} step",
                        action.kind()
                    ),
                ));
            }
            expect.outcome = Some(ExpectedOutcome::Exit(
                self.int(&exit_path, exit, "exit", 0, 255)? as i32,
            ));
        }
        if given.len() > 1 {
            given.sort_by_key(|(_, p)| self.index.key(p));
            return Err(self.fail_key(
                &given[1].1,
                format!(
                    "give only one of result, events, exit; this expect has {}",
                    list(given.iter().map(|(k, _)| *k))
                ),
            ));
        }
        if let Some(after) = &map.after {
            expect.after = Some(self.run_time(&path.key("after"), after, "after")?);
        }
        if let Some(at) = &map.at {
            expect.at = Some(self.run_time(&path.key("at"), at, "at")?);
        }
        if let Some(tolerance) = &map.tolerance {
            expect.tolerance = self.tolerance(&path.key("tolerance"), tolerance)?;
        }
        Ok(expect)
    }

    fn outcome(
        &self,
        path: &NodePath,
        value: &Scalar,
        action: &Action,
    ) -> Checked<ExpectedOutcome> {
        let kind = action.kind();
        let only = |what: &str, fits: &str| {
            self.fail(
                path,
                format!("`{what}` only fits {fits} steps; this is a {kind} step"),
            )
        };
        match value {
            Scalar::Int(n) => {
                if !matches!(action, Action::Send { .. } | Action::Recv { .. }) {
                    return Err(only("a byte count", "send and recv"));
                }
                let bytes = u64::try_from(*n).map_err(|_| {
                    self.fail(
                        path,
                        format!("byte count {n} is negative; expect 0 or more bytes"),
                    )
                })?;
                Ok(ExpectedOutcome::Bytes(bytes))
            }
            Scalar::Str(text) if text == "ok" => Ok(ExpectedOutcome::Ok),
            Scalar::Str(text) if text == "eof" => {
                if !matches!(action, Action::Recv { .. }) {
                    return Err(only("eof", "recv/read"));
                }
                Ok(ExpectedOutcome::Eof)
            }
            Scalar::Str(text) if text == "timeout" => {
                if !matches!(action, Action::Poll { .. }) {
                    return Err(only("timeout", "poll"));
                }
                Ok(ExpectedOutcome::Timeout)
            }
            Scalar::Str(text)
                if text.starts_with('E') && text.chars().all(|c| c.is_ascii_uppercase()) =>
            {
                Ok(ExpectedOutcome::Error(self.errno(path, value)?))
            }
            other => {
                let words = ["ok", "eof", "timeout"];
                let hint = suggestion(&other.text(), words.into_iter().chain(errno_names()));
                Err(self.fail(
                    path,
                    format!(
                        "unknown result {other}{hint}allowed: ok, eof, timeout, a byte count, or an errno: {}",
                        list(errno_names())
                    ),
                ))
            }
        }
    }

    /// Refuses two hosts that wait for each other: each blocked before the step the other waits for.
    fn check_wait_deadlocks(&self, steps: &[Vec<StepPlan>; 2]) -> Checked<()> {
        let position = |host: HostId, name: &str| {
            steps[host.index()]
                .iter()
                .position(|s| s.name.as_deref() == Some(name))
        };
        // (waiting host, its step index, target step index, edge)
        let mut waits = Vec::new();
        for host in HostId::ALL {
            for step in &steps[host.index()] {
                if let Action::Wait {
                    host: target_host,
                    step: target,
                    edge,
                } = &step.action
                {
                    if let Some(target_index) = position(*target_host, target) {
                        waits.push((host, step.index, target_index, *edge));
                    }
                }
            }
        }
        // `blocker` holds its host until the wait ends; the target is out of reach if it lies beyond the blocker.
        let blocks = |blocker: usize, target: usize, edge: StepEdge| {
            blocker < target || (blocker == target && edge == StepEdge::Finished)
        };
        for &(host, index, target, edge) in &waits {
            for &(other_host, other_index, other_target, other_edge) in &waits {
                if other_host == host.peer()
                    && blocks(other_index, target, edge)
                    && blocks(index, other_target, other_edge)
                {
                    let step_path = NodePath::root().key(host.name()).index(index);
                    let peer = host.peer();
                    let peer_steps = &steps[peer.index()];
                    let own_steps = &steps[host.index()];
                    let name_of =
                        |steps: &[StepPlan], i: usize| steps[i].name.clone().unwrap_or_default();
                    return Err(self.fail(
                        &step_path,
                        format!(
                            "deadlock: this step waits for {peer}.{}, but {peer} reaches that step only after its \
                             step {}, which waits for {host}.{}, a step that comes after this one; reorder the steps \
                             so that one host can go on",
                            name_of(peer_steps, target),
                            peer_steps[other_index].label(),
                            name_of(own_steps, other_target),
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn faults(&self, path: &NodePath, faults: &[FaultWire]) -> Checked<Vec<FaultPlan>> {
        let mut result: Vec<FaultPlan> = Vec::with_capacity(faults.len());
        for (i, wire) in faults.iter().enumerate() {
            let fault = self.fault(&path.index(i), wire)?;
            if let Some(first) = result.iter().position(|f| f.name == fault.name) {
                let first_at = self.index.value(&path.index(first).key("name"));
                return Err(self.fail(
                    &path.index(i).key("name"),
                    format!(
                        "duplicate fault name \"{}\" (first at {first_at}); fault names are unique",
                        fault.name
                    ),
                ));
            }
            result.push(fault);
        }
        result.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(result)
    }

    fn fault(&self, path: &NodePath, wire: &FaultWire) -> Checked<FaultPlan> {
        let name = self.required(
            &wire.name,
            path,
            "fault",
            "name",
            "a unique name of a-z, 0-9, _ and -, e.g. `name: blackhole`",
        )?;
        let name = match name {
            Scalar::Str(text) if is_name(text, false) => text.clone(),
            other => {
                return Err(self.fail(
                    &path.key("name"),
                    format!("fault name {other} is not allowed; use lowercase letters, digits, _ and -, e.g. blackhole"),
                ))
            }
        };
        let host = self.required(
            &wire.at,
            path,
            "fault",
            "at",
            "the host whose firewall holds the rule, client or server",
        )?;
        let host = self.host(&path.key("at"), host)?;
        let direction = match &wire.direction {
            Some(direction) => {
                self.pick(&path.key("direction"), direction, DIRECTIONS, "direction")?
            }
            None => Direction::Ingress,
        };
        let mut matcher = match &wire.matcher {
            Some(matcher) => self.packet_match(&path.key("match"), matcher)?,
            None => PacketMatch::default(),
        };
        let action = self.required(
            &wire.action,
            path,
            "fault",
            "action",
            "drop, or { reject: tcp-reset | icmp-port-unreachable | icmp-host-unreachable | icmp-net-unreachable | icmp-admin-prohibited }",
        )?;
        let action_path = path.key("action");
        let action = match action {
            ScalarOr::Scalar(action) => {
                self.pick(&action_path, action, FAULT_ACTIONS, "fault action")?
            }
            ScalarOr::Map(reject) => {
                let kind = self.required(
                    &reject.reject,
                    &action_path,
                    "reject",
                    "reject",
                    "e.g. `reject: tcp-reset`",
                )?;
                self.pick(&action_path.key("reject"), kind, REJECTS, "reject kind")?
            }
        };
        if action == FaultAction::RejectTcpReset {
            match matcher.protocol {
                Some(Protocol::Tcp) => {}
                None => matcher.protocol = Some(Protocol::Tcp),
                Some(other) => {
                    return Err(self.fail(
                        &path.key("match").key("protocol"),
                        format!(
                            "reject with tcp-reset only answers TCP packets, but this fault matches {}; match tcp or use an icmp reject",
                            format!("{other:?}").to_lowercase()
                        ),
                    ))
                }
            }
        }
        let from = match &wire.from {
            Some(from) => self.trigger(&path.key("from"), from, "from")?,
            None => Trigger::At(Duration::ZERO),
        };
        let until = match &wire.until {
            Some(until) => Some(self.trigger(&path.key("until"), until, "until")?),
            None => None,
        };
        if let (Trigger::At(start), Some(Trigger::At(end))) = (&from, &until) {
            if end <= start {
                return Err(self.fail(
                    &path.key("until"),
                    format!(
                        "until {} is not after from {}; the fault would never be on: make until later than from",
                        format_duration(*end),
                        format_duration(*start)
                    ),
                ));
            }
        }
        Ok(FaultPlan {
            name,
            host,
            direction,
            matcher,
            action,
            from,
            until,
            location: self.index.value(path),
        })
    }

    fn packet_match(&self, path: &NodePath, wire: &MatchWire) -> Checked<PacketMatch> {
        let protocol = match &wire.protocol {
            Some(protocol) => {
                Some(self.pick(&path.key("protocol"), protocol, PROTOCOLS, "protocol")?)
            }
            None => None,
        };
        let mut matcher = PacketMatch {
            protocol,
            ..PacketMatch::default()
        };
        for (key, value, slot) in [
            ("sport", &wire.sport, &mut matcher.sport),
            ("dport", &wire.dport, &mut matcher.dport),
        ] {
            if let Some(value) = value {
                if protocol == Some(Protocol::Icmp) {
                    return Err(self.fail_key(
                        &path.key(key),
                        format!("icmp has no ports; drop `{key}` or match tcp or udp"),
                    ));
                }
                *slot = Some(self.port(&path.key(key), value, key)?);
            }
        }
        let tcp_only = |key: &str| -> Checked<()> {
            if matches!(protocol, Some(Protocol::Udp | Protocol::Icmp)) {
                return Err(self.fail_key(
                    &path.key(key),
                    format!("`{key}` only matches TCP packets; set `protocol: tcp` or drop it"),
                ));
            }
            Ok(())
        };
        if let Some(flags) = &wire.flags {
            tcp_only("flags")?;
            let flags_path = path.key("flags");
            matcher.tcp_flags = Some(match flags {
                ScalarOr::Scalar(letters) => TcpFlagsMatch {
                    mask: 0xff,
                    value: self.tcp_flags(&flags_path, letters, "flags")?,
                },
                ScalarOr::Map(masked) => {
                    let mask = self.required(
                        &masked.mask,
                        &flags_path,
                        "flags",
                        "mask",
                        "the flags to look at, e.g. \"SAFR\"",
                    )?;
                    let mask = self.tcp_flags(&flags_path.key("mask"), mask, "mask")?;
                    let value = self.required(
                        &masked.value,
                        &flags_path,
                        "flags",
                        "value",
                        "the flags that must be set, e.g. \"A\"",
                    )?;
                    let value = self.tcp_flags(&flags_path.key("value"), value, "value")?;
                    if value & !mask != 0 {
                        return Err(self.fail(
                            &flags_path.key("value"),
                            "value sets flags that the mask leaves out; every flag of value must be in mask",
                        ));
                    }
                    TcpFlagsMatch { mask, value }
                }
            });
            matcher.protocol = Some(Protocol::Tcp);
        }
        if let Some(payload) = &wire.payload {
            tcp_only("payload")?;
            matcher.payload =
                Some(self.pick(&path.key("payload"), payload, PAYLOADS, "payload")?);
            matcher.protocol = Some(Protocol::Tcp);
        }
        Ok(matcher)
    }

    fn trigger(
        &self,
        path: &NodePath,
        wire: &ScalarOr<TriggerWire>,
        what: &str,
    ) -> Checked<Trigger> {
        let map = match wire {
            ScalarOr::Scalar(Scalar::Str(text))
                if text.starts_with(|c: char| c.is_ascii_alphabetic()) =>
            {
                let (host, step) = self.step_ref(path, &Scalar::Str(text.clone()))?;
                return Ok(Trigger::Step {
                    host,
                    step,
                    edge: StepEdge::Finished,
                    delay: Duration::ZERO,
                });
            }
            ScalarOr::Scalar(time) => return Ok(Trigger::At(self.run_time(path, time, what)?)),
            ScalarOr::Map(map) => map,
        };
        let kinds = [
            ("at", map.at.is_some()),
            ("after", map.after.is_some()),
            ("started", map.started.is_some()),
            ("state", map.state.is_some()),
            ("packet", map.packet.is_some()),
            ("bytes", map.bytes.is_some()),
        ];
        let given: Vec<&str> = kinds
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect();
        let kind = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(self.fail(
                    path,
                    format!("{what} trigger needs one of: at, after, started, state, packet, bytes; e.g. {{ after: client.connect }}"),
                ))
            }
            [_, second, ..] => {
                return Err(self.fail_key(
                    &path.key(second),
                    format!("{what} trigger has {}; give only one of at, after, started, state, packet, bytes", list(&given)),
                ))
            }
        };
        let not_with = |key: &str, set: bool| -> Checked<()> {
            if set {
                return Err(self.fail_key(
                    &path.key(key),
                    format!("`{key}` does not go with `{kind}` in a trigger"),
                ));
            }
            Ok(())
        };
        not_with(
            "host",
            map.host.is_some() && matches!(kind, "at" | "after" | "started"),
        )?;
        not_with("nth", map.nth.is_some() && kind != "packet")?;
        not_with("delay", map.delay.is_some() && kind == "at")?;
        let delay = match &map.delay {
            Some(delay) => self.run_time(&path.key("delay"), delay, "delay")?,
            None => Duration::ZERO,
        };
        let host = match &map.host {
            Some(host) => Some(self.host(&path.key("host"), host)?),
            None => None,
        };
        let need_host = |example: &str| {
            host.ok_or_else(|| self.fail(path, format!("a {kind} trigger needs `host`: whose socket or interface to watch, e.g. {example}")))
        };
        Ok(match kind {
            "at" => Trigger::At(self.run_time(
                &path.key("at"),
                map.at.as_ref().unwrap_or(&Scalar::Null),
                "at",
            )?),
            "after" | "started" => {
                let (reference, edge) = match (&map.after, &map.started) {
                    (Some(reference), _) => (reference, StepEdge::Finished),
                    (None, Some(reference)) => (reference, StepEdge::Started),
                    (None, None) => return Err(self.fail(path, "trigger needs a step reference")),
                };
                let (host, step) = self.step_ref(&path.key(kind), reference)?;
                Trigger::Step {
                    host,
                    step,
                    edge,
                    delay,
                }
            }
            "state" => {
                let state = self.tcp_state(
                    &path.key("state"),
                    map.state.as_ref().unwrap_or(&Scalar::Null),
                )?;
                Trigger::State {
                    host: need_host("{ state: ESTABLISHED, host: client }")?,
                    state,
                    delay,
                }
            }
            "packet" => {
                let packet_path = path.key("packet");
                let filter = self.packet_filter(
                    &packet_path,
                    map.packet.as_ref().unwrap_or(&PacketFilterWire::default()),
                )?;
                let host = match (host, filter.from) {
                    (Some(host), _) | (None, Some(host)) => host,
                    (None, None) => {
                        return Err(self.fail(
                            path,
                            "a packet trigger needs `host` (whose interface sees the packet) or `packet.from`",
                        ))
                    }
                };
                let nth = match &map.nth {
                    Some(nth) => {
                        self.int(&path.key("nth"), nth, "nth", 1, i128::from(u32::MAX))? as u32
                    }
                    None => 1,
                };
                Trigger::Packet {
                    host,
                    filter,
                    nth,
                    delay,
                }
            }
            _ => {
                let bytes = self.int(
                    &path.key("bytes"),
                    map.bytes.as_ref().unwrap_or(&Scalar::Null),
                    "bytes",
                    1,
                    i128::from(u32::MAX),
                )?;
                Trigger::Bytes {
                    host: need_host("{ bytes: 1000, host: client }")?,
                    bytes: bytes as u64,
                    delay,
                }
            }
        })
    }

    fn packet_filter(&self, path: &NodePath, wire: &PacketFilterWire) -> Checked<PacketFilter> {
        Ok(PacketFilter {
            from: match &wire.from {
                Some(from) => Some(self.host(&path.key("from"), from)?),
                None => None,
            },
            flags: match &wire.flags {
                Some(flags) => Some(self.tcp_flags(&path.key("flags"), flags, "flags")?),
                None => None,
            },
            len: match &wire.len {
                Some(len) => Some(self.int(&path.key("len"), len, "len", 0, 65535)? as u32),
                None => None,
            },
        })
    }

    fn run_expectations(
        &self,
        path: &NodePath,
        wire: Option<&RunExpectWire>,
    ) -> Checked<RunExpectations> {
        let Some(wire) = wire else {
            return Ok(RunExpectations::default());
        };
        let mut expect = RunExpectations::default();
        for (i, packet) in wire.packets.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect
                .packets
                .push(self.packet_expectation(&path.key("packets").index(i), packet)?);
        }
        for (i, state) in wire.states.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect
                .states
                .push(self.state_expectation(&path.key("states").index(i), state)?);
        }
        for (i, timer) in wire.timers.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect
                .timers
                .push(self.timer_expectation(&path.key("timers").index(i), timer)?);
        }
        Ok(expect)
    }

    fn packet_expectation(
        &self,
        path: &NodePath,
        wire: &PacketExpectWire,
    ) -> Checked<PacketExpectation> {
        let filter = self.packet_filter(
            path,
            &PacketFilterWire {
                from: wire.from.clone(),
                flags: wire.flags.clone(),
                len: wire.len.clone(),
            },
        )?;
        let mut at = Vec::new();
        if let Some(times) = &wire.at {
            let at_path = path.key("at");
            for (i, time) in times.items.iter().enumerate() {
                let time_path = if times.list {
                    at_path.index(i)
                } else {
                    at_path.clone()
                };
                let time = self.run_time(&time_path, time, "at")?;
                if at.last().is_some_and(|last| *last > time) {
                    return Err(self.fail(
                        &time_path,
                        "packet times in `at` must be in increasing order",
                    ));
                }
                at.push(time);
            }
        }
        let mut count = match &wire.count {
            Some(count) => {
                Some(self.int(&path.key("count"), count, "count", 0, i128::from(u32::MAX))? as u32)
            }
            None => None,
        };
        if wire.at.is_some() {
            let times = at.len() as u32;
            if count.is_some_and(|count| count != times) {
                return Err(self.fail(
                    &path.key("count"),
                    format!("count {} disagrees with the {times} times in `at`; leave count out or make them match", count.unwrap_or(0)),
                ));
            }
            count = Some(times);
        }
        if count.is_none() {
            return Err(self.fail(path, "a packet expectation needs `count` (0 = none at all) or `at` (the times they are seen)"));
        }
        let window = match &wire.within {
            Some(within) => {
                let within_path = path.key("within");
                let [start, end] = within.items.as_slice() else {
                    return Err(self.fail(
                        &within_path,
                        "within must be a window [start, end], e.g. [13s, 15s]",
                    ));
                };
                let item = |i: usize| within_path.index(i);
                let start = self.run_time(&item(0), start, "within start")?;
                let end = self.run_time(&item(1), end, "within end")?;
                if end < start {
                    return Err(self.fail(
                        &item(1),
                        "within ends before it starts; write [start, end] with start <= end",
                    ));
                }
                Some((start, end))
            }
            None => None,
        };
        let tolerance = match &wire.tolerance {
            Some(tolerance) => self.tolerance(&path.key("tolerance"), tolerance)?,
            None => self.tolerance,
        };
        Ok(PacketExpectation {
            filter,
            count,
            at,
            window,
            tolerance,
            location: self.index.value(path),
        })
    }

    fn state_expectation(
        &self,
        path: &NodePath,
        wire: &StateExpectWire,
    ) -> Checked<StateExpectation> {
        let host = self.required(
            &wire.host,
            path,
            "state expectation",
            "host",
            "client or server",
        )?;
        let host = self.host(&path.key("host"), host)?;
        let port = match &wire.port {
            Some(port) => Some(self.port(&path.key("port"), port, "port")?),
            None => None,
        };
        let sequence_wire = self.required(
            &wire.sequence,
            path,
            "state expectation",
            "sequence",
            "e.g. [SYN-RECV, GONE]",
        )?;
        if sequence_wire.is_empty() {
            return Err(self.fail(
                &path.key("sequence"),
                "sequence needs at least one state, e.g. [ESTABLISHED, GONE]",
            ));
        }
        let mut sequence = Vec::with_capacity(sequence_wire.len());
        for (i, step) in sequence_wire.iter().enumerate() {
            let step_path = path.key("sequence").index(i);
            sequence.push(match step {
                ScalarOr::Scalar(state) => StateStep {
                    state: self.tcp_state(&step_path, state)?,
                    at: None,
                },
                ScalarOr::Map(map) => {
                    let state = self.required(
                        &map.state,
                        &step_path,
                        "state step",
                        "state",
                        "e.g. { state: GONE, at: 7s }",
                    )?;
                    StateStep {
                        state: self.tcp_state(&step_path.key("state"), state)?,
                        at: match &map.at {
                            Some(at) => Some(self.run_time(&step_path.key("at"), at, "at")?),
                            None => None,
                        },
                    }
                }
            });
        }
        let tolerance = match &wire.tolerance {
            Some(tolerance) => self.tolerance(&path.key("tolerance"), tolerance)?,
            None => self.tolerance,
        };
        Ok(StateExpectation {
            host,
            port,
            sequence,
            tolerance,
            location: self.index.value(path),
        })
    }

    fn timer_expectation(
        &self,
        path: &NodePath,
        wire: &TimerExpectWire,
    ) -> Checked<TimerExpectation> {
        let host = self.required(
            &wire.host,
            path,
            "timer expectation",
            "host",
            "client or server",
        )?;
        let host = self.host(&path.key("host"), host)?;
        let timer = self.required(
            &wire.timer,
            path,
            "timer expectation",
            "timer",
            "on, keepalive, timewait or persist",
        )?;
        let timer = self.timer(&path.key("timer"), timer)?;
        Ok(TimerExpectation {
            host,
            port: match &wire.port {
                Some(port) => Some(self.port(&path.key("port"), port, "port")?),
                None => None,
            },
            timer,
            retrans: match &wire.retrans {
                Some(retrans) => {
                    Some(self.int(&path.key("retrans"), retrans, "retrans", 0, 255)? as u32)
                }
                None => None,
            },
            state: match &wire.state {
                Some(state) => Some(self.tcp_state(&path.key("state"), state)?),
                None => None,
            },
            location: self.index.value(path),
        })
    }
}

/// A one-line example of an action that needs parameters, for "needs parameters" errors.
fn example_of(action: &str) -> &'static str {
    match action {
        "setsockopt" => "setsockopt: { TCP_USER_TIMEOUT: 5000 }",
        "bind" => "bind: { port: 9000 }",
        "connect" => "connect: { port: 9000 }",
        "poll" => "poll: { events: [POLLIN], timeout: 5s }",
        "send" | "write" => "send: { bytes: 1000 }",
        "shutdown" => "shutdown: WR",
        "sleep" => "sleep: 5s",
        "getsockopt" => "getsockopt: SO_ERROR",
        "wait" => "wait: server.accept",
        "exec" => "exec: { program: curl, args: [\"http://10.0.0.2:9000/\"] }",
        _ => "close",
    }
}

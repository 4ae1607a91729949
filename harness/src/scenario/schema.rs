//! Wire schema of scenario files: exactly what serde reads from the YAML, before any name, number or duration
//! is checked. Every map denies unknown keys; every leaf is a [`Scalar`] so that validation, not serde, decides
//! what a value means and can say what is allowed.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Any single YAML value (text, number, true/false or empty), as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Null => f.write_str("an empty value"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            // Debug keeps what tells a float from a whole number: `9000.0`, `1e41`.
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

impl Scalar {
    /// The value as the user wrote it, without quotes: what duration and name parsers read.
    pub fn text(&self) -> String {
        match self {
            Scalar::Null => String::new(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value (text, number or true/false)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(i128::from(v)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    /// Integers over 2^64 arrive here; past i128 (about 1.7e38) only their size matters to the range checks.
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
        Ok(i128::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A value written either as a single scalar or as a map (`drop` or `{ reject: tcp-reset }`).
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarOr<M> {
    Scalar(Scalar),
    Map(M),
}

struct ScalarOrVisitor<M>(PhantomData<M>);

impl<'de, M: Deserialize<'de>> Visitor<'de> for ScalarOrVisitor<M> {
    type Value = ScalarOr<M>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value or a map")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        ScalarVisitor.visit_bool(v).map(ScalarOr::Scalar)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_i64(v).map(ScalarOr::Scalar)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_u64(v).map(ScalarOr::Scalar)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
        ScalarVisitor.visit_i128(v).map(ScalarOr::Scalar)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        ScalarVisitor.visit_u128(v).map(ScalarOr::Scalar)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        ScalarVisitor.visit_f64(v).map(ScalarOr::Scalar)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        ScalarVisitor.visit_str(v).map(ScalarOr::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ScalarOr::Scalar(Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ScalarOr::Scalar(Scalar::Null))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        M::deserialize(de::value::MapAccessDeserializer::new(map)).map(ScalarOr::Map)
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for ScalarOr<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ScalarOr<M>, D::Error> {
        deserializer.deserialize_any(ScalarOrVisitor(PhantomData))
    }
}

/// One scalar or a list of them (`at: 14s` or `at: [5s, 8s]`); `list` says which was written, for positions.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarList {
    pub items: Vec<Scalar>,
    pub list: bool,
}

struct ScalarListVisitor;

impl<'de> Visitor<'de> for ScalarListVisitor {
    type Value = ScalarList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value or a list of values")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![Scalar::Bool(v)], list: false })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![Scalar::Int(i128::from(v))], list: false })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![Scalar::Int(i128::from(v))], list: false })
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![ScalarVisitor.visit_i128(v)?], list: false })
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![ScalarVisitor.visit_u128(v)?], list: false })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![Scalar::Float(v)], list: false })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarList, E> {
        Ok(ScalarList { items: vec![Scalar::Str(v.to_string())], list: false })
    }

    fn visit_unit<E: de::Error>(self) -> Result<ScalarList, E> {
        Ok(ScalarList { items: Vec::new(), list: false })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScalarList, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Scalar>()? {
            items.push(item);
        }
        Ok(ScalarList { items, list: true })
    }
}

impl<'de> Deserialize<'de> for ScalarList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ScalarList, D::Error> {
        deserializer.deserialize_any(ScalarListVisitor)
    }
}

/// A map with free-form keys (sysctl names, socket options, environment), in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entries<V>(pub Vec<(String, V)>);

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of names to values")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Entries<V>, E> {
        Ok(Entries(Vec::new()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, V>()? {
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries<V>, D::Error> {
        deserializer.deserialize_any(EntriesVisitor(PhantomData))
    }
}

/// Keeps a key that is present with an empty value (`close:`) apart from an absent key.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioWire {
    pub description: Option<Scalar>,
    pub source: Option<Scalar>,
    pub slow: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub sample: Option<Scalar>,
    pub hosts: Option<HostsWire>,
    pub link: Option<LinkWire>,
    pub capture: Option<CaptureWire>,
    pub sysctl: Option<SysctlWire>,
    pub faults: Option<Vec<FaultWire>>,
    pub server: Option<Vec<StepWire>>,
    pub client: Option<Vec<StepWire>>,
    pub expect: Option<RunExpectWire>,
    pub requires: Option<RequiresWire>,
}

/// `requires:` what the running kernel must have for the scenario, or one expectation, to apply.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiresWire {
    pub kernel: Option<Scalar>,
    pub sysctl: Option<Entries<Scalar>>,
    pub nftables: Option<ScalarList>,
}

/// `hosts:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsWire {
    pub client: Option<HostWire>,
    pub server: Option<HostWire>,
    pub router: Option<RouterWire>,
}

/// `hosts: { router: ... }`: a router between client and server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterWire {
    #[serde(rename = "client-side")]
    pub client_side: Option<Scalar>,
    #[serde(rename = "server-side")]
    pub server_side: Option<Scalar>,
    pub nat: Option<ScalarOr<NatWire>>,
    pub conntrack: Option<ConntrackWire>,
}

/// `nat: { masquerade: true, forward: [{ port: 8080, to: 9000 }] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatWire {
    pub masquerade: Option<Scalar>,
    pub forward: Option<Vec<PortForwardWire>>,
}

/// `{ port: 8080, to: 9000 }`: a DNAT port forward to the server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForwardWire {
    pub port: Option<Scalar>,
    pub to: Option<Scalar>,
}

/// `conntrack: { loose: false, timeouts: { established: 5s } }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackWire {
    pub loose: Option<Scalar>,
    pub timeouts: Option<Entries<Scalar>>,
}

/// `hosts: { client: ... }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostWire {
    pub address: Option<Scalar>,
}

/// `link:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkWire {
    pub mtu: Option<Scalar>,
    pub ipv6: Option<Scalar>,
}

/// `capture:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureWire {
    pub ring: Option<Scalar>,
    pub snaplen: Option<Scalar>,
}

/// `sysctl:` per host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlWire {
    pub client: Option<Entries<Scalar>>,
    pub server: Option<Entries<Scalar>>,
    pub router: Option<Entries<Scalar>>,
}

/// One item of `faults:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultWire {
    pub name: Option<Scalar>,
    pub at: Option<Scalar>,
    pub direction: Option<Scalar>,
    #[serde(rename = "match")]
    pub matcher: Option<MatchWire>,
    pub action: Option<ScalarOr<ActionWire>>,
    pub from: Option<ScalarOr<TriggerWire>>,
    pub until: Option<ScalarOr<TriggerWire>>,
}

/// `match:` of a fault.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchWire {
    pub protocol: Option<Scalar>,
    pub sport: Option<Scalar>,
    pub dport: Option<Scalar>,
    pub flags: Option<ScalarOr<FlagMaskWire>>,
    pub payload: Option<Scalar>,
}

/// `flags: { mask: SAFR, value: A }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagMaskWire {
    pub mask: Option<Scalar>,
    pub value: Option<Scalar>,
}

/// The map form of `action:`: `{ reject: tcp-reset }`, or one impairment of the wire between the hosts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionWire {
    pub reject: Option<Scalar>,
    pub loss: Option<ScalarOr<LossWire>>,
    pub delay: Option<ScalarOr<DelayWire>>,
    pub reorder: Option<ScalarOr<ReorderWire>>,
    pub duplicate: Option<Scalar>,
    pub corrupt: Option<Scalar>,
    pub rate: Option<ScalarOr<RateWire>>,
    pub inject: Option<ScalarOr<InjectWire>>,
}

/// `loss: { probability: 1% }` or Gilbert-Elliott `loss: { p: 1%, r: 30%, bad: 100%, good: 0% }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWire {
    pub probability: Option<Scalar>,
    pub p: Option<Scalar>,
    pub r: Option<Scalar>,
    pub bad: Option<Scalar>,
    pub good: Option<Scalar>,
}

/// `delay: { time: 100ms, jitter: 20ms, distribution: normal, reorder: false }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayWire {
    pub time: Option<Scalar>,
    pub jitter: Option<Scalar>,
    pub distribution: Option<Scalar>,
    pub reorder: Option<Scalar>,
}

/// `reorder: { probability: 5%, gap: 3, max: 100ms }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReorderWire {
    pub probability: Option<Scalar>,
    pub gap: Option<Scalar>,
    pub max: Option<Scalar>,
}

/// `rate: { bandwidth: 10mbit, queue: 64KiB }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWire {
    pub bandwidth: Option<Scalar>,
    pub queue: Option<Scalar>,
}

/// `inject: { segment: rst, seq: in-window }` or `{ segment: data, bytes: 100, seq: exact }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectWire {
    pub segment: Option<Scalar>,
    pub seq: Option<Scalar>,
    pub bytes: Option<Scalar>,
}

/// The map form of `from:` / `until:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerWire {
    pub at: Option<Scalar>,
    pub after: Option<Scalar>,
    pub started: Option<Scalar>,
    pub state: Option<Scalar>,
    pub packet: Option<PacketFilterWire>,
    pub bytes: Option<Scalar>,
    pub host: Option<Scalar>,
    pub nth: Option<Scalar>,
    pub delay: Option<Scalar>,
}

/// `{ from: client, flags: ".", len: 0 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketFilterWire {
    pub from: Option<Scalar>,
    pub flags: Option<ScalarOr<FlagMaskWire>>,
    pub len: Option<Scalar>,
    pub window: Option<Scalar>,
    pub protocol: Option<Scalar>,
    pub dropped: Option<Scalar>,
}

/// One item of a host's program: a bare action name or a map with one action key.
pub type StepWire = ScalarOr<StepMapWire>;

/// The map form of a step.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepMapWire {
    pub name: Option<Scalar>,
    pub on: Option<Scalar>,
    #[serde(rename = "as")]
    pub as_name: Option<Scalar>,
    pub expect: Option<ScalarOr<StepExpectWire>>,
    #[serde(default, deserialize_with = "present")]
    pub socket: Option<Entries<ScalarOr<LingerWire>>>,
    #[serde(default, deserialize_with = "present")]
    pub setsockopt: Option<Entries<ScalarOr<LingerWire>>>,
    #[serde(default, deserialize_with = "present")]
    pub bind: Option<BindWire>,
    #[serde(default, deserialize_with = "present")]
    pub listen: Option<ListenWire>,
    #[serde(default, deserialize_with = "present")]
    pub accept: Option<AcceptWire>,
    #[serde(default, deserialize_with = "present")]
    pub connect: Option<ConnectWire>,
    #[serde(default, deserialize_with = "present")]
    pub poll: Option<PollWire>,
    #[serde(default, deserialize_with = "present", alias = "write")]
    pub send: Option<SendWire>,
    #[serde(default, deserialize_with = "present", alias = "read")]
    pub recv: Option<RecvWire>,
    #[serde(default, deserialize_with = "present")]
    pub shutdown: Option<Scalar>,
    #[serde(default, deserialize_with = "present")]
    pub close: Option<EmptyWire>,
    #[serde(default, deserialize_with = "present")]
    pub sleep: Option<Scalar>,
    #[serde(default, deserialize_with = "present")]
    pub getsockopt: Option<Scalar>,
    #[serde(default, deserialize_with = "present")]
    pub wait: Option<ScalarOr<WaitWire>>,
    #[serde(default, deserialize_with = "present")]
    pub exec: Option<ExecWire>,
}

/// `SO_LINGER: { on: true, seconds: 0 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LingerWire {
    pub on: Option<Scalar>,
    pub seconds: Option<Scalar>,
}

/// `{}` or nothing: for steps without parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyWire {}

/// `bind: { port, family }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindWire {
    pub port: Option<Scalar>,
    pub family: Option<Scalar>,
}

/// `listen: { port, backlog, family }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenWire {
    pub port: Option<Scalar>,
    pub backlog: Option<Scalar>,
    pub family: Option<Scalar>,
}

/// `accept: { nonblocking }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptWire {
    pub nonblocking: Option<Scalar>,
}

/// `connect: { to, port, nonblocking, family }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectWire {
    pub to: Option<Scalar>,
    pub port: Option<Scalar>,
    pub nonblocking: Option<Scalar>,
    pub family: Option<Scalar>,
}

/// `poll: { events, timeout }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollWire {
    pub events: Option<ScalarList>,
    pub timeout: Option<Scalar>,
}

/// `send: { bytes, repeat, every, until, flags }` (also `write:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendWire {
    pub bytes: Option<Scalar>,
    pub repeat: Option<Scalar>,
    pub every: Option<Scalar>,
    pub until: Option<Scalar>,
    pub flags: Option<ScalarList>,
}

/// `recv: { max, until, nonblocking, flags }` (also `read:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecvWire {
    pub max: Option<Scalar>,
    pub until: Option<Scalar>,
    pub nonblocking: Option<Scalar>,
    pub flags: Option<ScalarList>,
}

/// `wait: { for: client.connect, edge: started }` or `wait: { listening: 7000, host: server }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitWire {
    #[serde(rename = "for")]
    pub target: Option<Scalar>,
    pub edge: Option<Scalar>,
    pub listening: Option<Scalar>,
    pub host: Option<Scalar>,
}

/// `exec: { program, args, env, stdin, timeout, background, stdout, stderr, trace }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecWire {
    pub program: Option<Scalar>,
    pub args: Option<ScalarList>,
    pub env: Option<Entries<Scalar>>,
    pub stdin: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub background: Option<Scalar>,
    pub stdout: Option<ScalarList>,
    pub stderr: Option<ScalarList>,
    pub trace: Option<Scalar>,
}

/// The map form of a step's `expect:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepExpectWire {
    pub result: Option<Scalar>,
    pub events: Option<ScalarList>,
    pub events_include: Option<ScalarList>,
    pub exit: Option<Scalar>,
    pub value: Option<ScalarOr<LingerWire>>,
    pub tcp_info: Option<Entries<ScalarOr<RangeWire>>>,
    pub after: Option<Scalar>,
    pub at: Option<Scalar>,
    pub since: Option<ScalarOr<SinceWire>>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub requires: Option<RequiresWire>,
}

/// The top-level `expect:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunExpectWire {
    pub packets: Option<Vec<PacketExpectWire>>,
    pub states: Option<Vec<StateExpectWire>>,
    pub timers: Option<Vec<TimerExpectWire>>,
    pub queues: Option<Vec<QueueExpectWire>>,
    pub errors: Option<Vec<ErrorExpectWire>>,
    pub counters: Option<Vec<CounterExpectWire>>,
    pub tcp_info: Option<Vec<TcpInfoExpectWire>>,
}

/// One item of `expect: { counters: [...] }`: `{ host: client, counter: TcpExtTCPSackRecovery, min: 1 }`, or
/// several counters summed: `counter: [TcpExtTCPPartialUndo, TcpExtTCPDSACKUndo]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterExpectWire {
    pub host: Option<Scalar>,
    pub counter: Option<ScalarList>,
    pub min: Option<ScalarOr<CounterBoundWire>>,
    pub max: Option<ScalarOr<CounterBoundWire>>,
}

/// A counter's bound counted by the wire: `{ decisions: bitrot }`, how many decisions the impairment made.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterBoundWire {
    pub decisions: Option<Scalar>,
}

/// One item of `expect: { tcp_info: [...] }`: `{ host: client, port: 9000, rtt: { min: 90ms, max: 150ms } }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpInfoExpectWire {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub rtt: Option<RangeWire>,
    pub rto: Option<RangeWire>,
}

/// `{ min: 90ms, max: 150ms }`: either bound may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeWire {
    pub min: Option<Scalar>,
    pub max: Option<Scalar>,
}

/// One item of `expect: { packets: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketExpectWire {
    pub from: Option<Scalar>,
    pub flags: Option<ScalarOr<FlagMaskWire>>,
    pub len: Option<Scalar>,
    pub window: Option<Scalar>,
    pub protocol: Option<Scalar>,
    pub dropped: Option<Scalar>,
    pub count: Option<Scalar>,
    pub at: Option<ScalarList>,
    pub within: Option<ScalarList>,
    pub doubling: Option<Scalar>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub since: Option<ScalarOr<SinceWire>>,
    pub requires: Option<RequiresWire>,
}

/// One item of `expect: { errors: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorExpectWire {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub errno: Option<Scalar>,
    pub call: Option<Scalar>,
    pub count: Option<Scalar>,
    pub at: Option<ScalarList>,
    pub within: Option<ScalarList>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub since: Option<ScalarOr<SinceWire>>,
}

/// One item of `expect: { states: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateExpectWire {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub sequence: Option<Vec<ScalarOr<StateStepWire>>>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub since: Option<ScalarOr<SinceWire>>,
    pub requires: Option<RequiresWire>,
}

/// `{ state: GONE, at: 7s }` in a state sequence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateStepWire {
    pub state: Option<Scalar>,
    pub at: Option<Scalar>,
}

/// One item of `expect: { timers: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerExpectWire {
    pub host: Option<Scalar>,
    pub timer: Option<Scalar>,
    pub retrans: Option<Scalar>,
    pub state: Option<Scalar>,
    pub port: Option<Scalar>,
    pub requires: Option<RequiresWire>,
}

/// `tolerance: { early: 0s, late: 500ms }`: a timing that may deviate by different amounts either way.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToleranceWire {
    pub early: Option<Scalar>,
    pub late: Option<Scalar>,
}

/// The map forms of `since:`: `{ packet: { from: server, window: 0 }, nth: 1 }`, `{ started: client.connect }`
/// or `{ next-retransmission: { from: client, len: 17 } }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinceWire {
    pub packet: Option<PacketFilterWire>,
    pub nth: Option<Scalar>,
    pub started: Option<Scalar>,
    #[serde(rename = "next-retransmission")]
    pub next_retransmission: Option<PacketFilterWire>,
}

/// One item of `expect: { queues: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueExpectWire {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub listener: Option<Scalar>,
    pub queue: Option<Scalar>,
    pub sequence: Option<Vec<ScalarOr<QueueStepWire>>>,
    pub max: Option<Scalar>,
    pub reaches: Option<Scalar>,
    pub tolerance: Option<ScalarOr<ToleranceWire>>,
    pub since: Option<ScalarOr<SinceWire>>,
    pub requires: Option<RequiresWire>,
}

/// `{ value: 1, at: 8s }` in a queue sequence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueStepWire {
    pub value: Option<Scalar>,
    pub at: Option<Scalar>,
}

/// How serde names each wire map type in "expected ..." messages, and what to tell the user instead.
pub const MAP_DESCRIPTIONS: &[(&str, &str)] = &[
    ("ScenarioWire", "a map with keys description, timeout, faults, client, server, ..."),
    ("HostsWire", "a map like { client: { address: 10.0.0.1/24 } }"),
    ("HostWire", "a map like { address: 10.0.0.1/24 }"),
    ("RouterWire", "a map like { nat: masquerade, conntrack: { timeouts: { established: 5s } } }"),
    ("NatWire", "masquerade, or a map like { masquerade: true, forward: [{ port: 8080, to: 9000 }] }"),
    ("PortForwardWire", "a map like { port: 8080, to: 9000 }"),
    ("ConntrackWire", "a map like { loose: false, timeouts: { established: 5s } }"),
    ("LinkWire", "a map like { mtu: 1500, ipv6: false }"),
    ("CaptureWire", "a map like { ring: 64MiB, snaplen: 160B }"),
    ("SysctlWire", "a map like { client: { net.ipv4.tcp_syn_retries: 2 } }"),
    ("FaultWire", "a map like { name: blackhole, at: server, action: drop }"),
    ("MatchWire", "a map like { protocol: tcp, dport: 9000, flags: \"S\" }"),
    ("FlagMaskWire", "a map like { mask: \"SAFR\", value: \"A\" }"),
    ("ActionWire", "a map like { reject: tcp-reset }, { loss: 1% } or { delay: { time: 100ms, jitter: 20ms } }"),
    ("LossWire", "a map like { probability: 1% } or { p: 1%, r: 30% }"),
    ("DelayWire", "a map like { time: 100ms, jitter: 20ms, distribution: normal }"),
    ("ReorderWire", "a map like { probability: 5%, gap: 3 }"),
    ("RateWire", "a map like { bandwidth: 10mbit, queue: 64KiB }"),
    ("InjectWire", "a map like { segment: rst, seq: in-window }"),
    ("TriggerWire", "a map like { after: client.connect, delay: 1s }"),
    ("PacketFilterWire", "a map like { from: client, flags: \".\", len: 0 }"),
    ("StepMapWire", "a map with one action, like { connect: { port: 9000 } }"),
    ("LingerWire", "a map like { on: true, seconds: 0 }"),
    ("EmptyWire", "nothing or {}"),
    ("BindWire", "a map like { port: 9000 }"),
    ("ListenWire", "a map like { port: 9000, backlog: 16 }"),
    ("AcceptWire", "nothing, {} or { nonblocking: true }"),
    ("ConnectWire", "a map like { to: server, port: 9000 }"),
    ("PollWire", "a map like { events: [POLLIN], timeout: 5s }"),
    ("SendWire", "a map like { bytes: 1000, repeat: 3, every: 1s }"),
    ("RecvWire", "a map like { max: 1000 }"),
    ("WaitWire", "a map like { for: client.connect, edge: started }"),
    ("ExecWire", "a map like { program: curl, args: [\"-s\", \"http://10.0.0.2:9000/\"] }"),
    ("StepExpectWire", "a map like { result: ETIMEDOUT, after: 14s }"),
    ("RunExpectWire", "a map with keys packets, states, timers, queues, counters, tcp_info"),
    ("CounterExpectWire", "a map like { host: client, counter: TcpRetransSegs, min: 1 }"),
    ("TcpInfoExpectWire", "a map like { host: client, port: 9000, rtt: { min: 90ms, max: 150ms } }"),
    ("RangeWire", "a map like { min: 90ms, max: 150ms }"),
    ("CounterBoundWire", "a number like 1, or a map like { decisions: bitrot }"),
    ("PacketExpectWire", "a map like { from: client, flags: \"R\", count: 1 }"),
    ("StateExpectWire", "a map like { host: server, sequence: [SYN-RECV, GONE] }"),
    ("StateStepWire", "a map like { state: GONE, at: 7s }"),
    ("QueueExpectWire", "a map like { host: server, listener: true, queue: recv, sequence: [0, 1] }"),
    ("QueueStepWire", "a map like { value: 1, at: 8s }"),
    ("SinceWire", "a step like client.connect, or a map like { packet: { from: server, window: 0 }, nth: 1 } or { started: client.connect }"),
    ("ToleranceWire", "a duration like 250ms, or a map like { early: 0s, late: 500ms }"),
    ("TimerExpectWire", "a map like { host: client, timer: keepalive }"),
    ("RequiresWire", "a map like { kernel: \">= 6.7\", sysctl: { net.ipv4.tcp_rto_max_ms: present } }"),
];

/// What "expected struct X" means in the user's words.
pub fn describe_expected(serde_expected: &str) -> String {
    let name = serde_expected.strip_prefix("struct ").unwrap_or(serde_expected);
    MAP_DESCRIPTIONS
        .iter()
        .find(|(wire, _)| *wire == name)
        .map(|(_, text)| (*text).to_string())
        .unwrap_or_else(|| serde_expected.to_string())
}

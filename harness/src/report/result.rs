//! result.json: a scenario's report as data, a contract for the programs that read it. Its JSON Schema,
//! `result.schema.json` beside this file, is generated from these types: a test fails while the two differ, and
//! `NETFAULT_BLESS=1 cargo test -p netfault --lib result_schema` rewrites it. `format_version` goes up when a
//! field changes meaning or goes away; a field added keeps it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Serialize;

use super::verdict::{Failure, StepJudgement};
use super::Status;
use crate::error::{Context, Error, Result};
use crate::record::{CaptureStats, CapturedInterface, ObserverStats, StateSource, WireStats};
use crate::scenario::plan::{HostId, Plan};
use crate::timeline::{
    query::{StepRecord, UntracedState},
    Decision, Event, Outcome,
};

/// The version of the format this netfault writes. 2: `capture` is one entry per captured interface (listed in
/// `interfaces`), no longer client then server, and `observer` one per host, each naming its host: a scenario
/// may have a router between client and server.
pub const FORMAT_VERSION: u32 = 3;

/// The checked-in JSON Schema of result.json.
pub const SCHEMA: &str = include_str!("result.schema.json");

/// result.json, in one of its three shapes: a scenario that ran, one this kernel cannot run, or one whose
/// scenario process was killed before it finished its report.
///
/// One schema covers them, as a `oneOf` of closed objects told apart by `status` (`pass`, `fail` or `error` in
/// the first, `not-applicable` in the second, `killed` in the third), so a reader needs one rule: read `format_version`, which both carry,
/// then `status`, then the fields that shape promises. Both also say which netfault and which kernel, since a
/// scenario is not applicable to a kernel. The N/A shape is not the ran shape with empty fields: a run's
/// figures (duration, steps, captures, events) would be zeros that look measured, and a reader could not tell
/// "ran and saw nothing" from "did not run". serde writes the variant's fields alone (untagged): `status` is
/// already the tag, and a serde tag would have to repeat the ran shape once for each of its three statuses.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "netfault result.json", transform = any_of_to_one_of)]
pub enum ResultJson<'a> {
    Ran(Box<ResultFile<'a>>),
    NotApplicable(NotApplicableFile<'a>),
    Killed(KilledFile<'a>),
}

impl ResultJson<'_> {
    /// Writes it as `dir/result.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("result.json");
        let json =
            serde_json::to_string_pretty(self).map_err(|e| Error::Internal(format!("encode result.json: {e}")))?;
        fs::write(&path, json).context(|| format!("write {}", path.display()))
    }
}

/// schemars writes an untagged enum as `anyOf`; the shapes exclude each other (`status`, closed objects), and
/// `oneOf` says so to the reader.
fn any_of_to_one_of(schema: &mut schemars::Schema) {
    if let Some(shapes) = schema.remove("anyOf") {
        schema.insert("oneOf".into(), shapes);
    }
}

/// What every result.json opens with, whichever its shape: which format, which netfault, which kernel, which
/// scenario.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heading<'a> {
    /// The version of this format; it goes up when a field changes meaning or goes away.
    pub format_version: u32,
    /// The netfault that ran the scenario, or found it not applicable.
    pub netfault: Build,
    /// The kernel it ran on, or that lacks what it requires.
    pub kernel: Kernel,
    /// The scenario's name: its path under the scenario folder, without `.yaml`.
    pub scenario: &'a str,
    /// The scenario file: an absolute path without symbolic links, whatever ran it.
    pub file: String,
    pub description: &'a str,
    /// Where the scenario comes from (`source:`), if it says.
    pub source: Option<&'a str>,
}

impl<'a> Heading<'a> {
    /// The heading of `plan`'s result.json, written by this netfault on this kernel.
    pub fn of(plan: &'a Plan) -> Heading<'a> {
        Heading::new(&plan.name, &plan.file, &plan.description, plan.source.as_deref())
    }

    /// The heading of a scenario named `scenario`, read from `file`, written by this netfault on this kernel.
    pub fn new(scenario: &'a str, file: &Path, description: &'a str, source: Option<&'a str>) -> Heading<'a> {
        Heading {
            format_version: FORMAT_VERSION,
            netfault: Build::this(),
            kernel: Kernel { release: kernel_release() },
            scenario,
            file: canonical_file(file),
            description,
            source,
        }
    }
}

/// result.json of a scenario that ran: what it did and what the verdict on it is.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultFile<'a> {
    #[serde(flatten)]
    pub heading: Heading<'a>,
    /// `pass`, `fail` or `error`.
    #[schemars(extend("enum" = ["pass", "fail", "error"]))]
    pub status: Status,
    /// t0, the moment the programs started, on the wall clock: the pcaps' timestamps minus t0 are the times
    /// of the timeline. `null` when the programs never started.
    pub t0: Option<WallClock>,
    /// Seconds from t0 to the end of the programs (or to the deadline).
    pub duration: f64,
    /// Milliseconds to set up the namespaces, the wire, the faults, the captures and the observers.
    pub setup_ms: f64,
    /// Whether the two hosts' namespaces and their veth pair were made before the scenario asked (`netfault
    /// run`'s pool of hosts, for a folder or several files): `setup_ms` then leaves out making them, most of
    /// a set-up's kernel work.
    pub hosts_made_ahead: bool,
    /// Milliseconds to tear all of it down.
    pub teardown_ms: f64,
    /// CPU milliseconds the harness's own threads ran at real-time priority, by role (a thread's name up to
    /// its first `-`: `host` program threads, `observe` socket observers, `capture`, `decode` and `pcap`
    /// capture threads, `wire` impairment threads, `main` the hub): what the run took from the kernel's
    /// ordinary threads (`ksoftirqd`) on a busy machine.
    pub realtime_cpu_ms: BTreeMap<String, f64>,
    /// Whether the scenario's deadline ended the run.
    pub deadline_hit: bool,
    /// How many expectations were checked.
    pub checks: usize,
    /// The expectations the run did not meet.
    pub failures: &'a [Failure],
    /// States of traced sockets that only their sock_diag samples showed (the transition tracer recorded no
    /// transition into them): judged at the samples' times, and listed here.
    pub untraced_states: &'a [UntracedState],
    /// Every step of both programs, in order, client first.
    pub steps: Vec<StepReport<'a>>,
    /// Each host's TCP settings in force during the run: every `net.ipv4.tcp_*` sysctl of the kernel,
    /// `net.core.somaxconn` and the scenario's own (the router's forwarding and conntrack ones), as `sysctl`
    /// prints them.
    pub sysctls: PerHost<&'a BTreeMap<String, String>>,
    /// Every captured interface, both ends of each link in link order: client then server on one link, or
    /// client, router, router, server with a router between them.
    pub interfaces: Vec<InterfaceReport<'a>>,
    /// What each capture saw, one per interface in the order of `interfaces`.
    pub capture: &'a [CaptureStats],
    /// The socket observers, one per host in the wire's order (client, router if any, server).
    pub observer: Vec<ObserverReport>,
    /// Where the socket states came from: the kernel's transitions, or samples only (and why).
    pub states: &'a StateSource,
    /// Packets each fault's rule matched (the packets an impairment selected), by fault name.
    pub fault_hits: BTreeMap<&'a str, u64>,
    /// The seed of the impairments' random decisions: `netfault run --seed` with it repeats them.
    pub seed: u64,
    /// Every decision of the impairments, sorted by fault and packet number: plain data for tools (each also
    /// appears in `events` as an `impairment` event with its time and packet, and marks the packets it concerns).
    pub decisions: &'a [Decision],
    /// What the wire did toward the client and toward the server; `null` without impairments.
    pub wire: Option<[WireStats; 2]>,
    /// What went wrong in the harness itself (the status is then `error`).
    pub harness_errors: &'a [String],
    /// Expectations left out on this kernel (their `requires:` is not met), each with its line and why.
    pub not_applicable: &'a [String],
    /// Every event of the run in time order, as timeline.txt shows them.
    pub events: &'a [Event],
}

/// result.json of a scenario this kernel cannot run: its `requires:` is not met, and nothing was run.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotApplicableFile<'a> {
    #[serde(flatten)]
    pub heading: Heading<'a>,
    /// Always `not-applicable`.
    #[schemars(extend("const" = "not-applicable"))]
    pub status: Status,
    /// The requirement not met, with its line and column in the scenario, and what this kernel has instead.
    pub reason: &'a str,
}

/// result.json of a scenario whose process the runner killed before it finished its report (still running past
/// its deadline and grace, or stopped by `--deadline`, SIGINT or SIGTERM). It has no verdict: what it holds is
/// what the scenario process had recorded when it last wrote this file, a few seconds before it was killed
/// (nothing when the runner wrote the file alone).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KilledFile<'a> {
    #[serde(flatten)]
    pub heading: Heading<'a>,
    /// Always `killed`.
    #[schemars(extend("const" = "killed"))]
    pub status: &'static str,
    /// Why the runner killed it, in the runner's words.
    pub reason: String,
    /// What the scenario process was doing when its watchdog wrote this file: `running the programs`,
    /// `stopping the wire`, `stopping the captures`, `closing the namespaces`, ... `judging the run`; `null` when
    /// it recorded nothing: killed before its watchdog wrote (within 12 s past its deadline), or while writing
    /// its own report.
    pub stage: Option<&'a str>,
    /// Seconds since t0 when the scenario process wrote the steps and events below; `null` when it wrote them
    /// before t0 (nothing ran yet) or never.
    pub recorded_at: Option<f64>,
    /// Whether the scenario's deadline had passed when it wrote them.
    pub deadline_hit: bool,
    /// The steps that had started and not ended then (`client step #4 read`).
    pub running_steps: Vec<String>,
    /// Every step that had started then, in order, client first.
    pub steps: Vec<KilledStep<'a>>,
    /// Every event recorded until then, in time order, as the partial timeline.txt shows them; none once the
    /// run was past `waiting for the programs to end` (it had handed them to its own report; the pcaps hold
    /// the packets).
    pub events: &'a [Event],
}

/// A step of a killed run, as far as it got: no verdict is given on a run that did not finish.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KilledStep<'a> {
    pub host: HostId,
    /// The step's place in its host's program, from 0.
    pub index: usize,
    /// The step's `name:`, if it has one.
    pub name: Option<&'a str>,
    /// The step's action: `connect`, `send`, `exec`, ...
    pub action: &'static str,
    /// Seconds since t0 the step started.
    pub start: f64,
    /// Seconds since t0 it ended; `null` if it had not.
    pub end: Option<f64>,
    pub outcome: Option<Outcome>,
    /// More about the outcome: the addresses of a connect, what an exec printed, ...
    pub detail: Option<String>,
}

/// Which netfault wrote the report.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The crate version, e.g. `0.1.0`.
    pub version: &'static str,
    /// The git commit it was built from (`-dirty` with uncommitted changes), `unknown` outside a checkout.
    pub commit: &'static str,
}

impl Build {
    pub fn this() -> Build {
        Build { version: crate::version::VERSION, commit: crate::version::COMMIT }
    }
}

/// The kernel the scenario ran on.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
}

/// A moment on the wall clock.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WallClock {
    /// Nanoseconds since 1970-01-01 00:00 UTC (the pcaps' clock).
    pub unix_ns: u64,
    /// The same in RFC 3339, UTC: `2026-12-04T21:50:13.123456789Z`.
    pub utc: String,
}

impl WallClock {
    pub fn of(time: SystemTime) -> WallClock {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        WallClock {
            unix_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
            utc: rfc3339(since_epoch.as_secs(), since_epoch.subsec_nanos()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for a time since the epoch (the proleptic Gregorian calendar).
fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Civil date from days since 1970-01-01, in 400-year eras that start on March 1st.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// One value for each host.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerHost<T> {
    pub client: T,
    pub server: T,
    /// Only in a scenario with a router.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<T>,
}

impl<'a, T> PerHost<&'a T> {
    /// The values of a run's hosts; `empty` for client or server where the run recorded none (a harness error
    /// says why).
    pub fn of(values: &'a [(HostId, T)], empty: &'a T) -> PerHost<&'a T> {
        let of = |id: HostId| values.iter().find(|(host, _)| *host == id).map(|(_, value)| value);
        PerHost {
            client: of(HostId::Client).unwrap_or(empty),
            server: of(HostId::Server).unwrap_or(empty),
            router: of(HostId::Router),
        }
    }
}

/// One captured interface: a host's end of a link and the pcap its capture wrote into the report folder.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceReport<'a> {
    /// The link it is an end of, from 0 in the wire's order (client to server); each link has two ends.
    pub link: usize,
    pub host: HostId,
    /// Its name inside the host's namespace (`ip link show`); capture.pcapng names it `<host>/<ifname>`.
    pub ifname: &'a str,
    /// `02:00:00:00:00:01`.
    #[schemars(regex(pattern = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$"))]
    pub mac: String,
    pub address: std::net::Ipv4Addr,
    /// Its IPv6 address (`fd00::1`), when the link has IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address6: Option<std::net::Ipv6Addr>,
    /// The pcap's file name in the report folder.
    pub pcap: &'a str,
    /// The longest part of a frame the capture kept.
    pub snaplen: u32,
}

impl<'a> From<&'a CapturedInterface> for InterfaceReport<'a> {
    fn from(interface: &'a CapturedInterface) -> InterfaceReport<'a> {
        InterfaceReport {
            link: interface.link,
            host: interface.host,
            ifname: &interface.ifname,
            mac: interface.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            address: interface.address,
            address6: interface.address6,
            pcap: &interface.pcap,
            snaplen: interface.snaplen,
        }
    }
}

/// One step of a host's program: what it did and what was expected of it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepReport<'a> {
    pub host: HostId,
    /// The step's place in its host's program, from 0.
    pub index: usize,
    /// The step's `name:`, if it has one.
    pub name: Option<&'a str>,
    /// The step's action: `connect`, `send`, `exec`, ...
    pub action: &'static str,
    /// Seconds since t0 the step started; `null` if it never did.
    pub start: Option<f64>,
    /// Seconds since t0 it ended; `null` if it never did.
    pub end: Option<f64>,
    pub outcome: Option<Outcome>,
    /// More about the outcome: the addresses of a connect, what an exec printed, ...
    pub detail: Option<String>,
    /// The output patterns of an exec step that its output did not match.
    pub unmatched: Vec<String>,
    /// The expectation, as a sentence; `null` for a step that expects nothing.
    pub expected: Option<String>,
    pub verdict: StepJudgement,
}

impl<'a> StepReport<'a> {
    pub fn new(
        record: StepRecord,
        name: Option<&'a str>,
        action: &'static str,
        expected: Option<String>,
        verdict: StepJudgement,
    ) -> StepReport<'a> {
        StepReport {
            host: record.host,
            index: record.index,
            name,
            action,
            start: record.start.map(|t| t.as_secs_f64()),
            end: record.end.map(|t| t.as_secs_f64()),
            outcome: record.outcome,
            detail: record.detail,
            unmatched: record.unmatched,
            expected,
            verdict,
        }
    }
}

/// What one socket observer did.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObserverReport {
    /// The host whose sockets it watched.
    pub host: HostId,
    /// sock_diag dumps taken.
    pub samples: u64,
    /// Their mean duration, in microseconds.
    pub mean_dump_us: f64,
    /// The longest, in microseconds.
    pub max_dump_us: f64,
    /// Samples asked for at once (a step's end, a SYN, FIN or RST) and taken more than 50 ms later: the
    /// observer's thread waited that long for a CPU.
    pub late_answers: u64,
    /// The longest wait of a sample asked for at once, in microseconds.
    pub max_answer_delay_us: f64,
    /// When that sample was asked for, in seconds since t0.
    pub max_answer_delay_asked_at: f64,
}

impl ObserverReport {
    pub fn of(host: HostId, stats: ObserverStats) -> ObserverReport {
        ObserverReport {
            host,
            samples: stats.samples,
            mean_dump_us: stats.mean_dump_time.as_secs_f64() * 1e6,
            max_dump_us: stats.max_dump_time.as_secs_f64() * 1e6,
            late_answers: stats.late_answers,
            max_answer_delay_us: stats.max_answer_delay.as_secs_f64() * 1e6,
            max_answer_delay_asked_at: stats.max_answer_delay_asked_at.as_secs_f64(),
        }
    }
}

/// `uname -r`; what reading it said if it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|e| format!("unknown (/proc/sys/kernel/osrelease: {e})"))
}

/// The scenario file in the one form result.json gives: absolute, without symbolic links.
pub fn canonical_file(file: &Path) -> String {
    let absolute = std::fs::canonicalize(file)
        .or_else(|_| std::env::current_dir().map(|dir| dir.join(file)))
        .unwrap_or_else(|_| file.to_path_buf());
    absolute.to_string_lossy().into_owned()
}

/// The JSON Schema the types above give, as `result.schema.json` holds it.
pub fn schema_text() -> String {
    // Of what netfault writes: a field it leaves out when empty is optional.
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<ResultJson<'static>>();
    // A schema is plain data: encoding it cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::record::TracerStats;
    use crate::scenario::impairment::{InjectedSegment, InjectedSeq};
    use crate::scenario::plan::{Location, TcpState, TimerKind};
    use crate::timeline::{
        DecisionKind, DroppedBy, ErrnoEvent, EventKind, ImpairmentEvent, PacketEvent, PacketKey, SocketEvent,
        TransitionEvent,
    };

    #[test]
    fn result_schema_checked_in_is_the_one_the_types_give() {
        let generated = schema_text();
        if std::env::var_os("NETFAULT_BLESS").is_some() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/result.schema.json");
            std::fs::write(&path, &generated).unwrap();
        }
        assert!(
            SCHEMA == generated,
            "src/report/result.schema.json is not what the types in report/result.rs give; if the change is \
             meant, rewrite it with NETFAULT_BLESS=1 cargo test -p netfault --lib result_schema (and raise \
             FORMAT_VERSION if a field changed meaning or went away)"
        );
    }

    fn at(secs: f64, host: HostId, kind: EventKind) -> Event {
        Event { t: Duration::from_secs_f64(secs), host, kind }
    }

    fn packet(fault: Option<&str>) -> PacketEvent {
        PacketEvent {
            ip_id: 7,
            ack: 1,
            window: 64240,
            options: "mss 1460".into(),
            fault: fault.map(String::from),
            ..PacketEvent::test_segment(0x12, 0)
        }
    }

    fn socket(timer: Option<TimerKind>, expires: Option<Duration>) -> SocketEvent {
        SocketEvent {
            socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
            local_port: 40000,
            remote_port: 9000,
            state: TcpState::Established,
            timer,
            expires,
            retrans: 1,
            recv_q: 0,
            send_q: 11,
            rtt: Some(Duration::from_micros(10_250)),
            rto: expires.map(|_| Duration::from_millis(204)),
        }
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&serde_json::from_str(SCHEMA).unwrap()).unwrap()
    }

    /// Every kind of event, outcome and step verdict, as a run can write them, against the checked-in schema.
    #[test]
    fn results_of_every_shape_validate_and_broken_ones_do_not() {
        let outcomes = [
            Outcome::Ok,
            Outcome::Bytes(11),
            Outcome::Eof,
            Outcome::Error("ETIMEDOUT".into()),
            Outcome::Events(vec!["POLLIN".into(), "POLLHUP".into()]),
            Outcome::Timeout,
            Outcome::Exit { code: Some(0), signal: None },
            Outcome::Exit { code: None, signal: Some(9) },
            Outcome::Unfinished,
            Outcome::Value("{on,3}".into()),
        ];
        let mut events = vec![
            at(0.0, HostId::Server, EventKind::FaultOn { fault: "blackhole".into() }),
            at(0.1, HostId::Client, EventKind::StepStart { step: 0, label: "#1 connect".into() }),
            at(0.2, HostId::Client, EventKind::Packet(packet(None))),
            at(0.3, HostId::Server, EventKind::Packet(packet(Some("blackhole")))),
            at(0.3, HostId::Client, EventKind::Packet(PacketEvent { dropped: Some(DroppedBy::Qdisc), ..packet(None) })),
            at(
                0.35,
                HostId::Client,
                EventKind::Transition(TransitionEvent {
                    socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
                    local_port: 40000,
                    remote_port: 9000,
                    from: TcpState::SynSent,
                    to: TcpState::Established,
                }),
            ),
            at(0.4, HostId::Client, EventKind::Socket(socket(None, None))),
            at(
                0.5,
                HostId::Client,
                EventKind::Socket(socket(Some(TimerKind::Keepalive), Some(Duration::from_millis(2992)))),
            ),
            at(0.6, HostId::Server, EventKind::FaultOff { fault: "blackhole".into() }),
            at(9.0, HostId::Client, EventKind::Deadline { step: Some("client #2 recv".into()) }),
            at(9.0, HostId::Client, EventKind::Deadline { step: None }),
            at(
                2.0,
                HostId::Client,
                EventKind::Errno(ErrnoEvent {
                    step: 0,
                    pid: 7,
                    call: "connect".into(),
                    errno: "ECONNREFUSED".into(),
                    socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
                    local_port: 40000,
                    remote_port: 9000,
                    took: Duration::from_micros(250),
                }),
            ),
        ];
        let decision_kinds = [
            DecisionKind::Lost,
            DecisionKind::Corrupted { byte: 13, bit: 2 },
            DecisionKind::Duplicated,
            DecisionKind::Delayed { by: Duration::from_micros(102_117) },
            DecisionKind::Reordered { gap: 3 },
            DecisionKind::QueueFull,
            DecisionKind::Injected { segment: InjectedSegment::Rst, seq: InjectedSeq::InWindow },
            DecisionKind::Injected { segment: InjectedSegment::Data { bytes: 10 }, seq: InjectedSeq::OutOfWindow },
        ];
        let decisions: Vec<Decision> = decision_kinds
            .into_iter()
            .enumerate()
            .map(|(n, kind)| {
                // Every kind of packet key: a TCP segment with and without an acknowledgement, a datagram, a
                // forged segment.
                let key = match n % 4 {
                    0 | 1 => PacketKey::Tcp {
                        connection: 1,
                        from: HostId::Client,
                        block: n as u32,
                        ack: (n % 4 == 1).then_some(1),
                        len: if n % 4 == 1 { 0 } else { 1448 },
                        flags: 0x10,
                        occurrence: 1,
                    },
                    2 => PacketKey::Datagram { from: HostId::Client, protocol: 17, digest: 0xabcdef, occurrence: 2 },
                    _ => PacketKey::Forged { number: 1 },
                };
                Decision { fault: "lossy".into(), key, kind }
            })
            .collect();
        for (i, decision) in decisions.iter().enumerate() {
            let n = i as u64 + 1;
            let mut marked = packet(None);
            marked.impairments = vec![format!("{} #{n}: {}", decision.fault, decision.kind)];
            // A forged segment's packet may not be in the captures.
            let packet = (i % 2 == 0).then_some(marked);
            let impairment = ImpairmentEvent { toward: HostId::Server, n, decision: decision.clone(), packet };
            events.push(at(0.7, HostId::Server, EventKind::Impairment(impairment)));
        }
        let counters = BTreeMap::from([("TcpExtTCPDSACKRecv".to_string(), 4), ("TcpRetransSegs".to_string(), 17)]);
        events.push(at(9.0, HostId::Client, EventKind::Counters { counters }));
        for (step, outcome) in outcomes.iter().enumerate() {
            // Left out of the event when empty.
            let unmatched = if step % 2 == 0 { vec!["^HTTP/1.1 200".to_string()] } else { Vec::new() };
            let kind =
                EventKind::StepEnd { step, label: "#1".into(), outcome: outcome.clone(), detail: None, unmatched };
            events.push(at(1.0, HostId::Client, kind));
        }
        let steps = outcomes
            .iter()
            .zip([StepJudgement::Recorded, StepJudgement::Pass, StepJudgement::Fail].into_iter().cycle())
            .enumerate()
            .map(|(index, (outcome, verdict))| {
                let record = StepRecord {
                    host: HostId::Client,
                    index,
                    start: Some(Duration::from_millis(100)),
                    end: (index % 2 == 0).then(|| Duration::from_millis(200)),
                    outcome: Some(outcome.clone()),
                    detail: Some("0.0.0.0:40000 -> 10.0.0.2:9000".into()),
                    unmatched: Vec::new(),
                };
                StepReport::new(record, Some("connect"), "connect", Some("ETIMEDOUT".into()), verdict)
            })
            .collect();
        let failures = [Failure {
            location: Location { line: 17, column: 13 },
            subject: "client step #1 connect".into(),
            expected: "ETIMEDOUT".into(),
            actual: "ECONNREFUSED".into(),
            around: None,
        }];
        let untraced = [UntracedState {
            host: HostId::Client,
            socket: "10.0.0.1:40000 -> 10.0.0.2:9000".into(),
            state: TcpState::FinWait2,
            sampled_at: Duration::from_millis(2261),
            traced: TcpState::FinWait1,
            traced_since: Duration::from_millis(3),
        }];
        let sysctls = BTreeMap::from([("net.ipv4.tcp_rmem".to_string(), "4096 131072 6291456".to_string())]);
        let stats = CaptureStats { packets: 3, bytes: 180, kernel_drops: 0, interface_frames: 3 };
        let errors = ["client program panicked: deliberate".to_string()];
        let left_out = ["line 9: client step #1's expectation left out: needs kernel >= 6.15".to_string()];
        let observer = |host| ObserverReport {
            host,
            samples: 10,
            mean_dump_us: 40.5,
            max_dump_us: 90.0,
            late_answers: 0,
            max_answer_delay_us: 120.0,
            max_answer_delay_asked_at: 0.25,
        };
        // A router between client and server: two links, four captured interfaces, three hosts.
        let captured: Vec<CapturedInterface> =
            [(0, HostId::Client), (0, HostId::Router), (1, HostId::Router), (1, HostId::Server)]
                .into_iter()
                .enumerate()
                .map(|(n, (link, host))| CapturedInterface {
                    link,
                    host,
                    ifname: format!("nf{link}"),
                    mac: [2, 0, 0, 0, link as u8, n as u8],
                    address: Ipv4Addr::new(10, 0, link as u8, n as u8 + 1),
                    address6: None,
                    pcap: format!("{host}-nf{link}.pcap"),
                    snaplen: 262_144,
                })
                .collect();
        let heading = |release: String| Heading {
            format_version: FORMAT_VERSION,
            netfault: Build::this(),
            kernel: Kernel { release },
            scenario: "keepalive/idle",
            file: canonical_file(Path::new("scenarios/keepalive/idle.yaml")),
            description: "d",
            source: Some("seed 000"),
        };
        let result = ResultFile {
            heading: heading(kernel_release()),
            status: Status::Error,
            t0: Some(WallClock::of(SystemTime::now())),
            duration: 9.0,
            setup_ms: 3.4,
            hosts_made_ahead: false,
            teardown_ms: 0.8,
            realtime_cpu_ms: BTreeMap::from([("host".to_string(), 1.5), ("observe".to_string(), 0.25)]),
            deadline_hit: true,
            checks: 12,
            failures: &failures,
            untraced_states: &untraced,
            steps,
            sysctls: PerHost { client: &sysctls, server: &sysctls, router: Some(&sysctls) },
            interfaces: captured.iter().map(InterfaceReport::from).collect(),
            capture: &[stats, stats, stats, stats],
            observer: [HostId::Client, HostId::Router, HostId::Server].map(observer).into(),
            states: &StateSource::Traced(TracerStats {
                transitions: 4,
                dropped_packets: 1,
                drops_untraced: None,
                lost: 0,
                skipped_runs: 0,
                drop_skipped_runs: 3,
                median_latency_us: 900.0,
                max_latency_us: 1500.0,
            }),
            fault_hits: BTreeMap::from([("blackhole", 3), ("lossy", 8)]),
            seed: 42,
            decisions: &decisions,
            wire: Some([WireStats { frames_in: 10, frames_out: 9, dropped: 1, ..WireStats::default() }; 2]),
            harness_errors: &errors,
            not_applicable: &left_out,
            events: &events,
        };
        let value = serde_json::to_value(ResultJson::Ran(Box::new(result))).unwrap();
        let validator = validator();
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let mut never_started = value.clone();
        never_started["t0"] = serde_json::Value::Null;
        never_started["source"] = serde_json::Value::Null;
        never_started["wire"] = serde_json::Value::Null;
        assert!(validator.is_valid(&never_started));
        assert_eq!(value["untraced_states"][0]["state"], "FIN-WAIT2");
        assert_eq!(value["untraced_states"][0]["sampled_at"], 2.261);
        let mut untraced_unknown = value.clone();
        untraced_unknown["untraced_states"][0]["state"] = "HALF-OPEN".into();
        assert!(!validator.is_valid(&untraced_unknown), "an untraced state is a TCP state");
        assert_eq!(value["interfaces"][1]["mac"], "02:00:00:00:00:01");
        assert_eq!(value["interfaces"][2]["address"], "10.0.1.3");
        let mut two_hosts = value.clone();
        drop(two_hosts["sysctls"].as_object_mut().unwrap().remove("router"));
        assert!(validator.is_valid(&two_hosts), "a scenario without a router has no router sysctls");
        let mut sampled = value.clone();
        sampled["states"] = serde_json::to_value(StateSource::Sampled { reason: "rootless".into() }).unwrap();
        assert!(validator.is_valid(&sampled), "{sampled}");
        let not_applicable = serde_json::to_value(ResultJson::NotApplicable(NotApplicableFile {
            heading: Heading { source: None, ..heading("6.8.0-1017-azure".into()) },
            status: Status::NotApplicable,
            reason: "4:1: needs kernel >= 6.15; this is 6.8.0-1017-azure",
        }))
        .unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&not_applicable).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let killed = serde_json::to_value(ResultJson::Killed(KilledFile {
            heading: heading("6.1.0-57-cloud-amd64".into()),
            status: "killed",
            reason: "scenario still running 22s after its programs started (deadline 2s + 20s grace): killed".into(),
            stage: Some("stopping the captures"),
            recorded_at: Some(14.02),
            deadline_hit: true,
            running_steps: vec!["client step block (read)".into()],
            steps: vec![
                KilledStep {
                    host: HostId::Client,
                    index: 0,
                    name: None,
                    action: "connect",
                    start: 0.0,
                    end: Some(0.001),
                    outcome: Some(Outcome::Ok),
                    detail: Some("10.0.0.1:40000 -> 10.0.0.2:9000".into()),
                },
                KilledStep {
                    host: HostId::Client,
                    index: 1,
                    name: Some("block"),
                    action: "read",
                    start: 0.001,
                    end: None,
                    outcome: None,
                    detail: None,
                },
            ],
            events: &events,
        }))
        .unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&killed).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let mut unrecorded = killed.clone();
        unrecorded["stage"] = serde_json::Value::Null;
        unrecorded["recorded_at"] = serde_json::Value::Null;
        unrecorded["steps"] = serde_json::json!([]);
        unrecorded["events"] = serde_json::json!([]);
        assert!(validator.is_valid(&unrecorded), "what the runner writes alone: {unrecorded}");

        // The schema says no to what a reader could not rely on.
        type Damage = fn(&mut serde_json::Value);
        let broken_runs: [(&str, Damage); 13] = [
            ("no interfaces", |v| drop(v.as_object_mut().unwrap().remove("interfaces"))),
            ("an interface without its link", |v| drop(v["interfaces"][0].as_object_mut().unwrap().remove("link"))),
            ("a MAC address not as ip link prints it", |v| v["interfaces"][0]["mac"] = "02-00-00-00-00-01".into()),
            ("an observer without its host", |v| drop(v["observer"][0].as_object_mut().unwrap().remove("host"))),
            ("no format_version", |v| drop(v.as_object_mut().unwrap().remove("format_version"))),
            ("a field the contract does not have", |v| v["surprise"] = 1.into()),
            ("a status not pass/fail/error", |v| v["status"] = "skipped".into()),
            ("a run that says it was not applicable", |v| v["status"] = "not-applicable".into()),
            ("an event of no known kind", |v| v["events"][0]["event"] = "teleport".into()),
            ("a negative packet count", |v| v["capture"][0]["packets"] = (-1).into()),
            ("no seed", |v| drop(v.as_object_mut().unwrap().remove("seed"))),
            ("a decision of no known kind", |v| v["decisions"][0]["decision"] = "teleported".into()),
            ("a delay that is not a number", |v| v["decisions"][3]["by"] = "102ms".into()),
        ];
        let broken_not_applicable: [(&str, Damage); 5] = [
            ("no format_version", |v| drop(v.as_object_mut().unwrap().remove("format_version"))),
            ("no reason", |v| drop(v.as_object_mut().unwrap().remove("reason"))),
            ("no kernel", |v| drop(v.as_object_mut().unwrap().remove("kernel"))),
            ("a status other than not-applicable", |v| v["status"] = "pass".into()),
            ("figures of a run that did not happen", |v| v["events"] = serde_json::json!([])),
        ];
        let broken_killed: [(&str, Damage); 5] = [
            ("no reason", |v| drop(v.as_object_mut().unwrap().remove("reason"))),
            ("a verdict on a run that did not finish", |v| v["steps"][0]["verdict"] = "pass".into()),
            ("a status other than killed", |v| v["status"] = "error".into()),
            ("failures of a run that was not judged", |v| v["failures"] = serde_json::json!([])),
            ("a step that never started", |v| v["steps"][1]["start"] = serde_json::Value::Null),
        ];
        for (shape, original, broken) in [
            ("a run", &never_started, &broken_runs[..]),
            ("N/A", &not_applicable, &broken_not_applicable[..]),
            ("killed", &killed, &broken_killed[..]),
        ] {
            for (what, damage) in broken {
                let mut copy = original.clone();
                damage(&mut copy);
                assert!(!validator.is_valid(&copy), "{shape}: {what} passed the schema");
            }
        }
    }

    #[test]
    fn wall_clock_times_read_as_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        // A leap day of a year divisible by 400, and the day after it; 2100 is not a leap year.
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(951_868_799, 999_999_999), "2000-02-29T23:59:59.999999999Z");
        assert_eq!(rfc3339(951_868_800, 0), "2000-03-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_796_421_013, 123_456_789), "2026-12-04T21:50:13.123456789Z");
        assert_eq!(rfc3339(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        let t0 = WallClock::of(UNIX_EPOCH + std::time::Duration::new(1_796_421_013, 1));
        assert_eq!(t0, WallClock { unix_ns: 1_796_421_013_000_000_001, utc: "2026-12-04T21:50:13.000000001Z".into() });
    }
}

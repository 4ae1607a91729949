//! Reports: what a run leaves under `reports/<scenario>/` (report.html, capture.pcapng, result.json,
//! timeline.txt, scenario.yaml, environment.txt, next to the capture's client.pcap and server.pcap; a killed
//! run's partial result.json and timeline.txt, and killed.txt), and the verdict they state.

pub mod agreement;
pub mod browser;
pub mod bundle;
pub mod files;
pub mod ladder;
mod pcapng;
pub mod result;
pub mod verdict;
pub mod wire;

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::record::{CapturedInterface, RunRecord};
use crate::scenario::plan::{Direction, FaultAction, Plan};
use crate::scenario::{printable, printable_path};
use crate::timeline::query::{StepRecord, StepRecords};
use crate::timeline::{format_secs, EventKind, PacketDirection, Timeline};
use ladder::Ladder;
use pcapng::Section;
use result::{
    kernel_release, Heading, InterfaceReport, KilledFile, KilledStep, NotApplicableFile, ObserverReport, PerHost,
    ResultFile, ResultJson, StepReport, WallClock,
};
use verdict::{describe_expectation, Failure, Verdict};
use wire::{End, FaultNote, Link, Wire};

/// The folder of a scenario's report: `root/<name>`, refusing any name that could leave `root`.
pub fn report_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    let confined = !name.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
    if !confined {
        return Err(Error::Internal(format!(
            "scenario name {name:?} cannot be a report folder: it must be a relative path without `..`"
        )));
    }
    Ok(root.join(relative))
}

/// Verdict of one scenario, as the parent process and the test runner see it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// The kernel behaved otherwise than expected.
    Fail,
    /// The harness could not run the scenario to a verdict.
    Error,
    /// The running kernel lacks what the scenario's `requires:` names: nothing was run.
    #[serde(rename = "not-applicable")]
    NotApplicable,
}

impl Status {
    /// How `netfault run` prints it, five characters wide.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS ",
            Status::Fail => "FAIL ",
            Status::Error => "ERROR",
            Status::NotApplicable => "N/A  ",
        }
    }
}

/// The one-line summary a child prints last on stdout, and the parent reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub status: Status,
    /// Seconds from t0 to the end of the programs.
    pub duration: f64,
    pub setup_ms: f64,
    pub teardown_ms: f64,
    pub report: PathBuf,
    /// Human-readable failures, each with the timeline lines around it.
    pub messages: Vec<String>,
}

impl Summary {
    /// A scenario whose `requires:` this kernel does not meet; `reason` says which and why.
    pub fn not_applicable(name: String, report: &Path, reason: String) -> Summary {
        Summary {
            name,
            status: Status::NotApplicable,
            duration: 0.0,
            setup_ms: 0.0,
            teardown_ms: 0.0,
            report: report.to_path_buf(),
            messages: vec![reason],
        }
    }

    /// A scenario the harness could not run to a verdict.
    pub fn harness_error(name: String, report: &Path, message: String) -> Summary {
        Summary {
            name,
            status: Status::Error,
            duration: 0.0,
            setup_ms: 0.0,
            teardown_ms: 0.0,
            report: report.to_path_buf(),
            messages: vec![message],
        }
    }
}

/// Writes result.json for a scenario this kernel cannot run (`reason` says which requirement and why) into
/// `dir`; returns its summary. Nothing else is written: nothing ran.
pub fn write_not_applicable(plan: &Plan, reason: String, dir: &Path) -> Result<Summary> {
    let result = NotApplicableFile { heading: Heading::of(plan), status: Status::NotApplicable, reason: &reason };
    ResultJson::NotApplicable(result).write(dir)?;
    Ok(Summary::not_applicable(plan.name.clone(), dir, reason))
}

/// What a scenario process had recorded when it wrote its report ahead of being killed ([`write_killed`]).
pub struct Recorded<'a> {
    /// What it was doing then: `running the programs`, `stopping the captures`, ...
    pub stage: &'a str,
    /// Time since t0 then; `None` before the programs started.
    pub at: Option<std::time::Duration>,
    pub deadline_hit: bool,
    /// The events recorded until then, annotated as a finished run's are.
    pub timeline: &'a Timeline,
}

/// The reason a killed run's report gives until the runner that kills it writes its own ([`set_killed_reason`]).
pub const KILLED_REASON_UNSAID: &str = "killed before it finished its report (the runner did not say why)";

/// The line of a killed run's timeline.txt that says why; [`set_killed_reason`] rewrites it.
const KILLED_LINE: &str = "# KILLED ";

/// Writes result.json (the killed shape: no verdict) and timeline.txt of a run that may not finish, from what it
/// has recorded, into `dir`, next to the pcaps its captures are writing. The reason is left to the runner.
pub fn write_killed(plan: &Plan, recorded: &Recorded, dir: &Path) -> Result<()> {
    let records = StepRecords::of(plan, recorded.timeline);
    let mut steps = Vec::new();
    let mut running_steps = Vec::new();
    for host in crate::scenario::plan::HostId::ALL {
        for step in &plan.host(host).steps {
            let Some(record) = records.get(host, step.index) else { continue };
            let Some(start) = record.start else { continue };
            if record.end.is_none() {
                running_steps.push(format!("{host} step {}", step.label()));
            }
            steps.push(KilledStep {
                host,
                index: step.index,
                name: step.name.as_deref(),
                action: step.action.kind(),
                start: start.as_secs_f64(),
                end: record.end.map(|t| t.as_secs_f64()),
                outcome: record.outcome.clone(),
                detail: record.detail.clone(),
            });
        }
    }
    let result = KilledFile {
        heading: Heading::of(plan),
        status: "killed",
        reason: KILLED_REASON_UNSAID.to_string(),
        stage: Some(recorded.stage),
        recorded_at: recorded.at.map(|t| t.as_secs_f64()),
        deadline_hit: recorded.deadline_hit,
        running_steps: running_steps.clone(),
        steps,
        events: &recorded.timeline.events,
    };
    ResultJson::Killed(result).write(dir)?;
    let mut text = killed_timeline_heading(&plan.name, &plan.file, &plan.description, KILLED_REASON_UNSAID);
    let stage = recorded.stage;
    match recorded.at {
        Some(t) => {
            let deadline = if recorded.deadline_hit { "past the deadline" } else { "before the deadline" };
            text.push_str(&format!(
                "# no verdict: a partial report, written at {}s ({deadline}) while the scenario process was {stage}\n",
                format_secs(t)
            ));
        }
        None => text.push_str(&format!(
            "# no verdict: a partial report, written before the programs started, while the scenario process was \
             {stage}\n"
        )),
    }
    for step in &running_steps {
        text.push_str(&format!("# RUNNING {step}\n"));
    }
    text.push_str("#\n#    time(s) host   what\n");
    text.push_str(&readable(recorded.timeline).to_string());
    write_killed_timeline(dir, text)
}

/// The first lines of a killed run's timeline.txt: the scenario, its description and why it was killed.
fn killed_timeline_heading(name: &str, file: &Path, description: &str, reason: &str) -> String {
    let mut text = format!("# {} ({})\n", printable(name), printable_path(file));
    for line in description.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!("{KILLED_LINE}{}\n", printable(reason).replace('\n', " ")));
    text
}

fn write_killed_timeline(dir: &Path, text: String) -> Result<()> {
    fs::write(dir.join("timeline.txt"), text).context(|| format!("write {}", dir.join("timeline.txt").display()))
}

/// Writes result.json (the killed shape, with nothing recorded) and timeline.txt of a scenario whose process was
/// killed before it wrote them into `dir`: `heading` and `file` say which scenario, `reason` why it was killed.
pub fn write_killed_unrecorded(heading: Heading, file: &Path, reason: &str, dir: &Path) -> Result<()> {
    let mut text = killed_timeline_heading(heading.scenario, file, heading.description, reason);
    text.push_str(
        "# no verdict: the scenario process was killed before it recorded anything\n#\n#    time(s) host   what\n",
    );
    let result = KilledFile {
        heading,
        status: "killed",
        reason: reason.to_string(),
        stage: None,
        recorded_at: None,
        deadline_hit: false,
        running_steps: Vec::new(),
        steps: Vec::new(),
        events: &[],
    };
    ResultJson::Killed(result).write(dir)?;
    write_killed_timeline(dir, text)
}

/// Gives the killed run's report in `dir` (written by [`write_killed`]) the runner's `reason`: in result.json's
/// `reason` and in timeline.txt's `# KILLED` line. Says whether `dir` holds a readable result.json; a finished
/// run's (another status) is left as it is.
pub fn set_killed_reason(dir: &Path, reason: &str) -> Result<bool> {
    let path = dir.join("result.json");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::sys(format!("read {}", path.display()), e)),
    };
    // Written by a process that may have been killed in the middle of it: unreadable is the same as absent.
    let Ok(mut result) = serde_json::from_str::<serde_json::Value>(&text) else { return Ok(false) };
    if result["status"] != "killed" {
        return Ok(true);
    }
    result["reason"] = serde_json::Value::String(reason.to_string());
    let json =
        serde_json::to_string_pretty(&result).map_err(|e| Error::Internal(format!("encode result.json: {e}")))?;
    fs::write(&path, json).context(|| format!("write {}", path.display()))?;
    let timeline = dir.join("timeline.txt");
    if let Ok(text) = fs::read_to_string(&timeline) {
        let said = format!("{KILLED_LINE}{}", printable(reason).replace('\n', " "));
        let lines: Vec<&str> =
            text.lines().map(|line| if line.starts_with(KILLED_LINE) { said.as_str() } else { line }).collect();
        fs::write(&timeline, lines.join("\n") + "\n").context(|| format!("write {}", timeline.display()))?;
    }
    Ok(true)
}

/// Writes result.json, timeline.txt, capture.pcapng, report.html, scenario.yaml and environment.txt into `dir`,
/// next to the pcaps; returns the summary.
pub fn write(plan: &Plan, record: &RunRecord, verdict: &Verdict, dir: &Path) -> Result<Summary> {
    let status = status_of(record, verdict);
    let records = StepRecords::of(plan, &record.timeline);
    let steps = verdict
        .steps
        .iter()
        .map(|judged| {
            let step = &plan.host(judged.host).steps[judged.index];
            StepReport::new(
                records
                    .get(judged.host, judged.index)
                    .cloned()
                    .unwrap_or_else(|| StepRecord::empty(judged.host, judged.index)),
                step.name.as_deref(),
                step.action.kind(),
                step.expect.is_set().then(|| describe_expectation(&step.expect)),
                judged.judgement,
            )
        })
        .collect();
    let no_sysctls = std::collections::BTreeMap::new();
    let result = ResultFile {
        heading: Heading::of(plan),
        status,
        t0: record.t0_wall.map(WallClock::of),
        duration: record.duration.as_secs_f64(),
        setup_ms: record.setup.as_secs_f64() * 1e3,
        hosts_made_ahead: record.hosts_made_ahead,
        teardown_ms: record.teardown.as_secs_f64() * 1e3,
        realtime_cpu_ms: record
            .realtime_cpu
            .iter()
            .map(|(role, cpu)| (role.clone(), cpu.as_secs_f64() * 1e3))
            .collect(),
        deadline_hit: record.deadline_hit,
        checks: verdict.checks,
        failures: &verdict.failures,
        untraced_states: &verdict.untraced,
        steps,
        sysctls: PerHost::of(&record.sysctls, &no_sysctls),
        interfaces: record.interfaces.iter().map(InterfaceReport::from).collect(),
        capture: &record.capture,
        observer: record.observer.iter().map(|&(host, stats)| ObserverReport::of(host, stats)).collect(),
        states: &record.states,
        fault_hits: record.fault_hits.iter().map(|(fault, hits)| (fault.as_str(), *hits)).collect(),
        seed: record.seed,
        decisions: &record.decisions,
        wire: record.wire,
        harness_errors: &record.harness_errors,
        not_applicable: &plan.not_applicable,
        events: &record.timeline.events,
    };
    fs::write(dir.join("timeline.txt"), render_timeline(plan, record, verdict))
        .context(|| format!("write {}", dir.join("timeline.txt").display()))?;
    let faults = fault_notes(plan);
    let ends = record.interfaces.iter().map(|interface| End::of(interface, dir)).collect();
    let links = links_of(&record.interfaces)?;
    let wire = Wire::read(ends, links, &record.timeline, &faults, record.t0_wall)?;
    let stats: Vec<_> = record.capture.iter().map(|c| (c.interface_frames, c.lost(), c.kernel_drops)).collect();
    wire.write_pcapng(&dir.join("capture.pcapng"), &section(plan, status), &stats)?;
    let mut ladder = Ladder::of_run(plan, &record.timeline, &verdict.steps, &verdict.failures, &wire, &faults);
    ladder.status = status.label().trim_end().to_string();
    ladder.duration = record.duration.as_secs_f64();
    ladder.version = netfault_version();
    ladder.kernel = kernel_release();
    ladder.errors = record.harness_errors.clone();
    fs::write(dir.join("report.html"), ladder.to_html())
        .context(|| format!("write {}", dir.join("report.html").display()))?;
    fs::copy(&plan.file, dir.join("scenario.yaml"))
        .context(|| format!("copy {} to {}", plan.file.display(), dir.join("scenario.yaml").display()))?;
    fs::write(dir.join("environment.txt"), environment(plan, record))
        .context(|| format!("write {}", dir.join("environment.txt").display()))?;
    // Last: a scenario process killed while writing the files above leaves its partial result.json, which says
    // so, rather than one that reads as a finished run.
    ResultJson::Ran(Box::new(result)).write(dir)?;
    Ok(Summary {
        name: plan.name.clone(),
        status,
        duration: record.duration.as_secs_f64(),
        setup_ms: record.setup.as_secs_f64() * 1e3,
        teardown_ms: record.teardown.as_secs_f64() * 1e3,
        report: dir.to_path_buf(),
        messages: messages(plan, record, verdict),
    })
}

/// The links of the run, as pairs of indices into `interfaces`: the two ends each interface names as its link.
fn links_of(interfaces: &[CapturedInterface]) -> Result<Vec<Link>> {
    let count = interfaces.iter().map(|interface| interface.link + 1).max().unwrap_or(0);
    (0..count)
        .map(|link| {
            let ends: Vec<usize> = (0..interfaces.len()).filter(|&end| interfaces[end].link == link).collect();
            match ends[..] {
                [a, b] => Ok(Link(a, b)),
                _ => Err(Error::Internal(format!(
                    "link {link} of the run record has {} captured ends, not two",
                    ends.len()
                ))),
            }
        })
        .collect()
}

/// How each fault treats what it matches, for packet comments and the ladder.
fn fault_notes(plan: &Plan) -> Vec<FaultNote> {
    plan.faults
        .iter()
        .map(|fault| FaultNote {
            name: fault.name.clone(),
            host: fault.host,
            direction: match fault.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
                Direction::Forward => "forward",
            },
            verb: match &fault.action {
                FaultAction::Impair(impairment) => format!("impaired on the wire ({impairment})"),
                FaultAction::Drop => "dropped".to_string(),
                FaultAction::RejectTcpReset => "rejected with a TCP reset".to_string(),
                FaultAction::RejectIcmpPortUnreachable => "rejected with ICMP port unreachable".to_string(),
                FaultAction::RejectIcmpHostUnreachable => "rejected with ICMP host unreachable".to_string(),
                FaultAction::RejectIcmpNetUnreachable => "rejected with ICMP net unreachable".to_string(),
                FaultAction::RejectIcmpAdminProhibited => "rejected with ICMP admin prohibited".to_string(),
                FaultAction::QdiscDrop => "dropped by the queueing discipline".to_string(),
                FaultAction::FlushConntrack => "forgotten by a conntrack flush".to_string(),
            },
        })
        .collect()
}

/// What capture.pcapng's section header says: the scenario and its verdict, netfault's version and commit, the
/// kernel.
fn section(plan: &Plan, status: Status) -> Section {
    let kernel = kernel_release();
    Section {
        hardware: std::env::consts::ARCH.to_string(),
        os: format!("Linux {kernel}"),
        application: netfault_version(),
        comments: vec![
            format!("scenario {} ({}): {}", plan.name, plan.file.display(), status.label().trim_end()),
            format!("written by {}", netfault_version()),
            format!("kernel {kernel}"),
        ],
    }
}

/// environment.txt: what the run ran on, and each host's sysctls in force during the run (read by the run, in
/// the host's namespace), those the scenario set marked `*`.
fn environment(plan: &Plan, record: &RunRecord) -> String {
    let read = |path: &str| fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let mut text = format!(
        "{}\nkernel {} ({})\ncpus {}\nload average at the end of the run: {}\n",
        netfault_version(),
        kernel_release(),
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/loadavg"),
    );
    if let Some(t0) = record.t0_wall.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
        text.push_str(&format!("t0 (Unix time): {}.{:09}\n", t0.as_secs(), t0.subsec_nanos()));
    }
    text.push_str(&format!("scenario {} ({})\n", plan.name, plan.file.display()));
    for host in &plan.hosts {
        text.push_str(&format!(
            "\n{} {}/{}: sysctls in force (* set by the scenario; the rest this kernel's defaults for a new \
             namespace, but for net.ipv4.tcp_congestion_control, which Linux copies from the machine's own)\n",
            host.id, host.address, host.prefix_len
        ));
        let in_force = record.sysctls.iter().find(|(id, _)| *id == host.id).map(|(_, values)| values);
        match in_force {
            Some(values) => {
                for (name, value) in values {
                    let set = if host.sysctls.iter().any(|sysctl| sysctl.name == *name) { '*' } else { ' ' };
                    text.push_str(&format!(" {set}{name} = {value}\n"));
                }
            }
            None => {
                text.push_str("  (not read: the run ended before its hosts were set up); the scenario sets:\n");
                for sysctl in &host.sysctls {
                    text.push_str(&format!(" *{} = {}\n", sysctl.name, sysctl.value));
                }
            }
        }
    }
    text
}

/// `netfault 0.1.0 (commit 1a2b3c4d5e6f)`.
pub fn netfault_version() -> String {
    format!("netfault {}", crate::version::LONG)
}

/// A program that failed inside the harness makes the run a harness error, whatever the verdict.
fn status_of(record: &RunRecord, verdict: &Verdict) -> Status {
    match (record.harness_errors.is_empty(), verdict.passed()) {
        (false, _) => Status::Error,
        (true, true) => Status::Pass,
        (true, false) => Status::Fail,
    }
}

/// A failure with the timeline lines around it, as shown by `cargo test` and `netfault run`.
pub fn explain(plan: &Plan, failure: &Failure, view: &Timeline) -> String {
    let mut text =
        format!("{}:{}:{}: {}", printable_path(&plan.file), failure.location.line, failure.location.column, failure);
    if let Some(t) = failure.around {
        let lines = view.lines_around(t, 6, 4);
        if !lines.is_empty() {
            text.push_str(&format!("\n  timeline around {}s:", format_secs(t)));
            for line in lines {
                text.push_str("\n    ");
                text.push_str(&line);
            }
        }
    }
    text
}

/// Failures explained with their timeline in the summary (what `netfault run` and `cargo test` print); the rest
/// are counted there and listed in full in result.json and timeline.txt.
const EXPLAINED_FAILURES: usize = 20;

/// The summary's messages: every harness error, then the first failures with the timeline around each.
fn messages(plan: &Plan, record: &RunRecord, verdict: &Verdict) -> Vec<String> {
    let view = readable(&record.timeline);
    let mut messages: Vec<String> = record.harness_errors.iter().map(|e| format!("harness error: {e}")).collect();
    messages.extend(verdict.failures.iter().take(EXPLAINED_FAILURES).map(|f| explain(plan, f, &view)));
    if verdict.failures.len() > EXPLAINED_FAILURES {
        messages.push(format!(
            "... and {} more failures: every one is in result.json and at the top of timeline.txt",
            verdict.failures.len() - EXPLAINED_FAILURES
        ));
    }
    messages
}

/// The events timeline.txt shows: each packet once, from its sender's capture (arrivals appear only when a
/// fault took them or an impairment acted on them, which the sender's copy then also says). The impairments'
/// decisions show as those marks rather than as lines of their own.
pub fn readable(timeline: &Timeline) -> Timeline {
    Timeline {
        events: timeline
            .events
            .iter()
            .filter(|e| match &e.kind {
                EventKind::Packet(p) => {
                    p.direction == PacketDirection::Out || p.fault.is_some() || !p.impairments.is_empty()
                }
                EventKind::Impairment(_) => false,
                _ => true,
            })
            .cloned()
            .collect(),
    }
}

fn render_timeline(plan: &Plan, record: &RunRecord, verdict: &Verdict) -> String {
    let mut text = String::new();
    text.push_str(&format!("# {} ({})\n", printable(&plan.name), printable_path(&plan.file)));
    for line in plan.description.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!(
        "# verdict: {} ({} checks, {} failed); ran {}s; setup {:.1} ms{}, teardown {:.1} ms\n",
        status_of(record, verdict).label().trim_end(),
        verdict.checks,
        verdict.failures.len(),
        format_secs(record.duration),
        record.setup.as_secs_f64() * 1e3,
        if record.hosts_made_ahead { " (hosts made ahead)" } else { "" },
        record.teardown.as_secs_f64() * 1e3,
    ));
    for (host, observer) in &record.observer {
        let captures: Vec<String> = record
            .interfaces
            .iter()
            .zip(&record.capture)
            .filter(|(interface, _)| interface.host == *host)
            .map(|(interface, capture)| {
                format!(
                    "{} {} packets of {} the interface counted, {} dropped by the capture",
                    interface.pcap, capture.packets, capture.interface_frames, capture.kernel_drops
                )
            })
            .collect();
        text.push_str(&format!("# {host}: {}; {} socket samples", captures.join(", "), observer.samples));
        if observer.late_answers > 0 {
            text.push_str(&format!(
                ", {} asked for at once taken late (the latest asked at {}s, taken {:.1} ms later: the observer \
                 waited for a CPU)",
                observer.late_answers,
                format_secs(observer.max_answer_delay_asked_at),
                observer.max_answer_delay.as_secs_f64() * 1e3
            ));
        }
        text.push('\n');
    }
    text.push_str(&format!("# {}\n", record.states.describe()));
    for (fault, hits) in &record.fault_hits {
        text.push_str(&format!("# fault {fault}: {hits} packets matched\n"));
    }
    if let Some(wire) = &record.wire {
        text.push_str(&format!(
            "# wire: seed {}, {} decisions; toward client {} frames in, {} out; toward server {} frames in, {} out\n",
            record.seed,
            record.decisions.len(),
            wire[0].frames_in,
            wire[0].frames_out,
            wire[1].frames_in,
            wire[1].frames_out
        ));
    }
    for error in &record.harness_errors {
        text.push_str(&format!("# HARNESS ERROR {error}\n"));
    }
    for left_out in &plan.not_applicable {
        text.push_str(&format!("# NOT APPLICABLE {left_out}\n"));
    }
    for untraced in &verdict.untraced {
        text.push_str(&format!("# UNTRACED {untraced}\n"));
    }
    for failure in &verdict.failures {
        text.push_str(&format!("# FAIL {failure}\n"));
    }
    text.push_str("#\n#    time(s) host   what\n");
    text.push_str(&readable(&record.timeline).to_string());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_dir_stays_under_root() {
        let root = Path::new("/tmp/reports");
        assert_eq!(report_dir(root, "keepalive/idle").unwrap(), root.join("keepalive/idle"));
        for bad in ["", "../etc", "a/../../b", "/etc/passwd", "./x"] {
            assert!(report_dir(root, bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn links_pair_the_ends_each_interface_names() {
        use crate::scenario::plan::HostId;
        let end = |link: usize, host: HostId| CapturedInterface {
            link,
            host,
            ifname: "nf0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            address: std::net::Ipv4Addr::new(10, 0, 0, 1),
            address6: None,
            pcap: format!("{host}.pcap"),
            snaplen: 262_144,
        };
        let two = [end(0, HostId::Client), end(0, HostId::Server)];
        assert_eq!(links_of(&two).unwrap(), vec![Link(0, 1)]);
        // In whatever order the record lists them: each link's two ends, found by their link.
        let routed = [end(0, HostId::Client), end(1, HostId::Router), end(0, HostId::Router), end(1, HostId::Server)];
        assert_eq!(links_of(&routed).unwrap(), vec![Link(0, 2), Link(1, 3)]);
        let dangling = [end(0, HostId::Client), end(0, HostId::Router), end(1, HostId::Router)];
        let error = links_of(&dangling).unwrap_err().to_string();
        assert!(error.contains("link 1 of the run record has 1 captured ends"), "{error}");
        assert!(links_of(&[]).unwrap().is_empty());
    }
}

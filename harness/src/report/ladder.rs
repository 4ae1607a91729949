//! report.html: the run as a ladder (sequence) diagram in one self-contained page (no network access, no
//! external scripts or fonts): one column per host, one arrow per packet, socket state bands, steps, fault
//! windows and failures on one time axis. The page is the data (JSON) and the script that draws it.

use serde::Serialize;

use super::verdict::{describe_expectation, Failure, StepJudgement, StepVerdict};
use super::wire::{FaultNote, Wire};
use crate::scenario::plan::{HostId, Plan, Protocol};
use crate::timeline::query::{StepRecord, StepRecords};
use crate::timeline::{format_tcp_flags, EventKind, IpProtocol, Outcome, Timeline};

const STYLE: &str = include_str!("ladder.css");
const SCRIPT: &str = include_str!("ladder.js");

/// Everything the page shows, as plain data (times in seconds since t0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ladder {
    pub scenario: String,
    pub file: String,
    pub description: String,
    /// `PASS`, `FAIL` or `ERROR`.
    pub status: String,
    pub duration: f64,
    /// netfault's version and commit, the kernel release.
    pub version: String,
    pub kernel: String,
    pub hosts: Vec<Column>,
    pub packets: Vec<Arrow>,
    pub sockets: Vec<SocketChange>,
    pub steps: Vec<StepBar>,
    pub faults: Vec<FaultWindow>,
    pub failures: Vec<FailureMark>,
    /// Harness errors, shown above the diagram.
    pub errors: Vec<String>,
    /// When the deadline cut the run.
    pub deadline: Option<f64>,
}

/// A host's column.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    pub address: String,
    pub interface: String,
}

/// One packet: from its sender's column to its receiver's.
#[derive(Debug, Clone, Serialize)]
pub struct Arrow {
    /// When the sender's capture saw it leave (`None`: only the receiver saw it).
    pub sent: Option<f64>,
    /// When the receiver's capture saw it arrive (`None`: it never arrived there).
    pub received: Option<f64>,
    /// Column indices.
    pub from: usize,
    pub to: usize,
    /// `S. seq 0 ack 1 win 64 len 0`, or what a non-TCP frame is.
    pub label: String,
    /// The fault that took it: `dropped by fault blackhole at server ingress`.
    pub fault: Option<String>,
    /// Column where it ended, when a fault took it (the arrow ends there in a cross).
    pub dropped_at: Option<usize>,
    /// Its frames in capture.pcapng (Wireshark's numbers).
    pub frames: Vec<usize>,
    /// The tcpdump line, then the packet comments.
    pub detail: Vec<String>,
}

/// A socket's state, timer or queues changed (`ss -tanoi`).
#[derive(Debug, Clone, Serialize)]
pub struct SocketChange {
    pub t: f64,
    pub host: usize,
    pub socket: String,
    pub state: String,
    /// `keepalive 2992ms (1)`.
    pub timer: Option<String>,
    /// When that timer fires.
    pub fires: Option<f64>,
    pub queues: String,
}

/// A step of a host's program from its start to its result.
#[derive(Debug, Clone, Serialize)]
pub struct StepBar {
    pub host: usize,
    pub label: String,
    pub start: Option<f64>,
    pub end: Option<f64>,
    /// `ETIMEDOUT`, `11 bytes`, `ok` ... with the detail the step gave.
    pub outcome: Option<String>,
    pub expected: Option<String>,
    pub failed: bool,
}

/// A fault's rule on from `on` to `off` (or the end).
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub name: String,
    pub host: usize,
    /// `drop at server ingress`.
    pub what: String,
    pub on: f64,
    pub off: Option<f64>,
}

/// A failed expectation, at the time it is about.
#[derive(Debug, Clone, Serialize)]
pub struct FailureMark {
    pub t: Option<f64>,
    /// `scenarios/x.yaml:17:13`.
    pub location: String,
    pub message: String,
}

impl Ladder {
    /// The ladder of a run: packets from the wire, everything else from the timeline.
    pub fn of_run(
        plan: &Plan,
        timeline: &Timeline,
        judged: &[StepVerdict],
        failures: &[Failure],
        wire: &Wire,
        faults: &[FaultNote],
    ) -> Ladder {
        // One column per host, in the wire's order: client, the router if there is one, server.
        let column = |host: HostId| plan.position(host).unwrap_or_default();
        let hosts = plan
            .hosts
            .iter()
            .map(|host| host.id)
            .map(|host| Column {
                name: host.to_string(),
                address: plan.host(host).address.to_string(),
                interface: wire
                    .ends
                    .iter()
                    .find(|end| end.host == host)
                    .map(|end| end.ifname.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let mut ladder = Ladder {
            scenario: plan.name.clone(),
            file: plan.file.display().to_string(),
            description: plan.description.clone(),
            hosts,
            packets: arrows(wire, column),
            ..Ladder::default()
        };
        let mut open_faults: Vec<usize> = Vec::new();
        for event in &timeline.events {
            let t = event.t.as_secs_f64();
            match &event.kind {
                EventKind::FaultOn { fault } => {
                    let what = faults
                        .iter()
                        .find(|f| &f.name == fault)
                        .map(|f| format!("packets {} at {} {}", f.verb, f.host, f.direction));
                    open_faults.push(ladder.faults.len());
                    ladder.faults.push(FaultWindow {
                        name: fault.clone(),
                        host: column(event.host),
                        what: what.unwrap_or_default(),
                        on: t,
                        off: None,
                    });
                }
                EventKind::FaultOff { fault } => {
                    if let Some(position) = open_faults.iter().position(|&i| &ladder.faults[i].name == fault) {
                        ladder.faults[open_faults.remove(position)].off = Some(t);
                    }
                }
                EventKind::Socket(s) => ladder.sockets.push(SocketChange {
                    t,
                    host: column(event.host),
                    socket: s.socket.clone(),
                    state: s.state.name().to_string(),
                    timer: s.timer.map(|timer| {
                        let expires = s.expires.map(|e| format!(" {}ms", e.as_millis())).unwrap_or_default();
                        format!("{timer}{expires} ({})", s.retrans)
                    }),
                    fires: s.expires.map(|e| t + e.as_secs_f64()),
                    queues: format!("rq {} sq {}", s.recv_q, s.send_q),
                }),
                EventKind::Deadline { .. } => ladder.deadline = Some(t),
                _ => {}
            }
        }
        let records = StepRecords::of(plan, timeline);
        for judged in judged {
            let step = &plan.host(judged.host).steps[judged.index];
            let record = records
                .get(judged.host, judged.index)
                .cloned()
                .unwrap_or_else(|| StepRecord::empty(judged.host, judged.index));
            let outcome = record.outcome.as_ref().map(|outcome| match (outcome, &record.detail) {
                (Outcome::Unfinished, _) | (_, None) => outcome.to_string(),
                (_, Some(detail)) => format!("{outcome} ({detail})"),
            });
            ladder.steps.push(StepBar {
                host: column(judged.host),
                label: step.label(),
                start: record.start.map(|t| t.as_secs_f64()),
                end: record.end.map(|t| t.as_secs_f64()),
                outcome,
                expected: step.expect.is_set().then(|| describe_expectation(&step.expect)),
                failed: judged.judgement == StepJudgement::Fail,
            });
        }
        ladder.failures = failures
            .iter()
            .map(|failure| FailureMark {
                t: failure.around.map(|t| t.as_secs_f64()),
                location: format!("{}:{}:{}", plan.file.display(), failure.location.line, failure.location.column),
                message: failure.to_string(),
            })
            .collect();
        ladder
    }

    /// The page: the style and script inline, the data as JSON inside it.
    pub fn to_html(&self) -> String {
        // `</` cannot end the script element early once written as `<\/` (the same string in JSON).
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".into()).replace("</", "<\\/");
        let title = escape_html(&format!("{} {} - netfault", self.status, self.scenario));
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" \
             content=\"width=device-width\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src \
             'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n<title>{title}</title>\n\
             <style>\n{STYLE}</style>\n</head>\n<body>\n<script type=\"application/json\" id=\"run\">{data}</script>\n\
             <script>\n{SCRIPT}</script>\n</body>\n</html>\n"
        )
    }
}

/// One arrow per packet of the wire.
fn arrows(wire: &Wire, column: impl Fn(HostId) -> usize) -> Vec<Arrow> {
    let host_column = |end: usize| column(wire.ends[end].host);
    let peer_column = |end: usize| {
        wire.links.iter().find_map(|link| {
            let other = if link.0 == end {
                Some(link.1)
            } else if link.1 == end {
                Some(link.0)
            } else {
                None
            };
            other.map(host_column)
        })
    };
    wire.packets
        .iter()
        .map(|packet| {
            let first = &wire.frames[packet.first()];
            let own = host_column(first.end);
            let other = peer_column(first.end).unwrap_or(own);
            let (from, to) = if packet.sent.is_some() { (own, other) } else { (other, own) };
            let time = |frame: Option<usize>| frame.map(|i| wire.frames[i].t_ns as f64 / 1e9);
            let event = first.event.as_ref();
            let label = match event {
                Some(p) if p.protocol == IpProtocol::Known(Protocol::Tcp) => {
                    let ack = p.shown_ack().map(|ack| format!(" ack {ack}")).unwrap_or_default();
                    format!("{} seq {}{ack} win {} len {}", format_tcp_flags(p.flags), p.seq, p.window, p.len)
                }
                Some(p) => format!("{} {}", p.protocol, p.options),
                None => first.summary.clone(),
            };
            let fault = event.and_then(|p| p.fault.as_ref()).and_then(|_| {
                [packet.received, packet.sent]
                    .into_iter()
                    .flatten()
                    .find_map(|i| wire.frames[i].comments.first().cloned())
            });
            let mut detail = vec![event.map_or_else(|| first.summary.clone(), ToString::to_string)];
            if let Some(p) = event {
                detail.push(format!("ip id {}, {} bytes on the wire", p.ip_id, first.original_len));
            }
            for i in [packet.sent, packet.received].into_iter().flatten() {
                let frame = &wire.frames[i];
                for comment in &frame.comments {
                    detail.push(format!("frame {} ({}): {comment}", i + 1, wire.ends[frame.end].label()));
                }
            }
            Arrow {
                sent: time(packet.sent),
                received: time(packet.received),
                from,
                to,
                label,
                dropped_at: fault.is_some().then_some(to),
                fault,
                frames: [packet.sent, packet.received].into_iter().flatten().map(|i| i + 1).collect(),
                detail,
            }
        })
        .collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_cannot_close_its_script_element() {
        let ladder = Ladder {
            scenario: "x".into(),
            description: "</script><script>alert(1)</script>".into(),
            ..Ladder::default()
        };
        let html = ladder.to_html();
        assert_eq!(html.matches("</script>").count(), 2, "only the two script elements close");
        let start = html.find("id=\"run\">").unwrap() + "id=\"run\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let back: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(back["description"], "</script><script>alert(1)</script>");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let html = Ladder::default().to_html();
        for outside in ["http:", "https:", "src=", "@import", "<link", "//www"] {
            assert!(!html.contains(outside), "report.html must be self-contained, found {outside}");
        }
        assert!(html.contains("default-src 'none'"), "a content security policy forbids loading anything");
    }
}

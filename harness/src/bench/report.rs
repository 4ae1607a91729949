//! `netfault bench report`: report.html with N packets (a synthetic run: bursts of data and ACKs, quiet
//! stretches, packets taken by a fault, socket changes, steps, a failure) drawn by headless Chromium, against
//! the same packets as a plain-text timeline page, alternating in one browser.

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use serde_json::json;

use super::{Comparison, Report, ScratchDir};
use crate::error::{Error, Result};
use crate::report::browser::{file_url, Browser};
use crate::report::ladder::{Arrow, Column, FailureMark, FaultWindow, Ladder, SocketChange, StepBar};

/// What `netfault bench report` draws.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub packets: usize,
    pub runs: usize,
}

/// Target of the issue: the page drawn within this, at 50,000 packets.
const TARGET_MS: f64 = 2000.0;
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Times the page reports about itself: the diagram laid out (the script's mark), the load event's end,
/// and the first contentful paint, all from the navigation's start.
const TIMES: &str = "new Promise((resolve) => { const n = performance.getEntriesByType('navigation')[0]; \
    const done = (paint) => resolve([Number(document.body.dataset.renderMs || NaN), n.loadEventEnd, paint]); \
    new PerformanceObserver((list) => { const p = list.getEntriesByName('first-contentful-paint')[0]; \
    if (p) done(p.startTime); }).observe({ type: 'paint', buffered: true }); setTimeout(() => done(NaN), 20000); })";
/// Every tile of report.html made at once (what a test that counts every arrow does): its time and the arrows.
const DRAW_ALL: &str = "(() => { const t = performance.now(); drawAllTiles(); void document.body.offsetHeight; \
    return [performance.now() - t, document.querySelectorAll('g.pkt').length]; })()";

pub fn bench_report(options: &ReportOptions) -> Result<Report> {
    let scratch = ScratchDir::new("report")?;
    let ladder = synthetic(options.packets);
    let html = scratch.path().join("report.html");
    fs::write(&html, ladder.to_html()).map_err(|e| Error::sys(format!("write {}", html.display()), e))?;
    let text = scratch.path().join("timeline.html");
    fs::write(&text, plain_timeline(&ladder)).map_err(|e| Error::sys(format!("write {}", text.display()), e))?;
    let mut browser = Browser::launch(1400, 1000)?;
    let (mut drawn, mut loaded, mut painted, mut every_tile) = (vec![], vec![], vec![], vec![]);
    let (mut text_loaded, mut text_painted) = (vec![], vec![]);
    let mut arrows = 0;
    // One page of each first, not counted: Chromium's first page pays for its own start-up.
    for run in 0..=options.runs {
        let times = {
            let mut page = browser.open(&file_url(&html)?, "document.body.dataset.ready === '1'", PAGE_TIMEOUT)?;
            let times = page.eval(TIMES)?;
            let all = page.eval(DRAW_ALL)?;
            [times, all]
        };
        let plain = {
            let mut page = browser.open(&file_url(&text)?, "true", PAGE_TIMEOUT)?;
            page.eval(TIMES)?
        };
        if run == 0 {
            continue;
        }
        let at = |value: &serde_json::Value, i: usize| value[i].as_f64().unwrap_or(f64::NAN);
        let [times, all] = &times;
        drawn.push(at(times, 0));
        loaded.push(at(times, 1));
        painted.push(at(times, 2));
        every_tile.push(at(all, 0));
        arrows = all[1].as_u64().unwrap_or(0);
        text_loaded.push(at(&plain, 1));
        text_painted.push(at(&plain, 2));
    }
    let mut report = Report::new(&format!("report ({} packets, {} runs)", options.packets, options.runs));
    report.row("report.html: diagram laid out (script's mark)", "ms", &drawn);
    report.row("report.html: load event end", "ms", &loaded);
    report.row("report.html: first contentful paint", "ms", &painted);
    report.row("report.html: then every tile made (all arrows in the DOM)", "ms", &every_tile);
    report.row("plain-text timeline page: load event end", "ms", &text_loaded);
    report.row("plain-text timeline page: first contentful paint", "ms", &text_painted);
    let median = |samples: &[f64]| super::Distribution::of(samples).map_or(f64::NAN, |d| d.median);
    let ladder_ms = median(&loaded).max(median(&painted));
    let text_ms = median(&text_loaded).max(median(&text_painted));
    report.compare(Comparison {
        what: format!("{} packets drawn and painted, from navigation start (median)", options.packets),
        netfault: format!("{ladder_ms:.0} ms (ladder, {arrows} arrows)"),
        alternative: format!("{text_ms:.0} ms (the same packets as <pre> text)"),
        ratio: Some(ladder_ms / text_ms),
        target: format!("<= {TARGET_MS:.0} ms"),
        met: ladder_ms <= TARGET_MS && arrows == options.packets as u64,
    });
    let size = |path: &std::path::Path| fs::metadata(path).map_or(0, |m| m.len());
    report.note("report.html size", format!("{} bytes", size(&html)));
    report.note("plain-text page size", format!("{} bytes", size(&text)));
    report.note(
        "method",
        "Chromium headless (Debian), one browser, a new tab per page, report.html and the text page alternating; \
         times are the page's own Navigation Timing (loadEventEnd), Paint Timing (first-contentful-paint) and \
         report.html's mark after its script forced layout; the first pair is a warm-up and not counted",
    );
    report.extra = json!({ "drawn_ms": drawn, "loaded_ms": loaded, "painted_ms": painted,
        "every_tile_ms": every_tile, "text_loaded_ms": text_loaded, "text_painted_ms": text_painted, "arrows": arrows });
    Ok(report.finish())
}

/// A run of `packets` packets between two hosts: bursts of 100 (a data segment and its ACK, 20 µs apart), a
/// 200 ms pause after every 1,000 and 5 s after every 10,000; one packet in 50 taken by a fault between the
/// 2nd and 3rd pause; a socket change every 500 packets, a step every 1,000, one failure.
pub fn synthetic(packets: usize) -> Ladder {
    let mut ladder = Ladder {
        scenario: format!("synthetic/{packets}-packets"),
        file: "synthetic.yaml".into(),
        description: "A synthetic run for `netfault bench report`.".into(),
        status: "FAIL".into(),
        version: crate::report::netfault_version(),
        kernel: crate::report::result::kernel_release(),
        hosts: ["client", "server"]
            .iter()
            .enumerate()
            .map(|(i, name)| Column {
                name: name.to_string(),
                address: format!("10.0.0.{}", i + 1),
                interface: "nf0".into(),
            })
            .collect(),
        ..Ladder::default()
    };
    let mut t = 0.0;
    let (fault_on, fault_off) = (2.3, 2.5);
    ladder.faults.push(FaultWindow {
        name: "blackhole".into(),
        host: 1,
        what: "packets dropped at server ingress".into(),
        on: fault_on,
        off: Some(fault_off),
    });
    for i in 0..packets {
        t += if i % 10_000 == 9_999 {
            5.0
        } else if i % 1_000 == 999 {
            0.2
        } else {
            20e-6
        };
        let from = i % 2;
        let dropped = (fault_on..fault_off).contains(&t) && i % 50 == 0;
        let seq = (i / 2) * 1448;
        let label = if from == 0 {
            format!("P. seq {seq} ack 1 win 502 len 1448")
        } else {
            format!(". seq 1 ack {} win 4096 len 0", seq + 1448)
        };
        ladder.packets.push(Arrow {
            sent: Some(t),
            received: Some(t + 4e-6),
            from,
            to: 1 - from,
            detail: vec![format!("10.0.0.{}.9000 > 10.0.0.{}.40000: Flags [.], {label}", from + 1, 2 - from)],
            label,
            fault: dropped.then(|| "dropped by fault blackhole at server ingress".into()),
            dropped_at: dropped.then_some(1 - from),
            frames: vec![2 * i + 1, 2 * i + 2],
        });
        if i % 500 == 0 {
            ladder.sockets.push(SocketChange {
                t,
                host: from,
                socket: format!("10.0.0.{}:{} -> 10.0.0.{}:{}", from + 1, 40000 + i % 3, 2 - from, 9000),
                state: if i % 1000 == 0 { "ESTABLISHED" } else { "FIN-WAIT-1" }.into(),
                timer: Some(format!("on 200ms ({})", i % 4)),
                fires: Some(t + 0.2),
                queues: "rq 0 sq 1448".into(),
            });
        }
        if i % 1_000 == 0 {
            ladder.steps.push(StepBar {
                host: 0,
                label: format!("#{} send", i / 1000 + 1),
                start: Some(t),
                end: Some(t + 0.01),
                outcome: Some("1448 bytes".into()),
                expected: None,
                failed: false,
            });
        }
    }
    ladder.failures.push(FailureMark {
        t: Some(t / 2.0),
        location: "synthetic.yaml:10:5".into(),
        message: "line 10: client step #3 recv: expected ETIMEDOUT, got ECONNRESET".into(),
    });
    ladder.duration = t;
    ladder
}

/// The alternative: the same packets as timeline.txt shows them, one line each in a `<pre>`.
fn plain_timeline(ladder: &Ladder) -> String {
    let mut text = String::from("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body><pre>");
    for arrow in &ladder.packets {
        let host = &ladder.hosts[arrow.from].name;
        let _ = writeln!(text, "{:>11.6} {host:<6} out    {}", arrow.sent.unwrap_or_default(), arrow.detail[0]);
    }
    text.push_str("</pre></body></html>\n");
    text
}

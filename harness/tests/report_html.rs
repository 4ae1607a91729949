//! Reports as a maintainer receives them: each scenario of the suite (not `slow`) and each failing fixture is
//! run; then report.html, in headless Chromium (one per process, shared by its trials), must draw one arrow per
//! packet of capture.pcapng (every frame of the file in exactly one arrow) and list every failure with its file
//! and line; tshark must show the two interfaces and a comment on every frame the timeline says a fault took;
//! tcpdump must read the file. Screenshots are kept in target/tmp/report-browser/screenshots/.

mod contract;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use netfault::report::browser::{file_url, Browser};
use netfault::report::ladder::{Arrow, Column, Ladder};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use serde_json::Value;

const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let mut args = Arguments::from_args();
    // The scenarios wait on kernel timers: all at once, as the scenario driver runs them (an explicit
    // --test-threads wins). Chromium is shared, one page at a time.
    args.test_threads.get_or_insert(64);
    let root = repository();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-browser");
    let screenshots = out.join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("create the screenshot folder");
    let browser: &'static Mutex<Option<Browser>> = Box::leak(Box::new(Mutex::new(None)));
    let mut trials = Vec::new();
    for source in ["scenarios", "harness/tests/fixtures/failing"] {
        for name in scenario_names(&root, source) {
            let file = root.join(source).join(format!("{name}.yaml"));
            let reports = out.join("reports").join(source.replace('/', "-"));
            let shot = screenshots.join(format!("{}.png", name.replace('/', "__")));
            let root = root.clone();
            trials.push(Trial::test(format!("report_html::{name}"), move || {
                run_scenario(&root, &reports, &file)?;
                check_report(&reports.join(&name), &shot, browser)
            }));
        }
    }
    let three = out.join("three-hosts");
    trials.push(Trial::test("report_html::three_host_columns", move || three_host_columns(&three, browser)));
    let conclusion = libtest_mimic::run(&args, trials);
    // Chromium is closed before the process exits.
    if let Ok(mut browser) = browser.lock() {
        browser.take();
    }
    conclusion.exit();
}

/// `netfault run --reports DIR FILE`: the verdict does not matter here (the scenario tests judge it); the
/// report must be written.
fn run_scenario(root: &Path, reports: &Path, file: &Path) -> Result<(), Failed> {
    let output = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .arg("run")
        .arg("--reports")
        .arg(reports)
        .arg(file)
        .current_dir(root)
        .output()?;
    match output.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!(
            "netfault run {}: {} (harness error or invalid input)\n{}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
        .into()),
    }
}

/// The scenarios of `source` that `netfault run` runs by default (not `slow`), by report name.
fn scenario_names(root: &Path, source: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .arg("list")
        .arg(source)
        .current_dir(root)
        .output()
        .expect("netfault list runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.contains(" slow "))
        .filter_map(|line| line.split_whitespace().next().map(String::from))
        .collect()
}

fn check_report(report: &Path, shot: &Path, browser: &Mutex<Option<Browser>>) -> Result<(), Failed> {
    let result: Value = contract::checked_result(&report.join("result.json"))?;
    let pcapng = report.join("capture.pcapng");

    // capture.pcapng against the pcaps the captures wrote, one per interface: both ends of each link, two per
    // link in link order (client and server on one link, or with a router between them on two).
    let captured = result["interfaces"].as_array().ok_or("no interfaces in result.json")?;
    let names: Vec<String> = captured
        .iter()
        .map(|i| format!("{}/{}", i["host"].as_str().unwrap_or("?"), i["ifname"].as_str().unwrap_or("?")))
        .collect();
    let mut pcaps = Vec::new();
    for interface in captured {
        pcaps.push(pcap_frames(&report.join(interface["pcap"].as_str().ok_or("interface without pcap")?))?);
    }
    let (interfaces, frames) = pcapng_contents(&pcapng)?;
    if interfaces != names || !names.len().is_multiple_of(2) || names.is_empty() {
        return Err(format!("capture.pcapng interfaces {interfaces:?}, the record's {names:?}").into());
    }
    let in_pcaps: usize = pcaps.iter().map(Vec::len).sum();
    if frames != in_pcaps {
        return Err(format!("capture.pcapng has {frames} frames, the pcaps {in_pcaps}").into());
    }
    // A packet is in one pcap of its link or in both (the same bytes at each end of the veth).
    let mut packets = 0;
    for link in pcaps.chunks(2) {
        let mut counts: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for frame in &link[0] {
            counts.entry(frame).or_default().0 += 1;
        }
        for frame in &link[1] {
            counts.entry(frame).or_default().1 += 1;
        }
        packets += counts.values().map(|&(a, b)| a.max(b)).sum::<usize>();
    }

    // tshark: the interfaces, a comment on every frame the timeline marks as taken by a fault.
    let tshark =
        tool("tshark", &["-r", path(&pcapng), "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment"])?;
    let mut seen: Vec<&str> = tshark.lines().filter_map(|l| l.split('\t').next()).collect();
    seen.sort();
    seen.dedup();
    if frames > 0 && seen.iter().any(|name| !names.iter().any(|known| known == name)) {
        return Err(format!("tshark shows interfaces {seen:?}").into());
    }
    let commented = tshark.lines().filter(|l| l.contains(" by fault ")).count();
    // A packet its sender dropped before it left (an egress fault's) is marked on the timeline but was never
    // on the wire: no pcap has it.
    let marked = result["events"].as_array().map_or(0, |events| {
        events.iter().filter(|e| e["event"] == "packet" && !e["fault"].is_null() && e["dropped"].is_null()).count()
    });
    if commented != marked {
        return Err(format!("tshark shows {commented} fault comments; the timeline marks {marked} packets").into());
    }
    let tcpdump = tool("tcpdump", &["-n", "-r", path(&pcapng)])?;
    if tcpdump.lines().count() != frames {
        return Err(format!("tcpdump -r reads {} frames of {frames}", tcpdump.lines().count()).into());
    }

    // report.html in Chromium.
    let mut browser = browser.lock().map_err(|_| "browser lock poisoned")?;
    if browser.is_none() {
        *browser = Some(Browser::launch(1400, 1000)?);
    }
    let browser = browser.as_mut().ok_or("no browser")?;
    let mut page =
        browser.open(&file_url(&report.join("report.html"))?, "document.body.dataset.ready === '1'", PAGE_TIMEOUT)?;
    let dom = page.eval(
        "(() => { drawAllTiles(); \
         const arrows = [...document.querySelectorAll('g.pkt')].map((g) => g.dataset.frames); \
         const failures = [...document.querySelectorAll('li[data-failure]')].map((li) => li.textContent); \
         const heads = [...document.querySelectorAll('.heads > div:not(.lane)')].map((d) => d.firstChild.textContent); \
         return { arrows, failures, heads, drawn: document.querySelectorAll('g.failure').length, \
                  status: document.querySelector('.badge').textContent }; })()",
    )?;
    page.screenshot(shot, Some(1400))?;
    drop(page);

    // One column per host, in the wire's order: client and server, or client, router, server.
    let mut hosts: Vec<&str> = captured.iter().filter_map(|i| i["host"].as_str()).collect();
    hosts.dedup();
    if dom["heads"] != serde_json::json!(hosts) {
        return Err(format!("report.html has columns {}; the run's hosts are {hosts:?}", dom["heads"]).into());
    }
    let arrows = dom["arrows"].as_array().ok_or("no arrows list")?;
    if arrows.len() != packets {
        return Err(format!("report.html draws {} arrows; the captures hold {packets} packets", arrows.len()).into());
    }
    let mut numbers: Vec<usize> = arrows
        .iter()
        .flat_map(|a| {
            a.as_str().unwrap_or_default().split_whitespace().map(|n| n.parse().unwrap_or(0)).collect::<Vec<_>>()
        })
        .collect();
    numbers.sort_unstable();
    if numbers != (1..=frames).collect::<Vec<_>>() {
        return Err("the arrows do not cover every frame of capture.pcapng exactly once".into());
    }
    let status = result["status"].as_str().unwrap_or_default().to_uppercase();
    if dom["status"] != status.as_str() {
        return Err(format!("page says {}, result.json {status}", dom["status"]).into());
    }
    let failures = result["failures"].as_array().map_or(0, Vec::len);
    let shown = dom["failures"].as_array().ok_or("no failures list")?;
    if shown.len() != failures {
        return Err(format!("page lists {} failures, result.json {failures}", shown.len()).into());
    }
    let file = result["file"].as_str().unwrap_or_default();
    for (text, failure) in shown.iter().zip(result["failures"].as_array().into_iter().flatten()) {
        let line = failure["location"]["line"].as_u64().unwrap_or(0);
        let text = text.as_str().unwrap_or_default();
        // The page names the file as it was given; result.json as one canonical path.
        let shown_file = text.split_whitespace().find_map(|word| word.split_once(&format!(":{line}:")).map(|(f, _)| f));
        let same = shown_file.and_then(|f| std::fs::canonicalize(f).ok()).is_some_and(|f| f == Path::new(file));
        if !same {
            return Err(format!("failure shown without its file and line {file}:{line}: {text}").into());
        }
    }
    if failures > 0 && dom["drawn"].as_u64() == Some(0) {
        return Err("no failure marked on the diagram".into());
    }
    Ok(())
}

/// The ladder of a run with a router between client and server (what hosts-as-data gives): three columns in
/// order, every arrow from its sender's lifeline to its receiver's, the dropped one ending in a cross.
fn three_host_columns(dir: &Path, browser: &Mutex<Option<Browser>>) -> Result<(), Failed> {
    let column =
        |name: &str, address: &str| Column { name: name.into(), address: address.into(), interface: "nf0".into() };
    let arrow = |t: f64, from: usize, to: usize, dropped: bool| Arrow {
        sent: Some(t),
        received: (!dropped).then_some(t + 1e-5),
        from,
        to,
        label: format!("S seq 0 ack 0 win 64240 len 0 ({from}->{to})"),
        fault: dropped.then(|| "dropped by fault nat at router ingress".into()),
        dropped_at: dropped.then_some(to),
        frames: vec![],
        detail: vec![String::new()],
    };
    let ladder = Ladder {
        scenario: "middlebox/three-columns".into(),
        status: "PASS".into(),
        duration: 2.0,
        hosts: vec![column("client", "10.0.0.1"), column("router", "10.0.0.254"), column("server", "10.0.1.2")],
        packets: vec![
            arrow(0.0, 0, 1, false),
            arrow(0.001, 1, 2, false),
            arrow(0.002, 2, 1, false),
            arrow(1.0, 0, 1, true),
        ],
        ..Ladder::default()
    };
    std::fs::create_dir_all(dir)?;
    let html = dir.join("report.html");
    std::fs::write(&html, ladder.to_html())?;
    let mut browser = browser.lock().map_err(|_| "browser lock poisoned")?;
    if browser.is_none() {
        *browser = Some(Browser::launch(1400, 1000)?);
    }
    let browser = browser.as_mut().ok_or("no browser")?;
    let mut page = browser.open(&file_url(&html)?, "document.body.dataset.ready === '1'", PAGE_TIMEOUT)?;
    let dom = page.eval(
        "(() => ({ lifelines: [...document.querySelector('.tile svg').querySelectorAll('line.life')].map((l) => Number(l.getAttribute('x1'))), \
                   heads: [...document.querySelectorAll('.heads > div:not(.lane)')].map((d) => d.firstChild.textContent), \
                   arrows: [...document.querySelectorAll('g.pkt line')].map((l) => [Number(l.getAttribute('x1')), Number(l.getAttribute('x2'))]), \
                   crosses: document.querySelectorAll('g.pkt.drop path.x').length }))()",
    )?;
    page.screenshot(&dir.join("three-hosts.png"), Some(400))?;
    let lifelines: Vec<f64> =
        dom["lifelines"].as_array().ok_or("no lifelines")?.iter().filter_map(Value::as_f64).collect();
    if dom["heads"] != serde_json::json!(["client", "router", "server"]) || lifelines.len() != 3 {
        return Err(format!("columns {} at {lifelines:?}", dom["heads"]).into());
    }
    if !lifelines.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(format!("columns out of order: {lifelines:?}").into());
    }
    let arrows = dom["arrows"].as_array().ok_or("no arrows")?;
    let ends: Vec<(f64, f64)> =
        arrows.iter().map(|a| (a[0].as_f64().unwrap_or(-1.0), a[1].as_f64().unwrap_or(-1.0))).collect();
    for (k, (p, (x1, x2))) in ladder.packets.iter().zip(&ends).enumerate() {
        let (from, to) = (lifelines[p.from], lifelines[p.to]);
        // An arrow starts on its sender's lifeline and stops at the receiver's (a cross's width short when dropped).
        if *x1 != from || (x2 - to).abs() > 8.0 {
            return Err(format!("arrow {k} drawn from {x1} to {x2}, columns at {from} and {to}").into());
        }
    }
    if ends.len() != 4 || dom["crosses"] != 1 {
        return Err(format!("{} arrows, {} crosses", ends.len(), dom["crosses"]).into());
    }
    Ok(())
}

fn pcap_frames(pcap: &Path) -> Result<Vec<Vec<u8>>, Failed> {
    let mut reader = PcapReader::new(File::open(pcap)?)?;
    let mut frames = Vec::new();
    // Raw records: pcap-file's checked ones refuse frames cut by a snap length (`capture: { snaplen }`).
    while let Some(record) = reader.next_raw_packet() {
        frames.push(record?.data.into_owned());
    }
    Ok(frames)
}

/// The interface names and the number of packets of a pcapng file.
fn pcapng_contents(pcapng: &Path) -> Result<(Vec<String>, usize), Failed> {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    let mut reader = PcapNgReader::new(File::open(pcapng)?)?;
    let (mut names, mut frames) = (Vec::new(), 0);
    while let Some(block) = reader.next_block() {
        match block? {
            Block::InterfaceDescription(idb) => names.extend(idb.options.iter().filter_map(|o| match o {
                InterfaceDescriptionOption::IfName(name) => Some(name.to_string()),
                _ => None,
            })),
            Block::EnhancedPacket(_) => frames += 1,
            _ => {}
        }
    }
    Ok((names, frames))
}

fn tool(program: &str, args: &[&str]) -> Result<String, Failed> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} cannot run ({e}); ci/setup.sh installs it"))?;
    if !output.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

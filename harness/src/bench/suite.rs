//! `netfault bench suite` and `netfault bench timing`: whole scenarios in child processes through
//! `runner::run_all`, as `netfault run` runs them; wall time against the longest scenario, many concurrent
//! instances of one scenario, and what their result.json files say about timing accuracy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{interrupted, Comparison, Distribution, Report, ScratchDir};
use crate::error::{Context, Error, Result};
use crate::report::{Status, Summary};
use crate::run::runner::{self, Job};
use crate::run::supervise::Supervisor;
use crate::scenario;
use crate::scenario::plan::Plan;
use crate::scenario::variables::Variables;

/// Longest a benchmark run of the suite may take before its scenarios are stopped.
pub(super) const BENCH_BUDGET: Duration = Duration::from_secs(3600);

/// The target: the suite takes at most this much longer than its longest scenario.
const TARGET_SUITE_RATIO: f64 = 1.15;
/// Keepalive-idle: TCP_KEEPIDLE 5 + TCP_KEEPCNT 3 x TCP_KEEPINTVL 3 = 14 s from the connection's last
/// received segment (the SYN-ACK) to the RST and ETIMEDOUT.
const KEEPALIVE_DEADLINE_SECS: f64 = 14.0;
/// The keepalive-idle timers: KEEPIDLE, then KEEPCNT x KEEPINTVL (the last one sends the RST).
const KEEPALIVE_INTERVALS: [f64; 4] = [5.0, 3.0, 3.0, 3.0];
/// Probes come at least KEEPIDLE after the handshake; pure ACKs earlier belong to the handshake.
const KEEPALIVE_PROBE_WINDOW_START: f64 = 2.0;
/// How often the memory sampler looks at the children.
const MEMORY_SAMPLE_PERIOD: Duration = Duration::from_millis(200);
const SYN_ACK: u64 = 0x12;
const ACK: u64 = 0x10;
const RST: u64 = 0x04;

/// What `netfault bench suite` runs.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub runs: usize,
    /// A folder of scenarios (or one file).
    pub path: PathBuf,
}

/// What `netfault bench suite --concurrent N` runs.
#[derive(Debug, Clone)]
pub struct ConcurrentOptions {
    pub instances: usize,
    pub scenario: PathBuf,
}

/// What `netfault bench timing` runs.
#[derive(Debug, Clone)]
pub struct TimingOptions {
    pub instances: usize,
    /// Observer sampling interval to run with instead of the scenario's (`sample:`).
    pub sample: Option<Duration>,
    pub scenario: PathBuf,
}

pub(super) fn exe() -> Result<PathBuf> {
    std::env::current_exe().context(|| "find the netfault binary (/proc/self/exe)".to_string())
}

/// `netfault run <path>` `runs` times: wall time against the longest scenario; then once with one scenario
/// at a time, the way the shell recipe runs a suite.
pub fn bench_suite(options: &SuiteOptions) -> Result<Report> {
    let mut report = Report::new("suite");
    let exe = exe()?;
    // As `netfault run` without --slow: the minutes-long variants are not part of the suite's wall time.
    let (loaded, slow): (Vec<_>, Vec<_>) =
        runner::load_all(std::slice::from_ref(&options.path), &Variables::from_environment())
            .into_result()
            .map_err(|errors| Error::Internal(format!("invalid scenarios: {}", errors.join("; "))))?
            .into_iter()
            .partition(|(_, plan)| !plan.slow);
    report.note("slow scenarios left out, as `netfault run` leaves them out", slow.len().to_string());
    let scratch = ScratchDir::new("suite")?;
    let (mut walls, mut longest, mut longest_with_setup, mut ratios, mut ratios_with_setup) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for run in 0..options.runs {
        if interrupted() {
            break;
        }
        let reports = scratch.path().join(format!("run{run}"));
        let jobs: Vec<(Job, Duration)> =
            loaded.iter().map(|(job, plan)| (Job { reports: reports.clone(), ..job.clone() }, plan.deadline)).collect();
        let parallel = runner::default_parallelism(jobs.len());
        let started = Instant::now();
        let summaries = runner::run_all(&exe, jobs, parallel, &Supervisor::new(BENCH_BUDGET), |_| {});
        let wall = started.elapsed().as_secs_f64();
        failures.extend(describe_failures(&summaries, &format!("run {}", run + 1)));
        let longest_run = summaries.iter().map(|s| s.duration).fold(0.0, f64::max);
        let longest_full =
            summaries.iter().map(|s| s.duration + (s.setup_ms + s.teardown_ms) / 1e3).fold(0.0, f64::max);
        walls.push(wall);
        longest.push(longest_run);
        longest_with_setup.push(longest_full);
        ratios.push(wall / longest_run);
        ratios_with_setup.push(wall / longest_full);
    }
    let sequential = if interrupted() {
        None
    } else {
        let reports = scratch.path().join("sequential");
        let jobs: Vec<(Job, Duration)> =
            loaded.iter().map(|(job, plan)| (Job { reports: reports.clone(), ..job.clone() }, plan.deadline)).collect();
        let started = Instant::now();
        let summaries = runner::run_all(&exe, jobs, 1, &Supervisor::new(BENCH_BUDGET), |_| {});
        failures.extend(describe_failures(&summaries, "one at a time"));
        Some((started.elapsed().as_secs_f64(), summaries.iter().map(|s| s.duration).sum::<f64>()))
    };

    report.row("suite wall time (all scenarios in parallel)", "s", &walls);
    report.row("longest scenario (t0 to end)", "s", &longest);
    report.row("longest scenario incl. its setup + teardown", "s", &longest_with_setup);
    report.row("ratio wall / longest scenario", "x", &ratios);
    report.row("ratio wall / longest incl. setup + teardown", "x", &ratios_with_setup);
    if let (Some(ratio), Some(wall)) = (Distribution::of(&ratios), Distribution::of(&walls)) {
        let sequential_wall = sequential.map(|(wall, _)| wall);
        report.compare(Comparison {
            what: format!("suite of {} scenarios: wall time (median of {} runs)", loaded.len(), ratio.n),
            netfault: format!("{:.2} s, {:.3}x its longest scenario", wall.median, ratio.median),
            alternative: match sequential_wall {
                Some(sequential) => format!("{sequential:.2} s one scenario at a time"),
                None => "-".into(),
            },
            ratio: sequential_wall.map(|s| s / wall.median),
            target: format!("wall <= {TARGET_SUITE_RATIO}x longest scenario"),
            met: ratio.max <= TARGET_SUITE_RATIO,
        });
    }
    report.compare(Comparison {
        what: "every scenario passes in every run".into(),
        netfault: format!("{} not passing", failures.len()),
        alternative: "-".into(),
        ratio: None,
        target: "0 not passing".into(),
        met: failures.is_empty(),
    });
    if let Some((wall, sum)) = sequential {
        report.note(
            "one at a time",
            format!("{wall:.2} s wall for {sum:.2} s of scenario time (same harness, --jobs 1)"),
        );
    }
    report.note("scenarios not passing (all runs)", failures.len().to_string());
    for failure in failures {
        report.note("not passed", failure);
    }
    report.extra = json!({ "walls_s": walls, "longest_s": longest, "ratios": ratios });
    Ok(report.finish())
}

/// `instances` copies of one scenario at once, each with its own report folder.
pub fn bench_concurrent(options: &ConcurrentOptions) -> Result<Report> {
    let mut report = Report::new(&format!("suite --concurrent {}", options.instances));
    let scratch = ScratchDir::new("concurrent")?;
    let root = runner::scenario_root(&options.scenario);
    let plan = scenario::load(&root, &options.scenario, &Variables::from_environment())?;
    let memory_before = mem_available_kib();
    let sampler = MemorySampler::start();
    let started = Instant::now();
    let batch = run_instances(&options.scenario, &root, &plan, options.instances, scratch.path())?;
    let wall = started.elapsed().as_secs_f64();
    let memory = sampler.stop();
    let children_maxrss = children_max_rss_kib();

    let figures = batch.analyse();
    let passed = batch.summaries.iter().filter(|s| s.status == Status::Pass).count();
    add_keepalive_rows(&mut report, &figures);
    report.row("child setup under this load (setup_ms, children not killed)", "ms", &batch.field(|s| s.setup_ms));
    report.row("child teardown (teardown_ms)", "ms", &batch.field(|s| s.teardown_ms));
    let peaks: Vec<f64> = memory.peak_rss_kib.values().map(|kib| *kib as f64 / 1024.0).collect();
    report.row("child peak RSS (VmHWM, sampled every 200 ms)", "MiB", &peaks);
    let system_per_scenario =
        memory_before.saturating_sub(memory.lowest_available_kib) as f64 / 1024.0 / options.instances as f64;
    let (early_ms, late_ms) = (plan.tolerance.early.as_secs_f64() * 1e3, plan.tolerance.late.as_secs_f64() * 1e3);
    let within = |values: &[f64]| values.iter().all(|v| -early_ms <= *v && *v <= late_ms);
    let all_within = within(&figures.etimedout_error_ms) && within(&figures.rst_error_ms);
    report.compare(Comparison {
        what: format!("{} concurrent instances of {} on {} CPUs", options.instances, plan.name, cpus()),
        netfault: format!("{passed}/{} passed, wall {wall:.1} s", options.instances),
        alternative: "-".into(),
        ratio: None,
        target: format!("all pass, ETIMEDOUT and RST within the scenario's tolerance {}", plan.tolerance),
        met: passed == options.instances && all_within && figures.etimedout_error_ms.len() == options.instances,
    });
    report.note(
        "peak memory per child",
        format!(
            "largest child maxrss {:.1} MiB (getrusage RUSAGE_CHILDREN); distribution above from /proc/<pid>/status \
             VmHWM of {} children; MemAvailable fell by {:.1} MiB per scenario at the lowest point (namespaces, sockets \
             and frames queued for the capture are kernel memory, not in RSS)",
            children_maxrss as f64 / 1024.0,
            peaks.len(),
            system_per_scenario
        ),
    );
    report.note("sampling interval", format!("{} ms (the scenario's)", plan.sample_interval.as_millis()));
    for failure in batch.failures() {
        report.note("not passed", failure);
    }
    report.extra = json!({ "figures": figures.to_json(), "peak_rss_mib": peaks, "wall_s": wall });
    Ok(report.finish())
}

/// The keepalive-idle scenario `instances` times at once: timing accuracy against the kernel-defined 14 s,
/// and the observer's latency against the packets that changed the socket state.
pub fn bench_timing(options: &TimingOptions) -> Result<Report> {
    let load_start = super::load_average();
    let scratch = ScratchDir::new("timing")?;
    let (file, root) = match options.sample {
        None => (options.scenario.clone(), runner::scenario_root(&options.scenario)),
        Some(interval) => {
            let text = std::fs::read_to_string(&options.scenario)
                .context(|| format!("read {}", options.scenario.display()))?;
            let file = scratch.path().join(options.scenario.file_name().unwrap_or_default());
            std::fs::write(&file, with_sample_interval(&text, interval))
                .context(|| format!("write {}", file.display()))?;
            (file, scratch.path().to_path_buf())
        }
    };
    let plan = scenario::load(&root, &file, &Variables::from_environment())?;
    let started = Instant::now();
    let batch = run_instances(&file, &root, &plan, options.instances, &scratch.path().join("reports"))?;
    let wall = started.elapsed().as_secs_f64();
    let figures = batch.analyse();
    let passed = batch.summaries.iter().filter(|s| s.status == Status::Pass).count();

    let interval_ms = plan.sample_interval.as_secs_f64() * 1e3;
    let mut report = Report::new(&format!("timing (n {}, sample {interval_ms} ms)", options.instances));
    report.load_start = load_start;
    add_keepalive_rows(&mut report, &figures);
    report.row("observer: client ESTABLISHED seen - SYN-ACK in", "ms", &figures.client_established_latency_ms);
    report.row("observer: server ESTABLISHED seen - ACK in", "ms", &figures.server_established_latency_ms);
    report.row("observer: client GONE seen - RST out", "ms", &figures.client_gone_latency_ms);
    report.row("observer: samples per host per second", "1/s", &figures.samples_per_second);
    report.row("observer: mean sock_diag dump time", "us", &figures.mean_dump_us);
    let worst_latency = Distribution::of(&figures.client_gone_latency_ms).map_or(f64::NAN, |d| d.max.max(d.max.abs()));
    report.compare(Comparison {
        what: format!("observer state-change latency, sampling every {interval_ms} ms"),
        netfault: format!("worst client GONE latency {worst_latency:.2} ms"),
        alternative: "-".into(),
        ratio: None,
        target: format!("within one sampling interval + 1 ms ({:.1} ms)", interval_ms + 1.0),
        met: worst_latency <= interval_ms + 1.0,
    });
    report.note("passed", format!("{passed}/{} in {wall:.1} s wall", options.instances));
    report.note(
        "reference",
        "kernel-defined time = client's SYN-ACK arrival + 14 s (KEEPIDLE 5 + KEEPCNT 3 x KEEPINTVL 3); \
         observer events are stamped with the time their dump ended",
    );
    for failure in batch.failures() {
        report.note("not passed", failure);
    }
    report.extra = json!({ "figures": figures.to_json(), "wall_s": wall, "sample_ms": interval_ms });
    Ok(report.finish())
}

fn add_keepalive_rows(report: &mut Report, figures: &KeepaliveFigures) {
    report.row("SYN-ACK at the client, from t0 (program start)", "ms", &figures.handshake_after_t0_ms);
    report.row("ETIMEDOUT observed - kernel-defined 14 s", "ms", &figures.etimedout_error_ms);
    report.row("RST packet observed - kernel-defined 14 s", "ms", &figures.rst_error_ms);
    report.row("ETIMEDOUT seen by the program - RST on the wire", "ms", &figures.etimedout_after_rst_ms);
    report.row("each keepalive timer: fired - configured (5/3/3/3 s)", "ms", &figures.timer_lateness_ms);
}

/// The scenario text with its observer sampling interval set to `interval` (`sample: 1ms`).
fn with_sample_interval(text: &str, interval: Duration) -> String {
    let line = format!("sample: {}ms", interval.as_millis());
    let mut replaced = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("sample:") {
                replaced = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Summaries of many copies of one scenario, and where each wrote its report.
struct Batch {
    summaries: Vec<Summary>,
}

fn run_instances(file: &Path, root: &Path, plan: &Plan, instances: usize, reports: &Path) -> Result<Batch> {
    let exe = exe()?;
    let jobs: Vec<(Job, Duration)> = (0..instances)
        .map(|i| {
            let job =
                Job::new(file.to_path_buf(), root.to_path_buf(), reports.join(format!("{i}")), plan, super::BENCH_SEED);
            (job, plan.deadline)
        })
        .collect();
    let summaries = runner::run_all(&exe, jobs, instances, &Supervisor::new(BENCH_BUDGET), |_| {});
    Ok(Batch { summaries })
}

impl Batch {
    /// A summary figure of every child that ran to a verdict (harness errors report zeros).
    fn field(&self, f: impl Fn(&Summary) -> f64) -> Vec<f64> {
        self.summaries.iter().filter(|s| s.status != Status::Error).map(f).collect()
    }

    fn failures(&self) -> Vec<String> {
        describe_failures(&self.summaries, "")
    }

    fn analyse(&self) -> KeepaliveFigures {
        let mut figures = KeepaliveFigures::default();
        for summary in &self.summaries {
            let path = summary.report.join("result.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(result) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            figures.add(&result);
        }
        figures
    }
}

/// One line per scenario that did not pass: where, its status, and the first line of each message.
pub(super) fn describe_failures(summaries: &[Summary], context: &str) -> Vec<String> {
    summaries
        .iter()
        .filter(|s| s.status != Status::Pass)
        .map(|s| {
            let first_lines: Vec<&str> = s.messages.iter().filter_map(|m| m.lines().next()).collect();
            format!("{context} {} {:?}: {}", s.report.display(), s.status, first_lines.join(" / ")).trim().to_string()
        })
        .collect()
}

/// What the keepalive-idle result.json files say, in milliseconds.
#[derive(Debug, Default, Clone, PartialEq)]
struct KeepaliveFigures {
    etimedout_error_ms: Vec<f64>,
    rst_error_ms: Vec<f64>,
    /// The program's ETIMEDOUT minus the RST the kernel sent when it gave up: the harness's own delay.
    etimedout_after_rst_ms: Vec<f64>,
    /// When the client got the SYN-ACK, from t0: the programs' start plus the handshake.
    handshake_after_t0_ms: Vec<f64>,
    /// Each keepalive timer's firing minus its configured delay (5, 3, 3, 3 s).
    timer_lateness_ms: Vec<f64>,
    client_established_latency_ms: Vec<f64>,
    server_established_latency_ms: Vec<f64>,
    client_gone_latency_ms: Vec<f64>,
    samples_per_second: Vec<f64>,
    mean_dump_us: Vec<f64>,
}

impl KeepaliveFigures {
    /// Reads one result.json: the step that failed with ETIMEDOUT, the client's first RST, and the socket
    /// events that followed the handshake and the RST.
    fn add(&mut self, result: &Value) {
        let events = result["events"].as_array().map(Vec::as_slice).unwrap_or_default();
        let packet = |host: &str, direction: &str, flags: &dyn Fn(u64) -> bool| {
            events
                .iter()
                .find(|e| {
                    e["host"] == host
                        && e["event"] == "packet"
                        && e["protocol"] == "tcp"
                        && e["direction"] == direction
                        && flags(e["flags"].as_u64().unwrap_or(0))
                })
                .and_then(|e| e["t"].as_f64())
        };
        let socket = |host: &str, state: &str, after: f64| {
            events
                .iter()
                .find(|e| {
                    e["host"] == host
                        && e["event"] == "socket"
                        && e["state"] == state
                        && e["remote_port"].as_u64().unwrap_or(0) != 0
                        && e["t"].as_f64().is_some_and(|t| t >= after)
                })
                .and_then(|e| e["t"].as_f64())
        };
        let Some(syn_ack) = packet("client", "in", &|f| f == SYN_ACK) else {
            return;
        };
        self.handshake_after_t0_ms.push(syn_ack * 1e3);
        let kernel_deadline = syn_ack + KEEPALIVE_DEADLINE_SECS;
        let timed_out = result["steps"].as_array().and_then(|steps| {
            steps.iter().find(|s| s["outcome"]["error"] == "ETIMEDOUT").and_then(|s| s["end"].as_f64())
        });
        if let Some(t) = timed_out {
            self.etimedout_error_ms.push((t - kernel_deadline) * 1e3);
        }
        let rst = packet("client", "out", &|f| f & RST != 0);
        if let Some(t) = rst {
            self.rst_error_ms.push((t - kernel_deadline) * 1e3);
        }
        if let (Some(error), Some(reset)) = (timed_out, rst) {
            self.etimedout_after_rst_ms.push((error - reset) * 1e3);
        }
        // Each keepalive timer on its own: the probes (pure ACKs well after the handshake) and the RST, each
        // measured from the one before against its configured interval.
        let probes: Vec<f64> = events
            .iter()
            .filter(|e| {
                e["host"] == "client"
                    && e["event"] == "packet"
                    && e["direction"] == "out"
                    && e["flags"].as_u64() == Some(ACK)
                    && e["t"].as_f64().is_some_and(|t| t > syn_ack + KEEPALIVE_PROBE_WINDOW_START)
            })
            .filter_map(|e| e["t"].as_f64())
            .take(KEEPALIVE_INTERVALS.len() - 1)
            .collect();
        if let (Some(rst), true) = (rst, probes.len() == KEEPALIVE_INTERVALS.len() - 1) {
            let fired: Vec<f64> = std::iter::once(syn_ack).chain(probes).chain(std::iter::once(rst)).collect();
            for (pair, interval) in fired.windows(2).zip(KEEPALIVE_INTERVALS) {
                self.timer_lateness_ms.push((pair[1] - pair[0] - interval) * 1e3);
            }
        }
        if let Some(seen) = socket("client", "ESTABLISHED", 0.0) {
            self.client_established_latency_ms.push((seen - syn_ack) * 1e3);
        }
        if let Some(ack) = packet("server", "in", &|f| f == ACK) {
            if let Some(seen) = socket("server", "ESTABLISHED", 0.0) {
                self.server_established_latency_ms.push((seen - ack) * 1e3);
            }
        }
        if let Some(rst) = rst {
            if let Some(seen) = socket("client", "GONE", rst - 1.0) {
                self.client_gone_latency_ms.push((seen - rst) * 1e3);
            }
        }
        let duration = result["duration"].as_f64().unwrap_or(0.0);
        for observer in result["observer"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let (Some(samples), true) = (observer["samples"].as_f64(), duration > 0.0) {
                self.samples_per_second.push(samples / duration);
            }
            if let Some(micros) = observer["mean_dump_us"].as_f64() {
                self.mean_dump_us.push(micros);
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "etimedout_error_ms": self.etimedout_error_ms,
            "rst_error_ms": self.rst_error_ms,
            "etimedout_after_rst_ms": self.etimedout_after_rst_ms,
            "timer_lateness_ms": self.timer_lateness_ms,
            "handshake_after_t0_ms": self.handshake_after_t0_ms,
            "client_established_latency_ms": self.client_established_latency_ms,
            "server_established_latency_ms": self.server_established_latency_ms,
            "client_gone_latency_ms": self.client_gone_latency_ms,
        })
    }
}

/// `grep MemAvailable /proc/meminfo`, in KiB (0 if unreadable).
fn mem_available_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// `getrusage(RUSAGE_CHILDREN).ru_maxrss`: the largest peak RSS of any waited-for child, in KiB.
fn children_max_rss_kib() -> u64 {
    super::rusage(libc::RUSAGE_CHILDREN, "RUSAGE_CHILDREN")
        .map_or(0, |usage| u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

/// What the memory sampler saw.
#[derive(Debug, Default)]
struct MemoryUse {
    /// Largest VmHWM seen per child pid.
    peak_rss_kib: HashMap<u32, u64>,
    lowest_available_kib: u64,
}

/// A thread that reads the children's `/proc/<pid>/status` VmHWM and the system's MemAvailable every
/// `MEMORY_SAMPLE_PERIOD`.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<MemoryUse>,
}

impl MemorySampler {
    fn start() -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let me = std::process::id();
            let mut seen = MemoryUse { peak_rss_kib: HashMap::new(), lowest_available_kib: mem_available_kib() };
            while !flag.load(Ordering::Relaxed) {
                for pid in children_of(me) {
                    if let Some(hwm) = vm_hwm_kib(pid) {
                        let peak = seen.peak_rss_kib.entry(pid).or_insert(0);
                        *peak = (*peak).max(hwm);
                    }
                }
                seen.lowest_available_kib = seen.lowest_available_kib.min(mem_available_kib());
                thread::sleep(MEMORY_SAMPLE_PERIOD);
            }
            seen
        });
        MemorySampler { stop, thread }
    }

    fn stop(self) -> MemoryUse {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Pids whose parent is `parent` (the `ppid` field of `/proc/<pid>/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            parent_pid(&stat) == Some(parent)
        })
        .collect()
}

/// The ppid of a `/proc/<pid>/stat` line: the second field after the parenthesised command name.
fn parent_pid(stat: &str) -> Option<u32> {
    crate::run::procstat::ProcStat::parse(stat)?.field(4)?.parse().ok()
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: f64, host: &str, kind: Value) -> Value {
        let mut event = json!({ "t": t, "host": host });
        if let (Some(object), Some(fields)) = (event.as_object_mut(), kind.as_object()) {
            object.extend(fields.clone());
        }
        event
    }

    fn packet(t: f64, host: &str, direction: &str, flags: u64) -> Value {
        event(t, host, json!({ "event": "packet", "protocol": "tcp", "direction": direction, "flags": flags }))
    }

    fn socket(t: f64, host: &str, state: &str, remote_port: u64) -> Value {
        event(t, host, json!({ "event": "socket", "state": state, "remote_port": remote_port }))
    }

    #[test]
    fn keepalive_figures_are_measured_from_the_syn_ack() {
        let result = json!({
            "duration": 16.0,
            "steps": [
                { "host": "client", "outcome": "ok", "end": 0.0247 },
                { "host": "client", "outcome": { "error": "ETIMEDOUT" }, "end": 14.3005 },
            ],
            "observer": [{ "samples": 1600, "mean_dump_us": 40.0, "max_dump_us": 90.0 }],
            "events": { "events": [
                packet(0.0200, "client", "out", 0x02),
                packet(0.0201, "client", "in", 0x12),
                packet(0.0202, "server", "in", 0x10),
                socket(0.0250, "server", "LISTEN", 0),
                socket(0.0260, "server", "ESTABLISHED", 40000),
                socket(0.0290, "client", "ESTABLISHED", 9000),
                packet(5.1201, "client", "out", 0x10),
                packet(8.2001, "client", "out", 0x10),
                packet(11.2201, "client", "out", 0x10),
                packet(14.3001, "client", "out", 0x14),
                socket(14.3051, "client", "GONE", 9000),
                packet(16.0, "client", "out", 0x04),
            ]},
        });
        let mut figures = KeepaliveFigures::default();
        figures.add(&result);
        let round = |v: &[f64]| v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>();
        assert_eq!(round(&figures.etimedout_error_ms), [280.4]);
        assert_eq!(round(&figures.rst_error_ms), [280.0]);
        assert_eq!(round(&figures.etimedout_after_rst_ms), [0.4]);
        assert_eq!(round(&figures.handshake_after_t0_ms), [20.1]);
        assert_eq!(round(&figures.timer_lateness_ms), [100.0, 80.0, 20.0, 80.0]);
        assert_eq!(round(&figures.client_established_latency_ms), [8.9]);
        assert_eq!(round(&figures.server_established_latency_ms), [5.8]);
        assert_eq!(round(&figures.client_gone_latency_ms), [5.0]);
        assert_eq!(figures.samples_per_second, [100.0]);
        assert_eq!(figures.mean_dump_us, [40.0]);
    }

    #[test]
    fn a_result_without_a_handshake_adds_nothing() {
        let mut figures = KeepaliveFigures::default();
        figures.add(&json!({ "events": { "events": [] } }));
        figures.add(&json!("not an object"));
        assert_eq!(figures, KeepaliveFigures::default());
    }

    #[test]
    fn sample_interval_is_set_or_replaced() {
        let text = "description: x\ntimeout: 30s\n";
        assert_eq!(with_sample_interval(text, Duration::from_millis(1)), "description: x\ntimeout: 30s\nsample: 1ms\n");
        assert_eq!(with_sample_interval("sample: 10ms\nx: 1\n", Duration::from_millis(1)), "sample: 1ms\nx: 1\n");
    }

    #[test]
    fn parent_pid_skips_command_names_with_spaces_and_parentheses() {
        assert_eq!(parent_pid("1234 (net (fault) x) S 42 1234 1234 0 -1"), Some(42));
        assert_eq!(parent_pid("garbage"), None);
        assert_eq!(
            parent_pid(&std::fs::read_to_string("/proc/self/stat").unwrap()),
            Some(std::os::unix::process::parent_id())
        );
    }
}

//! `netfault bench`: measured figures for netfault against the obvious alternative (the `ip netns` /
//! `ip link` / `nft -f` / `tcpdump -w` shell recipe), both sides in the same run, printed as small tables
//! (median, p10/p90, min/max, n) and optionally written as JSON.
//!
//! Benchmarks, not tests: nothing here asserts; every figure is printed next to its target and whether it was
//! met. The machine's load average is recorded with each table, since the figures are wall-clock times.

mod capture;
mod exec;
mod impair;
mod nfqueue;
mod recipe;
mod report;
mod run;
mod seeded;
mod setup;
mod suite;
mod transitions;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Context, Error, Result};
use crate::scenario::{self, plan::Plan};

pub use capture::{bench_capture, CaptureOptions};
pub use exec::{bench_exec, ExecOptions};
pub use impair::{bench_impair, ImpairOptions};
pub use report::{bench_report, ReportOptions};
pub use run::{bench_run, RunOptions};
pub use seeded::{bench_seeded, SeededOptions};
pub use setup::{bench_setup, SetupOptions};
pub use suite::{bench_concurrent, bench_suite, bench_timing, ConcurrentOptions, SuiteOptions, TimingOptions};
pub use transitions::{bench_transitions, TransitionOptions};

/// `netfault bench --help`.
pub const USAGE: &str = "\
usage: netfault bench <what> [options] [--json FILE] [--keep]
  (as root; a release build gives the real figures; --keep leaves reports and pcaps in the temp dir)
  run [--n 50] [--netfault EXE]    a trivial scenario through `netfault run`, start to exit, vs a shell script
                                   doing the same job (ip, nft, tcpdump, socat, ss); where netfault's time goes;
                                   the CPU of all its processes; --netfault times another build the same way
  setup [--n 200]                  fixed cost per scenario: netfault in-process vs the ip/nft/tcpdump recipe
  suite [--runs 3] [PATH]          suite wall time vs its longest scenario (PATH default: scenarios)
  suite --concurrent 200 [--scenario scenarios/keepalive/idle.yaml]
                                   N instances at once: passes, ETIMEDOUT/RST error, peak memory per child
  capture [--bytes 1GiB] [--runs 2] bulk TCP over the veth: packets captured vs sent, drops, throughput with
                                   no capture, netfault's default queue and 64 MiB ring, tcpdump -w with its
                                   default buffer and with -B 65536, and all cut to 160 bytes: netfault's
                                   snaplen with the queue and the ring, tcpdump -s 160; and the ring decoded
                                   after the stop, whole and cut; and a packet socket keeping nothing, the
                                   kernel's tap alone (same run); --only keeps the arrangements whose label
                                   contains it (e.g. snaplen, after stop, tap)
  impair [--runs 3] [--seconds 3] [--n 100000] [--only MEASUREMENT]
                                   impairments against the kernel's alternatives, alternating: delay accuracy at
                                   100 Mb/s (wire vs bridge + NFQUEUE), rate (wire vs tc tbf), loss over N UDP
                                   datagrams (seeded wire vs nft numgen), throughput, delay placed on the sender;
                                   --only runs the measurements whose name contains it (e.g. delay)
  seeded [--runs 5] [PATH]         the scenarios of PATH (default scenarios/impair) run N times with one seed:
                                   per scenario, pairs of runs whose decisions about the packets both sent agree
  timing [--n 100] [--sample 10ms] [--scenario FILE]
                                   keepalive-idle N times in parallel: observed minus kernel-defined times,
                                   observer state-change latency against the packet that caused it
  exec [--n 200]                   one exec step's program started and waited for: unconfined, confined, and
                                   confined per program with unshare + setpriv (same run); making a confinement
  report [--n 50000] [--runs 5]    report.html with N packets (synthetic) in headless Chromium: laid out, loaded,
                                   first paint; against the same packets as a plain-text page (same browser)
  transitions [--n 1000] [--sample 10ms]
                                   the kernel's state transitions (tracepoint) against sock_diag sampling on
                                   the same short connections; BPF program cost, tracer latency, start/stop";

/// The seed of every scenario a benchmark runs: their impairments decide the same way in every run.
pub const BENCH_SEED: u64 = 15;

/// `--keep`: scratch folders (reports, pcaps) stay for inspection.
static KEEP_SCRATCH: AtomicBool = AtomicBool::new(false);

/// Set by SIGINT / SIGTERM: the benchmarks stop after the current repetition and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether the user asked the benchmark to stop (Ctrl-C or SIGTERM).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// `netfault bench <what> ...`: parses the arguments, runs the benchmark, prints its table.
pub fn main(args: &[String]) -> ExitCode {
    let Some((what, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(what.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match BenchArgs::parse(rest) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("netfault bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.keep {
        KEEP_SCRATCH.store(true, Ordering::Relaxed);
    }
    let result = prepare().and_then(|()| match what.as_str() {
        "run" => bench_run(&RunOptions { repetitions: options.n.unwrap_or(50), netfault: options.netfault.clone() }),
        "setup" => bench_setup(&SetupOptions { repetitions: options.n.unwrap_or(200) }),
        "suite" => match options.concurrent {
            Some(instances) => bench_concurrent(&ConcurrentOptions {
                instances,
                scenario: options.scenario.clone().unwrap_or_else(|| PathBuf::from("scenarios/keepalive/idle.yaml")),
            }),
            None => bench_suite(&SuiteOptions {
                runs: options.runs.unwrap_or(3),
                path: options.paths.first().cloned().unwrap_or_else(|| PathBuf::from("scenarios")),
            }),
        },
        "capture" => bench_capture(&CaptureOptions {
            bytes: options.bytes.unwrap_or(1 << 30),
            runs: options.runs.unwrap_or(2),
            only: options.only.clone(),
        }),
        "impair" => bench_impair(&ImpairOptions {
            runs: options.runs.unwrap_or(3),
            seconds: options.seconds.unwrap_or(3),
            datagrams: options.n.unwrap_or(100_000) as u64,
            only: options.only.clone(),
        }),
        "seeded" => bench_seeded(&SeededOptions {
            runs: options.runs.unwrap_or(5),
            path: options.paths.first().cloned().unwrap_or_else(|| PathBuf::from("scenarios/impair")),
        }),
        "timing" => bench_timing(&TimingOptions {
            instances: options.n.unwrap_or(100),
            sample: options.sample,
            scenario: options.scenario.clone().unwrap_or_else(|| PathBuf::from("scenarios/keepalive/idle.yaml")),
        }),
        "transitions" => bench_transitions(&TransitionOptions {
            connections: options.n.unwrap_or(1000),
            sample: options.sample.unwrap_or(Duration::from_millis(10)),
        }),
        "exec" => bench_exec(&ExecOptions { repetitions: options.n.unwrap_or(200) }),
        "report" => {
            bench_report(&ReportOptions { packets: options.n.unwrap_or(50_000), runs: options.runs.unwrap_or(5) })
        }
        other => Err(Error::Internal(format!("unknown benchmark {other:?}; see netfault bench --help"))),
    });
    match result {
        Ok(report) => {
            print!("{}", report.render());
            if let Some(path) = &options.json {
                if let Err(e) = report.write_json(path) {
                    eprintln!("netfault bench: {e}");
                    return ExitCode::from(2);
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netfault bench {what}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Root check, signal handlers, and the bench's own network namespace (as the runner's child has), so nothing it
/// creates in-process lands in the host's namespace.
fn prepare() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Missing {
            what: "root".into(),
            hint: "the benchmarks compare against `ip netns add` and tcpdump, which need root: sudo netfault bench ..."
                .into(),
        });
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
    crate::run::netns::enter_private_parent()?;
    crate::observe::capture::keep_kernel_timestamps_on()
}

/// The options of every benchmark; each uses the ones that apply to it.
#[derive(Debug, Default, PartialEq)]
struct BenchArgs {
    n: Option<usize>,
    runs: Option<usize>,
    seconds: Option<u64>,
    only: Option<String>,
    concurrent: Option<usize>,
    scenario: Option<PathBuf>,
    bytes: Option<u64>,
    sample: Option<Duration>,
    json: Option<PathBuf>,
    netfault: Option<PathBuf>,
    keep: bool,
    paths: Vec<PathBuf>,
}

impl BenchArgs {
    fn parse(args: &[String]) -> std::result::Result<BenchArgs, String> {
        let mut parsed = BenchArgs::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let mut value = || iter.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
            let count = |text: String| -> std::result::Result<usize, String> {
                text.parse().ok().filter(|n| *n > 0).ok_or(format!("{arg} {text:?}: need a positive number"))
            };
            match arg.as_str() {
                "--n" | "-n" => parsed.n = Some(count(value()?)?),
                "--runs" => parsed.runs = Some(count(value()?)?),
                "--seconds" => parsed.seconds = Some(count(value()?)? as u64),
                "--only" => parsed.only = Some(value()?),
                "--concurrent" => parsed.concurrent = Some(count(value()?)?),
                "--scenario" => parsed.scenario = Some(PathBuf::from(value()?)),
                "--json" => parsed.json = Some(PathBuf::from(value()?)),
                "--netfault" => parsed.netfault = Some(PathBuf::from(value()?)),
                "--keep" => parsed.keep = true,
                "--bytes" => {
                    let text = value()?;
                    parsed.bytes = Some(parse_size(&text).ok_or(format!("--bytes {text:?}: need a size like 1GiB"))?);
                }
                "--sample" => {
                    let text = value()?;
                    let interval = scenario::duration::parse_duration(&text)
                        .map_err(|_| format!("--sample {text:?}: need a duration like 10ms"))?;
                    parsed.sample = Some(interval);
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
                path => parsed.paths.push(PathBuf::from(path)),
            }
        }
        Ok(parsed)
    }
}

/// `1GiB`, `512MiB`, `64KiB`, `1000000` (bytes).
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier).filter(|n| *n > 0)
}

/// Order statistics of a set of samples (linear interpolation between the two nearest ranks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    pub n: usize,
    pub min: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

impl Distribution {
    /// `None` for no samples; NaNs are left out.
    pub fn of(samples: &[f64]) -> Option<Distribution> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let rank = q * (sorted.len() - 1) as f64;
            let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        };
        Some(Distribution {
            n: sorted.len(),
            min: sorted[0],
            p10: quantile(0.1),
            median: quantile(0.5),
            p90: quantile(0.9),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// One line of a table: a measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub unit: String,
    pub distribution: Option<Distribution>,
}

/// netfault against the alternative on one figure, with the target it is held to.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub what: String,
    pub netfault: String,
    pub alternative: String,
    /// alternative / netfault for costs, or netfault / alternative where the text says so.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: bool,
}

/// What a benchmark prints and writes as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the benchmark started and ended.
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
    pub rows: Vec<Row>,
    pub comparisons: Vec<Comparison>,
    /// Facts worth printing that are not distributions (counts, settings, method).
    pub notes: Vec<(String, String)>,
    /// Raw figures for the JSON file only.
    pub extra: Value,
}

impl Report {
    /// An empty report stamped with the current load average.
    pub fn new(title: &str) -> Report {
        let load = load_average();
        Report {
            title: title.to_string(),
            load_start: load,
            load_end: load,
            rows: Vec::new(),
            comparisons: Vec::new(),
            notes: Vec::new(),
            extra: json!({}),
        }
    }

    /// Adds a row with the distribution of `samples` (in `unit`).
    pub fn row(&mut self, what: impl Into<String>, unit: &str, samples: &[f64]) {
        self.rows.push(Row { what: what.into(), unit: unit.to_string(), distribution: Distribution::of(samples) });
    }

    /// Adds a `key: value` line under the tables.
    pub fn note(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.notes.push((key.into(), value.into()));
    }

    /// Adds a netfault-against-alternative line with its target.
    pub fn compare(&mut self, comparison: Comparison) {
        self.comparisons.push(comparison);
    }

    /// Stamps the end load average; call when the measuring is over.
    pub fn finish(mut self) -> Report {
        self.load_end = load_average();
        self
    }

    /// The tables as printed: rows, comparisons, notes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let load = |l: [f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
        let _ = writeln!(
            text,
            "\n== netfault bench {} (load average at start {}, at end {}; {} CPUs)",
            self.title,
            load(self.load_start),
            load(self.load_end),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if !self.rows.is_empty() {
            let width = self.rows.iter().map(|r| r.what.len()).max().unwrap_or(0).max(4);
            let _ = writeln!(
                text,
                "{:<width$} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "what", "unit", "n", "median", "p10", "p90", "min", "max"
            );
            for row in &self.rows {
                match row.distribution {
                    Some(d) => {
                        let _ = writeln!(
                            text,
                            "{:<width$} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
                            row.what,
                            row.unit,
                            d.n,
                            figure(d.median),
                            figure(d.p10),
                            figure(d.p90),
                            figure(d.min),
                            figure(d.max)
                        );
                    }
                    None => {
                        let _ = writeln!(text, "{:<width$} {:>5} {:>5}  (no samples)", row.what, row.unit, 0);
                    }
                }
            }
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(text, "\ncomparison:");
            for c in &self.comparisons {
                let ratio = c.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
                let met = if c.met { "met" } else { "NOT met" };
                let _ = writeln!(
                    text,
                    "  {}: netfault {} | alternative {} | ratio {ratio} | target {} -> {met}",
                    c.what, c.netfault, c.alternative, c.target
                );
            }
        }
        for (key, value) in &self.notes {
            let _ = writeln!(text, "  {key}: {value}");
        }
        text
    }

    /// The whole report, samples included, as pretty JSON in `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("encode {}: {e}", path.display())))?;
        std::fs::write(path, text).context(|| format!("write {}", path.display()))
    }
}

/// Four significant digits, without switching to exponents for the ranges measured here.
fn figure(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude >= 1000.0 {
        format!("{x:.0}")
    } else if magnitude >= 100.0 {
        format!("{x:.1}")
    } else if magnitude >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// `cat /proc/loadavg`: the 1, 5 and 15 minute load averages (zeros if unreadable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0)]
}

/// `getrusage(who)`: what the kernel counted for this process's threads (`RUSAGE_SELF`, the ended ones
/// included) or for its reaped children and their reaped descendants (`RUSAGE_CHILDREN`); `name` is `who`'s.
pub fn rusage(who: libc::c_int, name: &str) -> Result<libc::rusage> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Err(Error::last_os(format!("getrusage({name})")));
    }
    Ok(usage)
}

/// User + system CPU time of a [`rusage`].
pub fn cpu_of(usage: &libc::rusage) -> Duration {
    let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A duration in (fractional) milliseconds.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A directory under the system temp dir, removed with everything in it when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// `mkdir -p $TMPDIR/netfault-bench-<pid>-<name>`, emptied first.
    pub fn new(name: &str) -> Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("netfault-bench-{}-{name}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).context(|| format!("rm -r {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).context(|| format!("mkdir -p {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if KEEP_SCRATCH.load(Ordering::Relaxed) {
            eprintln!("netfault bench: kept {}", self.path.display());
            return;
        }
        // Best effort: a leftover scratch folder in /tmp is harmless and says whose it was.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The scenario the in-process benchmarks set up: one fault (on the server), a listener and a connect.
/// Written to disk, it is also the trivial scenario `bench run` runs through `netfault run`.
pub const FIXTURE: &str = "\
description: netfault bench fixture - one fault, a listener, a connect
timeout: 10s
faults:
  - name: blackhole
    at: server
    match: { protocol: tcp, dport: 9000 }
    action: drop
    from: client.connect
server:
  - listen: { port: 9000 }
  - accept
client:
  - connect: { to: server, port: 9000 }
    name: connect
    expect: ok
";

/// The fixture as a plan; `file` is where it claims to come from.
pub fn fixture_plan(file: &Path) -> Result<Plan> {
    Ok(scenario::parse("bench-fixture", file, FIXTURE)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn distribution_interpolates_between_ranks() {
        let samples: Vec<f64> = (1..=11).map(f64::from).collect();
        let d = Distribution::of(&samples).unwrap();
        assert_eq!((d.n, d.min, d.p10, d.median, d.p90, d.max, d.mean), (11, 1.0, 2.0, 6.0, 10.0, 11.0, 6.0));
        let d = Distribution::of(&[4.0, 1.0]).unwrap();
        assert_eq!((d.median, d.p10, d.p90), (2.5, 1.3, 3.7));
        let d = Distribution::of(&[7.0]).unwrap();
        assert_eq!((d.min, d.median, d.max), (7.0, 7.0, 7.0));
        assert!(Distribution::of(&[]).is_none());
        assert_eq!(Distribution::of(&[f64::NAN, 3.0]).unwrap().n, 1);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        for bad in ["", "GiB", "1TB", "0", "-1GiB", "1.5GiB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn arguments_parse_and_refuse_unknown_options() {
        let args = BenchArgs::parse(&strings(&[
            "--n",
            "50",
            "--json",
            "out.json",
            "--sample",
            "1ms",
            "--bytes",
            "2GiB",
            "scenarios",
        ]))
        .unwrap();
        assert_eq!(args.n, Some(50));
        assert_eq!(args.json, Some(PathBuf::from("out.json")));
        assert_eq!(args.sample, Some(Duration::from_millis(1)));
        assert_eq!(args.bytes, Some(2 << 30));
        assert_eq!(args.paths, vec![PathBuf::from("scenarios")]);
        assert!(BenchArgs::parse(&strings(&["--n", "0"])).unwrap_err().contains("positive"));
        assert!(BenchArgs::parse(&strings(&["--runs"])).unwrap_err().contains("needs a value"));
        assert!(BenchArgs::parse(&strings(&["--fast"])).unwrap_err().contains("unknown option"));
        assert!(BenchArgs::parse(&strings(&["--sample", "10"])).is_err());
    }

    #[test]
    fn fixture_is_a_valid_scenario_with_one_server_fault() {
        let plan = fixture_plan(Path::new("bench-fixture.yaml")).unwrap();
        assert_eq!(plan.faults.len(), 1);
        assert_eq!(plan.faults[0].name, "blackhole");
    }

    #[test]
    fn report_renders_rows_comparisons_and_notes() {
        let mut report = Report::new("demo");
        report.row("netfault total", "ms", &[1.0, 2.0, 3.0]);
        report.row("empty", "ms", &[]);
        report.compare(Comparison {
            what: "setup".into(),
            netfault: "2 ms".into(),
            alternative: "90 ms".into(),
            ratio: Some(45.0),
            target: ">= 20x".into(),
            met: true,
        });
        report.note("sampling", "10 ms");
        let text = report.finish().render();
        assert!(text.contains("netfault total"), "{text}");
        assert!(text.contains("2.000"), "{text}");
        assert!(text.contains("(no samples)"), "{text}");
        assert!(text.contains("ratio 45.00x | target >= 20x -> met"), "{text}");
        assert!(text.contains("sampling: 10 ms"), "{text}");
    }
}

//! `netfault matrix`: the same scenarios on several kernels, each booted in a qemu VM with the same binary,
//! and the host's own kernel; one table of verdicts, one count line per kernel.
//!
//! Per kernel: [`kernel`] finds its image and modules, [`initramfs`] puts the guest's root together (busybox,
//! netfault and the programs scenarios `exec`, with their libraries, [`modules`], the scenarios), [`vm`] boots it
//! and takes the reports off its disk into `reports/<kernel-release>/`.

pub mod initramfs;
pub mod kernel;
pub mod load;
pub mod modules;
pub mod vm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::report::{Status, Summary};
use crate::run::runner::{self, Job};
use crate::run::supervise::{self, Supervisor};
use crate::scenario::plan::{Action, Plan};
use crate::scenario::variables::Variables;

/// The hidden command the guest's init runs: the suite, its summaries into `--out`.
pub const GUEST_COMMAND: &str = "__matrix-guest";

/// Programs that `exec` steps run through a shell rather than by name (`sh -c "until ss -Htln ..."`), or that
/// netfault runs them under (`trace: true`: strace), copied into the guest when this machine has them, as the
/// ones named by `exec` steps are.
const HELPER_PROGRAMS: [&str; 6] = ["curl", "ip", "nc", "socat", "ss", "strace"];

/// Where the guest puts its scenarios and binary.
const GUEST_ROOT: &str = "/netfault";

/// Memory of each VM: scenarios at once (a few MiB each, capture rings up to 64 MiB) and the reports, which
/// stay in the guest's RAM until they are written out.
const VM_MEMORY_MIB: u32 = 3072;

/// Virtual CPUs of each VM: a small CI runner's.
const VM_CPUS: u32 = 2;

/// A supervisor deadline no matrix reaches: asks only whether SIGINT or SIGTERM came.
const SIGNALS_ONLY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Added to the guest's own suite deadline for the VM as a whole: writing the reports out and powering off.
const VM_MARGIN: Duration = Duration::from_secs(120);

pub const USAGE: &str = "\
netfault matrix [--kernel VERSION|PATH]... [--jobs N] [--reports DIR] [--accel kvm|tcg] [--slow] [PATH...]
    runs the scenarios on the host's kernel and, for each --kernel, in a qemu VM booting that kernel with this
    same binary; reports in DIR/<kernel-release>/<scenario>/ (default DIR: reports). VERSION is a Debian kernel
    version prefix (6.1, 6.12) looked up in the kernel cache (NETFAULT_KERNELS, default
    /var/cache/netfault/kernels; `bash ci/kernels.sh 6.1 6.12` fills it); PATH a vmlinuz-<release> whose
    lib/modules/<release> is beside its folder. --accel: KVM is tried first where /dev/kvm exists, TCG after.
    Exit status: 0 when no scenario failed on any kernel, 1 when one did, 2 on invalid input or a VM that did
    not run to its end.";

/// Options of `matrix` and of the guest command.
#[derive(Debug, Default)]
struct Options {
    kernels: Vec<String>,
    jobs: Option<usize>,
    reports: Option<PathBuf>,
    accel: Option<vm::Accel>,
    out: Option<PathBuf>,
    slow: bool,
    paths: Vec<PathBuf>,
}

fn parse_options(args: &[String]) -> std::result::Result<Options, String> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--kernel" | "-k" => options.kernels.push(value(arg)?),
            "--jobs" | "-j" => {
                let text = value(arg)?;
                let jobs =
                    text.parse().ok().filter(|n| *n > 0).ok_or(format!("--jobs {text:?}: need a positive number"))?;
                options.jobs = Some(jobs);
            }
            "--reports" => options.reports = Some(PathBuf::from(value(arg)?)),
            "--out" => options.out = Some(PathBuf::from(value(arg)?)),
            "--accel" => {
                options.accel = Some(match value(arg)?.as_str() {
                    "kvm" => vm::Accel::Kvm,
                    "tcg" => vm::Accel::Tcg,
                    other => return Err(format!("--accel {other:?}: allowed: kvm, tcg")),
                })
            }
            "--slow" => options.slow = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            path => options.paths.push(PathBuf::from(path)),
        }
    }
    if options.paths.is_empty() {
        options.paths.push(PathBuf::from("scenarios"));
    }
    Ok(options)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("netfault matrix: {message}\n\nusage:\n  {USAGE}");
    ExitCode::from(2)
}

/// One kernel's results.
#[derive(Debug)]
struct Column {
    release: String,
    /// Where its reports are.
    reports: PathBuf,
    summaries: Vec<Summary>,
    /// Why the kernel gave no results (a VM that did not boot or finish).
    broken: Option<String>,
}

/// `netfault matrix ...`.
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("usage:\n  {USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let loaded = runner::load_all(&options.paths, &Variables::from_environment());
    for skipped in &loaded.skipped {
        eprintln!("netfault: {skipped}");
    }
    let loaded = match loaded.into_result() {
        Ok(loaded) => loaded,
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("netfault: {} invalid scenario(s); nothing was run", errors.len());
            return ExitCode::from(2);
        }
    };
    let cache = kernel::cache_dir();
    let mut kernels = Vec::new();
    for spec in &options.kernels {
        match kernel::resolve(spec, &cache) {
            Ok(kernel) => kernels.push(kernel),
            Err(e) => {
                eprintln!("netfault matrix: --kernel {spec}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if !kernels.is_empty() {
        if let Err(e) = vm::qemu() {
            eprintln!("netfault matrix: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = supervise::catch_stop_signals() {
        eprintln!("netfault: {e}");
        return ExitCode::from(2);
    }
    let reports = options.reports.clone().unwrap_or_else(|| PathBuf::from("reports"));
    let host_release = kernel::host_release();
    let mut columns = Vec::new();

    println!("== {host_release} (this machine)");
    let host_reports = reports.join(&host_release);
    let started = Instant::now();
    let summaries = run_suite(&options.paths, &host_reports, options.jobs, options.slow, print_summary);
    println!("   {host_release}: done in {:.1}s", started.elapsed().as_secs_f64());
    columns.push(match summaries {
        Ok(summaries) => Column { release: host_release, reports: host_reports, summaries, broken: None },
        Err(e) => {
            Column { release: host_release, reports: host_reports, summaries: vec![], broken: Some(e.to_string()) }
        }
    });

    for kernel in &kernels {
        if let Some(reason) = Supervisor::new(SIGNALS_ONLY).stop_reason() {
            columns.push(Column {
                release: kernel.release.clone(),
                reports: reports.join(&kernel.release),
                summaries: vec![],
                broken: Some(format!("not started: {reason}")),
            });
            continue;
        }
        println!("== {} (qemu VM)", kernel.release);
        let column = match run_in_vm(kernel, &loaded, &options, &reports) {
            Ok(column) => column,
            Err(e) => Column {
                release: kernel.release.clone(),
                reports: reports.join(&kernel.release),
                summaries: vec![],
                broken: Some(e.to_string()),
            },
        };
        columns.push(column);
    }
    let names: Vec<String> = loaded
        .iter()
        .filter(|(_, plan)| options.slow || !plan.slow)
        .map(|(_, plan)| plan.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for column in &columns {
        if let Some(line) = realtime_line(&column.summaries) {
            println!("{}: {line}", column.release);
        }
    }
    print!("{}", table(&names, &columns));
    let mut failed = false;
    let mut broken = false;
    for column in &columns {
        let counts = Counts::of(&column.summaries);
        failed |= counts.failed > 0;
        if let Some(reason) = &column.broken {
            broken = true;
            println!("{}: no results: {reason}", column.release);
        } else {
            println!("{}", counts.line(&column.release));
        }
    }
    if broken {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Verdict counts of one kernel, as its line prints them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: usize,
    /// Verdict failures and harness errors.
    failed: usize,
    not_applicable: usize,
}

impl Counts {
    fn of(summaries: &[Summary]) -> Counts {
        let mut counts = Counts::default();
        for summary in summaries {
            match summary.status {
                Status::Pass => counts.passed += 1,
                Status::Fail | Status::Error => counts.failed += 1,
                Status::NotApplicable => counts.not_applicable += 1,
            }
        }
        counts
    }

    /// `<kernel-release>: N passed, N failed, N not applicable`.
    fn line(&self, release: &str) -> String {
        format!("{release}: {} passed, {} failed, {} not applicable", self.passed, self.failed, self.not_applicable)
    }
}

/// `PASS  keepalive/idle   14.301s  reports/keepalive/idle`, then the messages, as `netfault run` prints them.
fn print_summary(summary: &Summary) {
    let status = summary.status.label();
    println!("{status} {:<40} {:>8.3}s  {}", summary.name, summary.duration, summary.report.display());
    for message in &summary.messages {
        for line in message.lines() {
            println!("      {line}");
        }
    }
}

/// Runs the scenarios under `paths` as `netfault run` does (each in a child process, `jobs` at a time, all at
/// once by default), reports under `reports`; `on_done` sees each summary in name order.
fn run_suite(
    paths: &[PathBuf],
    reports: &Path,
    parallel: Option<usize>,
    slow: bool,
    on_done: impl FnMut(&Summary),
) -> Result<Vec<Summary>> {
    let loaded = runner::load_all(paths, &Variables::from_environment())
        .into_result()
        .map_err(|errors| Error::Internal(errors.join("\n")))?;
    let jobs: Vec<(Job, Duration)> = loaded
        .into_iter()
        .filter(|(_, plan)| slow || !plan.slow)
        .map(|(job, plan)| (Job { reports: reports.to_path_buf(), ..job }, plan.deadline))
        .collect();
    let parallel = parallel.unwrap_or_else(|| runner::default_parallelism(jobs.len()));
    let limits: Vec<Duration> = jobs.iter().map(|(_, deadline)| *deadline + runner::CHILD_GRACE).collect();
    let supervisor = Supervisor::new(supervise::default_budget(&limits));
    supervisor.start_watchdog(runner::STOP_GRACE)?;
    let mut on_done = on_done;
    let summaries = runner::run_all(&exe(), jobs, parallel, &supervisor, |event| {
        if let runner::RunEvent::Finished(_, summary) = event {
            on_done(summary);
        }
    });
    match supervisor.stop_reason() {
        Some(reason) => Err(Error::Internal(format!("{reason}: the scenarios still running were killed"))),
        None => Ok(summaries),
    }
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("netfault"))
}

/// The guest's command: the suite, its reports in `--out/reports`, the summaries in `--out/summaries.json`.
pub fn guest_main(args: &[String]) -> ExitCode {
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let Some(out) = options.out else { return usage_error("the guest command needs --out") };
    if let Err(e) = supervise::catch_stop_signals() {
        eprintln!("netfault: {e}");
        return ExitCode::from(2);
    }
    let summaries = match run_suite(&options.paths, &out.join("reports"), options.jobs, options.slow, print_summary) {
        Ok(summaries) => summaries,
        Err(e) => {
            eprintln!("netfault: {e}");
            return ExitCode::from(2);
        }
    };
    let written = serde_json::to_string_pretty(&summaries)
        .map_err(|e| Error::Internal(format!("encode summaries: {e}")))
        .and_then(|json| {
            std::fs::write(out.join("summaries.json"), json)
                .context(|| format!("write {}/summaries.json", out.display()))
        });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netfault: {e}");
            ExitCode::from(2)
        }
    }
}

/// Builds the guest image for `kernel`, boots it and moves its reports to `reports/<release>/`.
fn run_in_vm(kernel: &kernel::Kernel, loaded: &[(Job, Plan)], options: &Options, reports: &Path) -> Result<Column> {
    let work = reports.join(format!(".vm-{}", kernel.release));
    if work.exists() {
        std::fs::remove_dir_all(&work).context(|| format!("rm -r {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).context(|| format!("mkdir -p {}", work.display()))?;
    let started = Instant::now();
    let image = guest_image(kernel, loaded, options)?;
    let initramfs = work.join("initramfs.cpio");
    let bytes = image.write(&initramfs)?;
    println!(
        "   initramfs {:.1} MiB in {:.1}s ({})",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        initramfs.display()
    );
    let limits: Vec<Duration> = loaded
        .iter()
        .filter(|(_, plan)| options.slow || !plan.slow)
        .map(|(_, plan)| plan.deadline + runner::CHILD_GRACE)
        .collect();
    let limit = supervise::default_budget(&limits) + runner::STOP_GRACE + VM_MARGIN;
    let machine = vm::Machine {
        image: kernel.image.clone(),
        initramfs: initramfs.clone(),
        cpus: VM_CPUS,
        memory_mib: VM_MEMORY_MIB,
    };
    let release = kernel.release.clone();
    let supervisor = Supervisor::new(limit + vm::BOOT_LIMIT);
    let booted =
        vm::boot(&machine, &work, options.accel, limit, &supervisor, |line| println!("   [{release}] {line}"))?;
    println!(
        "   {}: init after {:.1}s ({}), powered off after {:.1}s",
        kernel.release,
        booted.boot.as_secs_f64(),
        match booted.accel {
            vm::Accel::Kvm => "KVM",
            vm::Accel::Tcg => "TCG",
        },
        booted.total.as_secs_f64()
    );
    let guest_file = |name: &str| std::fs::read_to_string(booted.out.join(name)).unwrap_or_default().trim().to_string();
    if let Some(load) = load::GuestLoad::parse(&guest_file("load")) {
        println!("   {}: clocksource {}; during the suite: {load}", kernel.release, guest_file("clocksource"));
    }
    let guest_release = guest_file("release");
    let release = if guest_release.is_empty() { kernel.release.clone() } else { guest_release };
    let target = reports.join(&release);
    if target.exists() {
        std::fs::remove_dir_all(&target).context(|| format!("rm -r {}", target.display()))?;
    }
    let guest_reports = booted.out.join("reports");
    if guest_reports.is_dir() {
        std::fs::rename(&guest_reports, &target)
            .context(|| format!("mv {} {}", guest_reports.display(), target.display()))?;
    } else {
        std::fs::create_dir_all(&target).context(|| format!("mkdir -p {}", target.display()))?;
    }
    vm::save(&target.join("console.log"), &booted.console)?;
    let summaries_file = booted.out.join("summaries.json");
    let text = std::fs::read_to_string(&summaries_file).map_err(|e| {
        Error::Internal(format!(
            "the guest wrote no summaries ({e}); its console is in {}",
            target.join("console.log").display()
        ))
    })?;
    let mut summaries: Vec<Summary> =
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("the guest's summaries.json: {e}")))?;
    for summary in &mut summaries {
        if let Ok(relative) = summary.report.strip_prefix("/out/reports") {
            summary.report = target.join(relative);
        }
    }
    std::fs::remove_dir_all(&work).context(|| format!("rm -r {}", work.display()))?;
    Ok(Column { release, reports: target, summaries, broken: None })
}

/// The guest's root: busybox, this binary, the programs the scenarios `exec` (from this machine's PATH), the
/// kernel's modules and the scenario files; and the scenario paths as the guest sees them (under
/// [`GUEST_ROOT`]), so that scenario names are the same on every kernel.
fn guest_image(kernel: &kernel::Kernel, loaded: &[(Job, Plan)], options: &Options) -> Result<initramfs::Image> {
    let mut image = initramfs::Image::new();
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(Path::new).find(|p| p.is_file()).ok_or_else(|| {
            Error::Missing {
                what: "busybox".into(),
                hint: "apt-get install busybox-static (bash ci/setup.sh installs it)".into(),
            }
        })?;
    if !initramfs::shared_libraries(busybox)?.is_empty() {
        return Err(Error::Missing {
            what: "a static busybox".into(),
            hint: format!("{} is dynamically linked; apt-get install busybox-static", busybox.display()),
        });
    }
    image.copy(busybox, "/bin/busybox")?;
    image.file("/sbin/modprobe", vm::MODPROBE, 0o755);
    // This process's own image, even if its file was replaced (rebuilt) since it started.
    let own_image = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    image.program(&own_image, &format!("{GUEST_ROOT}/netfault"))?;
    for program in exec_programs(loaded).into_iter().chain(HELPER_PROGRAMS.map(String::from)).collect::<BTreeSet<_>>() {
        match vm::find_program(&program) {
            Some(host) => image.program(&host, &format!("/usr/local/bin/{program}"))?,
            // Not on this machine either: the scenario fails the same way in the VM as here.
            None => continue,
        }
    }
    let kernel_modules = modules::collect(&kernel.modules)?;
    let preload: Vec<&str> = vm::PRELOAD.into_iter().filter(|name| modules::provided(&kernel_modules, name)).collect();
    image.modules(kernel_modules, &modules::builtin(&kernel.modules)?);
    let mut guest_paths = Vec::new();
    for path in &options.paths {
        let absolute = path.canonicalize().context(|| format!("find {}", path.display()))?;
        let guest = absolute.to_string_lossy().trim_start_matches('/').to_string();
        if absolute.is_dir() {
            image.tree(&absolute, &format!("{GUEST_ROOT}/{guest}"))?;
        } else {
            image.copy(&absolute, &format!("{GUEST_ROOT}/{guest}"))?;
        }
        guest_paths.push(guest);
    }
    let mut command = format!("./netfault {GUEST_COMMAND} --out /out");
    if let Some(jobs) = options.jobs {
        command.push_str(&format!(" --jobs {jobs}"));
    }
    if options.slow {
        command.push_str(" --slow");
    }
    for path in &guest_paths {
        command.push_str(&format!(" '{path}'"));
    }
    image.file("/init", vm::init_script(&command, &preload), 0o755);
    Ok(image)
}

/// The programs the scenarios' `exec` steps run, by name (those given by path are the scenario's business).
fn exec_programs(loaded: &[(Job, Plan)]) -> BTreeSet<String> {
    loaded
        .iter()
        .flat_map(|(_, plan)| plan.hosts.iter().flat_map(|host| host.steps.iter()))
        .filter_map(|step| match &step.action {
            Action::Exec(exec) if !exec.program.contains('/') => Some(exec.program.clone()),
            _ => None,
        })
        .collect()
}

/// One row per scenario, one column per kernel: the verdict, the run's duration and the measured times of the
/// steps with a timing expectation (read from each report's result.json).
fn table(names: &[String], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            columns
                .iter()
                .map(|column| match column.summaries.iter().find(|s| &s.name == name) {
                    Some(summary) => cell(summary, &column.reports.join(name).join("result.json")),
                    None if column.broken.is_some() => "-".to_string(),
                    None => "missing".to_string(),
                })
                .collect()
        })
        .collect();
    let name_width = names.iter().map(String::len).max().unwrap_or(8).max("scenario".len());
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| cells.iter().map(|row| row[i].len()).chain([columns[i].release.len()]).max().unwrap_or(0))
        .collect();
    let mut text = format!("\n{:<name_width$}", "scenario");
    for (column, width) in columns.iter().zip(&widths) {
        text.push_str(&format!("  {:<width$}", column.release));
    }
    text.truncate(text.trim_end().len());
    text.push('\n');
    for (name, row) in names.iter().zip(&cells) {
        text.push_str(&format!("{name:<name_width$}"));
        for (cell, width) in row.iter().zip(&widths) {
            text.push_str(&format!("  {cell:<width$}"));
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
    }
    text.push('\n');
    text
}

/// `harness real-time CPU 12.3s: observe 5.1s, main 3.0s, ...` summed over the scenarios' result.json
/// (`realtime_cpu_ms`), the largest first; `None` when no report has the figure.
fn realtime_line(summaries: &[Summary]) -> Option<String> {
    let mut roles: BTreeMap<String, f64> = BTreeMap::new();
    for summary in summaries {
        let Some(result) = std::fs::read_to_string(summary.report.join("result.json"))
            .ok()
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
        else {
            continue;
        };
        for (role, ms) in result.get("realtime_cpu_ms").and_then(|v| v.as_object()).into_iter().flatten() {
            *roles.entry(role.clone()).or_default() += ms.as_f64().unwrap_or(0.0);
        }
    }
    if roles.is_empty() {
        return None;
    }
    let total: f64 = roles.values().sum();
    let mut roles: Vec<(String, f64)> = roles.into_iter().collect();
    roles.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = roles.iter().map(|(role, ms)| format!("{role} {:.1}s", ms / 1e3)).collect();
    Some(format!("harness real-time CPU {:.1}s: {}", total / 1e3, parts.join(", ")))
}

/// `PASS 14.48s (recv 14.39s)`: verdict, duration, and each step with a timing expectation, as measured.
fn cell(summary: &Summary, result_file: &Path) -> String {
    if summary.status == Status::NotApplicable {
        return "N/A".to_string();
    }
    let mut text = format!("{} {:.2}s", summary.status.label().trim_end(), summary.duration);
    let key_times = std::fs::read_to_string(result_file)
        .ok()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
        .map(|result| timed_steps(&result))
        .unwrap_or_default();
    text.push_str(&key_times_text(&key_times));
    text
}

/// How many of a scenario's timed steps a cell shows: impair/delay-jitter's eleven made every column of the
/// table 150 characters wide. The rest are counted; each kernel's result.json has them all.
const KEY_TIMES_SHOWN: usize = 3;

/// ` (recv 0.11s, recv 0.12s, recv 0.11s, 8 more)`, or nothing for no timed step.
fn key_times_text(key_times: &[String]) -> String {
    if key_times.is_empty() {
        return String::new();
    }
    let shown = key_times.len().min(KEY_TIMES_SHOWN);
    let more = key_times.len() - shown;
    let rest = if more > 0 { format!(", {more} more") } else { String::new() };
    format!(" ({}{rest})", key_times[..shown].join(", "))
}

/// `recv 14.39s` for every step of a result.json whose expectation has a time (`after` or `at`): the step's
/// duration for `after`, its end for `at`.
fn timed_steps(result: &serde_json::Value) -> Vec<String> {
    let Some(steps) = result.get("steps").and_then(|s| s.as_array()) else { return vec![] };
    steps
        .iter()
        .filter_map(|step| {
            let expected = step.get("expected")?.as_str()?;
            let action = step.get("action")?.as_str()?;
            let end = step.get("end")?.as_f64()?;
            let start = step.get("start")?.as_f64()?;
            if expected.contains(" after ") {
                Some(format!("{action} {:.2}s", end - start))
            } else if expected.contains(" at ") {
                Some(format!("{action} @{end:.2}s"))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, status: Status, duration: f64) -> Summary {
        Summary {
            name: name.into(),
            status,
            duration,
            setup_ms: 1.0,
            teardown_ms: 1.0,
            report: PathBuf::from("reports").join(name),
            messages: vec![],
        }
    }

    #[test]
    fn each_kernel_line_counts_errors_as_failures_and_not_applicable_apart() {
        let summaries = [
            summary("a", Status::Pass, 1.0),
            summary("b", Status::Fail, 1.0),
            summary("c", Status::Error, 0.0),
            summary("d", Status::NotApplicable, 0.0),
            summary("e", Status::Pass, 1.0),
        ];
        assert_eq!(
            Counts::of(&summaries).line("6.1.0-57-cloud-amd64"),
            "6.1.0-57-cloud-amd64: 2 passed, 2 failed, 1 not applicable"
        );
    }

    #[test]
    fn the_table_has_a_row_per_scenario_and_a_column_per_kernel() {
        let columns = [
            Column {
                release: "6.18.44".into(),
                reports: PathBuf::from("/nonexistent/6.18.44"),
                summaries: vec![
                    summary("keepalive/idle", Status::Pass, 14.3),
                    summary("pacing/orphan", Status::Pass, 12.0),
                ],
                broken: None,
            },
            Column {
                release: "6.1.0-57-cloud-amd64".into(),
                reports: PathBuf::from("/nonexistent/6.1"),
                summaries: vec![
                    summary("keepalive/idle", Status::Fail, 14.9),
                    summary("pacing/orphan", Status::NotApplicable, 0.0),
                ],
                broken: None,
            },
            Column { release: "6.12.1".into(), reports: PathBuf::new(), summaries: vec![], broken: Some("no".into()) },
        ];
        let names = ["keepalive/idle".to_string(), "pacing/orphan".to_string()];
        let text = table(&names, &columns);
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "scenario        6.18.44      6.1.0-57-cloud-amd64  6.12.1");
        assert_eq!(lines[1], "keepalive/idle  PASS 14.30s  FAIL 14.90s           -");
        assert_eq!(lines[2], "pacing/orphan   PASS 12.00s  N/A                   -");
    }

    #[test]
    fn timed_steps_are_read_from_result_json() {
        let result = serde_json::json!({ "steps": [
            { "action": "connect", "start": 0.01, "end": 0.02, "expected": "ok" },
            { "action": "recv", "start": 0.1, "end": 14.48, "expected": "ETIMEDOUT after 14.000000s -0.050000s/+0.800000s" },
            { "action": "poll", "start": 0.1, "end": 7.2, "expected": "timeout at 7.000000s +-0.25s" },
            { "action": "accept", "start": 0.1, "end": null, "expected": null },
        ]});
        assert_eq!(timed_steps(&result), vec!["recv 14.38s", "poll @7.20s"]);
    }

    #[test]
    fn a_cell_shows_the_first_timed_steps_and_counts_the_rest() {
        let times = |n: usize| (0..n).map(|i| format!("recv 0.{i}s")).collect::<Vec<_>>();
        assert_eq!(key_times_text(&[]), "");
        assert_eq!(key_times_text(&times(3)), " (recv 0.0s, recv 0.1s, recv 0.2s)");
        assert_eq!(key_times_text(&times(11)), " (recv 0.0s, recv 0.1s, recv 0.2s, 8 more)");
    }

    #[test]
    fn exec_programs_are_the_named_ones_of_every_scenario() {
        let plan = crate::scenario::parse(
            "t",
            Path::new("t.yaml"),
            "description: d\nclient:\n  - exec: { program: curl }\n  - exec: { program: /bin/true }\nserver:\n  - exec: { program: nc }\n",
        )
        .unwrap();
        let job = Job::new(PathBuf::from("t.yaml"), PathBuf::new(), PathBuf::new(), &plan, 0);
        assert_eq!(exec_programs(&[(job, plan)]).into_iter().collect::<Vec<_>>(), vec!["curl", "nc"]);
    }
}

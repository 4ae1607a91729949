//! The `netfault` command line (clap): run, check, list, test, bench, and the hidden per-scenario child
//! command. Exit status: 0 every scenario passed, 1 a scenario failed, 2 invalid input or a harness error,
//! 128 + N stopped by signal N.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

mod console;

use crate::report::{self, Status, Summary};
use crate::run::runner::{self, Job, RunEvent};
use crate::run::supervise::{self, Supervisor};
use crate::scenario::variables::Variables;
use console::Console;

const AFTER_HELP: &str = "\
PATH is a scenario file or a folder searched for *.yaml (default: scenarios). Reports go to
reports/<scenario>/: report.html, capture.pcapng, timeline.txt, result.json, scenario.yaml, environment.txt,
client.pcap, server.pcap.

Exit status: 0 every scenario passed; 1 a scenario failed; 2 invalid input (nothing was run), a harness error,
or the run's deadline passed; 128 + N stopped by signal N (SIGINT 130, SIGTERM 143).";

const RUN_AFTER_HELP: &str = "\
Each result is printed as its scenario finishes, then all of them in name order. On a terminal a progress
line shows what still runs, and verdicts are coloured (not with NO_COLOR set).

--deadline: past it every scenario still running is killed and reported, exit status 2; SIGINT and SIGTERM do
the same with exit status 128 + signal. The cargo-test driver takes its limit from NETFAULT_SUITE_DEADLINE.

--seed: the impairments' random decisions (loss, jitter, reordering, ...) come from it, packet by packet; the
same seed gives the same decision list. Without it a seed is chosen and printed; every result.json records it.
The cargo-test driver takes it from NETFAULT_SEED.

Exit status: 0 every scenario passed; 1 a scenario failed; 2 invalid input (nothing was run), a harness error,
or the deadline passed; 128 + N stopped by signal N.";

/// netfault: inject network faults into real Linux TCP stacks and record what the kernel did.
#[derive(Debug, Parser)]
#[command(name = "netfault", version = crate::version::LONG, after_help = AFTER_HELP, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios in parallel, each in namespaces of its own, and write their reports
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Validate scenarios without running anything (no namespace is created)
    Check(Paths),
    /// List scenarios with their deadline, `slow` mark and first description line
    List(Paths),
    /// The cargo-test driver (libtest-mimic) on any folder of scenarios
    Test(TestArgs),
    /// One report as a .tar.gz to attach to a bug report
    Bundle(BundleArgs),
    /// Measure netfault against the ip/nft/tcpdump recipe: `netfault bench --help`
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Run the scenarios on this kernel and on others, each booted in a qemu VM: `netfault matrix --help`
    #[command(disable_help_flag = true)]
    Matrix {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Runs the suite inside a matrix VM (what the guest's init starts)
    #[command(name = crate::matrix::GUEST_COMMAND, hide = true, disable_help_flag = true)]
    MatrixGuest {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Runs one scenario in this process (what `run` starts for each scenario)
    #[command(name = runner::CHILD_COMMAND, hide = true)]
    RunOne(runner::ChildArgs),
}

#[derive(Debug, Args)]
struct Paths {
    /// Scenario files, or folders searched for *.yaml
    #[arg(value_name = "PATH", default_value = "scenarios")]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// How many scenarios run at once [default: all of them]
    #[arg(short, long, value_name = "N", value_parser = positive)]
    jobs: Option<usize>,
    /// Where the reports go: DIR/<scenario>/
    #[arg(long, value_name = "DIR", default_value = "reports")]
    reports: PathBuf,
    /// The whole run's limit, e.g. 10m [default: from the scenarios' own deadlines]
    #[arg(long, value_name = "DURATION", value_parser = supervise::parse_budget)]
    deadline: Option<Duration>,
    /// Run each scenario N times (reports in DIR/<scenario>/run-<i>/); count passes, list the flaky
    #[arg(long, value_name = "N", value_parser = positive)]
    repeat: Option<usize>,
    /// Also run the minutes-long `slow: true` scenarios
    #[arg(long)]
    slow: bool,
    /// Seed of the impairments' random decisions [default: chosen and printed]
    #[arg(long, value_name = "N", value_parser = runner::parse_seed)]
    seed: Option<u64>,
    /// Write DIR/<scenario>.tar.gz (as `netfault bundle`) for each scenario that fails
    #[arg(long)]
    bundle_failures: bool,
    #[command(flatten)]
    paths: Paths,
}

#[derive(Debug, Args)]
struct BundleArgs {
    /// A report folder, e.g. reports/keepalive/idle
    #[arg(value_name = "REPORT_DIR")]
    report: PathBuf,
    /// The archive to write [default: <REPORT_DIR's name>.tar.gz]
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A capture.pcapng larger than this goes in with frames cut to 160 bytes, and at most this large
    #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = crate::scenario::size::parse_size,
          conflicts_with = "whole_capture")]
    max_capture: u64,
    /// Bundle capture.pcapng whole, whatever its size
    #[arg(long)]
    whole_capture: bool,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The folder scenario names are relative to
    #[arg(long, value_name = "DIR", default_value = "scenarios")]
    root: PathBuf,
    /// Where the reports go: DIR/<scenario>/
    #[arg(long, value_name = "DIR", default_value = "reports")]
    reports: PathBuf,
    /// libtest arguments: a filter, --exact, --list, --ignored, --include-ignored, --test-threads N, ...
    #[arg(last = true, value_name = "LIBTEST-ARGS")]
    libtest: Vec<String>,
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    text.parse().ok().filter(|n| *n > 0).ok_or(format!("{text:?} is not a positive number"))
}

/// Parses `std::env::args()` and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(refused_or_help) => return clap_exit(&refused_or_help),
    };
    match cli.command {
        // These two run socket programs in this process: a write to a reset socket must give EPIPE, not kill it.
        Command::RunOne(args) => return child(args),
        Command::Bench { args } => return bench(&args),
        _ => {}
    }
    // Everything else only prints: a closed pipe (`netfault list | head -1`) ends it quietly, as it ends
    // any Unix tool, instead of a panic in println!.
    // SAFETY: restores the default action of one signal before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    end_on_failed_output();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(paths) => check(&paths.paths),
        Command::List(paths) => list(&paths.paths),
        Command::Test(args) => test(args),
        Command::Bundle(args) => bundle(args),
        Command::Matrix { args } => crate::matrix::main(&args),
        Command::MatrixGuest { args } => crate::matrix::guest_main(&args),
        Command::Bench { .. } | Command::RunOne(_) => unreachable!("handled above"),
    }
}

/// `--help`, `--version`, or arguments clap refused: its text and its status (0, or 2), as `Cli::parse` would
/// give them, but for a text that cannot be written (`> file` on a full disk), which is a harness error (2).
/// A closed pipe is not (`netfault --help | head -1`).
fn clap_exit(error: &clap::Error) -> ExitCode {
    let status = ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    match error.print() {
        Ok(()) => status,
        Err(write) if write.kind() == std::io::ErrorKind::BrokenPipe => status,
        Err(write) => {
            let _ =
                writeln!(std::io::stderr(), "netfault: failed printing to stdout: {write}: the output is incomplete");
            ExitCode::from(2)
        }
    }
}

/// A write of the results that fails (`> file` on a full disk: `println!` panics) ends the command as a harness
/// error, exit 2, saying what failed, rather than as a panic (exit 101). Any other panic is reported as before.
fn end_on_failed_output() {
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        match message {
            Some(message) if message.starts_with("failed printing to std") => {
                // Where stderr fails too, the exit status is all that is left to say it.
                let _ = writeln!(std::io::stderr(), "netfault: {message}: the output is incomplete");
                std::process::exit(2);
            }
            _ => report_panic(info),
        }
    }));
}

#[cfg(feature = "bench")]
fn bench(args: &[String]) -> ExitCode {
    crate::bench::main(args)
}

#[cfg(not(feature = "bench"))]
fn bench(_: &[String]) -> ExitCode {
    eprintln!("netfault: this netfault was built without benchmarks: cargo build --release --features bench");
    ExitCode::from(2)
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("netfault"))
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = runner::check_reports_folder(&args.reports) {
        eprintln!("netfault: {e}; nothing was run");
        return ExitCode::from(2);
    }
    // Made while the scenarios load.
    let parent = runner::start_private_parent();
    let tracer = runner::start_tracer_programs(&args.paths.paths, args.repeat);
    let Some(loaded) = load_or_report(&args.paths.paths) else {
        return ExitCode::from(2);
    };
    if let Some(repeat) = args.repeat {
        if let Err(e) = runner::check_repeat(repeat, loaded.len()) {
            eprintln!("netfault: {e}; nothing was run");
            return ExitCode::from(2);
        }
    }
    let reports = args.reports;
    let seed = args.seed.unwrap_or_else(runner::fresh_seed);
    if loaded.iter().any(|(_, plan)| plan.has_impairments()) {
        println!("impairments seeded with {seed} (--seed {seed} repeats their decisions)");
    }
    let (loaded, skipped): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(_, plan)| args.slow || !plan.slow);
    // Each job's scenario process is forked with the plan loaded here (`runner::start_fork_server`).
    let loaded: Vec<(Job, crate::scenario::plan::Plan)> = loaded
        .into_iter()
        .enumerate()
        .map(|(index, (job, plan))| (Job { reports: reports.clone(), seed, forked_plan: Some(index), ..job }, plan))
        .collect();
    let mut jobs: Vec<(Job, Duration)> = Vec::new();
    let mut runs: Vec<(String, usize)> = Vec::new();
    match args.repeat {
        None => {
            for (job, plan) in &loaded {
                jobs.push((job.clone(), plan.deadline));
                runs.push((plan.name.clone(), 1));
            }
        }
        Some(repeat) => {
            for (_, plan) in &loaded {
                if let Err(e) = clear_report(&reports, &plan.name) {
                    eprintln!("netfault: {e}");
                    return ExitCode::from(2);
                }
            }
            for run in 1..=repeat {
                for (job, plan) in &loaded {
                    jobs.push((Job { run: Some(run), ..job.clone() }, plan.deadline));
                    runs.push((plan.name.clone(), run));
                }
            }
        }
    }
    let parallel = args.jobs.unwrap_or_else(|| runner::default_parallelism(jobs.len()));
    let limits: Vec<Duration> = jobs.iter().map(|(_, deadline)| *deadline + runner::CHILD_GRACE).collect();
    let supervisor = Supervisor::new(args.deadline.unwrap_or_else(|| supervise::default_budget(&limits)));
    runner::share_private_parent(parent, tracer);
    runner::start_fork_server(loaded);
    if let Err(e) = supervise::catch_stop_signals().and_then(|()| supervisor.start_watchdog(runner::STOP_GRACE)) {
        eprintln!("netfault: {e}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let names =
        runs.iter().map(|(name, run)| if args.repeat.is_some() { format!("{name} #{run}") } else { name.clone() });
    let mut console = Console::new(names.collect());
    let summaries = runner::run_all(&exe(), jobs, parallel, &supervisor, |event| match event {
        RunEvent::Started(index) => console.started(index),
        RunEvent::Finished(index, summary) => console.finished(index, summary),
        RunEvent::Idle => console.redraw(),
    });
    console.clear();
    if supervisor.stop_reason().is_none() {
        runner::release_fork_server();
    }
    if args.bundle_failures {
        for summary in summaries.iter().filter(|s| s.status != Status::Pass) {
            let out = summary.report.with_extension("tar.gz");
            match report::bundle::write_bundle(&summary.report, &out, Some(report::bundle::DEFAULT_CAPTURE_CAP)) {
                Ok(bundled) => println!("bundle {} ({} bytes)", bundled.path.display(), bundled.bytes),
                Err(e) => eprintln!("netfault: no bundle for {}: {e}", summary.name),
            }
        }
    }
    let count = |status| summaries.iter().filter(|s| s.status == status).count();
    let (passed, failed, errors) = (count(Status::Pass), count(Status::Fail), count(Status::Error));
    let not_applicable = match count(Status::NotApplicable) {
        0 => String::new(),
        n => format!(", {n} not applicable"),
    };
    let longest = summaries.iter().map(|s| s.duration).fold(0.0, f64::max);
    match args.repeat {
        Some(repeat) => print!("{}", repeat_table(&runs, &summaries, repeat, parallel)),
        None => print!("{}", sorted_summary(&summaries, console.colour())),
    }
    let skipped = match skipped.len() {
        0 => String::new(),
        n => format!(", {n} slow skipped (--slow runs them)"),
    };
    println!(
        "\n{passed} passed, {} failed{not_applicable}{skipped}; wall time {:.2}s, longest scenario {longest:.2}s",
        failed + errors,
        started.elapsed().as_secs_f64()
    );
    if let Some(reason) = supervisor.stop_reason() {
        runner::stop_fork_server();
        let stopped = summaries.iter().filter(|s| s.messages.iter().any(|m| m.starts_with("stopped: "))).count();
        let unstarted = summaries.iter().filter(|s| s.messages.iter().any(|m| m.starts_with("not started: "))).count();
        eprintln!(
            "netfault: {reason}: {stopped} running scenario(s) killed, {unstarted} not started; \
             nothing of theirs is left running"
        );
        return ExitCode::from(reason.exit_code());
    }
    if errors > 0 {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `netfault bundle REPORT_DIR [-o FILE] [--max-capture SIZE | --whole-capture]`.
fn bundle(args: BundleArgs) -> ExitCode {
    let out = args.output.unwrap_or_else(|| {
        let name = args.report.file_name().map_or("report".into(), |n| n.to_string_lossy().into_owned());
        PathBuf::from(format!("{name}.tar.gz"))
    });
    let cap = (!args.whole_capture).then_some(args.max_capture);
    match report::bundle::write_bundle(&args.report, &out, cap) {
        Ok(bundled) => {
            println!("{} ({} bytes)", bundled.path.display(), bundled.bytes);
            if let Some((kept, total)) = bundled.capture_cut {
                println!(
                    "capture.pcapng over the cap: {kept} of {total} frames, cut to {} bytes each \
                     (--whole-capture bundles it whole)",
                    report::bundle::HEADERS_SNAPLEN
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netfault bundle: {e}");
            ExitCode::from(2)
        }
    }
}

/// The end of a run: every scenario's result line in name order, each failure's first line under it.
fn sorted_summary(summaries: &[Summary], colour: bool) -> String {
    let mut sorted: Vec<&Summary> = summaries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = format!("\nall {} in name order:\n", sorted.len());
    for summary in sorted {
        text.push_str(&console::result_line(summary, colour));
        text.push('\n');
        for message in &summary.messages {
            if let Some(first) = message.lines().next() {
                text.push_str(&format!("      {}\n", crate::scenario::printable(first)));
            }
        }
    }
    text
}

/// Removes what an earlier `--repeat` left of netfault's own files in `reports/<scenario>/run-*/`.
fn clear_report(reports: &Path, name: &str) -> crate::error::Result<()> {
    report::files::clear_runs(&report::report_dir(reports, name)?)
}

/// The end of `run --repeat`: per scenario, how many of its runs passed, failed and errored, then the flaky
/// ones (some runs passed, some did not) and those that never passed, with what each bad run said first.
/// `runs[i]` is the scenario and repetition of `summaries[i]`.
fn repeat_table(runs: &[(String, usize)], summaries: &[Summary], repeat: usize, parallel: usize) -> String {
    let mut rows: Vec<(&str, [usize; 3], Vec<String>)> = Vec::new();
    for ((name, run), summary) in runs.iter().zip(summaries) {
        let row = match rows.iter().position(|(n, _, _)| n == name) {
            Some(position) => position,
            None => {
                rows.push((name, [0; 3], Vec::new()));
                rows.len() - 1
            }
        };
        let (_, counts, bad) = &mut rows[row];
        match summary.status {
            Status::Pass | Status::NotApplicable => counts[0] += 1,
            Status::Fail => counts[1] += 1,
            Status::Error => counts[2] += 1,
        }
        if !matches!(summary.status, Status::Pass | Status::NotApplicable) {
            let first = summary.messages.first().and_then(|m| m.lines().next()).unwrap_or("no message");
            bad.push(format!("{}: {first}", runner::run_folder(*run)));
        }
    }
    let mut text = format!("\n{repeat} runs of each of {} scenario(s), {parallel} at a time:\n", rows.len());
    text.push_str(&format!("{:<40} {:>5} {:>5} {:>5}\n", "scenario", "pass", "fail", "error"));
    for (name, [pass, fail, error], _) in &rows {
        text.push_str(&format!("{name:<40} {pass:>5} {fail:>5} {error:>5}\n"));
    }
    let flaky: Vec<_> = rows.iter().filter(|(_, [pass, ..], _)| *pass > 0 && *pass < repeat).collect();
    let broken: Vec<_> = rows.iter().filter(|(_, [pass, ..], _)| *pass == 0).collect();
    for (title, list) in [("flaky", &flaky), ("never passed", &broken)] {
        text.push_str(&format!("{title}: {}\n", list.len()));
        for (name, [pass, ..], bad) in list.iter() {
            text.push_str(&format!("  {name}: {pass}/{repeat} passed\n"));
            for line in bad {
                text.push_str(&format!("    {line}\n"));
            }
        }
    }
    text
}

/// Loads every scenario under `paths`, printing what was skipped, or prints every invalid one with where and
/// what (stderr).
fn load_or_report(paths: &[PathBuf]) -> Option<Vec<(Job, crate::scenario::plan::Plan)>> {
    let loaded = runner::load_all(paths, &Variables::from_environment());
    for skipped in &loaded.skipped {
        eprintln!("netfault: {skipped}");
    }
    match loaded.into_result() {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("netfault: {} invalid scenario(s); nothing was run", errors.len());
            None
        }
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let Some(loaded) = load_or_report(paths) else {
        return ExitCode::from(2);
    };
    println!("{} scenario(s) valid", loaded.len());
    ExitCode::SUCCESS
}

fn list(paths: &[PathBuf]) -> ExitCode {
    let Some(loaded) = load_or_report(paths) else {
        return ExitCode::from(2);
    };
    for (_, plan) in loaded {
        let first_line = plan.description.lines().next().unwrap_or_default();
        let slow = if plan.slow { " slow" } else { "" };
        println!(
            "{:<40} {:>5}s{slow:<5}  {}",
            crate::scenario::printable(&plan.name),
            plan.deadline.as_secs(),
            crate::scenario::printable(first_line)
        );
    }
    ExitCode::SUCCESS
}

fn test(args: TestArgs) -> ExitCode {
    let libtest = libtest_mimic::Arguments::from_iter(std::iter::once("netfault-test".to_string()).chain(args.libtest));
    runner::test_main(&args.root, &args.reports, &exe(), &Variables::from_environment(), libtest)
}

fn child(args: runner::ChildArgs) -> ExitCode {
    runner::child_main(&Job::from(args), &Variables::from_environment())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, status: Status, message: &str) -> Summary {
        Summary {
            name: name.into(),
            status,
            duration: 1.0,
            setup_ms: 1.0,
            teardown_ms: 1.0,
            report: PathBuf::from("reports").join(name),
            messages: if message.is_empty() { vec![] } else { vec![format!("{message}\n  timeline around 1s:")] },
        }
    }

    #[test]
    fn repeat_table_counts_each_scenario_and_lists_the_flaky_ones_with_their_bad_runs() {
        let runs: Vec<(String, usize)> = [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("c", 2)]
            .iter()
            .map(|(name, run)| (name.to_string(), *run))
            .collect();
        let summaries = vec![
            summary("a", Status::Pass, ""),
            summary("b", Status::Pass, ""),
            summary("c", Status::Fail, "c.yaml:3:5: line 3: wrong"),
            summary("a", Status::Pass, ""),
            summary("b", Status::Error, "stopped: interrupted by SIGINT"),
            summary("c", Status::Fail, "c.yaml:3:5: line 3: wrong"),
        ];
        let table = repeat_table(&runs, &summaries, 2, 6);
        assert!(table.contains("2 runs of each of 3 scenario(s), 6 at a time:"), "{table}");
        assert!(table.contains(&format!("{:<40} {:>5} {:>5} {:>5}", "a", 2, 0, 0)), "{table}");
        assert!(table.contains(&format!("{:<40} {:>5} {:>5} {:>5}", "b", 1, 0, 1)), "{table}");
        assert!(table.contains(&format!("{:<40} {:>5} {:>5} {:>5}", "c", 0, 2, 0)), "{table}");
        assert!(
            table.contains("flaky: 1\n  b: 1/2 passed\n    run-2: stopped: interrupted by SIGINT\n"),
            "only the first line of a message: {table}"
        );
        assert!(table.contains("never passed: 1\n  c: 0/2 passed\n    run-1: c.yaml:3:5: line 3: wrong\n"), "{table}");
    }
}

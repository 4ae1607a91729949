//! The `netfault` command line: run, check, list, test, and the hidden per-scenario child command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::report::{self, Status, Summary};
use crate::runner::{self, Job};
use crate::supervise::{self, Supervisor};

const USAGE: &str = "\
netfault: inject network faults into real Linux TCP stacks and record what the kernel did

usage:
  netfault run [--jobs N] [--reports DIR] [--deadline DURATION] [--repeat N] [--slow] [--seed N] [PATH...]
                                                      run scenarios (default: scenarios/) in parallel;
                                                      `slow: true` ones only with --slow
  netfault check [PATH...]                            validate scenarios without running anything
  netfault list [PATH...]                             list scenarios with their deadline and whether slow
  netfault test [--root DIR] [--reports DIR] [-- LIBTEST-ARGS...]
                                                      the cargo-test driver on any folder of scenarios
  netfault bench setup|suite|capture|timing [...]     measure netfault against the ip/nft/tcpdump recipe

PATH is a scenario file or a folder searched for *.yaml. Reports go to reports/<scenario>/
(timeline.txt, result.json, client.pcap, server.pcap). Exit status: 0 all passed, 1 a scenario failed,
2 invalid input or a harness error.

run --deadline: the whole run's limit (e.g. 10m; default: from the scenarios' own deadlines); past it every
scenario still running is killed and reported, exit status 2. SIGINT / SIGTERM do the same, exit status
128 + signal. The cargo-test driver takes its limit from NETFAULT_SUITE_DEADLINE.
run --repeat N: each scenario N times (all at once unless --jobs), reports in reports/<scenario>/run-<i>/;
ends with each scenario's pass count and the list of flaky ones.
run --seed N: the impairments' random decisions (loss, jitter, ...) come from N, packet by packet; without it
a seed is chosen and printed, and every result.json records it. The cargo-test driver reads NETFAULT_SEED.";

/// Parses `std::env::args()` and runs the command.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match command.as_str() {
        "run" => run(rest),
        "check" => check(rest),
        "list" => list(rest),
        "test" => test(rest),
        "bench" => crate::bench::main(rest),
        runner::CHILD_COMMAND => child(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => usage_error(&format!("unknown command {other:?}")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("netfault: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Options shared by the commands, and the positional paths.
#[derive(Debug, Default)]
struct Options {
    jobs: Option<usize>,
    reports: Option<PathBuf>,
    deadline: Option<Duration>,
    repeat: Option<usize>,
    run: Option<usize>,
    seed: Option<u64>,
    root: Option<PathBuf>,
    /// `--slow`: run the minutes-long `slow: true` scenarios too.
    slow: bool,
    paths: Vec<PathBuf>,
    passthrough: Vec<String>,
}

fn parse_options(args: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--" if allowed.contains(&"--") => {
                options.passthrough = iter.by_ref().cloned().collect();
            }
            "--jobs" | "-j" if allowed.contains(&"--jobs") => {
                let text = value(arg)?;
                let jobs =
                    text.parse().ok().filter(|n| *n > 0).ok_or(format!("--jobs {text:?}: need a positive number"))?;
                options.jobs = Some(jobs);
            }
            "--reports" if allowed.contains(&"--reports") => options.reports = Some(PathBuf::from(value(arg)?)),
            "--deadline" if allowed.contains(&"--deadline") => {
                options.deadline = Some(supervise::parse_budget(&value(arg)?)?);
            }
            "--repeat" if allowed.contains(&"--repeat") => {
                let text = value(arg)?;
                let repeat =
                    text.parse().ok().filter(|n| *n > 0).ok_or(format!("--repeat {text:?}: need a positive number"))?;
                options.repeat = Some(repeat);
            }
            "--run" if allowed.contains(&"--run") => {
                let text = value(arg)?;
                options.run = Some(text.parse().map_err(|_| format!("--run {text:?}: need a number"))?);
            }
            "--root" if allowed.contains(&"--root") => options.root = Some(PathBuf::from(value(arg)?)),
            "--seed" if allowed.contains(&"--seed") => options.seed = Some(runner::parse_seed(&value(arg)?)?),
            "--slow" if allowed.contains(&"--slow") => options.slow = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            path => options.paths.push(PathBuf::from(path)),
        }
    }
    if options.paths.is_empty() {
        options.paths.push(PathBuf::from("scenarios"));
    }
    Ok(options)
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("netfault"))
}

fn run(args: &[String]) -> ExitCode {
    let options = match parse_options(args, &["--jobs", "--reports", "--deadline", "--repeat", "--slow", "--seed"]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let loaded = match runner::load_all(&options.paths) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("netfault: {} invalid scenario(s); nothing was run", errors.len());
            return ExitCode::from(2);
        }
    };
    let reports = options.reports.unwrap_or_else(|| PathBuf::from("reports"));
    let seed = options.seed.unwrap_or_else(crate::impair::rng::fresh_seed);
    if loaded.iter().any(|(_, plan)| plan.has_impairments()) {
        println!("impairments seeded with {seed} (--seed {seed} repeats their decisions)");
    }
    let (loaded, skipped): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(_, plan)| options.slow || !plan.slow);
    let mut jobs: Vec<(Job, Duration)> = Vec::new();
    let mut runs: Vec<(String, usize)> = Vec::new();
    match options.repeat {
        None => {
            for (job, plan) in loaded {
                jobs.push((Job { reports: reports.clone(), seed, ..job }, plan.deadline));
                runs.push((plan.name, 1));
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
                    jobs.push((Job { reports: reports.clone(), run: Some(run), seed, ..job.clone() }, plan.deadline));
                    runs.push((plan.name.clone(), run));
                }
            }
        }
    }
    let parallel = options.jobs.unwrap_or_else(|| runner::default_parallelism(jobs.len()));
    let limits: Vec<Duration> = jobs.iter().map(|(_, deadline)| *deadline + runner::CHILD_GRACE).collect();
    let supervisor = Supervisor::new(options.deadline.unwrap_or_else(|| supervise::default_budget(&limits, parallel)));
    if let Err(e) = supervise::catch_stop_signals().and_then(|()| supervisor.start_watchdog(runner::STOP_GRACE)) {
        eprintln!("netfault: {e}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let summaries = runner::run_all(&exe(), jobs, parallel, &supervisor, |summary| {
        let status = match summary.status {
            Status::Pass => "PASS ",
            Status::Fail => "FAIL ",
            Status::Error => "ERROR",
        };
        println!("{status} {:<40} {:>8.3}s  {}", summary.name, summary.duration, summary.report.display());
        for message in &summary.messages {
            for line in message.lines() {
                println!("      {line}");
            }
        }
    });
    let count = |status| summaries.iter().filter(|s| s.status == status).count();
    let (passed, failed, errors) = (count(Status::Pass), count(Status::Fail), count(Status::Error));
    let longest = summaries.iter().map(|s| s.duration).fold(0.0, f64::max);
    if let Some(repeat) = options.repeat {
        print!("{}", repeat_table(&runs, &summaries, repeat, parallel));
    }
    let skipped = match skipped.len() {
        0 => String::new(),
        n => format!(", {n} slow skipped (--slow runs them)"),
    };
    println!(
        "\n{passed} passed, {} failed{skipped}; wall time {:.2}s, longest scenario {longest:.2}s",
        failed + errors,
        started.elapsed().as_secs_f64()
    );
    if let Some(reason) = supervisor.stop_reason() {
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

/// Removes the scenario's old report folder (`rm -r reports/<scenario>`) before its repetitions fill it.
fn clear_report(reports: &Path, name: &str) -> crate::error::Result<()> {
    let dir = report::report_dir(reports, name)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| crate::error::Error::sys(format!("clear old report (rm -r {})", dir.display()), e))?;
    }
    Ok(())
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
            Status::Pass => counts[0] += 1,
            Status::Fail => counts[1] += 1,
            Status::Error => counts[2] += 1,
        }
        if summary.status != Status::Pass {
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

fn check(args: &[String]) -> ExitCode {
    let options = match parse_options(args, &[]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    match runner::load_all(&options.paths) {
        Ok(loaded) => {
            println!("{} scenario(s) valid", loaded.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            ExitCode::from(2)
        }
    }
}

fn list(args: &[String]) -> ExitCode {
    let options = match parse_options(args, &[]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    match runner::load_all(&options.paths) {
        Ok(loaded) => {
            for (_, plan) in loaded {
                let first_line = plan.description.lines().next().unwrap_or_default();
                let slow = if plan.slow { " slow" } else { "" };
                println!("{:<40} {:>5}s{slow:<5}  {first_line}", plan.name, plan.deadline.as_secs());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            ExitCode::from(2)
        }
    }
}

fn test(args: &[String]) -> ExitCode {
    let options = match parse_options(args, &["--root", "--reports", "--"]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let root = options.root.unwrap_or_else(|| PathBuf::from("scenarios"));
    let reports = options.reports.unwrap_or_else(|| PathBuf::from("reports"));
    let mut libtest_args = vec!["netfault-test".to_string()];
    libtest_args.extend(options.passthrough);
    let args = libtest_mimic::Arguments::from_iter(libtest_args);
    runner::test_main(&root, &reports, &exe(), args)
}

fn child(args: &[String]) -> ExitCode {
    let options = match parse_options(args, &["--root", "--reports", "--run", "--seed"]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let root = options.root.unwrap_or_else(|| PathBuf::from("."));
    let reports = options.reports.unwrap_or_else(|| PathBuf::from("reports"));
    match options.paths.as_slice() {
        [file] => runner::child_main(&root, &reports, Path::new(file), options.run, options.seed.unwrap_or_default()),
        _ => usage_error("the child command runs exactly one scenario file"),
    }
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

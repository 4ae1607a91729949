//! The `netfault` command line: run, check, list, test, and the hidden per-scenario child command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::report::Status;
use crate::runner::{self, Job};

const USAGE: &str = "\
netfault: inject network faults into real Linux TCP stacks and record what the kernel did

usage:
  netfault run [--jobs N] [--reports DIR] [PATH...]   run scenarios (default: scenarios/) in parallel
  netfault check [PATH...]                            validate scenarios without running anything
  netfault list [PATH...]                             list scenarios with their deadline and whether slow
  netfault test [--root DIR] [--reports DIR] [-- LIBTEST-ARGS...]
                                                      the cargo-test driver on any folder of scenarios
  netfault bench setup|suite|capture|timing [...]     measure netfault against the ip/nft/tcpdump recipe

PATH is a scenario file or a folder searched for *.yaml. Reports go to reports/<scenario>/
(timeline.txt, result.json, client.pcap, server.pcap). Exit status: 0 all passed, 1 a scenario failed,
2 invalid input or a harness error.";

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
    root: Option<PathBuf>,
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
                let jobs = text.parse().ok().filter(|n| *n > 0).ok_or(format!("--jobs {text:?}: need a positive number"))?;
                options.jobs = Some(jobs);
            }
            "--reports" if allowed.contains(&"--reports") => options.reports = Some(PathBuf::from(value(arg)?)),
            "--root" if allowed.contains(&"--root") => options.root = Some(PathBuf::from(value(arg)?)),
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
    let options = match parse_options(args, &["--jobs", "--reports"]) {
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
    let jobs: Vec<(Job, std::time::Duration)> = loaded
        .into_iter()
        .map(|(job, plan)| (Job { reports: reports.clone(), ..job }, plan.deadline))
        .collect();
    let parallel = options.jobs.unwrap_or_else(|| runner::default_parallelism(jobs.len()));
    let started = Instant::now();
    let summaries = runner::run_all(&exe(), jobs, parallel, |summary| {
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
    println!(
        "\n{passed} passed, {} failed; wall time {:.2}s, longest scenario {longest:.2}s",
        failed + errors,
        started.elapsed().as_secs_f64()
    );
    if errors > 0 {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
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
    let options = match parse_options(args, &["--root", "--reports"]) {
        Ok(options) => options,
        Err(e) => return usage_error(&e),
    };
    let root = options.root.unwrap_or_else(|| PathBuf::from("."));
    let reports = options.reports.unwrap_or_else(|| PathBuf::from("reports"));
    match options.paths.as_slice() {
        [file] => runner::child_main(&root, &reports, Path::new(file)),
        _ => usage_error("the child command runs exactly one scenario file"),
    }
}

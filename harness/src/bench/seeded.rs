//! `netfault bench seeded`: the scenarios of a folder run N times with one seed; for each scenario, how many
//! pairs of runs made the same decisions about the packets both sent ([`crate::report::agreement`]), how
//! many decisions each pair compared, and how many were about packets only one of the two runs sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::suite::{describe_failures, exe, BENCH_BUDGET};
use super::{interrupted, Comparison, Report, ScratchDir};
use crate::error::{Error, Result};
use crate::report::agreement;
use crate::run::runner::{self, Job};
use crate::run::supervise::Supervisor;
use crate::scenario::variables::Variables;

/// What `netfault bench seeded` runs.
#[derive(Debug, Clone)]
pub struct SeededOptions {
    pub runs: usize,
    /// A folder of scenarios (or one file).
    pub path: PathBuf,
}

/// One scenario's figures over every pair of runs.
#[derive(Debug, Default)]
struct Pairs {
    pairs: usize,
    identical: usize,
    agreed: Vec<f64>,
    unmatched: Vec<f64>,
    first_difference: Option<String>,
}

pub fn bench_seeded(options: &SeededOptions) -> Result<Report> {
    let mut report = Report::new("seeded");
    let exe = exe()?;
    let loaded = runner::load_all(std::slice::from_ref(&options.path), &Variables::from_environment())
        .into_result()
        .map_err(|errors| Error::Internal(format!("invalid scenarios: {}", errors.join("; "))))?;
    let scratch = ScratchDir::new("seeded")?;
    let mut results: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut failures = Vec::new();
    for run in 0..options.runs {
        if interrupted() {
            break;
        }
        let reports = scratch.path().join(format!("run{run}"));
        let jobs: Vec<(Job, Duration)> = loaded
            .iter()
            .map(|(job, plan)| {
                (Job { reports: reports.clone(), seed: super::BENCH_SEED, ..job.clone() }, plan.deadline)
            })
            .collect();
        let parallel = runner::default_parallelism(jobs.len());
        let summaries = runner::run_all(&exe, jobs, parallel, &Supervisor::new(BENCH_BUDGET), |_| {});
        failures.extend(describe_failures(&summaries, &format!("run {}", run + 1)));
        for summary in summaries {
            let path = summary.report.join("result.json");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::sys(format!("read {}", path.display()), e))?;
            let result: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Internal(format!("{}: not JSON: {e}", path.display())))?;
            results.entry(summary.name).or_default().push(result);
        }
    }
    let mut all = Pairs::default();
    for (scenario, runs) in &results {
        let mut pairs = Pairs::default();
        for i in 0..runs.len() {
            for j in i + 1..runs.len() {
                let agreement =
                    agreement::compare(&runs[i], &runs[j]).map_err(|e| Error::Internal(format!("{scenario}: {e}")))?;
                pairs.pairs += 1;
                pairs.identical += usize::from(agreement.identical());
                pairs.agreed.push(agreement.agreed as f64);
                pairs.unmatched.push(agreement.unmatched as f64);
                if pairs.first_difference.is_none() {
                    pairs.first_difference = agreement.differing.first().map(|d| format!("runs {i} and {j}: {d}"));
                }
            }
        }
        report.row(format!("{scenario}: decisions compared per pair"), "", &pairs.agreed);
        report.row(format!("{scenario}: decisions about packets only one run sent"), "", &pairs.unmatched);
        let queue_full: usize = runs
            .iter()
            .flat_map(|run| run["decisions"].as_array().into_iter().flatten())
            .filter(|decision| decision["decision"] == "queue-full")
            .count();
        let queue_full = if queue_full > 0 {
            format!("; {queue_full} queue-full drops in the {} runs (timing) not compared", runs.len())
        } else {
            String::new()
        };
        report.compare(Comparison {
            what: format!("{scenario}: {} runs with --seed {}", runs.len(), super::BENCH_SEED),
            netfault: format!("{}/{} pairs identical{queue_full}", pairs.identical, pairs.pairs),
            alternative: "-".into(),
            ratio: None,
            target: "every pair identical".into(),
            met: pairs.identical == pairs.pairs,
        });
        if let Some(difference) = &pairs.first_difference {
            report.note(format!("{scenario}: first difference"), difference.clone());
        }
        all.pairs += pairs.pairs;
        all.identical += pairs.identical;
    }
    report.compare(Comparison {
        what: format!("{} scenarios under {}, {} runs each", results.len(), options.path.display(), options.runs),
        netfault: format!("{}/{} pairs identical", all.identical, all.pairs),
        alternative: "-".into(),
        ratio: None,
        target: "every pair identical".into(),
        met: all.identical == all.pairs,
    });
    report.note("runs not passing (a failed run's decisions are compared all the same)", failures.len().to_string());
    for failure in failures {
        report.note("not passed", failure);
    }
    report.extra = json!({ "seed": super::BENCH_SEED, "runs": options.runs });
    Ok(report.finish())
}

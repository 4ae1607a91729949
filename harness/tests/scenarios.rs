//! `cargo test`: every YAML file under scenarios/ is one trial, run in its own child process (this test binary
//! re-executed, as a downstream crate's `netfault::scenarios!` target does). Every result.json the run wrote
//! must then validate against the checked-in schema, or the run fails.

mod contract;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

fn main() -> ExitCode {
    let started = SystemTime::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reports =
        std::env::var_os(netfault::testing::REPORTS_ENV).map_or_else(|| workspace.join("reports"), PathBuf::from);
    let code = netfault::testing::Suite::new(workspace.join("scenarios"))
        .reports(&reports)
        .bin("netfault", env!("CARGO_BIN_EXE_netfault"))
        .main();
    let mut written = Vec::new();
    results_since(&reports, started, &mut written);
    let broken: Vec<String> = written.iter().filter_map(|path| contract::checked_result(path).err()).collect();
    if broken.is_empty() {
        if !written.is_empty() {
            eprintln!("result.json: the {} files this run wrote match result.schema.json", written.len());
        }
        return code;
    }
    eprintln!("{} of the {} result.json files this run wrote break the contract:", broken.len(), written.len());
    for message in broken {
        eprintln!("{message}");
    }
    ExitCode::FAILURE
}

/// Every published result.json under `dir` written at or after `since`. Staging folders (`.netfault-partial`)
/// are left out: a scenario process running beside this one (nextest) moves its files out of there at any time.
fn results_since(dir: &Path, since: SystemTime, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            results_since(&path, since, found);
        } else if entry.file_name() == "result.json" && metadata.modified().is_ok_and(|modified| modified >= since) {
            found.push(path);
        }
    }
}

//! What the reliability tests share: finding every live process of one `netfault run` by a token in its
//! environment, which the runner, its scenario processes and the programs they `exec` all inherit.

use std::fs;
use std::path::{Path, PathBuf};

/// The variable a test sets, with a token unique to it, in the environment of the `netfault` it starts.
pub const TOKEN_VAR: &str = "NETFAULT_TEST_TOKEN";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every process id in /proc.
pub fn pids() -> Vec<u32> {
    fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn is_zombie(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may itself hold spaces or parentheses.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Live (not zombie) processes whose environment carries `TOKEN_VAR=token`, with their command lines.
pub fn run_processes(token: &str) -> Vec<(u32, String)> {
    let needle = format!("{TOKEN_VAR}={token}");
    pids()
        .into_iter()
        .filter(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|entry| entry == needle.as_bytes()) && !is_zombie(*pid)
        })
        .map(|pid| (pid, fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ")))
        .collect()
}

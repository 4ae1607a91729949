//! Records which commit this netfault is built from (`netfault --version`, result.json): `NETFAULT_COMMIT` is
//! the short hash, with `-dirty` when tracked files differ from it, or `unknown` outside a git checkout.
//!
//! Links the `netfault` binary as a position-dependent executable (`-no-pie`): it is started twice per
//! scenario (the runner, then each scenario's process), and a position-independent one has the dynamic
//! loader apply about 16,000 relocations (a copy-on-write fault on every page of its 300 KiB of relocated
//! data) at every start: measured 0.2 ms of each start (1.39 ms against 1.18 ms for `netfault --version`).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() {
    // Run again when the checked-out commit moves or the crate's own files change (the `-dirty` mark). Only
    // files that exist: cargo takes a missing one as changed on every build.
    let mut watched = vec!["src".to_string(), "Cargo.toml".to_string(), "build.rs".to_string()];
    let reference = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(reference.as_deref()) {
        watched.extend(git(&["rev-parse", "--git-path", name]));
    }
    for path in watched.iter().filter(|path| Path::new(path).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash}-dirty"),
            _ => hash,
        },
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=NETFAULT_COMMIT={commit}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

//! `cargo test`: every YAML file under scenarios/ is one trial, run in its own child process.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reports = std::env::var_os("NETFAULT_REPORTS").map_or_else(|| workspace.join("reports"), Into::into);
    netfault::run::runner::test_main(
        &workspace.join("scenarios"),
        Path::new(&reports),
        Path::new(env!("CARGO_BIN_EXE_netfault")),
        libtest_mimic::Arguments::from_args(),
    )
}

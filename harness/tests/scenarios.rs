//! `cargo test`: every YAML file under scenarios/ is one trial, run in its own child process (this test binary
//! re-executed, as a downstream crate's `netfault::scenarios!` target does).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    netfault::testing::Suite::new(workspace.join("scenarios"))
        .reports(workspace.join("reports"))
        .bin("netfault", env!("CARGO_BIN_EXE_netfault"))
        .main()
}

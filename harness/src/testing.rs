//! The `cargo test` entry point of a crate that tests its own programs under faults: a test target with
//! `harness = false` whose whole file is `netfault::scenarios!("tests/faults");`. Every YAML file under the
//! folder is one trial, with the filters, `--list`, nextest support and exit codes of netfault's own suite, and
//! the test binary re-executes itself as each scenario's process, so no netfault binary needs installing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::run::runner;
use crate::scenario::variables::Variables;

/// Environment variable naming the folder reports go to, over the suite's own choice.
pub const REPORTS_ENV: &str = "NETFAULT_REPORTS";

/// A folder of scenarios run as a test target: what [`scenarios!`](crate::scenarios) builds.
#[derive(Debug, Clone)]
pub struct Suite {
    root: PathBuf,
    reports: PathBuf,
    variables: Variables,
}

impl Suite {
    /// Every `*.yaml` / `*.yml` file under `root`, each a trial named by its path relative to `root`; reports in
    /// `reports/`, variables from the environment (`cargo test` sets `CARGO_BIN_EXE_<name>` for the package's
    /// binaries).
    pub fn new(root: impl Into<PathBuf>) -> Suite {
        Suite { root: root.into(), reports: PathBuf::from("reports"), variables: Variables::from_environment() }
    }

    /// Where each scenario's report folder goes (`NETFAULT_REPORTS`, when set, wins).
    pub fn reports(mut self, folder: impl Into<PathBuf>) -> Suite {
        self.reports = folder.into();
        self
    }

    /// Sets `${CARGO_BIN_EXE_<name>}` to `path`, for a cargo that does not set it at run time (< 1.94) or a test
    /// binary started by hand.
    pub fn bin(mut self, name: &str, path: impl AsRef<Path>) -> Suite {
        self.variables = self.variables.bin(name, path);
        self
    }

    /// The test binary's `main`: started as a scenario's process (by this same function, which re-executes the
    /// binary), runs that one scenario; otherwise runs the suite as libtest would, with its arguments.
    ///
    /// Call it first thing: a scenario's process enters its own user namespace when not root (rootless mode),
    /// which the kernel allows only while the process has a single thread.
    pub fn main(self) -> ExitCode {
        let args: Vec<OsString> = std::env::args_os().collect();
        if args.get(1).is_some_and(|command| command == runner::CHILD_COMMAND) {
            return match runner::parse_child_args(args.into_iter().skip(2)) {
                Ok(job) => runner::child_main(&job, &self.variables),
                Err(e) => {
                    eprintln!("netfault: {e}");
                    ExitCode::from(2)
                }
            };
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("netfault: cannot find this test binary to re-execute it (/proc/self/exe): {e}");
                return ExitCode::from(2);
            }
        };
        let reports = std::env::var_os(REPORTS_ENV).map_or(self.reports, PathBuf::from);
        runner::test_main(&self.root, &reports, &exe, &self.variables, libtest_mimic::Arguments::from_args())
    }
}

/// The `main` of a `harness = false` test target that runs every scenario under a folder of the package:
///
/// ```ignore
/// // tests/faults.rs, with [[test]] name = "faults", harness = false in Cargo.toml
/// netfault::scenarios!("tests/faults");
/// ```
///
/// (Not compiled as a doctest: the macro reads `CARGO_TARGET_TMPDIR`, which cargo sets only when it builds an
/// integration test; examples/downstream/tests/faults.rs is this very line, built and run by `cargo test`.)
///
/// The folder is relative to the package (`CARGO_MANIFEST_DIR`); reports go to
/// `target/tmp/netfault-reports/<package>/<folder>/<scenario>/` (or under `NETFAULT_REPORTS`). Scenarios name the
/// package's binaries as `${CARGO_BIN_EXE_<name>}`; `bins = ["name", ...]` also sets them at build time, for a
/// cargo older than 1.94 or a test binary run by hand.
#[macro_export]
macro_rules! scenarios {
    ($root:expr $(, bins = [$($bin:literal),* $(,)?])? $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::testing::Suite::new(::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join($root))
                .reports(
                    ::std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                        .join("netfault-reports")
                        .join(env!("CARGO_PKG_NAME"))
                        .join($root),
                )
                $($(.bin($bin, env!(concat!("CARGO_BIN_EXE_", $bin))))*)?
                .main()
        }
    };
}

//! The `netfault` binary: see `netfault --help`.

fn main() -> std::process::ExitCode {
    netfault::cli::main()
}

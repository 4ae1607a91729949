//! The entry point a downstream crate uses (`netfault::scenarios!`), on netfault's own binary: every YAML file
//! under tests/downstream/ is one trial, run by this test binary re-executed, with `${CARGO_BIN_EXE_netfault}`
//! set at build time by `bins`.

netfault::scenarios!("tests/downstream", bins = ["netfault"]);

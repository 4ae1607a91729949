//! Faults of the harness itself, for the harness's own tests: `NETFAULT_TEST_PANIC_STEP=client.NAME` makes the
//! actor panic when the client's step `NAME` starts, as a harness bug would; `NETFAULT_TEST_HANG_STAGE=STAGE`
//! makes the scenario process's main thread hang for good when its run reaches `STAGE` (`stopping the
//! captures`, ...), as a thread stuck in the kernel would.
//!
//! An environment variable of the harness process, not a scenario key: no YAML can reach it (an `exec` step's
//! `env` goes only to the program it starts), and the scenario format stays free of test hooks.

use std::sync::OnceLock;
use std::time::Duration;

use crate::scenario::plan::{HostId, StepPlan};

/// `host.step`: the step whose start panics.
pub const PANIC_STEP_ENV: &str = "NETFAULT_TEST_PANIC_STEP";

/// The message of the deliberate panic, so tests can tell it from a real one.
pub const PANIC_MESSAGE: &str = "deliberate panic";

/// Panics if [`PANIC_STEP_ENV`] names this step of this host.
pub fn panic_if_chosen(host: HostId, step: &StepPlan) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var(PANIC_STEP_ENV).ok());
    if let (Some(chosen), Some(name)) = (chosen, &step.name) {
        if *chosen == format!("{host}.{name}") {
            panic!("{PANIC_MESSAGE} in {host} step {} ({PANIC_STEP_ENV}={chosen})", step.label());
        }
    }
}

/// The stage of a run (as its partial report names it) at which the scenario process's main thread hangs.
pub const HANG_STAGE_ENV: &str = "NETFAULT_TEST_HANG_STAGE";

/// Hangs the calling thread for good if [`HANG_STAGE_ENV`] names `stage`.
pub fn hang_if_chosen(stage: &str) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var(HANG_STAGE_ENV).ok());
    if chosen.as_deref() == Some(stage) {
        eprintln!("netfault: hanging at {stage:?} ({HANG_STAGE_ENV})");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

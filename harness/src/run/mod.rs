//! Running scenarios: the child process of one scenario (namespaces, wire, faults, programs, one clock) and
//! the parent that starts many of them and bounds each by its deadline.
//!
//! Public: the runner (what `netfault run` and `cargo test` call) and the pieces a test builds a wire from
//! (namespaces, rootless mode, the topology); the rest is the engine's own.

mod actors;
pub(crate) mod clock;
pub(crate) mod confine;
pub mod cpu_gate;
pub(crate) mod engine;
pub(crate) mod faults;
pub(crate) mod firewall;
mod forkserver;
pub(crate) mod handoff;
pub(crate) mod impair;
pub mod netns;
pub(crate) mod partial;
mod pidns;
pub mod pool;
pub(crate) mod priority;
pub(crate) mod procstat;
pub mod requirements;
pub mod ring_budget;
pub(crate) mod runaway;
pub mod runner;
pub(crate) mod sampling;
pub(crate) mod snapshot;
pub(crate) mod supervise;
pub(crate) mod switchboard;
pub mod topology;
pub mod userns;

//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! Data flows one way: YAML -> [`scenario::plan::Plan`] -> run in a child process (`run::engine`) ->
//! [`timeline::Timeline`] -> [`report::verdict`] -> [`report`].

#[cfg(feature = "bench")]
mod bench;
pub mod cli;
pub mod error;
mod observe;
pub mod report;
pub mod run;
pub mod scenario;
mod selftest;
pub mod timeline;

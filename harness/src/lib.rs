//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! Data flows one way: YAML -> [`scenario::plan::Plan`] -> run in a child process (`run::engine`) ->
//! [`timeline::Timeline`] -> [`report::verdict`] -> [`report`].
//!
//! The folders follow that flow, one stage each: [`scenario`] reads files into plans; [`run`] makes the run
//! happen (namespaces, the wire, faults, programs, the child processes); `observe` watches the kernel (wire
//! capture, socket states) and only emits events; [`timeline`] is the one data structure in the middle, written
//! by run and observe and read, through its queries, by everyone after; [`report`] judges and writes. Each
//! stage depends only on the ones before it and on the timeline, never on a later one.

#[cfg(feature = "bench")]
mod bench;
pub mod cli;
pub mod error;
mod observe;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
mod selftest;
pub mod testing;
pub mod timeline;
pub mod version;

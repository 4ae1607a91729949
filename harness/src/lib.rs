//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! Data flows one way: YAML -> [`scenario::plan::Plan`] -> run (child process) -> [`timeline::Timeline`]
//! -> [`verdict`] -> [`report`].

pub mod capture;
pub mod clock;
pub mod decode;
pub mod error;
pub mod netns;
pub mod scenario;
pub mod timeline;

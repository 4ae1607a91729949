//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! Data flows one way: YAML -> [`scenario::plan::Plan`] -> run (child process) -> [`timeline::Timeline`]
//! -> [`verdict`] -> [`report`].

pub mod clock;
pub mod error;
pub mod netns;
pub mod scenario;
pub mod timeline;
pub mod topology;
pub mod userns;

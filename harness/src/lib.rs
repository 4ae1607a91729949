//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! Data flows one way: YAML -> [`scenario::plan::Plan`] -> run in a child process ([`engine`]) ->
//! [`timeline::Timeline`] -> [`verdict`] -> [`report`].

pub mod actors;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod decode;
pub mod engine;
pub mod error;
pub mod firewall;
pub mod impair;
pub mod netns;
pub mod nstat;
pub mod observe;
pub mod pidns;
pub mod priority;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod selftest;
pub mod supervise;
pub mod timeline;
pub mod topology;
pub mod userns;
pub mod verdict;

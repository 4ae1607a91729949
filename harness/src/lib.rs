//! netfault: inject network faults into real Linux TCP stacks and record exactly what the kernel did.
//!
//! A scenario is one YAML file: hosts, each its own network namespace, joined by veth links (client and server
//! on one link, or a router between them on two); per-host sysctls; the router's NAT and conntrack settings;
//! nftables faults that switch on and off at given times or on events; and a socket program for each host,
//! with what each step must give and when. netfault runs it in a child process against the real kernel
//! (real namespaces, real veth pairs, real nftables, real sockets), records the wire on every interface and
//! every socket's state on one clock, and judges the run against the scenario's expectations. Nothing is
//! simulated: what a report shows is what the kernel did.
//!
//! # Running scenarios
//!
//! The `netfault` binary runs folders of scenarios (`netfault run scenarios/`). As a test driver, every
//! scenario under a folder becomes one `cargo test` trial, each in a child process of its own:
//!
//! ```rust,no_run
//! // tests/scenarios.rs, with `harness = false` for it in Cargo.toml (`netfault::scenarios!("scenarios");` is
//! // the same, with reports under the target folder)
//! fn main() -> std::process::ExitCode {
//!     netfault::testing::Suite::new("scenarios").reports("reports").main()
//! }
//! ```
//!
//! A scenario can be checked without running anything; a bad file is an error naming its line and column:
//!
//! ```rust,no_run
//! use std::path::Path;
//!
//! use netfault::scenario::variables::Variables;
//!
//! let file = Path::new("scenarios/keepalive/idle.yaml");
//! let plan = netfault::scenario::load(Path::new("scenarios"), file, &Variables::from_environment())
//!     .unwrap_or_else(|error| panic!("{error}"));
//! for host in &plan.hosts {
//!     println!("{}: {} steps", host.id, host.steps.len());
//! }
//! ```
//!
//! # How data flows
//!
//! One way, each stage reading only what the one before produced:
//!
//! ```text
//! scenario file ──scenario::load──▶ Plan          validated, every name resolved (steps to indices,
//!                                                  hosts to addresses), durations typed, one Tolerance
//!               ──run::runner───▶ child process   one per scenario, bounded by its deadline
//!               ──run::engine───▶ namespaces, links, faults (run::faults), captures and socket observers
//!                                 (observe), one program thread per host (run::actors), one clock
//!               ──events───────▶ Timeline        every packet, socket change and step, on one clock;
//!                                 RunRecord       the timeline and the harness's own figures, plain data
//!               ──verdict::judge─▶ Verdict        a pure function of plan and timeline
//!               ──report::write─▶ reports/<scenario>/ timeline.txt, result.json, one pcap per interface
//! ```
//!
//! The engine never asks the verdict anything: the questions a run answers (a step's start and end, the
//! packets a host sent, a socket's history) are [`timeline::query`], asked alike by the engine's fault
//! triggers, the verdict and the report. The report reads the [`record::RunRecord`] and the
//! [`report::verdict::Verdict`], never the engine, a capture or an observer.
//!
//! # Where each concern lives
//!
//! | module | owns | Linux equivalent |
//! |---|---|---|
//! | [`scenario`] | YAML schema, validation into a [`scenario::plan::Plan`], source positions | |
//! | `run::topology` | namespaces' links, addresses, offloads, sysctls, over rtnetlink | `ip link`, `ip addr`, `ethtool -K`, `sysctl -w` |
//! | `run::firewall`, `run::faults` | nftables faults, the router's NAT, conntrack flush; the seam other fault backends plug into | `nft add rule`, `conntrack -F` |
//! | `run::actors` | the hosts' socket programs and `exec` | the programs themselves |
//! | `run::engine` | one run: set-up, fault triggers, end or deadline, teardown | |
//! | [`run::runner`] | child processes, parallelism, the libtest-mimic driver | |
//! | [`testing`] | another crate's test target: `netfault::scenarios!`, `Suite` | |
//! | [`cli`], [`version`] | the command line; the build's version and commit | |
//! | [`run::netns`], [`run::userns`] | anonymous namespaces, rootless mode | `ip netns`, `unshare --user` |
//! | `observe::capture`, `observe::decode` | AF_PACKET capture to pcap, frames to tcpdump-like events | `tcpdump -w` |
//! | `observe::sockets` | sock_diag sampler | `ss -tanoi` |
//! | [`timeline`] | events on one clock, their text form, the queries on them | |
//! | [`record`] | what a run produced, as plain data | |
//! | [`report`] | the pure verdict and the files under reports/ | |
//!
//! The folders follow the flow: [`scenario`] reads, [`run`] makes the run happen, `observe` watches the
//! kernel and only emits events, [`timeline`] and [`record`] are the data in the middle, [`report`] judges
//! and writes. Each depends only on earlier stages and on the data, never on a later stage.
//!
//! # Privileges
//!
//! As root, scenarios run directly. Otherwise netfault first makes itself root of a user namespace of its own
//! (rootless mode, [`run::userns`]), which is enough for namespaces, veth pairs, nftables, captures and
//! per-namespace sysctls; the library's own tests do the same before their harness starts. Where neither
//! works netfault stops and says what is missing; it never skips a scenario.

#[cfg(feature = "bench")]
mod bench;
pub mod cli;
pub mod error;
pub mod matrix;
mod observe;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
mod selftest;
pub mod testing;
pub mod timeline;
pub mod version;

//! The wire's impairments: a network that misbehaves like real ones. Loss (random or Gilbert-Elliott bursts),
//! delay with jitter, reordering, duplication, corruption, rate limits with a queue, and segments forged into
//! live connections, all decided from one seed and all recorded.
//!
//! They act on a wire of their own between the two hosts ([`wire`]): a third namespace joined to each host by a
//! veth pair, where a real-time thread per direction forwards every frame. `netfault bench impair` measured
//! this against the alternatives (README, Performance).

pub mod frame;
pub mod identity;
pub mod model;
pub mod rng;
pub mod wire;

pub use model::WireFault;
pub use wire::Wire;

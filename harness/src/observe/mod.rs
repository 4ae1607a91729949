//! Watching the kernel during a run: the wire captured on every interface (pcap and decoded packets), every TCP
//! socket's state, timers and queues sampled through sock_diag, and every TCP state transition from the
//! kernel's own tracepoint. All of them only produce timeline events.

pub mod capture;
pub mod counters;
pub mod decode;
pub mod sockets;
pub mod transitions;

//! Watching the kernel during a run: the wire captured on every interface (pcap and decoded packets) and
//! every TCP socket's state sampled through sock_diag. Both only produce timeline events.

pub mod capture;
pub mod counters;
pub mod decode;
pub mod sockets;

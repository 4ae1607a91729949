//! Kernel facts in the plan: `requires:` (kernel version range, sysctl present, nftables feature) and the
//! expectations that apply only where their own `requires:` holds.

use serde::Serialize;

use super::{HostId, Location};

/// `requires:`: what the running kernel must have; empty: any kernel.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Requirements {
    pub items: Vec<Requirement>,
    /// Where `requires:` is written.
    pub location: Option<Location>,
}

/// One fact about the running kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// `kernel: ">= 6.2, < 6.15"`: the kernel's version (`uname -r`) is within every bound.
    Kernel(Vec<VersionBound>),
    /// `sysctl: { net.ipv4.tcp_rto_max_ms: present }` (or `absent`): whether the kernel has the sysctl in a
    /// network namespace (`test -e /proc/sys/net/ipv4/tcp_rto_max_ms`).
    Sysctl { name: String, present: bool },
    /// `nftables: [inner-payload]`: nf_tables accepts the feature (probed with a rule in a scratch namespace).
    Nftables(NftFeature),
}

/// `>= 6.7` in a kernel range.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct VersionBound {
    pub op: VersionOp,
    /// major, minor, patch (missing parts are 0).
    pub version: [u32; 3],
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum VersionOp {
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
}

impl VersionOp {
    pub fn symbol(self) -> &'static str {
        match self {
            VersionOp::Less => "<",
            VersionOp::LessOrEqual => "<=",
            VersionOp::Equal => "=",
            VersionOp::GreaterOrEqual => ">=",
            VersionOp::Greater => ">",
        }
    }
}

/// nf_tables features a scenario may need.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum NftFeature {
    /// `NFT_PAYLOAD_INNER_HEADER` (nft `@ih`), Linux >= 6.2.
    InnerPayload,
}

impl NftFeature {
    pub const ALL: [(&'static str, NftFeature); 1] = [("inner-payload", NftFeature::InnerPayload)];

    pub fn name(self) -> &'static str {
        match self {
            NftFeature::InnerPayload => "inner-payload",
        }
    }
}

/// An expectation that applies only where `requires` holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Conditional {
    pub target: ExpectationRef,
    pub requires: Requirements,
}

/// Which expectation of a plan: a step's, or an item of the run expectations by kind and position.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpectationRef {
    Step { host: HostId, index: usize },
    Packet(usize),
    State(usize),
    Timer(usize),
    Queue(usize),
}

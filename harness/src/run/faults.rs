//! The seam between the engine and what carries faults out inside a host's namespace. A backend installs the
//! host's faults switched off, switches each on and off when its trigger fires, says how many packets each
//! took, and is closed at the end of the run. nftables ([`Firewall`]: drop and reject rules) and the conntrack
//! table ([`ConntrackTable`]: a router's flush) are the backends of the faults a host carries out itself; the
//! impairments (loss, delay, reordering, duplication, corruption, rate, forged segments) are carried out by the
//! wire on the link ([`Backend::Wire`], `run::impair`), which is no host's and which the engine runs beside the
//! hosts' backends.

use crate::error::{Error, Result};
use crate::observe::transitions::program::DropRecording;
use crate::run::firewall::{ConntrackTable, Firewall, Nat};
use crate::run::netns::Netns;
use crate::scenario::plan::{FaultAction, FaultPlan, HostId};

/// What carries a fault out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An nftables rule in table `inet netfault` (`nft add rule ... drop`, `reject with ...`).
    Nftables,
    /// The host's conntrack table, flushed when the fault switches on (`conntrack -F`).
    Conntrack,
    /// The impairment wire in the namespace between the hosts.
    Wire,
}

impl Backend {
    /// The backend that carries out `fault`'s action.
    pub fn of(fault: &FaultPlan) -> Backend {
        match fault.action {
            FaultAction::Drop
            | FaultAction::RejectTcpReset
            | FaultAction::RejectIcmpPortUnreachable
            | FaultAction::RejectIcmpHostUnreachable
            | FaultAction::RejectIcmpNetUnreachable
            | FaultAction::RejectIcmpAdminProhibited
            // The rule marks what the host's queueing discipline then drops (`run::firewall::qdisc`).
            | FaultAction::QdiscDrop => Backend::Nftables,
            FaultAction::FlushConntrack => Backend::Conntrack,
            FaultAction::Impair(_) => Backend::Wire,
        }
    }
}

/// One backend's faults of one host.
pub trait FaultBackend: Send {
    /// Switches the named fault on (`true`) or off; switching to the state it is in changes nothing.
    fn switch(&mut self, fault: &str, on: bool) -> Result<()>;
    /// Packets each of its faults took so far, by fault name.
    fn hits(&mut self) -> Result<Vec<(String, u64)>>;
    /// Releases what the backend holds; may finish on a thread of its own.
    fn close(self: Box<Self>);
}

impl FaultBackend for Firewall {
    fn switch(&mut self, fault: &str, on: bool) -> Result<()> {
        if on {
            self.activate(fault)
        } else {
            self.deactivate(fault)
        }
    }

    fn hits(&mut self) -> Result<Vec<(String, u64)>> {
        self.counters()
    }

    fn close(self: Box<Self>) {
        self.close_in_background();
    }
}

impl FaultBackend for ConntrackTable {
    /// Switching on flushes; a flush has nothing to switch off.
    fn switch(&mut self, _fault: &str, on: bool) -> Result<()> {
        if on {
            self.flush()?;
        }
        Ok(())
    }

    /// A flush takes no packets.
    fn hits(&mut self) -> Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }

    fn close(self: Box<Self>) {}
}

/// Every fault of one host, each installed (switched off) on the backend that carries it out.
pub struct HostFaults {
    host: HostId,
    backends: Vec<(Backend, Box<dyn FaultBackend>)>,
}

impl HostFaults {
    /// Installs `host`'s faults of `faults` on their backends, all off, with the router's NAT when `nat` is
    /// given. Must run inside the host's namespace. The nftables table is installed even when the host has no
    /// fault, so every host's firewall looks alike.
    /// With `recording`, the drops and rejects of the host's own packets are recorded into the tracer's ring
    /// ([`Firewall::install`]).
    pub fn install(
        ns: &Netns,
        host: HostId,
        faults: &[FaultPlan],
        nat: Option<&Nat>,
        recording: Option<DropRecording>,
    ) -> Result<HostFaults> {
        let of = |backend: Backend| -> Vec<FaultPlan> {
            faults.iter().filter(|fault| fault.host == host && Backend::of(fault) == backend).cloned().collect()
        };
        let firewall: Box<dyn FaultBackend> =
            Box::new(Firewall::install(ns, host, &of(Backend::Nftables), nat, recording)?);
        let mut backends = vec![(Backend::Nftables, firewall)];
        if !of(Backend::Conntrack).is_empty() {
            backends.push((Backend::Conntrack, Box::new(ConntrackTable::open(ns, host)?) as Box<dyn FaultBackend>));
        }
        Ok(HostFaults { host, backends })
    }

    pub fn host(&self) -> HostId {
        self.host
    }

    /// Switches `fault` (one of this host's) on or off on its backend.
    pub fn switch(&mut self, fault: &FaultPlan, on: bool) -> Result<()> {
        let backend = Backend::of(fault);
        let host = self.host;
        let (_, carrier) = self.backends.iter_mut().find(|(kind, _)| *kind == backend).ok_or_else(|| {
            Error::Internal(format!("host {host} has no {backend:?} backend for fault {}", fault.name))
        })?;
        carrier.switch(&fault.name, on)
    }

    /// Packets each of the host's faults took, by fault name.
    pub fn hits(&mut self) -> Result<Vec<(String, u64)>> {
        let mut hits = Vec::new();
        for (_, backend) in &mut self.backends {
            hits.extend(backend.hits()?);
        }
        Ok(hits)
    }

    pub fn close(self) {
        self.backends.into_iter().for_each(|(_, backend)| backend.close());
    }
}

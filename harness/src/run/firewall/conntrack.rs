//! A host's connection tracking table (`conntrack`): emptied on demand, as `conntrack -F` does, through
//! ctnetlink on the namespace's netfilter socket; and the kernel's conntrack module loaded where it is not yet.

use nftnl::expr::Conntrack;
use nftnl::{Batch, Chain, MsgType, ProtoFamily, Rule, Table};

use crate::error::{Error, Result};
use crate::run::netns::Netns;
use crate::scenario::plan::HostId;

use super::socket::NetfilterSocket;

/// The conntrack table of one host's namespace.
pub struct ConntrackTable {
    socket: NetfilterSocket,
    host: HostId,
}

impl ConntrackTable {
    /// Opens a netfilter socket inside `ns` for its conntrack table.
    pub fn open(ns: &Netns, host: HostId) -> Result<ConntrackTable> {
        Ok(ConntrackTable { socket: NetfilterSocket::open(ns)?, host })
    }

    /// `conntrack -F`: every IPv4 entry is deleted; the next packet of each connection finds none.
    pub fn flush(&mut self) -> Result<()> {
        self.socket
            .flush_conntrack()
            .map_err(|e| Error::sys(format!("flush the conntrack table of {} (conntrack -F)", self.host), e))
    }
}

/// Makes the kernel load nf_conntrack, whose `net.netfilter.nf_conntrack_*` sysctls exist (in every network
/// namespace) only once it is loaded: on a machine where nothing has used conntrack yet (a fresh CI runner, a
/// VM), a scenario's router that sets them would find none. One batch in the calling thread's namespace,
/// `nft add table inet netfault_ct; nft add chain inet netfault_ct probe; nft add rule inet netfault_ct probe
/// ct state established; nft delete table inet netfault_ct`: checking the `ct` expression makes the kernel
/// load its module and nf_conntrack with it, as `nft` itself would; nothing stays behind.
pub fn load_conntrack_here() -> Result<()> {
    let table = Table::new(c"netfault_ct", ProtoFamily::Inet);
    let chain = Chain::new(c"probe", &table);
    let mut rule = Rule::new(&chain);
    rule.add_expr(&Conntrack::State);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    batch.add(&rule, MsgType::Add);
    batch.add(&table, MsgType::Del);
    NetfilterSocket::here()?.apply(&batch.finalize()).map_err(|e| {
        Error::sys(
            "load nf_conntrack (nft add rule inet netfault_ct probe ct state established, in a scratch table)",
            e,
        )
    })
}

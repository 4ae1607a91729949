//! A host's connection tracking table (`conntrack`): emptied on demand, as `conntrack -F` does, through
//! ctnetlink on the namespace's netfilter socket.

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

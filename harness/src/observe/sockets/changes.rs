//! What changed between two samples of a namespace's sockets: which socket each row is, and the timeline
//! events for sockets that appeared, changed or went.

use std::net::SocketAddr;

use super::diag::SocketSample;
use crate::scenario::plan::{TcpState, TimerKind};
use crate::timeline::SocketEvent;

/// Which socket a row is, across samples: the 4-tuple, plus the inode for a listener so that several
/// SO_REUSEPORT listeners on one port stay apart. A request socket (SYN-RECV) and the full socket that replaces
/// it share the 4-tuple and so are one socket changing state; so are a socket and its TIME-WAIT successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SocketKey {
    local: SocketAddr,
    remote: SocketAddr,
    listener_inode: Option<u32>,
}

impl SocketKey {
    pub(super) fn label(&self) -> String {
        match self.listener_inode {
            Some(_) => format!("{} -> *:*", self.local),
            None => format!("{} -> {}", self.local, self.remote),
        }
    }

    pub(super) fn gone(&self) -> SocketEvent {
        SocketEvent {
            socket: self.label(),
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            state: TcpState::Gone,
            timer: None,
            expires: None,
            retrans: 0,
            recv_q: 0,
            send_q: 0,
            rtt: None,
            rto: None,
        }
    }
}

impl SocketSample {
    pub(super) fn key(&self) -> SocketKey {
        SocketKey { local: self.local, remote: self.remote, listener_inode: self.is_listener().then_some(self.inode) }
    }

    pub(super) fn observed(&self) -> Observed {
        Observed {
            state: self.state,
            timer: self.timer,
            retrans: self.retrans,
            recv_q: self.recv_q,
            send_q: self.send_q,
        }
    }
}

/// What is compared between samples. `expires` is left out: a timer counting down is no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observed {
    state: TcpState,
    timer: Option<TimerKind>,
    retrans: u32,
    recv_q: u32,
    send_q: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Tracked {
    key: SocketKey,
    observed: Observed,
    /// Index into the sample slice this entry came from (meaningful for the current sample only).
    row: usize,
}

/// The previous sample, sorted by key, and the change events between it and the next one.
#[derive(Debug, Default)]
pub(super) struct ChangeTracker {
    previous: Vec<Tracked>,
    current: Vec<Tracked>,
}

impl ChangeTracker {
    /// Calls `emit` for every socket of `samples` that is new or whose (state, timer, retrans, recv_q, send_q)
    /// changed, and with a `Gone` event for every socket no longer there, in key order. Should a key appear twice
    /// in one sample, the first row counts.
    pub(super) fn update(&mut self, samples: &[SocketSample], mut emit: impl FnMut(SocketEvent)) {
        self.current.clear();
        self.current.extend(samples.iter().enumerate().map(|(row, sample)| Tracked {
            key: sample.key(),
            observed: sample.observed(),
            row,
        }));
        self.current.sort_by_key(|tracked| tracked.key);
        self.current.dedup_by_key(|tracked| tracked.key);
        let (mut old, mut new) = (0, 0);
        loop {
            match (self.previous.get(old), self.current.get(new)) {
                (None, None) => break,
                (Some(before), Some(now)) if before.key == now.key => {
                    if before.observed != now.observed {
                        emit(samples[now.row].event());
                    }
                    old += 1;
                    new += 1;
                }
                (Some(before), Some(now)) if before.key < now.key => {
                    emit(before.key.gone());
                    old += 1;
                }
                (Some(before), None) => {
                    emit(before.key.gone());
                    old += 1;
                }
                (_, Some(now)) => {
                    emit(samples[now.row].event());
                    new += 1;
                }
            }
        }
        std::mem::swap(&mut self.previous, &mut self.current);
    }
}

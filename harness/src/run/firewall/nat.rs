//! The router's NAT, in chains of type nat of its `inet netfault` table:
//! `nft add rule inet netfault postrouting oifname "nf1" masquerade` for connections from the client side, and
//! `nft add rule inet netfault prerouting iifname "nf0" meta nfproto ipv4 tcp dport 8080 dnat ip to
//! 10.0.2.2:9000` for each port forward to the server.

use std::ffi::CStr;
use std::net::Ipv4Addr;

use nftnl::expr::{Cmp, CmpOp, Immediate, Masquerade, Meta, Nat as NatExpr, NatType, Register};
use nftnl::{Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

use super::expr::{PayloadBase, RawPayload};
use crate::scenario::plan::{PortForward, Protocol};

/// `priority dstnat` and `priority srcnat`.
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
/// Interface names are compared as the kernel stores them: IFNAMSIZ bytes, zero-padded.
const IFNAMSIZ: usize = 16;

/// What the router translates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    /// The router's interface towards the client, and towards the server.
    pub client_side: String,
    pub server_side: String,
    /// Where port forwards go.
    pub server: Ipv4Addr,
    pub masquerade: bool,
    pub forwards: Vec<PortForward>,
}

impl Nat {
    /// Adds the nat chains and their rules to an install batch of `table`.
    pub(super) fn add_to(&self, batch: &mut Batch, table: &Table) {
        let prerouting = nat_chain(table, c"prerouting", Hook::PreRouting, PRIORITY_DSTNAT);
        let postrouting = nat_chain(table, c"postrouting", Hook::PostRouting, PRIORITY_SRCNAT);
        batch.add(&prerouting, MsgType::Add);
        batch.add(&postrouting, MsgType::Add);
        if self.masquerade {
            let mut rule = Rule::new(&postrouting);
            add_interface(&mut rule, Meta::OifName, &self.server_side);
            rule.add_expr(&Masquerade);
            batch.add(&rule, MsgType::Add);
        }
        for forward in &self.forwards {
            let mut rule = Rule::new(&prerouting);
            add_interface(&mut rule, Meta::IifName, &self.client_side);
            rule.add_expr(&Meta::NfProto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, Protocol::Tcp.number()));
            rule.add_expr(&RawPayload { base: PayloadBase::Transport, offset: 2, len: 2 });
            rule.add_expr(&Cmp::new(CmpOp::Eq, &forward.port.to_be_bytes()[..]));
            rule.add_expr(&Immediate::new(self.server.octets(), Register::Reg1));
            rule.add_expr(&Immediate::new(forward.to_port.to_be_bytes(), Register::Reg2));
            rule.add_expr(&NatExpr {
                nat_type: NatType::DNat,
                family: ProtoFamily::Ipv4,
                ip_register: Register::Reg1,
                port_register: Some(Register::Reg2),
            });
            batch.add(&rule, MsgType::Add);
        }
    }

    /// The rules as `nft` commands, for messages.
    pub fn text(&self) -> Vec<String> {
        let mut rules = Vec::new();
        if self.masquerade {
            rules.push(format!("nft add rule inet netfault postrouting oifname \"{}\" masquerade", self.server_side));
        }
        for forward in &self.forwards {
            rules.push(format!(
                "nft add rule inet netfault prerouting iifname \"{}\" meta nfproto ipv4 tcp dport {} dnat ip to {}:{}",
                self.client_side, forward.port, self.server, forward.to_port
            ));
        }
        rules
    }
}

fn nat_chain<'a>(table: &'a Table, name: &CStr, hook: Hook, priority: i32) -> Chain<'a> {
    let mut chain = Chain::new(name, table);
    chain.set_hook(hook, priority);
    chain.set_type(ChainType::Nat);
    chain.set_policy(Policy::Accept);
    chain
}

/// `iifname "<name>"` or `oifname "<name>"`.
fn add_interface(rule: &mut Rule, which: Meta, name: &str) {
    let mut padded = [0u8; IFNAMSIZ];
    let bytes = name.as_bytes();
    let len = bytes.len().min(IFNAMSIZ - 1);
    padded[..len].copy_from_slice(&bytes[..len]);
    rule.add_expr(&which);
    rule.add_expr(&Cmp::new(CmpOp::Eq, &padded[..]));
}

//! Validation of the hosts and the links between them: addresses, the router between client and server when
//! there is one, its NAT and its conntrack settings.

use super::*;

/// The conntrack TCP timeouts a router may set, by the name `conntrack -L` gives the state, and the sysctl that
/// holds each (`net.netfilter.nf_conntrack_tcp_timeout_<name>`).
const CONNTRACK_TIMEOUTS: &[(&str, &str)] = &[
    ("syn-sent", "syn_sent"),
    ("syn-recv", "syn_recv"),
    ("established", "established"),
    ("fin-wait", "fin_wait"),
    ("close-wait", "close_wait"),
    ("last-ack", "last_ack"),
    ("time-wait", "time_wait"),
    ("close", "close"),
    ("max-retrans", "max_retrans"),
    ("unacknowledged", "unacknowledged"),
];
/// The router's interface towards the client, and towards the server.
pub const ROUTER_CLIENT_SIDE: &str = "nf0";
pub const ROUTER_SERVER_SIDE: &str = "nf1";
/// The interface of client and server.
pub const HOST_INTERFACE: &str = "nf0";

/// Where everything sits on the wire, before the programs are read.
pub(super) struct Layout {
    /// In the wire's order, each with its address, prefix length and gateway.
    pub hosts: Vec<(HostId, Ipv4Addr, u8, Option<Ipv4Addr>)>,
    pub links: Vec<Link>,
    pub router: Option<RouterPlan>,
    /// What the router's settings mean as sysctls (forwarding, conntrack), sorted by name.
    pub router_sysctls: Vec<Sysctl>,
}

fn end(host: HostId, ifname: &str, (address, prefix_len): (Ipv4Addr, u8)) -> LinkEnd {
    LinkEnd { host, ifname: ifname.to_string(), address, prefix_len, address6: None }
}

impl Validator<'_> {
    pub(super) fn hosts(&self, path: &NodePath, hosts: Option<&HostsWire>) -> Checked<Layout> {
        let default = HostsWire::default();
        let hosts = hosts.unwrap_or(&default);
        let Some(router) = &hosts.router else {
            return self.one_link(path, hosts);
        };
        let router_path = path.key("router");
        let given = |wire: &Option<HostWire>, host: HostId| -> Checked<Option<((Ipv4Addr, u8), NodePath)>> {
            let Some(wire) = wire else { return Ok(None) };
            let host_path = path.key(host.name());
            let address =
                self.required(&wire.address, &host_path, &format!("host {host}"), "address", "e.g. 10.0.1.2/24")?;
            let address_path = host_path.key("address");
            Ok(Some((self.address(&address_path, address)?, address_path)))
        };
        let side = |value: &Option<Scalar>, key: &str| -> Checked<Option<((Ipv4Addr, u8), NodePath)>> {
            let Some(value) = value else { return Ok(None) };
            let side_path = router_path.key(key);
            Ok(Some((self.address(&side_path, value)?, side_path)))
        };
        let client = given(&hosts.client, HostId::Client)?;
        let server = given(&hosts.server, HostId::Server)?;
        let client_side = side(&router.client_side, "client-side")?;
        let server_side = side(&router.server_side, "server-side")?;
        let pick = |given: &Option<((Ipv4Addr, u8), NodePath)>, default: Ipv4Addr| {
            given.as_ref().map_or((default, DEFAULT_PREFIX_LEN), |(address, _)| *address)
        };
        let blame = |a: &Option<((Ipv4Addr, u8), NodePath)>, b: &Option<((Ipv4Addr, u8), NodePath)>| {
            b.as_ref().or(a.as_ref()).map_or_else(|| router_path.clone(), |(_, path)| path.clone())
        };
        let addresses = [
            pick(&client, DEFAULT_ROUTED_CLIENT_ADDRESS),
            pick(&client_side, DEFAULT_ROUTER_CLIENT_SIDE),
            pick(&server_side, DEFAULT_ROUTER_SERVER_SIDE),
            pick(&server, DEFAULT_ROUTED_SERVER_ADDRESS),
        ];
        let [client_address, client_side_address, server_side_address, server_address] = addresses;
        if overlap(client_side_address, server_side_address) {
            return Err(self.fail(
                &blame(&client_side, &server_side),
                format!(
                    "the router's client-side {}/{} and server-side {}/{} are in one subnet; a router joins two \
                     subnets, e.g. 10.0.1.1/24 and 10.0.2.1/24",
                    client_side_address.0, client_side_address.1, server_side_address.0, server_side_address.1
                ),
            ));
        }
        self.one_subnet(
            &blame(&client, &client_side),
            ("client", client_address),
            ("the router's client-side", client_side_address),
        )?;
        self.one_subnet(
            &blame(&server, &server_side),
            ("server", server_address),
            ("the router's server-side", server_side_address),
        )?;
        let (nat, router_sysctls) = self.router(&router_path, router)?;
        Ok(Layout {
            hosts: vec![
                (HostId::Client, client_address.0, client_address.1, Some(client_side_address.0)),
                (HostId::Router, client_side_address.0, client_side_address.1, None),
                (HostId::Server, server_address.0, server_address.1, Some(server_side_address.0)),
            ],
            links: vec![
                Link {
                    ends: [
                        end(HostId::Client, HOST_INTERFACE, client_address),
                        end(HostId::Router, ROUTER_CLIENT_SIDE, client_side_address),
                    ],
                    wire: false,
                },
                Link {
                    ends: [
                        end(HostId::Router, ROUTER_SERVER_SIDE, server_side_address),
                        end(HostId::Server, HOST_INTERFACE, server_address),
                    ],
                    wire: false,
                },
            ],
            router: Some(nat),
            router_sysctls,
        })
    }

    /// Client and server on one veth pair, as every scenario without a router has them.
    fn one_link(&self, path: &NodePath, hosts: &HostsWire) -> Checked<Layout> {
        let mut addresses =
            [(DEFAULT_CLIENT_ADDRESS, DEFAULT_PREFIX_LEN), (DEFAULT_SERVER_ADDRESS, DEFAULT_PREFIX_LEN)];
        let mut given = [None, None];
        for (host, wire) in [(HostId::Client, &hosts.client), (HostId::Server, &hosts.server)] {
            let Some(wire) = wire else { continue };
            let host_path = path.key(host.name());
            let address =
                self.required(&wire.address, &host_path, &format!("host {host}"), "address", "e.g. 10.0.0.1/24")?;
            let address_path = host_path.key("address");
            addresses[host.index()] = self.address(&address_path, address)?;
            given[host.index()] = Some(address_path);
        }
        let blame = given[1].clone().or(given[0].clone()).unwrap_or_else(|| path.clone());
        let [client, server] = addresses;
        if client.0 == server.0 {
            return Err(
                self.fail(&blame, format!("client and server have the same address {}; give each its own", client.0))
            );
        }
        if !same_subnet(client, server) {
            return Err(self.fail(
                &blame,
                format!(
                    "client {}/{} and server {}/{} are not in the same subnet; the veth link has no router, so both \
                     addresses must share one subnet, e.g. 10.0.0.1/24 and 10.0.0.2/24 (or put a router between \
                     them: `hosts: {{ router: {{}} }}`)",
                    client.0, client.1, server.0, server.1
                ),
            ));
        }
        Ok(Layout {
            hosts: vec![(HostId::Client, client.0, client.1, None), (HostId::Server, server.0, server.1, None)],
            links: vec![Link {
                ends: [end(HostId::Client, HOST_INTERFACE, client), end(HostId::Server, HOST_INTERFACE, server)],
                wire: false,
            }],
            router: None,
            router_sysctls: Vec::new(),
        })
    }

    /// Two ends of one link: different addresses in one subnet.
    fn one_subnet(
        &self,
        path: &NodePath,
        (a_name, a): (&str, (Ipv4Addr, u8)),
        (b_name, b): (&str, (Ipv4Addr, u8)),
    ) -> Checked<()> {
        if a.0 == b.0 {
            return Err(
                self.fail(path, format!("{a_name} and {b_name} have the same address {}; give each its own", a.0))
            );
        }
        if !same_subnet(a, b) {
            return Err(self.fail(
                path,
                format!(
                    "{a_name} {}/{} and {b_name} {}/{} are not in the same subnet; they share a link, so their \
                     addresses must share one subnet, e.g. 10.0.1.2/24 and 10.0.1.1/24",
                    a.0, a.1, b.0, b.1
                ),
            ));
        }
        Ok(())
    }

    /// The router's NAT and what its settings mean as sysctls: forwarding on, then conntrack.
    fn router(&self, path: &NodePath, router: &RouterWire) -> Checked<(RouterPlan, Vec<Sysctl>)> {
        let mut plan = RouterPlan::default();
        match &router.nat {
            None => {}
            Some(ScalarOr::Scalar(Scalar::Str(text))) if text == "masquerade" => plan.masquerade = true,
            Some(ScalarOr::Scalar(other)) => {
                return Err(self.fail(
                    &path.key("nat"),
                    format!("nat {other} is not allowed; use masquerade, or {{ masquerade: true, forward: [{{ port: 8080, to: 9000 }}] }}"),
                ))
            }
            Some(ScalarOr::Map(nat)) => {
                let nat_path = path.key("nat");
                if let Some(masquerade) = &nat.masquerade {
                    plan.masquerade = self.boolean(&nat_path.key("masquerade"), masquerade, "masquerade")?;
                }
                for (i, forward) in nat.forward.as_deref().unwrap_or(&[]).iter().enumerate() {
                    let forward_path = nat_path.key("forward").index(i);
                    let example = "e.g. { port: 8080, to: 9000 }";
                    let port = self.required(&forward.port, &forward_path, "forward", "port", example)?;
                    let port = self.port(&forward_path.key("port"), port, "port")?;
                    let to = self.required(&forward.to, &forward_path, "forward", "to", example)?;
                    let to_port = self.port(&forward_path.key("to"), to, "to")?;
                    if plan.dnat.iter().any(|forward| forward.port == port) {
                        return Err(self.fail(&forward_path.key("port"), format!("port {port} is forwarded twice; forward each port once")));
                    }
                    plan.dnat.push(PortForward { port, to_port });
                }
            }
        }
        let mut sysctls = vec![Sysctl { name: "net.ipv4.ip_forward".into(), value: "1".into(), location: None }];
        if let Some(conntrack) = &router.conntrack {
            let conntrack_path = path.key("conntrack");
            if let Some(loose) = &conntrack.loose {
                let loose = self.boolean(&conntrack_path.key("loose"), loose, "loose")?;
                sysctls.push(Sysctl {
                    name: "net.netfilter.nf_conntrack_tcp_loose".into(),
                    value: u8::from(loose).to_string(),
                    location: Some(self.index.value(&conntrack_path.key("loose"))),
                });
            }
            for (state, value) in conntrack.timeouts.as_ref().map_or(&[][..], |timeouts| &timeouts.0[..]) {
                let entry_path = conntrack_path.key("timeouts").key(state);
                let Some((_, sysctl_state)) = CONNTRACK_TIMEOUTS.iter().find(|(name, _)| name == state) else {
                    let names = CONNTRACK_TIMEOUTS.iter().map(|(name, _)| *name);
                    return Err(self.fail_key(
                        &entry_path,
                        format!(
                            "unknown conntrack state \"{state}\"{}allowed: {}",
                            suggestion(state, names.clone()),
                            list(names)
                        ),
                    ));
                };
                let timeout = self.duration(&entry_path, value, "conntrack timeout")?;
                if timeout.is_zero() || timeout.subsec_nanos() != 0 {
                    return Err(self.fail(
                        &entry_path,
                        format!(
                            "conntrack timeout {} is not a whole number of seconds; the kernel keeps them in seconds \
                             (net.netfilter.nf_conntrack_tcp_timeout_{sysctl_state}), e.g. 5s",
                            format_duration(timeout)
                        ),
                    ));
                }
                sysctls.push(Sysctl {
                    name: format!("net.netfilter.nf_conntrack_tcp_timeout_{sysctl_state}"),
                    value: timeout.as_secs().to_string(),
                    location: Some(self.index.value(&entry_path)),
                });
            }
        }
        sysctls.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((plan, sysctls))
    }

    fn address(&self, path: &NodePath, value: &Scalar) -> Checked<(Ipv4Addr, u8)> {
        let text = value.text();
        let Some((address, prefix)) = text.split_once('/') else {
            return Err(self.fail(path, format!("address {value} needs a prefix length 8..30, e.g. \"{text}/24\"")));
        };
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| self.fail(path, format!("{value} is not an IPv4 address with prefix, e.g. 10.0.0.1/24")))?;
        let prefix_len = match prefix.parse::<u8>() {
            Ok(len) if (8..=30).contains(&len) => len,
            _ => {
                return Err(self
                    .fail(path, format!("prefix length \"{prefix}\" of {value} is not allowed; use 8..30, e.g. /24")))
            }
        };
        if address.is_loopback() || address.is_multicast() || address.is_unspecified() || address.is_broadcast() {
            return Err(self.fail(path, format!("{address} is not a unicast host address; use e.g. 10.0.0.1/24")));
        }
        if address.octets()[0] == 0 {
            return Err(self.fail(
                path,
                format!(
                    "{address} is in 0.0.0.0/8, \"this network\" (RFC 1122), which no host may use as its address; \
                     use e.g. 10.0.0.1/24"
                ),
            ));
        }
        let host_bits = u32::from(address) & (u32::MAX >> prefix_len);
        if host_bits == 0 || host_bits == u32::MAX >> prefix_len {
            return Err(self.fail(
                path,
                format!(
                    "{text} is the network or broadcast address of its subnet; use a host address such as .1 or .2"
                ),
            ));
        }
        Ok((address, prefix_len))
    }
}

/// Whether the subnets of two addresses overlap (one contains the other).
fn overlap((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let len = u32::from(a_len.min(b_len));
    u32::from(a) & (u32::MAX << (32 - len)) == u32::from(b) & (u32::MAX << (32 - len))
}

/// Whether two addresses lie in one subnet, each by its own prefix length and by the other's.
fn same_subnet((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let network = |addr: Ipv4Addr, len: u8| u32::from(addr) & (u32::MAX << (32 - u32::from(len)));
    network(a, a_len) == network(b, a_len) && network(a, b_len) == network(b, b_len)
}

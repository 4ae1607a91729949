//! Validation of faults: packet matches, actions and the triggers that switch them on and off.

use super::*;

impl Validator<'_> {
    pub(super) fn faults(&self, path: &NodePath, faults: &[FaultWire]) -> Checked<Vec<FaultPlan>> {
        let mut result: Vec<FaultPlan> = Vec::with_capacity(faults.len());
        let mut first_of: HashMap<String, usize> = HashMap::new();
        for (i, wire) in faults.iter().enumerate() {
            let fault = self.fault(&path.index(i), wire)?;
            if let Some(first) = first_of.get(&fault.name) {
                let first_at = self.index.value(&path.index(*first).key("name"));
                return Err(self.fail(
                    &path.index(i).key("name"),
                    format!("duplicate fault name \"{}\" (first at {first_at}); fault names are unique", fault.name),
                ));
            }
            first_of.insert(fault.name.clone(), i);
            result.push(fault);
        }
        result.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(result)
    }

    fn fault(&self, path: &NodePath, wire: &FaultWire) -> Checked<FaultPlan> {
        let name = self.required(
            &wire.name,
            path,
            "fault",
            "name",
            "a unique name of a-z, 0-9, _ and -, e.g. `name: blackhole`",
        )?;
        let name = match name {
            Scalar::Str(text) if is_name(text, false) && text.len() > MAX_FAULT_NAME => {
                return Err(self.fail(
                    &path.key("name"),
                    format!(
                        "fault name of {} characters is too long; at most {MAX_FAULT_NAME} (it names the fault's \
                         nftables chain and counter)",
                        text.len()
                    ),
                ))
            }
            Scalar::Str(text) if is_name(text, false) => text.clone(),
            other => {
                return Err(self.fail(
                    &path.key("name"),
                    format!(
                        "fault name {other} is not allowed; use lowercase letters, digits, _ and -, e.g. blackhole"
                    ),
                ))
            }
        };
        let host =
            self.required(&wire.at, path, "fault", "at", "the host whose firewall holds the rule, client or server")?;
        let host = self.host(&path.key("at"), host)?;
        let direction = match (&wire.direction, host) {
            (Some(_), HostId::Router) => return Err(self.fail_key(
                &path.key("direction"),
                "a router's faults act on the packets it forwards (hook forward); direction is for client and server",
            )),
            (None, HostId::Router) => Some(Direction::Forward),
            (Some(direction), _) => Some(self.pick(&path.key("direction"), direction, DIRECTIONS, "direction")?),
            (None, _) => None,
        };
        let mut matcher = match &wire.matcher {
            Some(matcher) => self.packet_match(&path.key("match"), matcher)?,
            None => PacketMatch::default(),
        };
        let action = self.required(
            &wire.action,
            path,
            "fault",
            "action",
            "drop, qdisc-drop, flush-conntrack (at: router), { reject: tcp-reset | icmp-port-unreachable | icmp-host-unreachable | icmp-net-unreachable | icmp-admin-prohibited }, \
             or an impairment: { loss: 1% }, { delay: 100ms }, { reorder: 5% }, { duplicate: 1% }, { corrupt: 1% }, \
             { rate: 10mbit }, { inject: rst }",
        )?;
        let action_path = path.key("action");
        let action = match action {
            ScalarOr::Scalar(action) => self.pick(&action_path, action, FAULT_ACTIONS, "fault action")?,
            ScalarOr::Map(map) => self.action_map(&action_path, map)?,
        };
        // A queueing discipline sits on the way out: qdisc-drop is egress, and says so without `direction`.
        let direction = match (action, direction) {
            (FaultAction::QdiscDrop, Some(Direction::Forward)) => {
                return Err(self.fail(
                    &path.key("action"),
                    "qdisc-drop makes the sending host's own TCP see local congestion, and a router sends no TCP \
                     of its own; at the router use `drop`",
                ))
            }
            (FaultAction::QdiscDrop, Some(Direction::Ingress)) => {
                return Err(self.fail(
                    &path.key("direction"),
                    "qdisc-drop drops the host's own packets on their way out (its queueing discipline): it is \
                     egress only; for packets arriving at the host use `drop`",
                ))
            }
            (FaultAction::QdiscDrop, _) => Direction::Egress,
            (_, direction) => direction.unwrap_or(Direction::Ingress),
        };
        if action == FaultAction::FlushConntrack {
            self.check_flush(path, wire, host)?;
        }
        if action == FaultAction::RejectTcpReset {
            match matcher.protocol {
                Some(Protocol::Tcp) => {}
                None => matcher.protocol = Some(Protocol::Tcp),
                Some(other) => {
                    return Err(self.fail(
                        &path.key("match").key("protocol"),
                        format!(
                            "reject with tcp-reset only answers TCP packets, but this fault matches {}; match tcp or use an icmp reject",
                            format!("{other:?}").to_lowercase()
                        ),
                    ))
                }
            }
        }
        let from = match &wire.from {
            Some(from) => self.trigger(&path.key("from"), from, "from")?,
            None => Trigger::At(Duration::ZERO),
        };
        let until = match &wire.until {
            Some(until) => Some(self.trigger(&path.key("until"), until, "until")?),
            None => None,
        };
        if let (Trigger::At(start), Some(Trigger::At(end))) = (&from, &until) {
            if end <= start {
                return Err(self.fail(
                    &path.key("until"),
                    format!(
                        "until {} is not after from {}; the fault would never be on: make until later than from",
                        format_duration(*end),
                        format_duration(*start)
                    ),
                ));
            }
        }
        let mut fault =
            FaultPlan { name, host, direction, matcher, action, from, until, location: self.index.value(path) };
        self.check_impairment_fault(path, wire, &mut fault)?;
        Ok(fault)
    }

    /// `conntrack -F` happens once, at the router, when the fault switches on: it matches nothing and never
    /// switches off.
    fn check_flush(&self, path: &NodePath, wire: &FaultWire, host: HostId) -> Checked<()> {
        if host != HostId::Router {
            return Err(self.fail(
                &path.key("at"),
                "flush-conntrack empties the router's connection tracking table; it is a fault of the router (at: router)",
            ));
        }
        if wire.matcher.is_some() {
            return Err(
                self.fail_key(&path.key("match"), "flush-conntrack forgets every connection; it takes no match")
            );
        }
        if wire.until.is_some() {
            return Err(self.fail_key(
                &path.key("until"),
                "flush-conntrack happens once, when its `from` trigger fires; it has no `until`",
            ));
        }
        Ok(())
    }

    fn packet_match(&self, path: &NodePath, wire: &MatchWire) -> Checked<PacketMatch> {
        let protocol = match &wire.protocol {
            Some(protocol) => Some(self.pick(&path.key("protocol"), protocol, PROTOCOLS, "protocol")?),
            None => None,
        };
        let mut matcher = PacketMatch { protocol, ..PacketMatch::default() };
        for (key, value, slot) in
            [("sport", &wire.sport, &mut matcher.sport), ("dport", &wire.dport, &mut matcher.dport)]
        {
            if let Some(value) = value {
                if let Some(icmp @ (Protocol::Icmp | Protocol::Icmpv6)) = protocol {
                    return Err(
                        self.fail_key(&path.key(key), format!("{icmp} has no ports; drop `{key}` or match tcp or udp"))
                    );
                }
                *slot = Some(self.port(&path.key(key), value, key)?);
            }
        }
        let tcp_only = |key: &str| -> Checked<()> {
            if matches!(protocol, Some(Protocol::Udp | Protocol::Icmp | Protocol::Icmpv6)) {
                return Err(self.fail_key(
                    &path.key(key),
                    format!("`{key}` only matches TCP packets; set `protocol: tcp` or drop it"),
                ));
            }
            Ok(())
        };
        if let Some(flags) = &wire.flags {
            tcp_only("flags")?;
            matcher.tcp_flags = Some(self.flags_match(&path.key("flags"), flags)?);
            matcher.protocol = Some(Protocol::Tcp);
        }
        if let Some(payload) = &wire.payload {
            tcp_only("payload")?;
            matcher.payload = Some(self.pick(&path.key("payload"), payload, PAYLOADS, "payload")?);
            matcher.protocol = Some(Protocol::Tcp);
        }
        Ok(matcher)
    }

    fn trigger(&self, path: &NodePath, wire: &ScalarOr<TriggerWire>, what: &str) -> Checked<Trigger> {
        let map = match wire {
            ScalarOr::Scalar(Scalar::Str(text)) if text.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                let step = self.step_ref(path, &Scalar::Str(text.clone()))?;
                return Ok(Trigger::Step { step, edge: StepEdge::Finished, delay: Duration::ZERO });
            }
            ScalarOr::Scalar(time) => return Ok(Trigger::At(self.run_time(path, time, what)?)),
            ScalarOr::Map(map) => map,
        };
        let kinds = [
            ("at", map.at.is_some()),
            ("after", map.after.is_some()),
            ("started", map.started.is_some()),
            ("state", map.state.is_some()),
            ("packet", map.packet.is_some()),
            ("bytes", map.bytes.is_some()),
        ];
        let given: Vec<&str> = kinds.iter().filter(|(_, set)| *set).map(|(k, _)| *k).collect();
        let kind = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(self.fail(
                    path,
                    format!("{what} trigger needs one of: at, after, started, state, packet, bytes; e.g. {{ after: client.connect }}"),
                ))
            }
            [_, second, ..] => {
                return Err(self.fail_key(
                    &path.key(second),
                    format!("{what} trigger has {}; give only one of at, after, started, state, packet, bytes", list(&given)),
                ))
            }
        };
        let not_with = |key: &str, set: bool| -> Checked<()> {
            if set {
                return Err(self.fail_key(&path.key(key), format!("`{key}` does not go with `{kind}` in a trigger")));
            }
            Ok(())
        };
        not_with("host", map.host.is_some() && matches!(kind, "at" | "after" | "started"))?;
        not_with("nth", map.nth.is_some() && kind != "packet")?;
        not_with("delay", map.delay.is_some() && kind == "at")?;
        let delay = match &map.delay {
            Some(delay) => self.run_time(&path.key("delay"), delay, "delay")?,
            None => Duration::ZERO,
        };
        // A state trigger watches sockets, which only client and server have; packets and bytes are seen by
        // every host's interfaces, the router's too.
        let host = match &map.host {
            Some(host) if kind == "state" => Some(self.program_host(&path.key("host"), host)?),
            Some(host) => Some(self.host(&path.key("host"), host)?),
            None => None,
        };
        let need_host = |example: &str| {
            host.ok_or_else(|| {
                self.fail(
                    path,
                    format!("a {kind} trigger needs `host`: whose socket or interface to watch, e.g. {example}"),
                )
            })
        };
        Ok(match kind {
            "at" => Trigger::At(self.run_time(&path.key("at"), map.at.as_ref().unwrap_or(&Scalar::Null), "at")?),
            "after" | "started" => {
                let (reference, edge) = match (&map.after, &map.started) {
                    (Some(reference), _) => (reference, StepEdge::Finished),
                    (None, Some(reference)) => (reference, StepEdge::Started),
                    (None, None) => return Err(self.fail(path, "trigger needs a step reference")),
                };
                let step = self.step_ref(&path.key(kind), reference)?;
                Trigger::Step { step, edge, delay }
            }
            "state" => {
                let state = self.tcp_state(&path.key("state"), map.state.as_ref().unwrap_or(&Scalar::Null))?;
                Trigger::State { host: need_host("{ state: ESTABLISHED, host: client }")?, state, delay }
            }
            "packet" => {
                let packet_path = path.key("packet");
                let filter =
                    self.packet_filter(&packet_path, map.packet.as_ref().unwrap_or(&PacketFilterWire::default()))?;
                let host = match (host, filter.from) {
                    (Some(host), _) | (None, Some(host)) => host,
                    (None, None) => {
                        return Err(self.fail(
                            path,
                            "a packet trigger needs `host` (whose interface sees the packet) or `packet.from`",
                        ))
                    }
                };
                let nth = match &map.nth {
                    Some(nth) => self.int(&path.key("nth"), nth, "nth", 1, i128::from(u32::MAX))? as u32,
                    None => 1,
                };
                Trigger::Packet { host, filter, nth, delay }
            }
            _ => {
                let bytes = self.int(
                    &path.key("bytes"),
                    map.bytes.as_ref().unwrap_or(&Scalar::Null),
                    "bytes",
                    1,
                    i128::from(u32::MAX),
                )?;
                Trigger::Bytes { host: need_host("{ bytes: 1000, host: client }")?, bytes: bytes as u64, delay }
            }
        })
    }

    pub(super) fn packet_filter(&self, path: &NodePath, wire: &PacketFilterWire) -> Checked<PacketFilter> {
        let protocol = match &wire.protocol {
            Some(protocol) => match self.pick(&path.key("protocol"), protocol, PROTOCOLS, "protocol")? {
                Protocol::Tcp => None,
                other => Some(other),
            },
            None => None,
        };
        if protocol.is_some() {
            let protocol_name = wire.protocol.as_ref().map(Scalar::text).unwrap_or_default();
            let given =
                [("flags", wire.flags.is_some()), ("len", wire.len.is_some()), ("window", wire.window.is_some())];
            for (key, given) in given {
                if given {
                    return Err(self.fail_key(
                        &path.key(key),
                        format!("`{key}` selects TCP segments, not {protocol_name} packets; drop it or the protocol"),
                    ));
                }
            }
        }
        Ok(PacketFilter {
            from: match &wire.from {
                Some(from) => Some(self.host(&path.key("from"), from)?),
                None => None,
            },
            flags: match &wire.flags {
                Some(flags) => Some(self.flags_match(&path.key("flags"), flags)?),
                None => None,
            },
            len: match &wire.len {
                Some(len) => Some(self.int(&path.key("len"), len, "len", 0, 65535)? as u32),
                None => None,
            },
            window: match &wire.window {
                Some(window) => Some(self.int(&path.key("window"), window, "window", 0, 65535)? as u16),
                None => None,
            },
            protocol,
            dropped: match &wire.dropped {
                Some(dropped) => self.boolean(&path.key("dropped"), dropped, "dropped")?,
                None => false,
            },
        })
    }

    /// `flags: "S."` (exactly these) or `flags: { mask: "SAFR", value: "A" }` (`flags & mask == value`).
    fn flags_match(&self, path: &NodePath, flags: &ScalarOr<FlagMaskWire>) -> Checked<TcpFlagsMatch> {
        match flags {
            ScalarOr::Scalar(letters) => Ok(TcpFlagsMatch::exactly(self.tcp_flags(path, letters, "flags")?)),
            ScalarOr::Map(masked) => {
                let mask = self.required(&masked.mask, path, "flags", "mask", "the flags to look at, e.g. \"SAFR\"")?;
                let mask = self.tcp_flags(&path.key("mask"), mask, "mask")?;
                let value =
                    self.required(&masked.value, path, "flags", "value", "the flags that must be set, e.g. \"A\"")?;
                let value = self.tcp_flags(&path.key("value"), value, "value")?;
                if value & !mask != 0 {
                    return Err(self.fail(
                        &path.key("value"),
                        "value sets flags that the mask leaves out; every flag of value must be in mask",
                    ));
                }
                Ok(TcpFlagsMatch { mask, value })
            }
        }
    }
}

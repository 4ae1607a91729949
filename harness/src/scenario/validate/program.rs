//! Validation of the hosts' socket programs: steps, actions, socket options, step expectations, waits.

mod references;

use super::*;
pub(crate) use references::link_connects_to_listens;

impl Validator<'_> {
    pub(super) fn collect_step_names(&mut self, host: HostId, program: &[StepWire]) -> Checked<()> {
        let program_path = NodePath::root().key(host.name());
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut first_of: HashMap<String, usize> = HashMap::new();
        for (i, step) in program.iter().enumerate() {
            let ScalarOr::Map(step) = step else { continue };
            let Some(name) = &step.name else { continue };
            let path = program_path.index(i).key("name");
            let name = match name {
                Scalar::Str(text) if is_name(text, true) => text.clone(),
                other => {
                    return Err(self.fail(
                        &path,
                        format!("step name {other} is not allowed; use letters, digits, _ and -, e.g. connect"),
                    ))
                }
            };
            if let Some(first) = first_of.get(&name) {
                let first_at = self.index.value(&program_path.index(*first).key("name"));
                return Err(self.fail(
                    &path,
                    format!("duplicate step name \"{name}\" on {host} (first at {first_at}); step names are unique per host"),
                ));
            }
            first_of.insert(name.clone(), i);
            names.push((name, i));
        }
        self.step_index[host.index()] = first_of;
        self.step_names[host.index()] = names;
        Ok(())
    }

    pub(super) fn program(&self, host: HostId, program: &[StepWire]) -> Checked<Vec<StepPlan>> {
        let program_path = NodePath::root().key(host.name());
        let mut state = ProgramState::default();
        let mut steps = Vec::with_capacity(program.len());
        for (i, step) in program.iter().enumerate() {
            steps.push(self.step(host, i, &program_path.index(i), step, &mut state)?);
        }
        Ok(steps)
    }

    fn step(
        &self,
        host: HostId,
        index: usize,
        path: &NodePath,
        wire: &StepWire,
        state: &mut ProgramState,
    ) -> Checked<StepPlan> {
        let location = self.index.value(path);
        let map = match wire {
            ScalarOr::Scalar(Scalar::Str(name)) => {
                let action = self.bare_action(path, name, state)?;
                track_family(state, &action, false);
                return Ok(StepPlan {
                    index,
                    name: None,
                    socket: None,
                    action,
                    expect: StepExpectation { tolerance: self.tolerance, location, ..StepExpectation::default() },
                    location,
                });
            }
            ScalarOr::Scalar(other) => {
                return Err(self.fail(
                    path,
                    format!(
                    "a step is an action name like `close` or a map with one action like `connect: {{ port: 9000 }}`, \
                         not {other}; actions: {}",
                    list(ACTION_KEYS)
                ),
                ))
            }
            ScalarOr::Map(map) => map,
        };

        let present = self.present_actions(path, map);
        let (key, action_path) = match present.as_slice() {
            [] => {
                return Err(self.fail(
                    path,
                    format!(
                        "step has no action; give exactly one of: {} (with optional name, on, as, expect)",
                        list(ACTION_KEYS)
                    ),
                ))
            }
            [one] => one.clone(),
            [..] => {
                let mut by_position = present.clone();
                by_position.sort_by_key(|(_, p)| self.index.key(p));
                let names: Vec<&str> = by_position.iter().map(|(k, _)| *k).collect();
                let (second, second_path) = &by_position[1];
                return Err(self.fail_key(
                    second_path,
                    format!(
                        "step has {} actions ({}); a step does exactly one thing: move `{second}` into a step of its own",
                        names.len(),
                        list(&names)
                    ),
                ));
            }
        };

        let as_name = match &map.as_name {
            Some(value) => {
                let as_path = path.key("as");
                if !matches!(key, "socket" | "accept") {
                    return Err(self.fail_key(
                        &as_path,
                        format!("\"as\" names the new socket of a socket or accept step; a {key} step makes no socket"),
                    ));
                }
                let name = match value {
                    Scalar::Str(text) if is_name(text, true) => text.clone(),
                    other => {
                        return Err(self.fail(
                            &as_path,
                            format!("socket name {other} is not allowed; use letters, digits, _ and -, e.g. conn"),
                        ))
                    }
                };
                if state.socket_set.contains(&name) {
                    return Err(self.fail(
                        &as_path,
                        format!("socket name \"{name}\" is already given by an earlier step on {host}; pick another"),
                    ));
                }
                Some(name)
            }
            None => None,
        };
        let socket = match &map.on {
            Some(value) => {
                let on_path = path.key("on");
                if matches!(key, "socket" | "sleep" | "wait" | "exec") {
                    return Err(self.fail_key(
                        &on_path,
                        format!("\"on\" picks the socket a step acts on; a {key} step acts on no existing socket"),
                    ));
                }
                let name = value.text();
                if !state.socket_set.contains(&name) {
                    let known = if state.sockets.is_empty() {
                        "no socket is named before this step; name one with `as:` on a socket or accept step"
                            .to_string()
                    } else {
                        format!("named so far: {}", list(&state.sockets))
                    };
                    return Err(self.fail(
                        &on_path,
                        format!(
                            "no socket named {value} on {host}{}{known}",
                            suggestion(&name, state.sockets.iter().map(String::as_str))
                        ),
                    ));
                }
                Some(name)
            }
            None => None,
        };

        let action = self.action(host, key, &action_path, map, as_name.clone(), state)?;
        track_family(state, &action, map.on.is_some());
        if let Some(name) = as_name {
            if let Some(family) = state.current {
                state.families.insert(name.clone(), family);
            }
            state.socket_set.insert(name.clone());
            state.sockets.push(name);
        }
        let name = map.name.as_ref().map(Scalar::text);
        let expect = self.step_expectation(&path.key("expect"), map.expect.as_ref(), &action, location)?;
        Ok(StepPlan { index, name, socket, action, expect, location })
    }

    /// The action keys present in a step map, with their paths as written (`write` stays `write`).
    fn present_actions(&self, path: &NodePath, map: &StepMapWire) -> Vec<(&'static str, NodePath)> {
        let aliased = |canonical: &'static str, alias: &'static str| {
            let alias_path = path.key(alias);
            if self.index.contains(&alias_path) {
                (alias, alias_path)
            } else {
                (canonical, path.key(canonical))
            }
        };
        let flags = [
            (map.socket.is_some(), "socket"),
            (map.setsockopt.is_some(), "setsockopt"),
            (map.bind.is_some(), "bind"),
            (map.listen.is_some(), "listen"),
            (map.accept.is_some(), "accept"),
            (map.connect.is_some(), "connect"),
            (map.poll.is_some(), "poll"),
            (map.send.is_some(), "send"),
            (map.recv.is_some(), "recv"),
            (map.shutdown.is_some(), "shutdown"),
            (map.close.is_some(), "close"),
            (map.sleep.is_some(), "sleep"),
            (map.getsockopt.is_some(), "getsockopt"),
            (map.wait.is_some(), "wait"),
            (map.exec.is_some(), "exec"),
        ];
        flags
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, key)| match key {
                "send" => aliased("send", "write"),
                "recv" => aliased("recv", "read"),
                _ => (key, path.key(key)),
            })
            .collect()
    }

    fn bare_action(&self, path: &NodePath, name: &str, state: &mut ProgramState) -> Checked<Action> {
        match name {
            "socket" => {
                Ok(Action::Socket { name: None, family: Family::Ipv4, options: Vec::new(), nonblocking: false })
            }
            "listen" => {
                state.listening = true;
                Ok(Action::Listen { port: None, backlog: DEFAULT_BACKLOG, family: state.current.unwrap_or_default() })
            }
            "accept" => {
                self.require_listener(path, state)?;
                Ok(Action::Accept { name: None, nonblocking: false })
            }
            "recv" | "read" => {
                Ok(Action::Recv { max: DEFAULT_RECV_MAX, until_eof: false, nonblocking: false, flags: Vec::new() })
            }
            "close" => Ok(Action::Close),
            known if ACTION_KEYS.contains(&known) => Err(self.fail(
                path,
                format!(
                    "`{known}` needs parameters, e.g. `- {}`; only {} may be written bare",
                    example_of(known),
                    list(BARE_ACTIONS)
                ),
            )),
            unknown => Err(self.fail(
                path,
                format!(
                    "unknown action \"{unknown}\"{}actions: {}",
                    suggestion(unknown, ACTION_KEYS.iter().copied()),
                    list(ACTION_KEYS)
                ),
            )),
        }
    }

    fn require_listener(&self, path: &NodePath, state: &ProgramState) -> Checked<()> {
        if state.listening {
            return Ok(());
        }
        Err(self.fail(path, "accept needs a listening socket first: add `- listen: { port: 9000 }` before it"))
    }

    fn action(
        &self,
        host: HostId,
        key: &str,
        path: &NodePath,
        map: &StepMapWire,
        as_name: Option<String>,
        state: &mut ProgramState,
    ) -> Checked<Action> {
        // The family of the socket the step acts on, when it is known: the named one's, or the current one's.
        let acting = match &map.on {
            Some(name) => state.families.get(&name.text()).copied(),
            None => state.current,
        };
        if let Some(options) = &map.socket {
            let (family, options) = self.socket_family(path, options)?;
            return Ok(Action::Socket {
                name: as_name,
                family,
                options: self.sockopts(path, &options)?,
                nonblocking: false,
            });
        }
        if let Some(options) = &map.setsockopt {
            if options.0.is_empty() {
                return Err(self.fail(
                    path,
                    "setsockopt needs at least one option, e.g. `setsockopt: { TCP_USER_TIMEOUT: 5000 }`",
                ));
            }
            return Ok(Action::SetOpt { options: self.sockopts(path, options)? });
        }
        if let Some(bind) = &map.bind {
            let port =
                self.required(&bind.port, path, "bind", "port", "the local port, e.g. `bind: { port: 9000 }`")?;
            let port = self.port(&path.key("port"), port, "port")?;
            let family = self.step_family(path, "bind", bind.family.as_ref(), acting, None)?;
            return Ok(Action::Bind { port, family });
        }
        if let Some(listen) = &map.listen {
            let port = match &listen.port {
                Some(port) => Some(self.port(&path.key("port"), port, "port")?),
                None => None,
            };
            let backlog = match &listen.backlog {
                Some(backlog) => self.int(&path.key("backlog"), backlog, "backlog", 0, 65535)? as u32,
                None => DEFAULT_BACKLOG,
            };
            let family = self.step_family(path, "listen", listen.family.as_ref(), acting, None)?;
            state.listening = true;
            return Ok(Action::Listen { port, backlog, family });
        }
        if let Some(accept) = &map.accept {
            self.require_listener(path, state)?;
            let nonblocking = self.optional_flag(path, "nonblocking", accept.nonblocking.as_ref())?;
            return Ok(Action::Accept { name: as_name, nonblocking });
        }
        if let Some(connect) = &map.connect {
            let to_path = path.key("to");
            let literal = match &connect.to {
                Some(Scalar::Str(text)) => text.parse::<IpAddr>().ok().map(|address| (address, to_path.clone())),
                _ => None,
            };
            let literal_family = literal.as_ref().map(|(address, path)| (Family::of(*address), path));
            let family = self.step_family(path, "connect", connect.family.as_ref(), acting, literal_family)?;
            let (to, address) = match &connect.to {
                Some(to) => self.connect_target(&to_path, to, family)?,
                None => (Some(host.peer()), self.address_in(host.peer(), family)),
            };
            let port = self.required(
                &connect.port,
                path,
                "connect",
                "port",
                "the peer's port, e.g. `connect: { port: 9000 }`",
            )?;
            let port = self.port(&path.key("port"), port, "port")?;
            let nonblocking = self.optional_flag(path, "nonblocking", connect.nonblocking.as_ref())?;
            return Ok(Action::Connect { to, address, port, nonblocking, after_listen: None });
        }
        if let Some(poll) = &map.poll {
            let events_wire =
                self.required(&poll.events, path, "poll", "events", "e.g. `events: [POLLIN, POLLOUT]`")?;
            // `events: []` is allowed: poll then wakes on POLLERR and POLLHUP alone, which it always reports.
            let events = self.poll_events(&path.key("events"), events_wire)?;
            let timeout =
                self.required(&poll.timeout, path, "poll", "timeout", "how long poll waits, e.g. `timeout: 5s`")?;
            let timeout = self.run_time(&path.key("timeout"), timeout, "poll timeout")?;
            return Ok(Action::Poll { events, timeout });
        }
        if let Some(send) = &map.send {
            return self.send(path, send);
        }
        if let Some(recv) = &map.recv {
            let max = match &recv.max {
                Some(max) => self.int(&path.key("max"), max, "max", 1, MAX_BUFFER as i128)? as usize,
                None => DEFAULT_RECV_MAX,
            };
            let until_eof = match &recv.until {
                Some(until) => {
                    if until != &Scalar::Str("eof".into()) {
                        return Err(self.fail(&path.key("until"), format!("unknown recv until {until}; allowed: eof")));
                    }
                    true
                }
                None => false,
            };
            let nonblocking = self.optional_flag(path, "nonblocking", recv.nonblocking.as_ref())?;
            if nonblocking && until_eof {
                return Err(self.fail(
                    &path.key("nonblocking"),
                    "a nonblocking recv cannot read `until: eof` (it would spin while nothing is queued); \
                     read once with `nonblocking: true`, or until EOF blocking",
                ));
            }
            let flags = self.msg_flags(&path.key("flags"), recv.flags.as_ref(), &MsgFlag::RECV, "recv")?;
            if until_eof && flags.contains(&MsgFlag::Peek) {
                return Err(self.fail(
                    &path.key("flags"),
                    "MSG_PEEK cannot read `until: eof` (a peek leaves the data queued, so it would never end); \
                     peek once, without `until`",
                ));
            }
            return Ok(Action::Recv { max, until_eof, nonblocking, flags });
        }
        if let Some(how) = &map.shutdown {
            return Ok(Action::Shutdown { how: self.pick(path, how, SHUTDOWN_HOW, "shutdown mode")? });
        }
        if map.close.is_some() {
            return Ok(Action::Close);
        }
        if let Some(duration) = &map.sleep {
            let duration = self.run_time(path, duration, "sleep")?;
            if duration.is_zero() {
                return Err(self.fail(path, "sleep must be more than 0s, e.g. `sleep: 8s`"));
            }
            return Ok(Action::Sleep { duration });
        }
        if let Some(option) = &map.getsockopt {
            if matches!(option, Scalar::Str(text) if text == "TCP_INFO") {
                return Ok(Action::GetTcpInfo);
            }
            return match self.pick(path, option, SOCKOPT_NAMES, "socket option") {
                Ok(option) => Ok(Action::GetOpt { option }),
                Err(mut error) => {
                    error.message.push_str(", and TCP_INFO (struct tcp_info, read only)");
                    Err(error)
                }
            };
        }
        if let Some(wait) = &map.wait {
            return self.wait(host, path, wait);
        }
        if let Some(exec) = &map.exec {
            return self.exec(path, exec);
        }
        Err(self.fail(path, format!("step action `{key}` is not handled")))
    }

    fn sockopts(&self, path: &NodePath, options: &Entries<ScalarOr<LingerWire>>) -> Checked<Vec<SockOpt>> {
        let mut result = Vec::with_capacity(options.0.len());
        for (name, value) in &options.0 {
            let option_path = path.key(name);
            let Some((_, option)) = SOCKOPT_NAMES.iter().find(|(n, _)| n == name) else {
                let names = SOCKOPT_NAMES.iter().map(|(n, _)| *n);
                return Err(self.fail_key(
                    &option_path,
                    format!(
                        "unknown socket option \"{name}\"{}allowed: {}",
                        suggestion(name, names.clone()),
                        list(names)
                    ),
                ));
            };
            let value = self.sockopt_value(&option_path, *option, name, value)?;
            result.push(SockOpt { name: *option, value });
        }
        Ok(result)
    }

    fn sockopt_value(
        &self,
        path: &NodePath,
        option: SockOptName,
        name: &str,
        value: &ScalarOr<LingerWire>,
    ) -> Checked<SockOptValue> {
        use SockOptName::*;
        let scalar = match value {
            ScalarOr::Map(linger) if option == SO_LINGER => {
                let on = self.required(&linger.on, path, "SO_LINGER", "on", "true or false")?;
                let on = self.boolean(&path.key("on"), on, "SO_LINGER on")?;
                let seconds = match &linger.seconds {
                    Some(seconds) => {
                        self.int(&path.key("seconds"), seconds, "SO_LINGER seconds", 0, i128::from(i32::MAX))? as i32
                    }
                    None => 0,
                };
                return Ok(SockOptValue::Linger { on, seconds });
            }
            ScalarOr::Map(_) => {
                return Err(self
                    .fail(path, format!("{name} takes a number, not a map; only SO_LINGER takes {{ on, seconds }}")))
            }
            ScalarOr::Scalar(scalar) => scalar,
        };
        if option == SO_ERROR {
            return Err(self.fail_key(path, "SO_ERROR is read-only; read it with `getsockopt: SO_ERROR`"));
        }
        if option == SO_LINGER {
            let seconds = self.int(path, scalar, "SO_LINGER seconds", 0, i128::from(i32::MAX))? as i32;
            return Ok(SockOptValue::Linger { on: true, seconds });
        }
        if option == TCP_CONGESTION {
            let algorithms: Vec<(&str, &'static str)> = CONGESTION_CONTROLS.iter().map(|name| (*name, *name)).collect();
            return Ok(SockOptValue::Algorithm(self.pick(path, scalar, &algorithms, "congestion control")?));
        }
        if matches!(option, SO_RCVTIMEO | SO_SNDTIMEO) {
            // `0s` is the kernel's "no timeout".
            return Ok(SockOptValue::Timeout(self.duration(path, scalar, name)?));
        }
        let (min, max) = match option {
            SO_KEEPALIVE
            | SO_REUSEADDR
            | SO_REUSEPORT
            | TCP_NODELAY
            | TCP_QUICKACK
            | TCP_CORK
            | TCP_THIN_LINEAR_TIMEOUTS
            | TCP_FASTOPEN_CONNECT
            | IP_RECVERR
            | SO_OOBINLINE
            | IPV6_V6ONLY => {
                if let Scalar::Bool(b) = scalar {
                    return Ok(SockOptValue::Int(i32::from(*b)));
                }
                (0, 1)
            }
            TCP_KEEPIDLE | TCP_KEEPINTVL => (1, 32767),
            TCP_KEEPCNT | TCP_SYNCNT => (1, 127),
            IP_TOS => (0, 255),
            IP_TTL => (1, 255),
            _ => (0, i128::from(i32::MAX)),
        };
        Ok(SockOptValue::Int(self.int(path, scalar, name, min, max)? as i32))
    }

    /// A boolean key of a step's action that may be left out (then false), e.g. `nonblocking`.
    fn optional_flag(&self, path: &NodePath, key: &str, value: Option<&Scalar>) -> Checked<bool> {
        value.map_or(Ok(false), |value| self.boolean(&path.key(key), value, key))
    }

    /// `connect: { to }`: a host by name (its address of the socket's `family`), or an IPv4 or IPv6 address (a
    /// host's, or one no host has: nothing answers there, so the connect meets the kernel's own errors, such as
    /// EHOSTUNREACH once ARP or neighbour discovery gives up).
    fn connect_target(&self, path: &NodePath, value: &Scalar, family: Family) -> Checked<(Option<HostId>, IpAddr)> {
        if let Scalar::Str(text) = value {
            if let Ok(address) = text.parse::<IpAddr>() {
                let owner = HostId::EVERY
                    .into_iter()
                    .find(|&host| self.address_in(host, Family::of(address)) == address)
                    .filter(|host| *host != HostId::Router || self.has_router);
                return Ok((owner, address));
            }
        }
        match self.host(path, value) {
            Ok(host) => Ok((Some(host), self.address_in(host, family))),
            Err(mut error) => {
                error
                    .message
                    .push_str("; or an IPv4 or IPv6 address, such as 10.0.0.9 or fd00::9 (no host's: nothing answers)");
                Err(error)
            }
        }
    }

    /// The address of `host` in `family`: its IPv4 address, or its IPv6 one (`fd00::1` client, `fd00::2` server;
    /// the router has none: a scenario with a router and IPv6 is refused).
    fn address_in(&self, host: HostId, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => IpAddr::V4(self.address_of(host)),
            Family::Ipv6 if host == HostId::Router => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            Family::Ipv6 => IpAddr::V6(ipv6_address_of(host)),
        }
    }

    /// `socket: { family: ipv6, OPTION: value, ... }`: the family (default ipv4) and the options without it.
    fn socket_family(
        &self,
        path: &NodePath,
        entries: &Entries<ScalarOr<LingerWire>>,
    ) -> Checked<(Family, Entries<ScalarOr<LingerWire>>)> {
        let mut family = Family::Ipv4;
        let mut options = Vec::with_capacity(entries.0.len());
        for (name, value) in &entries.0 {
            if name != "family" {
                options.push((name.clone(), value.clone()));
                continue;
            }
            let family_path = path.key("family");
            match value {
                ScalarOr::Scalar(scalar) => family = self.family(&family_path, scalar)?,
                ScalarOr::Map(_) => return Err(self.fail(&family_path, "family is ipv4 or ipv6, not a map")),
            }
        }
        Ok((family, Entries(options)))
    }

    /// `family: ipv4 | ipv6`.
    fn family(&self, path: &NodePath, value: &Scalar) -> Checked<Family> {
        self.pick(path, value, &[("ipv4", Family::Ipv4), ("ipv6", Family::Ipv6)], "family")
    }

    /// The family of the socket a bind, listen or connect acts on or makes: `family:` as written, the family of
    /// the socket it acts on (`acting`, when known), or the family of the address it connects to (`literal`);
    /// they must agree. Default ipv4.
    fn step_family(
        &self,
        path: &NodePath,
        action: &str,
        written: Option<&Scalar>,
        acting: Option<Family>,
        literal: Option<(Family, &NodePath)>,
    ) -> Checked<Family> {
        let written = match written {
            Some(value) => Some((self.family(&path.key("family"), value)?, path.key("family"))),
            None => None,
        };
        if let (Some((written, written_path)), Some(acting)) = (&written, acting) {
            if *written != acting {
                return Err(self.fail(
                    written_path,
                    format!(
                        "family {written}: this {action} acts on an {acting} socket made by an earlier step; `family` \
                         only says what socket a step makes when there is none, so drop it or give the earlier \
                         step `family: {written}`"
                    ),
                ));
            }
        }
        let family = written.as_ref().map(|(family, _)| *family).or(acting);
        if let (Some((address_family, address_path)), Some(family)) = (literal, family) {
            if address_family != family {
                return Err(self.fail(
                    address_path,
                    format!(
                        "an {address_family} address, and the socket is {family}; connect an {family} socket to an \
                         {family} address (an IPv6 socket reaches an IPv4 host at its v4-mapped address, such as \
                         ::ffff:10.0.0.2)"
                    ),
                ));
            }
        }
        Ok(family.or(literal.map(|(family, _)| family)).unwrap_or_default())
    }

    /// `flags: [MSG_OOB, ...]` (or one name) of a `send` or `recv`, of those `allowed` for it; sorted, each once.
    fn msg_flags(
        &self,
        path: &NodePath,
        flags: Option<&ScalarList>,
        allowed: &[MsgFlag],
        call: &str,
    ) -> Checked<Vec<MsgFlag>> {
        let Some(flags) = flags else { return Ok(Vec::new()) };
        let mut result = BTreeSet::new();
        for (i, flag) in flags.items.iter().enumerate() {
            let flag_path = if flags.list { path.index(i) } else { path.clone() };
            let names = allowed.iter().map(|flag| flag.name());
            match allowed.iter().find(|known| matches!(flag, Scalar::Str(text) if text == known.name())) {
                Some(known) => {
                    result.insert(*known);
                }
                None => {
                    return Err(self.fail(
                        &flag_path,
                        format!(
                            "unknown {call} flag {flag}{}allowed: {}",
                            suggestion(&flag.text(), names.clone()),
                            list(names)
                        ),
                    ))
                }
            }
        }
        Ok(result.into_iter().collect())
    }

    fn poll_events(&self, path: &NodePath, events: &ScalarList) -> Checked<Vec<PollEvent>> {
        let mut result = BTreeSet::new();
        for (i, event) in events.items.iter().enumerate() {
            let event_path = if events.list { path.index(i) } else { path.clone() };
            let names = PollEvent::ALL.map(PollEvent::name);
            let parsed = match event {
                Scalar::Str(text) => PollEvent::parse(text),
                _ => None,
            };
            match parsed {
                Some(parsed) => {
                    result.insert(parsed);
                }
                None => {
                    return Err(self.fail(
                        &event_path,
                        format!(
                            "unknown poll event {event}{}allowed: {}",
                            suggestion(&event.text(), names),
                            list(names)
                        ),
                    ))
                }
            }
        }
        Ok(result.into_iter().collect())
    }

    fn send(&self, path: &NodePath, send: &SendWire) -> Checked<Action> {
        let bytes =
            self.required(&send.bytes, path, "send", "bytes", "how many bytes each send() writes, e.g. `bytes: 1000`")?;
        let bytes = self.int(&path.key("bytes"), bytes, "bytes", 1, MAX_BUFFER as i128)? as usize;
        let repeat = match &send.repeat {
            Some(Scalar::Str(text)) if text == "forever" => SendRepeat::Forever,
            Some(repeat) => {
                let repeat_path = path.key("repeat");
                match self.int(&repeat_path, repeat, "repeat", 1, i128::from(u32::MAX)) {
                    Ok(n) => SendRepeat::Times(n as u32),
                    Err(_) => {
                        return Err(self.fail(
                            &repeat_path,
                            format!("repeat must be a count 1..{} or `forever`, not {repeat}", u32::MAX),
                        ))
                    }
                }
            }
            None => SendRepeat::Times(1),
        };
        let every = match &send.every {
            Some(every) => {
                let every_path = path.key("every");
                let every = self.run_time(&every_path, every, "every")?;
                if every.is_zero() {
                    return Err(self.fail(&every_path, "every must be more than 0s; leave it out to send back to back"));
                }
                Some(every)
            }
            None => None,
        };
        let until = match &send.until {
            Some(until) => Some(self.pick(&path.key("until"), until, SEND_UNTIL, "send until")?),
            None => None,
        };
        if repeat == SendRepeat::Forever && until.is_none() {
            return Err(self.fail(
                &path.key("repeat"),
                "`repeat: forever` needs `until: error` or `until: would-block` to end the loop",
            ));
        }
        let flags = self.msg_flags(&path.key("flags"), send.flags.as_ref(), &MsgFlag::SEND, "send")?;
        Ok(Action::Send { bytes, repeat, every, until, flags })
    }

    fn exec(&self, path: &NodePath, exec: &ExecWire) -> Checked<Action> {
        let program =
            self.required(&exec.program, path, "exec", "program", "the program to run, e.g. `program: curl`")?;
        let program_path = path.key("program");
        let program = self.text(&program_path, program, "program")?;
        let program = self.resolve(&program_path, &program)?;
        self.no_nul(&program_path, &program, "the program")?;
        if program.is_empty() {
            return Err(self.fail(&program_path, "program is empty once its variables are resolved; give it a value"));
        }
        let mut args = Vec::new();
        if let Some(list) = &exec.args {
            let args_path = path.key("args");
            for (i, arg) in list.items.iter().enumerate() {
                let arg_path = if list.list { args_path.index(i) } else { args_path.clone() };
                let arg = self.resolve(&arg_path, &arg.text())?;
                self.no_nul(&arg_path, &arg, "an argument")?;
                args.push(arg);
            }
        }
        let mut env = Vec::new();
        if let Some(entries) = &exec.env {
            for (name, value) in &entries.0 {
                let env_path = path.key("env").key(name);
                let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(self.fail_key(
                        &env_path,
                        format!(
                            "environment variable name \"{name}\" is not allowed; use letters, digits and _, e.g. LANG"
                        ),
                    ));
                }
                let value = self.resolve(&env_path, &value.text())?;
                self.no_nul(&env_path, &value, "an environment variable")?;
                env.push((name.clone(), value));
            }
        }
        env.sort();
        let stdin = match &exec.stdin {
            Some(stdin) => Some(self.resolve(&path.key("stdin"), &stdin.text())?),
            None => None,
        };
        let timeout = match &exec.timeout {
            Some(timeout) => {
                let timeout_path = path.key("timeout");
                let timeout = self.run_time(&timeout_path, timeout, "exec timeout")?;
                if timeout.is_zero() {
                    return Err(self.fail(&timeout_path, "exec timeout must be more than 0s, e.g. 30s"));
                }
                timeout
            }
            None => self.deadline,
        };
        let background = self.optional_flag(path, "background", exec.background.as_ref())?;
        let stdout = self.patterns(&path.key("stdout"), exec.stdout.as_ref(), "stdout")?;
        let stderr = self.patterns(&path.key("stderr"), exec.stderr.as_ref(), "stderr")?;
        let trace = self.optional_flag(path, "trace", exec.trace.as_ref())?;
        if trace && background {
            return Err(self.fail_key(
                &path.key("trace"),
                "`trace: true` needs a foreground exec: the trace is read when the program ends, for a background \
                 program only after the run; drop `background: true` or the trace",
            ));
        }
        Ok(Action::Exec(ExecPlan { program, args, env, stdin, timeout, background, stdout, stderr, trace }))
    }

    fn patterns(&self, path: &NodePath, patterns: Option<&ScalarList>, what: &str) -> Checked<Vec<String>> {
        let Some(patterns) = patterns else {
            return Ok(Vec::new());
        };
        let mut result = Vec::with_capacity(patterns.items.len());
        for (i, pattern) in patterns.items.iter().enumerate() {
            let pattern_path = if patterns.list { path.index(i) } else { path.clone() };
            let text = pattern.text();
            if self.valid_patterns.borrow().contains(&text) {
                result.push(text);
                continue;
            }
            if let Err(e) = Regex::new(&text) {
                let reason = e.to_string();
                let reason = reason
                    .lines()
                    .find_map(|line| line.strip_prefix("error: "))
                    .unwrap_or(reason.lines().last().unwrap_or("invalid"))
                    .to_string();
                return Err(self.fail(
                    &pattern_path,
                    format!("{what} pattern \"{text}\" is not a valid regular expression: {reason} (syntax: Rust regex crate)"),
                ));
            }
            self.valid_patterns.borrow_mut().insert(text.clone());
            result.push(text);
        }
        Ok(result)
    }

    fn step_expectation(
        &self,
        path: &NodePath,
        wire: Option<&ScalarOr<StepExpectWire>>,
        action: &Action,
        step_location: Location,
    ) -> Checked<StepExpectation> {
        let mut expect =
            StepExpectation { tolerance: self.tolerance, location: step_location, ..StepExpectation::default() };
        let Some(wire) = wire else { return Ok(expect) };
        expect.location = self.index.value(path);
        let map = match wire {
            ScalarOr::Scalar(result) => {
                expect.outcome = Some(self.outcome(path, result, action)?);
                return Ok(expect);
            }
            ScalarOr::Map(map) => map,
        };
        let mut given: Vec<(&str, NodePath)> = Vec::new();
        if let Some(result) = &map.result {
            given.push(("result", path.key("result")));
            expect.outcome = Some(self.outcome(&path.key("result"), result, action)?);
        }
        for (key, events, exact) in [("events", &map.events, true), ("events_include", &map.events_include, false)] {
            let Some(events) = events else { continue };
            let events_path = path.key(key);
            given.push((key, events_path.clone()));
            if !matches!(action, Action::Poll { .. }) {
                return Err(self.fail_key(
                    &events_path,
                    format!("`{key}` only fits poll steps; this is a {} step", action.kind()),
                ));
            }
            let events = self.poll_events(&events_path, events)?;
            if !exact && events.is_empty() {
                return Err(self.fail_key(
                    &events_path,
                    "`events_include: []` asks nothing; name the events that must be there, e.g. [POLLERR]",
                ));
            }
            expect.outcome =
                Some(if exact { ExpectedOutcome::Events(events) } else { ExpectedOutcome::EventsInclude(events) });
        }
        if let Some(exit) = &map.exit {
            let exit_path = path.key("exit");
            given.push(("exit", exit_path.clone()));
            if !matches!(action, Action::Exec(_)) {
                return Err(
                    self.fail_key(&exit_path, format!("`exit` only fits exec steps; this is a {} step", action.kind()))
                );
            }
            expect.outcome = Some(ExpectedOutcome::Exit(self.int(&exit_path, exit, "exit", 0, 255)? as i32));
        }
        if let Some(value) = &map.value {
            let value_path = path.key("value");
            given.push(("value", value_path.clone()));
            if matches!(action, Action::GetTcpInfo) {
                return Err(self.fail_key(
                    &value_path,
                    "TCP_INFO reads as fields: `expect: { tcp_info: { snd_cwnd: 10, rto: { min: 200ms } } }`",
                ));
            }
            let Action::GetOpt { option } = action else {
                return Err(self.fail_key(
                    &value_path,
                    format!("`value` only fits getsockopt steps; this is a {} step", action.kind()),
                ));
            };
            if *option == SockOptName::SO_ERROR {
                return Err(self.fail_key(
                    &value_path,
                    "SO_ERROR reads as a result: `expect: ok` (none pending) or the errno, e.g. `expect: ETIMEDOUT`",
                ));
            }
            let value =
                self.sockopt_value(&value_path, *option, crate::scenario::names::sockopt_name(*option), value)?;
            expect.outcome = Some(ExpectedOutcome::Value(value));
        }
        if let Some(fields) = &map.tcp_info {
            let fields_path = path.key("tcp_info");
            given.push(("tcp_info", fields_path.clone()));
            if !matches!(action, Action::GetTcpInfo) {
                return Err(self.fail_key(
                    &fields_path,
                    format!("`tcp_info` only fits `getsockopt: TCP_INFO` steps; this is a {} step", action.kind()),
                ));
            }
            expect.outcome = Some(ExpectedOutcome::TcpInfo(self.tcp_info_bounds(&fields_path, fields)?));
        }
        if given.len() > 1 {
            given.sort_by_key(|(_, p)| self.index.key(p));
            return Err(self.fail_key(
                &given[1].1,
                format!(
                    "give only one of result, events, events_include, exit, value, tcp_info; this expect has {}",
                    list(given.iter().map(|(k, _)| *k))
                ),
            ));
        }
        if let Some(after) = &map.after {
            expect.after = Some(self.run_time(&path.key("after"), after, "after")?);
        }
        if let Some(at) = &map.at {
            expect.at = Some(self.run_time(&path.key("at"), at, "at")?);
        }
        if map.since.is_some() && map.at.is_none() {
            return Err(self.fail_key(
                &path.key("since"),
                "`since` says what `at` counts from; give `at` too (e.g. at: 19s, since: { packet: { from: client, flags: \"P.\" } })",
            ));
        }
        expect.since = self.anchor(path, map.since.as_ref())?;
        if let Some(tolerance) = &map.tolerance {
            expect.tolerance = self.tolerance(&path.key("tolerance"), tolerance)?;
        }
        Ok(expect)
    }

    /// `tcp_info: { snd_cwnd: 10, total_retrans: { min: 1 }, rto: { max: 300ms } }`: a value or a range per
    /// field of `struct tcp_info`, times as durations.
    fn tcp_info_bounds(&self, path: &NodePath, fields: &Entries<ScalarOr<RangeWire>>) -> Checked<Vec<tcp_info::Bound>> {
        if fields.0.is_empty() {
            return Err(self.fail(path, "tcp_info needs at least one field, e.g. { snd_cwnd: 10 }"));
        }
        let names = || tcp_info::FIELDS.iter().map(|field| field.name);
        let mut bounds = Vec::with_capacity(fields.0.len());
        for (name, wire) in &fields.0 {
            let field_path = path.key(name);
            let Some(field) = tcp_info::lookup(name) else {
                return Err(self.fail_key(
                    &field_path,
                    format!(
                        "unknown tcp_info field {name}{}fields are those of struct tcp_info without `tcpi_`: {}",
                        suggestion(name, names()),
                        list(names())
                    ),
                ));
            };
            let value = |key: &NodePath, scalar: &Scalar| -> Checked<u64> {
                let what = format!("tcp_info {name}");
                match field.unit {
                    tcp_info::Unit::Count => Ok(self.int(key, scalar, &what, 0, i128::from(u64::MAX))? as u64),
                    tcp_info::Unit::Micros => {
                        Ok(u64::try_from(self.duration(key, scalar, &what)?.as_micros()).unwrap_or(u64::MAX))
                    }
                    tcp_info::Unit::Millis => {
                        Ok(u64::try_from(self.duration(key, scalar, &what)?.as_millis()).unwrap_or(u64::MAX))
                    }
                }
            };
            let bound = match wire {
                ScalarOr::Scalar(scalar) => {
                    let exact = value(&field_path, scalar)?;
                    tcp_info::Bound { field: field.name, min: Some(exact), max: Some(exact) }
                }
                ScalarOr::Map(range) => {
                    let end = |key: &str, scalar: &Option<Scalar>| {
                        scalar.as_ref().map(|scalar| value(&field_path.key(key), scalar)).transpose()
                    };
                    let (min, max) = (end("min", &range.min)?, end("max", &range.max)?);
                    match (min, max) {
                        (None, None) => {
                            return Err(self.fail(
                                &field_path,
                                format!("tcp_info {name} needs a value, or `min`, `max` or both, e.g. {{ min: 1 }}"),
                            ))
                        }
                        (Some(low), Some(high)) if low > high => {
                            return Err(self.fail(
                                &field_path.key("max"),
                                format!("tcp_info {name}: max is below min; nothing could match"),
                            ))
                        }
                        _ => tcp_info::Bound { field: field.name, min, max },
                    }
                }
            };
            bounds.push(bound);
        }
        Ok(bounds)
    }

    fn outcome(&self, path: &NodePath, value: &Scalar, action: &Action) -> Checked<ExpectedOutcome> {
        let kind = action.kind();
        let only =
            |what: &str, fits: &str| self.fail(path, format!("`{what}` only fits {fits} steps; this is a {kind} step"));
        match value {
            Scalar::Int(n) => {
                if !matches!(action, Action::Send { .. } | Action::Recv { .. }) {
                    return Err(only("a byte count", "send and recv"));
                }
                let bytes = u64::try_from(*n)
                    .map_err(|_| self.fail(path, format!("byte count {n} is negative; expect 0 or more bytes")))?;
                Ok(ExpectedOutcome::Bytes(bytes))
            }
            Scalar::Str(text) if text == "ok" => Ok(ExpectedOutcome::Ok),
            Scalar::Str(text) if text == "eof" => {
                if !matches!(action, Action::Recv { .. }) {
                    return Err(only("eof", "recv/read"));
                }
                Ok(ExpectedOutcome::Eof)
            }
            Scalar::Str(text) if text == "timeout" => {
                if !matches!(action, Action::Poll { .. }) {
                    return Err(only("timeout", "poll"));
                }
                Ok(ExpectedOutcome::Timeout)
            }
            Scalar::Str(text) if text.starts_with('E') && text.chars().all(|c| c.is_ascii_uppercase()) => {
                Ok(ExpectedOutcome::Error(self.errno(path, value)?))
            }
            other => {
                let words = ["ok", "eof", "timeout"];
                let hint = suggestion(&other.text(), words.into_iter().chain(errno_names()));
                Err(self.fail(
                    path,
                    format!(
                        "unknown result {other}{hint}allowed: ok, eof, timeout, a byte count, or an errno: {}",
                        list(errno_names())
                    ),
                ))
            }
        }
    }

    /// Refuses a NUL character, which execve cannot pass: better found now than once the run has started.
    fn no_nul(&self, path: &NodePath, text: &str, what: &str) -> Checked<()> {
        if text.contains('\0') {
            return Err(self.fail(
                path,
                format!("{what} of exec holds a NUL character (\\0), which no program can receive; remove it"),
            ));
        }
        Ok(())
    }
}

/// A one-line example of an action that needs parameters, for "needs parameters" errors.
fn example_of(action: &str) -> &'static str {
    match action {
        "setsockopt" => "setsockopt: { TCP_USER_TIMEOUT: 5000 }",
        "bind" => "bind: { port: 9000 }",
        "connect" => "connect: { port: 9000 }",
        "poll" => "poll: { events: [POLLIN], timeout: 5s }",
        "send" | "write" => "send: { bytes: 1000 }",
        "shutdown" => "shutdown: WR",
        "sleep" => "sleep: 5s",
        "getsockopt" => "getsockopt: SO_ERROR",
        "wait" => "wait: server.accept (or wait: { listening: 9000 })",
        "exec" => "exec: { program: curl, args: [\"http://10.0.0.2:9000/\"] }",
        _ => "close",
    }
}

/// What a step does to the families [`ProgramState`] knows: a socket it makes becomes current, with its family;
/// an unnamed close leaves no current socket.
fn track_family(state: &mut ProgramState, action: &Action, named: bool) {
    match action {
        Action::Socket { family, .. } => state.current = Some(*family),
        Action::Accept { .. } => state.current = Some(state.listener.unwrap_or_default()),
        Action::Listen { family, .. } => {
            state.listener = Some(*family);
            if !named {
                state.current = Some(*family);
            }
        }
        Action::Bind { family, .. } if !named => state.current = Some(*family),
        Action::Connect { address, .. } if !named => state.current = Some(Family::of(*address)),
        Action::Close if !named => state.current = None,
        _ => {}
    }
}

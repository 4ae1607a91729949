//! Steps that refer to other steps: step references (`client.connect`), waits and the deadlocks two waits
//! can make, and each `connect` linked to the peer's start-up `listen`.

use super::super::*;

impl Validator<'_> {
    /// `client.connect` as host and step name, checked against the named steps.
    pub(in crate::scenario::validate) fn step_ref(&self, path: &NodePath, value: &Scalar) -> Checked<StepRef> {
        let text = value.text();
        let Some((host_name, step)) = text.split_once('.') else {
            return Err(
                self.fail(path, format!("{value} is not a step reference; write host.step, e.g. client.connect"))
            );
        };
        let Some(host) = HostId::parse(host_name) else {
            return Err(self.fail(
                path,
                format!(
                    "unknown host \"{host_name}\" in step reference {value}{}hosts are: client, server",
                    suggestion(host_name, ["client", "server"])
                ),
            ));
        };
        let names = &self.step_names[host.index()];
        let Some(&index) = self.step_index[host.index()].get(step) else {
            let known = if names.is_empty() {
                format!("{host} has no named steps; name one with `name: {step}`")
            } else {
                format!("named steps on {host}: {}", list(names.iter().map(|(n, _)| n)))
            };
            return Err(self.fail(
                path,
                format!(
                    "no step named \"{step}\" on {host}{}{known}",
                    suggestion(step, names.iter().map(|(n, _)| n.as_str()))
                ),
            ));
        };
        Ok(StepRef { host, index, name: step.to_string() })
    }

    pub(super) fn wait(&self, host: HostId, path: &NodePath, wait: &ScalarOr<WaitWire>) -> Checked<Action> {
        let (target_path, target, edge) = match wait {
            ScalarOr::Scalar(target) => (path.clone(), target, StepEdge::Finished),
            ScalarOr::Map(map) => {
                if let Some(port) = &map.listening {
                    return self.wait_listening(host, path, map, port);
                }
                if map.host.is_some() {
                    return Err(self.fail_key(
                        &path.key("host"),
                        "\"host\" goes with `listening` (the host whose port to wait for); a step reference names \
                         its host itself: `for: server.accept`",
                    ));
                }
                let target = self.required(
                    &map.target,
                    path,
                    "wait",
                    "for",
                    "the step to wait for, e.g. `for: server.accept` (or `listening: PORT`, a port to wait for)",
                )?;
                let edge = match &map.edge {
                    Some(edge) => self.pick(&path.key("edge"), edge, EDGES, "edge")?,
                    None => StepEdge::Finished,
                };
                (path.key("for"), target, edge)
            }
        };
        let step = self.step_ref(&target_path, target)?;
        if step.host == host {
            return Err(self.fail(
                &target_path,
                format!(
                    "{host} cannot wait for its own step {}: steps of one host already run in order; wait for a step of {}",
                    target.text(),
                    host.peer()
                ),
            ));
        }
        Ok(Action::Wait { step, edge })
    }

    /// `wait: { listening: PORT, host: HOST }`: the port, and the host (the other one by default).
    pub(super) fn wait_listening(
        &self,
        host: HostId,
        path: &NodePath,
        map: &WaitWire,
        port: &Scalar,
    ) -> Checked<Action> {
        for (given, key) in [(&map.target, "for"), (&map.edge, "edge")] {
            if given.is_some() {
                return Err(self.fail_key(
                    &path.key(key),
                    format!(
                        "a wait is for a step (`for`, `edge`) or for a listening port (`listening`, `host`), not \
                         both: move `{key}` into a wait step of its own"
                    ),
                ));
            }
        }
        let port = self.port(&path.key("listening"), port, "listening port")?;
        let target = match &map.host {
            Some(target) => self.program_host(&path.key("host"), target)?,
            None => host.peer(),
        };
        Ok(Action::WaitListening { host: target, port })
    }

    /// Refuses two hosts that wait for each other: each blocked before the step the other waits for.
    pub(in crate::scenario::validate) fn check_wait_deadlocks(&self, steps: &[Vec<StepPlan>; 2]) -> Checked<()> {
        // Per host, in step order: (its step index, target step index on the peer, edge).
        let mut waits: [Vec<(usize, usize, StepEdge)>; 2] = [Vec::new(), Vec::new()];
        for host in HostId::ALL {
            for step in &steps[host.index()] {
                if let Action::Wait { step: target, edge } = &step.action {
                    waits[host.index()].push((step.index, target.index, *edge));
                }
            }
        }
        // A wait holds its host at its step until the target is reached: started = the target step began, finished
        // = it ended. The wait at `blocker` keeps the target out of reach when the target lies at or beyond
        // `reach` = target index (+1 for finished); two waits deadlock when each blocks the other's target.
        let reach = |target: usize, edge: StepEdge| target + usize::from(edge == StepEdge::Finished);
        let blocks = |blocker: usize, target: usize, edge: StepEdge| blocker < reach(target, edge);
        // Per host, the highest reach among its first n waits, so each wait is checked against all waits of the
        // peer in O(log n) instead of pairwise.
        let highest_reach: [Vec<usize>; 2] = [0, 1].map(|host| {
            waits[host]
                .iter()
                .scan(0, |highest, &(_, target, edge)| {
                    *highest = (*highest).max(reach(target, edge));
                    Some(*highest)
                })
                .collect()
        });
        for host in HostId::ALL {
            let peer = host.peer();
            let peer_waits = &waits[peer.index()];
            for &(index, target, edge) in &waits[host.index()] {
                let blocking = peer_waits.partition_point(|&(other_index, _, _)| blocks(other_index, target, edge));
                if blocking == 0 || highest_reach[peer.index()][blocking - 1] <= index {
                    continue;
                }
                let Some(&(other_index, other_target, _)) = peer_waits[..blocking]
                    .iter()
                    .find(|&&(_, other_target, other_edge)| blocks(index, other_target, other_edge))
                else {
                    continue;
                };
                let step_path = NodePath::root().key(host.name()).index(index);
                let peer_steps = &steps[peer.index()];
                let own_steps = &steps[host.index()];
                let name_of = |steps: &[StepPlan], i: usize| steps[i].name.clone().unwrap_or_default();
                return Err(self.fail(
                    &step_path,
                    format!(
                        "deadlock: this step waits for {peer}.{}, but {peer} reaches that step only after its \
                         step {}, which waits for {host}.{}, a step that comes after this one; reorder the steps \
                         so that one host can go on",
                        name_of(peer_steps, target),
                        peer_steps[other_index].label(),
                        name_of(own_steps, other_target),
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Points each `connect` at the peer's start-up `listen` on its port, which it then waits for: both programs
/// start at once, and a connect must not race the listen the peer makes as its first thing. Only a listen on
/// the connect's port within the peer's setup (its first steps, all `socket` / `setsockopt` / `bind` /
/// `listen`) counts; a listen the peer makes later (after a `sleep` or a `wait`) is ordered by the scenario
/// itself, which may mean a connect to be refused. A connect to a port the router forwards (DNAT) waits for the
/// server's listen on the port it is forwarded to.
pub(crate) fn link_connects_to_listens(steps: &mut [Vec<StepPlan>; 2], router: Option<&RouterPlan>) {
    let listens: [Vec<(u16, StepRef)>; 2] = HostId::ALL.map(|host| startup_listens(host, &steps[host.index()]));
    let forwards = router.map_or(&[][..], |router| &router.dnat[..]);
    for host in HostId::ALL {
        for step in &mut steps[host.index()] {
            let Action::Connect { to: Some(to), port, after_listen, .. } = &mut step.action else { continue };
            let (listener, listen_port) = match *to {
                HostId::Router => match forwards.iter().find(|forward| forward.port == *port) {
                    Some(forward) => (HostId::Server, forward.to_port),
                    None => continue,
                },
                to if to == host => continue,
                to => (to, *port),
            };
            if listener != host {
                *after_listen = listens[listener.index()]
                    .iter()
                    .find(|(listening, _)| *listening == listen_port)
                    .map(|(_, listen)| listen.clone());
            }
        }
    }
}

/// The ports a host listens on before its program does anything else, with the step that listens.
fn startup_listens(host: HostId, steps: &[StepPlan]) -> Vec<(u16, StepRef)> {
    let mut listens = Vec::new();
    let mut bound = None;
    for step in steps {
        match step.action {
            Action::Listen { port, .. } => {
                if let Some(port) = port.or(bound) {
                    let name = step.name.clone().unwrap_or_else(|| format!("#{}", step.index + 1));
                    listens.push((port, StepRef { host, index: step.index, name }));
                }
            }
            Action::Bind { port, .. } => bound = Some(port),
            Action::Socket { .. } | Action::SetOpt { .. } => {}
            _ => break,
        }
    }
    listens
}

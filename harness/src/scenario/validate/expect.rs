//! Validation of whole-run expectations: packets, socket states, timers, queues and errno events.

use super::*;

impl Validator<'_> {
    pub(super) fn run_expectations(&self, path: &NodePath, wire: Option<&RunExpectWire>) -> Checked<RunExpectations> {
        let Some(wire) = wire else {
            return Ok(RunExpectations::default());
        };
        let mut expect = RunExpectations::default();
        for (i, packet) in wire.packets.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.packets.push(self.packet_expectation(&path.key("packets").index(i), packet)?);
        }
        for (i, state) in wire.states.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.states.push(self.state_expectation(&path.key("states").index(i), state)?);
        }
        for (i, timer) in wire.timers.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.timers.push(self.timer_expectation(&path.key("timers").index(i), timer)?);
        }
        for (i, queue) in wire.queues.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.queues.push(self.queue_expectation(&path.key("queues").index(i), queue)?);
        }
        for (i, counter) in wire.counters.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.counters.push(self.counter_expectation(&path.key("counters").index(i), counter)?);
        }
        for (i, info) in wire.tcp_info.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.tcp_info.push(self.tcp_info_expectation(&path.key("tcp_info").index(i), info)?);
        }
        for (i, error) in wire.errors.as_deref().unwrap_or(&[]).iter().enumerate() {
            expect.errors.push(self.error_expectation(&path.key("errors").index(i), error)?);
        }
        Ok(expect)
    }

    fn error_expectation(&self, path: &NodePath, wire: &ErrorExpectWire) -> Checked<ErrorExpectation> {
        let host = self.required(&wire.host, path, "errors expectation", "host", "client or server")?;
        let host_path = path.key("host");
        let host = self.program_host(&host_path, host)?;
        if !self.traced[host.index()] {
            return Err(self.fail(
                &host_path,
                format!(
                    "errors of {host} come from its exec steps with `trace: true`, and {host} has none: add \
                     `trace: true` to the exec whose calls this expects"
                ),
            ));
        }
        let port = match &wire.port {
            Some(port) => Some(self.port(&path.key("port"), port, "port")?),
            None => None,
        };
        let errno = match &wire.errno {
            Some(errno) => Some(self.errno(&path.key("errno"), errno)?),
            None => None,
        };
        let call = match &wire.call {
            Some(Scalar::Str(call)) if is_call_name(call) => Some(call.clone()),
            Some(other) => {
                return Err(self.fail(
                    &path.key("call"),
                    format!(
                        "call {other} is not a system call name; write it as strace does, e.g. recvfrom, connect, \
                         sendto, or `getsockopt SO_ERROR`"
                    ),
                ))
            }
            None => None,
        };
        let EventTimes { count, at, window } =
            self.event_times(path, "errors", &wire.count, &wire.at, &wire.within, true)?;
        let tolerance = self.own_tolerance(path, wire.tolerance.as_ref())?;
        Ok(ErrorExpectation {
            host,
            port,
            errno,
            call,
            count,
            at,
            window,
            tolerance,
            since: self.anchor(path, wire.since.as_ref())?,
            location: self.index.value(path),
        })
    }

    fn queue_expectation(&self, path: &NodePath, wire: &QueueExpectWire) -> Checked<QueueExpectation> {
        let host = self.required(&wire.host, path, "queue expectation", "host", "client or server")?;
        let host = self.program_host(&path.key("host"), host)?;
        let port = match &wire.port {
            Some(port) => Some(self.port(&path.key("port"), port, "port")?),
            None => None,
        };
        let listener = match &wire.listener {
            Some(listener) => self.boolean(&path.key("listener"), listener, "listener")?,
            None => false,
        };
        let queue = self.required(&wire.queue, path, "queue expectation", "queue", "recv (Recv-Q) or send (Send-Q)")?;
        let queue = self.pick(&path.key("queue"), queue, QUEUES, "queue")?;
        let max = match &wire.max {
            Some(max) => Some(self.int(&path.key("max"), max, "max", 0, i128::from(u32::MAX))? as u32),
            None => None,
        };
        let reaches = match &wire.reaches {
            Some(reaches) => Some(self.int(&path.key("reaches"), reaches, "reaches", 1, i128::from(u32::MAX))? as u32),
            None => None,
        };
        if let (Some(max), Some(reaches)) = (max, reaches) {
            if reaches > max {
                return Err(self
                    .fail(&path.key("reaches"), format!("reaches {reaches} is above max {max}; nothing could match")));
            }
        }
        let mut sequence = Vec::new();
        for (i, step) in wire.sequence.as_deref().unwrap_or(&[]).iter().enumerate() {
            let step_path = path.key("sequence").index(i);
            let value_of = |value: &Scalar, value_path: &NodePath| {
                self.int(value_path, value, "queue value", 0, i128::from(u32::MAX)).map(|v| v as u32)
            };
            sequence.push(match step {
                ScalarOr::Scalar(value) => QueueStep { value: value_of(value, &step_path)?, at: None },
                ScalarOr::Map(map) => {
                    let value =
                        self.required(&map.value, &step_path, "queue step", "value", "e.g. { value: 1, at: 8s }")?;
                    QueueStep {
                        value: value_of(value, &step_path.key("value"))?,
                        at: match &map.at {
                            Some(at) => Some(self.run_time(&step_path.key("at"), at, "at")?),
                            None => None,
                        },
                    }
                }
            });
        }
        if sequence.is_empty() && max.is_none() && reaches.is_none() {
            return Err(self.fail(
                path,
                "a queue expectation needs a `sequence` of values (e.g. [0, { value: 1, at: 8s }]), a `max` or a \
                 `reaches`, or several of them",
            ));
        }
        let tolerance = self.own_tolerance(path, wire.tolerance.as_ref())?;
        Ok(QueueExpectation {
            host,
            port,
            listener,
            queue,
            sequence,
            max,
            reaches,
            tolerance,
            since: self.anchor(path, wire.since.as_ref())?,
            location: self.index.value(path),
        })
    }

    /// `since: client.connect` (the named step whose end the expectation's times count from),
    /// `since: { started: client.connect }` (its start), `since: { packet: {...}, nth: 2 }` (the n-th packet
    /// matching the filter) or `since: { next-retransmission: {...} }` (the expiry of the timer the last such
    /// packet armed).
    pub(super) fn anchor(&self, path: &NodePath, since: Option<&ScalarOr<SinceWire>>) -> Checked<Option<Since>> {
        let path = path.key("since");
        let map = match since {
            None => return Ok(None),
            Some(ScalarOr::Scalar(step)) => {
                return Ok(Some(Since::Step(self.step_ref(&path, step)?)));
            }
            Some(ScalarOr::Map(map)) => map,
        };
        let moments =
            [map.started.is_some(), map.packet.is_some() || map.nth.is_some(), map.next_retransmission.is_some()];
        if moments.iter().filter(|given| **given).count() > 1 {
            return Err(self.fail(
                &path,
                "since counts from one moment: `{ started: host.step }`, `{ packet: {...}, nth: N }` or \
                 `{ next-retransmission: {...} }`, not two of them",
            ));
        }
        if let Some(step) = &map.started {
            return Ok(Some(Since::Started(self.step_ref(&path.key("started"), step)?)));
        }
        if let Some(filter) = &map.next_retransmission {
            let filter = self.packet_filter(&path.key("next-retransmission"), filter)?;
            return Ok(Some(Since::NextRetransmission { filter }));
        }
        let example = "e.g. { packet: { from: server, window: 0 }, nth: 1 }, { started: client.connect } or \
                       { next-retransmission: { from: client, len: 17 } }";
        let packet = self.required(&map.packet, &path, "since", "packet", example)?;
        let filter = self.packet_filter(&path.key("packet"), packet)?;
        let nth = match &map.nth {
            Some(nth) => self.int(&path.key("nth"), nth, "nth", 1, i128::from(u32::MAX))? as u32,
            None => 1,
        };
        Ok(Some(Since::Packet { filter, nth }))
    }

    fn packet_expectation(&self, path: &NodePath, wire: &PacketExpectWire) -> Checked<PacketExpectation> {
        let filter = self.packet_filter(
            path,
            &PacketFilterWire {
                from: wire.from.clone(),
                flags: wire.flags.clone(),
                len: wire.len.clone(),
                window: wire.window.clone(),
                protocol: wire.protocol.clone(),
                dropped: wire.dropped.clone(),
            },
        )?;
        let EventTimes { count, at, window } =
            self.event_times(path, "packet", &wire.count, &wire.at, &wire.within, wire.doubling.is_none())?;
        let doubling = match &wire.doubling {
            Some(doubling) => {
                let doubling_path = path.key("doubling");
                let doubling = self.int(&doubling_path, doubling, "doubling", 1, i128::from(u16::MAX))? as u32;
                if count.is_some_and(|count| count < doubling + 2) {
                    return Err(self.fail(
                        &doubling_path,
                        format!(
                            "doubling: {doubling} compares {} intervals, which takes {} packets; count says {}",
                            doubling + 1,
                            doubling + 2,
                            count.unwrap_or(0)
                        ),
                    ));
                }
                Some(doubling)
            }
            None => None,
        };
        let tolerance = self.own_tolerance(path, wire.tolerance.as_ref())?;
        Ok(PacketExpectation {
            filter,
            count,
            at,
            window,
            doubling,
            tolerance,
            since: self.anchor(path, wire.since.as_ref())?,
            location: self.index.value(path),
        })
    }

    /// `count`, `at` and `within` of a packet or errno expectation (`what`): one of `count` and `at` at least
    /// (unless `needs_count` is false: a packet expectation's `doubling` says how many it takes), the count
    /// agreeing with the times, the times in order, the window in order.
    fn event_times(
        &self,
        path: &NodePath,
        what: &str,
        count: &Option<Scalar>,
        times: &Option<ScalarList>,
        within: &Option<ScalarList>,
        needs_count: bool,
    ) -> Checked<EventTimes> {
        let mut at = Vec::new();
        if let Some(times) = times {
            let at_path = path.key("at");
            for (i, time) in times.items.iter().enumerate() {
                let time_path = if times.list { at_path.index(i) } else { at_path.clone() };
                let time = self.run_time(&time_path, time, "at")?;
                if at.last().is_some_and(|last| *last > time) {
                    return Err(self.fail(&time_path, format!("{what} times in `at` must be in increasing order")));
                }
                at.push(time);
            }
        }
        let mut count = match count {
            Some(count) => Some(self.int(&path.key("count"), count, "count", 0, i128::from(u32::MAX))? as u32),
            None => None,
        };
        if times.is_some() {
            let times = at.len() as u32;
            if count.is_some_and(|count| count != times) {
                return Err(self.fail(
                    &path.key("count"),
                    format!(
                        "count {} disagrees with the {times} times in `at`; leave count out or make them match",
                        count.unwrap_or(0)
                    ),
                ));
            }
            count = Some(times);
        }
        if count.is_none() && needs_count {
            return Err(self.fail(
                path,
                format!(
                    "{} {what} expectation needs `count` (0 = none at all) or `at` (the times they are seen)",
                    if what.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
                ),
            ));
        }
        let window = match within {
            Some(within) => {
                let within_path = path.key("within");
                let [start, end] = within.items.as_slice() else {
                    return Err(self.fail(&within_path, "within must be a window [start, end], e.g. [13s, 15s]"));
                };
                let item = |i: usize| within_path.index(i);
                let start = self.run_time(&item(0), start, "within start")?;
                let end = self.run_time(&item(1), end, "within end")?;
                if end < start {
                    return Err(
                        self.fail(&item(1), "within ends before it starts; write [start, end] with start <= end")
                    );
                }
                Some((start, end))
            }
            None => None,
        };
        Ok(EventTimes { count, at, window })
    }

    /// An expectation's own `tolerance`, or else the scenario's.
    fn own_tolerance(&self, path: &NodePath, tolerance: Option<&ScalarOr<ToleranceWire>>) -> Checked<Tolerance> {
        match tolerance {
            Some(tolerance) => self.tolerance(&path.key("tolerance"), tolerance),
            None => Ok(self.tolerance),
        }
    }

    fn state_expectation(&self, path: &NodePath, wire: &StateExpectWire) -> Checked<StateExpectation> {
        let host = self.required(&wire.host, path, "state expectation", "host", "client or server")?;
        let host = self.program_host(&path.key("host"), host)?;
        let port = match &wire.port {
            Some(port) => Some(self.port(&path.key("port"), port, "port")?),
            None => None,
        };
        let sequence_wire =
            self.required(&wire.sequence, path, "state expectation", "sequence", "e.g. [SYN-RECV, GONE]")?;
        if sequence_wire.is_empty() {
            return Err(self.fail(&path.key("sequence"), "sequence needs at least one state, e.g. [ESTABLISHED, GONE]"));
        }
        let mut sequence = Vec::with_capacity(sequence_wire.len());
        for (i, step) in sequence_wire.iter().enumerate() {
            let step_path = path.key("sequence").index(i);
            sequence.push(match step {
                ScalarOr::Scalar(state) => StateStep { state: self.tcp_state(&step_path, state)?, at: None },
                ScalarOr::Map(map) => {
                    let state =
                        self.required(&map.state, &step_path, "state step", "state", "e.g. { state: GONE, at: 7s }")?;
                    StateStep {
                        state: self.tcp_state(&step_path.key("state"), state)?,
                        at: match &map.at {
                            Some(at) => Some(self.run_time(&step_path.key("at"), at, "at")?),
                            None => None,
                        },
                    }
                }
            });
        }
        let tolerance = self.own_tolerance(path, wire.tolerance.as_ref())?;
        Ok(StateExpectation {
            host,
            port,
            sequence,
            tolerance,
            since: self.anchor(path, wire.since.as_ref())?,
            location: self.index.value(path),
        })
    }

    fn timer_expectation(&self, path: &NodePath, wire: &TimerExpectWire) -> Checked<TimerExpectation> {
        let host = self.required(&wire.host, path, "timer expectation", "host", "client or server")?;
        let host = self.program_host(&path.key("host"), host)?;
        let timer =
            self.required(&wire.timer, path, "timer expectation", "timer", "on, keepalive, timewait or persist")?;
        let timer = self.timer(&path.key("timer"), timer)?;
        Ok(TimerExpectation {
            host,
            port: match &wire.port {
                Some(port) => Some(self.port(&path.key("port"), port, "port")?),
                None => None,
            },
            timer,
            retrans: match &wire.retrans {
                Some(retrans) => Some(self.int(&path.key("retrans"), retrans, "retrans", 0, 255)? as u32),
                None => None,
            },
            state: match &wire.state {
                Some(state) => Some(self.tcp_state(&path.key("state"), state)?),
                None => None,
            },
            location: self.index.value(path),
        })
    }
}

/// The `count`, `at` and `within` of a packet or errno expectation.
struct EventTimes {
    count: Option<u32>,
    at: Vec<Duration>,
    window: Option<(Duration, Duration)>,
}

/// `recvfrom`, `connect`, or `getsockopt SO_ERROR`: the names an errno event's call has.
fn is_call_name(call: &str) -> bool {
    call == "getsockopt SO_ERROR"
        || (!call.is_empty() && call.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
}

//! Validation of the expectations on what the kernel kept: its counters (`nstat`) and a connection's
//! `tcp_info` (`ss -i`).

use super::*;

const COUNTER_LIST: &str = include_str!("../counters.txt");

/// Counters a scenario may expect: those this kernel has in a fresh namespace.
pub fn known_counters() -> impl Iterator<Item = &'static str> {
    COUNTER_LIST.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

impl Validator<'_> {
    pub(super) fn counter_expectation(&self, path: &NodePath, wire: &CounterExpectWire) -> Checked<CounterExpectation> {
        let host = self.required(&wire.host, path, "counter expectation", "host", "client or server")?;
        let host = self.host(&path.key("host"), host)?;
        let counter = self.required(
            &wire.counter,
            path,
            "counter expectation",
            "counter",
            "a counter as nstat names it, e.g. TcpRetransSegs, or a list of them to sum",
        )?;
        let mut names = Vec::with_capacity(counter.items.len());
        for (i, item) in counter.items.iter().enumerate() {
            let item_path = if counter.list { path.key("counter").index(i) } else { path.key("counter") };
            let name = item.text();
            if !known_counters().any(|known| known == name) {
                let hint = match closest(&name, known_counters()) {
                    Some(near) => format!("did you mean {near}? "),
                    None => String::new(),
                };
                return Err(self.fail(
                    &item_path,
                    format!(
                        "unknown counter {item}; {hint}counters are named as nstat names them (the group of \
                         /proc/net/snmp or /proc/net/netstat plus the field), e.g. TcpRetransSegs, \
                         TcpExtTCPDSACKRecv; the list is harness/src/scenario/counters.txt"
                    ),
                ));
            }
            names.push(name);
        }
        if names.is_empty() {
            return Err(self.fail(&path.key("counter"), "counter needs at least one name, e.g. TcpRetransSegs"));
        }
        let (min, max) = (self.counter_bound(path, "min", &wire.min)?, self.counter_bound(path, "max", &wire.max)?);
        match (&min, &max) {
            (None, None) => {
                return Err(self.fail(path, "a counter expectation needs `min`, `max` or both, e.g. { min: 1 }"));
            }
            (Some(CounterBound::Count(min)), Some(CounterBound::Count(max))) if min > max => {
                return Err(self.fail(&path.key("max"), format!("max {max} is below min {min}; nothing could match")));
            }
            _ => {}
        }
        Ok(CounterExpectation { host, counters: names, min, max, location: self.index.value(path) })
    }

    /// `min: 1`, or `min: { decisions: bitrot }`: the number of decisions of an impairment of the scenario.
    fn counter_bound(
        &self,
        path: &NodePath,
        key: &str,
        wire: &Option<ScalarOr<CounterBoundWire>>,
    ) -> Checked<Option<CounterBound>> {
        let path = path.key(key);
        let decisions = match wire {
            None => return Ok(None),
            Some(ScalarOr::Scalar(value)) => {
                return Ok(Some(CounterBound::Count(self.int(&path, value, key, 0, i128::from(u64::MAX))? as u64)))
            }
            Some(ScalarOr::Map(map)) => self.required(
                &map.decisions,
                &path,
                key,
                "decisions",
                "an impairment's name, e.g. { decisions: bitrot }",
            )?,
        };
        let name = decisions.text();
        if !self.impairments.contains(&name) {
            let known = if self.impairments.is_empty() {
                "the scenario has no impairment".to_string()
            } else {
                format!("its impairments are {}", list(&self.impairments))
            };
            return Err(self.fail(
                &path.key("decisions"),
                format!("no impairment named {decisions} makes decisions to count; {known}"),
            ));
        }
        Ok(Some(CounterBound::Decisions(name)))
    }

    pub(super) fn tcp_info_expectation(
        &self,
        path: &NodePath,
        wire: &TcpInfoExpectWire,
    ) -> Checked<TcpInfoExpectation> {
        let host = self.required(&wire.host, path, "tcp_info expectation", "host", "client or server")?;
        let host = self.host(&path.key("host"), host)?;
        let port = match &wire.port {
            Some(port) => Some(self.port(&path.key("port"), port, "port")?),
            None => None,
        };
        let rtt = wire.rtt.as_ref().map(|range| self.duration_range(&path.key("rtt"), range, "rtt")).transpose()?;
        let rto = wire.rto.as_ref().map(|range| self.duration_range(&path.key("rto"), range, "rto")).transpose()?;
        if rtt.is_none() && rto.is_none() {
            return Err(
                self.fail(path, "a tcp_info expectation needs `rtt`, `rto` or both, e.g. { rtt: { min: 90ms } }")
            );
        }
        Ok(TcpInfoExpectation { host, port, rtt, rto, location: self.index.value(path) })
    }

    fn duration_range(&self, path: &NodePath, wire: &RangeWire, what: &str) -> Checked<DurationRange> {
        let bound = |key: &str, value: &Option<Scalar>| -> Checked<Option<Duration>> {
            match value {
                Some(value) => Ok(Some(self.duration(&path.key(key), value, &format!("{what} {key}"))?)),
                None => Ok(None),
            }
        };
        let range = DurationRange { min: bound("min", &wire.min)?, max: bound("max", &wire.max)? };
        match (range.min, range.max) {
            (None, None) => {
                Err(self.fail(path, format!("{what} needs `min`, `max` or both, e.g. {{ min: 90ms, max: 150ms }}")))
            }
            (Some(min), Some(max)) if min > max => Err(self.fail(
                &path.key("max"),
                format!("{what} max {} is below its min {}", format_duration(max), format_duration(min)),
            )),
            _ => Ok(range),
        }
    }
}

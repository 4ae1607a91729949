//! Validation of the action map: `{ reject: KIND }` or one impairment of the wire, with its numbers checked
//! (probabilities in [0, 1], delays and jitter, rates above zero, queue sizes, injected segments).

use super::*;
use crate::scenario::impairment::{Distribution, Impairment, InjectedSegment, InjectedSeq, Injection, LossModel};

/// The keys of the action map, each naming one action.
const ACTION_KEYS_MAP: [&str; 8] = ["reject", "loss", "delay", "reorder", "duplicate", "corrupt", "rate", "inject"];
const DISTRIBUTIONS: &[(&str, Distribution)] = &[("uniform", Distribution::Uniform), ("normal", Distribution::Normal)];
const SEGMENTS: &[(&str, &str)] = &[("rst", "rst"), ("data", "data")];
const SEQS: &[(&str, InjectedSeq)] =
    &[("exact", InjectedSeq::Exact), ("in-window", InjectedSeq::InWindow), ("out-of-window", InjectedSeq::OutOfWindow)];
/// A rate limit's queue when none is given.
pub const DEFAULT_RATE_QUEUE: u64 = 64 << 10;
/// A held-back packet's gap and longest hold when none are given.
const DEFAULT_REORDER_GAP: u32 = 3;
const DEFAULT_REORDER_MAX: Duration = Duration::from_millis(100);
/// Bytes of a forged data segment when none are given.
const DEFAULT_INJECT_BYTES: u32 = 16;
/// Rates the wire is asked for: 1 kbit/s .. 100 Gbit/s.
const MIN_RATE: u64 = 1_000;
const MAX_RATE: u64 = 100_000_000_000;
/// Rate units, as `tc` writes them (SI multiples of bits per second).
const RATE_UNITS: [(&str, u64); 4] = [("bit", 1), ("kbit", 1_000), ("mbit", 1_000_000), ("gbit", 1_000_000_000)];

impl Validator<'_> {
    /// The map form of `action:`: exactly one of its keys.
    pub(super) fn action_map(&self, path: &NodePath, map: &ActionWire) -> Checked<FaultAction> {
        let given: Vec<&str> = ACTION_KEYS_MAP
            .into_iter()
            .zip([
                map.reject.is_some(),
                map.loss.is_some(),
                map.delay.is_some(),
                map.reorder.is_some(),
                map.duplicate.is_some(),
                map.corrupt.is_some(),
                map.rate.is_some(),
                map.inject.is_some(),
            ])
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
        let key = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(self.fail(
                    path,
                    format!(
                        "action needs one of: {}; e.g. {{ loss: 1% }} or {{ reject: tcp-reset }}",
                        list(ACTION_KEYS_MAP)
                    ),
                ))
            }
            [_, second, ..] => {
                return Err(self.fail_key(
                    &path.key(second),
                    format!(
                        "action has {}; one action per fault: give each its own fault (they apply in the order \
                         loss, corrupt, duplicate, rate, delay, reorder)",
                        list(&given)
                    ),
                ))
            }
        };
        let at = path.key(key);
        let impairment = match key {
            "reject" => return self.pick(&at, map.reject.as_ref().unwrap_or(&Scalar::Null), REJECTS, "reject kind"),
            "loss" => self.loss(&at, map.loss.as_ref())?,
            "delay" => self.delay(&at, map.delay.as_ref())?,
            "reorder" => self.reorder(&at, map.reorder.as_ref())?,
            "duplicate" => {
                Impairment::Duplicate { probability: self.probability(&at, map.duplicate.as_ref(), "duplicate")? }
            }
            "corrupt" => Impairment::Corrupt { probability: self.probability(&at, map.corrupt.as_ref(), "corrupt")? },
            "rate" => self.rate(&at, map.rate.as_ref())?,
            _ => self.inject(&at, map.inject.as_ref())?,
        };
        Ok(FaultAction::Impair(impairment))
    }

    /// A probability: a number 0..1 or a percentage `"2.5%"`.
    fn probability(&self, path: &NodePath, value: Option<&Scalar>, what: &str) -> Checked<f64> {
        let value = value.unwrap_or(&Scalar::Null);
        let allowed = "allowed: a number 0..1 or a percentage 0%..100%, e.g. 0.01 or 1%";
        let number = match value {
            Scalar::Int(n) => Some((*n as f64, 1.0)),
            Scalar::Float(x) => Some((*x, 1.0)),
            Scalar::Str(text) => {
                text.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()).map(|n| (n, 100.0))
            }
            _ => None,
        };
        match number {
            Some((n, scale)) if n.is_finite() && (0.0..=scale).contains(&n) => Ok(n / scale),
            Some(_) => Err(self.fail(path, format!("{what} probability {value} is out of range; {allowed}"))),
            None => Err(self.fail(path, format!("{what} must be a probability, not {value}; {allowed}"))),
        }
    }

    /// `loss: 1%` (each packet independently) or `loss: { probability: 1% }`, or Gilbert-Elliott bursts
    /// `loss: { p: 1%, r: 30%, bad: 100%, good: 0% }`.
    fn loss(&self, path: &NodePath, wire: Option<&ScalarOr<LossWire>>) -> Checked<Impairment> {
        let map = match wire {
            Some(ScalarOr::Map(map)) => map,
            other => {
                let scalar = match other {
                    Some(ScalarOr::Scalar(scalar)) => Some(scalar),
                    _ => None,
                };
                let probability = self.probability(path, scalar, "loss")?;
                return Ok(Impairment::Loss(LossModel::Random { probability }));
            }
        };
        let burst =
            [("p", map.p.is_some()), ("r", map.r.is_some()), ("bad", map.bad.is_some()), ("good", map.good.is_some())];
        if let Some(probability) = &map.probability {
            if let Some((key, _)) = burst.iter().find(|(_, set)| *set) {
                return Err(self.fail_key(
                    &path.key(key),
                    format!(
                        "`{key}` belongs to the Gilbert-Elliott model, not to `probability`; give one or the other"
                    ),
                ));
            }
            let probability = self.probability(&path.key("probability"), Some(probability), "loss")?;
            return Ok(Impairment::Loss(LossModel::Random { probability }));
        }
        let example = "e.g. { p: 1%, r: 30% } (Gilbert-Elliott), or { probability: 1% }";
        let p = self.required(
            &map.p,
            path,
            "loss",
            "p",
            &format!("the chance per packet to enter the bad state; {example}"),
        )?;
        let r = self.required(
            &map.r,
            path,
            "loss",
            "r",
            &format!("the chance per packet to leave the bad state; {example}"),
        )?;
        let p = self.probability(&path.key("p"), Some(p), "p")?;
        let r = self.probability(&path.key("r"), Some(r), "r")?;
        let loss_bad = match &map.bad {
            Some(bad) => self.probability(&path.key("bad"), Some(bad), "bad")?,
            None => 1.0,
        };
        let loss_good = match &map.good {
            Some(good) => self.probability(&path.key("good"), Some(good), "good")?,
            None => 0.0,
        };
        if r == 0.0 && p > 0.0 {
            return Err(
                self.fail(&path.key("r"), "r 0 never leaves the bad state once entered; give r above 0, e.g. 30%")
            );
        }
        Ok(Impairment::Loss(LossModel::GilbertElliott { p, r, loss_good, loss_bad }))
    }

    /// `delay: 100ms` or `delay: { time: 100ms, jitter: 20ms, distribution: normal, reorder: false }`.
    fn delay(&self, path: &NodePath, wire: Option<&ScalarOr<DelayWire>>) -> Checked<Impairment> {
        let map = match wire {
            Some(ScalarOr::Map(map)) => map,
            Some(ScalarOr::Scalar(time)) => {
                let delay = self.run_time(path, time, "delay")?;
                return Ok(Impairment::Delay {
                    delay,
                    jitter: Duration::ZERO,
                    distribution: Distribution::Uniform,
                    in_order: true,
                });
            }
            None => return Err(self.fail(path, "delay needs a time, e.g. 100ms or { time: 100ms, jitter: 20ms }")),
        };
        let time = self.required(&map.time, path, "delay", "time", "how long each packet is held, e.g. 100ms")?;
        let delay = self.run_time(&path.key("time"), time, "delay")?;
        let jitter = match &map.jitter {
            Some(jitter) => self.run_time(&path.key("jitter"), jitter, "jitter")?,
            None => Duration::ZERO,
        };
        let distribution = match &map.distribution {
            Some(distribution) => self.pick(&path.key("distribution"), distribution, DISTRIBUTIONS, "distribution")?,
            None => Distribution::Uniform,
        };
        let in_order = match &map.reorder {
            Some(reorder) => !self.boolean(&path.key("reorder"), reorder, "reorder")?,
            None => true,
        };
        if in_order && jitter > delay {
            return Err(self.fail(
                &path.key("jitter"),
                format!(
                    "jitter {} is larger than the delay {}: packets kept in order (the default) cannot leave before \
                     they arrive; lower the jitter to at most the delay, or allow reordering with `reorder: true`",
                    format_duration(jitter),
                    format_duration(delay)
                ),
            ));
        }
        Ok(Impairment::Delay { delay, jitter, distribution, in_order })
    }

    /// `reorder: 5%` or `reorder: { probability: 5%, gap: 3, max: 100ms }`.
    fn reorder(&self, path: &NodePath, wire: Option<&ScalarOr<ReorderWire>>) -> Checked<Impairment> {
        let (probability, gap, max) = match wire {
            Some(ScalarOr::Map(map)) => {
                let probability = self.required(
                    &map.probability,
                    path,
                    "reorder",
                    "probability",
                    "the share of packets held back, e.g. 5%",
                )?;
                (
                    self.probability(&path.key("probability"), Some(probability), "reorder")?,
                    map.gap.as_ref(),
                    map.max.as_ref(),
                )
            }
            Some(ScalarOr::Scalar(probability)) => (self.probability(path, Some(probability), "reorder")?, None, None),
            None => (self.probability(path, None, "reorder")?, None, None),
        };
        let gap = match gap {
            Some(gap) => self.int(&path.key("gap"), gap, "gap", 1, 1000)? as u32,
            None => DEFAULT_REORDER_GAP,
        };
        let max = match max {
            Some(max) => {
                let max_path = path.key("max");
                let max = self.run_time(&max_path, max, "max")?;
                if max.is_zero() {
                    return Err(self.fail(&max_path, "max 0s holds nothing back; give the longest hold, e.g. 100ms"));
                }
                max
            }
            None => DEFAULT_REORDER_MAX,
        };
        Ok(Impairment::Reorder { probability, gap, max })
    }

    /// `rate: 10mbit` or `rate: { bandwidth: 10mbit, queue: 64KiB }`.
    fn rate(&self, path: &NodePath, wire: Option<&ScalarOr<RateWire>>) -> Checked<Impairment> {
        let (bandwidth_path, bandwidth, queue) = match wire {
            Some(ScalarOr::Map(map)) => {
                let bandwidth =
                    self.required(&map.bandwidth, path, "rate", "bandwidth", "bits per second, e.g. 10mbit")?;
                (path.key("bandwidth"), bandwidth.clone(), map.queue.as_ref())
            }
            Some(ScalarOr::Scalar(bandwidth)) => (path.clone(), bandwidth.clone(), None),
            None => (path.clone(), Scalar::Null, None),
        };
        let bits_per_second = self.bandwidth(&bandwidth_path, &bandwidth)?;
        let queue_bytes = match queue {
            Some(queue) => {
                let queue_path = path.key("queue");
                let text = match queue {
                    Scalar::Str(text) => text.trim().to_string(),
                    other => {
                        return Err(self.fail(&queue_path, format!("queue must be a size like \"64KiB\", not {other}")))
                    }
                };
                let bytes = parse_size(&text).map_err(|message| self.fail(&queue_path, message))?;
                if !(2 * 1024..=1 << 30).contains(&bytes) {
                    return Err(self.fail(
                        &queue_path,
                        format!("queue {text} is out of range; allowed: 2KiB (one full frame) .. 1GiB"),
                    ));
                }
                bytes
            }
            None => DEFAULT_RATE_QUEUE,
        };
        Ok(Impairment::Rate { bits_per_second, queue_bytes })
    }

    /// `10mbit`, `1.5gbit`, `800kbit`, `9600bit`: bits per second, as `tc` writes rates.
    fn bandwidth(&self, path: &NodePath, value: &Scalar) -> Checked<u64> {
        let allowed = "a number with a unit bit, kbit, mbit or gbit (per second, as tc writes them), e.g. 10mbit";
        let Scalar::Str(text) = value else {
            return Err(self.fail(path, format!("rate must be {allowed}, not {value}")));
        };
        let lower = text.trim().to_ascii_lowercase();
        let number_end = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
        let (number, unit) = lower.split_at(number_end);
        let scale = RATE_UNITS.iter().find(|(name, _)| *name == unit).map(|(_, scale)| *scale);
        let (Some(scale), Ok(number)) = (scale, number.parse::<f64>()) else {
            return Err(self.fail(path, format!("rate {value} is not a rate; {allowed}")));
        };
        let bits = number * scale as f64;
        if bits == 0.0 {
            return Err(self.fail(path, format!("rate {value} carries nothing: a rate must be above 0; {allowed}")));
        }
        if !(MIN_RATE as f64..=MAX_RATE as f64).contains(&bits) {
            return Err(self.fail(path, format!("rate {value} is out of range; allowed: 1kbit .. 100gbit")));
        }
        Ok(bits.round() as u64)
    }

    /// `inject: rst` or `inject: { segment: data, bytes: 100, seq: in-window }`.
    fn inject(&self, path: &NodePath, wire: Option<&ScalarOr<InjectWire>>) -> Checked<Impairment> {
        let example = "e.g. rst or { segment: rst, seq: in-window }";
        let (segment_path, segment, seq, bytes) = match wire {
            Some(ScalarOr::Map(map)) => {
                let segment =
                    self.required(&map.segment, path, "inject", "segment", &format!("rst or data; {example}"))?;
                (path.key("segment"), segment.clone(), map.seq.as_ref(), map.bytes.as_ref())
            }
            Some(ScalarOr::Scalar(segment)) => (path.clone(), segment.clone(), None, None),
            None => (path.clone(), Scalar::Null, None, None),
        };
        let segment = match self.pick(&segment_path, &segment, SEGMENTS, "segment")? {
            "rst" => {
                if bytes.is_some() {
                    return Err(
                        self.fail_key(&path.key("bytes"), "`bytes` goes with `segment: data`; a RST carries none")
                    );
                }
                InjectedSegment::Rst
            }
            _ => InjectedSegment::Data {
                bytes: match bytes {
                    Some(bytes) => self.int(&path.key("bytes"), bytes, "bytes", 1, 1400)? as u32,
                    None => DEFAULT_INJECT_BYTES,
                },
            },
        };
        let seq = match seq {
            Some(seq) => self.pick(&path.key("seq"), seq, SEQS, "seq")?,
            None => InjectedSeq::Exact,
        };
        Ok(Impairment::Inject(Injection { segment, seq }))
    }

    /// What an impairment asks of the rest of its fault and of the scenario: the wire sits on the one link
    /// between client and server, so there is no router; an injection forges one TCP segment when `from`
    /// fires, into a connection picked by protocol and ports.
    pub(super) fn check_impairment_fault(
        &self,
        path: &NodePath,
        wire: &FaultWire,
        fault: &mut FaultPlan,
    ) -> Checked<()> {
        let Some(impairment) = fault.action.impairment() else { return Ok(()) };
        if self.has_router {
            return Err(self.fail(
                &path.key("action"),
                "impairments run on the wire of the link between client and server; a scenario with a router has \
                 two links, and the wire sits on neither yet: leave out the router (`hosts: { router: ... }`) or \
                 the impairment",
            ));
        }
        let Impairment::Inject(_) = impairment else { return Ok(()) };
        if wire.until.is_some() {
            return Err(self.fail_key(
                &path.key("until"),
                "an injection forges its segment once, when `from` fires; it has no `until`",
            ));
        }
        let match_path = path.key("match");
        for (key, set) in [("flags", fault.matcher.tcp_flags.is_some()), ("payload", fault.matcher.payload.is_some())] {
            if set {
                return Err(self.fail_key(
                    &match_path.key(key),
                    format!("an injection picks its connection by protocol and ports; `{key}` has nothing to select"),
                ));
            }
        }
        match fault.matcher.protocol {
            None | Some(Protocol::Tcp) => fault.matcher.protocol = Some(Protocol::Tcp),
            Some(_) => {
                return Err(self.fail(
                    &match_path.key("protocol"),
                    "an injection forges a TCP segment; match tcp or leave protocol out",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::scenario::impairment::{Distribution, Impairment, InjectedSegment, InjectedSeq, Injection, LossModel};
    use crate::scenario::plan::{FaultAction, HostId, Protocol};

    fn actions(faults: &str) -> Vec<(String, HostId, FaultAction)> {
        let text = format!("description: impairments\ntimeout: 10s\nfaults:\n{faults}");
        let plan = crate::scenario::parse("impair", Path::new("impair.yaml"), &text).unwrap();
        plan.faults.iter().map(|f| (f.name.clone(), f.toward(), f.action)).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_impairment_parses_with_its_defaults_and_numbers() {
        let faults = actions(
            "  - { name: a-loss, at: server, action: { loss: 1% } }
  - { name: b-loss, at: server, action: { loss: 0.25 } }
  - { name: c-bursty, at: client, action: { loss: { p: 1%, r: 30% } } }
  - { name: d-bursty, at: client, direction: egress, action: { loss: { p: 0.5%, r: 10%, bad: 50%, good: 0.1% } } }
  - { name: e-delay, at: server, action: { delay: 100ms } }
  - { name: f-delay, at: server, action: { delay: { time: 10ms, jitter: 30ms, distribution: normal, reorder: true } } }
  - { name: g-reorder, at: server, action: { reorder: 5% } }
  - { name: h-reorder, at: server, action: { reorder: { probability: 5%, gap: 7, max: 20ms } } }
  - { name: i-dup, at: server, action: { duplicate: 2% } }
  - { name: j-rot, at: server, action: { corrupt: 0.001 } }
  - { name: k-rate, at: server, action: { rate: 1.5mbit } }
  - { name: l-rate, at: server, action: { rate: { bandwidth: 10Gbit, queue: 1MiB } } }
  - { name: m-inject, at: server, action: { inject: rst } }
  - { name: n-inject, at: client, action: { inject: { segment: data, bytes: 100, seq: out-of-window } } }
",
        );
        let impairment = |i: usize| match faults[i].2 {
            FaultAction::Impair(impairment) => impairment,
            other => panic!("{other:?}"),
        };
        assert_eq!(impairment(0), Impairment::Loss(LossModel::Random { probability: 0.01 }));
        assert_eq!(impairment(1), Impairment::Loss(LossModel::Random { probability: 0.25 }));
        assert_eq!(
            impairment(2),
            Impairment::Loss(LossModel::GilbertElliott { p: 0.01, r: 0.3, loss_good: 0.0, loss_bad: 1.0 })
        );
        assert_eq!(
            impairment(3),
            Impairment::Loss(LossModel::GilbertElliott { p: 0.005, r: 0.1, loss_good: 0.001, loss_bad: 0.5 })
        );
        assert_eq!(faults[2].1, HostId::Client, "ingress at the client: packets travelling to it");
        assert_eq!(faults[3].1, HostId::Server, "egress at the client: packets it sends");
        assert_eq!(
            impairment(4),
            Impairment::Delay {
                delay: ms(100),
                jitter: Duration::ZERO,
                distribution: Distribution::Uniform,
                in_order: true
            }
        );
        assert_eq!(
            impairment(5),
            Impairment::Delay { delay: ms(10), jitter: ms(30), distribution: Distribution::Normal, in_order: false }
        );
        assert_eq!(impairment(6), Impairment::Reorder { probability: 0.05, gap: 3, max: ms(100) });
        assert_eq!(impairment(7), Impairment::Reorder { probability: 0.05, gap: 7, max: ms(20) });
        assert_eq!(impairment(8), Impairment::Duplicate { probability: 0.02 });
        assert_eq!(impairment(9), Impairment::Corrupt { probability: 0.001 });
        assert_eq!(impairment(10), Impairment::Rate { bits_per_second: 1_500_000, queue_bytes: 64 << 10 });
        assert_eq!(impairment(11), Impairment::Rate { bits_per_second: 10_000_000_000, queue_bytes: 1 << 20 });
        assert_eq!(
            impairment(12),
            Impairment::Inject(Injection { segment: InjectedSegment::Rst, seq: InjectedSeq::Exact })
        );
        assert_eq!(
            impairment(13),
            Impairment::Inject(Injection {
                segment: InjectedSegment::Data { bytes: 100 },
                seq: InjectedSeq::OutOfWindow
            })
        );
    }

    #[test]
    fn an_injection_is_made_a_tcp_match_and_a_plan_with_impairments_says_so() {
        let text = "description: x\nfaults:\n  - { name: forged, at: server, match: { dport: 9000 }, action: { inject: rst } }\n";
        let plan = crate::scenario::parse("x", Path::new("x.yaml"), text).unwrap();
        assert_eq!(plan.faults[0].matcher.protocol, Some(Protocol::Tcp));
        assert!(plan.has_impairments());
        let text = "description: x\nfaults:\n  - { name: plain, at: server, action: drop }\n";
        assert!(!crate::scenario::parse("x", Path::new("x.yaml"), text).unwrap().has_impairments());
    }

    #[test]
    fn out_of_range_numbers_are_refused_with_what_is_allowed() {
        let refused = |action: &str| {
            let text = format!("description: x\nfaults:\n  - {{ name: f, at: server, action: {action} }}\n");
            crate::scenario::parse("x", Path::new("x.yaml"), &text).unwrap_err().to_string()
        };
        assert!(refused("{ loss: 101% }").contains("out of range"));
        assert!(refused("{ corrupt: -0.1 }").contains("out of range"));
        assert!(refused("{ reorder: { probability: 5%, gap: 0 } }").contains("gap 0 is out of range"));
        assert!(refused("{ reorder: { probability: 5%, max: 0s } }").contains("holds nothing back"));
        assert!(refused("{ loss: { p: 1%, r: 0 } }").contains("never leaves the bad state"));
        assert!(refused("{ loss: { probability: 1%, p: 2% } }").contains("Gilbert-Elliott"));
        assert!(refused("{ rate: 500bit }").contains("out of range"));
        assert!(refused("{ rate: 10mbps }").contains("not a rate"));
        assert!(refused("{ delay: { jitter: 1ms } }").contains("delay needs \"time\""));
        assert!(refused("{ inject: { segment: data, bytes: 2000 } }").contains("bytes 2000 is out of range"));
        assert!(refused("{}").contains("action needs one of"));
    }
}

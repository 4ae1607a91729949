//! What a fault of the wire between the hosts does to the packets it selects, as the validated plan holds it:
//! loss (random or Gilbert-Elliott bursts), delay with jitter, reordering, duplication, corruption, a rate limit
//! with its queue, and forged segments. The wire that carries them out is `run::impair`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// How packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossModel {
    /// Each packet independently (`tc netem loss random P`).
    Random { probability: f64 },
    /// Gilbert-Elliott: two states, `p` the chance to go from good to bad and `r` back, per packet; in each
    /// state a packet is lost with that state's probability (`tc netem loss gemodel p r 1-h 1-k`).
    GilbertElliott { p: f64, r: f64, loss_good: f64, loss_bad: f64 },
}

/// How a delay's jitter is distributed around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Evenly in [delay - jitter, delay + jitter].
    Uniform,
    /// Normally, with `jitter` as the standard deviation (cut at zero).
    Normal,
}

/// What a fault does to the packets it selects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impairment {
    Loss(LossModel),
    /// Each packet is held `delay` plus its jitter; `in_order` keeps packets in their order (a packet never
    /// leaves before the one selected before it).
    Delay {
        delay: Duration,
        jitter: Duration,
        distribution: Distribution,
        in_order: bool,
    },
    /// A selected packet is held back until `gap` later packets have gone the same way, or `max` has passed.
    Reorder {
        probability: f64,
        gap: u32,
        max: Duration,
    },
    /// A selected packet is sent twice.
    Duplicate {
        probability: f64,
    },
    /// One bit of a selected packet's TCP or UDP segment is flipped: its checksum fails at the receiver.
    Corrupt {
        probability: f64,
    },
    /// The link carries `bits_per_second` (Ethernet frames, header included, as tc counts them); packets wait
    /// in a queue of at most `queue_bytes` and are dropped when it is full.
    Rate {
        bits_per_second: u64,
        queue_bytes: u64,
    },
    /// A forged segment sent once when the fault switches on.
    Inject(Injection),
}

impl Impairment {
    /// Where the impairment sits in a packet's way across the wire: loss first, then corruption and
    /// duplication, the rate-limited queue, the delay, and reordering last (the order `tc netem` applies them).
    pub fn stage(&self) -> u8 {
        match self {
            Impairment::Loss(_) => 0,
            Impairment::Corrupt { .. } => 1,
            Impairment::Duplicate { .. } => 2,
            Impairment::Rate { .. } => 3,
            Impairment::Delay { .. } => 4,
            Impairment::Reorder { .. } => 5,
            Impairment::Inject(_) => 6,
        }
    }

    /// The word the timeline and `match:` errors use for it.
    pub fn kind(&self) -> &'static str {
        match self {
            Impairment::Loss(_) => "loss",
            Impairment::Delay { .. } => "delay",
            Impairment::Reorder { .. } => "reorder",
            Impairment::Duplicate { .. } => "duplicate",
            Impairment::Corrupt { .. } => "corrupt",
            Impairment::Rate { .. } => "rate",
            Impairment::Inject(_) => "inject",
        }
    }
}

/// A segment forged into a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Injection {
    pub segment: InjectedSegment,
    pub seq: InjectedSeq,
}

impl fmt::Display for Injection {
    /// What and where in the window: `RST at RCV.NXT`, `10 bytes of data out of window`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.segment {
            InjectedSegment::Rst => f.write_str("RST")?,
            InjectedSegment::Data { bytes } => write!(f, "{bytes} bytes of data")?,
        }
        f.write_str(match self.seq {
            InjectedSeq::Exact => " at RCV.NXT",
            InjectedSeq::InWindow => " in window",
            InjectedSeq::OutOfWindow => " out of window",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InjectedSegment {
    /// A reset (`R.`).
    Rst,
    /// `bytes` of data (`P.`).
    Data { bytes: u32 },
}

/// Where the forged segment's sequence number lies in the receiver's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InjectedSeq {
    /// The next sequence number the receiver expects (`RCV.NXT`).
    Exact,
    /// Inside the receiver's window but not `RCV.NXT` (half a window further).
    InWindow,
    /// Half the sequence space away: outside any window.
    OutOfWindow,
}

fn percent(probability: f64) -> String {
    format!("{}%", (probability * 1e4).round() / 1e2)
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_secs_f64() * 1e3)
}

/// What the impairment does, as a report says it: `loss 1%`, `delay 100ms +- 20ms (normal)`, `rate 10 Mbit/s`.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Impairment::Loss(LossModel::Random { probability }) => write!(f, "loss {}", percent(probability)),
            Impairment::Loss(LossModel::GilbertElliott { p, r, loss_good, loss_bad }) => write!(
                f,
                "Gilbert-Elliott loss (p {}, r {}, {} when bad, {} when good)",
                percent(p),
                percent(r),
                percent(loss_bad),
                percent(loss_good)
            ),
            Impairment::Delay { delay, jitter, distribution, in_order } => {
                write!(f, "delay {}", millis(delay))?;
                if !jitter.is_zero() {
                    let shape = if distribution == Distribution::Normal { "normal" } else { "uniform" };
                    write!(f, " +- {} ({shape}{})", millis(jitter), if in_order { "" } else { ", reordering" })?;
                }
                Ok(())
            }
            Impairment::Reorder { probability, gap, max } => {
                write!(f, "reorder {} behind {gap} packets (at most {})", percent(probability), millis(max))
            }
            Impairment::Duplicate { probability } => write!(f, "duplicate {}", percent(probability)),
            Impairment::Corrupt { probability } => write!(f, "corrupt {}", percent(probability)),
            Impairment::Rate { bits_per_second, queue_bytes } => {
                write!(f, "rate {} kbit/s, queue {} KiB", bits_per_second / 1000, queue_bytes / 1024)
            }
            Impairment::Inject(injection) => write!(f, "forge {injection}"),
        }
    }
}

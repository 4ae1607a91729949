//! What each impairment does to a packet, as pure data and pure decisions: the wire thread feeds every frame
//! through [`Pipeline::decide`] and gets back whether to drop it, how many copies to send, and when.
//!
//! Every random choice comes from the fault's [`Stream`] keyed by the packet's [`Identity`] (its connection,
//! sender, relative sequence number, length, flags and occurrence), so a seed gives the same decision about a
//! segment in every run that sends it, however many other packets came before. Gilbert-Elliott's state is the
//! one sequential choice: its chain steps once per new packet (new data in sequence order, for one TCP
//! direction), and a packet sent again is decided from the state its original had, stepped once by its own
//! draw. Times are wall-clock times (the kernel's frame timestamps) as `Duration`s since the Unix epoch.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::frame;
use super::identity::{Identity, Place};
use super::rng::Stream;
use crate::scenario::impairment::{Distribution, Impairment, LossModel};
use crate::scenario::plan::{HostId, PacketMatch};
use crate::timeline::{Decision, DecisionKind, PacketEvent};

/// One impairment fault as the wire applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct WireFault {
    pub name: String,
    /// The packets it acts on travel to this host.
    pub toward: HostId,
    pub matcher: PacketMatch,
    pub impairment: Impairment,
}

/// What to do with one arriving frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Fate {
    /// Copies to send: 0 when lost, 2 when duplicated.
    pub copies: u32,
    /// When to send them.
    pub release: Duration,
    /// Held back until this many later packets have gone, but no later than the time.
    pub hold: Option<(u32, Duration)>,
    /// Each decision, with the packet's number among those its fault selected.
    pub decisions: Vec<(u64, Decision)>,
}

/// A fault's running state on the wire.
#[derive(Debug)]
struct FaultState {
    fault: WireFault,
    stream: Stream,
    /// Packets selected so far.
    selected: u64,
    /// Gilbert-Elliott: in the bad state, and the state each new packet found, by its place.
    bad: bool,
    places: HashMap<u64, bool>,
    /// In-order delay: when the previous packet it selected leaves.
    last_release: Duration,
    /// Rate: when the link finishes sending what it has accepted, and each queued frame's end and size.
    link_free: Duration,
    queued: VecDeque<(Duration, u64)>,
}

/// Draw slots of one packet: each decision uses its own, so adding a decision never shifts another's draws.
const SLOT_CHANCE: u64 = 0;
const SLOT_STATE: u64 = 1;
const SLOT_AMOUNT: u64 = 2;

/// The impairments of one direction of the wire, in the order they apply.
#[derive(Debug)]
pub struct Pipeline {
    faults: Vec<FaultState>,
}

impl Pipeline {
    /// The faults of `faults` that act toward `toward`, in stage order (then name order), seeded with `seed`.
    /// Injections are left out: they act on commands, not on passing packets.
    pub fn new(seed: u64, toward: HostId, faults: &[WireFault]) -> Pipeline {
        let mut states: Vec<FaultState> = faults
            .iter()
            .filter(|fault| fault.toward == toward && !matches!(fault.impairment, Impairment::Inject(_)))
            .map(|fault| FaultState {
                stream: Stream::new(seed, &fault.name),
                fault: fault.clone(),
                selected: 0,
                bad: false,
                places: HashMap::new(),
                last_release: Duration::ZERO,
                link_free: Duration::ZERO,
                queued: VecDeque::new(),
            })
            .collect();
        states.sort_by(|a, b| {
            (a.fault.impairment.stage(), &a.fault.name).cmp(&(b.fault.impairment.stage(), &b.fault.name))
        });
        Pipeline { faults: states }
    }

    /// The names of the faults, in the order they apply.
    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.faults.iter().map(|state| state.fault.name.as_str())
    }

    /// Whether any of the faults is on.
    pub fn any_active(&self, active: &dyn Fn(&str) -> bool) -> bool {
        self.faults.iter().any(|state| active(&state.fault.name))
    }

    /// How many packets each fault has selected so far.
    pub fn selected(&self) -> Vec<(String, u64)> {
        self.faults.iter().map(|state| (state.fault.name.clone(), state.selected)).collect()
    }

    /// Decides the fate of `frame`, which arrived at `at`, decoded as `packet` and named `identity` (`None` for
    /// frames that are not IPv4: they pass untouched). `active` says which faults are on, by name. May flip a
    /// bit of `frame`.
    pub fn decide(
        &mut self,
        frame: &mut [u8],
        packet: Option<(&PacketEvent, &Identity)>,
        at: Duration,
        active: &dyn Fn(&str) -> bool,
    ) -> Fate {
        let mut fate = Fate { copies: 1, release: at, hold: None, decisions: Vec::new() };
        let Some((packet, identity)) = packet else { return fate };
        let h = identity.hash;
        for state in &mut self.faults {
            if !active(&state.fault.name) || !crate::run::firewall::selects(&state.fault.matcher, packet) {
                continue;
            }
            state.selected += 1;
            let n = state.selected;
            let stream = state.stream;
            let mut decide = |kind: DecisionKind| {
                fate.decisions.push((n, Decision { fault: state.fault.name.clone(), key: identity.key, kind }))
            };
            match &state.fault.impairment {
                Impairment::Loss(model) => {
                    let lost = match *model {
                        LossModel::Random { probability } => stream.chance(h, SLOT_CHANCE, probability),
                        LossModel::GilbertElliott { p, r, loss_good, loss_bad } => {
                            let step = |bad: bool| bad ^ stream.chance(h, SLOT_STATE, if bad { r } else { p });
                            let bad = match identity.place {
                                Place::New(place) => {
                                    let bad = state.bad;
                                    state.places.insert(place, bad);
                                    state.bad = step(bad);
                                    bad
                                }
                                // The original's state one step on (good when the fault did not see the original).
                                Place::Again(place) => step(state.places.get(&place).copied().unwrap_or(false)),
                            };
                            stream.chance(h, SLOT_CHANCE, if bad { loss_bad } else { loss_good })
                        }
                    };
                    if lost {
                        decide(DecisionKind::Lost);
                        fate.copies = 0;
                        return fate;
                    }
                }
                Impairment::Corrupt { probability } => {
                    if stream.chance(h, SLOT_CHANCE, *probability) {
                        if let Some(range) = frame::transport_range(frame) {
                            let (byte, bit) = frame::flip_bit(frame, range, stream.bits(h, SLOT_AMOUNT));
                            decide(DecisionKind::Corrupted { byte, bit });
                        }
                    }
                }
                Impairment::Duplicate { probability } => {
                    if stream.chance(h, SLOT_CHANCE, *probability) {
                        decide(DecisionKind::Duplicated);
                        fate.copies += 1;
                    }
                }
                Impairment::Rate { bits_per_second, queue_bytes } => {
                    let ready = fate.release;
                    while state.queued.front().is_some_and(|(end, _)| *end <= ready) {
                        state.queued.pop_front();
                    }
                    let bytes = frame.len() as u64 * u64::from(fate.copies);
                    let backlog: u64 = state.queued.iter().map(|(_, size)| size).sum();
                    if backlog + bytes > *queue_bytes {
                        decide(DecisionKind::QueueFull);
                        fate.copies = 0;
                        return fate;
                    }
                    let start = state.link_free.max(ready);
                    let end = start + transmission_time(bytes, *bits_per_second);
                    state.link_free = end;
                    state.queued.push_back((end, bytes));
                    fate.release = end;
                }
                Impairment::Delay { delay, jitter, distribution, in_order } => {
                    let by = jittered(*delay, *jitter, *distribution, &stream, h);
                    decide(DecisionKind::Delayed { by });
                    let mut release = fate.release + by;
                    if *in_order {
                        release = release.max(state.last_release);
                        state.last_release = release;
                    }
                    fate.release = release;
                }
                Impairment::Reorder { probability, gap, max } => {
                    if stream.chance(h, SLOT_CHANCE, *probability) {
                        decide(DecisionKind::Reordered { gap: *gap });
                        fate.hold = Some((*gap, fate.release + *max));
                    }
                }
                Impairment::Inject(_) => {}
            }
        }
        fate
    }
}

/// How long `bytes` take at `bits_per_second`.
pub fn transmission_time(bytes: u64, bits_per_second: u64) -> Duration {
    let nanos = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(bits_per_second.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `delay` moved by the packet's jitter draw, never below zero.
fn jittered(delay: Duration, jitter: Duration, distribution: Distribution, stream: &Stream, n: u64) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let offset = match distribution {
        Distribution::Uniform => (2.0 * stream.uniform(n, SLOT_AMOUNT) - 1.0) * jitter.as_secs_f64(),
        Distribution::Normal => stream.normal(n, SLOT_AMOUNT) * jitter.as_secs_f64(),
    };
    Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0))
}

#[cfg(test)]
mod tests {

    use super::super::frame::TcpSegment;
    use super::*;
    use crate::scenario::plan::Protocol;
    use crate::timeline::{IpProtocol, PacketKey};

    fn packet(len: u32) -> PacketEvent {
        PacketEvent { ip_id: 1, seq: 1, ack: 1, window: 502, ..PacketEvent::test_segment(0x18, len) }
    }

    /// The `i`-th 1460-byte data segment of the client's first connection, seen for the `occurrence`-th time.
    fn segment(i: u64, occurrence: u32) -> Identity {
        let key = |occurrence| PacketKey::Tcp {
            connection: 1,
            from: HostId::Client,
            block: i as u32,
            ack: None,
            len: 1460,
            flags: 0x10,
            occurrence,
        };
        let place = super::super::rng::key_hash(&key(1));
        let hash = super::super::rng::key_hash(&key(occurrence));
        Identity {
            key: key(occurrence),
            hash,
            place: if occurrence == 1 { Place::New(place) } else { Place::Again(place) },
        }
    }

    fn fault(name: &str, impairment: Impairment) -> WireFault {
        WireFault {
            name: name.into(),
            toward: HostId::Server,
            matcher: PacketMatch { protocol: Some(Protocol::Tcp), ..PacketMatch::default() },
            impairment,
        }
    }

    fn always(_: &str) -> bool {
        true
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs `count` 1514-byte frames through `faults`, one every `spacing`, and returns their fates.
    fn run(seed: u64, faults: &[WireFault], count: u64, spacing: Duration) -> Vec<Fate> {
        let mut pipeline = Pipeline::new(seed, HostId::Server, faults);
        let frame = super::super::frame::forge(
            &TcpSegment { timestamps: None, ..super::super::frame::sample_header() },
            1,
            &[0; 1460],
        );
        (0..count)
            .map(|i| {
                let mut frame = frame.clone();
                pipeline.decide(&mut frame, Some((&packet(1460), &segment(i, 1))), spacing * i as u32, &always)
            })
            .collect()
    }

    #[test]
    fn random_loss_loses_its_share_and_the_same_seed_loses_the_same_packets() {
        let lossy = [fault("lossy", Impairment::Loss(LossModel::Random { probability: 0.1 }))];
        let fates = run(7, &lossy, 100_000, ms(0));
        let lost: Vec<u64> = fates.iter().filter(|f| f.copies == 0).map(|f| f.decisions[0].0).collect();
        // Binomial(1e5, 0.1): mean 10000, standard deviation 95; 5 sigma.
        assert!((9_525..=10_475).contains(&lost.len()), "{}", lost.len());
        let again: Vec<u64> =
            run(7, &lossy, 100_000, ms(0)).iter().filter(|f| f.copies == 0).map(|f| f.decisions[0].0).collect();
        assert_eq!(lost, again);
        let other: Vec<u64> =
            run(8, &lossy, 100_000, ms(0)).iter().filter(|f| f.copies == 0).map(|f| f.decisions[0].0).collect();
        assert_ne!(lost, other);
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts_at_its_stationary_rate() {
        // Bad 1 % of transitions in, 30 % out: the chain is bad p / (p + r) = 1/31 of the time, and loses
        // everything there.
        let model = LossModel::GilbertElliott { p: 0.01, r: 0.3, loss_good: 0.0, loss_bad: 1.0 };
        let fates = run(3, &[fault("bursty", Impairment::Loss(model))], 200_000, ms(0));
        let lost: Vec<bool> = fates.iter().map(|f| f.copies == 0).collect();
        let rate = lost.iter().filter(|&&l| l).count() as f64 / lost.len() as f64;
        assert!((rate - 1.0 / 31.0).abs() < 0.004, "{rate}");
        // Mean burst length 1 / r = 3.3 packets.
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = lost.iter().filter(|&&l| l).count() as f64 / bursts as f64;
        assert!((mean_burst - 1.0 / 0.3).abs() < 0.25, "{mean_burst}");
    }

    #[test]
    fn in_order_delay_with_jitter_never_reorders_and_stays_within_its_bounds() {
        let delay =
            Impairment::Delay { delay: ms(100), jitter: ms(20), distribution: Distribution::Uniform, in_order: true };
        let fates = run(1, &[fault("slow", delay)], 10_000, Duration::from_micros(100));
        let mut previous = Duration::ZERO;
        for (i, fate) in fates.iter().enumerate() {
            assert!(fate.release >= previous, "packet {i} leaves before the one before it");
            previous = fate.release;
            let DecisionKind::Delayed { by } = fate.decisions[0].1.kind else { panic!("{fate:?}") };
            assert!(by >= ms(80) && by <= ms(120), "{by:?}");
        }
    }

    #[test]
    fn delay_that_allows_reordering_reorders_and_normal_jitter_has_its_spread() {
        let delay =
            Impairment::Delay { delay: ms(100), jitter: ms(20), distribution: Distribution::Normal, in_order: false };
        let fates = run(1, &[fault("slow", delay)], 10_000, Duration::from_micros(100));
        let overtaken = fates.windows(2).filter(|pair| pair[1].release < pair[0].release).count();
        assert!(overtaken > 1000, "{overtaken}");
        let delays: Vec<f64> = fates
            .iter()
            .map(|f| match f.decisions[0].1.kind {
                DecisionKind::Delayed { by } => by.as_secs_f64() * 1e3,
                _ => panic!(),
            })
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let sd = (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / delays.len() as f64).sqrt();
        assert!((mean - 100.0).abs() < 1.0 && (sd - 20.0).abs() < 1.0, "mean {mean} sd {sd}");
    }

    #[test]
    fn rate_spaces_frames_by_their_transmission_time_and_drops_when_the_queue_is_full() {
        // 1514-byte frames at 100 Mb/s take 121.12 us; all arriving at once, a 10-frame queue takes 10.
        let rate = Impairment::Rate { bits_per_second: 100_000_000, queue_bytes: 10 * 1514 };
        let fates = run(1, &[fault("thin", rate)], 15, Duration::ZERO);
        let sent: Vec<&Fate> = fates.iter().filter(|f| f.copies == 1).collect();
        assert_eq!(sent.len(), 10);
        assert_eq!(sent[0].release, Duration::from_nanos(121_120));
        assert_eq!(sent[9].release, Duration::from_nanos(1_211_200));
        assert!(fates[10..].iter().all(|f| f.decisions[0].1.kind == DecisionKind::QueueFull));
        // Spaced slower than the link, nothing waits.
        let fates = run(1, &[fault("thin", rate)], 100, Duration::from_micros(200));
        for (i, fate) in fates.iter().enumerate() {
            assert_eq!(fate.release, Duration::from_micros(200) * i as u32 + Duration::from_nanos(121_120));
        }
    }

    #[test]
    fn corruption_breaks_the_checksum_and_duplication_adds_a_copy() {
        let faults = [
            fault("dup", Impairment::Duplicate { probability: 1.0 }),
            fault("rot", Impairment::Corrupt { probability: 1.0 }),
        ];
        let mut pipeline = Pipeline::new(1, HostId::Server, &faults);
        let names: Vec<&str> = pipeline.names().collect();
        assert_eq!(names, vec!["rot", "dup"], "corruption comes before duplication");
        let mut frame = super::super::frame::forge(&super::super::frame::sample_header(), 1, &[1, 2, 3]);
        let fate = pipeline.decide(&mut frame, Some((&packet(3), &segment(0, 1))), ms(5), &always);
        assert_eq!(fate.copies, 2);
        assert_eq!(fate.release, ms(5));
        assert!(!super::super::frame::tcp_checksum_holds(&frame));
        assert!(matches!(fate.decisions[0].1.kind, DecisionKind::Corrupted { .. }));
        assert_eq!(fate.decisions[1].1.kind, DecisionKind::Duplicated);
    }

    #[test]
    fn inactive_or_unmatched_faults_leave_packets_alone_and_do_not_count_them() {
        let lossy = [fault("lossy", Impairment::Loss(LossModel::Random { probability: 1.0 }))];
        let mut pipeline = Pipeline::new(1, HostId::Server, &lossy);
        let mut frame = vec![0u8; 60];
        let id = segment(0, 1);
        let fate = pipeline.decide(&mut frame, Some((&packet(0), &id)), ms(1), &|_| false);
        assert_eq!((fate.copies, fate.decisions.len()), (1, 0));
        let mut udp = packet(0);
        udp.protocol = IpProtocol::Known(Protocol::Udp);
        let fate = pipeline.decide(&mut frame, Some((&udp, &id)), ms(1), &always);
        assert_eq!(fate.copies, 1);
        let fate = pipeline.decide(&mut frame, None, ms(1), &always);
        assert_eq!(fate.copies, 1, "frames that are not IPv4 pass");
        let fate = pipeline.decide(&mut frame, Some((&packet(0), &id)), ms(1), &always);
        assert_eq!(
            fate.decisions,
            vec![(1, Decision { fault: "lossy".into(), key: id.key, kind: DecisionKind::Lost })]
        );
        assert!(Pipeline::new(1, HostId::Client, &lossy).names().next().is_none(), "the other direction");
    }

    #[test]
    fn reordering_holds_the_selected_packets_back() {
        let reorder = Impairment::Reorder { probability: 0.25, gap: 3, max: ms(50) };
        let fates = run(2, &[fault("shuffle", reorder)], 1000, ms(1));
        let held: Vec<&Fate> = fates.iter().filter(|f| f.hold.is_some()).collect();
        assert!((200..=300).contains(&held.len()), "{}", held.len());
        for fate in held {
            let (gap, until) = fate.hold.unwrap();
            assert_eq!((gap, until), (3, fate.release + ms(50)));
        }
    }

    /// Feeds `arrivals` (segment number, occurrence) through `faults` and returns each decision by the
    /// packet's key.
    fn decided(faults: &[WireFault], arrivals: &[(u64, u32)]) -> std::collections::BTreeMap<PacketKey, String> {
        let mut pipeline = Pipeline::new(11, HostId::Server, faults);
        let frame = super::super::frame::forge(&super::super::frame::sample_header(), 1, &[0; 1460]);
        let mut decided = std::collections::BTreeMap::new();
        for (t, &(i, occurrence)) in arrivals.iter().enumerate() {
            let mut frame = frame.clone();
            let id = segment(i, occurrence);
            let fate = pipeline.decide(&mut frame, Some((&packet(1460), &id)), ms(t as u64), &always);
            let kinds: Vec<String> = fate.decisions.iter().map(|(_, d)| d.kind.to_string()).collect();
            decided.insert(id.key, kinds.join(", "));
        }
        decided
    }

    /// Two runs of one bulk transfer: the second retransmits other segments (each right after the segment
    /// after it, as fast retransmission would), so every segment arrives at another position.
    fn two_runs() -> [Vec<(u64, u32)>; 2] {
        let mut first = Vec::new();
        let mut second = Vec::new();
        for i in 0..5000 {
            first.push((i, 1));
            second.push((i, 1));
            if i % 37 == 5 {
                first.push((i - 1, 2));
            }
            if i % 23 == 7 {
                second.push((i - 1, 2));
                second.push((i - 3, 2));
            }
        }
        [first, second]
    }

    #[test]
    fn a_segment_meets_the_same_fate_whatever_arrived_before_it() {
        let faults = [
            fault("lossy", Impairment::Loss(LossModel::Random { probability: 0.1 })),
            fault("dup", Impairment::Duplicate { probability: 0.05 }),
            fault("rot", Impairment::Corrupt { probability: 0.05 }),
            fault(
                "slow",
                Impairment::Delay { delay: ms(10), jitter: ms(5), distribution: Distribution::Normal, in_order: false },
            ),
        ];
        let [first, second] = two_runs();
        let (a, b) = (decided(&faults, &first), decided(&faults, &second));
        let both: Vec<&PacketKey> = a.keys().filter(|key| b.contains_key(key)).collect();
        assert!(both.len() >= 5000, "{}", both.len());
        for key in &both {
            assert_eq!(a[*key], b[*key], "{key}");
        }
        let lost = both.iter().filter(|key| a[**key] == "lost").count();
        assert!((400..=600).contains(&lost), "10 % of ~5000 lost: {lost}");
        // Retransmissions draw afresh: not every one shares its original's fate.
        let retransmitted: Vec<&&PacketKey> =
            both.iter().filter(|key| matches!(key, PacketKey::Tcp { occurrence: 2, .. })).collect();
        assert!(!retransmitted.is_empty());
    }

    #[test]
    fn gilbert_elliott_decides_a_segment_alike_whatever_was_retransmitted_around_it() {
        let model = LossModel::GilbertElliott { p: 0.05, r: 0.3, loss_good: 0.0, loss_bad: 1.0 };
        let faults = [fault("bursty", Impairment::Loss(model))];
        let [first, second] = two_runs();
        let (a, b) = (decided(&faults, &first), decided(&faults, &second));
        let both: Vec<&PacketKey> = a.keys().filter(|key| b.contains_key(key)).collect();
        for key in &both {
            assert_eq!(a[*key], b[*key], "{key}");
        }
        // Still bursts: the chain is bad p / (p + r) = 1/7 of the time; new segments are lost in runs.
        let new_lost: Vec<bool> = (0..5000).map(|i| a[&segment(i, 1).key] == "lost").collect();
        let rate = new_lost.iter().filter(|&&lost| lost).count() as f64 / 5000.0;
        assert!((rate - 1.0 / 7.0).abs() < 0.03, "{rate}");
        let bursts = new_lost.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = new_lost.iter().filter(|&&lost| lost).count() as f64 / bursts as f64;
        assert!((mean_burst - 1.0 / 0.3).abs() < 0.6, "{mean_burst}");
    }
}

//! Seeded draws for the impairments: a counter-based generator, so that a packet gets the same draws for the
//! same seed whatever happened before it (which packets other faults took, how many packets TCP sent, how the
//! threads were scheduled).
//!
//! Each draw is SplitMix64's output function applied to a key made of the run's seed, the fault's name and the
//! packet's key ([`super::identity`]): no state is carried from one packet to the next.

use crate::timeline::PacketKey;

/// One fault's stream of draws under one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    key: u64,
}

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective mix of all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of `bytes`: stable across builds and platforms, unlike `std`'s hasher.
pub fn digest(bytes: &[u8]) -> u64 {
    fnv(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv(start: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(start, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A packet's key as 64 bits, from its fields alone (stable across builds and platforms): what its draws are
/// keyed by.
pub fn key_hash(key: &PacketKey) -> u64 {
    let words: [u64; 5] = match *key {
        PacketKey::Tcp { connection, from, block, ack, len, flags, occurrence } => [
            u64::from(connection) << 8 | from.index() as u64,
            u64::from(block),
            ack.map_or(u64::MAX, u64::from),
            u64::from(len) << 8 | u64::from(flags),
            u64::from(occurrence),
        ],
        PacketKey::Datagram { from, protocol, digest, occurrence } => {
            [1 << 40 | u64::from(protocol) << 8 | from.index() as u64, digest, 0, 0, u64::from(occurrence)]
        }
        PacketKey::Forged { number } => [2 << 40, number, 0, 0, 0],
    };
    words.iter().fold(0, |hash, &word| mix(hash.wrapping_mul(GOLDEN) ^ word))
}

impl Stream {
    /// The draws of the fault named `fault` in a run seeded with `seed`.
    pub fn new(seed: u64, fault: &str) -> Stream {
        Stream { key: mix(seed ^ mix(digest(fault.as_bytes()))) }
    }

    /// Draw number `slot` (a few per packet) of the packet whose key hashes to `n`: 64 uniform bits.
    pub fn bits(&self, n: u64, slot: u64) -> u64 {
        mix(self.key ^ mix(n.wrapping_mul(GOLDEN) ^ slot.wrapping_mul(0xd6e8_feb8_6659_fd93)))
    }

    /// A uniform number in [0, 1) with 53 bits of precision.
    pub fn uniform(&self, n: u64, slot: u64) -> f64 {
        (self.bits(n, slot) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p` (`p` in [0, 1]; 1 always, 0 never).
    pub fn chance(&self, n: u64, slot: u64, p: f64) -> bool {
        self.uniform(n, slot) < p
    }

    /// A standard normal draw (Box-Muller on two slots).
    pub fn normal(&self, n: u64, slot: u64) -> f64 {
        // 1 - u is in (0, 1]: its logarithm is finite.
        let radius = (-2.0 * (1.0 - self.uniform(n, slot)).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.uniform(n, slot + 1)).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_fault_and_packet_give_the_same_draw() {
        let a = Stream::new(42, "lossy");
        let b = Stream::new(42, "lossy");
        for n in 0..1000 {
            assert_eq!(a.bits(n, 0), b.bits(n, 0));
        }
        assert_ne!(Stream::new(43, "lossy").bits(7, 0), a.bits(7, 0));
        assert_ne!(Stream::new(42, "lossy2").bits(7, 0), a.bits(7, 0));
        assert_ne!(a.bits(7, 1), a.bits(7, 0));
    }

    #[test]
    fn uniform_draws_cover_the_unit_interval_evenly() {
        let stream = Stream::new(1, "x");
        let n = 100_000;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let u = stream.uniform(i, 0);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        // Each bucket expects 10000 with a standard deviation of 95: 5 sigma either way.
        for count in buckets {
            assert!((9_525..=10_475).contains(&count), "{buckets:?}");
        }
    }

    #[test]
    fn chance_hits_its_probability_and_its_bounds_exactly() {
        let stream = Stream::new(9, "p");
        let hits = (0..100_000).filter(|&n| stream.chance(n, 0, 0.01)).count();
        // Binomial(1e5, 0.01): mean 1000, standard deviation 31.5; 5 sigma.
        assert!((842..=1158).contains(&hits), "{hits}");
        assert!((0..10_000).all(|n| stream.chance(n, 0, 1.0)));
        assert!((0..10_000).all(|n| !stream.chance(n, 0, 0.0)));
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let stream = Stream::new(5, "jitter");
        let n = 100_000;
        let samples: Vec<f64> = (0..n).map(|i| stream.normal(i, 0)).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((variance - 1.0).abs() < 0.02, "{variance}");
    }
}

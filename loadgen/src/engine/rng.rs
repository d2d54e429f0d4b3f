//! The engine's random stream: hold and patience times, which calls carry RTP, IVR callers'
//! digits, cnonces, and the Poisson gaps of each workload's schedule.

use super::Nanos;

/// SplitMix64: small, seeded, enough for hold times, RTP choice and cnonces.
#[derive(Debug, Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential draw with this mean.
    pub(super) fn exponential(&mut self, mean: Nanos) -> Nanos {
        (-(1.0 - self.uniform()).ln() * mean as f64) as Nanos
    }
}

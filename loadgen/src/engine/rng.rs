//! The engine's random streams and the run id, all from the run's seed and the shard's index:
//! hold and patience times, which calls carry RTP, IVR callers' digits, cnonces, each
//! workload's Poisson gaps, and callers and callees drawn at random. Nothing here reads the clock or the process id, so a seed and a
//! shard repeat a run's choices and its Call-IDs.

use pbxlab_balancer::hash::splitmix64;

use super::Nanos;

/// SplitMix64: small, seeded, enough for hold times, RTP choice and cnonces.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    /// The engine's stream for shard `shard` of a run seeded `seed`: shards draw differently.
    pub(super) fn engine(seed: u64, shard: u32) -> Rng {
        Rng(seed ^ u64::from(shard).rotate_left(32))
    }

    /// Workload `i`'s own stream, for its Poisson gaps: forked from this one, so the schedule
    /// does not shift with whatever else the engine draws.
    pub(super) fn workload(&self, i: usize) -> Rng {
        Rng(self.0 ^ (i as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    /// The stream that draws callers and callees (`UserOrder::Random`): forked too, so the
    /// order of users changes nothing else a seed draws.
    pub(super) fn users(&self) -> Rng {
        Rng(self.0 ^ 0x9e37_79b9_7f4a_7c15_u64.rotate_left(17))
    }

    /// A draw below `n` (0 for `n` = 0); the bias of the modulo is below n / 2^64.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next().checked_rem(n).unwrap_or(0)
    }

    pub(super) fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    pub(super) fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential draw with this mean.
    pub(super) fn exponential(&mut self, mean: Nanos) -> Nanos {
        (-(1.0 - self.uniform()).ln() * mean as f64) as Nanos
    }
}

/// The run id that [`Config::run_id`](super::Config::run_id) should hold for shard `shard` of
/// a run seeded `seed`. It sits in every Call-ID and branch, so that runs against one target
/// do not take each other's messages for their own: the shards of one seed always differ, and
/// two seeds share an id by a chance of one in 2^32. Two runs with one seed and shard have one
/// id, as they must to send the same bytes.
pub fn run_id(seed: u64, shard: u32) -> u32 {
    // A stream of its own, so the id is not one of the engine's draws.
    let mut rng = Rng(seed ^ 0x6a09_e667_f3bc_c908);
    (rng.next() >> 32) as u32 ^ shard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_of_one_seed_have_their_own_run_id_and_stream() {
        assert_eq!(run_id(7, 0), run_id(7, 0));
        let ids: std::collections::BTreeSet<u32> = (0..64).map(|shard| run_id(7, shard)).collect();
        assert_eq!(ids.len(), 64);
        assert_ne!(run_id(7, 0), run_id(8, 0));
        assert_ne!(Rng::engine(7, 0).next(), Rng::engine(7, 1).next());
        assert_eq!(Rng::engine(7, 1).next(), Rng::engine(7, 1).next());
    }
}

//! The workspace's one pair of hash helpers: FNV-1a over bytes and SplitMix64's mixing step.
//!
//! They are for stable, well-spread numbers (rendezvous ranks, seeded stream keys, SSRCs, tags
//! derived from ids), never for secrets: neither is a MAC, and both are trivially inverted.
//! Unlike std's hasher they give the same value in every process and release, which rendezvous
//! hashing needs so that every Call Manager ranks servers alike.

/// SplitMix64's golden-ratio increment.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser alone (Stafford's "Mix13"): a bijection that spreads every input
/// bit over the output. Zero maps to zero; use [`mix64`] where small ids must look random.
#[must_use]
pub fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One step of SplitMix64 as a stateless function: the finaliser of `x + GOLDEN_GAMMA`.
/// Consecutive inputs give unrelated outputs.
#[must_use]
pub fn mix64(x: u64) -> u64 {
    finalise(x.wrapping_add(GOLDEN_GAMMA))
}

/// SplitMix64 as a generator: advances `state` and returns the next value.
pub fn splitmix64(state: &mut u64) -> u64 {
    let out = mix64(*state);
    *state = state.wrapping_add(GOLDEN_GAMMA);
    out
}

/// FNV-1a (64-bit) over `bytes`.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs of SplitMix64 seeded with 1234567 (Vigna's reference code).
        let mut s = 1_234_567u64;
        let got: Vec<u64> = (0..3).map(|_| splitmix64(&mut s)).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}

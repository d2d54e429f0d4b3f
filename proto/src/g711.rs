//! G.711 companding (ITU-T G.711): 16-bit linear PCM to and from mu-law (PCMU) and A-law
//! (PCMA), per sample and over buffers.
//!
//! What this does NOT do: resampling (input is assumed to be 8 kHz), packetisation (160
//! samples per 20 ms packet is the caller's arithmetic), packet loss concealment, comfort
//! noise, or the G.711.1 wideband extension. Conversions are exact table-equivalent arithmetic;
//! decoding uses precomputed tables since it is on the receive path of every packet.
/// mu-law adds this bias so every segment boundary becomes a power of two.
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude mu-law can represent before the bias would overflow segment 7.
const ULAW_CLIP: i32 = 32635;

/// Encodes one sample as mu-law.
pub fn linear_to_ulaw(s: i16) -> u8 {
    let s = i32::from(s);
    let (sign, magnitude) = if s < 0 { (0x80u8, -s) } else { (0, s) };
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // biased is in 0x84..=0x7fff: its top set bit is bit 7 + segment.
    let segment = (31 - biased.leading_zeros() - 7) as u8;
    let mantissa = ((biased >> (segment + 3)) & 0x0f) as u8;
    // Codes are transmitted inverted so that silence is not a run of zero bits.
    !(sign | (segment << 4) | mantissa)
}

const fn ulaw_decode(u: u8) -> i16 {
    let u = !u;
    let segment = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Encodes one sample as A-law.
pub fn linear_to_alaw(s: i16) -> u8 {
    // A-law works on 13 bits; negative values are coded as magnitude minus one, which is
    // exactly the bitwise complement.
    let v = s >> 3;
    let (mask, magnitude) = if v >= 0 { (0xd5u8, v) } else { (0x55u8, !v) };
    // magnitude is in 0..=4095: segment 0 covers 0..32, then one segment per power of two.
    let segment = if magnitude < 32 {
        0
    } else {
        (15 - magnitude.leading_zeros() as i16 - 4) as u8
    };
    let shift = if segment < 2 { 1 } else { segment };
    let mantissa = ((magnitude >> shift) & 0x0f) as u8;
    ((segment << 4) | mantissa) ^ mask
}

const fn alaw_decode(a: u8) -> i16 {
    let a = a ^ 0x55;
    let segment = (a >> 4) & 0x07;
    let mantissa = ((a & 0x0f) as i32) << 4;
    // Reconstruct at the middle of the quantisation step.
    let magnitude = match segment {
        0 => mantissa + 8,
        s => (mantissa + 0x108) << (s - 1),
    };
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

// Built at compile time, so decoding is a lookup and any bad index would fail the build rather
// than panic at run time.
#[allow(clippy::indexing_slicing)]
const ULAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode(i as u8);
        i += 1;
    }
    t
};

#[allow(clippy::indexing_slicing)]
const ALAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode(i as u8);
        i += 1;
    }
    t
};

/// Decodes one mu-law code.
pub fn ulaw_to_linear(u: u8) -> i16 {
    // A u8 always indexes a 256-entry table; the fallback is unreachable.
    ULAW_TABLE.get(usize::from(u)).copied().unwrap_or(0)
}

/// Decodes one A-law code.
pub fn alaw_to_linear(a: u8) -> i16 {
    ALAW_TABLE.get(usize::from(a)).copied().unwrap_or(0)
}

/// Encodes `pcm` into `out` as mu-law, as many samples as the shorter of the two holds.
pub fn encode_ulaw(pcm: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = linear_to_ulaw(s);
    }
}

/// Decodes mu-law `codes` into `out`, as many samples as the shorter of the two holds.
pub fn decode_ulaw(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ulaw_to_linear(c);
    }
}

/// Encodes `pcm` into `out` as A-law, as many samples as the shorter of the two holds.
pub fn encode_alaw(pcm: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = linear_to_alaw(s);
    }
}

/// Decodes A-law `codes` into `out`, as many samples as the shorter of the two holds.
pub fn decode_alaw(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = alaw_to_linear(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_ulaw(-32124), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_ulaw(32124), 0x80);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);

        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(linear_to_alaw(8), 0xd5);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_alaw(-8), 0x55);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            if c != 0x7f {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), c, "ulaw {c:#04x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#04x}");
        }
        assert_eq!(linear_to_ulaw(ulaw_to_linear(0x7f)), 0xff);
    }

    #[test]
    fn monotonic_and_close() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            assert!(u >= prev_u, "ulaw not monotonic at {s}");
            assert!(a >= prev_a, "alaw not monotonic at {s}");
            prev_u = u;
            prev_a = a;
            // Quantisation error stays within half of the largest step (plus clipping).
            assert!(
                (i32::from(u) - i32::from(s)).abs() <= 1024,
                "ulaw error at {s}"
            );
            assert!(
                (i32::from(a) - i32::from(s)).abs() <= 1024,
                "alaw error at {s}"
            );
        }
        // Decoded values sorted by code order: mu-law 0x00..0x7f rising from -32124 to 0.
        for c in 0..0x7fu8 {
            assert!(ulaw_to_linear(c) < ulaw_to_linear(c + 1));
        }
    }

    #[test]
    fn buffers() {
        let pcm = [0i16, 1000, -1000, 32767, -32768];
        let mut codes = [0u8; 5];
        encode_ulaw(&pcm, &mut codes);
        let mut back = [0i16; 5];
        decode_ulaw(&codes, &mut back);
        for (s, b) in pcm.iter().zip(back) {
            assert_eq!(b, ulaw_to_linear(linear_to_ulaw(*s)));
        }
        encode_alaw(&pcm, &mut codes);
        decode_alaw(&codes, &mut back);
        for (s, b) in pcm.iter().zip(back) {
            assert_eq!(b, alaw_to_linear(linear_to_alaw(*s)));
        }
        // Shorter output: only what fits.
        let mut short = [0u8; 2];
        encode_ulaw(&pcm, &mut short);
        assert_eq!(short, [0xff, linear_to_ulaw(1000)]);
    }
}

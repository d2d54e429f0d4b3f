//! Keyed message authentication (HMAC-SHA-256, RFC 2104) for what a server hands out and must
//! recognise later without storing it: digest nonces, branches and tags, link datagrams.
//!
//! A [`Key`] is 32 bytes. Where it comes from is the caller's: a live server draws it from the
//! operating system once per process (so nothing it emitted can be forged from the scenario), a
//! test or a virtual-time run derives it from the seed with [`Key::from_seed`] (so a run replays).
//! Several uses of one key are kept apart with [`Key::derive`]: a MAC made for a nonce is never
//! valid as a branch.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Bytes of a full MAC.
pub const MAC_LEN: usize = 32;

/// A secret key. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key of these bytes (from the operating system's random source, or a file).
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A key derived from a seed: reproducible, and therefore guessable by whoever knows the seed.
    /// For tests and virtual-time runs, never for a server others can reach.
    pub fn from_seed(seed: u64) -> Key {
        let mut h = Sha256::new();
        h.update(b"pbxlab seed key\0");
        h.update(seed.to_le_bytes());
        Key(h.finalize().into())
    }

    /// A key from a shared secret phrase (a join token both ends know), so both derive the same.
    pub fn from_phrase(phrase: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update(b"pbxlab phrase key\0");
        h.update(phrase);
        Key(h.finalize().into())
    }

    /// An independent key for one purpose (`"nonce"`, `"branch"`, `"link"`, ...).
    pub fn derive(&self, purpose: &str) -> Key {
        Key(self.mac(&[b"derive", purpose.as_bytes()]))
    }

    /// The MAC of `parts`. Each part is length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        self.hmac(parts).finalize().into_bytes().into()
    }

    /// The first 8 bytes of the MAC of `parts`, as a number (for branches, tags, short tokens).
    pub fn mac64(&self, parts: &[&[u8]]) -> u64 {
        let full = self.mac(parts);
        let mut first = [0u8; 8];
        first.copy_from_slice(&full[..8]);
        u64::from_be_bytes(first)
    }

    /// Whether `tag` is the MAC of `parts` or a prefix of it at least 8 bytes long, compared in
    /// constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        if tag.len() < 8 || tag.len() > MAC_LEN {
            return false;
        }
        self.hmac(parts).verify_truncated_left(tag).is_ok()
    }

    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts a key of any length, so this cannot fail.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of every length"));
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }
}

/// Lower-case hex of `bytes`, appended to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
}

/// The bytes of lower- or upper-case hex `s`, or `None` if it is not hex of even length or is
/// longer than `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<([u8; N], usize)> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) || s.len() / 2 > N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some((out, s.len() / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 4.3: key "Jefe", data "what do ya want for nothing?". Our parts are
        // length-prefixed, so check the raw HMAC through the same type.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let mut hex = String::new();
        push_hex(&mut hex, &m.finalize().into_bytes());
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn parts_are_framed_and_purposes_apart() {
        let k = Key::from_seed(7);
        assert_ne!(k.mac(&[b"ab", b"c"]), k.mac(&[b"a", b"bc"]));
        assert_ne!(
            k.derive("nonce").mac(&[b"x"]),
            k.derive("branch").mac(&[b"x"])
        );
        assert_ne!(
            Key::from_seed(7).mac(&[b"x"]),
            Key::from_seed(8).mac(&[b"x"])
        );
        assert_eq!(Key::from_seed(7), Key::from_seed(7));
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn verify_takes_the_mac_or_a_long_enough_prefix() {
        let k = Key::from_phrase(b"token");
        let full = k.mac(&[b"msg"]);
        assert!(k.verify(&[b"msg"], &full));
        assert!(k.verify(&[b"msg"], &full[..8]));
        assert!(!k.verify(&[b"msg"], &full[..7]));
        assert!(!k.verify(&[b"msh"], &full));
        let mut bad = full;
        bad[31] ^= 1;
        assert!(!k.verify(&[b"msg"], &bad));
        assert_eq!(
            u64::from_be_bytes(full[..8].try_into().unwrap()),
            k.mac64(&[b"msg"])
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let mut s = String::new();
        push_hex(&mut s, &[0, 0xab, 0xff]);
        assert_eq!(s, "00abff");
        let (b, n) = parse_hex::<4>("00ABff").unwrap();
        assert_eq!((&b[..n], n), (&[0u8, 0xab, 0xff][..], 3));
        assert!(parse_hex::<4>("0").is_none());
        assert!(parse_hex::<2>("000000").is_none());
        assert!(parse_hex::<4>("zz").is_none());
        assert!(parse_hex::<4>("é1").is_none());
    }
}

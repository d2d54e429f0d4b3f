//! Counters keyed by `&'static str` reasons, read back from a snapshot.
//!
//! The Call Manager counts failures under reasons that are string literals. A snapshot carries
//! them as text; the replica that takes it needs them as `&'static str` again. Each distinct
//! text is leaked once for the life of the process, and only the first [`MAX_REASONS`] are:
//! the reasons are a fixed set of literals, and a snapshot comes from an authenticated peer,
//! but nothing read from a socket grows a table without a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Distinct reasons kept; a snapshot naming more counts the rest under [`OTHER`].
const MAX_REASONS: usize = 256;
const OTHER: &str = "other (a reason this process did not know)";

static KNOWN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// `text` as a `&'static str`: the one this process already holds, or a new one while there
/// is room.
pub(crate) fn intern(text: &str) -> &'static str {
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = known.get(text) {
        return k;
    }
    if known.len() >= MAX_REASONS {
        return OTHER;
    }
    let k: &'static str = Box::leak(text.to_owned().into_boxed_str());
    known.insert(k);
    k
}

/// `#[serde(deserialize_with = ...)]` for a `BTreeMap<&'static str, u64>`.
pub(crate) fn counts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<&'static str, u64>, D::Error> {
    let read = <BTreeMap<String, u64> as serde::Deserialize>::deserialize(d)?;
    let mut map = BTreeMap::new();
    for (k, v) in read {
        *map.entry(intern(&k)).or_insert(0) += v;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_text_is_one_str_and_the_table_is_bounded() {
        let a = intern("no capacity (interned test)");
        let b = intern(&String::from("no capacity (interned test)"));
        assert!(std::ptr::eq(a, b));
        for i in 0..MAX_REASONS + 10 {
            let k = intern(&format!("reason {i} (interned test)"));
            assert!(k == format!("reason {i} (interned test)") || k == OTHER);
        }
        assert!(KNOWN.lock().unwrap().len() <= MAX_REASONS);
    }
}

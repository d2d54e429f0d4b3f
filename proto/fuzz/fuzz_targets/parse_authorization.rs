//! Fuzzes server-side Authorization parsing and verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::digest::{parse_authorization, verify, verify_with_ha1};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(auth) = parse_authorization(s) {
        let _ = verify(&auth, "REGISTER", "pw");
        let _ = verify_with_ha1(&auth, "REGISTER", "939e7578ed9e3c518a452acee763bce9");
    }
});

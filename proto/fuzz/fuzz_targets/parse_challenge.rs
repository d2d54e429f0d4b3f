//! Fuzzes challenge parsing, and answering whatever parses: our answer must parse and verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::digest::{parse_authorization, parse_challenge, verify, write_authorization};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ch) = parse_challenge(s) {
        let mut out = String::new();
        write_authorization(&mut out, &ch, "user", "pw", "INVITE", "sip:x", "cn", 1);
        let auth = parse_authorization(&out);
        assert!(auth.is_ok(), "{out}");
        if let Ok(auth) = auth {
            assert!(verify(&auth, "INVITE", "pw"), "{out}");
        }
    }
});

//! Fuzzes SIP URI, name-addr and Via parsing on arbitrary text: no panics,
//! and whatever parses must expose slices of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::sip::Via;
use pbxlab_proto::uri::{NameAddr, SipUri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = SipUri::parse(text) {
        assert!(text.contains(u.host_raw));
        let _ = (u.param("lr"), u.is_loose_route());
    }
    if let Ok(n) = NameAddr::parse(text) {
        assert!(text.contains(n.uri));
        let _ = (n.tag(), n.param("expires"), n.sip_uri());
    }
    let _ = Via::parse(text);
});

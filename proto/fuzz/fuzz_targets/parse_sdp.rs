//! Fuzzes SDP parsing, and answering whatever parses (the answer path reads every field).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::sdp::{SessionDescription, write_answer};

fuzz_target!(|data: &[u8]| {
    if let Ok(sd) = SessionDescription::parse(data) {
        let _ = sd.audio_addr();
        let mut out = Vec::new();
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 5000));
        if write_answer(&mut out, &sd, local, 1, 1).is_ok() {
            // What we write must be something we can read back.
            assert!(SessionDescription::parse(&out).is_ok());
        }
    }
});

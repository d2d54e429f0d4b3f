//! Fuzzes RTP reading and demultiplexing, and feeds payloads to the DTMF decoder and the
//! receive statistics as the receive path would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::dtmf::DtmfReceiver;
use pbxlab_proto::jitter::ReceiveStats;
use pbxlab_proto::rtp::{looks_like_rtp, read_rtp, write_rtp};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_rtp(data);
    if let Ok(v) = read_rtp(data) {
        assert!(v.payload.len() + 12 <= data.len());
        let mut rx = DtmfReceiver::new();
        let _ = rx.on_packet(v.timestamp, v.payload);
        let mut stats = ReceiveStats::new(8000);
        stats.on_packet(v.seq, v.timestamp, v.timestamp.wrapping_add(160));
        // Re-writing what we read gives a packet that reads back the same.
        let mut buf = vec![0u8; 12 + v.payload.len()];
        if let Ok(n) = write_rtp(
            &mut buf,
            v.ssrc,
            v.seq,
            v.timestamp,
            v.payload_type,
            v.marker,
            v.payload,
        ) {
            assert_eq!(read_rtp(&buf[..n]).ok(), Some(v));
        }
    }
});

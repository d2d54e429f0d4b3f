//! Datagrams and names the node's tests share: the core's tests and the driver's loopback
//! test send the same RTP and the same OPTIONS probe.

use pbxlab_proto::rtp;

use crate::MediaSession;

pub(super) fn packet(ssrc: u32, seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; rtp::HEADER_LEN + payload.len()];
    rtp::write_rtp(&mut buf, ssrc, seq, ts, pt, false, payload).unwrap();
    buf
}

pub(super) fn audio(ssrc: u32, seq: u16) -> Vec<u8> {
    packet(ssrc, seq, u32::from(seq) * 160, 0, &[0xff; 160])
}

pub(super) fn session(n: u64) -> MediaSession {
    MediaSession(n)
}

pub(super) const OPTIONS: &str = "OPTIONS sip:media-1@192.0.2.1:4000 SIP/2.0\r\n\
    Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKprobe17;rport\r\n\
    Via: SIP/2.0/UDP 192.0.2.8:5060;branch=z9hG4bKouter\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:cm@192.0.2.9>;tag=cm1\r\n\
    To: <sip:media-1@192.0.2.1:4000>\r\n\
    Call-ID: probe-17@cm\r\n\
    CSeq: 17 OPTIONS\r\n\
    Content-Length: 0\r\n\r\n";

//! RTP packets (RFC 3550 section 5.1): reading any valid version-2 packet through `rtp-rs`,
//! writing the plain 12-byte-header packets a load generator sends, and telling RTP from
//! RTCP, STUN and DTLS on a shared port.
//!
//! What this does NOT do: RTCP (see `crate::jitter` for the statistics that feed receiver
//! reports), SRTP, header extensions or CSRC lists on the sending side (received ones are
//! skipped, not exposed), padding on the sending side, sequence/timestamp bookkeeping (the
//! caller counts; SSRCs come in as arguments), or any socket work.
use rtp_rs::{RtpReader, RtpReaderError};

/// Length of the fixed RTP header we write.
pub const HEADER_LEN: usize = 12;

/// The header fields and payload of a received packet (padding, CSRCs and extension removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    /// Synchronisation source.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Payload without padding.
    pub payload: &'a [u8],
}

/// Why a packet could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Fewer than 12 bytes.
    #[error("RTP packet of {len} bytes is shorter than the 12-byte header")]
    TooShort {
        /// Packet length.
        len: usize,
    },
    /// Version field is not 2.
    #[error("RTP version {version} is not 2")]
    BadVersion {
        /// The version found.
        version: u8,
    },
    /// CSRC list or header extension runs past the end.
    #[error("RTP headers need {header_len} bytes but the packet has {len}")]
    HeadersTruncated {
        /// Bytes the headers claim.
        header_len: usize,
        /// Packet length.
        len: usize,
    },
    /// Padding flag set with a padding count of 0 or longer than the payload.
    #[error("invalid RTP padding length {pad_len}")]
    BadPadding {
        /// The padding count byte.
        pad_len: u8,
    },
    /// Writing: payload type above 127.
    #[error("payload type {payload_type} does not fit in 7 bits")]
    BadPayloadType {
        /// The payload type given.
        payload_type: u8,
    },
    /// Writing: output buffer too small.
    #[error("output buffer of {available} bytes is too small for a {needed}-byte packet")]
    BufferTooSmall {
        /// Packet length.
        needed: usize,
        /// Buffer length.
        available: usize,
    },
}

/// Parses a packet. Rejects anything but version 2, packets shorter than their headers, and
/// invalid padding.
pub fn read_rtp(buf: &[u8]) -> Result<RtpView<'_>, RtpError> {
    let r = RtpReader::new(buf).map_err(|e| match e {
        RtpReaderError::BufferTooShort(len) => RtpError::TooShort { len },
        RtpReaderError::UnsupportedVersion(version) => RtpError::BadVersion { version },
        RtpReaderError::HeadersTruncated { header_len, .. } => RtpError::HeadersTruncated {
            header_len,
            len: buf.len(),
        },
        RtpReaderError::PaddingLengthInvalid(pad_len) => RtpError::BadPadding { pad_len },
    })?;
    Ok(RtpView {
        ssrc: r.ssrc(),
        seq: r.sequence_number().into(),
        timestamp: r.timestamp(),
        payload_type: r.payload_type(),
        marker: r.mark(),
        payload: r.payload(),
    })
}

/// Writes a packet (12-byte header, no CSRC, extension or padding) to the start of `out` and
/// returns its length. Does not allocate; meant for the per-packet send path.
pub fn write_rtp(
    out: &mut [u8],
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    payload_type: u8,
    marker: bool,
    payload: &[u8],
) -> Result<usize, RtpError> {
    if payload_type > 0x7f {
        return Err(RtpError::BadPayloadType { payload_type });
    }
    let needed = HEADER_LEN.saturating_add(payload.len());
    let available = out.len();
    let Some((header, body)) = out
        .get_mut(..needed)
        .and_then(|packet| packet.split_at_mut_checked(HEADER_LEN))
    else {
        return Err(RtpError::BufferTooSmall { needed, available });
    };
    let [s0, s1] = seq.to_be_bytes();
    let [t0, t1, t2, t3] = timestamp.to_be_bytes();
    let [c0, c1, c2, c3] = ssrc.to_be_bytes();
    header.copy_from_slice(&[
        0x80, // version 2, no padding, no extension, no CSRCs
        (u8::from(marker) << 7) | payload_type,
        s0,
        s1,
        t0,
        t1,
        t2,
        t3,
        c0,
        c1,
        c2,
        c3,
    ]);
    body.copy_from_slice(payload);
    Ok(needed)
}

/// Whether a datagram on a port shared with RTCP (RFC 5761), STUN and DTLS (RFC 7983) is RTP:
/// at least 12 bytes, version 2, and a payload type outside 64-95, where the RTCP packet types
/// 192-223 land once the marker bit is masked off.
pub fn looks_like_rtp(buf: &[u8]) -> bool {
    match (buf.first(), buf.get(1)) {
        (Some(&b0), Some(&b1)) if buf.len() >= HEADER_LEN => {
            b0 >> 6 == 2 && !(64..=95).contains(&(b1 & 0x7f))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 200];
        let payload = [0xffu8; 160];
        let n = write_rtp(&mut buf, 0xdead_beef, 65535, 0x0102_0304, 0, true, &payload).unwrap();
        assert_eq!(n, 172);
        assert_eq!(
            &buf[..12],
            &[0x80, 0x80, 0xff, 0xff, 1, 2, 3, 4, 0xde, 0xad, 0xbe, 0xef]
        );
        let v = read_rtp(&buf[..n]).unwrap();
        assert_eq!(
            v,
            RtpView {
                ssrc: 0xdead_beef,
                seq: 65535,
                timestamp: 0x0102_0304,
                payload_type: 0,
                marker: true,
                payload: &payload,
            }
        );
        assert!(looks_like_rtp(&buf[..n]));
    }

    #[test]
    fn write_errors() {
        let mut small = [0u8; 20];
        assert_eq!(
            write_rtp(&mut small, 1, 1, 1, 8, false, &[0; 9]),
            Err(RtpError::BufferTooSmall {
                needed: 21,
                available: 20
            })
        );
        assert_eq!(write_rtp(&mut small, 1, 1, 1, 8, false, &[0; 8]), Ok(20));
        assert_eq!(
            write_rtp(&mut small, 1, 1, 1, 128, false, &[]),
            Err(RtpError::BadPayloadType { payload_type: 128 })
        );
        assert!(matches!(
            write_rtp(&mut [0u8; 11], 1, 1, 1, 0, false, &[]),
            Err(RtpError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn rejects_bad_packets() {
        let mut buf = [0u8; 20];
        let n = write_rtp(&mut buf, 1, 2, 3, 0, false, &[1; 8]).unwrap();
        let mut v1 = buf;
        v1[0] = 0x40;
        assert_eq!(read_rtp(&v1[..n]), Err(RtpError::BadVersion { version: 1 }));
        assert_eq!(read_rtp(&buf[..11]), Err(RtpError::TooShort { len: 11 }));
        assert_eq!(read_rtp(&[]), Err(RtpError::TooShort { len: 0 }));
        // Two CSRCs claimed, none present.
        let mut csrc = buf;
        csrc[0] = 0x82;
        assert!(matches!(
            read_rtp(&csrc[..12]),
            Err(RtpError::HeadersTruncated { .. })
        ));
        // Extension claimed, truncated.
        let mut ext = buf;
        ext[0] = 0x90;
        assert!(matches!(
            read_rtp(&ext[..14]),
            Err(RtpError::HeadersTruncated { .. })
        ));
        // Padding count larger than the payload, and zero.
        let mut pad = buf;
        pad[0] = 0xa0;
        pad[n - 1] = 9;
        assert_eq!(
            read_rtp(&pad[..n]),
            Err(RtpError::BadPadding { pad_len: 9 })
        );
        pad[n - 1] = 0;
        assert_eq!(
            read_rtp(&pad[..n]),
            Err(RtpError::BadPadding { pad_len: 0 })
        );
        pad[n - 1] = 3;
        assert_eq!(read_rtp(&pad[..n]).unwrap().payload, &[1; 5]);
    }

    #[test]
    fn reads_csrcs_and_extension_past_them() {
        // V=2, X=1, CC=1, PT=8; one CSRC; extension id 0xbede with 1 word; 2 payload bytes.
        let pkt = [
            0x91, 0x08, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0xbe, 0xde, 0, 1, 9, 9, 9, 9,
            0xaa, 0xbb,
        ];
        let v = read_rtp(&pkt).unwrap();
        assert_eq!(v.payload_type, 8);
        assert_eq!(v.payload, &[0xaa, 0xbb]);
    }

    #[test]
    fn demultiplexing() {
        let mut buf = [0u8; 12];
        write_rtp(&mut buf, 1, 1, 1, 101, true, &[]).unwrap();
        assert!(looks_like_rtp(&buf));
        // RTCP sender report (PT 200) and receiver report (201).
        assert!(!looks_like_rtp(&[
            0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0
        ]));
        assert!(!looks_like_rtp(&[0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]));
        // STUN binding request starts with 0x00 0x01; DTLS handshake with 22.
        assert!(!looks_like_rtp(&[
            0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0
        ]));
        assert!(!looks_like_rtp(&[
            22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(!looks_like_rtp(&buf[..11]));
        assert!(!looks_like_rtp(&[]));
    }

    proptest! {
        #[test]
        fn read_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = read_rtp(&buf);
            let _ = looks_like_rtp(&buf);
        }

        #[test]
        fn header_like_input_never_panics(
            b0 in 0x80u8..0xc0,
            rest in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = vec![b0];
            buf.extend(rest);
            if let Ok(v) = read_rtp(&buf) {
                prop_assert!(v.payload.len() + 12 <= buf.len());
            }
        }

        #[test]
        fn write_read_round_trip(
            ssrc in any::<u32>(),
            seq in any::<u16>(),
            ts in any::<u32>(),
            pt in 0u8..=127,
            marker in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            slack in 0usize..8,
        ) {
            let mut buf = vec![0u8; 12 + payload.len() + slack];
            let n = write_rtp(&mut buf, ssrc, seq, ts, pt, marker, &payload).unwrap();
            prop_assert_eq!(n, 12 + payload.len());
            let v = read_rtp(&buf[..n]).unwrap();
            prop_assert_eq!(v, RtpView { ssrc, seq, timestamp: ts, payload_type: pt, marker, payload: &payload });
            prop_assert_eq!(looks_like_rtp(&buf[..n]), !(64..=95).contains(&pt));
        }
    }
}

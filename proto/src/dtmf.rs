//! DTMF as RFC 4733 telephone-events: the 4-byte event payload, mapping digits to event
//! codes, the packet schedule a sender follows for one digit, and a receiver that reports each
//! digit once despite updates and retransmitted end packets.
//!
//! What this does NOT do: build RTP headers or pick sequence numbers (see `crate::rtp`; every
//! packet of a schedule gets the next sequence number), keep time (offsets are returned for
//! the caller's scheduler), in-band (audio tone) or SIP INFO DTMF, RFC 2198 redundancy,
//! splitting events longer than the 16-bit duration field into segments, or tones other than
//! the 16 DTMF events (other event codes decode but map to no digit).
/// RTP clock ticks per millisecond for telephone-event at 8 kHz.
const TICKS_PER_MS: u32 = 8;
/// The longest tone whose duration fits the 16-bit field at 8 kHz.
pub const MAX_TONE_MS: u32 = u16::MAX as u32 / TICKS_PER_MS;
/// RFC 4733 2.5.1.4: the final packet is sent three times.
const END_REPEATS: usize = 3;

/// One decoded telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// Event code: 0-9, 10 = `*`, 11 = `#`, 12-15 = `A`-`D`.
    pub event: u8,
    /// E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0, 0-63 (larger is quieter).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Why a telephone-event payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// Fewer than 4 bytes.
    #[error("telephone-event payload of {len} bytes is shorter than 4")]
    TooShort {
        /// Payload length.
        len: usize,
    },
}

/// Encodes an event; a volume above 63 is clamped to 63 since the field has 6 bits.
pub fn encode_event(ev: &DtmfEvent) -> [u8; 4] {
    let [d0, d1] = ev.duration.to_be_bytes();
    [
        ev.event,
        (u8::from(ev.end) << 7) | ev.volume.min(63),
        d0,
        d1,
    ]
}

/// Decodes the first 4 bytes of a payload; the reserved bit is ignored, as RFC 4733 asks of
/// receivers, and so are trailing bytes.
pub fn decode_event(payload: &[u8]) -> Result<DtmfEvent, DtmfError> {
    let Some(&[event, flags, d0, d1]) = payload.first_chunk::<4>() else {
        return Err(DtmfError::TooShort { len: payload.len() });
    };
    Ok(DtmfEvent {
        event,
        end: flags & 0x80 != 0,
        volume: flags & 0x3f,
        duration: u16::from_be_bytes([d0, d1]),
    })
}

/// `0`-`9`, `*`, `#`, `A`-`D` (either case) to the event code.
pub fn digit_to_event(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(c as u8 - b'A' + 12),
        'a'..='d' => Some(c as u8 - b'a' + 12),
        _ => None,
    }
}

/// Event code to digit (`A`-`D` in upper case); `None` for codes above 15.
pub fn event_to_digit(e: u8) -> Option<char> {
    match e {
        0..=9 => Some(char::from(b'0' + e)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + e - 12)),
        _ => None,
    }
}

/// One packet of a digit's schedule. All packets of one event carry the RTP timestamp of the
/// event's start, so that is not repeated here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// When to send it, in ms after the first packet.
    pub offset_ms: u32,
    /// RTP marker bit (first packet of the event only).
    pub marker: bool,
    /// The telephone-event payload.
    pub payload: [u8; 4],
}

/// The packets to send for one digit at 8 kHz. One packet goes out every `packet_ms`, each
/// stating the duration up to the end of its own interval; the one whose interval reaches
/// `tone_ms` is the end packet (duration `tone_ms`) and is sent three times, `packet_ms`
/// apart. A 100 ms tone at 20 ms: updates at 0, 20, 40, 60 ms (durations 160..640), end
/// packets at 80, 100, 120 ms (duration 800).
///
/// `packet_ms` of 0 is taken as 1 and `tone_ms` of 0 as `packet_ms`, so the schedule is never
/// empty nor endless. Tones are cut to [`MAX_TONE_MS`], what the 16-bit duration field holds,
/// rather than split into segments.
pub fn digit_packets(event: u8, tone_ms: u32, packet_ms: u32, volume: u8) -> Vec<DtmfPacket> {
    let packet_ms = packet_ms.clamp(1, MAX_TONE_MS);
    let tone_ms = if tone_ms == 0 {
        packet_ms
    } else {
        tone_ms.min(MAX_TONE_MS)
    };
    let updates = tone_ms.div_ceil(packet_ms).saturating_sub(1);
    let mut packets = Vec::with_capacity(updates as usize + END_REPEATS);
    let payload = |end: bool, ms: u32| {
        let duration = u16::try_from(ms.saturating_mul(TICKS_PER_MS)).unwrap_or(u16::MAX);
        encode_event(&DtmfEvent {
            event,
            end,
            volume,
            duration,
        })
    };
    for k in 0..updates {
        packets.push(DtmfPacket {
            offset_ms: k * packet_ms,
            marker: k == 0,
            payload: payload(false, (k + 1) * packet_ms),
        });
    }
    let end = payload(true, tone_ms);
    for r in 0..END_REPEATS as u32 {
        packets.push(DtmfPacket {
            offset_ms: (updates + r).saturating_mul(packet_ms),
            marker: updates == 0 && r == 0,
            payload: end,
        });
    }
    packets
}

/// How many recent event timestamps to remember; enough for end packets of an earlier digit
/// that arrive after the next digit has started.
const REMEMBERED: usize = 8;

/// Receiver side: reports each digit once, when the first end packet of its event arrives
/// (not the first packet, so a digit is only reported once the sender has finished it). Events
/// are told apart by their RTP timestamp. A digit whose three end packets are all lost is not
/// reported. Events that are not DTMF digits (e.g. 16, flash) are consumed and yield `None`.
#[derive(Debug, Clone, Default)]
pub struct DtmfReceiver {
    reported: [Option<u32>; REMEMBERED],
    next: usize,
}

impl DtmfReceiver {
    /// A receiver that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event payload with its packet's RTP timestamp; `Some(digit)` the
    /// first time an end packet for that timestamp arrives.
    pub fn on_packet(
        &mut self,
        rtp_timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<char>, DtmfError> {
        let ev = decode_event(payload)?;
        if !ev.end || self.reported.contains(&Some(rtp_timestamp)) {
            return Ok(None);
        }
        if let Some(slot) = self.reported.get_mut(self.next) {
            *slot = Some(rtp_timestamp);
        }
        self.next = (self.next + 1) % REMEMBERED;
        Ok(event_to_digit(ev.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_decode_vectors() {
        let ev = DtmfEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(encode_event(&ev), [0x05, 0x8a, 0x03, 0x20]);
        assert_eq!(decode_event(&[0x05, 0x8a, 0x03, 0x20]), Ok(ev));
        let start = DtmfEvent {
            event: 11,
            end: false,
            volume: 63,
            duration: 160,
        };
        assert_eq!(encode_event(&start), [0x0b, 0x3f, 0x00, 0xa0]);
        // Reserved bit set by a sloppy sender is ignored; extra bytes too.
        assert_eq!(decode_event(&[0x0b, 0x7f, 0x00, 0xa0, 0xff]), Ok(start));
        // Over-range volume is clamped, not allowed to spill into the E/R bits.
        let loud = DtmfEvent {
            volume: 200,
            ..start
        };
        assert_eq!(encode_event(&loud)[1], 0x3f);
        assert_eq!(
            decode_event(&[1, 2, 3]),
            Err(DtmfError::TooShort { len: 3 })
        );
    }

    #[test]
    fn digit_mapping() {
        for (c, e) in "0123456789*#ABCD".chars().zip(0u8..) {
            assert_eq!(digit_to_event(c), Some(e));
            assert_eq!(event_to_digit(e), Some(c));
        }
        assert_eq!(digit_to_event('d'), Some(15));
        assert_eq!(digit_to_event('E'), None);
        assert_eq!(digit_to_event('5'), Some(5));
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn schedule_for_100ms_at_20ms() {
        let p = digit_packets(5, 100, 20, 10);
        let got: Vec<(u32, bool, bool, u16)> = p
            .iter()
            .map(|p| {
                let ev = decode_event(&p.payload).unwrap();
                assert_eq!(ev.event, 5);
                assert_eq!(ev.volume, 10);
                (p.offset_ms, p.marker, ev.end, ev.duration)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, true, false, 160),
                (20, false, false, 320),
                (40, false, false, 480),
                (60, false, false, 640),
                (80, false, true, 800),
                (100, false, true, 800),
                (120, false, true, 800),
            ]
        );
        assert_eq!(p[4].payload, [0x05, 0x8a, 0x03, 0x20]);
    }

    #[test]
    fn schedule_edge_cases() {
        // Tone not a multiple of the packet interval: the last interval is short.
        let p = digit_packets(1, 50, 20, 10);
        let d: Vec<_> = p
            .iter()
            .map(|p| decode_event(&p.payload).unwrap().duration)
            .collect();
        assert_eq!(d, vec![160, 320, 400, 400, 400]);
        // Tone shorter than one packet: only end packets, the first one marked.
        let p = digit_packets(1, 10, 20, 10);
        assert_eq!(p.len(), 3);
        assert!(p[0].marker && !p[1].marker);
        assert!(p.iter().all(|p| decode_event(&p.payload).unwrap().end));
        // Degenerate arguments neither panic nor loop forever.
        assert_eq!(digit_packets(1, 0, 0, 10).len(), 3);
        let long = digit_packets(1, 10_000, 20, 10);
        assert_eq!(
            decode_event(&long.last().unwrap().payload)
                .unwrap()
                .duration,
            8191 * 8
        );
        assert_eq!(digit_packets(1, u32::MAX, 1, 10).len(), 8191 + 2);
    }

    #[test]
    fn receiver_dedups_and_separates_events() {
        let mut rx = DtmfReceiver::new();
        let mut got = Vec::new();
        // Two '5's in a row: same digit, different event timestamps.
        for ts in [1000u32, 2600] {
            for p in digit_packets(5, 100, 20, 10) {
                if let Some(d) = rx.on_packet(ts, &p.payload).unwrap() {
                    got.push(d);
                }
            }
        }
        assert_eq!(got, vec!['5', '5']);
        // A late retransmitted end packet of the first event is still a duplicate.
        let end = digit_packets(5, 100, 20, 10)[6].payload;
        assert_eq!(rx.on_packet(1000, &end), Ok(None));
        assert_eq!(
            rx.on_packet(3000, &[0; 2]),
            Err(DtmfError::TooShort { len: 2 })
        );
        // Non-digit event: consumed quietly.
        let flash = encode_event(&DtmfEvent {
            event: 16,
            end: true,
            volume: 0,
            duration: 800,
        });
        assert_eq!(rx.on_packet(4000, &flash), Ok(None));
        assert_eq!(rx.on_packet(4000, &flash), Ok(None));
    }

    #[test]
    fn receiver_reports_on_end_only() {
        let mut rx = DtmfReceiver::new();
        let p = digit_packets(11, 100, 20, 10);
        assert_eq!(rx.on_packet(7, &p[0].payload), Ok(None));
        assert_eq!(rx.on_packet(7, &p[3].payload), Ok(None));
        assert_eq!(rx.on_packet(7, &p[5].payload), Ok(Some('#')));
        assert_eq!(rx.on_packet(7, &p[4].payload), Ok(None));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(event in any::<u8>(), end in any::<bool>(), volume in 0u8..64, duration in any::<u16>()) {
            let ev = DtmfEvent { event, end, volume, duration };
            prop_assert_eq!(decode_event(&encode_event(&ev)), Ok(ev));
        }

        #[test]
        fn receiver_never_panics(packets in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..8)), 0..50)) {
            let mut rx = DtmfReceiver::new();
            for (ts, payload) in packets {
                let _ = rx.on_packet(ts, &payload);
            }
        }
    }
}

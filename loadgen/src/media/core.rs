//! The RTP worker's logic without its socket, thread or clock: streams started, redirected and
//! stopped by [`MediaCommand`], the 20 ms tick that writes each stream's frame (and RFC 4733
//! digits), receive accounting by SSRC, interval closes and the end-of-run rating.
//!
//! Time is nanoseconds on the core's own clock (0 is its epoch) and is always passed in: the
//! thread in `media.rs` passes kernel arrival stamps and `Instant`s since its epoch, a
//! simulation passes virtual time. A tick's datagrams are written into one arena and handed
//! over as one batch, so the thread can still send them with segmentation offload.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use pbxlab_proto::dtmf;
use pbxlab_proto::rtp;
use pbxlab_proto::sdp::PT_TELEPHONE_EVENT;

use super::{
    FRAME, GAP_RECORDED_NS, Gap, Intervals, MAX_GAPS, MediaInterval, MediaReport, NS_PER_SAMPLE,
    PACKET_MAX, Receiving, SAMPLES, Sending, SentAt, mos_histogram, tone,
};
use crate::engine::MediaCommand;
use crate::metrics::{MAX_US, histogram};
use pbxlab_udp::pace::PaceFigures;

const FRAME_NS: u64 = FRAME.as_nanos() as u64;

/// What the sender of a tick's batch says back: when the batch left (the thread's clock at the
/// send; a simulation's `now`) and how many datagrams could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub at_ns: u64,
    pub errors: usize,
}

/// Sends one tick's datagrams, (destination, bytes) in order, and says how it went.
pub type SendBatch<'a> = dyn FnMut(&[(SocketAddr, &[u8])]) -> Sent + 'a;

/// The sans-IO RTP worker: see the module docs.
pub struct MediaCore {
    audio: Vec<u8>,
    frames: usize,
    /// Ordered by destination, so a tick's packets to one address are consecutive and can
    /// leave as one segmented buffer; `dest_of` finds a stream's key.
    sending: BTreeMap<(SocketAddr, u64), Sending>,
    dest_of: HashMap<u64, SocketAddr>,
    /// Looked up per packet, so a hash map; nothing that depends on its order leaves the core
    /// (the end-of-run rating goes through the streams by SSRC).
    receiving: HashMap<u32, Receiving>,
    tick: u64,
    next_tick_ns: u64,
    arena: Vec<u8>,
    packets: Vec<(SocketAddr, usize, usize)>,
    sent_at: SentAt,
    intervals: Intervals,
    next_index: u64,
    report: MediaReport,
}

impl MediaCore {
    /// A core with no streams. `epoch` is the report's clock origin for its gaps (`None`: the
    /// caller's clock, see [`MediaReport::epoch`]); the buffer sizes are what the driver's
    /// socket was granted (0 without one).
    pub fn new(
        epoch: Option<std::time::Instant>,
        receive_buffer_bytes: usize,
        send_buffer_bytes: usize,
    ) -> MediaCore {
        let audio = tone();
        let frames = audio.len() / SAMPLES as usize;
        MediaCore {
            audio,
            frames,
            sending: BTreeMap::new(),
            dest_of: HashMap::new(),
            receiving: HashMap::new(),
            tick: 0,
            next_tick_ns: 0,
            arena: Vec::new(),
            packets: Vec::new(),
            sent_at: SentAt::new(),
            intervals: Intervals::new(),
            next_index: 0,
            report: MediaReport {
                epoch,
                gaps: Vec::new(),
                streams: 0,
                packets_sent: 0,
                packets_received: 0,
                expected: 0,
                lost: 0,
                jitter_us: histogram(),
                gap_us: histogram(),
                mos_centi: mos_histogram(),
                r_factor_sum: 0.0,
                delay_ms_sum: 0.0,
                silent_streams: 0,
                late: 0,
                send_errors: 0,
                malformed: 0,
                segmentation_offload: false,
                receive_coalescing: false,
                receive_buffer_bytes,
                send_buffer_bytes,
                pace: PaceFigures::default(),
                last_interval: Intervals::new().close(
                    0,
                    0,
                    0,
                    0,
                    &mut HashMap::new(),
                    &mut histogram(),
                ),
            },
        }
    }

    /// The streams sending to `dest`, by stream id.
    pub fn streams_to(&self, dest: SocketAddr) -> impl Iterator<Item = u64> + '_ {
        self.sending
            .range((dest, 0)..=(dest, u64::MAX))
            .map(|(&(_, stream), _)| stream)
    }

    /// The report as it stands, for the driver's own fields (coalescing, pace).
    pub fn report_mut(&mut self) -> &mut MediaReport {
        &mut self.report
    }

    /// Whether any stream is sending.
    pub fn is_sending(&self) -> bool {
        !self.sending.is_empty()
    }

    /// When the next tick is due, whether or not anything sends on it.
    pub fn tick_at(&self) -> u64 {
        self.next_tick_ns
    }

    /// When the next tick is due while any stream sends; `None` when idle (a tick then sends
    /// nothing, and the first after an idle spell runs at once).
    pub fn next_tick(&self) -> Option<u64> {
        self.is_sending().then_some(self.next_tick_ns)
    }

    /// Starts, redirects, stops a stream or queues its digits. Digits are scheduled from the
    /// current tick.
    pub fn command(&mut self, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Start {
                stream,
                ssrc,
                dest,
                payload_type,
            } => {
                self.report.streams += 1;
                if let Some(old) = self.dest_of.insert(stream, dest) {
                    self.sending.remove(&(old, stream));
                }
                self.sending.insert(
                    (dest, stream),
                    Sending {
                        ssrc,
                        payload_type,
                        seq: 0,
                        timestamp: 0,
                        frame: 0,
                        digits: Vec::new(),
                    },
                );
            }
            MediaCommand::Redirect { stream, dest } => {
                if let Some(old) = self.dest_of.get_mut(&stream)
                    && let Some(s) = self.sending.remove(&(*old, stream))
                {
                    *old = dest;
                    self.sending.insert((dest, stream), s);
                }
            }
            MediaCommand::Dtmf { stream, digits } => {
                let tick = self.tick;
                if let Some(s) = self
                    .dest_of
                    .get(&stream)
                    .and_then(|d| self.sending.get_mut(&(*d, stream)))
                {
                    // A digit every 200 ms: 100 ms of tone, then a pause, starting after a
                    // second of audio so the far end has locked on to the stream.
                    let mut start = tick + 50;
                    for d in digits.chars().filter_map(dtmf::digit_to_event) {
                        let event_ts = s.timestamp.wrapping_add(((start - tick) as u32) * SAMPLES);
                        for p in dtmf::digit_packets(d, 100, 20, 10) {
                            s.digits.push((
                                start + u64::from(p.offset_ms / 20),
                                p.marker,
                                p.payload,
                                event_ts,
                            ));
                        }
                        start += 10;
                    }
                }
            }
            MediaCommand::Stop { stream } => {
                if let Some(dest) = self.dest_of.remove(&stream)
                    && let Some(s) = self.sending.remove(&(dest, stream))
                    && let Some(r) = self.receiving.get_mut(&s.ssrc)
                {
                    r.stopped_after = Some(self.intervals.closed);
                }
            }
        }
    }

    /// Runs the tick due at [`MediaCore::tick_at`] if `now_ns` has reached it, and returns
    /// whether it did. The tick's datagrams go to `send` as one batch (streams ordered by
    /// destination), which says when they left and how many failed. After a stall of more
    /// than a frame, missed ticks are skipped rather than burst out: the next tick is due at
    /// `now_ns`, and the timestamps go on from where they were.
    pub fn tick(&mut self, now_ns: u64, send: &mut SendBatch<'_>) -> bool {
        if now_ns < self.next_tick_ns {
            return false;
        }
        let tick = self.tick;
        let slot_ns = self.next_tick_ns;
        self.arena.clear();
        self.packets.clear();
        let (arena, packets) = (&mut self.arena, &mut self.packets);
        for (&(dest, _), s) in self.sending.iter_mut() {
            let ssrc = s.ssrc;
            // Writes one packet at the end of the arena; false if it could not be built.
            let mut write = |seq, ts, pt, marker, payload: &[u8]| {
                let at = arena.len();
                arena.resize(at + PACKET_MAX, 0);
                let out = arena.get_mut(at..).unwrap_or_default();
                let n = rtp::write_rtp(out, ssrc, seq, ts, pt, marker, payload).ok();
                arena.truncate(at + n.unwrap_or(0));
                if let Some(n) = n {
                    packets.push((dest, at, n));
                }
                n.is_some()
            };
            let mut sent_event = false;
            while let Some(pos) = s.digits.iter().position(|d| d.0 <= tick) {
                let (_, marker, payload, ts) = s.digits.remove(pos);
                if write(s.seq, ts, PT_TELEPHONE_EVENT, marker, &payload) {
                    s.seq = s.seq.wrapping_add(1);
                    sent_event = true;
                }
            }
            if s.frame == 0 {
                // Our own stream may come back (echoed or relayed to our other leg): when it
                // does, its transit from here is known.
                let origin = i64::try_from(slot_ns).unwrap_or(i64::MAX)
                    - i64::from(s.timestamp) * NS_PER_SAMPLE as i64;
                let r = self.receiving.entry(ssrc).or_insert_with(Receiving::new);
                r.origin_ns = Some(origin);
                r.first_tick = Some(tick);
            }
            if !sent_event {
                let offset = (s.frame % self.frames) * SAMPLES as usize;
                let payload = self
                    .audio
                    .get(offset..offset + SAMPLES as usize)
                    .unwrap_or(&[]);
                write(s.seq, s.timestamp, s.payload_type, false, payload);
                s.seq = s.seq.wrapping_add(1);
            }
            s.frame += 1;
            s.timestamp = s.timestamp.wrapping_add(SAMPLES);
        }
        let datagrams: Vec<(SocketAddr, &[u8])> = self
            .packets
            .iter()
            .map(|&(to, at, n)| (to, self.arena.get(at..at + n).unwrap_or_default()))
            .collect();
        let sent = send(&datagrams);
        self.sent_at.record(tick, sent.at_ns);
        let errors = sent.errors.min(datagrams.len());
        self.report.packets_sent += (datagrams.len() - errors) as u64;
        self.report.send_errors += errors as u64;
        self.tick += 1;
        self.next_tick_ns += FRAME_NS;
        if self.next_tick_ns + FRAME_NS < now_ns {
            // Timestamps go on from where they were, so each stream's timestamp 0 now lies
            // that much later.
            let skipped = i64::try_from(now_ns - self.next_tick_ns).unwrap_or(0);
            for s in self.sending.values() {
                if let Some(origin) = self
                    .receiving
                    .get_mut(&s.ssrc)
                    .and_then(|r| r.origin_ns.as_mut())
                {
                    *origin += skipped;
                }
            }
            self.next_tick_ns = now_ns;
        }
        true
    }

    /// Takes a datagram that arrived at `arrival_ns`.
    pub fn receive(&mut self, arrival_ns: u64, bytes: &[u8]) {
        let report = &mut self.report;
        match rtp::read_rtp(bytes) {
            Ok(p) if p.payload_type != PT_TELEPHONE_EVENT => {
                report.packets_received += 1;
                let r = self.receiving.entry(p.ssrc).or_insert_with(Receiving::new);
                if let Some((last, gap)) = r.on_audio(p.seq, p.timestamp, arrival_ns, &self.sent_at)
                    && gap >= GAP_RECORDED_NS
                    && report.gaps.len() < MAX_GAPS
                {
                    report.gaps.push(Gap {
                        ssrc: p.ssrc,
                        start_ns: last,
                        len_ns: gap,
                    });
                }
            }
            Ok(p) => {
                report.packets_received += 1;
                if let Some(r) = self.receiving.get_mut(&p.ssrc) {
                    r.events += 1;
                }
            }
            Err(_) => report.malformed += 1,
        }
    }

    /// Closes interval `index`: its share of the run's counts.
    pub fn close_interval(&mut self, index: u64) -> MediaInterval {
        let r = &mut self.report;
        let closed = self.intervals.close(
            index,
            r.streams,
            r.packets_sent,
            r.packets_received,
            &mut self.receiving,
            &mut r.gap_us,
        );
        self.next_index = index + 1;
        closed
    }

    /// Ends the run: rates every received stream as it stands and closes the last interval.
    pub fn finish(mut self) -> MediaReport {
        let report = &mut self.report;
        let mut heard = 0u64;
        // By SSRC, so the floating-point sums come out the same whatever the map's order.
        let mut ssrcs: Vec<u32> = self.receiving.keys().copied().collect();
        ssrcs.sort_unstable();
        for ssrc in ssrcs {
            let Some(r) = self.receiving.get_mut(&ssrc) else {
                continue;
            };
            // Our own streams have an entry from their first send; only what arrived counts.
            if r.last_ns.is_none() {
                continue;
            }
            heard += 1;
            report.expected += r.stats.expected();
            report.lost += r.lost();
            report.late += r.playout.late();
            let _ = report
                .jitter_us
                .record((r.stats.jitter_us() as u64).clamp(1, MAX_US));
            r.record_gap(&mut report.gap_us, &mut self.intervals.gap_us);
            let conditions = r.conditions();
            report.delay_ms_sum += conditions.delay_ms;
            report.rate(conditions.r_factor());
        }
        // Every stream started here is a leg that should hear one; whether one that heard
        // nothing is a dead call depends on whether its far end sent at all, which the report
        // decides. All streams arrive on one socket, so which leg heard what is not known: a
        // count. It is exact for echoes and calls between our own users (one stream back per
        // leg), and a lower bound where a leg hears several sources in turn (an IVR prompt,
        // then a queue's agent).
        report.silent_streams = report.streams.saturating_sub(heard);
        report.last_interval = self.intervals.close(
            self.next_index,
            report.streams,
            report.packets_sent,
            report.packets_received,
            &mut self.receiving,
            &mut report.gap_us,
        );
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn start(dest: SocketAddr) -> MediaCommand {
        MediaCommand::Start {
            stream: 1,
            ssrc: 0x1234,
            dest,
            payload_type: 0,
        }
    }

    /// Runs `a`'s stream to `b` for `ticks` ticks on a fake clock, each packet arriving
    /// `delay_ms(i)` after it left (None: dropped).
    fn exchange(
        a: &mut MediaCore,
        b: &mut MediaCore,
        ticks: u64,
        delay_ms: impl Fn(u64) -> Option<u64>,
    ) {
        for i in 0..ticks {
            let now = i * FRAME_NS;
            let mut out = Vec::new();
            assert!(a.tick(now, &mut |d| {
                out.extend(d.iter().map(|(_, b)| b.to_vec()));
                Sent {
                    at_ns: now,
                    errors: 0,
                }
            }));
            if let Some(d) = delay_ms(i) {
                for p in out {
                    b.receive(now + d * MS, &p);
                }
            }
        }
    }

    #[test]
    fn two_cores_on_a_fake_clock_measure_loss_gap_and_mos() {
        let (mut a, mut b) = (MediaCore::new(None, 0, 0), MediaCore::new(None, 0, 0));
        assert_eq!(a.next_tick(), None, "idle");
        a.command(start(addr(2)));
        assert_eq!(a.next_tick(), Some(0));
        // 100 frames, 5 ms each way, frames 40 to 43 dropped: a gap of 100 ms.
        exchange(&mut a, &mut b, 100, |i| {
            (!(40..44).contains(&i)).then_some(5)
        });
        assert_eq!(a.next_tick(), Some(100 * FRAME_NS));
        let (a, b) = (a.finish(), b.finish());
        assert_eq!((a.packets_sent, b.packets_received), (100, 96));
        // RFC 3550's probation: the count starts from the second packet.
        assert_eq!((b.expected, b.lost), (99, 4));
        assert_eq!(b.gaps.len(), 1);
        assert_eq!(
            (b.gaps[0].start_ns, b.gaps[0].len_ns),
            (39 * FRAME_NS + 5 * MS, 100 * MS)
        );
        // A constant delay has no jitter; 4% loss is a poor call.
        assert!(b.jitter_us.max() <= 1, "{}", b.jitter_us.max());
        assert_eq!(b.mos_centi.len(), 1);
        assert!(b.mos_centi.max() < 441, "{}", b.mos_centi.max());
        assert_eq!((a.silent_streams, b.silent_streams), (1, 0));
    }

    #[test]
    fn a_stall_skips_missed_ticks_and_digits_leave_at_their_ticks() {
        let mut a = MediaCore::new(None, 0, 0);
        a.command(start(addr(2)));
        a.command(MediaCommand::Dtmf {
            stream: 1,
            digits: "5".into(),
        });
        let mut events = Vec::new();
        let mut now = 0;
        for _ in 0..60 {
            let tick = a.tick;
            a.tick(now, &mut |d| {
                for (_, p) in d {
                    if rtp::read_rtp(p).is_ok_and(|p| p.payload_type == PT_TELEPHONE_EVENT) {
                        events.push(tick);
                    }
                }
                Sent {
                    at_ns: now,
                    errors: 0,
                }
            });
            now += FRAME_NS;
        }
        // The digit starts 50 ticks in: 100 ms of tone, its end packet repeated, over seven ticks.
        assert_eq!(events.first(), Some(&50));
        assert!(events.iter().all(|&t| (50..=56).contains(&t)), "{events:?}");
        assert!(!a.tick(now - 1, &mut |_| unreachable!()), "not yet due");
        // A stall of 200 ms: one late tick, then the next is due at once, not ten bursts.
        let late = now + 200 * MS;
        assert!(a.tick(late, &mut |_| Sent {
            at_ns: late,
            errors: 0
        }));
        assert_eq!(a.tick_at(), late);
        assert!(a.tick(late, &mut |_| Sent {
            at_ns: late,
            errors: 0
        }));
        assert_eq!(a.tick_at(), late + FRAME_NS);
    }
}

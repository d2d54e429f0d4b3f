//! RFC 3550 receive statistics for one SSRC: the appendix A.1 sequence-number state
//! (extended highest sequence number across wraps, probation, re-sync after a restart), packet
//! counts and cumulative loss (A.3), and the A.8 interarrival jitter estimate.
//!
//! What this does NOT do: keep per-SSRC maps (one value per source; the caller looks it up),
//! read clocks (arrival times come in, already in RTP timestamp units), the per-interval
//! "fraction lost" of a receiver report (snapshot `expected()`/`received()` at each report and
//! take differences), build RTCP packets, or play out audio (it is not a jitter *buffer*).
//!
//! Counting follows A.1 exactly, including its two quirks: the first packet of a stream
//! (during probation) is counted in neither `received` nor `expected`, and a re-sync after a
//! large jump starts both counts afresh. Duplicates count as received, so loss can go
//! negative. Only packets the sequence state accepts feed the jitter estimate.
/// Largest forward jump still taken as loss rather than a restart (A.1).
const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still taken as reordering (A.1).
const MAX_MISORDER: u16 = 100;
/// In-order packets needed before a new source is believed (A.1).
const MIN_SEQUENTIAL: u32 = 2;
const SEQ_MOD: u64 = 1 << 16;

/// Receive statistics for one RTP source.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiveStats {
    clock_rate: u32,
    started: bool,
    max_seq: u16,
    /// Wrap count shifted left 16, as A.1 keeps it, but wide enough never to wrap itself.
    cycles: u64,
    base_seq: u16,
    /// The sequence number that would confirm a restart (A.1 `bad_seq`).
    bad_seq: Option<u16>,
    probation: u32,
    received: u64,
    last_transit: Option<u32>,
    jitter: f64,
}

impl ReceiveStats {
    /// Statistics for a source whose RTP clock runs at `clock_rate` Hz (8000 for G.711).
    pub fn new(clock_rate: u32) -> Self {
        ReceiveStats {
            clock_rate,
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: None,
            probation: MIN_SEQUENTIAL,
            received: 0,
            last_transit: None,
            jitter: 0.0,
        }
    }

    /// Records one packet. `arrival` is its arrival time in the same units as the RTP
    /// timestamp (e.g. `arrival_ns * clock_rate / 1e9`, computed by the caller); only
    /// differences matter, so it may start anywhere and wrap.
    pub fn on_packet(&mut self, seq: u16, rtp_timestamp: u32, arrival: u32) {
        if self.update_seq(seq) {
            self.update_jitter(rtp_timestamp, arrival);
        }
    }

    /// Packets counted as received (duplicates included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected: extended highest sequence number minus the base, plus one.
    pub fn expected(&self) -> u64 {
        if self.probation > 0 {
            return 0;
        }
        self.extended_max_seq()
            .saturating_sub(u64::from(self.base_seq))
            .saturating_add(1)
    }

    /// Cumulative packets lost: expected minus received; negative when duplicates outnumber
    /// losses, as RFC 3550 6.4.1 allows.
    pub fn lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.received).unwrap_or(i64::MAX);
        expected.saturating_sub(received)
    }

    /// Cumulative loss as a fraction of expected packets, clamped to 0.0..=1.0.
    pub fn loss_fraction(&self) -> f64 {
        let expected = self.expected();
        if expected == 0 {
            return 0.0;
        }
        (self.lost() as f64 / expected as f64).clamp(0.0, 1.0)
    }

    /// Extended highest sequence number received (wrap count in the upper bits).
    pub fn extended_max_seq(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Interarrival jitter in timestamp units (A.8).
    pub fn jitter_units(&self) -> f64 {
        self.jitter
    }

    /// Interarrival jitter in microseconds; 0 for a clock rate of 0.
    pub fn jitter_us(&self) -> f64 {
        if self.clock_rate == 0 {
            return 0.0;
        }
        self.jitter * 1_000_000.0 / f64::from(self.clock_rate)
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        // The timing of a restarted source has nothing to do with the old one's.
        self.last_transit = None;
    }

    /// A.1 `update_seq`: whether the packet counts.
    fn update_seq(&mut self, seq: u16) -> bool {
        if !self.started {
            self.started = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER + 1 {
            // A big jump: believe it only when the next packet follows it.
            if self.bad_seq == Some(seq) {
                self.init_seq(seq);
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, max unchanged.
        self.received += 1;
        true
    }

    /// A.8: J += (|D| - J) / 16, where D is the change in transit time.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(last) = self.last_transit.replace(transit) {
            // Transit times wrap together with the clocks; the signed difference is what moved.
            let d = f64::from(transit.wrapping_sub(last) as i32).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u32 = 160; // 20 ms at 8 kHz

    fn feed(stats: &mut ReceiveStats, seqs: impl IntoIterator<Item = u16>) {
        for s in seqs {
            // Timestamps follow sequence numbers, arrivals are perfect.
            let ts = u32::from(s).wrapping_mul(FRAME);
            stats.on_packet(s, ts, ts.wrapping_add(5000));
        }
    }

    #[test]
    fn perfect_stream() {
        let mut st = ReceiveStats::new(8000);
        for i in 0..100u32 {
            st.on_packet(1000 + i as u16, 7777 + i * FRAME, 123 + i * FRAME);
        }
        // The first packet is consumed by probation (A.1).
        assert_eq!(st.received(), 99);
        assert_eq!(st.expected(), 99);
        assert_eq!(st.lost(), 0);
        assert_eq!(st.loss_fraction(), 0.0);
        assert_eq!(st.jitter_units(), 0.0);
        assert_eq!(st.jitter_us(), 0.0);
        assert_eq!(st.extended_max_seq(), 1099);
    }

    #[test]
    fn jitter_follows_the_recurrence() {
        let delays: [u32; 12] = [0, 40, 10, 80, 80, 0, 160, 20, 20, 5, 300, 0];
        let mut st = ReceiveStats::new(8000);
        let base_arrival = u32::MAX - 1000; // arrival clock wraps mid-stream
        let mut arrivals = Vec::new();
        for (i, d) in delays.iter().enumerate() {
            let ts = 50_000 + i as u32 * FRAME;
            let arrival = base_arrival.wrapping_add(i as u32 * FRAME + d);
            arrivals.push((ts, arrival));
            st.on_packet(i as u16, ts, arrival);
        }
        // Packet 0 is the probation packet; packet 1 sets the transit reference.
        let mut j = 0.0f64;
        for i in 2..delays.len() {
            let d = (delays[i] as f64 - delays[i - 1] as f64).abs();
            j += (d - j) / 16.0;
        }
        assert!(
            (st.jitter_units() - j).abs() < 1e-9,
            "{} vs {j}",
            st.jitter_units()
        );
        assert!(j > 0.0);
        assert!((st.jitter_us() - j * 125.0).abs() < 1e-6);
    }

    #[test]
    fn sequence_wrap() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, (0..20u16).map(|i| 65530u16.wrapping_add(i)));
        assert_eq!(st.extended_max_seq(), 65536 + 13);
        assert_eq!(st.expected(), 19);
        assert_eq!(st.received(), 19);
        assert_eq!(st.lost(), 0);
    }

    #[test]
    fn five_of_hundred_lost() {
        let mut st = ReceiveStats::new(8000);
        let lost = [10u16, 20, 30, 31, 99];
        // 99 is the last packet: not yet known lost. Send 100 too so all five are.
        feed(&mut st, (0..=100u16).filter(|s| !lost.contains(s)));
        assert_eq!(st.expected(), 100);
        assert_eq!(st.received(), 95);
        assert_eq!(st.lost(), 5);
        assert!((st.loss_fraction() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, [0, 1, 2, 4, 3, 5, 5, 5, 6]);
        // 1..=6 expected; 8 counted (two duplicates of 5, reordered 3 counted once).
        assert_eq!(st.expected(), 6);
        assert_eq!(st.received(), 8);
        assert_eq!(st.lost(), -2);
        assert_eq!(st.loss_fraction(), 0.0);
        assert_eq!(st.extended_max_seq(), 6);
        // A packet from before the wrap arriving after it does not move the max back.
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, [65533, 65534, 0, 65535, 1]);
        assert_eq!(st.extended_max_seq(), 65536 + 1);
        assert_eq!(st.expected(), 4);
        assert_eq!(st.received(), 4);
    }

    #[test]
    fn big_jump_resyncs_after_two_in_a_row() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, 0..10);
        assert_eq!(st.received(), 9);
        // One stray packet far away is ignored...
        feed(&mut st, [30_000]);
        assert_eq!(st.received(), 9);
        assert_eq!(st.extended_max_seq(), 9);
        feed(&mut st, [10, 11]);
        assert_eq!(st.received(), 11);
        // ...but two in sequence mean the sender restarted: counts start again there.
        feed(&mut st, [40_000, 40_001, 40_002]);
        assert_eq!(st.received(), 2);
        assert_eq!(st.expected(), 2);
        assert_eq!(st.extended_max_seq(), 40_002);
        assert_eq!(st.lost(), 0);
    }

    #[test]
    fn probation_restarts_on_out_of_order_start() {
        let mut st = ReceiveStats::new(8000);
        feed(&mut st, [5, 9]);
        assert_eq!(st.received(), 0);
        assert_eq!(st.expected(), 0);
        assert_eq!(st.loss_fraction(), 0.0);
        feed(&mut st, [10, 11]);
        assert_eq!(st.received(), 2);
        assert_eq!(st.expected(), 2);
    }

    #[test]
    fn zero_clock_rate_does_not_divide_by_zero() {
        let mut st = ReceiveStats::new(0);
        feed(&mut st, [0, 1, 2]);
        st.on_packet(3, 0, 99_999);
        assert!(st.jitter_units() > 0.0);
        assert_eq!(st.jitter_us(), 0.0);
    }
}

//! Listening-and-talking quality of one RTP stream by the E-model (ITU-T G.107): the rating
//! factor R from the stream's loss, late packets and delay, and the MOS (conversational
//! quality, estimated) that G.107 Annex B maps R to. Also the fixed playout buffer that decides
//! which packets came too late to be played.
//!
//! What this does NOT do: read clocks or sockets (transit times and counts come in), or model
//! what pbxlab cannot see — room noise, loudness ratings, sidetone and echo paths keep G.107's
//! default values. So the terms that vary here are the delay impairment Idd (from the one-way
//! delay `Ta`) and the effective equipment impairment Ie-eff (codec and packet loss); with
//! defaults and a short delay R is 93.2 and the MOS 4.41, the best a G.711 call scores.
//!
//! Simplifications, each a choice:
//! - `Ro - Is - Idte - Idle` is G.107's default-value figure, 93.2 (94.77 - 1.41 - 0.15): the
//!   talker-echo term Idte is held at its value for `T = 0`. G.107 computes it from the echo
//!   path's delay `T` and TELR (65 dB by default), which would take about 1.2 off R at 60 ms;
//!   pbxlab's endpoints are 4-wire and digital, with no hybrid and no acoustic path that could
//!   echo, and it cannot measure an echo it does not have.
//! - The advantage factor A is 0 (wired telephony).
//! - Packet loss is taken as random (BurstR = 1); the late packets a playout buffer drops count
//!   as lost, as G.107 and G.113 say they should.
//! - G.711's Ie is 0 and its Bpl 4.3, the value G.113 Appendix I gives for G.711 *without*
//!   packet-loss concealment (25.1 with Appendix I PLC). pbxlab's own nodes decode without
//!   concealment, and a load test should not credit the far end with concealment it may lack:
//!   1% loss costs 17.9 of R here, about 3.6 with PLC.

/// G.107's R for all-default parameters and no delay: `Ro - Is - Id` with Id's echo terms at
/// their defaults (94.77 - 1.41 - 0.15, rounded as G.107 states it).
pub const R_DEFAULT: f64 = 93.2;
/// G.711's equipment impairment (G.113 Appendix I).
pub const IE_G711: f64 = 0.0;
/// G.711's packet-loss robustness without concealment (G.113 Appendix I).
pub const BPL_G711: f64 = 4.3;
/// G.711's packet-loss robustness with G.711 Appendix I concealment, for comparison.
pub const BPL_G711_PLC: f64 = 25.1;
/// The one-way delay from which G.107's Idd starts to count (its `mT`, default 100 ms).
pub const IDD_FROM_MS: f64 = 100.0;

/// One stream's conditions, as the E-model takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Packets that were not played, lost or too late, as a fraction of those expected
    /// (0..=1; anything outside is clamped).
    pub loss_fraction: f64,
    /// Mean one-way mouth-to-ear delay, milliseconds (G.107's `Ta`).
    pub delay_ms: f64,
    /// The codec's Ie and Bpl.
    pub ie: f64,
    pub bpl: f64,
    /// Burst ratio, 1 for random loss.
    pub burst_ratio: f64,
}

impl Conditions {
    /// G.711 without concealment and with random loss.
    pub fn g711(loss_fraction: f64, delay_ms: f64) -> Conditions {
        Conditions {
            loss_fraction,
            delay_ms,
            ie: IE_G711,
            bpl: BPL_G711,
            burst_ratio: 1.0,
        }
    }

    /// G.107's effective equipment impairment:
    /// `Ie-eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)`, Ppl in percent.
    pub fn ie_eff(&self) -> f64 {
        let ppl = finite_or(self.loss_fraction, 1.0).clamp(0.0, 1.0) * 100.0;
        let burst = finite_or(self.burst_ratio, 1.0).max(1.0);
        let denominator = ppl / burst + self.bpl;
        if denominator <= 0.0 {
            return 95.0;
        }
        self.ie + (95.0 - self.ie) * ppl / denominator
    }

    /// The rating factor R: `R_DEFAULT - Idd(Ta) - Ie-eff`, not below 0.
    pub fn r_factor(&self) -> f64 {
        (R_DEFAULT - idd(self.delay_ms) - self.ie_eff()).max(0.0)
    }

    pub fn mos(&self) -> f64 {
        mos(self.r_factor())
    }
}

fn finite_or(v: f64, fallback: f64) -> f64 {
    if v.is_finite() { v } else { fallback }
}

/// G.107's impairment from a long one-way delay `Ta` (ms): 0 up to 100 ms, then
/// `25 * ((1 + X^6)^(1/6) - 3 (1 + (X/3)^6)^(1/6) + 2)` with `X = log2(Ta / 100)`
/// (the default delay sensitivity, sT = 1 and mT = 100 ms).
pub fn idd(ta_ms: f64) -> f64 {
    // NaN reads as "no delay known": it must not turn the whole rating into NaN.
    if ta_ms.is_nan() || ta_ms <= IDD_FROM_MS {
        return 0.0;
    }
    let x = (ta_ms / IDD_FROM_MS).log2();
    let sixth = |v: f64| v.powf(1.0 / 6.0);
    25.0 * (sixth(1.0 + x.powi(6)) - 3.0 * sixth(1.0 + (x / 3.0).powi(6)) + 2.0)
}

/// G.107 Annex B: MOS (conversational quality, estimated) from R: 1 for R <= 0, 4.5 for
/// R >= 100, and `1 + 0.035 R + R (R - 60) (100 - R) 7e-6` between. The polynomial dips just
/// below 1 for R under 6.5 (to 0.99 near R = 3); that is held at 1, so the MOS stays on its
/// scale and never rises as R falls.
pub fn mos(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).max(1.0)
    }
}

/// A fixed playout (jitter) buffer, as far as it decides which packets play: each packet is
/// due `depth` after the earliest transit seen on the stream, and one that arrives later is
/// dropped as late. A buffer that keeps missing its packets starts again from the stream's
/// current transit, as real buffers do after an underrun: a lasting step in delay (a sender
/// that stalled, a route that changed) costs a few packets, not the rest of the call.
///
/// Transit is arrival time minus RTP timestamp, both in RTP clock units; only differences
/// matter, so both clocks may start anywhere and wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playout {
    depth_units: u32,
    /// The transit a packet is measured against: the earliest since the last restart.
    anchor: Option<u32>,
    late_in_a_row: u32,
    late: u64,
}

/// Late packets in a row after which the buffer starts again from the current transit.
const RESTART_AFTER_LATE: u32 = 3;

impl Playout {
    /// A buffer holding `depth_units` of RTP clock (320 is 40 ms at 8 kHz).
    pub fn new(depth_units: u32) -> Playout {
        Playout {
            depth_units,
            anchor: None,
            late_in_a_row: 0,
            late: 0,
        }
    }

    /// Takes one packet; false if it came too late to be played.
    pub fn on_packet(&mut self, rtp_timestamp: u32, arrival: u32) -> bool {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        let Some(anchor) = self.anchor else {
            self.anchor = Some(transit);
            return true;
        };
        // Signed: transit times wrap together with the clocks.
        let behind = transit.wrapping_sub(anchor) as i32;
        if behind < 0 {
            // Faster than any before: later packets are measured against this one.
            self.anchor = Some(transit);
            self.late_in_a_row = 0;
            return true;
        }
        if behind.unsigned_abs() <= self.depth_units {
            self.late_in_a_row = 0;
            return true;
        }
        self.late += 1;
        self.late_in_a_row += 1;
        if self.late_in_a_row >= RESTART_AFTER_LATE {
            self.anchor = Some(transit);
            self.late_in_a_row = 0;
        }
        false
    }

    /// Packets dropped as late.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn a_clean_g711_call_rates_93_2_and_mos_4_41() {
        let c = Conditions::g711(0.0, 60.0);
        assert_eq!(c.r_factor(), 93.2);
        assert!(close(c.mos(), 4.41, 0.005), "{}", c.mos());
        assert!(close(mos(93.2), 4.4093, 1e-4));
    }

    #[test]
    fn one_percent_random_loss_without_concealment() {
        let c = Conditions::g711(0.01, 0.0);
        // 95 * 1 / (1 + 4.3)
        assert!(close(c.ie_eff(), 17.92, 0.01), "{}", c.ie_eff());
        assert!(close(c.r_factor(), 75.28, 0.01), "{}", c.r_factor());
        assert!(close(c.mos(), 3.83, 0.01), "{}", c.mos());
        // With concealment the same loss costs far less.
        let plc = Conditions {
            bpl: BPL_G711_PLC,
            ..c
        };
        assert!(close(plc.ie_eff(), 95.0 / 26.1, 1e-9));
        // Bursty loss hurts more than random loss of the same amount.
        let bursty = Conditions {
            burst_ratio: 2.0,
            ..c
        };
        assert!(bursty.ie_eff() > c.ie_eff());
    }

    #[test]
    fn delay_impairment_follows_g107() {
        // Hand-computed from the formula: X = log2(1.5) and log2(3).
        assert_eq!(idd(0.0), 0.0);
        assert_eq!(idd(100.0), 0.0);
        assert!(close(idd(150.0), 0.1635, 1e-3), "{}", idd(150.0));
        assert!(close(idd(200.0), 3.044, 1e-3), "{}", idd(200.0));
        assert!(close(idd(300.0), 14.76, 1e-2), "{}", idd(300.0));
        assert!(close(idd(400.0), 24.07, 1e-2), "{}", idd(400.0));
        let slow = Conditions::g711(0.0, 300.0);
        assert!(close(slow.r_factor(), 93.2 - 14.76, 1e-2));
        // Longer is never better.
        let mut last = 0.0;
        for ms in (0..2000).step_by(10) {
            let v = idd(f64::from(ms));
            assert!(v >= last, "{ms} ms");
            last = v;
        }
        assert_eq!(idd(f64::NAN), 0.0);
    }

    #[test]
    fn mos_is_monotone_in_r_and_clamped() {
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(0.0), 1.0);
        assert_eq!(mos(100.0), 4.5);
        assert_eq!(mos(250.0), 4.5);
        assert_eq!(mos(f64::NAN), 1.0);
        let mut last = mos(0.0);
        for tenth in 1..=1000 {
            let m = mos(f64::from(tenth) / 10.0);
            assert!(m >= last - 1e-12, "R {}", f64::from(tenth) / 10.0);
            assert!((1.0..=4.5).contains(&m));
            last = m;
        }
        // Total loss leaves R at 2.1 (95 * 100 / 104.3 off 93.2): MOS 1, the floor.
        assert!(close(Conditions::g711(1.0, 0.0).r_factor(), 2.12, 0.01));
        assert_eq!(Conditions::g711(1.0, 0.0).mos(), 1.0);
        assert_eq!(Conditions::g711(f64::NAN, 0.0).mos(), 1.0);
        assert_eq!(Conditions::g711(2.0, 0.0).mos(), 1.0);
    }

    /// (timestamp, arrival) for packet `i` of a 20 ms stream delayed by `extra` units.
    fn at(i: u32, extra: u32) -> (u32, u32) {
        let ts = 1_000 + i * 160;
        (ts, ts.wrapping_add(7_000_000 + extra))
    }

    #[test]
    fn the_buffer_plays_what_comes_within_its_depth() {
        let mut p = Playout::new(320);
        for (i, extra) in [0, 100, 320, 40, 321, 0, 2_000, 10].into_iter().enumerate() {
            let (ts, arrival) = at(i as u32, extra);
            p.on_packet(ts, arrival);
        }
        // 321 and 2,000 units behind the earliest transit are past 40 ms.
        assert_eq!(p.late(), 2);
    }

    #[test]
    fn a_faster_packet_moves_the_reference() {
        let mut p = Playout::new(320);
        let (ts, arrival) = at(0, 400);
        assert!(p.on_packet(ts, arrival));
        let (ts, arrival) = at(1, 0);
        assert!(p.on_packet(ts, arrival));
        // 400 behind the new reference: late, though on time for the first packet.
        let (ts, arrival) = at(2, 400);
        assert!(!p.on_packet(ts, arrival));
    }

    #[test]
    fn a_lasting_step_in_delay_costs_a_few_packets() {
        let mut p = Playout::new(320);
        for i in 0..50 {
            let (ts, arrival) = at(i, 0);
            assert!(p.on_packet(ts, arrival));
        }
        // A stall: from here on every packet is 200 ms (1,600 units) later.
        for i in 50..500 {
            let (ts, arrival) = at(i, 1_600);
            p.on_packet(ts, arrival);
        }
        assert_eq!(p.late(), u64::from(RESTART_AFTER_LATE));
    }

    #[test]
    fn transit_across_a_clock_wrap_is_not_a_jump() {
        let mut p = Playout::new(320);
        for i in 0..100u32 {
            let ts = (u32::MAX - 50 * 160).wrapping_add(i * 160);
            let arrival = 12_345u32.wrapping_add(i * 160);
            assert!(p.on_packet(ts, arrival), "packet {i}");
        }
        assert_eq!(p.late(), 0);
    }
}

//! What `pbxlab load` reports: the stable JSON schema (names are an interface: add, never
//! rename) and its rendering as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::metrics::{Metric, Outcomes};
use crate::threshold::{Field, Subject};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RtpSummary {
    pub streams: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub loss_fraction: f64,
    pub jitter_p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdResult {
    pub expr: String,
    pub value: f64,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub duration_s: f64,
    pub interrupted: bool,
    /// Datagrams received on the SIP socket.
    pub messages_received: u64,
    /// Of those, how many did not parse.
    pub malformed: u64,
    /// Responses for calls or registrations already finished (late retransmissions).
    pub stray: u64,
    pub metrics: BTreeMap<String, LatencySummary>,
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// Reason to count: timeouts, final status codes, malformed messages, socket errors.
    pub failures: BTreeMap<String, u64>,
    pub rtp: RtpSummary,
    pub thresholds: Vec<ThresholdResult>,
}

impl LoadReport {
    /// The value a threshold reads (latencies in microseconds).
    pub fn value<'a>(&self, subject: &Subject, hist: impl Fn(Metric) -> &'a Histogram<u64>) -> f64 {
        let outcome = |o: &Outcomes, f: &Field| match f {
            Field::Attempted => o.attempted as f64,
            Field::Succeeded => o.succeeded as f64,
            Field::Failed => o.failed as f64,
            Field::FailedFraction => {
                if o.attempted == 0 {
                    0.0
                } else {
                    o.failed as f64 / o.attempted as f64
                }
            }
        };
        match subject {
            Subject::Percentile(m, q) => hist(*m).value_at_quantile(q.fraction()) as f64,
            Subject::Max(m) => hist(*m).max() as f64,
            Subject::Mean(m) => hist(*m).mean(),
            Subject::Count(m) => hist(*m).len() as f64,
            Subject::Calls(f) => outcome(&self.calls, f),
            Subject::Registrations(f) => outcome(&self.registrations, f),
            Subject::RtpLossFraction => self.rtp.loss_fraction,
            Subject::RtpJitterP99 => self.rtp.jitter_p99_us as f64,
        }
    }

    pub fn thresholds_pass(&self) -> bool {
        self.thresholds.iter().all(|t| t.pass)
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(
            o,
            "target {}  {:.1} s{}",
            self.target,
            self.duration_s,
            if self.interrupted {
                "  INTERRUPTED"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "\n{:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}   (ms)",
            "metric", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in &self.metrics {
            if s.count == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "{:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                s.count,
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us)
            );
        }
        let _ = writeln!(
            o,
            "\n{:<14} {:>10} {:>10} {:>8}",
            "", "attempted", "succeeded", "failed"
        );
        for (label, x) in [
            ("registrations", &self.registrations),
            ("calls", &self.calls),
        ] {
            if x.attempted > 0 {
                let _ = writeln!(
                    o,
                    "{label:<14} {:>10} {:>10} {:>8}",
                    x.attempted, x.succeeded, x.failed
                );
            }
        }
        if self.rtp.streams > 0 {
            let _ = writeln!(
                o,
                "\nrtp: {} streams, {} packets sent, {} received, loss {:.4}%, jitter p99 {} ms",
                self.rtp.streams,
                self.rtp.packets_sent,
                self.rtp.packets_received,
                self.rtp.loss_fraction * 100.0,
                ms(self.rtp.jitter_p99_us)
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(o, "\nfailures");
            for (reason, n) in &self.failures {
                let _ = writeln!(o, "  {n:>8}  {reason}");
            }
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(o, "\nthresholds");
            for t in &self.thresholds {
                let _ = writeln!(
                    o,
                    "  {:<32} {:>14.3}  {}",
                    t.expr,
                    t.value,
                    if t.pass { "pass" } else { "FAIL" }
                );
            }
        }
        o
    }
}

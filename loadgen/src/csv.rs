//! `--csv`: the run interval by interval, one row per interval with the same figures as the
//! JSON's `intervals` (`report::IntervalRow`), as SIPp's `-trace_stat` file gives them. Columns
//! are only ever added at the end, never renamed or moved: scripts read them by position too.
//!
//! Latencies are in milliseconds; a metric with nothing measured in an interval has a count of 0
//! and empty percentiles.

use std::fmt::Write as _;

use crate::metrics::Metric;
use crate::report::IntervalRow;

/// The columns before the per-metric ones. `failures` counts every failure of the interval
/// (calls, registrations, malformed messages, socket errors), and the `failed_` columns split
/// them by class (`report::FailureClasses`).
const FIXED: [&str; 18] = [
    "start_s",
    "length_s",
    "calls_attempted",
    "calls_succeeded",
    "calls_failed",
    "calls_abandoned",
    "failures",
    "failed_timeout",
    "failed_4xx",
    "failed_5xx",
    "failed_6xx",
    "failed_other",
    "concurrent_calls",
    "registrations_attempted",
    "registrations_succeeded",
    "registrations_failed",
    "call_rate_per_s",
    "register_rate_per_s",
];

/// The RTP worker's columns, after the metrics': empty in a row without RTP figures.
const RTP: [&str; 5] = [
    "rtp_packets_sent",
    "rtp_packets_received",
    "rtp_loss_fraction",
    "rtp_late_packets",
    "rtp_jitter_p99_ms",
];

/// The header line.
pub fn header() -> String {
    let mut columns: Vec<String> = FIXED.iter().map(|&c| c.to_owned()).collect();
    for m in Metric::ALL {
        let name = m.name();
        columns.extend(
            ["count", "p50_ms", "p90_ms", "p99_ms"]
                .iter()
                .map(|s| format!("{name}_{s}")),
        );
    }
    columns.extend(RTP.iter().map(|&c| c.to_owned()));
    let mut line = columns.join(",");
    line.push('\n');
    line
}

/// The line of one interval.
pub fn row(r: &IntervalRow) -> String {
    let c = &r.failure_classes;
    let mut line = format!(
        "{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
        r.start_s,
        r.length_s,
        r.calls.attempted,
        r.calls.succeeded,
        r.calls.failed,
        r.calls.abandoned,
        r.failures.values().sum::<u64>(),
        c.timeout,
        c.client,
        c.server,
        c.global,
        c.other,
        r.concurrent_calls,
        r.registrations.attempted,
        r.registrations.succeeded,
        r.registrations.failed,
        r.call_rate_per_s,
        r.register_rate_per_s,
    );
    let ms = |us: u64| us as f64 / 1000.0;
    for m in Metric::ALL {
        match r.metrics.get(m.name()) {
            Some(l) => {
                let _ = write!(
                    line,
                    ",{},{:.3},{:.3},{:.3}",
                    l.count,
                    ms(l.p50_us),
                    ms(l.p90_us),
                    ms(l.p99_us)
                );
            }
            None => line.push_str(",0,,,"),
        }
    }
    match &r.rtp {
        Some(rtp) => {
            let _ = write!(
                line,
                ",{},{},{:.6},{},{:.3}",
                rtp.packets_sent,
                rtp.packets_received,
                rtp.loss_fraction,
                rtp.late_packets,
                ms(rtp.jitter_p99_us)
            );
        }
        None => line.push_str(&",".repeat(RTP.len())),
    }
    line.push('\n');
    line
}

/// The whole file: the header and a row per interval.
pub fn file(rows: &[IntervalRow]) -> String {
    let mut out = header();
    for r in rows {
        out.push_str(&row(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FailureClasses, IntervalLatency, IntervalRtp};

    #[test]
    fn a_row_has_a_value_under_every_column_in_order() {
        let mut r = IntervalRow {
            start_s: 2.0,
            length_s: 1.0005,
            concurrent_calls: 7,
            call_rate_per_s: 12.5,
            ..IntervalRow::default()
        };
        r.calls.attempted = 12;
        r.calls.failed = 3;
        r.failures = [
            ("INVITE timeout".to_owned(), 2),
            ("486 Busy Here".to_owned(), 1),
        ]
        .into();
        r.failure_classes = FailureClasses::of(&r.failures);
        r.metrics.insert(
            "setup".to_owned(),
            IntervalLatency {
                count: 9,
                p50_us: 1_500,
                p90_us: 2_000,
                p99_us: 12_345,
                max_us: 20_000,
            },
        );
        let header = header();
        let line = row(&r);
        let columns: Vec<&str> = header.trim_end().split(',').collect();
        let values: Vec<&str> = line.trim_end().split(',').collect();
        assert_eq!(columns.len(), values.len(), "{header}{line}");
        assert_eq!(
            columns.len(),
            FIXED.len() + 4 * Metric::ALL.len() + RTP.len()
        );
        let at = |name: &str| {
            let i = columns.iter().position(|c| *c == name).expect(name);
            values[i]
        };
        assert_eq!(at("start_s"), "2.000");
        assert_eq!(at("calls_attempted"), "12");
        assert_eq!(at("failed_timeout"), "2");
        assert_eq!(at("failed_4xx"), "1");
        assert_eq!(at("failures"), "3");
        assert_eq!(at("concurrent_calls"), "7");
        assert_eq!(at("call_rate_per_s"), "12.500");
        assert_eq!(at("setup_count"), "9");
        assert_eq!(at("setup_p99_ms"), "12.345");
        assert_eq!((at("bye_count"), at("bye_p50_ms")), ("0", ""));
        assert_eq!((at("rtp_packets_sent"), at("rtp_jitter_p99_ms")), ("", ""));
        // The RTP columns come last, after every metric's.
        assert_eq!(columns[columns.len() - RTP.len()..], RTP);
        let with_rtp = IntervalRow {
            rtp: Some(IntervalRtp {
                packets_sent: 500,
                packets_received: 490,
                packets_expected: 500,
                packets_lost: 10,
                loss_fraction: 0.02,
                late_packets: 3,
                streams_received: 10,
                jitter_p99_us: 1_250,
            }),
            ..r.clone()
        };
        let line = row(&with_rtp);
        let values: Vec<&str> = line.trim_end().split(',').collect();
        assert_eq!(columns.len(), values.len(), "{header}{line}");
        let at = |name: &str| {
            let i = columns.iter().position(|c| *c == name).expect(name);
            values[i]
        };
        assert_eq!(at("rtp_packets_sent"), "500");
        assert_eq!(at("rtp_packets_received"), "490");
        assert_eq!(at("rtp_loss_fraction"), "0.020000");
        assert_eq!(at("rtp_late_packets"), "3");
        assert_eq!(at("rtp_jitter_p99_ms"), "1.250");
        assert_eq!(file(&[r.clone(), r]).lines().count(), 3);
    }
}

//! What `pbxlab load` reports: the stable JSON schema (names are an interface: add, never
//! rename) and its rendering as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::metrics::{IntervalSummary, IvrCounts, Metric, Outcomes, QueueCounts};
use crate::threshold::{Field, MosStat, QueueField, Subject};
use pbxlab_udp::pace::PaceFigures;

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

/// One metric within one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct IntervalLatency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One interval of a run (`--interval` long), as `--csv` writes it and the JSON's `intervals`
/// holds it. Counts are of what happened within the interval, not since the start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IntervalRow {
    /// When the interval began, seconds since the run started, and how long it lasted.
    pub start_s: f64,
    pub length_s: f64,
    /// Attempts started in the interval, and attempts that ended in it, by how they ended.
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// The failures that happened in the interval, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Calls in progress at the end of the interval.
    pub concurrent_calls: u64,
    /// Attempts started per second of the interval.
    pub call_rate_per_s: f64,
    pub register_rate_per_s: f64,
    /// The metrics measured in the interval (none recorded: absent).
    pub metrics: BTreeMap<String, IntervalLatency>,
}

impl IntervalRow {
    /// The row of the interval `closed` summarises, from the run's counts at its end and at
    /// the end of the interval before (`before`).
    pub fn of(
        closed: &IntervalSummary,
        now: &RunCounts,
        before: &RunCounts,
        concurrent_calls: u64,
    ) -> IntervalRow {
        let length_s = closed.length.as_secs_f64();
        let per_s = |n: u64| {
            if length_s > 0.0 {
                n as f64 / length_s
            } else {
                0.0
            }
        };
        let calls = now.calls.since(&before.calls);
        let registrations = now.registrations.since(&before.registrations);
        let failures = now
            .failures
            .iter()
            .filter_map(|(reason, &n)| {
                let new = n.saturating_sub(before.failures.get(reason).copied().unwrap_or(0));
                (new > 0).then(|| (reason.clone(), new))
            })
            .collect();
        let metrics = Metric::ALL
            .iter()
            .map(|&m| (m, m as usize))
            .filter(|&(_, i)| closed.counts[i] > 0)
            .map(|(m, i)| {
                (
                    m.name().to_owned(),
                    IntervalLatency {
                        count: closed.counts[i],
                        p50_us: closed.p50_us[i],
                        p90_us: closed.p90_us[i],
                        p99_us: closed.p99_us[i],
                        max_us: closed.max_us[i],
                    },
                )
            })
            .collect();
        IntervalRow {
            start_s: closed.start.as_secs_f64(),
            length_s,
            call_rate_per_s: per_s(calls.attempted),
            register_rate_per_s: per_s(registrations.attempted),
            calls,
            registrations,
            failures,
            concurrent_calls,
            metrics,
        }
    }
}

/// The run's counts since it started, kept at each interval's end to tell the next
/// interval's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCounts {
    pub calls: Outcomes,
    pub registrations: Outcomes,
    pub failures: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RtpSummary {
    pub streams: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// RFC 3550's cumulative loss over the received streams: what their sequence numbers say
    /// is missing.
    pub loss_fraction: f64,
    /// Packets sent that never came back, as a fraction of those sent: counts what RFC 3550
    /// cannot see, a stream's lost tail and streams never received. Meaningful where every
    /// stream comes back to the generator (calls between its own users, echo).
    pub unreceived_fraction: f64,
    pub jitter_p99_us: u64,
    /// The streams' E-model MOS (see `crate::emodel`).
    pub mos: MosSummary,
    /// The mean of the streams' R factors (0 to 100; 93.2 is a clean G.711 call).
    pub r_factor_mean: f64,
}

/// The distribution of per-stream MOS (1 to 4.5), low percentiles first: a few bad calls show
/// in `p1` and `p5`, not in the mean. Every figure is 0 when no stream was rated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MosSummary {
    /// Streams rated: those received, and with `--rtp 1` also the legs that heard nothing
    /// (rated 1, the floor).
    pub streams: u64,
    pub min: f64,
    pub p1: f64,
    pub p5: f64,
    pub p50: f64,
    pub mean: f64,
    pub max: f64,
    /// The mean mouth-to-ear delay the received streams were rated with (G.107's Ta):
    /// packetisation and playout buffer (60 ms), plus the network transit of streams this
    /// generator sent itself (an echo's round trip).
    pub delay_ms_mean: f64,
    /// Legs that heard nothing: streams started less streams received. Exact where each leg
    /// hears one stream (echo, calls between our own users); a lower bound where a leg hears
    /// several sources in turn (IVR prompt, queue, agent).
    pub silent_streams: u64,
    /// Audio packets that arrived later than the 40 ms playout buffer could play them; they
    /// count as lost in the MOS.
    pub late_packets: u64,
}

impl MosSummary {
    /// From a histogram of MOS in hundredths.
    pub fn of(centi: &Histogram<u64>, silent_streams: u64, late_packets: u64) -> MosSummary {
        let mos = |v: u64| v as f64 / 100.0;
        if centi.is_empty() {
            return MosSummary {
                silent_streams,
                late_packets,
                ..MosSummary::default()
            };
        }
        MosSummary {
            streams: centi.len(),
            min: mos(centi.min()),
            p1: mos(centi.value_at_quantile(0.01)),
            p5: mos(centi.value_at_quantile(0.05)),
            p50: mos(centi.value_at_quantile(0.50)),
            mean: centi.mean() / 100.0,
            max: mos(centi.max()),
            // The caller knows the streams' delays; the histogram does not.
            delay_ms_mean: 0.0,
            silent_streams,
            late_packets,
        }
    }

    pub fn stat(&self, stat: MosStat) -> f64 {
        match stat {
            MosStat::Min => self.min,
            MosStat::P1 => self.p1,
            MosStat::P5 => self.p5,
            MosStat::P50 => self.p50,
            MosStat::Mean => self.mean,
            MosStat::Max => self.max,
        }
    }
}

/// How one of pbxlab's own threads kept its schedule (see `pbxlab_udp::pace`): when
/// `saturated`, this machine was the bottleneck and the figures around it measure the machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriverPace {
    pub driver: String,
    /// The furthest behind its schedule it ran.
    pub worst_ms: f64,
    /// When, seconds since the driver started.
    pub worst_at_s: f64,
    /// Times it ran 50 ms or more behind.
    pub behind: u64,
    /// Datagrams this machine's kernel dropped on its full sockets.
    pub kernel_drops: u64,
    pub saturated: bool,
}

impl DriverPace {
    pub fn of(driver: &str, f: &PaceFigures) -> DriverPace {
        DriverPace {
            driver: driver.to_owned(),
            worst_ms: f.worst.as_secs_f64() * 1000.0,
            worst_at_s: f.worst_at.as_secs_f64(),
            behind: f.behind,
            kernel_drops: f.kernel_drops,
            saturated: f.saturated(),
        }
    }

    /// The sentence a report prints for a saturated driver, `None` while it kept up: "the node
    /// thread fell 180 ms behind its schedule (at 41.2 s; 3 times past 50 ms); packets dropped
    /// in this machine's kernel on its sockets: 12,400".
    pub fn describe(&self) -> Option<String> {
        if !self.saturated {
            return None;
        }
        let driver = &self.driver;
        let mut parts = Vec::new();
        if self.behind > 0 {
            parts.push(format!(
                "{driver} fell {} ms behind its schedule (at {:.1} s; {} {} past {} ms)",
                self.worst_ms as u64,
                self.worst_at_s,
                self.behind,
                if self.behind == 1 { "time" } else { "times" },
                pbxlab_udp::pace::BEHIND.as_millis()
            ));
        } else {
            parts.push(format!("{driver} kept its schedule"));
        }
        if self.kernel_drops > 0 {
            parts.push(format!(
                "packets dropped in this machine's kernel on its sockets: {}",
                thousands(self.kernel_drops)
            ));
        }
        Some(parts.join("; "))
    }
}

/// 12400 as 12,400.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The lines a report prints when any of pbxlab's drivers was saturated, with `blame` saying
/// what the figures then measure ("not the target", "not the cluster"); empty if none was.
pub fn render_pace(drivers: &[DriverPace], blame: &str) -> String {
    let said: Vec<String> = drivers.iter().filter_map(DriverPace::describe).collect();
    if said.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "
pbxlab itself fell behind on this machine ({blame}):
"
    );
    for line in said {
        let _ = writeln!(o, "  {line}");
    }
    o
}

/// The calls of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub name: String,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// Queue callers: `queue-N` calls once answered and IVR calls once transferred. Callers neither
/// answered nor abandoned were still waiting when the run stopped, or the target hung up on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueSummary {
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    /// Average speed of answer: the mean wait of the answered callers.
    pub asa_ms: f64,
    pub answered_within_sl: u64,
    /// The service-level threshold `answered_within_sl` counts against.
    pub service_level_s: f64,
}

impl QueueSummary {
    pub fn of(
        counts: &QueueCounts,
        wait_us: &Histogram<u64>,
        service_level: std::time::Duration,
    ) -> QueueSummary {
        QueueSummary {
            offered: counts.offered,
            answered: counts.answered,
            abandoned: counts.abandoned,
            asa_ms: if wait_us.is_empty() {
                0.0
            } else {
                wait_us.mean() / 1000.0
            },
            answered_within_sl: counts.answered_within_sl,
            service_level_s: service_level.as_secs_f64(),
        }
    }

    /// Fraction of offered callers answered within the service level (1 with none offered), as
    /// `plan` defines it.
    pub fn service_level(&self) -> f64 {
        if self.offered == 0 {
            1.0
        } else {
            self.answered_within_sl as f64 / self.offered as f64
        }
    }

    pub fn abandoned_fraction(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.abandoned as f64 / self.offered as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdResult {
    pub expr: String,
    pub value: f64,
    pub pass: bool,
}

/// The period the generator woke on while traffic flowed, in each phase (`--tick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TickSummary {
    /// Chosen from each phase's rate (`--tick auto`) rather than set.
    pub auto: bool,
    /// `None` for a phase the run did not have; 0 for an exact schedule.
    pub registrations_us: Option<u64>,
    pub calls_us: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub duration_s: f64,
    pub interrupted: bool,
    /// The seed every random choice of the run derived from (given with `--seed`, or picked
    /// for the run): `--seed` with it repeats them.
    pub seed: u64,
    pub tick: TickSummary,
    /// Datagrams received on the SIP socket.
    pub messages_received: u64,
    /// Of those, how many did not parse.
    pub malformed: u64,
    /// Responses for calls or registrations already finished (late retransmissions).
    pub stray: u64,
    pub metrics: BTreeMap<String, LatencySummary>,
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// Of the registrations, how many were refreshes of a binding (at 80% of its expiry).
    pub registrations_refreshed: u64,
    /// The calls of each workload (one unless a scenario mixes them).
    pub workloads: Vec<WorkloadSummary>,
    pub queue: QueueSummary,
    pub ivr: IvrCounts,
    /// Reason to count: timeouts, final status codes, malformed messages, socket errors.
    pub failures: BTreeMap<String, u64>,
    pub rtp: RtpSummary,
    /// How pbxlab's own threads (the SIP loop, the RTP worker) kept their schedules.
    pub emulator: Vec<DriverPace>,
    pub thresholds: Vec<ThresholdResult>,
    /// The run interval by interval.
    pub intervals: Vec<IntervalRow>,
    /// Media silences of 60 ms or more, one by one, for drills to attribute to faults; not
    /// part of the JSON report.
    #[serde(skip)]
    pub gaps: Vec<crate::media::Gap>,
    /// The clock origin of `gaps`.
    #[serde(skip)]
    pub media_epoch: Option<std::time::Instant>,
}

impl LoadReport {
    /// The value a threshold reads (latencies in microseconds).
    /// Whether pbxlab itself was the bottleneck of the run.
    pub fn saturated(&self) -> bool {
        self.emulator.iter().any(|d| d.saturated)
    }

    pub fn value<'a>(&self, subject: &Subject, hist: impl Fn(Metric) -> &'a Histogram<u64>) -> f64 {
        let outcome = |o: &Outcomes, f: &Field| match f {
            Field::Attempted => o.attempted as f64,
            Field::Succeeded => o.succeeded as f64,
            Field::Failed => o.failed as f64,
            Field::Abandoned => o.abandoned as f64,
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
            Subject::Queue(f) => match f {
                QueueField::Offered => self.queue.offered as f64,
                QueueField::Answered => self.queue.answered as f64,
                QueueField::Abandoned => self.queue.abandoned as f64,
                QueueField::AbandonedFraction => self.queue.abandoned_fraction(),
                QueueField::ServiceLevel => self.queue.service_level(),
                QueueField::Asa => self.queue.asa_ms * 1000.0,
            },
            Subject::RtpLossFraction => self.rtp.loss_fraction,
            Subject::RtpJitterP99 => self.rtp.jitter_p99_us as f64,
            Subject::Mos(stat) => self.rtp.mos.stat(*stat),
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
            "seed   {}  (--seed {} repeats this run's random choices)",
            self.seed, self.seed
        );
        let phases: Vec<String> = [
            ("registrations", self.tick.registrations_us),
            ("calls", self.tick.calls_us),
        ]
        .into_iter()
        .filter_map(|(phase, us)| Some(format!("{phase} {} ms", us? as f64 / 1000.0)))
        .collect();
        if !phases.is_empty() {
            let _ = writeln!(
                o,
                "tick   {}{}",
                phases.join(", "),
                if self.tick.auto { " (auto)" } else { "" }
            );
        }
        // As wide as the longest name shown (`setup_uncorrected` is 17).
        let width = self
            .metrics
            .iter()
            .filter(|(_, s)| s.count > 0)
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0)
            .max("metric".len());
        let _ = writeln!(
            o,
            "\n{:<width$} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}   (ms)",
            "metric", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in &self.metrics {
            if s.count == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "{:<width$} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
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
            "\n{:<14} {:>10} {:>10} {:>8} {:>10}",
            "", "attempted", "succeeded", "failed", "abandoned"
        );
        let mut rows = vec![
            ("registrations", &self.registrations),
            ("calls", &self.calls),
        ];
        if self.workloads.len() > 1 {
            rows.extend(
                self.workloads
                    .iter()
                    .map(|w| (w.name.as_str(), &w.outcomes)),
            );
        }
        for (i, (label, x)) in rows.into_iter().enumerate() {
            if x.attempted > 0 {
                // Workloads are indented under the calls they add up to.
                let label = if i > 1 {
                    format!("  {label}")
                } else {
                    label.to_owned()
                };
                let _ = writeln!(
                    o,
                    "{label:<14} {:>10} {:>10} {:>8} {:>10}",
                    x.attempted, x.succeeded, x.failed, x.abandoned
                );
            }
        }
        if self.registrations_refreshed > 0 {
            let _ = writeln!(
                o,
                "({} of the registrations refreshed a binding before it lapsed)",
                self.registrations_refreshed
            );
        }
        let q = &self.queue;
        if q.offered > 0 || self.ivr.calls > 0 {
            o.push('\n');
        }
        if q.offered > 0 {
            let _ = writeln!(
                o,
                "queue: {} offered, {} answered ({} within {} s: service level {:.1}%), {} abandoned ({:.1}%), ASA {:.1} s",
                q.offered,
                q.answered,
                q.answered_within_sl,
                q.service_level_s,
                q.service_level() * 100.0,
                q.abandoned,
                q.abandoned_fraction() * 100.0,
                q.asa_ms / 1000.0
            );
        }
        if self.ivr.calls > 0 {
            let _ = writeln!(
                o,
                "ivr: {} calls answered, {} transferred to a queue",
                self.ivr.calls, self.ivr.routed
            );
        }
        if self.rtp.streams > 0 {
            let _ = writeln!(
                o,
                "\nrtp: {} streams, {} packets sent, {} received, loss {:.4}% (RFC 3550), {:.4}% of sent not received, jitter p99 {} ms",
                self.rtp.streams,
                self.rtp.packets_sent,
                self.rtp.packets_received,
                self.rtp.loss_fraction * 100.0,
                self.rtp.unreceived_fraction * 100.0,
                ms(self.rtp.jitter_p99_us)
            );
        }
        let mos = &self.rtp.mos;
        if mos.streams > 0 {
            let _ = writeln!(
                o,
                "MOS p1 {:.2}, p5 {:.2}, p50 {:.2}, min {:.2}, mean {:.2} over {} streams, R mean {:.1}, mouth-to-ear {:.1} ms (E-model G.107, G.711 without PLC, 40 ms playout buffer); silent legs {}, packets too late to play {}",
                mos.p1,
                mos.p5,
                mos.p50,
                mos.min,
                mos.mean,
                mos.streams,
                self.rtp.r_factor_mean,
                mos.delay_ms_mean,
                mos.silent_streams,
                mos.late_packets
            );
        }
        o.push_str(&render_pace(
            &self.emulator,
            "these figures measure this machine, not the target",
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_that_kept_up_says_nothing_and_one_behind_names_its_lateness_and_drops() {
        let p = pbxlab_udp::pace::Pace::default();
        p.on_time(1_000_000, 1_400_000);
        assert_eq!(
            DriverPace::of("the node thread", &p.figures()).describe(),
            None
        );
        let p = pbxlab_udp::pace::Pace::default();
        p.on_time(40_000_000_000, 40_180_000_000);
        p.on_time(41_000_000_000, 41_010_000_000);
        let mut last = 0;
        p.socket_drops(&mut last, Some(12_000));
        p.socket_drops(&mut last, None);
        p.socket_drops(&mut last, Some(12_400));
        assert_eq!(
            DriverPace::of("the node thread", &p.figures())
                .describe()
                .as_deref(),
            Some(
                "the node thread fell 180 ms behind its schedule (at 40.2 s; 1 time past 50 ms); \
                 packets dropped in this machine's kernel on its sockets: 12,400"
            )
        );
    }

    #[test]
    fn queue_rows_and_figures_show_when_there_were_queue_callers() {
        let wait = LatencySummary {
            count: 2,
            p50_us: 3_000_000,
            max_us: 5_000_000,
            ..LatencySummary::default()
        };
        let mut report = LoadReport {
            target: "127.0.0.1:5060".into(),
            duration_s: 10.0,
            interrupted: false,
            seed: 3,
            tick: TickSummary::default(),
            messages_received: 10,
            malformed: 0,
            stray: 0,
            metrics: [
                ("queue_wait".to_owned(), wait),
                ("ivr_route".to_owned(), LatencySummary::default()),
            ]
            .into(),
            calls: Outcomes::default(),
            registrations: Outcomes::default(),
            registrations_refreshed: 0,
            workloads: Vec::new(),
            queue: QueueSummary {
                offered: 4,
                answered: 2,
                abandoned: 1,
                asa_ms: 4000.0,
                answered_within_sl: 2,
                service_level_s: 20.0,
            },
            ivr: IvrCounts::default(),
            failures: BTreeMap::new(),
            rtp: RtpSummary::default(),
            emulator: Vec::new(),
            thresholds: Vec::new(),
            intervals: Vec::new(),
            gaps: Vec::new(),
            media_epoch: None,
        };
        let text = report.render_text();
        assert!(text.contains("\nqueue_wait "), "{text}");
        // Figures are right-aligned in fixed columns after the widest name: every row of
        // the latency table is as long as the header less its "   (ms)".
        report.metrics.insert("setup_uncorrected".to_owned(), wait);
        let text = report.render_text();
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("metric"))
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        for row in &table[1..] {
            assert_eq!(row.len() + "   (ms)".len(), table[0].len(), "{text}");
        }
        report.metrics.remove("setup_uncorrected");
        assert!(text.contains("--seed 3 repeats"), "{text}");
        assert!(!text.contains("ivr_route"), "no row without a measurement");
        assert!(
            text.contains("service level 50.0%") && text.contains("1 abandoned (25.0%)"),
            "{text}"
        );
        assert_eq!(report.queue.service_level(), 0.5);
        report.queue = QueueSummary::default();
        assert!(!report.render_text().contains("queue:"));
        assert_eq!(
            report.queue.service_level(),
            1.0,
            "nobody offered, nobody missed"
        );
    }

    #[test]
    fn the_mos_distribution_is_reported_and_read_by_thresholds() {
        let mut centi = Histogram::<u64>::new_with_bounds(1, 450, 3).expect("bounds");
        for v in (0..95).map(|_| 441).chain([380, 300, 250, 100, 440]) {
            let _ = centi.record(v);
        }
        let mos = MosSummary::of(&centi, 1, 7);
        assert_eq!(mos.streams, 100);
        assert_eq!((mos.min, mos.max, mos.p50), (1.0, 4.41, 4.41));
        // Of a hundred, p1 is the worst and p5 the fifth worst.
        assert_eq!((mos.p1, mos.p5), (1.0, 4.4));
        assert_eq!(mos.stat(MosStat::P5), 4.4);
        assert!((mos.mean - (95.0 * 4.41 + 3.8 + 3.0 + 2.5 + 1.0 + 4.4) / 100.0).abs() < 1e-9);
        let none = MosSummary::of(&Histogram::new(3).expect("sigfig"), 2, 0);
        assert_eq!((none.streams, none.p5, none.silent_streams), (0, 0.0, 2));

        let report = LoadReport {
            target: "127.0.0.1:5060".into(),
            duration_s: 10.0,
            interrupted: false,
            seed: 3,
            tick: TickSummary::default(),
            messages_received: 10,
            malformed: 0,
            stray: 0,
            metrics: BTreeMap::new(),
            calls: Outcomes::default(),
            registrations: Outcomes::default(),
            registrations_refreshed: 0,
            workloads: Vec::new(),
            queue: QueueSummary::default(),
            ivr: IvrCounts::default(),
            failures: BTreeMap::new(),
            rtp: RtpSummary {
                streams: 100,
                mos,
                r_factor_mean: 91.0,
                ..RtpSummary::default()
            },
            emulator: Vec::new(),
            thresholds: Vec::new(),
            intervals: Vec::new(),
            gaps: Vec::new(),
            media_epoch: None,
        };
        let empty = Histogram::<u64>::new(3).expect("sigfig");
        assert_eq!(report.value(&Subject::Mos(MosStat::P5), |_| &empty), 4.4);
        assert_eq!(report.value(&Subject::Mos(MosStat::Min), |_| &empty), 1.0);
        let text = report.render_text();
        assert!(
            text.contains("MOS p1 1.00, p5 4.40, p50 4.41, min 1.00")
                && text.contains(
                    "over 100 streams, R mean 91.0, mouth-to-ear 0.0 ms (E-model G.107, G.711"
                )
                && text.contains("silent legs 1, packets too late to play 7"),
            "{text}"
        );
    }
}

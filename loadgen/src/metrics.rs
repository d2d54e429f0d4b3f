//! Latency histograms and outcome counters of a load run.
//!
//! Every latency is recorded in microseconds into an HdrHistogram (3 significant digits, up to
//! one hour). Recording goes into the current interval's histogram; at each interval boundary the
//! interval is added to the run's total and serialised for the interval log (`crate::hlog`),
//! where the driver takes it from (`Metrics::take_log`). Histograms of
//! several shards or intervals are merged by adding counts, never by averaging percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

/// The latencies a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// First REGISTER to the final 200, across the digest challenge.
    Register,
    /// Post-dial delay: INVITE to the first 180/183.
    Pdd,
    /// INVITE to 200.
    Setup,
    /// BYE to its 200.
    Bye,
    /// Per call with RTP: the longest interval without received media.
    MediaGap,
    /// INVITE to 200 measured from when the INVITE actually left, as a closed-loop tool
    /// measures: blind to the time an attempt spent waiting to be sent (coordinated omission).
    /// Reported beside `setup` so the difference is visible, as wrk2 reports uncorrected latency.
    SetupUncorrected,
    /// A queue caller's wait: from entering the queue (the 200 of a `queue-N` call, or the
    /// transfer of an IVR call) to the re-INVITE that connects it to an agent.
    QueueWait,
    /// From asking the IVR for a queue (digits handed to the RTP worker) to the transfer
    /// (re-INVITE).
    IvrRoute,
}

/// How many metrics there are.
pub const METRICS: usize = 8;

impl Metric {
    pub const ALL: [Metric; METRICS] = [
        Metric::Register,
        Metric::Pdd,
        Metric::Setup,
        Metric::Bye,
        Metric::MediaGap,
        Metric::SetupUncorrected,
        Metric::QueueWait,
        Metric::IvrRoute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Register => "register",
            Metric::Pdd => "pdd",
            Metric::Setup => "setup",
            Metric::Bye => "bye",
            Metric::MediaGap => "media_gap",
            Metric::SetupUncorrected => "setup_uncorrected",
            Metric::QueueWait => "queue_wait",
            Metric::IvrRoute => "ivr_route",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// One hour in microseconds: anything slower is recorded as an hour.
pub const MAX_US: u64 = 3_600_000_000;

/// A histogram of microseconds from 1 µs to an hour at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // hdrhistogram refuses only low < 1, high < 2 * low or more than 5 significant digits; these
    // constants are none of those.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Outcome counts of one kind of attempt. Every attempt that ends lands in exactly one of
/// `succeeded`, `failed` and `abandoned`, so `attempted = succeeded + failed + abandoned` once a
/// run has drained (attempts still in flight at the end are counted as failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Outcomes {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Queue callers whose patience ran out before an agent answered: they hung up, which is
    /// the caller's choice and not a failure of the target. Always 0 for registrations.
    pub abandoned: u64,
}

impl Outcomes {
    /// What happened between `earlier` and these counts.
    pub fn since(&self, earlier: &Outcomes) -> Outcomes {
        Outcomes {
            attempted: self.attempted.saturating_sub(earlier.attempted),
            succeeded: self.succeeded.saturating_sub(earlier.succeeded),
            failed: self.failed.saturating_sub(earlier.failed),
            abandoned: self.abandoned.saturating_sub(earlier.abandoned),
        }
    }

    /// Adds `other`'s counts (another shard's, another interval's).
    pub fn add(&mut self, other: &Outcomes) {
        self.attempted += other.attempted;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.abandoned += other.abandoned;
    }
}

/// What happened to the callers that entered a queue (`queue-N` calls once answered, IVR calls
/// once transferred).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub offered: u64,
    /// Connected to an agent (their wait is in `queue_wait`).
    pub answered: u64,
    pub abandoned: u64,
    /// Answered with a wait of at most the service-level threshold.
    pub answered_within_sl: u64,
}

/// IVR calls (`ivr-N`) that were answered, and how many of them the IVR transferred to a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IvrCounts {
    pub calls: u64,
    pub routed: u64,
}

/// When the attempts of one kind started: how many, the first and the last (nanoseconds since
/// the run started), for the rate achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Starts {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Starts {
    pub fn at(&mut self, now_ns: u64) {
        if self.count == 0 {
            self.first_ns = now_ns;
        }
        self.count += 1;
        self.last_ns = self.last_ns.max(now_ns);
    }

    /// Attempts per second from the first start to the last: n starts span n - 1 gaps. 0 with
    /// fewer than two starts, or all at once.
    pub fn rate_per_s(&self) -> f64 {
        let span_s = self.last_ns.saturating_sub(self.first_ns) as f64 / 1e9;
        if self.count < 2 || span_s <= 0.0 {
            0.0
        } else {
            (self.count - 1) as f64 / span_s
        }
    }

    fn add(&mut self, other: &Starts) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
    }
}

pub struct Metrics {
    interval: [Histogram<u64>; METRICS],
    total: [Histogram<u64>; METRICS],
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// When calls, and registrations (not their refreshes), started.
    pub call_starts: Starts,
    pub register_starts: Starts,
    /// Of the registrations, how many renewed a binding before it lapsed.
    pub registrations_refreshed: u64,
    /// The calls of each workload, in the order of `Config::workloads`.
    pub workloads: Vec<Outcomes>,
    pub queue: QueueCounts,
    pub ivr: IvrCounts,
    /// Reason (timeout, a status code, malformed response, ...) to count.
    pub failures: BTreeMap<String, u64>,
    interval_start: Duration,
    /// Interval-log lines of the intervals closed since the driver last took them.
    log: Vec<u8>,
    /// Compressed V2 (the `HISTF` cookie), the payload HdrHistogram's tools read.
    serializer: V2DeflateSerializer,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            interval: std::array::from_fn(|_| histogram()),
            total: std::array::from_fn(|_| histogram()),
            calls: Outcomes::default(),
            registrations: Outcomes::default(),
            call_starts: Starts::default(),
            register_starts: Starts::default(),
            registrations_refreshed: 0,
            workloads: Vec::new(),
            queue: QueueCounts::default(),
            ivr: IvrCounts::default(),
            failures: BTreeMap::new(),
            interval_start: Duration::ZERO,
            log: Vec::new(),
            serializer: V2DeflateSerializer::new(),
        }
    }

    pub fn record(&mut self, metric: Metric, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        // Clamped into the histogram's range above, so recording cannot fail.
        let _ = self.interval[metric as usize].record(us);
    }

    pub fn fail(&mut self, reason: &str) {
        match self.failures.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.failures.insert(reason.to_owned(), 1);
            }
        }
    }

    /// Closes the interval that ends at `now` (time since the run started): adds it to the
    /// totals, appends it to the interval log and starts a new one. Returns the closed interval's
    /// per-metric counts and p99s for progress lines.
    pub fn close_interval(&mut self, now: Duration) -> IntervalSummary {
        let length = now.saturating_sub(self.interval_start);
        let mut summary = IntervalSummary {
            start: self.interval_start,
            length,
            counts: [0; METRICS],
            p50_us: [0; METRICS],
            p90_us: [0; METRICS],
            p99_us: [0; METRICS],
            max_us: [0; METRICS],
        };
        for (i, h) in self.interval.iter_mut().enumerate() {
            summary.counts[i] = h.len();
            summary.p50_us[i] = h.value_at_quantile(0.50);
            summary.p90_us[i] = h.value_at_quantile(0.90);
            summary.p99_us[i] = h.value_at_quantile(0.99);
            summary.max_us[i] = h.max();
            if h.is_empty() {
                continue;
            }
            let _ = self.total[i].add(&*h);
            let tag = Tag::new(Metric::ALL[i].name());
            if let Ok(mut w) =
                IntervalLogWriterBuilder::new().begin_log_with(&mut self.log, &mut self.serializer)
            {
                // A histogram that fails to serialise only costs the log that interval.
                let _ = w.write_histogram(h, self.interval_start, length, tag);
            }
            h.reset();
        }
        self.interval_start = now;
        summary
    }

    pub fn total(&self, metric: Metric) -> &Histogram<u64> {
        &self.total[metric as usize]
    }

    /// Adds another shard's (or thread's) totals and counts into these.
    pub fn merge(&mut self, other: &Metrics) {
        for i in 0..Metric::ALL.len() {
            let _ = self.total[i].add(&other.total[i]);
        }
        self.calls.add(&other.calls);
        self.registrations.add(&other.registrations);
        self.call_starts.add(&other.call_starts);
        self.register_starts.add(&other.register_starts);
        if self.workloads.len() < other.workloads.len() {
            self.workloads
                .resize(other.workloads.len(), Outcomes::default());
        }
        for (a, b) in self.workloads.iter_mut().zip(&other.workloads) {
            a.add(b);
        }
        let (q, o) = (&mut self.queue, &other.queue);
        q.offered += o.offered;
        q.answered += o.answered;
        q.abandoned += o.abandoned;
        q.answered_within_sl += o.answered_within_sl;
        self.ivr.calls += other.ivr.calls;
        self.ivr.routed += other.ivr.routed;
        for (reason, n) in &other.failures {
            *self.failures.entry(reason.clone()).or_default() += n;
        }
    }

    /// The interval-log lines (HdrHistogram's text format, one line per metric per interval,
    /// tagged with the metric's name, timestamps in seconds since the run started) of the
    /// intervals closed since the last call.
    pub fn take_log(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.log)
    }
}

/// What one interval saw, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct IntervalSummary {
    /// When the interval began, since the run started.
    pub start: Duration,
    pub length: Duration,
    pub counts: [u64; METRICS],
    pub p50_us: [u64; METRICS],
    pub p90_us: [u64; METRICS],
    pub p99_us: [u64; METRICS],
    pub max_us: [u64; METRICS],
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn intervals_add_up_to_the_total_and_land_in_the_log() {
        let mut m = Metrics::new();
        for ms in 1..=100 {
            m.record(Metric::Setup, Duration::from_millis(ms));
        }
        m.close_interval(Duration::from_secs(1));
        m.record(Metric::Setup, Duration::from_secs(2));
        let s = m.close_interval(Duration::from_secs(2));
        assert_eq!(s.counts[Metric::Setup as usize], 1);
        let total = m.total(Metric::Setup);
        assert_eq!(total.len(), 101);
        // 3 significant digits.
        let p50 = total.value_at_quantile(0.5);
        assert!((50_000..=51_100).contains(&p50), "{p50}");
        assert_eq!(total.max(), total.highest_equivalent(2_000_000));
        let log = m.take_log();
        let entries: Vec<LogEntry> = IntervalLogIterator::new(&log)
            .collect::<Result<_, _>>()
            .expect("the crate reads its log");
        let setups: Vec<(Duration, u64)> = entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Interval(i) if i.tag().map(|t| t.as_str()) == Some("setup") => {
                    Some((i.start_timestamp(), decode(i.encoded_histogram()).len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            setups,
            [(Duration::ZERO, 100), (Duration::from_secs(1), 1)],
            "{}",
            String::from_utf8_lossy(&log)
        );
        assert!(
            String::from_utf8_lossy(&log)
                .lines()
                .all(|l| l.split(',').nth(4).is_some_and(|p| p.starts_with("HISTF"))),
            "compressed V2 payloads"
        );
        assert!(m.take_log().is_empty(), "taken once");
    }

    /// A payload of the log back into a histogram.
    fn decode(payload: &str) -> Histogram<u64> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .expect("base64");
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .expect("a V2 histogram")
    }

    #[test]
    fn the_rate_achieved_spans_the_first_start_to_the_last() {
        let mut s = Starts::default();
        assert_eq!(s.rate_per_s(), 0.0);
        s.at(5_000_000_000);
        assert_eq!(s.rate_per_s(), 0.0, "one start is no rate");
        // 101 starts 10 ms apart: 100/s, whenever the first came.
        for k in 1..=100 {
            s.at(5_000_000_000 + k * 10_000_000);
        }
        assert!((s.rate_per_s() - 100.0).abs() < 1e-9, "{}", s.rate_per_s());
        let mut shard = Starts::default();
        shard.at(4_000_000_000);
        shard.at(6_000_000_000);
        let mut all = s;
        all.add(&shard);
        assert_eq!(
            (all.count, all.first_ns, all.last_ns),
            (103, 4_000_000_000, 6_000_000_000)
        );
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Metrics::new();
        let mut b = Metrics::new();
        a.record(Metric::Bye, Duration::from_millis(1));
        b.record(Metric::Bye, Duration::from_millis(3));
        a.close_interval(Duration::from_secs(1));
        b.close_interval(Duration::from_secs(1));
        b.calls.failed = 2;
        b.fail("timeout");
        a.merge(&b);
        assert_eq!(a.total(Metric::Bye).len(), 2);
        assert_eq!(a.calls.failed, 2);
        assert_eq!(a.failures["timeout"], 1);
    }
}

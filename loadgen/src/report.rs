//! What `pbxlab load` reports: the stable JSON schema (names are an interface: add, never
//! rename) and its rendering as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::{IntervalSummary, IvrCounts, Metric, Outcomes, QueueCounts};
use crate::threshold::{Field, MosStat, QueueField, Subject};
use pbxlab_udp::pace::PaceFigures;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub min_us: u64,
    pub p95_us: u64,
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
            min_us: h.min(),
            p95_us: h.value_at_quantile(0.95),
        }
    }
}

/// One metric within one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntervalLatency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One interval of a run (`--interval` long), as `--csv` writes it and the JSON's `intervals`
/// holds it. Counts are of what happened within the interval, not since the start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntervalRow {
    /// When the interval began, seconds since the run started, and how long it lasted.
    pub start_s: f64,
    pub length_s: f64,
    /// Attempts started in the interval, and attempts that ended in it, by how they ended.
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// The failures that happened in the interval, by reason.
    pub failures: BTreeMap<String, u64>,
    /// The same failures by class.
    pub failure_classes: FailureClasses,
    /// Calls we placed that were in progress at the end of the interval (a call between two of
    /// our users is one call).
    pub concurrent_calls: u64,
    /// Attempts started per second of the interval.
    pub call_rate_per_s: f64,
    pub register_rate_per_s: f64,
    /// The metrics measured in the interval (none recorded: absent). `media_gap` is the
    /// longest gap of each received stream that ended in the interval: a stream we sent and
    /// hear back once it was stopped and fell silent, any other at the end of the run (see
    /// `media::MediaInterval::gap_us`).
    pub metrics: BTreeMap<String, IntervalLatency>,
    /// The RTP worker's figures for the interval; absent in a run without RTP, and in a row
    /// the worker did not answer for in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtp: Option<IntervalRtp>,
}

/// One interval's RTP: the interval's share of the run's counts (they add up to `rtp`'s
/// totals) and the jitter of the streams heard in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntervalRtp {
    pub packets_sent: u64,
    pub packets_received: u64,
    /// RFC 3550's expected and lost packets over the received streams, the interval's share.
    pub packets_expected: u64,
    pub packets_lost: u64,
    /// `packets_lost / packets_expected` (0 with nothing expected).
    pub loss_fraction: f64,
    /// Audio packets that arrived too late for the 40 ms playout buffer.
    pub late_packets: u64,
    /// Streams heard in the interval.
    pub streams_received: u64,
    /// The 99th percentile over the streams heard in the interval of each one's RFC 3550
    /// jitter as it stood at the interval's end (a running estimate over its last ~16
    /// packets), microseconds.
    pub jitter_p99_us: u64,
}

impl IntervalRtp {
    pub fn of(m: &crate::media::MediaInterval) -> IntervalRtp {
        IntervalRtp {
            packets_sent: m.packets_sent,
            packets_received: m.packets_received,
            packets_expected: m.expected,
            packets_lost: m.lost,
            loss_fraction: m.loss_fraction(),
            late_packets: m.late,
            streams_received: m.jitter_us.len(),
            jitter_p99_us: m.jitter_us.value_at_quantile(0.99),
        }
    }

    /// `packets_lost / packets_expected` again, after counts were added up.
    pub fn loss_fraction_of_counts(&self) -> f64 {
        if self.packets_expected == 0 {
            0.0
        } else {
            self.packets_lost as f64 / self.packets_expected as f64
        }
    }
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
            .collect::<BTreeMap<String, u64>>();
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
            failure_classes: FailureClasses::of(&failures),
            failures,
            concurrent_calls,
            metrics,
            rtp: None,
        }
    }

    /// Adds the RTP worker's part of the interval: its `rtp` figures (in a run with RTP) and
    /// the `media_gap` recorded in it.
    pub fn add_media(&mut self, m: &crate::media::MediaInterval) {
        if m.streams > 0 || m.packets_received > 0 {
            self.rtp = Some(IntervalRtp::of(m));
        }
        let g = &m.gap_us;
        if !g.is_empty() {
            self.metrics.insert(
                Metric::MediaGap.name().to_owned(),
                IntervalLatency {
                    count: g.len(),
                    p50_us: g.value_at_quantile(0.50),
                    p90_us: g.value_at_quantile(0.90),
                    p99_us: g.value_at_quantile(0.99),
                    max_us: g.max(),
                },
            );
        }
    }
}

/// Failures by class, from their reasons (`engine::status_reason` and the timers' words): a
/// final status code (the reason's first word of three digits, or a class `4xx`, `5xx`, `6xx`;
/// `BYE 486 Busy Here` is a 4xx), else a timeout of any transaction, else other (3xx, malformed
/// messages, socket errors, calls unfinished at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailureClasses {
    pub timeout: u64,
    #[serde(rename = "4xx")]
    pub client: u64,
    #[serde(rename = "5xx")]
    pub server: u64,
    #[serde(rename = "6xx")]
    pub global: u64,
    pub other: u64,
}

/// The class of a failure reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Timeout,
    Client,
    Server,
    Global,
    Other,
}

impl FailureClass {
    pub fn of(reason: &str) -> FailureClass {
        let status = reason.split_whitespace().find_map(|word| {
            let b = word.as_bytes();
            let code = b.len() == 3 && (b.iter().all(u8::is_ascii_digit) || &b[1..] == b"xx");
            match b.first() {
                Some(b'4') if code => Some(FailureClass::Client),
                Some(b'5') if code => Some(FailureClass::Server),
                Some(b'6') if code => Some(FailureClass::Global),
                _ => None,
            }
        });
        match status {
            Some(class) => class,
            None if reason.to_ascii_lowercase().contains("timeout") => FailureClass::Timeout,
            None => FailureClass::Other,
        }
    }
}

impl FailureClasses {
    pub fn of(failures: &BTreeMap<String, u64>) -> FailureClasses {
        let mut c = FailureClasses::default();
        for (reason, &n) in failures {
            *match FailureClass::of(reason) {
                FailureClass::Timeout => &mut c.timeout,
                FailureClass::Client => &mut c.client,
                FailureClass::Server => &mut c.server,
                FailureClass::Global => &mut c.global,
                FailureClass::Other => &mut c.other,
            } += n;
        }
        c
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// What `loss_fraction` divides: packets the received streams' sequence numbers say were
    /// sent, and of those, how many never came. Shards' losses add up from these.
    pub packets_expected: u64,
    pub packets_lost: u64,
    /// The streams' E-model MOS (see `crate::emodel`).
    pub mos: MosSummary,
    /// The mean of the streams' R factors (0 to 100; 93.2 is a clean G.711 call).
    pub r_factor_mean: f64,
}

/// The distribution of per-stream MOS (1 to 4.5), low percentiles first: a few bad calls show
/// in `p1` and `p5`, not in the mean. Every figure is 0 when no stream was rated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub name: String,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// Queue callers: `queue-N` calls once answered and IVR calls once transferred. Callers neither
/// answered nor abandoned were still waiting when the run stopped, or the target hung up on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    pub expr: String,
    /// In the subject's unit: microseconds for latencies.
    pub value: f64,
    pub pass: bool,
    /// For a latency, the unit its limit was written in, which the table shows `value` in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<crate::threshold::Unit>,
}

/// The period the generator woke on while traffic flowed, in each phase (`--tick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TickSummary {
    /// Chosen from each phase's rate (`--tick auto`) rather than set.
    pub auto: bool,
    /// `None` for a phase the run did not have; 0 for an exact schedule.
    pub registrations_us: Option<u64>,
    pub calls_us: Option<u64>,
}

/// Slice `index` of `count` (`--shard index/count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardId {
    pub index: u32,
    pub count: u32,
}

/// One of the shards a merged report adds up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRow {
    pub index: u32,
    /// The report file it came from.
    pub file: String,
    pub seed: u64,
}

/// The name in `histograms` of the RTP streams' jitter (`rtp.jitter_p99` reads it).
pub const RTP_JITTER: &str = "rtp_jitter";
/// The name in `histograms` of the streams' MOS in hundredths (what `rtp.mos` is read from).
pub const RTP_MOS_CENTI: &str = "rtp_mos_centi";

/// A histogram as `histograms` holds it: HdrHistogram's compressed V2 encoding (as its Java,
/// C and Go versions write it), in base64.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine as _;
    use hdrhistogram::serialization::Serializer as _;
    let mut bytes = Vec::new();
    // Writing into a Vec fails only for a histogram too large to encode, which ours (an hour
    // at 3 digits) never are; an empty string is then refused by the decoder.
    if hdrhistogram::serialization::V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .is_err()
    {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram [`encode_histogram`] encoded, or what is wrong with the text.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    check_payload(&bytes)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an encoded HdrHistogram: {e:?}"))
}

/// The most bytes a histogram's V2 payload may take: one of pbxlab's (1 µs to an hour, 3
/// significant digits) with every count set takes under 400 KB.
const HISTOGRAM_PAYLOAD_MAX: u32 = 1 << 20;
/// HdrHistogram's V2 cookies, plain and compressed (its `serialization` module's).
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;

/// Refuses an encoding whose payload claims more than a histogram of ours can take: the
/// decoder allocates what the header claims before it reads a byte of it, so a few hostile
/// bytes in a report handed to `merge` would otherwise cost gigabytes.
fn check_payload(bytes: &[u8]) -> Result<(), String> {
    use std::io::Read as _;
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    let claimed = match word(bytes, 0) {
        Some(V2_COOKIE) => word(bytes, 4),
        Some(V2_COMPRESSED_COOKIE) => {
            // The compressed length, then a zlib stream of the plain encoding: inflate no more
            // than its header and the largest payload allowed.
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(bytes.get(8..).unwrap_or_default())
                .take(u64::from(HISTOGRAM_PAYLOAD_MAX) + 64)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("not an encoded HdrHistogram: {e}"))?;
            word(&inflated, 4)
        }
        // Not HdrHistogram's: its decoder says so.
        _ => None,
    };
    match claimed {
        Some(n) if n > HISTOGRAM_PAYLOAD_MAX => Err(format!(
            "not an encoded HdrHistogram of pbxlab's: its payload claims {n} bytes, over the \
             {HISTOGRAM_PAYLOAD_MAX} one can take"
        )),
        _ => Ok(()),
    }
}

/// `histograms` as a report holds them: each encoded, by name.
pub fn encode_histograms<'a>(
    hists: impl IntoIterator<Item = (&'a str, &'a Histogram<u64>)>,
) -> BTreeMap<String, String> {
    hists
        .into_iter()
        .map(|(name, h)| (name.to_owned(), encode_histogram(h)))
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Per SIP method and response code: sent, retransmitted, timeouts, received; and the
    /// unexpected messages received.
    pub messages: crate::messages::Messages,
    pub metrics: BTreeMap<String, LatencySummary>,
    pub calls: Outcomes,
    pub registrations: Outcomes,
    /// The rates achieved: calls started per second from the first call's start to the last
    /// one's, and registrations (not counting refreshes) likewise; 0 with fewer than two.
    pub call_rate_per_s: f64,
    pub register_rate_per_s: f64,
    /// The most calls we had placed in progress at once (a call between two of our users is
    /// one call).
    pub peak_concurrent_calls: u64,
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
    /// Which slice of the run this report is (`--shard i/n`; 0/1 for a whole run); `None` for
    /// a merged report, whose slices are in `shards`.
    #[serde(default)]
    pub shard: Option<ShardId>,
    /// The run this report is part of, the same for every shard of one run (`--run-id`, else
    /// a hash of the settings that do not vary by shard); `pbxlab merge` refuses to add up
    /// reports of different runs.
    #[serde(default)]
    pub run: String,
    /// Of a merged report: the shards it adds up, and those of `0..count` that were missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards_missing: Vec<u32>,
    /// Every histogram the report's figures come from, by name (the metrics', and
    /// `rtp_jitter`), encoded by [`encode_histogram`]: what a merge adds up.
    #[serde(default)]
    pub histograms: BTreeMap<String, String>,
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

    /// Each threshold judged on this report's figures (latencies read from `hist`), as `load`
    /// and `merge` judge them.
    pub fn judge<'a>(
        &self,
        thresholds: &[crate::threshold::Threshold],
        hist: impl Fn(Metric) -> &'a Histogram<u64>,
    ) -> Vec<ThresholdResult> {
        thresholds
            .iter()
            .map(|t| {
                let value = self.value(&t.subject, &hist);
                ThresholdResult {
                    expr: t.expr.clone(),
                    value,
                    pass: t.passes(value),
                    unit: t.unit,
                }
            })
            .collect()
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

    /// A merged report's line about its shards: "shards 0, 2 of 3 merged (run 5f..; missing:
    /// 1); seeds 7, 9".
    fn render_shards(&self) -> String {
        let list = |xs: &mut dyn Iterator<Item = String>| xs.collect::<Vec<_>>().join(", ");
        let count = self.shards.len() + self.shards_missing.len();
        let mut line = format!(
            "shards {} of {count} merged (run {}",
            list(&mut self.shards.iter().map(|s| s.index.to_string())),
            self.run
        );
        if !self.shards_missing.is_empty() {
            let _ = write!(
                line,
                "; MISSING: {}",
                list(&mut self.shards_missing.iter().map(u32::to_string))
            );
        }
        let _ = write!(
            line,
            "); seeds {}",
            list(&mut self.shards.iter().map(|s| s.seed.to_string()))
        );
        line
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
        if self.shards.is_empty() {
            let _ = writeln!(
                o,
                "seed   {}  (--seed {} repeats this run's random choices)",
                self.seed, self.seed
            );
        } else {
            let _ = writeln!(o, "{}", self.render_shards());
        }
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
            "\n{:<width$} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}   (ms)",
            "metric", "count", "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"
        );
        for (name, s) in &self.metrics {
            if s.count == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "{:<width$} {:>8} {:>10} {:>10.3} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                s.count,
                ms(s.min_us),
                s.mean_us / 1000.0,
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p95_us),
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
        let rates: Vec<String> = [
            ("calls", self.call_rate_per_s),
            ("registrations", self.register_rate_per_s),
        ]
        .into_iter()
        .filter(|&(_, r)| r > 0.0)
        .map(|(what, r)| format!("{what} {r:.1}/s"))
        .collect();
        if !rates.is_empty() {
            let _ = writeln!(
                o,
                "achieved: {} (from the first start to the last)",
                rates.join(", ")
            );
        }
        if self.calls.attempted > 0 {
            let _ = writeln!(o, "peak concurrent calls: {}", self.peak_concurrent_calls);
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
        o.push_str(&self.messages.render());
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
                    "  {:<32} {:>16}  {}",
                    t.expr,
                    crate::threshold::show_value(t.value, t.unit),
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
    fn a_histogram_comes_back_from_its_encoding_whole() {
        let mut h = crate::metrics::histogram();
        for v in [1, 250, 1_000, 1_001, 999_999, crate::metrics::MAX_US] {
            h.record(v).expect("in range");
        }
        h.record_n(4_200, 1_000).expect("in range");
        let text = encode_histogram(&h);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
            "base64: {text}"
        );
        let back = decode_histogram(&text).expect("decodes");
        assert_eq!(back, h);
        assert_eq!(back.len(), 1_006);
        assert_eq!(back.max(), h.max());
        for q in [0.5, 0.99, 0.999] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "{q}");
        }
        // Whitespace around it (a line break a tool added) is no harm.
        assert_eq!(decode_histogram(&format!(" {text}\n")).expect("decodes"), h);
        let empty = crate::metrics::histogram();
        assert_eq!(
            decode_histogram(&encode_histogram(&empty)).expect("decodes"),
            empty
        );
    }

    #[test]
    fn a_latency_summary_has_min_mean_and_p95_beside_the_rest() {
        let mut h = crate::metrics::histogram();
        for us in 1..=1000 {
            h.record(us * 1000).expect("in range");
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.min_us, 1000);
        assert!(h.equivalent(s.p95_us, 950_000), "{s:?}");
        assert!((s.mean_us - 500_500.0).abs() < 1_000.0, "{s:?}");
        assert_eq!(LatencySummary::of(&crate::metrics::histogram()).min_us, 0);
    }

    #[test]
    fn failure_reasons_fall_in_their_classes() {
        for (reason, class) in [
            ("INVITE timeout", FailureClass::Timeout),
            ("BYE timeout", FailureClass::Timeout),
            ("REGISTER timeout", FailureClass::Timeout),
            ("408 Request Timeout", FailureClass::Client),
            ("486 Busy Here", FailureClass::Client),
            ("BYE 486 Busy Here", FailureClass::Client),
            ("other 4xx", FailureClass::Client),
            ("503 Service Unavailable", FailureClass::Server),
            ("other 5xx", FailureClass::Server),
            ("6xx global failure", FailureClass::Global),
            ("3xx redirect", FailureClass::Other),
            ("malformed message", FailureClass::Other),
            ("no ACK for 200", FailureClass::Other),
            ("send: connection refused", FailureClass::Other),
        ] {
            assert_eq!(FailureClass::of(reason), class, "{reason}");
        }
        let failures = [
            ("INVITE timeout".to_owned(), 3),
            ("other 4xx".to_owned(), 2),
            ("500 Server Internal Error".to_owned(), 1),
        ]
        .into();
        assert_eq!(
            FailureClasses::of(&failures),
            FailureClasses {
                timeout: 3,
                client: 2,
                server: 1,
                global: 0,
                other: 0
            }
        );
    }

    #[test]
    fn what_is_not_an_encoded_histogram_is_refused_with_the_reason() {
        let e = decode_histogram("not base64 at all!").expect_err("refused");
        assert!(e.starts_with("not base64"), "{e}");
        // Valid base64 of bytes that are no histogram ("hello world").
        let e = decode_histogram("aGVsbG8gd29ybGQ=").expect_err("refused");
        assert!(e.starts_with("not an encoded HdrHistogram"), "{e}");
        let e = decode_histogram("").expect_err("refused");
        assert!(e.starts_with("not an encoded HdrHistogram"), "{e}");
        // A header that claims a 4 GB payload is refused before anything is allocated for it,
        // plain or compressed.
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut plain = Vec::new();
        plain.extend_from_slice(&V2_COOKIE.to_be_bytes());
        plain.extend_from_slice(&u32::MAX.to_be_bytes());
        plain.extend_from_slice(&[0; 32]);
        let e = decode_histogram(&b64(&plain)).expect_err("refused");
        assert!(e.contains("claims 4294967295 bytes"), "{e}");
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zlib, &plain).expect("in memory");
        let deflated = zlib.finish().expect("in memory");
        let mut compressed = Vec::new();
        compressed.extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
        compressed.extend_from_slice(&u32::try_from(deflated.len()).expect("small").to_be_bytes());
        compressed.extend_from_slice(&deflated);
        let e = decode_histogram(&b64(&compressed)).expect_err("refused");
        assert!(e.contains("claims 4294967295 bytes"), "{e}");
    }

    #[test]
    fn a_report_reads_back_from_its_json_as_it_was_written() {
        let mut h = crate::metrics::histogram();
        h.record(1_500).expect("in range");
        let outcomes = Outcomes {
            attempted: 5,
            succeeded: 3,
            failed: 1,
            abandoned: 1,
        };
        let report = LoadReport {
            target: "127.0.0.1:5060".into(),
            duration_s: 2.5,
            interrupted: true,
            seed: 42,
            tick: TickSummary {
                auto: true,
                registrations_us: None,
                calls_us: Some(2_000),
            },
            messages_received: 9,
            malformed: 1,
            stray: 2,
            messages: Default::default(),
            call_rate_per_s: 0.0,
            register_rate_per_s: 0.0,
            peak_concurrent_calls: 0,
            metrics: [("setup".to_owned(), LatencySummary::of(&h))].into(),
            calls: outcomes,
            registrations: Outcomes::default(),
            registrations_refreshed: 3,
            workloads: vec![WorkloadSummary {
                name: "echo".into(),
                outcomes,
            }],
            queue: QueueSummary {
                offered: 2,
                ..QueueSummary::default()
            },
            ivr: IvrCounts {
                calls: 1,
                routed: 1,
            },
            failures: [("408 timeout".to_owned(), 1)].into(),
            rtp: RtpSummary {
                streams: 1,
                packets_expected: 50,
                packets_lost: 2,
                loss_fraction: 0.04,
                ..RtpSummary::default()
            },
            emulator: vec![DriverPace {
                driver: "the generator's SIP loop".into(),
                worst_ms: 1.5,
                worst_at_s: 0.2,
                behind: 0,
                kernel_drops: 0,
                saturated: false,
            }],
            thresholds: vec![ThresholdResult {
                expr: "calls.failed==0".into(),
                value: 1.0,
                pass: false,
                unit: None,
            }],
            intervals: vec![IntervalRow {
                start_s: 0.0,
                length_s: 1.0,
                calls: outcomes,
                ..IntervalRow::default()
            }],
            shard: Some(ShardId { index: 1, count: 3 }),
            run: "0123abcd".into(),
            shards: Vec::new(),
            shards_missing: Vec::new(),
            histograms: encode_histograms([("setup", &h)]),
            gaps: Vec::new(),
            media_epoch: None,
        };
        let json = serde_json::to_string(&report).expect("serialises");
        let back: LoadReport = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, report);
        // A report written before a field was added still reads, the field at its default.
        let mut old: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let object = old.as_object_mut().expect("an object");
        object.remove("shard");
        object.remove("histograms");
        object["rtp"]
            .as_object_mut()
            .expect("an object")
            .remove("packets_lost");
        let back: LoadReport = serde_json::from_value(old).expect("reads");
        assert_eq!((back.shard, back.histograms.len()), (None, 0));
        assert_eq!(back.rtp.packets_lost, 0);
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
            messages: crate::messages::Messages::default(),
            metrics: [
                ("queue_wait".to_owned(), wait),
                ("ivr_route".to_owned(), LatencySummary::default()),
            ]
            .into(),
            calls: Outcomes::default(),
            registrations: Outcomes::default(),
            call_rate_per_s: 0.0,
            register_rate_per_s: 0.0,
            peak_concurrent_calls: 0,
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
            shard: None,
            run: String::new(),
            shards: Vec::new(),
            shards_missing: Vec::new(),
            histograms: BTreeMap::new(),
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
        assert!(text.contains(" min ") && text.contains(" p95 "), "{text}");
        assert!(!text.contains("ivr_route"), "no row without a measurement");
        assert!(
            text.contains("service level 50.0%") && text.contains("1 abandoned (25.0%)"),
            "{text}"
        );
        assert_eq!(report.queue.service_level(), 0.5);
        report.queue = QueueSummary::default();
        assert!(!report.render_text().contains("queue:"));
        assert!(!text.contains("achieved"), "no rate without starts: {text}");
        report.calls.attempted = 1000;
        report.call_rate_per_s = 99.96;
        report.peak_concurrent_calls = 2004;
        report.thresholds = vec![
            ThresholdResult {
                expr: "media_gap.p99<100ms".into(),
                value: 1_720_319.0,
                pass: false,
                unit: Some(crate::threshold::Unit::Ms),
            },
            ThresholdResult {
                expr: "calls.failed==0".into(),
                value: 0.0,
                pass: true,
                unit: None,
            },
        ];
        let text = report.render_text();
        assert!(text.contains("achieved: calls 100.0/s (from"), "{text}");
        assert!(text.contains("peak concurrent calls: 2004"), "{text}");
        assert!(text.contains("1720.319 ms  FAIL"), "{text}");
        assert!(text.contains("  0  pass"), "{text}");
        let json = serde_json::to_value(&report.thresholds).expect("json");
        assert_eq!(json[0]["unit"], "ms");
        assert!(json[1].get("unit").is_none(), "{json}");
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
            seed: 3,
            messages_received: 10,
            rtp: RtpSummary {
                streams: 100,
                mos,
                r_factor_mean: 91.0,
                ..RtpSummary::default()
            },
            ..LoadReport::default()
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

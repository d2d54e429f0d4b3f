//! `pbxlab merge`: adds up the JSON reports of the shards of one `pbxlab load` run (`--shard
//! i/n` on several machines, or the pods of a Kubernetes Indexed Job) into the report of the
//! whole, and judges thresholds on the whole, which no single shard can.
//!
//! Counts are summed; latencies come from the shards' histograms (`histograms` in each report)
//! added together, never from averaged percentiles; fractions are recomputed from the summed
//! counts. The merged report is a [`LoadReport`], so it prints and reads thresholds exactly as
//! `load`'s own does, and it carries its merged histograms: a merged report can be merged
//! again with other shards of the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hdrhistogram::Histogram;
use pbxlab_loadgen::LoadReport;
use pbxlab_loadgen::messages::Messages;
use pbxlab_loadgen::metrics::{self, IvrCounts, Metric, Outcomes, QueueCounts};
use pbxlab_loadgen::report::{
    self, DriverPace, FailureClasses, IntervalRow, IntervalRtp, LatencySummary, MosSummary,
    QueueSummary, RtpSummary, ShardRow, WorkloadSummary,
};
use pbxlab_loadgen::threshold::Threshold;

use crate::BadInput;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The shards' reports (`pbxlab load --shard i/n --json FILE`), or merged reports of the
    /// same run.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write the merged report as JSON to FILE ("-": standard output instead of the tables).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the merged report as one self-contained HTML page, as `load --html` does (the
    /// intervals' rates, failures and calls in progress add up; their percentiles are not
    /// drawn: the shards' interval histograms are not in their reports).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Pass/fail threshold judged on the whole run, as `load` takes them (repeatable); the
    /// shards' own thresholds are judged on the whole too.
    #[arg(long = "threshold", value_name = "EXPR")]
    thresholds: Vec<String>,
}

fn bad(msg: String) -> anyhow::Error {
    BadInput(msg).into()
}

/// One report read from a file, with the histograms it carries decoded.
pub(crate) struct Shard {
    pub file: String,
    pub report: LoadReport,
    pub hists: BTreeMap<String, Histogram<u64>>,
}

impl Shard {
    /// The shard indices this report holds: its own, or a merged report's.
    fn indices(&self) -> Vec<u32> {
        match self.report.shard {
            Some(s) => vec![s.index],
            None => self.report.shards.iter().map(|s| s.index).collect(),
        }
    }

    fn count(&self) -> u32 {
        match self.report.shard {
            Some(s) => s.count,
            None => (self.report.shards.len() + self.report.shards_missing.len()) as u32,
        }
    }
}

/// Reads one report; every error names the file.
pub(crate) fn read(file: &str, text: &str) -> anyhow::Result<Shard> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("{file}: not JSON ({e})")))?;
    let report: LoadReport = serde_json::from_value(value)
        .map_err(|e| bad(format!("{file}: not a `pbxlab load` report ({e})")))?;
    if report.histograms.is_empty() {
        return Err(bad(format!(
            "{file}: carries no histograms (a report of a pbxlab before `merge`, or not of \
             `load`): its latencies cannot be added up"
        )));
    }
    if report.run.is_empty() {
        return Err(bad(format!(
            "{file}: has no run identity (`run`): cannot tell which run it is part of"
        )));
    }
    match report.shard {
        Some(s) if s.count == 0 || s.index >= s.count => {
            return Err(bad(format!(
                "{file}: shard {}/{}: not a slice of its run",
                s.index, s.count
            )));
        }
        None if report.shards.is_empty() => {
            return Err(bad(format!(
                "{file}: names no shard (`shard`) and merges none (`shards`)"
            )));
        }
        _ => {}
    }
    let mut hists = BTreeMap::new();
    for (name, encoded) in &report.histograms {
        let h = report::decode_histogram(encoded)
            .map_err(|e| bad(format!("{file}: histogram {name}: {e}")))?;
        hists.insert(name.clone(), h);
    }
    for name in Metric::ALL
        .iter()
        .map(|m| m.name())
        .chain([report::RTP_JITTER])
    {
        if !hists.contains_key(name) {
            return Err(bad(format!("{file}: has no histogram of {name}")));
        }
    }
    Ok(Shard {
        file: file.to_owned(),
        report,
        hists,
    })
}

/// Checks that the shards are of one run and hold each slice once: every error names the files
/// that clash.
fn check(shards: &[Shard]) -> anyhow::Result<()> {
    let first = &shards[0];
    let others: Vec<String> = shards
        .iter()
        .filter(|s| s.report.run != first.report.run)
        .map(|s| format!("{} (run {})", s.file, s.report.run))
        .collect();
    if !others.is_empty() {
        return Err(bad(format!(
            "not shards of one run: {} (run {}) but {}; give every shard the same --run-id, \
             or the same settings",
            first.file,
            first.report.run,
            others.join(", ")
        )));
    }
    let counts: Vec<String> = shards
        .iter()
        .filter(|s| s.count() != first.count())
        .map(|s| format!("{} ({} shards)", s.file, s.count()))
        .collect();
    if !counts.is_empty() {
        return Err(bad(format!(
            "shards of different splits: {} ({} shards) but {}",
            first.file,
            first.count(),
            counts.join(", ")
        )));
    }
    let mut holder: BTreeMap<u32, &str> = BTreeMap::new();
    for s in shards {
        for i in s.indices() {
            if let Some(other) = holder.insert(i, &s.file) {
                return Err(bad(format!(
                    "{other} and {} both hold shard {i} of {}: each slice must be merged once",
                    s.file,
                    first.count()
                )));
            }
        }
    }
    Ok(())
}

/// Adds `h` into `into`, both of pbxlab's own bounds.
fn add(
    into: &mut Histogram<u64>,
    h: &Histogram<u64>,
    file: &str,
    name: &str,
) -> anyhow::Result<()> {
    into.add(h)
        .map_err(|e| bad(format!("{file}: histogram {name} cannot be added: {e:?}")))
}

/// The report of the whole run from its shards' (at least one), judged by the shards'
/// thresholds and `extra`. Checks first that they are of one run and hold each slice once.
pub(crate) fn merge(shards: &[Shard], extra: &[Threshold]) -> anyhow::Result<LoadReport> {
    let Some(first) = shards.first() else {
        return Err(bad("no reports to merge".into()));
    };
    check(shards)?;
    let mut hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for s in shards {
        for (name, h) in &s.hists {
            match hists.get_mut(name) {
                Some(into) => add(into, h, &s.file, name)?,
                None => {
                    let mut into = metrics::histogram();
                    add(&mut into, h, &s.file, name)?;
                    hists.insert(name.clone(), into);
                }
            }
        }
    }
    let reports = || shards.iter().map(|s| &s.report);
    let sum = |f: fn(&LoadReport) -> u64| reports().map(f).sum::<u64>();
    let outcomes = |f: fn(&LoadReport) -> &Outcomes| {
        let mut total = Outcomes::default();
        for r in reports() {
            total.add(f(r));
        }
        total
    };
    let count = first.count();
    let mut covered: Vec<ShardRow> = shards
        .iter()
        .flat_map(|s| match s.report.shard {
            Some(id) => vec![ShardRow {
                index: id.index,
                file: s.file.clone(),
                seed: s.report.seed,
            }],
            None => s.report.shards.clone(),
        })
        .collect();
    covered.sort_by_key(|s| s.index);
    let shards_missing: Vec<u32> = (0..count)
        .filter(|i| covered.iter().all(|s| s.index != *i))
        .collect();
    let mut targets: Vec<&str> = Vec::new();
    for r in reports() {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
    }
    let mut workloads: Vec<WorkloadSummary> = Vec::new();
    for w in reports().flat_map(|r| &r.workloads) {
        match workloads.iter_mut().find(|x| x.name == w.name) {
            Some(x) => x.outcomes.add(&w.outcomes),
            None => workloads.push(w.clone()),
        }
    }
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, n) in reports().flat_map(|r| &r.failures) {
        *failures.entry(reason.clone()).or_default() += n;
    }
    // `read` refused every report without the histograms figures are read from: this
    // stand-in is never read.
    let none = metrics::histogram();
    let hist = |name: &str| -> &Histogram<u64> { hists.get(name).unwrap_or(&none) };
    let queue = {
        let counts = QueueCounts {
            offered: sum(|r| r.queue.offered),
            answered: sum(|r| r.queue.answered),
            abandoned: sum(|r| r.queue.abandoned),
            answered_within_sl: sum(|r| r.queue.answered_within_sl),
        };
        let service_level =
            std::time::Duration::try_from_secs_f64(first.report.queue.service_level_s)
                .unwrap_or_default();
        QueueSummary::of(&counts, hist(Metric::QueueWait.name()), service_level)
    };
    let rtp = {
        let (sent, received) = (sum(|r| r.rtp.packets_sent), sum(|r| r.rtp.packets_received));
        let (expected, lost) = (sum(|r| r.rtp.packets_expected), sum(|r| r.rtp.packets_lost));
        let fraction = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        RtpSummary {
            streams: sum(|r| r.rtp.streams),
            packets_sent: sent,
            packets_received: received,
            // Over all received streams, as each shard's is over its own: the shards' losses
            // weighted by the packets they expected.
            loss_fraction: fraction(lost, expected),
            unreceived_fraction: fraction(sent.saturating_sub(received), sent),
            jitter_p99_us: hist(report::RTP_JITTER).value_at_quantile(0.99),
            packets_expected: expected,
            packets_lost: lost,
            mos: {
                let silent = sum(|r| r.rtp.mos.silent_streams);
                let mut mos = MosSummary::of(
                    hist(report::RTP_MOS_CENTI),
                    silent,
                    sum(|r| r.rtp.mos.late_packets),
                );
                // Each shard's mean delay weighted by the streams it rated.
                let rated = sum(|r| r.rtp.mos.streams);
                if rated > 0 {
                    mos.delay_ms_mean = reports()
                        .map(|r| r.rtp.mos.delay_ms_mean * r.rtp.mos.streams as f64)
                        .sum::<f64>()
                        / rated as f64;
                }
                mos
            },
            // Each shard's mean R is over the streams it rated.
            r_factor_mean: {
                let rated = sum(|r| r.rtp.mos.streams);
                if rated == 0 {
                    0.0
                } else {
                    reports()
                        .map(|r| r.rtp.r_factor_mean * r.rtp.mos.streams as f64)
                        .sum::<f64>()
                        / rated as f64
                }
            },
        }
    };
    let emulator: Vec<DriverPace> = shards
        .iter()
        .flat_map(|s| {
            s.report.emulator.iter().map(move |d| DriverPace {
                // A merged report's rows already name their shards.
                driver: match s.report.shard {
                    Some(id) => format!("shard {} {}", id.index, d.driver),
                    None => d.driver.clone(),
                },
                ..d.clone()
            })
        })
        .collect();
    let merged_intervals = intervals(shards);
    let mut merged = LoadReport {
        target: targets.join(", "),
        duration_s: reports().map(|r| r.duration_s).fold(0.0, f64::max),
        interrupted: reports().any(|r| r.interrupted),
        seed: covered.first().map_or(first.report.seed, |s| s.seed),
        tick: first.report.tick,
        messages_received: sum(|r| r.messages_received),
        malformed: sum(|r| r.malformed),
        stray: sum(|r| r.stray),
        messages: {
            let mut all = Messages::default();
            for r in reports() {
                all.merge(&r.messages);
            }
            all
        },
        // The shards ran side by side: their rates add up.
        call_rate_per_s: reports().map(|r| r.call_rate_per_s).sum(),
        register_rate_per_s: reports().map(|r| r.register_rate_per_s).sum(),
        peak_concurrent_calls: peak_concurrent_calls(shards, &merged_intervals),
        metrics: Metric::ALL
            .iter()
            .map(|m| (m.name().to_owned(), LatencySummary::of(hist(m.name()))))
            .collect(),
        calls: outcomes(|r| &r.calls),
        registrations: outcomes(|r| &r.registrations),
        registrations_refreshed: sum(|r| r.registrations_refreshed),
        workloads,
        queue,
        ivr: IvrCounts {
            calls: sum(|r| r.ivr.calls),
            routed: sum(|r| r.ivr.routed),
        },
        failures,
        rtp,
        emulator,
        thresholds: Vec::new(),
        intervals: merged_intervals,
        shard: None,
        run: first.report.run.clone(),
        shards: covered,
        shards_missing,
        histograms: report::encode_histograms(hists.iter().map(|(n, h)| (n.as_str(), h))),
        gaps: Vec::new(),
        media_epoch: None,
    };
    // The shards' thresholds (one run's shards share them), then the ones given to the merge.
    let mut judged: Vec<Threshold> = Vec::new();
    for s in shards {
        for expr in s.report.thresholds.iter().map(|t| t.expr.as_str()) {
            if judged.iter().all(|t| t.expr != expr) {
                let t = Threshold::parse(expr).map_err(|e| bad(format!("{}: {e}", s.file)))?;
                judged.push(t);
            }
        }
    }
    for t in extra {
        if judged.iter().all(|j| j.expr != t.expr) {
            judged.push(t.clone());
        }
    }
    merged.thresholds = merged.judge(&judged, |m| hist(m.name()));
    Ok(merged)
}

/// The shards' intervals added up by their place in each run (interval k of every shard is
/// its k-th second, or `--interval`, from its own start): counts, rates and calls in progress
/// summed, and so are the RTP counts (the loss fraction figured again from the sums). An
/// interval's percentiles cannot be added up without its histograms, which the
/// report does not carry: the merged rows have no `metrics`.
fn intervals(shards: &[Shard]) -> Vec<IntervalRow> {
    let mut rows: Vec<IntervalRow> = Vec::new();
    for s in shards {
        for (k, row) in s.report.intervals.iter().enumerate() {
            if rows.len() <= k {
                rows.push(IntervalRow {
                    start_s: row.start_s,
                    length_s: row.length_s,
                    ..IntervalRow::default()
                });
            }
            let into = &mut rows[k];
            into.start_s = into.start_s.min(row.start_s);
            into.length_s = into.length_s.max(row.length_s);
            into.calls.add(&row.calls);
            into.registrations.add(&row.registrations);
            for (reason, n) in &row.failures {
                *into.failures.entry(reason.clone()).or_default() += n;
            }
            into.concurrent_calls += row.concurrent_calls;
            into.call_rate_per_s += row.call_rate_per_s;
            into.register_rate_per_s += row.register_rate_per_s;
            if let Some(rtp) = &row.rtp {
                let sum = into.rtp.get_or_insert_with(IntervalRtp::default);
                sum.packets_sent += rtp.packets_sent;
                sum.packets_received += rtp.packets_received;
                sum.packets_expected += rtp.packets_expected;
                sum.packets_lost += rtp.packets_lost;
                sum.late_packets += rtp.late_packets;
                sum.streams_received += rtp.streams_received;
                // A percentile over streams cannot be merged without the streams' jitter,
                // which the report does not carry: the worst shard's stands for them all (an
                // upper bound of the merged p99).
                sum.jitter_p99_us = sum.jitter_p99_us.max(rtp.jitter_p99_us);
            }
        }
    }
    for row in &mut rows {
        row.failure_classes = FailureClasses::of(&row.failures);
        if let Some(rtp) = &mut row.rtp {
            rtp.loss_fraction = rtp.loss_fraction_of_counts();
        }
    }
    rows
}

/// The most calls in progress at once over all shards: each shard's peak fell at a moment of
/// its own, so the sum of the peaks overstates it. The merged intervals' sums are what the
/// shards held together at each interval's end; the highest of them, or one shard's own peak
/// where that is higher (a peak between two interval ends), is what can be shown to have
/// happened.
fn peak_concurrent_calls(shards: &[Shard], merged: &[IntervalRow]) -> u64 {
    let together = merged.iter().map(|r| r.concurrent_calls).max().unwrap_or(0);
    let alone = shards
        .iter()
        .map(|s| s.report.peak_concurrent_calls)
        .max()
        .unwrap_or(0);
    together.max(alone)
}

pub fn merge_command(args: MergeArgs) -> anyhow::Result<ExitCode> {
    crate::writable("--json", args.json.as_ref())?;
    crate::html::writable(args.html.as_ref())?;
    let extra = args
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t).map_err(|e| bad(e.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut shards = Vec::new();
    for path in &args.files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("{file}: {e}")))?;
        shards.push(read(&file, &text)?);
    }
    let merged = merge(&shards, &extra)?;
    if !merged.shards_missing.is_empty() {
        eprintln!(
            "pbxlab: warning: shards {} of {} missing: the figures are of the {} given, not of \
             the whole run",
            merged
                .shards_missing
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            merged.shards.len() + merged.shards_missing.len(),
            merged.shards.len()
        );
    }
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !json_to_stdout {
        crate::show(&merged.render_text());
    }
    let value = serde_json::to_value(&merged)?;
    crate::write_json(args.json.as_ref(), &value)?;
    crate::html::write(args.html.as_ref(), &value, crate::html::load)?;
    Ok(crate::load::exit_code(&merged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbxlab_loadgen::report::{ShardId, TickSummary};

    /// A shard's report with `setup_us` recorded, `failed` of 10 calls failed, and `lost` of
    /// `expected` RTP packets lost, read back from its JSON as `merge` reads it.
    fn shard(index: u32, count: u32, setup_us: &[u64], failed: u64, rtp: (u64, u64)) -> Shard {
        let mut hists: BTreeMap<&str, Histogram<u64>> = Metric::ALL
            .iter()
            .map(|m| m.name())
            .chain([report::RTP_JITTER])
            .map(|name| (name, metrics::histogram()))
            .collect();
        for &v in setup_us {
            let h = hists.get_mut("setup").expect("a histogram of setup");
            h.record(v).expect("in range");
        }
        let calls = Outcomes {
            attempted: 10,
            succeeded: 10 - failed,
            failed,
            abandoned: 0,
        };
        let (expected, lost) = rtp;
        let report = LoadReport {
            target: "127.0.0.1:5060".into(),
            duration_s: 1.0 + f64::from(index),
            interrupted: index == 1,
            seed: 100 + u64::from(index),
            tick: TickSummary::default(),
            messages_received: 20,
            malformed: 0,
            stray: 1,
            messages: Default::default(),
            call_rate_per_s: 0.0,
            register_rate_per_s: 0.0,
            peak_concurrent_calls: 0,
            metrics: hists
                .iter()
                .map(|(n, h)| ((*n).to_owned(), LatencySummary::of(h)))
                .collect(),
            calls,
            registrations: Outcomes::default(),
            registrations_refreshed: 0,
            workloads: vec![WorkloadSummary {
                name: "echo".into(),
                outcomes: calls,
            }],
            queue: QueueSummary::default(),
            ivr: IvrCounts::default(),
            failures: (failed > 0)
                .then(|| ("408 timeout".to_owned(), failed))
                .into_iter()
                .collect(),
            rtp: RtpSummary {
                packets_expected: expected,
                packets_lost: lost,
                loss_fraction: if expected == 0 {
                    0.0
                } else {
                    lost as f64 / expected as f64
                },
                ..RtpSummary::default()
            },
            emulator: Vec::new(),
            thresholds: vec![report::ThresholdResult {
                expr: "calls.failed<2".into(),
                value: failed as f64,
                pass: failed < 2,
                unit: None,
            }],
            intervals: vec![IntervalRow {
                calls,
                concurrent_calls: 2,
                call_rate_per_s: 10.0,
                length_s: 1.0,
                rtp: Some(IntervalRtp {
                    packets_sent: expected,
                    packets_expected: expected,
                    packets_lost: lost,
                    loss_fraction: lost as f64 / expected.max(1) as f64,
                    late_packets: 1,
                    streams_received: 2,
                    jitter_p99_us: 1_000 * (u64::from(index) + 1),
                    ..IntervalRtp::default()
                }),
                ..IntervalRow::default()
            }],
            shard: Some(ShardId { index, count }),
            run: "r1".into(),
            shards: Vec::new(),
            shards_missing: Vec::new(),
            histograms: report::encode_histograms(hists.iter().map(|(n, h)| (*n, h))),
            gaps: Vec::new(),
            media_epoch: None,
        };
        let file = format!("shard-{index}.json");
        read(&file, &serde_json::to_string(&report).expect("JSON")).expect("a shard report")
    }

    #[test]
    fn percentiles_come_from_the_added_histograms_and_counts_add_up() {
        // One shard fast, one slow: the whole's p50 is neither shard's, nor their mean.
        let fast = shard(0, 2, &[1_000; 99], 1, (1_000, 100));
        let slow = shard(1, 2, &[100_000; 101], 1, (100, 0));
        let m = merge(&[fast, slow], &[]).expect("merges");
        let setup = m.metrics["setup"];
        assert_eq!(setup.count, 200);
        assert_eq!(
            setup.p50_us, 100_031,
            "the 100th value of 200 is a slow one"
        );
        assert_eq!(setup.max_us, 100_031);
        assert_eq!((m.calls.attempted, m.calls.failed), (20, 2));
        assert_eq!(m.workloads.len(), 1);
        assert_eq!(m.workloads[0].outcomes.attempted, 20);
        assert_eq!(m.failures["408 timeout"], 2);
        assert_eq!((m.messages_received, m.stray), (40, 2));
        // Lost over expected, over all streams: 100 / 1,100, not the mean of 10% and 0%.
        assert_eq!(m.rtp.loss_fraction, 100.0 / 1_100.0);
        assert_eq!((m.duration_s, m.interrupted), (2.0, true));
        assert_eq!(m.intervals.len(), 1);
        let row = &m.intervals[0];
        assert_eq!(
            (
                row.calls.attempted,
                row.concurrent_calls,
                row.call_rate_per_s
            ),
            (20, 4, 20.0)
        );
        assert!(
            row.metrics.is_empty(),
            "no interval percentiles without histograms"
        );
        // RTP counts add up; loss is figured from the sums; jitter is the worst shard's.
        let rtp = row.rtp.as_ref().expect("the shards' rtp");
        assert_eq!(
            (rtp.packets_sent, rtp.packets_expected, rtp.packets_lost),
            (1_100, 1_100, 100)
        );
        assert_eq!((rtp.late_packets, rtp.streams_received), (2, 4));
        assert_eq!(rtp.loss_fraction, 100.0 / 1_100.0);
        assert_eq!(rtp.jitter_p99_us, 2_000);
        // The shards' own threshold, judged on the whole: each had 1 failure, the run 2.
        assert_eq!(m.thresholds.len(), 1);
        assert_eq!((m.thresholds[0].value, m.thresholds[0].pass), (2.0, false));
        assert_eq!(
            m.shards
                .iter()
                .map(|s| (s.index, s.seed))
                .collect::<Vec<_>>(),
            [(0, 100), (1, 101)]
        );
        assert!(m.shards_missing.is_empty());
        assert_eq!((m.shard, m.run.as_str()), (None, "r1"));
    }

    #[test]
    fn a_merged_report_merges_again_with_the_rest_of_its_run() {
        let all = || {
            [
                shard(0, 3, &[1_000, 2_000], 0, (10, 1)),
                shard(1, 3, &[5_000], 1, (20, 0)),
                shard(2, 3, &[9_000; 3], 0, (0, 0)),
            ]
        };
        let [a, b, c] = all();
        let part = merge(&[a, c], &[]).expect("merges");
        assert_eq!(part.shards_missing, [1], "shard 1 is missing");
        let text = serde_json::to_string(&part).expect("JSON");
        let part = read("part.json", &text).expect("a merged report reads back");
        let whole = merge(&[part, b], &[]).expect("merges");
        let at_once = merge(&all(), &[]).expect("merges");
        assert!(whole.shards_missing.is_empty());
        assert_eq!(whole.metrics, at_once.metrics);
        assert_eq!(whole.calls, at_once.calls);
        assert_eq!(whole.rtp, at_once.rtp);
        assert_eq!(whole.histograms, at_once.histograms);
        assert_eq!(whole.shards, at_once.shards);
    }

    #[test]
    fn shards_of_other_runs_or_held_twice_are_refused_by_name() {
        let e = merge(
            &[shard(0, 2, &[], 0, (0, 0)), shard(0, 2, &[], 0, (0, 0))],
            &[],
        )
        .expect_err("refused");
        assert!(e.downcast_ref::<BadInput>().is_some());
        assert!(
            e.to_string()
                .starts_with("shard-0.json and shard-0.json both hold shard 0 of 2"),
            "{e}"
        );
        let mut other = shard(1, 2, &[], 0, (0, 0));
        other.report.run = "r2".into();
        other.file = "late.json".into();
        let e = merge(&[shard(0, 2, &[], 0, (0, 0)), other], &[]).expect_err("refused");
        assert!(
            e.to_string()
                .contains("shard-0.json (run r1) but late.json (run r2)"),
            "{e}"
        );
        let e = merge(
            &[shard(0, 2, &[], 0, (0, 0)), shard(1, 3, &[], 0, (0, 0))],
            &[],
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("shard-0.json (2 shards) but shard-1.json (3 shards)"),
            "{e}"
        );
    }

    #[test]
    fn a_threshold_a_shard_carries_that_does_not_parse_is_refused_naming_its_file() {
        let mut odd = shard(1, 2, &[], 0, (0, 0));
        odd.file = "odd.json".into();
        odd.report.thresholds[0].expr = "setup.p99<fast".into();
        let e = merge(&[shard(0, 2, &[], 0, (0, 0)), odd], &[]).expect_err("refused");
        assert!(e.downcast_ref::<BadInput>().is_some());
        assert!(
            e.to_string()
                .starts_with("odd.json: threshold \"setup.p99<fast\""),
            "{e}"
        );
    }

    #[test]
    fn what_is_not_a_shard_report_is_refused_naming_the_file() {
        for (text, says) in [
            ("calls: 3", "a.json: not JSON"),
            (
                r#"{"pools": []}"#,
                "a.json: not a `pbxlab load` report (missing field",
            ),
        ] {
            let e = read("a.json", text).err().expect("refused");
            assert!(e.downcast_ref::<BadInput>().is_some());
            assert!(e.to_string().starts_with(says), "{e}");
        }
        let good = serde_json::to_value(&shard(0, 1, &[], 0, (0, 0)).report).expect("JSON");
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            read("b.json", &v.to_string())
                .err()
                .expect("refused")
                .to_string()
        };
        let e = edit(&|v| v["histograms"] = serde_json::json!({}));
        assert!(e.starts_with("b.json: carries no histograms"), "{e}");
        let e = edit(&|v| v["histograms"]["setup"] = "aGVsbG8=".into());
        assert!(
            e.starts_with("b.json: histogram setup: not an encoded"),
            "{e}"
        );
        let e = edit(&|v| {
            v["histograms"]
                .as_object_mut()
                .expect("an object")
                .remove("rtp_jitter");
        });
        assert_eq!(e, "b.json: has no histogram of rtp_jitter");
        let e = edit(&|v| v["shard"] = serde_json::json!({"index": 2, "count": 2}));
        assert!(e.starts_with("b.json: shard 2/2"), "{e}");
        let e = edit(&|v| v["shard"] = serde_json::Value::Null);
        assert!(e.starts_with("b.json: names no shard"), "{e}");
        let e = edit(&|v| v["run"] = "".into());
        assert!(e.starts_with("b.json: has no run identity"), "{e}");
    }

    #[test]
    fn thresholds_given_to_the_merge_are_judged_on_the_whole() {
        let given = [Threshold::parse("setup.p99<=3ms").expect("parses")];
        let m = merge(
            &[
                shard(0, 2, &[1_000; 50], 0, (0, 0)),
                shard(1, 2, &[3_000; 50], 0, (0, 0)),
            ],
            &given,
        )
        .expect("merges");
        let judged: Vec<(&str, bool)> = m
            .thresholds
            .iter()
            .map(|t| (t.expr.as_str(), t.pass))
            .collect();
        assert_eq!(
            judged,
            [("calls.failed<2", true), ("setup.p99<=3ms", false)]
        );
        assert_eq!(m.thresholds[1].value, 3_001.0);
    }
}

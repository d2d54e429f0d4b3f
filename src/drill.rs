//! `pbxlab drill`: the live cluster, the load generator and a fault timeline in one process,
//! with a verdict.
//!
//! The drill follows the chaos-engineering routine: start the cluster and the load, check the
//! steady-state hypothesis (the SLOs hold) in a window before the first fault, carry out each
//! `[[fault]]` at its time through the same operator interface `pbxlab ctl` uses, and judge
//! every fault from what the cluster and the callers saw: how long the Call Manager took to
//! notice, how long each moved call took to be re-INVITEd onto its new node, how long the
//! callers heard nothing (the media gap, measured on the callers' own RTP sockets), which
//! calls were dropped and why, and whether the SLOs held during the fault and after it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pbxlab_balancer::EventKind;
use pbxlab_cluster::alerts::AlertSink;
use pbxlab_cluster::cluster::{Cluster, Control, Filter, Options, Records};
use pbxlab_loadgen::metrics::Metric;
use pbxlab_loadgen::{LoadReport, Progress, RunOptions};
use pbxlab_scenario::Scenario;
use pbxlab_scenario::{DrillSpec, FaultSpec};
use serde_json::json;

use crate::{BadInput, load};

/// Exit code when an SLO broke (as `load`'s thresholds).
const EXIT_SLO: u8 = 99;
/// How far past its bound a detection may land and still count as within it: the Call
/// Manager's timers are served on a 1 ms grid by a thread the kernel may wake a little late.
const DETECTION_SLACK: Duration = Duration::from_millis(5);

/// Run a failover drill: cluster + load + the scenario's fault timeline, with a verdict.
///
/// Without a scenario, the embedded drill: the reference cluster's pools at reduced scale,
/// 2,400 calls with RTP both ways, one media server failed under load and restored later.
/// Exit codes: 0 every SLO held; 99 an SLO broke (steady state, during or after a fault);
/// 2 bad input; 1 the drill itself could not run.
#[derive(clap::Args)]
pub(crate) struct DrillArgs {
    /// Scenario with [[fault]]s and a [drill] table (default: the embedded drill).
    scenario: Option<PathBuf>,
    /// The Call Manager's SIP address (UDP; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    sip: SocketAddr,
    /// Write the report as JSON here ("-" for standard output, instead of the tables).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seed for every random stream (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Append one JSON line per alert (an IVR, queue or meeting server down) to FILE.
    #[arg(long, value_name = "FILE")]
    alerts: Option<PathBuf>,
    /// POST each alert's JSON to this URL (http://HOST:PORT/PATH); failures are logged.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
}

/// One closed interval of the load, stamped on the cluster's clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    calls_failed: u64,
    active: usize,
    setup_p99_us: u64,
    setup_count: u64,
}

/// What happened when a fault was carried out.
#[derive(Debug, Clone)]
struct Injected {
    spec: FaultSpec,
    /// On the cluster's clock.
    at: Duration,
    /// When the operator action returned (an upgrade takes a while).
    finished: Duration,
    error: Option<String>,
}

pub(crate) fn drill(args: DrillArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let mut scenario = match &args.scenario {
        Some(p) => Scenario::load(p).map_err(|e| BadInput(e.to_string()))?,
        None => pbxlab_scenario::drill_scenario().context("the embedded drill is invalid")?,
    };
    for w in &scenario.warnings {
        eprintln!("{w}");
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let spec = scenario.drill.clone().unwrap_or_default();
    let mut faults = scenario.faults.clone();
    // A fault the probes must find lands at a phase of their grid drawn from the seed: at the
    // scenario's exact second it would fall at the same phase in every run (the grid counts
    // from the cluster's start too), and detection would always read the same.
    let mut phase = pbxlab_sim::rng::Rng::stream(scenario.seed, "drill fault phase");
    let interval_ns = u64::try_from(scenario.health.probe_interval.as_nanos()).unwrap_or(0);
    for f in &mut faults {
        if f.action.is_silent() && interval_ns > 0 {
            f.at += Duration::from_nanos(phase.below(interval_ns));
        }
    }
    faults.sort_by_key(|f| f.at);
    let Some(first) = faults.first().map(|f| f.at) else {
        return Err(BadInput(format!(
            "scenario {:?} has no [[fault]]: a drill needs at least one",
            scenario.name
        ))
        .into());
    };
    if spec.steady > first {
        return Err(BadInput(format!(
            "[drill] steady ({:.1} s) is longer than the time before the first fault ({:.1} s)",
            spec.steady.as_secs_f64(),
            first.as_secs_f64()
        ))
        .into());
    }

    // The load is configured before anything starts, and again below with the address the Call
    // Manager was given.
    let mut settings = pbxlab_loadgen::Settings::drill(args.sip, &spec.load);
    load::configure(&settings, Some(&scenario), Some(scenario.seed))?;
    let mut alerts = AlertSink::new(args.alerts.clone(), args.alert_webhook.clone())
        .map_err(|e| BadInput(e.to_string()))?;
    let mut opts = Options::new(args.sip);
    opts.whitelist = vec![args.sip.ip(), IpAddr::from([127, 0, 0, 1])];
    let cluster = Cluster::start(&scenario, &opts).context("starting the cluster")?;
    let control = cluster.control();
    let sip = cluster.sip_addr();
    settings.target = sip;
    // The drill's seed, which its report gives, repeats the load's random choices too.
    let (cfg, thresholds) = load::configure(&settings, Some(&scenario), Some(scenario.seed))?;
    let calls: u64 = cfg.workloads.iter().map(|w| w.calls).sum();
    let rtp = cfg.rtp_fraction;
    let drain_limit = load::drain_limit(&cfg);
    eprintln!(
        "pbxlab drill {:?}: Call Manager on {sip}, {} servers; {calls} calls ({:.0}% with RTP) started over {:.0} s, {} faults; detection bound {:.0} ms",
        scenario.name,
        scenario
            .pools
            .iter()
            .map(|p| p.servers.len())
            .sum::<usize>(),
        rtp * 100.0,
        scenario.duration.as_secs_f64(),
        faults.len(),
        control.health().detection_bound().as_secs_f64() * 1000.0,
    );

    let samples: Mutex<Vec<Sample>> = Mutex::default();
    let load_done = AtomicBool::new(false);
    let (result, (steady, injected)) = std::thread::scope(|scope| {
        // Setting `stop` (Ctrl-C, or the timeline when the steady state does not hold) makes
        // the load stop starting calls, hang up and report.
        let timeline = std::thread::Builder::new()
            .name("pbxlab-drill".into())
            .spawn_scoped(scope, || {
                run_timeline(&control, &spec, &faults, &samples, &load_done, stop)
            })
            .context("starting the fault timeline")?;
        let mut progress = |p: &Progress| {
            alerts.poll(&control);
            let at = control.now();
            let i = &p.interval;
            if let Ok(mut s) = samples.lock() {
                s.push(Sample {
                    at,
                    calls_failed: p.calls_failed,
                    active: p.active_calls,
                    setup_p99_us: i.p99_us[Metric::Setup as usize],
                    setup_count: i.counts[Metric::Setup as usize],
                });
            }
            let st = control.status();
            let down: Vec<String> = st
                .nodes
                .iter()
                .filter(|n| n.state != "online")
                .map(|n| format!("{} {}", n.name, n.state))
                .collect();
            eprintln!(
                "[{:>6.1}s] {} | moved {} dropped {} | probes late {} (worst {:.0} ms), rounds ignored {}{}",
                at.as_secs_f64(),
                load::progress_line(p).trim_start(),
                st.cm.moved,
                st.cm.dropped,
                st.cm.probes_late,
                st.cm.probe_rtt_max_us as f64 / 1000.0,
                st.cm.probe_rounds_ignored,
                if down.is_empty() {
                    String::new()
                } else {
                    format!(" | {}", down.join(", "))
                }
            );
        };
        let run = pbxlab_loadgen::run(
            cfg,
            RunOptions {
                bind: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0),
                rtp_bind: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0),
                interval: Duration::from_secs(1),
                thresholds,
                stop,
                progress: &mut progress,
                drain_limit,
            },
        );
        load_done.store(true, Ordering::Relaxed);
        let timeline = timeline.join().unwrap_or_default();
        anyhow::Ok((run, timeline))
    })?;
    let cluster_epoch = control.epoch();
    let records = control.records();
    let status = cluster.stop().context("stopping the cluster")?;
    alerts.poll(&control);
    alerts.close(Duration::from_secs(5));
    let (report, _log) = result?;

    let samples = samples.into_inner().unwrap_or_default();
    let drill = judge(
        &spec,
        &control,
        &injected,
        &samples,
        &records,
        &report,
        cluster_epoch,
        steady,
        faults.len(),
    );
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !json_to_stdout {
        print!("{}", report.render_text());
        print!("{}", drill.render(&scenario.name));
    }
    let value = drill.to_json(&scenario, &report, &status.events);
    crate::write_json(args.json.as_ref(), &value)?;
    Ok(if drill.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SLO)
    })
}

/// Checks the steady state before the first fault, then waits for each fault's time and
/// carries it out. Returns the steady state's verdict (none if the load ended first) and what
/// was injected; when the steady state does not hold, stops the load and injects nothing.
fn run_timeline(
    control: &Control,
    spec: &DrillSpec,
    faults: &[FaultSpec],
    samples: &Mutex<Vec<Sample>>,
    load_done: &AtomicBool,
    stop: &AtomicBool,
) -> (Option<Phase>, Vec<Injected>) {
    let mut injected = Vec::new();
    let Some(first) = faults.first() else {
        return (None, injected);
    };
    // Calls failing before the first fault break the hypothesis already: say so at once rather
    // than at the fault's time, which may be minutes away.
    let failed_so_far = || {
        samples
            .lock()
            .ok()
            .and_then(|s| s.last().map(|x| x.calls_failed))
            .unwrap_or(0)
    };
    if !wait_for(control, first.at, load_done, || {
        failed_so_far() > spec.failed
    }) {
        return (None, injected);
    }
    let window = (first.at.saturating_sub(spec.steady), first.at);
    let list = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let steady = steady_phase(spec, &list, window);
    eprintln!(
        "steady state {:.1}-{:.1} s: {}",
        window.0.as_secs_f64(),
        window.1.as_secs_f64(),
        if steady.pass {
            "holds".to_owned()
        } else {
            format!(
                "does not hold ({}); no fault injected",
                steady.broken.join("; ")
            )
        }
    );
    if !steady.pass {
        stop.store(true, Ordering::Relaxed);
        return (Some(steady), injected);
    }
    for fault in faults {
        if !wait_for(control, fault.at, load_done, || false) {
            break;
        }
        let at = control.now();
        let action = fault.action;
        eprintln!(
            "[{:>6.1}s] fault: {} {}",
            at.as_secs_f64(),
            fault.action.name(),
            fault.server
        );
        let filter = Filter {
            server: Some(fault.server.clone()),
            ..Filter::default()
        };
        let error = control.act(action, &filter).err().map(|e| e.to_string());
        if let Some(e) = &error {
            eprintln!(
                "pbxlab: drill: {} {}: {e}",
                fault.action.name(),
                fault.server
            );
        }
        injected.push(Injected {
            spec: fault.clone(),
            at,
            finished: control.now(),
            error,
        });
    }
    (Some(steady), injected)
}

/// Waits until the cluster's clock reaches `at` or `early` says so (true), or the load ends
/// first (false).
fn wait_for(
    control: &Control,
    at: Duration,
    load_done: &AtomicBool,
    early: impl Fn() -> bool,
) -> bool {
    while control.now() < at && !early() {
        if load_done.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The verdict of one phase: what was measured and which SLOs broke.
#[derive(Debug, Clone, Default)]
struct Phase {
    from: Duration,
    to: Duration,
    calls_failed: u64,
    setup_p99_max_us: u64,
    min_active: usize,
    broken: Vec<String>,
    pass: bool,
}

fn in_window(
    samples: &[Sample],
    (from, to): (Duration, Duration),
) -> impl Iterator<Item = &Sample> {
    samples.iter().filter(move |s| s.at > from && s.at <= to)
}

/// Failed calls during a window: the growth of the cumulative count across it.
fn failed_in(samples: &[Sample], (from, to): (Duration, Duration)) -> u64 {
    let before = samples
        .iter()
        .take_while(|s| s.at <= from)
        .last()
        .map_or(0, |s| s.calls_failed);
    let after = samples
        .iter()
        .take_while(|s| s.at <= to)
        .last()
        .map_or(before, |s| s.calls_failed);
    after.saturating_sub(before)
}

fn phase(spec: &DrillSpec, samples: &[Sample], window: (Duration, Duration)) -> Phase {
    let mut p = Phase {
        from: window.0,
        to: window.1,
        calls_failed: failed_in(samples, window),
        min_active: usize::MAX,
        ..Phase::default()
    };
    for s in in_window(samples, window) {
        if s.setup_count > 0 {
            p.setup_p99_max_us = p.setup_p99_max_us.max(s.setup_p99_us);
        }
        p.min_active = p.min_active.min(s.active);
    }
    if p.min_active == usize::MAX {
        p.min_active = 0;
    }
    if p.calls_failed > spec.failed {
        p.broken.push(format!(
            "{} calls failed (at most {})",
            p.calls_failed, spec.failed
        ));
    }
    let limit = micros(spec.setup_p99);
    if p.setup_p99_max_us > limit {
        p.broken.push(format!(
            "setup p99 reached {:.1} ms (at most {:.1} ms)",
            p.setup_p99_max_us as f64 / 1000.0,
            limit as f64 / 1000.0
        ));
    }
    p.pass = p.broken.is_empty();
    p
}

/// The steady-state hypothesis: the SLOs hold in the window before the first fault, and no
/// call failed at all before it (the ramp-up included).
fn steady_phase(spec: &DrillSpec, samples: &[Sample], window: (Duration, Duration)) -> Phase {
    let mut p = phase(spec, samples, window);
    let failed = failed_in(samples, (Duration::ZERO, window.1));
    if failed > p.calls_failed && failed > spec.failed {
        p.broken.push(format!(
            "{failed} calls failed before the first fault (at most {})",
            spec.failed
        ));
    }
    p.calls_failed = failed;
    if in_window(samples, window).next().is_none() {
        p.broken.push("no load measured in the window".to_owned());
    } else if p.min_active == 0 {
        p.broken
            .push("some second of the window had no call up".to_owned());
    }
    p.pass = p.broken.is_empty();
    p
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Count, p50, p99 and max of a set of durations, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Spread {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Spread {
    fn of(values_us: impl Iterator<Item = u64>) -> Spread {
        let mut h = pbxlab_loadgen::metrics::histogram();
        for v in values_us {
            let _ = h.record(v.clamp(1, pbxlab_loadgen::metrics::MAX_US));
        }
        if h.is_empty() {
            return Spread::default();
        }
        Spread {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "count": self.count,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }

    fn show(&self) -> String {
        if self.count == 0 {
            return "none".to_owned();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{} | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count,
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us)
        )
    }
}

/// One fault, judged.
#[derive(Debug, Clone)]
struct FaultVerdict {
    injected: Injected,
    /// Until the next fault (or the end of the load).
    window_end: Duration,
    /// From the fault to the server's Down event (faults the probes must find).
    detection: Option<Duration>,
    detection_bound: Option<Duration>,
    alerts: Vec<String>,
    reassignment: Spread,
    media_gap: Spread,
    dropped: Vec<(String, &'static str)>,
    during: Phase,
    after: Phase,
    broken: Vec<String>,
}

struct DrillVerdict {
    steady: Option<Phase>,
    faults: Vec<FaultVerdict>,
    /// Faults the drill never reached (the load ended first, or the steady state failed).
    skipped: usize,
    pass: bool,
}

#[allow(clippy::too_many_arguments)]
fn judge(
    spec: &DrillSpec,
    control: &Control,
    injected: &[Injected],
    samples: &[Sample],
    records: &Records,
    report: &LoadReport,
    cluster_epoch: Instant,
    steady: Option<Phase>,
    planned: usize,
) -> DrillVerdict {
    let health = control.health();
    let end = samples.last().map_or(Duration::ZERO, |s| s.at);
    // Gaps on the cluster's clock.
    let offset = report.media_epoch.map_or(Duration::ZERO, |e| {
        e.saturating_duration_since(cluster_epoch)
    });
    let gaps: Vec<(Duration, u64)> = report
        .gaps
        .iter()
        .map(|g| (offset + Duration::from_nanos(g.start_ns), g.len_ns))
        .collect();
    let mut faults = Vec::new();
    for (k, inj) in injected.iter().enumerate() {
        let window_end = injected.get(k + 1).map_or(end.max(inj.finished), |n| n.at);
        let silent = inj.spec.action.is_silent();
        let down = records
            .events
            .iter()
            .find(|e| e.server == inj.spec.server && e.kind == EventKind::Down && e.at >= inj.at);
        let detection = silent
            .then(|| down.map(|e| e.at.saturating_sub(inj.at)))
            .flatten();
        let detection_bound = silent.then(|| health.detection_bound());
        // The fault's effect lasts until it is detected and the cluster has settled.
        let settled = inj.finished.max(inj.at + detection.unwrap_or_default()) + spec.settle;
        let during_end = settled.min(window_end);
        let in_fault = |at: Duration| at >= inj.at && at < window_end;
        let alerts = records
            .events
            .iter()
            .filter(|e| in_fault(e.at))
            .filter_map(|e| match &e.kind {
                EventKind::Alert(text) => Some(text.clone()),
                _ => None,
            })
            .collect();
        let reassignment = Spread::of(
            records
                .reassigned
                .iter()
                .filter(|r| in_fault(Duration::from_nanos(r.at)))
                .map(|r| r.took / 1000),
        );
        // A caller's silence belongs to the fault if it began within a frame or so of it and
        // before the cluster settled.
        let gap_from = inj.at.saturating_sub(Duration::from_millis(40));
        let media_gap = Spread::of(
            gaps.iter()
                .filter(|(at, _)| *at >= gap_from && *at < during_end)
                .map(|&(_, len)| len / 1000),
        );
        let dropped: Vec<(String, &'static str)> = records
            .dropped
            .iter()
            .filter(|d| in_fault(Duration::from_nanos(d.at)))
            .map(|d| (d.call_id.clone(), d.reason))
            .collect();
        let mut during = phase(spec, samples, (inj.at, during_end));
        if media_gap.p99_us > micros(spec.media_gap_p99) {
            during.broken.push(format!(
                "media gap p99 {:.1} ms (at most {:.1} ms)",
                media_gap.p99_us as f64 / 1000.0,
                spec.media_gap_p99.as_secs_f64() * 1000.0
            ));
        }
        if dropped.len() as u64 > spec.dropped {
            during.broken.push(format!(
                "{} calls dropped by failover (at most {})",
                dropped.len(),
                spec.dropped
            ));
        }
        during.pass = during.broken.is_empty();
        let after = phase(spec, samples, (during_end, window_end));
        let mut broken = Vec::new();
        if let Some(e) = &inj.error {
            broken.push(format!("the action failed: {e}"));
        }
        if silent {
            match (detection, detection_bound) {
                (Some(d), Some(b)) if d > b + DETECTION_SLACK => broken.push(format!(
                    "detected after {:.0} ms, beyond the bound of {:.0} ms",
                    d.as_secs_f64() * 1000.0,
                    b.as_secs_f64() * 1000.0
                )),
                (None, _) => broken.push("never detected".to_owned()),
                _ => {}
            }
        }
        broken.extend(during.broken.iter().map(|b| format!("during: {b}")));
        broken.extend(after.broken.iter().map(|b| format!("after: {b}")));
        faults.push(FaultVerdict {
            injected: inj.clone(),
            window_end,
            detection,
            detection_bound,
            alerts,
            reassignment,
            media_gap,
            dropped,
            during,
            after,
            broken,
        });
    }
    let skipped = planned.saturating_sub(injected.len());
    let pass = steady.as_ref().is_some_and(|s| s.pass)
        && faults.iter().all(|f| f.broken.is_empty())
        && skipped == 0;
    DrillVerdict {
        steady,
        faults,
        skipped,
        pass,
    }
}

impl DrillVerdict {
    fn render(&self, name: &str) -> String {
        let mut out = String::new();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let _ = writeln!(out, "\ndrill {name:?}");
        match &self.steady {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "  steady state {:.1}-{:.1} s: {} (calls up >= {}, setup p99 <= {:.1} ms, {} failed)",
                    s.from.as_secs_f64(),
                    s.to.as_secs_f64(),
                    if s.pass { "holds" } else { "BROKEN" },
                    s.min_active,
                    s.setup_p99_max_us as f64 / 1000.0,
                    s.calls_failed
                );
                for b in &s.broken {
                    let _ = writeln!(out, "    {b}");
                }
            }
            None => {
                let _ = writeln!(out, "  steady state: never checked (the load ended first)");
            }
        }
        for f in &self.faults {
            let i = &f.injected;
            let _ = writeln!(
                out,
                "\n  fault at {:.1} s: {} {}{}",
                i.at.as_secs_f64(),
                i.spec.action.name(),
                i.spec.server,
                if i.finished > i.at + Duration::from_millis(50) {
                    format!(" (took {:.1} s)", (i.finished - i.at).as_secs_f64())
                } else {
                    String::new()
                }
            );
            if let Some(b) = f.detection_bound {
                let _ = writeln!(
                    out,
                    "    detection        {} (bound {:.0} ms = down_after x interval + timeout, +5 ms timer slack)",
                    f.detection
                        .map_or("never".to_owned(), |d| format!("{:.0} ms", ms(d))),
                    ms(b)
                );
            }
            let _ = writeln!(out, "    reassigned calls {}", f.reassignment.show());
            let _ = writeln!(out, "    media gap        {}", f.media_gap.show());
            let _ = writeln!(out, "    dropped calls    {}", f.dropped.len());
            let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
            for (_, why) in &f.dropped {
                *reasons.entry(why).or_default() += 1;
            }
            for (why, n) in reasons {
                let _ = writeln!(out, "      {n:>6}  {why}");
            }
            for a in &f.alerts {
                let _ = writeln!(out, "    alert            {a}");
            }
            let _ = writeln!(
                out,
                "    during {:.1}-{:.1} s: {}; after, to {:.1} s: {}",
                f.during.from.as_secs_f64(),
                f.during.to.as_secs_f64(),
                if f.during.pass {
                    "SLOs hold"
                } else {
                    "SLO BROKEN"
                },
                f.window_end.as_secs_f64(),
                if f.after.pass {
                    "SLOs hold"
                } else {
                    "SLO BROKEN"
                },
            );
            for b in &f.broken {
                let _ = writeln!(out, "    broken: {b}");
            }
        }
        let _ = writeln!(
            out,
            "\nverdict: {}",
            if self.pass {
                "PASS (every SLO held)"
            } else {
                "FAIL (an SLO broke; exit 99)"
            }
        );
        out
    }

    fn to_json(
        &self,
        scenario: &Scenario,
        report: &LoadReport,
        events: &[String],
    ) -> serde_json::Value {
        let phase = |p: &Phase| {
            json!({
                "from_s": p.from.as_secs_f64(),
                "to_s": p.to.as_secs_f64(),
                "calls_failed": p.calls_failed,
                "setup_p99_max_us": p.setup_p99_max_us,
                "min_active_calls": p.min_active,
                "pass": p.pass,
                "broken": p.broken,
            })
        };
        let faults: Vec<serde_json::Value> = self
            .faults
            .iter()
            .map(|f| {
                json!({
                    "at_s": f.injected.at.as_secs_f64(),
                    "action": f.injected.spec.action.name(),
                    "server": f.injected.spec.server,
                    "finished_s": f.injected.finished.as_secs_f64(),
                    "error": f.injected.error,
                    "detection_us": f.detection.map(micros),
                    "detection_bound_us": f.detection_bound.map(micros),
                    "reassignment": f.reassignment.json(),
                    "media_gap": f.media_gap.json(),
                    "dropped": f.dropped.iter().map(|(id, why)| json!({"call_id": id, "reason": why})).collect::<Vec<_>>(),
                    "alerts": f.alerts,
                    "during": phase(&f.during),
                    "after": phase(&f.after),
                    "pass": f.broken.is_empty(),
                    "broken": f.broken,
                })
            })
            .collect();
        json!({
            "scenario": scenario.name,
            "seed": scenario.seed,
            "pass": self.pass,
            "steady": self.steady.as_ref().map(phase),
            "faults": faults,
            "faults_planned": scenario.faults.len(),
            "faults_skipped": self.skipped,
            "events": events,
            "load": serde_json::to_value(report).unwrap_or_default(),
        })
    }
}

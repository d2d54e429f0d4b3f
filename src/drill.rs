//! `pbxlab drill`: the live cluster, the load generator and a fault timeline in one process,
//! with a verdict (judged by [`pbxlab_cluster::drill`]; here are the threads, the output and
//! the exit code).
//!
//! The drill follows the chaos-engineering routine: start the cluster and the load, check the
//! steady-state hypothesis (the SLOs hold) in a window before the first fault, carry out each
//! `[[fault]]` at its time through the same operator interface `pbxlab ctl` uses, and judge
//! every fault from what the cluster and the callers saw: how long the Call Manager took to
//! notice, how long each moved call took to be re-INVITEd onto its new node, how long the
//! callers heard nothing (the media gap, measured on the callers' own RTP sockets), which
//! calls were dropped and why, and whether the SLOs held during the fault and after it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use pbxlab_cluster::alerts::AlertSink;
use pbxlab_cluster::cluster::{Cluster, Control, Filter, Options};
use pbxlab_cluster::drill::{
    DrillVerdict, Injected, Observed, Outcome, Phase, Sample, judge, silences, steady_phase,
};
use pbxlab_loadgen::metrics::Metric;
use pbxlab_loadgen::{LoadReport, Progress, RunOptions};
use pbxlab_scenario::Scenario;
use pbxlab_scenario::{DrillSpec, FaultSpec};

use crate::{BadInput, load};

mod virtual_time;

/// Exit code when an SLO broke (as `load`'s thresholds).
const EXIT_SLO: u8 = 99;

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
    #[arg(long, value_name = "FILE", conflicts_with = "explore")]
    json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page to FILE: the load's setup p99, calls
    /// up and failures on the cluster's clock with each fault and its detection marked, and
    /// per fault its detection, reassignment, dropped calls and media gap.
    #[arg(long, value_name = "FILE", conflicts_with = "explore")]
    html: Option<PathBuf>,
    /// Seed for every random stream (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Append one JSON line per alert (an IVR, queue or meeting server down) to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "virtual_time")]
    alerts: Option<PathBuf>,
    /// POST each alert's JSON to this URL (http://HOST:PORT/PATH); failures are logged.
    #[arg(long, value_name = "URL", conflicts_with = "virtual_time")]
    alert_webhook: Option<String>,
    /// Run the drill in virtual time: the load generator's engine and RTP, the Call Manager
    /// and the nodes exchange their datagrams over an in-memory network on one clock (no
    /// sockets, no threads, every choice from the seed), and the scenario's network faults
    /// (loss, delay, duplicate, reorder, partition, heal) are carried out too. The same report
    /// and exit codes as the live drill.
    #[arg(long = "virtual")]
    virtual_time: bool,
    /// With --virtual: leave the wall-clock figures out (null), so that runs of one seed give
    /// byte-identical JSON.
    #[arg(long, requires = "virtual_time")]
    no_wall_clock: bool,
    /// With --virtual: run N seeds (from --seed or the scenario's on), each with its faults'
    /// times moved and random network faults added as [explore] says, checking after every
    /// step that no session is lost. One line per seed; each seed that broke a check is
    /// printed with the command that replays it, and the exit code is 1 if any did. The
    /// drills' SLO verdicts are counted, not judged.
    #[arg(long, value_name = "N", requires = "virtual_time", value_parser = clap::value_parser!(u64).range(1..))]
    explore: Option<u64>,
}

pub(crate) fn drill(args: DrillArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    crate::writable("--json", args.json.as_ref())?;
    crate::html::writable(args.html.as_ref())?;
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
    if args.virtual_time {
        return virtual_time::drill(&args, &scenario, stop);
    }
    if !scenario.net_faults.is_empty() {
        let named: Vec<String> = scenario
            .net_faults
            .iter()
            .enumerate()
            .map(|(i, f)| {
                format!(
                    "network fault {} ({} at {:.1} s)",
                    i + 1,
                    f.kind.name(),
                    f.at.as_secs_f64()
                )
            })
            .collect();
        return Err(BadInput(format!(
            "scenario {:?}: the live drill cannot carry out {}: it runs on the machine's own \
             loopback, whose datagrams it does not control",
            scenario.name,
            named.join(", ")
        ))
        .into());
    }
    let spec = scenario.drill.clone().unwrap_or_default();
    let faults = pbxlab_cluster::drill::timeline(&scenario).map_err(BadInput)?;

    // The load is configured before anything starts, and again below with the address the Call
    // Manager was given.
    let mut settings = pbxlab_loadgen::Settings::drill(args.sip, &spec.load);
    {
        // Port 0 lets the cluster pick one; the check before it starts stands in any other.
        let mut before = settings.clone();
        if before.target.port() == 0 {
            before.target.set_port(5060);
        }
        load::configure(&before, Some(&scenario), Some(scenario.seed))?;
    }
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
    eprintln!(
        "pbxlab drill {:?}: Call Manager on {sip}, {}; {calls} calls ({:.0}% with RTP) started over {:.0} s, {}; detection bound {:.0} ms",
        scenario.name,
        crate::count(
            scenario.pools.iter().map(|p| p.servers.len()).sum(),
            "server"
        ),
        rtp * 100.0,
        scenario.duration.as_secs_f64(),
        crate::count(faults.len(), "fault"),
        control.health().detection_bound().as_secs_f64() * 1000.0,
    );

    let callers = Callers {
        target: sip,
        domain: opts.domain.clone(),
        password_prefix: opts.password_prefix.clone(),
        caller: scenario
            .traffic
            .registrations
            .as_ref()
            .map_or(1000, |r| r.first_user),
        seed: scenario.seed,
    };
    let samples: Mutex<Vec<Sample>> = Mutex::default();
    // Where the load's clock starts on the cluster's: the least of the cluster's time less
    // the load's at each progress report (each read just after the other, so the least is
    // the closest).
    let mut load_start: Option<Duration> = None;
    let load_done = AtomicBool::new(false);
    let (result, (steady, injected)) = std::thread::scope(|scope| {
        // Setting `stop` (Ctrl-C, or the timeline when the steady state does not hold) makes
        // the load stop starting calls, hang up and report.
        let timeline = std::thread::Builder::new()
            .name("pbxlab-drill".into())
            .spawn_scoped(scope, || {
                run_timeline(
                    &control, &spec, &faults, &samples, &load_done, stop, &callers,
                )
            })
            .context("starting the fault timeline")?;
        let mut progress = |p: &Progress| {
            alerts.poll(&control);
            let at = control.now();
            let start = at.saturating_sub(p.elapsed);
            load_start = Some(load_start.map_or(start, |s| s.min(start)));
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
            let serving = if st.callmanagers.len() > 1 {
                st.callmanagers
                    .iter()
                    .find(|c| c.serving && !c.cut)
                    .map_or_else(
                        || " | no Call Manager serves".to_owned(),
                        |c| format!(" | {} serves", c.name),
                    )
            } else {
                String::new()
            };
            eprintln!(
                "[{:>6.1}s] {} | moved {} dropped {} | probes late {} (worst {:.0} ms), rounds ignored {}{serving}{}{}",
                at.as_secs_f64(),
                load::progress_figures(p),
                st.cm.moved,
                st.cm.dropped,
                st.cm.probes_late,
                st.cm.probe_rtt_max_us as f64 / 1000.0,
                st.cm.probe_rounds_ignored,
                if down.is_empty() {
                    String::new()
                } else {
                    format!(" | {}", down.join(", "))
                },
                crate::cluster::behind_note(&st.pace.drivers())
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
                hlog: None,
                csv: None,
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
    let report = result?;

    let samples = samples.into_inner().unwrap_or_default();
    let gaps = silences(&report, Some(cluster_epoch));
    let seen = Observed {
        records: &records,
        samples: &samples,
        gaps: &gaps,
    };
    let mut drivers = status.pace.drivers();
    drivers.extend(report.emulator.iter().cloned());
    let drill = judge(
        &spec,
        control.health().detection_bound(),
        &injected,
        &seen,
        steady,
        faults.len(),
    )
    .with_emulator(drivers);
    conclude(
        &args,
        &Concluded {
            scenario: &scenario,
            verdict: &drill,
            report: &report,
            events: &status.events,
            load_start,
            text: String::new(),
            extra: None,
        },
    )
}

/// What a drill, live or virtual, hands its report.
struct Concluded<'a> {
    scenario: &'a Scenario,
    verdict: &'a DrillVerdict,
    report: &'a LoadReport,
    /// The balancer's events, as the status gives them.
    events: &'a [String],
    /// Where the load's clock starts on the cluster's.
    load_start: Option<Duration>,
    /// Printed after the verdict.
    text: String,
    /// A key and its value added to the JSON.
    extra: Option<(&'static str, serde_json::Value)>,
}

/// Prints the drill's report (unless its JSON goes to standard output), writes its JSON and
/// HTML, and gives its exit code.
fn conclude(args: &DrillArgs, c: &Concluded<'_>) -> anyhow::Result<ExitCode> {
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !json_to_stdout {
        crate::show(&c.report.render_text());
        crate::show(&c.verdict.render(&c.scenario.name));
        if !c.text.is_empty() {
            crate::show(&c.text);
        }
    }
    let mut value = c.verdict.to_json(c.scenario, c.report, c.events);
    if let Some(o) = value.as_object_mut() {
        if let Some(start) = c.load_start {
            // The load's `intervals` count from its own start; fault times from the cluster's.
            o.insert("load_start_s".into(), start.as_secs_f64().into());
        }
        if let Some((key, v)) = &c.extra {
            o.insert((*key).into(), v.clone());
        }
    }
    crate::write_json(args.json.as_ref(), &value)?;
    crate::html::write(args.html.as_ref(), &value, crate::html::drill)?;
    Ok(exit_code(c.verdict.outcome()))
}

fn exit_code(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Pass => ExitCode::SUCCESS,
        Outcome::Fail => ExitCode::from(EXIT_SLO),
        Outcome::Invalid => ExitCode::from(crate::EXIT_INVALID),
    }
}

/// How a Call Manager fault's check calls the users it found bound at the fault.
#[derive(Clone)]
struct Callers {
    /// The virtual IP.
    target: SocketAddr,
    domain: String,
    password_prefix: String,
    /// The user the check calls as (any user the Call Manager knows: it need not be bound).
    caller: u32,
    seed: u64,
}

/// Calls at once while checking the registrations: the callees ring for a second before they
/// answer, so 1,000 users take about four seconds.
const CHECK_IN_FLIGHT: usize = 250;

impl Callers {
    /// Calls each of `users` through the virtual IP, from 127.0.0.1 (whitelisted, as the
    /// load's own address) when the virtual IP is on loopback. The `k`th fault's check has
    /// Call-IDs of its own.
    fn call_each(
        &self,
        k: usize,
        users: &[u32],
    ) -> std::io::Result<pbxlab_loadgen::reach::Reached> {
        let bind = if self.target.ip().is_loopback() && self.target.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.target.ip()
        };
        let plan = pbxlab_loadgen::reach::Plan {
            target: self.target,
            domain: self.domain.clone(),
            username: self.caller.to_string(),
            password: format!("{}{}", self.password_prefix, self.caller),
            in_flight: CHECK_IN_FLIGHT,
            give_up: Duration::from_secs(8),
            run: self.seed.wrapping_mul(1_000).wrapping_add(k as u64),
        };
        pbxlab_loadgen::reach::call_each(plan, bind, users)
    }
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
    callers: &Callers,
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
    let steady = steady_phase(spec, &list, &control.records(), window);
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
    // A Call Manager fault's figures are taken after its takeover has settled, on a thread of
    // their own so that the timeline goes on meanwhile; then each user bound at the fault is
    // called.
    let mut watches = Vec::new();
    for fault in faults {
        if !wait_for(control, fault.at, load_done, || false) {
            break;
        }
        let watch = control
            .cm_index(&fault.server)
            .map(|i| control.watch_cm_fault(i, fault.action));
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
        if let Some(w) = watch {
            let (control, settle, callers) = (control.clone(), spec.settle, callers.clone());
            let k = injected.len();
            let figures = std::thread::Builder::new()
                .name("pbxlab-cm-watch".into())
                .spawn(move || {
                    let (mut f, due) = control.cm_fault_figures(&w, settle);
                    match callers.call_each(k, &due) {
                        Ok(r) => {
                            f.registrations_lost = r.lost();
                            f.called = Some(r);
                        }
                        Err(e) => eprintln!(
                            "pbxlab: drill: calling the {} users bound at fault {}: {e}; their \
                             registrations were checked at the registrar only",
                            due.len(),
                            k + 1
                        ),
                    }
                    f
                });
            watches.extend(figures.ok().map(|h| (k, h)));
        }
        injected.push(Injected {
            spec: fault.clone(),
            at,
            finished: control.now(),
            error,
            cm: None,
        });
    }
    for (k, h) in watches {
        if let (Ok(figures), Some(i)) = (h.join(), injected.get_mut(k)) {
            i.cm = Some(figures);
        }
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

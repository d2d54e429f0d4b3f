//! `pbxlab drill --virtual`: the drill in virtual time ([`pbxlab_cluster::world::drill`]),
//! judged and reported as the live one is; and `--explore N`, the same drill under many seeds
//! with its invariants checked after every step.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pbxlab_cluster::cluster::Options;
use pbxlab_cluster::drill::{DrillVerdict, Observed, judge, silences, timeline};
use pbxlab_cluster::world::drill::{
    Drill, Hooks, LOAD_RTP_PORT, LOAD_SIP_PORT, VirtualRun, load_addrs,
};
use pbxlab_cluster::world::explore::{Variant, vary};
use pbxlab_cluster::world::{REPLICA_PORT_BASE, SERVER_PORT_BASE, World};
use pbxlab_loadgen::engine::Config;
use pbxlab_loadgen::{Progress, Threshold};
use pbxlab_scenario::{DrillSpec, FaultSpec, NetFaultSpec, NetKind, Scenario};
use serde_json::json;

use super::{Concluded, DrillArgs, conclude};
use crate::{BadInput, load};

/// How often the progress line is printed, in the cluster's time.
const PROGRESS_EVERY_S: u64 = 10;

/// The drill as it will run: its timeline, SLOs, cluster options and load.
struct Setup {
    faults: Vec<FaultSpec>,
    spec: DrillSpec,
    opts: Options,
    cfg: Config,
    thresholds: Vec<Threshold>,
}

impl Setup {
    /// `warn`: print the load's warnings (once, not for every explored seed).
    fn of(args: &DrillArgs, scenario: &Scenario, warn: bool) -> anyhow::Result<Setup> {
        let faults = timeline(scenario).map_err(BadInput)?;
        let spec = scenario.drill.clone().unwrap_or_default();
        // No socket is bound: port 0 only means "the usual one".
        let mut sip = args.sip;
        if sip.port() == 0 {
            sip.set_port(5060);
        }
        // The world puts the servers and the load generator on the Call Manager's address.
        let servers: usize = scenario.pools.iter().map(|p| p.servers.len()).sum();
        let first = usize::from(SERVER_PORT_BASE);
        let port = usize::from(sip.port());
        let cms = scenario.callmanager.names().len();
        let replicas = usize::from(REPLICA_PORT_BASE);
        if (first..first + servers).contains(&port)
            || (replicas..replicas + cms).contains(&port)
            || [LOAD_SIP_PORT, LOAD_RTP_PORT].contains(&sip.port())
        {
            let own = if cms > 0 {
                format!(
                    ", the Call Managers' own addresses at {replicas}-{}",
                    replicas + cms - 1
                )
            } else {
                String::new()
            };
            return Err(BadInput(format!(
                "--sip {sip}: in virtual time the servers are at ports {first}-{}{own} and the \
                 load at {LOAD_SIP_PORT} and {LOAD_RTP_PORT} of that address; give the Call \
                 Manager another port",
                first + servers.saturating_sub(1)
            ))
            .into());
        }
        let settings = pbxlab_loadgen::Settings::drill(sip, &spec.load);
        let (mut cfg, thresholds) = if warn {
            load::configure(&settings, Some(scenario), Some(scenario.seed))?
        } else {
            pbxlab_loadgen::configure(&settings, Some(scenario), Some(scenario.seed))
                .map_err(|e| BadInput(e.to_string()))?
        };
        (cfg.local, cfg.rtp_local) = load_addrs(sip);
        let mut opts = Options::new(sip);
        opts.whitelist = vec![sip.ip()];
        Ok(Setup {
            faults,
            spec,
            opts,
            cfg,
            thresholds,
        })
    }

    /// The scenario's drill; with `variant`, that explorer's variant of it.
    fn run(
        &self,
        scenario: &Scenario,
        variant: Option<&Variant>,
        hooks: Hooks<'_>,
    ) -> anyhow::Result<VirtualRun> {
        let drill = Drill {
            scenario,
            faults: variant.map_or(&self.faults, |v| &v.faults),
            net_faults: variant.map_or(&scenario.net_faults, |v| &v.net_faults),
            spec: &self.spec,
            opts: &self.opts,
            seed: scenario.seed,
            explore: variant.is_some(),
        };
        Ok(drill.run(self.cfg.clone(), self.thresholds.clone(), hooks)?)
    }

    /// The verdict, as the live drill's judge gives it (the load kept the cluster's clock).
    fn judge(&self, run: &VirtualRun) -> DrillVerdict {
        let gaps = silences(&run.report, None);
        let seen = Observed {
            records: &run.records,
            samples: &run.samples,
            gaps: &gaps,
        };
        let mut verdict = judge(
            &self.spec,
            run.detection_bound,
            &run.injected,
            &seen,
            run.steady.clone(),
            self.faults.len(),
        );
        // A network fault that could not be put in force means the drill did not test what
        // the scenario says.
        if run.network.iter().any(|n| n.error.is_some()) {
            verdict.pass = false;
        }
        verdict
    }
}

pub(super) fn drill(
    args: &DrillArgs,
    scenario: &Scenario,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.explore {
        return explore(args, scenario, n, stop);
    }
    let setup = Setup::of(args, scenario, true)?;
    let calls: u64 = setup.cfg.workloads.iter().map(|w| w.calls).sum();
    eprintln!(
        "pbxlab drill --virtual {:?} (seed {}): Call Manager at {}, {}; {calls} calls ({:.0}% with RTP) started over {:.0} s, {}, {}",
        scenario.name,
        scenario.seed,
        setup.opts.sip,
        crate::count(
            scenario.pools.iter().map(|p| p.servers.len()).sum(),
            "server"
        ),
        setup.cfg.rtp_fraction * 100.0,
        scenario.duration.as_secs_f64(),
        crate::count(setup.faults.len(), "node fault"),
        crate::count(scenario.net_faults.len(), "network fault"),
    );
    let mut progress = |world: &World, p: &Progress| {
        let s = p.elapsed.as_secs();
        if s.is_multiple_of(PROGRESS_EVERY_S) {
            let r = world.records();
            eprintln!(
                "[{:>6.1}s] {} | moved {} dropped {}",
                p.elapsed.as_secs_f64(),
                load::progress_figures(p),
                r.reassigned.len(),
                r.dropped.len()
            );
        }
    };
    let started = Instant::now();
    let run = setup.run(
        scenario,
        None,
        Hooks {
            progress: Some(&mut progress),
            stop: Some(stop),
        },
    )?;
    let wall = (!args.no_wall_clock).then(|| started.elapsed());
    let verdict = setup.judge(&run);
    conclude(
        args,
        &Concluded {
            scenario,
            verdict: &verdict,
            report: &run.report,
            events: &run.events,
            load_start: Some(Duration::ZERO),
            text: summary(&run, wall),
            extra: Some(("virtual", virtual_json(&run, wall))),
        },
    )
}

/// Events a virtual run handled: instants stepped through and datagrams delivered.
fn events(run: &VirtualRun) -> u64 {
    run.steps + run.datagrams
}

/// What the virtual run did, for the text report.
fn summary(run: &VirtualRun, wall: Option<Duration>) -> String {
    let mut out = String::new();
    let cluster_s = run.end.as_secs_f64();
    let _ = write!(
        out,
        "virtual time: {cluster_s:.1} s of cluster time, {} events ({} datagrams, {} instants)",
        events(run),
        run.datagrams,
        run.steps
    );
    if let Some(w) = wall {
        let w = w.as_secs_f64().max(1e-9);
        let _ = write!(
            out,
            " in {w:.1} s of wall time ({:.1}x real time, {:.2} M events/s)",
            cluster_s / w,
            events(run) as f64 / w / 1e6
        );
    }
    let n = &run.net;
    let _ = writeln!(
        out,
        "\nnetwork: {} sent, {} delivered, {} lost, {} cut by partitions, {} duplicated, {} delayed, {} reordered",
        n.sent, n.delivered, n.lost, n.cut, n.duplicated, n.delayed, n.reordered
    );
    for f in &run.network {
        let _ = writeln!(
            out,
            "  network fault: {}{}",
            describe(&f.spec),
            f.error
                .as_ref()
                .map_or(String::new(), |e| format!(": NOT APPLIED: {e}"))
        );
    }
    for c in &run.callmanagers {
        let s = &c.stats;
        let _ = writeln!(
            out,
            "{}: {}{} (term {}, {} inputs applied, {} committed); {} entries sent, {} again, {} \
             snapshots sent, {} taken, {} replication datagrams refused, {} inputs refused while \
             not serving",
            c.name,
            c.role,
            if c.cut { ", cut off" } else { "" },
            c.term,
            c.applied,
            c.commit,
            s.entries_sent,
            s.entries_resent,
            s.snapshots_sent,
            s.snapshots_taken,
            s.rejected,
            s.fenced_inputs
        );
    }
    if run.callmanagers.iter().any(|c| c.stats.snapshots_taken > 0) {
        // The world has no bandwidth, and the replicas' work takes none of its time.
        let _ = writeln!(
            out,
            "snapshots: written, carried and read in no cluster time here (a catch-up is only \
             its round trips); `cargo bench --bench snapshot` measures them at the headline, \
             and the live drill's catch-up includes them"
        );
    }
    if let Some(v) = &run.violation {
        let _ = writeln!(
            out,
            "invariant broken at {:.3} s: {}",
            v.at.as_secs_f64(),
            v.what
        );
    }
    out
}

/// A network fault in one line: what, on which endpoints, when and for how long.
fn describe(f: &NetFaultSpec) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let what = match f.kind {
        NetKind::Loss { fraction } | NetKind::Duplicate { fraction } => {
            format!("{} {:.1}%", f.kind.name(), fraction * 100.0)
        }
        NetKind::Delay { delay, jitter } => {
            format!("delay {:.1} ms (+{:.1} ms jitter)", ms(delay), ms(jitter))
        }
        NetKind::Reorder { fraction, by } => {
            format!("reorder {:.1}% by {:.1} ms", fraction * 100.0, ms(by))
        }
        NetKind::Partition | NetKind::Heal => f.kind.name().to_owned(),
    };
    format!(
        "{what} {} at {:.1} s{}",
        if f.endpoints.is_empty() {
            "everything".to_owned()
        } else {
            f.endpoints.join("+")
        },
        f.at.as_secs_f64(),
        f.lasts
            .map_or(String::new(), |d| format!(" for {:.1} s", d.as_secs_f64()))
    )
}

/// The `virtual` object of the JSON report: the run's work, its wall time (null with
/// `--no-wall-clock`), the network and the network faults as they were put in force.
fn virtual_json(run: &VirtualRun, wall: Option<Duration>) -> serde_json::Value {
    let wall_s = wall.map(|w| w.as_secs_f64());
    json!({
        "end_s": run.end.as_secs_f64(),
        "events": events(run),
        "datagrams": run.datagrams,
        "instants": run.steps,
        "wall_s": wall_s,
        "events_per_s": wall_s.map(|w| events(run) as f64 / w.max(1e-9)),
        "network": run.net,
        "network_faults": run.network.iter().map(|f| json!({
            "at_s": f.at.as_secs_f64(),
            "action": f.spec.kind.name(),
            "endpoints": f.spec.endpoints,
            "lasts_s": f.spec.lasts.map(|d| d.as_secs_f64()),
            "error": f.error,
        })).collect::<Vec<_>>(),
        "violation": run.violation.as_ref().map(|v| json!({"at_s": v.at.as_secs_f64(), "what": v.what})),
        "callmanagers": run.callmanagers,
    })
}

/// `--explore N`: seeds S to S+N-1 (S from `--seed` or the scenario), each its own variant of
/// the drill with the invariants checked after every step. One line per seed; every seed that
/// broke an invariant is named with the command that replays it, and the exit code is 1 if any
/// did. The drills' SLO verdicts are counted but decide nothing: random network faults are
/// meant to strain them.
fn explore(
    args: &DrillArgs,
    scenario: &Scenario,
    n: u64,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    let first = scenario.seed;
    // The scenario's own timeline must hold before any seed is varied.
    timeline(scenario).map_err(BadInput)?;
    eprintln!(
        "pbxlab drill --virtual --explore {n} {:?}: seeds {first} to {}, each fault moved up to {:.1} s, up to {} random network faults in {:.1}-{:.1} s",
        scenario.name,
        first.wrapping_add(n.saturating_sub(1)),
        scenario.explore.shift.as_secs_f64(),
        scenario.explore.network,
        scenario.explore_window().0.as_secs_f64(),
        scenario.explore_window().1.as_secs_f64(),
    );
    let replay = |seed: u64| {
        let file = args
            .scenario
            .as_ref()
            .map_or(String::new(), |p| format!(" {}", p.display()));
        // The Call Manager's address is part of the world (tags, Vias): given when not the
        // default.
        let sip = if args.sip == SocketAddr::from(([127, 0, 0, 1], 0)) {
            String::new()
        } else {
            format!(" --sip {}", args.sip)
        };
        format!("pbxlab drill --virtual{file}{sip} --explore 1 --seed {seed}")
    };
    let mut failing = Vec::new();
    let mut slo_broken = 0;
    let started = Instant::now();
    let mut ran = 0;
    for seed in (0..n).map(|i| first.wrapping_add(i)) {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("pbxlab: stopped after {ran} seeds");
            break;
        }
        let mut sc = scenario.clone();
        sc.seed = seed;
        let setup = Setup::of(args, &sc, ran == 0)?;
        let variant = vary(&sc, &setup.faults, seed);
        let hooks = Hooks {
            stop: Some(stop),
            ..Hooks::default()
        };
        let run = setup.run(&sc, Some(&variant), hooks)?;
        ran += 1;
        let verdict = setup.judge(&run);
        if !verdict.pass {
            slo_broken += 1;
        }
        let network: Vec<String> = variant.net_faults.iter().map(describe).collect();
        // As carried out: when each began, and the ones never reached.
        let mut faults: Vec<String> = run
            .injected
            .iter()
            .map(|f| {
                format!(
                    "{} {} at {:.2} s{}",
                    f.spec.action.name(),
                    f.spec.server,
                    f.at.as_secs_f64(),
                    f.error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" (failed: {e})"))
                )
            })
            .collect();
        faults.extend(variant.faults.iter().skip(run.injected.len()).map(|f| {
            format!(
                "{} {} (planned at {:.2} s) not carried out",
                f.action.name(),
                f.server,
                f.at.as_secs_f64()
            )
        }));
        if run.violation.is_none() && stop.load(std::sync::atomic::Ordering::Relaxed) {
            println!(
                "seed {seed}: interrupted at {:.1} s of cluster time, nothing broken so far",
                run.end.as_secs_f64()
            );
            break;
        }
        match &run.violation {
            None => println!(
                "seed {seed}: ok, {} moved, {} dropped, drill {} | {} | {}",
                run.records.reassigned.len(),
                run.records.dropped.len(),
                if verdict.pass { "PASS" } else { "broke an SLO" },
                faults.join(", "),
                if network.is_empty() {
                    "no network fault".to_owned()
                } else {
                    network.join(", ")
                }
            ),
            Some(v) => {
                println!(
                    "seed {seed}: LOST at {:.3} s: {}\n  faults: {}\n  network: {}\n  replay: {}",
                    v.at.as_secs_f64(),
                    v.what,
                    faults.join(", "),
                    if network.is_empty() {
                        "none".to_owned()
                    } else {
                        network.join(", ")
                    },
                    replay(seed)
                );
                failing.push(seed);
            }
        }
    }
    println!(
        "\nexplored {ran} seeds in {}: {} broke an invariant{}; {slo_broken} broke a drill SLO (not a failure here)",
        if args.no_wall_clock {
            "-".to_owned()
        } else {
            format!("{:.1} s", started.elapsed().as_secs_f64())
        },
        failing.len(),
        if failing.is_empty() {
            String::new()
        } else {
            format!(
                " (seeds {})",
                failing
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if failing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

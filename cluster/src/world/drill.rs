//! The drill in virtual time: the load generator's engine and RTP core ([`Stepped`]) against
//! the world's cluster, the scenario's faults carried out at their times as the live drill
//! carries them out (the steady state checked first, node faults one after the other, each
//! operator action waited out), and its network faults put in force on the world's network.
//! What comes out is what the live drill hands the judge ([`crate::drill::judge`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pbxlab_loadgen::engine::{Config, LegPhase};
use pbxlab_loadgen::metrics::Metric;
use pbxlab_loadgen::{LoadReport, Progress, Stepped, Threshold};
use pbxlab_scenario::{
    CM_ENDPOINT, DrillSpec, FaultSpec, LOAD_ENDPOINT, NetFaultSpec, NetKind, Scenario,
};

use super::explore::Invariants;
use super::net::{Effect, NetStats, Rule};
use super::{Action, Peer, World, ns};
use crate::Error;
use crate::Nanos;
use crate::cluster::{Options, Records};
use crate::drill::{CmFigures, Injected, Phase, Sample, steady_phase};

/// The load generator's SIP and RTP ports in the world, on the Call Manager's address (the
/// servers' ports start at 20,000).
pub const LOAD_SIP_PORT: u16 = 40_000;
pub const LOAD_RTP_PORT: u16 = 40_002;

/// Where the load generator sends from in a world whose Call Manager is at `cm`: SIP, RTP.
pub fn load_addrs(cm: SocketAddr) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(cm.ip(), LOAD_SIP_PORT),
        SocketAddr::new(cm.ip(), LOAD_RTP_PORT),
    )
}

impl Peer for Stepped {
    fn addrs(&self) -> Vec<SocketAddr> {
        Stepped::addrs(self).to_vec()
    }
    fn handle(&mut self, now: Nanos, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        Stepped::handle(self, now, from, to, bytes);
    }
    fn next_wakeup(&self) -> Option<Nanos> {
        Stepped::next_wakeup(self)
    }
    fn advance(&mut self, now: Nanos, send: &mut dyn FnMut(SocketAddr, SocketAddr, &[u8])) {
        Stepped::advance(self, now, send);
    }
}

/// A network fault as it was put in force.
#[derive(Debug, Clone, PartialEq)]
pub struct NetApplied {
    pub spec: NetFaultSpec,
    pub at: Duration,
    /// Why it could not be (a name that is no endpoint, a heal of no partition).
    pub error: Option<String>,
}

/// Told of each closed interval of the load, with the world as it is then.
pub type OnProgress<'a> = dyn FnMut(&World, &Progress) + 'a;

/// What a caller watches a virtual drill with; all optional.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Each closed interval of the load, with the world as it is then.
    pub progress: Option<&'a mut OnProgress<'a>>,
    /// Once set (Ctrl-C), the load stops starting calls, hangs up and reports, and no further
    /// fault is carried out: what was measured is kept, as in the live drill.
    pub stop: Option<&'a AtomicBool>,
    /// Done to the world before it runs: plants a bug for a test to find.
    #[cfg(test)]
    pub plant: Option<fn(&mut World)>,
}

/// What a check found wrong, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// Everything a virtual drill observed.
pub struct VirtualRun {
    pub report: LoadReport,
    pub records: Records,
    pub samples: Vec<Sample>,
    pub injected: Vec<Injected>,
    pub network: Vec<NetApplied>,
    pub steady: Option<Phase>,
    /// The balancer's events, as the live status gives them.
    pub events: Vec<String>,
    pub detection_bound: Duration,
    /// Instants stepped through and datagrams delivered.
    pub steps: u64,
    pub datagrams: u64,
    pub net: NetStats,
    /// The first broken invariant of an explorer's run, if any (the run ends there).
    pub violation: Option<Violation>,
    /// The virtual time the run ended at.
    pub end: Duration,
    /// Each Call Manager as the run left it, when there are standbys.
    pub callmanagers: Vec<CmState>,
}

/// A Call Manager of the group at the end of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CmState {
    pub name: String,
    pub role: &'static str,
    pub cut: bool,
    pub term: u64,
    pub applied: u64,
    pub commit: u64,
    pub stats: crate::ha::HaStats,
}

/// What to run: the scenario's cluster, its node faults at the times the drill gives them
/// (sorted), its network faults, the drill's SLOs, and the load configured for it
/// (`cfg.target` the Call Manager at `opts.sip`, `cfg.local` and `cfg.rtp_local` from
/// [`load_addrs`]).
pub struct Drill<'a> {
    pub scenario: &'a Scenario,
    pub faults: &'a [FaultSpec],
    pub net_faults: &'a [NetFaultSpec],
    pub spec: &'a DrillSpec,
    pub opts: &'a Options,
    pub seed: u64,
    /// An explorer's run: the [`Invariants`] are checked after every step, and the faults are
    /// carried out whatever the steady state (a drill's hypothesis calls them off when it
    /// breaks; an explorer's random network faults may well break it, and it hunts for lost
    /// sessions, not for SLOs).
    pub explore: bool,
}

/// A Call Manager fault being watched: what held at the fault, checked again once the
/// takeover (if it took the active away) has settled.
struct CmWatch {
    /// The fault's place in the timeline and when it began.
    fault: usize,
    at: Nanos,
    index: usize,
    before: Option<usize>,
    established: Vec<String>,
    setups: Vec<u64>,
    unserved: u64,
    check_at: Option<Nanos>,
    takeover: Option<Nanos>,
    /// The fault starts the Call Manager afresh: it catches up from a snapshot.
    afresh: bool,
}

impl CmWatch {
    fn start(
        world: &mut World,
        load: &Stepped,
        fault: usize,
        index: usize,
        afresh: bool,
    ) -> CmWatch {
        world.watch_silence();
        let engine = load.engine();
        CmWatch {
            fault,
            at: world.now(),
            index,
            before: world.active_index(),
            established: engine.dialogs(),
            setups: engine.setups(),
            unserved: world.vip_unserved,
            check_at: None,
            takeover: None,
            afresh,
        }
    }

    fn hit_active(&self) -> bool {
        self.before == Some(self.index)
    }

    /// The figures, once their time has come (or `force`: the run ends).
    fn poll(
        &mut self,
        world: &World,
        load: &Stepped,
        settle: Nanos,
        force: bool,
    ) -> Option<CmFigures> {
        let now = world.now();
        if self.check_at.is_none() {
            if !self.hit_active() {
                self.check_at = Some(self.at + settle);
            } else if let Some((t, _)) = world.vip_sender_after(self.at, self.index) {
                self.takeover = Some(t - self.at);
                self.check_at = Some(t + settle);
            } else if now >= self.at + ns(crate::drill::CM_WATCH_LIMIT) {
                self.check_at = Some(now);
            }
        }
        if !force && self.check_at.is_none_or(|c| now < c) {
            return None;
        }
        let engine = load.engine();
        let cm = world.cm();
        let held: std::collections::HashSet<String> = engine.dialogs().into_iter().collect();
        let established_lost = self
            .established
            .iter()
            .filter(|id| held.contains(*id))
            .filter(|id| cm.is_none_or(|cm| cm.call_view(id).is_none()))
            .count() as u64;
        let (mut registrations, mut registrations_lost) = (0, 0);
        for user in engine.registered_users() {
            registrations += 1;
            if cm.is_none_or(|cm| !cm.is_registered(user, now)) {
                registrations_lost += 1;
            }
        }
        let (mut completed, mut failed, mut pending) = (0, 0, 0);
        for &leg in &self.setups {
            match engine.leg_phase(leg) {
                LegPhase::Up => completed += 1,
                LegPhase::Gone => failed += 1,
                LegPhase::Setup => pending += 1,
            }
        }
        let name = |i: Option<usize>| i.map(|i| format!("cm-{}", i + 1));
        let (fenced_us, handover_gap_us, overlap) =
            crate::drill::handover(world.serving_log(), self.at, self.index, self.hit_active());
        Some(CmFigures {
            before: name(self.before),
            after: name(world.serving_index()),
            hit_active: self.hit_active(),
            takeover_us: self.takeover.map(|t| t / 1000),
            fenced_us,
            handover_gap_us,
            overlap,
            established: self.established.len() as u64,
            established_lost,
            registrations,
            registrations_lost,
            registrations_missing: registrations_lost,
            called: None,
            setups: self.setups.len() as u64,
            setups_completed: completed,
            setups_failed: failed,
            setups_pending: pending,
            longest_silence_us: world.longest_silence() / 1000,
            unserved: world.vip_unserved - self.unserved,
            checked_at: Duration::from_nanos(now),
            snapshot_bytes: self
                .afresh
                .then(|| world.replicas().nth(self.index))
                .flatten()
                .filter(|(_, r, alive, _)| *alive && r.stats.snapshots_taken > 0)
                .map(|(_, r, _, _)| r.stats.snapshot_bytes),
        })
    }
}

/// Where the node-fault timeline is.
enum Stage {
    /// Waiting for the first fault's time, checking the calls failed so far.
    Before,
    /// The steady state held: fault `next` is the next to carry out; `action` is one under
    /// way (which fault, the action, when it began).
    Faults {
        next: usize,
        action: Option<(usize, Action, Nanos)>,
    },
    /// Nothing more to carry out (all done, or the steady state broke).
    Over,
}

impl Drill<'_> {
    /// Runs the drill to the end of its load (and of an action under way then).
    pub fn run(
        &self,
        cfg: Config,
        thresholds: Vec<Threshold>,
        hooks: Hooks<'_>,
    ) -> Result<VirtualRun, Error> {
        #[cfg(test)]
        let plant = hooks.plant;
        let Hooks {
            mut progress, stop, ..
        } = hooks;
        let mut stopped = false;
        let mut world = World::new(self.scenario, self.opts, self.seed)?;
        #[cfg(test)]
        if let Some(plant) = plant {
            plant(&mut world);
        }
        let mut invariants = self.explore.then(|| Invariants::new(&world));
        let mut load = Stepped::new(cfg, Duration::from_secs(1), thresholds);
        world.attach(&load);
        let endpoints = Endpoints::of(&world, &load);
        let detection_bound = world
            .cm()
            .map(|cm| cm.balancer().health().detection_bound())
            .unwrap_or_default();
        let mut samples: Vec<Sample> = Vec::new();
        let mut injected = Vec::new();
        let mut watches: Vec<CmWatch> = Vec::new();
        let mut cm_figures: Vec<(usize, CmFigures)> = Vec::new();
        let settle = ns(self.spec.settle);
        let mut network = Vec::new();
        let mut net_next = 0;
        let mut net_faults: Vec<&NetFaultSpec> = self.net_faults.iter().collect();
        net_faults.sort_by_key(|f| f.at);
        let mut steady = None;
        let mut stage = if self.faults.is_empty() {
            Stage::Over
        } else {
            Stage::Before
        };
        let mut violation = None;
        let spec = self.spec;
        loop {
            let timeline_next = match &stage {
                Stage::Before => self.faults.first().map(|f| ns(f.at)),
                Stage::Faults {
                    action: Some((_, a, _)),
                    ..
                } => a.deadline(),
                Stage::Faults { next, .. } => self.faults.get(*next).map(|f| ns(f.at)),
                Stage::Over => None,
            };
            let net_due = net_faults.get(net_next).map(|f| ns(f.at));
            let t = [Some(world.next_event(&load)), timeline_next, net_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(Nanos::MAX);
            if t == Nanos::MAX {
                break;
            }
            world.step(t, &mut load);
            let now = world.now();
            for p in load.take_progress() {
                if let Some(f) = progress.as_deref_mut() {
                    f(&world, &p);
                }
                let i = &p.interval;
                samples.push(Sample {
                    at: p.elapsed,
                    calls_failed: p.calls_failed,
                    active: p.active_calls,
                    setup_p99_us: i.p99_us[Metric::Setup as usize],
                    setup_count: i.counts[Metric::Setup as usize],
                });
            }
            if !stopped && stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                stopped = true;
                load.stop(now);
                net_next = net_faults.len();
                if matches!(stage, Stage::Before | Stage::Faults { action: None, .. }) {
                    stage = Stage::Over;
                }
            }
            // Network faults, while the timeline has not been called off.
            while let Some(f) = net_faults.get(net_next).filter(|f| ns(f.at) <= now) {
                net_next += 1;
                if !self.explore && steady.as_ref().is_some_and(|s: &Phase| !s.pass) {
                    continue;
                }
                let error = endpoints.apply(&mut world, f).err();
                network.push(NetApplied {
                    spec: (*f).clone(),
                    at: Duration::from_nanos(now),
                    error,
                });
            }
            stage = match stage {
                Stage::Before => {
                    let first = self.faults.first().map_or(Duration::MAX, |f| f.at);
                    let failed = samples.last().map_or(0, |s| s.calls_failed);
                    if load.is_finished() {
                        Stage::Over
                    } else if Duration::from_nanos(now) >= first || failed > spec.failed {
                        let window = (first.saturating_sub(spec.steady), first);
                        let s = steady_phase(spec, &samples, &world.records, window);
                        let pass = s.pass || self.explore;
                        steady = Some(s);
                        if pass {
                            Stage::Faults {
                                next: 0,
                                action: None,
                            }
                        } else {
                            load.stop(now);
                            Stage::Over
                        }
                    } else {
                        Stage::Before
                    }
                }
                Stage::Faults { next, action } => {
                    // Stopped: the action under way is waited out, and nothing more begins.
                    let next = if stopped { self.faults.len() } else { next };
                    self.carry_on(&mut world, &load, next, action, &mut injected, &mut watches)
                }
                Stage::Over => Stage::Over,
            };
            watches.retain_mut(|w| match w.poll(&world, &load, settle, false) {
                Some(f) => {
                    cm_figures.push((w.fault, f));
                    false
                }
                None => true,
            });
            if let Some(inv) = invariants.as_mut()
                && let Err(what) = inv.check(&world, &load)
            {
                violation = Some(Violation {
                    at: Duration::from_nanos(now),
                    what,
                });
                break;
            }
            let acting = matches!(
                stage,
                Stage::Faults {
                    action: Some(_),
                    ..
                }
            );
            if load.is_finished() && !acting {
                break;
            }
        }
        for mut w in watches {
            if let Some(f) = w.poll(&world, &load, settle, true) {
                cm_figures.push((w.fault, f));
            }
        }
        for (fault, figures) in cm_figures {
            if let Some(spec) = self.faults.get(fault)
                && let Some(inj) = injected
                    .iter_mut()
                    .find(|i| &i.spec == spec && i.cm.is_none())
            {
                inj.cm = Some(figures);
            }
        }
        let callmanagers = if world.replicas().count() > 1 {
            world
                .replicas()
                .map(|(name, r, alive, cut)| CmState {
                    name,
                    role: if alive { r.role().name() } else { "down" },
                    cut,
                    term: r.term(),
                    applied: r.applied(),
                    commit: r.commit(),
                    stats: r.stats.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = world.now();
        let (steps, datagrams) = world.work();
        Ok(VirtualRun {
            report: load.finish(now),
            records: std::mem::take(&mut world.records),
            samples,
            injected,
            network,
            steady,
            events: std::mem::take(&mut world.log),
            detection_bound,
            steps,
            datagrams,
            net: world.net.stats,
            violation,
            end: Duration::from_nanos(now),
            callmanagers,
        })
    }

    /// Carries the node faults on from fault `next` (with `action` under way): polls the
    /// action, and starts the next fault once its time has come and the load still runs.
    fn carry_on(
        &self,
        world: &mut World,
        load: &Stepped,
        mut next: usize,
        mut action: Option<(usize, Action, Nanos)>,
        injected: &mut Vec<Injected>,
        watches: &mut Vec<CmWatch>,
    ) -> Stage {
        loop {
            let now = world.now();
            if let Some((k, mut a, began)) = action.take() {
                if !world.poll(&mut a) {
                    return Stage::Faults {
                        next,
                        action: Some((k, a, began)),
                    };
                }
                if let Some(spec) = self.faults.get(k) {
                    injected.push(Injected {
                        spec: spec.clone(),
                        at: Duration::from_nanos(began),
                        finished: Duration::from_nanos(now),
                        error: a.error,
                        cm: None,
                    });
                }
            }
            let Some(fault) = self.faults.get(next) else {
                return Stage::Over;
            };
            if load.is_finished() {
                return Stage::Over;
            }
            if ns(fault.at) > now {
                return Stage::Faults { next, action: None };
            }
            if let Some(index) = world.cm_index(&fault.server) {
                let afresh = crate::drill::starts_afresh(fault.action);
                watches.push(CmWatch::start(world, load, next, index, afresh));
            }
            match world.act(fault.action, &fault.server) {
                Ok(a) => action = Some((next, a, now)),
                Err(error) => injected.push(Injected {
                    spec: fault.clone(),
                    at: Duration::from_nanos(now),
                    finished: Duration::from_nanos(now),
                    error: Some(error),
                    cm: None,
                }),
            }
            next += 1;
        }
    }
}

/// The world's endpoints by the names network faults give them.
struct Endpoints {
    /// The virtual IP and, with standbys, every Call Manager's own address.
    cm: Vec<SocketAddr>,
    load: Vec<SocketAddr>,
    servers: Vec<(String, SocketAddr)>,
}

impl Endpoints {
    fn of(world: &World, load: &Stepped) -> Endpoints {
        let a = world.addresses();
        Endpoints {
            cm: std::iter::once(a.cm).chain(a.replicas).collect(),
            load: load.addrs().to_vec(),
            servers: a.servers,
        }
    }

    fn resolve(&self, names: &[String]) -> Result<Vec<SocketAddr>, String> {
        let mut out = Vec::new();
        for name in names {
            match name.as_str() {
                CM_ENDPOINT => out.extend(&self.cm),
                LOAD_ENDPOINT => out.extend(&self.load),
                server => match self.servers.iter().find(|(n, _)| n == server) {
                    Some((_, addr)) => out.push(*addr),
                    None => return Err(format!("no endpoint named {server:?}")),
                },
            }
        }
        Ok(out)
    }

    /// Puts `f` in force on the world's network from now.
    fn apply(&self, world: &mut World, f: &NetFaultSpec) -> Result<(), String> {
        let members = self.resolve(&f.endpoints)?;
        let now = world.now();
        let until = f.lasts.map(|d| now.saturating_add(ns(d)));
        let effect = match f.kind {
            NetKind::Loss { fraction } => Effect::Loss(fraction),
            NetKind::Delay { delay, jitter } => Effect::Delay {
                delay_ns: ns(delay),
                jitter_ns: ns(jitter),
            },
            NetKind::Duplicate { fraction } => Effect::Duplicate(fraction),
            NetKind::Reorder { fraction, by } => Effect::Reorder {
                fraction,
                by_ns: ns(by),
            },
            NetKind::Partition => {
                world.net.partition(members, until);
                return Ok(());
            }
            NetKind::Heal => {
                return if world.net.heal(&members) {
                    Ok(())
                } else {
                    Err(format!(
                        "no partition of exactly {} to heal",
                        f.endpoints.join(", ")
                    ))
                };
            }
        };
        world.net.add_rule(Rule {
            effect,
            endpoints: members,
            until,
        });
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests;

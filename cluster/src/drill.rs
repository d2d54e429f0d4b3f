//! The drill's judge: from what the Call Manager recorded ([`Records`]), the load's
//! per-second [`Sample`]s and the callers' RTP [`Silence`]s, and the faults as they were
//! [`Injected`], the verdict of a failover drill: the steady state before the first fault,
//! each fault's detection, reassignment, media gap, dropped calls and SLOs during and after
//! it, and the drill's overall pass; and that verdict as text and JSON.
//!
//! Nothing here starts a cluster or a load, waits, or carries out a fault: `pbxlab drill` does
//! that and hands the judge what it observed, so the judge can be tested on hand-built
//! records.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pbxlab_balancer::EventKind;
use pbxlab_loadgen::LoadReport;
use pbxlab_loadgen::report::{DriverPace, render_pace};
use pbxlab_scenario::{DrillSpec, FaultSpec, Scenario};
use serde_json::json;

use crate::cluster::Records;

/// How far past its bound a detection may land and still count as within it: the Call
/// Manager's timers are served on a 1 ms grid by a thread the kernel may wake a little late.
pub const DETECTION_SLACK: Duration = Duration::from_millis(5);

/// The scenario's node faults in the order a drill carries them out, each at the time it is
/// carried out: a fault the probes must find lands at a phase of their grid drawn from the
/// seed (at the scenario's exact second it would fall at the same phase in every run, the grid
/// counting from the cluster's start, and detection would always read the same). The live
/// drill and the virtual one both take their timeline from here, so one seed is one timeline.
///
/// # Errors
/// The scenario has no `[[fault]]`, or its `[drill] steady` window is longer than the time
/// before the first fault.
pub fn timeline(scenario: &Scenario) -> Result<Vec<FaultSpec>, String> {
    let mut faults = scenario.faults.clone();
    let mut phase = pbxlab_sim::rng::Rng::stream(scenario.seed, "drill fault phase");
    let interval_ns = u64::try_from(scenario.health.probe_interval.as_nanos()).unwrap_or(0);
    for f in &mut faults {
        if f.action.is_silent() && interval_ns > 0 {
            f.at += Duration::from_nanos(phase.below(interval_ns));
        }
    }
    faults.sort_by_key(|f| f.at);
    let Some(first) = faults.first().map(|f| f.at) else {
        return Err(if scenario.net_faults.is_empty() {
            format!(
                "scenario {:?} has no [[fault]]: a drill needs at least one",
                scenario.name
            )
        } else {
            format!(
                "scenario {:?} has only network faults: a drill needs at least one node fault \
                 (a [[fault]] with a server), whose windows its verdict judges",
                scenario.name
            )
        });
    };
    let steady = scenario.drill.clone().unwrap_or_default().steady;
    if steady > first {
        return Err(format!(
            "[drill] steady ({:.1} s) is longer than the time before the first fault ({:.1} s)",
            steady.as_secs_f64(),
            first.as_secs_f64()
        ));
    }
    Ok(faults)
}

/// One closed interval of the load, stamped on the cluster's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Duration,
    /// Calls failed since the load began.
    pub calls_failed: u64,
    /// Calls up at the end of the interval.
    pub active: usize,
    pub setup_p99_us: u64,
    /// Setups measured in the interval (its p99 means nothing without any).
    pub setup_count: u64,
}

/// What happened when a fault was carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub spec: FaultSpec,
    /// On the cluster's clock.
    pub at: Duration,
    /// When the operator action returned (an upgrade takes a while).
    pub finished: Duration,
    pub error: Option<String>,
    /// What a fault of a Call Manager did (measured where the drill can see every replica:
    /// the virtual drill).
    pub cm: Option<CmFigures>,
}

/// The longest a Call Manager fault is watched for a takeover before its figures are taken
/// anyway.
pub const CM_WATCH_LIMIT: Duration = Duration::from_secs(10);

/// From a log of (when, Call Manager, serves) at each change: for a fault at `at` on Call
/// Manager `index` that took the serving one away, how long after the fault it stopped
/// serving and how long after that another began (µs), and whether another began first.
pub fn handover(
    log: &[(u64, usize, bool)],
    at: u64,
    index: usize,
    hit_active: bool,
) -> (Option<u64>, Option<u64>, bool) {
    let stopped = log
        .iter()
        .find(|&&(t, i, serving)| t >= at && i == index && !serving)
        .map(|&(t, _, _)| t);
    let began = log
        .iter()
        .find(|&&(t, i, serving)| t >= at && i != index && serving)
        .map(|&(t, _, _)| t);
    let overlap = matches!((stopped, began), (Some(s), Some(b)) if hit_active && b < s);
    match (hit_active, stopped, began) {
        (true, Some(s), Some(b)) => (
            Some(s.saturating_sub(at) / 1000),
            Some(b.saturating_sub(s) / 1000),
            overlap,
        ),
        _ => (None, None, overlap),
    }
}

/// What a Call Manager fault did to the cluster's signalling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmFigures {
    /// The Call Manager serving the virtual IP before the fault, and the one after it.
    pub before: Option<String>,
    pub after: Option<String>,
    /// The fault took the serving Call Manager away.
    pub hit_active: bool,
    /// From the fault to the new active's first datagram from the virtual IP to a caller (not a probe to a node).
    pub takeover_us: Option<u64>,
    /// From the fault until the old active stopped serving (a partitioned one runs on until
    /// its lease is out; a failed one stops at once), and from then until another served.
    pub fenced_us: Option<u64>,
    pub handover_gap_us: Option<u64>,
    /// The new active began before the old one stopped: two served at once.
    pub overlap: bool,
    /// Calls up at the fault, and those of them the generator still held afterwards that the
    /// serving Call Manager no longer knew (their BYE or re-INVITE would fail).
    pub established: u64,
    pub established_lost: u64,
    /// Registrations in force at the fault and not expired by the check, and those lost: in a
    /// live drill the users a call through the virtual IP did not reach ([`CmFigures::called`]),
    /// in virtual time those the serving Call Manager's registrar did not hold.
    pub registrations: u64,
    pub registrations_lost: u64,
    /// Of them, those the serving Call Manager's registrar did not hold at the check.
    pub registrations_missing: u64,
    /// What calling each of them found (live drills).
    pub called: Option<pbxlab_loadgen::reach::Reached>,
    /// Calls being set up at the fault, and what became of them by the check.
    pub setups: u64,
    pub setups_completed: u64,
    pub setups_failed: u64,
    pub setups_pending: u64,
    /// The generator's longest wait for any SIP datagram from the virtual IP, from the fault
    /// to the check.
    pub longest_silence_us: u64,
    /// Datagrams that reached the virtual IP while nobody served it.
    pub unserved: u64,
    /// When the check was made, on the cluster's clock.
    pub checked_at: Duration,
    /// A Call Manager the fault started afresh (`recover`, `restart`, `upgrade`) and that
    /// caught up by a snapshot by the check: the snapshot's size.
    pub snapshot_bytes: Option<u64>,
}

/// Whether `verb` starts a Call Manager afresh, to catch up from the serving one.
pub fn starts_afresh(verb: pbxlab_scenario::Verb) -> bool {
    use pbxlab_scenario::Verb;
    matches!(verb, Verb::Recover | Verb::Restart | Verb::Upgrade)
}

/// A silence a caller heard: when it began, on the cluster's clock, and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    pub at: Duration,
    pub len_ns: u64,
}

/// The callers' RTP gaps of a load report, moved onto the clock of a cluster that started at
/// `cluster_epoch` (none: the load kept the cluster's clock, as in a virtual drill).
pub fn silences(report: &LoadReport, cluster_epoch: Option<Instant>) -> Vec<Silence> {
    let offset = match (report.media_epoch, cluster_epoch) {
        (Some(e), Some(c)) => e.saturating_duration_since(c),
        _ => Duration::ZERO,
    };
    report
        .gaps
        .iter()
        .map(|g| Silence {
            at: offset + Duration::from_nanos(g.start_ns),
            len_ns: g.len_ns,
        })
        .collect()
}

/// What a drill observed, for [`judge`].
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The Call Manager's events, moved calls and dropped calls.
    pub records: &'a Records,
    /// One per second of the load, in order.
    pub samples: &'a [Sample],
    /// The callers' silences, on the cluster's clock.
    pub gaps: &'a [Silence],
}

/// The verdict of one phase: what was measured and which SLOs broke.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phase {
    pub from: Duration,
    pub to: Duration,
    /// Calls that failed in the window (for the steady state: since the load began).
    pub calls_failed: u64,
    /// The worst per-second setup p99 of the window.
    pub setup_p99_max_us: u64,
    /// The fewest calls up in any second of the window.
    pub min_active: usize,
    /// The SLOs that broke, in words.
    pub broken: Vec<String>,
    pub pass: bool,
    /// For the steady state: everything the balancer did before the first fault (servers
    /// down or up, alerts, moved and dropped calls), one line each with its time.
    pub balancer: Vec<String>,
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

/// The steady-state hypothesis: the SLOs hold in the window before the first fault, no call
/// failed at all before it (the ramp-up included), and the balancer stayed still in the
/// window: a server that went down or up, a call moved or dropped there means the cluster was
/// not steady, and a fault drilled on it would measure nothing. What the balancer did before
/// the first fault is listed either way.
#[must_use]
pub fn steady_phase(
    spec: &DrillSpec,
    samples: &[Sample],
    records: &Records,
    window: (Duration, Duration),
) -> Phase {
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
    let (lines, unsteady) = balancer_before(records, window);
    p.balancer = lines;
    p.broken.extend(unsteady);
    p.pass = p.broken.is_empty();
    p
}

/// What the balancer did before `window.1`, one line each, in time order; and what of it, in
/// the window, breaks the steady state.
fn balancer_before(
    records: &Records,
    (from, to): (Duration, Duration),
) -> (Vec<String>, Vec<String>) {
    let inside = |at: Duration| at >= from && at < to;
    let mut lines: Vec<(Duration, String)> = Vec::new();
    let mut broken = Vec::new();
    for e in records.events.iter().filter(|e| e.at < to) {
        let what = crate::cluster::event_words(&e.kind);
        if inside(e.at) && matches!(e.kind, EventKind::Down | EventKind::Up) {
            broken.push(format!(
                "{} went {what} at {:.3} s, inside the window",
                e.server,
                e.at.as_secs_f64()
            ));
        }
        lines.push((
            e.at,
            format!("{:.3} s {} {what}", e.at.as_secs_f64(), e.server),
        ));
    }
    // Moves and drops come in bursts (one plan each): one line per instant.
    let mut bursts = |times: &mut dyn Iterator<Item = Duration>, what: &str| {
        let mut times: Vec<Duration> = times.filter(|&at| at < to).collect();
        times.sort_unstable();
        for chunk in times.chunk_by(|a, b| a == b) {
            let at = chunk[0];
            let n = chunk.len();
            let calls = if n == 1 { "call" } else { "calls" };
            let line = format!("{:.3} s {n} {calls} {what}", at.as_secs_f64());
            if inside(at) {
                broken.push(format!("{line}, inside the window"));
            }
            lines.push((at, line));
        }
    };
    bursts(
        &mut records
            .reassigned
            .iter()
            .map(|r| Duration::from_nanos(r.at)),
        "moved",
    );
    bursts(
        &mut records.dropped.iter().map(|d| Duration::from_nanos(d.at)),
        "dropped",
    );
    lines.sort_by_key(|(at, _)| *at);
    (lines.into_iter().map(|(_, l)| l).collect(), broken)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Count, p50, p99 and max of a set of durations, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Spread {
    /// The spread of these values (microseconds), as a histogram of 1 us to an hour reads it.
    pub fn of(values_us: impl Iterator<Item = u64>) -> Spread {
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
#[derive(Debug, Clone, PartialEq)]
pub struct FaultVerdict {
    pub injected: Injected,
    /// The longest a takeover may take (Call Manager faults).
    pub takeover_bound: Option<Duration>,
    /// Until the next fault (or the end of the load).
    pub window_end: Duration,
    /// From the fault to the server's Down event (faults the probes must find).
    pub detection: Option<Duration>,
    pub detection_bound: Option<Duration>,
    /// Of the bound: the takeovers of Call Manager faults that came while the server was
    /// still to be found (nobody probed meanwhile).
    pub takeover_in_bound: Duration,
    pub alerts: Vec<String>,
    /// How long each call moved off the server took to be re-INVITEd onto its new node.
    pub reassignment: Spread,
    /// How long the callers heard nothing.
    pub media_gap: Spread,
    /// Call-ID and reason of each call the failover dropped.
    pub dropped: Vec<(String, &'static str)>,
    /// From the fault until it was detected and the cluster settled.
    pub during: Phase,
    /// From then to the next fault.
    pub after: Phase,
    /// Why the fault fails the drill; empty: it passes.
    pub broken: Vec<String>,
}

/// The whole drill, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillVerdict {
    /// None: the load ended before the first fault's time.
    pub steady: Option<Phase>,
    pub faults: Vec<FaultVerdict>,
    /// Faults the drill never reached (the load ended first, or the steady state failed).
    pub skipped: usize,
    pub pass: bool,
    /// How pbxlab's own threads kept their schedules ([`DrillVerdict::with_emulator`]).
    pub emulator: Vec<DriverPace>,
    /// The drill failed while pbxlab itself was behind: what broke may be this machine's
    /// doing, so the drill says nothing of the cluster. (A drill that passed while behind
    /// still passes: lateness only makes its figures worse.)
    pub invalid: bool,
}

/// What a drill's verdict comes to, and its exit code's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// An SLO broke (exit 99).
    Fail,
    /// The drill failed while this machine was the bottleneck (exit 4).
    Invalid,
}

/// Judges a drill: each injected fault from what the Call Manager recorded and the callers
/// saw, and the drill as a whole (it passes if the steady state held, every fault passed and
/// none of the `planned` faults was skipped). `detection_bound` is the health checks' (see
/// `HealthConfig::detection_bound`).
#[must_use]
pub fn judge(
    spec: &DrillSpec,
    detection_bound: Duration,
    injected: &[Injected],
    seen: &Observed<'_>,
    steady: Option<Phase>,
    planned: usize,
) -> DrillVerdict {
    let Observed {
        records,
        samples,
        gaps,
    } = *seen;
    let end = samples.last().map_or(Duration::ZERO, |s| s.at);
    let mut faults = Vec::new();
    for (k, inj) in injected.iter().enumerate() {
        // A Call Manager fault that comes while a node fault is still being found or settled
        // does not end that fault's window: its detection, moves and media gap are still the
        // node fault's. A Call Manager fault's window ends at the next fault.
        let window_end = injected
            .iter()
            .skip(k + 1)
            .find(|n| inj.cm.is_some() || n.cm.is_none())
            .map_or(end.max(inj.finished), |n| n.at);
        let silent = inj.spec.action.is_silent();
        let down = records
            .events
            .iter()
            .find(|e| e.server == inj.spec.server && e.kind == EventKind::Down && e.at >= inj.at);
        let detection = silent
            .then(|| down.map(|e| e.at.saturating_sub(inj.at)))
            .flatten();
        // A Call Manager's failure is not the balancer's to detect: its takeover is its
        // detection.
        let cm = inj.cm.as_ref();
        // While a Call Manager takeover is under way nobody probes: its takeover is added to
        // the bound of a node fault it came in the middle of.
        let takeover_in_bound: Duration = injected
            .iter()
            .filter(|o| o.at >= inj.at && o.at <= inj.at + detection_bound)
            .filter_map(|o| o.cm.as_ref().filter(|c| c.hit_active)?.takeover_us)
            .map(Duration::from_micros)
            .sum();
        let (detection, detection_bound) = match cm {
            Some(_) => (None, None),
            None => (
                detection,
                silent.then_some(detection_bound + takeover_in_bound),
            ),
        };
        let takeover = cm.and_then(|c| c.takeover_us).map(Duration::from_micros);
        // The fault's effect lasts until it is detected (or taken over) and the cluster has
        // settled.
        let settled = inj
            .finished
            .max(inj.at + detection.or(takeover).unwrap_or_default())
            + spec.settle;
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
                .filter(|g| g.at >= gap_from && g.at < during_end)
                .map(|g| g.len_ns / 1000),
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
        if let Some(c) = cm {
            match takeover {
                Some(t) if t > spec.takeover => broken.push(format!(
                    "takeover took {:.0} ms (at most {:.0} ms)",
                    t.as_secs_f64() * 1000.0,
                    spec.takeover.as_secs_f64() * 1000.0
                )),
                None if c.hit_active => {
                    broken.push("no Call Manager took over the virtual IP".to_owned());
                }
                _ => {}
            }
            if c.overlap {
                broken.push(format!(
                    "{} began serving before {} stopped: two Call Managers served at once",
                    c.after.as_deref().unwrap_or("another"),
                    c.before.as_deref().unwrap_or("the old active")
                ));
            }
            if c.established_lost > 0 {
                broken.push(format!(
                    "{} established calls lost (their dialogs unknown to {})",
                    c.established_lost,
                    c.after.as_deref().unwrap_or("any Call Manager")
                ));
            }
            match &c.called {
                Some(r) if r.lost() > 0 => broken.push(format!(
                    "{} registrations lost: called through the virtual IP, {} users were not \
                     bound, {} did not answer and {} were refused",
                    r.lost(),
                    r.unbound.len(),
                    r.unanswered.len(),
                    r.refused.len()
                )),
                None if c.registrations_lost > 0 => broken.push(format!(
                    "{} registrations lost (bindings missing at {})",
                    c.registrations_lost,
                    c.after.as_deref().unwrap_or("any Call Manager")
                )),
                _ => {}
            }
            if let Some(r) = c.called.as_ref().filter(|r| r.hangups_unanswered > 0) {
                broken.push(format!(
                    "{} of the calls that checked the registrations could not be ended (no answer to their BYE)",
                    r.hangups_unanswered
                ));
            }
        } else if silent {
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
            takeover_bound: cm.map(|_| spec.takeover),
            window_end,
            detection,
            detection_bound,
            takeover_in_bound,
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
        emulator: Vec::new(),
        invalid: false,
    }
}

impl DrillVerdict {
    /// Takes how pbxlab's own threads kept their schedules: a failed drill while any was
    /// saturated is invalid.
    #[must_use]
    pub fn with_emulator(mut self, drivers: Vec<DriverPace>) -> DrillVerdict {
        self.invalid = !self.pass && drivers.iter().any(|d| d.saturated);
        self.emulator = drivers;
        self
    }

    pub fn outcome(&self) -> Outcome {
        if self.pass {
            Outcome::Pass
        } else if self.invalid {
            Outcome::Invalid
        } else {
            Outcome::Fail
        }
    }

    /// The verdict as the text report's closing tables.
    pub fn render(&self, name: &str) -> String {
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
                if !s.balancer.is_empty() {
                    let _ = writeln!(out, "    before the first fault, the balancer:");
                    for line in &s.balancer {
                        let _ = writeln!(out, "      {line}");
                    }
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
                let takeover = if f.takeover_in_bound.is_zero() {
                    String::new()
                } else {
                    format!(
                        " + the Call Manager takeover's {:.0} ms",
                        ms(f.takeover_in_bound)
                    )
                };
                let _ = writeln!(
                    out,
                    "    detection        {} (bound {:.0} ms = down_after x interval + timeout{takeover}, +5 ms timer slack)",
                    f.detection
                        .map_or("never".to_owned(), |d| format!("{:.0} ms", ms(d))),
                    ms(b)
                );
            }
            if let Some(c) = &i.cm {
                let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "none".to_owned());
                let _ = writeln!(
                    out,
                    "    serving          {} before, {} after",
                    name(&c.before),
                    name(&c.after)
                );
                if c.hit_active {
                    let _ = writeln!(
                        out,
                        "    takeover         {} (at most {:.0} ms); {} datagrams reached the virtual IP while nobody served it",
                        c.takeover_us.map_or("never".to_owned(), |t| format!(
                            "{:.1} ms",
                            t as f64 / 1000.0
                        )),
                        f.takeover_bound.map_or(0.0, ms),
                        c.unserved
                    );
                }
                if let (Some(f), Some(g)) = (c.fenced_us, c.handover_gap_us) {
                    let _ = writeln!(
                        out,
                        "    fencing          {} stopped serving {:.1} ms after the fault, {:.1} ms before {} began",
                        name(&c.before),
                        f as f64 / 1000.0,
                        g as f64 / 1000.0,
                        name(&c.after)
                    );
                }
                let _ = writeln!(
                    out,
                    "    established      {} up at the fault, {} lost",
                    c.established, c.established_lost
                );
                let _ = writeln!(
                    out,
                    "    registrations    {} in force at {:.1} s, {} lost{}",
                    c.registrations,
                    c.checked_at.as_secs_f64(),
                    c.registrations_lost,
                    c.called.as_ref().map_or_else(
                        || " (checked at the registrar)".to_owned(),
                        |r| format!(
                            ": each called, {} answered, {} not bound, {} unanswered, {} refused in {:.1} s",
                            r.answered,
                            r.unbound.len(),
                            r.unanswered.len(),
                            r.refused.len(),
                            r.took.as_secs_f64()
                        )
                    )
                );
                let _ = writeln!(
                    out,
                    "    in setup         {} at the fault: {} completed, {} failed, {} still in setup",
                    c.setups, c.setups_completed, c.setups_failed, c.setups_pending
                );
                let _ = writeln!(
                    out,
                    "    signalling       longest silence {:.1} ms",
                    c.longest_silence_us as f64 / 1000.0
                );
                if starts_afresh(i.spec.action) && i.error.is_none() {
                    let _ = writeln!(
                        out,
                        "    caught up        {} a standby again {:.1} ms after the fault{}",
                        i.spec.server,
                        i.finished.saturating_sub(i.at).as_secs_f64() * 1000.0,
                        c.snapshot_bytes.map_or(String::new(), |b| format!(
                            ", from a snapshot of {:.1} MB",
                            b as f64 / 1e6
                        ))
                    );
                }
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
        let blame = match self.outcome() {
            Outcome::Invalid => "what broke above may be this machine's doing, not the cluster's",
            _ => "the drill held anyway: lateness only makes its figures worse",
        };
        out.push_str(&render_pace(&self.emulator, blame));
        let _ = writeln!(
            out,
            "\nverdict: {}",
            match self.outcome() {
                Outcome::Pass => "PASS (every SLO held)",
                Outcome::Fail => "FAIL (an SLO broke; exit 99)",
                Outcome::Invalid =>
                    "INVALID (an SLO broke while pbxlab itself was behind on this machine; exit 4): run it again on an idle machine, or with less load",
            }
        );
        out
    }

    /// The verdict as `pbxlab drill --json` writes it, with the scenario, the cluster's
    /// `events` and the load's report.
    pub fn to_json(
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
                "balancer": p.balancer,
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
                    "takeover_in_bound_us": micros(f.takeover_in_bound),
                    "reassignment": f.reassignment.json(),
                    "media_gap": f.media_gap.json(),
                    "dropped": f.dropped.iter().map(|(id, why)| json!({"call_id": id, "reason": why})).collect::<Vec<_>>(),
                    "alerts": f.alerts,
                    "during": phase(&f.during),
                    "after": phase(&f.after),
                    "callmanager": f.injected.cm.as_ref().map(|c| json!({
                        "before": c.before,
                        "after": c.after,
                        "hit_active": c.hit_active,
                        "takeover_us": c.takeover_us,
                        "fenced_us": c.fenced_us,
                        "handover_gap_us": c.handover_gap_us,
                        "overlap": c.overlap,
                        "takeover_bound_us": f.takeover_bound.map(micros),
                        "established": c.established,
                        "established_lost": c.established_lost,
                        "registrations": c.registrations,
                        "registrations_lost": c.registrations_lost,
                        "registrations_missing": c.registrations_missing,
                        "registrations_checked": if c.called.is_some() { "called" } else { "registrar" },
                        "registrations_called": c.called.as_ref().map(|r| json!({
                            "called": r.called,
                            "answered": r.answered,
                            "unbound": r.unbound,
                            "unanswered": r.unanswered,
                            "refused": r.refused.iter().map(|(u, code)| json!({"user": u, "status": code})).collect::<Vec<_>>(),
                            "hangups_unanswered": r.hangups_unanswered,
                            "took_us": micros(r.took),
                        })),
                        "setups": c.setups,
                        "setups_completed": c.setups_completed,
                        "setups_failed": c.setups_failed,
                        "setups_pending": c.setups_pending,
                        "longest_silence_us": c.longest_silence_us,
                        "unserved": c.unserved,
                        "checked_at_s": c.checked_at.as_secs_f64(),
                        "caught_up_us": (starts_afresh(f.injected.spec.action)
                            && f.injected.error.is_none())
                            .then(|| micros(f.injected.finished.saturating_sub(f.injected.at))),
                        "snapshot_bytes": c.snapshot_bytes,
                    })),
                    "pass": f.broken.is_empty(),
                    "broken": f.broken,
                })
            })
            .collect();
        json!({
            "scenario": scenario.name,
            "seed": scenario.seed,
            "pass": self.pass,
            "verdict": match self.outcome() {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::Invalid => "invalid",
            },
            "emulator": self.emulator,
            "steady": self.steady.as_ref().map(phase),
            "faults": faults,
            "faults_planned": scenario.faults.len(),
            "faults_skipped": self.skipped,
            "events": events,
            "load": serde_json::to_value(report).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterEvent;
    use crate::cm::{DroppedCall, Reassigned};
    use pbxlab_balancer::ServerId;
    use pbxlab_scenario::Verb;

    const FAULT_AT: Duration = Duration::from_secs(30);
    /// The reference health checks: 3 probes a second apart, then a 500 ms timeout.
    const BOUND: Duration = Duration::from_millis(3500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).expect("small")
    }

    /// A quiet load of one sample a second for a minute: 100 calls up, setup p99 50 ms, no
    /// failures.
    fn samples() -> Vec<Sample> {
        (1..=60)
            .map(|s| Sample {
                at: Duration::from_secs(s),
                calls_failed: 0,
                active: 100,
                setup_p99_us: 50_000,
                setup_count: 10,
            })
            .collect()
    }

    /// media-2 failed silently at 30 s.
    fn failed_media_2() -> Vec<Injected> {
        vec![Injected {
            spec: FaultSpec {
                at: FAULT_AT,
                action: Verb::Fail,
                server: "media-2".into(),
            },
            at: FAULT_AT,
            finished: FAULT_AT + ms(1),
            error: None,
            cm: None,
        }]
    }

    /// The Call Manager marked media-2 down `after` the fault and moved two calls.
    fn detected(after: Duration) -> Records {
        let down = FAULT_AT + after;
        Records {
            events: vec![ClusterEvent {
                at: down,
                server: "media-2".into(),
                kind: EventKind::Down,
            }],
            reassigned: vec![
                Reassigned {
                    at: nanos(down + ms(2)),
                    took: nanos(ms(4)),
                },
                Reassigned {
                    at: nanos(down + ms(3)),
                    took: nanos(ms(6)),
                },
            ],
            dropped: Vec::new(),
        }
    }

    /// The callers of the moved calls heard `len` of silence from the fault on.
    fn silent_for(len: Duration) -> Vec<Silence> {
        vec![
            Silence {
                at: FAULT_AT + ms(10),
                len_ns: nanos(len),
            };
            2
        ]
    }

    fn judged(records: &Records, samples: &[Sample], gaps: &[Silence]) -> DrillVerdict {
        let spec = DrillSpec::default();
        let steady = steady_phase(&spec, samples, records, (FAULT_AT - spec.steady, FAULT_AT));
        let seen = Observed {
            records,
            samples,
            gaps,
        };
        judge(&spec, BOUND, &failed_media_2(), &seen, Some(steady), 1)
    }

    #[test]
    fn a_fault_detected_within_its_bound_passes() {
        let v = judged(&detected(ms(2900)), &samples(), &silent_for(ms(120)));
        let f = &v.faults[0];
        assert_eq!(f.detection, Some(ms(2900)));
        assert_eq!(f.detection_bound, Some(BOUND));
        assert_eq!((f.reassignment.count, f.media_gap.count), (2, 2));
        assert!(f.reassignment.max_us >= 5_990, "{:?}", f.reassignment);
        assert!(f.media_gap.p99_us >= 119_000, "{:?}", f.media_gap);
        assert!(f.dropped.is_empty());
        // Detected at 32.9 s, then 5 s to settle: the fault's window is 30-37.9 s.
        assert_eq!((f.during.from, f.during.to), (FAULT_AT, ms(37_900)));
        assert_eq!(f.window_end, Duration::from_secs(60));
        assert!(f.broken.is_empty(), "{:?}", f.broken);
        assert!(v.steady.as_ref().is_some_and(|s| s.pass), "{:?}", v.steady);
        assert!(v.pass);
        let text = v.render("drill");
        assert!(
            text.contains("detection        2900 ms (bound 3500 ms"),
            "{text}"
        );
        assert!(text.contains("verdict: PASS"), "{text}");
        // The timer slack: 4 ms past the bound still counts as within it.
        let v = judged(&detected(BOUND + ms(4)), &samples(), &[]);
        assert!(v.pass, "{:?}", v.faults[0].broken);
    }

    #[test]
    fn a_call_manager_takeover_inside_a_detection_extends_its_bound_and_window() {
        let spec = DrillSpec::default();
        let samples = samples();
        // media-2 found 100 ms past its bound, but a Call Manager fault 200 ms after media-2's
        // took 400 ms to take over: nobody probed meanwhile.
        let records = detected(BOUND + ms(100));
        let mut injected = failed_media_2();
        injected.push(Injected {
            spec: FaultSpec {
                at: FAULT_AT + ms(200),
                action: Verb::Fail,
                server: "cm-1".into(),
            },
            at: FAULT_AT + ms(200),
            finished: FAULT_AT + ms(200),
            error: None,
            cm: Some(CmFigures {
                before: Some("cm-1".into()),
                after: Some("cm-2".into()),
                hit_active: true,
                takeover_us: Some(400_000),
                ..CmFigures::default()
            }),
        });
        let steady = steady_phase(
            &spec,
            &samples,
            &records,
            (FAULT_AT - spec.steady, FAULT_AT),
        );
        let seen = Observed {
            records: &records,
            samples: &samples,
            gaps: &[],
        };
        let v = judge(&spec, BOUND, &injected, &seen, Some(steady), 2);
        let f = &v.faults[0];
        assert_eq!(f.detection_bound, Some(BOUND + ms(400)));
        assert!(f.broken.is_empty(), "{:?}", f.broken);
        // The moves after the takeover are still media-2's: its window runs past cm-1's fault.
        assert_eq!(f.reassignment.count, 2);
        assert!(
            v.render("drill")
                .contains("the Call Manager takeover's 400 ms")
        );
        // Without the takeover the same detection is late.
        let v = judged(&records, &samples, &[]);
        assert!(!v.faults[0].broken.is_empty());
    }

    #[test]
    fn a_user_the_call_through_the_virtual_ip_does_not_reach_is_a_lost_registration() {
        let spec = DrillSpec::default();
        let called = pbxlab_loadgen::reach::Reached {
            called: 4,
            answered: 1,
            unbound: vec![7],
            unanswered: vec![8],
            refused: vec![(9, 503)],
            hangups_unanswered: 1,
            took: ms(1500),
        };
        let injected = vec![Injected {
            spec: FaultSpec {
                at: FAULT_AT,
                action: Verb::Fail,
                server: "cm-1".into(),
            },
            at: FAULT_AT,
            finished: FAULT_AT,
            error: None,
            cm: Some(CmFigures {
                before: Some("cm-1".into()),
                after: Some("cm-2".into()),
                hit_active: true,
                takeover_us: Some(300_000),
                registrations: 4,
                // The registrar's own count says nothing is missing: the calls decide.
                registrations_missing: 0,
                registrations_lost: called.lost(),
                called: Some(called),
                ..CmFigures::default()
            }),
        }];
        let samples = samples();
        let records = Records::default();
        let seen = Observed {
            records: &records,
            samples: &samples,
            gaps: &[],
        };
        let v = judge(&spec, BOUND, &injected, &seen, None, 2);
        assert_eq!(
            v.faults[0].broken,
            [
                "3 registrations lost: called through the virtual IP, 1 users were not bound, 1 did \
                 not answer and 1 were refused",
                "1 of the calls that checked the registrations could not be ended (no answer to \
                 their BYE)"
            ]
        );
        assert!(!v.pass);
        let text = v.render("drill");
        assert!(
            text.contains(
                "4 in force at 0.0 s, 3 lost: each called, 1 answered, 1 not bound, 1 unanswered, \
                 1 refused in 1.5 s"
            ),
            "{text}"
        );
        // Without the calls the registrar's count is judged, and the text says where it came from.
        let mut injected = injected;
        let cm = injected[0].cm.as_mut().unwrap();
        cm.called = None;
        cm.registrations_lost = 0;
        let v = judge(&spec, BOUND, &injected, &seen, None, 2);
        assert!(v.faults[0].broken.is_empty(), "{:?}", v.faults[0].broken);
        assert!(
            v.render("drill")
                .contains("0 lost (checked at the registrar)")
        );
    }

    #[test]
    fn a_detection_past_its_bound_fails_the_fault() {
        let v = judged(&detected(BOUND + ms(100)), &samples(), &[]);
        let f = &v.faults[0];
        assert_eq!(f.detection, Some(BOUND + ms(100)));
        assert_eq!(
            f.broken,
            ["detected after 3600 ms, beyond the bound of 3500 ms"]
        );
        assert!(!v.pass);
        assert!(v.render("drill").contains("verdict: FAIL"));
        // A server never marked down fails it too.
        let v = judged(&Records::default(), &samples(), &[]);
        assert_eq!(v.faults[0].detection, None);
        assert_eq!(v.faults[0].broken, ["never detected"]);
        assert!(!v.pass);
    }

    #[test]
    fn a_dropped_call_fails_the_fault() {
        let mut records = detected(ms(2900));
        records.dropped.push(DroppedCall {
            at: nanos(FAULT_AT + ms(2902)),
            call_id: "a-1@pbxlab".into(),
            server: ServerId(2),
            reason: "no media server in service",
        });
        // One before the fault is not this fault's.
        records.dropped.push(DroppedCall {
            at: nanos(ms(1000)),
            call_id: "a-0@pbxlab".into(),
            server: ServerId(1),
            reason: "earlier",
        });
        let v = judged(&records, &samples(), &[]);
        let f = &v.faults[0];
        assert_eq!(
            f.dropped,
            [("a-1@pbxlab".to_owned(), "no media server in service")]
        );
        assert_eq!(
            f.broken,
            ["during: 1 calls dropped by failover (at most 0)"]
        );
        assert!(!f.during.pass && f.after.pass);
        assert!(!v.pass);
    }

    #[test]
    fn a_failure_while_pbxlab_fell_behind_is_invalid_and_says_which_thread() {
        let late = |driver: &str, worst_ms: f64, kernel_drops: u64| DriverPace {
            driver: driver.into(),
            worst_ms,
            worst_at_s: 41.2,
            behind: u64::from(worst_ms >= 50.0),
            kernel_drops,
            saturated: worst_ms >= 50.0 || kernel_drops > 0,
        };
        let mut records = detected(ms(2900));
        records.dropped.push(DroppedCall {
            at: nanos(FAULT_AT + ms(2902)),
            call_id: "a-1@pbxlab".into(),
            server: ServerId(2),
            reason: "no media server in service",
        });
        let failed = judged(&records, &samples(), &[]);
        let kept_up = failed
            .clone()
            .with_emulator(vec![late("the node thread", 3.0, 0)]);
        assert_eq!(kept_up.outcome(), Outcome::Fail);
        assert!(kept_up.render("d").contains("exit 99"));
        let starved = failed.with_emulator(vec![
            late("the Call Manager thread", 4.0, 0),
            late("the node thread", 180.0, 12_400),
        ]);
        assert_eq!(starved.outcome(), Outcome::Invalid);
        let text = starved.render("d");
        assert!(
            text.contains(
                "the node thread fell 180 ms behind its schedule (at 41.2 s; 1 time past 50 ms); \
                 packets dropped in this machine's kernel on its sockets: 12,400"
            ) && text.contains("INVALID")
                && text.contains("exit 4")
                && !text.contains("the Call Manager thread fell"),
            "{text}"
        );
        // A drill that held while behind still passes, and says it was behind.
        let held = judged(&detected(ms(2900)), &samples(), &[]).with_emulator(vec![late(
            "the node thread",
            180.0,
            0,
        )]);
        assert_eq!(held.outcome(), Outcome::Pass);
        assert!(held.render("d").contains("the drill held anyway"));
    }

    #[test]
    fn a_call_failed_before_the_first_fault_breaks_the_steady_state() {
        // One call failed at 5 s, long before the steady window of 20-30 s.
        let mut list = samples();
        for s in list.iter_mut().skip(4) {
            s.calls_failed = 1;
        }
        let v = judged(&detected(ms(2900)), &list, &[]);
        let steady = v.steady.as_ref().expect("checked");
        assert_eq!(steady.calls_failed, 1);
        assert_eq!(
            steady.broken,
            ["1 calls failed before the first fault (at most 0)"]
        );
        assert!(!steady.pass);
        assert!(v.faults[0].broken.is_empty(), "the fault itself passed");
        assert!(!v.pass);
        // A window with a second of no call up breaks it as well.
        let mut list = samples();
        list[24].active = 0;
        let spec = DrillSpec::default();
        let p = steady_phase(&spec, &list, &Records::default(), (ms(20_000), FAULT_AT));
        assert_eq!(p.broken, ["some second of the window had no call up"]);
    }

    #[test]
    fn a_media_gap_p99_over_its_limit_fails_the_fault() {
        let v = judged(&detected(ms(2900)), &samples(), &silent_for(ms(400)));
        let f = &v.faults[0];
        // The histogram keeps three significant digits: 400 ms may read 400.1 ms.
        assert_eq!(f.broken.len(), 1, "{:?}", f.broken);
        assert!(
            f.broken[0].starts_with("during: media gap p99 400.")
                && f.broken[0].ends_with("(at most 300.0 ms)"),
            "{:?}",
            f.broken
        );
        assert!(!v.pass);
        // A silence that began well before the fault is not the fault's.
        let early = [Silence {
            at: FAULT_AT - ms(500),
            len_ns: nanos(ms(400)),
        }];
        let v = judged(&detected(ms(2900)), &samples(), &early);
        assert_eq!(v.faults[0].media_gap.count, 0);
        assert!(v.pass);
    }

    #[test]
    fn setup_latency_and_failures_are_judged_per_phase() {
        let mut list = samples();
        // Setups slow at 33 s (during the fault), and two calls fail at 45 s (after it).
        list[32].setup_p99_us = 2_500_000;
        for s in list.iter_mut().skip(44) {
            s.calls_failed = 2;
        }
        let v = judged(&detected(ms(2900)), &list, &[]);
        let f = &v.faults[0];
        assert_eq!(f.during.setup_p99_max_us, 2_500_000);
        assert_eq!(f.after.calls_failed, 2);
        assert_eq!(
            f.broken,
            [
                "during: setup p99 reached 2500.0 ms (at most 2000.0 ms)",
                "after: 2 calls failed (at most 0)"
            ]
        );
    }

    #[test]
    fn a_fault_never_reached_fails_the_drill() {
        let spec = DrillSpec::default();
        let list = samples();
        let steady = steady_phase(&spec, &list, &Records::default(), (ms(20_000), FAULT_AT));
        let seen = Observed {
            records: &Records::default(),
            samples: &list,
            gaps: &[],
        };
        let v = judge(&spec, BOUND, &[], &seen, Some(steady), 2);
        assert_eq!(v.skipped, 2);
        assert!(!v.pass);
    }

    /// media-2 went down at 22.7 s and up at 23.0 s, its calls moved: a flap inside the 20-30 s
    /// window. The steady state fails (so no fault is injected), naming each; a move before
    /// the window is listed but breaks nothing.
    #[test]
    fn a_flap_inside_the_steady_window_breaks_the_steady_state_and_is_listed() {
        let spec = DrillSpec::default();
        let event = |at, kind| ClusterEvent {
            at,
            server: "media-2".into(),
            kind,
        };
        let moved = |at| Reassigned {
            at: nanos(at),
            took: nanos(ms(5)),
        };
        let flap = Records {
            events: vec![
                event(ms(22_700), EventKind::Down),
                event(ms(23_000), EventKind::Up),
            ],
            reassigned: vec![moved(ms(5_000)), moved(ms(22_702)), moved(ms(22_702))],
            dropped: vec![DroppedCall {
                at: nanos(ms(22_702)),
                call_id: "a1".into(),
                server: ServerId(1),
                reason: "no server in service",
            }],
        };
        let p = steady_phase(&spec, &samples(), &flap, (ms(20_000), FAULT_AT));
        assert!(!p.pass);
        assert_eq!(
            p.broken,
            [
                "media-2 went down at 22.700 s, inside the window",
                "media-2 went up at 23.000 s, inside the window",
                "22.702 s 2 calls moved, inside the window",
                "22.702 s 1 call dropped, inside the window",
            ]
        );
        assert_eq!(
            p.balancer,
            [
                "5.000 s 1 call moved",
                "22.700 s media-2 down",
                "22.702 s 2 calls moved",
                "22.702 s 1 call dropped",
                "23.000 s media-2 up",
            ]
        );
        // Only the move before the window: steady, and still shown.
        let early = Records {
            reassigned: vec![moved(ms(5_000))],
            ..Records::default()
        };
        let p = steady_phase(&spec, &samples(), &early, (ms(20_000), FAULT_AT));
        assert!(p.pass, "{:?}", p.broken);
        assert_eq!(p.balancer, ["5.000 s 1 call moved"]);
        let v = judge(
            &spec,
            BOUND,
            &[],
            &Observed {
                records: &early,
                samples: &samples(),
                gaps: &[],
            },
            Some(p),
            0,
        );
        let text = v.render("flap");
        assert!(
            text.contains("before the first fault, the balancer:"),
            "{text}"
        );
        assert!(text.contains("5.000 s 1 call moved"), "{text}");
    }
}

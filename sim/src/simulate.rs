//! The capacity planner's simulation: a scenario's workload run against its cluster in virtual
//! time, every placement and failover decided by the same [`Balancer`] the live cluster uses.
//!
//! Workloads: Poisson calls (optionally shaped by a daily profile) holding one media session;
//! IVR sessions, some transferred into a queue; queue callers served FIFO by a fixed number of
//! agents, with optional exponential patience; meetings (one session weighted by its participants,
//! kept on one server by affinity); registrations that hold an IM session per online user and
//! refresh every `expires`. Health probes run on the scenario's interval; a `fail` fault silences a
//! server and the balancer learns of it only through timed-out probes, as it would live.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbxlab_balancer::{
    AffinityKey, Balancer, ProbeAction, Prober, Request, Role, ServerId, SessionId,
};

use crate::Error;
use crate::des::{EventQueue, Nanos, nanos_to_secs, secs_to_nanos};
use crate::erlang::{self, QueueModel};
use crate::report::{
    FaultReport, QueueEstimates, QueueReport, RegistrationReport, Report, RoleReport, ServerReport,
    SloVerdict,
};
use crate::rng::Rng;
use crate::stats::Estimate;
use pbxlab_scenario::{HoldDist, Scenario};

mod faults;
mod takeover;

/// How to run a simulation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// After every change, compare the simulator's own ledger of where each session is with
    /// the balancer's, and audit the balancer. Slow; for tests.
    pub self_check: bool,
    /// Checked every few thousand events; when set, the run stops and reports what it has.
    pub stop: Option<&'a AtomicBool>,
    /// Leave wall-clock figures out of the report so it is reproducible byte for byte.
    pub no_wall_clock: bool,
    /// Told where the run is, at most once a period. Nothing in the report depends on it.
    pub progress: Option<ProgressSink<'a>>,
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress<'a> {
    /// What is being run: empty for a plain run; in a sizing, the candidate.
    pub stage: &'a str,
    /// Virtual time reached, and where the run ends.
    pub simulated_s: f64,
    pub duration_s: f64,
    pub events: u64,
    /// Wall-clock seconds since the run started (its setup included).
    pub wall_s: f64,
}

impl Progress<'_> {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall_s.max(1e-9)
    }

    /// Wall-clock seconds left at the pace so far (virtual time per wall second); `None`
    /// before virtual time has moved.
    pub fn left_s(&self) -> Option<f64> {
        (self.simulated_s > 0.0 && self.wall_s > 0.0)
            .then(|| (self.duration_s - self.simulated_s).max(0.0) * self.wall_s / self.simulated_s)
    }
}

/// Where progress goes, how often, and what the run is called there.
#[derive(Clone, Copy)]
pub struct ProgressSink<'a> {
    pub every: Duration,
    pub stage: &'a str,
    pub report: &'a dyn Fn(&Progress<'_>),
}

impl std::fmt::Debug for ProgressSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink")
            .field("every", &self.every)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// Pending events are bounded: a scenario that would need more is refused, not run out of memory.
const EVENT_LIMIT: usize = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Calls,
    Ivr,
    Queue,
    Meetings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Call,
    Ivr,
    Meeting,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    WarmupEnd,
    Arrival(Stream),
    End(SessionId, Flow),
    Abandon {
        caller: u32,
        generation: u32,
    },
    HandleDone {
        caller: u32,
        generation: u32,
    },
    /// The next registration refresh in `refresh_order`.
    Refresh,
    /// The prober's next deadline: a round to start or to judge.
    ProbeRound,
    /// An upgraded server's process is up again.
    Restarted(u32),
    Fault(u32),
    /// An attempt lost while no Call Manager answered, sent again (first tried at `first`).
    Retry {
        stream: Stream,
        first: Nanos,
    },
    /// An upgraded Call Manager runs again.
    CmBack(u32),
}

#[derive(Debug, Clone, Copy)]
enum OwnerKind {
    Call,
    Ivr,
    Meeting,
    Caller { caller: u32, generation: u32 },
    Im { user: u32 },
}

/// The simulator's own ledger entry for a placed session, kept apart from the balancer's so
/// self-checks can compare the two.
#[derive(Debug, Clone, Copy)]
struct Owner {
    id: SessionId,
    kind: OwnerKind,
    server: u32,
    weight: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    offered: u64,
    blocked: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct QueueTally {
    offered: u64,
    waited: u64,
    answered: u64,
    answered_in_sl: u64,
    abandoned: u64,
    wait_sum_s: f64,
}

impl QueueTally {
    fn resolved(&self) -> u64 {
        self.answered + self.abandoned
    }
}

#[derive(Debug, Clone)]
struct RoleStats {
    whole: Tally,
    batches: Vec<Tally>,
    dropped: u64,
    load: u64,
    peak: u64,
    area: f64,
    last: Nanos,
}

#[derive(Debug, Clone)]
struct ServerStats {
    role: Role,
    load: u32,
    peak: u32,
    area: f64,
    last: Nanos,
    alive: bool,
    /// Upgraded and restarted: enabled again once a probe answers.
    enable_when_answered: bool,
    /// Session-seconds carried in each bucket of [`TIMELINE_BUCKETS`] over the whole run,
    /// warm-up included: the report's per-server timeline.
    timeline: Vec<f64>,
}

/// At most this many buckets of simulated time in each server's timeline: enough for a chart
/// and a bound on the report's size whatever the run's length.
pub const TIMELINE_BUCKETS: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerState {
    Free,
    Waiting,
    Talking,
}

#[derive(Debug, Clone, Copy)]
struct Caller {
    generation: u32,
    state: CallerState,
    arrival: Nanos,
    queue: u32,
    session: Option<SessionId>,
    batch: Option<usize>,
}

#[derive(Debug, Clone, Default)]
struct AcdQueue {
    busy: u32,
    waiting: VecDeque<(u32, u32)>,
}

struct Sim<'s> {
    sc: &'s Scenario,
    /// The Call Managers behind the virtual IP.
    cm: takeover::CmModel,
    seed: u64,
    q: EventQueue<Ev>,
    b: Balancer,
    warmup: Nanos,
    end: Nanos,
    batch_len: Nanos,
    /// The length of a timeline bucket.
    bucket_len: Nanos,
    self_check: bool,
    servers: Vec<ServerStats>,
    roles: [Option<RoleStats>; 5],
    owners: Vec<Option<Owner>>,
    callers: Vec<Caller>,
    free_callers: Vec<u32>,
    acd: Vec<AcdQueue>,
    queue_whole: QueueTally,
    queue_batches: Vec<QueueTally>,
    im_sessions: Vec<Option<SessionId>>,
    /// Users sorted by refresh phase. Every user refreshes with the same period, so the order
    /// never changes and one pending event walking it replaces one event per user (50,000
    /// entries fewer in the event heap for the reference cluster).
    refresh_order: Vec<(Nanos, u32)>,
    refresh_next: usize,
    refresh_cycle: u64,
    registers: u64,
    faults: Vec<FaultReport>,
    /// The first disagreement between the balancer and the ledger; fails the run.
    mismatch: Option<String>,
    next_meeting: u64,
    /// Mean time between arrivals of each stream (by `Stream as usize`); infinite when off.
    mean_gap_s: [f64; 4],
    rng_calls: Rng,
    rng_ivr: Rng,
    rng_queue: Rng,
    rng_meetings: Rng,
    rng_registrations: Rng,
    prober: Prober,
    /// A `ProbeRound` event is pending.
    probing: bool,
    probe_actions: Vec<ProbeAction>,
}

/// Runs the scenario in virtual time and reports what happened.
pub fn simulate(sc: &Scenario, options: Options<'_>) -> Result<Report, Error> {
    let started = Instant::now();
    let seed = options.seed.unwrap_or(sc.seed);
    let with_seed = |e: Error| Error::Run {
        seed,
        error: Box::new(e),
    };
    let mut sim = Sim::new(sc, seed, options.self_check).map_err(with_seed)?;
    let (events, interrupted) = sim
        .run(options.stop, options.progress, started)
        .map_err(with_seed)?;
    let wall = started.elapsed().as_secs_f64();
    let mut report = sim.report(events, interrupted);
    if !options.no_wall_clock {
        report.wall_s = Some(wall);
        report.events_per_s = Some(events as f64 / wall.max(1e-9));
    }
    Ok(report)
}

impl<'s> Sim<'s> {
    fn new(sc: &'s Scenario, seed: u64, self_check: bool) -> Result<Sim<'s>, Error> {
        let b = sc.balancer()?;
        let b_health = b.health();
        let mut servers = Vec::new();
        let mut roles: [Option<RoleStats>; 5] = Default::default();
        let batches = sc.batches.max(1) as usize;
        for pool in &sc.pools {
            for _ in &pool.servers {
                servers.push(ServerStats {
                    role: pool.role,
                    load: 0,
                    peak: 0,
                    area: 0.0,
                    last: 0,
                    alive: true,
                    enable_when_answered: false,
                    timeline: Vec::new(),
                });
            }
            roles[pool.role.index()] = Some(RoleStats {
                whole: Tally::default(),
                batches: vec![Tally::default(); batches],
                dropped: 0,
                load: 0,
                peak: 0,
                area: 0.0,
                last: 0,
            });
        }
        let warmup = secs_to_nanos(sc.warmup.as_secs_f64());
        let end = secs_to_nanos(sc.duration.as_secs_f64());
        let queues = sc.traffic.queue.as_ref().map_or(0, |q| q.queues) as usize;
        let mut sim = Sim {
            sc,
            seed,
            q: EventQueue::with_limit(EVENT_LIMIT),
            b,
            warmup,
            end,
            batch_len: ((end - warmup) / batches as u64).max(1),
            bucket_len: end.div_ceil(TIMELINE_BUCKETS).max(1),
            self_check,
            servers,
            roles,
            owners: Vec::new(),
            callers: Vec::new(),
            free_callers: Vec::new(),
            acd: vec![AcdQueue::default(); queues],
            queue_whole: QueueTally::default(),
            queue_batches: vec![QueueTally::default(); batches],
            im_sessions: Vec::new(),
            refresh_order: Vec::new(),
            refresh_next: 0,
            refresh_cycle: 0,
            registers: 0,
            faults: Vec::new(),
            cm: takeover::CmModel::new(sc),
            mismatch: None,
            next_meeting: 0,
            mean_gap_s: [f64::INFINITY; 4],
            rng_calls: Rng::stream(seed, "calls"),
            rng_ivr: Rng::stream(seed, "ivr"),
            rng_queue: Rng::stream(seed, "queue"),
            rng_meetings: Rng::stream(seed, "meetings"),
            rng_registrations: Rng::stream(seed, "registrations"),
            prober: Prober::new(b_health, Duration::ZERO),
            probing: false,
            probe_actions: Vec::new(),
        };
        sim.start()?;
        Ok(sim)
    }

    fn schedule(&mut self, at: Nanos, ev: Ev) -> Result<(), Error> {
        self.q
            .schedule(at, ev)
            .map_err(|o| Error::EventLimit { limit: o.limit })
    }

    fn start(&mut self) -> Result<(), Error> {
        let t = &self.sc.traffic;
        let rates = [
            // Thinning: call candidates come at the profile's peak rate, accepted on arrival.
            t.calls.as_ref().map_or(0.0, |c| {
                c.rate_per_s
                    * c.profile
                        .map_or(1.0, |p| p.iter().copied().fold(0.0, f64::max))
            }),
            t.ivr.as_ref().map_or(0.0, |i| i.rate_per_s),
            t.queue.as_ref().map_or(0.0, |q| q.rate_per_s),
            t.meetings.as_ref().map_or(0.0, |m| m.rate_per_s),
        ];
        self.mean_gap_s = rates.map(|r| if r > 0.0 { 1.0 / r } else { f64::INFINITY });
        self.schedule(self.warmup, Ev::WarmupEnd)?;
        for stream in [Stream::Calls, Stream::Ivr, Stream::Queue, Stream::Meetings] {
            self.next_arrival(stream, 0)?;
        }
        if let Some(reg) = &self.sc.traffic.registrations {
            let expires = secs_to_nanos(reg.expires.as_secs_f64()).max(1);
            self.im_sessions = vec![None; reg.users as usize];
            // Steady state from the start: every user is online, refresh phases spread evenly.
            for user in 0..reg.users {
                self.place_im(user);
                let phase = self.rng_registrations.below(expires);
                self.refresh_order.push((phase, user));
            }
            self.refresh_order.sort_unstable();
            if let Some(&(first, _)) = self.refresh_order.first() {
                self.schedule(first, Ev::Refresh)?;
            }
        }
        // Every server starts up and answering, so no probe round is scheduled until a fault
        // makes one's outcome unknown (`keep_probing`).
        for s in 0..self.servers.len() {
            self.prober.watch(ServerId(s as u32));
        }
        for (i, f) in self.sc.faults.iter().enumerate() {
            self.schedule(secs_to_nanos(f.at.as_secs_f64()), Ev::Fault(i as u32))?;
        }
        Ok(())
    }

    fn run(
        &mut self,
        stop: Option<&AtomicBool>,
        progress: Option<ProgressSink<'_>>,
        started: Instant,
    ) -> Result<(u64, bool), Error> {
        let mut events = 0u64;
        let mut next_progress = progress.map(|p| started + p.every);
        while let Some((now, ev)) = self.q.pop_until(self.end) {
            events += 1;
            // Every 4,096 events (under a millisecond): the flag and the clock cost nothing
            // measurable there.
            if events.is_multiple_of(4096) {
                if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Ok((events, true));
                }
                if let (Some(p), Some(due)) = (progress, next_progress) {
                    let t = Instant::now();
                    if t >= due {
                        (p.report)(&Progress {
                            stage: p.stage,
                            simulated_s: nanos_to_secs(now),
                            duration_s: nanos_to_secs(self.end),
                            events,
                            wall_s: t.duration_since(started).as_secs_f64(),
                        });
                        next_progress = Some(t + p.every);
                    }
                }
            }
            self.handle(now, ev)?;
            if let Some(m) = self.mismatch.take() {
                return Err(Error::SelfCheck(m));
            }
            if self.self_check {
                self.check_ledger()?;
            }
        }
        Ok((events, false))
    }

    fn handle(&mut self, now: Nanos, ev: Ev) -> Result<(), Error> {
        match ev {
            Ev::WarmupEnd => {
                for s in &mut self.servers {
                    s.peak = s.load;
                }
                for r in self.roles.iter_mut().flatten() {
                    r.peak = r.load;
                }
            }
            Ev::Arrival(stream) => {
                self.next_arrival(stream, now)?;
                if now < self.cm.outage_until {
                    self.retry_later(stream, now, now)?;
                } else {
                    self.place(stream, now)?;
                }
            }
            Ev::Retry { stream, first } => self.retried(stream, first, now)?,
            Ev::CmBack(i) => self.cm_back(i as usize, now),
            Ev::End(session, flow) => {
                if self.release(session, now) && flow == Flow::Ivr {
                    let then_queue = self.sc.traffic.ivr.as_ref().map_or(0.0, |i| i.then_queue);
                    if then_queue > 0.0 && self.rng_ivr.uniform() < then_queue {
                        self.queue_arrival(now)?;
                    }
                }
            }
            Ev::Abandon { caller, generation } => {
                let c = self.callers[caller as usize];
                if c.generation == generation && c.state == CallerState::Waiting {
                    if let Some(b) = c.batch {
                        self.queue_batches[b].abandoned += 1;
                        self.queue_whole.abandoned += 1;
                    }
                    if let Some(s) = c.session {
                        self.release(s, now);
                    }
                    self.free_caller(caller);
                }
            }
            Ev::HandleDone { caller, generation } => {
                let c = self.callers[caller as usize];
                if c.generation == generation && c.state == CallerState::Talking {
                    if let Some(s) = c.session {
                        self.release(s, now);
                    }
                    self.free_caller(caller);
                    self.agent_free(c.queue, now)?;
                }
            }
            Ev::Refresh => {
                let (_, user) = self.refresh_order[self.refresh_next];
                if now >= self.warmup {
                    self.registers += 1;
                }
                if self
                    .im_sessions
                    .get(user as usize)
                    .is_some_and(Option::is_none)
                {
                    self.place_im(user);
                }
                self.refresh_next += 1;
                if self.refresh_next == self.refresh_order.len() {
                    self.refresh_next = 0;
                    self.refresh_cycle += 1;
                }
                let expires = self
                    .sc
                    .traffic
                    .registrations
                    .as_ref()
                    .map_or(Duration::ZERO, |r| r.expires);
                let period = secs_to_nanos(expires.as_secs_f64()).max(1);
                let (phase, _) = self.refresh_order[self.refresh_next];
                self.schedule(phase + self.refresh_cycle * period, Ev::Refresh)?;
            }
            Ev::ProbeRound => self.probe_round(now)?,
            Ev::Restarted(s) => {
                self.servers[s as usize].alive = true;
                self.servers[s as usize].enable_when_answered = true;
                self.keep_probing(now)?;
            }
            Ev::Fault(i) => self.fault(i as usize, now)?,
        }
        Ok(())
    }

    /// An attempt of `stream` that reached a Call Manager at `now`.
    fn place(&mut self, stream: Stream, now: Nanos) -> Result<(), Error> {
        match stream {
            Stream::Calls => self.call_arrival(now),
            Stream::Ivr => self.ivr_arrival(now),
            Stream::Queue => self.queue_arrival(now),
            Stream::Meetings => self.meeting_arrival(now),
        }
    }

    fn next_arrival(&mut self, stream: Stream, now: Nanos) -> Result<(), Error> {
        let rng = match stream {
            Stream::Calls => &mut self.rng_calls,
            Stream::Ivr => &mut self.rng_ivr,
            Stream::Queue => &mut self.rng_queue,
            Stream::Meetings => &mut self.rng_meetings,
        };
        let mean_gap_s = self.mean_gap_s[stream as usize];
        if mean_gap_s.is_finite() {
            let at = now + secs_to_nanos(rng.exp(mean_gap_s)).max(1);
            if at <= self.end {
                self.schedule(at, Ev::Arrival(stream))?;
            }
        }
        Ok(())
    }

    fn batch(&self, now: Nanos) -> Option<usize> {
        if now < self.warmup {
            return None;
        }
        let b = ((now - self.warmup) / self.batch_len) as usize;
        Some(b.min(self.queue_batches.len() - 1))
    }

    /// Counts an offer (after warm-up) and whether it was blocked.
    fn count_offer(&mut self, role: Role, now: Nanos, blocked: bool) {
        let batch = self.batch(now);
        if let (Some(b), Some(r)) = (batch, &mut self.roles[role.index()]) {
            for t in [&mut r.whole, &mut r.batches[b]] {
                t.offered += 1;
                t.blocked += u64::from(blocked);
            }
        }
    }

    fn call_arrival(&mut self, now: Nanos) -> Result<(), Error> {
        let Some(calls) = &self.sc.traffic.calls else {
            return Ok(());
        };
        let hold = calls.hold;
        if let Some(profile) = calls.profile {
            let peak = profile.iter().copied().fold(0.0, f64::max);
            let hour = ((now / 3_600_000_000_000) % 24) as usize;
            if self.rng_calls.uniform() * peak >= profile[hour] {
                return Ok(());
            }
        }
        let placed = self.assign(Request::new(Role::Media), OwnerKind::Call, now);
        if let Some(session) = placed {
            let end = now + secs_to_nanos(self.rng_calls.hold(&hold));
            self.schedule(end, Ev::End(session, Flow::Call))?;
        }
        Ok(())
    }

    fn ivr_arrival(&mut self, now: Nanos) -> Result<(), Error> {
        let Some(ivr) = &self.sc.traffic.ivr else {
            return Ok(());
        };
        let hold = ivr.hold;
        if let Some(session) = self.assign(Request::new(Role::Ivr), OwnerKind::Ivr, now) {
            let end = now + secs_to_nanos(self.rng_ivr.hold(&hold));
            self.schedule(end, Ev::End(session, Flow::Ivr))?;
        }
        Ok(())
    }

    fn meeting_arrival(&mut self, now: Nanos) -> Result<(), Error> {
        let Some(m) = &self.sc.traffic.meetings else {
            return Ok(());
        };
        let (mean, duration) = (m.participants_mean, m.duration);
        let participants = 1 + self.rng_meetings.poisson(mean - 1.0) as u32;
        let key = AffinityKey(self.next_meeting);
        self.next_meeting += 1;
        let req = Request::keyed(Role::Meeting, key, participants);
        if let Some(session) = self.assign(req, OwnerKind::Meeting, now) {
            let end = now + secs_to_nanos(self.rng_meetings.hold(&duration));
            self.schedule(end, Ev::End(session, Flow::Meeting))?;
        }
        Ok(())
    }

    fn queue_arrival(&mut self, now: Nanos) -> Result<(), Error> {
        let Some(qt) = &self.sc.traffic.queue else {
            return Ok(());
        };
        let (queues, agents, handle, patience) = (qt.queues, qt.agents, qt.handle, qt.patience_s);
        let sl = secs_to_nanos(qt.service_level_s);
        let queue = self.rng_queue.below(u64::from(queues.max(1))) as u32;
        let caller = self.alloc_caller(now, queue);
        let generation = self.callers[caller as usize].generation;
        let req = Request::keyed(Role::Queue, AffinityKey(u64::from(queue)), 1);
        let Some(session) = self.assign(req, OwnerKind::Caller { caller, generation }, now) else {
            self.free_caller(caller);
            return Ok(());
        };
        let batch = self.batch(now);
        let c = &mut self.callers[caller as usize];
        c.session = Some(session);
        c.batch = batch;
        let acd = &mut self.acd[queue as usize];
        let free = acd.busy < agents;
        if let Some(b) = batch {
            for t in [&mut self.queue_whole, &mut self.queue_batches[b]] {
                t.offered += 1;
                t.waited += u64::from(!free);
            }
        }
        if free {
            acd.busy += 1;
            self.answer(caller, now, sl, handle)?;
        } else {
            c.state = CallerState::Waiting;
            acd.waiting.push_back((caller, generation));
            if let Some(p) = patience {
                let leave = now + secs_to_nanos(self.rng_queue.exp(p));
                self.schedule(leave, Ev::Abandon { caller, generation })?;
            }
        }
        Ok(())
    }

    fn answer(
        &mut self,
        caller: u32,
        now: Nanos,
        sl: Nanos,
        handle: HoldDist,
    ) -> Result<(), Error> {
        let c = &mut self.callers[caller as usize];
        c.state = CallerState::Talking;
        let wait = now - c.arrival;
        let generation = c.generation;
        if let Some(b) = c.batch {
            for t in [&mut self.queue_whole, &mut self.queue_batches[b]] {
                t.answered += 1;
                t.answered_in_sl += u64::from(wait <= sl);
                t.wait_sum_s += nanos_to_secs(wait);
            }
        }
        let done = now + secs_to_nanos(self.rng_queue.hold(&handle));
        self.schedule(done, Ev::HandleDone { caller, generation })
    }

    /// An agent of `queue` finished: the longest-waiting caller still there is answered.
    fn agent_free(&mut self, queue: u32, now: Nanos) -> Result<(), Error> {
        let Some(qt) = &self.sc.traffic.queue else {
            return Ok(());
        };
        let (sl, handle) = (secs_to_nanos(qt.service_level_s), qt.handle);
        while let Some((caller, generation)) = self.acd[queue as usize].waiting.pop_front() {
            let c = self.callers[caller as usize];
            // Entries of callers who abandoned or were dropped are skipped here, not searched
            // for and removed when they leave.
            if c.generation == generation && c.state == CallerState::Waiting {
                return self.answer(caller, now, sl, handle);
            }
        }
        let acd = &mut self.acd[queue as usize];
        acd.busy = acd.busy.saturating_sub(1);
        Ok(())
    }

    fn alloc_caller(&mut self, now: Nanos, queue: u32) -> u32 {
        let fresh = Caller {
            generation: 0,
            state: CallerState::Free,
            arrival: now,
            queue,
            session: None,
            batch: None,
        };
        match self.free_callers.pop() {
            Some(i) => {
                let c = &mut self.callers[i as usize];
                *c = Caller {
                    generation: c.generation,
                    ..fresh
                };
                i
            }
            None => {
                self.callers.push(fresh);
                (self.callers.len() - 1) as u32
            }
        }
    }

    fn free_caller(&mut self, caller: u32) {
        let c = &mut self.callers[caller as usize];
        c.state = CallerState::Free;
        c.generation = c.generation.wrapping_add(1);
        c.session = None;
        self.free_callers.push(caller);
    }

    fn place_im(&mut self, user: u32) {
        let placed = self.assign(Request::new(Role::Im), OwnerKind::Im { user }, 0);
        self.im_sessions[user as usize] = placed;
    }

    /// Asks the balancer for a placement and books it; `None` when it was rejected.
    fn assign(&mut self, req: Request, kind: OwnerKind, now: Nanos) -> Option<SessionId> {
        // IM log-ins are counted from the start: the population is placed before warm-up.
        let count_at = if req.role == Role::Im {
            now.max(self.warmup)
        } else {
            now
        };
        match self.b.assign(req) {
            Ok(a) => {
                self.count_offer(req.role, count_at, false);
                let i = a.session.index();
                if self.owners.len() <= i {
                    self.owners.resize(i + 1, None);
                }
                self.owners[i] = Some(Owner {
                    id: a.session,
                    kind,
                    server: a.server.0,
                    weight: req.weight,
                });
                self.book(a.server.0, i64::from(req.weight), now);
                Some(a.session)
            }
            Err(_) => {
                self.count_offer(req.role, count_at, true);
                None
            }
        }
    }

    /// Releases a session; false when a failover had already dropped it.
    fn release(&mut self, session: SessionId, now: Nanos) -> bool {
        let Ok(released) = self.b.release(session) else {
            return false;
        };
        let i = session.index();
        if let Some(owner) = self.owners.get_mut(i).and_then(Option::take) {
            if owner.server != released.server.0 && self.mismatch.is_none() {
                self.mismatch = Some(format!(
                    "{session} was released from server {} but the ledger had it on {}",
                    released.server.0, owner.server
                ));
            }
            self.book(released.server.0, -i64::from(owner.weight), now);
        }
        true
    }

    /// Changes a server's (and its role's) booked load at `now`, integrating the time-weighted
    /// mean from warm-up on.
    fn book(&mut self, server: u32, delta: i64, now: Nanos) {
        let warmup = self.warmup;
        let bucket_len = self.bucket_len;
        let s = &mut self.servers[server as usize];
        let from = s.last.max(warmup);
        if now > from {
            s.area += f64::from(s.load) * nanos_to_secs(now - from);
        }
        if s.load > 0 {
            // Nearly always within one bucket: the loop runs once.
            let mut t = s.last;
            while t < now {
                let b = (t / bucket_len) as usize;
                let until = ((b as u64 + 1) * bucket_len).min(now);
                if s.timeline.len() <= b {
                    s.timeline.resize(b + 1, 0.0);
                }
                s.timeline[b] += f64::from(s.load) * nanos_to_secs(until - t);
                t = until;
            }
        }
        s.last = now;
        s.load = (i64::from(s.load) + delta).max(0) as u32;
        if now >= warmup {
            s.peak = s.peak.max(s.load);
        }
        if let Some(r) = &mut self.roles[s.role.index()] {
            let from = r.last.max(warmup);
            if now > from {
                r.area += r.load as f64 * nanos_to_secs(now - from);
            }
            r.last = now;
            r.load = (r.load as i64 + delta).max(0) as u64;
            if now >= warmup {
                r.peak = r.peak.max(r.load);
            }
        }
    }

    fn report(mut self, events: u64, interrupted: bool) -> Report {
        let now = if interrupted { self.q.now() } else { self.end };
        // Close the time integrals at the end of the run.
        for i in 0..self.servers.len() {
            self.book(i as u32, 0, now);
        }
        let span_s = nanos_to_secs(now.saturating_sub(self.warmup)).max(1e-9);
        let sc = self.sc;
        let ivr_blocking = sc.traffic.ivr.as_ref().and_then(|ivr| {
            let pool = sc.pools.iter().find(|p| p.role == Role::Ivr)?;
            let cap = pool.capacity * pool.servers.len() as u32;
            Some(erlang::erlang_b(cap, ivr.rate_per_s * ivr.hold.mean_s()))
        });
        let mut roles = std::collections::BTreeMap::new();
        for pool in &sc.pools {
            let Some(r) = &self.roles[pool.role.index()] else {
                continue;
            };
            let capacity = u64::from(pool.capacity) * pool.servers.len() as u64;
            let blocking = ratio(r.whole.blocked, r.whole.offered);
            let per_batch: Vec<f64> = r
                .batches
                .iter()
                .filter(|t| t.offered > 0)
                .map(|t| ratio(t.blocked, t.offered))
                .collect();
            let blocking_est = Estimate::from_batches(blocking, &per_batch);
            let offered_erlangs = match pool.role {
                Role::Media => sc
                    .traffic
                    .calls
                    .as_ref()
                    .map(|c| c.rate_per_s * c.hold.mean_s()),
                Role::Ivr => sc
                    .traffic
                    .ivr
                    .as_ref()
                    .map(|i| i.rate_per_s * i.hold.mean_s()),
                Role::Meeting => sc
                    .traffic
                    .meetings
                    .as_ref()
                    .map(|m| m.rate_per_s * m.duration.mean_s() * m.participants_mean),
                Role::Queue | Role::Im => None,
            };
            let erlang_b = match pool.role {
                Role::Media
                    if sc
                        .traffic
                        .calls
                        .as_ref()
                        .is_some_and(|c| c.profile.is_none()) =>
                {
                    offered_erlangs.map(|a| erlang::erlang_b(capacity as u32, a))
                }
                Role::Ivr => offered_erlangs.map(|a| erlang::erlang_b(capacity as u32, a)),
                _ => None,
            };
            let queue = (pool.role == Role::Queue)
                .then(|| self.queue_report(ivr_blocking))
                .flatten();
            roles.insert(
                pool.role.name().to_string(),
                RoleReport {
                    servers: pool.servers.len(),
                    capacity,
                    offered: r.whole.offered,
                    admitted: r.whole.offered - r.whole.blocked,
                    blocked: r.whole.blocked,
                    blocking,
                    blocking_ci95: finite(blocking_est.ci95),
                    dropped: r.dropped,
                    offered_erlangs,
                    erlang_b,
                    mean_sessions: r.area / span_s,
                    peak_sessions: r.peak,
                    utilisation: r.area / span_s / capacity.max(1) as f64,
                    queue,
                    blocking_est,
                },
            );
        }
        let servers = self
            .b
            .servers()
            .map(|v| {
                let s = &self.servers[v.id.0 as usize];
                let mean = s.area / span_s;
                let timeline = timeline(&s.timeline, self.bucket_len, now);
                ServerReport {
                    name: v.name.to_string(),
                    role: v.role.name().to_string(),
                    capacity: v.capacity,
                    state: v.state.name().to_string(),
                    peak_sessions: u64::from(s.peak),
                    mean_sessions: mean,
                    utilisation: mean / f64::from(v.capacity.max(1)),
                    timeline,
                }
            })
            .collect();
        let registrations = sc.traffic.registrations.as_ref().map(|r| {
            let per_s = self.registers as f64 / span_s;
            RegistrationReport {
                users: r.users,
                expires_s: r.expires.as_secs_f64(),
                register_per_s: per_s,
                requests_per_s: 2.0 * per_s,
            }
        });
        let slo = slo_verdicts(sc, &roles);
        Report {
            scenario: sc.name.clone(),
            seed: self.seed,
            duration_s: sc.duration.as_secs_f64(),
            warmup_s: sc.warmup.as_secs_f64(),
            batches: sc.batches,
            simulated_s: nanos_to_secs(now),
            interrupted,
            events,
            wall_s: None,
            events_per_s: None,
            roles,
            registrations,
            timeline_bucket_s: nanos_to_secs(self.bucket_len),
            servers,
            faults: self.faults,
            slo,
            warnings: sc.warnings.iter().map(ToString::to_string).collect(),
        }
    }

    fn queue_report(&self, ivr_blocking: Option<f64>) -> Option<QueueReport> {
        let sc = self.sc;
        let qt = sc.traffic.queue.as_ref()?;
        let w = &self.queue_whole;
        let per = |f: &dyn Fn(&QueueTally) -> Option<f64>| -> Vec<f64> {
            self.queue_batches.iter().filter_map(f).collect()
        };
        let p_wait = Estimate::from_batches(
            ratio(w.waited, w.offered),
            &per(&|t| (t.offered > 0).then(|| ratio(t.waited, t.offered))),
        );
        let asa = Estimate::from_batches(
            if w.answered > 0 {
                w.wait_sum_s / w.answered as f64
            } else {
                0.0
            },
            &per(&|t| (t.answered > 0).then(|| t.wait_sum_s / t.answered as f64)),
        );
        let sl = Estimate::from_batches(
            ratio(w.answered_in_sl, w.resolved()),
            &per(&|t| (t.resolved() > 0).then(|| ratio(t.answered_in_sl, t.resolved()))),
        );
        let ab = Estimate::from_batches(
            ratio(w.abandoned, w.resolved()),
            &per(&|t| (t.resolved() > 0).then(|| ratio(t.abandoned, t.resolved()))),
        );
        // Callers reach the queues directly and from the IVR (those the IVR admitted).
        let from_ivr = sc.traffic.ivr.as_ref().map_or(0.0, |i| {
            i.rate_per_s * (1.0 - ivr_blocking.unwrap_or(0.0)) * i.then_queue
        });
        let model = QueueModel {
            arrival_per_s: (qt.rate_per_s + from_ivr) / f64::from(qt.queues.max(1)),
            handle_s_mean: qt.handle.mean_s(),
            agents: qt.agents,
            patience_s_mean: None,
            service_level_s: qt.service_level_s,
        };
        let c = erlang::queue_figures(&model);
        let a = qt.patience_s.and_then(|p| {
            erlang::queue_figures(&QueueModel {
                patience_s_mean: Some(p),
                ..model
            })
        });
        Some(QueueReport {
            queues: qt.queues,
            agents_per_queue: qt.agents,
            callers: w.offered,
            answered: w.answered,
            abandoned: w.abandoned,
            p_wait: p_wait.value,
            p_wait_ci95: finite(p_wait.ci95),
            asa_s: asa.value,
            asa_s_ci95: finite(asa.ci95),
            service_level_s: qt.service_level_s,
            service_level: sl.value,
            service_level_ci95: finite(sl.ci95),
            abandoned_fraction: ab.value,
            abandoned_fraction_ci95: finite(ab.ci95),
            erlang_c_p_wait: c.map(|f| f.p_wait),
            erlang_c_asa_s: c.map(|f| f.asa_s),
            erlang_c_service_level: c.map(|f| f.service_level),
            erlang_a_p_wait: a.map(|f| f.p_wait),
            erlang_a_asa_s: a.map(|f| f.asa_s),
            erlang_a_service_level: a.map(|f| f.service_level),
            erlang_a_abandoned_fraction: a.map(|f| f.abandoned_fraction),
            estimates: QueueEstimates {
                p_wait,
                asa_s: asa,
                service_level: sl,
                abandoned_fraction: ab,
            },
        })
    }
}

/// Mean sessions in each bucket up to `now` (the last one over the part of it simulated),
/// rounded to a thousandth so the report stays short.
fn timeline(areas: &[f64], bucket_len: Nanos, now: Nanos) -> Vec<f64> {
    let buckets = now.div_ceil(bucket_len) as usize;
    (0..buckets)
        .map(|b| {
            let from = b as u64 * bucket_len;
            let span = nanos_to_secs((from + bucket_len).min(now) - from).max(1e-9);
            let mean = areas.get(b).copied().unwrap_or(0.0) / span;
            (mean * 1000.0).round() / 1000.0
        })
        .collect()
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn slo_verdicts(
    sc: &Scenario,
    roles: &std::collections::BTreeMap<String, RoleReport>,
) -> Vec<SloVerdict> {
    let mut out = Vec::new();
    if let Some(target) = sc.slo.blocking {
        for (name, r) in roles {
            if r.offered > 0 {
                out.push(SloVerdict {
                    name: format!("{name}.blocking"),
                    target,
                    value: r.blocking,
                    pass: r.blocking <= target,
                });
            }
        }
    }
    if let Some(q) = roles.get("queue").and_then(|r| r.queue.as_ref()) {
        let checks = [
            (
                "queue.service_level",
                sc.slo.queue_service_level,
                q.service_level,
                true,
            ),
            (
                "queue.abandoned_fraction",
                sc.slo.queue_abandoned,
                q.abandoned_fraction,
                false,
            ),
            ("queue.asa_s", sc.slo.queue_asa_s, q.asa_s, false),
        ];
        for (name, target, value, at_least) in checks {
            if let Some(target) = target {
                let pass = if at_least {
                    value >= target
                } else {
                    value <= target
                };
                out.push(SloVerdict {
                    name: name.into(),
                    target,
                    value,
                    pass,
                });
            }
        }
    }
    out
}

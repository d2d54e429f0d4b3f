//! The user-agent engine: registrations, outgoing and incoming calls, their SIP transactions and
//! timers, and every measurement — with no sockets and no clock.
//!
//! The driver feeds it datagrams and the time (`handle`, `advance`), sends what it queues
//! (`transmit`), passes media commands to the RTP worker (`media_commands`) and sleeps until
//! `next_deadline`. Tests drive it with a fake clock and a fake peer.
//!
//! Open-model load: attempt k of a phase is *intended* to start at `phase_start + k / rate`,
//! whatever happened to attempt k-1, and every latency is measured from that intended start. A
//! generator that falls behind (or a target that stalls it) therefore shows up in the figures
//! instead of silently stretching the schedule — the coordinated omission wrk2 corrects for.
//! The intended start is rounded up to the driver's wake grid (`Config::arrival_grid`, by
//! default a tick of 1 to 2 ms chosen from the phase's rate, [`Grid::Auto`]): the driver sends
//! only when it wakes, and an attempt due between two wakes would otherwise be charged the wait
//! for the next one, which is the generator's, not the target's.
//!
//! A run is a small list of workloads (plain calls, IVR, queue, meetings), each with its own
//! arrival schedule; arrivals of all workloads are merged by intended start time.
//!
//! Services of pbxlab's cluster are recognised by the called user part, and change what a call
//! measures and when it hangs up:
//! - `queue-N`: after the 200 the caller waits for an agent. The first re-INVITE connects it
//!   (`queue_wait`, from the 200), and only then does the hold (the talk with the agent) start.
//!   If the caller's patience (exponential, drawn per call) runs out first, it hangs up: the call
//!   is *abandoned*, counted apart from succeeded and failed.
//! - `ivr-N`: the digits go out once answered (every call that sends digits gets RTP, whatever
//!   the RTP fraction: RFC 4733 events travel in the RTP stream). If they ask for a queue (first
//!   digit '1'..='9'), the first re-INVITE is the transfer (`ivr_route`, from when the digits were
//!   handed to the RTP worker, which starts them about a second later), and from then on the call
//!   is a queue call: patience from the transfer, the second re-INVITE connects it to an agent.
//!   The call waits for the transfer for its hold time, and at least 64 x T1; without a transfer
//!   by then it hangs up as a plain call would.
//! - `meeting-N` (N a number) means rooms of N participants: the k-th call of the workload
//!   (0-based, in this shard) joins room `k / N * shards + shard + 1`, so consecutive calls fill
//!   a room and shards never share one.
//! - anything else (`echo`, a UAS's user part): held for the hold time, then BYE.
//!
//! Once the last attempt has started the run only waits for the calls in progress, and the
//! engine bounds that wait itself (`bound_the_drain`): whatever else is due (registration
//! refreshes always are), every leg ends by the drain limit, at once if the target has fallen
//! silent, and the legs we answer 64 x T1 after the last of our own calls; each counted with
//! its reason ([`DRAINED`], [`TARGET_SILENT`], [`NOT_HUNG_UP`]).
//!
//! A re-INVITE counts as a transfer or a connect only when its CSeq is new, so a retransmission
//! does not advance a call; a re-INVITE that merely moves media (a node failing over) while a
//! caller waits cannot be told from a connect and is counted as one.
//!
//! Calls live in a slab; the slot and its generation are encoded in the Call-ID and branch, so a
//! response finds its call without a map lookup.
//!
//! The parts, each with the state it owns: the run's [`Config`] and workloads (`config`); the
//! calls table (`calls`); registrations and the timing of digest challenges (`register`); our
//! own calls, from INVITE to BYE (`uac`); the calls we answer and the far end's requests in any
//! dialog (`uas`); the rendering of every message and the ids written into it (`wire`); the
//! seeded random stream (`rng`). This file keeps the schedule, the timers and what the driver
//! calls.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use pbxlab_proto::sip::{self, Message};

use crate::messages::{MessageKind, Messages};
use crate::metrics::{Metrics, Outcomes};
use crate::wheel::Wheel;

mod calls;
mod config;
mod register;
mod rng;
mod uac;
mod uas;
mod wire;

pub use config::{AUTO_GRID, Arrivals, Callee, Config, Dtmf, Grid, Hold, Workload, auto_grid};
pub use rng::run_id;

use calls::{CallState, Calls, Stage};
use config::{Kind, phase_grids};
use register::{Challenges, RegState, Registrations};
use rng::Rng;
use wire::{Wire, call_id, parse_registration_call_id};

/// Nanoseconds since the start of the run.
pub type Nanos = u64;

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the engine asks of the RTP worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// Start sending G.711 every 20 ms to `dest` and receiving (demultiplexed by SSRC).
    Start {
        stream: u64,
        ssrc: u32,
        dest: SocketAddr,
        payload_type: u8,
    },
    /// The far end moved (re-INVITE): send to the new address from now on.
    Redirect {
        stream: u64,
        dest: SocketAddr,
    },
    /// Send these digits as RFC 4733 events.
    Dtmf {
        stream: u64,
        digits: String,
    },
    Stop {
        stream: u64,
    },
}

/// The arrival schedule of one workload.
#[derive(Debug, Clone)]
struct Schedule {
    kind: Kind,
    started: u64,
    /// Intended start of the next attempt, from the start of the call phase.
    next_at: Nanos,
    /// Poisson gaps come from here, apart from the engine's stream.
    rng: Rng,
}

/// Timer ids: call slots below this, registrations (index + this) above.
const REG_TIMER: u32 = 1 << 31;

/// Why our calls still in progress at the drain limit (`Config::drain_limit` after the last
/// attempt started) failed.
pub const DRAINED: &str = "still in progress at the drain limit";
/// Why a call we answered ended when the far end left it up for 64 x T1 after the last of our
/// own calls had ended: a far end that stopped answering (or forgot the leg), not a caller
/// still talking.
pub const NOT_HUNG_UP: &str = "answered call never hung up by the far end";
/// Why the call legs in progress after the schedule ended once the target fell silent: a
/// transaction of ours timed out and nothing at all had come in for 64 x T1.
pub const TARGET_SILENT: &str = "target silent";

/// The calls in progress by what each waits for: what a run that outlasts its schedule is
/// waiting on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InProgress {
    /// Our INVITEs not yet answered.
    pub setting_up: usize,
    /// Our established calls held until their own hold time: plain calls, meetings, talks
    /// with an agent.
    pub holding: usize,
    /// IVR callers waiting for the transfer to a queue.
    pub in_menu: usize,
    /// Queue callers waiting for an agent (callers with no patience wait until the drain
    /// limit).
    pub queued: usize,
    /// Our BYEs not yet answered.
    pub hanging_up: usize,
    /// Legs we answer (calls to our users), which the far end hangs up.
    pub answered: usize,
}

impl InProgress {
    pub fn total(&self) -> usize {
        self.setting_up
            + self.holding
            + self.in_menu
            + self.queued
            + self.hanging_up
            + self.answered
    }
}

/// Where a leg we placed is ([`Engine::leg_phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegPhase {
    /// Still being set up.
    Setup,
    /// Answered: up, or hanging up.
    Up,
    /// Over: refused, failed, or answered and hung up already.
    Gone,
}

/// The user agents of one generator process (or shard): see the module's documentation.
pub struct Engine {
    cfg: Config,
    calls: Calls,
    regs: Registrations,
    /// Our users' indexes, sorted by user part, for the calls that come to them.
    by_name: Vec<u32>,
    /// Users that place calls (indexes into `Config::users`): all but the reserved ones.
    callers: Range<u32>,
    /// Callers and callees drawn for `UserOrder::Random`, apart from the engine's stream.
    pick: Rng,
    schedules: Vec<Schedule>,
    calls_started: u64,
    call_phase: Option<Nanos>,
    /// `Engine::grids`.
    grids: (Duration, Duration),
    timers: Wheel,
    wire: Wire,
    media: Vec<MediaCommand>,
    pub metrics: Metrics,
    rng: Rng,
    challenges: Challenges,
    stopping: bool,
    /// When the calls still in progress are given up: `Config::drain_limit` after the last
    /// attempt started (`None` until then).
    drain_at: Option<Nanos>,
    /// When the legs we answer are given up: 64 x T1 after the last of our own calls ended, if
    /// the far end has not hung them up by then.
    orphans_at: Option<Nanos>,
    /// When the last datagram came in.
    heard_at: Nanos,
    /// A transaction of ours timed out with nothing heard for 64 x T1 before, and nothing
    /// has been heard since: the target is gone or has stopped answering.
    silent: bool,
    /// Datagrams that did not parse, for the report.
    pub malformed: u64,
    /// Responses for calls or registrations we no longer know (late retransmissions).
    pub stray: u64,
    /// What was sent and received, message by message.
    pub messages: Messages,
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        let regs = Registrations::new(cfg.users.len());
        let users = u32::try_from(cfg.users.len()).unwrap_or(u32::MAX);
        // Numbered users are found by their number; others by an index sorted by name (20
        // million numbered users once spent 9 of the run's 16 s of setup sorting one).
        let mut by_name: Vec<u32> = Vec::new();
        if cfg.users.numbered_index("").is_none() {
            by_name = (0..users).collect();
            by_name.sort_unstable_by(|&a, &b| {
                cfg.users.name(a as usize).cmp(cfg.users.name(b as usize))
            });
        }
        // From the seed and the shard alone: the run id is a name, and another name must not
        // change what a run draws.
        let rng = Rng::engine(cfg.seed, cfg.shard.0);
        let call_phase = (!cfg.register || cfg.users.is_empty()).then_some(0);
        let grids = phase_grids(&cfg);
        let reserved = u32::try_from(cfg.reserved).unwrap_or(u32::MAX).min(users);
        let callers = if reserved < users {
            reserved..users
        } else {
            0..users
        };
        let pick = rng.users();
        let schedules = cfg
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut rng = rng.workload(i);
                let next_at = match w.arrivals {
                    Arrivals::Fixed => 0,
                    Arrivals::Poisson => poisson_gap(&mut rng, w.rate),
                };
                Schedule {
                    kind: Kind::of(&w.callee),
                    started: 0,
                    next_at,
                    rng,
                }
            })
            .collect();
        let mut metrics = Metrics::new();
        metrics.workloads = vec![Outcomes::default(); cfg.workloads.len()];
        let wire = Wire::new(&cfg);
        Engine {
            cfg,
            calls: Calls::default(),
            regs,
            by_name,
            callers,
            pick,
            schedules,
            calls_started: 0,
            call_phase,
            grids,
            timers: Wheel::new(),
            wire,
            media: Vec::new(),
            metrics,
            rng,
            challenges: Challenges::default(),
            stopping: false,
            drain_at: None,
            orphans_at: None,
            heard_at: 0,
            silent: false,
            malformed: 0,
            stray: 0,
            messages: Messages::default(),
        }
    }

    /// Stops starting new attempts and hangs up established calls; `finished` turns true once
    /// what is in flight has ended or timed out.
    pub fn stop(&mut self, now: Nanos) {
        self.stopping = true;
        // Hang up over a second rather than in one burst that would overflow the far end's
        // receive buffer and cost retransmissions.
        let mut k = 0;
        for slot in 0..self.calls.len() as u32 {
            let c = &mut self.calls[slot as usize];
            if c.state == CallState::Established && c.hold_until > now {
                // A caller still waiting was cut short by the stop, not by its patience: it
                // hangs up as a plain call and is not counted as abandoned.
                if matches!(c.stage, Stage::Menu | Stage::Queued) {
                    c.stage = Stage::Hold;
                }
                c.hold_until = now + (k % 1000) * 1_000_000;
                k += 1;
                self.arm(slot);
            }
        }
    }

    /// Attempts not started because the run was stopped count as neither.
    pub fn finished(&self) -> bool {
        let regs_done = !self.cfg.register
            || self.regs.finished == self.regs.len()
            || (self.stopping && self.regs.finished == self.regs.started);
        let calls_done = self.stopping
            || self
                .schedules
                .iter()
                .zip(&self.cfg.workloads)
                .all(|(s, w)| s.started >= w.calls);
        regs_done && calls_done && self.calls.active() == 0
    }

    /// Whether the registration phase is over (and calls may start).
    pub fn registered(&self) -> bool {
        self.call_phase.is_some()
    }

    /// The next instant anything is due: a timer, a scheduled start, or the end of the wait for
    /// the calls in progress after the schedule.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let timer = self.timers.peek();
        let drain = [self.drain_at, self.orphans_at]
            .into_iter()
            .flatten()
            .filter(|_| !self.stopping && self.calls.active() > 0)
            .min();
        [timer, self.next_start(), drain]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether every attempt of the run has started: what is left is the calls in progress.
    fn schedule_over(&self) -> bool {
        self.call_phase.is_some()
            && self
                .schedules
                .iter()
                .zip(&self.cfg.workloads)
                .all(|(s, w)| s.started >= w.calls)
    }

    /// When the calls still in progress will be given up (`Config::drain_limit` after the
    /// last attempt started), once it has.
    pub fn drain_deadline(&self) -> Option<Nanos> {
        self.drain_at.filter(|_| !self.stopping)
    }

    /// The call legs in progress by what each waits for.
    pub fn in_progress(&self) -> InProgress {
        let mut n = InProgress::default();
        for slot in 0..self.calls.len() {
            let c = &self.calls[slot];
            let count = match (c.state, c.stage) {
                (CallState::Free, _) => continue,
                _ if !c.placed => &mut n.answered,
                (CallState::Calling | CallState::Proceeding, _) => &mut n.setting_up,
                (CallState::ByeSent, _) => &mut n.hanging_up,
                (_, Stage::Menu) => &mut n.in_menu,
                (_, Stage::Queued) => &mut n.queued,
                _ => &mut n.holding,
            };
            *count += 1;
        }
        n
    }

    /// Once the last attempt has started, bounds the wait for what is still in progress:
    /// every call has its own timers but two, a queue caller with no patience and a leg we
    /// answered (RFC 3261 lets both wait for ever for the far end), and a target that went
    /// away leaves those up. At the drain limit every call still in progress fails
    /// ([`DRAINED`]). Once a transaction has timed out with nothing heard for as long, the
    /// target is silent and what is in progress ends at once ([`TARGET_SILENT`]). And once none
    /// of our own calls is left, the legs we answer get 64 x T1 (a BYE's transaction time) for
    /// the far end's BYE, then end as [`NOT_HUNG_UP`]. Before the schedule is over none of this
    /// applies: a target that comes back (a drill's restart) finds the calls still placed.
    fn bound_the_drain(&mut self, now: Nanos) {
        if self.stopping || !self.schedule_over() {
            return;
        }
        let limit = ns(self.cfg.drain_limit);
        let drain_at = *self.drain_at.get_or_insert(now.saturating_add(limit));
        if self.calls.active() == 0 {
            self.orphans_at = None;
            return;
        }
        if now >= drain_at {
            self.end_in_progress(DRAINED);
            return;
        }
        if self.silent {
            // Waiting out every hold, then every BYE's 32 s, would only count the same
            // silence once per call.
            self.end_in_progress(TARGET_SILENT);
            return;
        }
        if self.calls.placed() > 0 {
            self.orphans_at = None;
            return;
        }
        let wait = 64 * self.t1();
        if now >= *self.orphans_at.get_or_insert(now.saturating_add(wait)) {
            self.end_in_progress(NOT_HUNG_UP);
            self.orphans_at = None;
        }
    }

    /// Ends every call leg in progress without a word to the far end, each counted as a
    /// failure for `reason`: our own calls as failed calls, the legs we answer in the reasons
    /// only (they are not calls of ours).
    fn end_in_progress(&mut self, reason: &str) {
        for slot in 0..self.calls.len() as u32 {
            let c = &self.calls[slot as usize];
            if c.state == CallState::Free {
                continue;
            }
            if c.placed {
                self.fail_call(slot, reason);
            } else {
                self.metrics.fail(reason);
                self.release(slot);
            }
        }
    }

    /// A transaction of ours timed out at `now`: with nothing heard for as long, the target
    /// has gone silent.
    fn timed_out(&mut self, now: Nanos) {
        if now.saturating_sub(self.heard_at) >= 64 * self.t1() {
            self.silent = true;
        }
    }

    fn next_start(&self) -> Option<Nanos> {
        if self.stopping {
            return None;
        }
        if self.cfg.register && self.regs.started < self.regs.len() {
            let at = self.regs.phase + gap(self.regs.started as u64, self.cfg.register_rate);
            return Some(Engine::on_grid(at, self.grids.0));
        }
        self.next_call().map(|(at, _)| at)
    }

    /// `at` rounded up to `grid` (zero: not rounded).
    fn on_grid(at: Nanos, grid: Duration) -> Nanos {
        match u64::try_from(grid.as_nanos()) {
            Ok(grid) if grid > 0 => at.div_ceil(grid).saturating_mul(grid),
            _ => at,
        }
    }

    /// The wake grids of the registration phase and of the call phase (zero: exact schedule).
    pub fn grids(&self) -> (Duration, Duration) {
        self.grids
    }

    /// The wake grid of the phase in progress: the period the driver keeps while traffic flows.
    pub fn grid(&self) -> Duration {
        let (registrations, calls) = self.grids;
        if self.call_phase.is_some() {
            calls
        } else {
            registrations
        }
    }

    /// The intended start of the next call and its workload: the earliest due of all
    /// workloads, the first listed on a tie.
    fn next_call(&self) -> Option<(Nanos, usize)> {
        let phase = self.call_phase?;
        if self
            .cfg
            .max_concurrent
            .is_some_and(|limit| self.calls.placed() >= limit)
        {
            // Held back until a call ends; the attempt keeps its intended start.
            return None;
        }
        self.schedules
            .iter()
            .zip(&self.cfg.workloads)
            .enumerate()
            .filter(|(_, (s, w))| s.started < w.calls)
            .map(|(i, (s, _))| {
                (
                    Engine::on_grid(phase.saturating_add(s.next_at), self.grids.1),
                    i,
                )
            })
            .min()
    }

    /// Starts every attempt whose intended time has come and fires due timers.
    ///
    /// The new attempts' requests are queued ahead of everything else: their latency counts
    /// from the intended start, so they leave first. What follows them is in-dialog (the ACKs
    /// the last read left, then the timers' BYEs), so requests of one kind and length are
    /// adjacent, for the sender to batch.
    pub fn advance(&mut self, now: Nanos) {
        let queued = self.wire.queued();
        while let Some(at) = self.next_start().filter(|&t| t <= now) {
            if self.cfg.register && self.regs.started < self.regs.len() {
                let i = self.regs.started;
                self.regs.started += 1;
                self.start_register(now, at, i);
            } else if let Some((_, w)) = self.next_call() {
                self.calls_started += 1;
                let k = self.schedules[w].started;
                let (rate, arrivals) = (self.cfg.workloads[w].rate, self.cfg.workloads[w].arrivals);
                let s = &mut self.schedules[w];
                s.started += 1;
                s.next_at = match arrivals {
                    Arrivals::Fixed => gap(s.started, rate),
                    Arrivals::Poisson => s.next_at.saturating_add(poisson_gap(&mut s.rng, rate)),
                };
                self.start_call(now, at, w, k);
            }
        }
        self.wire.move_to_front(queued);
        while let Some((at, id)) = self.timers.pop_due(now) {
            if !self.take_armed(at, id) {
                continue;
            }
            if id >= REG_TIMER {
                self.reg_timer(now, (id - REG_TIMER) as usize);
            } else {
                self.call_timer(now, id);
            }
            // Whatever the timer did, the next deadline (if any) gets its entry.
            self.arm(id);
        }
        self.bound_the_drain(now);
    }

    /// Hands every queued datagram to `send` at once (for batched sending), then forgets them.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        let messages = &mut self.messages;
        self.wire.transmit_all(|batch| {
            for (_, datagram) in batch {
                messages.sent(datagram);
            }
            send(batch);
        });
    }

    pub fn media_commands(&mut self) -> std::vec::Drain<'_, MediaCommand> {
        self.media.drain(..)
    }

    /// Calls we placed that are in progress: a call from one of our users to another is one
    /// call, though we hold both its legs.
    pub fn active_calls(&self) -> usize {
        self.calls.placed()
    }

    /// The most calls we had placed in progress at once, so far.
    pub fn peak_calls(&self) -> usize {
        self.calls.placed_peak()
    }

    /// Call legs in progress, ours and those we answer: nothing is left to end once this is 0.
    pub fn active_legs(&self) -> usize {
        self.calls.active()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The Call-ID of the leg in `slot`: ours, or the one the caller chose for a leg we answer.
    fn leg_call_id(&self, slot: u32, c: &calls::Call) -> String {
        if c.uas_call_id.is_empty() {
            call_id(slot, c.generation, self.cfg.run_id)
        } else {
            c.uas_call_id.clone()
        }
    }

    /// The Call-ID of the call leg whose RTP is `stream` (see [`MediaCommand`]), while that
    /// leg is in progress: for checks that hold our view against the far end's.
    pub fn call_id_of_stream(&self, stream: u64) -> Option<String> {
        let slot = u32::try_from(stream & 0xffff_ffff).ok()?;
        let generation = u32::try_from(stream >> 32).ok()?;
        let c = self.calls.get(slot as usize)?;
        (c.generation == generation && c.state != CallState::Free)
            .then(|| self.leg_call_id(slot, c))
    }

    /// The Call-IDs of the dialogs we hold up: legs we placed that were answered and not yet
    /// hung up, and legs we answered whose ACK came.
    pub fn dialogs(&self) -> Vec<String> {
        (0..self.calls.len() as u32)
            .filter_map(|slot| {
                let c = self.calls.get(slot as usize)?;
                matches!(c.state, CallState::Established | CallState::UasEstablished)
                    .then(|| self.leg_call_id(slot, c))
            })
            .collect()
    }

    /// The legs we placed that are still being set up (INVITE out, no final answer yet), each
    /// as a key for [`Engine::leg_phase`].
    pub fn setups(&self) -> Vec<u64> {
        (0..self.calls.len() as u32)
            .filter_map(|slot| {
                let c = self.calls.get(slot as usize)?;
                matches!(c.state, CallState::Calling | CallState::Proceeding)
                    .then(|| u64::from(c.generation) << 32 | u64::from(slot))
            })
            .collect()
    }

    /// Where a leg of [`Engine::setups`] is now.
    pub fn leg_phase(&self, key: u64) -> LegPhase {
        let (slot, generation) = ((key & 0xffff_ffff) as usize, (key >> 32) as u32);
        match self.calls.get(slot) {
            Some(c) if c.generation == generation => match c.state {
                CallState::Calling | CallState::Proceeding => LegPhase::Setup,
                CallState::Established | CallState::ByeSent => LegPhase::Up,
                _ => LegPhase::Gone,
            },
            _ => LegPhase::Gone,
        }
    }

    /// Our users whose registration is in force: their last REGISTER was answered 2xx, and
    /// none of theirs is out since (a refresh).
    pub fn registered_users(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.regs.len())
            .filter(|&i| {
                self.regs
                    .get(i)
                    .is_some_and(|r| matches!(r.state, RegState::Done) && r.bound)
            })
            .map(|i| self.cfg.users.name(i))
    }

    /// The index of our user with this user part.
    fn user_named(&self, name: &str) -> Option<u32> {
        if let Some(found) = self.cfg.users.numbered_index(name) {
            return found.and_then(|i| u32::try_from(i).ok());
        }
        let at = self
            .by_name
            .binary_search_by(|&i| self.cfg.users.name(i as usize).cmp(name))
            .ok()?;
        self.by_name.get(at).copied()
    }

    /// Ends whatever is still in progress without a word to the far end (the run is over):
    /// our own calls count as failed with `reason`, calls to our users are just dropped.
    /// Returns how many of our calls that was.
    pub fn give_up(&mut self, reason: &str) -> u64 {
        let mut n = 0;
        for slot in 0..self.calls.len() as u32 {
            let c = &self.calls[slot as usize];
            if c.state == CallState::Free {
                continue;
            }
            if c.uas_call_id.is_empty() {
                n += 1;
                self.fail_call(slot, reason);
            } else {
                self.release(slot);
            }
        }
        n
    }

    fn release(&mut self, slot: u32) {
        self.calls.release(slot, &mut self.media);
    }

    /// Makes sure `id` (a call slot, or `REG_TIMER` + a registration) has a live timer entry no
    /// later than its next deadline. Each keeps one entry: a later deadline is armed when the
    /// current entry fires, an earlier one replaces it (the old entry is skipped as stale).
    fn arm(&mut self, id: u32) {
        let (next, armed) = if id >= REG_TIMER {
            let Some(r) = self.regs.get_mut((id - REG_TIMER) as usize) else {
                return;
            };
            let next = match r.state {
                RegState::Sent => r.retransmit_at.min(r.timeout_at),
                RegState::Done => r.refresh_at,
                RegState::Idle => Nanos::MAX,
            };
            (next, &mut r.armed_at)
        } else {
            let Some(c) = self.calls.get_mut(id as usize) else {
                return;
            };
            let next = match c.state {
                CallState::Calling | CallState::ByeSent | CallState::Answered => {
                    c.retransmit_at.min(c.timeout_at)
                }
                CallState::Proceeding => c.timeout_at,
                CallState::Established => c.hold_until,
                CallState::Ringing => c.retransmit_at,
                CallState::UasEstablished | CallState::Free => Nanos::MAX,
            };
            (next, &mut c.armed_at)
        };
        if next < *armed {
            *armed = next;
            self.timers.push(next, id);
        }
    }

    /// Whether a popped timer entry is the live one of its call or registration.
    fn take_armed(&mut self, at: Nanos, id: u32) -> bool {
        let armed = if id >= REG_TIMER {
            self.regs
                .get_mut((id - REG_TIMER) as usize)
                .map(|r| &mut r.armed_at)
        } else {
            self.calls.get_mut(id as usize).map(|c| &mut c.armed_at)
        };
        match armed {
            Some(a) if *a == at => {
                *a = Nanos::MAX;
                true
            }
            _ => false,
        }
    }

    fn t1(&self) -> Nanos {
        ns(self.cfg.t1)
    }

    /// A registration of ours: the index of its user.
    fn own_registration(&self, call_id: &str) -> Option<usize> {
        let (i, run) = parse_registration_call_id(call_id)?;
        (run == self.cfg.run_id && i < self.regs.len()).then_some(i)
    }

    /// One datagram from the network.
    pub fn handle(&mut self, now: Nanos, from: SocketAddr, datagram: &[u8]) {
        self.heard_at = self.heard_at.max(now);
        self.silent = false;
        // Keepalives (CRLF) are not messages.
        if datagram.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        // Parsed in place: returning a message by value copies its 2.7 KB header table.
        let mut msg = Message::empty();
        if sip::parse_datagram_into(&mut msg, datagram).is_err() {
            self.malformed += 1;
            self.metrics.fail("malformed message");
            return;
        }
        if msg.is_request() {
            if let Some(method) = msg.method() {
                self.messages.received(MessageKind::request(method));
            }
            self.on_request(now, from, &msg);
            return;
        }
        if let Some(code) = msg.code() {
            self.messages.received(MessageKind::Response(code));
        }
        let call_id = msg.call_id().unwrap_or_default();
        if let Some((slot, _)) = self.calls.own(call_id, self.cfg.run_id) {
            self.on_call_response(now, slot, &msg);
        } else if let Some(i) = self.own_registration(call_id) {
            self.on_register_response(now, i, &msg);
        } else {
            self.stray += 1;
            self.messages.unexpected += 1;
        }
    }
}

/// A gap of a Poisson process of `rate` per second (none at a rate of 0: all at once).
fn poisson_gap(rng: &mut Rng, rate: f64) -> Nanos {
    if rate <= 0.0 {
        0
    } else {
        rng.exponential((1e9 / rate) as Nanos)
    }
}

/// Intended offset of attempt `k` at `rate` per second.
fn gap(k: u64, rate: f64) -> Nanos {
    if rate <= 0.0 {
        0
    } else {
        (k as f64 * 1e9 / rate) as Nanos
    }
}

/// A failure reason for a final status code: the common codes by name (phrases from the one
/// table, `pbxlab_proto::builder::reason_phrase`), the rest by class, so reports group well.
fn status_reason(code: u16) -> std::borrow::Cow<'static, str> {
    const NAMED: [u16; 14] = [
        400, 401, 403, 404, 407, 408, 480, 481, 486, 487, 488, 500, 503, 504,
    ];
    if NAMED.contains(&code) {
        return format!("{code} {}", pbxlab_proto::builder::reason_phrase(code)).into();
    }
    match code / 100 {
        3 => "3xx redirect",
        4 => "other 4xx",
        5 => "other 5xx",
        6 => "6xx global failure",
        _ => "unexpected status",
    }
    .into()
}

//! What the fault timeline and the probes do to a simulated cluster: faults carried out as the
//! live cluster carries out the same verbs, probe rounds through the balancer's prober (skipped
//! while every outcome is known), the balancer's plans applied to the simulator's own ledger,
//! and the self-check that compares the two.

use std::time::Duration;

use pbxlab_balancer::{EventKind, Outcome, Probe, ProbeAction, ServerId};
use pbxlab_scenario::{UPGRADE_RESTART, Verb};

use super::{CallerState, Ev, OwnerKind, ServerStats, Sim};
use crate::Error;
use crate::des::{Nanos, nanos_to_secs, secs_to_nanos};
use crate::report::FaultReport;

impl Sim<'_> {
    /// Runs the prober at its deadline. A live server answers at once (the round trip takes no
    /// virtual time); a silent one is judged by the prober at the round's timeout.
    pub(super) fn probe_round(&mut self, now: Nanos) -> Result<(), Error> {
        let at = Duration::from_nanos(now);
        let mut actions = std::mem::take(&mut self.probe_actions);
        self.prober.advance(at, &mut actions);
        for action in actions.drain(..) {
            let (server, result) = match action {
                ProbeAction::Send { server, seq } => {
                    if !self.servers[server.0 as usize].alive {
                        continue;
                    }
                    match self.prober.answer(at, server, seq, true) {
                        Some(result) => (server, result),
                        None => continue,
                    }
                }
                ProbeAction::Record { server, result } => (server, result),
            };
            let out = self.b.probe(at, server, result)?;
            self.apply(out, now, None)?;
            // Enabled once its probes count it healthy again, as the live upgrade waits.
            let healthy = self.b.server(server).is_some_and(|v| v.healthy);
            let s = &mut self.servers[server.0 as usize];
            if result == Probe::Ok && healthy && s.enable_when_answered {
                s.enable_when_answered = false;
                let out = self.b.enable(at, server)?;
                self.apply(out, now, None)?;
            }
        }
        self.probe_actions = actions;
        self.probing = false;
        self.keep_probing(now)
    }

    /// Schedules the prober's next deadline unless every probe's outcome is known and changes
    /// nothing: every server answers and is counted healthy with no failure pending. Those
    /// rounds are skipped (most of a long run's events were probes of servers that never
    /// fail); detection is unchanged, because the grid is kept and a skipped round is exactly
    /// one in which everyone answered.
    pub(super) fn keep_probing(&mut self, now: Nanos) -> Result<(), Error> {
        if self.probing {
            return Ok(());
        }
        // A removed server is nobody's concern any more; an upgraded one waits for a probe.
        let settled = |i: usize, s: &ServerStats| match self.b.server(ServerId(i as u32)) {
            None => true,
            Some(v) => {
                s.alive
                    && !s.enable_when_answered
                    && v.healthy
                    && v.last_probe.is_none_or(|(_, p)| p == Probe::Ok)
            }
        };
        let steady = !self.prober.round_open()
            && self.servers.iter().enumerate().all(|(i, s)| settled(i, s));
        if steady {
            return Ok(());
        }
        self.prober.skip_to(Duration::from_nanos(now));
        self.probing = true;
        let at = (self.prober.next_deadline().as_nanos() as Nanos).max(now);
        self.schedule(at, Ev::ProbeRound)
    }

    pub(super) fn fault(&mut self, index: usize, now: Nanos) -> Result<(), Error> {
        let spec = &self.sc.faults[index];
        let action = spec.action;
        let cm = self.cm.index(&spec.server);
        let id = self.b.server_by_name(&spec.server);
        if cm.is_none() && id.is_none() {
            return Err(Error::UnknownServer(spec.server.clone()));
        }
        let before = id
            .and_then(|id| self.b.server(id))
            .map_or(0, |s| s.sessions) as u64;
        self.faults.push(FaultReport {
            at_s: nanos_to_secs(now),
            server: spec.server.clone(),
            action: action.name().to_string(),
            sessions_affected: 0,
            reassigned: 0,
            dropped: 0,
            detected_after_s: None,
            alert: false,
            takeover: None,
        });
        let (Some(id), None) = (id, cm) else {
            return match cm {
                Some(i) => self.cm_fault(i, action, now),
                None => Ok(()),
            };
        };
        let at = Duration::from_nanos(now);
        let server = id.0 as usize;
        let out = match action {
            // The balancer is not told: it has to notice through its probes. In virtual time a
            // partitioned server is as silent as a failed one.
            Verb::Fail | Verb::Partition => {
                self.servers[server].alive = false;
                return self.keep_probing(now);
            }
            // Its probes bring it back.
            Verb::Recover | Verb::Heal => {
                self.servers[server].alive = true;
                return self.keep_probing(now);
            }
            // The operator tells the Call Manager, which marks it down and moves its sessions.
            Verb::Stop => {
                self.servers[server].alive = false;
                self.b.fail(at, id)?
            }
            // Stopped and started again at once; its probes bring it back.
            Verb::Restart => self.b.fail(at, id)?,
            // Disabled (sessions move), the process down for the restart, enabled once a
            // probe after the restart answers (`probe_round`), as the live upgrade waits.
            Verb::Upgrade => {
                self.servers[server].alive = false;
                let back = now + secs_to_nanos(UPGRADE_RESTART.as_secs_f64());
                self.schedule(back, Ev::Restarted(id.0))?;
                self.b.disable(at, id)?
            }
            Verb::Remove => {
                self.prober.forget(id);
                self.b.remove_server(at, id)?
            }
            Verb::Disable => self.b.disable(at, id)?,
            Verb::Enable => self.b.enable(at, id)?,
            Verb::Drain => self.b.drain(at, id)?,
        };
        if let Some(f) = self.faults.last_mut() {
            f.sessions_affected = if action.moves_sessions() { before } else { 0 };
        }
        let last = self.faults.len() - 1;
        self.apply(out, now, Some(last))?;
        self.keep_probing(now)
    }

    /// Carries out what the balancer decided: moves and drops from its plan, and attributes
    /// a server going down to the fault that caused it.
    pub(super) fn apply(
        &mut self,
        out: Outcome,
        now: Nanos,
        fault: Option<usize>,
    ) -> Result<(), Error> {
        if out.plan.is_empty() && out.events.is_empty() {
            return Ok(());
        }
        let mut fault = fault;
        for e in &out.events {
            if e.kind == EventKind::Down {
                let name = self
                    .b
                    .server(e.server)
                    .map(|s| s.name.to_string())
                    .unwrap_or_default();
                // The faults left for the probes to find (fail, partition) are detected.
                let silent =
                    |f: &FaultReport| Verb::from_name(&f.action).is_some_and(Verb::is_silent);
                let pending = self
                    .faults
                    .iter()
                    .rposition(|f| f.server == name && silent(f) && f.detected_after_s.is_none());
                if let Some(i) = pending {
                    let f = &mut self.faults[i];
                    // Rounded to the nanosecond the clock counts in, so the report reads
                    // 2.590909091 rather than 2.5909090899999683.
                    let after = nanos_to_secs(now) - f.at_s;
                    f.detected_after_s = Some((after * 1e9).round() / 1e9);
                    f.sessions_affected = self.b.server(e.server).map_or(0, |s| s.sessions) as u64
                        + out.plan.affected() as u64;
                    fault = Some(i);
                }
            }
        }
        if let Some(i) = fault
            && out
                .events
                .iter()
                .any(|e| matches!(e.kind, EventKind::Alert(_)))
        {
            self.faults[i].alert = true;
        }
        for m in &out.plan.moves {
            let i = m.session.index();
            let Some(owner) = self.owners.get_mut(i).and_then(|o| o.as_mut()) else {
                return Err(Error::SelfCheck(format!(
                    "plan moved {} which the simulator never placed",
                    m.session
                )));
            };
            if owner.id != m.session || owner.server != m.from.0 {
                return Err(Error::SelfCheck(format!(
                    "plan moved {} from server {} but the ledger has it on {}",
                    m.session, m.from.0, owner.server
                )));
            }
            owner.server = m.to.0;
            let w = i64::from(owner.weight);
            self.book(m.from.0, -w, now);
            self.book(m.to.0, w, now);
        }
        for d in &out.plan.dropped {
            let Some(owner) = self
                .owners
                .get_mut(d.session.index())
                .and_then(Option::take)
            else {
                return Err(Error::SelfCheck(format!(
                    "plan dropped {} which the simulator never placed",
                    d.session
                )));
            };
            self.book(d.from.0, -i64::from(owner.weight), now);
            let role = self.servers[d.from.0 as usize].role;
            if let Some(r) = &mut self.roles[role.index()] {
                r.dropped += 1;
            }
            match owner.kind {
                OwnerKind::Call | OwnerKind::Ivr | OwnerKind::Meeting => {}
                OwnerKind::Im { user } => self.im_sessions[user as usize] = None,
                OwnerKind::Caller { caller, generation } => {
                    let c = self.callers[caller as usize];
                    if c.generation == generation {
                        self.free_caller(caller);
                        if c.state == CallerState::Talking {
                            self.agent_free(c.queue, now)?;
                        }
                    }
                }
            }
        }
        if let Some(i) = fault {
            let f = &mut self.faults[i];
            f.reassigned += out.plan.moves.len() as u64;
            f.dropped += out.plan.dropped.len() as u64;
        }
        if self.self_check {
            for m in &out.plan.moves {
                let at = self.b.session(m.session).map(|v| v.server);
                if at != Some(m.to) {
                    return Err(Error::SelfCheck(format!(
                        "{} should be on {:?} after the plan, is on {at:?}",
                        m.session, m.to
                    )));
                }
            }
            self.b.audit()?;
        }
        Ok(())
    }

    /// The simulator's ledger must agree with the balancer on every server's load.
    pub(super) fn check_ledger(&self) -> Result<(), Error> {
        for (i, s) in self.servers.iter().enumerate() {
            let load = self.b.server(ServerId(i as u32)).map_or(0, |v| v.load);
            if load != s.load {
                return Err(Error::SelfCheck(format!(
                    "server {i}: balancer load {load}, simulator ledger {}",
                    s.load
                )));
            }
        }
        Ok(())
    }
}
